#!/usr/bin/env bash
# Checks what a shared libackpt exports (built with -fvisibility=hidden):
# the public API, and none of the internals.
set -euo pipefail
lib=$1
syms=$(nm -DC --defined-only "$lib")
for want in "ackpt::DefaultCheckpointer::save" "ackpt::WriteStateDict" "ackpt::CheckpointReader::Open" \
            "ackpt::Error::Error" "ackpt::Env::Default" "ackpt::EvaluateRetention" \
            "ackpt::FlatTensorName"; do
  if ! grep -qF "$want" <<<"$syms"; then echo "visibility: $want is not exported" >&2; exit 1; fi
done
bad=$(grep -E "ackpt::(format|engine)::|ackpt::CheckpointDir|ackpt::DetachableEnv|ackpt::AtomicWrite|ackpt::TempFileName|asio::" <<<"$syms" || true)
if [ -n "$bad" ]; then
  echo "visibility: internal symbols are exported:" >&2
  head -20 <<<"$bad" >&2
  exit 1
fi
echo "visibility: OK ($(wc -l <<<"$syms") exported symbols)"
