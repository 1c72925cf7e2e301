# Sourced by run-asan.sh and run-fuzz.sh: one clang-14 build with
# AddressSanitizer + UndefinedBehaviorSanitizer (and libFuzzer's coverage
# instrumentation) serves both, so CI compiles the library once for them.
# Sets SAN_BUILD and configures it.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAN_BUILD="${ACKPT_SAN_BUILD_DIR:-$root/build-sanitize}"
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
# -O1 (what the ASan and libFuzzer docs suggest) and line tables only
# (CMakeLists.txt): this build is a large part of CI's time.
cmake -S "$root" -B "$SAN_BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -DNDEBUG" \
  -DCMAKE_CXX_COMPILER=clang++-14 "${launcher[@]}" \
  -DACKPT_SANITIZE=address,undefined \
  "-DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined -fno-sanitize=vptr" \
  -DACKPT_BUILD_FUZZERS=ON -DACKPT_BUILD_TESTS=ON -DACKPT_BUILD_BENCHMARKS=OFF \
  -DACKPT_BUILD_EXAMPLES=OFF -DACKPT_BUILD_TOOLS=ON >/dev/null
# LibTorch's static initialisers leak by design, and an engine abandoned at
# shutdown (a write stuck in the kernel) deliberately leaks its state rather
# than hang. Asio's recycling allocator frees aligned_alloc'ed blocks with
# operator delete, which ASan reports as a mismatch in Asio's own header.
export ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:allocator_may_return_null=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
