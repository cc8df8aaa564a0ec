#!/usr/bin/env bash
# A cascade on one machine: 1 core and K edges of target/release/sfu-server on
# 127.0.0.1 (random cluster secret), then target/release/loadgen with its
# speakers on edge 1 and its listeners spread round-robin over the edges,
# measuring the CPU of every server process. Prints loadgen's JSON report.
# Everything it started is killed when it exits (normally, on error or on
# Ctrl-C).
#
#   scripts/cluster-demo.sh            # 1 core + $EDGES edges, $LISTENERS listeners, $SECONDS s
#   scripts/cluster-demo.sh --smoke    # 1 core + 2 edges, 20 listeners, 5 s; exits non-zero
#                                      # unless every checked listener hears the right
#                                      # speakers and loss < 1 %
#   scripts/cluster-demo.sh --redis [--smoke]
#                                      # a fleet on Redis in two regions (network
#                                      # namespaces, netem): scripts/fleet-demo.sh
#
# Environment (defaults in brackets): EDGES [4], LISTENERS [200], SECONDS [10]
# (measurement), SPEAKERS [3], DECODE_EVERY [50] (every Nth listener decodes
# and is checked; the others count packets), NO_BUILD=1 (use the binaries as
# they are), KEEP_LOGS=1 (keep the servers' logs and print where).
#
# Note: `SECONDS` is also bash's clock; it is only taken from the environment
# when the caller set it there.
declare -i _started_with=$SECONDS
if env | grep -q '^SECONDS='; then
  DURATION=$_started_with
else
  DURATION=10
fi
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  --redis) shift; exec scripts/fleet-demo.sh "$@" ;;
  "") ;;
  -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
  *) echo "cluster-demo: unknown argument $1 (--smoke, or --redis [--smoke])" >&2; exit 2 ;;
esac

EDGES=${EDGES:-4}
LISTENERS=${LISTENERS:-200}
SPEAKERS=${SPEAKERS:-3}
DECODE_EVERY=${DECODE_EVERY:-50}
if [ "$SMOKE" = 1 ]; then
  EDGES=2
  LISTENERS=20
  DURATION=5
  DECODE_EVERY=4
fi
for v in EDGES LISTENERS SPEAKERS DECODE_EVERY DURATION; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
    echo "cluster-demo: $v must be a number, not '${!v}'" >&2
    exit 2
  fi
done
if [ "$EDGES" -lt 1 ] || [ "$EDGES" -gt 16 ] || [ "$DURATION" -lt 1 ] || [ "$DURATION" -gt 600 ] \
  || [ "$LISTENERS" -gt 5000 ] || [ "$DECODE_EVERY" -lt 1 ]; then
  echo "cluster-demo: bounds: 1..16 edges, 1..600 s, at most 5000 listeners, DECODE_EVERY >= 1" >&2
  exit 2
fi

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
if [ "${NO_BUILD:-0}" != 1 ]; then
  echo "cluster-demo: cargo build --release -p sfu-server -p examples" >&2
  cargo build --release -p sfu-server -p examples >&2
