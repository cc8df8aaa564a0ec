#!/usr/bin/env bash
# Fuzzing, two ways (docs/RELIABILITY.md):
#
#   scripts/fuzz.sh [TARGET...]
#       The smoke run CI does: each target for FUZZ_SECONDS (default 10);
#       stops at the first crash.
#   scripts/fuzz.sh --campaign [--execs N] [--max-seconds S] [TARGET...]
#       Each target until N executions (default 10000000), or S seconds if
#       that comes first, one after the other; a crash ends that target, not
#       the campaign. One summary line
#       per target (executions, executions/s, corpus, coverage, crashes) on
#       stdout and appended to target/fuzz-campaign.txt; libFuzzer's output in
#       target/fuzz-campaign/TARGET.log. Exit status 1 if any target crashed.
#
# Targets: every [[bin]] of fuzz/Cargo.toml (`cargo fuzz list`) unless named.
# Corpora live in fuzz/corpus/TARGET and grow from run to run; hand-made seed
# inputs in fuzz/seeds/TARGET (committed) are read too; crash inputs in
# fuzz/artifacts/TARGET. Uses cargo-fuzz on stable without a sanitizer
# (no nightly here); with a nightly toolchain, drop --sanitizer none for ASan.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

campaign=0
execs=10000000
max_seconds=0
targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --campaign) campaign=1 ;;
    --execs)
      [ $# -ge 2 ] || { echo "fuzz.sh: --execs needs a number" >&2; exit 2; }
      execs=$2
      shift
      ;;
    --execs=*) execs=${1#--execs=} ;;
    --max-seconds)
      [ $# -ge 2 ] || { echo "fuzz.sh: --max-seconds needs a number" >&2; exit 2; }
      max_seconds=$2
      shift
      ;;
    --max-seconds=*) max_seconds=${1#--max-seconds=} ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    -*) echo "fuzz.sh: unknown flag $1" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
for n in "$execs" "$max_seconds"; do
  case $n in
    '' | *[!0-9]*) echo "fuzz.sh: --execs and --max-seconds take whole numbers, not '$n'" >&2; exit 2 ;;
  esac
done

scripts/setup.sh
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz --version "^0.13"
fi
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
[ ${#targets[@]} -gt 0 ] || { echo "fuzz.sh: no fuzz targets" >&2; exit 1; }

# libFuzzer's options for every run: a memory limit well above what a target
# needs (a leak shows as growth past it).
libfuzzer_opts=(-rss_limit_mb=4096)

# The corpus directories of a target: its corpus (new inputs go there), then
# its seeds if it has any.
corpora() {
  echo "corpus/$1"
  [ ! -d "seeds/$1" ] || echo "seeds/$1"
}

if [ "$campaign" -eq 0 ]; then
  secs="${FUZZ_SECONDS:-10}"
  cd fuzz
  for t in "${targets[@]}"; do
    echo "== fuzz $t for ${secs}s"
    mkdir -p "corpus/$t"
    mapfile -t dirs < <(corpora "$t")
    cargo fuzz run --sanitizer none "$t" "${dirs[@]}" -- -max_total_time="$secs" "${libfuzzer_opts[@]}"
  done
  exit 0
fi

# --- campaign ---------------------------------------------------------------
summary=$root/target/fuzz-campaign.txt
logs=$root/target/fuzz-campaign
mkdir -p "$logs"
machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
header="# $(date -u +%Y-%m-%dT%H:%M:%SZ) fuzz campaign: --execs $execs --max-seconds $max_seconds, commit $rev, $machine"
echo "$header" | tee -a "$summary"
failed=0
cd fuzz
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  cargo fuzz build --sanitizer none "$t"
  log=$logs/$t.log
  marker=$(mktemp)
  load_start=$(cut -d' ' -f1 /proc/loadavg)
  started=$(date +%s)
  echo "== fuzz campaign: $t until $execs executions (log: $log)"
  rc=0
  # -max_total_time=0 is no limit.
  mapfile -t dirs < <(corpora "$t")
  cargo fuzz run --sanitizer none "$t" "${dirs[@]}" -- -runs="$execs" -max_total_time="$max_seconds" \
    -print_final_stats=1 "${libfuzzer_opts[@]}" >"$log" 2>&1 || rc=$?
  seconds=$(($(date +%s) - started))
  load_end=$(cut -d' ' -f1 /proc/loadavg)
  final_stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n1; }
  ran=$(final_stat number_of_executed_units)
  rate=$(final_stat average_exec_per_sec)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
  files=$(find "corpus/$t" -type f | wc -l)
  bytes=$(du -sb "corpus/$t" | cut -f1)
  crashes=$(find "artifacts/$t" -type f -newer "$marker" | wc -l)
  rm -f "$marker"
  [ "$rc" -eq 0 ] && [ "$crashes" -eq 0 ] || failed=1
  line="target=$t execs=${ran:-?} execs_per_s=${rate:-?} seconds=$seconds corpus_files=$files"
  line+=" corpus_bytes=$bytes cov=${cov:-?} ft=${ft:-?} crashes=$crashes exit=$rc"
  line+=" load=$load_start..$load_end"
  [ "$rc" -ne 0 ] || [ "${ran:-0}" -ge "$execs" ] || line+=" stopped_at_max_seconds=$max_seconds"
  echo "$line" | tee -a "$summary"
  if [ "$rc" -ne 0 ]; then
    echo "fuzz.sh: $t stopped (exit $rc); last lines of $log:" >&2
    tail -n 20 "$log" >&2
  fi
done
exit "$failed"
