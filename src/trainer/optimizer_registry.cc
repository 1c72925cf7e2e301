// The optimizer and scheduler registries, and the out-of-line parts of the
// field codecs in ackpt/optimizer_registry.h.
#include "ackpt/optimizer_registry.h"

#include <c10/util/Type.h>

#include <mutex>
#include <sstream>

#include "ackpt/error.h"
#include "trainer/internal.h"

namespace ackpt {

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

std::string TypeNameOf(std::type_index type) { return c10::demangle(type.name()); }

bool SameBytes(const at::Tensor& a, const at::Tensor& b) {
  return a.defined() && b.defined() && a.layout() == at::kStrided && b.layout() == at::kStrided &&
         a.device() == b.device() && a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         a.strides() == b.strides() && a.is_conj() == b.is_conj() && a.is_neg() == b.is_neg() &&
         a.data_ptr() == b.data_ptr();
}

namespace {
thread_local const AdoptTensor* t_adopt = nullptr;
}  // namespace

ScopedAdoption::ScopedAdoption(const AdoptTensor* adopt) : previous_(t_adopt) { t_adopt = adopt; }
ScopedAdoption::~ScopedAdoption() { t_adopt = previous_; }

namespace {

// The built-in types register through the public functions, which make sure
// the built-ins are registered first: this flag breaks that cycle.
thread_local bool t_registering_builtins = false;

void EnsureBuiltins() {
  if (t_registering_builtins) return;
  static std::once_flag once;
  std::call_once(once, [] {
    t_registering_builtins = true;
    try {
      RegisterBuiltinTypes();
    } catch (...) {
      t_registering_builtins = false;
      throw;
    }
    t_registering_builtins = false;
  });
}

// One registry per kind of description (optimizers, schedulers); every entry
// point registers the built-ins first, so they hold their names.
template <typename Description>
class Registry {
 public:
  explicit Registry(const char* kind) : kind_(kind) {}

  // complete: the description has all its functions.
  void Add(Description d, bool complete) {
    EnsureBuiltins();
    if (d.name.empty()) throw Error::InvalidArgument(kind_ + " name is empty");
    if (d.type == std::type_index(typeid(void))) {
      throw Error::InvalidArgument(kind_ + " '" + d.name + "' has no type");
    }
    if (!complete) {
      throw Error::InvalidArgument(kind_ + " description '" + d.name + "' lacks a function");
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& existing : entries_) {
      const bool same_type = existing->type == d.type;
      if (same_type && existing->name != d.name) {
        throw Error::InvalidArgument(kind_ + " type " + TypeNameOf(d.type) +
                                     " is already registered as '" + existing->name +
                                     "'; it cannot be registered again as '" + d.name + "'");
      }
      if (!same_type && existing->name == d.name) {
        throw Error::InvalidArgument(kind_ + " name '" + d.name + "' is already registered for " +
                                     TypeNameOf(existing->type) + "; choose another name for " +
                                     TypeNameOf(d.type));
      }
      if (same_type) {
        existing = std::make_shared<const Description>(std::move(d));
        return;
      }
    }
    entries_.push_back(std::make_shared<const Description>(std::move(d)));
  }

  std::shared_ptr<const Description> Find(const std::type_info& type) const {
    EnsureBuiltins();
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& e : entries_) {
      if (e->type == std::type_index(type)) return e;
    }
    return nullptr;
  }

  std::vector<std::string> Names() const {
    EnsureBuiltins();
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> names;
    for (const auto& e : entries_) names.push_back(e->name);
    return names;
  }

 private:
  const std::string kind_;
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<const Description>> entries_;
};

// Leaked, so that registrations and lookups work during static destruction too.
Registry<OptimizerDescription>& Optimizers() {
  static auto* r = new Registry<OptimizerDescription>("optimizer");
  return *r;
}
Registry<SchedulerDescription>& Schedulers() {
  static auto* r = new Registry<SchedulerDescription>("scheduler");
  return *r;
}

}  // namespace

void RegisterOptimizerDescription(OptimizerDescription d) {
  const bool complete =
      d.capture_options && d.restore_options && d.capture_param_state && d.restore_param_state;
  Optimizers().Add(std::move(d), complete);
}

std::shared_ptr<const OptimizerDescription> FindOptimizerDescription(
    const torch::optim::Optimizer& optimizer) {
  return Optimizers().Find(typeid(optimizer));
}

std::vector<std::string> RegisteredOptimizers() { return Optimizers().Names(); }

void RegisterSchedulerDescription(SchedulerDescription d) {
  const bool complete = d.capture && d.decode;
  Schedulers().Add(std::move(d), complete);
}

std::shared_ptr<const SchedulerDescription> FindSchedulerDescription(
    const torch::optim::LRScheduler& scheduler) {
  return Schedulers().Find(typeid(scheduler));
}

std::vector<std::string> RegisteredSchedulers() { return Schedulers().Names(); }

namespace detail {

at::Tensor RestoreTensor(const Value& value, const std::string& path,
                         const DecodeContext& context) {
  const at::Tensor& t = value.tensor(path);
  if (context.check_shape && context.param != nullptr && t.sizes() != context.param->sizes()) {
    throw Error::InvalidArgument(path + " has shape " + ShapeString(t.sizes()) +
                                 " but the parameter has shape " +
                                 ShapeString(context.param->sizes()));
  }
  const at::Device device = context.param != nullptr ? context.param->device() : t.device();
  if (t_adopt != nullptr && t.device() == device && (*t_adopt)(t)) return t.detach();
  return t.detach().to(device, t.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

void ThrowOutOfRange(const std::string& path, int64_t value, bool is_signed, size_t bits) {
  throw Error::InvalidArgument(path + " = " + std::to_string(value) + " does not fit its field (" +
                               (is_signed ? "int" : "uint") + std::to_string(bits) + ")");
}

void ThrowWrongLength(const std::string& path, size_t expected, size_t actual) {
  throw Error::InvalidArgument(path + " must be a list of " + std::to_string(expected) +
                               " values, not " + std::to_string(actual));
}

void ThrowUndefined(const std::string& path, bool in_list) {
  if (in_list) {
    throw Error::InvalidArgument(path +
                                 " holds an undefined tensor or empty optional, which a list "
                                 "cannot store");
  }
  throw Error::InvalidArgument(path +
                               " is an undefined tensor; if it may be unset, mark the field "
                               ".optional() where its type is registered");
}

void ThrowWrongType(const std::string& where, const std::type_info& actual,
                    const std::type_info& registered) {
  throw Error::InvalidArgument(where + " is a " + TypeNameOf(actual) +
                               " but its optimizer was registered with " + TypeNameOf(registered));
}

}  // namespace detail

}  // namespace ackpt
