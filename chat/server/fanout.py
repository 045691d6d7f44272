"""The fan-out algorithm: which bytes each connection is owed, log by log, in order.

Each log (a room, or one connection's private inbox) holds Lines shared by
all its subscribers; each subscriber has a cursor per log plus a short queue
of bytes for it alone, and taking what it is owed joins log slices, in its
dialect's bytes, and queued bytes in one buffer. A slice is joined once per
dialect however many subscribers take it. Pure: no sockets, threads or locks
(the outbox holds its lock around every call), so every branch is tested
directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar, cast

from chat.server.lines import JSON_LINES, Dialect, Line, PeerWriter, SaidLine

#: A log is looked at for trimming once it holds this many lines.
TRIM_AT = 2048
#: ...or once its lines hold this many bytes, so that big lines are not kept long.
TRIM_BYTES = 1024 * 1024


class PeerState(Enum):
    """Where a subscriber is in its life."""

    #: Gets broadcasts and its own lines.
    OPEN = "open"
    #: Gets what is queued, then its connection is closed; nothing new is queued.
    CLOSING = "closing"
    #: The writer is done with it: no byte is ever sent to it again.
    RELEASED = "released"


S = TypeVar("S", bound="Subscriber")


class _Log(Generic[S]):
    """One log's published lines: `lines[i]` is line number `base + i`; `ends[i]`
    counts the bytes published up to and including it, so a backlog in bytes is
    a subtraction. Bytes are counted in the JSON encoding, the one every line
    has: for a peer of another dialect a backlog is an estimate."""

    __slots__ = (
        "_joined",
        "_joined_head",
        "_joined_other",
        "base",
        "base_bytes",
        "echoes",
        "ends",
        "head",
        "lines",
        "personal_at",
        "published_bytes",
        "said_by",
        "subscribers",
    )

    def __init__(self) -> None:
        self.lines: list[Line] = []
        self.ends: list[int] = []
        self.base = 0
        #: The number of the next line: base + len(lines), kept as a field because
        #: the writer reads it for every subscriber in every pass.
        self.head = 0
        self.base_bytes = 0
        self.published_bytes = 0
        self.subscribers: set[S] = set()
        # Most subscribers sit at the same cursor: join each slice once per head (and dialect).
        self._joined: dict[int, bytes] = {}
        self._joined_other: dict[tuple[Dialect, int], bytes] = {}
        self._joined_head = 0
        #: Reader -> the number of the last line it sent with a `cid` (its echo is for it alone):
        #: a slice holding one is joined for that reader, the shared ones skip its echoes.
        self.echoes: dict[object, int] = {}
        #: Reader -> the number of the last line it sent at all: a writer of one peer writes a
        #: slice holding one itself (IRC leaves its client's own lines out without echo-message).
        self.said_by: dict[object, int] = {}
        #: The number of the last line that is not a SaidLine (a join, a part, a topic, ...): a
        #: writer of one peer writes a slice holding one itself (it may track state, as IRC's does).
        self.personal_at = -1

    def append(self, line: Line) -> None:
        sender = line.echo_to
        if sender is not None:
            self.said_by[sender] = self.head
            if line.echo is not None:
                self.echoes[sender] = self.head
        if type(line) is not SaidLine:
            self.personal_at = self.head
        self.lines.append(line)
        self.head += 1
        self.published_bytes += len(line.json)
        self.ends.append(self.published_bytes)

    def slice(self, start: int, stop: int, dialect: Dialect, reader: object = None) -> bytes:
        lines = self.lines[start - self.base : stop - self.base]
        if reader is not None and self.echoes.get(reader, -1) >= start:
            lines = [line.echo if line.echo is not None and line.echo_to is reader else line for line in lines]
        if dialect is JSON_LINES:
            return b"".join([line.json for line in lines])
        if getattr(dialect, "per_peer", False):
            # A room's lines, on the writer or on a handler passing itself (Outbox.writing_here).
            written = cast(PeerWriter, dialect).written
            return b"".join([written(line) for line in lines])
        return b"".join([line.encoded(dialect) for line in lines])

    def since(self, start: int, dialect: Dialect, reader: object = None) -> bytes:
        """Every line from `start` to the head in `dialect`, joined once however many ask
        (for a reader some of whose echoes are in it, joined for it alone). A writer of one
        peer (`per_peer`) shares its `shared` dialect's slice while the slice holds said lines
        only (leaving out the reader's own, if its `hides_own`), and writes it itself otherwise."""
        head = self.head
        if self.echoes and self.echoes.get(reader, -1) >= start:
            return self.slice(start, head, dialect, reader)
        if dialect is not JSON_LINES and getattr(dialect, "per_peer", False):
            shared: Dialect | None = getattr(dialect, "shared", None)
            if shared is None or start <= self.personal_at:
                return self.slice(start, head, dialect, reader)
            if self.said_by.get(reader, -1) >= start:
                # Said lines only, some of them the reader's own: shown as everybody sees them,
                # or left out (the others still as everybody with its capabilities sees them).
                hides_own: bool | None = getattr(dialect, "hides_own", None)
                if hides_own is None:
                    return self.slice(start, head, dialect, reader)
                if hides_own:
                    lines = self.lines[start - self.base : head - self.base]
                    return b"".join([line.encoded(shared) for line in lines if line.echo_to is not reader])
            dialect = shared
        if head != self._joined_head:
            self._joined.clear()
            self._joined_other.clear()
            self._joined_head = head
        if dialect is JSON_LINES:
            data = self._joined.get(start)
            if data is None:
                data = self._joined[start] = self.slice(start, head, dialect)
            return data
        data = self._joined_other.get((dialect, start))
        if data is None:
            data = self._joined_other[dialect, start] = self.slice(start, head, dialect)
        return data

    def bytes_after(self, position: int) -> int:
        index = position - self.base
        before = self.ends[index - 1] if index > 0 else self.base_bytes
        return self.published_bytes - before

    def forget_before(self, position: int) -> None:
        drop = position - self.base
        self.base_bytes = self.ends[drop - 1]
        if self.echoes:
            self.echoes = {reader: last for reader, last in self.echoes.items() if last >= position}
        if self.said_by:
            self.said_by = {reader: last for reader, last in self.said_by.items() if last >= position}
        del self.lines[:drop]
        del self.ends[:drop]
        self.base = position


class Cursor:
    """Where a subscriber is in one log.

    A held cursor collects the log's lines without sending them: the join
    seam holds it while history is queued at `position`, so live lines follow
    the history and never overtake it.
    """

    __slots__ = ("held", "log", "position")

    def __init__(self, log: _Log[Any], held: bool) -> None:
        self.log = log
        self.position = log.head
        self.held = held

    def advance(self, dialect: Dialect, reader: object = None) -> bytes:
        """Everything from here to the head; the cursor moves to the head."""
        log = self.log
        data = log.since(self.position, dialect, reader)
        self.position = log.head
        return data


@dataclass
class Queued:
    """Bytes for one subscriber (already in its dialect); if `room` is set, they
    go after that log's lines before `position` and before the later ones."""

    room: str | None
    position: int
    line: bytes


class Subscriber:
    """One connection as the fan-out sees it."""

    __slots__ = (
        "cursors",
        "dialect",
        "drop_reason",
        "give_up",
        "label",
        "pending",
        "pending_own",
        "queue",
        "queued_bytes",
        "state",
        "taken_own",
    )

    def __init__(self, label: str, dialect: Dialect = JSON_LINES) -> None:
        self.label = label
        #: How this subscriber's connection writes lines.
        self.dialect = dialect
        self.state = PeerState.OPEN
        #: Log key -> where this subscriber is in that log.
        self.cursors: dict[str, Cursor] = {}
        self.queue: list[Queued] = []
        #: Total length of the lines in `queue`: a backlog is then a sum of a few numbers.
        self.queued_bytes = 0
        #: Bytes taken for this subscriber that its connection has not accepted yet.
        self.pending: memoryview | bytes = b""
        #: How many of the pending bytes are its own lines (not a log's), at most.
        self.pending_own = 0
        #: How many bytes of its own lines the last take held, until the connection takes them
        #: (accepted): in flight between the writer's take and its send, they are still owed.
        self.taken_own = 0
        #: Why the server cut this subscriber off (slow_consumer, timeout, shutdown), if it did.
        self.drop_reason: str | None = None
        #: Closing, and no longer waiting for the peer to read what is queued.
        self.give_up = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"


class Fanout(Generic[S]):
    """The logs, the subscribers' cursors and queues, and what is due to whom.

    A log exists while somebody subscribes to it: a line published to a log
    nobody reads is not kept.
    """

    def __init__(self) -> None:
        self._logs: dict[str, _Log[S]] = {}
        self._dirty_logs: set[str] = set()
        self._dirty: set[S] = set()
        self._trim_candidates: set[str] = set()
        #: Lines ever published, to every log.
        self.published = 0
        #: Lines handed to subscribers: each published line once per subscriber of its log
        #: (counted per publish, not per subscriber, so it costs nothing per member).
        self.fanned_out = 0

    # --- what rooms and connections ask for ------------------------------------------

    def publish(self, room: str, *lines: Line) -> None:
        """Append `lines` to the log `room`: O(1) however many subscribe to it."""
        self.published += 1
        log = self._logs.get(room)
        if log is None:
            return
        self.fanned_out += len(lines) * len(log.subscribers)
        for line in lines:
            log.append(line)
        self._dirty_logs.add(room)
        if len(log.lines) >= TRIM_AT or log.published_bytes - log.base_bytes >= TRIM_BYTES:
            self._trim_candidates.add(room)

    def subscribe(self, peer: S, room: str, held: bool = False) -> None:
        """From now on `peer` is owed every line published to `room`; held, they wait for release()."""
        if peer.state is not PeerState.OPEN or room in peer.cursors:
            return
        log = self._logs.get(room)
        if log is None:
            log = self._logs[room] = _Log[S]()
        peer.cursors[room] = Cursor(log, held)
        log.subscribers.add(peer)

    def send_held(self, peer: S, room: str, line: bytes) -> None:
        """Queue `line` at the place where `peer`'s held cursor in `room` stands."""
        cursor = peer.cursors.get(room)
        self._queue(peer, Queued(room, cursor.position, line) if cursor else Queued(None, 0, line))

    def release(self, peer: S, room: str) -> None:
        """Let the lines a held cursor collected go, after everything queued before."""
        cursor = peer.cursors.get(room)
        if cursor is not None and cursor.held:
            cursor.held = False
            self._dirty.add(peer)

    def unsubscribe(self, peer: S, room: str) -> None:
        """`peer` is owed nothing published to `room` after now; what was published before still goes."""
        cursor = peer.cursors.pop(room, None)
        if cursor is None:
            return
        log = cursor.log
        # Turn what the cursor still owed into queued lines, each slice before the
        # queued line it must precede, so that the cursor can go.
        queue: list[Queued] = []
        for queued in peer.queue:
            if queued.room == room:
                if cursor.position < queued.position:
                    queue.append(Queued(None, 0, log.slice(cursor.position, queued.position, peer.dialect, peer)))
                    cursor.position = queued.position
                queued = Queued(None, 0, queued.line)
            queue.append(queued)
        if cursor.position < log.head:
            queue.append(Queued(None, 0, log.slice(cursor.position, log.head, peer.dialect, peer)))
        peer.queue = queue
        peer.queued_bytes = sum(len(queued.line) for queued in queue)
        self._dirty.add(peer)
        self._detach(peer, room, log)

    def send_to(self, peer: S, line: bytes, room: str | None = None) -> None:
        """Queue a line for `peer` alone; with `room`, after that log's lines published before it."""
        cursor = peer.cursors.get(room) if room is not None else None
        self._queue(peer, Queued(room, cursor.log.head, line) if cursor else Queued(None, 0, line))

    def close(self, peer: S, final: bytes | None = None) -> None:
        """Send what is owed (and `final`), then nothing more: the peer is CLOSING."""
        if peer.state is not PeerState.OPEN:
            return
        for room in list(peer.cursors):
            self.unsubscribe(peer, room)
        if final is not None:
            self._queue(peer, Queued(None, 0, final))
        peer.state = PeerState.CLOSING
        self._dirty.add(peer)

    def forget(self, peer: S) -> None:
        """The writer is done with `peer`: drop everything owed to it."""
        for room, cursor in peer.cursors.items():
            self._detach(peer, room, cursor.log)
        peer.cursors.clear()
        peer.queue.clear()
        peer.queued_bytes = 0
        peer.pending = b""
        peer.pending_own = 0
        peer.taken_own = 0
        peer.state = PeerState.RELEASED
        self._dirty.discard(peer)

    def mark_due(self, peer: S) -> None:
        """Look at `peer` in the next pass (it was closed, or gave up)."""
        self._dirty.add(peer)

    # --- what the writer asks, once per pass -----------------------------------------

    def due(self) -> set[S]:
        """Who may be owed something since the last pass; starts a new pass."""
        batch = self._dirty
        self._dirty = set()
        for room in self._dirty_logs:
            batch |= self._logs[room].subscribers
        self._dirty_logs.clear()
        return batch

    def due_size(self) -> int:
        """How many subscribers due() would return, at most (without starting a pass)."""
        return len(self._dirty) + sum(len(self._logs[room].subscribers) for room in self._dirty_logs)

    def due_alone(self, busy: set[S]) -> set[S]:
        """Who may be owed lines of its own (a welcome, a reply) since the last look, but those in
        `busy`: a writer in the middle of a long pass serves them in between. The rest stay due."""
        found = self._dirty - busy
        self._dirty -= found
        return found

    def take(self, peer: S) -> bytes:
        """Everything owed to `peer` now, in order, as one buffer; advances its cursors.

        The broadcast path: it runs once per subscriber per pass, so the loop is
        written out (no helper calls per cursor) and a peer in one log gets the
        log's shared joined slice itself, not a copy.
        """
        if peer.queue:
            return self._take_with_queue(peer)
        peer.taken_own = 0
        data = b""
        dialect = peer.dialect
        for cursor in peer.cursors.values():
            log = cursor.log
            if cursor.held or cursor.position >= log.head:
                continue
            since = log.since(cursor.position, dialect, peer)
            cursor.position = log.head
            data = data + since if data else since
        return data

    def accepted(self, peer: S, data: memoryview | bytes, count: int) -> bool:
        """The connection took the first `count` bytes of `data`; keep the rest.

        True if, all of it sent, more lines already wait for `peer` (published
        while it was catching up): it should be looked at again.
        """
        if count < len(data):
            # Own bytes are counted as if they came last: never fewer than remain.
            own = peer.pending_own if data is peer.pending else peer.taken_own
            peer.pending = memoryview(data)[count:]
            peer.pending_own = min(own, len(peer.pending))
            peer.taken_own = 0
            return False
        peer.pending = b""
        peer.pending_own = 0
        peer.taken_own = 0
        if peer.queue:
            return True
        for cursor in peer.cursors.values():
            if not cursor.held and cursor.position < cursor.log.head:
                return True
        return False

    def backlog(self, peer: S) -> int:
        """Bytes owed to `peer` that its connection has not accepted."""
        owed = len(peer.pending) + peer.queued_bytes
        for cursor in peer.cursors.values():
            owed += cursor.log.bytes_after(cursor.position)
        return owed

    def queued_bytes(self, peer: S) -> int:
        """Bytes of lines queued for `peer` alone (history pages, replies) not yet accepted.

        A room's lines are not counted: a client that says much and reads
        little is behind on the room, which the backlog limit judges, not on
        answers it asked for.
        """
        return peer.pending_own + peer.taken_own + peer.queued_bytes

    def held_bytes(self, peers: Iterable[S]) -> int:
        """Bytes held for delivery: every log's unforgotten lines and `peers`' own queues."""
        held = sum(log.published_bytes - log.base_bytes for log in self._logs.values())
        return held + sum(len(peer.pending) + peer.queued_bytes for peer in peers)

    def trim(self) -> None:
        """Forget log lines that every subscriber of their log has been given."""
        for room in list(self._trim_candidates):
            log = self._logs[room]
            lowest = min(peer.cursors[room].position for peer in log.subscribers)
            if (lowest - log.base) * 2 > len(log.lines):
                log.forget_before(lowest)
            if len(log.lines) < TRIM_AT and log.published_bytes - log.base_bytes < TRIM_BYTES:
                self._trim_candidates.discard(room)

    def log_length(self, room: str) -> int:
        """Lines the log holds now (for tests and diagnostics)."""
        log = self._logs.get(room)
        return len(log.lines) if log else 0

    def subscribers(self, room: str) -> Iterable[S]:
        log = self._logs.get(room)
        return tuple(log.subscribers) if log else ()

    # --- inside ------------------------------------------------------------------------

    def _take_with_queue(self, peer: S) -> bytes:
        out: list[bytes] = []
        peer.taken_own = peer.queued_bytes
        for queued in peer.queue:
            cursor = peer.cursors.get(queued.room) if queued.room is not None else None
            if cursor is not None and not cursor.held and cursor.position < queued.position:
                out.append(cursor.log.slice(cursor.position, queued.position, peer.dialect, peer))
                cursor.position = queued.position
            out.append(queued.line)
        peer.queue.clear()
        peer.queued_bytes = 0
        for cursor in peer.cursors.values():
            if not cursor.held and cursor.position < cursor.log.head:
                out.append(cursor.advance(peer.dialect, peer))
        return b"".join(out)

    def _detach(self, peer: S, room: str, log: _Log[S]) -> None:
        log.subscribers.discard(peer)
        if not log.subscribers:  # nobody left to read it: forget the log
            del self._logs[room]
            self._trim_candidates.discard(room)
            self._dirty_logs.discard(room)

    def _queue(self, peer: S, queued: Queued) -> None:
        if peer.state is not PeerState.OPEN:
            return
        peer.queue.append(queued)
        peer.queued_bytes += len(queued.line)
        self._dirty.add(peer)
