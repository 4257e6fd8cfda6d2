#!/usr/bin/env bash
# Build the llama.cpp peer (CPU, Release) from the llama-cpp-python==0.3.36
# sdist's vendor/llama.cpp, for side-by-side checks and benchmarks. The
# source and the build live in the cache, outside the repository; nothing
# from them is ever committed.
#
#   scripts/peer/build-llama-cpp.sh            # build (idempotent), print the bin dir
#   TERN_CACHE=/path scripts/peer/build-llama-cpp.sh
#
# Targets: llama-tokenize, llama-perplexity, llama-bench, llama-quantize,
# llama-imatrix, llama-completion. Needs gcc/g++ (present) and cmake (pip wheel).
set -euo pipefail
VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CACHE=${TERN_CACHE:-$HOME/.cache/tern}
PEER=$CACHE/peer
SRC=$PEER/llama_cpp_python-$VERSION/vendor/llama.cpp
BUILD=$PEER/llama.cpp-build
TARGETS=(llama-tokenize llama-perplexity llama-bench llama-quantize llama-imatrix llama-completion)

die() { echo "error: $*" >&2; exit 1; }
log() { echo "build-llama-cpp: $*" >&2; }

mkdir -p "$PEER"
if [[ ! -f $SRC/CMakeLists.txt ]]; then
    tgz=$PEER/llama_cpp_python-$VERSION.tar.gz
    if [[ ! -f $tgz ]] || ! echo "$SDIST_SHA256  $tgz" | sha256sum -c --quiet - 2>/dev/null; then
        log "downloading the llama-cpp-python==$VERSION sdist from PyPI"
        tmp=$(mktemp -d "$PEER/dl.XXXXXX")
        python3 -m pip download -q --no-deps --no-binary=llama-cpp-python \
            "llama-cpp-python==$VERSION" -d "$tmp" || die "pip download of llama-cpp-python==$VERSION failed (network or pip missing?)"
        mv "$tmp/llama_cpp_python-$VERSION.tar.gz" "$tgz.part"
        rm -rf "$tmp"
        echo "$SDIST_SHA256  $tgz.part" | sha256sum -c --quiet - || die "sdist sha256 mismatch"
        mv "$tgz.part" "$tgz"
    fi
    log "unpacking"
    tar -xzf "$tgz" -C "$PEER"
fi

CMAKE=$(command -v cmake || true)
if [[ -z $CMAKE ]]; then
    venv=$PEER/cmake-venv
    if [[ ! -x $venv/bin/cmake ]]; then
        log "installing cmake from PyPI into $venv"
        python3 -m venv "$venv" && "$venv/bin/pip" install -q "cmake==4.4.5" || die "could not install cmake"
    fi
    CMAKE=$venv/bin/cmake
fi

stamp=$BUILD/.built-$VERSION
if [[ ! -f $stamp ]]; then
    log "configuring (CPU, Release, native) in $BUILD"
    "$CMAKE" -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
        -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >"$PEER/cmake-configure.log" 2>&1 \
        || die "cmake configure failed; see $PEER/cmake-configure.log"
    log "building ${TARGETS[*]} (several minutes on 2 cores)"
    "$CMAKE" --build "$BUILD" -j"$(nproc)" --target "${TARGETS[@]}" >"$PEER/cmake-build.log" 2>&1 \
        || die "build failed; see $PEER/cmake-build.log"
    touch "$stamp"
fi
echo "$BUILD/bin"
