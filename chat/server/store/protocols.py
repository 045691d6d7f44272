"""What every store speaks: the records it keeps, the four narrow protocols and their
composition Store, StoreError, and `kept` (a store's failure as a client's storage_failed).

Types and one helper only: no store lives here (memory.py, sqlite.py; several servers
keep some parts in Redis).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

from chat.errors import ChatError, StorageFailed

T = TypeVar("T")
_logger = logging.getLogger(__name__)

#: Messages each log keeps by default; older ones are deleted as new ones arrive.
DEFAULT_RETENTION = 100_000
#: Bytes each log keeps at most: one client saying 8,000 escaped NULs at a time
#: (48 KB a line) must not be able to fill a small server's disk.
DEFAULT_RETENTION_BYTES = 32 * 1024 * 1024
#: Seconds a line's `(identity, cid)` is kept at least, so that a repeat is answered, not kept
#: again (the protocol promises 10 minutes; a client that reconnects later resends within it).
CID_KEEP = 3600.0
#: The log of private messages: not a room name (those are 1 to 32 characters).
PRIVATE_LOG = ""


class StoreError(ChatError):
    """The store could not be opened, read or written (corrupt file, full disk, locked)."""


class SearchInvalid(ChatError):
    """The asker's search text has no word to look for (its fault)."""


class Found(NamedTuple):
    """A search's answer: the matching lines as kept, newest first, and how many older ones match."""

    lines: list[bytes]
    more: int


class SearchIndex(Protocol):
    """Full-text search over kept lines (SqliteStore's FTS5 index)."""

    def search(self, text: str, logs: Sequence[str], viewer: str, before: int | None, limit: int) -> Found:
        """The newest `limit` lines of `logs` matching `text` (words, "quoted phrases", `prefix*`,
        all of them), with id < `before` if given; in PRIVATE_LOG only `viewer`'s own.
        SearchInvalid if `text` has no word; StoreError if the index cannot be read."""
        ...


class Record(NamedTuple):
    """One stored line: its id in its log, the encoded line, and who may see it.

    A named tuple, not a dataclass: one is made for every line said, and a tuple is made fastest.
    """

    id: int
    line: bytes
    #: Casefolded names of the two parties of a private message; None for a room's line.
    sender: str | None = None
    recipient: str | None = None
    #: `(identity, cid)` of a line its sender gave a `cid`: kept with it for CID_KEEP seconds.
    cid: tuple[str, str] | None = None

    def visible_to(self, viewer: str | None) -> bool:
        return viewer is None or self.recipient is None or viewer in (self.sender, self.recipient)


@dataclass(frozen=True)
class RoomRecord:
    """A room as the store keeps it: its key, its name as first spelled, its topic, and the
    identity that created it (`--max-rooms-per-user` counts by it; "" if unknown)."""

    key: str
    name: str
    topic: str = ""
    creator: str = ""


@dataclass(frozen=True)
class AccountRecord:
    """A registered name: its key (wire.text.name_key), its spelling, its password's Argon2 hash."""

    key: str
    name: str
    password_hash: str
    created_at: float = 0.0


@dataclass(frozen=True)
class Sanction:
    """A ban or a mute in a room: on an identity (`account:...`) or, for a guest, an address
    (`address:...`); `name` is who it was given to, `until` when it ends (None: never)."""

    room: str
    target: str
    kind: str
    name: str
    until: float | None
    reason: str
    by: str

    def active(self, now: float) -> bool:
        return self.until is None or self.until > now


class HistoryStore(Protocol):
    """Where room logs keep their numbered lines (chat.server.log.LocalLog is its one user).
    `viewer` (an identity: `account:...` or `guest:...`) limits an answer to the lines that
    name may see; None means every line."""

    def last_id(self, log: str) -> int:
        """The highest id ever stored in `log` (0 for a new one)."""
        ...

    def oldest_id(self, log: str) -> int | None:
        """The lowest id still kept in `log`, or None when nothing is."""
        ...

    def append(self, log: str, record: Record) -> None:
        """Keep `record`; raises StoreError if it could not be kept."""
        ...

    def append_all(self, log: str, records: Sequence[Record]) -> None:
        """Keep every one of `records` (in id order) or, raising StoreError, none of them."""
        ...

    def tagged(self, identity: str, cid: str) -> tuple[str, Record] | None:
        """The log and the record `identity` kept with `cid` in the last CID_KEEP seconds, if any
        (the record as it was stored, even if retention has trimmed it from its log since)."""
        ...

    def tagged_all(self, tags: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Record]:
        """tagged() for many `(identity, cid)` at once (one read): the records found, by tag."""
        ...

    def newest_start(self, log: str, upto: int, count: int, viewer: str | None = None) -> int | None:
        """The lowest id among the `count` newest visible records with id <= upto (None if there are none)."""
        ...

    def count(self, log: str, first: int, last: int, viewer: str | None = None) -> int:
        """How many visible records have first <= id <= last."""
        ...

    def read(self, log: str, first: int, last: int, limit: int, viewer: str | None = None) -> list[Record]:
        """Up to `limit` visible records with first <= id <= last, oldest first."""
        ...

    def adopt_private(self, legacy: str, identity: str) -> int:
        """Give `identity` the private lines an older release kept under the casefolded
        name `legacy`; how many it gets."""
        ...


