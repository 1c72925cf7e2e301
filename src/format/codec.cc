// The byte-grouped frame codec and kAuto's choice (docs/FORMAT.md section 14).
#define XXH_INLINE_ALL
#include "format/codec.h"

#include <xxhash.h>
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_compressSequences, ZSTD_decompressBound
#include <zstd.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>

#include "ackpt/error.h"
#include "format/internal.h"

namespace ackpt {
namespace format {
namespace codec {

namespace {

using Clock = std::chrono::steady_clock;

void PutU32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
  p[2] = static_cast<uint8_t>(v >> 16);
  p[3] = static_cast<uint8_t>(v >> 24);
}

uint32_t GetU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

uint32_t Checksum32(const void* p, size_t n) {
  return static_cast<uint32_t>(XXH64(p, n, 0) & 0xffffffffu);
}

void CheckZstd(size_t rc, const char* call) {
  if (ZSTD_isError(rc))
    throw Error(Error::Code::kIOError, std::string(call) + ": " + ZSTD_getErrorName(rc));
}

struct CCtxDeleter {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DCtxDeleter {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};

ZSTD_CCtx* NewCCtx() {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  if (c == nullptr) throw Error(Error::Code::kIOError, "ZSTD_createCCtx failed (out of memory)");
  return c;
}

// One context for plain zstd streams, one set up once for literals-only
// (Huffman) frames: switching parameters on one context would reset it.
ZSTD_CCtx* ThreadCCtx() {
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxDeleter> c(NewCCtx());
  return c.get();
}

ZSTD_CCtx* ThreadHufCCtx() {
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxDeleter> c([] {
    ZSTD_CCtx* x = NewCCtx();
    CheckZstd(ZSTD_CCtx_setParameter(x, ZSTD_c_compressionLevel, 1), "ZSTD_c_compressionLevel");
    CheckZstd(ZSTD_CCtx_setParameter(x, ZSTD_c_blockDelimiters, ZSTD_sf_explicitBlockDelimiters),
              "ZSTD_c_blockDelimiters");
    CheckZstd(ZSTD_CCtx_setParameter(x, ZSTD_c_checksumFlag, 0), "ZSTD_c_checksumFlag");
    return x;
  }());
  return c.get();
}

ZSTD_DCtx* ThreadDCtx() {
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxDeleter> d(ZSTD_createDCtx());
  if (!d) throw Error(Error::Code::kIOError, "ZSTD_createDCtx failed (out of memory)");
  return d.get();
}

// Per-thread scratch that keeps its capacity between frames.
std::vector<uint8_t>& Scratch(int which) {
  thread_local std::vector<uint8_t> bufs[3];
  return bufs[which];
}

// ---- transposition -------------------------------------------------------------
// The scalar loops are the reference and handle tails; the SSE2 kernels do
// 16 elements per step (GCC does not vectorise strided byte gathers well at
// the x86-64 baseline: measured ~1 GB/s scalar against >8 GB/s here).

template <size_t K>
void GroupScalar(const uint8_t* src, size_t m, uint8_t* const* p) {
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < K; ++j) p[j][i] = src[i * K + j];
}

template <size_t K>
void UngroupScalar(const uint8_t* const* p, size_t m, uint8_t* dst) {
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < K; ++j) dst[i * K + j] = p[j][i];
}

#if defined(__SSE2__)
inline __m128i Load(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
inline void Store(uint8_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

// Even and odd bytes of 32 bytes.
inline void Split2(__m128i a, __m128i b, __m128i* even, __m128i* odd) {
  const __m128i lo = _mm_set1_epi16(0x00ff);
  *even = _mm_packus_epi16(_mm_and_si128(a, lo), _mm_and_si128(b, lo));
  *odd = _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8));
}
// Low and high 16-bit halves of the 32-bit lanes of 32 bytes (SSE2 has no
// unsigned 32->16 pack; sign-extending first makes the signed pack exact).
inline void Split4(__m128i a, __m128i b, __m128i* low, __m128i* high) {
  *low = _mm_packs_epi32(_mm_srai_epi32(_mm_slli_epi32(a, 16), 16),
                         _mm_srai_epi32(_mm_slli_epi32(b, 16), 16));
  *high = _mm_packs_epi32(_mm_srai_epi32(a, 16), _mm_srai_epi32(b, 16));
}

size_t Group2(const uint8_t* src, size_t m, uint8_t* const* p) {
  size_t i = 0;
  for (; i + 16 <= m; i += 16) {
    __m128i e, o;
    Split2(Load(src + 2 * i), Load(src + 2 * i + 16), &e, &o);
    Store(p[0] + i, e);
    Store(p[1] + i, o);
  }
  return i;
}

size_t Group4(const uint8_t* src, size_t m, uint8_t* const* p) {
  size_t i = 0;
  for (; i + 16 <= m; i += 16) {
    const uint8_t* s = src + 4 * i;
    __m128i l0, h0, l1, h1, b0, b1, b2, b3;
    Split4(Load(s), Load(s + 16), &l0, &h0);       // elements 0-7
    Split4(Load(s + 32), Load(s + 48), &l1, &h1);  // elements 8-15
    Split2(l0, l1, &b0, &b1);
    Split2(h0, h1, &b2, &b3);
    Store(p[0] + i, b0);
    Store(p[1] + i, b1);
    Store(p[2] + i, b2);
    Store(p[3] + i, b3);
  }
  return i;
}

size_t Ungroup2(const uint8_t* const* p, size_t m, uint8_t* dst) {
  size_t i = 0;
  for (; i + 16 <= m; i += 16) {
    const __m128i a = Load(p[0] + i), b = Load(p[1] + i);
    Store(dst + 2 * i, _mm_unpacklo_epi8(a, b));
    Store(dst + 2 * i + 16, _mm_unpackhi_epi8(a, b));
  }
  return i;
}

size_t Ungroup4(const uint8_t* const* p, size_t m, uint8_t* dst) {
  size_t i = 0;
  for (; i + 16 <= m; i += 16) {
    const __m128i a = Load(p[0] + i), b = Load(p[1] + i), c = Load(p[2] + i), d = Load(p[3] + i);
    const __m128i ab0 = _mm_unpacklo_epi8(a, b), ab1 = _mm_unpackhi_epi8(a, b);
    const __m128i cd0 = _mm_unpacklo_epi8(c, d), cd1 = _mm_unpackhi_epi8(c, d);
    uint8_t* o = dst + 4 * i;
    Store(o, _mm_unpacklo_epi16(ab0, cd0));
    Store(o + 16, _mm_unpackhi_epi16(ab0, cd0));
    Store(o + 32, _mm_unpacklo_epi16(ab1, cd1));
    Store(o + 48, _mm_unpackhi_epi16(ab1, cd1));
  }
  return i;
}

size_t Ungroup8(const uint8_t* const* p, size_t m, uint8_t* dst) {
  size_t i = 0;
  for (; i + 16 <= m; i += 16) {
    __m128i x[8];
    for (int j = 0; j < 8; ++j) x[j] = Load(p[j] + i);
    __m128i y[8], z[8];
    for (int j = 0; j < 4; ++j) {  // bytes: (0,1) (2,3) (4,5) (6,7)
      y[2 * j] = _mm_unpacklo_epi8(x[2 * j], x[2 * j + 1]);
      y[2 * j + 1] = _mm_unpackhi_epi8(x[2 * j], x[2 * j + 1]);
    }
    for (int h = 0; h < 2; ++h) {  // 16-bit pairs: (01,23) (45,67)
      z[4 * h] = _mm_unpacklo_epi16(y[4 * h], y[4 * h + 2]);
      z[4 * h + 1] = _mm_unpackhi_epi16(y[4 * h], y[4 * h + 2]);
      z[4 * h + 2] = _mm_unpacklo_epi16(y[4 * h + 1], y[4 * h + 3]);
      z[4 * h + 3] = _mm_unpackhi_epi16(y[4 * h + 1], y[4 * h + 3]);
    }
    uint8_t* o = dst + 8 * i;
    for (int j = 0; j < 4; ++j) {  // 32-bit pairs: elements 4j .. 4j+3
      Store(o + 32 * j, _mm_unpacklo_epi32(z[j], z[4 + j]));
      Store(o + 32 * j + 16, _mm_unpackhi_epi32(z[j], z[4 + j]));
    }
  }
  return i;
}
#endif  // __SSE2__

template <size_t K>
void GroupK(const uint8_t* src, size_t m, uint8_t* const* p) {
  size_t done = 0;
#if defined(__SSE2__)
  if (K == 2) done = Group2(src, m, p);
  if (K == 4) done = Group4(src, m, p);
#endif
  uint8_t* q[K];
  for (size_t j = 0; j < K; ++j) q[j] = p[j] + done;
  GroupScalar<K>(src + done * K, m - done, q);
}

template <size_t K>
void UngroupK(const uint8_t* const* p, size_t m, uint8_t* dst) {
  size_t done = 0;
#if defined(__SSE2__)
  if (K == 2) done = Ungroup2(p, m, dst);
  if (K == 4) done = Ungroup4(p, m, dst);
  if (K == 8) done = Ungroup8(p, m, dst);
#endif
  const uint8_t* q[K];
  for (size_t j = 0; j < K; ++j) q[j] = p[j] + done;
  UngroupScalar<K>(q, m - done, dst + done * K);
}

bool Grouped(uint32_t elem_size) { return elem_size == 2 || elem_size == 4 || elem_size == 8; }

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
        if (k == 2) GroupK<2>(pos, m, cursor[2]);
        if (k == 4) GroupK<4>(pos, m, cursor[4]);
        if (k == 8) GroupK<8>(pos, m, cursor[8]);
      } else {
        if (k == 2) UngroupK<2>(cursor[2], m, pos);
        if (k == 4) UngroupK<4>(cursor[4], m, pos);
        if (k == 8) UngroupK<8>(cursor[8], m, pos);
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
  ZSTD_CCtx* cctx = ThreadHufCCtx();
  CheckZstd(ZSTD_CCtx_reset(cctx, ZSTD_reset_session_only), "ZSTD_CCtx_reset");
  const size_t r = ZSTD_compressSequences(cctx, dst, cap, seqs.data(), seqs.size(), src, n);
  CheckZstd(r, "ZSTD_compressSequences");
  return r;
}

size_t ZstdFrame(const uint8_t* src, size_t n, int level, bool checksum, uint8_t* dst, size_t cap) {
  ZSTD_CCtx* cctx = ThreadCCtx();
  CheckZstd(ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters), "ZSTD_CCtx_reset");
  CheckZstd(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level),
            "ZSTD_c_compressionLevel");
  CheckZstd(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, checksum ? 1 : 0),
            "ZSTD_c_checksumFlag");
  CheckZstd(ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1), "ZSTD_c_contentSizeFlag");
  const size_t r = ZSTD_compress2(cctx, dst, cap, src, n);
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

