"""Command lines of the server and the client: arguments, logging and signals.

The only place that reads the environment or installs signal handlers; all
the work happens in chat.server.tcp and chat.client.connection.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from chat.server.store import StoreError
from chat.server.tcp import ChatServer, ServerConfig

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


def state_dir() -> str:
    """Where chat keeps its files: ~/.local/state/chat, or under $XDG_STATE_HOME."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "chat")


def _option(
    parser: argparse.ArgumentParser, flag: str, env: str, kind: Callable[[str], Any], default: Any, text: str
) -> None:
    """A flag whose default an environment variable may change."""
    raw = os.environ.get(env)
    if raw:
        try:
            default = kind(raw)
        except ValueError:
            raise SystemExit(f"{env}={raw!r} is not valid for {flag}") from None
    parser.add_argument(flag, type=kind, default=default, help=f"{text} (env {env}; default %(default)s)")


def add_address_arguments(parser: argparse.ArgumentParser) -> None:
    """--host and --port, shared by the server and the client."""
    _option(parser, "--host", "CHAT_HOST", str, DEFAULT_HOST, "address to use")
    _option(parser, "--port", "CHAT_PORT", int, DEFAULT_PORT, "TCP port; 0 lets the system pick a free one")


def server_parser() -> argparse.ArgumentParser:
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(
        prog="chat-server",
        description="Run a chat room. Clients speak one JSON object per line; see protocol.md.",
    )
    add_address_arguments(parser)
    for flag, env, kind, default, text in [
        ("--history", "CHAT_HISTORY", int, defaults.history, "recent messages shown to a newcomer"),
        ("--max-line", "CHAT_MAX_LINE", int, defaults.max_line, "longest line in bytes; a longer one disconnects"),
        ("--max-backlog", "CHAT_MAX_BACKLOG", int, defaults.max_backlog, "bytes queued for a non-reading client"),
        ("--ping-interval", "CHAT_PING_INTERVAL", float, defaults.ping_interval, "seconds of silence before a ping"),
        (
            "--idle-timeout",
            "CHAT_IDLE_TIMEOUT",
            float,
            defaults.idle_timeout,
            "seconds of silence before a client is disconnected, 0 for never",
        ),
        (
            "--db",
            "CHAT_DB",
            str,
            os.path.join(state_dir(), "chat.db"),
            "SQLite file that keeps the history, or :memory: to keep none",
        ),
        ("--retention", "CHAT_RETENTION", int, defaults.retention, "messages the history keeps"),
        ("--max-age", "CHAT_MAX_AGE", float, None, "seconds a message is kept at most"),
        ("--replay-limit", "CHAT_REPLAY_LIMIT", int, defaults.replay_limit, "most missed messages replayed on resume"),
        ("--max-clients", "CHAT_MAX_CLIENTS", int, defaults.max_clients, "most connections; more get server_full"),
    ]:
        _option(parser, flag, env, kind, default, text)
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
    _option(parser, "--name", "CHAT_NAME", str, None, "your name in the room; asked for when not given")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="show the recent history, not everything said since you last left",
    )
    return parser


def client_main(argv: Sequence[str] | None = None) -> int:
    """Run the terminal client; returns the exit status."""
    # Imported here so that the server never loads prompt_toolkit.
    import asyncio
    import sys

    from chat.client import cursors
    from chat.client.connection import ChatClient
    from chat.client.ui import run_ui
    from chat.errors import JoinRefused

    args = client_parser().parse_args(argv)
    try:
        name = args.name or _ask_name()
    except (EOFError, KeyboardInterrupt):
        return 1

    cursor_file = Path(state_dir()) / "client-cursors.json"

    async def chat() -> int:
        since = None if args.fresh else cursors.load(cursor_file, args.host, args.port, name)
        client = ChatClient(args.host, args.port, name, since=since)
        try:
            await client.connect()
        except OSError as exc:
            print(f"cannot connect to {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        except JoinRefused as exc:
            print(f"cannot join: {exc.detail}", file=sys.stderr)
            return 1
        try:
            await run_ui(client)
        finally:
            cursors.save(cursor_file, args.host, args.port, client.name, client.last_id)
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
