"""The wire messages of the chat room, one pydantic model per `type`.

This module is the single source of truth for message shapes and limits; the
server, the client and protocol.md all follow it. Pure: no sockets, threads
or logging, and no parsing of raw bytes (that is codec.py's job).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer
from pydantic_core import PydanticCustomError

#: Longest name, in characters.
MAX_NAME = 32
#: Longest chat message, in characters (the line limit caps bytes separately).
MAX_MSG = 8000
#: Default limit of one line on the wire, in bytes, newline included.
DEFAULT_MAX_LINE = 64 * 1024


def utc_now() -> datetime:
    """The current time, as the server stamps messages."""
    return datetime.now(UTC)


def _format_time(value: datetime) -> str:
    # "2026-11-20T12:00:00.123Z": millisecond precision, always UTC.
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_name(name: str) -> str:
    # The error types below are the wire's error codes: codec.py passes them on.
    if not name.strip():
        raise PydanticCustomError("name_empty", "a name cannot be empty")
    if len(name) > MAX_NAME:
        raise PydanticCustomError("name_too_long", f"a name is at most {MAX_NAME} characters")
    if any(not char.isprintable() or char.isspace() for char in name):
        raise PydanticCustomError("name_invalid", "a name cannot contain spaces or control characters")
    return name


def _check_text(msg: str) -> str:
    if not msg.strip():
        raise PydanticCustomError("empty_message", "a message cannot be empty or only spaces")
    if len(msg) > MAX_MSG:
        raise PydanticCustomError("message_too_long", f"a message is at most {MAX_MSG} characters")
    return msg


#: A user name as a client asks for it: 1 to 32 printable characters, no spaces.
Name = Annotated[str, AfterValidator(_check_name)]
#: Text a client says: not blank, at most MAX_MSG characters (newlines allowed).
Text = Annotated[str, AfterValidator(_check_text)]

#: A server timestamp: ISO 8601 UTC on the wire, an aware datetime in Python.
Timestamp = Annotated[AwareDatetime, PlainSerializer(_format_time, return_type=str)]


class _ClientWire(BaseModel):
    """A line from a client. Unknown fields are ignored, not refused, so that a
    client may send `name` or `time` along (the server sets those itself)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class _ServerWire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- client to server -----------------------------------------------------------------


class Join(_ClientWire):
    """First line of a client: the name it wants, and the last id it has seen.

    With `since`, the server replays what the client missed (the messages
    after that id) instead of the usual recent history.
    """

    type: Literal["join"] = "join"
    name: Name
    since: int | None = Field(default=None, ge=0)


class SendMessage(_ClientWire):
    """Say something to the whole room."""

    type: Literal["message"] = "message"
    msg: Text


class ClassicMessage(_ClientWire):
    """The seed form `{"name": ..., "msg": ..., "time": ...}` with no `type`.

    Its name joins a client that has not joined yet; after that it is ignored.
    """

    name: Name | None = None
    msg: Text


class SendAction(_ClientWire):
    """A `/me` action: "alice waves"."""

    type: Literal["action"] = "action"
    msg: Text


class SendPrivate(_ClientWire):
    """A private message to one user."""

    type: Literal["private"] = "private"
    to: str
    msg: Text


class Nick(_ClientWire):
    """Change one's name."""

    type: Literal["nick"] = "nick"
    name: Name


class Who(_ClientWire):
    """Ask for the list of users."""

    type: Literal["who"] = "who"


class Ping(_ClientWire):
    """Either side asks "are you there?"; the other answers with `pong`."""

    type: Literal["ping"] = "ping"


class Pong(_ClientWire):
    """The answer to `ping`."""

    type: Literal["pong"] = "pong"


#: Most messages one history request may ask for.
MAX_HISTORY_PAGE = 500


class HistoryRequest(_ClientWire):
    """Page back: the newest `limit` messages older than id `before` (the newest if omitted)."""

    type: Literal["history"] = "history"
    before: int | None = Field(default=None, ge=1)
    limit: int = Field(default=50, ge=1, le=MAX_HISTORY_PAGE)


class Leave(_ClientWire):
    """A clean goodbye; the server closes the connection after it."""

    type: Literal["leave"] = "leave"


