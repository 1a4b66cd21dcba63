#!/bin/sh
# Installs the Debian packages lorad needs to build and test, only those missing, plus any
# given as arguments (tools/demo/deps.sh adds the demo model's). Runs apt-get only when
# something is missing; needs root for that.
set -eu
PKGS="$* build-essential pkg-config libopenblas-dev libjansson-dev libpcre2-dev libunistring-dev check libsubunit-dev libmicrohttpd-dev libsystemd-dev systemd debhelper groff-base libcurl4-openssl-dev python3 python3-numpy"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
# Node.js runs the official OpenAI client in the tests; any install of it will do (the
# Debian packages only when there is no node / npm at all).
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0
echo "deps: installing:$missing"
if [ "$(id -u)" != 0 ]; then
    echo "deps: not root; install these packages first:$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
