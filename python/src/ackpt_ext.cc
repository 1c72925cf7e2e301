// ackpt._ackpt: the Python binding of DefaultCheckpointer (pybind11).
//
// Python state (nested dicts, lists and tuples of tensors, int, float, bool,
// str, None; dict keys str or int) is converted to ackpt::StateDict with the
// GIL held; the snapshot copy, the waits and the reads run with the GIL
// released. What a StateDict cannot hold is encoded losslessly (see
// kSchemaKey below and the README's Python section).
#include <ackpt/ackpt.h>
#include <pybind11/stl.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <deque>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

namespace py = pybind11;

namespace {

// Generated from the comments in front of each field of the C++ structs
// (python/gen_fields.py): {struct, field, C++ type, help}.
struct FieldDoc {
  const char* owner;
  const char* name;
  const char* cpp_type;
  const char* help;
};
const FieldDoc kFieldDocs[] = {
#include "ackpt_fields.inc"
};

// The key, in a group's root dict, of what a StateDict cannot say by itself:
// a dict {"version": 1, "int_keys": [path...], "tuples": [path...],
// "none": [path...], "layout": str}. A path is a list of the stored keys
// (list indices as decimal strings) from the group's root. int dict keys are
// stored as their decimal strings, tuples as lists, None as the string
// "None"; the paths say which. Only written when a group needs it.
constexpr const char* kSchemaKey = "__ackpt_python__";

// An error naming the Python key path of the offending value.
struct KeyPathError {
  ackpt::Error::Code code;
  std::string message;
  std::string key_path;
};

using Path = std::vector<std::string>;

ackpt::Value PathValue(const Path& p) {
  ackpt::List l;
  for (const auto& s : p) l.emplace_back(s);
  return ackpt::Value(std::move(l));
}

std::string Repr(py::handle h) { return py::repr(h).cast<std::string>(); }

class Encoder {
 public:
  explicit Encoder(std::string root) : where_(std::move(root)) {}

  ackpt::Value Encode(py::handle o) {
    if (++depth_ > 200) Fail(ackpt::Error::Code::kUnsupported, "nesting deeper than 200 levels");
    ackpt::Value v = EncodeInner(o);
    --depth_;
    return v;
  }

  // Adds the schema entry to `group` if anything needed one (or `layout` is set).
  void Finish(ackpt::StateDict* group, const std::string& layout) {
    if (int_keys_.empty() && tuples_.empty() && nones_.empty() && layout.empty()) return;
    ackpt::StateDict s;
    s.set("version", int64_t{1});
    if (!layout.empty()) s.set("layout", layout);
    s.set("int_keys", ackpt::List(int_keys_));
    s.set("tuples", ackpt::List(tuples_));
    s.set("none", ackpt::List(nones_));
    group->set(kSchemaKey, std::move(s));
  }

 private:
  [[noreturn]] void Fail(ackpt::Error::Code code, const std::string& what) {
    throw KeyPathError{code, what + " at " + where_, where_};
  }

