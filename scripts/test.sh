#!/usr/bin/env bash
# The one command that runs every test of the workspace (README, .ci/run).
# Installs Debian's chromium + chromium-driver first when they are missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash "$ROOT/scripts/install-test-deps.sh"

# Screenshots and driver logs of the end-to-end tests (gitignored).
export E2E_OUTPUT_DIR="$ROOT/tests/output"
mkdir -p "$E2E_OUTPUT_DIR"

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi
