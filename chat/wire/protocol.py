"""The wire messages of the chat server, one pydantic model per `type`.

This module is the single source of truth for message shapes and limits; the
server, the client and protocol.md all follow it. Pure: no sockets, threads
or logging, and no parsing of raw bytes (that is codec.py's job).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer
from pydantic_core import PydanticCustomError

from chat.wire.text import has_invisible, is_visible, name_key

#: Longest name, in characters.
MAX_NAME = 32
#: Longest room name, in characters.
MAX_ROOM = 32
#: Longest chat message, in characters (the line limit caps bytes separately).
MAX_MSG = 8000
#: Longest room topic, in characters (IRC servers commonly allow about 390).
MAX_TOPIC = 390
#: The room of every room-scoped client line that names none: old clients live here.
LOBBY = "lobby"
#: Default limit of one line on the wire, in bytes, newline included. It fits the
#: longest message however a client escapes it: 8,000 astral characters written
#: as JSON surrogate pairs are 96,000 bytes, plus a room name and the rest.
DEFAULT_MAX_LINE = 128 * 1024
#: Largest id, limit or count a line may carry: JSON numbers stay exact up to 2^53.
MAX_NUMBER = 2**53
#: Shortest and longest password, in characters.
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def utc_now() -> datetime:
    """The current time, as the server stamps messages."""
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    """The wire's timestamp for `value` ("2026-11-20T12:00:00.123Z": milliseconds, always UTC)."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_millis(millis: int) -> str:
    """The wire's timestamp for a time in milliseconds since the epoch: what a Timestamp field encodes to."""
    seconds, rest = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:03d}Z"


class Stamper:
    """Stamps lines with the current time as the wire spells it, formatting it once per millisecond.

    A busy room says many lines within one millisecond; they share one string.
    Safe to share between threads: the millisecond and its text are replaced together.
    """

    def __init__(self) -> None:
        self._last: tuple[int, str] = (-1, "")

    def now(self) -> str:
        millis = time.time_ns() // 1_000_000
        last = self._last
        if last[0] == millis:
            return last[1]
        text = format_millis(millis)
        self._last = (millis, text)
        return text


def _check_name(name: str) -> str:
    # The error types below are the wire's error codes: codec.py passes them on.
    if not name.strip():
        raise PydanticCustomError("name_empty", "a name cannot be empty")
    if len(name) > MAX_NAME:
        raise PydanticCustomError("name_too_long", f"a name is at most {MAX_NAME} characters")
    if has_invisible(name) or not is_visible(name):
        raise PydanticCustomError("name_invalid", "a name cannot contain spaces, control or invisible characters")
    return name


def _check_room(room: str) -> str:
    if not room or len(room) > MAX_ROOM or has_invisible(room) or not is_visible(room):
        raise PydanticCustomError(
            "room_invalid",
            f"a room name is 1 to {MAX_ROOM} characters, without spaces, control or invisible characters",
        )
    return room


def _check_topic(topic: str) -> str:
    if len(topic) > MAX_TOPIC:
        raise PydanticCustomError("topic_too_long", f"a topic is at most {MAX_TOPIC} characters")
    if any(not char.isprintable() for char in topic):
        raise PydanticCustomError("topic_invalid", "a topic is one line, without control characters")
    return topic


#: Rooms in one `rooms` reply at most; `after` asks for the next page.
ROOM_PAGE = 100


def room_key(room: str) -> str:
    """The key two spellings of one room share: case and look-alike characters do not count."""
    return name_key(room)


def _check_text(msg: str) -> str:
    if not is_visible(msg):
        raise PydanticCustomError("empty_message", "a message needs at least one visible character")
    if len(msg) > MAX_MSG:
        raise PydanticCustomError("message_too_long", f"a message is at most {MAX_MSG} characters")
    return msg


