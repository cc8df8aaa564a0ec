#!/usr/bin/env bash
# Listeners per core: starts sfu-server pinned to one CPU (taskset) and the
# load generator pinned to the other CPU(s), then ramps count-only listeners
# (real ICE + DTLS in str0m; media read from the RTP header, not decrypted;
# `--threads` pool tasks, one UDP socket each) at SPEAKERS talking speakers,
# one measured window of BENCH_SECONDS per step, until loss passes STOP_LOSS
# (0.1%), the server's core saturates (STOP_CPU cores), or the steps end.
# One server and one load generator for the whole ramp: each step adds
# listeners to those already there. Prints a row per step and, at the end,
# listeners per core (listeners / server CPU of the last clean step) and the
# server's RSS per listener (VmRSS growth since before the first listener),
# and which limit ended the ramp ("its core": how busy the server's CPU was
# with every process on it; on a shared machine a pinned server can be
# starved before it saturates). Bounded: the steps, BENCH_SECONDS each, and
# a timeout on the whole run.
#
#   scripts/bench-node.sh                  # STEPS="250 500 1000 1500 2000 3000 4000" BENCH_SECONDS=8
#   STEPS="100 200" BENCH_SECONDS=5 scripts/bench-node.sh
#   PATTERN=conversation scripts/bench-node.sh   # talk spurts and pauses with DTX
#   scripts/bench-node.sh --smoke          # 20 and 60 listeners, 3 s each; < 2 min once built
#   HALL=1 scripts/bench-node.sh           # hall mode: listeners get 40 ms packets
#   WORKERS=2 SERVER_CPU=0-1 LOADGEN_CPUS=0-1 scripts/bench-node.sh
#                                          # the channel spread over 2 workers (all sharing the cores)
#
# Environment: STEPS, BENCH_SECONDS, SPEAKERS (3), PATTERN (continuous: 50
# packets/s per speaker), THREADS (load generator pool threads, 1),
# SERVER_CPU (0), LOADGEN_CPUS (1; a taskset list such as 1-3), PORT,
# STOP_LOSS, STOP_CPU, DECODE_EVERY (every Nth listener decodes and is
# checked to hear the right speakers; 0 for none), WORKERS (1), SPREAD_AFTER
# (the server's spread_after, 200), HALL (1: --hall-mode), NO_BUILD=1,
# KEEP_LOGS=1. SERVER_CPU may be a list ("0-1"): its first CPU is the one
# whose saturation ends the ramp.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: scripts/bench-node.sh [--smoke]" >&2; exit 2 ;;
esac
if [ "$SMOKE" = 1 ]; then
  STEPS=${STEPS:-"20 60"}
  SECONDS_PER_STEP=${BENCH_SECONDS:-3}
  PATTERN=${PATTERN:-conversation}
  DECODE_EVERY=${DECODE_EVERY:-20}
else
  STEPS=${STEPS:-"250 500 1000 1500 2000 3000 4000"}
  SECONDS_PER_STEP=${BENCH_SECONDS:-8}
  PATTERN=${PATTERN:-continuous}
  DECODE_EVERY=${DECODE_EVERY:-500}
fi
SPEAKERS=${SPEAKERS:-3}
THREADS=${THREADS:-1}
SERVER_CPU=${SERVER_CPU:-0}
WORKERS=${WORKERS:-1}
SPREAD_AFTER=${SPREAD_AFTER:-200}  # matters only with WORKERS > 1
HALL=${HALL:-0}
for v in WORKERS SPREAD_AFTER HALL; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench-node: $v must be a number" >&2; exit 2; }
done
server_flags=(--workers "$WORKERS" --spread-after "$SPREAD_AFTER")
[ "$HALL" = 1 ] && server_flags+=(--hall-mode)
LOADGEN_CPUS=${LOADGEN_CPUS:-1}
PORT=${PORT:-18480}
STOP_LOSS=${STOP_LOSS:-0.001}
STOP_CPU=${STOP_CPU:-0.95}
steps=$(echo "$STEPS" | tr -s ' ,' ',' | sed 's/^,//; s/,$//')
NSTEPS=$(echo "$steps" | tr ',' '\n' | grep -c .)
# CPUs in the load generator's taskset list ("1", "1-3", "1,3").
NLOADGEN=$(python3 -c 'import sys; print(sum(int(b) - int(a) + 1 for a, _, b in (p.partition("-") if "-" in p else (p, "", p) for p in sys.argv[1].split(","))))' "$LOADGEN_CPUS")
export SMOKE STOP_LOSS STOP_CPU NSTEPS NLOADGEN SERVER_CPU

command -v taskset >/dev/null || { echo "bench-node: taskset (util-linux) is missing" >&2; exit 2; }
command -v python3 >/dev/null || { echo "bench-node: python3 is missing" >&2; exit 2; }
command -v curl >/dev/null || { echo "bench-node: curl is missing" >&2; exit 2; }
if [ "${NO_BUILD:-0}" != 1 ]; then
  scripts/setup.sh
  cargo build --release -p sfu-server -p examples --bin sfu-server --bin loadgen >&2
fi
# A WebSocket (both sides) and a UDP socket (load generator) per member.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

logs=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  wait 2>/dev/null || true
  if [ "${KEEP_LOGS:-0}" = 1 ]; then echo "bench-node: logs in $logs" >&2; else rm -rf "$logs"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every member joins from 127.0.0.1: the per-address join rate would
