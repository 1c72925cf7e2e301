#!/usr/bin/env bash
# Builds ackpt and runs its whole test suite on a fresh Debian 12 machine:
# dependencies, the unit/integration tests (ctest), the find_package(ackpt)
# install check and the ThreadSanitizer run of the concurrency tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-deps.sh
BUILD_DIR=${ACKPT_BUILD_DIR:-build}
JOBS=$(nproc)
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j"$JOBS"
scripts/check-install.sh "$BUILD_DIR"
if [ -x scripts/run-tsan.sh ]; then scripts/run-tsan.sh; fi
cd "$BUILD_DIR"
ctest -j"$JOBS" --output-on-failure
