#!/usr/bin/env bash
# Soak: one server under steady load for a bounded time, watched from outside
# (docs/RELIABILITY.md, "Soak").
#
#   scripts/soak.sh [--smoke] [--minutes N]
#
# The load generator keeps 3 conversation speakers (talk spurts and pauses,
# DTX) and 20 stable listeners (every 10th decoding and checked) in one
# channel, plus churn (2 listeners a second join, stay 5 s and leave, every
# other one without a word) and one member that joins and never reads its
# WebSocket again. The server is sampled every 10 s: resident memory, open
# file descriptors, threads, CPU, members, and every /metrics series whose
# name has `queue` or `dropped` in it.
#
# Pass: after the warm-up (a quarter of the run, 20 s to 5 min), resident
# memory stays within 5% of its first value; the server holds no more file
# descriptors once everyone left than before anyone joined; the stable
# listeners lost no packet, all connected and all heard audio; no churning
# join failed; the server is still up. Otherwise the reasons and exit 1.
#
# Length: 30 minutes of load (--minutes N), --smoke 60 s (CI, from
# scripts/test.sh). Outputs in target/soak/: samples.csv, metrics.jsonl (the
# queue and drop series of each sample), loadgen.json (its report),
# summary.json (figures and verdict), server.log, loadgen.log.
#
# Uses the binaries `cargo test --workspace` builds (target/debug/sfu-server,
# target/debug/loadgen; SFU_SERVER_BIN and LOADGEN_BIN override), and runs
# `cargo test --workspace --no-run` to build them, with the same features,
# when they are missing. Everything stays on 127.0.0.1.
# Environment: SOAK_SPEAKERS, SOAK_LISTENERS, SOAK_CHURN, SOAK_CHURN_STAY,
# SOAK_IDLE_WS, SOAK_SAMPLE_SECONDS change the load and the sampling.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
OUT=$TARGET/soak

seconds=1800
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) seconds=60 ;;
    --minutes)
      [ $# -ge 2 ] || { echo "soak: --minutes needs a number" >&2; exit 2; }
      case $2 in '' | *[!0-9]* | 0) echo "soak: --minutes takes a whole number above 0" >&2; exit 2 ;; esac
      seconds=$(($2 * 60))
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) echo "soak: unknown argument $1 (--smoke, --minutes N)" >&2; exit 2 ;;
  esac
  shift
done
speakers=${SOAK_SPEAKERS:-3}
listeners=${SOAK_LISTENERS:-20}
churn=${SOAK_CHURN:-2}
churn_stay=${SOAK_CHURN_STAY:-5}
idle_ws=${SOAK_IDLE_WS:-1}
every=${SOAK_SAMPLE_SECONDS:-10}
# A quarter of the run, at least 20 s, at most 5 min.
warmup=$((seconds / 4))
[ "$warmup" -ge 20 ] || warmup=20
[ "$warmup" -le 300 ] || warmup=300

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# shellcheck source=lib/debian.sh
. scripts/lib/debian.sh
apt_install "${need[@]}"

SERVER=${SFU_SERVER_BIN:-$TARGET/debug/sfu-server}
LOADGEN=${LOADGEN_BIN:-$TARGET/debug/loadgen}
if [ ! -x "$SERVER" ] || [ ! -x "$LOADGEN" ]; then
  echo "soak: building the test binaries (cargo test --workspace --no-run)"
  cargo test --workspace --no-run --locked
fi

