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
from chat.server.room import DEFAULT_HISTORY, DEFAULT_REPLAY_LIMIT
from chat.server.store import DEFAULT_RETENTION
from chat.wire.protocol import DEFAULT_MAX_LINE

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7777


def default_db() -> str:
    """The history file the command line uses unless told otherwise."""
    return os.path.join(state_dir(), "chat.db")


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("", "none") else float(text)


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

    host: str = _option(DEFAULT_HOST, "--host", "CHAT_HOST", "address to listen on (0.0.0.0 for every interface)", str)
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
    retention: int = _option(
        DEFAULT_RETENTION, "--retention", "CHAT_RETENTION", "messages each room's history keeps", int
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
    shutdown_grace: float = _option(
        2.0,
        "--shutdown-grace",
        "CHAT_SHUTDOWN_GRACE",
        "seconds a stopping server waits for clients to take its notice",
        float,
    )
    log_level: str = _option(
        "INFO",
        "--log-level",
        "CHAT_LOG_LEVEL",
        "how much to log to stderr",
        str,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


def options() -> Iterator[tuple[str, Option, Any]]:
    """Each row of the table: the field's name, its Option, and the command line's default."""
    for item in dataclasses.fields(ServerConfig):
        option: Option = item.metadata["option"]
        default = option.command_default() if option.command_default else item.default
        yield item.name, option, default