#: A user name as a client asks for it: 1 to 32 printable characters, no spaces.
Name = Annotated[str, AfterValidator(_check_name)]
#: A room name as a client gives it: 1 to 32 printable characters, no spaces.
RoomName = Annotated[str, AfterValidator(_check_room)]
#: A room's topic: one line of at most MAX_TOPIC characters; empty clears it.
TopicText = Annotated[str, AfterValidator(_check_topic)]
#: Text a client says: not blank, at most MAX_MSG characters (newlines allowed).
Text = Annotated[str, AfterValidator(_check_text)]
#: Longest search text, in characters; most lines a search answers with.
MAX_SEARCH_TEXT = 200
MAX_SEARCH_RESULTS = 100
DEFAULT_SEARCH_RESULTS = 20
#: Longest `cid`, the client's own id for a line it sends.
MAX_CID = 64
#: A client's id for a line it sends (1-64 printable ASCII): a repeat is answered, not kept again.
Cid = Annotated[str, Field(min_length=1, max_length=MAX_CID, pattern=r"^[\x20-\x7e]+$")]

#: A server timestamp: ISO 8601 UTC on the wire, an aware datetime in Python.
Timestamp = Annotated[AwareDatetime, PlainSerializer(format_time, return_type=str)]


class _ClientWire(BaseModel):
    """A line from a client. Unknown fields are ignored, not refused, so that a
    client may send `name` or `time` along (the server sets those itself).
    Strict: `"50"` or `true` is not a number, nor `1` a string."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class _ServerWire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- client to server -----------------------------------------------------------------


class Join(_ClientWire):
    """Enter a room. The first join of a connection also chooses its name.

    With `since` (the last id seen in that room) the server replays what was
    missed there instead of the recent history. `private_since`, on the first
    join only, does the same for private messages.
    """

    type: Literal["join"] = "join"
    name: Name | None = None
    room: RoomName = LOBBY
    since: int | None = Field(default=None, ge=0, le=MAX_NUMBER)
    private_since: int | None = Field(default=None, ge=0, le=MAX_NUMBER)
    #: For a registered name (first join only): its password...
    password: str | None = Field(default=None, min_length=1, max_length=MAX_PASSWORD, repr=False)
    #: ...or a session token a welcome gave this identity.
    token: str | None = Field(default=None, min_length=1, max_length=256, repr=False)


class Register(_ClientWire):
    """Make the name you are joined under an account: from then on it needs this password (or a token)."""

    type: Literal["register"] = "register"
    password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD, repr=False)


class ChangePassword(_ClientWire):
    """Change your account's password; every token of it is revoked for a new one."""

    type: Literal["password"] = "password"
    old: str = Field(min_length=1, max_length=MAX_PASSWORD, repr=False)
    new: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD, repr=False)


#: Longest moderation reason, in characters; longest ban or mute, in seconds (ten years).
MAX_REASON = 390
MAX_SANCTION_SECONDS = 10 * 365 * 24 * 3600
Reason = Annotated[str, Field(max_length=MAX_REASON)]


class _AboutMember(_ClientWire):
    """A moderation request about one name in one room."""

    room: RoomName = LOBBY
    name: str = Field(min_length=1, max_length=MAX_NAME)


class Kick(_AboutMember):
    """An operator removes `name` from the room; they may join again."""

    type: Literal["kick"] = "kick"
    reason: Reason = ""


class _Sanction(_AboutMember):
    """A ban or mute: for `duration` seconds, or (null) until lifted."""

    duration: int | None = Field(default=None, ge=1, le=MAX_SANCTION_SECONDS)
    reason: Reason = ""


class Ban(_Sanction):
    """An operator bans `name` (the account; for a guest, its address) from the room; a member is removed at once."""

    type: Literal["ban"] = "ban"


class Mute(_Sanction):
    """Like `ban`, but `name` stays and reads; only speaking in the room is refused."""

    type: Literal["mute"] = "mute"


class Unban(_AboutMember):
    type: Literal["unban"] = "unban"


class Unmute(_AboutMember):
    type: Literal["unmute"] = "unmute"


class Op(_AboutMember):
    """The room's owner (or a server operator) makes the account `name` an operator of the room."""

    type: Literal["op"] = "op"


