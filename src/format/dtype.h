// safetensors dtype names and the LibTorch scalar types they map to
// (docs/FORMAT.md, "dtypes").
#pragma once

#include <c10/core/ScalarType.h>

#include <cstddef>
#include <string>

namespace ackpt {
namespace format {

// Throws kUnsupported naming `what` (usually the tensor) for unsupported types.
std::string DtypeToName(at::ScalarType type, const std::string& what);
// Returns false for names this LibTorch cannot represent.
bool DtypeFromName(const std::string& name, at::ScalarType* type);
size_t DtypeSize(at::ScalarType type);

}  // namespace format
}  // namespace ackpt
