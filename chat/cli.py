"""Command lines of the server and the client: arguments, logging and signals.

The only place that reads the environment or installs signal handlers; all
the work happens in chat.server.tcp and chat.client.connection.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import resource
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import chat
from chat.paths import state_dir
from chat.server import config_file, logs, preflight, reload
from chat.server.config import DEFAULT_HOST, DEFAULT_PORT, Option, ServerConfig, options
from chat.server.metrics import MetricsPortError
from chat.server.store import StoreError
from chat.server.tcp import ChatServer

if TYPE_CHECKING:  # the client's modules, loaded only by the client (the server never needs prompt_toolkit)
    from prompt_toolkit import PromptSession

    from chat.client.connection import ChatClient
    from chat.client.settings import Settings

log = logging.getLogger("chat")

#: Stack size of handler threads; they only read lines and call the hub.
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


#: The client's flags, read the same way as the server's.
CLIENT_OPTIONS = (
    ("host", Option("--host", "CHAT_HOST", "server address", str), DEFAULT_HOST),
    ("port", Option("--port", "CHAT_PORT", "server TCP port", int), DEFAULT_PORT),
    ("name", Option("--name", "CHAT_NAME", "your name on the server; asked for when not given", str), None),
    (
        "also",
        Option(
            "--also",
            "CHAT_ALSO",
            "another server HOST:PORT sharing the same rooms, tried in turn when one cannot be reached; repeatable",
            lambda text: (text,),  # split at commas below, with the flags
        ),
        (),
    ),
)


def _add_option(parser: argparse.ArgumentParser, dest: str, option: Option, default: Any) -> None:
    """One flag of an option table; its environment variable, parsed like the flag, sets the default."""
    raw = os.environ.get(option.env)
    if raw:
        try:
            default = option.parse(raw)
        except ValueError:
            raise SystemExit(f"{option.env}={raw!r} is not valid for {option.flag}") from None
        if option.choices and default not in option.choices:
            raise SystemExit(f"{option.env}={raw!r} is not one of {', '.join(option.choices)}")
    if isinstance(default, tuple):  # repeatable: --admin alice --admin bob (the environment: alice,bob)
        parser.add_argument(
            option.flag,
            dest=dest,
            action="append",
            default=None,
            help=f"{option.help} (env {option.env}; default {','.join(default) or 'none'})",
        )
        parser.set_defaults(**{f"{dest}_default": default})
        return
    if isinstance(default, bool):  # a switch: --require-account, or --no-require-account to undo the env
        parser.add_argument(
            option.flag,
            dest=dest,
            action=argparse.BooleanOptionalAction,
            default=default,
            help=f"{option.help} (env {option.env}=1; default %(default)s)",
        )
        return
    parser.add_argument(
        option.flag,
        dest=dest,
        type=option.parse,
        default=default,
        choices=option.choices,
        help=f"{option.help} (env {option.env}" + ("; default %(default)s)" if default is not None else ")"),
    )


#: The environment variable that names the configuration file, as --config does.
CONFIG_ENV = "CHAT_CONFIG"
#: The flags that are not options of the table: which file, and what to do instead of serving.
_COMMANDS = ("config", "print_config", "check_config")


def server_parser(from_file: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
    """The server's flags, one per row of ServerConfig's option table; `from_file` (the
    configuration file's values) replaces the defaults, and the environment replaces those."""
    parser = argparse.ArgumentParser(
        prog="chat-server",
        description="Run a chat server. Clients speak one JSON object per line; see protocol.md.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"read options from this TOML file, one key per option below (env {CONFIG_ENV}); "
        "flags and the environment win over it",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the configuration these options make, as TOML, and exit"
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="check the configuration as a start would (files, certificate, history file, Redis, ports) and exit: "
        "0, or 2 with one line per problem",
    )
    for name, option, default in options():
        _add_option(parser, name, option, (from_file or {}).get(name, default))
    return parser


def server_config(argv: Sequence[str] | None = None) -> tuple[ServerConfig, argparse.Namespace]:
    """The configuration the command line, the environment and the configuration file make
    (in that order of precedence), and the parsed arguments. SystemExit(2) with one line if
    the file is unusable."""
    try:
        return read_server_config(argv)
    except config_file.ConfigFileError as exc:
        print(f"chat-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def read_server_config(argv: Sequence[str] | None = None) -> tuple[ServerConfig, argparse.Namespace]:
    """server_config(), raising ConfigFileError: for a reload, which keeps what runs instead."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config")
    path = first.parse_known_args(argv)[0].config or os.environ.get(CONFIG_ENV)
    from_file = config_file.read(path) if path else {}
    args = server_parser(from_file).parse_args(argv)
    values = {key: value for key, value in vars(args).items() if key not in _COMMANDS}
    for name in [key for key in values if key.endswith("_default")]:  # repeatable options: flags, else the default
        default = values.pop(name)
        given = values[name.removesuffix("_default")]
        values[name.removesuffix("_default")] = tuple(given) if given is not None else default
    return ServerConfig(**values), args


def server_main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; returns the exit status."""
    config, args = server_config(argv)
    if args.print_config:
        print(config_file.dump(config), end="")
        return 0
    if args.check_config:
        found = preflight.problems(config)
        for problem in found:
            print(f"chat-server: {problem}", file=sys.stderr)
        if not found:
            print("chat-server: the configuration is good")
        return 2 if found else 0
    logs.configure(config.log_level, config.log_format)
    # Thousands of connections: one file each, and one thread each with a small stack.
    open_files = raise_open_file_limit()
    threading.stack_size(HANDLER_STACK)
    log.info("open-file limit %d: room for about %d connections", open_files, max(0, open_files - 32))
    try:
        server = ChatServer(config)
    except (StoreError, MetricsPortError) as exc:
        log.error("%s", exc.strerror if isinstance(exc, OSError) else exc)
        return 1
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc.strerror or exc)
        return 1
    if config.redis:
        where = config.redis.split("@")[-1]  # no password in the log
        log.info("rooms shared through Redis at %s (keeping %d messages per room); the rest in %s",
                 where, config.retention, config.db)
    else:
        log.info("history in %s (keeping %d messages per room)", config.db, config.retention)

    # The handlers do nothing in Python: the C-level handler writes each signal's number to
    # `wakeup`, and this thread reads it below and acts. A handler that logged or set an Event
    # could re-enter a lock the interrupted main thread holds (SIGINT and SIGTERM together could).
    wakeup, wakeup_writer = socket.socketpair()
    wakeup_writer.setblocking(False)  # set_wakeup_fd requires it; a full socket loses only repeats
    signal.set_wakeup_fd(wakeup_writer.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, _note_signal)
    signal.signal(signal.SIGTERM, _note_signal)
    # SIGHUP reads the configuration again (a service manager's reload, a renewed certificate)
    # without dropping anybody; to stop with a closing terminal, there is Ctrl-C.
    signal.signal(signal.SIGHUP, _note_signal)
    serving = threading.Thread(target=server.serve_forever, name="chat-serve")
    serving.start()
    host, port = server.server_address[:2]
    log.info("chat %s, %s", chat.__version__, chat.BUILD.describe())
    log.info("listening on %s:%s", host, port)
    plain = [str(host)] if server.tls_context is None else []
    if server.metrics is not None:
        log.info("metrics on http://%s:%s/metrics (and /healthz, /readyz)", *_url_host(*server.metrics.address))
    if server.plain_address is not None:
        log.info("plain lines (no TLS) on %s:%s", *server.plain_address)
        plain.append(server.plain_address[0])
    for listener, shown in (("irc", "IRC"), ("irc-tls", "IRC over TLS")):
        if (address := server.address_of(listener)) is not None:
            log.info("%s listening on %s:%s", shown, *address)
            if listener == "irc":
                plain.append(address[0])
    if server.web_address is not None:
        log.info("web listening on %s:%s", *_url_host(*server.web_address))
        if server.tls_context is None:
            plain.append(server.web_address[0])
    if any(not ipaddress.ip_address(address.split("%", 1)[0]).is_loopback for address in plain):
        log.warning("listening beyond loopback without TLS: names and messages cross the network in clear")
    notify_systemd(f"READY=1\nSTATUS=listening on {host!s}:{port}")
    try:
        _serve_until_stopped(wakeup, server, lambda: _reload(server, argv))
    finally:
        server.stop()
        serving.join()
        # Later signals still find the no-op handlers: the server stops only once.
        signal.set_wakeup_fd(-1)
        wakeup.close()
        wakeup_writer.close()
    return 0


def _url_host(host: str, port: int) -> tuple[str, int]:
    return (f"[{host}]" if ":" in host else host), port


def _note_signal(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler of the server's signals: nothing, on purpose (see server_main).

    It runs on the main thread between any two bytecodes, maybe inside a lock that thread
    holds; the signal's number has already reached the wakeup socket, so there is nothing
    left to do here, and nothing here may take a lock.
    """


def notify_systemd(state: str) -> bool:
    """Tell the service manager how the server is (sd_notify: READY=1, RELOADING=1, STOPPING=1)
    through the datagram socket in $NOTIFY_SOCKET; False when there is none (not a Type=notify
    unit). A failure is logged, never fatal: the server serves either way."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # @: the abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError as exc:
            log.warning("could not tell the service manager %s: %s", state.split("\n", 1)[0], exc)
            return False
    return True


def _reload(server: ChatServer, argv: Sequence[str] | None) -> None:
    """SIGHUP: the same flags, the environment and the configuration file read again, and
    applied as far as a running server can take them (chat.server.reload says what it did)."""
    notify_systemd(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    try:
        config, _ = read_server_config(argv)
    except config_file.ConfigFileError as exc:
        log.error("SIGHUP: kept the running configuration: %s", exc)
    else:
        reload.apply(server, config)
    notify_systemd("READY=1")


def _serve_until_stopped(wakeup: socket.socket, server: ChatServer, on_hangup: Callable[[], None]) -> None:
    """On the main thread: read the signals' numbers from `wakeup` and act on each, here where
    logging and locks are safe; return at the first SIGINT or SIGTERM."""
    while True:
        numbers = wakeup.recv(64)
        if not numbers:  # our own socket, closed only after this returns
            log.error("the signal socket closed; stopping")
            return
        for number in numbers:
            if number == signal.SIGHUP:
                log.info("SIGHUP received: reading the configuration again")
                on_hangup()
                continue
            log.info("%s received", signal.Signals(number).name)
            notify_systemd("STOPPING=1")
            return


def client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-client",
        description="Join a chat room from the terminal. Type /help once inside.",
    )
    for name, option, default in CLIENT_OPTIONS:
        _add_option(parser, name, option, default)
    parser.add_argument(
        "--room",
        action="append",
        metavar="ROOM",
        help="a room to join at start (repeatable; default: the rooms you were in last time, or lobby)",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS, checking the server's certificate")
    parser.add_argument(
        "--tls-ca", metavar="FILE", help="with TLS: trust the authority in FILE (PEM), not the system's; implies --tls"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="with TLS: do not check the certificate (anyone between you and the server can read along)",
    )
    parser.add_argument(
        "--password-env",
        metavar="VAR",
        help="log in with the password in this environment variable (for bots; people are asked)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="show the recent history, not everything said since you last left",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="one line per event above a prompt, not the full screen (for screen readers, pipes and "
        "scripts; also what you get when input or output is not a terminal)",
    )
    parser.add_argument(
        "--no-mouse",
        dest="mouse",
        action="store_false",
        help="full screen: leave the mouse to the terminal (select text without Shift); the wheel no longer scrolls",
    )
    parser.add_argument(
        "--no-bell",
        dest="bell",
        action="store_false",
        help="do not ring the terminal's bell when you are mentioned or sent a private message",
    )
    parser.add_argument(
        "--log-dir",
        metavar="DIR",
        help="keep a plain-text log per buffer in DIR (ROOM.log, @NAME.log), appended as lines arrive "
        "(default: the log_dir setting; none)",
    )
    return parser


def _host_port(text: str) -> tuple[str, int]:
    """`host:port` or `[v6 address]:port`, as --also takes it."""
    host, colon, port = text.strip().rpartition(":")
    if not colon or not port.isdigit() or not host:
        raise SystemExit(f"--also {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def client_main(argv: Sequence[str] | None = None) -> int:
    """Run the terminal client; returns the exit status."""
    # Imported here so that the server never loads prompt_toolkit.
    import asyncio
    import sys

    from chat.client import cursors, settings
    from chat.client.connection import ChatClient, failure_in_words
    from chat.errors import JoinRefused

    args = client_parser().parse_args(argv)
    settings_path = settings.config_path()
    chosen, problem = settings.load(settings_path)
    if problem:
        print(problem, file=sys.stderr)  # one sentence, and the defaults: never a reason not to start
    if args.log_dir is not None:
        chosen.log_dir = args.log_dir
    # A person at a terminal is asked again; a script or a pipe gets one sentence and a status.
    interactive = sys.stdin.isatty()

    cursor_file = Path(state_dir()) / "client-cursors.json"

    tls = _client_tls(args.tls, args.tls_ca, args.insecure)
    also = [_host_port(part) for text in (args.also or args.also_default) for part in text.split(",") if part]
    # A bot's password comes from the environment; a person's is asked for if the name needs it.
    password = os.environ.get(args.password_env) if args.password_env else None

    async def chat() -> int:
        nonlocal password
        try:
            name = await _usable_name(args.name, interactive)
        except (EOFError, KeyboardInterrupt):
            return 1
        if name is None:
            return 2
        waits = _retry_delays()
        place = cursors.load(cursor_file, args.host, args.port, name) or cursors.Place()
        rooms = args.room or list(place.rooms) or ["lobby"]
        while True:
            client = ChatClient(
                args.host,
                args.port,
                name,
                also=also,
                rooms=rooms,
                cursors=None if args.fresh else place.rooms,
                private_since=None if args.fresh else place.private,
                token=place.token,
                password=password,
                conversations=place.conversations,
                tls=tls,
            )
            try:
                await client.connect()
                break
            except ssl.SSLCertVerificationError as exc:
                print(
                    f"cannot connect: the server's certificate is not trusted ({exc.verify_message}); "
                    "--tls-ca FILE trusts another authority",
                    file=sys.stderr,
                )
                return 1
            except ssl.SSLError as exc:
                print(f"cannot connect: TLS failed ({exc.reason or exc}); is that port speaking TLS?", file=sys.stderr)
                return 1
            except OSError as exc:
                where = " or ".join(f"{host}:{port}" for host, port in [(args.host, args.port), *also])
                if not interactive:
                    print(f"cannot connect to {where}: {failure_in_words(exc)}", file=sys.stderr)
                    return 1
                await _count_down(f"cannot connect to {where}: {failure_in_words(exc)}", next(waits))
                continue
            except JoinRefused as exc:
                why = exc.detail
                if exc.code == "name_taken":  # a connection of ours would have been replaced: say so
                    why += (" (somebody else holds it: this machine has no session of that name that proves"
                            " it is you; a dead connection of yours frees it at the server's idle timeout)")
                print(f"cannot join: {why}", file=sys.stderr)
                if exc.code in ("name_taken", "name_reserved") and interactive:
                    try:
                        another = await _usable_name(None, True, "try another name: ")
                    except (EOFError, KeyboardInterrupt):
                        return 1
                    name = another or name
                    continue
                if exc.code not in ("name_registered", "auth_failed") or not interactive:
                    return 1
                try:
                    password = await _ask_password(name)
                except (EOFError, KeyboardInterrupt):
                    return 1
        started_as = name

        def remember() -> None:
            # The rooms it is in now, each with its cursor: the next start rejoins and resumes them.
            place = cursors.Place(
                client.cursors(), client.private.last_id, client.token, list(client.conversations.values())
            )
            cursors.save(cursor_file, args.host, args.port, client.name, place, aliases=[started_as])

        history = Path(state_dir()) / "client-history"
        full_screen = not args.plain and interactive and sys.stdout.isatty()
        return await _chat_until_done(client, history, remember, bell=args.bell, full_screen=full_screen,
                                      mouse=args.mouse, settings=chosen, settings_path=settings_path)

    try:
        return asyncio.run(chat())
    except KeyboardInterrupt:
        return 130


#: How often, at most, the client writes down where it is while messages arrive.
SAVE_EVERY = 2.0


async def _chat_until_done(
    client: ChatClient,
    history_file: Path,
    remember: Callable[[], None],
    bell: bool = True,
    full_screen: bool = False,
    mouse: bool = True,
    settings: Settings | None = None,
    settings_path: Path | None = None,
) -> int:
    """Run the chat, full-screen or in plain lines; where it is is saved as messages arrive, and when
    it ends however it ends: quitting, or the terminal closed (SIGHUP) or the process told to stop
    (SIGTERM)."""
    import asyncio

    from chat.client.ignored import Ignored
    from chat.client.inputline import remembered_history
    from chat.client.screen import run_screen
    from chat.client.ui import make_session, run_ui

    loop = asyncio.get_running_loop()
    ignored = Ignored(Path(state_dir()) / "client-ignored.json")
    if full_screen:
        history = remembered_history(history_file)
        chatting = asyncio.create_task(run_screen(client, history, bell=bell, ignored=ignored, mouse=mouse,
                                                  settings=settings, settings_path=settings_path))
    else:
        session = make_session(client, history_file)
        chatting = asyncio.create_task(run_ui(client, session, bell=bell, ignored=ignored, settings=settings,
                                              settings_path=settings_path))
    stopped_by: list[int] = []

    def stop(signum: int) -> None:
        stopped_by.append(signum)
        chatting.cancel()

    for signum in (signal.SIGHUP, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)

    async def keep_saving() -> None:
        saved = None
        while True:
            await asyncio.sleep(SAVE_EVERY)
            now = (client.cursors(), client.private.last_id, client.token, client.name, tuple(client.conversations))
            if now != saved:
                remember()
                saved = now

    saving = asyncio.create_task(keep_saving())
    try:
        await chatting
    except asyncio.CancelledError:
        if not stopped_by:
            raise
    finally:
        saving.cancel()
        for signum in (signal.SIGHUP, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        remember()
    return 128 + stopped_by[0] if stopped_by else 0


def _client_tls(wanted: bool, ca_file: str | None, insecure: bool) -> ssl.SSLContext | None:
    """The TLS settings the flags ask for: the system's authorities, another one, or none checked."""
    if not (wanted or ca_file or insecure):
        return None
    context = ssl.create_default_context(cafile=ca_file)
    if insecure:
        print("warning: --insecure: the server's certificate is not checked", file=sys.stderr)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _ask_password(name: str) -> str:
    from prompt_toolkit import PromptSession

    session: PromptSession[str] = PromptSession()
    while not (password := await session.prompt_async(f"password for {name}: ", is_password=True)):
        pass
    return password


async def _usable_name(name: str | None, interactive: bool, question: str = "your name: ") -> str | None:
    """`name`, or one asked for, that the server's rules allow; None (after saying why) if it is
    not allowed and nobody can be asked."""
    from prompt_toolkit import PromptSession

    session: PromptSession[str] | None = None  # made only to ask: it warns when there is no terminal
    while True:
        if name is None:
            session = session or PromptSession()
            while not (name := (await session.prompt_async(question)).strip()):
                pass
        problem = name_problem(name)
        if problem is None:
            return name
        print(f"{problem}: {name!r}", file=sys.stderr)
        if not interactive:
            return None
        name = None


def name_problem(name: str) -> str | None:
    """Why the server would refuse `name`, in one sentence (the protocol's own rules), or None."""
    from pydantic import ValidationError

    from chat.wire.protocol import Join

    try:
        Join(name=name)
    except ValidationError as exc:
        return str(exc.errors(include_url=False)[0]["msg"])
    return None


def _retry_delays() -> Iterator[int]:
    """Seconds to wait between attempts to reach a server that is down: 1, 2, 4 ... then every 30."""
    delay = 1
    while True:
        yield delay
        delay = min(30, delay * 2)


async def _count_down(why: str, seconds: int) -> None:
    """Say why, then count down to the next attempt on one line; Ctrl-C gives up."""
    import asyncio
    import shutil

    width = shutil.get_terminal_size().columns - 1  # one line, rewritten in place: never wrapped
    for left in range(seconds, 0, -1):
        line = f"{why}; again in {left} s (Ctrl-C gives up)"
        print(f"\r{line[:width]:<{width}}", end="", file=sys.stderr, flush=True)
        await asyncio.sleep(1)
    print("\r" + " " * width + "\r", end="", file=sys.stderr, flush=True)
