// The format's checksums (format/checksum.h).
#define XXH_INLINE_ALL
#include "format/checksum.h"

#include <xxhash.h>

#include "ackpt/error.h"

namespace ackpt {
namespace format {

// format/checksum_avx2.cc: XXH3 built for AVX2 (twice the SSE2 speed).
bool Xxh3HaveAvx2();
uint64_t Xxh3Avx2(const void* data, size_t n);
void Xxh3Avx2Update(void* state, const void* data, size_t n);

namespace {
bool UseAvx2() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  static const bool kUse = Xxh3HaveAvx2() && __builtin_cpu_supports("avx2");
  return kUse;
#else
  return false;
#endif
}
}  // namespace

uint64_t Xxh3(const void* data, size_t n) {
  return UseAvx2() ? Xxh3Avx2(data, n) : XXH3_64bits(data, n);
}

std::string Hex64(uint64_t v) {
  static const char* kDigits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i) {
    s[static_cast<size_t>(i)] = kDigits[v & 0xf];
    v >>= 4;
  }
  return s;
}

uint32_t FrameChecksum32(const void* data, size_t n) {
  return static_cast<uint32_t>(XXH64(data, n, 0) & 0xffffffffu);
}

Xxh3Stream::Xxh3Stream() : state_(XXH3_createState()) {
  if (state_ == nullptr) throw Error(Error::Code::kIOError, "XXH3_createState: out of memory");
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}
Xxh3Stream::~Xxh3Stream() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void Xxh3Stream::Update(const void* data, size_t n) {
  if (UseAvx2()) {
    Xxh3Avx2Update(state_, data, n);
  } else {
    XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data, n);
  }
}
uint64_t Xxh3Stream::Digest() const {
  return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_));
}

}  // namespace format
}  // namespace ackpt
