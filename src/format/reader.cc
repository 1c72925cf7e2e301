// Validating, parallel checkpoint reader.
#define XXH_INLINE_ALL
#include <ATen/ATen.h>
#include <limits.h>
#include <stdlib.h>
#include <xxhash.h>
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_decompressBound
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <new>
#include <nlohmann/json.hpp>
#include <set>

#include "ackpt/error.h"
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

struct DCtxDeleter {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};

ZSTD_DCtx* ThreadDCtx() {
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxDeleter> dctx(ZSTD_createDCtx());
  if (!dctx) throw Error(Error::Code::kIOError, "ZSTD_createDCtx failed (out of memory)");
  return dctx.get();
}

// A destination range of the logical stream.
struct Dest {
  uint64_t begin;  // logical offset
  uint64_t end;
  uint8_t* data;
};

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
    return Guard(info_.path, "reading the state", [&] {
      std::vector<std::string> names;
      names.reserve(info_.tensors.size());
      for (const auto& t : info_.tensors) names.push_back(t.name);
      std::map<std::string, at::Tensor> tensors = ReadTensorsImpl(names);
      if (!info_.written_by_ackpt) {
        StateDict flat;
        for (const auto& t : info_.tensors) flat.set(t.name, tensors.at(t.name));
        return flat;
      }
      return Unflatten(info_.metadata.at(kMetaTree), tensors, info_.path,
                       options_.max_nesting_depth);
    });
  }

  std::map<std::string, at::Tensor> ReadTensors(const std::vector<std::string>& names) override {
    return Guard(info_.path, "reading tensors", [&] { return ReadTensorsImpl(names); });
  }

  void Verify() override {
    Guard(info_.path, "verifying", [&] { VerifyImpl(); });
  }

  void ExportSafetensors(const std::string& out_path, Env* env) override {
    Guard(info_.path, "exporting", [&] { ExportImpl(out_path, env); });
  }

 private:
  std::map<std::string, at::Tensor> ReadTensorsImpl(const std::vector<std::string>& names) {
    std::map<std::string, const TensorInfo*> by_name;
    for (const auto& t : info_.tensors) by_name[t.name] = &t;
    std::map<std::string, at::Tensor> out;
    std::vector<Dest> dests;
    std::vector<const TensorInfo*> infos;
    for (const auto& name : names) {
      auto it = by_name.find(name);
      if (it == by_name.end())
        throw Error::NotFound("no tensor '" + name + "' in '" + info_.path + "'");
      if (out.count(name)) continue;
      const TensorInfo& t = *it->second;
      at::Tensor dst;
      try {
        dst = at::empty(t.shape, at::TensorOptions().dtype(t.scalar_type));
      } catch (const c10::Error& e) {
        throw Error::Unsupported("'" + info_.path + "': cannot allocate tensor '" + t.name + "' (" +
                                 std::to_string(t.nbytes()) +
                                 " bytes): " + e.what_without_backtrace());
      }
      out[name] = dst;
      infos.push_back(&t);
      if (t.nbytes() > 0) {
        dests.push_back({info_.header_bytes + t.begin, info_.header_bytes + t.end,
                         static_cast<uint8_t*>(dst.data_ptr())});
      }
    }
    std::sort(dests.begin(), dests.end(),
              [](const Dest& a, const Dest& b) { return a.begin < b.begin; });
    if (info_.compressed) {
      ReadFramesInto(dests);
    } else {
      ReadPlainInto(dests);
    }
    if (options_.verify_checksums) {
      ParallelFor(infos.size(), options_.threads, [&](size_t i) {
        const TensorInfo& t = *infos[i];
        if (!t.has_checksum) return;
        const at::Tensor& d = out.at(t.name);
        const uint64_t h =
            Xxh3(t.nbytes() ? d.data_ptr() : nullptr, static_cast<size_t>(t.nbytes()));
        if (h != t.xxh3) {
          throw Error::Corruption("checksum mismatch in tensor '" + t.name + "' of '" + info_.path +
                                  "'");
        }
      });
    }
    return out;
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
      for (size_t first = 0; first < frames; first += window) {
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

  [[noreturn]] void Corrupt(const std::string& what) const {
    throw Error::Corruption("'" + info_.path + "': " + what);
  }

  // Reads frame i's compressed bytes and checks them against the seek table:
  // the frame header's content size, the frame's extent, and the most its
  // blocks can decode to. Only then may a caller allocate its output.
  std::string LoadFrame(size_t i, const FrameEntry& f) const {
    const std::string which = "frame " + std::to_string(i);
    std::string comp(f.compressed_size, '\0');
    file_->Read(f.compressed_offset, comp.size(), comp.data());
    const unsigned long long content = ZSTD_getFrameContentSize(comp.data(), comp.size());
    if (content == ZSTD_CONTENTSIZE_ERROR) Corrupt(which + " is not a zstd frame");
    if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != f.decompressed_size) {
      Corrupt(which + " holds " + std::to_string(content) + " bytes but the seek table says " +
              std::to_string(f.decompressed_size));
    }
    const size_t frame_size = ZSTD_findFrameCompressedSize(comp.data(), comp.size());
    if (ZSTD_isError(frame_size) || frame_size != comp.size()) {
      Corrupt(which + " does not span exactly its " + std::to_string(comp.size()) + " bytes");
    }
    const unsigned long long bound = ZSTD_decompressBound(comp.data(), comp.size());
    if (bound == ZSTD_CONTENTSIZE_ERROR || bound < f.decompressed_size) {
      Corrupt(which + " cannot hold the " + std::to_string(f.decompressed_size) +
              " bytes the seek table says");
    }
    return comp;
  }

  // Decompresses frame i and checks it; alloc(n) supplies the n-byte output
  // and is called only after LoadFrame has validated n against the frame.
  template <typename Alloc>
  void DecompressFrame(size_t i, Alloc&& alloc) const {
    const FrameEntry f = table_.frame(i);
    const std::string comp = LoadFrame(i, f);
    uint8_t* dst = alloc(uint64_t{f.decompressed_size});
    const std::string which = "frame " + std::to_string(i);
    const size_t r =
        ZSTD_decompressDCtx(ThreadDCtx(), dst, f.decompressed_size, comp.data(), comp.size());
    if (ZSTD_isError(r)) Corrupt(which + ": " + ZSTD_getErrorName(r));
    if (r != f.decompressed_size) Corrupt(which + " decompressed to the wrong size");
    if (options_.verify_checksums && table_.has_checksums &&
        static_cast<uint32_t>(XXH64(dst, r, 0) & 0xffffffffu) != f.checksum) {
      Corrupt(which + " does not match its seek-table checksum");
    }
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

  void ReadPlainInto(const std::vector<Dest>& dests) {
    struct Block {
      uint64_t offset;
      size_t n;
      uint8_t* dst;
    };
    std::vector<Block> blocks;
    for (const auto& d : dests) {
      for (uint64_t off = d.begin; off < d.end; off += kReadBlock) {
        blocks.push_back({off, static_cast<size_t>(std::min<uint64_t>(kReadBlock, d.end - off)),
                          d.data + (off - d.begin)});
      }
    }
    ParallelFor(blocks.size(), options_.threads,
                [&](size_t i) { file_->Read(blocks[i].offset, blocks[i].n, blocks[i].dst); });
  }

  // Decompresses only the frames overlapping `dests` (sorted, disjoint). A frame
  // that lies inside one destination is decompressed straight into it; a frame
  // shared by several goes through a frame-sized scratch buffer.
  void ReadFramesInto(const std::vector<Dest>& dests) {
    struct Piece {
      uint64_t frame_offset;
      uint64_t n;
      uint8_t* dst;
    };
    struct Job {
      size_t frame;
      std::vector<Piece> pieces;
    };
    std::vector<Job> jobs;
    for (const auto& d : dests) {
      if (d.end > table_.logical_bytes) Corrupt("tensor data beyond the end of the stream");
      for (size_t i = table_.FrameAt(d.begin); i < table_.num_frames(); ++i) {
        const FrameEntry f = table_.frame(i);
        if (f.decompressed_offset >= d.end) break;
        const uint64_t b = std::max(d.begin, f.decompressed_offset);
        const uint64_t e = std::min(d.end, f.decompressed_offset + f.decompressed_size);
        if (b >= e) continue;
        if (jobs.empty() || jobs.back().frame != i) jobs.push_back({i, {}});
        jobs.back().pieces.push_back({b - f.decompressed_offset, e - b, d.data + (b - d.begin)});
      }
    }
    ParallelFor(jobs.size(), options_.threads, [&](size_t j) {
      const Job& job = jobs[j];
      const uint32_t size = table_.frame(job.frame).decompressed_size;
      if (job.pieces.size() == 1 && job.pieces[0].frame_offset == 0 && job.pieces[0].n == size) {
        DecompressFrame(job.frame, [&](uint64_t) { return job.pieces[0].dst; });
        return;
      }
      std::string scratch;
      DecompressFrame(job.frame, [&](uint64_t n) {
        scratch.resize(static_cast<size_t>(n));
        return reinterpret_cast<uint8_t*>(scratch.data());
      });
      for (const auto& p : job.pieces) std::memcpy(p.dst, scratch.data() + p.frame_offset, p.n);
    });
  }

  OpenRegistration registration_;
  std::unique_ptr<RandomAccessFile> file_;
  ReadOptions options_;
  FileInfo info_;
  SeekTable table_;
};

}  // namespace

}  // namespace format

std::unique_ptr<CheckpointReader> CheckpointReader::Open(const std::string& path,
                                                         const ReadOptions& options, Env* env) {
  return format::Guard(path, "opening", [&]() -> std::unique_ptr<CheckpointReader> {
    return std::make_unique<format::ReaderImpl>(env->NewRandomAccessFile(path), options);
  });
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
