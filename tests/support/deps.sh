#!/usr/bin/env bash
# Checks for (check) or installs (install, as root) the Debian packages liboutbox needs to build,
# test and run its demo.  Each dependency is looked up the way the build uses it.
# `deps.sh install bench` (make bench) also installs what only the benchmarks need: gnuplot-nox;
# `deps.sh install valgrind` (make check-valgrind) installs valgrind.
set -u
mode=${1:-check}
extra=${2:-}

missing=()
need() { # need DEBIAN_PACKAGE TEST...
    local pkg=$1; shift
    "$@" >/dev/null 2>&1 || missing+=("$pkg")
}
pc() { command -v pkg-config >/dev/null && pkg-config --exists "$1"; }
pgbin() { ls -d /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; }

need pkg-config command -v pkg-config
need make command -v make
need gcc command -v cc
need libpq-dev pc libpq
need librdkafka-dev pc rdkafka
need libprotobuf-c-dev pc libprotobuf-c
need protobuf-c-compiler command -v protoc-c
need libmicrohttpd-dev pc libmicrohttpd
if [ "$mode" != check ]; then
    # Only the tests, the demo and the benchmarks need these.
    need check pc check
    need postgresql pgbin
fi
note=
if [ "$extra" = bench ]; then
    # Only the benchmarks need this: gnuplot draws their plots (build/bench/*.png).
    need gnuplot-nox command -v gnuplot
    note=" (gnuplot-nox only for the benchmark plots)"
fi
if [ "$extra" = valgrind ]; then
    # Only `make check-valgrind` needs this.
    need valgrind command -v valgrind
    note=" (valgrind only for check-valgrind)"
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$mode" = check ]; then
    echo "liboutbox: missing build dependencies: ${missing[*]}" >&2
    echo "  install them with:  sudo make deps   (or: apt-get install ${missing[*]})" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "liboutbox: missing packages: ${missing[*]}$note" >&2
    echo "  run as root: apt-get install ${missing[*]}   (or: sudo make ${extra:-deps})" >&2
    exit 1
fi
echo "liboutbox: installing Debian packages: ${missing[*]}$note"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q "${missing[@]}"; then
    apt-get update -q && apt-get install -y -q "${missing[@]}" || exit 1
fi
