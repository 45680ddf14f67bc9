#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` from the llama.cpp source that PyPI's llama-cpp-python
# source package vendors, and caches it under the git-ignored .build-llama/ folder, so a rerun
# does not rebuild. The remote-policy tests (Tests/RemotePolicyTests) start this binary as the
# real inference engine behind the gateway's llama.cpp backend.
#
#   scripts/build-llama-server.sh          # prints the binary's path on its last line
#
# Nothing is downloaded during the build (LLAMA_CURL off, no prebuilt web UI, no OpenSSL); llama.cpp's
# code and binaries never enter the repository. About 6 minutes on 2 cores the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36                      # llama-cpp-python release whose vendored llama.cpp we build
ROOT="$PWD/.build-llama"
SRC="$ROOT/src/llama_cpp_python-$VERSION"
BIN="$ROOT/bin/llama-server"
JOBS="${LLAMA_BUILD_JOBS:-2}"       # the machine is shared: two compile jobs at most

if [ -x "$BIN" ] && [ "$(cat "$ROOT/bin/VERSION" 2>/dev/null)" = "$VERSION" ]; then
  echo "$BIN"; exit 0
fi

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
for p in cmake g++ make; do command -v "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=(); for p in "${missing[@]}"; do case "$p" in g++) pkgs+=(g++);; *) pkgs+=("$p");; esac; done
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

mkdir -p "$ROOT/src" "$ROOT/bin"
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
  python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$ROOT/src" "llama-cpp-python==$VERSION"
  tar -xzf "$ROOT/src/llama_cpp_python-$VERSION.tar.gz" -C "$ROOT/src"
fi

cmake -S "$SRC/vendor/llama.cpp" -B "$ROOT/cmake" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON >"$ROOT/cmake-configure.log" 2>&1 \
  || { tail -40 "$ROOT/cmake-configure.log"; exit 1; }
echo "building llama-server (llama.cpp of llama-cpp-python $VERSION, -j $JOBS); log: $ROOT/cmake-build.log" >&2
cmake --build "$ROOT/cmake" --target llama-server -j "$JOBS" >"$ROOT/cmake-build.log" 2>&1 \
  || { tail -40 "$ROOT/cmake-build.log"; exit 1; }
cp "$ROOT/cmake/bin/llama-server" "$BIN"
echo "$VERSION" >"$ROOT/bin/VERSION"
echo "$BIN"
