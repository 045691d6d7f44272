"""Which of a room's kept lines a history query by reference names, and reading them from its RoomLog.
It owns IRC's CHATHISTORY semantics (LATEST, BEFORE, AFTER, AROUND, BETWEEN, by id or by time), none of its words.

A reference is a line's id (IRC's `msgid=`) or a time (`timestamp=`, compared to the
millisecond the wire shows): a query becomes windows of ids, each asking for the newest or
the oldest `limit` kept lines in it, and the lines found come out oldest first. A time is
found by a binary search over the log's dense ids, a line read per step. Pure but for the
RoomLog it reads: no sockets, no locks, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from chat.server.lines import Line
from chat.server.log import RoomLog, Span

#: A point in a room's log: a line's id, or a time (aware, UTC).
Ref = int | datetime
#: What a query asks for, as IRC's CHATHISTORY subcommands name it.
QueryKind = Literal["latest", "before", "after", "around", "between"]
#: The kinds of lines a history query returns unless told otherwise (what IRC calls messages).
SAID_KINDS = frozenset({"message", "action"})
#: Most lines one query looks at beside those it returns (a room of topics and moderation lines
#: with few messages): the reading is bounded whatever the room holds.
MAX_SCANNED = 5000
_ONE_MS = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """A page of `room`'s history named by references (IRC's CHATHISTORY): at most `limit` lines
    of the `kinds` asked for. `refs`: latest: () (the newest) or (after,); before, after, around:
    (ref,); between: (one end, the other), both ends left out, the lines nearest the first."""

    room: str
    kind: QueryKind
    refs: tuple[Ref, ...]
    limit: int
    kinds: frozenset[str] = SAID_KINDS


@dataclass(frozen=True, slots=True)
class Window:
    """Ids low..high (inclusive): the newest `limit` kept lines in it, or the oldest."""

    low: int
    high: int
    limit: int
    newest: bool


def windows(query: HistoryQuery, last_id: int, first_at: Callable[[datetime], int]) -> list[Window]:
    """The windows `query` stands for in a log whose newest id is `last_id`; `first_at(t)` is the
    first id whose line's time is t or later (last_id + 1 if none)."""

    def at(ref: Ref) -> int:  # the first line at ref or after it
        return ref if isinstance(ref, int) else first_at(ref)

    def below(ref: Ref) -> int:  # the last line strictly before ref
        return at(ref) - 1

    def above(ref: Ref) -> int:  # the first line strictly after ref
        if isinstance(ref, int):
            return ref + 1
        if ref > datetime.max.replace(tzinfo=ref.tzinfo) - _ONE_MS:
            return last_id + 1  # nothing is later than the last time there is
        return first_at(ref + _ONE_MS)

    limit = query.limit
    match query.kind, query.refs:
        case "latest", ():
            found = [Window(1, last_id, limit, newest=True)]
        case "latest", (ref,):
            found = [Window(above(ref), last_id, limit, newest=True)]
        case "before", (ref,):
            found = [Window(1, below(ref), limit, newest=True)]
        case "after", (ref,):
            found = [Window(above(ref), last_id, limit, newest=False)]
        case "around", (ref,):
            center, half = at(ref), limit // 2
            found = [Window(1, center - 1, half, newest=True), Window(center, last_id, limit - half, newest=False)]
        case "between", (one, other):
            same_kind = isinstance(one, int) == isinstance(other, int)
            forward = one < other if same_kind else at(one) < at(other)  # type: ignore[operator]
            if forward:
                found = [Window(above(one), below(other), limit, newest=False)]
            else:
                found = [Window(above(other), below(one), limit, newest=True)]
        case _:
            raise ValueError(f"a {query.kind} query with {len(query.refs)} references")
    return [window for window in found if window.limit > 0 and window.low <= window.high]


def select(log: RoomLog, query: HistoryQuery) -> list[Line]:
    """The lines `query` names in `log`, oldest first."""
    found: list[Line] = []
    for window in windows(query, log.last_id, lambda stamp: first_at(log, stamp)):
        found += read(log, window, lambda line: line.message.type in query.kinds)
    return found


def read(log: RoomLog, window: Window, wanted: Callable[[Line], bool]) -> list[Line]:
    """The newest (or oldest) `window.limit` wanted lines of the window, oldest first, looking at
    no more than MAX_SCANNED lines."""
    found: list[Line] = []
    scanned = 0
    if not window.newest:
        for chunk in log.lines(Span(window.low, window.high, 0), 64):
            scanned += len(chunk)
            found += [line for line in chunk if wanted(line)]
            if len(found) >= window.limit or scanned >= MAX_SCANNED:
                break
        return found[: window.limit]
    high = window.high
    while high >= window.low and len(found) < window.limit and scanned < MAX_SCANNED:
        step = min(max(window.limit - len(found), 16), 512)
        low = max(window.low, high - step + 1)
        chunk = _flat(log.lines(Span(low, high, 0), step))
        if not chunk:
            break  # nothing kept here, nor below (retention removes a log's oldest lines)
        scanned += len(chunk)
        found = [line for line in chunk if wanted(line)] + found
        high = low - 1
    return found[-window.limit :]


def first_at(log: RoomLog, stamp: datetime) -> int:
    """The first kept id whose line's time (to the millisecond) is `stamp` or later; the log's
    next id if none. Times grow with ids in a room, so a binary search finds it."""
    last = log.last_id
    newest = log.before(last + 1, 1)
    if newest.count == 0:
        return last + 1
    low, high = newest.first - newest.more, last + 1
    while low < high:
        middle = (low + high) // 2
        seen = time_of(log, middle)
        if seen is None or seen < stamp:
            low = middle + 1
        else:
            high = middle
    return low


def time_of(log: RoomLog, id: int) -> datetime | None:
    """The time of line `id`, to the millisecond (None: no such line kept, or one without a time)."""
    for line in _flat(log.lines(Span(id, id, 1), 1)):
        stamp = getattr(line.message, "time", None)
        if isinstance(stamp, datetime):
            return stamp.replace(microsecond=stamp.microsecond // 1000 * 1000)
    return None


def _flat(chunks: Iterable[list[Line]]) -> list[Line]:
    return [line for chunk in chunks for line in chunk]
