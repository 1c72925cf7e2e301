// StateDict <-> (named tensors, JSON tree). docs/FORMAT.md, "The state tree".
#include "format/flatten.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "ackpt/error.h"
#include "ackpt/format.h"

namespace ackpt {
namespace format {

using json = nlohmann::json;

namespace {

std::string JoinName(const std::string& prefix, const std::string& component) {
  return prefix.empty() ? component : prefix + "/" + component;
}

std::string Where(const std::string& name) { return name.empty() ? "the root" : "'" + name + "'"; }

json FlattenValue(const Value& v, const std::string& name, int depth, std::vector<FlatTensor>* out);

json FlattenDict(const StateDict& d, const std::string& name, int depth,
                 std::vector<FlatTensor>* out) {
  if (depth > kMaxTreeDepth) {
    throw Error::InvalidArgument("state tree deeper than " + std::to_string(kMaxTreeDepth) +
                                 " at " + Where(name));
  }
  json items = json::array();
  for (const auto& kv : d) {
    if (kv.first.empty()) throw Error::InvalidArgument("empty key in StateDict at " + Where(name));
    std::string child = JoinName(name, EscapeKey(kv.first));
    items.push_back(json::array({kv.first, FlattenValue(kv.second, child, depth + 1, out)}));
  }
  return json{{"d", std::move(items)}};
}

json FlattenValue(const Value& v, const std::string& name, int depth,
                  std::vector<FlatTensor>* out) {
  // Every node, leaves included, counts: Unflatten rejects any node deeper
  // than kMaxTreeDepth, so the writer must never produce one.
  if (depth > kMaxTreeDepth) {
    throw Error::InvalidArgument("state tree deeper than " + std::to_string(kMaxTreeDepth) +
                                 " at " + Where(name));
  }
  switch (v.kind()) {
    case Value::Kind::kTensor:
      if (name == "__metadata__") {
        throw Error::InvalidArgument("tensor name '__metadata__' is reserved by safetensors");
      }
      out->emplace_back();
      out->back().name = name;
      out->back().tensor = v.tensor();
      return json{{"T", name}};
    case Value::Kind::kInt:
      return json{{"i", v.to_int()}};
    case Value::Kind::kDouble: {
      double d = v.to_double();
      if (std::isnan(d)) return json{{"f", "nan"}};
      if (std::isinf(d)) return json{{"f", d > 0 ? "inf" : "-inf"}};
      return json{{"f", d}};
    }
    case Value::Kind::kBool:
      return json{{"b", v.to_bool()}};
    case Value::Kind::kString:
      return json{{"s", v.str()}};
    case Value::Kind::kList: {
      json items = json::array();
      const List& l = v.list();
      for (size_t i = 0; i < l.size(); ++i) {
        items.push_back(FlattenValue(l[i], JoinName(name, std::to_string(i)), depth + 1, out));
      }
      return json{{"l", std::move(items)}};
    }
    case Value::Kind::kDict:
      return FlattenDict(v.dict(), name, depth, out);
  }
  throw Error::InvalidArgument("unknown value kind at " + Where(name));
}

// Rebuilds the tree from parse events: no JSON DOM is built, so memory is the
// result plus a stack as deep as the tree.
class TreeSax : public json::json_sax_t {
 public:
  TreeSax(const std::map<std::string, at::Tensor>& tensors, const std::string& path, int max_depth)
      : tensors_(tensors), path_(path), max_depth_(max_depth) {}

