"""Fixtures of this repository's own tests.

The real-server fixtures (`chat_server`, `start_chat_server`, `connect`,
`chat_server_process`) come from the `chat.testing` pytest plugin that the
package installs; here are only those that need this checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chat.paths import state_dir
from chat.testing import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server_script(chat_server_process: Callable[..., ServerProcess]) -> Callable[..., ServerProcess]:
    """Start `python server.py --port 0 ARGS...`, the README's own entry point."""

    def start(*args: str) -> ServerProcess:
        return chat_server_process(*args, command=[sys.executable, str(ROOT / "server.py")])

    return start


@pytest.fixture(autouse=True, scope="session")
def private_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test, and every process a test starts, keeps its files in a temporary home;
    at the end of the session the user's real state directory must be as it was."""
    real = Path(state_dir())
    before = files_under(real)
    home = tmp_path_factory.mktemp("home")
    patch = pytest.MonkeyPatch()
    patch.setenv("HOME", str(home))
    patch.setenv("XDG_STATE_HOME", str(home / "state"))
    patch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    yield
    patch.undo()
    after = files_under(real)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"the tests wrote into the real state directory {real}: {changed}"


def files_under(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under `directory` with its size and modification time (nothing if it does not exist)."""
    found = {}
    for path in directory.rglob("*") if directory.is_dir() else ():
        if path.is_file():
            status = path.stat()
            found[str(path.relative_to(directory))] = (status.st_size, status.st_mtime_ns)
    return found


class RedisServer:
    """A real redis-server on a unix socket in a temporary directory (no TCP port to race for)."""

    def __init__(self, directory: Path, appendonly: bool = False) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.appendonly = appendonly
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        """Start it and wait for its own word that it accepts connections."""
        command = [
            REDIS_SERVER, "--port", "0", "--unixsocket", str(self.socket), "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.process.stdout is not None
        for line in self.process.stdout:  # ends if the process does
            if "ready to accept connections" in line.lower():
                # Its later log lines are read and dropped, so that a full pipe never stalls it.
                threading.Thread(target=self.process.stdout.read, daemon=True).start()
                return
        raise AssertionError(f"redis-server did not start: {self.process.wait()}")

    def kill(self) -> None:
        """kill -9: whatever was not yet on disk is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server for one test, stopped at its end; it keeps nothing on disk.

    Without redis-server on the machine the test is skipped, saying so; `.ci/run` installs it
    and sets CHAT_REQUIRE_REDIS=1, so there a missing redis-server fails instead.
    """
    yield from _redis_server(appendonly=False)


@pytest.fixture
def durable_redis_server() -> Iterator[RedisServer]:
    """A redis-server that writes every command to its append-only file before it answers
    (`appendfsync always`): killed and started again, it has all it ever acknowledged."""
    yield from _redis_server(appendonly=True)


def _redis_server(appendonly: bool) -> Iterator[RedisServer]:
    if not Path(REDIS_SERVER).exists():
        if os.environ.get("CHAT_REQUIRE_REDIS"):
            pytest.fail("redis-server is not installed, and CHAT_REQUIRE_REDIS says the Redis tests must run")
        pytest.skip("redis-server is not installed (apt-get install -y redis-server): the Redis tests need it")
    directory = Path(tempfile.mkdtemp(prefix="redis-", dir="/tmp"))  # a unix socket path must be short
    server = RedisServer(directory, appendonly)
    server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)
