#!/usr/bin/env bash
# make demo: a throwaway PostgreSQL, a local Kafka-protocol broker (librdkafka's mock cluster,
# 3 brokers), the example order service writing 10,000 orders, outbox-relay publishing them, the
# customer service reserving credit and answering through its own outbox (and relay), the order
# service approving or rejecting its orders; then a read-back of the orders topic that checks
# nothing was lost, nothing rolled back was published and per-key order held.
# Usage: examples/demo.sh BUILD_DIR [ORDERS]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${OUTBOX_TEST_PG:-}" ]; then
    exec "$here/tests/support/with-services.sh" "$0" "$@"
fi
B=$1
orders=${2:-10000}
dir=$OUTBOX_TEST_DIR
export OUTBOX_PG_CONNINFO=$OUTBOX_TEST_PG
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted, stopping"; exit 130' INT TERM

echo "demo: PostgreSQL $(psql "$OUTBOX_TEST_PG" -Atc 'SHOW server_version' | cut -d' ' -f1) at ${OUTBOX_TEST_PG}"
"$B/mock-kafka" --brokers 3 --topic orders:8 --topic customers:8 >"$dir/mock.out" 2>"$dir/mock.err" &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$dir/mock.out" ] && break; sleep 0.05; done
bootstrap=$(head -n 1 "$dir/mock.out")
[ -n "$bootstrap" ] || { echo "demo: the mock broker did not start:"; cat "$dir/mock.err"; exit 1; }
echo "demo: Kafka-protocol broker (librdkafka mock cluster, 3 brokers) at $bootstrap"

"$B/outbox-relay" migrate >/dev/null
"$B/outbox-relay" -X outbox.schema=customer_outbox migrate >/dev/null
"$B/outbox-relay" -X kafka.bootstrap.servers="$bootstrap" run 2>"$dir/relay.log" &
relay=$!
"$B/outbox-relay" -X kafka.bootstrap.servers="$bootstrap" -X outbox.schema=customer_outbox \
    run 2>"$dir/relay-customers.log" &
relay2=$!
pids+=($relay $relay2)
"$B/examples/customer-service" "$bootstrap" >"$dir/customer-service.out" 2>"$dir/customer-service.err" &
customers=$!
pids+=($customers)
"$B/examples/order-service" --consume "$bootstrap" >"$dir/order-consumer.out" 2>"$dir/order-consumer.err" &
deciders=$!
pids+=($deciders)
echo "demo: outbox-relay for the order service (pid $relay) and for the customer service (pid $relay2)"
echo "demo: customer service consuming orders (pid $customers), order service consuming decisions (pid $deciders)"
# Let both consumers join their groups first, so latency measures the pipeline, not the join.
for _ in $(seq 1 300); do
    grep -q 'partitions assigned' "$dir/customer-service.err" "$dir/order-consumer.err" 2>/dev/null &&
        [ "$(grep -l 'partitions assigned' "$dir/customer-service.err" "$dir/order-consumer.err" | wc -l)" = 2 ] && break
    sleep 0.1
done
echo "demo: writing $orders orders, about 10% rolled back"

start=$(date +%s.%N)
"$B/examples/order-service" --orders "$orders" --out "$dir" >"$dir/order-service.out" &
writer=$!
pids+=($writer)
progress() {
    psql "$OUTBOX_TEST_PG" -Atc "SELECT (SELECT count(*) FROM orders),
        (SELECT count(*) FROM outbox.messages) + (SELECT count(*) FROM customer_outbox.messages),
        (SELECT count(*) FROM orders WHERE status <> 'PENDING')" 2>/dev/null | tr '|' ' '
}
show() {
    printf '\r  orders committed %6s   decided %6s   outbox backlog %6s' "${written:-0}" "${decided:-0}" "${backlog:-0}"
}
while kill -0 "$writer" 2>/dev/null; do
    read -r written backlog decided < <(progress) || true
    show
    sleep 0.3
done
wait "$writer"
deadline=$(( $(date +%s) + 120 ))
while :; do
    read -r written backlog decided < <(progress) || true
    show
    [ "${backlog:-1}" = 0 ] && [ "${decided:-0}" = "${written:-x}" ] && break
    for p in "$relay" "$relay2" "$customers" "$deciders"; do
        kill -0 "$p" 2>/dev/null || { echo; echo "demo: a process died (pid $p); logs in $dir:"; tail -n 5 "$dir"/*.log "$dir"/*.err; exit 1; }
    done
    [ "$(date +%s)" -lt "$deadline" ] || { echo; echo "demo: not done after 120 s"; exit 1; }
    sleep 0.1
done
end=$(date +%s.%N)
echo
kill -TERM "$relay" "$relay2" "$customers" "$deciders"
wait "$relay" && relay_rc=0 || relay_rc=$?
wait "$relay2" "$customers" "$deciders" || true
published=$(sed -n 's/.*msg="stopped" published=\([0-9]*\).*/\1/p' "$dir/relay.log")

echo
echo "liboutbox demo summary"
cat "$dir/order-service.out"
rc=0
"$B/examples/demo-check" "$bootstrap" orders "$dir" 60 || rc=$?
committed=$(wc -l <"$dir/committed.txt")
psql "$OUTBOX_TEST_PG" -At -F ' ' -c "SELECT count(*) FILTER (WHERE status = 'APPROVED'),
        count(*) FILTER (WHERE status = 'REJECTED'),
        round(1000 * extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY decided_at - created_at))::numeric, 1),
        round(1000 * extract(epoch FROM percentile_cont(0.99) WITHIN GROUP (ORDER BY decided_at - created_at))::numeric, 1)
    FROM orders" | {
    read -r approved rejected p50 p99
    printf '  orders approved         %s\n  orders rejected         %s (credit limit exceeded)\n' "$approved" "$rejected"
    printf '  end-to-end latency      p50 %s ms, p99 %s ms (order insert to decision applied; mostly time\n' "$p50" "$p99"
    printf '                          queued behind earlier orders: the orders are written faster than the\n'
    printf '                          consumers apply them, see README)\n' 
}
dups=$(cat "$dir/customer-service.out" "$dir/order-consumer.out" | sed -n 's/.*duplicates=\([0-9]*\).*/\1/p' | awk '{s += $1} END {print s + 0}')
printf '  duplicates suppressed   %s (by the consumers)\n' "$dups"
awk -v s="$start" -v e="$end" -v n="$committed" -v p="${published:-?}" -v r="$relay_rc" 'BEGIN {
    printf "  relay published         %s (exit status on SIGTERM: %s)\n", p, r
    printf "  elapsed                 %.2f s (first order written to outbox empty)\n", e - s
    printf "  throughput              %.0f msg/s end to end\n", n / (e - s) }'
if [ $rc -ne 0 ] || [ "$relay_rc" -ne 0 ]; then
    echo "demo: FAILED"; exit 1
fi
echo "demo: OK"
