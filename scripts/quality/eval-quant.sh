#!/usr/bin/env bash
# Quality of tern-quantize on the real SmolLM2-135M-Instruct (issue 6 §5).
#
# Reference: the model's own Q4_1 weights dequantized to f32 (written as an
# f32 GGUF by tern-quantize's sibling step below, with gguf-py from the test
# venv). Calibration text: Moby Dick; evaluation text: Pride and Prejudice
# (both from scripts/fetch-texts.sh, which pins their sha256; disjoint).
# Perplexity: `tern perplexity`, context 512, the first $CHUNKS chunks.
#
# Rows: the reference; RTN, GPTQ, P-GPTQ at 4-bit g128 (tern type), and
# P-GPTQ with the prefix skip on every linear (`--prefix-skip-on all`, the
# MiniCPM4 report's form; the default leaves ffn_down alone); RTN and GPTQ
# into Q4_0 (GPTQ with the calibrated mixture, ffn_down of the first eighth
# of the blocks in Q4_1, and `--pure`); llama.cpp's `llama-quantize
# --imatrix` Q4_0 (imatrix from `llama-imatrix` on the same calibration
# text and settings; it uses the same mixture); RTN, GPTQ, P-GPTQ at 3-bit
# g128. Then llama.cpp's `llama-perplexity` on tern's GPTQ
# Q4_0 file against `tern perplexity` (must agree within 1%). The quantized
# models are made from the Q4_1 file itself: its weights dequantize exactly to
# the reference.
#
# Usage: scripts/quality/eval-quant.sh [OUTDIR]
# Environment: CHUNKS (default 24), SAMPLES (128), SEQ_LEN (512),
#   THREADS (all cores), TERN_CACHE (default ~/.cache/tern).
# Prints a table (markdown) at the end and writes it to OUTDIR/table.md.
set -euo pipefail

