"""This server's lease among the others: an end time in `chat:nodes`, on Redis' clock, that a
thread of its own renews; and the other servers whose lease ran out, seen to by whichever
live server sees it first.

While its lease runs, what a server recorded (names, members) counts; once it ran out the
first server to notice drops what it had and tells each room its members left. A server
that finds its own lease ran out (Redis was away, or lost its data) records its names and
members again. The periods are settings, so that tests can make them short.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import cast

import redis

from chat.errors import StorageFailed
from chat.server.config import REDIS_LEASE, REDIS_RENEW
from chat.server.redis import keys
from chat.server.redis.directory import CLOCK
from chat.server.redis.reader import guarded

log = logging.getLogger(__name__)

#: How long (s) a server's names and memberships outlive its last renewal, by default.
LEASE = REDIS_LEASE
#: How often (s) a server renews its lease, by default.
RENEW_EVERY = REDIS_RENEW

# Renew this server's lease; 1 if it had run out (others may have dropped what it held).
# KEYS: nodes. ARGV: node, lease.
_RENEW = CLOCK + """
local lease = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if lease and tonumber(lease) > now then return 0 end
return 1
"""

# The servers whose lease ran out, each taken off the list by exactly one caller.
# KEYS: nodes. ARGV: node asking.
_REAP = CLOCK + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
local mine = {}
for _, node in ipairs(dead) do
  if node ~= ARGV[1] and redis.call('ZREM', KEYS[1], node) == 1 then mine[#mine + 1] = node end
end
return mine
"""


class Lease:
    """The lease of the server `node`, renewed every `renew_every` seconds for `period` more."""

    def __init__(
        self,
        client: redis.Redis,
        node: str,
        forget: Callable[[str], list[tuple[str, str]]],
        lost: Callable[[], None],
        gone: Callable[[str, str], None],
        period: float = LEASE,
        renew_every: float = RENEW_EVERY,
    ) -> None:
        """`forget(node)` drops what a dead server held and says which (room, member) it had;
        `lost()` is told that this server's own lease had run out; `gone(room, member)` that a
        member of a dead server left a room."""
        if not 0 < renew_every < period:
            raise ValueError(f"a lease of {period:g} s is renewed more often than that, not every {renew_every:g} s")
        self._redis = client
        self.node = node
        self.period = period
        self.renew_every = renew_every
        self._forget = forget
        self._lost = lost
        self._gone = gone
        self._renew_script = client.register_script(_RENEW)
        self._reap_script = client.register_script(_REAP)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._renew_forever, name="chat-shared-lease", daemon=True)

    def start(self) -> None:
        """Take the lease (RedisError if Redis is away) and keep it from now on."""
        self.renew()
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def end(self) -> None:
        """This server stops: its lease ends now (RedisError if Redis is away: it runs out instead)."""
        self._redis.zrem(keys.NODES, self.node)

    def renew(self) -> bool:
        """Renew this server's lease; True if it had run out (what it held may be gone)."""
        return bool(self._renew_script(keys=[keys.NODES], args=[self.node, self.period]))

    def alive(self) -> list[str]:
        """The servers whose lease runs."""
        seconds, micro = self._redis.time()
        now = seconds + micro / 1e6
        return [node.decode() for node in cast(list[bytes], self._redis.zrangebyscore(keys.NODES, now, "+inf"))]

    def reap(self) -> list[tuple[str, str]]:
        """Forget the servers whose lease ran out (each reaped by one server): the members they
        had, as (room key, member name), each no longer in the room."""
        gone: list[tuple[str, str]] = []
        for dead in cast(list[bytes], self._reap_script(keys=[keys.NODES], args=[self.node])):
            node = dead.decode()
            log.warning("server %s stopped renewing its lease: its users are gone", node)
            gone += self._forget(node)
        return gone

    def _renew_forever(self) -> None:
        while not self._stopping.wait(self.renew_every):
            guarded(self._renew_once)

    def _renew_once(self) -> None:
        try:
            if self.renew():
                log.warning("this server's lease ran out (Redis was away): claiming its names again")
                self._lost()
                log.warning("this server's names and room members are claimed again")
            for room, member in self.reap():
                self._gone(room, member)
        except (redis.RedisError, StorageFailed) as exc:
            log.warning("renewing this server's lease failed: %s", exc)
