"""Logs on disk: one plain-text file per buffer (`ROOM.log`, `@NAME.log`) in the `log_dir`
setting's directory, appended to as lines arrive, each line with its date and time.

Only what happens while the client runs is written: a join's history and the pages fetched
by scrolling are older lines, logged when they were new (or by another run). The files are the
user's private conversations: 0600, in a directory made 0700.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import IO

from chat.client.render import Fragments

#: Characters that cannot be in a file's name on common systems, and a leading dot.
_UNSAFE_NAME = re.compile(r'[\x00-\x1f/\\:*?"<>|]|^\.')


def file_name(key: str) -> str:
    """`den.log` for the room buffer `#den`, `@bob.log` for the conversation `@bob`."""
    name = key.removeprefix("#")
    return _UNSAFE_NAME.sub("_", name) + ".log"


class BufferLogs:
    """The open log files of one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, IO[str]] = {}
        self.failed: str | None = None  # why logging stopped, once it did

    def write(self, key: str, when: datetime, fragments: Fragments) -> None:
        """Append one line to the buffer `key`'s file: `2026-12-06 21:19:05 bob: hi`."""
        if self.failed is not None:
            return
        text = "".join(part for style, part in fragments if style != "class:time")
        try:
            file = self._files.get(key) or self._open(key)
            file.write(f"{when.astimezone():%Y-%m-%d %H:%M:%S} {text}\n")
        except OSError as exc:
            self.failed = f"logging to {self.directory} stopped: {exc.strerror or exc}"

    def flush(self) -> None:
        for file in self._files.values():
            try:
                file.flush()
            except OSError as exc:
                self.failed = f"logging to {self.directory} stopped: {exc.strerror or exc}"

    def close(self) -> None:
        self.flush()
        for file in self._files.values():
            file.close()
        self._files.clear()

    def _open(self, key: str) -> IO[str]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.directory / file_name(key)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        file = self._files[key] = os.fdopen(descriptor, "a", encoding="utf-8")
        return file
