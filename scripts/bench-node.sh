#!/usr/bin/env bash
# Listeners per core: starts sfu-server pinned to one CPU (taskset), the load
# generator pinned to the other, and ramps listeners at 3 talking speakers
# (50 packets/s each) until loss passes 0.1%, the server's core saturates, or
# the ramp ends (BENCH_SECONDS per step). Prints, per step and at the end, listeners carried, loss,
# server CPU and RSS per listener. Bounded: the STEPS, BENCH_SECONDS each.
#
#   scripts/bench-node.sh                 # STEPS="50 100 200 400 800" BENCH_SECONDS=8
#   STEPS="100 200" BENCH_SECONDS=5 scripts/bench-node.sh
#
# On a 2-core machine the load generator (a real str0m client per listener)
# needs about as much CPU as the server: the ramp usually ends because the
# generator's core saturates; the script says which limit ended it.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-"50 100 200 400 800"}
SECONDS_PER_STEP=${BENCH_SECONDS:-8}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT=${PORT:-18480}

command -v taskset >/dev/null || { echo "bench-node: taskset (util-linux) is missing" >&2; exit 2; }
scripts/setup.sh
cargo build --release -p sfu-server -p examples --bin loadgen >&2

server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

printf '%-10s %-8s %-10s %-12s %-14s %s\n' listeners loss cpu_cores us_per_pkt rss_kib_per_l note
best=0
for n in $STEPS; do
  taskset -c "$SERVER_CPU" target/release/sfu-server --http "127.0.0.1:$PORT" --log warn >/dev/null 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
  rss0=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")
  json=$(timeout $((SECONDS_PER_STEP * 6 + 60)) taskset -c "$LOADGEN_CPU" target/release/loadgen \
      --url "http://127.0.0.1:$PORT" --speakers 3 --listeners "$n" --seconds "$SECONDS_PER_STEP" \
      --pid "$server_pid" 2>/dev/null || true)
  rss1=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")
  kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; server_pid=""
  read -r loss cpu pps listeners < <(python3 -c '
import json,sys
d=json.loads(sys.stdin.read() or "{}")
print(d.get("loss",1.0), round(d.get("server_cpu_cores",0.0),3), d.get("packets_per_second",0.0), d.get("listeners",0))' <<<"$json")
  us=$(python3 -c "print(round($cpu*1e6/max($pps,1),1))")
  rss=$(python3 -c "print(round(($rss1-$rss0)/max($listeners,1),1))")
  note=""
  if python3 -c "import sys; sys.exit(0 if $loss > 0.001 else 1)"; then note="loss > 0.1%"; fi
  if python3 -c "import sys; sys.exit(0 if $cpu > 0.95 else 1)"; then note="${note:+$note, }server core saturated"; fi
  printf '%-10s %-8s %-10s %-12s %-14s %s\n' "$listeners" "$(python3 -c "print(f'{$loss*100:.2f}%')")" "$cpu" "$us" "$rss" "$note"
  [ -n "$note" ] && break
  best=$listeners
  last_cpu=$cpu
done
if [ "$best" -gt 0 ]; then
  per_core=$(python3 -c "print(int($best / max(${last_cpu:-1}, 0.01)))")
  echo "bench-node: $best listeners clean on one pinned core at ${last_cpu} cores → about $per_core listeners per core (extrapolated from CPU)"
else
  echo "bench-node: no clean step"
fi
