"""MemoryStore: a Store that forgets everything when the server stops (`--db :memory:`)."""

from __future__ import annotations

import bisect
import dataclasses
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from chat.server.store.protocols import (
    CID_KEEP,
    DEFAULT_RETENTION,
    DEFAULT_RETENTION_BYTES,
    AccountRecord,
    Record,
    RoomRecord,
    Sanction,
)


@dataclass
class _MemoryLog:
    """One log's records, oldest first, from index `start` on (the ones before are trimmed)."""

    ids: list[int] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    start: int = 0
    last_id: int = 0
    kept_bytes: int = 0

    def append(self, record: Record, retention: int, retention_bytes: int) -> None:
        self.ids.append(record.id)
        self.records.append(record)
        self.last_id = record.id
        self.kept_bytes += len(record.line)
        if len(self.ids) - self.start > retention:
            for old in self.records[self.start : len(self.ids) - retention]:
                self.kept_bytes -= len(old.line)
            self.start = len(self.ids) - retention
        while self.kept_bytes > retention_bytes and self.start < len(self.ids) - 1:
            self.kept_bytes -= len(self.records[self.start].line)
            self.start += 1
        if self.start > len(self.ids) // 2:  # compact now and then, not per append
            del self.ids[: self.start]
            del self.records[: self.start]
            self.start = 0

    def bounds(self, first: int, last: int) -> tuple[int, int]:
        """The index range of the kept records with first <= id <= last."""
        return bisect.bisect_left(self.ids, first, lo=self.start), bisect.bisect_right(self.ids, last, lo=self.start)