class AccountStore(Protocol):
    """Where accounts and session tokens are kept: a Store, or a place several servers share
    (chat.server.accounts is their user)."""

    def account(self, key: str) -> AccountRecord | None:
        """The account registered under `key`, if any."""
        ...

    def save_account(self, account: AccountRecord) -> None:
        """Register an account, or change its password hash (its name and creation time stay)."""
        ...

    def session(self, token_hash: str) -> tuple[str, float] | None:
        """The identity a session token stands for, and when it expires (one past its expiry
        may already be forgotten)."""
        ...

    def save_session(self, token_hash: str, identity: str, expires_at: float) -> None:
        """Keep a session token's hash (or move its expiry)."""
        ...

    def drop_sessions(self, identity: str) -> None:
        """Revoke every session token of `identity`."""
        ...

    def accounts(self) -> list[AccountRecord]:
        """Every account, by key."""
        ...

    def drop_account(self, key: str) -> None:
        """Delete the account `key` with its tokens, its rooms and its read markers."""
        ...

    def account_rooms(self, identity: str) -> list[str]:
        """The rooms (as named) an account is in, whatever device joined them, in the order joined."""
        ...

    def save_account_room(self, identity: str, room: str, in_it: bool) -> None:
        """The account joined the room (`in_it`) or parted it."""
        ...

    def read_markers(self, identity: str) -> dict[str, int]:
        """The account's read marker per room: the id of the last line it read there."""
        ...

    def save_read_marker(self, identity: str, room: str, id: int) -> bool:
        """Move the account's read marker in `room` forward to `id`; False if it was there or past it."""
        ...


class Rules(Protocol):
    """Who may do what in a room (or, under the server's own scope, on the server): roles, modes,
    bans and mutes. A Store keeps them; several servers on one Redis keep them there."""

    def roles(self, room: str) -> dict[str, str]:
        """The room's roles: identity -> `owner` or `op`."""
        ...

    def save_role(self, room: str, identity: str, role: str | None) -> None:
        """Give `identity` a role in the room (None takes it away)."""
        ...

    def modes(self, room: str) -> set[str]:
        """The room's modes that are on."""
        ...

    def save_mode(self, room: str, mode: str, on: bool) -> None:
        """Turn a mode of the room on or off."""
        ...

    def sanctions(self, room: str) -> list[Sanction]:
        """The room's bans and mutes, expired ones included, in no particular order."""
        ...

    def save_sanction(self, sanction: Sanction) -> None:
        """Keep a ban or mute, in place of the one of its kind on the same target, if any."""
        ...

    def drop_sanction(self, room: str, target: str, kind: str) -> None:
        """Lift a ban or mute (nothing if there is none)."""
        ...


class RoomStore(Protocol):
    """Where the list of rooms is kept."""

    def rooms(self) -> list[RoomRecord]:
        """Every room ever created."""
        ...

    def save_room(self, room: RoomRecord) -> None:
        """Create or update a room (only its topic changes); raises StoreError if it could not be kept."""
        ...

    def drop_room(self, key: str) -> None:
        """Forget the room `key`: its record, roles, modes, bans and mutes, and its kept lines
        (its ids are never used again)."""
        ...


class Store(HistoryStore, AccountStore, Rules, RoomStore, Protocol):
    """One server's own store, all four in one place (MemoryStore, SqliteStore): each user of it
    takes only the part it needs."""

    def close(self) -> None: ...


def kept(
    call: Callable[..., T], *args: Any, failure: str = "the server could not keep that", room: str | None = None
) -> T:
    """Call the store for a client's request; if the store fails, log why and refuse the
    request with `storage_failed` and `failure` (nothing was done then)."""
    try:
        return call(*args)
    except StoreError as exc:
        _logger.error("%s", exc)
        raise StorageFailed("storage_failed", failure, room) from exc
