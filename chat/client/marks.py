"""Read markers: how far the user has read each buffer, by message id.

Now they are this client's own. When an account may have several sessions (a later change to
the server), a marker set on one device is to clear the same unread lines on the others: a
ReadMarkers that also tells the server, and hears from it, takes LocalReadMarkers' place, and
the screen, which only asks `read_up_to` and tells `read`, stays as it is.
"""

from __future__ import annotations

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
