#!/usr/bin/env bash
# Runs a command beside a throwaway PostgreSQL cluster (initdb in a temporary directory, a free
# port on 127.0.0.1, its socket in that directory) and stops and removes it afterwards, also when
# the command fails or the run is interrupted.  The command finds the server through:
#   OUTBOX_TEST_PG       libpq conninfo of the cluster (superuser "postgres", database "postgres")
#   OUTBOX_TEST_PGCTL    a command line for pg_ctl on this cluster, e.g. "$OUTBOX_TEST_PGCTL restart -m fast"
#   OUTBOX_TEST_DIR      a scratch directory removed at the end
# Set OUTBOX_PG_DURABLE=1 for a production-like cluster (fsync on), as the benchmarks do.
set -euo pipefail

PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/pg_ctl" ]; then
    echo "with-services: no PostgreSQL server found under /usr/lib/postgresql; run: sudo make deps" >&2
    exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/outbox-test.XXXXXX")
chmod 755 "$tmp"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    # PostgreSQL refuses to run as root: the cluster belongs to the postgres user.
    chown postgres: "$tmp"
    as_pg=(runuser -u postgres --)
fi
pgdata=$tmp/data
pgctl="${as_pg[*]} $PGBIN/pg_ctl -D $pgdata -l $tmp/postgres.log -w"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -f "$pgdata/postmaster.pid" ]; then
        $pgctl stop -m immediate >/dev/null 2>&1 || true
    fi
    if [ $rc -ne 0 ] && [ -f "$tmp/postgres.log" ] && [ -n "${OUTBOX_TEST_KEEP_LOG:-}" ]; then
        tail -n 50 "$tmp/postgres.log" >&2
    fi
    rm -rf "$tmp"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${as_pg[@]}" "$PGBIN/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --no-sync >"$tmp/initdb.log" 2>&1 || {
    cat "$tmp/initdb.log" >&2; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
started=
for _ in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 30000))
    port_free "$port" || continue
    cat >>"$pgdata/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$tmp'
max_connections = 300
shared_buffers = 256MB
max_wal_size = 4GB
log_min_messages = warning
client_min_messages = error
# Logical decoding for outbox.mode=wal (pg_logical_emit_message read back through a slot).
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
CONF
    if [ -z "${OUTBOX_PG_DURABLE:-}" ]; then
        # A throwaway cluster needs no fsync: a crash of PostgreSQL alone still loses nothing
        # committed, since the operating system keeps what was written.
        printf '%s\n' 'fsync = off' 'full_page_writes = off' >>"$pgdata/postgresql.conf"
    fi
    if $pgctl start >/dev/null 2>&1; then started=1; break; fi
done
if [ -z "$started" ]; then
    echo "with-services: could not start PostgreSQL; its log:" >&2
    cat "$tmp/postgres.log" >&2 || true
    exit 1
fi

export OUTBOX_TEST_PG="host=$tmp port=$port dbname=postgres user=postgres"
export OUTBOX_TEST_PGCTL="$pgctl"
export OUTBOX_TEST_DIR=$tmp
export OUTBOX_TEST_PGBIN=$PGBIN
"$@"