  ackpt::Value EncodeInner(py::handle o) {
    PyObject* p = o.ptr();
    if (THPVariable_Check(p)) return ackpt::Value(THPVariable_Unpack(p));
    if (p == Py_None) {
      nones_.push_back(PathValue(path_));
      return ackpt::Value(std::string("None"));
    }
    if (PyBool_Check(p)) return ackpt::Value(p == Py_True);
    if (PyLong_Check(p)) {
      int overflow = 0;
      const long long v = PyLong_AsLongLongAndOverflow(p, &overflow);
      if (overflow)
        Fail(ackpt::Error::Code::kInvalidArgument, "int " + Repr(o) + " does not fit in int64");
      return ackpt::Value(static_cast<int64_t>(v));
    }
    if (PyFloat_Check(p)) return ackpt::Value(PyFloat_AS_DOUBLE(p));
    if (PyUnicode_Check(p)) return ackpt::Value(o.cast<std::string>());
    if (PyDict_Check(p)) {
      ackpt::StateDict d;
      for (auto item : py::reinterpret_borrow<py::dict>(o)) {
        std::string key;
        bool int_key = false;
        PyObject* k = item.first.ptr();
        if (PyUnicode_Check(k)) {
          key = item.first.cast<std::string>();
          if (key.empty()) Fail(ackpt::Error::Code::kUnsupported, "an empty-string dict key");
          if (key == kSchemaKey)
            Fail(ackpt::Error::Code::kInvalidArgument, "the reserved key '" + key + "'");
        } else if (PyLong_Check(k) && !PyBool_Check(k)) {
          int overflow = 0;
          const long long v = PyLong_AsLongLongAndOverflow(k, &overflow);
          if (overflow)
            Fail(ackpt::Error::Code::kInvalidArgument,
                 "int dict key " + Repr(item.first) + " does not fit in int64");
          key = std::to_string(v);
          int_key = true;
        } else {
          Fail(ackpt::Error::Code::kUnsupported,
               std::string("a dict key of type '") + Py_TYPE(k)->tp_name + "' (" +
                   Repr(item.first) + "; keys must be str or int)");
        }
        if (d.contains(key)) {
          Fail(ackpt::Error::Code::kUnsupported,
               "a dict with both the str key '" + key + "' and the int key " + key);
        }
        const size_t where_len = where_.size();
        where_ += "[" + Repr(item.first) + "]";
        path_.push_back(key);
        if (int_key) int_keys_.push_back(PathValue(path_));
        d.set(key, Encode(item.second));
        path_.pop_back();
        where_.resize(where_len);
      }
      return ackpt::Value(std::move(d));
    }
    const bool is_tuple = PyTuple_CheckExact(p);
    if (PyList_Check(p) || is_tuple) {
      if (is_tuple) tuples_.push_back(PathValue(path_));
      ackpt::List l;
      const Py_ssize_t n = PySequence_Fast_GET_SIZE(p);
      l.reserve(static_cast<size_t>(n));
      for (Py_ssize_t i = 0; i < n; ++i) {
        const size_t where_len = where_.size();
        where_ += "[" + std::to_string(i) + "]";
        path_.push_back(std::to_string(i));
        l.push_back(Encode(PySequence_Fast_GET_ITEM(p, i)));
        path_.pop_back();
        where_.resize(where_len);
      }
      return ackpt::Value(std::move(l));
    }
    Fail(ackpt::Error::Code::kUnsupported,
         std::string("unsupported value of type '") + Py_TYPE(p)->tp_name +
             "' (supported: dict, list, tuple, torch.Tensor, int, float, bool, str, None)");
  }

  std::string where_;
  Path path_;
  int depth_ = 0;
  ackpt::List int_keys_, tuples_, nones_;
};

ackpt::StateDict EncodeGroup(py::handle obj, const std::string& root,
                             const std::string& layout = "") {
  ackpt::StateDict group;
  if (obj.is_none()) return group;
  if (!PyDict_Check(obj.ptr())) {
    throw KeyPathError{ackpt::Error::Code::kInvalidArgument,
                       root + " must be a dict, not '" + Py_TYPE(obj.ptr())->tp_name + "'", root};
  }
  Encoder e(root);
  ackpt::Value v = e.Encode(obj);
  group = std::move(v.dict());
  e.Finish(&group, layout);
  return group;
}

class Decoder {
 public:
  // Reads and removes the schema entry of `group`.
  explicit Decoder(ackpt::StateDict* group) {
    const ackpt::Value* s = group->find(kSchemaKey);
    if (!s || !s->is_dict()) return;
    const ackpt::StateDict& d = s->dict();
    auto read = [&](const char* name, std::unordered_set<std::string>* out) {
      const ackpt::Value* l = d.find(name);
      if (!l || !l->is_list()) return;
      for (const auto& p : l->list()) {
        if (!p.is_list()) continue;
        std::string joined;
        for (const auto& k : p.list()) {
          if (k.is_string()) joined += "\x1f" + k.str();
        }
        out->insert(joined);
      }
    };
    read("int_keys", &int_keys_);
    read("tuples", &tuples_);
    read("none", &nones_);
    if (const ackpt::Value* l = d.find("layout"); l && l->is_string()) layout_ = l->str();
    group->erase(kSchemaKey);
  }

  const std::string& layout() const { return layout_; }

