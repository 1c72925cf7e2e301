// ackpt::StateDict: an ordered, string-keyed tree of training state.
//
// Leaves are tensors, int64, double, bool and strings; inner nodes are lists
// (of any values, lists and dicts included) and nested StateDicts. Keys keep
// insertion order. Copying a StateDict copies the tree but shares tensor
// storage (as copying an at::Tensor does); ackpt's save() takes its own
// snapshot of the bytes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ackpt {

class StateDict;
class Value;
using List = std::vector<Value>;

class Value {
 public:
  enum class Kind { kTensor, kInt, kDouble, kBool, kString, kList, kDict };

  Value();  // an empty StateDict
  Value(at::Tensor t);
  Value(int64_t v);
  Value(int v) : Value(static_cast<int64_t>(v)) {}
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

 private:
  void Expect(Kind k) const;

  Kind kind_;
  at::Tensor tensor_;
  int64_t int_ = 0;
  double double_ = 0;
  bool bool_ = false;
  std::string string_;
  std::unique_ptr<List> list_;       // set iff kind_ == kList
  std::unique_ptr<StateDict> dict_;  // set iff kind_ == kDict
};

const char* KindName(Value::Kind kind);

class StateDict {
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
bool ExactlyEqual(const StateDict& a, const StateDict& b, std::string* why = nullptr);

}  // namespace ackpt
