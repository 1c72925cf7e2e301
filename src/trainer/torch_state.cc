// Capture and restore of LibTorch state that has no StateDict of its own.
#include "ackpt/torch_state.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <c10/util/C++17.h>
#include <c10/util/Type.h>
#include <torch/cuda.h>
#include <torch/optim.h>

#include <climits>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <unordered_map>

#include "ackpt/error.h"

namespace ackpt {

namespace {

using torch::optim::Optimizer;
using torch::optim::OptimizerOptions;
using torch::optim::OptimizerParamState;

std::string ShapeString(at::IntArrayRef shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out;
}

// The key LibTorch's optimizers use in state(): the parameter's TensorImpl address.
std::string StateKey(const torch::Tensor& param) {
  return c10::guts::to_string(param.unsafeGetTensorImpl());
}

// ---- typed field access with context in every message ----

const Value& Field(const StateDict& d, const std::string& key, const std::string& where) {
  const Value* v = d.find(key);
  if (v == nullptr) throw Error::InvalidArgument(where + " has no '" + key + "'");
  return *v;
}

double GetDouble(const StateDict& d, const std::string& key, const std::string& where) {
  const Value& v = Field(d, key, where);
  if (!v.is_double() && !v.is_int()) {
    throw Error::InvalidArgument(where + "." + key + " is a " + KindName(v.kind()) +
                                 ", not a number");
  }
  return v.to_double();
}

int64_t GetInt(const StateDict& d, const std::string& key, const std::string& where) {
  const Value& v = Field(d, key, where);
  if (!v.is_int()) {
    throw Error::InvalidArgument(where + "." + key + " is a " + KindName(v.kind()) +
                                 ", not an int");
  }
  return v.to_int();
}

bool GetBool(const StateDict& d, const std::string& key, const std::string& where) {
  const Value& v = Field(d, key, where);
  if (!v.is_bool()) {
    throw Error::InvalidArgument(where + "." + key + " is a " + KindName(v.kind()) +
                                 ", not a bool");
  }
  return v.to_bool();
}

const std::string& GetString(const StateDict& d, const std::string& key, const std::string& where) {
  const Value& v = Field(d, key, where);
  if (!v.is_string()) {
    throw Error::InvalidArgument(where + "." + key + " is a " + KindName(v.kind()) +
                                 ", not a string");
  }
  return v.str();
}

const List& GetList(const StateDict& d, const std::string& key, const std::string& where) {
  const Value& v = Field(d, key, where);
  if (!v.is_list()) {
    throw Error::InvalidArgument(where + "." + key + " is a " + KindName(v.kind()) +
                                 ", not a list");
  }
  return v.list();
}

const StateDict& GetDict(const StateDict& d, const std::string& key, const std::string& where) {
  const Value& v = Field(d, key, where);
  if (!v.is_dict()) {
    throw Error::InvalidArgument(where + "." + key + " is a " + KindName(v.kind()) +
                                 ", not a dict");
  }
  return v.dict();
}

// A state tensor for `param`: same shape as the parameter, copied onto its device.
torch::Tensor GetStateTensor(const StateDict& d, const std::string& key, const std::string& where,
                             const torch::Tensor& param) {
  const Value& v = Field(d, key, where);
  if (!v.is_tensor()) {
    throw Error::InvalidArgument(where + "." + key + " is a " + KindName(v.kind()) +
                                 ", not a tensor");
  }
  const at::Tensor& t = v.tensor();
  if (t.sizes() != param.sizes()) {
    throw Error::InvalidArgument(where + "." + key + " has shape " + ShapeString(t.sizes()) +
                                 " but the parameter has shape " + ShapeString(param.sizes()));
  }
  return t.detach().to(param.device(), t.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

torch::Tensor GetOptionalStateTensor(const StateDict& d, const std::string& key,
                                     const std::string& where, const torch::Tensor& param) {
  if (!d.contains(key)) return torch::Tensor();
  return GetStateTensor(d, key, where, param);
}

void SetIfDefined(StateDict* d, const std::string& key, const torch::Tensor& t) {
  if (t.defined()) d->set(key, t.detach());
}

List Betas(const std::tuple<double, double>& b) {
  return List{Value(std::get<0>(b)), Value(std::get<1>(b))};
}

std::tuple<double, double> GetBetas(const StateDict& d, const std::string& where) {
  const List& l = GetList(d, "betas", where);
  if (l.size() != 2 || !(l[0].is_double() || l[0].is_int()) ||
      !(l[1].is_double() || l[1].is_int())) {
    throw Error::InvalidArgument(where + ".betas must be a list of two numbers");
  }
  return {l[0].to_double(), l[1].to_double()};
}

// ---- per optimizer type ----

enum class OptType { kAdam, kAdamW, kSGD, kRMSprop, kAdagrad };

OptType TypeOf(const Optimizer& o) {
  if (dynamic_cast<const torch::optim::Adam*>(&o)) return OptType::kAdam;
  if (dynamic_cast<const torch::optim::AdamW*>(&o)) return OptType::kAdamW;
  if (dynamic_cast<const torch::optim::SGD*>(&o)) return OptType::kSGD;
  if (dynamic_cast<const torch::optim::RMSprop*>(&o)) return OptType::kRMSprop;
  if (dynamic_cast<const torch::optim::Adagrad*>(&o)) return OptType::kAdagrad;
  throw Error::Unsupported("ackpt cannot capture the state of optimizer " +
                           c10::demangle(typeid(o).name()) +
                           " (supported: Adam, AdamW, SGD, RMSprop, Adagrad)");
}

const char* TypeName(OptType t) {
  switch (t) {
    case OptType::kAdam:
      return "Adam";
    case OptType::kAdamW:
      return "AdamW";
    case OptType::kSGD:
      return "SGD";
    case OptType::kRMSprop:
      return "RMSprop";
    case OptType::kAdagrad:
      return "Adagrad";
  }
  return "?";
}

void CaptureOptions(OptType t, const OptimizerOptions& o, StateDict* d) {
  switch (t) {
    case OptType::kAdam: {
      const auto& a = static_cast<const torch::optim::AdamOptions&>(o);
      d->set("lr", a.lr());
      d->set("betas", Betas(a.betas()));
      d->set("eps", a.eps());
      d->set("weight_decay", a.weight_decay());
      d->set("amsgrad", a.amsgrad());
      break;
    }
    case OptType::kAdamW: {
      const auto& a = static_cast<const torch::optim::AdamWOptions&>(o);
      d->set("lr", a.lr());
      d->set("betas", Betas(a.betas()));
      d->set("eps", a.eps());
      d->set("weight_decay", a.weight_decay());
      d->set("amsgrad", a.amsgrad());
      break;
    }
    case OptType::kSGD: {
      const auto& a = static_cast<const torch::optim::SGDOptions&>(o);
      d->set("lr", a.lr());
      d->set("momentum", a.momentum());
      d->set("dampening", a.dampening());
      d->set("weight_decay", a.weight_decay());
      d->set("nesterov", a.nesterov());
      break;
    }
    case OptType::kRMSprop: {
      const auto& a = static_cast<const torch::optim::RMSpropOptions&>(o);
      d->set("lr", a.lr());
      d->set("alpha", a.alpha());
      d->set("eps", a.eps());
      d->set("weight_decay", a.weight_decay());
      d->set("momentum", a.momentum());
      d->set("centered", a.centered());
      break;
    }
    case OptType::kAdagrad: {
      const auto& a = static_cast<const torch::optim::AdagradOptions&>(o);
      d->set("lr", a.lr());
      d->set("lr_decay", a.lr_decay());
      d->set("weight_decay", a.weight_decay());
      d->set("initial_accumulator_value", a.initial_accumulator_value());
      d->set("eps", a.eps());
      break;
    }
  }
}

// A copy of `current` (same dynamic type) with the hyper-parameters of `d`.
std::unique_ptr<OptimizerOptions> BuildOptions(OptType t, const OptimizerOptions& current,
                                               const StateDict& d, const std::string& w) {
  switch (t) {
    case OptType::kAdam: {
      auto a = std::make_unique<torch::optim::AdamOptions>(
          static_cast<const torch::optim::AdamOptions&>(current));
      a->lr(GetDouble(d, "lr", w)).betas(GetBetas(d, w)).eps(GetDouble(d, "eps", w));
      a->weight_decay(GetDouble(d, "weight_decay", w)).amsgrad(GetBool(d, "amsgrad", w));
      return a;
    }
    case OptType::kAdamW: {
      auto a = std::make_unique<torch::optim::AdamWOptions>(
          static_cast<const torch::optim::AdamWOptions&>(current));
      a->lr(GetDouble(d, "lr", w)).betas(GetBetas(d, w)).eps(GetDouble(d, "eps", w));
      a->weight_decay(GetDouble(d, "weight_decay", w)).amsgrad(GetBool(d, "amsgrad", w));
      return a;
    }
    case OptType::kSGD: {
      auto a = std::make_unique<torch::optim::SGDOptions>(
          static_cast<const torch::optim::SGDOptions&>(current));
      a->lr(GetDouble(d, "lr", w)).momentum(GetDouble(d, "momentum", w));
      a->dampening(GetDouble(d, "dampening", w)).weight_decay(GetDouble(d, "weight_decay", w));
      a->nesterov(GetBool(d, "nesterov", w));
      return a;
    }
    case OptType::kRMSprop: {
      auto a = std::make_unique<torch::optim::RMSpropOptions>(
          static_cast<const torch::optim::RMSpropOptions&>(current));
      a->lr(GetDouble(d, "lr", w)).alpha(GetDouble(d, "alpha", w)).eps(GetDouble(d, "eps", w));
      a->weight_decay(GetDouble(d, "weight_decay", w)).momentum(GetDouble(d, "momentum", w));
      a->centered(GetBool(d, "centered", w));
      return a;
    }
    case OptType::kAdagrad: {
      auto a = std::make_unique<torch::optim::AdagradOptions>(
          static_cast<const torch::optim::AdagradOptions&>(current));
      a->lr(GetDouble(d, "lr", w)).lr_decay(GetDouble(d, "lr_decay", w));
      a->weight_decay(GetDouble(d, "weight_decay", w));
      a->initial_accumulator_value(GetDouble(d, "initial_accumulator_value", w));
      a->eps(GetDouble(d, "eps", w));
      return a;
    }
  }
  return nullptr;
}

StateDict CaptureParamState(OptType t, const OptimizerParamState& s) {
  StateDict d;
  switch (t) {
    case OptType::kAdam: {
      const auto& a = static_cast<const torch::optim::AdamParamState&>(s);
      d.set("step", a.step());
      SetIfDefined(&d, "exp_avg", a.exp_avg());
      SetIfDefined(&d, "exp_avg_sq", a.exp_avg_sq());
      SetIfDefined(&d, "max_exp_avg_sq", a.max_exp_avg_sq());
      break;
    }
    case OptType::kAdamW: {
      const auto& a = static_cast<const torch::optim::AdamWParamState&>(s);
      d.set("step", a.step());
      SetIfDefined(&d, "exp_avg", a.exp_avg());
      SetIfDefined(&d, "exp_avg_sq", a.exp_avg_sq());
      SetIfDefined(&d, "max_exp_avg_sq", a.max_exp_avg_sq());
      break;
    }
    case OptType::kSGD: {
      const auto& a = static_cast<const torch::optim::SGDParamState&>(s);
      SetIfDefined(&d, "momentum_buffer", a.momentum_buffer());
      break;
    }
    case OptType::kRMSprop: {
      const auto& a = static_cast<const torch::optim::RMSpropParamState&>(s);
      d.set("step", a.step());
      SetIfDefined(&d, "square_avg", a.square_avg());
      SetIfDefined(&d, "momentum_buffer", a.momentum_buffer());
      SetIfDefined(&d, "grad_avg", a.grad_avg());
      break;
    }
    case OptType::kAdagrad: {
      const auto& a = static_cast<const torch::optim::AdagradParamState&>(s);
      d.set("step", a.step());
      SetIfDefined(&d, "sum", a.sum());
      break;
    }
  }
  return d;
}

void CheckKeys(const StateDict& d, std::initializer_list<const char*> allowed,
               const std::string& w) {
  for (const auto& kv : d) {
    bool ok = false;
    for (const char* a : allowed) ok = ok || kv.first == a;
    if (!ok) throw Error::InvalidArgument(w + " has an unknown entry '" + kv.first + "'");
  }
}

std::unique_ptr<OptimizerParamState> BuildParamState(OptType t, const StateDict& d,
                                                     const torch::Tensor& p, const std::string& w) {
  switch (t) {
    case OptType::kAdam: {
      CheckKeys(d, {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}, w);
      auto s = std::make_unique<torch::optim::AdamParamState>();
      s->step(GetInt(d, "step", w));
      s->exp_avg(GetStateTensor(d, "exp_avg", w, p));
      s->exp_avg_sq(GetStateTensor(d, "exp_avg_sq", w, p));
      s->max_exp_avg_sq(GetOptionalStateTensor(d, "max_exp_avg_sq", w, p));
      return s;
    }
    case OptType::kAdamW: {
      CheckKeys(d, {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}, w);
      auto s = std::make_unique<torch::optim::AdamWParamState>();
      s->step(GetInt(d, "step", w));
      s->exp_avg(GetStateTensor(d, "exp_avg", w, p));
      s->exp_avg_sq(GetStateTensor(d, "exp_avg_sq", w, p));
      s->max_exp_avg_sq(GetOptionalStateTensor(d, "max_exp_avg_sq", w, p));
      return s;
    }
    case OptType::kSGD: {
      CheckKeys(d, {"momentum_buffer"}, w);
      auto s = std::make_unique<torch::optim::SGDParamState>();
      s->momentum_buffer(GetOptionalStateTensor(d, "momentum_buffer", w, p));
      return s;
    }
    case OptType::kRMSprop: {
      CheckKeys(d, {"step", "square_avg", "momentum_buffer", "grad_avg"}, w);
      auto s = std::make_unique<torch::optim::RMSpropParamState>();
      s->step(GetInt(d, "step", w));
      s->square_avg(GetStateTensor(d, "square_avg", w, p));
      s->momentum_buffer(GetOptionalStateTensor(d, "momentum_buffer", w, p));
      s->grad_avg(GetOptionalStateTensor(d, "grad_avg", w, p));
      return s;
    }
    case OptType::kAdagrad: {
      CheckKeys(d, {"step", "sum"}, w);
      auto s = std::make_unique<torch::optim::AdagradParamState>();
      s->step(GetInt(d, "step", w));
      s->sum(GetStateTensor(d, "sum", w, p));
      return s;
    }
  }
  return nullptr;
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

// Lets ackpt read and write LibTorch's protected LRScheduler::step_count_.
struct SchedulerAccess : torch::optim::LRScheduler {
  static unsigned& StepCount(torch::optim::LRScheduler& s) {
    return s.*(&SchedulerAccess::step_count_);
  }
};

}  // namespace

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
  for (auto& c : copies) c.first.copy_(*c.second);
  return report;
}

// ---- optimizers ----

std::string OptimizerTypeName(const torch::optim::Optimizer& optimizer) {
  return TypeName(TypeOf(optimizer));
}

StateDict CaptureOptimizer(const torch::optim::Optimizer& optimizer,
                           const NamedTensors& named_parameters) {
  const OptType type = TypeOf(optimizer);
  const auto names = GroupNames(optimizer, named_parameters);
  StateDict out;
  out.set("type", std::string(TypeName(type)));
  List groups;
  StateDict state;
  const auto& param_groups = optimizer.param_groups();
  for (size_t g = 0; g < param_groups.size(); ++g) {
    StateDict group;
    List params;
    for (const auto& n : names[g]) params.emplace_back(n);
    group.set("params", std::move(params));
    CaptureOptions(type, param_groups[g].options(), &group);
    groups.emplace_back(std::move(group));
    const auto& tensors = param_groups[g].params();
    for (size_t i = 0; i < tensors.size(); ++i) {
      auto it = optimizer.state().find(StateKey(tensors[i]));
      if (it == optimizer.state().end() || !it->second) continue;
      state.set(names[g][i], CaptureParamState(type, *it->second));
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
                      const StateDict& state) {
  const OptType type = TypeOf(optimizer);
  const std::string w = "optimizer state";
  const std::string& saved_type = GetString(state, "type", w);
  if (saved_type != TypeName(type)) {
    throw Error::InvalidArgument("optimizer type mismatch: the checkpoint holds " + saved_type +
                                 " state but the optimizer is " + TypeName(type));
  }
  const List& saved_groups = GetList(state, "param_groups", w);
  const StateDict& saved_state = GetDict(state, "state", w);
  auto& groups = optimizer.param_groups();
  if (saved_groups.size() != groups.size()) {
    throw Error::InvalidArgument(
        "the checkpoint's " + saved_type + " state has " + std::to_string(saved_groups.size()) +
        " param groups but the optimizer has " + std::to_string(groups.size()));
  }
  const auto names = GroupNames(optimizer, named_parameters);

  // Validate and build everything first; change the optimizer only at the end.
  std::unordered_map<std::string, torch::Tensor> params_by_name;
  std::vector<std::unique_ptr<OptimizerOptions>> new_options;
  for (size_t g = 0; g < groups.size(); ++g) {
    const std::string gw = w + ".param_groups[" + std::to_string(g) + "]";
    if (!saved_groups[g].is_dict()) throw Error::InvalidArgument(gw + " is not a dict");
    const StateDict& sg = saved_groups[g].dict();
    std::set<std::string> saved_names;
    for (const Value& v : GetList(sg, "params", gw)) {
      if (!v.is_string()) throw Error::InvalidArgument(gw + ".params must hold parameter names");
      saved_names.insert(v.str());
    }
    std::set<std::string> current;
    for (size_t i = 0; i < names[g].size(); ++i) {
      current.insert(names[g][i]);
      params_by_name.emplace(names[g][i], groups[g].params()[i]);
      if (saved_names.count(names[g][i]) == 0) {
        throw Error::InvalidArgument(
            "parameter '" + names[g][i] + "' of the optimizer's param group " + std::to_string(g) +
            " is missing from the checkpoint's param group " + std::to_string(g));
      }
    }
    for (const auto& n : saved_names) {
      if (current.count(n) == 0) {
        throw Error::InvalidArgument(
            "the checkpoint's param group " + std::to_string(g) + " names parameter '" + n +
            "', which is not in the optimizer's param group " + std::to_string(g));
      }
    }
    new_options.push_back(BuildOptions(type, groups[g].options(), sg, gw));
  }
  std::vector<std::pair<std::string, std::unique_ptr<OptimizerParamState>>> new_state;
  for (const auto& kv : saved_state) {
    auto it = params_by_name.find(kv.first);
    if (it == params_by_name.end()) {
      throw Error::InvalidArgument("the checkpoint's optimizer state names parameter '" + kv.first +
                                   "', which the optimizer does not hold");
    }
    const std::string sw = w + ".state['" + kv.first + "']";
    if (!kv.second.is_dict()) throw Error::InvalidArgument(sw + " is not a dict");
    new_state.emplace_back(StateKey(it->second),
                           BuildParamState(type, kv.second.dict(), it->second, sw));
  }

  for (size_t g = 0; g < groups.size(); ++g) {
    groups[g].set_options(std::move(new_options[g]));
    for (const auto& p : groups[g].params()) optimizer.state().erase(StateKey(p));
  }
  for (auto& s : new_state) optimizer.state()[s.first] = std::move(s.second);
}

void RestoreOptimizer(torch::optim::Optimizer& optimizer, const torch::nn::Module& module,
                      const StateDict& state) {
  RestoreOptimizer(optimizer, module.named_parameters(true), state);
}

// ---- schedulers ----

std::string SchedulerTypeName(const torch::optim::LRScheduler& scheduler) {
  if (dynamic_cast<const torch::optim::StepLR*>(&scheduler)) return "StepLR";
  return c10::demangle(typeid(scheduler).name());
}

StateDict CaptureScheduler(const torch::optim::LRScheduler& scheduler) {
  StateDict out;
  out.set("type", SchedulerTypeName(scheduler));
  out.set("step_count", static_cast<int64_t>(SchedulerAccess::StepCount(
                            const_cast<torch::optim::LRScheduler&>(scheduler))));
  return out;
}

void RestoreScheduler(torch::optim::LRScheduler& scheduler, const StateDict& state) {
  const std::string w = "scheduler state";
  const std::string& type = GetString(state, "type", w);
  const std::string expected = SchedulerTypeName(scheduler);
  if (type != expected) {
    throw Error::InvalidArgument("scheduler type mismatch: the checkpoint holds " + type +
                                 " state but the scheduler is " + expected);
  }
  const int64_t count = GetInt(state, "step_count", w);
  if (count < 0 || count > static_cast<int64_t>(UINT_MAX)) {
    throw Error::InvalidArgument(w + ".step_count " + std::to_string(count) + " is out of range");
  }
  SchedulerAccess::StepCount(scheduler) = static_cast<unsigned>(count);
}

TorchScheduler::TorchScheduler(std::shared_ptr<torch::optim::LRScheduler> scheduler)
    : scheduler_(std::move(scheduler)) {
  if (!scheduler_) throw Error::InvalidArgument("TorchScheduler needs a scheduler, got null");
}

void TorchScheduler::step() { scheduler_->step(); }

StateDict TorchScheduler::get_state() const { return CaptureScheduler(*scheduler_); }

void TorchScheduler::update_state(const StateDict& state) { RestoreScheduler(*scheduler_, state); }

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
  const Value& cpu = Field(state, "cpu", w);
  if (!cpu.is_tensor() || cpu.tensor().scalar_type() != at::kByte) {
    throw Error::InvalidArgument(w + ".cpu must be a uint8 tensor");
  }
  CheckKeys(state, {"cpu", "cuda"}, w);
  const List* cuda = nullptr;
  if (state.contains("cuda")) {
    cuda = &GetList(state, "cuda", w);
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
