#!/usr/bin/env bash
# Side-by-side CPU throughput and peak memory: tern vs llama.cpp's llama-bench.
#
# Builds tern's cpu_bench example in release, makes sure llama.cpp is built
# (scripts/peer/build-llama-cpp.sh, idempotent) and the MiniCPM4-0.5B-shaped
# synthetic Q4_0 model exists, then for each model and thread count runs
# llama-bench and tern interleaved (peer, tern, peer, tern, ... ROUNDS times)
# with `-p 512 -n 128 -r 3 -t T` under /usr/bin/time -v, and prints per-run
# tokens/s, the ratios tern / llama.cpp for pp512 and tg128 (medians over
# rounds) and the peak RSS of each.
#
# Usage: scripts/peer/compare-cpu.sh [ROUNDS (default 2)] [THREADS... (default 1 2)]
# Env: TERN_CACHE (default ~/.cache/tern).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-2}
[ $# -gt 0 ] && shift
THREADS=(1 2)
[ $# -gt 0 ] && THREADS=("$@")
CACHE=${TERN_CACHE:-$HOME/.cache/tern}
PY=$CACHE/venv/bin/python
SMOL=$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
MINI=$CACHE/models/synthetic/minicpm4-0.5b.q4_0.gguf

BIN=$(scripts/peer/build-llama-cpp.sh 2>/dev/null | tail -1)
[ -x "$BIN/llama-bench" ] || BIN=$CACHE/peer/llama.cpp-build/bin
LB=$BIN/llama-bench
cargo build --release -q -p tern-runtime --example cpu_bench
TB=target/release/examples/cpu_bench
if [ ! -f "$MINI" ]; then
    mkdir -p "$(dirname "$MINI")"
    "$PY" ../shared/reference/make_synthetic.py --preset minicpm4-0.5b --type q4_0 --out "$MINI"
fi

OUT=$(mktemp -d)
# run NAME CMD... : record t/s of pp512 and tg128 and the peak RSS (KiB).
run() {
    local tag=$1; shift
    /usr/bin/time -v "$@" >"$OUT/stdout" 2>"$OUT/time" || { cat "$OUT/stdout" "$OUT/time"; exit 1; }
    local pp tg rss
    pp=$(grep -E '\| *pp512 *\|' "$OUT/stdout" | awk -F'|' '{print $(NF-1)}' | awk '{print $1}')
    tg=$(grep -E '\| *tg128 *\|' "$OUT/stdout" | awk -F'|' '{print $(NF-1)}' | awk '{print $1}')
    rss=$(grep 'Maximum resident set size' "$OUT/time" | awk '{print $NF}')
    echo "$tag $pp $tg $rss" >>"$OUT/results"
    printf '%-40s pp512 %8s t/s  tg128 %8s t/s  peak RSS %6d MiB\n' "$tag" "$pp" "$tg" $((rss / 1024))
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for model in "$SMOL" "$MINI"; do
    m=$(basename "$model" .gguf)
    for t in "${THREADS[@]}"; do
        for r in $(seq "$ROUNDS"); do
            run "llama.cpp/$m/t$t" "$LB" -m "$model" -p 512 -n 128 -r 3 -t "$t"
            run "tern/$m/t$t" "$TB" "$model" -p 512 -n 128 -r 3 -t "$t"
        done
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo
echo "| model | threads | pp512 tern/llama.cpp | tg128 tern/llama.cpp | peak RSS tern / llama.cpp (MiB) |"
echo "| --- | ---: | ---: | ---: | ---: |"
"$PY" - "$OUT/results" <<'PYEOF'
import sys, statistics as st, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    tag, pp, tg, rss = line.split()
    who, model, t = tag.split('/')
    rows[(model, t, who)].append((float(pp), float(tg), int(rss)))
for (model, t) in dict.fromkeys((m, t) for (m, t, _) in rows):
    p, q = rows[(model, t, 'llama.cpp')], rows[(model, t, 'tern')]
    med = lambda xs, i: st.median(x[i] for x in xs)
    print(f"| {model} | {t[1:]} | {med(q,0)/med(p,0):.2f} ({med(q,0):.1f} / {med(p,0):.1f}) "
          f"| {med(q,1)/med(p,1):.2f} ({med(q,1):.1f} / {med(p,1):.1f}) "
          f"| {max(x[2] for x in q)//1024} / {max(x[2] for x in p)//1024} |")
PYEOF
rm -rf "$OUT"
