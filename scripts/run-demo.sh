#!/usr/bin/env bash
# Builds ackpt and runs the training demo on a fresh Debian 12 machine: a small
# character-level transformer trained on /usr/share/common-licenses for about
# a minute, checkpointed asynchronously every 20 steps, then a summary.
# Arguments go to the demo (see --help), e.g. --sync, --resume, --steps 500.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-deps.sh
BUILD_DIR=${ACKPT_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target ackpt_demo ackpt_example_save_load ackpt_cli
"$BUILD_DIR"/examples/ackpt_demo "$@"
