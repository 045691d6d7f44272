"""The history file: private to its owner, proven writable at start, and never silently lost."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from chat.server.store import Record, SqliteStore, StoreError
from chat.testing import LineClient
from chat.wire.protocol import ChatMessage, ErrorReply


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_history_file_is_0600_in_a_new_0700_directory(tmp_path):
    path = tmp_path / "state" / "chat" / "chat.db"
    store = SqliteStore(str(path))
    store.append("lobby", Record(1, b"secret\n", "alice", "bob"))
    assert mode(path.parent) == 0o700
    for name in (path, f"{path}-wal", f"{path}-shm"):
        assert mode(name) == 0o600, name
    store.close()


def test_an_existing_world_readable_file_is_made_private(tmp_path, caplog):
    path = tmp_path / "chat.db"
    SqliteStore(str(path)).close()
    os.chmod(path, 0o644)
    SqliteStore(str(path)).close()
    assert mode(path) == 0o600
    assert "readable by others" in caplog.text


def test_a_file_that_cannot_be_written_stops_the_server_at_start_with_one_line(chat_server_process, tmp_path):
    path = tmp_path / "chat.db"
    SqliteStore(str(path)).close()
    _make_read_only(path)
    try:
        server = chat_server_process(env={"CHAT_DB": str(path)}, wait=False)
        assert server.exit_status() == 1
        errors = [line for line in server.log if "ERROR" in line]
        assert len(errors) == 1 and "chat.db" in errors[0]
    finally:
        _make_writable(path)


def test_a_deleted_file_is_noticed_messages_are_refused_and_ids_never_go_back(chat_server_process, tmp_path):
    path = tmp_path / "chat.db"
    server = chat_server_process(env={"CHAT_DB": str(path)})
    alice = LineClient(server.address)
    alice.join("alice")
    last = alice.say_all(f"kept {i}" for i in range(5)).id
    for name in (path, f"{path}-wal", f"{path}-shm"):
        os.unlink(name)
    alice.say("into the void")
    refusal = alice.expect(ErrorReply)
    assert refusal.code == "storage_failed"
    server.wait_for_log("ERROR .*deleted")
    alice.close()
    server.stop()
    again = chat_server_process(env={"CHAT_DB": str(path)})
    bob = LineClient(again.address)
    bob.join("bob")
    bob.say("after the restart")
    assert bob.expect(ChatMessage, msg="after the restart").id == last + 1


def test_last_ids_kept_beside_the_file_carry_over_a_fresh_file(tmp_path):
    path = tmp_path / "chat.db"
    store = SqliteStore(str(path))
    store.append("lobby", Record(41, b"x\n"))
    store.close()
    os.unlink(path)
    store = SqliteStore(str(path))
    assert store.last_id("lobby") == 41 and store.last_id("dev") == 0
    store.close()


def test_unreadable_last_ids_stop_the_store_with_a_clear_error(tmp_path):
    path = tmp_path / "chat.db"
    (tmp_path / "chat.db.last-ids").write_text("not json")
    with pytest.raises(StoreError, match="last ids"):
        SqliteStore(str(path))


def _make_read_only(path) -> None:
    if os.geteuid() == 0:  # root writes through file modes; the immutable flag stops it
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("root, and this file system has no immutable flag to make a file read-only")
    else:
        os.chmod(path, 0o400)
        os.chmod(path.parent, 0o500)


def _make_writable(path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    else:
        os.chmod(path.parent, 0o700)
        os.chmod(path, 0o600)
