# Sourced by the test scripts: a network namespace of the script's own, in
# which every address is a loopback one, so that test packets stay on
# 127.0.0.0/8 whatever the programs inside gather as ICE candidates.
# Needs root (sudo when not root) and scripts/lib/processes.sh (stop).

NS_SUDO=""
[ "$(id -u)" -ne 0 ] && NS_SUDO="sudo"

# Runs a command in namespace $1: `in_netns NAME COMMAND...`.
in_netns() {
  local ns=$1
  shift
  $NS_SUDO ip netns exec "$ns" "$@"
}

# Creates namespace $1 with `lo` up, and with a second argument `veth`, a
# default route that cannot leave it: a veth pair v0/v1 carrying 127.0.0.2
# and 127.0.0.3 (no IPv6), the default route through v0 from 127.0.0.2.
# Firefox needs that route: until a page holds microphone access it gathers
# only the address it would reach the internet from. Packets to that route
# land on v1 and go nowhere; 127/8 on a veth needs route_localnet and
# accept_local, and rp_filter off.
netns_create() {
  local ns=$1
  $NS_SUDO ip netns add "$ns"
  in_netns "$ns" ip link set lo up
  [ "${2:-}" = veth ] || return 0
  in_netns "$ns" ip link add v0 type veth peer name v1
  in_netns "$ns" ip addr add 127.0.0.2/32 dev v0
  in_netns "$ns" ip addr add 127.0.0.3/32 dev v1
  local i
  for i in all v0 v1; do
    in_netns "$ns" sysctl -qw "net.ipv4.conf.$i.route_localnet=1" "net.ipv4.conf.$i.accept_local=1" \
      "net.ipv4.conf.$i.rp_filter=0"
  done
  for i in v0 v1; do
    in_netns "$ns" sysctl -qw "net.ipv6.conf.$i.disable_ipv6=1"
    in_netns "$ns" ip link set "$i" up
  done
  in_netns "$ns" ip route add default dev v0 src 127.0.0.2
}

# Stops every process still in namespace $1, then deletes it. Never fails.
netns_delete() {
  local ns=$1 pid
  for pid in $($NS_SUDO ip netns pids "$ns" 2>/dev/null); do stop "$pid"; done
  $NS_SUDO ip netns del "$ns" 2>/dev/null || true
}

# Whether the server in namespace $1 answers /healthz on 127.0.0.1:$2.
netns_healthy() {
  in_netns "$1" bash -c "exec 3<>/dev/tcp/127.0.0.1/$2 && printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && grep -q '^ok' <&3" \
    2>/dev/null
}

# Runs a test in namespace $1 for at most $2 seconds: `netns_run_test NAME
# SECONDS SERVER_LOG WHO COMMAND...`. In the background and waited for, so
# that an INT/TERM reaches the caller's trap at once (bash runs traps only
# between foreground commands); meanwhile its pid is in $test_pid for the
# caller's cleanup. Leaves the exit status in $rc; on failure shows the end
# of the server's log.
netns_run_test() {
  local ns=$1 limit=$2 log=$3 who=$4
  shift 4
  $NS_SUDO ip netns exec "$ns" timeout "$limit" "$@" &
  test_pid=$!
  rc=0
  wait "$test_pid" || rc=$?
  test_pid=""
  if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 124 ] && echo "$who: the test ran past $limit s"
    echo "$who: server log (last 60 lines of $log):"
    tail -n 60 "$log"
  fi
}

# The EXIT trap of a script that started a server ($server_pid) and a test
# ($test_pid) in namespace $1: the test first (timeout(1) passes the TERM on,
# and the test closes its clients), then the server (it drains as members
# leave), then anything else still in the namespace (a browser left behind).
netns_cleanup() {
  set +e
  [ -n "${test_pid:-}" ] && stop "$test_pid"
  [ -n "${server_pid:-}" ] && stop "$server_pid"
  netns_delete "$1"
}
