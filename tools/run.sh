#!/bin/sh
# `make run`: lorad's main job on an embedded default. Until the daemon and the demo
# model exist, that is generation on a small model generated from a seed, first with the
# base weights, then with a LoRA adapter on the fly, then merged (same tokens expected).
set -eu
BUILD=${1:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
DIR="$BUILD/run-model"
[ -f "$DIR/manifest.json" ] || "$PYTHON" tools/make_fixtures.py "$DIR" --seed 1234 >/dev/null
M="$DIR/llama_tied"
A="$DIR/adapters/ad_all"
IDS=1,17,42,5,99,23
set -x
"$BUILD/lorad" inspect "$M"
"$BUILD/lorad" generate --model "$M" --prompt-ids $IDS --max-tokens 12 --json
"$BUILD/lorad" generate --model "$M" --adapter "$A" --prompt-ids $IDS --max-tokens 12 --logprobs 2 --json
"$BUILD/lorad" generate --model "$M" --adapter "$A" --merge --prompt-ids $IDS --max-tokens 12 --json
"$BUILD/lorad" generate --model "$M" --adapter "$A:0.5" --prompt-ids $IDS --max-tokens 12 --temperature 0.8 --top-p 0.9 --seed 7 --json
