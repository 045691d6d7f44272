"""Where chat keeps its files on this machine, for the server and the client alike.

One function, so that tests can move everything by setting XDG_STATE_HOME.
"""

from __future__ import annotations

import os


def state_dir() -> str:
    """Where chat keeps its files: ~/.local/state/chat, or under $XDG_STATE_HOME."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "chat")
