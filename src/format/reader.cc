// Validating, parallel checkpoint reader.
#define XXH_INLINE_ALL
#include <ATen/ATen.h>
#include <limits.h>
#include <stdlib.h>
#include <xxhash.h>
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_decompressBound
#include <ATen/core/grad_mode.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <new>
#include <nlohmann/json.hpp>
#include <set>

#include "ackpt/error.h"
#include "format/codec.h"
#include "format/internal.h"

namespace ackpt {
namespace format {

namespace {

// Files this process has open through a CheckpointReader, by canonical path,
// so retention never deletes a checkpoint that is being read.
std::mutex g_open_mu;
std::map<std::string, int>* g_open = new std::map<std::string, int>();  // never destroyed

std::string CanonicalPath(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) != nullptr ? std::string(buf) : path;
}

class OpenRegistration {
 public:
  explicit OpenRegistration(const std::string& path) : path_(CanonicalPath(path)) {
    std::lock_guard<std::mutex> lock(g_open_mu);
    ++(*g_open)[path_];
  }
  ~OpenRegistration() {
    std::lock_guard<std::mutex> lock(g_open_mu);
    auto it = g_open->find(path_);
    if (it != g_open->end() && --it->second == 0) g_open->erase(it);
  }

 private:
  std::string path_;
};

// Plain files are read in blocks of this size so large tensors load in parallel.
constexpr uint64_t kReadBlock = 8 << 20;
// Loading a plain file reads each tensor in blocks of this size straight into
// its destination and hashes each block right after it lands: 1 MiB stays in
// a core's L2 (2 MiB here) between the pread's copy and the hash, so the
// checksum costs no second trip to memory. Larger blocks measured no faster.
constexpr uint64_t kLoadBlock = 1 << 20;
// Destinations that cannot take the bytes directly (non-CPU, non-contiguous,
// conjugate/negative views) are filled through contiguous CPU bounce tensors,
// in batches of at most this many bytes (one larger tensor goes alone), so a
// load into such tensors costs the state plus this much.
constexpr uint64_t kBounceBatch = 64 << 20;
// A thread keeps its frame buffers for the next frame up to this size.
constexpr size_t kKeepBuffer = 64 << 20;

// A reusable, uninitialized byte buffer (std::string would zero-fill it: one
// more pass over every compressed byte).
class ThreadBuffer {
 public:
  uint8_t* Get(size_t n) {
    if (n > cap_) {
      data_.reset();
      data_.reset(new uint8_t[n]);
      cap_ = n;
    }
    return data_.get();
  }
  // Frees a buffer grown by an unusually large frame.
  void Trim() {
    if (cap_ > kKeepBuffer) {
      data_.reset();
      cap_ = 0;
    }
  }

 private:
  std::unique_ptr<uint8_t[]> data_;
  size_t cap_ = 0;
};

ThreadBuffer& CompressedBuffer() {
  thread_local ThreadBuffer b;
  return b;
}
ThreadBuffer& ScratchBuffer() {
  thread_local ThreadBuffer b;
  return b;
}

struct Xxh3StateDeleter {
  void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
};

// Per-tensor XXH3 over bytes that land in any order, from any thread, hashed
// in order. XXH3 cannot combine partial hashes, so each tensor has one
// streaming state; the thread that lands the next piece in order becomes the
// tensor's hasher and also hashes every piece already waiting behind it,
// while other threads just record theirs and move on. Pieces mostly land in
// order (work is handed out front to back), so most are hashed by the thread
// that just wrote them, while they are still in its cache.
class OrderedHasher {
 public:
  explicit OrderedHasher(size_t n) : slots_(n) {}

  void Enable(size_t i, const uint8_t* base) {
    Slot& s = slots_[i];
    s.state.reset(XXH3_createState());
    if (!s.state) throw std::bad_alloc();
    XXH3_64bits_reset(s.state.get());
    s.base = base;
  }
  bool enabled(size_t i) const { return slots_[i].state != nullptr; }

  // Bytes [b, e) of tensor i are in place.
  void Landed(size_t i, uint64_t b, uint64_t e) {
    Slot& s = slots_[i];
    if (!s.state || b == e) return;
    std::unique_lock<std::mutex> lock(s.mu);
    s.ready.emplace(b, e);
    if (s.busy) return;
    s.busy = true;
    for (;;) {
      auto it = s.ready.find(s.next);
      if (it == s.ready.end()) break;
      const uint64_t pb = it->first, pe = it->second;
      s.ready.erase(it);
      lock.unlock();
      XXH3_64bits_update(s.state.get(), s.base + pb, static_cast<size_t>(pe - pb));
      lock.lock();
      s.next = pe;
    }
    s.busy = false;
  }

