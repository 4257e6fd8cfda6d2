#!/usr/bin/env bash
# Cargo's runner for aarch64-unknown-linux-gnu (.cargo/config.toml): runs a
# test or binary under user-mode QEMU on any other host, with Debian's cross
# sysroot as the dynamic loader's root, and directly on an aarch64 host
# (where cargo also uses this runner, since the config names the triple).
# Override the sysroot with TERN_AARCH64_SYSROOT.
set -euo pipefail
if [[ "$(uname -m)" == aarch64 || "$(uname -m)" == arm64 ]]; then
    exec "$@"
fi
if ! command -v qemu-aarch64 >/dev/null 2>&1; then
    echo "error: qemu-aarch64 not found; install it (Debian/Ubuntu: apt-get install qemu-user) or run scripts/test-aarch64.sh --install" >&2
    exit 127
fi
exec qemu-aarch64 -L "${TERN_AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}" "$@"
