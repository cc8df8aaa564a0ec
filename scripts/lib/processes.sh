# Sourced by the test scripts: stopping the processes a script started.

# Stops one process we started: TERM, then KILL if it is still there after
# 5 s. Never fails (a process that already exited is fine).
stop() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# Waits until a command succeeds, up to 10 s: `wait_for WHAT COMMAND...`;
# says what did not happen and fails otherwise.
wait_for() {
  local what=$1
  shift
  for _ in $(seq 1 100); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$what: not within 10 s" >&2
  return 1
}

# Stops the load generator (`loadgen_pid`, if set) and every process of
# `pids`, then, when `failed` is 1, shows the last lines of each one's log
# (`$WORK/NAME.out` and `.err`, NAME from `names`): the demos' cleanup.
stop_all_and_show_logs() {
  local i
  [ -n "${loadgen_pid:-}" ] && stop "$loadgen_pid"
  for i in "${!pids[@]}"; do
    stop "${pids[$i]}"
  done
  if [ "$failed" = 1 ]; then
    for i in "${!names[@]}"; do
      echo "--- ${names[$i]} (last lines of its log) ---" >&2
      # A server logs to stdout; panics and start-up errors go to stderr.
      tail -n 5 "$WORK/${names[$i]}.out" "$WORK/${names[$i]}.err" >&2 2>/dev/null
    done
  fi
}
