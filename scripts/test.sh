#!/usr/bin/env bash
# The project's whole test suite: set-up, formatting, lints, every test, a
# flood smoke run, a fuzz smoke run, a soak smoke run, the aiortc interop
# test, the browser test (Chromium and Firefox) and the operations kit
# (Prometheus, coturn, TLS). This is the README's test command and what CI
# runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Where cargo builds (a relative CARGO_TARGET_DIR is relative to this folder).
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked

echo "== flood smoke (members join and listen while the media port is flooded)"
# The binaries `cargo test --workspace` built above (sfu-server, loadgen,
# flood), like the browser test below.
scripts/flood-test.sh --smoke

echo "== fuzz smoke (${FUZZ_SECONDS:=10} s per target)"
FUZZ_SECONDS="$FUZZ_SECONDS" scripts/fuzz.sh

echo "== soak smoke (60 s of load with churn)"
# The binaries `cargo test --workspace` built above, as for the browser test.
SFU_SERVER_BIN="$target/debug/sfu-server" LOADGEN_BIN="$target/debug/loadgen" scripts/soak.sh --smoke

if [ -x scripts/interop-test.sh ]; then
  echo "== interop test (aiortc over WHIP and WHEP)"
  # The server binary `cargo test --workspace` built (see the browser test).
  SFU_SERVER_BIN="$target/debug/sfu-server" scripts/interop-test.sh
fi

if [ -x scripts/browser-test.sh ]; then
  echo "== browser test (headless Chromium and Firefox)"
  # The server binary `cargo test --workspace` built above (cargo builds a
  # package's binaries for its integration tests: CARGO_BIN_EXE_sfu-server).
  # `cargo build -p sfu-server` would compile media-core, cascade and the
  # server once more: without the workspace's features they differ.
  SFU_SERVER_BIN="$target/debug/sfu-server" scripts/browser-test.sh
fi

if [ -x scripts/ops-test.sh ]; then
  echo "== operations kit (Prometheus, coturn, TLS with headless Chromium)"
  scripts/ops-test.sh
fi
