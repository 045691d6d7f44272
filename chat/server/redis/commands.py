"""What servers tell each other: the commands of a server's wake stream, and the changes of a
room's rules on the rules stream, each a small dataclass with its stream fields.

The fields are those of the first release (`{"taken": key, "identity": ...}` and so on), so
that servers of either release share one Redis during an upgrade. Post sends them; the
reader decodes them. An entry this release does not know is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from chat.server.redis import keys

#: Entries a wake stream keeps: it is read as it comes; these are for a reader that was away.
WAKE_KEPT = 100
#: Entries the rules stream keeps (about).
RULES_KEPT = 1000

Fields = dict[bytes, bytes]


@dataclass(frozen=True)
class Stop:
    """This server stops: its reader ends its read now."""

    def fields(self) -> dict[str, str]:
        return {"stop": "1"}


@dataclass(frozen=True)
class Follow:
    """This server follows a new room: its reader reads the room's stream from now on."""

    room: str

    def fields(self) -> dict[str, str]:
        return {"follow": self.room}


@dataclass(frozen=True)
class Taken:
    """The identity took its name (the name key `key`) on another server: close it here."""

    key: str
    identity: str

    def fields(self) -> dict[str, str]:
        return {"taken": self.key, "identity": self.identity}


@dataclass(frozen=True)
class Close:
    """A server operator elsewhere removed whoever holds the name `key` as `identity`."""

    key: str
    identity: str
    why: str

    def fields(self) -> dict[str, str]:
        return {"close": self.key, "identity": self.identity, "why": self.why}


@dataclass(frozen=True)
class ReadThere:
    """The account `identity` read `room` up to `id` on another server: tell its sessions here."""

    identity: str
    room: str
    id: int

    def fields(self) -> dict[str, str]:
        return {"read": self.room, "identity": self.identity, "id": str(self.id)}


WakeCommand = Stop | Follow | Taken | Close | ReadThere


def wake_command(fields: Fields) -> WakeCommand | None:
    """The command of one wake-stream entry (None if this release does not know it)."""
    text = {name.decode(): value.decode() for name, value in fields.items()}
    match text:
        case {"taken": key, "identity": identity}:
            return Taken(key, identity)
        case {"close": key, "identity": identity, "why": why}:
            return Close(key, identity, why)
        case {"follow": room}:
            return Follow(room)
        case {"read": room, "identity": identity, "id": id} if id.isdigit():
            return ReadThere(identity, room, int(id))
        case {"stop": _}:
            return Stop()
    return None


@dataclass(frozen=True)
class RulesChanged:
    """A room's rules changed (every server reads them again), and `removed` is out of it
    (kicked or banned: `reason`) once line `upto` reached them."""

    room: str
    removed: str | None = None
    reason: str = ""
    upto: int = 0

    def fields(self) -> dict[str, str | int]:
        return {"room": self.room, "removed": self.removed or "", "reason": self.reason, "upto": self.upto}

    @classmethod
    def of(cls, fields: Fields) -> RulesChanged:
        room, removed, reason = (fields[name].decode() for name in (b"room", b"removed", b"reason"))
        return cls(room, removed or None, reason, int(fields[b"upto"]))


class Post:
    """Sends commands to servers' wake streams and rule changes to every server.
    Every method may raise redis.RedisError: the caller decides what that means to a user."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def wake(self, node: str, command: WakeCommand) -> None:
        fields: dict[Any, Any] = command.fields()
        self._redis.xadd(keys.wake(node), fields, maxlen=WAKE_KEPT)

    def rules_changed(self, change: RulesChanged) -> None:
        fields: dict[Any, Any] = change.fields()
        self._redis.xadd(keys.RULES, fields, maxlen=RULES_KEPT, approximate=True)

    def forget_wake(self, node: str) -> None:
        """A stopping server's wake stream: nobody reads it any more."""
        self._redis.delete(keys.wake(node))
