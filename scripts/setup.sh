#!/usr/bin/env bash
# Installs what building and testing need on a fresh machine (Debian with the
# Rust toolchain). Idempotent: installs only what is missing.
set -euo pipefail

need=()
# opus (opusic-sys) compiles its bundled libopus with cmake.
command -v cmake >/dev/null 2>&1 || need+=(cmake)
# The fleet's tests start their own Redis (sfu-server/tests/fleet.rs).
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# The fleet demo's regions are network namespaces (scripts/fleet-demo.sh);
# it waits for the nodes with curl.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v curl >/dev/null 2>&1 || need+=(curl)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