class MemoryStore:
    """A store that forgets everything when the server stops (`--db :memory:`)."""

    def __init__(self, retention: int = DEFAULT_RETENTION, retention_bytes: int = DEFAULT_RETENTION_BYTES) -> None:
        self.retention = retention
        self.retention_bytes = retention_bytes
        self._logs: dict[str, _MemoryLog] = {}
        self._rooms: dict[str, RoomRecord] = {}
        self._accounts: dict[str, AccountRecord] = {}
        self._sessions: dict[str, tuple[str, float]] = {}
        self._account_rooms: dict[str, dict[str, None]] = {}
        self._markers: dict[str, dict[str, int]] = {}
        self._roles: dict[str, dict[str, str]] = {}
        self._modes: dict[str, set[str]] = {}
        self._sanctions: dict[tuple[str, str, str], Sanction] = {}
        #: (identity, cid) -> the log and record kept with it, and when (oldest first, as inserted).
        self._cids: dict[tuple[str, str], tuple[str, Record, float]] = {}
        # Room threads append to different logs at once; one short lock keeps the dicts whole.
        self._lock = threading.Lock()

    def last_id(self, log: str) -> int:
        with self._lock:
            return self._log(log).last_id

    def oldest_id(self, log: str) -> int | None:
        with self._lock:
            kept = self._log(log)
            return kept.ids[kept.start] if kept.start < len(kept.ids) else None

    def append(self, log: str, record: Record) -> None:
        self.append_all(log, (record,))

    def append_all(self, log: str, records: Sequence[Record]) -> None:
        with self._lock:
            kept = self._log(log)
            for record in records:
                kept.append(record, self.retention, self.retention_bytes)
            now = 0.0
            for record in records:
                if record.cid is not None:
                    now = now or time.time()
                    self._cids.setdefault(record.cid, (log, record, now))
            if now:
                self._forget_cids(now)

    def tagged(self, identity: str, cid: str) -> tuple[str, Record] | None:
        with self._lock:
            found = self._cids.get((identity, cid))
            if found is None or found[2] < time.time() - CID_KEEP:
                return None
            return found[0], found[1]

    def tagged_all(self, tags: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Record]:
        since = time.time() - CID_KEEP
        with self._lock:
            found = {tag: self._cids.get(tag) for tag in tags}
        return {tag: kept[1] for tag, kept in found.items() if kept is not None and kept[2] >= since}

    def _forget_cids(self, now: float) -> None:
        """Drop the cids older than CID_KEEP: the dict is in insertion order, so from the front."""
        cids = self._cids
        while cids:
            key = next(iter(cids))
            if cids[key][2] >= now - CID_KEEP:
                return
            del cids[key]

    def newest_start(self, log: str, upto: int, count: int, viewer: str | None = None) -> int | None:
        with self._lock:
            kept = self._log(log)
            start, end = kept.bounds(0, upto)
            if count <= 0 or start == end:
                return None
            if viewer is None:
                return kept.ids[max(start, end - count)]
            found = None
            for index in range(end - 1, start - 1, -1):
                if count <= 0:
                    break
                if kept.records[index].visible_to(viewer):
                    found, count = kept.ids[index], count - 1
            return found

    def count(self, log: str, first: int, last: int, viewer: str | None = None) -> int:
        with self._lock:
            kept = self._log(log)
            start, end = kept.bounds(first, last)
            if viewer is None:
                return max(0, end - start)
            return sum(1 for record in kept.records[start:end] if record.visible_to(viewer))

    def read(self, log: str, first: int, last: int, limit: int, viewer: str | None = None) -> list[Record]:
        with self._lock:
            kept = self._log(log)
            start, end = kept.bounds(first, last)
            if viewer is None:
                return kept.records[start : min(end, start + limit)]
            found: list[Record] = []
            for record in kept.records[start:end]:
                if len(found) >= limit:
                    break
                if record.visible_to(viewer):
                    found.append(record)
            return found

    def drop_room(self, key: str) -> None:
        with self._lock:
            self._rooms.pop(key, None)
            self._roles.pop(key, None)
            self._modes.pop(key, None)
            for sanction in [s for s in self._sanctions if s[0] == key]:
                del self._sanctions[sanction]
            kept = self._logs.get(key)
            if kept is not None:
                kept.start = len(kept.ids)
                kept.kept_bytes = 0

    def rooms(self) -> list[RoomRecord]:
        with self._lock:
            return list(self._rooms.values())

    def save_room(self, room: RoomRecord) -> None:
        with self._lock:
            known = self._rooms.get(room.key)
            self._rooms[room.key] = room if known is None else dataclasses.replace(known, topic=room.topic)

    def count_accounts(self) -> int:
        """How many accounts are registered (for the operator's metrics)."""
        return len(self._accounts)

    def account(self, key: str) -> AccountRecord | None:
        return self._accounts.get(key)

    def save_account(self, account: AccountRecord) -> None:
        with self._lock:
            known = self._accounts.get(account.key)
            if known is None:
                self._accounts[account.key] = dataclasses.replace(account, created_at=account.created_at or time.time())
            else:  # a new password: the name as registered and when it was stay
                self._accounts[account.key] = dataclasses.replace(known, password_hash=account.password_hash)

    def session(self, token_hash: str) -> tuple[str, float] | None:
        return self._sessions.get(token_hash)

    def save_session(self, token_hash: str, identity: str, expires_at: float) -> None:
        with self._lock:
            self._sessions[token_hash] = (identity, expires_at)

    def roles(self, room: str) -> dict[str, str]:
        with self._lock:
            return dict(self._roles.get(room, {}))

    def save_role(self, room: str, identity: str, role: str | None) -> None:
        with self._lock:
            roles = self._roles.setdefault(room, {})
            if role is None:
                roles.pop(identity, None)
            else:
                roles[identity] = role

    def modes(self, room: str) -> set[str]:
        with self._lock:
            return set(self._modes.get(room, set()))

    def save_mode(self, room: str, mode: str, on: bool) -> None:
        with self._lock:
            modes = self._modes.setdefault(room, set())
            if on:
                modes.add(mode)
            else:
                modes.discard(mode)

    def sanctions(self, room: str) -> list[Sanction]:
        with self._lock:
            return [s for (where, _, _), s in self._sanctions.items() if where == room]

    def save_sanction(self, sanction: Sanction) -> None:
        with self._lock:
            self._sanctions[sanction.room, sanction.target, sanction.kind] = sanction

    def drop_sanction(self, room: str, target: str, kind: str) -> None:
        with self._lock:
            self._sanctions.pop((room, target, kind), None)

    def adopt_private(self, legacy: str, identity: str) -> int:
        return 0  # nothing outlives a memory store, so no older release left lines in it

    def drop_sessions(self, identity: str) -> None:
        with self._lock:
            for token_hash in [key for key, (owner, _) in self._sessions.items() if owner == identity]:
                del self._sessions[token_hash]

    def accounts(self) -> list[AccountRecord]:
        with self._lock:
            return [self._accounts[key] for key in sorted(self._accounts)]

    def drop_account(self, key: str) -> None:
        identity = f"account:{key}"
        self.drop_sessions(identity)
        with self._lock:
            self._accounts.pop(key, None)
            self._account_rooms.pop(identity, None)
            self._markers.pop(identity, None)

    def account_rooms(self, identity: str) -> list[str]:
        with self._lock:
            return list(self._account_rooms.get(identity, {}))

    def save_account_room(self, identity: str, room: str, in_it: bool) -> None:
        with self._lock:
            rooms = self._account_rooms.setdefault(identity, {})
            if in_it:
                rooms.setdefault(room, None)
            else:
                rooms.pop(room, None)

    def read_markers(self, identity: str) -> dict[str, int]:
        with self._lock:
            return dict(self._markers.get(identity, {}))

    def save_read_marker(self, identity: str, room: str, id: int) -> bool:
        with self._lock:
            markers = self._markers.setdefault(identity, {})
            if markers.get(room, 0) >= id:
                return False
            markers[room] = id
            return True

    def close(self) -> None:
        pass

    def _log(self, log: str) -> _MemoryLog:
        kept = self._logs.get(log)
        if kept is None:
            kept = self._logs[log] = _MemoryLog()
        return kept
