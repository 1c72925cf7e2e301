// StateDict <-> (named tensors, JSON tree). docs/FORMAT.md, "The state tree".
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "ackpt/error.h"
#include "format/internal.h"

namespace ackpt {
namespace format {

using json = nlohmann::json;

namespace {

constexpr int kMaxDepth = 256;

std::string JoinName(const std::string& prefix, const std::string& component) {
  return prefix.empty() ? component : prefix + "/" + component;
}

std::string Where(const std::string& name) { return name.empty() ? "the root" : "'" + name + "'"; }

json FlattenValue(const Value& v, const std::string& name, int depth, std::vector<FlatTensor>* out);

json FlattenDict(const StateDict& d, const std::string& name, int depth,
                 std::vector<FlatTensor>* out) {
  if (depth > kMaxDepth) {
    throw Error::InvalidArgument("state tree deeper than " + std::to_string(kMaxDepth) + " at " +
                                 Where(name));
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
  // than kMaxDepth, so the writer must never produce one.
  if (depth > kMaxDepth) {
    throw Error::InvalidArgument("state tree deeper than " + std::to_string(kMaxDepth) + " at " +
                                 Where(name));
  }
  switch (v.kind()) {
    case Value::Kind::kTensor:
      if (name == "__metadata__") {
        throw Error::InvalidArgument("tensor name '__metadata__' is reserved by safetensors");
      }
      out->push_back({name, v.tensor()});
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

struct UnflattenContext {
  const std::map<std::string, at::Tensor>* tensors;
  std::set<std::string> used;
  std::string path;
};

[[noreturn]] void BadTree(const UnflattenContext& ctx, const std::string& what) {
  throw Error::Corruption("malformed state tree in '" + ctx.path + "': " + what);
}

Value UnflattenValue(const json& node, UnflattenContext& ctx, int depth);

StateDict UnflattenDict(const json& items, UnflattenContext& ctx, int depth) {
  if (!items.is_array()) BadTree(ctx, "dict node is not an array");
  StateDict d;
  for (const auto& item : items) {
    if (!item.is_array() || item.size() != 2 || !item[0].is_string()) {
      BadTree(ctx, "dict item is not a [key, value] pair");
    }
    const std::string& key = item[0].get_ref<const std::string&>();
    if (key.empty() || d.contains(key)) BadTree(ctx, "empty or duplicate key '" + key + "'");
    d.set(key, UnflattenValue(item[1], ctx, depth + 1));
  }
  return d;
}

Value UnflattenValue(const json& node, UnflattenContext& ctx, int depth) {
  if (depth > kMaxDepth) BadTree(ctx, "nesting deeper than " + std::to_string(kMaxDepth));
  if (!node.is_object() || node.size() != 1) BadTree(ctx, "node is not a one-key object");
  const std::string& tag = node.begin().key();
  const json& v = node.begin().value();
  if (tag == "T") {
    if (!v.is_string()) BadTree(ctx, "tensor reference is not a string");
    const std::string& name = v.get_ref<const std::string&>();
    auto it = ctx.tensors->find(name);
    if (it == ctx.tensors->end()) BadTree(ctx, "references missing tensor '" + name + "'");
    if (!ctx.used.insert(name).second) BadTree(ctx, "tensor '" + name + "' referenced twice");
    return Value(it->second);
  }
  if (tag == "i") {
    if (!v.is_number_integer()) BadTree(ctx, "int node holds no integer");
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      BadTree(ctx, "int out of range");
    }
    return Value(v.get<int64_t>());
  }
  if (tag == "f") {
    if (v.is_number()) return Value(v.get<double>());
    if (v.is_string()) {
      const std::string& s = v.get_ref<const std::string&>();
      if (s == "nan") return Value(std::numeric_limits<double>::quiet_NaN());
      if (s == "inf") return Value(std::numeric_limits<double>::infinity());
      if (s == "-inf") return Value(-std::numeric_limits<double>::infinity());
    }
    BadTree(ctx, "double node holds no number");
  }
  if (tag == "b") {
    if (!v.is_boolean()) BadTree(ctx, "bool node holds no boolean");
    return Value(v.get<bool>());
  }
  if (tag == "s") {
    if (!v.is_string()) BadTree(ctx, "string node holds no string");
    return Value(v.get<std::string>());
  }
  if (tag == "l") {
    if (!v.is_array()) BadTree(ctx, "list node is not an array");
    List l;
    l.reserve(v.size());
    for (const auto& e : v) l.push_back(UnflattenValue(e, ctx, depth + 1));
    return Value(std::move(l));
  }
  if (tag == "d") return Value(UnflattenDict(v, ctx, depth));
  BadTree(ctx, "unknown node tag '" + tag + "'");
}

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
                    const std::string& path_for_errors) {
  UnflattenContext ctx{&tensors, {}, path_for_errors};
  json tree;
  try {
    tree = json::parse(tree_json);
  } catch (const json::exception& e) {
    BadTree(ctx, e.what());
  }
  if (!tree.is_object() || tree.size() != 1 || !tree.contains("d"))
    BadTree(ctx, "root is not a dict node");
  StateDict out = UnflattenDict(tree["d"], ctx, 0);
  if (ctx.used.size() != tensors.size()) {
    for (const auto& kv : tensors) {
      if (!ctx.used.count(kv.first)) BadTree(ctx, "tensor '" + kv.first + "' is not in the tree");
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
