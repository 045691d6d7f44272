"""Fixtures of this repository's own tests.

The real-server fixtures (`chat_server`, `start_chat_server`, `connect`,
`chat_server_process`) come from the `chat.testing` pytest plugin that the
package installs; here are only those that need this checkout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from chat.testing import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server_script(chat_server_process: Callable[..., ServerProcess]) -> Callable[..., ServerProcess]:
    """Start `python server.py --port 0 ARGS...`, the README's own entry point."""

    def start(*args: str) -> ServerProcess:
        return chat_server_process(*args, command=[sys.executable, str(ROOT / "server.py")])

    return start