void Group(const uint8_t* src, size_t m, size_t k, uint8_t* const* planes) {
  switch (k) {
    case 2:
      GroupK<2>(src, m, planes);
      break;
    case 4:
      GroupK<4>(src, m, planes);
      break;
    case 8:
      GroupK<8>(src, m, planes);
      break;
    default:
      throw Error::InvalidArgument("byte grouping needs element size 2, 4 or 8");
  }
}

void Ungroup(const uint8_t* const* planes, size_t m, size_t k, uint8_t* dst) {
  switch (k) {
    case 2:
      UngroupK<2>(planes, m, dst);
      break;
    case 4:
      UngroupK<4>(planes, m, dst);
      break;
    case 8:
      UngroupK<8>(planes, m, dst);
      break;
    default:
      throw Error::InvalidArgument("byte grouping needs element size 2, 4 or 8");
  }
}

bool IsGroupedFrame(const void* p, size_t n) {
  return n >= 4 && GetU32(static_cast<const uint8_t*>(p)) == kGroupedFrameMagic;
}

uint32_t EncodeGroupedFrame(const uint8_t* src, size_t n, const std::vector<Segment>& segments,
                            int level, std::string* out, PlaneCoder coder, FrameStats* stats) {
  if (n > kMaxFrameDecompressedSize)
    throw Error::InvalidArgument("a byte-grouped frame holds at most 1 GiB");
  const Plan plan = PlanOf(segments);
  const size_t streams = plan.sizes.size();
  // Group into a frame-sized buffer of planes.
  std::vector<uint8_t>& planes = Scratch(0);
  if (planes.size() < n) planes.resize(n);
  std::vector<uint8_t*> starts(streams);
  uint64_t off = 0;
  for (size_t s = 0; s < streams; ++s) {
    starts[s] = planes.data() + off;
    off += plan.sizes[s];
  }
  if (off != n) throw Error::InvalidArgument("byte-grouped frame: segments do not cover the frame");
  Transpose(plan, segments, const_cast<uint8_t*>(src), starts, /*to_planes=*/true);
  size_t cap = kGroupedHeaderBytes + kStreamDescriptorBytes * streams + 4;
  for (uint64_t sz : plan.sizes) cap += ZSTD_compressBound(static_cast<size_t>(sz));
  out->resize(cap);
  auto* o = reinterpret_cast<uint8_t*>(out->data());
  PutU32(o, kGroupedFrameMagic);
  o[4] = kGroupedFrameVersion;
  o[5] = static_cast<uint8_t>(streams);
  PutU32(o + 6, static_cast<uint32_t>(n));
  size_t pos = kGroupedHeaderBytes + kStreamDescriptorBytes * streams;
  for (size_t s = 0; s < streams; ++s) {
    const size_t sz = static_cast<size_t>(plan.sizes[s]);
    const auto r = EncodeStream(starts[s], sz, level, coder, o + pos, cap - pos, stats);
    uint8_t* d = o + kGroupedHeaderBytes + kStreamDescriptorBytes * s;
    d[0] = r.first;
    PutU32(d + 1, static_cast<uint32_t>(r.second));
    pos += r.second;
  }
  const uint32_t sum = Checksum32(src, n);
  PutU32(o + pos, sum);
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
  if (GetU32(comp) != kGroupedFrameMagic) corrupt("bad magic");
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
  if (GetU32(comp + 6) != n) {
    corrupt("holds " + std::to_string(GetU32(comp + 6)) + " bytes but the seek table says " +
            std::to_string(n));
  }
  const uint64_t payload = kGroupedHeaderBytes + kStreamDescriptorBytes * streams;
  if (payload + 4 > comp_size) corrupt("its stream table runs past its end");
  uint64_t total = payload + 4;
  for (size_t s = 0; s < streams; ++s) {
    if (total > comp_size) break;
    total += GetU32(comp + kGroupedHeaderBytes + kStreamDescriptorBytes * s + 1);
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
    const uint32_t size = GetU32(d + 1);
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
  std::vector<uint8_t>& scratch = Scratch(1);
  if (scratch.size() < need) scratch.resize(static_cast<size_t>(need));
  std::vector<uint8_t*> starts(streams);
  uint64_t off = 0;
  for (size_t s = 0; s < streams; ++s) {
    const uint8_t* d = comp + kGroupedHeaderBytes + kStreamDescriptorBytes * s;
    if (d[0] == kStreamRaw) {
      starts[s] = const_cast<uint8_t*>(stored[s]);  // read in place, never written
      continue;
    }
    starts[s] = scratch.data() + off;
    const size_t want = static_cast<size_t>(plan.sizes[s]);
    const size_t r = ZSTD_decompressDCtx(ThreadDCtx(), starts[s], want, stored[s], GetU32(d + 1));
    if (ZSTD_isError(r)) corrupt("stream " + std::to_string(s) + ": " + ZSTD_getErrorName(r));
    if (r != want) corrupt("stream " + std::to_string(s) + " decompressed to the wrong size");
    off += want;
  }
  Transpose(plan, segments, dst, starts, /*to_planes=*/false);
  const uint32_t stored_sum = GetU32(comp + comp_size - 4);
  if (verify && Checksum32(dst, n) != stored_sum) corrupt("content checksum mismatch");
  return stored_sum;
}

uint32_t EncodeZstdFrame(const uint8_t* src, size_t n, int level, std::string* out) {
  out->resize(ZSTD_compressBound(n));
  const size_t r = ZstdFrame(src, n, level, /*checksum=*/true,
                             reinterpret_cast<uint8_t*>(out->data()), out->size());
  out->resize(r);
  return GetU32(reinterpret_cast<const uint8_t*>(out->data()) + r - 4);
}

uint32_t EncodeStoredFrame(const uint8_t* src, size_t n, std::string* out) {
  // Frame header: magic, descriptor 0xA4 (4-byte content size, single
  // segment, content checksum), content size; raw blocks of <= 128 KiB
  // (3-byte header: last flag, type 0, size); the checksum.
  const size_t blocks = n == 0 ? 1 : (n + ZSTD_BLOCKSIZE_MAX - 1) / ZSTD_BLOCKSIZE_MAX;
  out->resize(4 + 1 + 4 + 3 * blocks + n + 4);
  auto* o = reinterpret_cast<uint8_t*>(out->data());
  PutU32(o, 0xFD2FB528);
  o[4] = 0xA4;
  PutU32(o + 5, static_cast<uint32_t>(n));
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
  const uint32_t sum = Checksum32(src, n);
  PutU32(o + pos, sum);
  return sum;
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

namespace {

// kAuto's model: write speed measured after each save, compression speeds
// per thread measured on every frame it encodes (exponential averages).
struct AutoModel {
  std::mutex mu;
  double disk = 0;  // bytes/s; 0 until a save was measured
  double zstd = 0, grouped = 0;
  double forced_disk = 0;
  AutoEstimate last;
  AutoChoice last_choice = AutoChoice::kStore;
};
AutoModel& Model() {
  static AutoModel* m = new AutoModel();  // never destroyed: writer threads may outlive statics
  return *m;
}

void Blend(double* avg, double sample) {
  if (!(sample > 0) || !std::isfinite(sample)) return;
  *avg = *avg > 0 ? 0.8 * *avg + 0.2 * sample : sample;
}

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A sample of the frame for kAuto: up to 4 slices of 16 KiB, each cut at
// element boundaries of the frame's segments, kept with their segments.
struct Sample {
  std::vector<uint8_t> bytes;
  std::vector<Segment> segments;
};

Sample TakeSample(const uint8_t* src, size_t n, const std::vector<Segment>& segments) {
  Sample s;
  constexpr size_t kSlice = 16 << 10, kSlices = 4;
  if (n <= kSlice * kSlices) {
    s.bytes.assign(src, src + n);
    s.segments = segments;
    return s;
  }
  for (size_t i = 0; i < kSlices; ++i) {
    const size_t start = (n - kSlice) * i / (kSlices - 1) / 8 * 8;
    // Segments overlapping [start, start + kSlice), phase-aligned to elements.
    uint64_t pos = 0;
    for (const auto& seg : segments) {
      const uint64_t b = std::max<uint64_t>(pos, start),
                     e = std::min<uint64_t>(pos + seg.size, start + kSlice);
      if (b < e) {
        const uint32_t k = seg.elem_size;
        const uint64_t skip = (k - (b - pos) % k) % k;  // to the next element start
        if (b + skip < e) {
          s.bytes.insert(s.bytes.end(), src + b + skip, src + e);
          s.segments.push_back({e - b - skip, k});
        }
      }
      pos += seg.size;
      if (pos >= start + kSlice) break;
    }
  }
  return s;
}

}  // namespace

AutoChoice Decide(const AutoEstimate& e) {
  const double d = e.disk_bytes_per_s, t = std::max(1.0, e.threads);
  if (!(d > 0)) return AutoChoice::kStore;
  const double store = 1.0 / d;  // seconds per input byte
  auto cost = [&](double ratio, double speed) {
    if (!(speed > 0) || !(ratio > 0)) return static_cast<double>(INFINITY);
    return 1.0 / (t * speed) + 1.0 / (ratio * d);
  };
  AutoChoice best = AutoChoice::kStore;
  double best_ratio = 1.0;
  if (cost(e.zstd_ratio, e.zstd_bytes_per_s) <= store && e.zstd_ratio > best_ratio) {
    best = AutoChoice::kZstd;
    best_ratio = e.zstd_ratio;
  }
  if (cost(e.grouped_ratio, e.grouped_bytes_per_s) <= store && e.grouped_ratio > best_ratio) {
    best = AutoChoice::kGrouped;
  }
  return best;
}

void SetAutoDiskSpeedForTesting(double bytes_per_s) {
  std::lock_guard<std::mutex> lock(Model().mu);
  Model().forced_disk = bytes_per_s;
}

AutoEstimate LastAutoEstimateForTesting(AutoChoice* choice) {
  std::lock_guard<std::mutex> lock(Model().mu);
  if (choice) *choice = Model().last_choice;
  return Model().last;
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

uint32_t EncodeDataFrame(const VisitFn& visit, uint64_t offset, size_t n, const Layout& layout,
                         const WriteOptions& options, std::string* out) {
  // The frame's bytes in one piece: in place when the source holds them so
  // (most frames lie inside one tensor), else gathered.
  const uint8_t* src = nullptr;
  size_t pieces = 0;
  visit(offset, n, [&](const void* p, size_t) {
    if (pieces++ == 0) src = static_cast<const uint8_t*>(p);
  });
  if (pieces != 1) {
    std::vector<uint8_t>& gather = Scratch(2);
    if (gather.size() < n) gather.resize(n);
    size_t at = 0;
    visit(offset, n, [&](const void* p, size_t len) {
      std::memcpy(gather.data() + at, p, len);
      at += len;
    });
    src = gather.data();
  }
  const std::vector<Segment> segments = SegmentsOf(layout, offset, n);
  if (options.compression == Compression::kZstdByteGrouped)
    return EncodeByteGroupedDataFrame(src, n, segments, options.zstd_level, out);

  // kAuto: estimate both codecs on a sample of this frame; speeds from the
  // frames encoded so far (the sample's own timing the first time).
  AutoEstimate e;
  AutoModel& m = Model();
  {
    std::lock_guard<std::mutex> lock(m.mu);
    e.disk_bytes_per_s = m.forced_disk > 0 ? m.forced_disk : m.disk;
    e.zstd_bytes_per_s = m.zstd;
    e.grouped_bytes_per_s = m.grouped;
  }
  e.threads = ResolveThreads(options.writer_threads);
  AutoChoice choice = AutoChoice::kStore;
  if (e.disk_bytes_per_s > 0) {
    const Sample s = TakeSample(src, n, segments);
    std::string tmp;
    auto t0 = Clock::now();
    const size_t zs = ZSTD_compressBound(s.bytes.size());
    tmp.resize(zs);
    const size_t zr = ZstdFrame(s.bytes.data(), s.bytes.size(), options.zstd_level, true,
                                reinterpret_cast<uint8_t*>(tmp.data()), zs);
    const double zt = Since(t0);
    t0 = Clock::now();
    EncodeByteGroupedDataFrame(s.bytes.data(), s.bytes.size(), s.segments, options.zstd_level,
                               &tmp);
    const double gt = Since(t0);
    const double len = static_cast<double>(s.bytes.size());
    e.zstd_ratio = len / static_cast<double>(std::max<size_t>(zr, 1));
    e.grouped_ratio = len / static_cast<double>(std::max<size_t>(tmp.size(), 1));
    if (!(e.zstd_bytes_per_s > 0)) e.zstd_bytes_per_s = len / std::max(zt, 1e-9);
    if (!(e.grouped_bytes_per_s > 0)) e.grouped_bytes_per_s = len / std::max(gt, 1e-9);
    choice = Decide(e);
  }
  const auto t0 = Clock::now();
  uint32_t sum;
  switch (choice) {
    case AutoChoice::kStore:
      sum = EncodeStoredFrame(src, n, out);
      break;
    case AutoChoice::kZstd:
      sum = EncodeZstdFrame(src, n, options.zstd_level, out);
      break;
    default:
      sum = EncodeByteGroupedDataFrame(src, n, segments, options.zstd_level, out);
      break;
  }
  const double took = Since(t0);
  std::lock_guard<std::mutex> lock(m.mu);
  if (choice == AutoChoice::kZstd) Blend(&m.zstd, n / std::max(took, 1e-9));
  if (choice == AutoChoice::kGrouped) Blend(&m.grouped, n / std::max(took, 1e-9));
  m.last = e;
  m.last_choice = choice;
  return sum;
}

void RecordSave(const WriteOptions& options, uint64_t file_bytes, double write_seconds,
                double compress_seconds) {
  if (options.compression == Compression::kNone && !options.fsync) return;
  // Time not spent compressing (compress time is summed over threads) is
  // time spent writing and syncing: a lower bound on the device's speed.
  const double threads = ResolveThreads(options.writer_threads);
  const double io = write_seconds - compress_seconds / threads;
  if (file_bytes < (1u << 20) || !(io > 1e-4)) return;  // too small to tell
  std::lock_guard<std::mutex> lock(Model().mu);
  Blend(&Model().disk, static_cast<double>(file_bytes) / io);
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
