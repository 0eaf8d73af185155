#!/usr/bin/env bash
# make bench: runs every benchmark beside a durable throwaway PostgreSQL and the mock broker,
# prints their tables, writes every figure to BUILD/bench/results.json, the drain's rate over time
# and every latency to BUILD/bench/*.dat, and plots them to BUILD/bench/*.png (plot.sh).
# Usage (through with-services.sh): run.sh BUILD_DIR quick|full [NAME...]
# NAMEs (write drain drain_scale drain_formats drain_modes drain_wal longtx parking consume latency
# latency_wal) run only those benchmarks.
set -euo pipefail
B=$1 mode=${2:-full}
shift $(($# < 2 ? $# : 2))
only=" $* "
dir=$OUTBOX_TEST_DIR
"$B/mock-kafka" --brokers 1 --topic bench:4 --topic bench.consume:4 --topic bench.latency:4 --topic bench.consume.lat:4 >"$dir/mock.out" 2>"$dir/mock.err" &
mock=$!
trap 'kill $mock 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -s "$dir/mock.out" ] && break; sleep 0.05; done
bootstrap=$(head -n 1 "$dir/mock.out")
if [ "$mode" = quick ]; then
    write_args=(8 2 3) drain_args=(100000 3) scale_args=(200000 1) consume_args=(10000 3 1000000 5) longtx_args=(50000 1) parking_args=(100000 1)
    lat_fast=(1000 5) lat_slow=(10 10) modes_args=(100000 3) walscale_args=(1000000 1)
else
    write_args=(8 5 5) drain_args=(1000000 3) scale_args=(10000000 1) consume_args=(50000 3 10000000 10) longtx_args=(300000 3) parking_args=(300000 3)
    lat_fast=(1000 30) lat_slow=(10 100) modes_args=(1000000 3) walscale_args=(10000000 1)
fi
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
out=$B/bench/results.json
: >"$out"
rm -f "$B"/bench/*.dat "$B"/bench/*.png
# A failing benchmark is reported at the end; the others still run, and their figures and plots
# are still written.
failed=()
bench() {
    local name=$1; shift
    [ "$only" = "  " ] || [[ $only == *" $name "* ]] || return 0
    "$@" | tee -a "$dir/bench.txt" || failed+=("$name")
}
bench write "$B/bench/bench_write" "$OUTBOX_TEST_PG" "${write_args[@]}"
bench drain "$B/bench/bench_drain" -o "$B/bench" -n drain "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${drain_args[@]}"
# Scale: a larger backlog once, with the table's size before, right after and after VACUUM.
bench drain_scale "$B/bench/bench_drain" -o "$B/bench" -n drain_scale -s "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" \
    "${scale_args[@]}"
# Record formats: relay.format=envelope against cloudevents, alternating in the same run.
bench drain_formats "$B/bench/bench_drain" -F "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${drain_args[@]}"
# The two ways to carry messages: the same backlog from the table and from the WAL, alternating;
# then a large backlog in the WAL alone (its steady rate, and the WAL the slot keeps after it).
bench drain_modes "$B/bench/bench_drain" -W "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${modes_args[@]}"
bench drain_wal "$B/bench/bench_drain" -w "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${walscale_args[@]}"
# Long transactions: the drain beside an idle transaction and beside an open outbox writer.
bench longtx "$B/bench/bench_drain" -L "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${longtx_args[@]}"
# Parking: one parked key among 1,000, and 10,000 held rows, against a drain with no poison.
bench parking "$B/bench/bench_drain" -P "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${parking_args[@]}"
bench consume "$B/bench/bench_consume" "$OUTBOX_TEST_PG" "$bootstrap" "${consume_args[@]}"
bench latency "$B/bench/bench_latency" -o "$B/bench" "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${lat_fast[@]}" relay.record.timestamp=produced
bench latency "$B/bench/bench_latency" -o "$B/bench" "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${lat_slow[@]}" relay.record.timestamp=produced
bench latency_wal "$B/bench/bench_latency" -o "$B/bench" "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${lat_fast[@]}" relay.record.timestamp=produced outbox.mode=wal
bench latency_wal "$B/bench/bench_latency" -o "$B/bench" "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${lat_slow[@]}" relay.record.timestamp=produced outbox.mode=wal
# The lowest-latency setting (README, "Latency"): no producer linger.
bench latency_wal "$B/bench/bench_latency" -o "$B/bench" "$OUTBOX_TEST_PG" "$bootstrap" "$B/outbox-relay" "${lat_fast[@]}" relay.record.timestamp=produced outbox.mode=wal kafka.linger.ms=0
grep '^{' "$dir/bench.txt" >"$out" || true
# The two drains side by side: rate, ratios and the relay's cost at both backlog sizes.
j() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$2"; }
d1=$(grep '^{"bench":"drain","name":"drain"' "$out" || true)
d2=$(grep '^{"bench":"drain","name":"drain_scale"' "$out" || true)
row() { printf '  %-36s %14s %14s\n' "$1" "$2" "$3"; }
if [ -n "$d1$d2" ]; then
    echo "summary of the drains (medians):"
    row "backlog (messages)" "$(j messages "$d1")" "$(j messages "$d2")"
    for f in drain:"drain msg/s" ratio:"ratio to K_raw" ratio_sql_ceiling:"ratio to the SQL ceiling" \
             last10_vs_first10:"rate of last 10 % / first 10 %" relay_cpu_us_per_msg:"relay CPU us/msg" \
             relay_peak_rss_kb:"relay peak RSS KB"; do
        row "${f#*:}" "$(j "${f%%:*}" "$d1")" "$(j "${f%%:*}" "$d2")"
    done
fi
echo "results: $out"
"$(dirname "$0")/plot.sh" "$B/bench"
if [ ${#failed[@]} -gt 0 ]; then
    echo "bench: failed: ${failed[*]}" >&2
    exit 1
fi
