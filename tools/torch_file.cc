// A code-free unpickler for torch.save() files (see torch_file.h for why).
#include "torch_file.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <unordered_map>

#include "ackpt/error.h"

namespace ackpt_cli {

using ackpt::Error;

std::string Describe(const PyObj& o) {
  switch (o.kind) {
    case PyObj::Kind::kNone:
      return "None";
    case PyObj::Kind::kBool:
      return "bool";
    case PyObj::Kind::kInt:
      return "int";
    case PyObj::Kind::kFloat:
      return "float";
    case PyObj::Kind::kStr:
      return "str";
    case PyObj::Kind::kBytes:
      return "bytes";
    case PyObj::Kind::kList:
      return "list";
    case PyObj::Kind::kTuple:
      return "tuple";
    case PyObj::Kind::kDict:
      return "dict";
    case PyObj::Kind::kTensor:
      return "tensor";
    case PyObj::Kind::kGlobal:
      return "a reference to " + o.str;
    case PyObj::Kind::kStorage:
      return "a bare torch storage";
    case PyObj::Kind::kOpaque:
      return o.str;
  }
  return "?";
}

namespace {

PyRef Make(PyObj::Kind kind) {
  auto o = std::make_shared<PyObj>();
  o->kind = kind;
  return o;
}

PyRef Opaque(const std::string& what) {
  PyRef o = Make(PyObj::Kind::kOpaque);
  o->str = what;
  return o;
}

// torch.<Name>Storage -> dtype, for the storages torch.save writes.
bool StorageDtype(const std::string& global, at::ScalarType* type) {
  static const std::map<std::string, at::ScalarType> kTypes = {
      {"torch.FloatStorage", at::kFloat},
      {"torch.DoubleStorage", at::kDouble},
      {"torch.HalfStorage", at::kHalf},
      {"torch.BFloat16Storage", at::kBFloat16},
      {"torch.LongStorage", at::kLong},
      {"torch.IntStorage", at::kInt},
      {"torch.ShortStorage", at::kShort},
      {"torch.CharStorage", at::kChar},
      {"torch.ByteStorage", at::kByte},
      {"torch.BoolStorage", at::kBool},
      {"torch.ComplexFloatStorage", at::kComplexFloat},
      {"torch.ComplexDoubleStorage", at::kComplexDouble},
  };
  auto it = kTypes.find(global);
  if (it == kTypes.end()) return false;
  *type = it->second;
  return true;
}

class Unpickler {
 public:
  Unpickler(const std::string& path, caffe2::serialize::PyTorchStreamReader* zip, const char* data,
            size_t size, std::function<void(uint64_t)> on_storage_bytes)
      : path_(path),
        zip_(zip),
        p_(data),
        end_(data + size),
        begin_(data),
        on_storage_bytes_(std::move(on_storage_bytes)) {}

