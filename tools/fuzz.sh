#!/bin/sh
# fuzz.sh BUILD SECONDS TARGET...: runs each libFuzzer harness BUILD/fuzz/TARGET-libfuzzer for
# SECONDS, one after the other, on one core. Each starts from fuzz/corpus/TARGET and
# fuzz/regressions/TARGET (read only) plus BUILD/fuzz-corpus/TARGET, where what it learns is
# kept between runs. A crash or broken guarantee is saved as BUILD/fuzz-crashes/TARGET/...;
# copy it into fuzz/regressions/TARGET/ once fixed. Prints executions and coverage (cov:,
# ft:) per target at the end; exits non-zero if any target failed.
set -u
BUILD=$1
SECONDS_EACH=$2
shift 2
failed=""
summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
for t in "$@"; do
    bin="$BUILD/fuzz/$t-libfuzzer"
    mkdir -p "$BUILD/fuzz-corpus/$t" "$BUILD/fuzz-crashes/$t"
    dirs="$BUILD/fuzz-corpus/$t fuzz/corpus/$t"
    [ -d "fuzz/regressions/$t" ] && dirs="$dirs fuzz/regressions/$t"
    echo "== fuzz $t for ${SECONDS_EACH}s"
    log="$BUILD/fuzz-crashes/$t/last.log"
    # shellcheck disable=SC2086
    "$bin" -max_total_time="$SECONDS_EACH" -timeout=30 -rss_limit_mb=3072 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$BUILD/fuzz-crashes/$t/" $dirs >"$log" 2>&1
    rc=$?
    tail -n 4 "$log" | grep -v '^stat::' || true
    runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    last=$(grep -E '#[0-9]+.*cov: ' "$log" | tail -n 1)
    cov=$(echo "$last" | sed -nE 's/.*cov: ([0-9]+).*/\1/p')
    ft=$(echo "$last" | sed -nE 's/.*ft: ([0-9]+).*/\1/p')
    printf '%-22s %12s execs  cov %6s  ft %6s  %s\n' "$t" "${runs:-?}" "${cov:-?}" "${ft:-?}" \
        "$([ $rc -eq 0 ] && echo ok || echo "FAILED (see $log)")" >>"$summary"
    [ $rc -eq 0 ] || failed="$failed $t"
done
echo "== fuzz summary (${SECONDS_EACH}s per target)"
cat "$summary"
[ -z "$failed" ] || { echo "fuzz: failed:$failed"; exit 1; }
