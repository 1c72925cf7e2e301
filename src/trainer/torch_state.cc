// Module parameters and buffers, and the random number generators. Optimizer
// and scheduler state: optimizer_state.cc, driven by registry.cc.
#include "ackpt/torch_state.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <torch/cuda.h>

#include <algorithm>
#include <mutex>
#include <set>

#include "ackpt/error.h"
#include "trainer/internal.h"

namespace ackpt {

// ---- module ----

StateDict ModuleState(const torch::nn::Module& module) {
  StateDict out;
  for (const auto& p : module.named_parameters(/*recurse=*/true))
    out.set(p.key(), p.value().detach());
  for (const auto& b : module.named_buffers(/*recurse=*/true)) out.set(b.key(), b.value().detach());
  return out;
}

std::string ModuleLoadReport::ToString() const {
  std::vector<std::string> parts;
  if (!missing.empty()) parts.push_back("missing: " + Join(missing));
  if (!unexpected.empty()) parts.push_back("unexpected: " + Join(unexpected));
  if (!mismatched.empty()) parts.push_back("shape mismatch: " + Join(mismatched));
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? "; " : "") + parts[i];
  return out;
}

ModuleLoadReport LoadModuleState(torch::nn::Module& module, const StateDict& state, bool strict) {
  std::vector<std::pair<std::string, torch::Tensor>> targets;
  for (const auto& p : module.named_parameters(true)) targets.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers(true)) targets.emplace_back(b.key(), b.value());

  ModuleLoadReport report;
  std::vector<std::pair<torch::Tensor, const at::Tensor*>> copies;
  std::set<std::string> known;
  for (const auto& t : targets) {
    known.insert(t.first);
    const Value* v = state.find(t.first);
    if (v == nullptr) {
      report.missing.push_back(t.first);
    } else if (!v->is_tensor()) {
      report.mismatched.push_back(t.first + ": checkpoint holds a " + KindName(v->kind()) +
                                  ", not a tensor");
    } else if (v->tensor().sizes() != t.second.sizes()) {
      report.mismatched.push_back(t.first + ": checkpoint " + ShapeString(v->tensor().sizes()) +
                                  " vs module " + ShapeString(t.second.sizes()));
    } else {
      copies.emplace_back(t.second, &v->tensor());
      report.loaded.push_back(t.first);
    }
  }
  for (const auto& kv : state) {
    if (known.count(kv.first) == 0) report.unexpected.push_back(kv.first);
  }
  if (strict && !report.clean()) {
    throw Error::InvalidArgument("module state does not match the module (" + report.ToString() +
                                 "); load it leniently to skip these keys");
  }
  torch::NoGradGuard no_grad;
  for (auto& c : copies) {
    // A state read straight into the module (CheckpointReader::ReadInto, the
    // Trainer on resume) already holds the module's own tensors: nothing to copy.
    if (SameBytes(c.first, *c.second)) continue;
    c.first.copy_(*c.second);
  }
  return report;
}

// ---- RNG ----

StateDict CaptureRngState() {
  StateDict out;
  {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    out.set("cpu", gen.get_state());
  }
  if (torch::cuda::is_available()) {
    List cuda;
    const size_t n = torch::cuda::device_count();
    for (size_t i = 0; i < n; ++i) {
      at::Generator gen = at::globalContext().defaultGenerator(
          at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(i)));
      std::lock_guard<std::mutex> lock(gen.mutex());
      cuda.emplace_back(gen.get_state());
    }
    out.set("cuda", std::move(cuda));
  }
  return out;
}

void RestoreRngState(const StateDict& state) {
  const std::string w = "RNG state";
  const Value& cpu = state.get("cpu", w);
  if (!cpu.is_tensor() || cpu.tensor().scalar_type() != at::kByte) {
    throw Error::InvalidArgument(w + ".cpu must be a uint8 tensor");
  }
  for (const auto& kv : state) {
    if (kv.first != "cpu" && kv.first != "cuda") {
      throw Error::InvalidArgument(w + " has an unknown entry '" + kv.first + "'");
    }
  }
  const List* cuda = nullptr;
  if (state.contains("cuda")) {
    cuda = &state.get_list("cuda", w);
    for (const Value& v : *cuda) {
      if (!v.is_tensor() || v.tensor().scalar_type() != at::kByte) {
        throw Error::InvalidArgument(w + ".cuda must be a list of uint8 tensors");
      }
    }
  }
  {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    try {
      gen.set_state(cpu.tensor().contiguous());
    } catch (const c10::Error& e) {
      throw Error::InvalidArgument(
          w + ".cpu is not a CPU generator state: " + e.what_without_backtrace());
    }
  }
  if (cuda != nullptr && torch::cuda::is_available()) {
    const size_t n = std::min(cuda->size(), torch::cuda::device_count());
    for (size_t i = 0; i < n; ++i) {
      at::Generator gen = at::globalContext().defaultGenerator(
          at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(i)));
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state((*cuda)[i].tensor().contiguous());
    }
  }
}

}  // namespace ackpt
