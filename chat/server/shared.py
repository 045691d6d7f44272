"""Rooms shared by several servers through Redis: each room's log is a Redis Stream, numbered by
Redis, and each server runs one reader that delivers the streams of its rooms in stream order.

No server numbers a message itself: one atomic script takes a room's next id and appends the
line under it, so every member on every server sees one order, the sender's own server
included (it delivers its own lines from the stream like anybody else's, never first).
Notices (joined, left, renamed) go into the same stream between the messages, under
`<last id>-<n>`, so they stay in place. What a room's members need of it is RedisLog (history,
resume, numbering) and RedisFeed (delivery); this module knows Redis, the rooms do not.
Private messages are one more stream, whose lines the reader gives to the hub (the Listener)
for the inboxes of their two parties; names, members and leases are chat.server.directory's.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

import redis

from chat.errors import Refused, StorageFailed
from chat.server.directory import RENEW_EVERY, Directory, SharedAccounts, SharedRules
from chat.server.lines import Line
from chat.server.log import Span
from chat.server.room import Delivery
from chat.server.session import Holder
from chat.server.store import PRIVATE_LOG, RoomRecord
from chat.wire.codec import encode
from chat.wire.protocol import Left, Reset, utc_now
from chat.wire.text import name_key

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Hashable)

#: The id a line is built with before Redis numbers it; the script puts the real one in its place.
#: It appears in an encoded line only as the `id` field: inside a string a quote is escaped.
PLACEHOLDER_ID = 9_007_199_254_740_881
_PLACEHOLDER = f'"id":{PLACEHOLDER_ID}'.encode()
#: How long (ms) the reader waits for new entries before it looks again at what it follows.
READ_BLOCK_MS = 1000
#: Entries one read takes at most per stream.
READ_COUNT = 512
#: How long a join waits for the reader to deliver up to its own `joined` line.
SETTLE_TIMEOUT = 5.0

# Number each template's line, in order, and append it under its id: atomically, so that
# ids are gap-free and ordered however many servers append. KEYS: meta, log.
# ARGV: max length, epoch if new, sender, recipient (both '' but in the private log), templates...
_APPEND = """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[2])
local ids = {}
for i = 5, #ARGV do
  local id = redis.call('HINCRBY', KEYS[1], 'last', 1)
  local template = ARGV[i]
  local at, stop = string.find(template, '"id":PLACEHOLDER', 1, true)
  local line = string.sub(template, 1, at - 1) .. '"id":' .. id .. string.sub(template, stop + 1)
  if ARGV[3] == '' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id .. '-0', 'l', line)
  else
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id .. '-0', 'l', line, 's', ARGV[3], 'r', ARGV[4])
  end
  ids[#ids + 1] = id
end
return ids
""".replace("PLACEHOLDER", str(PLACEHOLDER_ID))

# An unnumbered line after the room's last numbered one. KEYS: meta, log.
# ARGV: max length, line, epoch if new.
_NOTICE = """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[3])
local last = redis.call('HGET', KEYS[1], 'last') or '0'
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], last .. '-*', 'l', ARGV[2])
"""


#: The private messages' stream (the same key as the local private log's: no room has it).
PRIVATE_KEY = PRIVATE_LOG
#: Where servers tell each other that a room's rules changed.
RULES_STREAM = "chat:rules"


class Listener(Protocol):
    """What this server's hub hears from the others."""

    def private_line(self, line: Line, sender: str, recipient: str) -> None:
        """A private line between two identities, in id order: to their inboxes here, if any."""
        ...

    def taken_elsewhere(self, key: str, identity: str) -> None:
        """The identity took its name (key) on another server: close its connection here."""
        ...

    def lease_lost(self) -> None:
        """This server was taken for dead: record its names and members again."""
        ...

    def disconnected_elsewhere(self, key: str, identity: str, why: str) -> None:
        """A server operator on another server removed whoever holds the name `key` as `identity`."""
        ...

    def rules_changed(self, room: str, removed: str | None, reason: str, upto: int) -> None:
        """A room's rules changed on some server (read them again), and `removed` is out of it
        (kicked or banned) once line `upto` reached them."""
        ...


