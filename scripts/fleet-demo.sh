#!/usr/bin/env bash
# A fleet on Redis in two "regions" on one machine (`scripts/cluster-demo.sh
# --redis` runs this): each region is a network namespace with one
# sfu-server node, the namespaces hang off a bridge in the host's namespace
# (where redis-server and the load generator run), and `tc netem` delays
# every packet leaving a region by DELAY_MS (so eu <-> us is 2 x DELAY_MS
# one way, a client or Redis <-> a node DELAY_MS one way). The nodes run
# with regional edges (`--edge-after`): the load generator's speakers join
# the eu node (which claims the channel), its listeners join the two nodes
# in turn, each node taking its own region for theirs: the eu listeners are
# served by the core, the us listeners by the us node as an edge that
# follows the core over the QUIC cascade (a join that comes before the
# channel is big is redirected to the core; the load generator follows).
# Prints where the members landed (`sfu-server fleet`) and the load
# generator's JSON report (who heard what, loss, latency). Everything it
# set up is removed when it exits (normally, on error or on Ctrl-C).
#
#   scripts/fleet-demo.sh            # $LISTENERS listeners, $SECONDS s
#   scripts/fleet-demo.sh --smoke    # 12 listeners, 4 s; exits non-zero unless every
#                                    # checked listener hears the right speakers,
#                                    # loss < 1 % and both nodes carry members
#
# Needs root (network namespaces, a bridge, tc), ip and tc (iproute2),
# redis-server (scripts/setup.sh installs it).
# Environment (defaults in brackets): LISTENERS [60], SECONDS [10], SPEAKERS
# [3], DELAY_MS [20], EDGE_AFTER [2], DECODE_EVERY [10], NO_BUILD=1 (use the
# binaries as they are), SFU_SERVER_BIN and LOADGEN_BIN (default: the
# release builds), KEEP_LOGS=1.
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
  "") ;;
  -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
  *) echo "fleet-demo: unknown argument $1 (only --smoke)" >&2; exit 2 ;;
esac

LISTENERS=${LISTENERS:-60}
SPEAKERS=${SPEAKERS:-3}
DELAY_MS=${DELAY_MS:-20}
EDGE_AFTER=${EDGE_AFTER:-2}
DECODE_EVERY=${DECODE_EVERY:-10}
if [ "$SMOKE" = 1 ]; then
  LISTENERS=12
  DURATION=4
  DECODE_EVERY=2
fi
for v in LISTENERS SPEAKERS DELAY_MS EDGE_AFTER DECODE_EVERY DURATION; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
    echo "fleet-demo: $v must be a number, not '${!v}'" >&2
    exit 2
  fi
done
if [ "$DURATION" -lt 1 ] || [ "$DURATION" -gt 600 ] || [ "$LISTENERS" -gt 2000 ] \
  || [ "$DELAY_MS" -gt 1000 ] || [ "$DECODE_EVERY" -lt 1 ] || [ "$SPEAKERS" -lt 1 ]; then
  echo "fleet-demo: bounds: 1..600 s, at most 2000 listeners, DELAY_MS <= 1000, DECODE_EVERY >= 1, a speaker" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
  echo "fleet-demo: needs root, ip and tc (network namespaces and netem)" >&2
  exit 2
fi
command -v redis-server >/dev/null || { echo "fleet-demo: no redis-server (scripts/setup.sh)" >&2; exit 2; }

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
if [ -z "${SFU_SERVER_BIN:-}${LOADGEN_BIN:-}" ] && [ "${NO_BUILD:-0}" != 1 ]; then
  echo "fleet-demo: cargo build --release -p sfu-server -p examples" >&2
  cargo build --release -p sfu-server -p examples >&2
