"""The smart filter (the `smart_filter` setting, on by default): which lines are noise.

A join, part or quit of somebody who has not spoken in that room lately says nothing to the
reader, and a reconnect of the user's own repeats itself: how many times it tried, and that
nothing is new in each room. WeeChat hides the first kind the same way (its smart filter).

Pure: events in, a verdict out; the times compared are the server's, so history replayed
after a restart is judged as it was then.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from chat.client.connection import ClientEvent, ConnectionLost, Reconnected, Resumed
from chat.wire.protocol import Action, ChatMessage, Joined, Left, Renamed, Shutdown, Welcome, room_key

#: How recently somebody must have spoken in a room for their joins and parts to be shown.
SPOKE_LATELY = timedelta(minutes=10)


class SmartFilter:
    """Remembers who spoke where and when, and whether the connection is between a drop and its return."""

    def __init__(self) -> None:
        self._spoke: dict[tuple[str, str], datetime] = {}
        #: Whether the connection was lost and is not back yet (its first ConnectionLost was shown).
        self.down = False
        #: Whether a reconnect happened (its Resumed lines that report nothing new are noise).
        self._rejoining = False
        #: Rooms welcomed; those whose welcome after a reconnect is still to come.
        self._welcomed: set[str] = set()
        self._rejoins: set[str] = set()

    def hides(self, event: ClientEvent, me: str) -> bool:
        """Whether `event` is noise; notes what it needs of it either way."""
        match event:
            case ChatMessage(room=room, name=name, time=time) | Action(room=room, name=name, time=time):
                key = (room_key(room), name.casefold())
                self._spoke[key] = max(time, self._spoke.get(key, time))
                return False
            case Joined(room=room, name=name, time=time) | Left(room=room, name=name, time=time):
                if name == me:
                    return False
                spoke = self._spoke.get((room_key(room), name.casefold()))
                return spoke is None or time - spoke > SPOKE_LATELY
            case Renamed(room=room, old=old, new=new) if room is not None:
                for (where, who), when in list(self._spoke.items()):
                    if who == old.casefold():
                        self._spoke[(where, new.casefold())] = when
                return False
            case Shutdown():
                return True  # the ConnectionLost that follows says the same
            case Welcome(room=room):
                where = room_key(room)
                self._welcomed.add(where)
                if where in self._rejoins:
                    self._rejoins.discard(where)
                    return True  # back in a room after a drop: the outage's line says so
                return False
            case ConnectionLost():
                already = self.down
                self.down = True
                return already  # the first says it went; the others only that it is still trying
            case Reconnected():
                self.down = False
                self._rejoining = True
                self._rejoins = set(self._welcomed)
                return False
            case Resumed(missed=0):
                return self._rejoining  # after a drop, "nothing new in den" for every room is noise
        return False