die() { echo "error: $*" >&2; exit 1; }
log() { echo "eval-quant: $*" >&2; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${TERN_CACHE:-$HOME/.cache/tern}
OUT=${1:-$ROOT/target/eval-quant}
CHUNKS=${CHUNKS:-24}
SAMPLES=${SAMPLES:-128}
SEQ_LEN=${SEQ_LEN:-512}
THREADS=${THREADS:-$(nproc)}
MODEL=$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
CALIB=$CACHE/texts/moby-dick.txt
EVAL=$CACHE/texts/pride-and-prejudice.txt
PEER=$CACHE/peer/llama.cpp-build/bin
PY=$CACHE/venv/bin/python

[[ -f $MODEL ]] || die "$MODEL missing (run scripts/fetch-test-data.sh)"
[[ -f $CALIB && -f $EVAL ]] || "$ROOT/scripts/fetch-texts.sh"
[[ -x $PEER/llama-quantize ]] || PEER=$("$ROOT/scripts/peer/build-llama-cpp.sh")
[[ -x $PY ]] || die "$PY missing (run scripts/fetch-test-data.sh)"
mkdir -p "$OUT"
(cd "$ROOT" && cargo build -q --release -p tern-tools -p tern-quant)
TERN=$ROOT/target/release/tern
TQ=$ROOT/target/release/tern-quantize
log "calibration: $CALIB sha256 $(sha256sum "$CALIB" | cut -d' ' -f1)"
log "evaluation:  $EVAL sha256 $(sha256sum "$EVAL" | cut -d' ' -f1)"

# The reference: every tensor dequantized to f32 (gguf-py reads Q4_1/Q8_0).
REF=$OUT/smollm2-ref-f32.gguf
if [[ ! -f $REF ]]; then
    log "writing the f32 reference $REF"
    "$PY" - "$MODEL" "$REF.tmp" <<'EOF'
import sys
import numpy as np
import gguf
from gguf.quants import dequantize

src, dst = sys.argv[1], sys.argv[2]
r = gguf.GGUFReader(src)
arch = r.fields["general.architecture"].contents()
w = gguf.GGUFWriter(dst, arch)
for name, f in r.fields.items():
    if name.startswith("GGUF.") or name in ("general.architecture", "general.alignment"):
        continue
    if name == "general.file_type":
        w.add_uint32(name, 0)  # ALL_F32
        continue
    vt = f.types[0]
    if vt == gguf.GGUFValueType.ARRAY:
        w.add_array(name, f.contents())
    else:
        w.add_key_value(name, f.contents(), vt)
for t in r.tensors:
    x = dequantize(t.data, t.tensor_type).astype(np.float32)
    w.add_tensor(t.name, x.reshape([int(d) for d in reversed(t.shape)]), raw_dtype=gguf.GGMLQuantizationType.F32)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
EOF
    mv "$REF.tmp" "$REF"
fi

# name | tern-quantize flags ("" = not made by tern-quantize)
ROWS=(
    "rtn-q4-g128|--scheme rtn --bits 4 --group 128"
    "gptq-q4-g128|--scheme gptq --bits 4 --group 128"
    "pgptq-q4-g128|--scheme p-gptq --bits 4 --group 128"
    "rtn-q4_0|--scheme rtn --type q4_0"
    "gptq-q4_0|--scheme gptq --type q4_0"
    "gptq-q4_0-pure|--scheme gptq --type q4_0 --pure"
    "rtn-q3-g128|--scheme rtn --bits 3 --group 128"
    "gptq-q3-g128|--scheme gptq --bits 3 --group 128"
    "pgptq-q3-g128|--scheme p-gptq --bits 3 --group 128"
    "pgptq-q4_0|--scheme p-gptq --type q4_0"
    "pgptq-skip-q4-g128|--scheme p-gptq --bits 4 --group 128 --prefix-weight 0"
    "pgptq-skip-q3-g128|--scheme p-gptq --bits 3 --group 128 --prefix-weight 0"
    "pgptq-all-q4-g128|--scheme p-gptq --bits 4 --group 128 --prefix-skip-on all"
)
for row in "${ROWS[@]}"; do
    name=${row%%|*}; flags=${row#*|}
    f=$OUT/$name.gguf
    [[ -f $f ]] && continue
    calib=(--calib "$CALIB" --samples "$SAMPLES" --seq-len "$SEQ_LEN")
    [[ $flags == *"scheme rtn"* ]] && calib=()
    log "tern-quantize $name"
    # shellcheck disable=SC2086
    "$TQ" -m "$MODEL" -o "$f" $flags "${calib[@]}" -t "$THREADS" --json > "$OUT/$name.json"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"  mean err {r['mean_err']*100:.3f}% (RTN {r['mean_err_rtn']*100:.3f}%), {r['timings']['total_s']:.0f} s\")" "$OUT/$name.json" >&2
done

# llama.cpp: imatrix on the reference with the same calibration text, then Q4_0.
IMAT=$OUT/imatrix.gguf
if [[ ! -f $IMAT ]]; then
    log "llama-imatrix ($SAMPLES chunks of $SEQ_LEN)"
    "$PEER/llama-imatrix" -m "$REF" -f "$CALIB" -c "$SEQ_LEN" -b "$SEQ_LEN" --chunks "$SAMPLES" \
        -t "$THREADS" -o "$IMAT" > "$OUT/imatrix.log" 2>&1 || die "llama-imatrix failed (see $OUT/imatrix.log)"
fi
LQ=$OUT/llamacpp-imatrix-q4_0.gguf
if [[ ! -f $LQ ]]; then
    log "llama-quantize --imatrix Q4_0 (token embeddings kept Q8_0 as in tern's outputs)"
    "$PEER/llama-quantize" --imatrix "$IMAT" --token-embedding-type q8_0 --output-tensor-type q8_0 \
        "$REF" "$LQ" Q4_0 "$THREADS" > "$OUT/llama-quantize.log" 2>&1 \
        || die "llama-quantize failed (see $OUT/llama-quantize.log)"
fi

ppl() { # model -> "PPL +/- err"
    "$TERN" perplexity -m "$1" -f "$EVAL" -c 512 -b 512 --chunks "$CHUNKS" -t "$THREADS" 2>/dev/null \
        | grep -o 'Final estimate: PPL = [0-9.]* +/- [0-9.]*' | awk '{print $5, $7}'
}
TABLE=$OUT/table.md
{
    echo "| model | bits/weight (linears) | PPL (P&P, ctx 512, $CHUNKS chunks) | Δ vs reference |"
    echo "|---|---|---|---|"
} > "$TABLE"
REF_OUT=$(ppl "$REF")
read -r REF_PPL REF_ERR <<< "$REF_OUT"
log "reference PPL $REF_PPL"
echo "| reference (Q4_1 → f32) | 32 | $REF_PPL ± $REF_ERR | — |" >> "$TABLE"
bpw() { # bits per weight of the 7 linears, from `tern info` (gguf-py does not know tern's types)
    "$TERN" info "$1" | python3 -c '
import re, sys
n = b = 0
for line in sys.stdin:
    m = re.match(r"\s*blk\.\d+\.(attn_[qkv]|attn_output|ffn_gate|ffn_up|ffn_down)\.weight\s+\S+\s+\[([\d, ]+)\]\s+(\d+) bytes", line)
    if m:
        e = 1
        for d in m.group(2).split(","):
            e *= int(d)
        n += e
        b += int(m.group(3))
print(f"{8 * b / n:.2f}")'
}
for name in rtn-q4-g128 gptq-q4-g128 pgptq-q4-g128 pgptq-skip-q4-g128 pgptq-all-q4-g128 rtn-q4_0 gptq-q4_0 \
    gptq-q4_0-pure pgptq-q4_0 llamacpp-imatrix-q4_0 rtn-q3-g128 gptq-q3-g128 pgptq-q3-g128 pgptq-skip-q3-g128; do
    pe=$(ppl "$OUT/$name.gguf")
    read -r p e <<< "$pe"
    d=$(python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):+.3f}')" "$p" "$REF_PPL")
    log "$name PPL $p ($d)"
    b=$(bpw "$OUT/$name.gguf")
    echo "| $name | $b | $p ± $e | $d |" >> "$TABLE"
    eval "PPL_${name//[-.]/_}=$p"
done

# Targets.
ratio() { python3 -c "import sys; r,g,p=map(float,sys.argv[1:]); print(f'{(g-p)/(r-p):.2f}')" "$@"; }
{
    echo
    echo "Targets:"
    echo "- 4-bit g128: (GPTQ − ref) / (RTN − ref) = $(ratio "$PPL_rtn_q4_g128" "$PPL_gptq_q4_g128" "$REF_PPL") (≤ 0.60)"
    echo "- 3-bit g128: (GPTQ − ref) / (RTN − ref) = $(ratio "$PPL_rtn_q3_g128" "$PPL_gptq_q3_g128" "$REF_PPL") (≤ 0.60)"
    echo "- P-GPTQ ≤ GPTQ: 4-bit g128 $PPL_pgptq_q4_g128 vs $PPL_gptq_q4_g128; 3-bit g128 $PPL_pgptq_q3_g128 vs $PPL_gptq_q3_g128; Q4_0 $PPL_pgptq_q4_0 vs $PPL_gptq_q4_0"
    echo "  (the report's skip, --prefix-weight 0: 4-bit $PPL_pgptq_skip_q4_g128, 3-bit $PPL_pgptq_skip_q3_g128)"
    echo "- GPTQ Q4_0 $PPL_gptq_q4_0 vs llama.cpp imatrix Q4_0 $PPL_llamacpp_imatrix_q4_0 (≤)"
} >> "$TABLE"

# llama.cpp loads tern's Q4_0 file and agrees with tern perplexity.
log "llama-perplexity on tern's GPTQ Q4_0 file"
peer=$("$PEER/llama-perplexity" -m "$OUT/gptq-q4_0.gguf" -f "$EVAL" -c 512 -b 512 --chunks "$CHUNKS" -t "$THREADS" 2>&1 \
    | grep -o 'Final estimate: PPL = [0-9.]*' | awk '{print $5}') || die "llama-perplexity failed on tern's Q4_0 file"
python3 -c "import sys; p,o=map(float,sys.argv[1:]); print(f'- llama-perplexity on tern GPTQ Q4_0: {p:.4f}, tern: {o:.4f} ({(o/p-1)*100:+.2f}%, ≤ 1%)')" \
    "$peer" "$PPL_gptq_q4_0" >> "$TABLE"
echo
cat "$TABLE"
