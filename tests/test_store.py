"""Both stores answer alike; the SQLite one survives reopening, upgrades old files and reports failures."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading

import pytest

from chat.server.store import ID_LIMIT, PRIVATE_LOG, MemoryStore, Record, RoomRecord, SqliteStore, StoreError
from chat.testing import TIMEOUT


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    made = MemoryStore(retention=1000) if request.param == "memory" else SqliteStore(str(tmp_path / "chat.db"))
    yield made
    made.close()


def fill(store, count: int, start: int = 1, log: str = "lobby") -> None:
    for i in range(start, start + count):
        store.append(log, Record(i, f"{log} {i}\n".encode()))


def lines(records: list[Record]) -> list[bytes]:
    return [record.line for record in records]


def test_ranges_cost_their_size_and_come_oldest_first(store):
    fill(store, 10)
    assert store.newest_start("lobby", 10, 4) == 7
    assert store.count("lobby", 7, 10) == 4
    assert lines(store.read("lobby", 7, 10, 3)) == [b"lobby 7\n", b"lobby 8\n", b"lobby 9\n"]
    assert store.read("lobby", 11, 20, 5) == []
    assert (store.last_id("lobby"), store.oldest_id("lobby")) == (10, 1)


def test_logs_are_apart_and_number_themselves(store):
    fill(store, 3)
    fill(store, 2, log="dev")
    assert (store.last_id("lobby"), store.last_id("dev"), store.last_id("other")) == (3, 2, 0)
    assert lines(store.read("dev", 1, 10, 10)) == [b"dev 1\n", b"dev 2\n"]


def test_private_lines_are_visible_only_to_their_two_parties(store):
    store.append(PRIVATE_LOG, Record(1, b"to bob\n", sender="alice", recipient="bob"))
    store.append(PRIVATE_LOG, Record(2, b"to carol\n", sender="alice", recipient="carol"))
    assert lines(store.read(PRIVATE_LOG, 1, 2, 10, viewer="bob")) == [b"to bob\n"]
    assert lines(store.read(PRIVATE_LOG, 1, 2, 10, viewer="alice")) == [b"to bob\n", b"to carol\n"]
    assert store.count(PRIVATE_LOG, 1, 2, viewer="carol") == 1
    assert store.newest_start(PRIVATE_LOG, 2, 5, viewer="bob") == 1


def test_new_store_is_empty(store):
    assert (store.last_id("lobby"), store.oldest_id("lobby")) == (0, None)
    assert store.newest_start("lobby", 10, 5) is None
    assert store.rooms() == []


def test_rooms_are_kept_and_their_topic_updated(store):
    store.save_room(RoomRecord("dev", "Dev"))
    store.save_room(RoomRecord("dev", "Dev", "new topic"))
    assert store.rooms() == [RoomRecord("dev", "Dev", "new topic")]


def test_sqlite_history_rooms_and_ids_survive_reopening(tmp_path):
    path = str(tmp_path / "chat.db")
    first = SqliteStore(path)
    fill(first, 5)
    first.save_room(RoomRecord("dev", "dev", "t"))
    first.close()
    again = SqliteStore(path)
    assert again.last_id("lobby") == 5
    assert lines(again.read("lobby", 4, 5, 10)) == [b"lobby 4\n", b"lobby 5\n"]
    assert again.rooms() == [RoomRecord("dev", "dev", "t")]
    again.close()


def test_sqlite_uses_wal(tmp_path):
    store = SqliteStore(str(tmp_path / "chat.db"))
    with contextlib.closing(sqlite3.connect(tmp_path / "chat.db")) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_retention_drops_each_logs_oldest_as_new_ones_come(tmp_path):
    store = SqliteStore(str(tmp_path / "chat.db"), retention=100)
    fill(store, 3 * SqliteStore.TRIM_EVERY)
    fill(store, 10, log="dev")
    assert store.oldest_id("lobby") == 3 * SqliteStore.TRIM_EVERY - 100 + 1
    assert store.last_id("lobby") == 3 * SqliteStore.TRIM_EVERY
    assert store.oldest_id("dev") == 1
    store.close()
    memory = MemoryStore(retention=100)
    fill(memory, 1000)
    assert memory.oldest_id("lobby") == 901
    assert memory.count("lobby", 0, 1000) == 100


# The schema of the first release, verbatim: one room, private lines in the same sequence.
_FIRST_RELEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    stored_at REAL NOT NULL,
    sender TEXT,
    recipient TEXT,
    line BLOB NOT NULL
)
"""


def test_a_single_room_file_from_the_first_release_becomes_the_lobby_with_its_ids(tmp_path):
    path = tmp_path / "chat.db"
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.execute(_FIRST_RELEASE_SCHEMA)
        rows = [
            (
                1,
                1.0,
                None,
                None,
                b'{"type":"message","id":1,"name":"alice","msg":"caf\xc3\xa9","time":"2026-11-20T12:00:00.000Z"}\n',
            ),
            (
                2,
                2.0,
                "alice",
                "bob",
                b'{"type":"private","id":2,"name":"alice","to":"bob","msg":"psst","time":"2026-11-20T12:00:01.000Z"}\n',
            ),
            (
                3,
                3.0,
                None,
                None,
                b'{"type":"action","id":3,"name":"bob","msg":"waves","time":"2026-11-20T12:00:02.000Z"}\n',
            ),
        ]
        old.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?)", rows)
        old.commit()
    store = SqliteStore(str(path))
    lobby = store.read("lobby", 1, 10, 10)
    assert [record.id for record in lobby] == [1, 3]
    assert json.loads(lobby[0].line) == {
        "type": "message",
        "room": "lobby",
        "id": 1,
        "name": "alice",
        "msg": "café",
        "time": "2026-11-20T12:00:00.000Z",
    }
    assert store.last_id("lobby") == 3
    assert [record.id for record in store.read(PRIVATE_LOG, 1, 10, 10, viewer="bob")] == [2]
    assert RoomRecord("lobby", "lobby") in store.rooms()
    store.close()
    SqliteStore(str(path)).close()  # opening it again changes nothing


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "chat.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot use the database"):
        SqliteStore(str(path))