fi
SERVER=${SFU_SERVER_BIN:-$TARGET/sfu-server}
LOADGEN=${LOADGEN_BIN:-$TARGET/loadgen}
for b in "$SERVER" "$LOADGEN"; do
  [ -x "$b" ] || { echo "fleet-demo: $b is missing (build it, or drop NO_BUILD)" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fleet-demo.XXXXXX")
SECRET=$(head -c 32 /dev/urandom | base64 | tr -d '\n/+=')
# Members come from another namespace than the nodes': tokens, as in
# production (the load generator's members share one; its per-token and
# per-address join rates are off on the nodes).
export SFU_AUTH_SECRET
SFU_AUTH_SECRET=$(head -c 32 /dev/urandom | base64 | tr -d '\n/+=')
LOADGEN_TOKEN=$("$SERVER" token --identity loadgen --channel load --publish --subscribe --ttl 3600)
export LOADGEN_TOKEN
# Names of our own (interface names are at most 15 characters).
tag=$(( $$ % 100000 ))
BR=sfbr$tag
# A /24 nobody routes yet.
net=""
for _ in $(seq 1 50); do
  candidate="10.213.$((RANDOM % 250 + 1))"
  if ! ip -4 addr | grep "inet $candidate\." >/dev/null; then
    net=$candidate
    break
  fi
done
[ -n "$net" ] || { echo "fleet-demo: no free 10.213.x.0/24" >&2; exit 1; }
HOST=$net.1
regions=(eu us)
names=()
pids=()
namespaces=()
loadgen_pid=""
failed=1

# shellcheck source=lib/processes.sh
. scripts/lib/processes.sh
cleanup() {
  set +e
  trap - EXIT INT TERM
  stop_all_and_show_logs
  for ns in "${namespaces[@]}"; do
    ip netns del "$ns" 2>/dev/null
  done
  ip link del "$BR" 2>/dev/null
  if [ "${KEEP_LOGS:-0}" = 1 ]; then
    echo "fleet-demo: logs in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'failed=0; exit 130' INT
trap 'failed=0; exit 143' TERM

# The network: a bridge with the host's address, a namespace per region
# with a veth on the bridge, netem on the region's side.
ip link add "$BR" type bridge
ip addr add "$HOST/24" dev "$BR"
ip link set "$BR" up
for i in "${!regions[@]}"; do
  ns=sfu-$tag-${regions[$i]}
  ip netns add "$ns"
  namespaces+=("$ns")
  ip link add "sfv$tag$i" type veth peer name "sfp$tag$i"
  ip link set "sfp$tag$i" netns "$ns"
  ip link set "sfv$tag$i" master "$BR" up
  ip -n "$ns" addr add "$net.$((11 + i))/24" dev "sfp$tag$i"
  ip -n "$ns" link set "sfp$tag$i" up
  ip -n "$ns" link set lo up
  if [ "$DELAY_MS" -gt 0 ] \
    && ! ip netns exec "$ns" tc qdisc add dev "sfp$tag$i" root netem delay "${DELAY_MS}ms" 2>"$WORK/tc.err"; then
    # A kernel without sch_netem (some VMs' kernels have no modules).
    echo "fleet-demo: WARNING: tc netem is not available here ($(head -n 1 "$WORK/tc.err")): the regions have no delay between them" >&2
    DELAY_MS=0
  fi
done

# Redis on the bridge, in the host's namespace.
# With a password, as Redis wants beyond loopback (protected mode).
REDIS_PORT=$((20000 + RANDOM % 40000))
REDIS_PASS=$(head -c 24 /dev/urandom | base64 | tr -d '\n/+=')
redis-server --bind "$HOST" --port "$REDIS_PORT" --save "" --appendonly no \
  --requirepass "$REDIS_PASS" >"$WORK/redis.out" 2>&1 &
names+=(redis)
pids+=("$!")
wait_for "redis-server on $HOST:$REDIS_PORT" \
  env REDISCLI_AUTH="$REDIS_PASS" redis-cli -h "$HOST" -p "$REDIS_PORT" ping
REDIS_URL="redis://:$REDIS_PASS@$HOST:$REDIS_PORT/0"
# Each region reaches Redis over the bridge (its ports need a moment to
# come up).
for ns in "${namespaces[@]}"; do
  wait_for "redis from $ns" ip netns exec "$ns" bash -c "exec 3<>/dev/tcp/$HOST/$REDIS_PORT"
done

# A node per region: HTTP on port 8080 of its address, media and cluster
# links on its address too.
urls=()
for i in "${!regions[@]}"; do
  region=${regions[$i]}
  addr=$net.$((11 + i))
  ip netns exec "sfu-$tag-$region" env -u SFU_CONFIG -u RUST_LOG -u LOADGEN_TOKEN \
    SFU_CLUSTER_SECRET="$SECRET" SFU_REDIS_URL="$REDIS_URL" SFU_DRAIN_TIMEOUT_SECS=1 \
    NO_COLOR=1 SFU_JOINS_PER_IP_PER_MINUTE=0 SFU_JOINS_PER_TOKEN_PER_MINUTE=0 \
    "$SERVER" --http "$addr:8080" --udp "$addr:0" --workers 1 \
    --node-id "$((i + 1))" --region "$region" \
    --edge-after "$EDGE_AFTER" --cluster-listen "$addr:7000" \
    --log "warn,sfu_server::cluster=info,sfu_server::fleet=info" \
    >"$WORK/$region.out" 2>"$WORK/$region.err" &
  names+=("$region")
  pids+=("$!")
  urls+=("http://$addr:8080")
done
for i in "${!regions[@]}"; do
  wait_for "the ${regions[$i]} node" curl -fsS --max-time 1 "${urls[$i]}/healthz"
  echo "fleet-demo: ${regions[$i]} node at ${urls[$i]} (namespace sfu-$tag-${regions[$i]}, +${DELAY_MS} ms out)" >&2
done
export SFU_REDIS_URL="$REDIS_URL"  # for `sfu-server fleet` (not in argv)
wait_for "both nodes registered" bash -c "\"$SERVER\" fleet | grep -c serving | grep -qx 2"

# The load generator on the bridge: speakers to the eu node, listeners to
# eu and us in turn. Bounded like cluster-demo's.
limit=$((90 + DURATION + LISTENERS / 4))
echo "fleet-demo: loadgen: $SPEAKERS speakers on eu, $LISTENERS listeners over eu and us, $DURATION s (limit $limit s)" >&2
timeout -k 5 "$limit" "$LOADGEN" --bind "$HOST" --url "${urls[0]}" --url "${urls[1]}" \
  --speakers "$SPEAKERS" --listeners "$LISTENERS" --seconds "$DURATION" \
  --decode-every "$DECODE_EVERY" --pid "eu=${pids[1]}" --pid "us=${pids[2]}" \
  >"$WORK/report.json" 2>"$WORK/loadgen.err" &
loadgen_pid=$!
# Where the members landed: the fleet as Redis sees it, once every
# listener joined (the node records say how many members each carries).
fleet_view=""
while kill -0 "$loadgen_pid" 2>/dev/null; do
  view=$("$SERVER" fleet 2>/dev/null || true)
  members=$(awk '$4 ~ /^[0-9]+$/ {n += $4} END {print n + 0}' <<<"$view")
  if [ "$members" -ge $((SPEAKERS + LISTENERS)) ]; then
    fleet_view=$view
    break
  fi
  sleep 0.5
done
rc=0
wait "$loadgen_pid" || rc=$?
loadgen_pid=""
echo "fleet-demo: where the members landed (sfu-server fleet):" >&2
echo "${fleet_view:-(not every member joined)}" >&2
for r in "${regions[@]}"; do
  grep -h "following a core\|core now\|new core" "$WORK/$r.out" | sed "s/^/fleet-demo: $r: /" >&2 || true
done
cat "$WORK/report.json"
if [ "$rc" -ne 0 ]; then
  echo "fleet-demo: loadgen failed (exit $rc)" >&2
  tail -n 5 "$WORK/loadgen.err" >&2
  exit 1
fi

if [ "$SMOKE" = 1 ]; then
  field() { sed -n "s/^ *\"$1\": \([^,]*\),\{0,1\}\$/\1/p" "$WORK/report.json"; }
  listeners=$(field listeners)
  checked=$(field listeners_checked)
  right=$(field listeners_hearing_right_speakers)
  silent=$(field listeners_without_audio)
  loss=$(field loss)
  # Both nodes carried members: node 2 (us) served its listeners itself.
  us_members=$(awk '$1 == 2 && $2 == "us" {print $4}' <<<"$fleet_view")
  if ! awk -v n="$listeners" -v want="$LISTENERS" -v c="$checked" -v r="$right" \
    -v s="$silent" -v l="$loss" -v us="${us_members:-0}" \
    'BEGIN { exit !(n == want && c > 0 && r == c && s == 0 && l != "" && l + 0 < 0.01 && us > 0) }'; then
    echo "fleet-demo: SMOKE FAILED: listeners $listeners/$LISTENERS, right speakers $right/$checked, without audio $silent, loss $loss, members on the us node ${us_members:-none}" >&2
    exit 1
  fi
  echo "fleet-demo: smoke OK: $right/$checked checked listeners hear the right speakers, loss $loss, $us_members members on the us edge" >&2
fi
failed=0