  // The digest once all `n` bytes of tensor i have landed.
  uint64_t Digest(size_t i, uint64_t n) const {
    const Slot& s = slots_[i];
    if (s.next != n) {
      throw Error(Error::Code::kIOError, "internal: tensor hashed " + std::to_string(s.next) +
                                             " of " + std::to_string(n) + " bytes");
    }
    return XXH3_64bits_digest(s.state.get());
  }

 private:
  struct Slot {
    std::mutex mu;
    std::unique_ptr<XXH3_state_t, Xxh3StateDeleter> state;
    const uint8_t* base = nullptr;
    uint64_t next = 0;                   // bytes hashed so far
    bool busy = false;                   // a thread is hashing
    std::map<uint64_t, uint64_t> ready;  // landed, not yet hashed: begin -> end
  };
  std::vector<Slot> slots_;
};

// "F32 [2, 3]"
std::string Describe(const std::string& dtype, at::IntArrayRef shape) {
  std::string s = dtype + " [";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string DtypeNameOrRaw(at::ScalarType t) {
  try {
    return DtypeToName(t, "destination");
  } catch (const Error&) {
    return c10::toString(t);
  }
}

// The destination of one tensor to read, with bytes [0, nbytes) contiguous on the CPU.
struct Target {
  const TensorInfo* info;
  uint8_t* data;
};

struct DCtxDeleter {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};

ZSTD_DCtx* ThreadDCtx() {
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxDeleter> dctx(ZSTD_createDCtx());
  if (!dctx) throw Error(Error::Code::kIOError, "ZSTD_createDCtx failed (out of memory)");
  return dctx.get();
}

// Bytes of compressed input fed per step when only a prefix of a frame is
// needed (the header of a version-1 file shares frame 0 with tensor data).
constexpr size_t kPrefixReadBlock = 64 * 1024;

struct DCtxPtr {
  std::unique_ptr<ZSTD_DCtx, DCtxDeleter> p{ZSTD_createDCtx()};
};

// Runs f, letting only ackpt::Error out: LibTorch, JSON, allocation and any
// other exception (a user's Env) are wrapped with the path and the step.
template <typename F>
auto Guard(const std::string& path, const char* step, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw Error::Unsupported("'" + path + "': LibTorch failed while " + step + ": " +
                             e.what_without_backtrace());
  } catch (const nlohmann::json::exception& e) {
    throw Error::Corruption("'" + path + "': malformed JSON while " + step + ": " + e.what());
  } catch (const std::bad_alloc&) {
    throw Error::Unsupported("'" + path + "': out of memory while " + step);
  } catch (const std::exception& e) {
    throw Error(Error::Code::kIOError, "'" + path + "': " + step + ": " + e.what());
  }
}

class ReaderImpl final : public CheckpointReader {
 public:
  ReaderImpl(std::unique_ptr<RandomAccessFile> file, const ReadOptions& options)
      : registration_(file->path()), file_(std::move(file)), options_(options) {
    ValidateReadOptions(options_);
    info_.path = file_->path();
    info_.file_bytes = file_->Size();
    uint64_t logical = info_.file_bytes;
    if (LooksCompressed(*file_)) {
      info_.compressed = true;
      table_ = ReadSeekTable(*file_, options_.max_frames);
      info_.num_frames = table_.num_frames();
      logical = table_.logical_bytes;
    }
    info_.logical_bytes = logical;
    if (logical < 8)
      Corrupt("too small to hold a safetensors header (" + std::to_string(logical) + " bytes)");
    std::string region;
    ReadPrefix(8, &region);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(region[i]);
    if (n > options_.max_header_bytes) {
      Corrupt("header length " + std::to_string(n) + " exceeds the limit of " +
              std::to_string(options_.max_header_bytes) + " bytes (ReadOptions::max_header_bytes)");
    }
    if (n > logical - 8) {
      Corrupt("header length " + std::to_string(n) + " exceeds the " + std::to_string(logical) +
              "-byte stream (truncated file?)");
    }
    ReadPrefix(8 + n, &region);
    info_.header_bytes = region.size();
    DecodeHeader(region, logical - region.size(), info_.path, &info_, options_);
    codec::CheckFileCodec(info_);
    if (info_.compressed && info_.format_version >= codec::kByteGroupedFormatVersion)
      layout_ = codec::LayoutOf(info_);  // byte-grouped frames are cut by it
    if (info_.compressed && info_.format_version >= 2 &&
        table_.frame(0).decompressed_size != info_.header_bytes) {
      Corrupt("format version " + std::to_string(info_.format_version) +
              " requires the header region (" + std::to_string(info_.header_bytes) +
              " bytes) alone in the first zstd frame, which holds " +
              std::to_string(table_.frame(0).decompressed_size));
    }
  }

