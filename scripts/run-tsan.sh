#!/usr/bin/env bash
# Builds the concurrency tests with ThreadSanitizer and runs them.
# LibTorch itself is not instrumented; tests keep its intra-op pool at one
# thread so its (uninstrumented) OpenMP workers do not confuse TSan.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${ACKPT_TSAN_BUILD_DIR:-build-tsan}
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
# -O1 and line tables only (CMakeLists.txt): the build is most of this
# script's time in CI. The tests need neither the CLI nor the examples.
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -DNDEBUG" \
  -DACKPT_SANITIZE=thread "${launcher[@]}" \
  -DACKPT_BUILD_BENCHMARKS=OFF -DACKPT_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target checkpointer_test env_test engine_test peer_transfer_test tiers_test incremental_test
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
export OMP_NUM_THREADS=1
for t in engine_test checkpointer_test env_test peer_transfer_test tiers_test incremental_test; do
  echo "== TSan: $t"
  "$BUILD_DIR/tests/$t" --gtest_brief=1
done
echo "run-tsan: OK"
