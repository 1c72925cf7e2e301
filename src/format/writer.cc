// Serializing a checkpoint and committing it atomically.
#define XXH_INLINE_ALL
#include <ATen/ATen.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "format/internal.h"

namespace ackpt {
namespace format {

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct CCtxDeleter {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};

ZSTD_CCtx* ThreadCCtx() {
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxDeleter> cctx(ZSTD_createCCtx());
  if (!cctx) throw Error(Error::Code::kIOError, "ZSTD_createCCtx failed (out of memory)");
  return cctx.get();
}

void CheckZstd(size_t rc, const char* call) {
  if (ZSTD_isError(rc))
    throw Error(Error::Code::kIOError, std::string(call) + ": " + ZSTD_getErrorName(rc));
}

// Streams a chunk made of several pieces (tensor boundaries) into one frame.
void CompressPieces(ZSTD_CCtx* cctx, const LogicalStream& stream, uint64_t offset, size_t n,
                    std::string* out) {
  CheckZstd(ZSTD_CCtx_setPledgedSrcSize(cctx, n), "ZSTD_CCtx_setPledgedSrcSize");
  ZSTD_outBuffer ob{out->data(), out->size(), 0};
  stream.Visit(offset, n, [&](const void* p, size_t len) {
    ZSTD_inBuffer ib{p, len, 0};
    while (ib.pos < ib.size)
      CheckZstd(ZSTD_compressStream2(cctx, &ob, &ib, ZSTD_e_continue), "ZSTD_compressStream2");
  });
  ZSTD_inBuffer empty{nullptr, 0, 0};
  for (;;) {
    size_t remaining = ZSTD_compressStream2(cctx, &ob, &empty, ZSTD_e_end);
    CheckZstd(remaining, "ZSTD_compressStream2");
    if (remaining == 0) break;
    out->resize(out->size() * 2);
    ob.dst = out->data();
    ob.size = out->size();
  }
  out->resize(ob.pos);
}

// Compresses stream[offset, offset+n) into one zstd frame with its content
// checksum; returns the frame and the low 32 bits of XXH64 of the input.
// That value is exactly the frame's own content checksum (zstd format:
// "lowest 4 bytes of XXH64, seed 0, little-endian", the last 4 bytes of the
// frame), which is also what the seekable format's seek table stores, so it
// is read from the frame instead of hashing the input a second time.
uint32_t CompressChunk(const LogicalStream& stream, uint64_t offset, size_t n, int level,
                       std::string* out) {
  ZSTD_CCtx* cctx = ThreadCCtx();
  CheckZstd(ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters), "ZSTD_CCtx_reset");
  CheckZstd(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level),
            "ZSTD_c_compressionLevel");
  CheckZstd(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1), "ZSTD_c_checksumFlag");
  CheckZstd(ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1), "ZSTD_c_contentSizeFlag");
  out->resize(ZSTD_compressBound(n));
  // Most chunks lie inside one tensor: compress them in one call, straight
  // from the staging memory (the streaming API would first copy the input
  // into zstd's own buffer).
  const void* single = nullptr;
  size_t pieces = 0;
  stream.Visit(offset, n, [&](const void* p, size_t) {
    if (pieces++ == 0) single = p;
  });
  if (pieces == 1) {
    const size_t r = ZSTD_compress2(cctx, out->data(), out->size(), single, n);
    CheckZstd(r, "ZSTD_compress2");
    out->resize(r);
  } else {
    CompressPieces(cctx, stream, offset, n, out);
  }
  if (out->size() < 4)
    throw Error(Error::Code::kIOError, "zstd produced a frame without a content checksum");
  const auto* tail = reinterpret_cast<const uint8_t*>(out->data() + out->size() - 4);
  return static_cast<uint32_t>(tail[0]) | (static_cast<uint32_t>(tail[1]) << 8) |
         (static_cast<uint32_t>(tail[2]) << 16) | (static_cast<uint32_t>(tail[3]) << 24);
}