  const FileInfo& info() const override { return info_; }

  StateDict ReadStateDict() override {
    return Guard(info_.path, "reading the state", [&] { return ReadStateDictImpl(nullptr, true); });
  }

  StateDict ReadStateDictInto(const std::map<std::string, at::Tensor>& destinations,
                              bool strict) override {
    return Guard(info_.path, "reading the state",
                 [&] { return ReadStateDictImpl(&destinations, strict); });
  }

  std::map<std::string, at::Tensor> ReadTensors(const std::vector<std::string>& names) override {
    return Guard(info_.path, "reading tensors", [&] {
      return Load(Lookup(names), /*destinations=*/nullptr, /*strict=*/true);
    });
  }

  void ReadInto(const std::map<std::string, at::Tensor>& destinations) override {
    Guard(info_.path, "reading into tensors", [&] {
      std::vector<std::string> names;
      names.reserve(destinations.size());
      for (const auto& kv : destinations) names.push_back(kv.first);
      Load(Lookup(names), &destinations, /*strict=*/true);
    });
  }

  void ReadInto(const StateDict& destinations) override {
    std::map<std::string, at::Tensor> flat = FlattenTensors(destinations);
    ReadInto(flat);
  }

  void Verify() override {
    Guard(info_.path, "verifying", [&] { VerifyImpl(); });
  }

  void ExportSafetensors(const std::string& out_path, Env* env) override {
    Guard(info_.path, "exporting", [&] { ExportImpl(out_path, env); });
  }

 private:
  // The header entries of `names` (unknown ones throw kNotFound), each once.
  std::vector<const TensorInfo*> Lookup(const std::vector<std::string>& names) const {
    std::map<std::string, const TensorInfo*> by_name;
    for (const auto& t : info_.tensors) by_name[t.name] = &t;
    std::vector<const TensorInfo*> out;
    std::set<std::string> seen;
    for (const auto& name : names) {
      auto it = by_name.find(name);
      if (it == by_name.end())
        throw Error::NotFound("no tensor '" + name + "' in '" + info_.path + "'");
      if (seen.insert(name).second) out.push_back(it->second);
    }
    return out;
  }

  StateDict ReadStateDictImpl(const std::map<std::string, at::Tensor>* destinations, bool strict) {
    std::vector<const TensorInfo*> all;
    all.reserve(info_.tensors.size());
    for (const auto& t : info_.tensors) all.push_back(&t);
    if (strict && destinations != nullptr) {
      std::set<std::string> names;
      for (const auto* t : all) names.insert(t->name);
      for (const auto& kv : *destinations) {
        if (names.count(kv.first) == 0) {
          throw Error::NotFound("no tensor '" + kv.first + "' in '" + info_.path +
                                "' for the destination of that name");
        }
      }
    }
    std::map<std::string, at::Tensor> tensors = Load(all, destinations, strict);
    if (!info_.written_by_ackpt) {
      StateDict flat;
      for (const auto& t : info_.tensors) flat.set(t.name, tensors.at(t.name));
      return flat;
    }
    return Unflatten(info_.metadata.at(kMetaTree), tensors, info_.path, options_.max_nesting_depth);
  }

  // Why `dst` cannot take tensor t's bytes ("" when it can).
  std::string Mismatch(const TensorInfo& t, const at::Tensor& dst) const {
    if (!dst.defined()) return "the destination is an undefined tensor";
    if (dst.layout() != at::kStrided) {
      return "the destination is not a dense (strided) tensor";
    }
    if (dst.scalar_type() != t.scalar_type || dst.sizes() != at::IntArrayRef(t.shape)) {
      return "checkpoint " + Describe(t.dtype, t.shape) + " vs destination " +
             Describe(DtypeNameOrRaw(dst.scalar_type()), dst.sizes());
    }
    return "";
  }

