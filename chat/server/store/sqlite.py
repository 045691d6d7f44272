"""SqliteStore: a Store in one SQLite file (WAL) that survives restarts and `kill -9`, and
brings a file made by an older release up to date when it opens it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from json.decoder import scanstring  # type: ignore[attr-defined]  # in C, not in the stubs
from typing import Any

from chat.server.store.protocols import (
    CID_KEEP,
    DEFAULT_RETENTION,
    DEFAULT_RETENTION_BYTES,
    PRIVATE_LOG,
    AccountRecord,
    Found,
    Record,
    RoomRecord,
    Sanction,
    SearchInvalid,
    StoreError,
)
from chat.server.store.query import match_expression

_logger = logging.getLogger(__name__)


#: Schema version 2: every log's lines in one table, and the rooms. The search index keeps no
#: column sizes (columnsize = 0): results are ordered by time, never ranked, and without them
#: indexing a line costs about a quarter less (measured: 4.5 against 3.5 us of CPU a line).
_SCHEMA_VERSION = 8
_SCHEMA = """
CREATE TABLE IF NOT EXISTS room_modes (
    room TEXT NOT NULL,
    mode TEXT NOT NULL,
    PRIMARY KEY (room, mode)
);
CREATE TABLE IF NOT EXISTS room_roles (
    room TEXT NOT NULL,
    identity TEXT NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (room, identity)
);
CREATE TABLE IF NOT EXISTS sanctions (
    room TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    until REAL,
    reason TEXT NOT NULL,
    by TEXT NOT NULL,
    PRIMARY KEY (room, target, kind)
);
CREATE TABLE IF NOT EXISTS accounts (
    account TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_identity ON sessions (identity);
CREATE TABLE IF NOT EXISTS account_rooms (
    identity TEXT NOT NULL,
    room TEXT NOT NULL,
    joined_at REAL NOT NULL,
    PRIMARY KEY (identity, room)
);
CREATE TABLE IF NOT EXISTS read_markers (
    identity TEXT NOT NULL,
    room TEXT NOT NULL,
    id INTEGER NOT NULL,
    PRIMARY KEY (identity, room)
);
CREATE TABLE IF NOT EXISTS logs (
    number INTEGER PRIMARY KEY,
    log TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS lines (
    key INTEGER PRIMARY KEY,
    stored_at REAL NOT NULL,
    sender TEXT,
    recipient TEXT,
    line BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    topic TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    creator TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS cids (
    identity TEXT NOT NULL,
    cid TEXT NOT NULL,
    log TEXT NOT NULL,
    id INTEGER NOT NULL,
    sender TEXT,
    recipient TEXT,
    line BLOB NOT NULL,
    stored_at REAL NOT NULL,
    PRIMARY KEY (identity, cid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cids_by_age ON cids (stored_at);
CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(
    text, tokenize = 'unicode61 remove_diacritics 2', columnsize = 0
);
CREATE TABLE IF NOT EXISTS search_marks (
    number INTEGER PRIMARY KEY,
    upto INTEGER NOT NULL
);
"""
#: The search index loses a line when the line goes, however it goes (retention, age, bytes):
#: a trigger, so that no delete of `lines` can forget it. (Not in _SCHEMA: its body has ";".)
_SEARCH_TRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS lines_leave_search AFTER DELETE ON lines "
    "BEGIN DELETE FROM search WHERE rowid = old.key; END"
)
#: Lines of the search index filled per transaction: the writer waits at most for this many.
INDEX_BATCH = 500
#: Seconds the indexer waits for a full batch before it indexes the lines kept meanwhile.
INDEX_QUIET = 1.0
#: Tags looked up per read by tagged_all (two parameters each, well under SQLite's limit).
_TAGS_PER_READ = 400
#: The kinds of kept line a search finds, by the text people wrote in them.
_SEARCHED = frozenset({"message", "action", "private"})

#: A line's key is its log's number shifted left by this many bits, plus its id:
#: one integer primary key (SQLite's rowid) instead of a (log, id) pair. An
#: append costs what it cost when there was one room; a pair of columns as the
#: key (WITHOUT ROWID) made every append about 20 % slower, measured here.
_ID_BITS = 40
#: Ids stay below this in every log: a trillion lines.
ID_LIMIT = 1 << _ID_BITS

_VISIBLE = "(:viewer IS NULL OR recipient IS NULL OR sender = :viewer OR recipient = :viewer)"


class SqliteStore:
    """Lines in an SQLite file in WAL mode: they survive restarts and `kill -9`.

    Each append (one line, or the lines a room writes together: append_all)
    is one transaction with synchronous=NORMAL: once it returns, the lines are
    in the write-ahead log and survive the server process dying; a power cut
    may lose the last moments. Reads go through a
    second connection, so a long read in one room never waits for another
    room's write, nor makes it wait (WAL readers do not block the writer).
    Retention deletes each log's old rows in small steps as new ones arrive.
    """

    #: Delete a log's old rows every this many appends to it.
    TRIM_EVERY = 512

    def __init__(
        self,
        path: str,
        retention: int = DEFAULT_RETENTION,
        max_age: float | None = None,
        busy_timeout: float = 2.0,
        retention_bytes: int = DEFAULT_RETENTION_BYTES,
        keep_marks: bool = True,
    ) -> None:
        """`keep_marks`: whether closing keeps each log's last id beside the file (not for a tool
        that opens the file beside a running server and numbers nothing)."""
        self.path = path
        self._keep_marks = keep_marks
        self.retention = retention
        self.retention_bytes = retention_bytes
        self.max_age = max_age
        self._kept_bytes: dict[str, int] = {}  # log -> bytes of its kept lines, counted once per run
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._appends: dict[str, int] = {}
        self._last_ids: dict[str, int] = {}
        self._bases: dict[str, int] = {}  # log -> its number << _ID_BITS
        self._cids_trimmed = 0.0  # when cids older than CID_KEEP were last deleted
        # The search index is filled after the lines are kept, off the path that keeps them:
        # log number -> the last key indexed; the logs with lines not yet indexed.
        self._index_lock = threading.Lock()
        self._indexed: dict[int, int] = {}
        self._unindexed: set[int] = set()
        self._index_wake = threading.Event()
        self._index_pending = 0  # lines kept since the indexer last woke (a hint, not a count)
        self._index_stop = False
        self._indexer: threading.Thread | None = None
        self._search_lock = threading.Lock()
        self._searcher: sqlite3.Connection | None = None  # opened by the first search
        #: Why the file can no longer be trusted (deleted or replaced), once it cannot.
        self._lost: str | None = None
        #: Last ids a previous run kept beside the file; ids go on from at least these.
        self._marks = _read_marks(_marks_path(path))
        try:
            _private_file(path)
            self._db = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA quick_check").fetchone()
            self._upgrade()
            self._probe_write()
            self._reader = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False, isolation_level=None)
            self._identity = _identity(path)
            self._indexed = dict(self._db.execute("SELECT number, upto FROM search_marks").fetchall())
            self._unindexed = {number for (number,) in self._db.execute("SELECT number FROM logs")}
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot use the database {path}: {exc}") from exc

    def last_id(self, log: str) -> int:
        with self._write_lock:
            return self._last_id_locked(log)

    def oldest_id(self, log: str) -> int | None:
        base = self._base(log)
        row = self._query("SELECT MIN(key) FROM lines WHERE key BETWEEN :lo AND :hi", self._range(base, 0, ID_LIMIT))[0]
        return int(row[0]) - base if row[0] is not None else None

    def append(self, log: str, record: Record) -> None:
        self.append_all(log, (record,))

    def append_all(self, log: str, records: Sequence[Record]) -> None:
        """One transaction for all of `records`: lines that arrive together share a commit."""
        if not records:
            return
        what = f"line {records[0].id}" if len(records) == 1 else f"lines {records[0].id} to {records[-1].id}"
        where = log or "private messages"
        if not (0 < records[0].id and records[-1].id < ID_LIMIT):
            raise StoreError(f"cannot store {what} of {where}: ids end at {ID_LIMIT - 1}")
        base = self._base(log)
        now = time.time()
        rows = [(base + record.id, now, record.sender, record.recipient, record.line) for record in records]
        # A line sent with a cid keeps (identity, cid) in the same transaction: a repeat finds it.
        tags = [
            (*record.cid, log, record.id, record.sender, record.recipient, record.line, now)
            for record in records
            if record.cid is not None
        ]
        with self._write_lock:
            self._check_file_locked()
            try:
                if len(rows) == 1 and not tags:
                    self._db.execute("INSERT INTO lines VALUES (?, ?, ?, ?, ?)", rows[0])
                else:
                    with self._transaction():
                        self._db.executemany("INSERT INTO lines VALUES (?, ?, ?, ?, ?)", rows)
                        if tags:
                            self._db.executemany("INSERT OR IGNORE INTO cids VALUES (?, ?, ?, ?, ?, ?, ?, ?)", tags)
                            if now - self._cids_trimmed > 60:
                                self._db.execute("DELETE FROM cids WHERE stored_at < ?", (now - CID_KEEP,))
                                self._cids_trimmed = now
            except sqlite3.Error as exc:
                raise StoreError(f"cannot store {what} of {where}: {exc}") from exc
            self._last_ids[log] = records[-1].id
            self._unindexed.add(base >> _ID_BITS)
            self._index_pending += len(records)
            if self._index_pending >= INDEX_BATCH:  # a full batch: one transaction for many lines
                self._index_wake.set()
            appends = self._appends.get(log, 0)
            self._appends[log] = appends + len(records)
            if (appends + len(records)) // self.TRIM_EVERY != appends // self.TRIM_EVERY:
                self._trim(log, base)
            kept = self._kept_bytes.get(log)
            if kept is None:
                kept = self._count_bytes_locked(base)
            else:
                kept += sum(len(record.line) for record in records)
            self._kept_bytes[log] = kept
            if kept > self.retention_bytes:
                self._trim_bytes(log, base)

    def tagged(self, identity: str, cid: str) -> tuple[str, Record] | None:
        rows = self._query(
            "SELECT log, id, line, sender, recipient FROM cids WHERE identity = :identity AND cid = :cid "
            "AND stored_at >= :since",
            {"identity": identity, "cid": cid, "since": time.time() - CID_KEEP},
        )
        if not rows:
            return None
        log, id, line, sender, recipient = rows[0]
        return str(log), Record(int(id), bytes(line), sender, recipient, (identity, cid))

    def tagged_all(self, tags: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Record]:
        found: dict[tuple[str, str], Record] = {}
        unique = list(dict.fromkeys(tags))
        for start in range(0, len(unique), _TAGS_PER_READ):
            chunk = unique[start : start + _TAGS_PER_READ]
            values = ", ".join(f"(:i{n}, :c{n})" for n in range(len(chunk)))
            params: dict[str, object] = {"since": time.time() - CID_KEEP}
            for n, (identity, cid) in enumerate(chunk):
                params[f"i{n}"], params[f"c{n}"] = identity, cid
            rows = self._query(  # a join, so that each tag is a primary key lookup (IN would scan)
                f"WITH wanted(identity, cid) AS (VALUES {values}) "
                "SELECT cids.identity, cids.cid, id, line, sender, recipient FROM wanted JOIN cids "
                "ON cids.identity = wanted.identity AND cids.cid = wanted.cid WHERE stored_at >= :since",
                params,
            )
            for identity, cid, id, line, sender, recipient in rows:
                found[(identity, cid)] = Record(int(id), bytes(line), sender, recipient, (identity, cid))
        return found

    def newest_start(self, log: str, upto: int, count: int, viewer: str | None = None) -> int | None:
        if count <= 0:
            return None
        base = self._base(log)
        rows = self._query(
            f"SELECT MIN(key) FROM (SELECT key FROM lines WHERE key BETWEEN :lo AND :hi AND {_VISIBLE} "
            "ORDER BY key DESC LIMIT :count)",
            {**self._range(base, 0, upto), "count": count, "viewer": viewer},
        )
        return int(rows[0][0]) - base if rows[0][0] is not None else None

    def count(self, log: str, first: int, last: int, viewer: str | None = None) -> int:
        rows = self._query(
            f"SELECT COUNT(*) FROM lines WHERE key BETWEEN :lo AND :hi AND {_VISIBLE}",
            {**self._range(self._base(log), first, last), "viewer": viewer},
        )
        return int(rows[0][0])

    def read(self, log: str, first: int, last: int, limit: int, viewer: str | None = None) -> list[Record]:
        base = self._base(log)
        rows = self._query(
            f"SELECT key, line, sender, recipient FROM lines WHERE key BETWEEN :lo AND :hi AND {_VISIBLE} "
            "ORDER BY key LIMIT :limit",
            {**self._range(base, first, last), "limit": limit, "viewer": viewer},
        )
        return [Record(int(row[0]) - base, bytes(row[1]), row[2], row[3]) for row in rows]

    def rooms(self) -> list[RoomRecord]:
        rows = self._query("SELECT room, name, topic, creator FROM rooms ORDER BY room", {})
        return [RoomRecord(row[0], row[1], row[2], row[3]) for row in rows]

    def save_room(self, room: RoomRecord) -> None:
        with self._write_lock:
            self._check_file_locked()
            try:
                self._db.execute(
                    "INSERT INTO rooms (room, name, topic, created_at, creator) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (room) DO UPDATE SET topic = excluded.topic",
                    (room.key, room.name, room.topic, time.time(), room.creator),
                )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot save room {room.name}: {exc}") from exc

    def drop_room(self, key: str) -> None:
        base = self._base(key)
        with self._write_lock:
            self._check_file_locked()
            last = self._last_id_locked(key)  # kept, so that the room's ids go on from there
            try:
                with self._transaction():
                    self._db.execute("DELETE FROM rooms WHERE room = ?", (key,))
                    for table in ("room_modes", "room_roles", "sanctions"):
                        self._db.execute(f"DELETE FROM {table} WHERE room = ?", (key,))
                    self._db.execute("DELETE FROM lines WHERE key BETWEEN ? AND ?", (base, base + last))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot remove the room {key}: {exc}") from exc
            self._kept_bytes.pop(key, None)
            self._save_marks_locked()  # its lines are gone: its last id is kept beside the file

    def account(self, key: str) -> AccountRecord | None:
        rows = self._query(
            "SELECT account, name, password_hash, created_at FROM accounts WHERE account = :key", {"key": key}
        )
        return AccountRecord(*rows[0]) if rows else None

    def save_account(self, account: AccountRecord) -> None:
        self._write(
            "INSERT INTO accounts VALUES (?, ?, ?, ?) ON CONFLICT (account) DO UPDATE SET "
            "password_hash = excluded.password_hash",
            (account.key, account.name, account.password_hash, account.created_at or time.time()),
            f"cannot keep the account {account.name}",
        )

    def session(self, token_hash: str) -> tuple[str, float] | None:
        rows = self._query("SELECT identity, expires_at FROM sessions WHERE token_hash = :hash", {"hash": token_hash})
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    def save_session(self, token_hash: str, identity: str, expires_at: float) -> None:
        self._write(
            "INSERT INTO sessions VALUES (?, ?, ?) ON CONFLICT (token_hash) DO UPDATE SET expires_at = "
            "excluded.expires_at",
            (token_hash, identity, expires_at),
            "cannot keep a session",
        )

    def drop_sessions(self, identity: str) -> None:
        self._write("DELETE FROM sessions WHERE identity = ? OR expires_at < ?", (identity, time.time()),
                    "cannot revoke sessions")

    def accounts(self) -> list[AccountRecord]:
        rows = self._query("SELECT account, name, password_hash, created_at FROM accounts ORDER BY account", {})
        return [AccountRecord(*row) for row in rows]

    def drop_account(self, key: str) -> None:
        identity = f"account:{key}"
        with self._write_lock:
            self._check_file_locked()
            try:
                with self._transaction():
                    self._db.execute("DELETE FROM accounts WHERE account = ?", (key,))
                    for table in ("sessions", "account_rooms", "read_markers"):
                        self._db.execute(f"DELETE FROM {table} WHERE identity = ?", (identity,))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot delete the account {key}: {exc}") from exc

    def account_rooms(self, identity: str) -> list[str]:
        rows = self._query(
            "SELECT room FROM account_rooms WHERE identity = :identity ORDER BY joined_at, rowid",
            {"identity": identity},
        )
        return [str(row[0]) for row in rows]

    def save_account_room(self, identity: str, room: str, in_it: bool) -> None:
        if in_it:
            self._write("INSERT OR IGNORE INTO account_rooms VALUES (?, ?, ?)", (identity, room, time.time()),
                        "cannot keep the account's rooms")
        else:
            self._write("DELETE FROM account_rooms WHERE identity = ? AND room = ?", (identity, room),
                        "cannot keep the account's rooms")

    def read_markers(self, identity: str) -> dict[str, int]:
        rows = self._query("SELECT room, id FROM read_markers WHERE identity = :identity", {"identity": identity})
        return {str(room): int(id) for room, id in rows}

    def save_read_marker(self, identity: str, room: str, id: int) -> bool:
        with self._write_lock:
            self._check_file_locked()
            try:
                changed = self._db.execute(
                    "INSERT INTO read_markers VALUES (?, ?, ?) ON CONFLICT (identity, room) DO UPDATE SET "
                    "id = excluded.id WHERE excluded.id > read_markers.id",
                    (identity, room, id),
                ).rowcount
            except sqlite3.Error as exc:
                raise StoreError(f"cannot keep a read marker: {exc}") from exc
        return changed > 0

    def adopt_private(self, legacy: str, identity: str) -> int:
        base = self._base(PRIVATE_LOG)
        adopted = 0
        with self._write_lock:
            self._check_file_locked()
            try:
                for column in ("sender", "recipient"):
                    adopted += self._db.execute(
                        f"UPDATE lines SET {column} = ? WHERE key BETWEEN ? AND ? AND {column} = ?",
                        (identity, base, base + ID_LIMIT - 1, legacy),
                    ).rowcount
            except sqlite3.Error as exc:
                raise StoreError(f"cannot hand older private messages to {identity}: {exc}") from exc
        return adopted

    def roles(self, room: str) -> dict[str, str]:
        rows = self._query("SELECT identity, role FROM room_roles WHERE room = :room", {"room": room})
        return {str(identity): str(role) for identity, role in rows}

    def save_role(self, room: str, identity: str, role: str | None) -> None:
        params: tuple[str, ...]
        if role is None:
            sql, params = "DELETE FROM room_roles WHERE room = ? AND identity = ?", (room, identity)
        else:
            sql, params = "INSERT OR REPLACE INTO room_roles VALUES (?, ?, ?)", (room, identity, role)
        self._write(sql, params, "cannot save a role")

    def modes(self, room: str) -> set[str]:
        return {str(row[0]) for row in self._query("SELECT mode FROM room_modes WHERE room = :room", {"room": room})}

    def save_mode(self, room: str, mode: str, on: bool) -> None:
        if on:
            self._write("INSERT OR IGNORE INTO room_modes VALUES (?, ?)", (room, mode), "cannot save a room mode")
        else:
            self._write("DELETE FROM room_modes WHERE room = ? AND mode = ?", (room, mode), "cannot save a room mode")

    def sanctions(self, room: str) -> list[Sanction]:
        rows = self._query(
            "SELECT room, target, kind, name, until, reason, by FROM sanctions WHERE room = :room", {"room": room}
        )
        return [Sanction(*row) for row in rows]

    def save_sanction(self, sanction: Sanction) -> None:
        self._write(
            "INSERT OR REPLACE INTO sanctions VALUES (?, ?, ?, ?, ?, ?, ?)",
            dataclasses.astuple(sanction),
            "cannot save a ban or mute",
        )

    def drop_sanction(self, room: str, target: str, kind: str) -> None:
        self._write(
            "DELETE FROM sanctions WHERE room = ? AND target = ? AND kind = ?", (room, target, kind),
            "cannot lift a ban or mute",
        )

    def count_accounts(self) -> int:
        """How many accounts are registered (for the operator's metrics)."""
        return int(self._query("SELECT COUNT(*) FROM accounts", {})[0][0])

    def problem(self) -> str | None:
        """Why nothing more can be kept (the file was deleted or replaced), or None: for the
        health check, which notices a lost file before the next message does."""
        with self._write_lock:
            try:
                self._check_file_locked()
            except StoreError as exc:
                return str(exc)
        return None

    def _write(self, sql: str, params: tuple[object, ...], what: str) -> None:
        with self._write_lock:
            self._check_file_locked()
            try:
                self._db.execute(sql, params)
            except sqlite3.Error as exc:
                raise StoreError(f"{what}: {exc}") from exc

    # --- search -------------------------------------------------------------------------

    def start_indexing(self) -> None:
        """Fill the search index in a thread of its own from now on: first whatever the file
        holds unindexed (a file from an older release, all of it), then each line kept."""
        if self._indexer is None:
            self._indexer = threading.Thread(target=self._index_forever, name="chat-search-index")
            self._index_wake.set()
            self._indexer.start()

    def index_some(self, budget: int = INDEX_BATCH) -> int:
        """Put up to `budget` kept lines not yet in the search index into it, one transaction
        per log; how many it took (0: the index is up to date)."""
        done = 0
        with self._index_lock:
            for number in sorted(self._unindexed):
                if done >= budget:
                    break
                with self._write_lock:
                    if self._lost is not None:
                        return done
                    try:
                        taken = self._index_log_locked(number, budget - done)
                    except sqlite3.Error as exc:
                        _logger.error("could not index lines for search: %s", exc)
                        return done
                if taken < budget - done:
                    self._unindexed.discard(number)  # an append after this read adds it again
                done += taken
        return done

    def search(self, text: str, logs: Sequence[str], viewer: str, before: int | None, limit: int) -> Found:
        expression = match_expression(text)
        if expression is None:
            raise SearchInvalid("the search has no word to look for")
        # What was said just now is found too: index what waits (all of it, unless the index of
        # an older file is still being filled, when the search answers from what is indexed).
        self.index_some(INDEX_BATCH * 4)
        numbers = self._log_numbers(logs)
        if not numbers:
            return Found([], 0)
        conditions: list[str] = []
        params: dict[str, object] = {"q": expression, "viewer": viewer, "limit": limit}
        for index, (log, number) in enumerate(numbers):
            base = number << _ID_BITS
            params[f"lo{index}"] = base
            params[f"hi{index}"] = base + (min(before, ID_LIMIT) - 1 if before is not None else ID_LIMIT - 1)
            condition = f"l.key BETWEEN :lo{index} AND :hi{index}"
            if log == PRIVATE_LOG:
                condition += " AND (l.sender = :viewer OR l.recipient = :viewer)"
            conditions.append(f"({condition})")
        where = f"search MATCH :q AND ({' OR '.join(conditions)})"
        joined = "FROM search JOIN lines l ON l.key = search.rowid"
        newest = "ORDER BY l.stored_at DESC, l.key DESC LIMIT :limit"
        # A search of a common word reads every match (to sort and count them): on a connection
        # of its own, so that it never makes a join or a history page wait for the reader.
        with self._search_lock:
            try:
                if self._searcher is None:
                    self._searcher = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                rows = self._searcher.execute(f"SELECT l.line {joined} WHERE {where} {newest}", params).fetchall()
                total = self._searcher.execute(f"SELECT COUNT(*) {joined} WHERE {where}", params).fetchone()[0]
            except sqlite3.Error as exc:
                raise StoreError(f"cannot search history: {exc}") from exc
        return Found([bytes(row[0]) for row in rows], int(total) - len(rows))

    def _log_numbers(self, logs: Sequence[str]) -> list[tuple[str, int]]:
        """The numbers of those of `logs` that exist (a search makes none)."""
        found: list[tuple[str, int]] = []
        for log in logs:
            base = self._bases.get(log)
            if base is None:
                rows = self._query("SELECT number FROM logs WHERE log = :log", {"log": log})
                if not rows:
                    continue
                base = int(rows[0][0]) << _ID_BITS
            found.append((log, base >> _ID_BITS))
        return found

    def _index_log_locked(self, number: int, budget: int) -> int:
        base = number << _ID_BITS
        after = max(self._indexed.get(number, base), base)
        rows = self._db.execute(
            "SELECT key, line FROM lines WHERE key > ? AND key < ? ORDER BY key LIMIT ?",
            (after, base + ID_LIMIT, budget),
        ).fetchall()
        if not rows:
            return 0
        entries = [(key, text) for key, line in rows if (text := _searchable(bytes(line))) is not None]
        with self._transaction():
            self._db.executemany("INSERT INTO search (rowid, text) VALUES (?, ?)", entries)
            self._db.execute("INSERT OR REPLACE INTO search_marks VALUES (?, ?)", (number, rows[-1][0]))
        self._indexed[number] = rows[-1][0]
        return len(rows)

    def _index_forever(self) -> None:
        # Woken by a full batch of new lines, or after a quiet second for the rest: lines indexed
        # a few at a time would cost a transaction each. A search indexes what waits itself.
        while True:
            self._index_wake.wait(INDEX_QUIET)
            if self._index_stop:
                return
            self._index_wake.clear()
            self._index_pending = 0
            while not self._index_stop and self.index_some():
                pass

    def close(self) -> None:
        indexer, self._indexer = self._indexer, None
        if indexer is not None:
            self._index_stop = True
            self._index_wake.set()
            indexer.join()
        with self._write_lock, self._read_lock, self._search_lock:
            self._save_marks_locked()
            if self._searcher is not None:
                self._searcher.close()
            self._reader.close()
            self._db.close()

    # --- inside ------------------------------------------------------------------------

    @staticmethod
    def _range(base: int, first: int, last: int) -> dict[str, object]:
        """The keys of ids first..last of the log at `base`, clamped to the ids a log can have."""
        return {"lo": base + max(0, first), "hi": base + min(last, ID_LIMIT - 1)}

    def _base(self, log: str) -> int:
        """The log's number shifted into place; a log seen for the first time gets a number."""
        base = self._bases.get(log)
        if base is None:
            with self._write_lock:
                base = self._base_locked(log)
        return base

    def _base_locked(self, log: str) -> int:
        base = self._bases.get(log)
        if base is None:
            try:
                self._db.execute("INSERT OR IGNORE INTO logs (log) VALUES (?)", (log,))
                number = self._db.execute("SELECT number FROM logs WHERE log = ?", (log,)).fetchone()[0]
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open {log or 'private messages'}: {exc}") from exc
            base = self._bases[log] = int(number) << _ID_BITS
        return base

    def _last_id_locked(self, log: str) -> int:
        last = self._last_ids.get(log)
        if last is None:
            base = self._base_locked(log)
            try:
                row = self._db.execute(
                    "SELECT MAX(key) FROM lines WHERE key BETWEEN ? AND ?", (base, base + ID_LIMIT - 1)
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read {log or 'private messages'}: {exc}") from exc
            stored = int(row[0]) - base if row[0] is not None else 0
            last = self._last_ids[log] = max(stored, self._marks.get(log, 0))
        return last

    def _query(self, sql: str, params: dict[str, object]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            try:
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read history: {exc}") from exc

    def _trim(self, log: str, base: int) -> None:
        # Called with the write lock held, every TRIM_EVERY appends to `log`:
        # a small delete each time. The newest line always stays, so that the
        # log's next id is known after a restart.
        last = self._last_ids[log]
        try:
            self._delete(log, "key BETWEEN ? AND ?", (base, base + last - self.retention))
            if self.max_age is not None:
                self._delete(
                    log, "key BETWEEN ? AND ? AND stored_at < ?", (base, base + last - 1, time.time() - self.max_age)
                )
        except sqlite3.Error as exc:
            _logger.error("could not delete old lines of %s: %s", log or "private messages", exc)

    def _delete(self, log: str, where: str, params: tuple[float, ...]) -> None:
        """Delete some of a log's lines, keeping its count of kept bytes right."""
        if log in self._kept_bytes:
            gone = self._db.execute(f"SELECT TOTAL(LENGTH(line)) FROM lines WHERE {where}", params).fetchone()[0]
            self._kept_bytes[log] -= int(gone)
        self._db.execute(f"DELETE FROM lines WHERE {where}", params)

    def _probe_write(self) -> None:
        """Prove at start that the file takes writes (a write in a transaction, rolled back),
        rather than welcoming everybody and then refusing every message."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("INSERT INTO logs (log) VALUES (?)", ("\0write probe",))
        finally:
            self._db.execute("ROLLBACK")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE, the body, COMMIT (called under the write lock); rolled back if the
        body or the commit fails, and the error goes on to the caller."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _check_file_locked(self) -> None:
        """Refuse to acknowledge a line into a file that is no longer the one at `path`."""
        if self._lost is None:
            try:
                same = _identity(self.path) == self._identity
                why = "was replaced by another file"
            except FileNotFoundError:
                same, why = False, "was deleted"
            except OSError as exc:
                same, why = False, f"cannot be checked ({exc})"
            if not same:
                self._lost = why
                _logger.error(
                    "the history file %s %s while the server ran: no message is accepted until it restarts",
                    self.path,
                    why,
                )
                self._save_marks_locked()
        if self._lost is not None:
            raise StoreError(f"the history file {self.path} {self._lost}; nothing more can be kept")

    def _save_marks_locked(self) -> None:
        """Keep each log's last id beside the file, where deleting the file does not take it,
        so that ids go on from there even if the history starts over."""
        marks = {**self._marks, **self._last_ids}
        if not marks or not self._keep_marks:
            return
        path = _marks_path(self.path)
        try:
            temporary = f"{path}.tmp"
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                json.dump(marks, out)
            os.replace(temporary, path)
        except OSError as exc:
            _logger.error("cannot keep the last ids in %s: %s", path, exc)

    def _count_bytes_locked(self, base: int) -> int:
        row = self._db.execute(
            "SELECT TOTAL(LENGTH(line)) FROM lines WHERE key BETWEEN ? AND ?", (base, base + ID_LIMIT - 1)
        ).fetchone()
        return int(row[0])

    def _trim_bytes(self, log: str, base: int) -> None:
        """Delete a log's oldest lines until it holds at most 7/8 of retention_bytes
        (so that the next deletes are a while off): reads only the rows it deletes."""
        target = self.retention_bytes - self.retention_bytes // 8
        excess = self._kept_bytes[log] - target
        last = self._last_ids[log]
        cut, freed = None, 0
        try:
            rows = self._db.execute(
                "SELECT key, LENGTH(line) FROM lines WHERE key BETWEEN ? AND ? ORDER BY key", (base, base + last - 1)
            )
            for key, size in rows:
                cut, freed = key, freed + size
                if freed >= excess:
                    break
            rows.close()
            if cut is not None:
                self._db.execute("DELETE FROM lines WHERE key BETWEEN ? AND ?", (base, cut))
                self._kept_bytes[log] -= freed
        except sqlite3.Error as exc:
            _logger.error("could not delete old lines of %s: %s", log or "private messages", exc)

    def _upgrade(self) -> None:
        """Create the tables, or bring a file made by an older server up to date, in one transaction."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == _SCHEMA_VERSION:
            return
        old_table = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
        ).fetchone()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(rooms)")}
            if "creator" not in columns:  # a file of version 5 or older
                self._db.execute("ALTER TABLE rooms ADD COLUMN creator TEXT NOT NULL DEFAULT ''")
            self._db.execute(_SEARCH_TRIGGER)
            if old_table:
                moved = _move_single_room_history(self._db)
                _logger.info("moved %d messages of the single-room history into the lobby", moved)
            self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise


def _searchable(line: bytes) -> str | None:
    """The text a search finds a kept line by (what somebody wrote), or None for other lines."""
    try:
        text = line.decode()
    except UnicodeDecodeError:
        return None
    # Every line is indexed once, so a line as this server writes it (compact, "type" first) is
    # read for its type and its "msg" alone: a key cannot occur inside a JSON string (its quotes
    # would be escaped there), so the first '"msg":"' is the key. Other spellings are parsed whole.
    if text.startswith('{"type":"'):
        end = text.find('"', 9)
        if text[9:end] not in _SEARCHED:
            return None
        at = text.find('"msg":"', end)
        if at >= 0:
            try:
                found: str = scanstring(text, at + 7)[0]
            except ValueError:
                return None
            return found
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("type") not in _SEARCHED:
        return None
    said = value.get("msg")
    return said if isinstance(said, str) else None


def _move_single_room_history(db: sqlite3.Connection) -> int:
    """The first release kept one room's lines in `messages`, without a room field:
    they become the lobby's, ids unchanged; its private messages become the
    private log's. The lines gain `"room": "lobby"` so that they read like new ones."""
    bases = {}
    for log in ("lobby", PRIVATE_LOG):
        db.execute("INSERT OR IGNORE INTO logs (log) VALUES (?)", (log,))
        bases[log] = db.execute("SELECT number FROM logs WHERE log = ?", (log,)).fetchone()[0] << _ID_BITS
    moved = 0
    rows = db.execute("SELECT id, stored_at, sender, recipient, line FROM messages ORDER BY id")
    for message_id, stored_at, sender, recipient, line in rows.fetchall():
        value = json.loads(bytes(line))
        if recipient is None:
            value = {"type": value.pop("type"), "room": "lobby", **value}
            log = "lobby"
        else:
            log = PRIVATE_LOG
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        db.execute(
            "INSERT INTO lines VALUES (?, ?, ?, ?, ?)", (bases[log] + message_id, stored_at, sender, recipient, encoded)
        )
        moved += 1
    db.execute(
        "INSERT OR IGNORE INTO rooms (room, name, topic, created_at) VALUES ('lobby', 'lobby', '', ?)", (time.time(),)
    )
    db.execute("DROP TABLE messages")
    return moved


def _private_file(path: str) -> None:
    """Create the history file 0600 (its directory 0700 if new), or make an existing one 0600:
    it holds private messages."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            mode = os.stat(name).st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(name, 0o600)
            _logger.warning("%s was readable by others (mode %o); it is now 0600", name, mode)


def _identity(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _marks_path(path: str) -> str:
    return f"{path}.last-ids"


def _read_marks(path: str) -> dict[str, int]:
    """The last ids a previous run kept beside the file (none if it kept none)."""
    try:
        with open(path, encoding="utf-8") as source:
            marks = json.load(source)
    except (FileNotFoundError, NotADirectoryError):
        return {}  # none kept (or no directory yet: opening the file will say what is wrong)
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read the last ids in {path}: {exc}") from exc
    if not isinstance(marks, dict) or not all(isinstance(v, int) and 0 <= v < ID_LIMIT for v in marks.values()):
        raise StoreError(f"{path} does not hold last ids; move it away to start the ids over")
    return {str(log): int(last) for log, last in marks.items()}


# --- for chat-admin: reading and copying a history file a server may be using -------------


def backup_file(path: str, out: str) -> None:
    """Copy the history file at `path` to `out` (a new file, 0600) while a server may write it:
    SQLite's online backup, in one step, so the copy is the file as of one moment (in WAL mode the
    server's writes go on meanwhile). StoreError if either file cannot be used."""
    try:
        source = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the history file {path}: {exc}") from exc
    try:
        os.close(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        source.close()
        raise StoreError(f"cannot create {out}: {exc.strerror or exc}") from exc
    try:
        target = sqlite3.connect(out)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        finally:
            target.close()
    except sqlite3.Error as exc:
        os.unlink(out)
        raise StoreError(f"cannot back up {path} to {out}: {exc}") from exc
    finally:
        source.close()


def read_log(path: str, log: str, since: int = 0, batch: int = 1000) -> Iterator[bytes]:
    """Every kept line of the log `log` (a room's key) after id `since`, oldest first, each its
    stored JSON; read-only, in batches, so a long history never holds the file long."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the history file {path}: {exc}") from exc
    try:
        row = db.execute("SELECT number FROM logs WHERE log = ?", (log,)).fetchone()
        if row is None:
            raise StoreError(f"{path} has no history of the room {log!r}")
        base = int(row[0]) << _ID_BITS
        after, last = base + max(0, since), base + ID_LIMIT - 1
        while True:
            rows = db.execute(
                "SELECT key, line FROM lines WHERE key > ? AND key <= ? AND recipient IS NULL ORDER BY key LIMIT ?",
                (after, last, batch),
            ).fetchall()
            for key, line in rows:
                yield bytes(line) if isinstance(line, (bytes, memoryview)) else str(line).encode()
                after = key
            if len(rows) < batch:
                return
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    finally:
        db.close()
