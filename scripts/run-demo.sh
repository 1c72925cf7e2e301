#!/usr/bin/env bash
# Builds ackpt and runs the demo on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-deps.sh
BUILD_DIR=${ACKPT_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target ackpt_example_save_load ackpt_cli
"$BUILD_DIR"/examples/ackpt_example_save_load "$@"
