"""How much one client, or one address, may ask of the server, and when it must wait.

A TokenBucket paces one connection's requests (burst, then a steady rate; past
a debt it is cut off), AddressBook counts connections and connects per address
(IPv6 by /64) and paces how often one address may make the log speak. Pure
arithmetic over an injected monotonic clock: no sockets, no threads of its own;
callers hold AddressBook's lock only for a dictionary lookup.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from chat.wire.protocol import (
    ClassicMessage,
    ClientMessage,
    HistoryRequest,
    Join,
    ListRooms,
    Nick,
    Pong,
    Who,
)

Clock = Callable[[], float]
_EPSILON = 1e-9  # seconds: rounding, not waiting

#: What a request costs beyond the one token every line pays: the ones whose
#: answer is big (history, who, rooms) or that every member of a room sees
#: (join, nick) cost more than a message; a pong answers the server's own ping
#: (whose pace the server sets) and costs almost nothing.
EXTRA_COST: dict[type[object], float] = {
    HistoryRequest: 3.0,
    Nick: 3.0,
    Join: 2.0,
    Who: 2.0,
    ListRooms: 2.0,
    Pong: -0.9,
}
#: Every this many bytes of a line cost one more token, so long lines pace like several short ones.
BYTES_PER_TOKEN = 4096


def request_cost(message: ClientMessage | ClassicMessage | object, size: int) -> float:
    """Tokens one line costs: 1, more for heavy requests and long lines. A line
    that is not protocol (anything else as `message`) costs the same as a message."""
    return 1.0 + EXTRA_COST.get(type(message), 0.0) + size // BYTES_PER_TOKEN


class TokenBucket:
    """A burst of `burst` tokens refilled at `rate` per second (GCRA: one number of state).

    `charge` says how long the request must wait before it is served: 0 while
    the burst lasts, then whatever keeps the client at `rate`. `rate` 0 means
    no limit.
    """

    __slots__ = ("_clock", "_ready_at", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._ready_at = 0.0  # when the bucket would be full again (the "theoretical arrival time")

    def charge(self, cost: float = 1.0) -> float:
        """Take `cost` tokens; the seconds to wait before serving this request."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._ready_at = max(self._ready_at, now) + cost / self.rate
        wait = self._ready_at - now - self.burst / self.rate
        return wait if wait > _EPSILON else 0.0

    def try_take(self, cost: float = 1.0) -> bool:
        """Take `cost` tokens if the burst has them now: True; else change nothing: False."""
        if self.rate <= 0:
            return True
        now = self._clock()
        ready_at = max(self._ready_at, now) + cost / self.rate
        if ready_at - now - self.burst / self.rate > _EPSILON:
            return False
        self._ready_at = ready_at
        return True

    def debt(self) -> float:
        """Seconds until the bucket could serve a request without waiting."""
        if self.rate <= 0:
            return 0.0
        return max(0.0, self._ready_at - self._clock() - self.burst / self.rate)

    def full(self) -> bool:
        return self._ready_at <= self._clock()


@dataclass(frozen=True)
class AddressPolicy:
    """Per-address limits; 0 turns a limit off."""

    #: Most connections open at once from one address (IPv6: one /64).
    max_connections: int = 16
    #: Connects one address may make in a burst...
    connect_burst: int = 32
    #: ...then one per this many seconds.
    connect_interval: float = 10.0
    #: Networks the connection limits do not apply to.
    exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: Protocol errors an address may have logged in a burst, then one a minute.
    logged_errors: int = 5


class AddressBook:
    """Open connections, connect pacing and log pacing per address, for one server."""

    def __init__(self, policy: AddressPolicy, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._exempt = [ipaddress.ip_network(network, strict=False) for network in policy.exempt]
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._connects: dict[str, TokenBucket] = {}
        self._log: dict[str, TokenBucket] = {}

    def set_policy(self, policy: AddressPolicy) -> None:
        """Limits from now on (a reload); counts so far are kept, pacing restarts for each address."""
        exempt = [ipaddress.ip_network(network, strict=False) for network in policy.exempt]
        with self._lock:
            self.policy, self._exempt = policy, exempt
            self._connects.clear()

    def admit(self, host: str) -> str | None:
        """Count a new connection from `host`; or the error code why it may not connect."""
        key, exempt = self._key(host)
        policy = self.policy
        with self._lock:
            if exempt:
                self._open[key] = self._open.get(key, 0) + 1
                return None
            if policy.max_connections and self._open.get(key, 0) >= policy.max_connections:
                return "too_many_connections"
            if policy.connect_burst and policy.connect_interval > 0:
                bucket = self._connects.get(key)
                if bucket is None:
                    if len(self._connects) > 4 * len(self._open) + 1024:
                        self._forget_idle(self._connects)
                    bucket = self._connects[key] = TokenBucket(
                        1 / policy.connect_interval, policy.connect_burst, self._clock
                    )
                if not bucket.try_take():
                    return "too_many_connections"
            self._open[key] = self._open.get(key, 0) + 1
            return None

    def release(self, host: str) -> None:
        """A connection that admit() counted has ended."""
        key, _ = self._key(host)
        with self._lock:
            left = self._open.get(key, 0) - 1
            if left > 0:
                self._open[key] = left
            else:
                self._open.pop(key, None)

    def may_log(self, host: str) -> bool:
        """Whether one more protocol error from `host` may be logged now."""
        key, _ = self._key(host)
        with self._lock:
            bucket = self._log.get(key)
            if bucket is None:
                if len(self._log) > 4096:
                    self._forget_idle(self._log)
                bucket = self._log[key] = TokenBucket(1 / 60, self.policy.logged_errors, self._clock)
            return bucket.try_take()

    def _key(self, host: str) -> tuple[str, bool]:
        """The address a limit counts (an IPv6 /64), and whether it is exempt."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return host, False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        exempt = any(address in network for network in self._exempt)
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((address, 64), strict=False)), exempt
        return str(address), exempt

    @staticmethod
    def _forget_idle(buckets: dict[str, TokenBucket]) -> None:
        for key in [key for key, bucket in buckets.items() if bucket.full()]:
            del buckets[key]


def address_group(host: str) -> str:
    """The address limits and sanctions count: an IPv6 address's /64 (one subscriber's block),
    an IPv4 address (or an IPv4-mapped IPv6 one) as it is; anything else unchanged."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def in_networks(host: str, networks: Iterable[str]) -> bool:
    """Whether `host` is an address inside one of `networks`."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in _network(network) for network in networks)


@functools.lru_cache(maxsize=256)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """`text` parsed once: a connect storm asked for the same few networks per connection."""
    return ipaddress.ip_network(text)


def parse_networks(text: str) -> tuple[str, ...]:
    """A comma-separated list of networks (`127.0.0.0/8,::1`), checked; empty for none."""
    networks: Iterable[str] = (part.strip() for part in text.split(","))
    return tuple(str(ipaddress.ip_network(network, strict=False)) for network in networks if network)
