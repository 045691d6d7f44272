"""What an operator's monitoring sees: the server's counts (Stats, plain numbers the server
bumps where it already works per batch or per connection) and the HTTP endpoint that serves
them as Prometheus metrics, with /healthz and /readyz for a load balancer.

Stats costs a short lock per said batch or per connection and nothing per member; the endpoint
reads everything else (rooms, accounts, deliveries, Redis) only when it is scraped, through
prometheus-client's collector interface on a registry of this server's own. No module state.
"""

from __future__ import annotations

import bisect
import http.server
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from chat.server.tcp import ChatServer

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of chat_store_seconds' buckets: a group commit takes well under a
#: millisecond on a quiet disk, and a second or more on one that stalls.
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Why the server cuts a connection (a LeaveReason); each is shown from 0 so rates work at once.
CUT_REASONS = ("timeout", "slow_consumer", "excess_flood", "kicked", "banned", "shutdown")
#: Ways a connection ends that are the client's own doing: not drops.
_LEFT = ("quit", "disconnected", "part")


@dataclass(frozen=True)
class Snapshot:
    """Stats at one moment, copied under its lock."""

    connections: dict[str, int]
    said: int
    rate_limited: int
    dropped: dict[str, int]
    store_counts: tuple[int, ...]
    store_sum: float


class Stats:
    """The counts the server keeps as it works; read whole with snapshot()."""

    def __init__(self, doors: tuple[str, ...] = ("main",)) -> None:
        self._lock = threading.Lock()
        self._connections = dict.fromkeys(doors, 0)
        self._said = 0
        self._rate_limited = 0
        self._dropped = dict.fromkeys(CUT_REASONS, 0)
        self._store_counts = [0] * (len(STORE_BUCKETS) + 1)  # the last: over every bound
        self._store_sum = 0.0

    def connected(self, door: str, change: int) -> None:
        """A connection came in through `door` (+1) or ended (-1)."""
        with self._lock:
            self._connections[door] = self._connections.get(door, 0) + change

    def ended(self, reason: str) -> None:
        """A connection ended for `reason` (a LeaveReason); those the server chose are drops."""
        if reason in _LEFT:
            return
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + 1

    def kept(self, lines: int, seconds: float) -> None:
        """A batch of `lines` said to a room was kept (and published) in `seconds`."""
        with self._lock:
            self._said += lines
            self._store_counts[bisect.bisect_left(STORE_BUCKETS, seconds)] += 1
            self._store_sum += seconds

    def slowed(self) -> None:
        """A client was told it sends too fast (one rate_limited notice per slow streak)."""
        with self._lock:
            self._rate_limited += 1

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                dict(self._connections), self._said, self._rate_limited, dict(self._dropped),
                tuple(self._store_counts), self._store_sum,
            )  # fmt: skip


@runtime_checkable
class _CountsAccounts(Protocol):
    def count_accounts(self) -> int: ...


@runtime_checkable
class _KnowsItsHealth(Protocol):
    def problem(self) -> str | None: ...


def store_problem(server: ChatServer) -> str | None:
    """Why the server cannot keep messages now (its history file was lost), or None."""
    return server.store.problem() if isinstance(server.store, _KnowsItsHealth) else None


def redis_round_trip(server: ChatServer) -> float | None:
    """Seconds a PING to the server's Redis takes now; None without --redis. RedisError if it fails."""
    shared = server.shared
    if shared is None:
        return None
    started = time.monotonic()
    shared.ping()
    return time.monotonic() - started


class _Collector:
    """Reads `server` when Prometheus scrapes it (prometheus-client's custom collector)."""

    def __init__(self, server: ChatServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        server = self.server
        stats = server.stats.snapshot()
        doors = GaugeMetricFamily("chat_connections", "open connections, by front door", labels=["door"])
        for door, count in sorted(stats.connections.items()):
            doors.add_metric([door], count)
        yield doors
        yield CounterMetricFamily("chat_messages", "lines said in rooms and kept", value=stats.said)
        yield CounterMetricFamily(
            "chat_deliveries", "room lines handed to members' connections (one per line per member)",
            value=server.outbox.fanned_out,
        )  # fmt: skip
        dropped = CounterMetricFamily("chat_dropped", "connections the server cut, by reason", labels=["reason"])
        for reason, count in sorted(stats.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily(
            "chat_rate_limited", "times a client was told it sends too fast (once per slow streak)",
            value=stats.rate_limited,
        )  # fmt: skip
        buckets, total = [], 0
        for bound, count in zip((*STORE_BUCKETS, float("inf")), stats.store_counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        yield HistogramMetricFamily(
            "chat_store_seconds", "seconds a said batch took to be numbered and kept (its group commit)",
            buckets=buckets, sum_value=stats.store_sum,
        )  # fmt: skip
        yield GaugeMetricFamily("chat_rooms", "rooms this server knows", value=len(server.hub.room_list().rooms))
        if isinstance(server.store, _CountsAccounts):
            yield GaugeMetricFamily("chat_accounts", "registered accounts", value=server.store.count_accounts())
        if server.shared is not None:
            import redis

            try:
                seconds = redis_round_trip(server)
            except redis.RedisError as exc:  # the scrape says so (NaN) rather than failing whole
                log.warning("metrics: Redis did not answer a PING: %s", exc)
                seconds = float("nan")
            yield GaugeMetricFamily("chat_redis_round_trip_seconds", "seconds a PING to Redis took", value=seconds)


class MetricsPortError(OSError):
    """The metrics port cannot be listened on (taken, or not this machine's address): the
    operator's to fix, and said as such rather than as the chat port's failure."""


class MetricsEndpoint:
    """HTTP on (host, port) in a thread of its own: /metrics, /healthz, /readyz. close() joins it."""

    def __init__(self, server: ChatServer, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry

        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(server))
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            self._http = _HttpServer((host, port), _handler_for(self), family)
        except OSError as exc:
            raise MetricsPortError(exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.1,), name="chat-metrics")
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._http.server_address[:2]
        return str(host), int(port)

    def health(self) -> tuple[int, str]:
        """/healthz: 200 while the server serves and can keep messages, else 503, with why."""
        if not self.server.serving:
            return 503, "not serving\n"
        problem = store_problem(self.server)
        return (503, f"{problem}\n") if problem else (200, "ok\n")

    def readiness(self) -> tuple[int, str]:
        """/readyz: healthy, and its Redis answering when it has one (a load balancer sends no one
        to a server that cannot reach the rooms it shares)."""
        status, text = self.health()
        if status != 200:
            return status, text
        if self.server.shared is None:
            return 200, "ready\n"
        import redis

        try:
            redis_round_trip(self.server)
        except redis.RedisError as exc:
            return 503, f"Redis does not answer: {exc}\n"
        return 200, "ready\n"

    def metrics(self) -> tuple[int, bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every request's thread
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler],
                 family: socket.AddressFamily) -> None:  # fmt: skip
        self.address_family = family
        super().__init__(address, handler)

    def server_bind(self) -> None:
        if self.socket.family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _handler_for(endpoint: MetricsEndpoint) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                status, body, kind = endpoint.metrics()
            elif path in ("/healthz", "/readyz"):
                status, text = endpoint.health() if path == "/healthz" else endpoint.readiness()
                body, kind = text.encode(), "text/plain; charset=utf-8"
            else:
                status, body, kind = 404, b"not found: /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