class Deop(_AboutMember):
    type: Literal["deop"] = "deop"


#: Room modes: `topic` (only operators set the topic), `accounts` (only accounts join),
#: `moderated` (only operators and voiced members speak).
RoomMode = Literal["topic", "accounts", "moderated"]


class SetModes(_ClientWire):
    """An operator turns room modes on (`on`) or off (`off`)."""

    type: Literal["mode"] = "mode"
    room: RoomName = LOBBY
    on: list[RoomMode] = Field(default_factory=list, max_length=3)
    off: list[RoomMode] = Field(default_factory=list, max_length=3)


class Voice(_AboutMember):
    """An operator lets `name` speak in a moderated room (`devoice` takes it back)."""

    type: Literal["voice", "devoice"] = "voice"


class _AboutUser(_ClientWire):
    """A server operator's request about one name, wherever it is."""

    name: str = Field(min_length=1, max_length=MAX_NAME)
    reason: Reason = ""


class Disconnect(_AboutUser):
    """A server operator closes `name`'s connection."""

    type: Literal["disconnect"] = "disconnect"


class ServerBan(_AboutUser):
    """A server operator bans `name` (account, or a guest's address) from the whole server."""

    type: Literal["server_ban"] = "server_ban"
    duration: int | None = Field(default=None, ge=1, le=MAX_SANCTION_SECONDS)


class ServerUnban(_ClientWire):
    type: Literal["server_unban"] = "server_unban"
    name: str = Field(min_length=1, max_length=MAX_NAME)


class Lockdown(_ClientWire):
    """A server operator refuses (`on`) or welcomes again new guests."""

    type: Literal["lockdown"] = "lockdown"
    on: bool


class Part(_ClientWire):
    """Leave one room; the connection stays (in its other rooms, or in none). `msg`: parting
    words, shown to the room's members (one line: see `Left.msg`)."""

    type: Literal["part"] = "part"
    room: RoomName = LOBBY
    msg: Reason | None = None


class SendMessage(_ClientWire):
    """Say something to a room."""

    type: Literal["message"] = "message"
    room: RoomName = LOBBY
    msg: Text
    cid: Cid | None = None


class ClassicMessage(_ClientWire):
    """The seed form `{"name": ..., "msg": ..., "time": ...}` with no `type`: said in the lobby.

    Its name joins a client that has not joined yet; after that it is ignored.
    """

    name: Name | None = None
    msg: Text


class SendAction(_ClientWire):
    """A `/me` action in a room: "alice waves"."""

    type: Literal["action"] = "action"
    room: RoomName = LOBBY
    msg: Text
    cid: Cid | None = None


class SendPrivate(_ClientWire):
    """A private message to one user, wherever they are."""

    type: Literal["private"] = "private"
    to: str = Field(min_length=1, max_length=MAX_NAME)
    msg: Text
    cid: Cid | None = None


class SetAway(_ClientWire):
    """Say you are away, and why (`msg`); without a `msg` (or an empty one), that you are back.

    Whoever sends you a private message meanwhile is told, once per message,
    and `who` shows it; each of your rooms gets an `away` line when it changes.
    """

    type: Literal["away"] = "away"
    msg: TopicText = ""


class SetTopic(_ClientWire):
    """Set a room's topic; an empty one clears it."""

    type: Literal["topic"] = "topic"
    room: RoomName = LOBBY
    topic: TopicText


class Nick(_ClientWire):
    """Change one's name, in every room at once."""

    type: Literal["nick"] = "nick"
    name: Name


class Who(_ClientWire):
    """Ask who is in a room."""

    type: Literal["who"] = "who"
    room: RoomName = LOBBY


class ListRooms(_ClientWire):
    """Ask for the rooms, with how many are in each and its topic: a page of at most
    ROOM_PAGE, sorted by name; `after` continues after the room so named."""

    type: Literal["rooms"] = "rooms"
    after: str | None = None


