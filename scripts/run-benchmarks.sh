#!/usr/bin/env bash
# Runs ackpt's whole benchmark set side by side with the baselines and writes
# docs/BENCHMARKS.md plus PNG plots in docs/bench/ (rendered from the JSON
# results by bench/report.py with Debian's python3-matplotlib).
#
#   scripts/run-benchmarks.sh [--quick] [--no-build]
#
# Environment:
#   ACKPT_BUILD_DIR      build directory (default: build), configured Release
#   ACKPT_BENCH_RESULTS  where the JSON results go (default: $ACKPT_BUILD_DIR/bench-results)
#   ACKPT_BENCH_DIR      scratch directory for the files the benchmarks write;
#                        it is the disk being measured (default: /tmp/ackpt-bench)
#   ACKPT_BENCH_DOCS     where BENCHMARKS.md, bench/*.png and bench/results/ (the
#                        JSON and tables behind them) go (default: docs)
# --quick runs every benchmark at smoke size (a minute or two) to check the
# pipeline; its report says so. The full run takes about 17 minutes on 2 cores.
# bench/README.md lists the drivers; stall, throughput, compression and micro
# run on Google Benchmark (JSON through --benchmark_out).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
BUILD=1
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done

BUILD_DIR=${ACKPT_BUILD_DIR:-build}
RESULTS=${ACKPT_BENCH_RESULTS:-$BUILD_DIR/bench-results}
WORK=${ACKPT_BENCH_DIR:-/tmp/ackpt-bench}
DOCS=${ACKPT_BENCH_DOCS:-docs}
PY=/usr/bin/python3

# Dependencies: the build's (idempotent) and matplotlib for the plots.
if [ -x scripts/setup-deps.sh ]; then scripts/setup-deps.sh; fi
if ! "$PY" -c 'import matplotlib' >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "run-benchmarks: installing python3-matplotlib"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends python3-matplotlib >/dev/null ||
    { $SUDO apt-get update -qq && $SUDO apt-get install -y --no-install-recommends python3-matplotlib >/dev/null; }
fi

T_START=$(date +%s)
if [ "$BUILD" = 1 ]; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
  TARGETS=(ackpt_bench_stall ackpt_bench_overhead ackpt_bench_throughput ackpt_bench_compression
           ackpt_bench_memory ackpt_bench_micro ackpt_bench_load ackpt_bench_codec ackpt_bench_ring
           ackpt_bench_retention ackpt_bench_distributed ackpt_bench_incremental)
  # The demo model (trainer layer) is measured too when it builds.
  if grep -q "ackpt_demo" examples/CMakeLists.txt 2>/dev/null; then TARGETS+=(ackpt_demo); fi
  for t in "${TARGETS[@]}"; do
    if ! cmake --build "$BUILD_DIR" -j"$(nproc)" --target "$t" >"$BUILD_DIR/bench-build-$t.log" 2>&1; then
      echo "run-benchmarks: building $t failed (see $BUILD_DIR/bench-build-$t.log)" >&2
      [ "$t" = ackpt_demo ] || exit 1
    fi
  done
fi
T_BUILT=$(date +%s)

B="$BUILD_DIR/bench"
rm -rf "$RESULTS"
mkdir -p "$RESULTS" "$WORK"
"$PY" bench/report.py --collect-machine "$RESULTS/machine.json" --scratch "$WORK" --build-dir "$BUILD_DIR"

declare -A PHASE_SECONDS
FAILED=()
run() {  # run NAME CMD...: runs one benchmark, tees its table, times it
  local name=$1
  shift
  echo
  echo "=== $name: $*"
  local t0 ms
  t0=$(date +%s%N)
  if ! "$@" 2>&1 | tee "$RESULTS/$name.txt"; then
    echo "run-benchmarks: $name FAILED" >&2
    FAILED+=("$name")
  fi
  ms=$((($(date +%s%N) - t0) / 1000000))
  PHASE_SECONDS[$name]=$(awk "BEGIN { printf \"%.1f\", $ms / 1000 }")
}

if [ "$QUICK" = 1 ]; then
  Q=(--quick)
  MICRO=(--benchmark_min_time=0.01)
else
  Q=()
  MICRO=(--benchmark_min_time=0.2 --benchmark_repetitions=3 --benchmark_report_aggregates_only=true)
