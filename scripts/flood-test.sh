#!/usr/bin/env bash
# Flood test: listeners hear speakers while one thread floods the server's
# media port with garbage and bogus STUN as fast as it can (the `flood`
# binary: random bytes, RTP- and DTLS-looking garbage, STUN binding requests
# with made-up ufrags and with a real server ufrag, so that the server must
# check their integrity). The flood starts before anyone joins: the
# listeners join under it. Then, still under the flood, a new member joins
# another channel and must hear its speaker.
#
#   scripts/flood-test.sh            # 200 listeners, 3 speakers, 20 s window, flood unlimited
#   scripts/flood-test.sh --smoke    # 30 listeners, 3 speakers, 10 s window, flood
#                                    # at 20,000 datagrams/s (CI: debug builds, 2 shared cores)
#
# Prints one JSON object (also in target/flood-test/report.json): the
# listeners' loss and who connected (the load generator's report), the late
# join, the flood's rate and what the server counted. Passes (exit 0) when
# every listener connected, the stable listeners lost less than MAX_LOSS of
# the packets due (0.1%; 1% for the smoke run), and the late member heard its
# speaker. The smoke run checks the whole path on a debug build; the loss
# figures that mean something are the full run's on release builds.
#
# Uses the binaries `cargo test --workspace` built: target/debug/sfu-server,
# target/debug/loadgen and target/debug/flood (SFU_SERVER_BIN, LOADGEN_BIN,
# FLOOD_BIN override, e.g. release builds for the figures in
# docs/RELIABILITY.md); builds them only when they are missing. With two or
# more CPUs and taskset, the server runs on CPU 0 and the flood and the load
# generator on CPU 1 (SERVER_CPU, CLIENT_CPUS). On a machine shared with
# other work, SERVER_NICE (e.g. -10, as root) keeps that work from starving
# the server. Environment: LISTENERS,
# SPEAKERS, WINDOW_SECONDS, MAX_LOSS, FLOOD_RATE (datagrams/s; 0: as fast as
# it can). Logs: target/flood-test/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET/flood-test

SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: scripts/flood-test.sh [--smoke]" >&2; exit 2 ;;
esac
if [ "$SMOKE" = 1 ]; then
  LISTENERS=${LISTENERS:-30}
  WINDOW_SECONDS=${WINDOW_SECONDS:-10}
  FLOOD_RATE=${FLOOD_RATE:-20000}
else
  LISTENERS=${LISTENERS:-200}
  WINDOW_SECONDS=${WINDOW_SECONDS:-20}
  FLOOD_RATE=${FLOOD_RATE:-0}
fi
SPEAKERS=${SPEAKERS:-3}
if [ "$SMOKE" = 1 ]; then MAX_LOSS=${MAX_LOSS:-0.01}; else MAX_LOSS=${MAX_LOSS:-0.001}; fi
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}

SERVER=${SFU_SERVER_BIN:-$TARGET/debug/sfu-server}
LOADGEN=${LOADGEN_BIN:-$TARGET/debug/loadgen}
FLOOD=${FLOOD_BIN:-$TARGET/debug/flood}
if [ ! -x "$SERVER" ] || [ ! -x "$LOADGEN" ] || [ ! -x "$FLOOD" ]; then
  echo "flood-test: building sfu-server, loadgen and flood (run after cargo test --workspace to reuse its build)" >&2
  cargo build -p sfu-server -p examples --bins >&2
fi
command -v python3 >/dev/null || { echo "flood-test: python3 is missing" >&2; exit 2; }
command -v curl >/dev/null || { echo "flood-test: curl is missing" >&2; exit 2; }
# A WebSocket and a UDP socket per member.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Pinning: only where there is a CPU for each side.
server_on=()
clients_on=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  server_on=(taskset -c "$SERVER_CPU")
  clients_on=(taskset -c "$CLIENT_CPUS")
fi
if [ -n "${SERVER_NICE:-}" ]; then
  server_on=(nice -n "$SERVER_NICE" "${server_on[@]}")
fi