  PyRef Run() {
    while (true) {
      const size_t at = Offset();
      const uint8_t op = U8();
      switch (op) {
        case 0x80:  // PROTO
          U8();
          break;
        case 0x95:  // FRAME (protocol 4): an 8-byte length, frames are just a hint
          Bytes(8);
          break;
        case '.':  // STOP
          if (stack_.size() != 1) Bad("STOP with " + std::to_string(stack_.size()) + " values");
          return stack_.back();
        case '(':  // MARK
          marks_.push_back(stack_.size());
          break;
        case ')':
          Push(Make(PyObj::Kind::kTuple));
          break;
        case ']':
          Push(Make(PyObj::Kind::kList));
          break;
        case '}':
          Push(Make(PyObj::Kind::kDict));
          break;
        case 0x8f:  // EMPTY_SET
          Push(Opaque("a set"));
          break;
        case 'N':
          Push(Make(PyObj::Kind::kNone));
          break;
        case 0x88:  // NEWTRUE
        case 0x89: {
          PyRef o = Make(PyObj::Kind::kBool);
          o->b = op == 0x88;
          Push(o);
          break;
        }
        case 'J':  // BININT
          PushInt(static_cast<int32_t>(LE(4)));
          break;
        case 'K':  // BININT1
          PushInt(U8());
          break;
        case 'M':  // BININT2
          PushInt(static_cast<int64_t>(LE(2)));
          break;
        case 0x8a: {  // LONG1: n bytes of little-endian two's complement
          const size_t n = U8();
          const uint8_t* b = reinterpret_cast<const uint8_t*>(Bytes(n));
          if (n > 8) {
            Push(Opaque("an int beyond the int64 range"));
            break;
          }
          uint64_t v = 0;
          for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(b[k]) << (8 * k);
          if (n > 0 && n < 8 && (b[n - 1] & 0x80)) v |= ~uint64_t{0} << (8 * n);  // sign-extend
          PushInt(static_cast<int64_t>(v));
          break;
        }
        case 0x8b:  // LONG4
          Bytes(LE(4));
          Push(Opaque("an int beyond the int64 range"));
          break;
        case 'G': {  // BINFLOAT: big-endian IEEE double
          const uint8_t* b = reinterpret_cast<const uint8_t*>(Bytes(8));
          uint64_t bits = 0;
          for (int k = 0; k < 8; ++k) bits = (bits << 8) | b[k];
          PyRef o = Make(PyObj::Kind::kFloat);
          std::memcpy(&o->f, &bits, 8);
          Push(o);
          break;
        }
        case 'X':  // BINUNICODE
          PushStr(PyObj::Kind::kStr, LE(4));
          break;
        case 0x8c:  // SHORT_BINUNICODE
          PushStr(PyObj::Kind::kStr, U8());
          break;
        case 0x8d:  // BINUNICODE8
          PushStr(PyObj::Kind::kStr, LE(8));
          break;
        case 'B':  // BINBYTES
          PushStr(PyObj::Kind::kBytes, LE(4));
          break;
        case 'C':  // SHORT_BINBYTES
          PushStr(PyObj::Kind::kBytes, U8());
          break;
        case 0x8e:  // BINBYTES8
          PushStr(PyObj::Kind::kBytes, LE(8));
          break;
        case 'q':  // BINPUT
          memo_[U8()] = Top();
          break;
        case 'r':  // LONG_BINPUT
          memo_[LE(4)] = Top();
          break;
        case 0x94:  // MEMOIZE
          memo_[memo_.size()] = Top();
          break;
        case 'h':  // BINGET
          Push(Memo(U8()));
          break;
        case 'j':  // LONG_BINGET
          Push(Memo(LE(4)));
          break;
        case '0':  // POP
          Pop();
          break;
        case '1':  // POP_MARK
          PopMark();
          break;
        case '2':  // DUP
          Push(Top());
          break;
        case 't': {  // TUPLE
          PyRef t = Make(PyObj::Kind::kTuple);
          t->items = PopMark();
          Push(t);
          break;
        }
        case 0x85:  // TUPLE1
        case 0x86:  // TUPLE2
        case 0x87: {
          const size_t n = op - 0x84u;
          PyRef t = Make(PyObj::Kind::kTuple);
          if (stack_.size() - Floor() < n) Bad("TUPLE" + std::to_string(n) + " on a short stack");
          t->items.assign(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
          stack_.resize(stack_.size() - n);
          Push(t);
          break;
        }
        case 'l': {  // LIST
          PyRef l = Make(PyObj::Kind::kList);
          l->items = PopMark();
          Push(l);
          break;
        }
        case 'd': {  // DICT
          PyRef d = Make(PyObj::Kind::kDict);
          std::vector<PyRef> kv = PopMark();
          if (kv.size() % 2) Bad("DICT with an odd number of items");
          for (size_t k = 0; k < kv.size(); k += 2) d->entries.emplace_back(kv[k], kv[k + 1]);
          Push(d);
          break;
        }
        case 'a': {  // APPEND
          PyRef v = Pop();
          Append(Top(), {v});
          break;
        }
        case 'e': {  // APPENDS
          std::vector<PyRef> vs = PopMark();
          Append(Top(), vs);
          break;
        }
        case 's': {  // SETITEM
          PyRef v = Pop();
          PyRef k = Pop();
          SetItems(Top(), {k, v});
          break;
        }
        case 'u': {  // SETITEMS
          std::vector<PyRef> kv = PopMark();
          if (kv.size() % 2) Bad("SETITEMS with an odd number of items");
          SetItems(Top(), kv);
          break;
        }
        case 0x90:  // ADDITEMS (to a set)
          PopMark();
          break;
        case 0x91:  // FROZENSET
          PopMark();
          Push(Opaque("a frozenset"));
          break;
        case 'c': {  // GLOBAL "module\nname\n"
          const std::string module = Line();
          const std::string name = Line();
          PyRef g = Make(PyObj::Kind::kGlobal);
          g->str = module + "." + name;
          Push(g);
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          PyRef name = Pop();
          PyRef module = Pop();
          if (name->kind != PyObj::Kind::kStr || module->kind != PyObj::Kind::kStr)
            Bad("STACK_GLOBAL of non-strings");
          PyRef g = Make(PyObj::Kind::kGlobal);
          g->str = module->str + "." + name->str;
          Push(g);
          break;
        }
        case 'R': {  // REDUCE: callable(*args), for the few callables we know
          PyRef args = Pop();
          PyRef callable = Pop();
          Push(Reduce(*callable, *args));
          break;
        }
        case 0x81: {  // NEWOBJ: cls.__new__(cls, *args)
          Pop();
          PyRef cls = Pop();
          Push(Opaque("a " + Name(*cls) + " object"));
          break;
        }
        case 0x92: {  // NEWOBJ_EX
          Pop();
          Pop();
          PyRef cls = Pop();
          Push(Opaque("a " + Name(*cls) + " object"));
          break;
        }
        case 'b':  // BUILD: obj.__setstate__(state); OrderedDict._metadata and the like
          Pop();
          Top();
          break;
        case 'Q': {  // BINPERSID: torch's storage references
          PyRef pid = Pop();
          Push(PersistentLoad(*pid));
          break;
        }
        default:
          throw Error::Unsupported("'" + path_ + "': pickle opcode 0x" + Hex(op) + " at offset " +
                                   std::to_string(at) +
                                   " is outside the subset torch.save writes for state dicts");
      }
    }
  }

 private:
  [[noreturn]] void Bad(const std::string& what) const {
    throw Error::Corruption("'" + path_ + "': malformed pickle at offset " +
                            std::to_string(Offset()) + ": " + what);
  }
  static std::string Hex(uint8_t v) {
    const char* d = "0123456789abcdef";
    return std::string{d[v >> 4], d[v & 15]};
  }
  size_t Offset() const { return static_cast<size_t>(p_ - begin_); }
  const char* Bytes(uint64_t n) {
    if (n > static_cast<uint64_t>(end_ - p_)) Bad("truncated");
    const char* r = p_;
    p_ += n;
    return r;
  }
  uint8_t U8() { return static_cast<uint8_t>(*Bytes(1)); }
  uint64_t LE(int n) {
    const uint8_t* b = reinterpret_cast<const uint8_t*>(Bytes(static_cast<uint64_t>(n)));
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; --k) v = (v << 8) | b[k];
    return v;
  }
  std::string Line() {
    const char* nl =
        static_cast<const char*>(std::memchr(p_, '\n', static_cast<size_t>(end_ - p_)));
    if (nl == nullptr) Bad("unterminated GLOBAL");
    std::string s(p_, nl);
    p_ = nl + 1;
    return s;
  }
  size_t Floor() const { return marks_.empty() ? 0 : marks_.back(); }
  void Push(PyRef o) { stack_.push_back(std::move(o)); }
  void PushInt(int64_t v) {
    PyRef o = Make(PyObj::Kind::kInt);
    o->i = v;
    Push(o);
  }
  void PushStr(PyObj::Kind kind, uint64_t n) {
    PyRef o = Make(kind);
    const char* b = Bytes(n);
    o->str.assign(b, static_cast<size_t>(n));
    Push(o);
  }
  PyRef Pop() {
    if (stack_.size() <= Floor()) Bad("pop from an empty stack");
    PyRef o = std::move(stack_.back());
    stack_.pop_back();
    return o;
  }
  const PyRef& Top() {
    if (stack_.size() <= Floor()) Bad("empty stack");
    return stack_.back();
  }
  std::vector<PyRef> PopMark() {
    if (marks_.empty()) Bad("no MARK");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PyRef> out(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return out;
  }
  PyRef Memo(uint64_t k) {
    auto it = memo_.find(k);
    if (it == memo_.end()) Bad("memo key " + std::to_string(k) + " was never stored");
    return it->second;
  }
  void Append(const PyRef& list, const std::vector<PyRef>& vs) {
    if (list->kind == PyObj::Kind::kOpaque) return;
    if (list->kind != PyObj::Kind::kList) Bad("APPEND to a " + Describe(*list));
    list->items.insert(list->items.end(), vs.begin(), vs.end());
  }
  void SetItems(const PyRef& dict, const std::vector<PyRef>& kv) {
    if (dict->kind == PyObj::Kind::kOpaque) return;
    if (dict->kind != PyObj::Kind::kDict) Bad("SETITEM on a " + Describe(*dict));
    for (size_t k = 0; k < kv.size(); k += 2) {
      // Python semantics: a repeated key replaces the value in place.
      bool replaced = false;
      for (auto& e : dict->entries) {
        if (SameKey(*e.first, *kv[k])) {
          e.second = kv[k + 1];
          replaced = true;
        }
      }
      if (!replaced) dict->entries.emplace_back(kv[k], kv[k + 1]);
    }
  }
  static bool SameKey(const PyObj& a, const PyObj& b) {
    if (a.kind != b.kind) return false;
    if (a.kind == PyObj::Kind::kStr) return a.str == b.str;
    if (a.kind == PyObj::Kind::kInt) return a.i == b.i;
    return false;
  }
  static std::string Name(const PyObj& o) {
    return o.kind == PyObj::Kind::kGlobal ? o.str : Describe(o);
  }

  PyRef Reduce(const PyObj& callable, const PyObj& args) {
    const std::string f = Name(callable);
    const std::vector<PyRef>& a = args.items;
    if (f == "collections.OrderedDict") {
      if (!a.empty()) return Opaque("an OrderedDict built from arguments");
      return Make(PyObj::Kind::kDict);
    }
    if (f == "torch._utils._rebuild_tensor_v2" || f == "torch._utils._rebuild_tensor") {
      // (storage, storage_offset, size, stride[, requires_grad, backward_hooks[, metadata]])
      if (a.size() < 4) Bad(f + " with " + std::to_string(a.size()) + " arguments");
      return RebuildTensor(*a[0], *a[1], *a[2], *a[3]);
    }
    if (f == "torch._utils._rebuild_parameter" ||
        f == "torch._utils._rebuild_parameter_with_state") {
      // (data, requires_grad, backward_hooks[, state]): a Parameter is its data here.
      if (a.empty()) Bad(f + " without arguments");
      return a[0];
    }
    if (f == "builtins.set" || f == "__builtin__.set") return Opaque("a set");
    if (f == "builtins.frozenset" || f == "__builtin__.frozenset") return Opaque("a frozenset");
    if (f == "torch.Size" && a.size() == 1 && a[0]->kind == PyObj::Kind::kTuple) return a[0];
    if (f == "torch._utils._rebuild_qtensor") return Opaque("a quantized tensor");
    if (f == "torch._utils._rebuild_sparse_tensor" || f == "torch._utils._rebuild_sparse_csr")
      return Opaque("a sparse tensor");
    if (f == "torch._utils._rebuild_meta_tensor_no_storage") return Opaque("a meta tensor");
    return Opaque("a " + f + " object");
  }

  PyRef RebuildTensor(const PyObj& storage, const PyObj& offset, const PyObj& size,
                      const PyObj& stride) {
    if (storage.kind == PyObj::Kind::kOpaque) return Opaque("a tensor over " + storage.str);
    if (storage.kind != PyObj::Kind::kStorage) Bad("a tensor over a " + Describe(storage));
    auto ints = [&](const PyObj& t, const char* what) {
      std::vector<int64_t> v;
      if (t.kind != PyObj::Kind::kTuple)
        Bad(std::string("tensor ") + what + " is a " + Describe(t));
      for (const auto& e : t.items) {
        if (e->kind != PyObj::Kind::kInt || e->i < 0) Bad(std::string("bad tensor ") + what);
        v.push_back(e->i);
      }
      return v;
    };
    const std::vector<int64_t> sizes = ints(size, "size"), strides = ints(stride, "stride");
    if (offset.kind != PyObj::Kind::kInt || offset.i < 0) Bad("bad tensor storage offset");
    if (sizes.size() != strides.size()) Bad("tensor size and stride differ in length");
    // The view must lie inside the storage.
    bool empty = false;
    uint64_t last = static_cast<uint64_t>(offset.i);
    for (size_t d = 0; d < sizes.size(); ++d) {
      if (sizes[d] == 0) empty = true;
      last += static_cast<uint64_t>(sizes[d] > 0 ? sizes[d] - 1 : 0) *
              static_cast<uint64_t>(strides[d]);
    }
    const uint64_t numel = static_cast<uint64_t>(storage.tensor.numel());
    PyRef t = Make(PyObj::Kind::kTensor);
    if (empty) {
      t->tensor = at::empty(sizes, storage.tensor.options());
    } else {
      if (last >= numel) {
        Bad("a tensor view reaches element " + std::to_string(last) + " of a storage of " +
            std::to_string(numel));
      }
      t->tensor = storage.tensor.as_strided(sizes, strides, offset.i);
    }
    return t;
  }

  // ('storage', storage_type, key, location, numel) -> the storage from data/<key>.
  PyRef PersistentLoad(const PyObj& pid) {
    if (pid.kind != PyObj::Kind::kTuple || pid.items.size() < 5 ||
        pid.items[0]->kind != PyObj::Kind::kStr || pid.items[0]->str != "storage" ||
        pid.items[2]->kind != PyObj::Kind::kStr || pid.items[4]->kind != PyObj::Kind::kInt) {
      return Opaque("an unknown persistent object");
    }
    const std::string type = Name(*pid.items[1]);
    const std::string& key = pid.items[2]->str;
    at::ScalarType dtype;
    if (!StorageDtype(type, &dtype)) return Opaque("a " + type);
    auto cached = storages_.find(key);
    if (cached != storages_.end()) return cached->second;
    const int64_t numel = pid.items[4]->i;
    const std::string record = "data/" + key;
    if (!zip_->hasRecord(record)) Bad("storage " + key + " has no record " + record);
    auto [data, nbytes] = zip_->getRecord(record);
    const uint64_t want = static_cast<uint64_t>(numel) * at::elementSize(dtype);
    if (numel < 0 || nbytes < want) {
      Bad("storage " + key + " holds " + std::to_string(nbytes) + " bytes, fewer than " +
          std::to_string(numel) + " elements of " + std::string(at::toString(dtype)));
    }
    PyRef s = Make(PyObj::Kind::kStorage);
    s->tensor = at::empty({numel}, at::TensorOptions().dtype(dtype));
    if (want > 0) std::memcpy(s->tensor.data_ptr(), data.get(), want);
    on_storage_bytes_(nbytes);
    storages_[key] = s;
    return s;
  }

  const std::string& path_;
  caffe2::serialize::PyTorchStreamReader* zip_;
  const char* p_;
  const char* end_;
  const char* begin_;
  std::function<void(uint64_t)> on_storage_bytes_;
  std::vector<PyRef> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PyRef> memo_;
  std::unordered_map<std::string, PyRef> storages_;
};

}  // namespace

PyRef LoadTorchFile(const std::string& path,
                    const std::function<void(uint64_t, uint64_t)>& on_progress) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw Error::IO("stat", path, errno);
  if (!S_ISREG(st.st_mode)) throw Error::InvalidArgument("'" + path + "' is not a regular file");
  const uint64_t total = static_cast<uint64_t>(st.st_size);
  {
    std::ifstream in(path, std::ios::binary);
    char magic[4] = {};
    in.read(magic, 4);
    if (in.gcount() == 4 && std::memcmp(magic, "PK\x03\x04", 4) != 0) {
      // Pickle protocol 2 starts with 0x80 0x02: torch.save's legacy format,
      // or a plain pickle.dump. Both hold their tensors in a layout LibTorch
      // cannot read.
      const bool pickle = static_cast<uint8_t>(magic[0]) == 0x80;
      throw Error::Unsupported(
          "'" + path + "' is not a zip archive" +
          (pickle ? " but a bare pickle: the legacy torch.save format "
                    "(_use_new_zipfile_serialization=False) or pickle.dump"
                  : "") +
          "; ackpt convert reads files written by torch.save with its default zip format "
          "(torch >= 1.6): re-save with torch.save(torch.load(f), out)");
    }
  }
  try {
    caffe2::serialize::PyTorchStreamReader zip(path);
    if (zip.hasRecord("byteorder")) {
      auto [bo, n] = zip.getRecord("byteorder");
      const std::string order(static_cast<const char*>(bo.get()), n);
      if (order != "little") {
        throw Error::Unsupported("'" + path + "' stores tensors in '" + order +
                                 "' byte order; ackpt convert reads little-endian files only");
      }
    }
    if (!zip.hasRecord("data.pkl")) {
      throw Error::Corruption("'" + path +
                              "' is a zip archive without data.pkl: not a torch.save file");
    }
    auto [pkl, pkl_size] = zip.getRecord("data.pkl");
    uint64_t done = pkl_size;
    if (on_progress) on_progress(done, total);
    Unpickler u(path, &zip, static_cast<const char*>(pkl.get()), pkl_size, [&](uint64_t n) {
      done += n;
      if (on_progress) on_progress(std::min(done, total), total);
    });
    return u.Run();
  } catch (const c10::Error& e) {
    // LibTorch's zip reader: the message's first line says what failed.
    std::string what = e.what_without_backtrace();
    throw Error::Corruption("'" + path + "': cannot read the torch.save archive: " + what);
  }
}

}  // namespace ackpt_cli
