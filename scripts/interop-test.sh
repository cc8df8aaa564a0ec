#!/usr/bin/env bash
# Interop with aiortc, the Python WebRTC stack: two aiortc publishers over
# WHIP, three aiortc listeners over WHEP with three slots each; every
# listener must hear both tones (sfu-server/tests/interop/aiortc_whip_whep.py).
#
# Runs in a fresh network namespace: aiortc gathers candidates on every
# address but 127.0.0.1, so the namespace's `lo` also carries 127.0.0.2 and
# nothing else exists there (test packets stay on 127.0.0.0/8). Needs root
# (ip netns). Installs what is missing (idempotent): python3-venv and
# iproute2 from Debian, aiortc from PyPI into a virtual environment under
# the target directory (once).
#
# Environment: SFU_SERVER_BIN, a server binary to test (scripts/test.sh
# passes the one `cargo test --workspace` built; otherwise
# `cargo build -p sfu-server`); SFU_LOG, the server's log filter.
# Output: target/interop-test-server.log.
set -euo pipefail
if [ -n "${SFU_SERVER_BIN:-}" ]; then
  SFU_SERVER_BIN=$(realpath -m -- "$SFU_SERVER_BIN")
fi
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
AIORTC_VERSION=1.16.0
VENV=$TARGET/interop-venv
PORT=18090
started=$(date +%s)

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

# --- what the test needs --------------------------------------------------
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# Debian splits venv's pip bootstrap into its own package.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# shellcheck source=lib/debian.sh
. scripts/lib/debian.sh
apt_install "${need[@]}"

if [ ! -f "$VENV/.aiortc-$AIORTC_VERSION" ]; then
  echo "interop-test: installing aiortc $AIORTC_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "aiortc==$AIORTC_VERSION"
  touch "$VENV/.aiortc-$AIORTC_VERSION"
fi

if [ -n "${SFU_SERVER_BIN:-}" ]; then
  SERVER=$SFU_SERVER_BIN
  [ -x "$SERVER" ] || { echo "interop-test: SFU_SERVER_BIN=$SERVER is not an executable file"; exit 1; }
else
  echo "interop-test: cargo build -p sfu-server"
  cargo build -p sfu-server
  SERVER=$TARGET/debug/sfu-server
fi

# --- namespace, server, test ------------------------------------------------
# shellcheck source=lib/processes.sh
. scripts/lib/processes.sh
# shellcheck source=lib/netns.sh
. scripts/lib/netns.sh
NS=sfu-interop-$$
SERVER_LOG=$TARGET/interop-test-server.log
server_pid=""
test_pid=""
trap 'netns_cleanup "$NS"' EXIT
trap 'exit 130' INT TERM

netns_create "$NS"
# aioice never gathers 127.0.0.1 (it skips that address by name).
in_netns "$NS" ip addr add 127.0.0.2/8 dev lo

# The server without the caller's SFU_* settings (a secret would turn off
# development mode); env execs it, so $! is the server itself.
$SUDO ip netns exec "$NS" env $(env | sed -n 's/^\(SFU_[A-Z_]*\)=.*/-u \1/p') -u RUST_LOG \
  "$SERVER" --http 127.0.0.1:$PORT --udp 127.0.0.1:0 --log "${SFU_LOG:-info}" >"$SERVER_LOG" 2>&1 &
server_pid=$!
if ! wait_for "interop-test: server healthy" netns_healthy "$NS" $PORT; then
  cat "$SERVER_LOG"
  exit 1
fi

netns_run_test "$NS" 90 "$SERVER_LOG" interop-test \
  "$VENV/bin/python" "$ROOT/sfu-server/tests/interop/aiortc_whip_whep.py" --url "http://127.0.0.1:$PORT"
echo "interop-test: done in $(($(date +%s) - started)) s, exit $rc"
exit "$rc"
