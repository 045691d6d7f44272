#!/usr/bin/env bash
# People chat in tmux, as a person would: the server in one window, alice
# full-screen at 80x24 in three rooms, bob full-screen at 200x50. Checks
# buffers and unread counts, a private conversation, a 2,000-line burst while
# alice types, a server restart with a line typed during the outage, alice's
# terminal closed and reopened ("new since you left"), a name change, an
# escape sequence neutralised and names in colour; carol at 80x24 in 16 rooms with the
# hotlist, Alt-A, /buffer 14 and Alt-J; erin's account on two devices, a laptop at 80x24 and a
# phone at 200x50, reading on one and the other agreeing, and the laptop started again with its
# private conversation and its lines; then prints what each saw.
# Needs tmux; run from the repository root after README's install command.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PORT=${PORT:-7890}
S=${S:-chat-scenario}
DB=$(mktemp -d)/scenario.db  # a fresh history, kept across the restart below
export XDG_STATE_HOME=$(mktemp -d) HOME=$(mktemp -d) XDG_CONFIG_HOME=$(mktemp -d)  # clients that remember no earlier run
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
server() { tmux send-keys -t $S:server "$PY server.py --port $PORT --db $DB --flood-rate 0" Enter; }
alice() {
  tmux new-window -d -t $S -n alice
  tmux send-keys -t $S:alice "$PY client.py --port $PORT --name alice --room lobby --room dev --room ops" Enter
}

tmux new-session -d -s $S -n server -x 80 -y 24
server
wait_for server "listening on"

alice
tmux resize-window -t $S:alice -x 80 -y 24
wait_for alice "1:lobby 2:dev 3:ops"
type_line alice "history before bob comes"
tmux new-window -d -t $S -n bob; tmux resize-window -t $S:bob -x 200 -y 50
tmux send-keys -t $S:bob "$PY client.py --port $PORT --name bob --room lobby --room dev" Enter
wait_for bob "alice: history before bob comes"

# Buffers: a line in dev counts as unread in alice's status bar until she looks.
tmux send-keys -t $S:bob M-2; wait_for bob "[dev] bob>"
type_line bob "alice: the build is green"
wait_for alice "2:dev(1!)"
tmux send-keys -t $S:alice M-2; wait_for alice "bob: alice: the build is green"
type_line alice "great, thanks"
wait_for bob "alice: great, thanks"

# A private conversation gets its own buffer on both sides.
type_line bob "/msg alice just between us"
wait_for alice "4:@bob(1!)"
tmux send-keys -t $S:alice M-4; wait_for alice "[bob → alice] just between us"
type_line alice "sure"
wait_for bob "@alice(1!)"

# A 2,000-line burst into lobby while alice types in dev: her line still goes at once.
tmux send-keys -t $S:alice M-2; wait_for alice "[dev] alice>"
tmux send-keys -t $S:alice -l "typed during the fl"
$PY - "$PORT" <<'PYEOF'
import json, socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
    s.sendall(json.dumps({"type": "join", "name": "flood"}).encode() + b"\n")
    s.sendall(b"".join(json.dumps({"type": "message", "msg": f"burst {i}"}).encode() + b"\n" for i in range(2000)))
    s.sendall(b'{"type": "leave"}\n')
    while s.recv(65536):
        pass
PYEOF
tmux send-keys -t $S:alice -l "ood"; tmux send-keys -t $S:alice Enter
wait_for bob "alice: typed during the flood"
wait_for alice "1:lobby(2000)"
tmux send-keys -t $S:alice M-1; wait_for alice "flood: burst 1999"

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
wait_for alice "flood: burst 1999"  # still on screen: nothing was cleared

# Restart the server; alice types during the outage and her line goes once it is back.
tmux send-keys -t $S:server C-c
wait_for server "stopped"
wait_for alice "reconnecting"
tmux send-keys -t $S:alice M-2
type_line alice "said while the server was down"
wait_for alice "1 waiting to send"
server
wait_for alice "sent the 1 line typed while disconnected"
wait_for bob "alice: said while the server was down"
wait_for alice "alice: connected"

# alice's terminal closes (SIGHUP); bob says two lines; she comes back to what she missed.
tmux kill-window -t $S:alice
wait_for bob "alice left"
tmux send-keys -t $S:bob M-2
type_line bob "alice: while you were away"
type_line bob "and one more"
alice
wait_for alice "2:dev(2!)"
tmux send-keys -t $S:alice M-2
wait_for alice "2 new messages in dev since you left"
wait_for alice "bob: and one more"

# A name change follows into the private buffer's name.
type_line bob "/nick robert"
wait_for alice "bob is now known as robert"

# Names are coloured: alice's name carries a colour escape on bob's screen.
tmux capture-pane -p -e -t $S:bob | grep -q $'\x1b\\[[0-9;]*m[^\x1b]*alice' || { echo "FAILED: no colour"; exit 1; }

type_line robert "/quit" 2>/dev/null || type_line bob "/quit"
wait_for alice "robert left"

