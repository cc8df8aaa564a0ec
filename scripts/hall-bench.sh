#!/usr/bin/env bash
# Bandwidth per member with and without hall mode (BENCHMARKS.md, "Hall
# mode"): one sfu-server, the load generator with 3 speakers and LISTENERS
# count-only listeners (default 50) for 16 s, once per pattern (continuous,
# conversation with Opus DTX) and mode (normal, --hall-mode); the server's
# own counters (`sfu_bytes_total`, `sfu_datagrams_total`, direction out)
# read 6 s and 14 s into the run. Byte and packet counts do not depend on the
# build: the debug binaries `cargo test` builds will do (SFU_SERVER_BIN,
# LOADGEN_BIN to choose).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
SERVER=${SFU_SERVER_BIN:-$target/debug/sfu-server}
LOADGEN=${LOADGEN_BIN:-$target/debug/loadgen}
LISTENERS=${LISTENERS:-50}
[[ $LISTENERS =~ ^[0-9]+$ ]] && [ "$LISTENERS" -ge 1 ] && [ "$LISTENERS" -le 500 ] \
  || { echo "hall-bench: LISTENERS 1..500" >&2; exit 2; }
for b in "$SERVER" "$LOADGEN"; do
  [ -x "$b" ] || { echo "hall-bench: $b is missing (cargo test builds it)" >&2; exit 1; }
done
# shellcheck source=lib/processes.sh
. scripts/lib/processes.sh
server_pid=""
loadgen_pid=""
trap '[ -n "$loadgen_pid" ] && stop "$loadgen_pid"; [ -n "$server_pid" ] && stop "$server_pid"' EXIT

# out PORT: "bytes datagrams" the server sent so far.
out() {
  curl -fsS "http://127.0.0.1:$1/metrics" | awk '
    /^sfu_bytes_total\{direction="out"\}/ {b = $2}
    /^sfu_datagrams_total\{direction="out"\}/ {d = $2}
    END {print b, d}'
}

members=$((LISTENERS + 3))
printf 'hall-bench: %d members (3 speakers, %d listeners); per member, over 8 s\n' "$members" "$LISTENERS"
printf '%-13s %-7s %12s %12s %14s %16s\n' pattern mode "datagrams/s" "bytes/dgram" "kbit/s (UDP)" "MB/listener-hour"
for pattern in continuous conversation; do
  for mode in normal hall; do
    port=$((20000 + RANDOM % 40000))
    flags=()
    [ "$mode" = hall ] && flags=(--hall-mode)
    env -u SFU_CONFIG -u SFU_AUTH_SECRET SFU_JOINS_PER_IP_PER_MINUTE=0 \
      "$SERVER" --http "127.0.0.1:$port" --log warn --workers 1 "${flags[@]}" >/dev/null 2>&1 &
    server_pid=$!
    wait_for "the server on $port" curl -fsS "http://127.0.0.1:$port/healthz"
    timeout -k 5 120 "$LOADGEN" --url "http://127.0.0.1:$port" --speakers 3 \
      --listeners "$LISTENERS" --seconds 16 --pattern "$pattern" >/dev/null 2>&1 &
    loadgen_pid=$!
    # The window: once every listener joined (the load generator's
    # measurement starts then), 8 s of it.
    for _ in $(seq 1 600); do
      joined=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '/^sfu_members\{/ {n += $2} END {print n + 0}')
      [ "${joined:-0}" = "$members" ] && break
      sleep 0.1
    done
    sleep 2
    read -r b0 d0 < <(out "$port")
    sleep 8
    read -r b1 d1 < <(out "$port")
    wait "$loadgen_pid" || true
    loadgen_pid=""
    stop "$server_pid"
    server_pid=""
    awk -v p="$pattern" -v m="$mode" -v n="$members" -v b0="$b0" -v b1="$b1" -v d0="$d0" -v d1="$d1" 'BEGIN {
      d = (d1 - d0) / 8 / n; b = (b1 - b0) / 8 / n
      printf "%-13s %-7s %12.1f %12.1f %14.1f %16.1f\n", p, m, d, b / d, b * 8 / 1000, b * 3600 / 1e6
    }'
  done
done
