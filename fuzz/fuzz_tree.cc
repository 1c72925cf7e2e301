// The state-tree decoder (Unflatten). Input: the ackpt.tree JSON text; the
// tensors "a", "b" and "model/w" exist.
#include <ATen/ATen.h>

#include <string>

#include "format/flatten.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto* tensors =
      new std::map<std::string, at::Tensor>{{"a", at::zeros({2}, at::kFloat)},
                                            {"b", at::zeros({}, at::kLong)},
                                            {"model/w", at::zeros({0, 3}, at::kHalf)}};
  const std::string json(reinterpret_cast<const char*>(data), size);
  ackpt::fuzz::ExpectOnlyAckptErrors([&] {
    ackpt::StateDict s = ackpt::format::Unflatten(json, *tensors, "fuzz", 256);
    (void)s;
  });
  return 0;
}