  py::object Decode(const ackpt::Value& v) {
    switch (v.kind()) {
      case ackpt::Value::Kind::kTensor:
        return py::reinterpret_steal<py::object>(THPVariable_Wrap(v.tensor()));
      case ackpt::Value::Kind::kInt:
        return py::int_(v.to_int());
      case ackpt::Value::Kind::kDouble:
        return py::float_(v.to_double());
      case ackpt::Value::Kind::kBool:
        return py::bool_(v.to_bool());
      case ackpt::Value::Kind::kString:
        if (!nones_.empty() && nones_.count(path_)) return py::none();
        return py::str(v.str());
      case ackpt::Value::Kind::kList: {
        const ackpt::List& l = v.list();
        const bool tuple = !tuples_.empty() && tuples_.count(path_);
        py::list out(l.size());
        for (size_t i = 0; i < l.size(); ++i) {
          const size_t n = path_.size();
          path_ += "\x1f" + std::to_string(i);
          out[i] = Decode(l[i]);
          path_.resize(n);
        }
        if (tuple) return py::tuple(out);
        return std::move(out);
      }
      case ackpt::Value::Kind::kDict: {
        py::dict out;
        for (const auto& [k, child] : v.dict()) {
          const size_t n = path_.size();
          path_ += "\x1f" + k;
          py::object key;
          if (!int_keys_.empty() && int_keys_.count(path_)) {
            key = py::int_(std::stoll(k));
          } else {
            key = py::str(k);
          }
          out[key] = Decode(child);
          path_.resize(n);
        }
        return std::move(out);
      }
    }
    return py::none();
  }

