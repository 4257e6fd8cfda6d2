#!/usr/bin/env bash
# Perplexity side by side: tern's and llama.cpp's (llama-perplexity from
# scripts/peer/build-llama-cpp.sh) on the same model, text and context.
#
#   scripts/peer/compare-perplexity.sh [MODEL.gguf] [TEXT] [CTX] [CHUNKS] [THREADS]
#
# Defaults: SmolLM2-135M-Instruct Q4_1, the first text fetched by
# scripts/fetch-texts.sh, context 512, all chunks, 2 threads.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${TERN_CACHE:-$HOME/.cache/tern}
MODEL=${1:-$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf}
TEXT=${2:-}
CTX=${3:-512}
CHUNKS=${4:-}
THREADS=${5:-2}
if [[ -z $TEXT ]]; then
    TEXT=$(ls "$CACHE"/texts/*.txt 2>/dev/null | head -n1 || true)
    [[ -n $TEXT ]] || { echo "error: no text given and none in $CACHE/texts (run scripts/fetch-texts.sh)" >&2; exit 1; }
fi
BIN=$("$ROOT/scripts/peer/build-llama-cpp.sh")
(cd "$ROOT" && cargo build -q --release -p tern-tools)
chunk_args=()
[[ -n $CHUNKS ]] && chunk_args=(--chunks "$CHUNKS")

echo "model: $MODEL"
echo "text:  $TEXT  context: $CTX  threads: $THREADS ${CHUNKS:+chunks: $CHUNKS}"
t0=$(date +%s%N)
peer=$("$BIN/llama-perplexity" -m "$MODEL" -f "$TEXT" -c "$CTX" -b "$CTX" -t "$THREADS" "${chunk_args[@]}" 2>&1 \
    | grep -o 'Final estimate: PPL = [0-9.]* +/- [0-9.]*')
t1=$(date +%s%N)
ours=$("$ROOT/target/release/tern" perplexity -m "$MODEL" -f "$TEXT" -c "$CTX" -b "$CTX" -t "$THREADS" "${chunk_args[@]}" 2>/dev/null \
    | grep -o 'Final estimate: PPL = [0-9.]* +/- [0-9.]*')
t2=$(date +%s%N)
p=$(echo "$peer" | awk '{print $5}')
o=$(echo "$ours" | awk '{print $5}')
echo "llama.cpp: $peer   ($(( (t1 - t0) / 1000000 )) ms)"
echo "tern:      $ours   ($(( (t2 - t1) / 1000000 )) ms)"
python3 -c "import sys; p,o=float(sys.argv[1]),float(sys.argv[2]); print(f'tern / llama.cpp = {o/p:.4f} ({(o/p-1)*100:+.2f}%)')" "$p" "$o"
