#include "ackpt/state_dict.h"

#include <ATen/ATen.h>

#include <cstring>
#include <limits>

#include "ackpt/error.h"

namespace ackpt {

const char* KindName(Value::Kind kind) {
  switch (kind) {
    case Value::Kind::kTensor:
      return "tensor";
    case Value::Kind::kInt:
      return "int";
    case Value::Kind::kDouble:
      return "double";
    case Value::Kind::kBool:
      return "bool";
    case Value::Kind::kString:
      return "string";
    case Value::Kind::kList:
      return "list";
    case Value::Kind::kDict:
      return "dict";
  }
  return "unknown";
}

Value::Value() : kind_(Kind::kDict), dict_(std::make_unique<StateDict>()) {}
Value::Value(at::Tensor t) : kind_(Kind::kTensor), tensor_(std::move(t)) {
  if (!tensor_.defined()) throw Error::InvalidArgument("an undefined tensor cannot be stored");
}
Value::Value(int64_t v) : kind_(Kind::kInt), int_(v) {}
Value::Value(double v) : kind_(Kind::kDouble), double_(v) {}
Value::Value(bool v) : kind_(Kind::kBool), bool_(v) {}
Value::Value(std::string v) : kind_(Kind::kString), string_(std::move(v)) {}
Value::Value(List v) : kind_(Kind::kList), list_(std::make_unique<List>(std::move(v))) {}
Value::Value(StateDict v) : kind_(Kind::kDict), dict_(std::make_unique<StateDict>(std::move(v))) {}

Value::Value(const Value& o)
    : kind_(o.kind_),
      tensor_(o.tensor_),
      int_(o.int_),
      double_(o.double_),
      bool_(o.bool_),
      string_(o.string_),
      list_(o.list_ ? std::make_unique<List>(*o.list_) : nullptr),
      dict_(o.dict_ ? std::make_unique<StateDict>(*o.dict_) : nullptr) {}
Value::Value(Value&&) noexcept = default;
Value& Value::operator=(const Value& o) {
  if (this != &o) {
    Value copy(o);
    *this = std::move(copy);
  }
  return *this;
}
Value& Value::operator=(Value&&) noexcept = default;
Value::~Value() = default;

namespace {

// "an int", "a string": for messages that name a kind.
std::string WithArticle(Value::Kind kind) {
  const std::string name = KindName(kind);
  return (name[0] == 'i' ? "an " : "a ") + name;
}

// The path named by the accessors that are not told one.
const std::string& Unnamed() {
  static const std::string kValue = "value";
  return kValue;
}

}  // namespace

namespace detail {
void ThrowIntegerOutOfRange(const std::string& value) {
  throw Error::InvalidArgument("integer " + value +
                               " does not fit in a StateDict int (int64: at most " +
                               std::to_string(std::numeric_limits<int64_t>::max()) + ")");
}
}  // namespace detail

void Value::Expect(Kind k, const std::string& where) const {
  if (kind_ != k) {
    throw Error::InvalidArgument(where + " is " + WithArticle(kind_) + ", not " + WithArticle(k));
  }
}

const at::Tensor& Value::tensor() const { return tensor(Unnamed()); }
int64_t Value::to_int() const { return to_int(Unnamed()); }
double Value::to_double() const { return to_double(Unnamed()); }
bool Value::to_bool() const { return to_bool(Unnamed()); }
const std::string& Value::str() const { return str(Unnamed()); }
const List& Value::list() const { return list(Unnamed()); }
List& Value::list() {
  Expect(Kind::kList, Unnamed());
  return *list_;
}
const StateDict& Value::dict() const { return dict(Unnamed()); }
StateDict& Value::dict() {
  Expect(Kind::kDict, Unnamed());
  return *dict_;
}

const at::Tensor& Value::tensor(const std::string& where) const {
  Expect(Kind::kTensor, where);
  return tensor_;
}
int64_t Value::to_int(const std::string& where) const {
  Expect(Kind::kInt, where);
  return int_;
}
double Value::to_double(const std::string& where) const {
  if (kind_ == Kind::kInt) return static_cast<double>(int_);
  Expect(Kind::kDouble, where);
  return double_;
}
bool Value::to_bool(const std::string& where) const {
  Expect(Kind::kBool, where);
  return bool_;
}
const std::string& Value::str(const std::string& where) const {
  Expect(Kind::kString, where);
  return string_;
}
const List& Value::list(const std::string& where) const {
  Expect(Kind::kList, where);
  return *list_;
}
const StateDict& Value::dict(const std::string& where) const {
  Expect(Kind::kDict, where);
  return *dict_;
}

StateDict::StateDict(std::initializer_list<Item> items) {
  for (const auto& item : items) set(item.first, item.second);
}

void StateDict::set(const std::string& key, Value value) {
  auto it = index_.find(key);
  if (it != index_.end()) {
    items_[it->second].second = std::move(value);
    return;
  }
  index_.emplace(key, items_.size());
  items_.emplace_back(key, std::move(value));
}

Value& StateDict::operator[](const std::string& key) {
  auto it = index_.find(key);
  if (it != index_.end()) return items_[it->second].second;
  set(key, Value());
  return items_.back().second;
}

const Value* StateDict::find(const std::string& key) const {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &items_[it->second].second;
}

Value* StateDict::find(const std::string& key) {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &items_[it->second].second;
}

const Value& StateDict::at(const std::string& key) const {
  const Value* v = find(key);
  if (v == nullptr) throw Error::NotFound("no key '" + key + "' in StateDict");
  return *v;
}

Value& StateDict::at(const std::string& key) {
  Value* v = find(key);
  if (v == nullptr) throw Error::NotFound("no key '" + key + "' in StateDict");
  return *v;
}

const Value& StateDict::get(const std::string& key, const std::string& where) const {
  const Value* v = find(key);
  if (v == nullptr) throw Error::InvalidArgument(where + " has no '" + key + "'");
  return *v;
}
const at::Tensor& StateDict::get_tensor(const std::string& key, const std::string& where) const {
  return get(key, where).tensor(where + "." + key);
}
int64_t StateDict::get_int(const std::string& key, const std::string& where) const {
  return get(key, where).to_int(where + "." + key);
}
double StateDict::get_double(const std::string& key, const std::string& where) const {
  return get(key, where).to_double(where + "." + key);
}
bool StateDict::get_bool(const std::string& key, const std::string& where) const {
  return get(key, where).to_bool(where + "." + key);
}
const std::string& StateDict::get_string(const std::string& key, const std::string& where) const {
  return get(key, where).str(where + "." + key);
}
const List& StateDict::get_list(const std::string& key, const std::string& where) const {
  return get(key, where).list(where + "." + key);
}
const StateDict& StateDict::get_dict(const std::string& key, const std::string& where) const {
  return get(key, where).dict(where + "." + key);
}

bool StateDict::erase(const std::string& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return false;
  items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(it->second));
  index_.clear();
  for (size_t i = 0; i < items_.size(); ++i) index_.emplace(items_[i].first, i);
  return true;
}

