"""chat-admin: what an operator does to a server's data from a shell, while the server runs:
`backup OUT` (a consistent copy of the history file), `export ROOM` (its history as JSON lines)
and `accounts add|passwd|delete|list` (the accounts, in the history file or with --redis in Redis).

Owns the command line of these tools and nothing of the server: each subcommand is one entry of
COMMANDS (its arguments and the function that does it), so that later groups (`accounts add`)
slot in beside them. Problems are one line on stderr and exit status 1 (2: bad usage).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from pydantic import TypeAdapter, ValidationError

from chat.server.accounts import account_identity, legacy_name_key, password_hasher
from chat.server.config import default_db
from chat.server.store import AccountRecord, AccountStore, SqliteStore, StoreError
from chat.server.store.sqlite import backup_file, read_log
from chat.wire.protocol import MAX_PASSWORD, MIN_PASSWORD, Name, room_key
from chat.wire.text import name_key


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


def _accounts_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help in (
        ("add", "create an account (an --admin name's account lifts its reservation)"),
        ("passwd", "give an account a new password: every token revoked, every session ended"),
        ("delete", "delete an account, its tokens, rooms and read markers; its sessions end"),
        ("list", "list the accounts: name and when created"),
    ):
        sub = actions.add_parser(action, help=help, description=help)
        if action != "list":
            sub.add_argument("name", metavar="NAME", help="the account's name (or a look-alike of it)")
        if action in ("add", "passwd"):
            sub.add_argument(
                "--password-env", metavar="VAR", help="take the password from this environment variable "
                "(else it is asked twice, without echo)"
            )


def accounts(args: argparse.Namespace) -> int:
    """Accounts in the server's store, while the server runs: it ends the sessions of an account
    deleted or given a new password within a second or so."""
    with _account_store(args) as store:
        if args.action == "list":
            for record in store.accounts():
                created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.created_at))
                print(f"{record.name}\t{created}")
            return 0
        try:
            name = TypeAdapter(Name).validate_python(args.name)
        except ValidationError as exc:
            print(f"chat-admin: {args.name!r} cannot be a name: {exc.errors()[0]['msg']}", file=sys.stderr)
            return 2
        found = store.account(name_key(name)) or store.account(legacy_name_key(name))
        if args.action == "add":
            if found is not None:
                print(f"chat-admin: {found.name} is registered already", file=sys.stderr)
                return 1
            store.save_account(AccountRecord(name_key(name), name, _password_hash(args), time.time()))
            print(f"account {name} created")
            return 0
        if found is None:
            print(f"chat-admin: there is no account called {name}", file=sys.stderr)
            return 1
        if args.action == "passwd":
            store.save_account(AccountRecord(found.key, found.name, _password_hash(args)))
            store.drop_sessions(account_identity(found.key))
            print(f"new password for {found.name}; its tokens are revoked and its sessions end")
        else:
            store.drop_account(found.key)
            print(f"account {found.name} deleted")
        return 0


def _password_hash(args: argparse.Namespace) -> str:
    """The Argon2 hash of the password from --password-env, or asked twice without echo."""
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            raise StoreError(f"the environment variable {args.password_env} is not set")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise StoreError("the two passwords differ; nothing changed")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise StoreError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters; nothing changed")
    return password_hasher().hash(password)


@contextlib.contextmanager
def _account_store(args: argparse.Namespace) -> Iterator[AccountStore]:
    """Where the servers keep their accounts: Redis (--redis), else the history file."""
    if args.redis:
        try:
            import redis

            from chat.server.redis.records import SharedAccounts
        except ImportError as exc:
            raise StoreError(f"--redis needs the redis package: pip install 'chat[redis]' ({exc})") from exc
        client = redis.Redis.from_url(args.redis, socket_timeout=10, socket_connect_timeout=10)
        try:
            yield SharedAccounts(client)
        finally:
            client.close()
        return
    if args.action != "add" and not os.path.exists(args.db):  # only `add` may make the file (before a first start)
        raise StoreError(f"there is no history file at {args.db}: give the server's --db")
    store = SqliteStore(args.db, keep_marks=False)
    try:
        yield store
    finally:
        store.close()


COMMANDS = (
    Command("backup", "copy the history file while the server runs (SQLite's online backup)", _backup_arguments,
            backup),
    Command("export", "print a room's history as JSON lines", _export_arguments, export),
    Command("accounts", "add, passwd, delete or list accounts", _accounts_arguments, accounts),
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
    if args.db == ":memory:" and not (args.command == "accounts" and args.redis):
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
