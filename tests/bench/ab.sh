#!/usr/bin/env bash
# make bench-ab OLD=path/to/outbox-relay: the same drain and latency benchmarks for two relay
# binaries, alternating old and new in each round on one durable cluster and broker, so that
# both see the same machine; prints every figure and the medians.
# Usage (through with-services.sh): ab.sh BUILD_DIR OLD_RELAY NEW_RELAY [ROUNDS] [MESSAGES]
# AB_LATENCY=0 leaves the latency benchmarks out.
set -euo pipefail
B=$1 old=$2 new=$3 rounds=${4:-3} n=${5:-1000000}
dir=$OUTBOX_TEST_DIR
"$B/mock-kafka" --brokers 1 --topic bench:4 --topic bench.latency:4 >"$dir/mock.out" 2>"$dir/mock.err" &
mock=$!
trap 'kill $mock 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -s "$dir/mock.out" ] && break; sleep 0.05; done
bootstrap=$(head -n 1 "$dir/mock.out")
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $rounds rounds, old then new"
declare -A fig
add() { fig[$1]="${fig[$1]:-} $2"; }
for round in $(seq 1 "$rounds"); do
    for which in old new; do
        relay=$old
        [ "$which" = new ] && relay=$new
        out=$("$B/bench/bench_drain" -o "$dir" -n "ab_$which" "$OUTBOX_TEST_PG" "$bootstrap" "$relay" "$n" 1)
        d=$(sed -n 's/.*"drain":\([0-9.]*\).*/\1/p' <<<"$out")
        cpu=$(sed -n 's/.*"relay_cpu_us_per_msg":\([0-9.]*\).*/\1/p' <<<"$out")
        add "$which drain" "$d"
        add "$which cpu" "$cpu"
        l1=0 l2=0
        if [ "${AB_LATENCY:-1}" = 1 ]; then
            l1=$("$B/bench/bench_latency" -o "$dir" "$OUTBOX_TEST_PG" "$bootstrap" "$relay" 1000 10 | sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p')
            l2=$("$B/bench/bench_latency" -o "$dir" "$OUTBOX_TEST_PG" "$bootstrap" "$relay" 10 30 | sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p')
        fi
        add "$which p99_1000" "$l1"
        add "$which p99_10" "$l2"
        echo "round $round $which: drain $d msg/s, relay CPU $cpu us/msg, p99 at 1000 msg/s $l1 ms, p99 at 10 msg/s $l2 ms"
    done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
printf '%-28s %14s %14s %8s\n' "median of $rounds" old new new/old
for f in drain cpu p99_1000 p99_10; do
    o=$(median "${fig[old $f]}") w=$(median "${fig[new $f]}")
    printf '%-28s %14s %14s %8s\n' "$f" "$o" "$w" "$(awk -v a="$o" -v b="$w" 'BEGIN {printf "%.3f", (a + 0 > 0 ? (b + 0) / (a + 0) : 0)}')"
done
