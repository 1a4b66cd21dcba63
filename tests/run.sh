#!/bin/sh
# Runs every test of a build: each libcheck binary in BUILD/tests, each fuzz harness's
# corpus replay in BUILD/fuzz, then each tests/test_*.py (reference and integration tests,
# given BUILD as argument).
# Prints one "N passed, N failed" line at the end; exits non-zero on any failure.
set -u
BUILD=${1:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
passed=0
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "$BUILD"/tests/test_*; do
    case "$t" in *.o|*.d) continue ;; esac
    [ -x "$t" ] || continue
    echo "== $t"
    "$t" >"$log" 2>&1
    rc=$?
    cat "$log"
    # libcheck: "100%: Checks: 12, Failures: 0, Errors: 0"
    line=$(grep -E 'Checks: [0-9]+, Failures: [0-9]+, Errors: [0-9]+' "$log" | tail -n 1)
    if [ -n "$line" ]; then
        n=$(echo "$line" | sed -E 's/.*Checks: ([0-9]+).*/\1/')
        f=$(echo "$line" | sed -E 's/.*Failures: ([0-9]+), Errors: ([0-9]+).*/\1 \2/' | awk '{print $1+$2}')
        passed=$((passed + n - f))
        failed=$((failed + f))
    fi
    if [ $rc -ne 0 ] && { [ -z "$line" ] || [ "$f" -eq 0 ]; }; then
        echo "$t: exited with status $rc"
        failed=$((failed + 1))
    fi
done
# Fuzz harnesses built without libFuzzer (fuzz/replay.c): each replays its seed corpus and
# the inputs that once found a bug (fuzz/regressions/<target>/); one check per harness.
for t in "$BUILD"/fuzz/*; do
    case "$t" in *.o|*.d|*-libfuzzer) continue ;; esac
    [ -x "$t" ] && [ -f "$t" ] || continue
    name=$(basename "$t")
    echo "== $t"
    "$t" "fuzz/corpus/$name" "fuzz/regressions/$name" >"$log" 2>&1
    rc=$?
    cat "$log"
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
    else
        echo "$t: exited with status $rc"
        failed=$((failed + 1))
    fi
done
for t in tests/test_*.py; do
    [ -f "$t" ] || continue
    echo "== $t"
    "$PYTHON" "$t" "$BUILD" >"$log" 2>&1
    rc=$?
    cat "$log"
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
    if [ -n "$line" ]; then
        passed=$((passed + $(echo "$line" | awk '{print $1}')))
        failed=$((failed + $(echo "$line" | awk '{print $3}')))
    fi
    if [ $rc -ne 0 ] && { [ -z "$line" ] || [ "$(echo "$line" | awk '{print $3}')" -eq 0 ]; }; then
        echo "$t: exited with status $rc"
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
