#!/usr/bin/env bash
# Installs the build in BUILD_DIR to a temporary prefix and builds and runs a
# consumer project against it with find_package(ackpt).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$BUILD_DIR" --prefix "$work/prefix" >/dev/null
# The installed package needs neither Asio nor xxHash (used inside the
# library only) nor any internal header.
if grep -rlE "asio|xxhash" "$work/prefix/include/ackpt" "$work/prefix/lib/cmake/ackpt"/ackptTargets*.cmake; then
  echo "check-install: the installed package refers to Asio or xxHash" >&2
  exit 1
fi
cmake -S tests/consumer -B "$work/consumer" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/consumer" -j"$(nproc)" >/dev/null
"$work/consumer/consumer" "$work"
echo "check-install: OK"
