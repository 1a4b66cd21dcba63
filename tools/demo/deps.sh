#!/bin/sh
# Installs what `make demo-model` needs beyond tools/deps.sh, only what is missing: PyTorch,
# matplotlib, regex, and the Debian packages whose text the demo model is trained on.
# Runs apt-get only when something is missing; needs root for that.
set -eu
PKGS="python3 python3-numpy python3-torch python3-matplotlib python3-regex fortunes fortunes-min fortunes-de bible-kjv-text bible-kjv"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
# Node.js runs Hugging Face's tokenizers (tools/demo/goldens); any install will do.
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0
echo "demo deps: installing:$missing"
if [ "$(id -u)" != 0 ]; then
    echo "demo deps: not root; install these packages first:$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
