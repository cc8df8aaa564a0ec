#!/usr/bin/env bash
# Real-browser test: headless Chromium (the Debian package) joins the demo
# page from several tabs against a debug sfu-server and checks audio flows,
# member lists, speaker highlighting and leaving.
#
# Everything runs in a fresh network namespace that has only `lo`: Chromium
# gathers ICE candidates on every interface it sees, and test packets must
# stay on 127.0.0.0/8 (the build notes: "Keep every test packet on
# loopback"). Needs root (ip netns); installs what is missing (idempotent).
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

# playwright-core only (it never downloads a browser; we point it at
# /usr/bin/chromium). `npm ci` only when the lock file changed since the last
# install, so warm runs skip it.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
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
NS=sfu-browser-$$
SERVER_LOG=$ROOT/target/browser-test-server.log
server_pid=""
test_pid=""
# Stops one process we started: TERM, then KILL if it is still there after 5 s.
stop() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}
cleanup() {
  set +e
  # The test first (timeout(1) passes the TERM on to node, which closes
  # Chromium), then the server (it drains: members leave as pages close).
  [ -n "$test_pid" ] && stop "$test_pid"
  [ -n "$server_pid" ] && stop "$server_pid"
  # Anything else still in our namespace (a browser left behind).
  for pid in $($SUDO ip netns pids "$NS" 2>/dev/null); do stop "$pid"; done
  $SUDO ip netns del "$NS" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

$SUDO ip netns add "$NS"
$SUDO ip netns exec "$NS" ip link set lo up
in_ns() { $SUDO ip netns exec "$NS" "$@"; }

# Started directly, not through in_ns: $! must be the server itself.
$SUDO ip netns exec "$NS" "$SERVER" --http 127.0.0.1:$PORT --udp 127.0.0.1:0 --log "${SFU_LOG:-info}" \
  >"$SERVER_LOG" 2>&1 &
server_pid=$!

healthy() {
  in_ns bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT && printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && grep -q '^ok' <&3" 2>/dev/null
}
for _ in $(seq 1 100); do
  healthy && break
  kill -0 "$server_pid" 2>/dev/null || { echo "browser-test: the server exited:"; cat "$SERVER_LOG"; exit 1; }
  sleep 0.1
done
healthy || { echo "browser-test: the server did not become healthy"; cat "$SERVER_LOG"; exit 1; }
echo "browser-test: server up in namespace $NS ($(grep -m1 -o 'media on udp [0-9.:]*' "$SERVER_LOG" || true))"

# In the background and waited for, so that an INT/TERM reaches the trap at
# once (bash runs traps only between foreground commands).
$SUDO ip netns exec "$NS" env SFU_URL="http://127.0.0.1:$PORT" SCREENSHOT="$ROOT/target/browser-test.png" \
  VERBOSE="${VERBOSE:-0}" timeout 180 node "$TEST_DIR/test.mjs" &
test_pid=$!
rc=0
wait "$test_pid" || rc=$?
test_pid=""
if [ "$rc" -ne 0 ]; then
  [ "$rc" -eq 124 ] && echo "browser-test: the test ran past 180 s"
  echo "browser-test: server log (last 60 lines of $SERVER_LOG):"
  tail -n 60 "$SERVER_LOG"
fi
echo "browser-test: done in $(($(date +%s) - started)) s, exit $rc"
exit "$rc"
