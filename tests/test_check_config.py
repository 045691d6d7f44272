"""--check-config: a configuration checked as a start would check it, without starting anything;
status 0, or 2 with one line per problem."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from chat.server import preflight
from chat.server.config import ServerConfig
from chat.testing import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def pair(ca: trustme.CA, directory: Path, name: str) -> tuple[str, str]:
    cert = ca.issue_cert("localhost")
    chain, key = directory / f"{name}-chain.pem", directory / f"{name}-key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return str(chain), str(key)


def check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--check-config", *args],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")},
    )  # fmt: skip


def test_a_good_configuration_exits_zero_and_starts_nothing(tmp_path, ca):
    cert, key = pair(ca, tmp_path, "good")
    db = tmp_path / "state" / "chat" / "chat.db"
    result = check(tmp_path, "--port", "0", "--tls-cert", cert, "--tls-key", key, "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert "good" in result.stdout and result.stderr == ""
    assert not db.exists()  # checked, not created


def test_an_existing_history_file_is_proved_writable_and_left_as_it_was(tmp_path, start_chat_server):
    db = tmp_path / "chat.db"
    server = start_chat_server(ServerConfig(db=str(db)))  # a running server's file, in WAL mode
    before = db.read_bytes()
    assert preflight.problems(ServerConfig(db=str(db), port=0)) == []
    assert db.read_bytes() == before
    assert server.store is not None


def test_every_problem_is_one_line_and_status_two(tmp_path, ca):
    cert, _ = pair(ca, tmp_path, "one")
    _, other_key = pair(ca, tmp_path, "two")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        result = check(tmp_path, "--port", str(port), "--tls-cert", cert, "--tls-key", other_key,
                       "--db", str(blocker / "chat.db"))  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3, lines
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
    assert "is not the key of the certificate" in lines[1]
    assert "cannot be created" in lines[2]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("option", ["--irc-port", "--web-port"])
def test_a_taken_port_is_named_by_the_option_that_asked_for_it(option):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ServerConfig(port=0, **{option.removeprefix("--").replace("-", "_"): port})
        [said] = [line for line in preflight.problems(config) if "cannot listen" in line]
    assert said.startswith(f"{option}: cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        (
            {"tls_cert": "/nonexistent/cert.pem", "tls_key": "/nonexistent/key.pem"},
            "--tls-cert /nonexistent/cert.pem: cannot be read (no such file)",
        ),
        ({"tls_cert": "x.pem"}, "--tls-cert and --tls-key go together"),
        ({"plain_port": 0}, "--plain-port is for a server that speaks TLS"),
        ({"redis": "unix:///nonexistent/redis.sock"}, "--redis unix:///nonexistent/redis.sock: cannot be reached"),
    ],
)  # fmt: skip
def test_a_missing_certificate_and_other_problems_are_named(settings, says):
    found = preflight.problems(ServerConfig(port=0, **settings))
    assert len(found) == 1 and says in found[0], found


def test_a_history_file_that_is_not_a_database_or_a_directory_is_a_problem(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not SQLite" * 100)
    [problem] = preflight.problems(ServerConfig(port=0, db=str(garbage)))
    assert "cannot be written as a history file" in problem
    [problem] = preflight.problems(ServerConfig(port=0, db=str(tmp_path)))
    assert "is a directory" in problem


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the mode says")
def test_a_read_only_history_file_is_a_problem(tmp_path):
    db = tmp_path / "chat.db"
    db.write_bytes(b"")
    db.chmod(0o400)
    [problem] = preflight.problems(ServerConfig(port=0, db=str(db)))
    assert "not writable" in problem


def test_a_reachable_redis_is_no_problem(redis_server):
    assert preflight.problems(ServerConfig(port=0, redis=redis_server.url)) == []
