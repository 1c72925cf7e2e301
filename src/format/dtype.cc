// safetensors dtype names (format/dtype.h).
#include "format/dtype.h"

#include <c10/core/ScalarType.h>

#include "ackpt/error.h"
#include "ackpt/format.h"

#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif

#if defined(TORCH_VERSION_MAJOR) && (TORCH_VERSION_MAJOR * 100 + TORCH_VERSION_MINOR) >= 201
#define ACKPT_HAVE_FLOAT8 1
#endif

namespace ackpt {
namespace format {

namespace {
struct DtypeName {
  at::ScalarType type;
  const char* name;
};
// safetensors names for every dtype this LibTorch can hold.
const DtypeName kDtypes[] = {
    {at::kBool, "BOOL"},
    {at::kByte, "U8"},
    {at::kChar, "I8"},
    {at::kShort, "I16"},
    {at::kInt, "I32"},
    {at::kLong, "I64"},
    {at::kHalf, "F16"},
    {at::kBFloat16, "BF16"},
    {at::kFloat, "F32"},
    {at::kDouble, "F64"},
#ifdef ACKPT_HAVE_FLOAT8
    {at::ScalarType::Float8_e4m3fn, "F8_E4M3"},
    {at::ScalarType::Float8_e5m2, "F8_E5M2"},
#endif
};
}  // namespace

std::string DtypeToName(at::ScalarType type, const std::string& what) {
  for (const auto& d : kDtypes) {
    if (d.type == type) return d.name;
  }
  throw Error::Unsupported(std::string("dtype ") + c10::toString(type) + " of " + what +
                           " has no safetensors equivalent (supported: BOOL, U8, I8, I16, I32, "
                           "I64, F16, BF16, F32, F64" +
#ifdef ACKPT_HAVE_FLOAT8
                           ", F8_E4M3, F8_E5M2" +
#endif
                           ")");
}

bool DtypeFromName(const std::string& name, at::ScalarType* type) {
  for (const auto& d : kDtypes) {
    if (name == d.name) {
      *type = d.type;
      return true;
    }
  }
  return false;
}

size_t DtypeSize(at::ScalarType type) { return c10::elementSize(type); }

}  // namespace format

std::string DtypeName(at::ScalarType type) { return format::DtypeToName(type, "tensor"); }

}  // namespace ackpt
