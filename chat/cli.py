"""Command lines of the server and the client: arguments, logging and signals.

The only place that reads the environment or installs signal handlers; all
the work happens in chat.server and chat.client.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import threading
from collections.abc import Sequence
from types import FrameType

from chat.server import ChatServer, ServerConfig
from chat.store import StoreError

log = logging.getLogger("chat")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7777


#: Stack size of handler threads; they only read lines and call the room.
HANDLER_STACK = 512 * 1024


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard one; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit: %s", exc)
            return soft
    return hard


def default_db() -> str:
    """~/.local/state/chat/chat.db (or under $XDG_STATE_HOME)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "chat", "chat.db")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, not {value!r}") from None


def add_address_arguments(parser: argparse.ArgumentParser) -> None:
    """--host and --port, shared by the server and the client."""
    parser.add_argument(
        "--host",
        default=os.environ.get("CHAT_HOST") or DEFAULT_HOST,
        help="address to use (env CHAT_HOST; default %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=_env_int("CHAT_PORT", DEFAULT_PORT),
        help="TCP port; 0 lets the system pick a free one for the server (env CHAT_PORT; default %(default)s)",
    )


def server_parser() -> argparse.ArgumentParser:
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(
        prog="chat-server",
        description="Run a chat room. Clients speak one JSON object per line; see protocol.md.",
    )
    add_address_arguments(parser)
    parser.add_argument(
        "--history",
        type=int,
        default=_env_int("CHAT_HISTORY", defaults.history),
        help="recent messages shown to a newcomer (env CHAT_HISTORY; default %(default)s)",
    )
    parser.add_argument(
        "--max-line",
        type=int,
        default=_env_int("CHAT_MAX_LINE", defaults.max_line),
        help="longest accepted line in bytes; a longer one closes the connection "
        "(env CHAT_MAX_LINE; default %(default)s)",
    )
    parser.add_argument(
        "--max-backlog",
        type=int,
        default=_env_int("CHAT_MAX_BACKLOG", defaults.max_backlog),
        help="bytes queued for a client that is not reading before it is dropped "
        "(env CHAT_MAX_BACKLOG; default %(default)s)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=float(os.environ.get("CHAT_PING_INTERVAL") or defaults.ping_interval),
        help="seconds of silence before the server pings a client (env CHAT_PING_INTERVAL; default %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=float(os.environ.get("CHAT_IDLE_TIMEOUT") or defaults.idle_timeout),
        help="seconds of silence before a client is disconnected, 0 for never "
        "(env CHAT_IDLE_TIMEOUT; default %(default)s)",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("CHAT_DB") or default_db(),
        help="SQLite file that keeps the history, or :memory: to keep nothing (env CHAT_DB; default %(default)s)",
    )
    parser.add_argument(
        "--retention",
        type=int,
        default=_env_int("CHAT_RETENTION", defaults.retention),
        help="messages the history keeps (env CHAT_RETENTION; default %(default)s)",
    )
    parser.add_argument(
        "--max-age",
        type=float,
        default=float(os.environ.get("CHAT_MAX_AGE") or 0) or None,
        help="seconds a message is kept at most, none if unset (env CHAT_MAX_AGE)",
    )
    parser.add_argument(
        "--replay-limit",
        type=int,
        default=_env_int("CHAT_REPLAY_LIMIT", defaults.replay_limit),
        help="most missed messages replayed to a reconnecting client (env CHAT_REPLAY_LIMIT; default %(default)s)",
    )
    parser.add_argument(
        "--max-clients",
        type=int,
        default=_env_int("CHAT_MAX_CLIENTS", defaults.max_clients),
        help="most simultaneous connections; more get a server_full error (env CHAT_MAX_CLIENTS; default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("CHAT_LOG_LEVEL") or "INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much to log to stderr (env CHAT_LOG_LEVEL; default %(default)s)",
    )
    return parser


def server_main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; returns the exit status."""
    args = server_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServerConfig(
        max_line=args.max_line,
        history=args.history,
        max_backlog=args.max_backlog,
        ping_interval=args.ping_interval,
        idle_timeout=args.idle_timeout,
        db=args.db,
        retention=args.retention,
        max_age=args.max_age,
        replay_limit=args.replay_limit,
        max_clients=args.max_clients,
    )
    # Thousands of connections: one file each, and one thread each with a small stack.
    open_files = raise_open_file_limit()
    threading.stack_size(HANDLER_STACK)
    log.info("open-file limit %d: room for about %d connections", open_files, max(0, open_files - 32))
    if config.db != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(config.db)), exist_ok=True)
    try:
        server = ChatServer((args.host, args.port), config)
    except StoreError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, exc.strerror or exc)
        return 1
    log.info("history in %s (keeping %d messages)", config.db, config.retention)

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s received", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    serving = threading.Thread(target=server.serve_forever, name="chat-serve")
    serving.start()
    host, port = server.server_address[:2]
    log.info("listening on %s:%s", host, port)
    try:
        while not stop_requested.wait(1.0):
            pass
    finally:
        server.stop()
        serving.join()
    return 0


def client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-client",
        description="Join a chat room from the terminal. Type /help once inside.",
    )
    add_address_arguments(parser)
    parser.add_argument(
        "--name",
        default=os.environ.get("CHAT_NAME") or None,
        help="your name in the room (env CHAT_NAME; asked for when not given)",
    )
    return parser


def client_main(argv: Sequence[str] | None = None) -> int:
    """Run the terminal client; returns the exit status."""
    # Imported here so that the server never loads prompt_toolkit.
    import asyncio
    import sys

    from chat.client import ChatClient
    from chat.errors import JoinRefused
    from chat.ui import run_ui

    args = client_parser().parse_args(argv)
    try:
        name = args.name or _ask_name()
    except (EOFError, KeyboardInterrupt):
        return 1

    async def chat() -> int:
        client = ChatClient(args.host, args.port, name)
        try:
            await client.connect()
        except OSError as exc:
            print(f"cannot connect to {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        except JoinRefused as exc:
            print(f"cannot join: {exc.detail}", file=sys.stderr)
            return 1
        await run_ui(client)
        return 0

    try:
        return asyncio.run(chat())
    except KeyboardInterrupt:
        return 130


def _ask_name() -> str:
    from prompt_toolkit import prompt

    while not (name := prompt("your name: ").strip()):
        pass
    return name
