// ackpt::StateDict: an ordered, string-keyed tree of training state.
//
// Leaves are tensors, int64, double, bool and strings; inner nodes are lists
// (of any values, lists and dicts included) and nested StateDicts. Keys keep
// insertion order. Copying a StateDict copies the tree but shares tensor
// storage (as copying an at::Tensor does); ackpt's save() takes its own
// snapshot of the bytes.
//
// Integers of every integral type (int, long long, size_t, uint64_t, ...) are
// stored as int64: `state.set("n", v.size())` works; a value that does not fit
// (an unsigned one above INT64_MAX) throws ackpt::Error (kInvalidArgument).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ackpt/export.h"

namespace ackpt {

class StateDict;
class Value;
using List = std::vector<Value>;

namespace detail {
// Throws ackpt::Error (kInvalidArgument): `value` (its decimal digits) does not fit in int64.
[[noreturn]] ACKPT_EXPORT void ThrowIntegerOutOfRange(const std::string& value);

template <typename T>
constexpr bool kIsStoredInteger = std::is_integral_v<T> && !std::is_same_v<T, bool>;
}  // namespace detail

class ACKPT_EXPORT Value {
 public:
  enum class Kind { kTensor, kInt, kDouble, kBool, kString, kList, kDict };

  Value();  // an empty StateDict
  Value(at::Tensor t);
  Value(int64_t v);
  // Any other integral type, range-checked into int64 (bool and char types
  // are integral too: bool has its own kind, a char is stored as its code).
  template <typename T,
            std::enable_if_t<detail::kIsStoredInteger<T> && !std::is_same_v<T, int64_t>, int> = 0>
  Value(T v) : Value(CheckedInt64(v)) {}
  Value(double v);
  Value(bool v);
  Value(std::string v);
  Value(const char* v) : Value(std::string(v)) {}
  Value(List v);
  Value(StateDict v);
  Value(const Value&);
  Value(Value&&) noexcept;
  Value& operator=(const Value&);
  Value& operator=(Value&&) noexcept;
  ~Value();

  Kind kind() const { return kind_; }
  bool is_tensor() const { return kind_ == Kind::kTensor; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_double() const { return kind_ == Kind::kDouble; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_dict() const { return kind_ == Kind::kDict; }

  // Accessors throw ackpt::Error (kInvalidArgument) naming both kinds on a mismatch.
  const at::Tensor& tensor() const;
  int64_t to_int() const;
  double to_double() const;  // also accepts an int
  bool to_bool() const;
  const std::string& str() const;
  const List& list() const;
  List& list();
  const StateDict& dict() const;
  StateDict& dict();

  // The same for code that restores state from a checkpoint: the error names
  // `where`, the value's path ("trainer_state.last_epoch is a string, not an int").
  const at::Tensor& tensor(const std::string& where) const;
  int64_t to_int(const std::string& where) const;
  double to_double(const std::string& where) const;  // also accepts an int
  bool to_bool(const std::string& where) const;
  const std::string& str(const std::string& where) const;
  const List& list(const std::string& where) const;
  const StateDict& dict(const std::string& where) const;

 private:
  template <typename T>
  static int64_t CheckedInt64(T v) {
    if constexpr (std::is_unsigned_v<T> && sizeof(T) >= sizeof(int64_t)) {
      if (v > static_cast<T>(std::numeric_limits<int64_t>::max())) {
        detail::ThrowIntegerOutOfRange(std::to_string(v));
      }
    }
    return static_cast<int64_t>(v);
  }
  void Expect(Kind k, const std::string& where) const;

  Kind kind_;
  at::Tensor tensor_;
  int64_t int_ = 0;
  double double_ = 0;
  bool bool_ = false;
  std::string string_;
  std::unique_ptr<List> list_;       // set iff kind_ == kList
  std::unique_ptr<StateDict> dict_;  // set iff kind_ == kDict
};

ACKPT_EXPORT const char* KindName(Value::Kind kind);

class ACKPT_EXPORT StateDict {
 public:
  using Item = std::pair<std::string, Value>;
  using iterator = std::vector<Item>::iterator;
  using const_iterator = std::vector<Item>::const_iterator;

  StateDict() = default;
  StateDict(std::initializer_list<Item> items);

  // Inserts or replaces; a replaced key keeps its position.
  void set(const std::string& key, Value value);
  // Inserts an empty StateDict if the key is missing (like std::map::operator[]).
  Value& operator[](const std::string& key);
  // Throws ackpt::Error (kNotFound) naming the key if it is missing.
  const Value& at(const std::string& key) const;
  Value& at(const std::string& key);
  const Value* find(const std::string& key) const;
  Value* find(const std::string& key);

  // Typed lookups for code that restores state from a checkpoint, where a
  // missing or mistyped entry means a malformed state: both throw
  // ackpt::Error (kInvalidArgument) naming `where`, the path of this dict:
  // "optimizer state has no 'lr'", "optimizer state.lr is a string, not a double".
  const Value& get(const std::string& key, const std::string& where) const;
  const at::Tensor& get_tensor(const std::string& key, const std::string& where) const;
  int64_t get_int(const std::string& key, const std::string& where) const;
  double get_double(const std::string& key, const std::string& where) const;  // also an int
  bool get_bool(const std::string& key, const std::string& where) const;
  const std::string& get_string(const std::string& key, const std::string& where) const;
  const List& get_list(const std::string& key, const std::string& where) const;
  const StateDict& get_dict(const std::string& key, const std::string& where) const;
  bool contains(const std::string& key) const { return find(key) != nullptr; }
  bool erase(const std::string& key);
  void clear();

  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  iterator begin() { return items_.begin(); }
  iterator end() { return items_.end(); }
  const_iterator begin() const { return items_.begin(); }
  const_iterator end() const { return items_.end(); }

  // Number of tensors and their total bytes anywhere in the tree.
  size_t num_tensors() const;
  uint64_t tensor_bytes() const;

 private:
  std::vector<Item> items_;
  std::unordered_map<std::string, size_t> index_;
};

// Exact structural equality: same keys in the same order, same kinds, equal
// scalars (doubles compared bitwise, so NaN == NaN and 0.0 != -0.0), tensors of
// equal dtype, shape and bytes. On a difference, `why` (if given) names the path.
ACKPT_EXPORT bool ExactlyEqual(const StateDict& a, const StateDict& b, std::string* why = nullptr);

}  // namespace ackpt
