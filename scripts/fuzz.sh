#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS each (default 30: the smoke run CI
# does). For a long campaign: FUZZ_SECONDS=3600 scripts/fuzz.sh [target...]
# Uses cargo-fuzz on stable without a sanitizer (no nightly here); with a
# nightly toolchain, drop --sanitizer none to get ASan.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
secs="${FUZZ_SECONDS:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz --version "^0.13"
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sdp_offer datagrams relay_wire ws_message jwt whip_request)
cd fuzz
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  mkdir -p "corpus/$t"
  cargo fuzz run --sanitizer none "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=4096
done
