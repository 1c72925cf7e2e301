// The byte-grouped frame codec (docs/FORMAT.md section 14): planes, their
// coding, whole frames both ways; plain and stored zstd frames.
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_compressSequences, ZSTD_decompressBound
#include "format/codec.h"

#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "ackpt/error.h"
#include "format/bytes.h"
#include "format/checksum.h"
#include "format/constants.h"
#include "format/dtype.h"
#include "format/transpose.h"
#include "format/zstd_context.h"

namespace ackpt {
namespace format {
namespace codec {

namespace {

// Where each stream's bytes go in a frame-sized plane buffer: groups of
// k = 8, 4, 2 planes, then the rest (docs/FORMAT.md 14.2).
struct Plan {
  uint64_t elems[9] = {};  // whole elements per element size
  uint64_t rest = 0;
  std::vector<uint64_t> sizes;  // per stream
};

Plan PlanOf(const std::vector<Segment>& segments) {
  Plan plan;
  for (const auto& s : segments) {
    if (Grouped(s.elem_size)) {
      plan.elems[s.elem_size] += s.size / s.elem_size;
      plan.rest += s.size % s.elem_size;
    } else {
      plan.rest += s.size;
    }
  }
  for (uint32_t k : {8u, 4u, 2u})
    if (plan.elems[k] > 0) plan.sizes.insert(plan.sizes.end(), k, plan.elems[k]);
  if (plan.rest > 0) plan.sizes.push_back(plan.rest);
  return plan;
}

// Moves the frame's bytes between element order (`frame`) and stream order
// (`streams[s]` the start of stream s). to_planes: group, else ungroup.
void Transpose(const Plan& plan, const std::vector<Segment>& segments, uint8_t* frame,
               const std::vector<uint8_t*>& streams, bool to_planes) {
  uint8_t* cursor[9][8] = {};
  size_t s = 0;
  for (uint32_t k : {8u, 4u, 2u}) {
    if (plan.elems[k] == 0) continue;
    for (uint32_t j = 0; j < k; ++j) cursor[k][j] = streams[s++];
  }
  uint8_t* rest = plan.rest > 0 ? streams[s] : nullptr;
  uint8_t* pos = frame;
  for (const auto& seg : segments) {
    uint64_t tail = seg.size;
    if (Grouped(seg.elem_size)) {
      const uint32_t k = seg.elem_size;
      const size_t m = static_cast<size_t>(seg.size / k);
      if (to_planes) {
        Group(pos, m, k, cursor[k]);
      } else {
        Ungroup(cursor[k], m, k, pos);
      }
      for (uint32_t j = 0; j < k; ++j) cursor[k][j] += m;
      pos += m * k;
      tail = seg.size % k;
    }
    if (tail > 0) {
      if (to_planes) {
        std::memcpy(rest, pos, static_cast<size_t>(tail));
      } else {
        std::memcpy(pos, rest, static_cast<size_t>(tail));
      }
      rest += tail;
      pos += tail;
    }
  }
}

// ---- plane coding -----------------------------------------------------------------
// Order-0 statistics of a sample of the plane (4 slices of 4 KiB, or all of
// a small plane): cheap enough to run on every plane.
struct PlaneStats {
  double entropy = 8;            // bits per byte
  double repeats = 0;            // share of bytes equal to the one before
  double iid_repeats = 0;        // what `repeats` would be without structure: sum p^2
  double max_slice_repeats = 0;  // of the 4 KiB slices: a run region shows as ~1
};

PlaneStats StatsOf(const uint8_t* p, size_t n) {
  uint32_t h[4][256] = {};
  size_t repeats = 0;
  double max_slice = 0;
  auto count = [&](const uint8_t* q, size_t len) {
    size_t r = 0;
    for (size_t i = 1; i < len; ++i) r += q[i] == q[i - 1];
    repeats += r;
    if (len > 0) max_slice = std::max(max_slice, static_cast<double>(r) / static_cast<double>(len));
    size_t i = 0;
    for (; i + 4 <= len; i += 4) {
      ++h[0][q[i]];
      ++h[1][q[i + 1]];
      ++h[2][q[i + 2]];
      ++h[3][q[i + 3]];
    }
    for (; i < len; ++i) ++h[0][q[i]];
  };
  constexpr size_t kSlice = 4096, kSlices = 4;
  size_t total = 0;
  if (n <= kSlice * kSlices) {
    count(p, n);
    total = n;
  } else {
    for (size_t s = 0; s < kSlices; ++s) {
      count(p + (n - kSlice) * s / (kSlices - 1), kSlice);
      total += kSlice;
    }
  }
  PlaneStats st;
  if (total == 0) return st;
  double e = 0, sq = 0;
  for (int v = 0; v < 256; ++v) {
    const uint32_t c = h[0][v] + h[1][v] + h[2][v] + h[3][v];
    if (c == 0) continue;
    const double q = static_cast<double>(c) / static_cast<double>(total);
    e -= q * std::log2(q);
    sq += q * q;
  }
  st.entropy = e;
  st.repeats = static_cast<double>(repeats) / static_cast<double>(total);
  st.iid_repeats = sq;
  st.max_slice_repeats = max_slice;
  return st;
}

// Planes whose order-0 entropy is above this cannot save 4 % with any
// entropy coder; they are stored raw (the low mantissa bytes of floats).
constexpr double kRawEntropy = 7.68;
// A plane with runs (zeros of untouched embedding rows, exponents of sparse
// Adam state, zero tensors next to dense ones) repeats its previous byte far
// more often than independent bytes of its histogram would (sum p^2): then
// zstd's matches beat Huffman's floor of 1 bit per byte. Likewise when the
// entropy is so low that Huffman's floor dominates.
constexpr double kRunsExcess = 0.3;
constexpr double kRunsEntropy = 0.8;
constexpr double kRunSlice = 0.9;
// A whole frame whose bytes repeat their predecessor this often is mostly
// runs: see EncodeByteGroupedDataFrame.
constexpr double kPlainZstdRepeats = 0.5;

// Literals-only zstd frame: zstd's Huffman stage without its match finder,
// via explicit sequences that are all literals (one per 128 KiB block).
size_t HuffmanFrame(const uint8_t* src, size_t n, uint8_t* dst, size_t cap) {
  thread_local std::vector<ZSTD_Sequence> seqs;
  seqs.clear();
  for (size_t off = 0; off < n || seqs.empty(); off += ZSTD_BLOCKSIZE_MAX) {
    ZSTD_Sequence s{};
    s.litLength = static_cast<unsigned>(std::min<size_t>(ZSTD_BLOCKSIZE_MAX, n - off));
    seqs.push_back(s);
    if (n == 0) break;
  }
  ZSTD_CCtx* cctx = ThreadHuffmanCCtx();
  CheckZstd(ZSTD_CCtx_reset(cctx, ZSTD_reset_session_only), "ZSTD_CCtx_reset");
  const size_t r = ZSTD_compressSequences(cctx, dst, cap, seqs.data(), seqs.size(), src, n);
  CheckZstd(r, "ZSTD_compressSequences");
  return r;
}

size_t ZstdFrame(const uint8_t* src, size_t n, int level, bool checksum, uint8_t* dst, size_t cap) {
  const size_t r = ZSTD_compress2(ThreadFrameCCtx(level, checksum), dst, cap, src, n);
  CheckZstd(r, "ZSTD_compress2");
  return r;
}

// Codes one stream at dst (capacity >= ZSTD_compressBound(n)); returns its
// mode and stored size.
std::pair<uint8_t, size_t> EncodeStream(const uint8_t* src, size_t n, int level, PlaneCoder coder,
                                        uint8_t* dst, size_t cap, FrameStats* stats) {
  PlaneCoder c = coder;
  if (c == PlaneCoder::kAdaptive) {
    const PlaneStats st = StatsOf(src, n);
    // Runs anywhere (one slice nearly constant: zero tensors or rows next to
    // dense ones) cost Huffman 1 bit per byte and zstd almost nothing.
    const bool runs = st.repeats > st.iid_repeats + kRunsExcess || st.entropy < kRunsEntropy ||
                      st.max_slice_repeats > kRunSlice;
    if (n < 64 || (st.entropy > kRawEntropy && !runs)) {
      c = PlaneCoder::kRaw;
    } else if (runs) {
      c = PlaneCoder::kZstd;
    } else {
      c = PlaneCoder::kHuffman;
    }
  }
  size_t r = n;
  if (c == PlaneCoder::kZstd) r = ZstdFrame(src, n, level, /*checksum=*/false, dst, cap);
  if (c == PlaneCoder::kHuffman) r = HuffmanFrame(src, n, dst, cap);
  if (c == PlaneCoder::kRaw || r >= n) {
    std::memcpy(dst, src, n);
    if (stats) ++stats->raw_streams;
    return {kStreamRaw, n};
  }
  if (stats) ++(c == PlaneCoder::kZstd ? stats->zstd_streams : stats->huffman_streams);
  return {kStreamZstd, r};
}

}  // namespace

// ---- public pieces --------------------------------------------------------------------

std::vector<Segment> SegmentsOf(const Layout& layout, uint64_t offset, uint64_t n) {
  std::vector<Segment> out;
  const uint64_t end = offset + n;
  auto add = [&](uint64_t size, uint32_t k) {
    if (size == 0) return;
    if (!out.empty() && out.back().elem_size == 1 && k == 1) {
      out.back().size += size;  // adjacent ungrouped bytes form one segment
    } else {
      out.push_back({size, k});
    }
  };
  // The first span ending after `offset`.
  auto it = std::upper_bound(layout.begin(), layout.end(), offset,
                             [](uint64_t off, const Span& s) { return off < s.end; });
  uint64_t pos = offset;
  for (; it != layout.end() && it->begin < end && pos < end; ++it) {
    if (it->begin > pos) {
      add(it->begin - pos, 1);
      pos = it->begin;
    }
    const uint64_t e = std::min(end, it->end);
    if (e > pos) add(e - pos, Grouped(it->elem_size) ? it->elem_size : 1);
    pos = std::max(pos, e);
  }
  if (pos < end) add(end - pos, 1);
  return out;
}

std::vector<uint64_t> StreamSizes(const std::vector<Segment>& segments) {
  return PlanOf(segments).sizes;
}

bool IsGroupedFrame(const void* p, size_t n) {
  return n >= 4 && LoadLE32(static_cast<const uint8_t*>(p)) == kGroupedFrameMagic;
}

uint32_t EncodeGroupedFrame(const uint8_t* src, size_t n, const std::vector<Segment>& segments,
                            int level, std::string* out, PlaneCoder coder, FrameStats* stats) {
  if (n > kMaxFrameDecompressedSize)
    throw Error::InvalidArgument("a byte-grouped frame holds at most 1 GiB");
  const Plan plan = PlanOf(segments);
  const size_t streams = plan.sizes.size();
  // Group into a frame-sized buffer of planes.
  uint8_t* planes = ThreadScratch(BufferUse::kPlanes).Get(n);
  std::vector<uint8_t*> starts(streams);
  uint64_t off = 0;
  for (size_t s = 0; s < streams; ++s) {
    starts[s] = planes + off;
    off += plan.sizes[s];
  }
  if (off != n) throw Error::InvalidArgument("byte-grouped frame: segments do not cover the frame");
  Transpose(plan, segments, const_cast<uint8_t*>(src), starts, /*to_planes=*/true);
  size_t cap = kGroupedHeaderBytes + kStreamDescriptorBytes * streams + 4;
  for (uint64_t sz : plan.sizes) cap += ZSTD_compressBound(static_cast<size_t>(sz));
  out->resize(cap);
  auto* o = reinterpret_cast<uint8_t*>(out->data());
  StoreLE32(o, kGroupedFrameMagic);
  o[4] = kGroupedFrameVersion;
  o[5] = static_cast<uint8_t>(streams);
  StoreLE32(o + 6, static_cast<uint32_t>(n));
  size_t pos = kGroupedHeaderBytes + kStreamDescriptorBytes * streams;
  for (size_t s = 0; s < streams; ++s) {
    const size_t sz = static_cast<size_t>(plan.sizes[s]);
    const auto r = EncodeStream(starts[s], sz, level, coder, o + pos, cap - pos, stats);
    uint8_t* d = o + kGroupedHeaderBytes + kStreamDescriptorBytes * s;
    d[0] = r.first;
    StoreLE32(d + 1, static_cast<uint32_t>(r.second));
    pos += r.second;
  }
  const uint32_t sum = FrameChecksum32(src, n);
  StoreLE32(o + pos, sum);
  out->resize(pos + 4);
  return sum;
}

uint32_t DecodeGroupedFrame(const uint8_t* comp, size_t comp_size,
                            const std::vector<Segment>& segments, uint8_t* dst, size_t n,
                            const std::string& what, bool verify) {
  auto corrupt = [&](const std::string& m) -> void {
    throw Error::Corruption(what + " (byte-grouped): " + m);
  };
  if (comp_size < kGroupedHeaderBytes + 4) corrupt("only " + std::to_string(comp_size) + " bytes");
  if (LoadLE32(comp) != kGroupedFrameMagic) corrupt("bad magic");
  if (comp[4] != kGroupedFrameVersion) {
    throw Error::Unsupported(what + ": byte-grouped frame version " + std::to_string(comp[4]) +
                             " (this build reads " + std::to_string(kGroupedFrameVersion) + ")");
  }
  const Plan plan = PlanOf(segments);
  const size_t streams = plan.sizes.size();
  if (comp[5] != streams) {
    corrupt("has " + std::to_string(comp[5]) + " streams, its tensors make " +
            std::to_string(streams));
  }
  if (LoadLE32(comp + 6) != n) {
    corrupt("holds " + std::to_string(LoadLE32(comp + 6)) + " bytes but the seek table says " +
            std::to_string(n));
  }
  const uint64_t payload = kGroupedHeaderBytes + kStreamDescriptorBytes * streams;
  if (payload + 4 > comp_size) corrupt("its stream table runs past its end");
  uint64_t total = payload + 4;
  for (size_t s = 0; s < streams; ++s) {
    if (total > comp_size) break;
    total += LoadLE32(comp + kGroupedHeaderBytes + kStreamDescriptorBytes * s + 1);
  }
  if (total != comp_size) {
    corrupt("its stream sizes do not add up to its " + std::to_string(comp_size) + " bytes");
  }
  // Validate every stream before decoding any: sizes are bounded by the
  // frame (n, itself bounded by the seek table) before the scratch is sized.
  std::vector<const uint8_t*> stored(streams);
  uint64_t pos = payload, need = 0;
  for (size_t s = 0; s < streams; ++s) {
    const uint8_t* d = comp + kGroupedHeaderBytes + kStreamDescriptorBytes * s;
    const uint32_t size = LoadLE32(d + 1);
    const uint64_t want = plan.sizes[s];
    const std::string which = "stream " + std::to_string(s);
    stored[s] = comp + pos;
    if (d[0] == kStreamRaw) {
      if (size != want) {
        corrupt(which + " stores " + std::to_string(size) + " bytes raw, expected " +
                std::to_string(want));
      }
    } else if (d[0] == kStreamZstd) {
      const unsigned long long content = ZSTD_getFrameContentSize(comp + pos, size);
      if (content != want)
        corrupt(which + " is not a zstd frame of " + std::to_string(want) + " bytes");
      const size_t span = ZSTD_findFrameCompressedSize(comp + pos, size);
      if (ZSTD_isError(span) || span != size)
        corrupt(which + " does not span exactly its " + std::to_string(size) + " bytes");
      const unsigned long long bound = ZSTD_decompressBound(comp + pos, size);
      if (bound == ZSTD_CONTENTSIZE_ERROR || bound < want)
        corrupt(which + " cannot hold " + std::to_string(want) + " bytes");
      need += want;
    } else {
      corrupt(which + " has unknown mode " + std::to_string(d[0]));
    }
    pos += size;
  }
  uint8_t* scratch = ThreadScratch(BufferUse::kPlaneStreams).Get(static_cast<size_t>(need));
  std::vector<uint8_t*> starts(streams);
  uint64_t off = 0;
  for (size_t s = 0; s < streams; ++s) {
    const uint8_t* d = comp + kGroupedHeaderBytes + kStreamDescriptorBytes * s;
    if (d[0] == kStreamRaw) {
      starts[s] = const_cast<uint8_t*>(stored[s]);  // read in place, never written
      continue;
    }
    starts[s] = scratch + off;
    const size_t want = static_cast<size_t>(plan.sizes[s]);
    const size_t r = ZSTD_decompressDCtx(ThreadDCtx(), starts[s], want, stored[s], LoadLE32(d + 1));
    if (ZSTD_isError(r)) corrupt("stream " + std::to_string(s) + ": " + ZSTD_getErrorName(r));
    if (r != want) corrupt("stream " + std::to_string(s) + " decompressed to the wrong size");
    off += want;
  }
  Transpose(plan, segments, dst, starts, /*to_planes=*/false);
  const uint32_t stored_sum = LoadLE32(comp + comp_size - 4);
  if (verify && FrameChecksum32(dst, n) != stored_sum) corrupt("content checksum mismatch");
  return stored_sum;
}

uint32_t EncodeZstdFrame(const uint8_t* src, size_t n, int level, std::string* out) {
  out->resize(ZSTD_compressBound(n));
  const size_t r = ZstdFrame(src, n, level, /*checksum=*/true,
                             reinterpret_cast<uint8_t*>(out->data()), out->size());
  out->resize(r);
  return LoadLE32(reinterpret_cast<const uint8_t*>(out->data()) + r - 4);
}

uint32_t EncodeStoredFrame(const uint8_t* src, size_t n, std::string* out) {
  // Frame header: magic, descriptor 0xA4 (4-byte content size, single
  // segment, content checksum), content size; raw blocks of <= 128 KiB
  // (3-byte header: last flag, type 0, size); the checksum.
  const size_t blocks = n == 0 ? 1 : (n + ZSTD_BLOCKSIZE_MAX - 1) / ZSTD_BLOCKSIZE_MAX;
  out->resize(4 + 1 + 4 + 3 * blocks + n + 4);
  auto* o = reinterpret_cast<uint8_t*>(out->data());
  StoreLE32(o, kZstdFrameMagic);
  o[4] = 0xA4;
  StoreLE32(o + 5, static_cast<uint32_t>(n));
  size_t pos = 9;
  for (size_t b = 0, off = 0; b < blocks; ++b) {
    const size_t len = std::min<size_t>(ZSTD_BLOCKSIZE_MAX, n - off);
    const uint32_t h = (b + 1 == blocks ? 1u : 0u) | static_cast<uint32_t>(len << 3);
    o[pos] = static_cast<uint8_t>(h);
    o[pos + 1] = static_cast<uint8_t>(h >> 8);
    o[pos + 2] = static_cast<uint8_t>(h >> 16);
    if (len) std::memcpy(o + pos + 3, src + off, len);
    pos += 3 + len;
    off += len;
  }
  const uint32_t sum = FrameChecksum32(src, n);
  StoreLE32(o + pos, sum);
  return sum;
}

uint32_t EncodeByteGroupedDataFrame(const uint8_t* src, size_t n,
                                    const std::vector<Segment>& segments, int level,
                                    std::string* out, FrameStats* stats) {
  // A frame that is mostly runs (zeros of untouched rows in sparse Adam
  // state: zstd -1 already reaches 20x) gains a few percent of an already
  // tiny output from grouping but costs a third more time in both
  // directions (measured, docs/BENCHMARKS.md): such frames stay plain zstd.
  if (StatsOf(src, n).repeats > kPlainZstdRepeats) {
    if (stats) ++stats->plain_zstd_frames;
    return EncodeZstdFrame(src, n, level, out);
  }
  return EncodeGroupedFrame(src, n, segments, level, out, PlaneCoder::kAdaptive, stats);
}

// ---- writer integration ----------------------------------------------------------------

Layout LayoutOf(const std::vector<FlatTensor>& tensors, uint64_t header_bytes) {
  Layout layout;
  layout.reserve(tensors.size());
  for (const auto& t : tensors) {
    if (t.nbytes == 0) continue;
    layout.push_back({header_bytes + t.staging_offset, header_bytes + t.staging_offset + t.nbytes,
                      static_cast<uint32_t>(DtypeSize(t.dtype))});
  }
  std::sort(layout.begin(), layout.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  return layout;
}

bool UsesCodec(Compression c) {
  return c == Compression::kZstdByteGrouped || c == Compression::kAuto;
}

void AddCodecMetadata(const WriteOptions& options, std::map<std::string, std::string>* internal) {
  if (!UsesCodec(options.compression)) return;
  (*internal)[kMetaCodec] = kCodecByteGrouped;
  (*internal)[kMetaVersion] = std::to_string(kByteGroupedFormatVersion);
}

// ---- reader integration -----------------------------------------------------------------

Layout LayoutOf(const FileInfo& info) {
  Layout layout;
  layout.reserve(info.tensors.size());
  for (const auto& t : info.tensors) {
    if (t.nbytes() == 0) continue;
    layout.push_back({info.header_bytes + t.begin, info.header_bytes + t.end,
                      static_cast<uint32_t>(DtypeSize(t.scalar_type))});
  }
  std::sort(layout.begin(), layout.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  return layout;
}

void CheckFileCodec(const FileInfo& info) {
  if (info.format_version < kByteGroupedFormatVersion) return;
  auto it = info.metadata.find(kMetaCodec);
  const std::string codec = it == info.metadata.end() ? "" : it->second;
  if (codec != kCodecByteGrouped) {
    throw Error::Unsupported("'" + info.path + "': format version " +
                             std::to_string(info.format_version) + " with codec '" + codec +
                             "'; this build reads '" + kCodecByteGrouped + "'");
  }
}

}  // namespace codec
}  // namespace format
}  // namespace ackpt
