#!/usr/bin/env bash
# Runs each libFuzzer target for SECONDS on a copy of its corpus (tests/ is never written) and fails,
# naming the crash file, if any target crashed.  Usage: run.sh BUILD_DIR SECONDS TARGET...
set -uo pipefail
build=$1 secs=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
failed=()
for t in "$@"; do
    corpus=$build/corpus/$t artifacts=$build/artifacts/$t log=$build/fuzz_$t.log
    mkdir -p "$corpus" "$artifacts"
    # Seeds and regressions join what earlier runs found there, so coverage builds up across runs.
    for f in "$here/corpus/$t"/* "$here/regressions/$t"/*; do
        [ -f "$f" ] && [ ! -e "$corpus/${f##*/}" ] && cp "$f" "$corpus/"
    done
    dict=()
    [ -f "$here/$t.dict" ] && dict=("-dict=$here/$t.dict")
    echo "== fuzz_$t: ${secs}s on $corpus (log: $log)"
    "$build/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "${dict[@]}" "$corpus" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1)
    if [ $rc -ne 0 ]; then
        # The sanitizer or property report, then libFuzzer's "Test unit written to <file>".
        sed -n '/^==[0-9]*==ERROR\|property failed\|runtime error\|^==[0-9]*== ERROR/,$p' "$log" | head -n 80
        crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        echo "fuzz_$t: FAILED (exit $rc) after ${runs:-?} runs; input: ${crash:-none written, see $log}"
        failed+=("$t")
    else
        echo "fuzz_$t: ok, ${runs:-?} runs, ${rate:-?} exec/s, ${cov:-cov: ?}, corpus $(find "$corpus" -type f | wc -l) files"
    fi
done
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz: crashes in: ${failed[*]} (copy the input to tests/fuzz/regressions/<target>/ once fixed)"
    exit 1
fi
