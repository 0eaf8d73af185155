#!/usr/bin/env bash
# make demo: a throwaway PostgreSQL, a local Kafka-protocol broker (librdkafka's mock cluster,
# 3 brokers), the example order service writing 10,000 orders, outbox-relay publishing them,
# and a read-back of the topic that checks nothing was lost, duplicated into view or reordered.
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
"$B/mock-kafka" --brokers 3 --topic orders:8 >"$dir/mock.out" 2>"$dir/mock.err" &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$dir/mock.out" ] && break; sleep 0.05; done
bootstrap=$(head -n 1 "$dir/mock.out")
[ -n "$bootstrap" ] || { echo "demo: the mock broker did not start:"; cat "$dir/mock.err"; exit 1; }
echo "demo: Kafka-protocol broker (librdkafka mock cluster, 3 brokers) at $bootstrap"

"$B/outbox-relay" migrate >/dev/null
"$B/outbox-relay" -X kafka.bootstrap.servers="$bootstrap" run 2>"$dir/relay.log" &
relay=$!
pids+=($relay)
echo "demo: outbox-relay running (pid $relay); writing $orders orders, about 10% rolled back"

start=$(date +%s.%N)
"$B/examples/order-service" --orders "$orders" --out "$dir" >"$dir/order-service.out" &
writer=$!
pids+=($writer)
progress() {
    psql "$OUTBOX_TEST_PG" -Atc "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox.messages)" \
        2>/dev/null | tr '|' ' '
}
while kill -0 "$writer" 2>/dev/null; do
    read -r written backlog < <(progress) || true
    printf '\r  orders committed %6s   outbox backlog %6s' "${written:-0}" "${backlog:-0}"
    sleep 0.3
done
wait "$writer"
while :; do
    read -r written backlog < <(progress) || true
    printf '\r  orders committed %6s   outbox backlog %6s' "${written:-0}" "${backlog:-0}"
    [ "${backlog:-1}" = 0 ] && break
    kill -0 "$relay" 2>/dev/null || { echo; echo "demo: the relay died:"; tail -n 20 "$dir/relay.log"; exit 1; }
    sleep 0.1
done
end=$(date +%s.%N)
echo
kill -TERM "$relay"
wait "$relay" && relay_rc=0 || relay_rc=$?
published=$(sed -n 's/.*msg="stopped" published=\([0-9]*\).*/\1/p' "$dir/relay.log")

echo
echo "liboutbox demo summary"
cat "$dir/order-service.out"
rc=0
"$B/examples/demo-check" "$bootstrap" orders "$dir" 60 || rc=$?
committed=$(wc -l <"$dir/committed.txt")
awk -v s="$start" -v e="$end" -v n="$committed" -v p="${published:-?}" -v r="$relay_rc" 'BEGIN {
    printf "  relay published         %s (exit status on SIGTERM: %s)\n", p, r
    printf "  elapsed                 %.2f s (first order written to outbox empty)\n", e - s
    printf "  throughput              %.0f msg/s end to end\n", n / (e - s) }'
if [ $rc -ne 0 ] || [ "$relay_rc" -ne 0 ]; then
    echo "demo: FAILED"; exit 1
fi
echo "demo: OK"