class MarkRead(_ClientWire):
    """The account read a room up to the line `id` (only forward): its other sessions are told."""

    type: Literal["read"] = "read"
    room: RoomName
    id: int = Field(ge=0)


class Ping(_ClientWire):
    """Either side asks "are you there?"; the other answers with `pong`."""

    type: Literal["ping"] = "ping"


class Pong(_ClientWire):
    """The answer to `ping`."""

    type: Literal["pong"] = "pong"


#: Most messages one history request may ask for.
MAX_HISTORY_PAGE = 500


class HistoryRequest(_ClientWire):
    """Page back in a room: the newest `limit` messages older than id `before` (the newest if omitted)."""

    type: Literal["history"] = "history"
    room: RoomName = LOBBY
    before: int | None = Field(default=None, ge=1, le=MAX_NUMBER)
    limit: int = Field(default=50, ge=1, le=MAX_HISTORY_PAGE)


class Search(_ClientWire):
    """Search the lines the asker may read: the newest `limit` (1 to 100, default 20) that
    match `text`, in `room` only, or in every room it is in and its own private lines.
    `text` and `limit` are checked by the server (`search_invalid`), not here."""

    type: Literal["search"] = "search"
    text: str
    room: RoomName | None = None
    before: int | None = Field(default=None, ge=1, le=MAX_NUMBER)
    limit: int | None = Field(default=None, le=MAX_NUMBER)


class Leave(_ClientWire):
    """A clean goodbye from every room; the server closes the connection after it. `msg`: parting
    words, shown to the members of those rooms."""

    type: Literal["leave"] = "leave"
    msg: Reason | None = None


ClientMessage = Annotated[
    Join
    | Search
    | Kick
    | Ban
    | Unban
    | Mute
    | Unmute
    | Op
    | Deop
    | SetModes
    | Voice
    | Disconnect
    | ServerBan
    | ServerUnban
    | Lockdown
    | Register
    | ChangePassword
    | Part
    | SendMessage
    | SendAction
    | SendPrivate
    | SetAway
    | SetTopic
    | Nick
    | Who
    | ListRooms
    | MarkRead
    | Ping
    | Pong
    | HistoryRequest
    | Leave,
    Field(discriminator="type"),
]

#: The `type` values a client may send, read off the models above.
CLIENT_TYPES = frozenset(
    kind
    for model in get_args(get_args(ClientMessage)[0])
    for kind in get_args(model.model_fields["type"].annotation)
)


# --- server to client -----------------------------------------------------------------


class Welcome(_ServerWire):
    """The answer to a join: the room (as it is spelled), the accepted name,
    who is in the room, how many history lines follow before live traffic,
    how many older ones (after the join's `since`) were left out, the room's
    newest id and its topic."""

    type: Literal["welcome"] = "welcome"
    room: str = LOBBY
    name: str
    users: list[str]
    history: int = Field(ge=0)
    more: int = Field(default=0, ge=0)
    last_id: int = Field(default=0, ge=0)
    topic: str = ""
    #: On the first join only: the session token to come back with (join with `name` and `token`).
    token: str | None = None
    #: On the first join only: whether the name is a registered account's.
    account: bool | None = None
    #: Members with a role in the room: name -> `owner`, `op`, `voice` or `admin`.
    roles: dict[str, str] = Field(default_factory=dict)
    #: The room's modes that are on (`topic`, `accounts`, `moderated`).
    modes: list[str] = Field(default_factory=list)
    #: With rooms shared through Redis: the room log's epoch. Another epoch than a client saw
    #: before means the log was lost and numbered again: its old ids mean nothing any more.
    epoch: str | None = None
    #: On an account's first join while none of its sessions is connected: the rooms the account
    #: is in (kept by the server, whatever device joined them), for the client to join.
    rooms: list[str] | None = None
    #: For an account: the id of the last line it marked read in this room (0: none).
    read: int | None = None


class ReadMarker(_ServerWire):
    """Another session of the same account read `room` up to `id`."""

    type: Literal["read"] = "read"
    room: str
    id: int


