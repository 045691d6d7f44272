"""Where the room's numbered messages are kept: in memory, or durably in SQLite.

A store holds encoded lines by id, with who may see each (everyone, or the
two parties of a private message), and answers three questions: append,
the lines after an id, the lines before an id. The room decides what to
store and when; no sockets and no protocol models here.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from chat.errors import ChatError

log = logging.getLogger(__name__)

#: Messages kept by default; older ones are deleted as new ones arrive.
DEFAULT_RETENTION = 100_000


class StoreError(ChatError):
    """The store could not be opened, read or written (corrupt file, full disk, locked)."""


@dataclass(frozen=True)
class Record:
    """One stored message: its id, its encoded line, and who may see it."""

    id: int
    line: bytes
    #: Casefolded names of the two parties of a private message; None for the room.
    sender: str | None = None
    recipient: str | None = None

    def visible_to(self, viewer: str) -> bool:
        return self.recipient is None or viewer in (self.sender, self.recipient)


@dataclass(frozen=True)
class Page:
    """Lines in id order, and how many more visible ones lie beyond the page."""

    lines: list[bytes]
    more: int


class Store(Protocol):
    """What the room needs of a message store."""

    def last_id(self) -> int:
        """The highest id ever stored (0 for a new store)."""
        ...

    def oldest_id(self) -> int | None:
        """The lowest id still kept, or None when nothing is."""
        ...

    def append(self, record: Record) -> None:
        """Keep `record`; raises StoreError if it could not be kept."""
        ...

    def after(self, since: int, viewer: str, limit: int) -> Page:
        """The newest `limit` lines visible to `viewer` with id > since; `more` are older."""
        ...

    def before(self, before: int, viewer: str, limit: int) -> Page:
        """The newest `limit` lines visible to `viewer` with id < before; `more` are older."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """A store that forgets everything when the server stops (`--db :memory:`)."""

    def __init__(self, retention: int = DEFAULT_RETENTION) -> None:
        self._records: deque[Record] = deque(maxlen=retention)
        self._last_id = 0

    def last_id(self) -> int:
        return self._last_id

    def oldest_id(self) -> int | None:
        return self._records[0].id if self._records else None

    def append(self, record: Record) -> None:
        self._records.append(record)
        self._last_id = record.id

    def after(self, since: int, viewer: str, limit: int) -> Page:
        return self._page([r for r in self._records if r.id > since and r.visible_to(viewer)], limit)

    def before(self, before: int, viewer: str, limit: int) -> Page:
        return self._page([r for r in self._records if r.id < before and r.visible_to(viewer)], limit)

    def close(self) -> None:
        pass

    @staticmethod
    def _page(records: list[Record], limit: int) -> Page:
        shown = records[-limit:] if limit > 0 else []
        return Page([r.line for r in shown], len(records) - len(shown))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    stored_at REAL NOT NULL,
    sender TEXT,
    recipient TEXT,
    line BLOB NOT NULL
)
"""

_VISIBLE = "(recipient IS NULL OR sender = :viewer OR recipient = :viewer)"


class SqliteStore:
    """Messages in an SQLite file in WAL mode: they survive restarts and `kill -9`.

    Each append is its own transaction with synchronous=NORMAL: once append
    returns, the message is in the write-ahead log and survives the server
    process dying; a power cut may lose the last moments. Retention deletes
    old rows in small steps as new ones arrive, so the room never stalls.
    """

    #: Delete old rows every this many appends.
    TRIM_EVERY = 512

    def __init__(
        self,
        path: str,
        retention: int = DEFAULT_RETENTION,
        max_age: float | None = None,
        busy_timeout: float = 2.0,
    ) -> None:
        self.path = path
        self.retention = retention
        self.max_age = max_age
        self._lock = threading.Lock()
        self._appends = 0
        try:
            self._db = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.execute("PRAGMA quick_check").fetchone()
            row = self._db.execute("SELECT MAX(id) FROM messages").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use the database {path}: {exc}") from exc
        self._last_id = int(row[0] or 0)

    def last_id(self) -> int:
        return self._last_id

    def oldest_id(self) -> int | None:
        row = self._query("SELECT MIN(id) FROM messages", {})[0]
        return int(row[0]) if row[0] is not None else None

    def append(self, record: Record) -> None:
        params = (record.id, time.time(), record.sender, record.recipient, record.line)
        with self._lock:
            try:
                self._db.execute("INSERT INTO messages VALUES (?, ?, ?, ?, ?)", params)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot store message {record.id}: {exc}") from exc
            self._last_id = record.id
            self._appends += 1
            if self._appends % self.TRIM_EVERY == 0:
                self._trim()

    def after(self, since: int, viewer: str, limit: int) -> Page:
        return self._page("id > :edge", {"edge": since, "viewer": viewer, "limit": limit})

    def before(self, before: int, viewer: str, limit: int) -> Page:
        return self._page("id < :edge", {"edge": before, "viewer": viewer, "limit": limit})

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _page(self, where: str, params: dict[str, object]) -> Page:
        rows = self._query(
            f"SELECT line FROM messages WHERE {where} AND {_VISIBLE} ORDER BY id DESC LIMIT :limit", params
        )
        total = self._query(f"SELECT COUNT(*) FROM messages WHERE {where} AND {_VISIBLE}", params)[0][0]
        return Page([bytes(row[0]) for row in reversed(rows)], int(total) - len(rows))

    def _query(self, sql: str, params: dict[str, object]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read messages: {exc}") from exc

    def _trim(self) -> None:
        # Called with the lock held, every TRIM_EVERY appends: a small delete each time.
        try:
            self._db.execute("DELETE FROM messages WHERE id <= ?", (self._last_id - self.retention,))
            if self.max_age is not None:
                self._db.execute(
                    "DELETE FROM messages WHERE stored_at < ? AND id < ?", (time.time() - self.max_age, self._last_id)
                )
        except sqlite3.Error as exc:
            log.error("could not delete old messages: %s", exc)


def open_store(path: str, retention: int = DEFAULT_RETENTION, max_age: float | None = None) -> Store:
    """A SqliteStore at `path`, or a MemoryStore for ":memory:"."""
    if path == ":memory:":
        return MemoryStore(retention)
    return SqliteStore(path, retention, max_age)