  // Reads `wanted` and returns them by name. A tensor with a destination in
  // `destinations` is read into it when its dtype and shape match (else:
  // strict throws kInvalidArgument naming both, lenient allocates a fresh
  // tensor); the others into fresh CPU tensors. Contiguous CPU destinations
  // take the bytes directly; others through bounce tensors (kBounceBatch).
  // Every checksum is checked on the bytes as they land.
  std::map<std::string, at::Tensor> Load(const std::vector<const TensorInfo*>& wanted,
                                         const std::map<std::string, at::Tensor>* destinations,
                                         bool strict) {
    std::map<std::string, at::Tensor> out;
    std::vector<Target> direct;
    std::vector<std::pair<const TensorInfo*, at::Tensor>> bounced;
    std::vector<at::Tensor> touched;
    for (const TensorInfo* t : wanted) {
      if (destinations != nullptr) {
        auto it = destinations->find(t->name);
        if (it != destinations->end()) {
          const std::string why = Mismatch(*t, it->second);
          if (why.empty()) {
            const at::Tensor& d = it->second;
            out[t->name] = d;
            touched.push_back(d);
            if (d.device().is_cpu() && d.is_contiguous() && !d.is_conj() && !d.is_neg()) {
              if (t->nbytes() > 0) direct.push_back({t, static_cast<uint8_t*>(d.data_ptr())});
            } else if (t->nbytes() > 0) {
              bounced.emplace_back(t, d);
            }
            continue;
          }
          if (strict) {
            throw Error::InvalidArgument("cannot read tensor '" + t->name + "' of '" + info_.path +
                                         "' into its destination: " + why);
          }
        }
      }
      at::Tensor fresh;
      try {
        fresh = at::empty(t->shape, at::TensorOptions().dtype(t->scalar_type));
      } catch (const c10::Error& e) {
        throw Error::Unsupported("'" + info_.path + "': cannot allocate tensor '" + t->name +
                                 "' (" + std::to_string(t->nbytes()) +
                                 " bytes): " + e.what_without_backtrace());
      }
      out[t->name] = fresh;
      if (t->nbytes() > 0) direct.push_back({t, static_cast<uint8_t*>(fresh.data_ptr())});
    }
    ReadTargets(direct);
    // Bounce batches: read into contiguous CPU tensors, then copy_ (which
    // handles strides, devices and conj/neg views).
    for (size_t i = 0; i < bounced.size();) {
      std::vector<at::Tensor> bufs;
      std::vector<Target> batch;
      uint64_t bytes = 0;
      size_t j = i;
      for (; j < bounced.size() && (j == i || bytes + bounced[j].first->nbytes() <= kBounceBatch);
           ++j) {
        const TensorInfo* t = bounced[j].first;
        bufs.push_back(at::empty(t->shape, at::TensorOptions().dtype(t->scalar_type)));
        batch.push_back({t, static_cast<uint8_t*>(bufs.back().data_ptr())});
        bytes += t->nbytes();
      }
      ReadTargets(batch);
      at::NoGradGuard no_grad;
      for (size_t k = i; k < j; ++k) bounced[k].second.copy_(bufs[k - i]);
      i = j;
    }
    // Writes through data_ptr() bypass autograd's version counter; bump it
    // so anything that saved these tensors (autograd, an overlapped
    // snapshot) sees they changed.
    for (auto& d : touched) {
      if (!d.is_inference()) d.unsafeGetTensorImpl()->bump_version();
    }
    return out;
  }

  // Reads every target's bytes into place in one pass, in parallel, and
  // checks each tensor's XXH3 on the bytes as they land.
  void ReadTargets(std::vector<Target> targets) {
    if (targets.empty()) return;
    std::sort(targets.begin(), targets.end(),
              [](const Target& a, const Target& b) { return a.info->begin < b.info->begin; });
    OrderedHasher hasher(targets.size());
    if (options_.verify_checksums) {
      for (size_t i = 0; i < targets.size(); ++i) {
        if (targets[i].info->has_checksum) hasher.Enable(i, targets[i].data);
      }
    }
    if (info_.compressed) {
      ReadFramesInto(targets, &hasher);
    } else {
      ReadPlainInto(targets, &hasher);
    }
    for (size_t i = 0; i < targets.size(); ++i) {
      const TensorInfo& t = *targets[i].info;
      if (hasher.enabled(i) && hasher.Digest(i, t.nbytes()) != t.xxh3) {
        throw Error::Corruption("checksum mismatch in tensor '" + t.name + "' of '" + info_.path +
                                "'");
      }
    }
  }