rm -rf "$OUT"
mkdir -p "$OUT"
# shellcheck source=lib/processes.sh
. scripts/lib/processes.sh
server_pid=""
loadgen_pid=""
cleanup() {
  set +e
  [ -n "$loadgen_pid" ] && stop "$loadgen_pid"
  [ -n "$server_pid" ] && stop "$server_pid"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The server with nothing inherited from the environment running the soak;
# env execs it, so $! is the server itself. Every member joins from
# 127.0.0.1, so the per-address join limit (60 a minute by default, which the
# churn alone passes) is off; the other limits keep their defaults.
env $(env | sed -n 's/^\(SFU_[A-Z_]*\)=.*/-u \1/p') -u RUST_LOG \
  SFU_JOINS_PER_IP_PER_MINUTE=0 \
  "$SERVER" --http 127.0.0.1:0 --udp 127.0.0.1:0 --log warn >"$OUT/server.log" 2>&1 &
server_pid=$!
printed_addr() { grep -m1 -o 'open https\?://[0-9.:]*' "$OUT/server.log" | sed 's#.*//##'; }
wait_for "soak: the server printed its address" printed_addr
ADDR=$(printed_addr)
metrics() { curl -sf --max-time 5 "http://$ADDR/metrics"; }
wait_for "soak: the server answers /metrics" metrics

# One sample: seconds since the start, then the server's resident memory
# (KiB), open descriptors, threads, CPU seconds, the 1-minute load average
# and the members joined (from /metrics); the queue and drop series go to
# metrics.jsonl. A sample that cannot be read leaves a line of empty fields.
ticks=$(getconf CLK_TCK)
sample() {
  local t=$1 rss fds threads cpu load members text
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status" 2>/dev/null || true)
  fds=$(find "/proc/$server_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$server_pid/status" 2>/dev/null || true)
  cpu=$(awk -v hz="$ticks" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$server_pid/stat" 2>/dev/null || true)
  load=$(cut -d' ' -f1 /proc/loadavg)
  text=$(metrics || true)
  members=$(awk '/^sfu_members[{ ]/ {n += $NF} END {print n + 0}' <<<"$text")
  echo "$t,$rss,$fds,$threads,$cpu,$load,$members" >>"$OUT/samples.csv"
  # Every series named *queue* or *dropped*, as one JSON object per sample.
  awk -v t="$t" '
    /^#/ || !/(queue|dropped)/ {next}
    {name = $1; value = $NF; gsub(/\\/, "\\\\", name); gsub(/"/, "\\\"", name);
     line = line sep "\"" name "\": " value; sep = ", "}
    END {print "{\"t\": " t ", \"series\": {" line "}}"}' <<<"$text" >>"$OUT/metrics.jsonl"
}

echo "t_seconds,rss_kib,open_fds,threads,cpu_seconds,load1,members" >"$OUT/samples.csv"
started=$(date +%s)
sample 0
fds_before=$(find "/proc/$server_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
echo "soak: server pid $server_pid at $ADDR; ${seconds}s of load (warm-up ${warmup}s), a sample every ${every}s"

"$LOADGEN" --url "http://$ADDR" --speakers "$speakers" --listeners "$listeners" \
  --seconds "$seconds" --pattern conversation --decode-every 10 --join-parallel 4 \
  --churn "$churn" --churn-stay "$churn_stay" --idle-ws "$idle_ws" --pid "server=$server_pid" \
  >"$OUT/loadgen.json" 2>"$OUT/loadgen.log" &
loadgen_pid=$!
next=$every
while kill -0 "$loadgen_pid" 2>/dev/null; do
  now=$(($(date +%s) - started))
  if [ "$now" -ge "$next" ]; then
    sample "$now"
    next=$((next + every))
    if [ $((next % 300)) -lt "$every" ]; then
      echo "soak: $(tail -n1 "$OUT/samples.csv") (t,rss KiB,fds,threads,cpu s,load,members)"
    fi
  fi
  # Pacing the samples; the loop ends when the load generator exits.
  sleep 1
done
loadgen_rc=0
wait "$loadgen_pid" || loadgen_rc=$?
loadgen_pid=""

# Everyone left: wait (at most 30 s) for the server to count no member, then
# sample once more for the descriptors held after the load.
no_members() { [ "$(metrics | awk '/^sfu_members[{ ]/ {n += $NF} END {print n + 0}')" = 0 ]; }
settled=1
for _ in $(seq 1 300); do
  no_members && { settled=0; break; }
  sleep 0.1
done
sample "$(($(date +%s) - started))"
fds_after=$(find "/proc/$server_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
server_up=0
kill -0 "$server_pid" 2>/dev/null || server_up=1

python3 - "$OUT" "$warmup" "$fds_before" "$fds_after" "$loadgen_rc" "$server_up" "$settled" \
  "$seconds" "$listeners" <<'EOF'
import csv, json, os, sys

out, warmup, fds_before, fds_after, loadgen_rc, server_up, settled, seconds, listeners = sys.argv[1:]
warmup, fds_before, fds_after = int(warmup), int(fds_before), int(fds_after)
loadgen_rc, listeners = int(loadgen_rc), int(listeners)
rows = [r for r in csv.DictReader(open(os.path.join(out, "samples.csv"))) if r["rss_kib"]]
num = lambda r, k: float(r[k]) if r[k] else None
reasons = []

# Memory after the warm-up (the last sample is after the load: left out).
during = rows[1:-1]
post = [r for r in during if int(r["t_seconds"]) >= warmup]
rss = [num(r, "rss_kib") for r in post]
figures = {"samples": len(rows), "warmup_seconds": warmup, "seconds_of_load": int(seconds)}
if len(rss) >= 2:
    first, peak = rss[0], max(rss)
    growth = (peak - first) / first
    ts = [int(r["t_seconds"]) / 60 for r in post]
    mt, mr = sum(ts) / len(ts), sum(rss) / len(rss)
    var = sum((t - mt) ** 2 for t in ts)
    slope = sum((t - mt) * (r - mr) for t, r in zip(ts, rss)) / var if var else 0.0
    figures.update(rss_kib_after_warmup=first, rss_kib_peak_after_warmup=peak,
                   rss_kib_last=rss[-1], rss_growth_after_warmup=round(growth, 4),
                   rss_slope_kib_per_minute=round(slope, 1))
    if growth > 0.05:
        reasons.append(f"resident memory grew {growth:.1%} after the warm-up "
                       f"({first:.0f} -> {peak:.0f} KiB; more than 5%)")
else:
    reasons.append(f"only {len(rss)} memory samples after the warm-up")
fds = [num(r, "open_fds") for r in during]
figures.update(open_fds_before=fds_before, open_fds_peak=max(fds, default=None),
               open_fds_after=fds_after)
if fds_after > fds_before:
    reasons.append(f"the server holds {fds_after} descriptors after the load, {fds_before} before")
if settled != "0":
    reasons.append("members were still joined 30 s after the load generator left")
if server_up != "0":
    reasons.append("the server exited")
cpu = [num(r, "cpu_seconds") for r in during]
if len(cpu) >= 2 and during[-1]["t_seconds"] != during[0]["t_seconds"]:
    span = int(during[-1]["t_seconds"]) - int(during[0]["t_seconds"])
    figures["server_cpu_cores_mean"] = round((cpu[-1] - cpu[0]) / span, 3)
loads = [num(r, "load1") for r in rows]
figures["machine_load1_min_max"] = [min(loads), max(loads)]

# What the stable listeners got (the load generator's report).
try:
    report = json.load(open(os.path.join(out, "loadgen.json")))
except (OSError, ValueError) as e:
    report = {}
    reasons.append(f"no load generator report ({e})")
if loadgen_rc != 0:
    reasons.append(f"the load generator exited with {loadgen_rc}")
if report:
    keep = ["listeners", "listeners_connected", "listeners_without_audio", "loss",
            "packets_lost", "packets_per_second", "listeners_checked",
            "listeners_hearing_right_speakers", "join_to_first_audio_ms_p95",
            "latency_ms_p50", "latency_ms_p99", "jitter_ms_p95", "server_cpu_cores",
            "churn", "idle_ws"]
    figures["loadgen"] = {k: report.get(k) for k in keep}
    if report.get("packets_lost", 1) != 0:
        reasons.append(f"stable listeners lost {report.get('packets_lost')} packets "
                       f"(loss {report.get('loss')})")
    if report.get("listeners_connected") != listeners:
        reasons.append(f"{report.get('listeners_connected')} of {listeners} stable listeners connected")
    if report.get("listeners_without_audio", 1) != 0:
        reasons.append(f"{report.get('listeners_without_audio')} stable listeners heard nothing")
    if report.get("listeners_hearing_right_speakers") != report.get("listeners_checked"):
        reasons.append("a decoding listener did not hear exactly the speakers")
    churn = report.get("churn") or {}
    if churn.get("joins_failed", 0) != 0:
        reasons.append(f"{churn['joins_failed']} churning joins failed")

# The queue and drop series: first and last value of each.
series = {}
for line in open(os.path.join(out, "metrics.jsonl")):
    for name, value in json.loads(line)["series"].items():
        series.setdefault(name, [value, value])[1] = value
figures["queue_and_drop_series_first_last"] = series

summary = {"pass": not reasons, "reasons": reasons, "figures": figures}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=2))
print("soak: PASS" if not reasons else "soak: FAIL: " + "; ".join(reasons))
sys.exit(0 if not reasons else 1)
EOF