def wake_stream(node: str) -> str:
    return f"chat:node:{node}:wake"


#: What XRANGE gives: (entry id, fields), oldest first; what XREAD gives: those per stream.
Entries = list[tuple[bytes, dict[bytes, bytes]]]


def _range(client: redis.Redis, stream: str, start: str, end: str, count: int) -> Entries:
    return cast(Entries, client.xrange(stream, start, end, count=count))


def _entry(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry's id as a pair: (the last numbered id at or before it, its place after that)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    first, _, second = text.partition("-")
    return int(first), int(second or 0)


@dataclass
class _Followed:
    """One room whose stream this server's reader follows (while it has members here): how far
    it has delivered."""

    key: str
    name: str
    stream: bytes
    position: tuple[int, int]
    epoch: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    delivered: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.delivered = threading.Condition(self.lock)


class SharedRooms(Generic[P]):
    """This server's connection to the Redis that holds the shared rooms, and its one reader."""

    def __init__(self, url: str, delivery: Delivery[P], retention: int) -> None:
        self._delivery = delivery
        self._retention = retention
        # Commands give up quickly (the sender gets storage_failed); the reader blocks longer.
        self.redis: redis.Redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self._reader: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=READ_BLOCK_MS / 1000 + 5, socket_connect_timeout=2
        )
        self._append = self.redis.register_script(_APPEND)
        self._notice = self.redis.register_script(_NOTICE)
        self._followed: dict[bytes, _Followed] = {}
        self._followed_lock = threading.Lock()
        #: This server among the others: its names and members are recorded under it.
        self.node = secrets.token_hex(8)
        self.directory = Directory(self.redis, self.node)
        #: Accounts and tokens, kept where every server finds them.
        self.accounts = SharedAccounts(self.redis)
        #: Who hears of private lines and of names taken back elsewhere (the hub), once attached.
        self._listener: Listener | None = None
        #: A stream of this server's own: an entry in it wakes the reader (to follow a new room,
        #: or to close a connection whose name its owner took back on another server).
        self._wake = wake_stream(self.node).encode()
        self._stopping = threading.Event()
        private_stream = self.keys(PRIVATE_KEY)[1].encode()
        self._private = self._followed[private_stream] = _Followed(PRIVATE_KEY, "", private_stream, (0, 0))
        # Read before every room (XREAD answers streams in the order asked): a change of rules,
        # told before its moderation line, is taken in before that line is delivered here.
        self._rules_followed = self._followed[RULES_STREAM.encode()] = _Followed(
            RULES_STREAM, "", RULES_STREAM.encode(), (0, 0)
        )
        #: Roles, modes, bans and mutes, the same on every server.
        self.rules = SharedRules(self.redis)
        self._thread = threading.Thread(target=self._read_forever, name="chat-shared-reader", daemon=True)
        self._renewer = threading.Thread(target=self._renew_forever, name="chat-shared-lease", daemon=True)

    def start(self, listener: Listener) -> None:
        """Join the other servers and start following the rooms (RedisError if Redis is away)."""
        self._listener = listener
        self.directory.renew()
        # From now on: what was said before reached nobody here, and is for a resume to replay.
        # The rules stream's entries have Redis' own (time-based) ids: after a Redis that lost
        # its data they still come after this position, so it has no epoch to watch.
        for followed in (self._private, self._rules_followed):
            last = cast(Entries, self.redis.xrevrange(followed.stream, count=1))
            followed.position = _entry(last[0][0]) if last else (0, 0)
        self._private.epoch = self.epoch(PRIVATE_KEY)
        self._thread.start()
        self._renewer.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        try:
            self.redis.xadd(self._wake, {"stop": "1"}, maxlen=10)
        except redis.RedisError as exc:  # the reader's own read fails and it sees the stop
            log.debug("could not wake the reader to stop: %s", exc)
        for thread in (self._thread, self._renewer):
            if thread.ident is not None:  # started (a server that failed to start stops too)
                thread.join(timeout)
        try:
            self.redis.delete(self._wake)
            self.directory.leave_all()
        except redis.RedisError as exc:
            log.info("could not tell Redis this server stops (its lease runs out instead): %s", exc)
        self.redis.close()
        self._reader.close()

    # --- for the hub ------------------------------------------------------------------

    def private_log(self) -> RedisLog:
        """The private messages of every server's users: one numbering, one stream."""
        return RedisLog(self, PRIVATE_KEY, None)

    @property
    def private_lock(self) -> threading.Lock:
        """Held while the reader gives private lines to inboxes."""
        return self._private.lock

    def private_position(self) -> int:
        """The last private id given to inboxes here (hold private_lock)."""
        return self._private.position[0]

    def settle_private(self, upto: int) -> None:
        self.settle(self._private, (upto, 0))

    def claim_name(self, keys: Collection[str], claimant: Holder) -> None:
        """Take a name on every server, or Refused `name_taken` (StorageFailed if Redis is away).
        A server that held it for the same identity closes that connection."""
        name, identity = claimant.name, claimant.identity
        with _refused_if_away("the server could not check your name; try again"):
            holder, told = self.directory.claim(keys, claimant)
            for node in told:
                self.redis.xadd(wake_stream(node), {"taken": min(keys), "identity": identity}, maxlen=100)
        if holder is not None:
            shown = "" if holder.name == name else f" (it looks like {holder.name})"
            raise Refused("name_taken", f"the name {name} is taken{shown}; choose another")

    def release_name(self, keys: Collection[str], identity: str) -> None:
        try:
            self.directory.release(keys, identity)
        except redis.RedisError as exc:
            log.warning("releasing a name failed (it is free once this server's lease runs out): %s", exc)

    def holder_of(self, key: str) -> Holder | None:
        """Who holds a name on any server (StorageFailed if Redis is away)."""
        with _refused_if_away("the server could not look that name up; try again"):
            return self.directory.holder(key)

    def disconnect_elsewhere(self, key: str, identity: str, why: str) -> None:
        """Ask every other server to close the connection of `identity` holding the name `key`."""
        with _refused_if_away("the server could not reach the other servers; try again"):
            for node in self.directory.alive():
                if node != self.node:
                    self.redis.xadd(wake_stream(node), {"close": key, "identity": identity, "why": why}, maxlen=100)

    def rules_changed(self, room: str, removed: str | None = None, reason: str = "", upto: int = 0) -> None:
        """Tell every server that `room`'s rules changed (and that its member `removed`, wherever
        they are, is out of it once line `upto` reached them)."""
        entry: dict[Any, Any] = {"room": room, "removed": removed or "", "reason": reason, "upto": upto}
        try:
            self.redis.xadd(RULES_STREAM, entry, maxlen=1000, approximate=True)
        except redis.RedisError as exc:
            log.warning("could not tell the other servers that the rules of %s changed: %s", room, exc)

    def settle_room(self, room: str, upto: int) -> None:
        """Wait (briefly) until this server has delivered `room` up to line `upto`, if it follows it."""
        followed = self._followed.get(self.keys(room)[1].encode())
        if followed is not None:
            self.settle(followed, (upto, 0))

    def set_away(self, keys: Collection[str], identity: str, why: str | None) -> None:
        with _refused_if_away("the server could not tell the others; try again"):
            self.directory.set_away(keys, identity, why)

    def rooms(self) -> dict[str, str]:
        """Every room any server has: key -> name (none while Redis is away)."""
        try:
            return self.directory.rooms()
        except redis.RedisError as exc:
            log.warning("could not list the shared rooms: %s", exc)
            return {}

    def room_name(self, key: str) -> str | None:
        """The name of the room `key` if any server has it (None too while Redis is away)."""
        try:
            return self.directory.room_name(key)
        except redis.RedisError as exc:
            log.warning("could not look up a shared room: %s", exc)
            return None

    def add_room(self, key: str, name: str) -> None:
        with _refused_if_away(f"the server could not create the room {name}", name):
            self.directory.add_room(key, name)

    def room(self, record: RoomRecord) -> tuple[RedisLog, RedisFeed[P]]:
        """A room's log and feed on this Redis."""
        return RedisLog(self, record.key, record.name), RedisFeed(self, self._delivery, record.key, record.name)

    # --- the lease -----------------------------------------------------------------------

    def _renew_forever(self) -> None:
        """Renew this server's lease, and see to the servers whose lease ran out: their members
        are told gone in each room (by whichever live server sees it first)."""
        while not self._stopping.wait(RENEW_EVERY):
            self._guarded(self._renew)

    def _renew(self) -> None:
        try:
            if self.directory.renew():
                log.warning("this server's lease ran out (Redis was away): claiming its names again")
                if self._listener is not None:
                    self._listener.lease_lost()
            for room, room_name, name in self.directory.reap():
                left = Left(room=room_name, name=name, reason="disconnected", time=utc_now())
                self.notice(room, encode(left))
        except (redis.RedisError, StorageFailed) as exc:
            log.warning("renewing this server's lease failed: %s", exc)

    # --- for RedisLog and RedisFeed -------------------------------------------------

    @staticmethod
    def keys(room: str) -> tuple[str, str]:
        """A room's meta hash and stream (the script that appends needs both)."""
        return f"chat:{{{room}}}:meta", f"chat:{{{room}}}:log"

    def append(self, room: str, templates: Sequence[bytes], parties: tuple[str, str] = ("", "")) -> list[int]:
        meta, stream = self.keys(room)
        args: list[bytes | str | int] = [self._retention, secrets.token_hex(8), *parties, *templates]
        ids = self._append(keys=[meta, stream], args=args)
        return [int(number) for number in cast(list[int], ids)]

    def notice(self, room: str, line: bytes) -> tuple[int, int]:
        """Append an unnumbered line; where it went in the stream."""
        meta, stream = self.keys(room)
        reply = self._notice(keys=[meta, stream], args=[self._retention, line, secrets.token_hex(8)])
        return _entry(cast(bytes, reply))

    def epoch(self, room: str) -> bytes | None:
        """The room's epoch: made with its first line, so a Redis that lost its data has a new one."""
        return cast(bytes | None, self.redis.hget(self.keys(room)[0], "epoch"))

    def follow(self, room: str, name: str, after: tuple[int, int]) -> _Followed:
        """Deliver `room`'s stream (the room called `name`) on this server from after `after` on
        (if not already)."""
        stream = self.keys(room)[1].encode()
        with self._followed_lock:
            followed = self._followed.get(stream)
            if followed is not None:
                return followed
            followed = self._followed[stream] = _Followed(room, name, stream, after, self.epoch(room))
        try:
            self.redis.xadd(self._wake, {"follow": room}, maxlen=10)
        except redis.RedisError as exc:  # the reader looks again within READ_BLOCK_MS anyway
            log.info("could not wake the reader: %s", exc)
        return followed

    def unfollow(self, room: str) -> None:
        """Stop reading `room`'s stream here (its last member here left); the next join follows it again."""
        with self._followed_lock:
            self._followed.pop(self.keys(room)[1].encode(), None)

    def settle(self, followed: _Followed, upto: tuple[int, int]) -> None:
        """Wait (briefly) until the reader has delivered the stream up to `upto`."""
        with followed.delivered:
            if not followed.delivered.wait_for(lambda: followed.position >= upto, SETTLE_TIMEOUT):
                log.warning("the reader is behind in %s; going on", followed.key)

    # --- the reader --------------------------------------------------------------------

    def _read_forever(self) -> None:
        wake_position = b"$"
        backoff = 0.1
        recovering = False
        while not self._stopping.is_set():
            if recovering:
                try:
                    self._start_over_where_lost()
                except redis.RedisError as exc:  # still down: the read below fails and waits
                    log.debug("Redis is still away: %s", exc)
                else:
                    recovering = False
            with self._followed_lock:
                streams: dict[Any, Any] = {
                    stream: "{}-{}".format(*followed.position) for stream, followed in self._followed.items()
                }
            streams[self._wake] = wake_position
            try:
                reply = cast(
                    list[tuple[bytes, Entries]], self._reader.xread(streams, count=READ_COUNT, block=READ_BLOCK_MS)
                )
            except redis.RedisError as exc:
                if self._stopping.is_set():
                    return
                log.warning("reading the shared rooms failed (%s); again in %.1f s", exc, backoff)
                recovering = True
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            for stream, entries in reply or []:
                if stream == self._wake:
                    wake_position = entries[-1][0]
                    self._guarded(self._obey, entries)
                    continue
                followed = self._followed.get(stream)
                if followed is None or not entries:
                    continue
                with followed.delivered:
                    self._guarded(self._deliver, followed, entries)
                    followed.position = _entry(entries[-1][0])
                    followed.delivered.notify_all()

    @staticmethod
    def _guarded(step: Callable[..., None], *args: Any) -> None:
        """One step of a loop this server cannot do without (reading, renewing): a bug in it is
        logged with its traceback and the loop goes on, rather than the server silently
        delivering nothing more, or losing its lease while its users are still here."""
        try:
            step(*args)
        except Exception:
            log.exception("a shared-rooms step failed; carrying on")

    def _deliver(self, followed: _Followed, entries: Entries) -> None:
        if followed is self._rules_followed:
            for _, fields in entries:
                if self._listener is not None:
                    room, removed, reason = (fields[field].decode() for field in (b"room", b"removed", b"reason"))
                    self._listener.rules_changed(room, removed or None, reason, int(fields[b"upto"]))
        elif followed.key != PRIVATE_KEY:
            self._delivery.publish(followed.key, *[Line(fields[b"l"]) for _, fields in entries])
        elif self._listener is not None:
            for _, fields in entries:
                if b"s" in fields:
                    self._listener.private_line(Line(fields[b"l"]), fields[b"s"].decode(), fields[b"r"].decode())

    def _obey(self, entries: Entries) -> None:
        """What other servers asked of this one through its wake stream. Each is done in a thread
        of its own: closing a connection takes room locks, and a room may be waiting for this
        reader (a join settling)."""
        listener = self._listener
        if listener is None:
            return
        for _, fields in entries:
            if b"taken" in fields:
                args = (fields[b"taken"].decode(), fields[b"identity"].decode())
                self._in_turn(listener.taken_elsewhere, *args)
            if b"close" in fields:
                key, identity, why = (fields[field].decode() for field in (b"close", b"identity", b"why"))
                self._in_turn(listener.disconnected_elsewhere, key, identity, why)

    def _in_turn(self, step: Callable[..., None], *args: Any) -> None:
        threading.Thread(target=self._guarded, args=(step, *args), name="chat-shared-request", daemon=True).start()


    def _start_over_where_lost(self) -> None:
        """After Redis was away: a room whose epoch changed lost its stream (Redis restarted
        without its data), so its new lines are read from the start, and its members told."""
        for followed in list(self._followed.values()):
            epoch = self.epoch(followed.key)
            if epoch == followed.epoch:
                continue
            if followed.key == PRIVATE_KEY:  # nobody to tell in a room: inboxes just start again
                with followed.delivered:
                    followed.epoch, followed.position = epoch, (0, 0)
                continue
            log.warning("Redis lost the history of %s: its numbering starts again", followed.key)
            with followed.delivered:
                followed.epoch = epoch
                followed.position = (0, 0)
                detail = f"the history of {followed.name} was lost; its ids start again"
                reset = Reset(room=followed.name, epoch=epoch.decode() if epoch else None, detail=detail)
                self._delivery.publish(followed.key, Line.of(reset))