  void VerifyImpl() {
    if (!info_.compressed) {
      ParallelFor(info_.tensors.size(), options_.threads, [&](size_t i) {
        const TensorInfo& t = info_.tensors[i];
        if (!t.has_checksum) return;
        XXH3_state_t state;
        XXH3_64bits_reset(&state);
        std::string buf(static_cast<size_t>(std::min<uint64_t>(kReadBlock, t.nbytes())), '\0');
        for (uint64_t off = t.begin; off < t.end; off += kReadBlock) {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(kReadBlock, t.end - off));
          file_->Read(info_.header_bytes + off, n, buf.data());
          XXH3_64bits_update(&state, buf.data(), n);
        }
        if (XXH3_64bits_digest(&state) != t.xxh3) {
          throw Error::Corruption("checksum mismatch in tensor '" + t.name + "' of '" + info_.path +
                                  "'");
        }
      });
      return;
    }
    // Compressed: decompress windows of frames in parallel, then feed the bytes
    // in order to one streaming hash per tensor.
    std::vector<XXH3_state_t> states(info_.tensors.size());
    for (auto& s : states) XXH3_64bits_reset(&s);
    size_t tensor = 0;
    const size_t frames = table_.num_frames();
    const size_t window = static_cast<size_t>(2 * ResolveThreads(options_.threads));
    std::vector<std::string> bufs(std::min(window, frames));
    std::vector<FrameEntry> entries(bufs.size());
    for (size_t first = 0; first < frames; first += window) {
      const size_t count = std::min(window, frames - first);
      ParallelFor(count, options_.threads, [&](size_t j) {
        entries[j] = table_.frame(first + j);
        DecompressFrame(first + j, [&](uint64_t n) {
          bufs[j].resize(static_cast<size_t>(n));
          return reinterpret_cast<uint8_t*>(bufs[j].data());
        });
      });
      for (size_t j = 0; j < count; ++j) {
        const FrameEntry& f = entries[j];
        uint64_t pos = f.decompressed_offset;
        const uint64_t end = pos + f.decompressed_size;
        while (pos < end && tensor < info_.tensors.size()) {
          const TensorInfo& t = info_.tensors[tensor];
          const uint64_t tb = info_.header_bytes + t.begin, te = info_.header_bytes + t.end;
          if (pos < tb) pos = std::min(end, tb);
          if (pos >= end) break;
          const uint64_t stop = std::min(end, te);
          XXH3_64bits_update(&states[tensor], bufs[j].data() + (pos - f.decompressed_offset),
                             static_cast<size_t>(stop - pos));
          pos = stop;
          if (pos == te) ++tensor;
        }
      }
    }
    for (size_t i = 0; i < info_.tensors.size(); ++i) {
      const TensorInfo& t = info_.tensors[i];
      if (t.has_checksum && XXH3_64bits_digest(&states[i]) != t.xxh3) {
        throw Error::Corruption("checksum mismatch in tensor '" + t.name + "' of '" + info_.path +
                                "'");
      }
    }
  }

  void ExportImpl(const std::string& out_path, Env* env) {
    if (options_.verify_checksums) VerifyImpl();
    AtomicWrite(env, out_path, /*fsync=*/true, [&](WritableFile* out) {
      if (!info_.compressed) {
        std::string buf(static_cast<size_t>(std::min<uint64_t>(kReadBlock, info_.logical_bytes)),
                        '\0');
        for (uint64_t off = 0; off < info_.logical_bytes; off += kReadBlock) {
          const size_t n =
              static_cast<size_t>(std::min<uint64_t>(kReadBlock, info_.logical_bytes - off));
          file_->Read(off, n, buf.data());
          out->Append(buf.data(), n);
        }
        return;
      }
      const size_t frames = table_.num_frames();
      const size_t window = static_cast<size_t>(2 * ResolveThreads(options_.threads));
      std::vector<std::string> bufs(std::min(window, frames));
      size_t first_data_frame = 0;
      if (info_.format_version == codec::kByteGroupedFormatVersion) {
        // Frame 0 is exactly the header region (versions 2 and 3).
        const std::string header = PlainExportHeader();
        out->Append(header.data(), header.size());
        first_data_frame = 1;
      }
      for (size_t first = first_data_frame; first < frames; first += window) {
        const size_t count = std::min(window, frames - first);
        ParallelFor(count, options_.threads, [&](size_t j) {
          DecompressFrame(first + j, [&](uint64_t n) {
            bufs[j].resize(static_cast<size_t>(n));
            return reinterpret_cast<uint8_t*>(bufs[j].data());
          });
        });
        for (size_t j = 0; j < count; ++j) out->Append(bufs[j].data(), bufs[j].size());
      }
    });
  }

