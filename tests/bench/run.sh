#!/usr/bin/env bash
# make bench: runs every benchmark beside a durable throwaway PostgreSQL and the mock broker,
# prints their tables and writes every figure to BUILD/bench/results.json.
# Usage (through with-services.sh): run.sh BUILD_DIR quick|full
set -euo pipefail
B=$1 mode=${2:-full}
dir=$OUTBOX_TEST_DIR
"$B/mock-kafka" --brokers 1 --topic bench:4 --topic bench.consume:4 --topic bench.latency:4 >"$dir/mock.out" 2>"$dir/mock.err" &
mock=$!
trap 'kill $mock 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -s "$dir/mock.out" ] && break; sleep 0.05; done
bootstrap=$(head -n 1 "$dir/mock.out")
if [ "$mode" = quick ]; then
    write_args=(8 2 3) drain_args=(100000 3) consume_args=(10000 3) lat_fast=(1000 5) lat_slow=(10 10)
else
    write_args=(8 5 5) drain_args=(1000000 3) consume_args=(50000 3) lat_fast=(1000 30) lat_slow=(10 100)
fi
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
out=$B/bench/results.json
: >"$out"
"$B/bench/bench_write" "$OUTBOX_TEST_PG" "${write_args[@]}" | tee -a "$dir/bench.txt"
"$B/bench/bench_drain" "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${drain_args[@]}" | tee -a "$dir/bench.txt"
"$B/bench/bench_consume" "$OUTBOX_TEST_PG" "$bootstrap" "${consume_args[@]}" | tee -a "$dir/bench.txt"
"$B/bench/bench_latency" "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${lat_fast[@]}" | tee -a "$dir/bench.txt"
"$B/bench/bench_latency" "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${lat_slow[@]}" | tee -a "$dir/bench.txt"
grep '^{' "$dir/bench.txt" >"$out"
echo "results: $out"