// Coalesces small appends so a state of many tiny tensors is not written
// with one syscall per tensor.
class BufferedAppender {
 public:
  explicit BufferedAppender(WritableFile* file) : file_(file) { buf_.reserve(kBuffer); }
  void Append(const void* p, size_t n) {
    if (n >= kBuffer / 2) {
      Flush();
      file_->Append(p, n);
      return;
    }
    if (buf_.size() + n > kBuffer) Flush();
    buf_.append(static_cast<const char*>(p), n);
  }
  void Flush() {
    if (!buf_.empty()) file_->Append(buf_.data(), buf_.size());
    buf_.clear();
  }

 private:
  static constexpr size_t kBuffer = 1 << 20;
  WritableFile* file_;
  std::string buf_;
};

}  // namespace

void ValidateWriteOptions(const WriteOptions& o) {
  if (o.compression == Compression::kZstd) {
    if (o.chunk_size < kMinChunkSize || o.chunk_size > kMaxFrameDecompressedSize) {
      throw Error::InvalidArgument("chunk_size " + std::to_string(o.chunk_size) +
                                   " is outside [64 KiB, 1 GiB]");
    }
    if (o.zstd_level < ZSTD_minCLevel() || o.zstd_level > ZSTD_maxCLevel()) {
      throw Error::InvalidArgument("zstd_level " + std::to_string(o.zstd_level) + " is outside [" +
                                   std::to_string(ZSTD_minCLevel()) + ", " +
                                   std::to_string(ZSTD_maxCLevel()) + "]");
    }
  }
}

void LogicalStream::Add(const void* data, uint64_t n) {
  if (n == 0) return;
  pieces_.push_back({static_cast<const uint8_t*>(data), size_, n});
  size_ += n;
}

void LogicalStream::Visit(uint64_t offset, uint64_t n,
                          const std::function<void(const void*, size_t)>& fn) const {
  auto it = std::upper_bound(pieces_.begin(), pieces_.end(), offset,
                             [](uint64_t off, const Piece& p) { return off < p.offset; });
  if (it != pieces_.begin()) --it;
  const uint64_t end = offset + n;
  for (; it != pieces_.end() && it->offset < end; ++it) {
    uint64_t b = std::max(offset, it->offset);
    uint64_t e = std::min(end, it->offset + it->size);
    if (b < e) fn(it->data + (b - it->offset), static_cast<size_t>(e - b));
  }
}

void AtomicWrite(Env* env, const std::string& path, bool fsync,
                 const std::function<void(WritableFile*)>& body) {
  const std::string dir = DirName(path);
  const std::string tmp = JoinPath(dir, TempFileName(path));
  std::unique_ptr<WritableFile> file = env->NewWritableFile(tmp);
  try {
    body(file.get());
    if (fsync) file->Sync();
    file->Close();
    env->RenameFile(tmp, path);
  } catch (...) {
    file.reset();
    try {
      env->RemoveFile(tmp);
    } catch (...) {
      // The original error is the one worth reporting.
    }
    throw;
  }
  // After the rename the final name holds the complete file; this makes the
  // rename itself durable.
  if (fsync) env->SyncDir(dir);
}

