"""A room's log: it numbers the room's lines, keeps them, and answers what history to send.

RoomLog is the seam between a room and where its lines live: LocalLog keeps
them in this process's HistoryStore; a shared log (Redis, several servers) is a
second implementation of the same few methods. The private-message log is a
RoomLog too, whose reads are limited to a viewer's own lines. No sockets, no
locks of its own: the room calls append with its lock held, reads without.
Lines go in and come out as Lines; what is kept is their JSON encoding.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from chat.errors import StorageFailed
from chat.server.lines import Line
from chat.server.store import HistoryStore, Record, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")
#: A line's sender and the `cid` it sent it with: `(identity, cid)`.
Tag = tuple[str, str]


@dataclass(frozen=True)
class Span:
    """Which kept lines to send: those with first <= id <= last (`count` of them,
    as the viewer sees them), `more` older ones still kept, and the ids that
    were asked for but are no longer kept (`gap`, inclusive), if any."""

    first: int
    last: int
    count: int
    more: int = 0
    gap: tuple[int, int] | None = None

    @classmethod
    def empty(cls) -> Span:
        return cls(1, 0, 0)


class RoomLog(Protocol):
    """What a room needs of the place its lines live."""

    @property
    def last_id(self) -> int:
        """The newest id given out."""
        ...

    @property
    def epoch(self) -> str | None:
        """What tells this log from an earlier one under the same name whose ids meant other lines
        (None where a log cannot be lost without the server knowing it)."""
        ...

    def append(
        self,
        build: Callable[[int], Line],
        sender: str | None = None,
        recipient: str | None = None,
        cid: Tag | None = None,
    ) -> Line:
        """Number the next line, build it with that id, keep it, and return it.

        The id is used only once the line is kept; raises StorageFailed if it
        could not be. Callers serialise appends to one log (the room's lock).
        `cid`, the sender's `(identity, cid)`, is kept with the line (see tagged).
        """
        ...

    def append_all(self, builds: Sequence[Callable[[int], Line]], cids: Sequence[Tag | None] = ()) -> list[Line]:
        """append() for lines that arrived together: numbered in order and kept in one
        write, all of them or (raising StorageFailed) none. `cids`, if given, has one
        `(identity, cid)` or None per line."""
        ...

    def tagged(self, identity: str, cid: str) -> Line | None:
        """The line `identity` had kept with `cid` lately (in any log), as it was kept; None if none."""
        ...

    def tagged_all(self, tags: Sequence[Tag]) -> dict[Tag, Line]:
        """tagged() for the lines a room writes together, in one read: those found, by tag."""
        ...

    def recent(self, upto: int, limit: int, viewer: str | None = None) -> Span:
        """The newest `limit` lines with id <= upto."""
        ...

    def missed(self, since: int, upto: int, limit: int, viewer: str | None = None) -> Span:
        """The newest `limit` lines with since < id <= upto, and the gap retention left after `since`."""
        ...

    def before(self, edge: int, limit: int, viewer: str | None = None) -> Span:
        """The newest `limit` lines with id < edge."""
        ...

    def lines(self, span: Span, chunk: int, viewer: str | None = None) -> Iterator[list[Line]]:
        """The span's lines, oldest first, in lists of at most `chunk` lines, each read when asked for."""
        ...


class LocalLog:
    """A room log kept in this process's HistoryStore under the room's key."""

    def __init__(self, store: HistoryStore, key: str, room: str | None) -> None:
        """The log `key` of `store`; `room` (None for private messages) is named in its errors."""
        self._store = store
        self._key = key
        self._room = room
        self._last_id = self._read(lambda: store.last_id(key))

    @property
    def last_id(self) -> int:
        return self._last_id

    @property
    def epoch(self) -> str | None:
        return None  # a lost history file is caught at start (its ids begin again below a client's)

    def append(
        self,
        build: Callable[[int], Line],
        sender: str | None = None,
        recipient: str | None = None,
        cid: Tag | None = None,
    ) -> Line:
        next_id = self._last_id + 1
        line = build(next_id)
        self._keep([Record(next_id, line.json, sender, recipient, cid)])
        return line

    def append_all(self, builds: Sequence[Callable[[int], Line]], cids: Sequence[Tag | None] = ()) -> list[Line]:
        if not builds:
            return []
        first = self._last_id + 1
        lines = [build(id) for id, build in enumerate(builds, first)]
        if any(cids):
            numbered = zip(range(first, first + len(lines)), lines, cids, strict=True)
            records = [Record(id, line.json, None, None, tag) for id, line, tag in numbered]
        else:
            records = [Record(id, line.json) for id, line in enumerate(lines, first)]
        self._keep(records)
        return lines

    def tagged(self, identity: str, cid: str) -> Line | None:
        found = self._read(lambda: self._store.tagged(identity, cid))
        return None if found is None else Line(found[1].line)

    def tagged_all(self, tags: Sequence[Tag]) -> dict[Tag, Line]:
        found = self._read(lambda: self._store.tagged_all(tags))
        return {tag: Line(record.line) for tag, record in found.items()}

    def _keep(self, records: list[Record]) -> None:
        try:
            self._store.append_all(self._key, records)
        except StoreError as exc:
            log.error("%s", exc)
            raise StorageFailed(
                "storage_failed", "the server could not store your message, so nobody got it", self._room
            ) from exc
        self._last_id = records[-1].id

    def recent(self, upto: int, limit: int, viewer: str | None = None) -> Span:
        first = self._read(lambda: self._store.newest_start(self._key, upto, limit, viewer))
        if first is None:
            return Span.empty()
        return Span(first, upto, self._read(lambda: self._store.count(self._key, first, upto, viewer)))

    def missed(self, since: int, upto: int, limit: int, viewer: str | None = None) -> Span:
        if since >= upto:
            return Span.empty()
        oldest = self._read(lambda: self._store.oldest_id(self._key))
        first_kept = oldest if oldest is not None else upto + 1
        gap = (since + 1, first_kept - 1) if since + 1 < first_kept else None
        if limit <= 0:
            first = upto + 1  # no line at all (--replay-limit 0): every kept one is left out
        else:
            newest = self._read(lambda: self._store.newest_start(self._key, upto, limit, viewer))
            first = since + 1 if newest is None or newest <= since else newest
        count = self._read(lambda: self._store.count(self._key, first, upto, viewer))
        # Counted by id (a room's ids are dense), so that a resume costs what its page costs.
        more = 0 if viewer is not None else max(0, first - max(since + 1, first_kept))
        return Span(first, upto, count, more, gap)

    def before(self, edge: int, limit: int, viewer: str | None = None) -> Span:
        upto = min(edge - 1, self._last_id)
        first = self._read(lambda: self._store.newest_start(self._key, upto, limit, viewer)) if upto >= 1 else None
        if first is None:
            return Span.empty()
        count = self._read(lambda: self._store.count(self._key, first, upto, viewer))
        oldest = self._read(lambda: self._store.oldest_id(self._key)) or first
        return Span(first, upto, count, 0 if viewer is not None else max(0, first - oldest))

    def lines(self, span: Span, chunk: int, viewer: str | None = None) -> Iterator[list[Line]]:
        first = span.first
        while first <= span.last:
            records = self._read(functools.partial(self._store.read, self._key, first, span.last, chunk, viewer))
            if not records:
                return
            yield [Line(record.line) for record in records]
            first = records[-1].id + 1

    def _read(self, read: Callable[[], T]) -> T:
        try:
            return read()
        except StoreError as exc:
            log.error("%s", exc)
            raise StorageFailed(
                "storage_failed", "the server could not read its history; try again", self._room
            ) from exc
