// Helpers shared by the trainer layer's sources.
#pragma once

#include <ATen/core/Tensor.h>

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

// Registers LibTorch's optimizers and schedulers through the public
// RegisterOptimizer / RegisterScheduler (builtin_types.cc). Called once, by
// the registry, before its first use.
void RegisterBuiltinTypes();

}  // namespace ackpt
