#!/usr/bin/env bash
# Forwarding latency at one channel of many listeners: the server's
# `sfu_forward_latency_seconds` (a packet's arrival to the moment the last of
# its copies was handed to the kernel) and `sfu_forward_copy_latency_seconds`
# (to the moment each copy was: what each listener waits) over a window in
# which every listener is joined, for each worker count in WORKERS_LIST (the
# channel spreads over the workers past 200 members, the default).
#
#   scripts/latency-bench.sh                 # 1,000 listeners, workers 1 then 2, twice
#   LISTENERS=500 RUNS=1 scripts/latency-bench.sh
#
# Environment: LISTENERS (1000), SPEAKERS (3, continuous), WINDOW (10 s),
# WORKERS_LIST ("1 2"), RUNS (2), CPUS (server and load generator share
# them: "0-1"; LOADGEN_CPUS gives the load generator others), PORT (18530), NO_BUILD=1, SERVER_BIN (a server binary to
# measure instead of the release build). Prints one line per run and
# worker count: p50, p90, p99 (linear within a bucket) and the share within
# 1 ms, of the packets' last copies and of all copies.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/processes.sh

LISTENERS=${LISTENERS:-1000}
SPEAKERS=${SPEAKERS:-3}
WINDOW=${WINDOW:-10}
WORKERS_LIST=${WORKERS_LIST:-"1 2"}
RUNS=${RUNS:-2}
CPUS=${CPUS:-0-1}
PORT=${PORT:-18530}
for v in LISTENERS SPEAKERS WINDOW RUNS PORT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "latency-bench: $v must be a number" >&2; exit 2; }
done
if [ "$LISTENERS" -gt 5000 ] || [ "$WINDOW" -gt 120 ] || [ "$RUNS" -gt 10 ]; then
  echo "latency-bench: bounds: at most 5000 listeners, a 120 s window, 10 runs" >&2
  exit 2
fi
if [ "${NO_BUILD:-0}" != 1 ]; then
  scripts/setup.sh
  cargo build --release -p sfu-server -p examples --bin sfu-server --bin loadgen >&2
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
server_pid=""
loadgen_pid=""
cleanup() {
  [ -n "$loadgen_pid" ] && stop "$loadgen_pid"
  [ -n "$server_pid" ] && stop "$server_pid"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

metrics() { curl -sf "http://127.0.0.1:$PORT/metrics" || true; }

members() { grep -E '^sfu_members(\{[^}]*\})? ' "$1" | awk '{s += $2} END {print s + 0}'; }

for run in $(seq 1 "$RUNS"); do
  for workers in $WORKERS_LIST; do
    SFU_JOINS_PER_IP_PER_MINUTE=0 taskset -c "$CPUS" "${SERVER_BIN:-target/release/sfu-server}" \
      --http "127.0.0.1:$PORT" --workers "$workers" --log warn >"$work/server.log" 2>&1 &
    server_pid=$!
    wait_for "latency-bench: the server on port $PORT" curl -sf "http://127.0.0.1:$PORT/healthz" \
      || { cat "$work/server.log" >&2; exit 1; }
    # The load generator's step lasts long enough for the window after
    # everyone joined.
    timeout $(( WINDOW + 180 )) taskset -c "${LOADGEN_CPUS:-$CPUS}" target/release/loadgen \
      --url "http://127.0.0.1:$PORT" --speakers "$SPEAKERS" --pattern continuous \
      --steps "$LISTENERS" --seconds $(( WINDOW + 6 )) --join-parallel 4 \
      >"$work/loadgen.json" 2>"$work/loadgen.log" &
    loadgen_pid=$!
    want=$(( LISTENERS + SPEAKERS ))
    deadline=$(( SECONDS + 170 ))
    while :; do
      metrics >"$work/m0"
      [ "$(members "$work/m0")" -ge "$want" ] && break
      [ "$SECONDS" -lt "$deadline" ] || { echo "latency-bench: $want members never joined" >&2; exit 1; }
      kill -0 "$loadgen_pid" 2>/dev/null || { echo "latency-bench: the load generator ended:" >&2; cat "$work/loadgen.log" >&2; exit 1; }
      sleep 0.5
    done
    sleep 2
    metrics >"$work/m0"
    sleep "$WINDOW"
    metrics >"$work/m1"
    n=$(members "$work/m1")
    stop "$loadgen_pid"
    loadgen_pid=""
    stop "$server_pid"
    server_pid=""
    python3 - "$work/m0" "$work/m1" "$run" "$workers" "$n" <<'PY'
import re, sys
def buckets(path, name):
    out = {}
    for line in open(path):
        m = re.match(name + r'_bucket\{.*le="([^"]+)"\} (\S+)', line)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            out[le] = out.get(le, 0.0) + float(m.group(2))
    return out
def summary(name, what):
    a, b = buckets(sys.argv[1], name), buckets(sys.argv[2], name)
    rows = sorted((le, b[le] - a.get(le, 0.0)) for le in b)
    total = rows[-1][1] if rows else 0
    def q(p):
        want, prev_le, prev_c = p * total, 0.0, 0.0
        for le, c in rows:
            if c >= want:
                if le == float("inf"):
                    return float("inf")
                return (prev_le + (le - prev_le) * (want - prev_c) / max(c - prev_c, 1e-9)) * 1e3
            prev_le, prev_c = le, c
        return float("nan")
    within = dict(rows).get(0.001, 0) / total if total else 0
    return "%d %s, p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, %.1f%% within 1 ms" % (
        total, what, q(.5), q(.9), q(.99), 100 * within)
print("latency-bench: run %s, %s worker(s), %s members: last copy: %s; each copy: %s"
      % (sys.argv[3], sys.argv[4], sys.argv[5],
         summary("sfu_forward_latency_seconds", "packets"),
         summary("sfu_forward_copy_latency_seconds", "copies")))
PY
  done
done