fi
SERVER=$TARGET/sfu-server
LOADGEN=$TARGET/loadgen
for b in "$SERVER" "$LOADGEN"; do
  [ -x "$b" ] || { echo "cluster-demo: $b is missing (build it, or drop NO_BUILD)" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cluster-demo.XXXXXX")
SECRET=$(head -c 32 /dev/urandom | base64 | tr -d '\n/+=')
names=()
pids=()
loadgen_pid=""
failed=1

# stop: TERM, then KILL if the process is still there after 5 s.
# shellcheck source=lib/processes.sh
. scripts/lib/processes.sh
cleanup() {
  set +e
  trap - EXIT INT TERM
  stop_all_and_show_logs
  if [ "${KEEP_LOGS:-0}" = 1 ]; then
    echo "cluster-demo: logs in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
# Interrupted: clean up without dumping the logs.
trap 'failed=0; exit 130' INT
trap 'failed=0; exit 143' TERM

# start_node NAME ARGS...: starts a server in the background (HTTP on a free
# port); its pid is appended to `pids`. Every member joins from 127.0.0.1,
# so the per-address join rate is off.
start_node() {
  local name=$1
  shift
  env -u SFU_AUTH_SECRET -u SFU_CONFIG -u RUST_LOG \
    SFU_CLUSTER_SECRET="$SECRET" SFU_DRAIN_TIMEOUT_SECS=1 NO_COLOR=1 \
    SFU_JOINS_PER_IP_PER_MINUTE=0 \
    "$SERVER" --http 127.0.0.1:0 --log "warn,sfu_server::cluster=info" "$@" \
    >"$WORK/$name.out" 2>"$WORK/$name.err" &
  names+=("$name")
  pids+=("$!")
}

# wait_url NAME PID: waits (at most 15 s) for the server to print its URL and
# answer /healthz; prints the URL. Fails if the process died.
wait_url() {
  local name=$1 pid=$2 url=""
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || return 1
    url=$(sed -n 's|.*open \(http://[0-9.:]*\)/.*|\1|p' "$WORK/$name.out" | head -n 1)
    [ -n "$url" ] && break
    sleep 0.1
  done
  [ -n "$url" ] || return 1
  for _ in $(seq 1 150); do
    if curl -fsS --max-time 1 "$url/healthz" >/dev/null 2>&1; then
      echo "$url"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# A free UDP port for the core's QUIC listener (a few tries: another process
# may take it between the check and the bind).
core_url=""
for attempt in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 40000))
  if ss -Hlun 2>/dev/null | awk '{print $4}' | grep ":$port\$" >/dev/null; then
    continue
  fi
  start_node core --role core --node-id 0 --cluster-listen "127.0.0.1:$port"
  if core_url=$(wait_url core "${pids[-1]}"); then
    break
  fi
  echo "cluster-demo: core did not start on udp $port (attempt $attempt)" >&2
  stop "${pids[-1]}"
  unset 'pids[-1]' 'names[-1]'
  core_url=""
done
[ -n "$core_url" ] || { echo "cluster-demo: no core" >&2; exit 1; }
core_pid=${pids[0]}
echo "cluster-demo: core pid $core_pid at $core_url, cluster udp 127.0.0.1:$port" >&2

edge_urls=()
for e in $(seq 1 "$EDGES"); do
  start_node "edge$e" --role edge --node-id "$e" --cluster-core "127.0.0.1:$port"
done
for e in $(seq 1 "$EDGES"); do
  url=$(wait_url "edge$e" "${pids[$e]}") || { echo "cluster-demo: edge $e did not start" >&2; exit 1; }
  edge_urls+=("$url")
  echo "cluster-demo: edge $e pid ${pids[$e]} at $url" >&2
done

# Every edge linked to the core (authenticated QUIC) before clients come.
linked=0
for _ in $(seq 1 150); do
  linked=$(grep -c "edge linked" "$WORK/core.out" || true)
  [ "$linked" -ge "$EDGES" ] && break
  sleep 0.1
done
if [ "$linked" -lt "$EDGES" ]; then
  echo "cluster-demo: only $linked of $EDGES edges linked to the core" >&2
  exit 1
fi

pid_args=(--pid "core=$core_pid")
for e in $(seq 1 "$EDGES"); do
  pid_args+=(--pid "edge$e=${pids[$e]}")
done
edges_csv=$(IFS=,; echo "${edge_urls[*]}")
# Bounded: joins (at most 20 s each, the ramp stops after 5 failures in a
# row), first audio (20 s), the measurement, leaving (5 s).
limit=$((90 + DURATION + LISTENERS / 4))
echo "cluster-demo: loadgen: $SPEAKERS speakers on edge 1, $LISTENERS listeners over $EDGES edges, $DURATION s (limit $limit s)" >&2
timeout -k 5 "$limit" "$LOADGEN" --edges "$edges_csv" --speakers "$SPEAKERS" \
  --listeners "$LISTENERS" --seconds "$DURATION" --decode-every "$DECODE_EVERY" \
  "${pid_args[@]}" >"$WORK/report.json" &
loadgen_pid=$!
rc=0
wait "$loadgen_pid" || rc=$?
loadgen_pid=""
cat "$WORK/report.json"
if [ "$rc" -ne 0 ]; then
  echo "cluster-demo: loadgen failed (exit $rc)" >&2
  exit 1
fi
for i in "${!pids[@]}"; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    echo "cluster-demo: ${names[$i]} died during the run" >&2
    exit 1
  fi
done

if [ "$SMOKE" = 1 ]; then
  # The value of a top-level number field of the pretty-printed report.
  field() { sed -n "s/^ *\"$1\": \([^,]*\),\{0,1\}\$/\1/p" "$WORK/report.json"; }
  listeners=$(field listeners)
  checked=$(field listeners_checked)
  right=$(field listeners_hearing_right_speakers)
  silent=$(field listeners_without_audio)
  loss=$(field loss)
  if ! awk -v n="$listeners" -v want="$LISTENERS" -v c="$checked" -v r="$right" \
    -v s="$silent" -v l="$loss" \
    'BEGIN { exit !(n == want && c > 0 && r == c && s == 0 && l != "" && l + 0 < 0.01) }'; then
    echo "cluster-demo: SMOKE FAILED: listeners $listeners/$LISTENERS, right speakers $right/$checked, without audio $silent, loss $loss" >&2
    exit 1
  fi
  echo "cluster-demo: smoke OK: $right/$checked checked listeners hear the right speakers, loss $loss, $listeners listeners" >&2
fi
failed=0