# carol at 80x24 in 16 rooms: the buffer list folds into the hotlist, which Alt-A, /buffer and
# Alt-J reach; a room that fills the screen after a wrapped welcome keeps following new lines.
tmux new-window -d -t $S -n carol; tmux resize-window -t $S:carol -x 80 -y 24
ROOMS=$(for n in $(seq -w 2 16); do printf -- '--room r%s ' "$n"; done)
tmux send-keys -t $S:carol "$PY client.py --port $PORT --name carol --room lobby $ROOMS" Enter
wait_for carol "[1:lobby]"
$PY - "$PORT" <<'PYEOF'
import json, socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
    reader = s.makefile("rb")
    def send(**message):
        s.sendall(json.dumps(message).encode() + b"\n")
    send(type="join", name="dave")
    send(type="join", room="r05")
    send(type="join", room="r14")
    waiting = {"r05", "r14"}
    while waiting:  # until carol is in both, so that what follows is news to her
        line = json.loads(reader.readline())
        if line.get("type") == "welcome" and "carol" in line["users"] or line.get("type") == "joined" and line["name"] == "carol":
            waiting.discard(line["room"])
    send(type="message", room="r05", msg="news in five")
    send(type="message", room="r14", msg="carol: look here")
    for number in range(30):
        send(type="message", room="lobby", msg=f"lobby line {number:02}")
    send(type="leave")
    while s.recv(65536):
        pass
PYEOF
wait_for carol "lobby line 29"  # still following the newest line
wait_for carol "Act: 14(1!),5(1)"
tmux send-keys -t $S:carol M-a; wait_for carol "[14:r14]"; wait_for carol "dave: carol: look here"
tmux send-keys -t $S:carol M-a; wait_for carol "[5:r05]"
tmux send-keys -t $S:carol M-a; wait_for carol "[1:lobby]"
type_line carol "/buffer 14"; wait_for carol "[14:r14]"
tmux send-keys -t $S:carol M-j 1 6; wait_for carol "[16:r16]"

# erin's account on two devices at once: a laptop at 80x24 and a phone at 200x50, each with a home
# of its own. What the phone reads is read on the laptop; a private buffer comes back, with its
# lines and nothing unread, when the laptop's terminal is closed and opened again.
export ERIN_PW="erin has a long passphrase"
$PY -m chat.admin --db "$DB" accounts add erin --password-env ERIN_PW
LAPTOP=$(mktemp -d) PHONE=$(mktemp -d)
device() {  # device WINDOW HOME COLUMNS ROWS: erin's full-screen client there
  tmux new-window -d -t $S -n "$1"; tmux resize-window -t "$S:$1" -x "$3" -y "$4"
  tmux send-keys -t "$S:$1" "ERIN_PW='$ERIN_PW' HOME=$2 XDG_STATE_HOME=$2/state XDG_CONFIG_HOME=$2/config $PY client.py --port $PORT --name erin --password-env ERIN_PW --room lobby --room dev" Enter
}
device laptop "$LAPTOP" 80 24; wait_for laptop "2:dev"
device phone "$PHONE" 200 50; wait_for phone "2:dev"
$PY - "$PORT" <<'PYEOF'
import json, socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
    reader = s.makefile("rb")
    def send(**message):
        s.sendall(json.dumps(message).encode() + b"\n")
    send(type="join", name="frank", room="dev")
    send(type="message", room="dev", msg="erin: two lines for you")
    send(type="message", room="dev", msg="and the second")
    send(type="private", to="erin", msg="just between us")
    while json.loads(reader.readline()).get("msg") != "just between us":  # its echo: kept and sent
        pass
    send(type="leave")
    while s.recv(65536):
        pass
PYEOF
wait_for laptop "2:dev(2!)"; wait_for phone "2:dev(2!)"; wait_for laptop "3:@frank(1!)"
tmux send-keys -t $S:phone M-2; wait_for phone "frank: and the second"  # read on the phone...
for _ in $(seq 200); do  # ...and read on the laptop too
  tmux capture-pane -p -J -t "$S:laptop" | grep -qF "2:dev(2" || break
  sleep 0.05
done
tmux capture-pane -p -J -t "$S:laptop" | grep -qF "2:dev(2" && { echo "FAILED: dev still unread on the laptop"; exit 1; }
tmux send-keys -t $S:laptop M-3; wait_for laptop "[frank → erin] just between us"
tmux kill-window -t $S:laptop  # the laptop's terminal closes, and opens again
device laptop "$LAPTOP" 80 24; wait_for laptop "3:@frank"
tmux capture-pane -p -J -t "$S:laptop" | grep -qF "3:@frank(" && { echo "FAILED: read lines counted again"; exit 1; }
tmux send-keys -t $S:laptop M-3; wait_for laptop "[frank → erin] just between us"

for window in alice bob carol laptop phone server; do
  echo "=== $window sees:"; tmux capture-pane -p -J -t "$S:$window" 2>/dev/null | grep -v '^$' || true
done
echo "scenario passed"
