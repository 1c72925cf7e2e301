#!/usr/bin/env bash
# Builds ackpt's libFuzzer targets (fuzz/) with clang++-14, ASan and UBSan in
# their own build directory and runs each for SECONDS_PER_TARGET seconds,
# starting from the committed seed corpus (fuzz/corpus/<target>).
#
#   scripts/run-fuzz.sh 10          # CI: 4 targets x 10 s
#   scripts/run-fuzz.sh 3600        # an hour per target
#
# New inputs that raise coverage go to build-sanitize/corpus/<target> (not
# committed); a crash leaves build-sanitize/crash-* and fails the script. Turn each
# crash into a regression test in tests/hostile_input_test.cc.
# Env: ACKPT_SAN_BUILD_DIR (default build-sanitize, shared with run-asan.sh),
# ACKPT_FUZZ_JOBS (build -j, 2).
set -euo pipefail

seconds="${1:?usage: scripts/run-fuzz.sh SECONDS_PER_TARGET}"
root="$(cd "$(dirname "$0")/.." && pwd)"
jobs="${ACKPT_FUZZ_JOBS:-2}"
targets=(fuzz_header fuzz_seek_table fuzz_tree fuzz_reader)

source "$root/scripts/sanitize-config.sh"
build="$SAN_BUILD"
cmake --build "$build" -j"$jobs" --target "${targets[@]}"

status=0
for t in "${targets[@]}"; do
  seeds="$root/fuzz/corpus/${t#fuzz_}"
  work="$build/corpus/$t"
  mkdir -p "$work"
  echo "== $t: ${seconds}s"
  # pipefail (set above) makes the pipeline fail when the fuzzer does.
  if ! (cd "$build" && "$build/fuzz/$t" -max_total_time="$seconds" -timeout=10 \
          -rss_limit_mb=3072 -max_len=65536 -print_final_stats=1 \
          "$work" "$seeds" 2>&1 | tail -n 12); then
    status=1
  fi
done
exit $status
