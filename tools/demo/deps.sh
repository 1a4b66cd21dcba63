#!/bin/sh
# Installs what `make demo-model` needs beyond the build and test packages, only what is
# missing: PyTorch, matplotlib, regex, and the Debian packages whose text the demo model is
# trained on (tools/deps.sh does the checking and installing).
set -eu
exec "$(dirname "$0")/../deps.sh" python3-torch python3-matplotlib python3-regex fortunes \
    fortunes-min fortunes-de bible-kjv-text bible-kjv