  // The header a version-2 writer gives the same tensors and metadata. A
  // version-3 file's logical stream is plain safetensors whose header still
  // names the byte-grouped codec; its export holds no byte-grouped frame, so
  // it says version 2 (readers of versions 1-2 open it) and drops
  // ackpt.codec, with the header checksum recomputed. Tensors keep their
  // data offsets (ackpt lays the data section out without gaps).
  std::string PlainExportHeader() const {
    std::vector<const TensorInfo*> by_offset;
    for (const auto& t : info_.tensors) by_offset.push_back(&t);
    std::stable_sort(by_offset.begin(), by_offset.end(),
                     [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
    std::vector<FlatTensor> tensors;
    uint64_t offset = 0;
    for (const TensorInfo* t : by_offset) {
      if (t->begin != offset || !t->has_checksum)
        Corrupt("tensor '" + t->name + "' does not follow the data layout of a version-3 file");
      FlatTensor f;
      f.name = t->name;
      f.dtype = t->scalar_type;
      f.shape = t->shape;
      f.nbytes = t->nbytes();
      f.xxh3 = t->xxh3;
      tensors.push_back(std::move(f));
      offset = t->end;
    }
    std::map<std::string, std::string> user, internal;
    std::string tree;
    for (const auto& kv : info_.metadata) {
      if (kv.first == kMetaTree) {
        tree = kv.second;
      } else if (kv.first.rfind("ackpt.", 0) != 0) {
        if (kv.first != kMetaFormat) user[kv.first] = kv.second;
      } else if (kv.first != kMetaVersion && kv.first != codec::kMetaCodec &&
                 kv.first != kMetaChecksums && kv.first != kMetaHeaderChecksum) {
        internal[kv.first] = kv.second;
      }
    }
    return EncodeHeader(tensors, tree, user, internal);
  }

  [[noreturn]] void Corrupt(const std::string& what) const {
    throw Error::Corruption("'" + info_.path + "': " + what);
  }

  // Reads frame i's compressed bytes into this thread's buffer and checks
  // them against the seek table: the frame header's content size, the
  // frame's extent, and the most its blocks can decode to. Only then may a
  // caller allocate its output.
  const uint8_t* LoadFrame(size_t i, const FrameEntry& f) const {
    const std::string which = "frame " + std::to_string(i);
    uint8_t* comp = CompressedBuffer().Get(f.compressed_size);
    file_->Read(f.compressed_offset, f.compressed_size, comp);
    // Byte-grouped frames (format version 3, data frames only) are checked
    // by codec::DecodeGroupedFrame before it writes anything.
    if (GroupedFrame(i, comp, f.compressed_size)) return comp;
    const unsigned long long content = ZSTD_getFrameContentSize(comp, f.compressed_size);
    if (content == ZSTD_CONTENTSIZE_ERROR) Corrupt(which + " is not a zstd frame");
    if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != f.decompressed_size) {
      Corrupt(which + " holds " + std::to_string(content) + " bytes but the seek table says " +
              std::to_string(f.decompressed_size));
    }
    const size_t frame_size = ZSTD_findFrameCompressedSize(comp, f.compressed_size);
    if (ZSTD_isError(frame_size) || frame_size != f.compressed_size) {
      Corrupt(which + " does not span exactly its " + std::to_string(f.compressed_size) + " bytes");
    }
    const unsigned long long bound = ZSTD_decompressBound(comp, f.compressed_size);
    if (bound == ZSTD_CONTENTSIZE_ERROR || bound < f.decompressed_size) {
      Corrupt(which + " cannot hold the " + std::to_string(f.decompressed_size) +
              " bytes the seek table says");
    }
    return comp;
  }

  // Decompresses frame i and checks it; alloc(n) supplies the n-byte output
  // and is called only after LoadFrame has validated n against the frame.
  // A frame that carries its content checksum (ackpt's always do) is checked
  // by zstd while it decodes, on the bytes it just wrote; the seek table's
  // copy is then compared with the frame's, so the output is not hashed a
  // second time. Frames without one are hashed here.
  template <typename Alloc>
  void DecompressFrame(size_t i, Alloc&& alloc) const {
    const FrameEntry f = table_.frame(i);
    const uint8_t* comp = LoadFrame(i, f);
    uint8_t* dst = alloc(uint64_t{f.decompressed_size});
    const std::string which = "frame " + std::to_string(i);
    if (GroupedFrame(i, comp, f.compressed_size)) {
      const uint32_t sum = codec::DecodeGroupedFrame(
          comp, f.compressed_size,
          codec::SegmentsOf(layout_, f.decompressed_offset, f.decompressed_size), dst,
          f.decompressed_size, "'" + info_.path + "': " + which, options_.verify_checksums);
      if (options_.verify_checksums && table_.has_checksums && sum != f.checksum)
        Corrupt(which + " does not match its seek-table checksum");
      return;
    }
    ZSTD_DCtx* dctx = ThreadDCtx();
    ZSTD_DCtx_setParameter(
        dctx, ZSTD_d_forceIgnoreChecksum,
        options_.verify_checksums ? ZSTD_d_validateChecksum : ZSTD_d_ignoreChecksum);
    const size_t r = ZSTD_decompressDCtx(dctx, dst, f.decompressed_size, comp, f.compressed_size);
    if (ZSTD_isError(r)) Corrupt(which + ": " + ZSTD_getErrorName(r));
    if (r != f.decompressed_size) Corrupt(which + " decompressed to the wrong size");
    if (!options_.verify_checksums || !table_.has_checksums) return;
    ZSTD_frameHeader header;
    const bool has_content_checksum = ZSTD_getFrameHeader(&header, comp, f.compressed_size) == 0 &&
                                      header.checksumFlag && f.compressed_size >= 4;
    uint32_t actual;
    if (has_content_checksum) {
      const uint8_t* c = comp + f.compressed_size - 4;  // verified by zstd above
      actual = uint32_t{c[0]} | uint32_t{c[1]} << 8 | uint32_t{c[2]} << 16 | uint32_t{c[3]} << 24;
    } else {
      actual = static_cast<uint32_t>(XXH64(dst, r, 0) & 0xffffffffu);
    }
    if (actual != f.checksum) Corrupt(which + " does not match its seek-table checksum");
  }

  // Sets *out to logical bytes [0, want). Compressed: frames wholly inside are
  // decompressed (and checked) whole; of a frame that runs past `want` only
  // the needed prefix is stream-decompressed, reading its input in
  // kPrefixReadBlock steps, so the header of a version-1 file costs about the
  // header and never the tensor data that shares its frame. `out` grows with
  // the bytes actually produced, not with what the file claims.
  void ReadPrefix(uint64_t want, std::string* out) const {
    out->clear();
    if (!info_.compressed) {
      out->resize(static_cast<size_t>(want));
      file_->Read(0, out->size(), out->data());
      return;
    }
    uint64_t done = 0;
    for (size_t i = 0; done < want; ++i) {
      if (i >= table_.num_frames()) Corrupt("stream ends inside the header");
      const FrameEntry f = table_.frame(i);
      if (f.decompressed_size <= want - done) {
        DecompressFrame(i, [&](uint64_t n) {
          out->resize(static_cast<size_t>(done + n));
          return reinterpret_cast<uint8_t*>(out->data() + done);
        });
        done += f.decompressed_size;
        continue;
      }
      StreamPrefix(i, f, want - done, out);
      done = want;
    }
  }

  // Appends the first n bytes (n < the frame's size) of frame i to *out.
  void StreamPrefix(size_t i, const FrameEntry& f, uint64_t n, std::string* out) const {
    const std::string which = "frame " + std::to_string(i);
    DCtxPtr dctx;
    if (!dctx.p) throw Error(Error::Code::kIOError, "ZSTD_createDCtx failed (out of memory)");
    std::string in;
    uint64_t fed = 0;  // compressed bytes read so far
    uint64_t got = 0;
    ZSTD_inBuffer ib{nullptr, 0, 0};
    while (got < n) {
      if (ib.pos == ib.size) {
        if (fed == f.compressed_size) Corrupt(which + " is truncated");
        in.resize(
            static_cast<size_t>(std::min<uint64_t>(kPrefixReadBlock, f.compressed_size - fed)));
        file_->Read(f.compressed_offset + fed, in.size(), in.data());
        if (fed == 0) {
          const unsigned long long content = ZSTD_getFrameContentSize(in.data(), in.size());
          if (content == ZSTD_CONTENTSIZE_ERROR) Corrupt(which + " is not a zstd frame");
          if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != f.decompressed_size) {
            Corrupt(which + " holds " + std::to_string(content) +
                    " bytes but the seek table says " + std::to_string(f.decompressed_size));
          }
        }
        fed += in.size();
        ib = ZSTD_inBuffer{in.data(), in.size(), 0};
      }
      // Grow with what was produced so far: a lying size costs nothing.
      const size_t base = out->size() - static_cast<size_t>(got);
      const uint64_t cap = std::min<uint64_t>(n, std::max<uint64_t>(2 * got, kPrefixReadBlock));
      out->resize(base + static_cast<size_t>(cap));
      ZSTD_outBuffer ob{out->data() + base, static_cast<size_t>(cap), static_cast<size_t>(got)};
      const size_t r = ZSTD_decompressStream(dctx.p.get(), &ob, &ib);
      if (ZSTD_isError(r)) Corrupt(which + ": " + ZSTD_getErrorName(r));
      got = ob.pos;
      out->resize(base + static_cast<size_t>(got));
      if (r == 0 && got < n) Corrupt(which + " ends before the seek table says");
    }
  }

