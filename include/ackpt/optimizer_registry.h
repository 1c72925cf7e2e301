// Describing optimizer and LR scheduler types to ackpt, so that their state
// can be captured into a StateDict and restored (torch_state.h).
//
// LibTorch gives an optimizer's state no state_dict: hyper-parameters live in
// an options object per param group, the rest in one OptimizerParamState
// object per parameter, each with TORCH_ARG fields that cannot be enumerated
// at run time. A registration lists those fields once, by name; capture and
// restore are generic code driven by it:
//
//   ackpt::RegisterOptimizer<Lion, LionOptions, LionParamState>(
//       "Lion",
//       {ACKPT_ARG(lr), ACKPT_ARG(betas), ACKPT_ARG(weight_decay)},  // options, per param group
//       {ACKPT_ARG(exp_avg)});                                        // state, per parameter
//
//   ackpt::RegisterScheduler<WarmupLR>("WarmupLR");  // state beyond the step count: fields
//
// LibTorch's Adam, AdamW, SGD, RMSprop, Adagrad, LBFGS and StepLR are
// registered the same way, by ackpt itself. Register your types once, before
// the first capture or restore (registering a type again with the same name
// replaces its description). The name is what a checkpoint records as the
// type; keep it stable across versions of your program.
//
// A field is read and written through an accessor that returns a reference
// to it: ACKPT_ARG(lr) uses a TORCH_ARG's `lr()`; for a plain member write
// ackpt::Field("lr", [](auto& o) -> auto& { return o.lr; }). Field types:
// bool; every integral type (stored as int64, range-checked on restore);
// float and double; std::string; at::Tensor; std::optional / c10::optional
// of these (left out while empty); std::vector and std::deque of these
// (lists); std::pair and std::tuple (lists of fixed length).
//
// Tensors are captured detached, sharing storage (save() snapshots them), and
// restored as copies with their dtype, on the parameter's device for
// per-parameter state (RestoreOptimizer's RestoreMode::kAdopt takes them
// over instead, where they already are on that device). A tensor field of
// the per-parameter state must have its parameter's shape unless marked
// .any_shape(); an undefined tensor fails the capture unless marked
// .optional() (LibTorch leaves state it creates on demand undefined, e.g.
// SGD's momentum_buffer), which leaves it out while undefined and restores
// it undefined when absent.
#pragma once

#include <torch/optim/optimizer.h>
#include <torch/optim/schedulers/lr_scheduler.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <utility>
#include <vector>

#include "ackpt/export.h"
#include "ackpt/state_dict.h"

namespace ackpt {

// ---- fields ---------------------------------------------------------------------

// A named field and the accessor that reaches it (see ackpt::Field).
template <typename Access>
class FieldSpec {
 public:
  FieldSpec(std::string name, Access access) : name_(std::move(name)), access_(std::move(access)) {}
  // A tensor that may be undefined: left out of the capture while undefined,
  // restored undefined when absent.
  FieldSpec optional() const {
    FieldSpec copy = *this;
    copy.optional_ = true;
    return copy;
  }
  // A per-parameter tensor (or list of tensors) whose shape is not its
  // parameter's (e.g. LBFGS's flat buffers): no shape check on restore.
  FieldSpec any_shape() const {
    FieldSpec copy = *this;
    copy.any_shape_ = true;
    return copy;
  }
  const std::string& name() const { return name_; }
  const Access& access() const { return access_; }
  bool is_optional() const { return optional_; }
  bool is_any_shape() const { return any_shape_; }

