// Byte transposition kernels (format/transpose.h).
#include "format/transpose.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <type_traits>

#include "ackpt/error.h"

namespace ackpt {
namespace format {
namespace codec {

namespace {

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

// Calls f(std::integral_constant<size_t, k>) for a grouped element size k.
template <typename F>
void WithElemSize(size_t k, F&& f) {
  switch (k) {
    case 2:
      return f(std::integral_constant<size_t, 2>());
    case 4:
      return f(std::integral_constant<size_t, 4>());
    case 8:
      return f(std::integral_constant<size_t, 8>());
    default:
      throw Error::InvalidArgument("byte grouping needs element size 2, 4 or 8");
  }
}

}  // namespace

void Group(const uint8_t* src, size_t m, size_t k, uint8_t* const* planes) {
  WithElemSize(k, [&](auto K) { GroupK<decltype(K)::value>(src, m, planes); });
}

void Ungroup(const uint8_t* const* planes, size_t m, size_t k, uint8_t* dst) {
  WithElemSize(k, [&](auto K) { UngroupK<decltype(K)::value>(planes, m, dst); });
}

}  // namespace codec
}  // namespace format
}  // namespace ackpt
