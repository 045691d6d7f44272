#!/usr/bin/env bash
# Two people chat in tmux, as a person would: server in one window, alice and
# bob in two others. Checks history, colours, a private message, a name
# change, a server restart survived and an escape sequence neutralised, then
# prints what each person saw. Needs tmux; run from the repository root after
# README's install command.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PORT=${PORT:-7890}
S=chat-scenario
DB=$(mktemp -d)/scenario.db  # a fresh history, kept across the restart below
export XDG_STATE_HOME=$(mktemp -d)  # and clients that remember no earlier run
tmux kill-session -t $S 2>/dev/null || true
trap 'tmux kill-session -t $S 2>/dev/null || true' EXIT

wait_for() {  # wait_for WINDOW TEXT: until TEXT is on WINDOW's screen (10 s at most)
  for _ in $(seq 200); do
    tmux capture-pane -p -J -t "$S:$1" | grep -qF -- "$2" && return 0
    sleep 0.05
  done
  echo "FAILED: '$2' never appeared in window $1:"; tmux capture-pane -p -J -t "$S:$1"; exit 1
}
type_line() { tmux send-keys -t "$S:$1" -l -- "$2"; tmux send-keys -t "$S:$1" Enter; }

tmux new-session -d -s $S -n server -x 110 -y 40
tmux send-keys -t $S:server "$PY server.py --port $PORT --db $DB" Enter
wait_for server "listening on"

tmux new-window -d -t $S -n alice; tmux send-keys -t $S:alice "$PY client.py --port $PORT --name alice" Enter
wait_for alice "you are alice"
type_line alice "history before bob comes"
tmux new-window -d -t $S -n bob; tmux send-keys -t $S:bob "$PY client.py --port $PORT --name bob" Enter
wait_for bob "the last message follows"
wait_for bob "alice: history before bob comes"

type_line alice "hi bob, welcome"
wait_for bob "alice: hi bob, welcome"
type_line bob "/msg alice just between us"
wait_for alice "[bob → alice] just between us"
type_line bob "/nick robert"
wait_for alice "bob is now known as robert"
type_line bob "/me waves"
wait_for alice "* robert waves"

# A raw client sends an escape sequence that would clear the screen.
$PY - "$PORT" <<'PYEOF'
import json, socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
    s.sendall(json.dumps({"type": "join", "name": "mallory"}).encode() + b"\n")
    s.sendall(json.dumps({"type": "message", "msg": "\x1b[2J\x1b[31mCLEARED?"}).encode() + b"\n")
    s.sendall(b'{"type": "leave"}\n')
    s.recv(65536)
PYEOF
wait_for alice "mallory: ^[[2J^[[31mCLEARED?"
wait_for alice "hi bob, welcome"  # still on screen: nothing was cleared

# Restart the server; both clients come back by themselves.
tmux send-keys -t $S:server C-c
wait_for server "stopped"
wait_for alice "connection lost"
tmux send-keys -t $S:server "$PY server.py --port $PORT --db $DB" Enter
wait_for alice "reconnected"
wait_for bob "reconnected"
type_line alice "still here after the restart"
wait_for bob "alice: still here after the restart"

# Names are coloured: alice's name carries a colour escape on bob's screen.
tmux capture-pane -p -e -t $S:bob | grep -q $'\x1b\\[[0-9;]*m[^\x1b]*alice' || { echo "FAILED: no colour"; exit 1; }

type_line bob "/quit"
wait_for alice "robert left"
for window in alice bob server; do
  echo "=== $window sees:"; tmux capture-pane -p -J -t "$S:$window" | grep -v '^$'
done
echo "scenario passed"
