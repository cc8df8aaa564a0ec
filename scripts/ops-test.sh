#!/usr/bin/env bash
# The operations kit against the real parts it is for (docs/OPERATIONS.md):
#
# 1. deploy/ checked by its own tools: the example config passes
#    `sfu-server --check-config`, a broken one fails with the key; promtool
#    checks the scrape config and the rules and runs the rules' unit tests
#    (sfu-server/tests/ops/alerts_test.yml); systemd-analyze verifies the unit.
# 2. Prometheus (Debian's) scrapes a running sfu-server under load from the
#    load generator; every dashboard query and rule evaluates without error
#    through Prometheus' HTTP API and the core ones return data
#    (sfu-server/tests/ops/prometheus-check.mjs); `promtool check metrics`
#    accepts /metrics.
# 3. TURN and TLS, in a network namespace that has only `lo`: coturn
#    (use-auth-secret) and sfu-server serving HTTPS with a test certificate;
#    headless Chromium opens https://sfu.test/ (not localhost, so only TLS
#    makes it a secure context), joins two pages with
#    iceTransportPolicy "relay" and the TURN credentials the server handed
#    out, and checks that audio flows through coturn both ways; expired
#    credentials are refused by coturn (sfu-server/tests/browser/turn-tls.mjs).
#
# Uses the binaries `cargo test --workspace` built (target/debug/sfu-server,
# target/debug/loadgen; SFU_SERVER_BIN and LOADGEN_BIN override), building
# them only when they are missing. Needs root (ip netns). Installs what is
# missing (idempotent). Logs: target/ops-test/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET/ops-test
started=$(date +%s)

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

# --- what the test needs --------------------------------------------------
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# shellcheck source=lib/debian.sh
. scripts/lib/debian.sh
apt_install "${need[@]}"
# playwright-core (never a browser download; /usr/bin/chromium is used),
# installed only when the lock file changed since the last install.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
(
  cd sfu-server/tests/browser
  if ! cmp -s package-lock.json node_modules/.installed-lock 2>/dev/null; then
    npm ci --no-audit --no-fund
    cp package-lock.json node_modules/.installed-lock
  fi
)

SERVER=${SFU_SERVER_BIN:-$TARGET/debug/sfu-server}
LOADGEN=${LOADGEN_BIN:-$TARGET/debug/loadgen}
if [ ! -x "$SERVER" ] || [ ! -x "$LOADGEN" ]; then
  echo "ops-test: building sfu-server and loadgen (run after cargo test --workspace to reuse its build)"
  cargo build -p sfu-server -p examples --bins
fi

rm -rf "$OUT"
mkdir -p "$OUT"
# The server with nothing inherited from the environment running the test.
# env execs it, so the $! of a background start is the server itself.
sfu=(env $(env | sed -n 's/^\(SFU_[A-Z_]*\)=.*/-u \1/p') -u RUST_LOG "$SERVER")