rm -rf "$OUT"
mkdir -p "$OUT"
# shellcheck source=lib/processes.sh
. scripts/lib/processes.sh
pids=()
cleanup() {
  set +e
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop "${pids[$i]}"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
started=$(date +%s)

# The server, with nothing inherited from the environment (env execs it:
# $! is the server itself). Every member joins from 127.0.0.1: the
# per-address join limit (60 a minute by default; the full run joins 200
# listeners) is off.
"${server_on[@]}" env $(env | sed -n 's/^\(SFU_[A-Z_]*\)=.*/-u \1/p') -u RUST_LOG \
  SFU_JOINS_PER_IP_PER_MINUTE=0 \
  "$SERVER" --http 127.0.0.1:0 --udp 127.0.0.1:0 --log warn >"$OUT/server.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
printed_addr() { grep -m1 -o 'open http://[0-9.:]*' "$1" | sed 's#.*//##'; }
wait_for "flood-test: the server printed its address" printed_addr "$OUT/server.log"
URL="http://$(printed_addr "$OUT/server.log")"

# The flood, until told to stop (at most an hour).
rate=()
[ "$FLOOD_RATE" -gt 0 ] && rate=(--rate "$FLOOD_RATE")
# At nice 10: it shares its CPU with the load generator, whose sockets must
# be read for the loss to be the server's; it sends as fast as the rest of
# that CPU lets it (its rate is in the report).
"${clients_on[@]}" nice -n 10 "$FLOOD" --url "$URL" --seconds 3600 "${rate[@]}" >"$OUT/flood.json" 2>"$OUT/flood.log" &
flood_pid=$!
pids+=("$flood_pid")
# It says so once its own member joined and the datagrams go.
wait_for "flood-test: the flood started" grep -q "flooding" "$OUT/flood.log"

# Datagrams the kernel dropped at a full socket buffer, machine-wide (the
# server's socket and the load generator's alike).
rcvbuf_errors() { awk '/^Udp: [0-9]/ {print $6}' /proc/net/snmp 2>/dev/null || echo 0; }
rcvbuf_before=$(rcvbuf_errors)

# Listeners and speakers join under the flood, then the measured window.
rc=0
"${clients_on[@]}" "$LOADGEN" --url "$URL" --channel hall --speakers "$SPEAKERS" \
  --listeners "$LISTENERS" --seconds "$WINDOW_SECONDS" --join-parallel 8 --decode-every 10 \
  --pid "server=$server_pid" >"$OUT/loadgen.json" 2>"$OUT/loadgen.log" || rc=$?
[ "$rc" -eq 0 ] || echo "flood-test: the load generator failed (exit $rc): $(tail -n 3 "$OUT/loadgen.log")" >&2

# A new member, still under the flood: it joins and hears its speaker.
"${clients_on[@]}" "$LOADGEN" --url "$URL" --channel late --speakers 1 --listeners 1 \
  --seconds 2 --decode >"$OUT/late.json" 2>"$OUT/late.log" || rc=$?

curl -sf "$URL/metrics" >"$OUT/metrics.txt" || true
echo "$(($(rcvbuf_errors) - rcvbuf_before))" >"$OUT/rcvbuf_errors"
kill -INT "$flood_pid" 2>/dev/null || true
wait "$flood_pid" 2>/dev/null || true

python3 - "$OUT" "$SMOKE" "$MAX_LOSS" "$(($(date +%s) - started))" <<'EOF'
import json, re, sys
out, smoke, max_loss, took = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3]), int(sys.argv[4])

def load(name):
    try:
        with open(f"{out}/{name}") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None

def metric(name, label=None):
    pattern = re.escape(name) + (r"\{" + re.escape(label) + r"\}" if label else "") + r" (\S+)"
    try:
        m = re.search(r"^" + pattern + r"$", open(f"{out}/metrics.txt").read(), re.M)
    except OSError:
        return None
    return float(m.group(1)) if m else None

hall, late, flood = load("loadgen.json"), load("late.json"), load("flood.json")
try:
    rcvbuf_errors = int(open(f"{out}/rcvbuf_errors").read())
except (OSError, ValueError):
    rcvbuf_errors = None
report = {
    "mode": "smoke" if smoke else "full",
    "max_loss": max_loss,
    "seconds": took,
    "flood": flood,
    # From the load generator's report of the hall.
    **{k: (hall or {}).get(k) for k in [
        "listeners", "listeners_connected", "listeners_without_audio", "speakers", "loss",
        "delivered_of_due", "listeners_hearing_right_speakers", "listeners_checked",
        "join_to_first_audio_ms_p95", "server_cpu_cores", "loadgen_cpu_cores", "machine_cpu_busy",
    ]},
    "udp_rcvbuf_errors_machine": rcvbuf_errors,
    "late_join_heard_speaker": bool(late) and late.get("listeners_hearing_right_speakers") == 1,
    "late_join_to_first_audio_ms": late and late.get("join_to_first_audio_ms_max"),
    "server": {
        "datagrams_in": metric("sfu_datagrams_total", 'direction="in"'),
        "dropped_unknown_source": metric("sfu_dropped_total", 'reason="unknown_source"'),
        "dropped_malformed": metric("sfu_dropped_total", 'reason="malformed"'),
        "dropped_rejected": metric("sfu_dropped_total", 'reason="rejected"'),
        "send_buffer_full": metric("sfu_dropped_total", 'reason="send_buffer_full"'),
        "peers_failed": metric("sfu_peers_failed_total"),
    },
}
problems = []
if not hall:
    problems.append("no load generator report")
else:
    if hall.get("listeners_connected") != hall.get("listeners"):
        problems.append(f"{hall.get('listeners_connected')} of {hall.get('listeners')} listeners connected")
    if hall.get("loss") is None or hall["loss"] >= max_loss:
        problems.append(f"loss {hall.get('loss')} (at most {max_loss})")
if not report["late_join_heard_speaker"]:
    problems.append("the late member did not hear its speaker")
if not flood:
    problems.append("no flood report")
report["pass"] = not problems
report["problems"] = problems
with open(f"{out}/report.json", "w") as f:
    json.dump(report, f, indent=1)
print(json.dumps(report))
sys.exit(0 if report["pass"] else 1)
EOF