def test_an_unopenable_path_is_a_clear_error(tmp_path):
    (tmp_path / "a file").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot use the database"):
        SqliteStore(str(tmp_path / "a file" / "chat.db"))


def test_full_disk_is_reported_not_swallowed(tmp_path):
    store = SqliteStore(str(tmp_path / "chat.db"))
    store._db.execute("PRAGMA max_page_count = 8")  # a disk that is nearly full
    with pytest.raises(StoreError, match="full"):
        for i in range(1, 10_000):
            store.append("lobby", Record(i, b"x" * 1000 + b"\n"))
    store.close()


def test_locked_database_is_reported(tmp_path):
    path = str(tmp_path / "chat.db")
    store = SqliteStore(path, busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreError, match="locked"):
        store.append("lobby", Record(1, b"x\n"))
    other.execute("ROLLBACK")
    other.close()
    store.append("lobby", Record(1, b"x\n"))  # and works again once the lock is gone
    store.close()


def test_ids_past_what_a_log_can_hold_are_a_clear_error_and_huge_bounds_are_clamped(store):
    fill(store, 2)
    assert lines(store.read("lobby", 0, 2**70, 10)) == [b"lobby 1\n", b"lobby 2\n"]
    assert store.count("lobby", -5, 2**70) == 2
    if isinstance(store, SqliteStore):
        with pytest.raises(StoreError, match="ids end at"):
            store.append("lobby", Record(ID_LIMIT, b"x\n"))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_retention_by_bytes_keeps_each_log_under_its_byte_limit(tmp_path, kind):
    limit = 64 * 1024
    if kind == "memory":
        store = MemoryStore(retention=1_000_000, retention_bytes=limit)
    else:
        store = SqliteStore(str(tmp_path / "chat.db"), retention=1_000_000, retention_bytes=limit)
    big = b"x" * 1000 + b"\n"
    for i in range(1, 1001):  # a megabyte into a 64 KiB room
        store.append("lobby", Record(i, big))
    store.append("dev", Record(1, b"small\n"))
    kept = store.read("lobby", 0, 1000, 2000)
    assert sum(len(record.line) for record in kept) <= limit
    assert len(kept) >= 50  # trimmed down to most of the limit, not emptied
    assert kept[-1].id == 1000 and store.last_id("lobby") == 1000
    assert [record.id for record in kept] == list(range(kept[0].id, 1001))
    assert store.oldest_id("dev") == 1
    store.close()


def test_byte_retention_counts_what_a_reopened_file_already_holds(tmp_path):
    path = str(tmp_path / "chat.db")
    store = SqliteStore(path, retention_bytes=64 * 1024)
    for i in range(1, 61):
        store.append("lobby", Record(i, b"y" * 1000 + b"\n"))
    store.close()
    store = SqliteStore(path, retention_bytes=64 * 1024)
    for i in range(61, 121):
        store.append("lobby", Record(i, b"y" * 1000 + b"\n"))
    kept = store.read("lobby", 0, 120, 200)
    assert sum(len(record.line) for record in kept) <= 64 * 1024 and kept[-1].id == 120
    store.close()


def test_lines_kept_together_are_read_like_lines_kept_one_by_one(store):
    store.append_all("lobby", [Record(i, f"lobby {i}\n".encode()) for i in range(1, 6)])
    store.append("lobby", Record(6, b"lobby 6\n"))
    assert lines(store.read("lobby", 1, 6, 10)) == [f"lobby {i}\n".encode() for i in range(1, 7)]
    assert (store.last_id("lobby"), store.count("lobby", 1, 6)) == (6, 6)


def test_a_batch_that_cannot_all_be_kept_leaves_none_of_itself(tmp_path):
    store = SqliteStore(str(tmp_path / "chat.db"))
    fill(store, 3)
    with pytest.raises(StoreError, match="lines 4 to 3"):
        store.append_all("lobby", [Record(4, b"four\n"), Record(5, b"five\n"), Record(3, b"three again\n")])
    assert lines(store.read("lobby", 1, 10, 10)) == [b"lobby 1\n", b"lobby 2\n", b"lobby 3\n"]
    store.append_all("lobby", [Record(4, b"four\n"), Record(5, b"five\n")])
    assert store.count("lobby", 1, 10) == 5
    store.close()


def test_rooms_writing_at_once_each_keep_all_their_lines_in_order(tmp_path):
    """Appends from many threads share transactions (group commit); each log still gets all its lines."""
    store = SqliteStore(str(tmp_path / "chat.db"))
    logs = [f"room{n}" for n in range(8)]

    def write(log: str) -> None:
        for first in range(1, 400, 4):
            store.append_all(log, [Record(i, f"{log} {i}\n".encode()) for i in range(first, first + 4)])

    threads = [threading.Thread(target=write, args=(log,)) for log in logs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    for log in logs:
        assert lines(store.read(log, 1, 400, 500)) == [f"{log} {i}\n".encode() for i in range(1, 401)]
        assert store.last_id(log) == 400
    store.close()
    reopened = SqliteStore(str(tmp_path / "chat.db"))
    assert [reopened.last_id(log) for log in logs] == [400] * 8
    reopened.close()
