#!/bin/sh
# Install the Debian packages named as arguments when any is missing.
# Needs root (or sudo) only when something is actually missing.
set -eu
missing=""
for pkg in "$@"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "installed" ] || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
echo "installing Debian packages:$missing" >&2
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "error: missing Debian packages:$missing; install them as root (apt-get install$missing)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# The tests run haproxy and keepalived per simulated node: their packages must not start them as
# this host's services. Debian's invoke-rc.d and deb-systemd-invoke ask /usr/sbin/policy-rc.d
# first (exit 101: not allowed); a temporary one refuses these two only, unless one is there.
NO_SERVICE="haproxy keepalived"
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\ncase "$1" in haproxy|keepalived) exit 101;; esac\nexit 0\n' |
        $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
# shellcheck disable=SC2086 # word splitting of the package list is wanted
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
# On a host run by systemd the packages also enabled them for the next boot: not these two.
if [ -d /run/systemd/system ]; then
    for unit in $NO_SERVICE; do
        case " $missing " in *" $unit "*) $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true ;; esac
    done
fi
