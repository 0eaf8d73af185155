#!/usr/bin/env bash
# Runs each Check suite given on the command line beside one throwaway PostgreSQL cluster and
# prints a total.  Usage: run-tests.sh BUILD_DIR SUITE...
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${OUTBOX_TEST_PG:-}" ]; then
    exec "$here/with-services.sh" "$0" "$@"
fi
build=$1; shift
export OUTBOX_BUILD_DIR=$build
passed=0 failed=0 suites_failed=()
for suite in "$@"; do
    echo "== $(basename "$suite")"
    out=$("$suite" 2>&1); rc=$?
    printf '%s\n' "$out"
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+%: Checks: ' | tail -n 1)
    if [ -n "$line" ]; then
        checks=$(sed -E 's/.*Checks: ([0-9]+).*/\1/' <<<"$line")
        fails=$(sed -E 's/.*Failures: ([0-9]+).*/\1/' <<<"$line")
        errs=$(sed -E 's/.*Errors: ([0-9]+).*/\1/' <<<"$line")
        passed=$((passed + checks - fails - errs))
        failed=$((failed + fails + errs))
    fi
    if [ $rc -ne 0 ] || [ -z "$line" ]; then
        suites_failed+=("$(basename "$suite")")
        [ -n "$line" ] || failed=$((failed + 1))
    fi
done
echo
if [ ${#suites_failed[@]} -ne 0 ]; then
    echo "failed suites: ${suites_failed[*]}"
fi
echo "$passed passed, $failed failed"
[ ${#suites_failed[@]} -eq 0 ]