def _sees(viewer: str, fields: dict[bytes, bytes]) -> bool:
    """A private line is seen by its two parties only."""
    party = viewer.encode()
    return fields.get(b"s") == party or fields.get(b"r") == party


_NOT_READ = "the server could not read its history; try again"
_NOT_STORED = "the server could not store your message, so nobody got it"


@contextmanager
def _refused_if_away(detail: str, room: str | None = None) -> Iterator[None]:
    """Redis failing is the server's storage failing: the request is refused with
    storage_failed and `detail` (nothing was done that anybody was told of)."""
    try:
        yield
    except redis.RedisError as exc:
        log.warning("Redis failed (%s): %s", detail, exc)
        raise StorageFailed("storage_failed", detail, room) from exc


class RedisLog:
    """A room's log in its Redis Stream: numbered there, read from there (see RoomLog)."""

    def __init__(self, shared: SharedRooms[Any], key: str, room: str | None) -> None:
        """The log `key`; `room` (None for private messages) is named in its errors."""
        self._shared = shared
        self._key = key
        self._room = room
        self._meta, self._stream = shared.keys(key)

    @property
    def epoch(self) -> str | None:
        with _refused_if_away(_NOT_READ, self._room):
            epoch = self._shared.epoch(self._key)
        return epoch.decode() if epoch else None

    @property
    def last_id(self) -> int:
        with _refused_if_away(_NOT_READ, self._room):
            last = cast(bytes | None, self._shared.redis.hget(self._meta, "last"))
        return int(last or 0)

    def append(self, build: Callable[[int], Line], sender: str | None = None, recipient: str | None = None) -> Line:
        return self._append_all([build], (sender or "", recipient or ""))[0]

    def append_all(self, builds: Sequence[Callable[[int], Line]]) -> list[Line]:
        return self._append_all(builds, ("", ""))

    def _append_all(self, builds: Sequence[Callable[[int], Line]], parties: tuple[str, str]) -> list[Line]:
        if not builds:
            return []
        templates = [build(PLACEHOLDER_ID).json for build in builds]
        with _refused_if_away(_NOT_STORED, self._room):
            ids = self._shared.append(self._key, templates, parties)
        return [Line(t.replace(_PLACEHOLDER, f'"id":{n}'.encode(), 1)) for t, n in zip(templates, ids, strict=True)]

    def recent(self, upto: int, limit: int, viewer: str | None = None) -> Span:
        oldest = self._oldest()
        if oldest is None or upto < oldest or limit < 1:
            return Span.empty()
        first = max(oldest, upto - limit + 1)
        return Span(first, upto, upto - first + 1)

    def missed(self, since: int, upto: int, limit: int, viewer: str | None = None) -> Span:
        if since >= upto:
            return Span.empty()
        if viewer is not None:
            return self._missed_by(viewer, since, upto, limit)
        oldest = self._oldest()
        first_kept = oldest if oldest is not None else upto + 1
        gap = (since + 1, first_kept - 1) if since + 1 < first_kept else None
        first = max(since + 1, first_kept, upto - limit + 1)
        if first > upto:
            return Span(1, 0, 0, 0, gap)
        return Span(first, upto, upto - first + 1, first - max(since + 1, first_kept), gap)

    def before(self, edge: int, limit: int, viewer: str | None = None) -> Span:
        upto = min(edge - 1, self.last_id)
        oldest = self._oldest()
        if oldest is None or upto < oldest or limit < 1:
            return Span.empty()
        first = max(oldest, upto - limit + 1)
        return Span(first, upto, upto - first + 1, first - oldest)

    def lines(self, span: Span, chunk: int, viewer: str | None = None) -> Iterator[list[Line]]:
        start = f"{span.first}-0"
        while True:
            with _refused_if_away(_NOT_READ, self._room):
                entries = _range(self._shared.redis, self._stream, start, f"{span.last}-0", chunk * 2)
            if not entries:
                return
            numbered = [
                Line(fields[b"l"]) for entry, fields in entries
                if _entry(entry)[1] == 0 and (viewer is None or _sees(viewer, fields))
            ]
            if numbered:
                yield numbered
            last = _entry(entries[-1][0])
            start = f"{last[0]}-{last[1] + 1}"

    def _missed_by(self, viewer: str, since: int, upto: int, limit: int) -> Span:
        """The newest `limit` of the viewer's own lines after `since` (read newest first, so a
        resume costs what it sends and what lies between)."""
        found: list[int] = []
        end = f"{upto}-0"
        with _refused_if_away(_NOT_READ, self._room):
            while len(found) < limit:
                entries = cast(Entries, self._shared.redis.xrevrange(self._stream, end, f"{since + 1}-0", count=256))
                found += [_entry(entry)[0] for entry, fields in entries if _sees(viewer, fields)][: limit - len(found)]
                if len(entries) < 256:
                    break
                number, place = _entry(entries[-1][0])
                end = f"({number}-{place}"
        if not found:
            return Span.empty()
        return Span(found[-1], found[0], len(found))

    def _oldest(self) -> int | None:
        """The oldest numbered id the stream still keeps."""
        start = "-"
        with _refused_if_away(_NOT_READ, self._room):
            while True:
                entries = _range(self._shared.redis, self._stream, start, "+", 64)
                if not entries:
                    return None
                for entry, _ in entries:
                    number, place = _entry(entry)
                    if place == 0:
                        return number
                number, place = _entry(entries[-1][0])
                start = f"{number}-{place + 1}"