  // Plain file: each target in kLoadBlock preads straight into place, in
  // parallel, each block hashed as soon as it lands.
  void ReadPlainInto(const std::vector<Target>& targets, OrderedHasher* hasher) {
    struct Block {
      size_t target;
      uint64_t offset;  // in the tensor
      size_t n;
    };
    std::vector<Block> blocks;
    for (size_t i = 0; i < targets.size(); ++i) {
      const uint64_t size = targets[i].info->nbytes();
      for (uint64_t off = 0; off < size; off += kLoadBlock) {
        blocks.push_back({i, off, static_cast<size_t>(std::min<uint64_t>(kLoadBlock, size - off))});
      }
    }
    ParallelFor(blocks.size(), options_.threads, [&](size_t k) {
      const Block& b = blocks[k];
      const Target& t = targets[b.target];
      file_->Read(info_.header_bytes + t.info->begin + b.offset, b.n, t.data + b.offset);
      hasher->Landed(b.target, b.offset, b.offset + b.n);
    });
  }

  // Compressed file: decompresses only the frames overlapping the targets,
  // in parallel, front to back. A frame that lies inside one target is
  // decompressed straight into it; a frame shared with other tensors (or
  // holding bytes nobody asked for) goes through this thread's frame-sized
  // scratch buffer. Each piece is hashed as soon as it lands.
  void ReadFramesInto(const std::vector<Target>& targets, OrderedHasher* hasher) {
    struct Piece {
      size_t target;
      uint64_t frame_offset;
      uint64_t tensor_offset;
      uint64_t n;
    };
    struct Job {
      size_t frame;
      std::vector<Piece> pieces;
    };
    std::vector<Job> jobs;
    for (size_t k = 0; k < targets.size(); ++k) {
      const TensorInfo& t = *targets[k].info;
      const uint64_t begin = info_.header_bytes + t.begin, end = info_.header_bytes + t.end;
      if (end > table_.logical_bytes) Corrupt("tensor data beyond the end of the stream");
      for (size_t i = table_.FrameAt(begin); i < table_.num_frames(); ++i) {
        const FrameEntry f = table_.frame(i);
        if (f.decompressed_offset >= end) break;
        const uint64_t b = std::max(begin, f.decompressed_offset);
        const uint64_t e = std::min(end, f.decompressed_offset + f.decompressed_size);
        if (b >= e) continue;
        if (jobs.empty() || jobs.back().frame != i) jobs.push_back({i, {}});
        jobs.back().pieces.push_back({k, b - f.decompressed_offset, b - begin, e - b});
      }
    }
    ParallelFor(jobs.size(), options_.threads, [&](size_t j) {
      const Job& job = jobs[j];
      const uint32_t size = table_.frame(job.frame).decompressed_size;
      const Piece& first = job.pieces[0];
      if (job.pieces.size() == 1 && first.frame_offset == 0 && first.n == size) {
        DecompressFrame(job.frame,
                        [&](uint64_t) { return targets[first.target].data + first.tensor_offset; });
      } else {
        ThreadBuffer& scratch = ScratchBuffer();
        uint8_t* buf = nullptr;
        DecompressFrame(job.frame, [&](uint64_t n) { return buf = scratch.Get(n); });
        for (const auto& p : job.pieces) {
          std::memcpy(targets[p.target].data + p.tensor_offset, buf + p.frame_offset, p.n);
        }
        scratch.Trim();
      }
      CompressedBuffer().Trim();
      for (const auto& p : job.pieces) {
        hasher->Landed(p.target, p.tensor_offset, p.tensor_offset + p.n);
      }
    });
  }

