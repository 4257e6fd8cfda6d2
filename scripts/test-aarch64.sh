#!/usr/bin/env bash
# The aarch64 check: cross-build tern-runtime's tests for
# aarch64-unknown-linux-gnu and run them under qemu-aarch64 (the runner in
# .cargo/config.toml), so the NEON kernels are tested on every change from an
# x86_64 machine. On an aarch64 host the same command runs natively.
#
# By default it runs the subset that exercises the CPU kernels and the
# forward pass on the tiny synthetic models: the library's unit tests, the
# kernel tests (cpu_kernels, when present), quantization against gguf-py,
# load errors, and forward_reference / forward_properties without the
# SmolLM2-135M cases, which take minutes under emulation. Tokenizer, chat and
# GGUF-parsing tests are architecture-neutral and stay with the native run.
# Before testing it runs clippy for aarch64, which is the only lint the
# aarch64-only code gets; after, it reruns the kernel tests on an emulated
# ARMv8.0 core without the optional extensions.
#
# Usage: scripts/test-aarch64.sh [--install] [--full] [-- CARGO TEST ARGS]
#   --install  first install what is missing: Debian's gcc-aarch64-linux-gnu,
#              libc6-dev-arm64-cross and qemu-user (apt-get, as root or via
#              sudo) and the Rust target (rustup). Quiet and idempotent.
#   --full     run every tern-runtime test, SmolLM2 included
# Needs the test data from scripts/fetch-test-data.sh (fetched here; cached).
set -euo pipefail
cd "$(dirname "$0")/.."

TRIPLE=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
die() { echo "error: $*" >&2; exit 1; }
log() { echo "test-aarch64: $*" >&2; }

INSTALL=0 FULL=0
while (($#)); do
    case "$1" in
        --install) INSTALL=1 ;;
        --full) FULL=1 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done

# ---- toolchain ---------------------------------------------------------------
missing=()
if [[ "$(uname -m)" != aarch64 ]]; then
    command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
    [[ -e $SYSROOT/lib/libc.so ]] || missing+=(libc6-dev-arm64-cross)
    command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
fi
if ((${#missing[@]})); then
    ((INSTALL)) || die "missing ${missing[*]} (Debian/Ubuntu: apt-get install ${missing[*]}, or rerun with --install)"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them with"
    sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "installing ${missing[*]} needs root or sudo"
        sudo=(sudo -n)
    fi
    log "installing ${missing[*]} (apt-get)"
    aptlog=$(mktemp)
    { "${sudo[@]}" apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
        >"$aptlog" 2>&1 || die "apt-get install ${missing[*]} failed: $(tail -n1 "$aptlog")"
    rm -f "$aptlog"
fi
libdir=$(rustc --print target-libdir --target "$TRIPLE" 2>/dev/null || true)
if [[ -z "$libdir" ]] || ! compgen -G "$libdir/libstd-*" >/dev/null; then
    ((INSTALL)) || die "the Rust target $TRIPLE is not installed (rustup target add $TRIPLE, or rerun with --install)"
    command -v rustup >/dev/null 2>&1 || die "the Rust target $TRIPLE is missing and rustup is not installed"
    log "rustup target add $TRIPLE"
    rustup target add "$TRIPLE" >/dev/null 2>&1 || die "rustup target add $TRIPLE failed"
fi

# ---- test data -----------------------------------------------------------------
./scripts/fetch-test-data.sh >/dev/null

# ---- lint ----------------------------------------------------------------------
# The NEON code sits behind cfg(target_arch = "aarch64"): the x86_64 clippy
# run never sees it.
log "cargo clippy --target $TRIPLE -p tern-runtime"
cargo clippy --target "$TRIPLE" -p tern-runtime --all-targets -- -D warnings

# ---- tests ---------------------------------------------------------------------
# TERN_CACHE and HOME reach the emulated tests unchanged: qemu-user passes the
# environment through, and the tests read the cache from the host filesystem.
cargo=(cargo test --target "$TRIPLE" -p tern-runtime)
where="under qemu-aarch64"
[[ "$(uname -m)" == aarch64 ]] && where="natively"
if ((FULL)); then
    log "every tern-runtime test, $where"
    exec "${cargo[@]}" "$@"
fi
targets=(--lib)
for t in cpu_kernels quants_gguf_py model_load_errors forward_properties forward_reference; do
    # Listed by file so the step works before and after a test target lands.
    [[ -f runtime/tests/$t.rs || -f runtime/tests/$t/main.rs ]] && targets+=(--test "$t")
done
log "${targets[*]} (without SmolLM2), $where"
"${cargo[@]}" "${targets[@]}" "$@" -- --skip smollm2

# qemu's default CPU ("max") has every optional extension (dotprod, i8mm,
# fp16, SVE), so the pass above takes the fastest run-time-detected paths.
# Run the kernel tests once more on a plain ARMv8.0 core (Cortex-A53: NEON
# and nothing else) so the fallbacks are checked too.
if [[ "$where" != natively ]]; then
    kernels=(--lib)
    [[ -f runtime/tests/cpu_kernels.rs || -f runtime/tests/cpu_kernels/main.rs ]] && kernels+=(--test cpu_kernels)
    log "${kernels[*]} again on a baseline ARMv8.0 CPU (QEMU_CPU=cortex-a53)"
    QEMU_CPU=cortex-a53 "${cargo[@]}" "${kernels[@]}" "$@" -- --skip smollm2
fi
