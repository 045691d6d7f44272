#!/usr/bin/env bash
# Runs the table in bench/README.md: chat (in memory and SQLite) and the naive
# baseline, at max rate and at 200 msgs/s, for several room sizes. One JSON
# line per run on stdout. Usage: bench/run_matrix.sh [SECONDS] > results.jsonl
set -uo pipefail
cd "$(dirname "$0")/.."
T=${1:-5}
BENCH=".venv/bin/python -m chat.bench --spawn --json --quiet -t $T"
NAIVE=(--server-command ".venv/bin/python bench/naive_server.py")
for n in 10 100 500 1000 5000; do
  $BENCH -n "$n" -s 10
  $BENCH -n "$n" -s 10 "${NAIVE[@]}"
  $BENCH -n "$n" -s 10 -r 200
done
for n in 100 500; do
  $BENCH -n "$n" -s 10 --db "$(mktemp -d)/bench.db"
  $BENCH -n "$n" -s 10 -r 200 --db "$(mktemp -d)/bench.db"
done
$BENCH -n 500 -s 10 -r 200 "${NAIVE[@]}"