  // A data frame of a version-3 file that starts with the byte-grouped magic
  // (before the header is decoded format_version is 0: frame 0 is zstd).
  bool GroupedFrame(size_t i, const uint8_t* comp, size_t n) const {
    return i > 0 && info_.format_version >= codec::kByteGroupedFormatVersion &&
           codec::IsGroupedFrame(comp, n);
  }

  OpenRegistration registration_;
  std::unique_ptr<RandomAccessFile> file_;
  ReadOptions options_;
  FileInfo info_;
  SeekTable table_;
  codec::Layout layout_;  // version 3: the tensors' spans
};

}  // namespace

}  // namespace format

std::unique_ptr<CheckpointReader> CheckpointReader::Open(const std::string& path,
                                                         const ReadOptions& options, Env* env) {
  return format::Guard(path, "opening", [&]() -> std::unique_ptr<CheckpointReader> {
    return std::make_unique<format::ReaderImpl>(env->NewRandomAccessFile(path), options);
  });
}

std::map<std::string, at::Tensor> FlattenTensors(const StateDict& state) {
  std::vector<format::FlatTensor> flat;
  std::string tree;
  format::Flatten(state, &flat, &tree);
  std::map<std::string, at::Tensor> out;
  for (auto& t : flat) out.emplace(std::move(t.name), std::move(t.tensor));
  return out;
}

bool IsOpenForReading(const std::string& path) {
  const std::string canonical = format::CanonicalPath(path);
  std::lock_guard<std::mutex> lock(format::g_open_mu);
  return format::g_open->count(canonical) > 0;
}

StateDict ReadStateDict(const std::string& path, const ReadOptions& options, Env* env) {
  return CheckpointReader::Open(path, options, env)->ReadStateDict();
}

}  // namespace ackpt