fi
DEMO=()
if [ -x "$BUILD_DIR/examples/ackpt_demo" ]; then DEMO=(--demo "$BUILD_DIR/examples/ackpt_demo"); fi

# gbench NAME: the Google Benchmark drivers' JSON output arguments.
gbench() { echo "--benchmark_out=$RESULTS/$1.json" --benchmark_out_format=json; }
# The codec benchmark also measures the demo model's own checkpoint (240 steps,
# uncompressed) when the demo is built.
CODEC_DEMO=()
if [ -x "$BUILD_DIR/examples/ackpt_demo" ]; then
  DEMO_STEPS=240
  if [ "$QUICK" = 1 ]; then DEMO_STEPS=10; fi
  if "$BUILD_DIR/examples/ackpt_demo" --model-size small --steps "$DEMO_STEPS" --checkpoint-every "$DEMO_STEPS" \
       --compression none --save-dir "$WORK/demo" >"$RESULTS/demo-for-codec.log" 2>&1; then
    CODEC_DEMO=(--demo "$WORK/demo/model_$DEMO_STEPS.safetensors")
  else
    echo "run-benchmarks: the demo run for the codec benchmark failed (see $RESULTS/demo-for-codec.log)" >&2
  fi
fi

run micro "$B/ackpt_bench_micro" "${MICRO[@]}" --benchmark_out="$RESULTS/micro.json" --benchmark_out_format=json
run stall "$B/ackpt_bench_stall" "${Q[@]}" --dir "$WORK/stall" $(gbench stall)
run throughput "$B/ackpt_bench_throughput" "${Q[@]}" --dir "$WORK/throughput" $(gbench throughput)
run overhead "$B/ackpt_bench_overhead" "${Q[@]}" \
  "${DEMO[@]}" --dir "$WORK/overhead" --json "$RESULTS/overhead.json"
run compression "$B/ackpt_bench_compression" "${Q[@]}" --dir "$WORK/compression" $(gbench compression)
run codec "$B/ackpt_bench_codec" "${Q[@]}" "${CODEC_DEMO[@]}" --json "$RESULTS/codec.json"
run memory "$B/ackpt_bench_memory" "${Q[@]}" --dir "$WORK/memory" --json "$RESULTS/memory.json"
run ring "$B/ackpt_bench_ring" "${Q[@]}" --dir "$WORK/ring" --json "$RESULTS/ring.json"
run retention "$B/ackpt_bench_retention" "${Q[@]}" --dir "$WORK/retention" --json "$RESULTS/retention.json"
run distributed "$B/ackpt_bench_distributed" "${Q[@]}" --dir "$WORK/distributed" --json "$RESULTS/distributed.json"
run load "$B/ackpt_bench_load" "${Q[@]}" --dir "$WORK/load" --json "$RESULTS/load.json"
run incremental "$B/ackpt_bench_incremental" "${Q[@]}" --dir "$WORK/incremental" --json "$RESULTS/incremental.json"
T_RAN=$(date +%s)

{
  echo "{"
  echo "  \"quick\": $([ "$QUICK" = 1 ] && echo true || echo false),"
  echo "  \"build_seconds\": $((T_BUILT - T_START)),"
  echo "  \"run_seconds\": $((T_RAN - T_BUILT)),"
  echo "  \"phases\": {"
  first=1
  for k in micro stall throughput overhead compression codec memory ring retention distributed load incremental; do
    [ $first = 1 ] || echo ","
    first=0
    printf '    "%s": %s' "$k" "${PHASE_SECONDS[$k]:-0}"
  done
  echo
  echo "  }"
  echo "}"
} >"$RESULTS/run.json"

mkdir -p "$DOCS/bench/results"
"$PY" bench/report.py --results "$RESULTS" --out "$DOCS/BENCHMARKS.md" --plots "$DOCS/bench"
# The raw results behind the report, next to its plots.
rm -f "$DOCS"/bench/results/*.json "$DOCS"/bench/results/*.txt
cp "$RESULTS"/*.json "$RESULTS"/*.txt "$DOCS/bench/results/"
rm -rf "$WORK"
echo
echo "run-benchmarks: build $((T_BUILT - T_START)) s, benchmarks $((T_RAN - T_BUILT)) s;" \
  "wrote $DOCS/BENCHMARKS.md and $DOCS/bench/*.png (results in $RESULTS)"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "run-benchmarks: failed: ${FAILED[*]}" >&2
  exit 1
fi
