#!/usr/bin/env bash
# Identity as people meet it, in tmux: the operator creates root with chat-admin while the server
# runs, and a stranger who tried to squat root first was refused; alice on two clients at once
# reads dev on one and sees it marked read on the other; a banned guest registers and is still
# out. Prints what each saw. Needs tmux; run from the repository root after README's install command.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PORT=${PORT:-7891}
S=${S:-chat-identity}
DIR=$(mktemp -d)
DB=$DIR/identity.db
export ROOT_PW="root has a long passphrase" ALICE_PW="alice has a long passphrase"
tmux kill-session -t $S 2>/dev/null || true
stop() {  # the server first (SIGHUP, which killing the session sends, only reloads it)
  tmux send-keys -t $S:server C-c 2>/dev/null || true
  for _ in $(seq 100); do tmux capture-pane -p -t $S:server 2>/dev/null | grep -qF "stopped" && break; sleep 0.05; done
  tmux kill-session -t $S 2>/dev/null || true
}
trap stop EXIT

wait_for() {  # wait_for WINDOW TEXT: until TEXT is on WINDOW's screen (10 s at most)
  for _ in $(seq 200); do
    tmux capture-pane -p -J -t "$S:$1" | grep -qF -- "$2" && return 0
    sleep 0.05
  done
  echo "FAILED: '$2' never appeared in window $1:"; tmux capture-pane -p -J -t "$S:$1"; exit 1
}
type_line() { tmux send-keys -t "$S:$1" -l -- "$2"; tmux send-keys -t "$S:$1" Enter; }
person() {  # person WINDOW HOME ARGS...: a full-screen client with a home of its own
  local window=$1 home=$2; shift 2
  mkdir -p "$home"
  tmux new-window -d -t $S -n "$window"; tmux resize-window -t "$S:$window" -x 100 -y 30
  tmux send-keys -t "$S:$window" "HOME=$home XDG_STATE_HOME=$home/state XDG_CONFIG_HOME=$home/config $PY client.py --port $PORT $*" Enter
}

# The server names root as its operator before root's account exists: it says how to make it.
tmux new-session -d -s $S -n server -x 200 -y 30
tmux send-keys -t $S:server "$PY server.py --port $PORT --db $DB --admin root --limit-exempt '' --flood-rate 0" Enter
wait_for server "chat-admin accounts add root"

# A stranger tries to be root first (and its look-alike R00T): refused, asked for another name.
person stranger "$DIR/stranger" --name R00T
wait_for stranger "reserved for a server operator"
tmux send-keys -t $S:stranger C-c

# The operator creates root from a shell while the server runs; root logs in.
$PY -m chat.admin --db "$DB" accounts add root --password-env ROOT_PW
$PY -m chat.admin --db "$DB" accounts add alice --password-env ALICE_PW
person root "$DIR/root" --name root --password-env ROOT_PW --room lobby --room dev
wait_for root "2:dev"

# alice on a laptop and a phone at once: neither throws the other out.
person laptop "$DIR/laptop" --name alice --password-env ALICE_PW --room lobby --room dev
wait_for laptop "2:dev"
person phone "$DIR/phone" --name alice --password-env ALICE_PW --room lobby --room dev
wait_for phone "2:dev"
tmux send-keys -t $S:root M-2; wait_for root "[dev] root (admin)>"
type_line root "alice: two lines for you"
type_line root "and the second"
wait_for laptop "2:dev(2!)"
wait_for phone "2:dev(2!)"
tmux send-keys -t $S:phone M-2; wait_for phone "root: and the second"  # read on the phone...
for _ in $(seq 200); do  # ...and marked read on the laptop
  tmux capture-pane -p -J -t "$S:laptop" | grep -qF "2:dev(2" || break
  sleep 0.05
done
tmux capture-pane -p -J -t "$S:laptop" | grep -qF "2:dev(2" && { echo "FAILED: dev still unread on the laptop"; exit 1; }
sleep 0.5
tmux capture-pane -p -J -t "$S:laptop" | grep -q "alice: connected" || true

# A guest is banned from dev, registers, and is still out.
person troll "$DIR/troll" --name troll --room lobby --room dev
wait_for troll "2:dev"
type_line root "/ban troll spam"
wait_for root "troll was banned from dev by root"
tmux send-keys -t $S:troll M-1
type_line troll "/register"
wait_for troll "assword"
tmux send-keys -t $S:troll -l "troll has a long passphrase"; tmux send-keys -t $S:troll Enter
sleep 0.3
tmux send-keys -t $S:troll -l "troll has a long passphrase"; tmux send-keys -t $S:troll Enter
wait_for troll "registered"
type_line troll "/join dev"
wait_for troll "banned from dev"

for window in server stranger root laptop phone troll; do
  echo "=== $window"; tmux capture-pane -p -J -t "$S:$window" | grep -v '^$' | tail -12
done
echo "identity scenario: OK"
