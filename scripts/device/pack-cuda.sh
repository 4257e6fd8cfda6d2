#!/usr/bin/env bash
# Stage what one GPU run needs in .device/ (git-ignored; ships with
# `carry: [".device"]`, at most 64 MiB): the CUDA-enabled `tern` binary,
# the CUDA test executables and kernel harness (stripped), the tiny test
# models, make_synthetic.py with the gguf Python package, and
# scripts/device/run-gpu.sh's steps as .device/run.sh.
#
# Usage (from the repo root): scripts/device/pack-cuda.sh
# Then on the GPU machine: .device/run.sh [tests|bench|harness|all]
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${TERN_SHARED:-../shared}
CACHE=${TERN_CACHE:-$HOME/.cache/tern}
grep -qxF '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/bin .device/tests .device/cache/models/synthetic .device/pylib
cargo build --release --features cuda -p tern-tools --bin tern
cargo build --release --features cuda -p tern-runtime --example cuda_harness
cp target/release/tern target/release/examples/cuda_harness .device/bin/
cargo test --release --features cuda -p tern-runtime --test cuda_ops --test cuda_nvrtc --no-run \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])' | while read -r exe; do cp "$exe" .device/tests/; done
strip .device/bin/* .device/tests/*
cp "$CACHE"/models/synthetic/tiny-*.gguf .device/cache/models/synthetic/
cp "$SHARED/reference/make_synthetic.py" .device/
"$CACHE/venv/bin/pip" install -q --no-deps --target .device/pylib gguf==0.19.0
cp scripts/device/run-gpu.sh .device/run.sh
chmod +x .device/run.sh
du -sh .device
