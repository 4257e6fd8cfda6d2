#!/usr/bin/env bash
# The test command: fetch (or verify) the cached test data, then run every
# test in the workspace. Rust tests never start Python; the fetch step is
# the only place Python runs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-test-data.sh
exec cargo test --workspace "$@"
