#!/usr/bin/env bash
# The web front door's cost per delivery: the same chat-bench load through the JSON port and
# through the web port (JSON lines in WebSocket text frames), interleaved in one run so that
# both see the same machine. One JSON line per run on stdout; bench/README.md has the medians.
# Usage: bench/web_vs_json.sh [SECONDS] [REPS] > /tmp/web.jsonl
set -uo pipefail
cd "$(dirname "$0")/.."
T=${1:-5}
REPS=${2:-3}
BENCH=".venv/bin/python -m chat.bench --spawn --json --quiet -t $T"
for rep in $(seq "$REPS"); do
  for n in 10 100 500; do
    for rate in max 200; do
      for proto in chat web; do
        $BENCH -n "$n" -s 10 -r "$rate" --proto "$proto" | sed "s/^{/{\"proto\": \"$proto\", \"rep\": $rep, /"
      done
    done
  done
done
