#!/usr/bin/env bash
# Runs on the GPU machine from the repo root, after scripts/device/pack-cuda.sh
# staged .device/. Steps: `tests` (op conformance and model logits against the
# CPU, GPU required), `harness` (kernel timings against the roofline),
# `bench` (tern bench on synthetic models of real shapes, made there).
# Logs go to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tern-out}
mkdir -p "$OUT"
export TERN_CACHE=$PWD/.device/cache RUST_BACKTRACE=1 PYTHONPATH=$PWD/.device/pylib
what=${1:-all}
rc=0
# The real SmolLM2 (98 MB) is over one run's transfer limit: stage it first
# with ../shared/device/stage-file.sh, whose last run leaves it in /tmp/staged.
if [ -f /tmp/staged/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
    ln -sf /tmp/staged/SmolLM2-135M-Instruct.Q4_1.gguf .device/cache/models/
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
if [ "$what" = tests ] || [ "$what" = all ]; then
    for t in .device/tests/*; do
        TERN_REQUIRE_GPU=1 "$t" --test-threads=1 --nocapture 2>&1 | tee -a "$OUT/tests.log" || rc=1
    done
fi
if [ "$what" = harness ] || [ "$what" = all ]; then
    .device/bin/cuda_harness 2>&1 | tee "$OUT/harness.log" || rc=1
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
    M=.device/cache/models
    gen() { [ -f "$M/$1.gguf" ] || python3 .device/make_synthetic.py --preset "$2" --type "$3" ${4:+--embd-type $4} --out "$M/$1.gguf" >/dev/null; }
    gen smollm2 smollm2-135m q4_1 q8_0
    gen mini05 minicpm4-0.5b q4_0
    gen mini8 minicpm4-8b q4_0
    B=".device/bin/tern bench --device cuda"
    for m in smollm2 mini05 mini8; do
        RUST_LOG=tern_runtime=info $B -m "$M/$m.gguf" -p 512 -n 128 -r 5 2>&1 | tee -a "$OUT/bench.md" || rc=1
    done
    if [ "${DEPTH:-1}" = 1 ]; then
        $B -m "$M/mini8.gguf" -p 0 -n 128 -r 2 -d 8192,32768 2>&1 | tee -a "$OUT/bench.md" || rc=1
    fi
fi
exit $rc
