"""Fixtures of this repository's own tests.

The real-server fixtures (`chat_server`, `start_chat_server`, `connect`,
`chat_server_process`) come from the `chat.testing` pytest plugin that the
package installs; here are only those that need this checkout.
"""

from __future__ import annotations

import sys
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
