#!/bin/sh
# `make run`: lorad's main job on the embedded demo model (models/demo, see its README.md):
# one base model, the adapters shout / german / kjv, switched per request over HTTP.
# Copies the adapters into a writable directory under BUILD, prints ready-to-paste curl
# commands, then runs the daemon in the foreground. PORT=N picks another port.
set -eu
BUILD=${1:-build}
PORT=${PORT:-8080}
MODEL=models/demo/base
ADAPTERS="$BUILD/run-adapters"
for f in "$MODEL/model.safetensors" "$MODEL/tokenizer.json"; do
    [ -f "$f" ] || { echo "run: $f is missing (retrain with 'make demo-model')" >&2; exit 1; }
done
mkdir -p "$ADAPTERS"
names=""
for d in models/demo/adapters/*/; do
    name=$(basename "$d")
    rm -rf "${ADAPTERS:?}/$name"
    cp -R "$d" "$ADAPTERS/$name"
    names="$names$name "
done

URL="http://127.0.0.1:$PORT"
P='"prompt": "The meaning of life is", "max_tokens": 24, "temperature": 0'
H="-H 'Content-Type: application/json'"
cat <<EOF

lorad demo: one base model ($MODEL, served as "demo") and the LoRA adapters
${names}in $ADAPTERS, at $URL
The same prompt, answered by the base, two adapters and a weighted mix of two
(paste these in another terminal; Ctrl-C here stops the daemon):

curl -s $URL/v1/completions $H -d '{"model": "demo", $P}'
curl -s $URL/v1/completions $H -d '{"model": "shout", $P}'
curl -s $URL/v1/completions $H -d '{"model": "kjv", $P}'
curl -s $URL/v1/completions $H -d '{$P, "adapters": [{"name": "shout", "weight": 0.3}, {"name": "kjv", "weight": 0.7}]}'
(and "model": "german")

More: $URL/v1/models, /v1/chat/completions, /metrics; README.md "The daemon".

EOF
exec "$BUILD/lorad" serve --model "$MODEL" --served-model-name demo --adapter-dir "$ADAPTERS" \
    --port "$PORT"
