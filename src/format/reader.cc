// Validating, parallel checkpoint reader.
#define XXH_INLINE_ALL
#include <ATen/ATen.h>
#include <limits.h>
#include <stdlib.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
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

class ReaderImpl final : public CheckpointReader {
 public:
  ReaderImpl(std::unique_ptr<RandomAccessFile> file, const ReadOptions& options)
      : registration_(file->path()), file_(std::move(file)), options_(options) {
    info_.path = file_->path();
    info_.file_bytes = file_->Size();
    uint64_t logical = info_.file_bytes;
    if (LooksCompressed(*file_)) {
      info_.compressed = true;
      table_ = ReadSeekTable(*file_);
      info_.num_frames = table_.frames.size();
      logical = table_.logical_bytes;
    }
    info_.logical_bytes = logical;
    if (logical < 8)
      Corrupt("too small to hold a safetensors header (" + std::to_string(logical) + " bytes)");
    uint8_t len_bytes[8];
    ReadLogical(0, 8, len_bytes);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
    if (n > kMaxHeaderBytes)
      Corrupt("header length " + std::to_string(n) + " exceeds the 100 MB limit");
    if (n > logical - 8) {
      Corrupt("header length " + std::to_string(n) + " exceeds the " + std::to_string(logical) +
              "-byte stream (truncated file?)");
    }
    std::string region(8 + n, '\0');
    ReadLogical(0, region.size(), reinterpret_cast<uint8_t*>(region.data()));
    info_.header_bytes = region.size();
    DecodeHeader(region, logical - region.size(), info_.path, &info_);
  }

  const FileInfo& info() const override { return info_; }

  StateDict ReadStateDict() override {
    std::vector<std::string> names;
    for (const auto& t : info_.tensors) names.push_back(t.name);
    std::map<std::string, at::Tensor> tensors = ReadTensors(names);
    if (!info_.written_by_ackpt) {
      StateDict flat;
      for (const auto& t : info_.tensors) flat.set(t.name, tensors.at(t.name));
      return flat;
    }
    return Unflatten(info_.metadata.at(kMetaTree), tensors, info_.path);
  }

  std::map<std::string, at::Tensor> ReadTensors(const std::vector<std::string>& names) override {
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
      at::Tensor dst = at::empty(t.shape, at::TensorOptions().dtype(t.scalar_type));
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

  void Verify() override {
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
    const size_t window = static_cast<size_t>(2 * ResolveThreads(options_.threads));
    std::vector<std::string> bufs(std::min(window, table_.frames.size()));
    for (size_t first = 0; first < table_.frames.size(); first += window) {
      const size_t count = std::min(window, table_.frames.size() - first);
      ParallelFor(count, options_.threads, [&](size_t j) {
        const FrameEntry& f = table_.frames[first + j];
        bufs[j].resize(f.decompressed_size);
        DecompressFrame(first + j, reinterpret_cast<uint8_t*>(bufs[j].data()));
      });
      for (size_t j = 0; j < count; ++j) {
        const FrameEntry& f = table_.frames[first + j];
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

  void ExportSafetensors(const std::string& out_path, Env* env) override {
    if (options_.verify_checksums) Verify();
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
      const size_t window = static_cast<size_t>(2 * ResolveThreads(options_.threads));
      std::vector<std::string> bufs(std::min(window, table_.frames.size()));
      for (size_t first = 0; first < table_.frames.size(); first += window) {
        const size_t count = std::min(window, table_.frames.size() - first);
        ParallelFor(count, options_.threads, [&](size_t j) {
          bufs[j].resize(table_.frames[first + j].decompressed_size);
          DecompressFrame(first + j, reinterpret_cast<uint8_t*>(bufs[j].data()));
        });
        for (size_t j = 0; j < count; ++j) out->Append(bufs[j].data(), bufs[j].size());
      }
    });
  }

 private:
  [[noreturn]] void Corrupt(const std::string& what) const {
    throw Error::Corruption("'" + info_.path + "': " + what);
  }

  // Decompresses frame i into dst (exactly decompressed_size bytes) and checks it.
  void DecompressFrame(size_t i, uint8_t* dst) const {
    const FrameEntry& f = table_.frames[i];
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
    const size_t r =
        ZSTD_decompressDCtx(ThreadDCtx(), dst, f.decompressed_size, comp.data(), comp.size());
    if (ZSTD_isError(r)) Corrupt(which + ": " + ZSTD_getErrorName(r));
    if (r != f.decompressed_size) Corrupt(which + " decompressed to the wrong size");
    if (options_.verify_checksums && table_.has_checksums &&
        static_cast<uint32_t>(XXH64(dst, r, 0) & 0xffffffffu) != f.checksum) {
      Corrupt(which + " does not match its seek-table checksum");
    }
  }

  // Reads logical bytes [offset, offset+n) into dst (used for the header).
  void ReadLogical(uint64_t offset, uint64_t n, uint8_t* dst) const {
    if (!info_.compressed) {
      file_->Read(offset, static_cast<size_t>(n), dst);
      return;
    }
    std::vector<Dest> d{{offset, offset + n, dst}};
    const_cast<ReaderImpl*>(this)->ReadFramesInto(d, /*parallel=*/false);
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
  void ReadFramesInto(const std::vector<Dest>& dests, bool parallel = true) {
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
    const auto& frames = table_.frames;
    for (const auto& d : dests) {
      if (d.end > table_.logical_bytes) Corrupt("tensor data beyond the end of the stream");
      // First frame whose end is past d.begin.
      size_t i = static_cast<size_t>(std::upper_bound(frames.begin(), frames.end(), d.begin,
                                                      [](uint64_t off, const FrameEntry& f) {
                                                        return off < f.decompressed_offset +
                                                                         f.decompressed_size;
                                                      }) -
                                     frames.begin());
      for (; i < frames.size() && frames[i].decompressed_offset < d.end; ++i) {
        const FrameEntry& f = frames[i];
        const uint64_t b = std::max(d.begin, f.decompressed_offset);
        const uint64_t e = std::min(d.end, f.decompressed_offset + f.decompressed_size);
        if (b >= e) continue;
        if (jobs.empty() || jobs.back().frame != i) jobs.push_back({i, {}});
        jobs.back().pieces.push_back({b - f.decompressed_offset, e - b, d.data + (b - d.begin)});
      }
    }
    auto run = [&](size_t j) {
      const Job& job = jobs[j];
      const FrameEntry& f = frames[job.frame];
      if (job.pieces.size() == 1 && job.pieces[0].frame_offset == 0 &&
          job.pieces[0].n == f.decompressed_size) {
        DecompressFrame(job.frame, job.pieces[0].dst);
        return;
      }
      std::string scratch(f.decompressed_size, '\0');
      DecompressFrame(job.frame, reinterpret_cast<uint8_t*>(scratch.data()));
      for (const auto& p : job.pieces) std::memcpy(p.dst, scratch.data() + p.frame_offset, p.n);
    };
    if (parallel) {
      ParallelFor(jobs.size(), options_.threads, run);
    } else {
      for (size_t j = 0; j < jobs.size(); ++j) run(j);
    }
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
  return std::make_unique<format::ReaderImpl>(env->NewRandomAccessFile(path), options);
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