  bool null() override { return Scalar(Kind::kNull, {}); }
  bool boolean(bool b) override { return Scalar(Kind::kBool, Value(b)); }
  bool number_integer(number_integer_t v) override {
    return Scalar(Kind::kInt, Value(static_cast<int64_t>(v)));
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      // Only a double node may hold it.
      return Scalar(Kind::kFloat, Value(static_cast<double>(v)), /*int_too_big=*/true);
    }
    return Scalar(Kind::kInt, Value(static_cast<int64_t>(v)));
  }
  bool number_float(number_float_t v, const string_t&) override {
    return Scalar(Kind::kFloat, Value(static_cast<double>(v)));
  }
  bool binary(binary_t&) override { return Scalar(Kind::kNull, {}); }
  bool string(string_t& v) override {
    if (!stack_.empty() && Top().kind == Frame::kPair && Top().state == 0) {
      if (v.empty()) Fail("empty or duplicate key ''");
      Top().key = std::move(v);
      Top().state = 1;
      return true;
    }
    return Scalar(Kind::kString, Value(std::move(v)));
  }
  bool start_object(std::size_t) override {
    int depth = 0;
    if (!stack_.empty()) {
      Frame& top = Top();
      if (top.kind == Frame::kPair && top.state == 1) {
        depth = top.depth;
      } else if (top.kind == Frame::kList) {
        depth = top.depth;
      } else if (top.kind == Frame::kPair) {
        Fail("dict item is not a [key, value] pair");
      } else if (top.kind == Frame::kNode && top.state == 1) {
        TypeMismatch(top.tag);
      } else {
        Fail(top.kind == Frame::kDictItems ? "dict item is not a [key, value] pair"
                                           : "node is not a one-key object");
      }
    } else if (done_) {
      Fail("root is not a dict node");
    }
    if (depth > max_depth_) Fail("nesting deeper than " + std::to_string(max_depth_));
    stack_.emplace_back(Frame{Frame::kNode, 0, depth});
    return true;
  }
  bool key(string_t& k) override {
    Frame& top = Top();
    if (top.kind != Frame::kNode || top.state != 0) Fail("node is not a one-key object");
    if (stack_.size() == 1 && k != "d") Fail("root is not a dict node");
    top.tag = std::move(k);
    top.state = 1;
    return true;
  }
  bool end_object() override {
    Frame& top = Top();
    if (top.state != 2) Fail("node is not a one-key object");
    Value v = std::move(top.value);
    stack_.pop_back();
    Deliver(std::move(v));
    return true;
  }
  bool start_array(std::size_t) override {
    if (stack_.empty()) Fail("root is not a dict node");
    Frame& top = Top();
    if (top.kind == Frame::kNode && top.state == 1) {
      if (top.tag == "d") {
        top.state = 2;
        stack_.emplace_back(Frame{Frame::kDictItems, 0, top.depth});
        return true;
      }
      if (top.tag == "l") {
        top.state = 2;
        stack_.emplace_back(Frame{Frame::kList, 0, top.depth + 1});
        return true;
      }
      TypeMismatch(top.tag);
    }
    if (top.kind == Frame::kDictItems) {
      stack_.emplace_back(Frame{Frame::kPair, 0, top.depth + 1});
      return true;
    }
    if (top.kind == Frame::kList) Fail("node is not a one-key object");
    Fail("dict item is not a [key, value] pair");
  }
  bool end_array() override {
    Frame& top = Top();
    switch (top.kind) {
      case Frame::kDictItems: {
        Value v(std::move(top.dict));
        stack_.pop_back();
        Top().value = std::move(v);
        return true;
      }
      case Frame::kList: {
        Value v(std::move(top.list));
        stack_.pop_back();
        Top().value = std::move(v);
        return true;
      }
      case Frame::kPair: {
        if (top.state != 2) Fail("dict item is not a [key, value] pair");
        std::string key = std::move(top.key);
        Value v = std::move(top.value);
        stack_.pop_back();
        StateDict& d = Top().dict;
        if (d.contains(key)) Fail("empty or duplicate key '" + key + "'");
        d.set(key, std::move(v));
        return true;
      }
      default:
        Fail("malformed array");
    }
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    Fail(e.what());
  }

  StateDict TakeRoot() {
    if (!done_ || !root_.is_dict()) Fail("root is not a dict node");
    return std::move(root_.dict());
  }
  const std::set<std::string>& used() const { return used_; }

  [[noreturn]] void Fail(const std::string& what) const {
    throw Error::Corruption("malformed state tree in '" + path_ + "': " + what);
  }

 private:
  enum class Kind { kNull, kBool, kInt, kFloat, kString };
  struct Frame {
    enum FrameKind { kNode, kDictItems, kPair, kList };
    Frame(FrameKind k, int s, int d) : kind(k), state(s), depth(d) {}
    FrameKind kind;
    int state;  // kNode: 0 no tag, 1 tag read, 2 value read; kPair: 0, 1 key read, 2 node read
    int depth;  // of the node (kNode), of the dict's items (kDictItems, kPair), of elements (kList)
    std::string tag;
    std::string key;
    Value value;
    StateDict dict;
    List list;
  };

  Frame& Top() {
    if (stack_.empty()) Fail("root is not a dict node");
    return stack_.back();
  }

