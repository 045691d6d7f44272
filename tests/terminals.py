"""Captured terminals for the UI tests: what a client writes, as raw text and as the screen shows it."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Callable

import pyte

from chat.testing import TIMEOUT

#: Escape sequences, for reading the plain mode's output as text.
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\r")


class Screen(io.StringIO):
    """Captured terminal output that tells a waiting test whenever it changes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self.changed = asyncio.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        self._loop.call_soon_threadsafe(self.changed.set)
        return written

    async def until(self, predicate: Callable[[], bool], what: str, show: Callable[[], str]) -> None:
        """Wait until `predicate` holds, waking on each write."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"never saw {what}; screen:\n{show()}") from None


class Emulator:
    """A VT100 emulator fed with a Screen's output: the rows a person would see, cursor moves applied."""

    def __init__(self, output: Screen, columns: int, rows: int) -> None:
        self.output = output
        self.screen = pyte.Screen(columns, rows)
        self.stream = pyte.Stream(self.screen)
        self._read = 0

    @property
    def rows(self) -> list[str]:
        text = self.output.getvalue()
        self.stream.feed(text[self._read :])
        self._read = len(text)
        return [row.rstrip() for row in self.screen.display]

    @property
    def text(self) -> str:
        return "\n".join(self.rows)
