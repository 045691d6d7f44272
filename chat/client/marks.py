"""Read markers: how far the user has read each buffer, by message id.

LocalReadMarkers are this client's own. An account may have several sessions, and a marker set
on one device clears the same unread lines on the others: SharedReadMarkers also tells the
server (a `read` line) when the user reads further in a room, and hears from it (`heard`) what
another device read; the screen only asks `read_up_to` and tells `read`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class ReadMarkers(Protocol):
    def read(self, key: str, up_to: int) -> None:
        """The user has seen buffer `key` up to message id `up_to`."""

    def read_up_to(self, key: str) -> int:
        """How far buffer `key` has been read (0: nothing known); lines up to it are not unread."""

    def forget(self, key: str) -> None:
        """The room's ids began again (its history was lost): its marker means nothing now."""


class LocalReadMarkers:
    """Markers kept by this client for this run."""

    def __init__(self) -> None:
        self._marks: dict[str, int] = {}

    def read(self, key: str, up_to: int) -> None:
        if up_to > self._marks.get(key, 0):
            self._marks[key] = up_to

    def read_up_to(self, key: str) -> int:
        return self._marks.get(key, 0)

    def forget(self, key: str) -> None:
        self._marks.pop(key, None)


class SharedReadMarkers(LocalReadMarkers):
    """Markers shared by the devices of one account: reading further tells `tell` (buffer key,
    id), which sends the server a `read` line; what the server says another device read comes
    in through `heard`, and is not told back."""

    def __init__(self, tell: Callable[[str, int], None]) -> None:
        super().__init__()
        self._tell = tell

    def read(self, key: str, up_to: int) -> None:
        if up_to > self.read_up_to(key):
            super().read(key, up_to)
            self._tell(key, up_to)

    def heard(self, key: str, up_to: int) -> None:
        """Another device of the account read `key` up to `up_to` (or a welcome said so)."""
        super().read(key, up_to)
