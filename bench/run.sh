#!/bin/sh
# `make bench`: every benchmark, figures printed to stdout. Not part of `make test`.
# The engine benchmark generates its random SmolLM2-135M-shaped model (540 MB) and two
# rank-16 adapters into BUILD/bench-data on first use. Pass BENCH_QUICK=1 for fewer
# repetitions.
set -eu
BUILD=${1:-build}
Q=""
[ "${BENCH_QUICK:-0}" = 1 ] && Q="--quick"
echo "== tokenizer"
"$BUILD/bench/bench_tokenizer"
echo "== engine"
"$BUILD/bench/bench_engine" "$BUILD/bench-data" $Q
echo "== decode step against batch size"
"$BUILD/bench/bench_batch" "$BUILD/bench-data" $Q --tsv "$BUILD/bench-batch.tsv"
echo "== smallmm's products against the FMA peak"
"$BUILD/bench/bench_tiles" $Q
echo "== equal allocations' read bandwidth (memory placement)"
"$BUILD/bench/bench_place" $Q
echo "== base weights in f32, bf16, q8"
"$BUILD/bench/bench_weights" "$BUILD/bench-data" $Q
echo "== drift of bf16 / q8 weights from f32 on the demo model"
"$BUILD/bench/bench_drift" models/demo/base $Q
