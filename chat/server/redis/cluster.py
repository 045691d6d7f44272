"""Several servers on one Redis (--redis): the Cluster (chat.server.cluster) whose names,
presence, private lines, rules and rooms are kept in Redis, where every server sees them.

RedisCluster puts the package's parts together and owns what they share: the command
connection (short timeouts: a request that cannot be served is refused with storage_failed),
the reader (its own connection and thread: chat.server.redis.reader) and the lease (its own
thread: chat.server.redis.lease). Private lines are one more log in Redis, whose lines the
reader hands to the hub (ClusterEvents.private_line) for the inboxes of their two parties,
on every server; what other servers ask of this one comes through its wake stream.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
from collections.abc import Callable, Collection, Hashable
from typing import Any, Generic, TypeVar

import redis

from chat.errors import Refused
from chat.server.cluster import ClusterEvents
from chat.server.lines import Line
from chat.server.log import RoomLog, Tag
from chat.server.redis import keys
from chat.server.redis.commands import Close, Post, ReadThere, RulesChanged, Taken, WakeCommand
from chat.server.redis.directory import CLOCK, Directory
from chat.server.redis.feed import RedisFeed
from chat.server.redis.lease import LEASE, RENEW_EVERY, Lease
from chat.server.redis.log import Logs, RedisLog, refused_if_away
from chat.server.redis.reader import READ_BLOCK_MS, Entries, Followed, Reader, guarded
from chat.server.redis.records import IDENTITY_LOST, SharedAccounts, SharedRoomRecords, SharedRules
from chat.server.room import Delivery
from chat.server.session import Holder
from chat.server.store import RoomRecord, Rules, StoreError, kept
from chat.wire.codec import encode
from chat.wire.protocol import Left, utc_now

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Hashable)


class RedisCluster(Generic[P]):
    """This server among the others that share one Redis."""

    def __init__(
        self,
        url: str,
        delivery: Delivery[P],
        retention: int,
        lease: float = LEASE,
        renew_every: float = RENEW_EVERY,
        read_block_ms: int = READ_BLOCK_MS,
        local: Rules | None = None,
    ) -> None:
        """`retention`: entries each log keeps (about); `lease`, `renew_every`: how long this
        server's names and members outlive it, and how often it renews them (seconds); `local`:
        this server's own store, which remembers that it has seen Redis keep identity (so that a
        Redis that lost it is told from a new one)."""
        self._local = local
        self._delivery = delivery
        # Commands give up quickly (the sender gets storage_failed); the reader blocks longer.
        self._redis: redis.Redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        #: This server among the others: its names and members are recorded under it.
        self.node = secrets.token_hex(8)
        self._events: ClusterEvents | None = None
        self._post = Post(self._redis)
        self._logs = Logs(self._redis, retention)
        self._directory = Directory(self._redis, self.node)
        self._rooms = SharedRoomRecords(self._redis)
        #: Accounts and tokens, kept where every server finds them.
        self.accounts = SharedAccounts(self._redis)
        self._rules = SharedRules(self._redis)
        self._reader = Reader(url, self.node, self._post, self._obey, read_block_ms)
        self._lease = Lease(
            self._redis, self.node, self._directory.forget, self._lease_lost, self._gone, lease, renew_every
        )
        self._private_log = RedisLog(self._logs, keys.PRIVATE, None)
        self._private = Followed(
            keys.PRIVATE,
            keys.log(keys.PRIVATE).encode(),
            (0, 0),
            self._deliver_private,
            functools.partial(self._logs.epoch, keys.PRIVATE),  # nobody to tell: inboxes just start again
        )
        self._rules_stream = Followed(keys.RULES, keys.RULES.encode(), (0, 0), self._deliver_rules)
        self._take = self._redis.register_script(_TAKE)

    def ping(self) -> None:
        """RedisError if Redis cannot be reached."""
        self._redis.ping()

    def start(self, events: ClusterEvents) -> None:
        """Join the other servers and start following the streams (StoreError if Redis is away)."""
        self._events = events
        try:
            # From now on: what was said before reached nobody here, and is for a resume to replay.
            # The rules stream's entries have Redis' own (time-based) ids: after a Redis that lost
            # its data they still come after this position, so it has no epoch to watch.
            for followed in (self._private, self._rules_stream):
                followed.position = self._reader.newest(followed.stream.decode())
            self._private.epoch = self._logs.epoch(keys.PRIVATE)
            self._lease.start()
        except redis.RedisError as exc:
            raise StoreError(f"cannot use Redis: {exc}") from exc
        # Rules before every room (XREAD answers streams in the order asked): a change of rules,
        # told before its moderation line, is taken in before that line is delivered here.
        self._reader.follow(self._rules_stream)
        self._reader.follow(self._private)
        self._reader.start()

    def take(self, key: str, burst: float, per_second: float) -> bool:
        """Take one from the throttle `key` that every server shares (a token bucket on Redis'
        clock); StoreError if Redis cannot say."""
        try:
            return bool(self._take(keys=[keys.throttle(key)], args=[burst, per_second]))
        except redis.RedisError as exc:
            raise StoreError(f"Redis: {exc}") from exc

    def mark_identity(self) -> None:
        """Mark a new Redis as keeping identity; a marked one that lost its mark lost its data, and
        then identity is refused (storage_failed) until it is restored, never served empty.
        RedisError if Redis cannot be reached; StoreError if the local store cannot say."""
        seen = self._local is not None and _SEEN in self._local.modes(_LOCAL_SCOPE)
        if self._redis.exists(keys.IDENTITY):
            if self._local is not None and not seen:
                self._local.save_mode(_LOCAL_SCOPE, _SEEN, True)
            return
        if seen:
            log.error("%s", IDENTITY_LOST)
            return
        self._redis.set(keys.IDENTITY, self.node, nx=True)
        if self._local is not None:
            self._local.save_mode(_LOCAL_SCOPE, _SEEN, True)

    def stop(self, timeout: float = 5.0) -> None:
        self._lease.stop(timeout)
        self._reader.stop(timeout)
        try:
            self._post.forget_wake(self.node)
            self._lease.end()
            self._directory.leave_all()
        except redis.RedisError as exc:
            log.info("could not tell Redis this server stops (its lease runs out instead): %s", exc)
        self._redis.close()

    # --- names and presence ------------------------------------------------------------------

    def claim_name(self, keys: Collection[str], claimant: Holder) -> None:
        name, identity = claimant.name, claimant.identity
        with refused_if_away("the server could not check your name; try again"):
            holder, told = self._directory.claim(keys, claimant)
            for node in told:
                self._post.wake(node, Taken(min(keys), identity))
        if holder is not None:
            shown = "" if holder.name == name else f" (it looks like {holder.name})"
            raise Refused("name_taken", f"the name {name} is taken{shown}; choose another")

    def release_name(self, keys: Collection[str], identity: str) -> None:
        try:
            self._directory.release(keys, identity)
        except redis.RedisError as exc:
            log.warning("releasing a name failed (it is free once this server's lease runs out): %s", exc)

    def holder_of(self, key: str) -> Holder | None:
        """Who holds a name on any server (StorageFailed if Redis is away)."""
        with refused_if_away("the server could not look that name up; try again"):
            return self._directory.holder(key)

    def set_away(self, keys: Collection[str], identity: str, why: str | None) -> None:
        with refused_if_away("the server could not tell the others; try again"):
            self._directory.set_away(keys, identity, why)

    def disconnect_elsewhere(self, key: str, identity: str, why: str) -> None:
        with refused_if_away("the server could not reach the other servers; try again"):
            for node in self._lease.alive():
                if node != self.node:
                    self._post.wake(node, Close(key, identity, why))

    def tell_read(self, identity: str, room: str, id: int) -> None:
        try:
            for node in self._lease.alive():
                if node != self.node:
                    self._post.wake(node, ReadThere(identity, room, id))
        except redis.RedisError as exc:
            log.warning("could not tell the other servers of a read marker: %s", exc)

    # --- private lines -------------------------------------------------------------------------

    @property
    def private_log(self) -> RoomLog:
        """The private messages of every server's users: one numbering, one stream."""
        return self._private_log

    def open_inbox(self, open_it: Callable[[], None]) -> int:
        with self._private.lock:  # the reader hands private lines over under this lock
            open_it()
            return self._private.position[0]

    def send_private(self, build: Callable[[int], Line], sender: str, recipient: str, cid: Tag | None = None) -> Line:
        """Kept in the private stream: the reader hands it to both parties, on any server."""
        return self._private_log.append(build, sender=sender, recipient=recipient, cid=cid)

    def settle_private(self, upto: int) -> None:
        self._reader.settle(self._private, (upto, 0))

    # --- rules and rooms ---------------------------------------------------------------------

    @property
    def rules(self) -> Rules:
        return self._rules

    def rooms(self) -> list[RoomRecord]:
        return self._rooms.rooms()

    def room(self, key: str) -> RoomRecord | None:
        return kept(self._rooms.room, key, failure="the server could not look that room up; try again")

    def add_room(self, record: RoomRecord) -> RoomRecord:
        failure = f"the server could not create the room {record.name}"
        return kept(self._rooms.add, record, failure=failure, room=record.name)

    def drop_room(self, key: str) -> None:
        self._rooms.drop(key)

    def open_room(self, record: RoomRecord) -> tuple[RoomLog, RedisFeed[P]]:
        feed = RedisFeed(record, self._delivery, self._logs, self._reader, self._directory, self._rooms, self._post)
        return RedisLog(self._logs, record.key, record.name), feed

    def settle_room(self, key: str, upto: int) -> None:
        """Wait (briefly) until this server has delivered `room` up to line `upto`, if it follows it."""
        followed = self._reader.following(keys.log(key))
        if followed is not None:
            self._reader.settle(followed, (upto, 0))

    # --- what the streams bring ----------------------------------------------------------------

    def _deliver_private(self, entries: Entries) -> None:
        if self._events is None:
            return
        for _, fields in entries:
            if b"s" in fields:
                line = self._logs.echoes.claim(Line(fields[b"l"]), fields)
                self._events.private_line(line, fields[b"s"].decode(), fields[b"r"].decode())

    def _deliver_rules(self, entries: Entries) -> None:
        if self._events is None:
            return
        for _, fields in entries:
            change = RulesChanged.of(fields)
            self._events.rules_changed(change.room, change.removed, change.reason, change.upto)

    def _obey(self, command: WakeCommand) -> None:
        """What another server asked of this one. Each is done in a thread of its own: closing a
        connection takes room locks, and a room may be waiting for the reader (a join settling)."""
        events = self._events
        if events is None:
            return
        match command:
            case Taken(key=key, identity=identity):
                _in_turn(events.taken_elsewhere, key, identity)
            case Close(key=key, identity=identity, why=why):
                _in_turn(events.disconnected_elsewhere, key, identity, why)
            case ReadThere(identity=identity, room=room, id=id):
                events.read_elsewhere(identity, room, id)

    def _lease_lost(self) -> None:
        if self._events is not None:
            self._events.lease_lost()

    def _gone(self, room: str, member: str) -> None:
        """A member of a dead server is gone from `room`: the room is told (RedisError if it cannot be)."""
        try:
            name = self._rooms.name(room) or room
        except StoreError as exc:
            log.warning("could not read the name of room %s: %s", room, exc)
            name = room
        left = Left(room=name, name=member, reason="disconnected", time=utc_now())
        self._logs.notice(room, encode(left))


#: Where this server's own store remembers that it has seen Redis keep identity: a scope no room
#: has, and one "mode" of it.
_LOCAL_SCOPE = "\0redis"
_SEEN = "identity"

# A token bucket on Redis' clock. KEYS: bucket. ARGV: burst, per second. 1 if a token was taken.
_TAKE = CLOCK + """
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate)
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return taken
"""


def _in_turn(step: Callable[..., None], *args: Any) -> None:
    threading.Thread(target=guarded, args=(step, *args), name="chat-shared-request", daemon=True).start()
