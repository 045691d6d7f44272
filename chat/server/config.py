"""Everything about a server that a user may choose, in one table.

ServerConfig's fields are that table: each carries its flag, environment
variable, default and help, and the command line (with its environment
variables) and README's option table all follow from it (a test holds README
to it). Pure: cli.py reads the environment and the arguments.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from chat.paths import state_dir
from chat.server.limits import parse_networks
from chat.server.room import DEFAULT_HISTORY, DEFAULT_REPLAY_LIMIT
from chat.server.store import DEFAULT_RETENTION, DEFAULT_RETENTION_BYTES
from chat.wire.protocol import DEFAULT_MAX_LINE

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7777
#: With --redis: how long (s) a server's names and members outlive its last renewal, and how
#: often (s) it renews them (chat.server.redis.lease; here, where no redis import is needed).
REDIS_LEASE = 10.0
REDIS_RENEW = 2.5


def default_db() -> str:
    """The history file the command line uses unless told otherwise."""
    return os.path.join(state_dir(), "chat.db")


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("", "none") else float(text)


def _parse_switch(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


@dataclass(frozen=True)
class Option:
    """One row of the table: how a user sets a ServerConfig field."""

    flag: str
    env: str
    help: str
    parse: Callable[[str], Any]
    #: The command line's default when it differs from the library's (the history file).
    command_default: Callable[[], Any] | None = None
    choices: tuple[str, ...] | None = None


def _option(default: Any, flag: str, env: str, help: str, parse: Callable[[str], Any], **more: Any) -> Any:
    return field(default=default, metadata={"option": Option(flag, env, help, parse, **more)})


@dataclass(frozen=True)
class ServerConfig:
    """Everything about a server that a user may choose (flag, env, default, help per field)."""

    host: str = _option(
        DEFAULT_HOST,
        "--host",
        "CHAT_HOST",
        "address to listen on: IPv4, IPv6 or a name (:: for every interface, both families)",
        str,
    )
    port: int = _option(DEFAULT_PORT, "--port", "CHAT_PORT", "TCP port; 0 picks a free one (the log says which)", int)
    history: int = _option(
        DEFAULT_HISTORY, "--history", "CHAT_HISTORY", "recent messages a newcomer to a room sees", int
    )
    max_line: int = _option(
        DEFAULT_MAX_LINE,
        "--max-line",
        "CHAT_MAX_LINE",
        "longest line in bytes; a longer one closes the connection",
        int,
    )
    max_backlog: int = _option(
        8 * 1024 * 1024,
        "--max-backlog",
        "CHAT_MAX_BACKLOG",
        "bytes queued for a client that does not read before it is dropped",
        int,
    )
    ping_interval: float = _option(
        60.0, "--ping-interval", "CHAT_PING_INTERVAL", "seconds of silence before the server pings a client", float
    )
    idle_timeout: float = _option(
        300.0,
        "--idle-timeout",
        "CHAT_IDLE_TIMEOUT",
        "seconds of silence before a client is disconnected (0: never)",
        float,
    )
    db: str = _option(
        ":memory:",
        "--db",
        "CHAT_DB",
        "SQLite file that keeps rooms and history; :memory: keeps nothing",
        str,
        command_default=default_db,
    )
    redis: str | None = _option(
        None,
        "--redis",
        "CHAT_REDIS",
        "share rooms with other servers through this Redis (redis://host:6379/0 or unix:///path); "
        "needs the redis extra",
        str,
    )
    redis_lease: float = _option(
        REDIS_LEASE,
        "--redis-lease",
        "CHAT_REDIS_LEASE",
        "with --redis: seconds a server that stopped answering still holds its users' names",
        float,
    )
    redis_renew: float = _option(
        REDIS_RENEW,
        "--redis-renew",
        "CHAT_REDIS_RENEW",
        "with --redis: seconds between renewals of this server's lease (less than --redis-lease)",
        float,
    )
    retention: int = _option(
        DEFAULT_RETENTION, "--retention", "CHAT_RETENTION", "messages each room's history keeps", int
    )
    retention_bytes: int = _option(
        DEFAULT_RETENTION_BYTES,
        "--retention-bytes",
        "CHAT_RETENTION_BYTES",
        "bytes each room's history keeps at most (oldest go first)",
        int,
    )
    max_age: float | None = _option(
        None, "--max-age", "CHAT_MAX_AGE", "seconds a message is kept at most", _optional_float
    )
    replay_limit: int = _option(
        DEFAULT_REPLAY_LIMIT,
        "--replay-limit",
        "CHAT_REPLAY_LIMIT",
        "most missed messages replayed per room to a client that comes back",
        int,
    )
    max_clients: int = _option(
        10_000, "--max-clients", "CHAT_MAX_CLIENTS", "most connections at once; more get a server_full error", int
    )
    max_queued: int = _option(
        256 * 1024 * 1024,
        "--max-queued",
        "CHAT_MAX_QUEUED",
        "bytes queued for all clients together; past it the biggest backlogs are dropped",
        int,
    )
    flood_burst: float = _option(
        10.0, "--flood-burst", "CHAT_FLOOD_BURST", "lines a client may send at once before it is slowed", float
    )
    flood_rate: float = _option(
        5.0,
        "--flood-rate",
        "CHAT_FLOOD_RATE",
        "lines per second a client may keep sending (0: no limit)",
        float,
    )
    flood_max_delay: float = _option(
        10.0,
        "--flood-max-delay",
        "CHAT_FLOOD_MAX_DELAY",
        "seconds a client may be behind its rate before excess_flood cuts it",
        float,
    )
    max_per_address: int = _option(
        16,
        "--max-per-address",
        "CHAT_MAX_PER_ADDRESS",
        "connections at once from one address, IPv6 per /64 (0: no limit)",
        int,
    )
    connect_burst: int = _option(
        32,
        "--connect-burst",
        "CHAT_CONNECT_BURST",
        "connects one address may make at once before they are paced (0: no limit)",
        int,
    )
    connect_interval: float = _option(
        10.0,
        "--connect-interval",
        "CHAT_CONNECT_INTERVAL",
        "seconds between further connects from one address",
        float,
    )
    limit_exempt: str = _option(
        "127.0.0.0/8,::1/128",
        "--limit-exempt",
        "CHAT_LIMIT_EXEMPT",
        "comma-separated networks the per-address limits skip (empty: none)",
        lambda text: ",".join(parse_networks(text)),
    )
    join_timeout: float = _option(
        30.0,
        "--join-timeout",
        "CHAT_JOIN_TIMEOUT",
        "seconds a connection has to send its first join (0: forever)",
        float,
    )
    tls_cert: str = _option(
        "",
        "--tls-cert",
        "CHAT_TLS_CERT",
        "certificate chain (PEM) to speak TLS 1.2+ with; reloaded on SIGHUP",
        str,
    )
    tls_key: str = _option("", "--tls-key", "CHAT_TLS_KEY", "private key (PEM) of --tls-cert", str)
    plain_port: int | None = _option(
        None,
        "--plain-port",
        "CHAT_PLAIN_PORT",
        "with TLS: also serve plain lines on this port, on loopback only (0 picks one)",
        lambda text: None if text.lower() in ("", "none") else int(text),
    )
    irc_port: int | None = _option(
        None,
        "--irc-port",
        "CHAT_IRC_PORT",
        "also speak IRC on this port of --host (0 picks one; the log says which)",
        lambda text: None if text.lower() in ("", "none") else int(text),
    )
    irc_tls_port: int | None = _option(
        None,
        "--irc-tls-port",
        "CHAT_IRC_TLS_PORT",
        "also speak IRC over TLS (--tls-cert, --tls-key) on this port of --host (0 picks one)",
        lambda text: None if text.lower() in ("", "none") else int(text),
    )
    irc_server_name: str = _option(
        "chat",
        "--irc-server-name",
        "CHAT_IRC_SERVER_NAME",
        "the name the IRC listeners give the server (the source of their numerics)",
        str,
    )
    allow_plaintext: bool = _option(
        False,
        "--allow-plaintext",
        "CHAT_ALLOW_PLAINTEXT",
        "let --plain-port listen on --host too, beyond loopback",
        _parse_switch,
    )
    tls_handshake_timeout: float = _option(
        10.0,
        "--tls-handshake-timeout",
        "CHAT_TLS_HANDSHAKE_TIMEOUT",
        "seconds a new connection has to finish its TLS handshake (a web one, also its HTTP request)",
        float,
    )
    web_port: int | None = _option(
        None,
        "--web-port",
        "CHAT_WEB_PORT",
        "serve the web client at / and a WebSocket at /ws on --host at this port (0 picks one); "
        "https/wss only with --tls-cert",
        lambda text: None if text.lower() in ("", "none") else int(text),
    )
    web_origin: tuple[str, ...] = _option(
        (),
        "--web-origin",
        "CHAT_WEB_ORIGIN",
        "another page origin (https://example.org) whose WebSockets --web-port accepts "
        "(repeatable; the environment takes a comma-separated list)",
        lambda text: tuple(origin.strip().rstrip("/") for origin in text.split(",") if origin.strip()),
    )
    admin: tuple[str, ...] = _option(
        (),
        "--admin",
        "CHAT_ADMIN",
        "an account that is a server operator (repeatable; the environment takes a comma-separated list)",
        lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
    )
    max_sessions: int = _option(
        10,
        "--max-sessions",
        "CHAT_MAX_SESSIONS",
        "sessions one account may have at once (devices); past it the oldest is closed",
        int,
    )
    max_rooms_per_user: int = _option(
        20,
        "--max-rooms-per-user",
        "CHAT_MAX_ROOMS_PER_USER",
        "rooms one account or guest may create (0: no limit); more get too_many_rooms",
        int,
    )
    room_expiry: float = _option(
        30 * 24 * 3600.0,
        "--room-expiry",
        "CHAT_ROOM_EXPIRY",
        "seconds after which a room with no member, no owner account and no line is removed (0: never)",
        float,
    )
    require_account: bool = _option(
        False,
        "--require-account",
        "CHAT_REQUIRE_ACCOUNT",
        "refuse guests: every name must be a registered account's",
        _parse_switch,
    )
    shutdown_grace: float = _option(
        2.0,
        "--shutdown-grace",
        "CHAT_SHUTDOWN_GRACE",
        "seconds a stopping server waits for clients to take its notice",
        float,
    )
    metrics_port: int | None = _option(
        None,
        "--metrics-port",
        "CHAT_METRICS_PORT",
        "serve /metrics (Prometheus), /healthz and /readyz over HTTP on --host at this port (0 picks one)",
        lambda text: None if text.lower() in ("", "none") else int(text),
    )
    log_level: str = _option(
        "INFO",
        "--log-level",
        "CHAT_LOG_LEVEL",
        "how much to log to stderr",
        str,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )
    log_format: str = _option(
        "text",
        "--log-format",
        "CHAT_LOG_FORMAT",
        "text for a person, or json: one object per line with time, level, logger, message and fields",
        str,
        choices=("text", "json"),
    )

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def without_limits(self) -> ServerConfig:
        """This configuration with no flood or per-address limits: for load generators, which are one abusive client."""
        return dataclasses.replace(self, flood_rate=0, max_per_address=0, connect_burst=0)


#: The command-line flags that do what ServerConfig.without_limits() does.
NO_LIMIT_FLAGS = ("--flood-rate", "0", "--max-per-address", "0", "--connect-burst", "0")


def options() -> Iterator[tuple[str, Option, Any]]:
    """Each row of the table: the field's name, its Option, and the command line's default."""
    for item in dataclasses.fields(ServerConfig):
        option: Option = item.metadata["option"]
        default = option.command_default() if option.command_default else item.default
        yield item.name, option, default