class RedisFeed(Generic[P]):
    """A room's lines reach its members on this server through the shared reader (see RoomFeed)."""

    def __init__(self, shared: SharedRooms[P], delivery: Delivery[P], key: str, room: str) -> None:
        self._shared = shared
        self._delivery = delivery
        self._key = key
        self._room = room

    def enter(self, peer: P, name: str, joined: Line) -> int:
        with _refused_if_away(_NOT_STORED, self._room):
            self._shared.directory.enter(self._key, name)
            at = self._shared.notice(self._key, joined.json)
        followed = self._shared.follow(self._key, self._room, at)
        self._shared.settle(followed, at)
        with followed.lock:  # the reader delivers under this lock: nothing slips between
            self._delivery.subscribe(peer, self._key, held=True)
            return followed.position[0]

    def publish(self, lines: Sequence[Line]) -> None:
        """Nothing to do: the lines are in the stream, and the reader delivers them in its order."""

    def rename(self, old: str, new: str, line: Line) -> None:
        try:
            self._shared.directory.leave(self._key, old)
            self._shared.directory.enter(self._key, new)
            self._shared.notice(self._key, line.json)
        except redis.RedisError as exc:  # a notice is not a message: nobody is told it was kept
            log.warning("a rename in %s was not told: %s", self._room, exc)

    def leave(self, peer: P, name: str, left: Line, sees_it: bool) -> None:
        if not sees_it:
            self._delivery.unsubscribe(peer, self._key)
        try:
            self._shared.directory.leave(self._key, name)
            at: tuple[int, int] | None = self._shared.notice(self._key, left.json)
        except redis.RedisError as exc:
            log.warning("the leave in %s was not told: %s", self._room, exc)
            at = None
        if sees_it:
            if at is not None:
                self._shared.settle(self._shared.follow(self._key, self._room, at), at)
            self._delivery.unsubscribe(peer, self._key)

    def empty(self) -> None:
        self._shared.unfollow(self._key)

    def rules_changed(self, removed: str | None = None, reason: str = "", upto: int = 0) -> None:
        self._shared.rules_changed(self._key, removed, reason, upto)

    def present(self, names: list[str]) -> None:
        try:
            for name in names:
                self._shared.directory.enter(self._key, name)
        except redis.RedisError as exc:
            log.warning("could not record the members of %s again: %s", self._room, exc)

    def users(self, here: list[str]) -> list[str]:
        try:
            return sorted(self._shared.directory.members(self._key), key=str.casefold)
        except redis.RedisError as exc:
            log.warning("could not list the members of %s (showing this server's): %s", self._room, exc)
            return here

    def away(self, names: list[str], here: dict[str, str]) -> dict[str, str]:
        try:
            return {**self._shared.directory.away({name_key(name) for name in names}), **here}
        except redis.RedisError as exc:
            log.warning("could not read who is away in %s (showing this server's): %s", self._room, exc)
            return here

    def topic(self, kept_here: str) -> str:
        try:
            topic = cast(bytes | None, self._shared.redis.hget(self._shared.keys(self._key)[0], "topic"))
        except redis.RedisError as exc:
            log.warning("could not read the topic of %s: %s", self._room, exc)
            return kept_here
        return kept_here if topic is None else topic.decode()

    def keep_topic(self, topic: str) -> None:
        with _refused_if_away("the server could not keep the topic", self._room):
            self._shared.redis.hset(self._shared.keys(self._key)[0], "topic", topic)
