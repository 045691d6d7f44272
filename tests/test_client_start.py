"""Starting the client: a bad name, a taken name and a server that is down are sentences, never tracebacks."""

from __future__ import annotations

import asyncio
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import ANY

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from chat.cli import _usable_name, name_problem
from chat.client import cursors
from chat.client.connection import failure_in_words
from chat.client.cursors import Place
from chat.testing import TIMEOUT
from chat.wire.protocol import ChatMessage, ErrorReply, Joined, Left, Welcome

ROOT = Path(__file__).resolve().parent.parent


def start_client(*args: str) -> subprocess.CompletedProcess[str]:
    """client.py as a script runs it: no terminal on its input."""
    return subprocess.run(
        [sys.executable, str(ROOT / "client.py"), *args],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "because"),
    [("frank jones", "cannot contain spaces"), ("x" * 40, "at most 32 characters"), ("bob\u200b", "invisible")],
)
def test_a_name_the_server_would_refuse_is_one_sentence_and_status_2(chat_server, name, because):
    result = start_client("--port", str(chat_server.port), "--name", name)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert because in line and "Traceback" not in result.stderr


def test_a_server_that_is_down_is_one_sentence_for_a_script():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    result = start_client("--port", str(port), "--name", "frank")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line == f"cannot connect to 127.0.0.1:{port}: nothing is listening there"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again: nothing listens there


def test_a_server_that_is_down_is_passed_over_for_the_next_one_given(chat_server, connect):
    watcher = connect()
    watcher.join("watcher")
    down = _closed_port()
    result = start_client("--port", str(down), "--also", f"127.0.0.1:{chat_server.port}", "--name", "frank", "--plain")
    assert "Traceback" not in result.stderr
    assert watcher.expect(Joined).name == "frank"  # it reached the second one


def test_every_server_down_is_one_sentence_naming_them_all():
    first, second = _closed_port(), _closed_port()
    result = start_client("--port", str(first), "--also", f"127.0.0.1:{second}", "--name", "frank")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line == f"cannot connect to 127.0.0.1:{first} or 127.0.0.1:{second}: nothing is listening there"


def test_a_person_is_asked_again_until_the_name_is_usable(capsys):
    async def ask() -> str | None:
        with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
            keys.send_text("frank jones\r\rfrank\r")
            return await asyncio.wait_for(_usable_name(None, True), TIMEOUT)

    assert asyncio.run(ask()) == "frank"
    assert "cannot contain spaces" in capsys.readouterr().err


def test_names_are_judged_by_the_protocols_rules():
    assert name_problem("frank") is None
    assert name_problem("frank jones") == "a name cannot contain spaces, control or invisible characters"


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "nothing is listening there"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "that host name is unknown"),
        (TimeoutError(), "no answer in time"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "there is no route to that host"),
    ],
)
def test_connection_failures_are_said_in_words(failure, words):
    assert failure_in_words(failure) == words


def test_closing_the_terminal_saves_where_the_client_was(chat_server, connect, tmp_path):
    """SIGHUP (the terminal closed) ends the client as quitting does: where it was is written down."""
    observer = connect()
    observer.join("obs")
    observer.say("before frank")
    said = observer.expect(ChatMessage, msg="before frank")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
    client = subprocess.Popen(
        [sys.executable, str(ROOT / "client.py"), "--port", str(chat_server.port), "--name", "frank"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        observer.expect(Joined, name="frank")
        saved = tmp_path / "state" / "chat" / "client-cursors.json"
        deadline = time.monotonic() + TIMEOUT
        while cursors.load(saved, "127.0.0.1", chat_server.port, "frank") != Place({"lobby": said.id}, 0, ANY):
            assert time.monotonic() < deadline, "the client never wrote down where it is"
            time.sleep(0.05)  # polling the file for the save that comes as messages arrive
        saved.unlink()  # so that what is found next was written on the way out
        client.send_signal(signal.SIGHUP)
        assert client.wait(TIMEOUT) == 128 + signal.SIGHUP
        assert cursors.load(saved, "127.0.0.1", chat_server.port, "frank").rooms == {"lobby": said.id}
        observer.expect(Left, name="frank")
        assert "Traceback" not in client.stderr.read().decode()
    finally:
        client.kill()
        client.wait()


def shows(process: subprocess.Popen[bytes], text: bytes) -> None:
    """Read the process's output until `text` appears (the screen a person would be looking at)."""
    seen = b""
    deadline = time.monotonic() + TIMEOUT
    assert process.stdout is not None
    while text not in seen:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(0, left))
        assert ready, f"never saw {text!r}; got {seen[-500:]!r}"
        chunk = os.read(process.stdout.fileno(), 65536)
        assert chunk, f"the output ended before {text!r}; got {seen[-500:]!r}"
        seen += chunk


def test_coming_back_takes_the_name_back_from_a_dead_connection_and_a_stranger_is_told_why_not(
    chat_server, connect, tmp_path
):
    """The session the client remembers proves it is the same person: the server closes the ghost.
    Without it, the name is somebody else's and the client says so in words."""
    observer = connect()
    observer.join("obs")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
    command = [sys.executable, str(ROOT / "client.py"), "--port", str(chat_server.port), "--name", "frank"]
    first = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        shows(first, b"you are frank")
        first.send_signal(signal.SIGTERM)  # its place and session are written down on the way out
        assert first.wait(TIMEOUT) == 128 + signal.SIGTERM
    finally:
        first.kill()
        first.wait()
    token = cursors.load(tmp_path / "state" / "chat" / "client-cursors.json", "127.0.0.1", chat_server.port, "frank")
    assert token is not None and token.token
    ghost = connect()  # frank's connection that died without closing: it still holds the name
    ghost.send({"type": "join", "name": "frank", "token": token.token})
    ghost.expect(Welcome)
    observer.expect(Joined, name="frank")

    stranger = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        env={**env, "HOME": str(tmp_path / "elsewhere"), "XDG_STATE_HOME": str(tmp_path / "elsewhere")},
    )  # fmt: skip
    assert stranger.returncode == 1 and "Traceback" not in stranger.stderr
    assert "the name frank is taken" in stranger.stderr and "no session" in stranger.stderr

    again = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert ghost.expect(ErrorReply).code == "session_replaced"
        observer.expect(Joined, name="frank")
        shows(again, b"you are frank")
        again.send_signal(signal.SIGTERM)
        assert again.wait(TIMEOUT) == 128 + signal.SIGTERM
        assert "Traceback" not in again.stderr.read().decode()
    finally:
        again.kill()
        again.wait()