class SessionToken(_ServerWire):
    """A new session token after `register` or `password`: keep it in place of the old one."""

    type: Literal["token"] = "token"
    name: str
    token: str
    detail: str


class Gap(_ServerWire):
    """Messages `first` to `last` (ids) of a room are no longer kept: a
    resuming client cannot get them back."""

    type: Literal["gap"] = "gap"
    room: str = LOBBY
    first: int = Field(ge=1)
    last: int = Field(ge=1)
    detail: str


class Reset(_ServerWire):
    """The room's log was lost (the Redis holding it restarted without its data) and its ids
    start again from 1 in a new `epoch`: forget the room's old ids."""

    type: Literal["reset"] = "reset"
    room: str = LOBBY
    epoch: str | None = None
    detail: str


class HistoryPage(_ServerWire):
    """The answer to a history request: `count` message lines of `room` follow,
    all older than `before`; `more` older ones are still kept."""

    type: Literal["history"] = "history"
    room: str = LOBBY
    before: int
    count: int = Field(ge=0)
    more: int = Field(ge=0)


class ChatMessage(_ServerWire):
    """Something a user said to a room, numbered by that room."""

    type: Literal["message"] = "message"
    room: str = LOBBY
    id: int = Field(ge=1)
    name: str
    msg: str
    time: Timestamp
    #: Only on the sender's echo: the `cid` it sent the line with.
    cid: str | None = None


class Action(_ServerWire):
    """A `/me` action, numbered in its room's sequence like chat messages."""

    type: Literal["action"] = "action"
    room: str = LOBBY
    id: int = Field(ge=1)
    name: str
    msg: str
    time: Timestamp
    #: Only on the sender's echo: the `cid` it sent the line with.
    cid: str | None = None


ModerationAction = Literal["kick", "ban", "unban", "mute", "unmute", "op", "deop", "voice", "devoice", "mode"]


class Moderation(_ServerWire):
    """`by` did `action` to `name` in the room: numbered and kept like messages, so the
    room's record is complete. `until`: when a ban or mute ends (absent: never)."""

    type: Literal["moderation"] = "moderation"
    room: str = LOBBY
    id: int = Field(ge=1)
    action: ModerationAction
    name: str
    by: str
    reason: str = ""
    until: Timestamp | None = None
    time: Timestamp


class Topic(_ServerWire):
    """A room's topic was set by `name`; numbered and kept in the room's history."""

    type: Literal["topic"] = "topic"
    room: str = LOBBY
    topic: str
    name: str
    id: int = Field(ge=1)
    time: Timestamp


class PrivateMessage(_ServerWire):
    """A private message, delivered to `to` and echoed to `name`, the sender.

    Numbered in the server's one private sequence (not a room's), so the two
    parties can resume it with a join's `private_since`."""

    type: Literal["private"] = "private"
    id: int = Field(ge=1)
    name: str
    to: str
    msg: str
    time: Timestamp
    #: Only on the sender's echo: the `cid` it sent the line with.
    cid: str | None = None


class Joined(_ServerWire):
    """Somebody joined a room."""

    type: Literal["joined"] = "joined"
    room: str = LOBBY
    name: str
    time: Timestamp


LeaveReason = Literal[
    "quit", "part", "disconnected", "timeout", "slow_consumer", "excess_flood", "kicked", "banned", "shutdown"
]


class Left(_ServerWire):
    """Somebody left a room, and why; `msg`: its own parting words, if it gave some (a part or a
    leave): one line of at most MAX_REASON characters, without control or invisible characters."""

    type: Literal["left"] = "left"
    room: str = LOBBY
    name: str
    reason: LeaveReason
    msg: str | None = None
    time: Timestamp


class Renamed(_ServerWire):
    """Somebody changed their name: sent once in each room they are in; `room`
    is null only on the copy a renamer in no room gets."""

    type: Literal["renamed"] = "renamed"
    room: str | None = None
    old: str
    new: str
    time: Timestamp


