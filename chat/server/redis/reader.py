"""The reader: one thread and one Redis connection per server, that follows the streams this
server needs (its rooms' logs, the private log, the rules stream) with one blocking XREAD, and
hands each stream's new entries, in stream order, to whoever follows it.

It knows streams and positions, not rooms: what an entry means is the follower's business
(`Followed.deliver`). Its own wake stream (chat.server.redis.commands) interrupts a read, to
follow a new stream at once or to stop, and brings other servers' requests. After Redis was
away, or as soon as it sees that Redis lost its data while it was still there (its sentinel
key gone: FLUSHALL), a stream whose epoch changed is read again from its start.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from chat.server.lines import Line
from chat.server.redis import keys
from chat.server.redis.commands import Fields, Follow, Post, Stop, WakeCommand, wake_command
from chat.server.room import Delivery

log = logging.getLogger(__name__)

#: How long (ms) the reader waits for new entries before it looks again at what it follows.
READ_BLOCK_MS = 1000
#: Entries one read takes at most per stream.
READ_COUNT = 512
#: How long a join waits for the reader to deliver up to its own `joined` line.
SETTLE_TIMEOUT = 5.0

#: What XRANGE gives: (entry id, fields), oldest first; what XREAD gives: those per stream.
Entries = list[tuple[bytes, Fields]]


def position(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry's id as a pair: (the last numbered id at or before it, its place after that)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    first, _, second = text.partition("-")
    return int(first), int(second or 0)


def deliver_lines(
    delivery: Delivery[Any], room: str, echo: Callable[[Line, dict[bytes, bytes]], Line], entries: Entries
) -> None:
    """A room's new stream entries to its members here: the one place where what the reader
    read reaches this server's Delivery. `echo` gives a line whose entry carries an echo token
    its sender's echo, if this server owes it (chat.server.redis.log.Echoes.claim)."""
    delivery.publish(
        room, *[Line(fields[b"l"]) if b"e" not in fields else echo(Line(fields[b"l"]), fields) for _, fields in entries]
    )


@dataclass(eq=False)
class Followed:
    """One stream the reader follows, how far it has delivered it, and to whom."""

    #: The log key (a room's, or keys.PRIVATE), or the stream's own name (keys.RULES).
    key: str
    stream: bytes
    position: tuple[int, int]
    #: Gets each batch of new entries, in order, with `lock` held.
    deliver: Callable[[Entries], None]
    #: The log's epoch now (None: a stream without one, whose ids outlive a Redis that lost its data).
    read_epoch: Callable[[], bytes | None] | None = None
    #: Told (with `lock` held, its position back at the start) that its log's epoch changed.
    lost: Callable[[bytes | None], None] | None = None
    epoch: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    delivered: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.delivered = threading.Condition(self.lock)


