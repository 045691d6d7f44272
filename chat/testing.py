"""Pytest fixtures that run a real chat server, for this project and for bots.

Installed as a pytest plugin (entry point `chat`), so any project that depends
on chat gets `chat_server`, `start_chat_server`, `connect` and
`chat_server_process`. Only pytest imports this module; `import chat` does not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

from chat.errors import ConnectionClosed
from chat.server.config import ServerConfig
from chat.server.tcp import ChatServer
from chat.wire.codec import decode_server
from chat.wire.protocol import ChatMessage, ServerMessage, ServerPong, Welcome


def _time_factor() -> float:
    """CHAT_TEST_TIME_FACTOR, checked: how many times slower than usual this machine may be."""
    raw = os.environ.get("CHAT_TEST_TIME_FACTOR", "").strip()
    if not raw:
        return 1.0
    try:
        factor = float(raw)
    except ValueError:
        factor = math.nan
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"CHAT_TEST_TIME_FACTOR={raw!r}: expected a positive number, such as 3")
    return factor


#: Every wait in the tests is multiplied by this (the environment's CHAT_TEST_TIME_FACTOR,
#: default 1): a slow or loaded machine sets it above 1 instead of the tests failing there.
TIME_FACTOR = _time_factor()


def scaled(seconds: float) -> float:
    """`seconds` on this machine: times CHAT_TEST_TIME_FACTOR. For a test's waits, and for a
    server timer that a test must beat (a deadline its own client has to act within)."""
    return seconds * TIME_FACTOR


#: Seconds any single wait in a test may take before it fails.
TIMEOUT = scaled(10.0)

M = TypeVar("M", bound=BaseModel)


def restartable_port(host: str = "127.0.0.1") -> int:
    """A free TCP port below the kernel's ephemeral range, for a test that stops a server and
    starts it again on the same port. A port handed out for port 0 goes back to the kernel's
    pool while the server is down, and any process's bind(0) may take it in that gap; nothing
    hands out a port below the range unasked."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = list(range(max(1024, low - 12000), low))
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port below {low} on {host}")


class RecordingChatServer(ChatServer):
    """A ChatServer that keeps every handler crash, so a test can fail on it."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.errors: list[BaseException] = []
        super().__init__(config)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.errors.append(sys.exc_info()[1] or RuntimeError("unknown handler error"))
        super().handle_error(request, client_address)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return str(host), int(port)


class LineClient:
    """A raw protocol client over a real socket, with a timeout on every read."""

    def __init__(
        self, address: tuple[str, int], timeout: float = TIMEOUT, tls: ssl.SSLContext | None = None
    ) -> None:
        sock = socket.create_connection(address, timeout=timeout)
        self.sock = tls.wrap_socket(sock, server_hostname=address[0]) if tls is not None else sock
        self._buffer = bytearray()
        self.seen: list[ServerMessage] = []

    def send(self, message: dict[str, Any] | BaseModel) -> None:
        """Send one message as a JSON line."""
        if isinstance(message, BaseModel):
            data = message.model_dump_json()
        else:
            data = json.dumps(message)
        self.send_raw(data.encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def join(self, name: str) -> Welcome:
        self.send({"type": "join", "name": name})
        return self.expect(Welcome)

    def say(self, msg: str) -> None:
        self.send({"type": "message", "msg": msg})

    def say_all(self, texts: Iterable[str]) -> ChatMessage:
        """Say each text in turn, then wait until the last one comes back (so the
        room has them all); returns that last message as the server numbered it."""
        last = None
        for last in texts:
            self.say(last)
        assert last is not None, "nothing to say"
        return self.expect(ChatMessage, msg=last)

    def read_line(self) -> bytes:
        """The next raw line, newline included; ConnectionClosed at end of stream."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionClosed(f"the server closed the connection; unread bytes: {bytes(self._buffer)!r}")
            self._buffer += chunk

    def next(self) -> ServerMessage:
        """The next message from the server, whatever it is."""
        message = decode_server(self.read_line())
        self.seen.append(message)
        return message

    def expect(self, kind: type[M], **fields: Any) -> M:
        """Skip lines until a `kind` message whose fields match; fail on timeout."""
        skipped: list[ServerMessage] = []
        while True:
            try:
                message = self.next()
            except TimeoutError:
                name = getattr(kind, "__name__", kind)
                raise AssertionError(f"no {name} {fields} arrived; got {skipped}") from None
            if isinstance(message, kind) and all(getattr(message, k) == v for k, v in fields.items()):
                return message
            skipped.append(message)

    def expect_closed(self) -> list[ServerMessage]:
        """Read until the server closes the connection; return what came before."""
        messages: list[ServerMessage] = []
        while True:
            try:
                messages.append(self.next())
            except (ConnectionClosed, ConnectionResetError):
                return messages

    def close(self) -> None:
        self.sock.close()


def talk_at_once(senders: Sequence[LineClient], per_sender: int) -> list[threading.Thread]:
    """Each sender says `per_sender` lines (`"<its number>:<line number>"`), all of them at
    once, each in a thread of its own; the threads, started (join them)."""

    def talk(sender: LineClient, number: int) -> None:
        for line in range(per_sender):
            sender.say(f"{number}:{line}")

    threads = [threading.Thread(target=talk, args=(sender, n)) for n, sender in enumerate(senders)]
    for thread in threads:
        thread.start()
    return threads