CommitStats CommitStream(const LogicalStream& stream, const std::string& path,
                         const WriteOptions& options, Env* env, const ParallelForFn& parallel_for,
                         const std::atomic<bool>* cancel) {
  ValidateWriteOptions(options);
  auto check_cancel = [cancel, &path] {
    if (cancel != nullptr && cancel->load())
      throw Error::TimedOut("save to '" + path + "' abandoned at shutdown");
  };
  CommitStats stats;
  const auto t0 = Clock::now();
  std::atomic<int64_t> compress_ns{0};
  AtomicWrite(env, path, options.fsync, [&](WritableFile* file) {
    if (options.compression == Compression::kNone) {
      BufferedAppender out(file);
      stream.Visit(0, stream.size(), [&](const void* p, size_t n) {
        check_cancel();
        out.Append(p, n);
      });
      out.Flush();
      stats.file_bytes = stream.size();
      return;
    }
    const uint64_t chunk = options.chunk_size;
    const size_t num_chunks = static_cast<size_t>((stream.size() + chunk - 1) / chunk);
    if (num_chunks > kMaxFrames) throw Error::InvalidArgument("too many frames; raise chunk_size");
    const size_t window = static_cast<size_t>(std::max(4, 2 * ResolveThreads(options.threads)));
    std::vector<std::string> frames(std::min(window, num_chunks));
    std::vector<uint32_t> sums(frames.size());
    std::vector<FrameEntry> entries;
    entries.reserve(num_chunks);
    for (size_t first = 0; first < num_chunks; first += window) {
      check_cancel();
      const size_t count = std::min(window, num_chunks - first);
      parallel_for(count, [&](size_t j) {
        const auto c0 = Clock::now();
        const uint64_t off = (first + j) * chunk;
        const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, stream.size() - off));
        sums[j] = CompressChunk(stream, off, n, options.zstd_level, &frames[j]);
        compress_ns +=
            std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - c0).count();
      });
      for (size_t j = 0; j < count; ++j) {
        const uint64_t off = (first + j) * chunk;
        FrameEntry e;
        e.compressed_size = static_cast<uint32_t>(frames[j].size());
        e.decompressed_size = static_cast<uint32_t>(std::min<uint64_t>(chunk, stream.size() - off));
        e.checksum = sums[j];
        entries.push_back(e);
        file->Append(frames[j].data(), frames[j].size());
        stats.file_bytes += frames[j].size();
      }
    }
    const std::string table = EncodeSeekTable(entries);
    file->Append(table.data(), table.size());
    stats.file_bytes += table.size();
  });
  stats.compress_seconds = static_cast<double>(compress_ns.load()) * 1e-9;
  stats.write_seconds = SecondsSince(t0);
  return stats;
}

void SerializeTensors(const std::vector<FlatTensor>& flat, int threads,
                      std::vector<SerializedTensor>* out, std::vector<at::Tensor>* keep_alive) {
  out->clear();
  keep_alive->clear();
  for (const auto& f : flat) {
    const at::Tensor& t = f.tensor;
    if (t.layout() != at::kStrided) {
      throw Error::Unsupported("tensor '" + f.name + "' is not dense (layout " +
                               c10::str(t.layout()) + ")");
    }
    DtypeToName(t.scalar_type(), "tensor '" + f.name + "'");
    at::Tensor c = t;
    if (!c.device().is_cpu()) c = c.to(at::kCPU);
    c = c.resolve_conj().resolve_neg().contiguous();
    SerializedTensor s;
    s.name = f.name;
    s.dtype = c.scalar_type();
    s.shape = c.sizes().vec();
    s.nbytes = c.nbytes();
    s.data = s.nbytes == 0 ? nullptr : c.data_ptr();
    out->push_back(std::move(s));
    keep_alive->push_back(std::move(c));
  }
  ParallelFor(out->size(), threads, [&](size_t i) {
    (*out)[i].xxh3 = Xxh3((*out)[i].data, static_cast<size_t>((*out)[i].nbytes));
  });
}

}  // namespace format

WriteResult WriteStateDict(const StateDict& state, const std::string& path,
                           const WriteOptions& options, Env* env) {
  std::vector<format::FlatTensor> flat;
  std::string tree;
  format::Flatten(state, &flat, &tree);
  std::vector<format::SerializedTensor> tensors;
  std::vector<at::Tensor> keep_alive;
  format::SerializeTensors(flat, options.threads, &tensors, &keep_alive);
  format::SortForAlignment(&tensors);
  const std::string header = format::EncodeHeader(tensors, tree, options.metadata);
  format::LogicalStream stream;
  stream.Add(header.data(), header.size());
  WriteResult result;
  result.path = path;
  for (const auto& t : tensors) {
    stream.Add(t.data, t.nbytes);
    result.tensor_bytes += t.nbytes;
  }
  const int threads = options.threads;
  format::CommitStats stats = format::CommitStream(
      stream, path, options, env, [threads](size_t n, const std::function<void(size_t)>& fn) {
        format::ParallelFor(n, threads, fn);
      });
  result.logical_bytes = stream.size();
  result.file_bytes = stats.file_bytes;
  return result;
}

}  // namespace ackpt
