#!/usr/bin/env bash
# Draws the benchmark plots from the data bench_drain and bench_latency wrote into DIR:
#   DIR/drain*.dat   -> DIR/drain*.png   drain rate over time, one line per run, the SQL ceiling
#   DIR/latency_*.dat -> DIR/latency.png  latency CDF, one line per rate
# Usage: plot.sh DIR
set -euo pipefail
dir=$1
if ! command -v gnuplot >/dev/null; then
    echo "plot.sh: no gnuplot (Debian package gnuplot-nox): no plots" >&2
    exit 0
fi
meta() { sed -n "s/^# $1: //p" "$2" | head -n 1; }
# gnuplot string literal: single quotes, doubled inside.
q() { printf "'%s'" "${1//\'/\'\'}"; }

for f in "$dir"/drain*.dat; do
    [ -e "$f" ] || continue
    png=${f%.dat}.png
    gnuplot <<GP
set terminal pngcairo size 1000,560 noenhanced
set output $(q "$png")
set title $(q "$(meta title "$f")")
set xlabel 'seconds since the relay started'
set ylabel 'messages/s published (250 ms intervals)'
set grid
set key below horizontal
set yrange [0:*]
set format y '%.0f'
stats $(q "$f") using 1 nooutput
ceiling = $(meta sql_ceiling "$f")
plot for [i=0:STATS_blocks-1] $(q "$f") index i using 1:2 with lines lw 1.5 title sprintf('run %d', i+1), \
     ceiling with lines dt 2 lc rgb 'black' title 'SQL ceiling (median)'
GP
    echo "plot: $png"
done

lat=("$dir"/latency_*.dat)
if [ -e "${lat[0]}" ]; then
    png=$dir/latency.png
    plots=()
    for f in "${lat[@]}"; do
        plots+=("$(q "$f") using 1:2 with steps lw 1.5 title $(q "$(meta title "$f")")")
    done
    joined=$(printf '%s, ' "${plots[@]}")
    gnuplot <<GP
set terminal pngcairo size 1000,560 noenhanced
set output $(q "$png")
set title 'outbox-relay latency, COMMIT returned -> message received by a Kafka consumer'
set xlabel 'latency (ms, log scale)'
set ylabel 'fraction of messages at or below'
set logscale x
set grid
set key top left
set yrange [0:1]
plot ${joined%, }
GP
    echo "plot: $png"
fi
