// Helpers shared by the trainer layer's sources.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <typeindex>
#include <vector>

namespace ackpt {

// "[2, 3]"
std::string ShapeString(at::IntArrayRef shape);
// "a, b, c"
std::string Join(const std::vector<std::string>& items);
// The C++ name of a type, demangled: "torch::optim::Adam".
std::string TypeNameOf(std::type_index type);

// True when `a` and `b` view the very same elements (same memory, layout,
// dtype and device): copying one into the other would change nothing.
bool SameBytes(const at::Tensor& a, const at::Tensor& b);

// While set (by RestoreOptimizer, on its thread), detail::RestoreTensor hands
// out a saved tensor itself, not a copy, when this returns true for it and it
// already is on its parameter's device.
using AdoptTensor = std::function<bool(const at::Tensor& saved)>;
class ScopedAdoption {
 public:
  explicit ScopedAdoption(const AdoptTensor* adopt);
  ~ScopedAdoption();
  ScopedAdoption(const ScopedAdoption&) = delete;
  ScopedAdoption& operator=(const ScopedAdoption&) = delete;

 private:
  const AdoptTensor* previous_;
};

// Registers LibTorch's optimizers and schedulers through the public
// RegisterOptimizer / RegisterScheduler (builtin_types.cc). Called once, by
// the registry, before its first use.
void RegisterBuiltinTypes();

}  // namespace ackpt