  [[noreturn]] void TypeMismatch(const std::string& tag) const {
    if (tag == "T") Fail("tensor reference is not a string");
    if (tag == "i") Fail("int node holds no integer");
    if (tag == "f") Fail("double node holds no number");
    if (tag == "b") Fail("bool node holds no boolean");
    if (tag == "s") Fail("string node holds no string");
    if (tag == "d") Fail("dict node is not an array");
    if (tag == "l") Fail("list node is not an array");
    Fail("unknown node tag '" + tag + "'");
  }

  bool Scalar(Kind kind, Value v, bool int_too_big = false) {
    if (stack_.empty()) Fail("root is not a dict node");
    Frame& top = Top();
    if (top.kind == Frame::kPair) Fail("dict item is not a [key, value] pair");
    if (top.kind != Frame::kNode || top.state != 1) Fail("node is not a one-key object");
    const std::string& tag = top.tag;
    if (tag == "T" && kind == Kind::kString) {
      const std::string& name = v.str();
      auto it = tensors_.find(name);
      if (it == tensors_.end()) Fail("references missing tensor '" + name + "'");
      if (!used_.insert(name).second) Fail("tensor '" + name + "' referenced twice");
      top.value = Value(it->second);
    } else if (tag == "i" && kind == Kind::kInt) {
      top.value = std::move(v);
    } else if (tag == "i" && int_too_big) {
      Fail("int out of range");
    } else if (tag == "f" && (kind == Kind::kInt || kind == Kind::kFloat)) {
      top.value = Value(v.to_double());
    } else if (tag == "f" && kind == Kind::kString) {
      const std::string& s = v.str();
      if (s == "nan") {
        top.value = Value(std::numeric_limits<double>::quiet_NaN());
      } else if (s == "inf") {
        top.value = Value(std::numeric_limits<double>::infinity());
      } else if (s == "-inf") {
        top.value = Value(-std::numeric_limits<double>::infinity());
      } else {
        Fail("double node holds no number");
      }
    } else if (tag == "b" && kind == Kind::kBool) {
      top.value = std::move(v);
    } else if (tag == "s" && kind == Kind::kString) {
      top.value = std::move(v);
    } else {
      TypeMismatch(tag);
    }
    top.state = 2;
    return true;
  }

  void Deliver(Value v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      done_ = true;
      return;
    }
    Frame& top = Top();
    if (top.kind == Frame::kPair && top.state == 1) {
      top.value = std::move(v);
      top.state = 2;
    } else if (top.kind == Frame::kList) {
      top.list.push_back(std::move(v));
    } else {
      Fail("dict item is not a [key, value] pair");
    }
  }

  const std::map<std::string, at::Tensor>& tensors_;
  const std::string& path_;
  const int max_depth_;
  std::vector<Frame> stack_;
  std::set<std::string> used_;
  Value root_;
  bool done_ = false;
};

}  // namespace

std::string EscapeKey(const std::string& key) {
  std::string out;
  out.reserve(key.size());
  for (char c : key) {
    if (c == '%') {
      out += "%25";
    } else if (c == '/') {
      out += "%2F";
    } else {
      out += c;
    }
  }
  return out;
}

void Flatten(const StateDict& state, std::vector<FlatTensor>* tensors, std::string* tree_json) {
  json tree = FlattenDict(state, "", 0, tensors);
  try {
    *tree_json = tree.dump();
  } catch (const json::type_error& e) {
    throw Error::InvalidArgument(std::string("a key or string in the state is not valid UTF-8: ") +
                                 e.what());
  }
}

StateDict Unflatten(const std::string& tree_json, const std::map<std::string, at::Tensor>& tensors,
                    const std::string& path_for_errors, int max_depth) {
  TreeSax sax(tensors, path_for_errors, std::min(max_depth, kMaxTreeDepth));
  json::sax_parse(tree_json.begin(), tree_json.end(), &sax);
  StateDict out = sax.TakeRoot();
  if (sax.used().size() != tensors.size()) {
    for (const auto& kv : tensors) {
      if (!sax.used().count(kv.first)) sax.Fail("tensor '" + kv.first + "' is not in the tree");
    }
  }
  return out;
}

}  // namespace format

std::string FlatTensorName(const std::vector<std::string>& path) {
  std::string out;
  for (const auto& p : path) {
    if (!out.empty()) out += '/';
    out += format::EscapeKey(p);
  }
  return out;
}

}  // namespace ackpt
