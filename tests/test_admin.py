"""chat-admin: a backup taken while clients talk that a fresh server serves, and exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from chat.admin import main
from chat.server.config import ServerConfig
from chat.testing import TIMEOUT
from chat.wire.protocol import ChatMessage, HistoryPage


def test_a_backup_taken_during_traffic_is_a_consistent_history_a_fresh_server_serves(
    start_chat_server, connect, tmp_path
):
    db, copy = tmp_path / "chat.db", tmp_path / "backup.db"
    server = start_chat_server(ServerConfig(db=str(db)).without_limits())
    alice = connect(server)
    alice.join("alice")
    talking, stop = threading.Event(), threading.Event()

    def talk() -> None:
        n = 0
        while not stop.is_set():
            alice.say(str(n))
            n += 1
            if n == 50:
                talking.set()

    talker = threading.Thread(target=talk)
    talker.start()
    try:
        assert talking.wait(TIMEOUT)
        alice.expect(ChatMessage, msg="49")  # sent is not kept: the 50th is kept once it comes back
        result = subprocess.run(
            [sys.executable, "-m", "chat.admin", "--db", str(db), "backup", str(copy)],
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
    finally:
        stop.set()
        talker.join(TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert os.stat(copy).st_mode & 0o777 == 0o600
    kept = [json.loads(line) for line in export(copy, "lobby")]
    said = [line["msg"] for line in kept if line["type"] == "message"]
    assert len(said) >= 50 and said == [str(n) for n in range(len(said))]  # a prefix, no gaps

    fresh = start_chat_server(ServerConfig(db=str(copy)))
    bob = connect(fresh)
    bob.join("bob")
    bob.send({"type": "history", "limit": 1})
    bob.expect(HistoryPage)
    assert bob.expect(ChatMessage).msg == said[-1]


def export(db, room: str, *more: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "chat.admin", "--db", str(db), "export", room, *more],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_export_prints_a_room_s_history_as_json_lines_since_an_id(start_chat_server, connect, tmp_path):
    db = tmp_path / "chat.db"
    server = start_chat_server(ServerConfig(db=str(db)).without_limits())
    alice = connect(server)
    alice.join("alice")
    alice.send({"type": "join", "room": "Dev"})
    alice.send({"type": "message", "room": "Dev", "msg": "first"})
    alice.send({"type": "message", "room": "Dev", "msg": "second"})
    last = alice.expect(ChatMessage, msg="second")
    lines = [json.loads(line) for line in export(db, "dev")]  # a room's key: any spelling
    assert [line["msg"] for line in lines if line["type"] == "message"] == ["first", "second"]
    assert all(line["room"] == "Dev" for line in lines)
    assert [json.loads(line)["msg"] for line in export(db, "Dev", "--since", str(last.id - 1))] == ["second"]
    assert main(["--db", str(db), "export", "nowhere"]) == 1


def test_export_reads_a_room_from_redis_when_the_servers_share_one(start_chat_server, connect, redis_server):
    server = start_chat_server(ServerConfig(redis=redis_server.url).without_limits())
    alice = connect(server)
    alice.join("alice")
    alice.send({"type": "join", "room": "dev"})
    for text in ("one", "two", "three"):
        alice.send({"type": "message", "room": "dev", "msg": text})
    last = alice.expect(ChatMessage, msg="three")
    result = subprocess.run(
        [sys.executable, "-m", "chat.admin", "--redis", redis_server.url, "export", "dev", "--since", str(last.id - 2)],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["msg"] for line in result.stdout.splitlines()] == ["two", "three"]
    missing = subprocess.run(
        [sys.executable, "-m", "chat.admin", "--redis", redis_server.url, "export", "nowhere"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert missing.returncode == 1 and "no history of the room 'nowhere'" in missing.stderr


def test_problems_are_one_line_and_status_one(tmp_path, capsys):
    (tmp_path / "taken.db").write_text("")
    assert main(["--db", str(tmp_path / "missing.db"), "backup", str(tmp_path / "out.db")]) == 1
    assert "cannot open the history file" in capsys.readouterr().err
    (tmp_path / "real.db").write_bytes(b"")
    assert main(["--db", str(tmp_path / "real.db"), "backup", str(tmp_path / "taken.db")]) == 1
    assert "cannot create" in capsys.readouterr().err and (tmp_path / "taken.db").read_text() == ""
    assert main(["--db", ":memory:", "export", "lobby"]) == 1
    assert ":memory: keeps nothing" in capsys.readouterr().err


def test_subcommands_are_listed_for_more_to_come():
    with pytest.raises(SystemExit) as stopped:
        main([])
    assert stopped.value.code == 2
