"""Where a server keeps what it must not forget: in memory, or durably in SQLite.

Four narrow protocols, each taken by its own users: HistoryStore (numbered lines,
log by log: a room's history under its casefolded name, private messages under
PRIVATE_LOG; for chat.server.log.LocalLog), AccountStore (accounts and session
tokens; chat.server.accounts), Rules (roles, modes, bans, mutes; rooms and the
server's own scope) and RoomStore (the room list). Store is all four, which
MemoryStore and SqliteStore implement; several servers on one Redis keep some
of the parts there instead. A store answers range questions whose cost is the
size of the answer and decides nothing: the room log numbers and chooses what
to keep; no sockets and no protocol models here.

protocols.py holds the records and the protocols, memory.py and sqlite.py the two
stores; the rest of the server names all of them from here (chat.server.store).
"""

from __future__ import annotations

from chat.server.store.memory import MemoryStore
from chat.server.store.protocols import (
    CID_KEEP,
    DEFAULT_RETENTION,
    DEFAULT_RETENTION_BYTES,
    PRIVATE_LOG,
    AccountRecord,
    AccountStore,
    Found,
    HistoryStore,
    Record,
    RoomRecord,
    RoomStore,
    Rules,
    Sanction,
    SearchIndex,
    SearchInvalid,
    Store,
    StoreError,
    kept,
)
from chat.server.store.sqlite import ID_LIMIT, SqliteStore

__all__ = [
    "CID_KEEP",
    "DEFAULT_RETENTION",
    "DEFAULT_RETENTION_BYTES",
    "ID_LIMIT",
    "PRIVATE_LOG",
    "AccountRecord",
    "AccountStore",
    "Found",
    "HistoryStore",
    "MemoryStore",
    "Record",
    "RoomRecord",
    "RoomStore",
    "Rules",
    "Sanction",
    "SearchIndex",
    "SearchInvalid",
    "SqliteStore",
    "Store",
    "StoreError",
    "kept",
    "open_store",
]


def open_store(
    path: str,
    retention: int = DEFAULT_RETENTION,
    max_age: float | None = None,
    retention_bytes: int = DEFAULT_RETENTION_BYTES,
) -> Store:
    """A SqliteStore at `path`, or a MemoryStore for ":memory:"."""
    if path == ":memory:":
        return MemoryStore(retention, retention_bytes)
    return SqliteStore(path, retention, max_age, retention_bytes=retention_bytes)
