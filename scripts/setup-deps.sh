#!/usr/bin/env bash
# Installs ackpt's build and test dependencies from Debian's packages.
# Idempotent: installs only what is missing, so it is cheap to call from every
# entry point (README commands, .ci/run).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config ccache
  libtorch-dev libasio-dev libzstd-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libxxhash-dev
  libcli11-dev libgloo-dev
  zstd python3-torch python3-numpy python3-xxhash python3-zstandard
  # the Python extension (python/, ACKPT_PYTHON)
  python3-dev pybind11-dev
  # fuzzing and the sanitizer builds (scripts/run-fuzz.sh)
  clang-14 libclang-rt-14-dev
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
