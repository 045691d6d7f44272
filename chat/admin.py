"""chat-admin: what an operator does to a server's data from a shell, while the server runs:
`backup OUT` (a consistent copy of the history file) and `export ROOM` (its history as JSON lines).

Owns the command line of these tools and nothing of the server: each subcommand is one entry of
COMMANDS (its arguments and the function that does it), so that later groups (`accounts add`)
slot in beside them. Problems are one line on stderr and exit status 1 (2: bad usage).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from chat.server.config import default_db
from chat.server.store import StoreError
from chat.server.store.sqlite import backup_file, read_log
from chat.wire.protocol import room_key


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, a line of help, how to add its arguments, and what it does."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _backup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="the copy to write: a new file (an existing one is never replaced)")


def backup(args: argparse.Namespace) -> int:
    """A copy of the history file as of one moment, taken while the server writes it."""
    backup_file(args.db, args.out)
    print(f"backed up {args.db} to {args.out}")
    if args.redis:
        print("note: with --redis, history lives in Redis; back it up there (its AOF or RDB file)", file=sys.stderr)
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room", metavar="ROOM", help="the room whose history to print")
    parser.add_argument("--since", metavar="ID", type=int, default=0, help="only lines after this id")


def export(args: argparse.Namespace) -> int:
    """A room's kept history, oldest first, one JSON object per line (as the protocol sends it):
    from the SQLite file, or with --redis from the room's stream in Redis."""
    key = room_key(args.room)
    lines = _redis_log(args.redis, key, args.since) if args.redis else read_log(args.db, key, args.since)
    out = sys.stdout.buffer
    for line in lines:
        out.write(line if line.endswith(b"\n") else line + b"\n")
    out.flush()
    return 0


def _redis_log(url: str, key: str, since: int, batch: int = 1000) -> Iterator[bytes]:
    """The numbered lines of the room `key`'s stream after id `since`, oldest first (the
    notices between them, such as joins, are not history); StoreError if Redis cannot say."""
    try:
        import redis

        from chat.server.redis import keys
    except ImportError as exc:
        raise StoreError(f"--redis needs the redis package: pip install 'chat[redis]' ({exc})") from exc
    where = url.split("@")[-1]  # no password in a message
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
    stream, start = keys.log(key), f"{since + 1}-0"
    try:
        if not client.exists(stream):
            raise StoreError(f"Redis at {where} has no history of the room {key!r}")
        while True:
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream, start, "+", count=batch))
            for entry, fields in entries:
                if entry.endswith(b"-0"):  # a numbered line: `<id>-0`
                    yield fields[b"l"]
            if len(entries) < batch:
                return
            start = "(" + entries[-1][0].decode()
    except redis.RedisError as exc:
        raise StoreError(f"cannot read Redis at {where}: {exc}") from exc
    finally:
        client.close()


COMMANDS = (
    Command("backup", "copy the history file while the server runs (SQLite's online backup)", _backup_arguments,
            backup),
    Command("export", "print a room's history as JSON lines", _export_arguments, export),
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="chat-admin", description="Look after a chat server's data while it runs.")
    main.add_argument(
        "--db",
        metavar="FILE",
        default=os.environ.get("CHAT_DB") or default_db(),
        help="the server's history file (env CHAT_DB; default %(default)s)",
    )
    main.add_argument(
        "--redis", metavar="URL", default=os.environ.get("CHAT_REDIS"), help="the servers' Redis, if they share one"
    )
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        command.arguments(sub)
        sub.set_defaults(run=command.run)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.db == ":memory:":
        print("chat-admin: --db :memory: keeps nothing to back up or export; give the server's file", file=sys.stderr)
        return 1
    try:
        status: int = args.run(args)
    except StoreError as exc:
        print(f"chat-admin: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `export ... | head`: the reader had enough
        sys.stderr.close()
        return 0
    return status


if __name__ == "__main__":
    raise SystemExit(main())
