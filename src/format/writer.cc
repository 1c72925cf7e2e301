// Serializing a checkpoint and committing it atomically (format/writer.h).
#include "format/writer.h"

#include <ATen/ATen.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "ackpt/error.h"
#include "format/auto_policy.h"
#include "format/bytes.h"
#include "format/checksum.h"
#include "format/codec.h"
#include "format/constants.h"
#include "format/dtype.h"
#include "format/header.h"
#include "format/seekable.h"
#include "format/zstd_context.h"
#include "io/atomic_file.h"

namespace ackpt {
namespace format {

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The logical stream of a checkpoint: the header region, then the data
// section from its source.
struct Logical {
  const std::string& header;
  const DataSource& data;
  const codec::Layout* layout = nullptr;  // tensors' spans, for EncodeModelFrame
  uint64_t size() const { return header.size() + data.size(); }
  void Visit(uint64_t offset, uint64_t n,
             const std::function<void(const void*, size_t)>& fn) const {
    const uint64_t h = header.size();
    if (offset < h) {
      const uint64_t len = std::min<uint64_t>(n, h - offset);
      fn(header.data() + offset, static_cast<size_t>(len));
      offset += len;
      n -= len;
    }
    if (n > 0) data.Visit(offset - h, n, fn);
  }
};

// A context for one frame of `level`, with its content checksum (which the
// seek table reuses) and its size in the frame header.
ZSTD_CCtx* StartFrame(int level) { return ThreadFrameCCtx(level, /*checksum=*/true); }

// The low 32 bits of XXH64 of a frame's input: exactly the frame's own
// content checksum (zstd format: "lowest 4 bytes of XXH64, seed 0,
// little-endian", the last 4 bytes of the frame), which is also what the
// seekable format's seek table stores, so it is read from the frame instead
// of hashing the input a second time.
uint32_t FrameChecksum(const std::string& frame) {
  if (frame.size() < 4)
    throw Error(Error::Code::kIOError, "zstd produced a frame without a content checksum");
  return LoadLE32(reinterpret_cast<const uint8_t*>(frame.data() + frame.size() - 4));
}

using Feed = std::function<void(const void*, size_t)>;
// Called between frame windows (chunks of a plain file) with the logical
// bytes handled so far: checks for cancellation, paces.
using Between = std::function<void(uint64_t done)>;

// Streams n bytes, which produce(feed) hands over in pieces, into one frame.
// zstd's streaming API copies input into its own window, so a piece may be
// reused as soon as feed returns.
uint32_t CompressStreamed(int level, size_t n, const std::function<void(const Feed&)>& produce,
                          std::string* out) {
  ZSTD_CCtx* cctx = StartFrame(level);
  CheckZstd(ZSTD_CCtx_setPledgedSrcSize(cctx, n), "ZSTD_CCtx_setPledgedSrcSize");
  out->resize(ZSTD_compressBound(n));
  ZSTD_outBuffer ob{out->data(), out->size(), 0};
  produce([&](const void* p, size_t len) {
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
  return FrameChecksum(*out);
}

// Compresses stream[offset, offset+n) into one zstd frame; returns its
// content checksum (FrameChecksum).
uint32_t CompressChunk(const Logical& stream, uint64_t offset, size_t n, int level,
                       std::string* out) {
  // Most chunks lie inside one tensor: compress them in one call, straight
  // from the staging memory (the streaming API would first copy the input
  // into zstd's own buffer).
  const void* single = nullptr;
  size_t pieces = 0;
  stream.Visit(offset, n, [&](const void* p, size_t) {
    if (pieces++ == 0) single = p;
  });
  if (pieces != 1) {
    return CompressStreamed(
        level, n, [&](const Feed& feed) { stream.Visit(offset, n, feed); }, out);
  }
  ZSTD_CCtx* cctx = StartFrame(level);
  out->resize(ZSTD_compressBound(n));
  const size_t r = ZSTD_compress2(cctx, out->data(), out->size(), single, n);
  CheckZstd(r, "ZSTD_compress2");
  out->resize(r);
  return FrameChecksum(*out);
}

// Compresses logical [offset, offset + n) into one frame as its bytes arrive
// from `source`, releasing them once zstd has taken them: for a frame larger
// than what the source can hold at once.
uint32_t CompressArriving(const Logical& stream, DataSource* source, uint64_t offset, size_t n,
                          int level, std::string* out) {
  const uint64_t h = stream.header.size();
  return CompressStreamed(
      level, n,
      [&](const Feed& feed) {
        const uint64_t end = offset + n;
        uint64_t at = offset;
        if (at < h) {  // the part in the header region
          const uint64_t len = std::min(end, h) - at;
          feed(stream.header.data() + at, static_cast<size_t>(len));
          at += len;
        }
        while (at < end) {
          const uint64_t to = std::min(end, h + source->WaitFor(at - h + 1));
          source->Visit(at - h, to - at, feed);
          source->Release(to - h);
          at = to;
        }
      },
      out);
}

// Whether frame `index` goes through EncodeModelFrame: the data frames of
// the codec's files (version 3: the header frame stays plain zstd, which
// every reader opens), and every frame of kZstd's unless each is to be
// compressed (a stored frame is a zstd frame too).
bool EncodesThroughModel(const WriteOptions& options, size_t index) {
  if (options.compression == Compression::kZstd) return !options.always_compress;
  return index > 0 && codec::UsesCodec(options.compression);
}

// Encodes data frame [offset, offset + n) as the options and the model say:
// kZstdByteGrouped's frame, kAuto's choice of three, or kZstd's choice of
// compressed or stored. The frame's bytes in one piece: in place when the
// stream holds them so (most frames lie inside one tensor), else gathered.
uint32_t EncodeModelFrame(const Logical& stream, uint64_t offset, size_t n,
                          const WriteOptions& options, codec::AutoModel* auto_model,
                          std::string* out) {
  const uint8_t* src = nullptr;
  size_t pieces = 0;
  stream.Visit(offset, n, [&](const void* p, size_t) {
    if (pieces++ == 0) src = static_cast<const uint8_t*>(p);
  });
  if (pieces != 1) {
    uint8_t* gather = ThreadScratch(BufferUse::kGather).Get(n);
    size_t at = 0;
    stream.Visit(offset, n, [&](const void* p, size_t len) {
      std::memcpy(gather + at, p, len);
      at += len;
    });
    src = gather;
  }
  const std::vector<codec::Segment> segments = codec::SegmentsOf(*stream.layout, offset, n);
  if (options.compression == Compression::kZstdByteGrouped)
    return codec::EncodeByteGroupedDataFrame(src, n, segments, options.zstd_level, out);
  return auto_model->EncodeFrame(src, n, segments, options, out,
                                 options.compression == Compression::kAuto
                                     ? codec::AutoCandidates::kStoreZstdGrouped
                                     : codec::AutoCandidates::kStoreZstd);
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

// Hints `file` to start writeback every `every` bytes appended through it
// (WriteOptions::writeback_bytes; 0: never), so the commit's fsync finds
// only the tail dirty. Hints end on a page boundary, so a partly written
// page is not written back once now and again when the rest arrives.
class WritebackFile final : public WritableFile {
 public:
  WritebackFile(WritableFile* file, uint64_t every) : file_(file), every_(every) {}
  void Append(const void* p, size_t n) override {
    file_->Append(p, n);
    appended_ += n;
    if (every_ == 0 || appended_ - hinted_ < every_) return;
    const uint64_t end = appended_ & ~uint64_t{kPage - 1};
    if (end <= hinted_) return;  // less than a page since the last hint
    file_->StartWriteback(hinted_, end - hinted_);
    hinted_ = end;
  }
  void Sync() override { file_->Sync(); }
  void StartWriteback(uint64_t offset, uint64_t n) override { file_->StartWriteback(offset, n); }
  void Close() override { file_->Close(); }
  const std::string& path() const override { return file_->path(); }

 private:
  static constexpr uint64_t kPage = 4096;
  WritableFile* file_;
  const uint64_t every_;
  uint64_t appended_ = 0;
  uint64_t hinted_ = 0;
};

}  // namespace

void ValidateWriteOptions(const WriteOptions& o) {
  if (o.compression != Compression::kNone) {
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

void HashTensors(std::vector<FlatTensor>* tensors, DataSource* source,
                 const ParallelForFn& parallel_for) {
  std::vector<FlatTensor>& ts = *tensors;
  source->WaitFor(source->size());
  parallel_for(ts.size(), [&](size_t i) {
    Xxh3Stream h;
    source->Visit(ts[i].staging_offset, ts[i].nbytes,
                  [&](const void* p, size_t n) { h.Update(p, n); });
    ts[i].xxh3 = h.Digest();
  });
}

namespace {

// The frames of a compressed stream: the header region alone first, so a
// reader gets the header without decompressing tensor data (format version
// 2), then chunk_size pieces of the data section.
std::vector<std::pair<uint64_t, uint64_t>> FrameRanges(uint64_t header_bytes, uint64_t total,
                                                       uint64_t chunk) {
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  ranges.emplace_back(0, header_bytes);
  for (uint64_t off = header_bytes; off < total; off += chunk)
    ranges.emplace_back(off, std::min(chunk, total - off));
  return ranges;
}

// Compresses and appends the frames in order. The window of frames
// compressed in parallel ends where the source's available bytes end (at
// least one frame, waited for), so a producer filling a bounded ring is
// never waited on for more than it can deliver; compressed bytes are
// released. Window k is appended while window k+1 compresses (one more task
// of the same parallel_for, claimed first), so the write syscalls and the
// writeback hints run beside the compression instead of after it; two sets
// of frame buffers alternate, and the file still gets the frames in order.
void WriteFrames(const Logical& stream, const WriteOptions& options, DataSource* source,
                 WritableFile* file, const ParallelForFn& parallel_for,
                 codec::AutoModel* auto_model, const Between& between, WriteResult* result) {
  const uint64_t header_bytes = stream.header.size();
  const auto ranges = FrameRanges(header_bytes, stream.size(), options.chunk_size);
  if (ranges.size() > kMaxFrames) throw Error::InvalidArgument("too many frames; raise chunk_size");
  std::atomic<int64_t> compress_ns{0};
  const size_t window =
      static_cast<size_t>(std::max(4, 2 * ResolveThreads(options.writer_threads)));
  std::vector<std::string> sets[2];
  for (auto& set : sets) set.resize(std::min(window, ranges.size()));
  std::vector<uint32_t> sums(sets[0].size());
  std::vector<FrameEntry> entries;
  entries.reserve(ranges.size());
  size_t cur = 0;      // the set the next window compresses into
  size_t pending = 0;  // frames of sets[1 - cur] compressed but not yet appended
  auto append_pending = [&] {
    const std::vector<std::string>& done = sets[1 - cur];
    for (size_t j = 0; j < pending; ++j) {
      file->Append(done[j].data(), done[j].size());
      result->file_bytes += done[j].size();
    }
  };
  auto add_entry = [&](const std::string& frame, uint64_t size, uint32_t sum) {
    FrameEntry e;
    e.compressed_size = static_cast<uint32_t>(frame.size());
    e.decompressed_size = static_cast<uint32_t>(size);
    e.checksum = sum;
    entries.push_back(e);
  };
  size_t first = 0;
  uint64_t released = 0;  // data bytes handed back to the source
  while (first < ranges.size()) {
    between(ranges[first].first);
    // Data bytes this window may cover: at least its first frame's.
    const auto& r0 = ranges[first];
    const uint64_t need =
        r0.first + r0.second > header_bytes ? r0.first + r0.second - header_bytes : 0;
    // What the source must hold at once for it: the frame's bytes not yet
    // released (need is an offset into the data section, capacity a size).
    if (need - std::min(need, released) > source->capacity()) {
      // The frame does not fit the source at once: compress it as it arrives.
      if (first > 0 && codec::UsesCodec(options.compression)) {
        throw Error::InvalidArgument(
            "a frame of chunk_size " + std::to_string(options.chunk_size) +
            " bytes does not fit the staging ring (" + std::to_string(source->capacity()) +
            " bytes at once), and the float-aware codec needs whole frames: lower chunk_size "
            "or raise staging_budget_bytes");
      }
      append_pending();
      pending = 0;
      std::string& frame = sets[cur][0];
      const auto c0 = Clock::now();
      const uint32_t sum = CompressArriving(
          stream, source, r0.first, static_cast<size_t>(r0.second), options.zstd_level, &frame);
      compress_ns +=
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - c0).count();
      add_entry(frame, r0.second, sum);
      file->Append(frame.data(), frame.size());
      result->file_bytes += frame.size();
      released = std::max(released, need);
      ++first;
      continue;
    }
    const uint64_t avail = header_bytes + source->WaitFor(need);
    size_t count = 1;
    while (count < window && first + count < ranges.size() &&
           ranges[first + count].first + ranges[first + count].second <= avail) {
      ++count;
    }
    std::vector<std::string>& frames = sets[cur];
    const size_t extra = pending > 0 ? 1 : 0;
    parallel_for(count + extra, [&](size_t i) {
      if (i < extra) {
        append_pending();
        return;
      }
      const size_t j = i - extra;
      const auto c0 = Clock::now();
      const auto& r = ranges[first + j];
      if (EncodesThroughModel(options, first + j)) {
        sums[j] = EncodeModelFrame(stream, r.first, static_cast<size_t>(r.second), options,
                                   auto_model, &frames[j]);
      } else {
        sums[j] = CompressChunk(stream, r.first, static_cast<size_t>(r.second), options.zstd_level,
                                &frames[j]);
      }
      compress_ns +=
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - c0).count();
    });
    for (size_t j = 0; j < count; ++j) add_entry(frames[j], ranges[first + j].second, sums[j]);
    // The frames hold copies: the source's bytes are no longer needed.
    const auto& last = ranges[first + count - 1];
    if (last.first + last.second > header_bytes) {
      released = last.first + last.second - header_bytes;
      source->Release(released);
    }
    first += count;
    pending = count;
    cur = 1 - cur;
  }
  append_pending();
  const std::string table = EncodeSeekTable(entries);
  file->Append(table.data(), table.size());
  result->file_bytes += table.size();
  result->compress_seconds = static_cast<double>(compress_ns.load()) * 1e-9;
}

// The plain stream: the header, then the data section as the source
// delivers it, in pieces of at most chunk_size, released once appended.
void WritePlain(const std::string& header, const WriteOptions& options, DataSource* source,
                WritableFile* file, const Between& between, WriteResult* result) {
  BufferedAppender out(file);
  out.Append(header.data(), header.size());
  const uint64_t total = source->size();
  const uint64_t step = std::max<uint64_t>(options.chunk_size, kMinChunkSize);
  uint64_t offset = 0;
  while (offset < total) {
    between(header.size() + offset);
    const uint64_t avail = source->WaitFor(std::min(total, offset + 1));
    const uint64_t end = std::min({total, avail, offset + step});
    // Append() copies what it buffers, so the source may reuse the bytes at once.
    source->Visit(offset, end - offset, [&](const void* p, size_t n) { out.Append(p, n); });
    source->Release(end);
    offset = end;
  }
  out.Flush();
  result->file_bytes = header.size() + total;
}

}  // namespace

WriteResult EncodeStreamAndCommit(const std::vector<FlatTensor>& tensors,
                                  const std::string& tree_json, const WriteOptions& options,
                                  const std::map<std::string, std::string>& internal_metadata,
                                  const std::string& path, Env* env, DataSource* source,
                                  const ParallelForFn& parallel_for, codec::AutoModel* auto_model,
                                  const std::atomic<bool>* cancel, const PaceFn& pace) {
  WriteResult result;
  result.path = path;
  result.compressed = options.compression != Compression::kNone;
  std::map<std::string, std::string> internal = internal_metadata;
  codec::AddCodecMetadata(options, &internal);  // ackpt.codec, version 3
  const std::string header = EncodeHeader(tensors, tree_json, options.metadata, internal);
  result.header_xxh3 = HeaderChecksumOf(header);
  for (const auto& t : tensors) result.tensor_bytes += t.nbytes;
  if (result.tensor_bytes != source->size())
    throw Error::InvalidArgument("the data source does not hold the tensors' bytes");
  const codec::Layout layout = codec::LayoutOf(tensors, header.size());
  const Logical stream{header, *source, &layout};
  result.logical_bytes = stream.size();
  const Between between = [&](uint64_t done) {
    if (cancel != nullptr && cancel->load())
      throw Error::TimedOut("save to '" + path + "' abandoned at shutdown");
    if (!pace) return;
    const auto p0 = Clock::now();
    pace(done, result.logical_bytes);
    result.paced_seconds += SecondsSince(p0);
  };
  const auto t0 = Clock::now();
  AtomicWrite(env, path, options.fsync, [&](WritableFile* target) {
    WritebackFile writeback(target, options.fsync ? options.writeback_bytes : 0);
    WritableFile* file = &writeback;
    if (options.compression == Compression::kNone) {
      WritePlain(header, options, source, file, between, &result);
    } else {
      WriteFrames(stream, options, source, file, parallel_for, auto_model, between, &result);
    }
  });
  result.write_seconds = SecondsSince(t0);
  // Time spent pacing is not the device's.
  auto_model->RecordSave(options, result.file_bytes, result.write_seconds - result.paced_seconds,
                         result.compress_seconds);
  return result;
}

WriteResult EncodeAndCommit(std::vector<FlatTensor>* tensors, const std::string& tree_json,
                            const WriteOptions& options,
                            const std::map<std::string, std::string>& internal_metadata,
                            const std::string& path, Env* env, const ParallelForFn& parallel_for,
                            codec::AutoModel* auto_model, const std::atomic<bool>* cancel) {
  SortForAlignment(tensors);
  MemorySource source(tensors);
  const auto h0 = Clock::now();
  HashTensors(tensors, &source, parallel_for);
  const double hash_seconds = SecondsSince(h0);
  WriteResult result = EncodeStreamAndCommit(*tensors, tree_json, options, internal_metadata, path,
                                             env, &source, parallel_for, auto_model, cancel);
  result.hash_seconds = hash_seconds;
  return result;
}

void DescribeTensors(std::vector<FlatTensor>* tensors) {
  for (auto& f : *tensors) {
    const at::Tensor& t = f.tensor;
    if (t.layout() != at::kStrided) {
      throw Error::Unsupported("tensor '" + f.name + "' is not dense (layout " +
                               c10::str(t.layout()) + ")");
    }
    DtypeToName(t.scalar_type(), "tensor '" + f.name + "'");
    f.dtype = t.scalar_type();
    f.shape = t.sizes().vec();
    f.nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
  }
}

void PrepareContiguous(std::vector<FlatTensor>* tensors, std::vector<at::Tensor>* keep_alive) {
  DescribeTensors(tensors);
  for (auto& f : *tensors) {
    at::Tensor c = f.tensor;
    if (!c.device().is_cpu()) c = c.to(at::kCPU);
    c = c.resolve_conj().resolve_neg().contiguous();
    f.data = f.nbytes == 0 ? nullptr : c.data_ptr();
    keep_alive->push_back(std::move(c));
  }
}

WriteResult WriteStateDictSync(const StateDict& state, const std::string& path,
                               const WriteOptions& options,
                               const std::map<std::string, std::string>& internal_metadata,
                               Env* env) {
  ValidateWriteOptions(options);
  std::vector<FlatTensor> tensors;
  std::string tree;
  Flatten(state, &tensors, &tree);
  std::vector<at::Tensor> keep_alive;
  PrepareContiguous(&tensors, &keep_alive);
  const int threads = options.writer_threads;
  return EncodeAndCommit(
      &tensors, tree, options, internal_metadata, path, env,
      [threads](size_t n, const std::function<void(size_t)>& fn) { ParallelFor(n, threads, fn); },
      &codec::DefaultAutoModel());
}

}  // namespace format

WriteResult WriteStateDict(const StateDict& state, const std::string& path,
                           const WriteOptions& options, Env* env) {
  return format::WriteStateDictSync(state, path, options, {}, env);
}

}  // namespace ackpt
