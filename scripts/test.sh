#!/usr/bin/env bash
# The test command: fetch (or verify) the cached test data, then run every
# test in the workspace. Rust tests never start Python; the fetch step is
# the only place Python runs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-test-data.sh
cargo test --workspace "$@"
# The CUDA kernels compile through NVRTC for every target GPU (no GPU
# needed); the GPU-only tests skip here and run on the GPU machine with
# TERN_REQUIRE_GPU=1 (scripts/device/).
NVRTC_LIB="${TERN_CACHE:-$HOME/.cache/tern}/nvrtc/nvidia/cuda_nvrtc/lib"
if [[ -d "$NVRTC_LIB" ]]; then
    LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" TERN_REQUIRE_NVRTC=1 \
        cargo test -p tern-runtime --features cuda --test cuda_nvrtc "$@"
else
    echo "NVRTC not fetched for this platform: CUDA kernel compile check skipped" >&2
fi