void StateDict::clear() {
  items_.clear();
  index_.clear();
}

namespace {

template <typename Fn>
void VisitTensors(const Value& v, Fn& fn) {
  switch (v.kind()) {
    case Value::Kind::kTensor:
      fn(v.tensor());
      break;
    case Value::Kind::kList:
      for (const auto& e : v.list()) VisitTensors(e, fn);
      break;
    case Value::Kind::kDict:
      for (const auto& kv : v.dict()) VisitTensors(kv.second, fn);
      break;
    default:
      break;
  }
}

bool TensorsEqual(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;
  at::Tensor ca = a.cpu().contiguous();
  at::Tensor cb = b.cpu().contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

bool ValuesEqual(const Value& a, const Value& b, const std::string& path, std::string* why);

bool DictsEqual(const StateDict& a, const StateDict& b, const std::string& path, std::string* why) {
  if (a.size() != b.size()) {
    if (why)
      *why = path + ": " + std::to_string(a.size()) + " vs " + std::to_string(b.size()) + " keys";
    return false;
  }
  auto ia = a.begin();
  auto ib = b.begin();
  for (; ia != a.end(); ++ia, ++ib) {
    if (ia->first != ib->first) {
      if (why) *why = path + ": key '" + ia->first + "' vs '" + ib->first + "'";
      return false;
    }
    if (!ValuesEqual(ia->second, ib->second, path + "/" + ia->first, why)) return false;
  }
  return true;
}

bool ValuesEqual(const Value& a, const Value& b, const std::string& path, std::string* why) {
  if (a.kind() != b.kind()) {
    if (why) *why = path + ": " + KindName(a.kind()) + " vs " + KindName(b.kind());
    return false;
  }
  bool eq = true;
  switch (a.kind()) {
    case Value::Kind::kTensor:
      eq = TensorsEqual(a.tensor(), b.tensor());
      break;
    case Value::Kind::kInt:
      eq = a.to_int() == b.to_int();
      break;
    case Value::Kind::kDouble: {
      double x = a.to_double(), y = b.to_double();
      eq = std::memcmp(&x, &y, sizeof x) == 0;
      break;
    }
    case Value::Kind::kBool:
      eq = a.to_bool() == b.to_bool();
      break;
    case Value::Kind::kString:
      eq = a.str() == b.str();
      break;
    case Value::Kind::kList: {
      const List& la = a.list();
      const List& lb = b.list();
      if (la.size() != lb.size()) {
        eq = false;
        break;
      }
      for (size_t i = 0; i < la.size(); ++i) {
        if (!ValuesEqual(la[i], lb[i], path + "/" + std::to_string(i), why)) return false;
      }
      break;
    }
    case Value::Kind::kDict:
      return DictsEqual(a.dict(), b.dict(), path, why);
  }
  if (!eq && why) *why = path + ": values differ";
  return eq;
}

}  // namespace

size_t StateDict::num_tensors() const {
  size_t n = 0;
  auto count = [&](const at::Tensor&) { ++n; };
  for (const auto& kv : items_) VisitTensors(kv.second, count);
  return n;
}

uint64_t StateDict::tensor_bytes() const {
  uint64_t n = 0;
  auto count = [&](const at::Tensor& t) { n += t.numel() * t.element_size(); };
  for (const auto& kv : items_) VisitTensors(kv.second, count);
  return n;
}

bool ExactlyEqual(const StateDict& a, const StateDict& b, std::string* why) {
  return DictsEqual(a, b, "", why);
}

}  // namespace ackpt
