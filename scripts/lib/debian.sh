# Sourced by the set-up and test scripts: installing Debian packages.

# Installs the named packages (`apt-get install --no-install-recommends`),
# with sudo when not root; nothing when none is named. Callers name only
# what is missing, so that a warm machine installs nothing.
apt_install() {
  [ $# -gt 0 ] || return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}
