#!/usr/bin/env bash
# Installs every Debian 12 package Chorus needs to build, test and benchmark.
# Idempotent: when all packages are present it does nothing (no apt-get update).
# Also installs the browser tests' npm modules (`npm ci` in tests/browser) when they are missing.
# Servers (redis, mariadb, nats, nginx) are installed but never started here:
# tests and benchmarks start their own instances on loopback.
set -euo pipefail

PACKAGES=(
  # toolchain
  g++ cmake ninja-build ccache mold pkg-config make git
  # runtime core
  libboost1.81-dev libboost-system1.81-dev libboost-url1.81-dev libboost-json1.81-dev
  libssl-dev libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc
  libspdlog-dev libfmt-dev nlohmann-json3-dev libsimdjson-dev libyaml-cpp-dev libcli11-dev
  libxxhash-dev libzstd-dev liburing-dev
  # storage engines and clients
  librocksdb-dev libhiredis-dev libmariadb-dev libsqlite3-dev libnats-dev libevent-dev
  # compute: OCR worker
  libtesseract-dev tesseract-ocr-eng imagemagick fonts-dejavu-core
  # fuzzing (make fuzz): clang 14 and its libFuzzer runtime (libclang_rt.fuzzer-x86_64.a)
  clang libclang-rt-14-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  redis-server redis-tools nats-server mariadb-server wrk nginx-light curl
  # browser tests (tests/browser): Playwright drives Debian's chromium headless
  chromium
)
# Node.js for the browser tests: Debian's only when there is no node at all (a newer one from
# elsewhere is kept).
if ! command -v node >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi

# The browser tests' npm dependencies (playwright-core, pinned by package-lock.json).
install_browser_test_modules() {
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/browser"
  if [ ! -d "$dir/node_modules/playwright-core" ]; then
    echo "install-deps: npm ci in tests/browser" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  install_browser_test_modules
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Keep package post-install scripts from starting system services (redis, mariadb,
# nginx): tests start their own instances on free loopback ports.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  made_policy=1
fi
cleanup() { if [ "$made_policy" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

install_browser_test_modules