class Reader:
    """This server's one reader of the shared streams."""

    def __init__(
        self, url: str, node: str, post: Post, obey: Callable[[WakeCommand], None], block_ms: int = READ_BLOCK_MS
    ) -> None:
        """`obey` is called (on the reader's thread) with each command other servers send `node`."""
        # A read blocks for up to block_ms: its socket waits longer than that.
        self._redis: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=block_ms / 1000 + 5, socket_connect_timeout=2
        )
        self._node = node
        self._wake = keys.wake(node).encode()
        self._post = post
        self._obey = obey
        self._block_ms = block_ms
        self._followed: dict[bytes, Followed] = {}
        self._followed_lock = threading.Lock()
        self._stopping = threading.Event()
        #: The sentinel's token as this reader last saw it (None: not read yet).
        self._sentinel: bytes | None = None
        self._thread = threading.Thread(target=self._read_forever, name="chat-shared-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        try:
            self._post.wake(self._node, Stop())
        except redis.RedisError as exc:  # the reader's own read fails and it sees the stop
            log.debug("could not wake the reader to stop: %s", exc)
        if self._thread.ident is not None:  # started (a server that failed to start stops too)
            self._thread.join(timeout)
        self._redis.close()

    def newest(self, stream: str) -> tuple[int, int]:
        """Where `stream` ends now (RedisError if Redis is away)."""
        last = cast(Entries, self._redis.xrevrange(stream, count=1))
        return position(last[0][0]) if last else (0, 0)

    def follow(self, followed: Followed) -> Followed:
        """Deliver `followed.stream` from after its position on; the one already followed, if any."""
        with self._followed_lock:
            already = self._followed.get(followed.stream)
            if already is not None:
                return already
            self._followed[followed.stream] = followed
        if self._thread.ident is not None:  # the running read does not read it yet
            try:
                self._post.wake(self._node, Follow(followed.key))
            except redis.RedisError as exc:  # the reader looks again within block_ms anyway
                log.info("could not wake the reader: %s", exc)
        return followed

    def unfollow(self, stream: str) -> None:
        """Stop reading `stream` here; following it again starts from a new position."""
        with self._followed_lock:
            self._followed.pop(stream.encode(), None)

    def following(self, stream: str) -> Followed | None:
        return self._followed.get(stream.encode())

    @staticmethod
    def settle(followed: Followed, upto: tuple[int, int]) -> None:
        """Wait (briefly) until the reader has delivered the stream up to `upto`."""
        with followed.delivered:
            if not followed.delivered.wait_for(lambda: followed.position >= upto, SETTLE_TIMEOUT):
                log.warning("the reader is behind in %s; going on", followed.key)

    # --- the loop --------------------------------------------------------------------------

    def _read_forever(self) -> None:
        wake_position: bytes | str = b"$"
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
                # Every read also reads the sentinel (same round trip): a Redis that lost its data
                # without dropping the connection (FLUSHALL) is noticed within one read's block,
                # not only after an error; the logs' new ids, from 1, lie below every position.
                pipe = self._redis.pipeline(transaction=False)
                pipe.get(keys.SENTINEL)
                pipe.xread(streams, count=READ_COUNT, block=self._block_ms)
                sentinel, reply = pipe.execute()
                if self._data_lost(sentinel):
                    self._start_over_where_lost()
                    continue
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
                    for _, fields in entries:
                        command = wake_command(fields)
                        if command is not None and not isinstance(command, Stop | Follow):  # those only wake it
                            guarded(self._obey, command)
                    continue
                followed = self._followed.get(stream)
                if followed is None or not entries:
                    continue
                with followed.delivered:
                    # A read asked from an older place than this follower's (its room was left
                    # and followed again, from later, while the read was out) delivers only
                    # what the follower does not have: nothing twice.
                    fresh = [entry for entry in entries if position(entry[0]) > followed.position]
                    if fresh:
                        guarded(followed.deliver, fresh)
                        followed.position = position(fresh[-1][0])
                    followed.delivered.notify_all()

    def _data_lost(self, sentinel: bytes | None) -> bool:
        """Whether Redis lost its data since the last read (the sentinel `sentinel` read then is
        gone or another); sets it again if gone. The first read only learns it."""
        if sentinel is None:
            self._redis.set(keys.SENTINEL, secrets.token_hex(8), nx=True)
            sentinel = cast(bytes | None, self._redis.get(keys.SENTINEL))
        known, self._sentinel = self._sentinel, sentinel
        if known is None or sentinel == known:
            return False
        log.warning("Redis lost its data (its sentinel key changed): reading every log again from its start")
        return True

    def _start_over_where_lost(self) -> None:
        """After Redis was away: a log whose epoch changed lost its stream (Redis restarted
        without its data), so its new lines are read from the start, and its follower told."""
        for followed in list(self._followed.values()):
            if followed.read_epoch is None:
                continue
            epoch = followed.read_epoch()
            if epoch is None and followed.epoch is not None:
                # Lost, and nothing said there since: its new epoch now (HSETNX, as the append
                # script does), so that its first new line does not look like a second loss.
                self._redis.hsetnx(keys.meta(followed.key), "epoch", secrets.token_hex(8))
                epoch = followed.read_epoch()
            if epoch == followed.epoch:
                continue
            with followed.delivered:
                followed.epoch, followed.position = epoch, (0, 0)
                if followed.lost is not None:
                    followed.lost(epoch)


def guarded(step: Callable[..., None], *args: Any) -> None:
    """One step of a loop this server cannot do without (reading, renewing): a bug in it is
    logged with its traceback and the loop goes on, rather than the server silently
    delivering nothing more, or losing its lease while its users are still here."""
    try:
        step(*args)
    except Exception:
        log.exception("a shared-rooms step failed; carrying on")
