#!/usr/bin/env bash
# Hybrid channels' figures for BENCHMARKS.md: the longest gap at the
# members' decoders across 20 switches up and 20 down, the time from a mode
# change to the switch complete, and the server's media CPU and bandwidth
# for a seven-member channel in P2P and on the SFU. Real clients (str0m,
# ICE, DTLS, SRTP, Opus) on 127.0.0.1; about two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p sfu-server --test hybrid bench_switch_gaps_and_server_cost -- --ignored --nocapture 2>&1 |
  grep -E "^(switch|seven)|test result|panicked"