def admitted_client(server: RecordingChatServer, timeout: float = TIMEOUT) -> LineClient:
    """A connection the server serves, once it has let go of one that just closed.

    A refusal (server_full, too_many_connections) may still come while the
    closed connection's handler ends; each refused try is closed and retried.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = LineClient(server.address, timeout)
        client.send({"type": "ping"})
        try:
            if isinstance(client.next(), ServerPong):
                return client
        except (ConnectionClosed, ConnectionError, TimeoutError):
            pass
        client.close()
    raise AssertionError(f"the server admitted no connection within {timeout} s")


@pytest.fixture
def start_chat_server() -> Iterator[Callable[..., RecordingChatServer]]:
    """Start real servers on 127.0.0.1 (or `host=`), port 0: `start_chat_server(ServerConfig(...))`.

    Each is stopped at teardown; the test fails if a handler crashed or a
    thread the server started is still alive.
    """
    servers: list[tuple[RecordingChatServer, threading.Thread]] = []
    threads_before = set(threading.enumerate())

    def start(config: ServerConfig | None = None, port: int = 0, host: str = "127.0.0.1") -> RecordingChatServer:
        server = RecordingChatServer(dataclasses.replace(config or ServerConfig(), host=host, port=port))
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, name=f"chat-serve-{server.port}"
        )
        thread.start()
        servers.append((server, thread))
        return server

    try:
        yield start
    finally:
        for server, thread in servers:
            server.stop(TIMEOUT)
            thread.join(TIMEOUT)
        leaked = [
            t
            for t in threading.enumerate()
            if t not in threads_before and (t.name.startswith("chat-") or "process_request" in t.name)
        ]
        assert not leaked, f"threads outlived stop(): {leaked}"
        errors = [error for server, _ in servers for error in server.errors]
        errors += [server.outbox.failure for server, _ in servers if server.outbox.failure]
        assert not errors, f"handler threads crashed: {errors!r}"


@pytest.fixture
def chat_server(start_chat_server: Callable[..., RecordingChatServer]) -> RecordingChatServer:
    """A real server with the default configuration."""
    return start_chat_server()


@pytest.fixture
def connect(chat_server: RecordingChatServer) -> Iterator[Callable[..., LineClient]]:
    """`connect()` opens a LineClient to `chat_server` (or `connect(server)` to another)."""
    clients: list[LineClient] = []

    def open_client(server: RecordingChatServer | None = None, timeout: float = TIMEOUT) -> LineClient:
        client = LineClient((server or chat_server).address, timeout)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


@dataclass
class ServerProcess:
    """A `python -m chat` server in a child process, its log collected line by line."""

    process: subprocess.Popen[str]
    host: str = ""
    port: int = 0
    log: list[str] = field(default_factory=list)
    _listening: threading.Event = field(default_factory=threading.Event)
    _log_changed: threading.Condition = field(default_factory=threading.Condition)
    _log_reader: threading.Thread | None = None

    def _collect_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._log_changed:
                self.log.append(line.rstrip("\n"))
                found = re.search(r"listening on (\S+):(\d+)", line)
                if found and not self._listening.is_set():
                    self.host, self.port = found.group(1), int(found.group(2))
                    self._listening.set()
                self._log_changed.notify_all()

    def wait_for_log(self, pattern: str, timeout: float = TIMEOUT) -> str:
        """The first log line matching `pattern`, waiting for it if need be."""
        regex = re.compile(pattern)
        with self._log_changed:
            found: list[str] = []

            def seen() -> bool:
                found[:] = [line for line in self.log if regex.search(line)]
                return bool(found) or self.process.poll() is not None

            self._log_changed.wait_for(seen, timeout)
        if not found:
            raise AssertionError(f"no log line matches {pattern!r}; log: {self.log}")
        return found[0]

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def exit_status(self, timeout: float = TIMEOUT) -> int:
        """Wait for the process to end by itself; its status, with all it logged collected."""
        status = self.process.wait(timeout)
        if self._log_reader is not None:
            self._log_reader.join(timeout)
        return status

    def stop(self, timeout: float = TIMEOUT) -> int:
        """SIGTERM, then wait; kill it if it does not exit in time. Returns the status."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
            raise AssertionError(f"server did not exit within {timeout} s of SIGTERM") from None
        finally:
            if self._log_reader is not None:
                self._log_reader.join(timeout)  # ends at the end of stderr


@pytest.fixture
def chat_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """`chat_server_process("--history", "5")` runs a server in a child process on a free port
    and waits until it listens (`wait=False`: returns at once, for a server meant to fail).

    The command defaults to `python -m chat`; pass `command=[...]` for another
    entry point. History is kept in memory unless `env` sets CHAT_DB, and
    HOME and XDG_STATE_HOME point into a temporary directory, so nothing is
    written where the user keeps their files. Every process is stopped at teardown.
    """
    processes: list[ServerProcess] = []
    home = tmp_path_factory.mktemp("home")
    private = {"HOME": str(home), "XDG_STATE_HOME": str(home / "state"), "CHAT_DB": ":memory:"}

    def start(
        *args: str, command: list[str] | None = None, env: dict[str, str] | None = None, wait: bool = True
    ) -> ServerProcess:
        argv = [*(command or [sys.executable, "-m", "chat"]), "--port", "0", *args]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **private, **(env or {})},
            cwd=Path(__file__).resolve().parent.parent,
        )
        server = ServerProcess(process)
        processes.append(server)
        server._log_reader = threading.Thread(target=server._collect_log, name="chat-server-log")
        server._log_reader.start()
        if wait and not server._listening.wait(TIMEOUT):
            server.stop()
            raise AssertionError(f"server never said it was listening; log: {server.log}")
        return server

    yield start
    for server in processes:
        if server.process.poll() is None:
            server.stop()
