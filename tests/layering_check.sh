#!/usr/bin/env bash
# Checks the layer rule of docs/ARCHITECTURE.md ("Layers") on the sources: a file in src/<layer>/
# includes only headers of its own layer or of layers below it, and public
# headers of layers below (include/ackpt/<name>.h belongs to the layer named
# in PUBLIC_LAYER below). The link side of the same rule is enforced by the
# ackpt_layer_check_<layer> executables.
set -euo pipefail
cd "$(dirname "$0")/.."
LAYERS=(util io format engine checkpointer trainer)
rank() { local i; for i in "${!LAYERS[@]}"; do [ "${LAYERS[$i]}" = "$1" ] && echo "$i" && return; done; echo -1; }
# The layer that implements each public header.
declare -A PUBLIC_LAYER=(
  [export.h]=util [error.h]=util [state_dict.h]=util [env.h]=io [format.h]=format
  [engine.h]=engine [file_names.h]=checkpointer [retention.h]=checkpointer
  [checkpointer.h]=checkpointer [ackpt.h]=checkpointer [distributed.h]=checkpointer [async_writer.h]=checkpointer
  [consolidate.h]=checkpointer
)
fail=0
for layer in "${LAYERS[@]}"; do
  mine=$(rank "$layer")
  for f in src/"$layer"/*; do
    while IFS= read -r inc; do
      case "$inc" in
        ackpt/*)
          h=${inc#ackpt/}
          target=${PUBLIC_LAYER[$h]:-trainer}
          ;;
        */*) target=${inc%%/*} ;;
        *) continue ;;
      esac
      t=$(rank "$target")
      [ "$t" -lt 0 ] && continue
      if [ "$t" -gt "$mine" ]; then
        echo "layering: $f includes \"$inc\" ($target is above $layer)" >&2
        fail=1
      fi
    done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f")
  done
done
[ $fail -eq 0 ] && echo "layering: OK"
exit $fail