# refuse most of them.
SFU_JOINS_PER_IP_PER_MINUTE=0 taskset -c "$SERVER_CPU" target/release/sfu-server --http "127.0.0.1:$PORT" --log warn \
  "${server_flags[@]}" \
  >"$logs/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { echo "bench-node: server exited:" >&2; cat "$logs/server.log" >&2; exit 1; }
  sleep 0.1
done

echo "bench-node: server (${server_flags[*]}) on CPU $SERVER_CPU, load generator on CPU $LOADGEN_CPUS ($THREADS pool thread(s)), $SPEAKERS $PATTERN speakers, steps $steps, ${SECONDS_PER_STEP} s each" >&2
# Joins get slower as the room grows (every member hears of every join), so
# the bound is generous; the load generator bounds itself too.
limit=$(( NSTEPS * (SECONDS_PER_STEP + 240) + 60 ))
set +e
timeout "$limit" taskset -c "$LOADGEN_CPUS" target/release/loadgen \
    --url "http://127.0.0.1:$PORT" --speakers "$SPEAKERS" --pattern "$PATTERN" \
    --steps "$steps" --seconds "$SECONDS_PER_STEP" --threads "$THREADS" --join-parallel 4 \
    --stop-loss "$STOP_LOSS" --stop-cpu "$STOP_CPU" \
    $( [ "$DECODE_EVERY" -gt 0 ] && echo --decode-every "$DECODE_EVERY" ) \
    --pid "server=$server_pid" 2>"$logs/loadgen.log" \
  | python3 -u -c '
import json, os, sys
smoke = os.environ.get("SMOKE") == "1"
ncpus = float(os.environ.get("NLOADGEN", "1"))
stop_cpu = float(os.environ["STOP_CPU"])
server_cpu = int(os.environ["SERVER_CPU"].replace(",", "-").split("-")[0])
fmt = "{:>9} {:>9} {:>8} {:>9} {:>9} {:>10} {:>9} {:>10} {:>9} {:>11} {:>9}  {}"
print(fmt.format("listeners", "pkt/s", "loss", "jitter", "join_p95", "server", "its core", "us/pkt", "l/core", "KiB/listen", "loadgen", "note"))
rows = []
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    try:
        d = json.loads(line)
    except ValueError:
        continue
    rows.append(d)
    g = lambda k, default=0.0: d.get(k) if d.get(k) is not None else default
    notes = []
    if d.get("stopped_because"): notes.append(d["stopped_because"])
    if g("loadgen_cpu_cores") > 0.9 * ncpus: notes.append("load generator saturated")
    busy = (d.get("machine_cpu_busy") or [])
    core = busy[server_cpu] if server_cpu < len(busy) else 0.0
    if core > stop_cpu and g("server_cpu_cores") <= stop_cpu:
        notes.append("server core busy with other processes")
    if g("listeners_without_audio", 0): notes.append("%d without audio" % d["listeners_without_audio"])
    if g("listeners_checked", 0) and d["listeners_hearing_right_speakers"] != d["listeners_checked"]:
        notes.append("%d of %d checked hear the wrong speakers" % (d["listeners_checked"] - d["listeners_hearing_right_speakers"], d["listeners_checked"]))
    print(fmt.format(d["listeners"], "%.0f" % g("packets_per_second"), "%.3f%%" % (100 * g("loss")),
                     "%.2f ms" % g("jitter_ms_mean"), "%.0f ms" % g("join_to_first_audio_ms_p95"),
                     "%.3f cpu" % g("server_cpu_cores"), "%.2f" % core, "%.1f" % g("server_cpu_us_per_received_packet"),
                     "%.0f" % g("listeners_per_server_core"), "%.1f" % g("server_rss_kib_per_listener"),
                     "%.2f cpu" % g("loadgen_cpu_cores"), ", ".join(notes)), flush=True)
if not rows:
    print("bench-node: no step was measured (see the load generator log)")
    sys.exit(1)
clean = [d for d in rows if not d.get("stopped_because")]
last = rows[-1]
if clean:
    b = clean[-1]
    print("bench-node: %d listeners clean on one pinned core at %.3f cores (loss %.3f%%) -> about %.0f listeners per core (extrapolated from CPU); server RSS %.1f KiB per listener (VmRSS %d KiB)"
          % (b["listeners"], b.get("server_cpu_cores") or 0, 100 * b["loss"], b.get("listeners_per_server_core") or 0,
             b.get("server_rss_kib_per_listener") or 0, b.get("server_rss_kib") or 0))
else:
    print("bench-node: no clean step")
if last.get("stopped_because"):
    print("bench-node: the ramp ended at %d listeners: %s" % (last["listeners"], last["stopped_because"]))
elif (last.get("loadgen_cpu_cores") or 0) > 0.9 * ncpus:
    print("bench-node: the ramp ended with the load generator saturated (%.2f cores)" % last["loadgen_cpu_cores"])
else:
    print("bench-node: the ramp ended at the last step (%d listeners) without reaching a limit" % last["listeners"])
if smoke:
    bad = [d for d in rows if d["listeners_without_audio"] or d["listeners_connected"] != d["listeners"]
           or d["listeners_hearing_right_speakers"] != d["listeners_checked"] or d["loss"] > 0.01]
    if bad or len(rows) != int(os.environ["NSTEPS"]):
        print("bench-node: smoke FAILED")
        sys.exit(1)
    print("bench-node: smoke ok")
'
status=("${PIPESTATUS[@]}")
set -e
if [ "${status[0]}" -ne 0 ] || [ "${status[1]}" -ne 0 ]; then
  echo "bench-node: load generator exit ${status[0]}, report exit ${status[1]}; its last lines:" >&2
  tail -5 "$logs/loadgen.log" >&2
  exit 1
fi