class Users(_ServerWire):
    """The answer to `who`: the room's members, sorted."""

    type: Literal["users"] = "users"
    room: str = LOBBY
    users: list[str]
    #: Members with a role in the room: name -> `owner`, `op` or `admin` (a server operator).
    roles: dict[str, str] = Field(default_factory=dict)
    #: Members who said they are away: name -> why.
    away: dict[str, str] = Field(default_factory=dict)


class Away(_ServerWire):
    """To the sender of a private message: its recipient said they are away, and why. With
    `room`: to that room's members, a member went away (`msg`: why) or came back (`msg` "")."""

    type: Literal["away"] = "away"
    room: str | None = None
    name: str
    msg: str


class RoomInfo(_ServerWire):
    """One room in the answer to `rooms`."""

    room: str
    users: int = Field(ge=0)
    topic: str


class RoomList(_ServerWire):
    """The answer to `rooms`: a page of rooms, empty ones too, sorted by name; `more` says
    how many come after it (ask again with `after` set to the last name)."""

    type: Literal["rooms"] = "rooms"
    rooms: list[RoomInfo]
    more: int = 0


class ServerPing(_ServerWire):
    type: Literal["ping"] = "ping"


class ServerPong(_ServerWire):
    type: Literal["pong"] = "pong"


class Notice(_ServerWire):
    """Something about the connection itself, for this client only: `rate_limited`
    means its lines are being served `delay_ms` later than they arrived (sent once
    each time it starts being slowed down)."""

    type: Literal["notice"] = "notice"
    code: Literal["rate_limited"]
    detail: str
    delay_ms: int = Field(ge=0)


class ServerNotice(_ServerWire):
    """What was done: the answer to a server operator's action, or to `away`."""

    type: Literal["done"] = "done"
    detail: str


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
    "name_registered",
    "name_reserved",
    "nick_locked",
    "too_many_rooms",
    "auth_failed",
    "account_required",
    "not_registered",
    "session_replaced",
    "tls_required",
    "plaintext_only",
    "not_operator",
    "cannot_moderate",
    "banned",
    "muted",
    "removed",
    "room_invalid",
    "topic_too_long",
    "topic_invalid",
    "not_joined",
    "already_joined",
    "not_in_room",
    "no_such_room",
    "no_such_user",
    "slow_consumer",
    "excess_flood",
    "idle_timeout",
    "join_timeout",
    "server_full",
    "too_many_connections",
    "storage_failed",
    "search_invalid",
    "search_unavailable",
]


class SearchResults(_ServerWire):
    """The answer to `search`: `count` matching numbered lines follow, newest first, each as it
    is kept (room lines with their `room`); `more` older ones match too."""

    type: Literal["results"] = "results"
    text: str
    count: int
    more: int


class ErrorReply(_ServerWire):
    """Sent to the offending client only; the connection stays open unless the
    code is one of CLOSING_ERRORS. `room` names the room the refused line was
    about, when it was about one."""

    type: Literal["error"] = "error"
    code: ErrorCode
    detail: str
    room: str | None = None


#: Error codes after which the server closes the connection.
CLOSING_ERRORS = frozenset(
    {
        "line_too_long",
        "slow_consumer",
        "excess_flood",
        "idle_timeout",
        "join_timeout",
        "server_full",
        "too_many_connections",
        "session_replaced",
        "tls_required",
        "plaintext_only",
        "removed",
    }
)

ServerMessage = Annotated[
    Welcome
    | SearchResults
    | SessionToken
    | Gap
    | Reset
    | HistoryPage
    | ChatMessage
    | Action
    | Topic
    | PrivateMessage
    | Moderation
    | Joined
    | Left
    | Renamed
    | Users
    | Away
    | RoomList
    | ReadMarker
    | ServerPing
    | ServerPong
    | Notice
    | ServerNotice
    | Shutdown
    | ErrorReply,
    Field(discriminator="type"),
]

#: Lines numbered in a room's sequence and kept in its history.
RoomEvent = ChatMessage | Action | Topic | Moderation
