#!/usr/bin/env bash
# Real-browser test in two WebRTC stacks: headless Chromium and headless
# Firefox (the Debian packages chromium and firefox-esr) join the demo page
# from several tabs against a debug sfu-server and check audio flows both
# ways, member lists, speaker highlighting and leaving; then a page of each
# publishes over WHIP and a page of each listens over WHEP; a page whose
# WebSocket is cut resumes, and a page restarts ICE; and in a fleet of two
# servers on a Redis, a page that joins through the node that does not
# serve the channel follows the redirect; and a listener page of a server in
# hall mode plays 40 ms packets; and on a server with hybrid channels two
# pages talk peer-to-peer, a third moves them onto the SFU and its leaving
# brings them back, each page measuring the gap in what it hears
# (sfu-server/tests/browser/test.mjs, hybrid.mjs).
#
# Everything runs in a fresh network namespace whose only addresses are
# loopback ones (scripts/lib/netns.sh): browsers gather ICE candidates on
# every interface they see, and test packets must stay on 127.0.0.0/8. The
# namespace has a veth pair on 127.0.0.2/.3 as its default route, without
# which Firefox gathers no candidates at all. Needs root (ip netns);
# installs what is missing (idempotent).
#
# Outputs: target/browser-test.png (screenshot), target/browser-test-server.log.
# Environment: VERBOSE=1 echoes the pages' consoles; SFU_LOG is the server's
# log filter (default "info"; "debug" to chase negotiation problems);
# SFU_SERVER_BIN is a server binary to test instead of building one with
# `cargo build -p sfu-server` (scripts/test.sh passes the one its
# `cargo test --workspace` built).
set -euo pipefail
if [ -n "${SFU_SERVER_BIN:-}" ]; then
  # Relative to where we were called from, before the cd below.
  SFU_SERVER_BIN=$(realpath -m -- "$SFU_SERVER_BIN")
fi
cd "$(dirname "$0")/.."
ROOT=$PWD
TEST_DIR=$ROOT/sfu-server/tests/browser
PORT=18080
started=$(date +%s)

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

# --- what the test needs --------------------------------------------------
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/firefox-esr ] || need+=(firefox-esr)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "browser-test: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "browser-test: warning: node $(node --version) is older than playwright-core's minimum (20)"
fi

# playwright-core for Chromium, puppeteer-core for Firefox (WebDriver BiDi);
# neither downloads a browser (we point them at /usr/bin/chromium and
# /usr/bin/firefox-esr). `npm ci` only when the lock file changed since the
# last install, so warm runs skip it.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 PUPPETEER_SKIP_DOWNLOAD=1
(
  cd "$TEST_DIR"
  if [ ! -f package-lock.json ]; then
    npm install --no-audit --no-fund
    cp package-lock.json node_modules/.installed-lock
  elif ! cmp -s package-lock.json node_modules/.installed-lock 2>/dev/null; then
    npm ci --no-audit --no-fund
    cp package-lock.json node_modules/.installed-lock
  fi
)

if [ -n "${SFU_SERVER_BIN:-}" ]; then
  SERVER=$SFU_SERVER_BIN
  [ -x "$SERVER" ] || { echo "browser-test: SFU_SERVER_BIN=$SERVER is not an executable file"; exit 1; }
  echo "browser-test: server $SERVER (SFU_SERVER_BIN, not built here)"
else
  echo "browser-test: cargo build -p sfu-server"
  cargo build -p sfu-server
  SERVER=${CARGO_TARGET_DIR:-$ROOT/target}/debug/sfu-server
fi

# --- namespace, server, test ------------------------------------------------
# shellcheck source=lib/processes.sh
. scripts/lib/processes.sh
# shellcheck source=lib/netns.sh
. scripts/lib/netns.sh
NS=sfu-browser-$$
SERVER_LOG=$ROOT/target/browser-test-server.log
server_pid=""
test_pid=""
trap 'netns_cleanup "$NS"' EXIT
trap 'exit 130' INT TERM

netns_create "$NS" veth

