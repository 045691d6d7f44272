"""Both stores answer alike; the SQLite one survives reopening and reports failures."""

from __future__ import annotations

import sqlite3

import pytest

from chat.server.store import MemoryStore, Record, SqliteStore, StoreError


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    made = MemoryStore(retention=1000) if request.param == "memory" else SqliteStore(str(tmp_path / "chat.db"))
    yield made
    made.close()


def fill(store, count: int, start: int = 1) -> None:
    for i in range(start, start + count):
        store.append(Record(i, f"line {i}\n".encode()))


def test_after_gives_the_newest_lines_in_order_and_counts_the_rest(store):
    fill(store, 10)
    page = store.after(3, "anyone", 4)
    assert page.lines == [b"line 7\n", b"line 8\n", b"line 9\n", b"line 10\n"]
    assert page.more == 3
    assert store.after(10, "anyone", 4).lines == []
    assert (store.last_id(), store.oldest_id()) == (10, 1)


def test_before_pages_back(store):
    fill(store, 10)
    page = store.before(5, "anyone", 2)
    assert (page.lines, page.more) == ([b"line 3\n", b"line 4\n"], 2)


def test_private_lines_are_visible_only_to_their_two_parties(store):
    fill(store, 1)
    store.append(Record(2, b"secret\n", sender="alice", recipient="bob"))
    fill(store, 1, start=3)
    for viewer in ("alice", "bob"):
        assert store.after(0, viewer, 10).lines == [b"line 1\n", b"secret\n", b"line 3\n"]
    assert store.after(0, "carol", 10).lines == [b"line 1\n", b"line 3\n"]


def test_new_store_is_empty(store):
    assert (store.last_id(), store.oldest_id()) == (0, None)
    assert store.after(0, "a", 5).lines == []


def test_sqlite_history_and_ids_survive_reopening(tmp_path):
    path = str(tmp_path / "chat.db")
    first = SqliteStore(path)
    fill(first, 5)
    first.close()
    again = SqliteStore(path)
    assert again.last_id() == 5
    assert again.after(3, "x", 10).lines == [b"line 4\n", b"line 5\n"]
    again.close()


def test_sqlite_uses_wal(tmp_path):
    store = SqliteStore(str(tmp_path / "chat.db"))
    with sqlite3.connect(tmp_path / "chat.db") as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_retention_drops_the_oldest_as_new_ones_come(tmp_path):
    store = SqliteStore(str(tmp_path / "chat.db"), retention=100)
    fill(store, 3 * SqliteStore.TRIM_EVERY)
    assert store.oldest_id() == 3 * SqliteStore.TRIM_EVERY - 100 + 1
    assert store.last_id() == 3 * SqliteStore.TRIM_EVERY
    store.close()
    memory = MemoryStore(retention=100)
    fill(memory, 1000)
    assert memory.oldest_id() == 901


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "chat.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot use the database"):
        SqliteStore(str(path))


def test_an_unopenable_path_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="cannot use the database"):
        SqliteStore(str(tmp_path / "no such dir" / "chat.db"))


def test_full_disk_is_reported_not_swallowed(tmp_path):
    store = SqliteStore(str(tmp_path / "chat.db"))
    store._db.execute("PRAGMA max_page_count = 8")  # a disk that is nearly full
    with pytest.raises(StoreError, match="full"):
        for i in range(1, 10_000):
            store.append(Record(i, b"x" * 1000 + b"\n"))
    store.close()


def test_locked_database_is_reported(tmp_path):
    path = str(tmp_path / "chat.db")
    store = SqliteStore(path, busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreError, match="locked"):
        store.append(Record(1, b"x\n"))
    other.execute("ROLLBACK")
    other.close()
    store.append(Record(1, b"x\n"))  # and works again once the lock is gone
    store.close()
