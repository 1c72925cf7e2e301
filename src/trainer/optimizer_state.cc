// Optimizer and LR scheduler state, captured and restored by generic code
// driven by the registered descriptions (ackpt/optimizer_registry.h).
#include <c10/util/C++17.h>

#include <algorithm>
#include <climits>
#include <set>
#include <unordered_map>

#include "ackpt/error.h"
#include "ackpt/format.h"
#include "ackpt/torch_state.h"
#include "trainer/internal.h"

namespace ackpt {

namespace {

using torch::optim::Optimizer;
using torch::optim::OptimizerOptions;
using torch::optim::OptimizerParamState;

// The key LibTorch's optimizers use in state(): the parameter's TensorImpl address.
std::string StateKey(const torch::Tensor& param) {
  return c10::guts::to_string(param.unsafeGetTensorImpl());
}

// "Lion" for "my::opt::Lion": what an example registration would call it.
std::string ShortName(const std::string& cpp_name) {
  const size_t colon = cpp_name.rfind("::");
  return colon == std::string::npos ? cpp_name : cpp_name.substr(colon + 2);
}

std::string Registered(const std::vector<std::string>& names) {
  return names.empty() ? "none" : Join(names);
}

// Fails now, at capture (the first save), rather than when a checkpoint that
// could not hold the state is loaded.
std::shared_ptr<const OptimizerDescription> DescriptionOf(const Optimizer& optimizer) {
  auto d = FindOptimizerDescription(optimizer);
  if (d) return d;
  const std::string type = TypeNameOf(typeid(optimizer));
  // Name the option and state types where the optimizer shows them.
  std::string options = "OptionsType", state = "ParamStateType";
  if (!optimizer.param_groups().empty() && optimizer.param_groups()[0].has_options()) {
    options = TypeNameOf(typeid(optimizer.param_groups()[0].options()));
  }
  for (const auto& kv : optimizer.state()) {
    if (kv.second) state = TypeNameOf(typeid(*kv.second));
  }
  throw Error::Unsupported(
      "optimizer type " + type +
      " is not registered with ackpt, so its state cannot be checkpointed. Register it once, "
      "before the first save, listing its hyper-parameters and its per-parameter state "
      "(ackpt/optimizer_registry.h):\n  ackpt::RegisterOptimizer<" +
      type + ", " + options + ", " + state + ">(\"" + ShortName(type) +
      "\", {ACKPT_ARG(lr), ...}, {ACKPT_ARG(exp_avg), ...});\nregistered optimizers: " +
      Registered(RegisteredOptimizers()));
}

std::shared_ptr<const SchedulerDescription> DescriptionOf(
    const torch::optim::LRScheduler& scheduler) {
  auto d = FindSchedulerDescription(scheduler);
  if (d) return d;
  const std::string type = TypeNameOf(typeid(scheduler));
  throw Error::Unsupported(
      "LR scheduler type " + type +
      " is not registered with ackpt, so its state cannot be checkpointed. Register it once, "
      "before the first save, listing any state it keeps beyond LibTorch's step count "
      "(ackpt/optimizer_registry.h):\n  ackpt::RegisterScheduler<" +
      type + ">(\"" + ShortName(type) +
      "\", {/* ACKPT_ARG(field), ... */});\nregistered schedulers: " +
      Registered(RegisteredSchedulers()));
}

// The type the checkpoint's state was captured from, which must be `expected`.
const std::string& CheckSavedType(const StateDict& state, const std::string& kind,
                                  const std::string& expected) {
  const std::string& saved = state.get_string("type", kind + " state");
  if (saved != expected) {
    throw Error::InvalidArgument(kind + " type mismatch: the checkpoint holds " + saved +
                                 " state but the " + kind + " is " + expected);
  }
  return saved;
}

// Entries of `d` other than `known` are errors: a checkpoint of another
// version or type would otherwise restore silently incomplete.
void CheckKnownKeys(const StateDict& d, const std::vector<std::string>& known,
                    const std::string& where) {
  for (const auto& kv : d) {
    if (std::find(known.begin(), known.end(), kv.first) == known.end()) {
      throw Error::InvalidArgument(where + " has an unknown entry '" + kv.first +
                                   "' (expected: " + Join(known) + ")");
    }
  }
}

// Names of the optimizer's parameters, group by group.
std::vector<std::vector<std::string>> GroupNames(const Optimizer& optimizer,
                                                 const NamedTensors& named) {
  std::unordered_map<const c10::TensorImpl*, std::string> names;
  for (const auto& item : named) names.emplace(item.value().unsafeGetTensorImpl(), item.key());
  std::vector<std::vector<std::string>> out;
  const auto& groups = optimizer.param_groups();
  for (size_t g = 0; g < groups.size(); ++g) {
    std::vector<std::string> group;
    const auto& params = groups[g].params();
    for (size_t i = 0; i < params.size(); ++i) {
      auto it = names.find(params[i].unsafeGetTensorImpl());
      if (it == names.end()) {
        throw Error::InvalidArgument("parameter #" + std::to_string(i) +
                                     " of the optimizer's param group " + std::to_string(g) +
                                     " (shape " + ShapeString(params[i].sizes()) +
                                     ") is not among the module's named parameters");
      }
      group.push_back(it->second);
    }
    out.push_back(std::move(group));
  }
  return out;
}

// Checks that saved group `g` names exactly the parameters of the optimizer's group.
void CheckGroupParams(const StateDict& saved, const std::vector<std::string>& current, size_t g,
                      const std::string& where) {
  std::set<std::string> saved_names;
  for (const Value& v : saved.get_list("params", where)) {
    saved_names.insert(v.str(where + ".params[]"));
  }
  const std::set<std::string> current_names(current.begin(), current.end());
  for (const auto& n : current) {
    if (saved_names.count(n) == 0) {
      throw Error::InvalidArgument(
          "parameter '" + n + "' of the optimizer's param group " + std::to_string(g) +
          " is missing from the checkpoint's param group " + std::to_string(g));
    }
  }
  for (const auto& n : saved_names) {
    if (current_names.count(n) == 0) {
      throw Error::InvalidArgument(
          "the checkpoint's param group " + std::to_string(g) + " names parameter '" + n +
          "', which is not in the optimizer's param group " + std::to_string(g));
    }
  }
}

// Lets ackpt read and write LibTorch's protected LRScheduler::step_count_.
struct SchedulerAccess : torch::optim::LRScheduler {
  static unsigned& StepCount(torch::optim::LRScheduler& s) {
    return s.*(&SchedulerAccess::step_count_);
  }
};

}  // namespace

// ---- optimizers ----

std::string OptimizerTypeName(const torch::optim::Optimizer& optimizer) {
  return DescriptionOf(optimizer)->name;
}

StateDict CaptureOptimizer(const torch::optim::Optimizer& optimizer,
                           const NamedTensors& named_parameters) {
  const auto d = DescriptionOf(optimizer);
  const auto names = GroupNames(optimizer, named_parameters);
  StateDict out;
  out.set("type", d->name);
  List groups;
  StateDict state;
  const auto& param_groups = optimizer.param_groups();
  for (size_t g = 0; g < param_groups.size(); ++g) {
    StateDict group;
    List params;
    for (const auto& n : names[g]) params.emplace_back(n);
    group.set("params", std::move(params));
    d->capture_options(param_groups[g].options(), &group,
                       "optimizer param_groups[" + std::to_string(g) + "]");
    groups.emplace_back(std::move(group));
    const auto& tensors = param_groups[g].params();
    for (size_t i = 0; i < tensors.size(); ++i) {
      auto it = optimizer.state().find(StateKey(tensors[i]));
      if (it == optimizer.state().end() || !it->second) continue;
      StateDict s;
      d->capture_param_state(*it->second, &s, "optimizer state['" + names[g][i] + "']");
      state.set(names[g][i], std::move(s));
    }
  }
  out.set("param_groups", std::move(groups));
  out.set("state", std::move(state));
  return out;
}

StateDict CaptureOptimizer(const torch::optim::Optimizer& optimizer,
                           const torch::nn::Module& module) {
  return CaptureOptimizer(optimizer, module.named_parameters(true));
}

void RestoreOptimizer(torch::optim::Optimizer& optimizer, const NamedTensors& named_parameters,
                      const StateDict& state, RestoreMode mode) {
  const auto d = DescriptionOf(optimizer);
  // The optimizer's own state tensors: a saved tensor that is one of them (a
  // load read it in place) is kept, not copied, whatever the mode.
  std::unordered_multimap<const void*, at::Tensor> own;
  for (const auto& kv : optimizer.state()) {
    if (!kv.second) continue;
    StateDict captured;
    try {
      d->capture_param_state(*kv.second, &captured, "optimizer state");
      for (const auto& t : FlattenTensors(captured)) own.emplace(t.second.data_ptr(), t.second);
    } catch (const Error&) {
      // A state it cannot capture holds nothing a saved state could be.
    }
  }
  const AdoptTensor adopt = [&own, mode](const at::Tensor& saved) {
    if (mode == RestoreMode::kAdopt) return true;
    auto range = own.equal_range(saved.data_ptr());
    for (auto it = range.first; it != range.second; ++it) {
      if (SameBytes(it->second, saved)) return true;
    }
    return false;
  };
  ScopedAdoption adoption(&adopt);
  const std::string w = "optimizer state";
  const std::string& saved_type = CheckSavedType(state, "optimizer", d->name);
  const List& saved_groups = state.get_list("param_groups", w);
  const StateDict& saved_state = state.get_dict("state", w);
  auto& groups = optimizer.param_groups();
  if (saved_groups.size() != groups.size()) {
    throw Error::InvalidArgument(
        "the checkpoint's " + saved_type + " state has " + std::to_string(saved_groups.size()) +
        " param groups but the optimizer has " + std::to_string(groups.size()));
  }
  const auto names = GroupNames(optimizer, named_parameters);
  std::vector<std::string> option_keys = d->option_fields;
  option_keys.insert(option_keys.begin(), "params");

  // Check and build everything first; change the optimizer only at the end.
  std::unordered_map<std::string, torch::Tensor> params_by_name;
  std::vector<std::unique_ptr<OptimizerOptions>> new_options;
  for (size_t g = 0; g < groups.size(); ++g) {
    const std::string gw = w + ".param_groups[" + std::to_string(g) + "]";
    const StateDict& sg = saved_groups[g].dict(gw);
    CheckGroupParams(sg, names[g], g, gw);
    CheckKnownKeys(sg, option_keys, gw);
    for (size_t i = 0; i < names[g].size(); ++i) {
      params_by_name.emplace(names[g][i], groups[g].params()[i]);
    }
    new_options.push_back(d->restore_options(groups[g].options(), sg, gw));
  }
  std::vector<std::pair<std::string, std::unique_ptr<OptimizerParamState>>> new_state;
  for (const auto& kv : saved_state) {
    auto it = params_by_name.find(kv.first);
    if (it == params_by_name.end()) {
      throw Error::InvalidArgument("the checkpoint's optimizer state names parameter '" + kv.first +
                                   "', which the optimizer does not hold");
    }
    const std::string sw = w + ".state['" + kv.first + "']";
    const StateDict& saved = kv.second.dict(sw);
    CheckKnownKeys(saved, d->param_state_fields, sw);
    new_state.emplace_back(StateKey(it->second), d->restore_param_state(saved, it->second, sw));
  }

  for (size_t g = 0; g < groups.size(); ++g) {
    groups[g].set_options(std::move(new_options[g]));
    for (const auto& p : groups[g].params()) optimizer.state().erase(StateKey(p));
  }
  for (auto& s : new_state) optimizer.state()[s.first] = std::move(s.second);
}

void RestoreOptimizer(torch::optim::Optimizer& optimizer, const torch::nn::Module& module,
                      const StateDict& state, RestoreMode mode) {
  RestoreOptimizer(optimizer, module.named_parameters(true), state, mode);
}

void CreateOptimizerState(torch::optim::Optimizer& optimizer) {
  const auto d = DescriptionOf(optimizer);
  if (d->create_state) d->create_state(optimizer);
}

// ---- schedulers ----

std::string SchedulerTypeName(const torch::optim::LRScheduler& scheduler) {
  return DescriptionOf(scheduler)->name;
}

StateDict CaptureScheduler(const torch::optim::LRScheduler& scheduler) {
  const auto d = DescriptionOf(scheduler);
  StateDict out;
  out.set("type", d->name);
  out.set("step_count",
          SchedulerAccess::StepCount(const_cast<torch::optim::LRScheduler&>(scheduler)));
  d->capture(scheduler, &out, "scheduler state");
  return out;
}

void RestoreScheduler(torch::optim::LRScheduler& scheduler, const StateDict& state) {
  const auto d = DescriptionOf(scheduler);
  const std::string w = "scheduler state";
  CheckSavedType(state, "scheduler", d->name);
  const int64_t count = state.get_int("step_count", w);
  if (count < 0 || count > static_cast<int64_t>(UINT_MAX)) {
    throw Error::InvalidArgument(w + ".step_count " + std::to_string(count) + " is out of range");
  }
  std::vector<std::string> known = d->fields;
  known.insert(known.begin(), {"type", "step_count"});
  CheckKnownKeys(state, known, w);
  const auto apply = d->decode(state, w);
  SchedulerAccess::StepCount(scheduler) = static_cast<unsigned>(count);
  apply(scheduler);
}

TorchScheduler::TorchScheduler(std::shared_ptr<torch::optim::LRScheduler> scheduler)
    : scheduler_(std::move(scheduler)) {
  if (!scheduler_) throw Error::InvalidArgument("TorchScheduler needs a scheduler, got null");
}

void TorchScheduler::step() { scheduler_->step(); }

StateDict TorchScheduler::get_state() const { return CaptureScheduler(*scheduler_); }

void TorchScheduler::update_state(const StateDict& state) { RestoreScheduler(*scheduler_, state); }

}  // namespace ackpt
