"""The tests keep their files to temporary directories, and would notice if they did not."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import files_under

from chat.paths import state_dir


def test_state_lives_in_a_temporary_home_for_tests_and_their_processes():
    temporary = Path(tempfile.gettempdir()).resolve()
    assert Path(state_dir()).resolve().is_relative_to(temporary)
    child = subprocess.run(
        [sys.executable, "-c", "from chat.paths import state_dir; print(state_dir())"],
        capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert Path(child.stdout.strip()).resolve().is_relative_to(temporary)
    assert Path(os.environ["HOME"]).resolve().is_relative_to(temporary)


def test_a_file_written_into_a_directory_is_seen(tmp_path):
    """What the end-of-session check relies on: a new or changed file shows."""
    before = files_under(tmp_path / "state")
    (tmp_path / "state" / "chat").mkdir(parents=True)
    (tmp_path / "state" / "chat" / "chat.db").write_bytes(b"x")
    after = files_under(tmp_path / "state")
    assert before == {} and list(after) == [os.path.join("chat", "chat.db")]