# Started directly, not through in_netns: $! must be the server itself
# (ip netns exec and env exec it). Development mode with dev_moderation:
# the lecture-hall check has a page promote and demote another. Two media
# workers, a channel spread over them from its second member: the pages of
# a channel land on whichever worker carries fewer members then.
$SUDO ip netns exec "$NS" env SFU_DEV_MODERATION=true "$SERVER" --http 127.0.0.1:$PORT --udp 127.0.0.1:0 \
  --workers 2 --spread-after 1 --log "${SFU_LOG:-info}" >"$SERVER_LOG" 2>&1 &
server_pid=$!

for _ in $(seq 1 100); do
  netns_healthy "$NS" $PORT && break
  kill -0 "$server_pid" 2>/dev/null || { echo "browser-test: the server exited:"; cat "$SERVER_LOG"; exit 1; }
  sleep 0.1
done
netns_healthy "$NS" $PORT || { echo "browser-test: the server did not become healthy"; cat "$SERVER_LOG"; exit 1; }
echo "browser-test: server up in namespace $NS ($(grep -m1 -o 'media on udp [0-9.:]*' "$SERVER_LOG" || true))"

# A fleet of two more servers on a Redis of their own, for the redirect
# check.
FLEET_LOG=$ROOT/target/browser-test-fleet.log
$SUDO ip netns exec "$NS" redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no >"$FLEET_LOG" 2>&1 &
for _ in $(seq 1 100); do
  in_netns "$NS" bash -c 'exec 3<>/dev/tcp/127.0.0.1/16379' 2>/dev/null && break
  sleep 0.1
done
for n in 1 2; do
  $SUDO ip netns exec "$NS" "$SERVER" --http 127.0.0.1:$((PORT + n)) --udp 127.0.0.1:0 --workers 1 \
    --node-id $n --redis redis://127.0.0.1:16379/ --log "${SFU_LOG:-info}" >>"$FLEET_LOG" 2>&1 &
done
# Hall mode: listeners get 40 ms packets.
$SUDO ip netns exec "$NS" "$SERVER" --http 127.0.0.1:$((PORT + 3)) --udp 127.0.0.1:0 --workers 1 \
  --hall-mode --log "${SFU_LOG:-info}" >>"$FLEET_LOG" 2>&1 &
# Hybrid channels: P2P up to 2 members, back to P2P a second after the
# channel is down to 2.
$SUDO ip netns exec "$NS" env SFU_P2P_RETURN_AT=2 SFU_P2P_RETURN_AFTER_SECS=1 "$SERVER" \
  --http 127.0.0.1:$((PORT + 4)) --udp 127.0.0.1:0 --workers 1 --hybrid --p2p-max 2 \
  --log "${SFU_LOG:-info}" >>"$FLEET_LOG" 2>&1 &
# The lecture hall spread over two workers, for the hall check alone: its
# pages join one after the other on an idle server, so the moderator is on
# worker 0 and the asker on worker 1.
$SUDO ip netns exec "$NS" env SFU_DEV_MODERATION=true "$SERVER" --http 127.0.0.1:$((PORT + 5)) \
  --udp 127.0.0.1:0 --workers 2 --spread-after 1 --log "${SFU_LOG:-info}" >>"$FLEET_LOG" 2>&1 &
for n in 1 2 3 4 5; do
  for _ in $(seq 1 100); do
    netns_healthy "$NS" $((PORT + n)) && break
    sleep 0.1
  done
  netns_healthy "$NS" $((PORT + n)) || { echo "browser-test: server $n (fleet, hall mode, hybrid, spread hall) did not become healthy"; cat "$FLEET_LOG"; exit 1; }
done

netns_run_test "$NS" 180 "$SERVER_LOG" browser-test env SFU_URL="http://127.0.0.1:$PORT" \
  SFU_FLEET="http://127.0.0.1:$((PORT + 1)) http://127.0.0.1:$((PORT + 2))" \
  SFU_HALL="http://127.0.0.1:$((PORT + 3))" SFU_HYBRID="http://127.0.0.1:$((PORT + 4))" \
  SFU_SPREAD="http://127.0.0.1:$((PORT + 5))" \
  SCREENSHOT="$ROOT/target/browser-test.png" VERBOSE="${VERBOSE:-0}" node "$TEST_DIR/test.mjs"
echo "browser-test: done in $(($(date +%s) - started)) s, exit $rc"
exit "$rc"
