#!/usr/bin/env bash
# Builds the lifetime, hostile-input and power-cut tests with AddressSanitizer
# and UndefinedBehaviorSanitizer (clang 14; the build is shared with
# run-fuzz.sh) and runs them. LibTorch itself is not instrumented.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/sanitize-config.sh
TESTS=(dir_ownership_test hostile_input_test format_compat_test ${ACKPT_ASAN_EXTRA_TESTS:-})
cmake --build "$SAN_BUILD" -j"$(nproc)" --target "${TESTS[@]}"
export OMP_NUM_THREADS=1
for t in "${TESTS[@]}"; do
  echo "== ASan+UBSan: $t"
  "$SAN_BUILD/tests/$t" --gtest_brief=1
done
echo "run-asan: OK"
