// XXH3 compiled for AVX2, picked at run time by format/checksum.cc. The
// library is built for baseline x86-64, where XXH3 uses SSE2 and hashes
// ~19 GB/s on one core; AVX2 doubles that (~40 GB/s measured), which is what
// keeps a load's checksum pass from costing as much as the read itself. The
// digest is the same whichever vector unit computes it (XXH3's definition),
// and the state layout is shared, so a stream may mix both.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2")
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <immintrin.h>  // xxhash.h includes it only under -mavx2
#include <xxhash.h>

#include <cstddef>
#include <cstdint>

namespace ackpt {
namespace format {

bool Xxh3HaveAvx2() { return true; }
uint64_t Xxh3Avx2(const void* data, size_t n) { return XXH3_64bits(data, n); }
void Xxh3Avx2Update(void* state, const void* data, size_t n) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state), data, n);
}

}  // namespace format
}  // namespace ackpt
#else
#include <cstddef>
#include <cstdint>
namespace ackpt {
namespace format {
bool Xxh3HaveAvx2() { return false; }
uint64_t Xxh3Avx2(const void*, size_t) { return 0; }
void Xxh3Avx2Update(void*, const void*, size_t) {}
}  // namespace format
}  // namespace ackpt
#endif