 private:
  std::unordered_set<std::string> int_keys_, tuples_, nones_;
  std::string layout_;
  std::string path_;
};

py::object DecodeGroup(ackpt::StateDict group, std::string* layout = nullptr) {
  Decoder d(&group);
  if (layout) *layout = d.layout();
  return d.Decode(ackpt::Value(std::move(group)));
}

// ---- arguments ----------------------------------------------------------------

template <typename E>
struct EnumNames {
  std::vector<std::pair<const char*, E>> names;
  E Parse(const char* field, py::handle h) const {
    if (!PyUnicode_Check(h.ptr())) {
      throw py::type_error(std::string("Checkpointer() argument '") + field +
                           "' must be str, not " + Py_TYPE(h.ptr())->tp_name);
    }
    const std::string s = h.cast<std::string>();
    std::string valid;
    for (const auto& [n, e] : names) {
      if (s == n) return e;
      valid += std::string(valid.empty() ? "" : ", ") + "'" + n + "'";
    }
    throw py::value_error(std::string("Checkpointer() argument '") + field + "' must be one of " +
                          valid + ", not '" + s + "'");
  }
  const char* Name(E e) const {
    for (const auto& [n, v] : names) {
      if (v == e) return n;
    }
    return "?";
  }
};

const EnumNames<ackpt::Compression> kCompression{
    {{"zstd", ackpt::Compression::kZstd},
     {"none", ackpt::Compression::kNone},
     {"zstd_byte_grouped", ackpt::Compression::kZstdByteGrouped},
     {"auto", ackpt::Compression::kAuto}}};
const EnumNames<ackpt::BackpressurePolicy> kBackpressure{
    {{"block", ackpt::BackpressurePolicy::kBlock},
     {"skip", ackpt::BackpressurePolicy::kSkip},
     {"replace_pending", ackpt::BackpressurePolicy::kReplacePending}}};
const EnumNames<ackpt::WriterPriority> kPriority{{{"normal", ackpt::WriterPriority::kNormal},
                                                  {"low", ackpt::WriterPriority::kLow},
                                                  {"idle", ackpt::WriterPriority::kIdle}}};

using Args = ackpt::DefaultCheckpointerArguments;
struct Field {
  const char* name;
  const char* py_type;
  std::function<void(Args&, py::handle)> set;
  std::function<py::object(const Args&)> get;
};

[[noreturn]] void WrongType(const char* field, const char* want, py::handle h) {
  throw py::type_error(std::string("Checkpointer() argument '") + field + "' must be " + want +
                       ", not " + Py_TYPE(h.ptr())->tp_name);
}
bool ToBool(const char* f, py::handle h) {
  if (!PyBool_Check(h.ptr())) WrongType(f, "bool", h);
  return h.ptr() == Py_True;
}
int64_t ToInt(const char* f, py::handle h, int64_t lo, int64_t hi) {
  if (!PyLong_Check(h.ptr()) || PyBool_Check(h.ptr())) WrongType(f, "int", h);
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(h.ptr(), &overflow);
  if (overflow || v < lo || v > hi) {
    throw py::value_error(std::string("Checkpointer() argument '") + f +
                          "' out of range: " + Repr(h));
  }
  return v;
}
double ToDouble(const char* f, py::handle h) {
  if (PyBool_Check(h.ptr()) || !(PyFloat_Check(h.ptr()) || PyLong_Check(h.ptr())))
    WrongType(f, "float", h);
  return h.cast<double>();
}
std::string ToStr(const char* f, py::handle h) {
  if (!PyUnicode_Check(h.ptr())) WrongType(f, "str", h);
  return h.cast<std::string>();
}

#define ACKPT_BOOL(n, m)                                                                     \
  Field {                                                                                    \
#n, "bool",                                                                              \
        [](Args & a,                                                                         \
           py::handle h) { m = ToBool(#n, h); }, [](const Args& a)                           \
                                                      -> py::object { return py::bool_(m); } \
  }
#define ACKPT_INT(n, m, lo, hi)                                                                 \
  Field {                                                                                       \
#n, "int", [](Args& a, py::handle h) { m = static_cast<decltype(m)>(ToInt(#n, h, lo, hi)); }, \
        [](const Args& a) -> py::object { return py::int_(m); } \
  }
#define ACKPT_FLOAT(n, m)                                                                       \
  Field {                                                                                       \
#n, "float",                                                                                \
        [](Args & a,                                                                            \
           py::handle h) { m = ToDouble(#n, h); }, [](const Args& a)                            \
                                                        -> py::object { return py::float_(m); } \
  }
#define ACKPT_STR(n, m)                                                                          \
  Field {                                                                                        \
#n, "str",                                                                                   \
        [](Args & a, py::handle h) { m = ToStr(#n, h); },                                        \
                                                       [](const Args& a)                         \
                                                            -> py::object { return py::str(m); } \
  }
#define ACKPT_ENUM(n, m, table)                                                                   \
  Field {                                                                                         \
#n, "str",                                                                                    \
        [](Args & a,                                                                              \
           py::handle                                                                             \
               h) { m = table.Parse(#n, h); },                                                    \
                                            [](const Args& a)                                     \
                                                 -> py::object { return py::str(table.Name(m)); } \
  }

constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kI32Max = std::numeric_limits<int>::max();
constexpr int64_t kI32Min = std::numeric_limits<int>::min();

const std::vector<Field>& Fields() {
  static const std::vector<Field> fields = {
      // WriteOptions
      ACKPT_ENUM(compression, a.compression, kCompression),
      ACKPT_BOOL(always_compress, a.always_compress),
      ACKPT_INT(zstd_level, a.zstd_level, kI32Min, kI32Max),
      ACKPT_INT(chunk_size, a.chunk_size, 0, kI64Max),
      ACKPT_INT(writer_threads, a.writer_threads, kI32Min, kI32Max),
      ACKPT_BOOL(fsync, a.fsync),
      ACKPT_INT(writeback_bytes, a.writeback_bytes, 0, kI64Max),
      Field{"metadata", "dict[str, str]",
            [](Args& a, py::handle h) {
              if (!PyDict_Check(h.ptr())) WrongType("metadata", "dict[str, str]", h);
              a.metadata.clear();
              for (auto kv : py::reinterpret_borrow<py::dict>(h)) {
                a.metadata[ToStr("metadata", kv.first)] = ToStr("metadata", kv.second);
              }
            },
            [](const Args& a) -> py::object { return py::cast(a.metadata); }},
      // EngineOptions
      ACKPT_INT(snapshot_threads, a.snapshot_threads, kI32Min, kI32Max),
      ACKPT_INT(staging_budget_bytes, a.staging_budget_bytes, 0, kI64Max),
      ACKPT_BOOL(pin_host_memory, a.pin_host_memory),
      ACKPT_ENUM(backpressure, a.backpressure, kBackpressure),
      ACKPT_BOOL(overlap_snapshot, a.overlap_snapshot),
      ACKPT_ENUM(writer_priority, a.writer_priority, kPriority),
      ACKPT_FLOAT(pacing_fraction, a.pacing_fraction),
      ACKPT_FLOAT(drain_timeout_seconds, a.drain_timeout_seconds),
      ACKPT_STR(log_level, a.log_level),
      // DefaultCheckpointerArguments
      ACKPT_BOOL(checkpoint, a.checkpoint),
      ACKPT_BOOL(delete_existing_checkpoints, a.delete_existing_checkpoints),
      ACKPT_INT(period, a.period, std::numeric_limits<int64_t>::min(), kI64Max),
      ACKPT_STR(save_dir, a.save_dir),
      ACKPT_STR(model_state_save_dir, a.model_state_save_dir),
      ACKPT_STR(load_dir, a.load_dir),
      ACKPT_STR(load_filename, a.load_filename),
      ACKPT_STR(file_prefix, a.file_prefix),
      ACKPT_STR(file_ext, a.file_ext),
      ACKPT_BOOL(resume_from_save_dir, a.resume_from_save_dir),
      ACKPT_BOOL(verify_on_load, a.verify_on_load),
      // IncrementalArguments: the switch only (full_every, verify: C++ only for now)
      ACKPT_BOOL(incremental, a.incremental.enabled),
      // RetentionPolicy (DefaultCheckpointerArguments::retention), flattened
      ACKPT_INT(keep_last, a.retention.keep_last, std::numeric_limits<int64_t>::min(), kI64Max),
      ACKPT_INT(keep_every, a.retention.keep_every, std::numeric_limits<int64_t>::min(), kI64Max),
      ACKPT_INT(keep_best, a.retention.keep_best, std::numeric_limits<int64_t>::min(), kI64Max),
      ACKPT_STR(best_metric, a.retention.best_metric),
      ACKPT_BOOL(best_mode_max, a.retention.best_mode_max),
      ACKPT_FLOAT(keep_time_interval_seconds, a.retention.keep_time_interval_seconds),
      ACKPT_INT(max_total_bytes, a.retention.max_total_bytes, 0, kI64Max),
      ACKPT_INT(model_keep_last, a.retention.model_keep_last, std::numeric_limits<int64_t>::min(),
                kI64Max),
  };
  return fields;
}

// Fields of the C++ structs that have no keyword argument, and why.
const std::vector<std::pair<const char*, const char*>> kNotExposed = {
    {"on_save",
     "a C++ callback on a writer thread; Checkpointer.stats() returns the SaveStats instead"},
    {"logger", "a C++ spdlog logger; use log_level"},
    {"env", "the C++ file-system seam"},
    {"retention", "flattened: its fields are keyword arguments of their own"},
    {"local_tier", "two tiers (docs/TIERS.md) are C++ only for now"},
};

const FieldDoc* DocOf(const std::string& name) {
  for (const auto& d : kFieldDocs) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

py::dict StatsDict(const ackpt::SaveStats& s) {
  py::dict d;
  d["index"] = s.index;
  d["path"] = s.path;
  d["forced"] = s.forced;
  d["ok"] = s.ok;
  d["error"] = s.error;
  d["bytes"] = s.bytes;
  d["file_bytes"] = s.file_bytes;
  d["overlapped"] = s.overlapped;
  d["stall_seconds"] = s.stall_seconds;
  d["snapshot_seconds"] = s.snapshot_seconds;
  d["hash_seconds"] = s.hash_seconds;
  d["late_hash_bytes"] = s.late_hash_bytes;
  d["compress_seconds"] = s.compress_seconds;
  d["write_seconds"] = s.write_seconds;
  d["end_to_end_seconds"] = s.end_to_end_seconds;
  d["queue_depth"] = s.queue_depth;
  d["staging_chunks"] = s.staging_chunks;
  d["staging_chunks_peak"] = s.staging_chunks_peak;
  d["chunk_waits"] = s.chunk_waits;
  d["streamed_bytes"] = s.streamed_bytes;
  d["skipped_total"] = s.skipped_total;
  d["replaced_total"] = s.replaced_total;
  return d;
}

// ---- the checkpointer ---------------------------------------------------------

struct StatsLog {
  std::mutex mu;
  std::deque<ackpt::SaveStats> recent;  // the last 1024
};

class PyCheckpointer {
 public:
  explicit PyCheckpointer(const py::dict& kwargs) : log_(std::make_shared<StatsLog>()) {
    Args args;
    std::vector<std::string> unknown;
    for (auto kv : kwargs) {
      const std::string name = kv.first.cast<std::string>();
      const Field* f = nullptr;
      for (const auto& x : Fields()) {
        if (name == x.name) f = &x;
      }
      if (!f) {
        unknown.push_back("'" + name + "'");
        continue;
      }
      f->set(args, kv.second);
    }
    if (!unknown.empty()) {
      std::string s;
      for (const auto& u : unknown) s += (s.empty() ? "" : ", ") + u;
      throw py::type_error("Checkpointer() got unexpected keyword argument" +
                           std::string(unknown.size() > 1 ? "s " : " ") + s);
    }
    std::weak_ptr<StatsLog> log = log_;
    args.on_save = [log](const ackpt::SaveStats& s) {
      if (auto l = log.lock()) {
        std::lock_guard<std::mutex> g(l->mu);
        l->recent.push_back(s);
        if (l->recent.size() > 1024) l->recent.pop_front();
      }
    };
    py::gil_scoped_release release;
    c_ = std::make_unique<ackpt::DefaultCheckpointer>(std::move(args));
  }
  ~PyCheckpointer() {
    if (PyGILState_Check()) {
      py::gil_scoped_release release;
      c_.reset();
    } else {
      c_.reset();
    }
  }

  void Save(py::handle mis, py::handle ts, py::handle tbs, int64_t index, bool force,
            py::handle metrics, const std::string& layout) {
    ackpt::Checkpoint cp;
    cp.module_interface_state = EncodeGroup(mis, "module_interface_state");
    cp.trainer_state = EncodeGroup(ts, layout.empty() ? "trainer_state" : "state", layout);
    cp.trainer_backend_state = EncodeGroup(tbs, "trainer_backend_state");
    if (!metrics.is_none()) {
      for (auto kv : py::reinterpret_borrow<py::dict>(metrics)) {
        cp.metrics[kv.first.cast<std::string>()] = kv.second.cast<double>();
      }
    }
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> g(mu_);
      Get().save(cp, index, force);
    }
  }

  void SaveModel(py::handle state, int64_t index) {
    ackpt::StateDict s = EncodeGroup(state, "model_state");
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> g(mu_);
    Get().save_model(s, index);
  }

  // (module_interface_state, trainer_state, trainer_backend_state, metrics, layout, path) or None.
  py::object Load(const std::function<ackpt::Checkpoint(ackpt::DefaultCheckpointer&)>& how) {
    ackpt::Checkpoint cp;
    std::string path;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> g(mu_);
      cp = how(Get());
      path = Get().last_loaded_path();
    }
    if (cp.empty() && path.empty()) return py::none();
    std::string layout;
    py::object mis = DecodeGroup(std::move(cp.module_interface_state));
    py::object ts = DecodeGroup(std::move(cp.trainer_state), &layout);
    py::object tbs = DecodeGroup(std::move(cp.trainer_backend_state));
    py::dict metrics;
    for (const auto& [k, v] : cp.metrics) metrics[py::str(k)] = v;
    return py::make_tuple(mis, ts, tbs, metrics, layout, path);
  }

  void Wait() {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> g(mu_);
    Get().wait();
  }
  void WaitSnapshot() {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> g(mu_);
    Get().wait_snapshot();
  }
  void Close() {
    py::gil_scoped_release release;  // declared first: the drain below runs without the GIL
    std::unique_ptr<ackpt::DefaultCheckpointer> c;
    std::lock_guard<std::mutex> g(mu_);
    c = std::move(c_);
    if (c) c->wait();  // raises a pending background error; the destructor then drains
  }
  bool closed() const { return !c_; }

  py::dict Counters() {
    const ackpt::CheckpointerCounters c = Get().counters();
    py::dict d;
    d["saves_requested"] = c.saves_requested;
    d["saves_completed"] = c.saves_completed;
    d["saves_failed"] = c.saves_failed;
    d["saves_skipped"] = c.saves_skipped;
    d["saves_replaced"] = c.saves_replaced;
    d["saves_torn"] = c.saves_torn;
    d["staging_bytes_reserved"] = c.staging_bytes_reserved;
    d["staging_bytes_peak"] = c.staging_bytes_peak;
    d["staging_budget_bytes"] = c.staging_budget_bytes;
    d["staging_chunk_bytes"] = c.staging_chunk_bytes;
    d["staging_chunks_in_use"] = c.staging_chunks_in_use;
    d["staging_chunks_peak"] = c.staging_chunks_peak;
    d["staging_chunk_waits"] = c.staging_chunk_waits;
    d["saves_streamed"] = c.saves_streamed;
    d["streamed_bytes"] = c.streamed_bytes;
    d["files_deleted"] = c.files_deleted;
    d["temp_files_removed"] = c.temp_files_removed;
    return d;
  }

  py::list Stats() {
    std::deque<ackpt::SaveStats> copy;
    {
      std::lock_guard<std::mutex> g(log_->mu);
      copy = log_->recent;
    }
    py::list l;
    for (const auto& s : copy) l.append(StatsDict(s));
    return l;
  }

  py::list ListCheckpoints() {
    std::vector<ackpt::CheckpointEntry> entries;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> g(mu_);
      entries = Get().list_checkpoints();
    }
    py::list l;
    for (const auto& e : entries) {
      py::dict d;
      d["index"] = e.index;
      d["path"] = e.path;
      d["compressed"] = e.compressed;
      d["file_bytes"] = e.file_bytes;
      d["logical_bytes"] = e.logical_bytes;
      d["parent"] = e.parent;
      d["generation"] = e.generation;
      d["save_time"] = e.save_time;
      d["metrics"] = e.metrics;
      d["readable"] = e.readable;
      d["error"] = e.error;
      d["kept_by"] = e.kept_by;
      l.append(d);
    }
    return l;
  }

  py::dict ArgsDict() {
    py::dict d;
    for (const auto& f : Fields()) d[f.name] = f.get(Get().args());
    return d;
  }
  std::string LastSavedPath() { return Get().last_saved_path(); }
  std::string LastLoadedPath() { return Get().last_loaded_path(); }

  ackpt::DefaultCheckpointer& Get() {
    if (!c_) throw ackpt::Error::InvalidArgument("the checkpointer is closed");
    return *c_;
  }

 private:
  std::mutex mu_;
  std::shared_ptr<StatsLog> log_;
  std::unique_ptr<ackpt::DefaultCheckpointer> c_;
};

void RaiseAckptError(ackpt::Error::Code code, const std::string& what, const std::string& message,
                     const std::string& key_path) {
  try {
    py::object make = py::module_::import("ackpt._errors").attr("_make");
    py::object exc = make(static_cast<int>(code), ackpt::CodeName(code), what, message, key_path);
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  } catch (py::error_already_set& e) {
    e.restore();
  }
}

}  // namespace

PYBIND11_MODULE(_ackpt, m) {
  m.doc() = "ackpt's C++ engine (DefaultCheckpointer); use the ackpt package, not this module.";
  py::module_::import("torch");

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const KeyPathError& e) {
      RaiseAckptError(e.code, std::string("ackpt: ") + ackpt::CodeName(e.code) + ": " + e.message,
                      e.message, e.key_path);
    } catch (const ackpt::Error& e) {
      RaiseAckptError(e.code(), e.what(), e.message(), "");
    }
  });

  m.attr("SCHEMA_KEY") = kSchemaKey;

  m.def(
      "_fields",
      [] {
        const Args defaults;
        py::list out;
        for (const auto& f : Fields()) {
          const FieldDoc* d = DocOf(f.name);
          py::dict e;
          e["name"] = f.name;
          e["type"] = f.py_type;
          e["default"] = f.get(defaults);
          e["owner"] = d ? d->owner : "";
          e["cpp_type"] = d ? d->cpp_type : "";
          e["help"] = d ? d->help : "";
          out.append(e);
        }
        return out;
      },
      "Every keyword argument of Checkpointer: name, Python type, default (read off a "
      "default-constructed DefaultCheckpointerArguments), and the help text of the C++ field.");
  m.def(
      "_header_fields",
      [] {
        py::list out;
        for (const auto& d : kFieldDocs) out.append(py::make_tuple(d.owner, d.name, d.cpp_type));
        return out;
      },
      "Every field the headers declare (generated at build time).");
  m.def("_not_exposed", [] { return py::cast(kNotExposed); });
  m.def("_enum_values", [] {
    py::dict d;
    auto names = [](const auto& t) {
      py::list l;
      for (const auto& [n, e] : t.names) l.append(n);
      return l;
    };
    d["compression"] = names(kCompression);
    d["backpressure"] = names(kBackpressure);
    d["writer_priority"] = names(kPriority);
    return d;
  });

  m.def(
      "read_state_dict",
      [](const std::string& path, bool verify) {
        ackpt::StateDict s;
        {
          py::gil_scoped_release release;
          ackpt::ReadOptions o;
          o.verify_checksums = verify;
          s = ackpt::ReadStateDict(path, o);
        }
        return DecodeGroup(std::move(s));
      },
      py::arg("path"), py::arg("verify") = true,
      "Reads any ackpt (or safetensors) file as one state tree; int keys, tuples and None "
      "saved from Python come back as they were saved.");
  m.def(
      "write_state_dict",
      [](py::handle state, const std::string& path, const std::string& compression,
         int zstd_level) {
        ackpt::StateDict s = EncodeGroup(state, "state");
        ackpt::WriteOptions o;
        o.compression = kCompression.Parse("compression", py::str(compression));
        o.zstd_level = zstd_level;
        py::gil_scoped_release release;
        ackpt::WriteStateDict(s, path, o);
      },
      py::arg("state"), py::arg("path"), py::arg("compression") = "zstd", py::arg("zstd_level") = 1,
      "Writes `state` as one file, synchronously (atomic commit, fsync).");

  py::class_<PyCheckpointer>(m, "_Checkpointer")
      .def(py::init<const py::dict&>())
      .def("save", &PyCheckpointer::Save)
      .def("save_model", &PyCheckpointer::SaveModel)
      .def("load", [](PyCheckpointer& c) { return c.Load([](auto& d) { return d.load(); }); })
      .def("load_into",
           [](PyCheckpointer& c, py::handle mis, py::handle ts, py::handle tbs) {
             ackpt::LoadTargets t;
             t.into.module_interface_state = EncodeGroup(mis, "module_interface_state");
             t.into.trainer_state = EncodeGroup(ts, "into");
             t.into.trainer_backend_state = EncodeGroup(tbs, "trainer_backend_state");
             py::object r = c.Load([&t](auto& d) { return d.load(t); });
             {
               ackpt::LoadTargets drop = std::move(t);  // tensor references released under the GIL
             }
             return r;
           })
      .def("load_latest",
           [](PyCheckpointer& c) { return c.Load([](auto& d) { return d.load_latest(); }); })
      .def("load_index", [](PyCheckpointer& c,
                            int64_t i) { return c.Load([i](auto& d) { return d.load_index(i); }); })
      .def("load_best",
           [](PyCheckpointer& c, const std::string& metric, bool mode_max) {
             return c.Load([&](auto& d) { return d.load_best(metric, mode_max); });
           })
      .def("wait", &PyCheckpointer::Wait)
      .def("wait_snapshot", &PyCheckpointer::WaitSnapshot)
      .def("close", &PyCheckpointer::Close)
      .def_property_readonly("closed", &PyCheckpointer::closed)
      .def("counters", &PyCheckpointer::Counters)
      .def("stats", &PyCheckpointer::Stats)
      .def("list_checkpoints", &PyCheckpointer::ListCheckpoints)
      .def("args", &PyCheckpointer::ArgsDict)
      .def("last_saved_path", &PyCheckpointer::LastSavedPath)
      .def("last_loaded_path", &PyCheckpointer::LastLoadedPath);
}
