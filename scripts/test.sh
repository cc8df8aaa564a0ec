#!/usr/bin/env bash
# The project's whole test suite: set-up, formatting, lints, every test, a
# flood smoke run, a fuzz smoke run, a soak smoke run, the fleet demo in two
# network namespaces (smoke), the aiortc interop
# test, the browser test (Chromium and Firefox) and the operations kit
# (Prometheus, coturn, TLS). This is the README's test command and what CI
# runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Where cargo builds (a relative CARGO_TARGET_DIR is relative to this folder).
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac

# Each step's header says how long the suite has run so far; the last line
# gives the whole.
started=$SECONDS
step() { printf '== [%dm%02ds] %s\n' $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)) "$1"; }

step "set-up (scripts/setup.sh)"
scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "flood smoke (members join and listen while the media port is flooded)"
# The binaries `cargo test --workspace` built above (sfu-server, loadgen,
# flood), like the browser test below.
scripts/flood-test.sh --smoke

step "fuzz smoke (${FUZZ_SECONDS:=10} s per target)"
FUZZ_SECONDS="$FUZZ_SECONDS" scripts/fuzz.sh

step "soak smoke (60 s of load with churn)"
# The binaries `cargo test --workspace` built above, as for the browser test.
SFU_SERVER_BIN="$target/debug/sfu-server" LOADGEN_BIN="$target/debug/loadgen" scripts/soak.sh --smoke

step "fleet demo smoke (a fleet on Redis in two network namespaces)"
# Namespaces need root (CAP_NET_ADMIN): a machine that refuses one skips the
# demo and says so.
if [ "$(id -u)" = 0 ] && ip netns add "sfu-probe-$$" 2>/dev/null; then
  ip netns del "sfu-probe-$$"
  SFU_SERVER_BIN="$target/debug/sfu-server" LOADGEN_BIN="$target/debug/loadgen" scripts/fleet-demo.sh --smoke
else
  echo "SKIPPED: this machine cannot create network namespaces (needs root)" >&2
fi

if [ -x scripts/interop-test.sh ]; then
  step "interop test (aiortc over WHIP and WHEP)"
  # The server binary `cargo test --workspace` built (see the browser test).
  SFU_SERVER_BIN="$target/debug/sfu-server" scripts/interop-test.sh
fi

if [ -x scripts/browser-test.sh ]; then
  step "browser test (headless Chromium and Firefox)"
  # The server binary `cargo test --workspace` built above (cargo builds a
  # package's binaries for its integration tests: CARGO_BIN_EXE_sfu-server).
  # `cargo build -p sfu-server` would compile media-core, cascade and the
  # server once more: without the workspace's features they differ.
  SFU_SERVER_BIN="$target/debug/sfu-server" scripts/browser-test.sh
fi

if [ -x scripts/ops-test.sh ]; then
  step "operations kit (Prometheus, coturn, TLS with headless Chromium)"
  scripts/ops-test.sh
fi

step "all passed"
