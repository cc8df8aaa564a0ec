#!/usr/bin/env bash
# The project's whole test suite: set-up, formatting, lints, every test, a
# fuzz smoke run, the browser test and the operations kit (Prometheus,
# coturn, TLS). This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked

echo "== fuzz smoke (${FUZZ_SECONDS:=20} s per target)"
FUZZ_SECONDS="$FUZZ_SECONDS" scripts/fuzz.sh

if [ -x scripts/browser-test.sh ]; then
  echo "== browser test (headless Chromium)"
  scripts/browser-test.sh
fi

if [ -x scripts/ops-test.sh ]; then
  echo "== operations kit (Prometheus, coturn, TLS with headless Chromium)"
  scripts/ops-test.sh
fi
