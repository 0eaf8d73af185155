#!/usr/bin/env bash
# make check-faults: runs the fault-injection scenario (tests/faults/check_faults.c) for one or more
# seeds, each beside its own throwaway PostgreSQL cluster, and prints one line per seed.
# Usage: run.sh BUILD_DIR [SEED]      SEEDS=N draws N seeds (default 1); SEED replays exactly one.
# OUTBOX_FAULT_MODE=table|wal (make check-faults MODE=wal): the outbox.mode of writers and relays.
# Every result also goes, as one JSON line per seed, to BUILD_DIR/faults/results.json.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
B=$1 seed=${2:-}
n=${SEEDS:-1}
mode=${OUTBOX_FAULT_MODE:-table}
case $mode in table | wal) ;; *) echo "run.sh: MODE (OUTBOX_FAULT_MODE) is table or wal, not '$mode'" >&2; exit 2 ;; esac
export OUTBOX_FAULT_MODE=$mode
mkdir -p "$B/faults"
export OUTBOX_BUILD_DIR=$B OUTBOX_FAULT_JSON=$B/faults/results.json
: >"$OUTBOX_FAULT_JSON"
if [ -n "$seed" ]; then seeds=("$seed"); else
    seeds=()
    for _ in $(seq 1 "$n"); do seeds+=($(( (RANDOM << 15 | RANDOM) ))); done
fi
echo "fault seeds (mode $mode): ${seeds[*]}"
failed=()
for s in "${seeds[@]}"; do
    echo "== seed $s, mode $mode"
    start=$(date +%s)
    if OUTBOX_FAULT_SEED=$s CK_DEFAULT_TIMEOUT=3600 "$here/../support/with-services.sh" "$B/faults/check_faults"; then
        echo "== seed $s, mode $mode passed in $(( $(date +%s) - start )) s"
    else
        echo "== seed $s, mode $mode FAILED in $(( $(date +%s) - start )) s; replay: make check-faults MODE=$mode SEED=$s"
        failed+=("$s")
    fi
done
echo
echo "fault seeds run (mode $mode): ${#seeds[@]}, failed: ${#failed[@]}${failed:+ (${failed[*]})}"
[ ${#failed[@]} -eq 0 ]