 private:
  std::string name_;
  Access access_;
  bool optional_ = false;
  bool any_shape_ = false;
};

// A field `name` reached through `access`, a callable that takes the object
// (options, param state or scheduler) by reference and returns a reference
// to the field: [](auto& o) -> auto& { return o.beta; }.
template <typename Access>
FieldSpec<Access> Field(std::string name, Access access) {
  return FieldSpec<Access>(std::move(name), std::move(access));
}

// A field declared with LibTorch's TORCH_ARG(T, name): reached through name().
#define ACKPT_ARG(name) \
  ::ackpt::Field(       \
      #name, [](auto& ackpt_object) -> auto& { return ackpt_object.name(); })

namespace detail {

struct DecodeContext {
  const at::Tensor* param;  // the parameter a per-parameter state belongs to, else null
  bool check_shape;         // the tensor must have the parameter's shape
};

// Out of line so that every message reads the same.
ACKPT_EXPORT at::Tensor RestoreTensor(const Value& value, const std::string& path,
                                      const DecodeContext& context);
// `value` does not fit the field's integral type of `bits` bits.
[[noreturn]] ACKPT_EXPORT void ThrowOutOfRange(const std::string& path, int64_t value,
                                               bool is_signed, size_t bits);
[[noreturn]] ACKPT_EXPORT void ThrowWrongLength(const std::string& path, size_t expected,
                                                size_t actual);
// The field at `path` is (in_list: holds) an undefined tensor or empty optional.
[[noreturn]] ACKPT_EXPORT void ThrowUndefined(const std::string& path, bool in_list);
[[noreturn]] ACKPT_EXPORT void ThrowWrongType(const std::string& where,
                                              const std::type_info& actual,
                                              const std::type_info& registered);

template <typename T, typename = void>
struct IsOptionalLike : std::false_type {};
template <typename T>
struct IsOptionalLike<T, std::void_t<typename T::value_type>>
    : std::bool_constant<std::is_same_v<T, std::optional<typename T::value_type>> ||
                         std::is_same_v<T, c10::optional<typename T::value_type>>> {};

template <typename T>
struct IsSequence : std::false_type {};
template <typename E, typename A>
struct IsSequence<std::vector<E, A>> : std::true_type {};
template <typename E, typename A>
struct IsSequence<std::deque<E, A>> : std::true_type {};

template <typename T>
struct IsTuple : std::false_type {};
template <typename... E>
struct IsTuple<std::tuple<E...>> : std::true_type {};
template <typename A, typename B>
struct IsTuple<std::pair<A, B>> : std::true_type {};

template <typename>
constexpr bool kAlwaysFalse = false;

// Codec<V>::Encode(v, &out) -> false when v is unset (undefined tensor, empty
// optional); Codec<V>::Decode(value, path, context) -> V or ackpt::Error.
template <typename V, typename = void>
struct Codec {
  static_assert(kAlwaysFalse<V>,
                "ackpt cannot checkpoint a field of this type: use bool, an integral or floating "
                "type, std::string, at::Tensor, or optionals, vectors, deques, pairs and tuples "
                "of these (ackpt/optimizer_registry.h)");
};

template <>
struct Codec<bool> {
  static bool Encode(bool v, Value* out) {
    *out = Value(v);
    return true;
  }
  static bool Decode(const Value& v, const std::string& path, const DecodeContext&) {
    return v.to_bool(path);
  }
};

template <typename I>
struct Codec<I, std::enable_if_t<kIsStoredInteger<I>>> {
  static bool Encode(I v, Value* out) {
    *out = Value(v);
    return true;
  }
  static I Decode(const Value& v, const std::string& path, const DecodeContext&) {
    const int64_t x = v.to_int(path);
    bool fits;
    if constexpr (std::is_signed_v<I>) {
      fits = x >= static_cast<int64_t>(std::numeric_limits<I>::min()) &&
             x <= static_cast<int64_t>(std::numeric_limits<I>::max());
    } else {
      fits = x >= 0 && static_cast<uint64_t>(x) <= std::numeric_limits<I>::max();
    }
    if (!fits) ThrowOutOfRange(path, x, std::is_signed_v<I>, sizeof(I) * 8);
    return static_cast<I>(x);
  }
};

template <typename F>
struct Codec<F, std::enable_if_t<std::is_floating_point_v<F>>> {
  static bool Encode(F v, Value* out) {
    *out = Value(static_cast<double>(v));
    return true;
  }
  static F Decode(const Value& v, const std::string& path, const DecodeContext&) {
    return static_cast<F>(v.to_double(path));
  }
};

template <>
struct Codec<std::string> {
  static bool Encode(const std::string& v, Value* out) {
    *out = Value(v);
    return true;
  }
  static std::string Decode(const Value& v, const std::string& path, const DecodeContext&) {
    return v.str(path);
  }
};

template <>
struct Codec<at::Tensor> {
  static bool Encode(const at::Tensor& v, Value* out) {
    if (!v.defined()) return false;
    *out = Value(v.detach());
    return true;
  }
  static at::Tensor Decode(const Value& v, const std::string& path, const DecodeContext& context) {
    return RestoreTensor(v, path, context);
  }
};

template <typename O>
struct Codec<O, std::enable_if_t<IsOptionalLike<O>::value>> {
  using Inner = Codec<typename O::value_type>;
  static bool Encode(const O& v, Value* out) { return v.has_value() && Inner::Encode(*v, out); }
  static O Decode(const Value& v, const std::string& path, const DecodeContext& context) {
    return O(Inner::Decode(v, path, context));
  }
};

template <typename S>
struct Codec<S, std::enable_if_t<IsSequence<S>::value>> {
  using Inner = Codec<typename S::value_type>;
  static bool Encode(const S& v, Value* out) {
    List list;
    list.reserve(v.size());
    for (const auto& e : v) {
      list.emplace_back();
      if (!Inner::Encode(e, &list.back())) return false;  // the caller names the field
    }
    *out = Value(std::move(list));
    return true;
  }
  static S Decode(const Value& v, const std::string& path, const DecodeContext& context) {
    const List& list = v.list(path);
    S out;
    for (size_t i = 0; i < list.size(); ++i) {
      out.push_back(Inner::Decode(list[i], path + "[" + std::to_string(i) + "]", context));
    }
    return out;
  }
};

template <typename T>
struct Codec<T, std::enable_if_t<IsTuple<T>::value>> {
  static constexpr size_t kSize = std::tuple_size<T>::value;
  static bool Encode(const T& v, Value* out) {
    List list(kSize);
    bool all = true;
    EncodeEach(v, &list, &all, std::make_index_sequence<kSize>());
    if (all) *out = Value(std::move(list));
    return all;
  }
  static T Decode(const Value& v, const std::string& path, const DecodeContext& context) {
    const List& list = v.list(path);
    if (list.size() != kSize) ThrowWrongLength(path, kSize, list.size());
    return DecodeEach(list, path, context, std::make_index_sequence<kSize>());
  }

 private:
  template <size_t... I>
  static void EncodeEach(const T& v, List* list, bool* all, std::index_sequence<I...>) {
    ((*all = *all && Codec<std::tuple_element_t<I, T>>::Encode(std::get<I>(v), &(*list)[I])), ...);
  }
  template <size_t... I>
  static T DecodeEach(const List& list, const std::string& path, const DecodeContext& context,
                      std::index_sequence<I...>) {
    return T(Codec<std::tuple_element_t<I, T>>::Decode(
        list[I], path + "[" + std::to_string(I) + "]", context)...);
  }
};

}  // namespace detail

// A field of objects of type T (options, param state or scheduler), with its
// type erased; built implicitly from ACKPT_ARG(...) / ackpt::Field(...).
template <typename T>
class TypedField {
 public:
  template <typename Access>
  TypedField(const FieldSpec<Access>& spec);  // NOLINT(google-explicit-constructor): list syntax

  const std::string& name() const { return name_; }
  // Sets out[name()] from `object`; an unset optional field is left out.
  // `where` names the object in errors.
  void capture(const T& object, StateDict* out, const std::string& where) const {
    capture_(object, out, where);
  }
  // Checks saved[name()] and returns what writes it into an object; changes
  // nothing itself, so a restore can check every field before it writes any.
  // `param`: the parameter of a per-parameter state, else null.
  std::function<void(T&)> decode(const StateDict& saved, const std::string& where,
                                 const at::Tensor* param) const {
    return decode_(saved, where, param);
  }

 private:
  std::string name_;
  std::function<void(const T&, StateDict*, const std::string&)> capture_;
  std::function<std::function<void(T&)>(const StateDict&, const std::string&, const at::Tensor*)>
      decode_;
};

template <typename T>
template <typename Access>
TypedField<T>::TypedField(const FieldSpec<Access>& spec) : name_(spec.name()) {
  using Ref = decltype(std::declval<const Access&>()(std::declval<T&>()));
  static_assert(std::is_lvalue_reference_v<Ref> && !std::is_const_v<std::remove_reference_t<Ref>>,
                "a field's accessor must return a non-const reference to the field");
  using V = std::decay_t<Ref>;
  const Access access = spec.access();
  const std::string name = spec.name();
  const bool optional = spec.is_optional() || detail::IsOptionalLike<V>::value;
  const bool check_shape = !spec.is_any_shape();
  capture_ = [access, name, optional](const T& object, StateDict* out, const std::string& where) {
    // Reading through the non-const accessor lets one accessor serve both ways.
    const V& v = access(const_cast<T&>(object));
    Value encoded;
    if (detail::Codec<V>::Encode(v, &encoded)) {
      out->set(name, std::move(encoded));
    } else if (detail::IsSequence<V>::value || detail::IsTuple<V>::value) {
      detail::ThrowUndefined(where + "." + name, /*in_list=*/true);
    } else if (!optional) {
      detail::ThrowUndefined(where + "." + name, /*in_list=*/false);
    }
  };
  decode_ = [access, name, optional, check_shape](
                const StateDict& saved, const std::string& where,
                const at::Tensor* param) -> std::function<void(T&)> {
    V value{};
    if (saved.contains(name) || !optional) {
      const detail::DecodeContext context{param, check_shape && param != nullptr};
      value = detail::Codec<V>::Decode(saved.get(name, where), where + "." + name, context);
    }
    return [access, value](T& object) { access(object) = value; };
  };
}

template <typename T>
using Fields = std::vector<TypedField<T>>;

// ---- optimizers -----------------------------------------------------------------

// What ackpt knows about one optimizer type; RegisterOptimizer builds it from
// field lists. Captured layout (CaptureOptimizer in torch_state.h):
//   {type: name, param_groups: [{params: [names], <option fields>}...],
//    state: {parameter name: {<param state fields>}}}
struct ACKPT_EXPORT OptimizerDescription {
  std::string name;                     // recorded as "type"; unique among optimizers
  std::type_index type = typeid(void);  // the optimizer's exact dynamic type
  std::vector<std::string> option_fields;
  std::vector<std::string> param_state_fields;
  // One param group's options into `out` (where: names the group in errors).
  std::function<void(const torch::optim::OptimizerOptions& options, StateDict* out,
                     const std::string& where)>
      capture_options;
  // A copy of `current` (same type) with the hyper-parameters in `saved`.
  std::function<std::unique_ptr<torch::optim::OptimizerOptions>(
      const torch::optim::OptimizerOptions& current, const StateDict& saved,
      const std::string& where)>
      restore_options;
  std::function<void(const torch::optim::OptimizerParamState& state, StateDict* out,
                     const std::string& where)>
      capture_param_state;
  // A new param state for `param` from `saved`.
  std::function<std::unique_ptr<torch::optim::OptimizerParamState>(
      const StateDict& saved, const at::Tensor& param, const std::string& where)>
      restore_param_state;
  // Optional. Creates the per-parameter state the optimizer would create at
  // its first step (zeros, on each parameter's device, of its dtype), for
  // parameters requiring grad that have none yet. A resume creates it before
  // it loads, so the checkpoint's tensors are read straight into the tensors
  // the optimizer then keeps (CreateOptimizerState, torch_state.h). Unset:
  // that state is read into fresh tensors, which the optimizer takes over.
  std::function<void(torch::optim::Optimizer& optimizer)> create_state;
};

// Adds (or, for a type registered before under the same name, replaces) a
// description. Throws ackpt::Error (kInvalidArgument) when the name is empty
// or taken by another type, the type is registered under another name, or a
// function is missing. Thread-safe.
ACKPT_EXPORT void RegisterOptimizerDescription(OptimizerDescription description);
// The description of the optimizer's type, or null when it is not registered.
ACKPT_EXPORT std::shared_ptr<const OptimizerDescription> FindOptimizerDescription(
    const torch::optim::Optimizer& optimizer);
// Names of the registered optimizer types, in registration order.
ACKPT_EXPORT std::vector<std::string> RegisteredOptimizers();

namespace detail {
template <typename To, typename From>
const To& Downcast(const From& object, const std::string& where) {
  const To* p = dynamic_cast<const To*>(&object);
  if (p == nullptr) ThrowWrongType(where, typeid(object), typeid(To));
  return *p;
}

// Checks every field, then returns what writes them all.
template <typename T>
std::function<void(T&)> DecodeFields(const Fields<T>& fields, const StateDict& saved,
                                     const std::string& where, const at::Tensor* param) {
  std::vector<std::function<void(T&)>> setters;
  setters.reserve(fields.size());
  for (const auto& f : fields) setters.push_back(f.decode(saved, where, param));
  return [setters](T& object) {
    for (const auto& set : setters) set(object);
  };
}

template <typename T>
void CaptureFields(const Fields<T>& fields, const T& object, StateDict* out,
                   const std::string& where) {
  for (const auto& f : fields) f.capture(object, out, where);
}

template <typename T>
std::vector<std::string> FieldNames(const Fields<T>& fields) {
  std::vector<std::string> names;
  for (const auto& f : fields) names.push_back(f.name());
  return names;
}
}  // namespace detail

// Registers optimizer type OptimizerT (exactly this type; a subclass needs its
// own registration) whose param groups hold OptionsT and whose state holds
// ParamStateT per parameter. `options`: the hyper-parameters, `param_state`:
// the per-parameter state, in the order they are captured. `create_state`
// (optional): see OptimizerDescription::create_state.
template <typename OptimizerT, typename OptionsT, typename ParamStateT>
void RegisterOptimizer(const std::string& name, Fields<OptionsT> options,
                       Fields<ParamStateT> param_state,
                       std::function<void(OptimizerT&)> create_state = nullptr) {
  static_assert(std::is_base_of_v<torch::optim::Optimizer, OptimizerT>,
                "OptimizerT must derive from torch::optim::Optimizer");
  static_assert(std::is_base_of_v<torch::optim::OptimizerOptions, OptionsT> &&
                    std::is_copy_constructible_v<OptionsT>,
                "OptionsT must be a copyable torch::optim::OptimizerOptions");
  static_assert(std::is_base_of_v<torch::optim::OptimizerParamState, ParamStateT> &&
                    std::is_default_constructible_v<ParamStateT>,
                "ParamStateT must be a default-constructible torch::optim::OptimizerParamState");
  using torch::optim::OptimizerOptions;
  using torch::optim::OptimizerParamState;
  OptimizerDescription d;
  d.name = name;
  d.type = typeid(OptimizerT);
  d.option_fields = detail::FieldNames(options);
  d.param_state_fields = detail::FieldNames(param_state);
  d.capture_options = [options](const OptimizerOptions& o, StateDict* out,
                                const std::string& where) {
    detail::CaptureFields(options, detail::Downcast<OptionsT>(o, where), out, where);
  };
  d.restore_options = [options](const OptimizerOptions& current, const StateDict& saved,
                                const std::string& where) -> std::unique_ptr<OptimizerOptions> {
    auto apply = detail::DecodeFields(options, saved, where, nullptr);
    auto copy = std::make_unique<OptionsT>(detail::Downcast<OptionsT>(current, where));
    apply(*copy);
    return copy;
  };
  d.capture_param_state = [param_state](const OptimizerParamState& s, StateDict* out,
                                        const std::string& where) {
    detail::CaptureFields(param_state, detail::Downcast<ParamStateT>(s, where), out, where);
  };
  d.restore_param_state = [param_state](
                              const StateDict& saved, const at::Tensor& param,
                              const std::string& where) -> std::unique_ptr<OptimizerParamState> {
    auto apply = detail::DecodeFields(param_state, saved, where, &param);
    auto s = std::make_unique<ParamStateT>();
    apply(*s);
    return s;
  };
  if (create_state) {
    // The registry calls it only for optimizers whose dynamic type is OptimizerT.
    d.create_state = [create_state](torch::optim::Optimizer& o) {
      create_state(static_cast<OptimizerT&>(o));
    };
  }
  RegisterOptimizerDescription(std::move(d));
}

// ---- LR schedulers ----------------------------------------------------------------

// What ackpt knows about one torch::optim::LRScheduler subclass. Captured
// layout: {type: name, step_count: n, <fields>}; the step count (LibTorch's
// protected step_count_) is always captured, the learning rates themselves
// live in the optimizer's param groups and are restored with the optimizer.
struct ACKPT_EXPORT SchedulerDescription {
  std::string name;
  std::type_index type = typeid(void);
  std::vector<std::string> fields;
  std::function<void(const torch::optim::LRScheduler& scheduler, StateDict* out,
                     const std::string& where)>
      capture;
  // Checks `saved` and returns what writes it into a scheduler of this type.
  std::function<std::function<void(torch::optim::LRScheduler&)>(const StateDict& saved,
                                                                const std::string& where)>
      decode;
};

ACKPT_EXPORT void RegisterSchedulerDescription(SchedulerDescription description);
ACKPT_EXPORT std::shared_ptr<const SchedulerDescription> FindSchedulerDescription(
    const torch::optim::LRScheduler& scheduler);
ACKPT_EXPORT std::vector<std::string> RegisteredSchedulers();

// Registers scheduler type SchedulerT (exactly this type). `fields`: its
// state beyond the step count, if any (LibTorch's own schedulers have none:
// their other members are constructor arguments).
template <typename SchedulerT>
void RegisterScheduler(const std::string& name, Fields<SchedulerT> fields = {}) {
  static_assert(std::is_base_of_v<torch::optim::LRScheduler, SchedulerT>,
                "SchedulerT must derive from torch::optim::LRScheduler; wrap other schedulers "
                "in an ackpt::Scheduler (torch_state.h)");
  using torch::optim::LRScheduler;
  SchedulerDescription d;
  d.name = name;
  d.type = typeid(SchedulerT);
  d.fields = detail::FieldNames(fields);
  // The registry calls these only for schedulers whose dynamic type is SchedulerT.
  d.capture = [fields](const LRScheduler& s, StateDict* out, const std::string& where) {
    detail::CaptureFields(fields, static_cast<const SchedulerT&>(s), out, where);
  };
  d.decode = [fields](const StateDict& saved,
                      const std::string& where) -> std::function<void(LRScheduler&)> {
    auto apply = detail::DecodeFields(fields, saved, where, nullptr);
    return [apply](LRScheduler& s) { apply(static_cast<SchedulerT&>(s)); };
  };
  RegisterSchedulerDescription(std::move(d));
}

}  // namespace ackpt
