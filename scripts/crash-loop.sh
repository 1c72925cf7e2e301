#!/usr/bin/env bash
# Crash loop: runs the demo trainer (examples/train_demo.cc) and kill -9s it
# N times at random moments while a checkpoint is being written, resuming
# each time. After every kill, `ackpt verify` must pass on every checkpoint in
# the directory, and the next run must resume from the newest checkpoint that
# was complete at the kill (or a newer one), never an older or partial one.
#
#   scripts/crash-loop.sh 100      # what the README documents
#   scripts/crash-loop.sh 5        # CI
#
# Needs a build with examples and tools (ACKPT_BUILD_DIR, default build/).
# Env: ACKPT_CRASH_SEED (random seed), ACKPT_CRASH_DIR (keep the checkpoints
# there instead of a temp dir), ACKPT_CRASH_COMPRESSION (zstd|none, default
# alternating per run), ACKPT_CRASH_DEMO_ARGS (more demo flags, e.g.
# "--freeze-embeddings --incremental" to kill during incremental saves).
set -euo pipefail

n="${1:?usage: scripts/crash-loop.sh N}"
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${ACKPT_BUILD_DIR:-$root/build}"
demo="$build/examples/ackpt_demo"
cli="$build/tools/ackpt"
for b in "$demo" "$cli"; do
  [[ -x "$b" ]] || { echo "crash-loop: $b not built (cmake --build $build)" >&2; exit 2; }
done
RANDOM="${ACKPT_CRASH_SEED:-$$}"
dir="${ACKPT_CRASH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/ackpt-crash-XXXXXX")}"
log="$(mktemp "${TMPDIR:-/tmp}/ackpt-crash-log-XXXXXX")"
cleanup() {
  [[ -n "${pid:-}" ]] && kill -9 "$pid" 2>/dev/null || true
  rm -f "$log"
  [[ -z "${ACKPT_CRASH_DIR:-}" ]] && rm -rf "$dir"
}
trap cleanup EXIT

# Newest complete checkpoint index in $dir (-1 if none).
newest() {
  local best=-1 f i
  for f in "$dir"/model_*.safetensors "$dir"/model_*.safetensors.zst; do
    [[ -e "$f" ]] || continue
    i="${f##*/model_}"; i="${i%%.*}"
    [[ "$i" =~ ^[0-9]+$ ]] && (( i > best )) && best=$i
  done
  echo "$best"
}

in_flight() { compgen -G "$dir/.model_[0-9]*.tmp-*" >/dev/null; }

fails=0
start=$SECONDS
for ((k = 1; k <= n; ++k)); do
  compression="${ACKPT_CRASH_COMPRESSION:-$([[ $((k % 2)) == 0 ]] && echo none || echo zstd)}"
  args=(--model-size tiny --steps 100000 --checkpoint-every 3 --keep-last 4 --threads 1
        --writer-threads 1 --compression "$compression" --save-dir "$dir" --seed 7)
  # shellcheck disable=SC2206  # word splitting of the extra flags is wanted
  args+=(${ACKPT_CRASH_DEMO_ARGS:-})
  (( k > 1 )) && args+=(--resume)
  before="$(newest)"
  "$demo" "${args[@]}" >"$log" 2>&1 &
  pid=$!
  # Let this run complete a checkpoint of its own, then wait until the next
  # one is being written and kill at a random moment inside the write
  # (0-150 ms later; a write takes ~150 ms here). Give up after 60 s.
  deadline=$((SECONDS + 60))
  alive_or_die() {
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "crash-loop: run $k: the demo exited by itself:" >&2; tail -n 20 "$log" >&2; exit 1
    fi
    (( SECONDS < deadline )) || { echo "crash-loop: run $k: no save in 60 s" >&2; exit 1; }
  }
  until (( $(newest) > before )); do alive_or_die; sleep 0.01; done
  until in_flight; do alive_or_die; sleep 0.002; done
  sleep "0.$(printf '%03d' $((RANDOM % 150)))"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=

  # Resumed from at least the newest checkpoint complete before this run.
  if (( k > 1 )); then
    resumed="$(sed -n 's/.*resuming from checkpoint index \(-\{0,1\}[0-9]*\).*/\1/p' "$log" | head -n 1)"
    if (( before >= 0 )) && [[ -z "$resumed" || "$resumed" -lt "$before" ]]; then
      echo "crash-loop: run $k resumed from '${resumed}', but checkpoint $before was complete" >&2
      tail -n 20 "$log" >&2
      fails=$((fails + 1))
    fi
  fi
  # Every checkpoint (temp files excluded) is intact.
  files=()
  for f in "$dir"/model_*.safetensors "$dir"/model_*.safetensors.zst; do
    [[ -e "$f" ]] && files+=("$f")
  done
  if (( ${#files[@]} > 0 )) && ! "$cli" verify --quiet "${files[@]}" >"$log.verify" 2>&1; then
    echo "crash-loop: run $k: ackpt verify failed after kill -9:" >&2
    cat "$log.verify" >&2
    fails=$((fails + 1))
  fi
  rm -f "$log.verify"
  printf 'crash-loop: %d/%d killed during a %s save; newest intact checkpoint %s; %d files verified\n' \
    "$k" "$n" "$compression" "$(newest)" "${#files[@]}"
done
echo "crash-loop: $n kill -9s, $fails failures, $((SECONDS - start)) s"
(( fails == 0 ))