ClientMessage = Annotated[
    Join | SendMessage | SendAction | SendPrivate | Nick | Who | Ping | Pong | HistoryRequest | Leave,
    Field(discriminator="type"),
]

#: The `type` values a client may send.
CLIENT_TYPES = frozenset({"join", "message", "action", "private", "nick", "who", "ping", "pong", "history", "leave"})


# --- server to client -----------------------------------------------------------------


class Welcome(_ServerWire):
    """The answer to a join: the accepted name, who is here, how many history
    lines follow before live traffic, how many older ones (after the join's
    `since`) were left out, and the room's newest id."""

    type: Literal["welcome"] = "welcome"
    name: str
    users: list[str]
    history: int = Field(ge=0)
    more: int = Field(default=0, ge=0)
    last_id: int = Field(default=0, ge=0)


class Gap(_ServerWire):
    """Messages `first` to `last` (ids) are no longer kept: a resuming client
    cannot get them back."""

    type: Literal["gap"] = "gap"
    first: int = Field(ge=1)
    last: int = Field(ge=1)
    detail: str


class HistoryPage(_ServerWire):
    """The answer to a history request: `count` message lines follow, all older
    than `before`; `more` older ones are still kept."""

    type: Literal["history"] = "history"
    before: int
    count: int = Field(ge=0)
    more: int = Field(ge=0)


class ChatMessage(_ServerWire):
    """Something a user said to the room, numbered by the room."""

    type: Literal["message"] = "message"
    id: int = Field(ge=1)
    name: str
    msg: str
    time: Timestamp


class Action(_ServerWire):
    """A `/me` action, numbered in the same sequence as chat messages."""

    type: Literal["action"] = "action"
    id: int = Field(ge=1)
    name: str
    msg: str
    time: Timestamp


class PrivateMessage(_ServerWire):
    """A private message, delivered to `to` and echoed to `name`, the sender.
    Numbered in the room's sequence, so the two parties can resume it too."""

    type: Literal["private"] = "private"
    id: int = Field(ge=1)
    name: str
    to: str
    msg: str
    time: Timestamp


class Joined(_ServerWire):
    """Somebody joined the room."""

    type: Literal["joined"] = "joined"
    name: str
    time: Timestamp


LeaveReason = Literal["quit", "disconnected", "timeout", "slow_consumer", "shutdown"]


class Left(_ServerWire):
    """Somebody left the room, and why."""

    type: Literal["left"] = "left"
    name: str
    reason: LeaveReason
    time: Timestamp


class Renamed(_ServerWire):
    """Somebody changed their name."""

    type: Literal["renamed"] = "renamed"
    old: str
    new: str
    time: Timestamp


class Users(_ServerWire):
    """The answer to `who`."""

    type: Literal["users"] = "users"
    users: list[str]


class ServerPing(_ServerWire):
    type: Literal["ping"] = "ping"


class ServerPong(_ServerWire):
    type: Literal["pong"] = "pong"


class Shutdown(_ServerWire):
    """The server is going away; the connection closes after this line."""

    type: Literal["shutdown"] = "shutdown"
    detail: str


ErrorCode = Literal[
    "line_too_long",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "unknown_type",
    "invalid_field",
    "empty_message",
    "message_too_long",
    "name_empty",
    "name_too_long",
    "name_invalid",
    "name_taken",
    "not_joined",
    "already_joined",
    "no_such_user",
    "slow_consumer",
    "idle_timeout",
    "server_full",
    "storage_failed",
]


class ErrorReply(_ServerWire):
    """Sent to the offending client only; the connection stays open unless the
    code is one of CLOSING_ERRORS."""

    type: Literal["error"] = "error"
    code: ErrorCode
    detail: str


#: Error codes after which the server closes the connection.
CLOSING_ERRORS = frozenset({"line_too_long", "slow_consumer", "idle_timeout", "server_full"})

ServerMessage = Annotated[
    Welcome
    | Gap
    | HistoryPage
    | ChatMessage
    | Action
    | PrivateMessage
    | Joined
    | Left
    | Renamed
    | Users
    | ServerPing
    | ServerPong
    | Shutdown
    | ErrorReply,
    Field(discriminator="type"),
]

#: Lines that carry a room id and are kept in history.
RoomMessage = ChatMessage | Action | PrivateMessage
