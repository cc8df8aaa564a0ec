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
times=()
for _ in $(seq "$kills"); do
  t=$(cargo test -q --workspace --test fleet killed_core_s_channel -- --nocapture 2>&1 | grep -o 'heard again [0-9.]*s' | grep -o '[0-9.]*')
  times+=("$t")
done
printf '%s\n' "${times[@]}" | sort -n | awk '{v[NR]=$1} END {printf "fleet-bench: failover over %d kills: min %.2f s, p50 %.2f s, max %.2f s\n", NR, v[1], v[int((NR+1)/2)], v[NR]}'
times=()
for _ in $(seq "$kills"); do
  t=$(cargo test -q --workspace --test fleet killed_core_s_edges -- --nocapture 2>&1 | grep -o 'longest silence [0-9.]*s' | grep -o '[0-9.]*')
  times+=("$t")
done
printf '%s\n' "${times[@]}" | sort -n | awk '{v[NR]=$1} END {printf "fleet-bench: edge failover (longest silence at a listener on an edge) over %d kills: min %.2f s, p50 %.2f s, max %.2f s\n", NR, v[1], v[int((NR+1)/2)], v[NR]}'
