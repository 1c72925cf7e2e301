#!/usr/bin/env bash
# Builds ackpt and runs its whole test suite on a fresh Debian 12 machine:
# dependencies, the unit/integration tests (ctest), the find_package(ackpt)
# install check, the ThreadSanitizer run of the concurrency tests, the
# AddressSanitizer/UBSan run of the lifetime and hostile-input tests, a short
# fuzzing run of every libFuzzer target and a short kill -9 crash loop.
# Longer runs: scripts/run-fuzz.sh 3600, scripts/crash-loop.sh 100.
set -euo pipefail
cd "$(dirname "$0")/.."
# phase NAME CMD...: runs CMD and reports how long it took (CI must stay
# under 30 minutes on 2 cores; these lines show where the time goes).
phase() {
  local name=$1 t0=$SECONDS
  shift
  "$@"
  echo "run-tests: phase '$name' took $((SECONDS - t0)) s (total $SECONDS s)"
}
phase setup-deps scripts/setup-deps.sh
BUILD_DIR=${ACKPT_BUILD_DIR:-build}
JOBS=$(nproc)
LAUNCHER=()
if command -v ccache >/dev/null; then LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
# Let ccache hit across checkouts in other folders (CI clones afresh).
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "${LAUNCHER[@]}"
phase build cmake --build "$BUILD_DIR" -j"$JOBS"
phase check-install scripts/check-install.sh "$BUILD_DIR"
phase tsan scripts/run-tsan.sh
phase asan scripts/run-asan.sh
phase fuzz scripts/run-fuzz.sh "${ACKPT_FUZZ_SECONDS:-10}"
phase crash-loop scripts/crash-loop.sh "${ACKPT_CRASH_LOOPS:-3}"
cd "$BUILD_DIR"
phase ctest ctest -j"$JOBS" --output-on-failure
