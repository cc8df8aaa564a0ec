#!/usr/bin/env bash
# The fleet's figures for BENCHMARKS.md ("Fleet on Redis"): Redis commands
# per node per second (idle, holding channels, under join churn), the time
# to `joined` for a served and a redirected join, and failover times over
# KILLS kills of a channel's core (default 10), members joining again, and
# as many with regional edges (the listener stays in its session on an
# edge while another edge takes the channel over). Needs redis-server
# (scripts/setup.sh). Debug builds, as `cargo test` builds them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
kills=${KILLS:-10}
cargo test -q --workspace --test fleet bench_fleet -- --ignored --nocapture 2>&1 | grep '^fleet-bench:'
# repeat WHAT TEST FIGURE: runs the failover test TEST $kills times and
# prints min, p50 and max of the seconds after FIGURE in its output.
repeat() {
  local what=$1 test=$2 figure=$3 times=()
  for _ in $(seq "$kills"); do
    times+=("$(cargo test -q --workspace --test fleet "$test" -- --nocapture 2>&1 \
      | grep -o "$figure [0-9.]*s" | grep -o '[0-9.]*')")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v what="$what" '{v[NR]=$1} END {printf "fleet-bench: %s over %d kills: min %.2f s, p50 %.2f s, max %.2f s\n", what, NR, v[1], v[int((NR+1)/2)], v[NR]}'
}
repeat failover killed_core_s_channel 'heard again'
repeat "edge failover (longest silence at a listener on an edge)" killed_core_s_edges 'longest silence'