# shellcheck source=lib/processes.sh
. scripts/lib/processes.sh
pids=()
NS=""
cleanup() {
  set +e
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop "${pids[$i]}"; done
  if [ -n "$NS" ]; then
    for pid in $($SUDO ip netns pids "$NS" 2>/dev/null); do stop "$pid"; done
    $SUDO ip netns del "$NS" 2>/dev/null
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The HTTP address a server printed ("open http(s)://ADDR/").
printed_addr() { grep -m1 -o 'open https\?://[0-9.:]*' "$1" | sed 's#.*//##'; }

# --- 1. deploy/ checked by its own tools -----------------------------------
echo "== deploy/: check-config, promtool, systemd-analyze"
[ "$("${sfu[@]}" --check-config deploy/sfu-server.toml)" = "ok" ]
printf 'slots = 3\nturn_ttl_secs = 0\n' >"$OUT/broken.toml"
if "${sfu[@]}" --check-config "$OUT/broken.toml" 2>"$OUT/broken.err"; then
  echo "ops-test: a broken config passed --check-config"
  exit 1
fi
grep -q "broken.toml: turn_ttl_secs: must be at least 1" "$OUT/broken.err" || {
  echo "ops-test: --check-config did not name the key: $(cat "$OUT/broken.err")"
  exit 1
}
promtool check config deploy/prometheus/prometheus.yml
promtool test rules sfu-server/tests/ops/alerts_test.yml
# systemd-analyze refuses a unit whose ExecStart does not exist yet.
sed "s#/usr/local/bin/sfu-server#$SERVER#g" deploy/sfu-server.service >"$OUT/sfu-server.service"
systemd-analyze verify "$OUT/sfu-server.service"

# --- 2. Prometheus scraping a server under load ------------------------------
echo "== Prometheus: dashboard and rules against a server under load"
"${sfu[@]}" --http 127.0.0.1:0 --udp 127.0.0.1:0 --log warn >"$OUT/prometheus-sfu.log" 2>&1 &
pids+=($!)
wait_for "the server printed its address" printed_addr "$OUT/prometheus-sfu.log"
SFU_ADDR=$(printed_addr "$OUT/prometheus-sfu.log")
PROM_PORT=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
cat >"$OUT/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $ROOT/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: sfu
    static_configs:
      - targets: ["$SFU_ADDR"]
        labels: { node_role: standalone }
EOF
prometheus --config.file="$OUT/prometheus.yml" --storage.tsdb.path="$OUT/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$OUT/prometheus.log" 2>&1 &
pids+=($!)
wait_for "Prometheus is ready" curl -sf "http://127.0.0.1:$PROM_PORT/-/ready"
# The load starts once Prometheus scrapes, so that it sees the joins happen
# (a counter that never moves in a window has no rate).
wait_for "Prometheus scraped the server" bash -c \
  "curl -sf 'http://127.0.0.1:$PROM_PORT/api/v1/query?query=up' | grep -q '\"value\":\\[[0-9.]*,\"1\"\\]'"
"$LOADGEN" --url "http://$SFU_ADDR" --speakers 2 --listeners 20 --seconds 60 --pattern conversation \
  >"$OUT/loadgen.json" 2>"$OUT/loadgen.log" &
pids+=($!)


PROM_URL="http://127.0.0.1:$PROM_PORT" SFU_URL="http://$SFU_ADDR" DASHBOARD=deploy/grafana/sfu-server.json \
  timeout 120 node sfu-server/tests/ops/prometheus-check.mjs
curl -sf "http://$SFU_ADDR/metrics" | promtool check metrics
for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop "${pids[$i]}"; done
pids=()

# --- 3. TURN (coturn) and TLS with a real browser ----------------------------
echo "== TURN and TLS: Chromium through coturn to https://sfu.test"
NS=sfu-ops-$$
$SUDO ip netns add "$NS"
$SUDO ip netns exec "$NS" ip link set lo up
in_ns() { $SUDO ip netns exec "$NS" "$@"; }

# A test certificate for sfu.test; Chromium trusts exactly this key.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=sfu.test -addext subjectAltName=DNS:sfu.test \
  -keyout "$OUT/tls-key.pem" -out "$OUT/tls-cert.pem" 2>/dev/null
SPKI=$(openssl x509 -in "$OUT/tls-cert.pem" -pubkey -noout | openssl pkey -pubin -outform der |
  openssl dgst -sha256 -binary | base64)

TURN_SECRET=$(head -c 32 /dev/urandom | base64)
# Loopback only; relays between loopback addresses (coturn refuses loopback
# peers by default); REST API credentials; no TLS/DTLS listeners, no CLI.
$SUDO ip netns exec "$NS" turnserver -n --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 \
  --listening-port 13478 --min-port 49160 --max-port 49200 \
  --use-auth-secret --static-auth-secret "$TURN_SECRET" --realm sfu.test \
  --no-tls --no-dtls --no-tcp-relay --no-cli --allow-loopback-peers --no-multicast-peers \
  --db "$OUT/turndb" --pidfile "$OUT/turnserver.pid" --log-file stdout --simple-log \
  >"$OUT/coturn.log" 2>&1 &
pids+=($!)

cat >"$OUT/sfu-tls.toml" <<EOF
http = "127.0.0.1:18443"
udp = "127.0.0.1:0"
tls_cert = "$OUT/tls-cert.pem"
tls_key = "$OUT/tls-key.pem"
turn_urls = ["turn:127.0.0.1:13478?transport=udp"]
# Development mode admits pages of loopback origins only; this one is named.
allowed_origins = ["https://sfu.test:18443"]
EOF
[ "$(SFU_TURN_SECRET=$TURN_SECRET "$SERVER" --check-config "$OUT/sfu-tls.toml")" = "ok" ]
$SUDO ip netns exec "$NS" env SFU_TURN_SECRET="$TURN_SECRET" "$SERVER" --config "$OUT/sfu-tls.toml" \
  --log "info,str0m=error" >"$OUT/turn-sfu.log" 2>&1 &
pids+=($!)
# A second server whose TURN credentials live 3 s: the source of the
# expired ones.
$SUDO ip netns exec "$NS" env SFU_TURN_SECRET="$TURN_SECRET" SFU_TURN_TTL_SECS=3 \
  SFU_TURN_URLS="turn:127.0.0.1:13478?transport=udp" "$SERVER" --http 127.0.0.1:18480 \
  >"$OUT/short-ttl-sfu.log" 2>&1 &
pids+=($!)
wait_for "coturn listens" in_ns bash -c 'ss -Hlun "sport = :13478" | grep -q 127.0.0.1' 
wait_for "sfu-server serves HTTPS" in_ns curl -sf --cacert "$OUT/tls-cert.pem" \
  --resolve sfu.test:18443:127.0.0.1 https://sfu.test:18443/healthz
wait_for "the short-TTL server is up" in_ns curl -sf http://127.0.0.1:18480/healthz

rc=0
# Started directly, not through in_ns: $! must be the test itself.
$SUDO ip netns exec "$NS" env SFU_URL="https://sfu.test:18443" SHORT_TTL_URL="http://127.0.0.1:18480" \
  SPKI="$SPKI" VERBOSE="${VERBOSE:-0}" timeout 150 node sfu-server/tests/browser/turn-tls.mjs &
test_pid=$!
pids+=($test_pid)
wait "$test_pid" || rc=$?
if [ "$rc" -eq 0 ]; then
  # The server counted the browser's handshakes. The page is read whole
  # before it is searched: `curl | grep -q` under pipefail fails whenever
  # grep stops reading before curl has written the last chunk.
  metrics=$(in_ns curl -sf --cacert "$OUT/tls-cert.pem" --resolve sfu.test:18443:127.0.0.1 \
    https://sfu.test:18443/metrics || true)
  grep -Eq '^sfu_tls_handshakes_total\{outcome="ok"\} [1-9]' <<<"$metrics" || {
    echo "ops-test: sfu_tls_handshakes_total{outcome=\"ok\"} did not count the handshakes"
    rc=1
  }
else
  echo "ops-test: logs in $OUT (coturn.log, turn-sfu.log); last lines of coturn.log:"
  tail -n 30 "$OUT/coturn.log"
fi
echo "ops-test: done in $(($(date +%s) - started)) s, exit $rc"
exit "$rc"
