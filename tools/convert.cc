// `ackpt convert`: unpickled torch.save() values -> ackpt::StateDict.
#include "convert.h"

#include <ATen/ATen.h>

#include <unordered_set>

#include "ackpt/error.h"
#include "ackpt/format.h"

namespace ackpt_cli {

namespace {

using ackpt::Error;

class Converter {
 public:
  Converter(const ConvertOptions& options, std::vector<std::string>* dropped)
      : options_(options), dropped_(dropped) {}

  ackpt::StateDict Dict(const PyObj& d, std::vector<std::string>* path) {
    ackpt::StateDict out;
    std::unordered_set<std::string> seen;
    for (const auto& [k, v] : d.entries) {
      std::string key;
      if (k->kind == PyObj::Kind::kStr) {
        key = k->str;
      } else if (k->kind == PyObj::Kind::kInt) {
        key = std::to_string(k->i);  // e.g. optimizer state keyed by parameter id
      } else {
        throw Error::Unsupported("a dict key of type " + Describe(*k) + " under " + Where(*path) +
                                 ": only str and int keys can be converted");
      }
      path->push_back(key);
      if (key.empty()) throw Error::Unsupported("an empty dict key at " + Where(*path));
      if (!seen.insert(key).second) {
        throw Error::Unsupported("two keys of " +
                                 Where(std::vector<std::string>(path->begin(), path->end() - 1)) +
                                 " become '" + key + "' (an int key and a str key?)");
      }
      if (v->kind == PyObj::Kind::kNone) {
        if (options_.none != "skip") {
          throw Error::Unsupported("None at " + Where(*path) +
                                   " (use --none skip to drop None values)");
        }
        dropped_->push_back(ackpt::FlatTensorName(*path));
      } else {
        out.set(key, Value(*v, path));
      }
      path->pop_back();
    }
    return out;
  }

 private:
  static std::string Where(const std::vector<std::string>& path) {
    return path.empty() ? std::string("the root") : "'" + ackpt::FlatTensorName(path) + "'";
  }

  ackpt::Value Value(const PyObj& v, std::vector<std::string>* path) {
    switch (v.kind) {
      case PyObj::Kind::kBool:
        return ackpt::Value(v.b);
      case PyObj::Kind::kInt:
        return ackpt::Value(v.i);
      case PyObj::Kind::kFloat:
        return ackpt::Value(v.f);
      case PyObj::Kind::kStr:
        return ackpt::Value(v.str);
      case PyObj::Kind::kDict:
        return ackpt::Value(Dict(v, path));
      case PyObj::Kind::kList:
      case PyObj::Kind::kTuple: {
        ackpt::List list;
        for (size_t i = 0; i < v.items.size(); ++i) {
          path->push_back(std::to_string(i));
          if (v.items[i]->kind == PyObj::Kind::kNone) {
            throw Error::Unsupported("None at " + Where(*path) +
                                     ": a list element cannot be dropped without shifting the "
                                     "elements after it");
          }
          list.push_back(Value(*v.items[i], path));
          path->pop_back();
        }
        return ackpt::Value(std::move(list));
      }
      case PyObj::Kind::kTensor: {
        const at::Tensor& t = v.tensor;
        try {
          ackpt::DtypeName(t.scalar_type());
        } catch (const Error&) {
          throw Error::Unsupported("a tensor of dtype " +
                                   std::string(at::toString(t.scalar_type())) + " at " +
                                   Where(*path) + ", which ackpt does not store");
        }
        return ackpt::Value(t);
      }
      default:
        throw Error::Unsupported(Describe(v) + " at " + Where(*path) +
                                 ", which ackpt convert does not load (it converts tensors, "
                                 "dicts, lists, tuples, ints, floats, bools, strings and None)");
    }
  }

  const ConvertOptions& options_;
  std::vector<std::string>* dropped_;
};

}  // namespace

ackpt::StateDict StateDictFromPickle(const PyObj& root, const ConvertOptions& options,
                                     std::vector<std::string>* dropped) {
  if (root.kind != PyObj::Kind::kDict) {
    throw Error::Unsupported("the file holds " + Describe(root) +
                             ", not a dict: ackpt convert converts state dicts (torch.save of "
                             "model.state_dict() or of a dict of them)");
  }
  std::vector<std::string> path;
  return Converter(options, dropped).Dict(root, &path);
}

}  // namespace ackpt_cli
