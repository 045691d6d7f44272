"""What the core hands the delivery edge: a Line is one server message, with its bytes in each dialect.

Rooms and the hub make Lines from protocol models and never encode bytes
themselves; each front door's Dialect turns a Line into its own bytes, once
per line however many of its peers read it (the line keeps them, as Ergo's
message cache does). The JSON encoding is also the durable one (storage and
Redis keep it), so a Line read back from history is its JSON bytes alone,
decoded again only if a dialect other than JSON asks for its message.
Pure: no sockets, threads or locks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, NamedTuple, Protocol

from chat.errors import RequestFailed
from chat.wire.codec import decode_server, encode, encode_said, error_reply, with_cid
from chat.wire.protocol import ServerMessage


class Dialect(Protocol):
    """How one front door writes server messages (JSON lines; later IRC, and others).

    A dialect object stands for one way of writing: a connection whose
    wishes change how lines look (an IRC client's capabilities, say) uses
    another object, and each Line keeps its bytes per object.
    """

    #: A short name for logs and metrics (`json`, `irc`, ...).
    name: str

    def encode(self, line: Line) -> bytes:
        """The bytes that carry `line` to a peer of this dialect (possibly none: b"")."""
        ...


class PeerWriter(Dialect, Protocol):
    """A dialect object that writes for one peer alone (`per_peer`; IRC's, whose words depend on
    the client's capabilities and on the command it is being answered): a Line keeps no bytes for it."""

    per_peer: bool

    def written(self, line: Line) -> bytes:
        """A room's `line` in this peer's words, whichever thread writes it: never part of the
        answer to a command that thread serves (`encode` may take a reply for one)."""
        ...


class JsonLines:
    """The JSON line protocol (protocol.md): a line's own JSON encoding, as stored."""

    name = "json"

    def encode(self, line: Line) -> bytes:
        return line.json


#: The dialect of our own protocol, the one storage keeps. One object: Lines compare dialects by identity.
JSON_LINES = JsonLines()


class Line:
    """One server message, as its model and its bytes in each dialect that asked, each made once.

    Shared by every connection that reads it, from several threads: each
    lazily made part is made whole before it is kept, so a race at worst
    makes it twice, never half.
    """

    __slots__ = ("_encoded", "_message", "echo", "echo_to", "json")

    def __init__(self, json: bytes, message: ServerMessage | None = None) -> None:
        """A line whose JSON encoding is `json` (as stored; ends with a newline); `message`, its
        model, if the caller has it (else it is decoded from `json` when first asked for)."""
        self.json = json
        self._message = message
        self._encoded: dict[Dialect, bytes] | None = None
        #: The line as its sender sees it (with the `cid` it was sent with), and to whom (the
        #: sender's delivery peer): set before the line is published, then never changed.
        self.echo: Line | None = None
        self.echo_to: object | None = None

    @classmethod
    def of(cls, message: ServerMessage) -> Line:
        """The line for `message`, encoded to JSON now: every line goes to a JSON peer or storage."""
        return cls(encode(message), message)

    @classmethod
    def refusal(cls, failure: RequestFailed) -> Line:
        """The `error` line telling a peer why its request was not done (see codec.encode_error)."""
        return cls.of(error_reply(failure))

    @classmethod
    def said(cls, kind: Literal["message", "action"], room: str, name: str, msg: str, time: str, id: int) -> Line:
        """A line said in a room: the hot path, formatted straight from its parts (codec.encode_said).
        The id comes last, so that a log can number a line built from the rest."""
        return SaidLine(encode_said(kind, room, id, name, msg, time), SaidParts(kind, room, id, name, msg, time))

    def echoed(self, cid: str | None, to: object) -> Line:
        """This line, sent by the peer `to`, with its sender's echo carrying `cid` (if any) for it alone.
        Without a cid the sender's copy is the line itself; a dialect that writes its peer's own lines
        otherwise (IRC without echo-message) knows them by `echo_to`."""
        if cid is not None:
            self.echo = self.with_cid(cid)
        self.echo_to = to
        return self

    def with_cid(self, cid: str) -> Line:
        """This numbered line as its sender's echo: carrying the `cid` it was sent with."""
        return Line(with_cid(self.json, cid))

    @property
    def message(self) -> ServerMessage:
        """The line's model (decoded from its JSON the first time, for a line read from history)."""
        message = self._message
        if message is None:
            message = self._message = decode_server(self.json)
        return message

    @property
    def id(self) -> int:
        """The id of a numbered line (a message, an action, a topic, a moderation, a private line)."""
        number = getattr(self.message, "id", None)
        if not isinstance(number, int):
            raise ValueError(f"a {self.message.type} line has no id")
        return number

    def encoded(self, dialect: Dialect) -> bytes:
        """The line in `dialect`'s bytes, made once per dialect (each time, for a writer of one peer)."""
        if dialect is JSON_LINES:
            return self.json
        if getattr(dialect, "per_peer", False):
            return dialect.encode(self)  # one peer's words (IRC's replies): not kept on the line
        encoded = self._encoded
        if encoded is None:
            encoded = self._encoded = {}
        data = encoded.get(dialect)
        if data is None:
            data = encoded[dialect] = dialect.encode(self)
        return data

    def __repr__(self) -> str:
        return f"Line({self.json!r})"


class SaidParts(NamedTuple):
    """The parts of a line said in a room, as its JSON carries them (`time` in wire form)."""

    kind: Literal["message", "action"]
    room: str
    id: int
    name: str
    msg: str
    time: str


class SaidLine(Line):
    """A line said in a room (Line.said): it looks the same to every reader of a dialect, but for
    its sender's own copy, so that a dialect with a writer per peer shares one rendering of it.
    It keeps its parts, so that another dialect writes it without decoding its JSON again."""

    __slots__ = ("parts",)

    def __init__(self, json: bytes, parts: SaidParts) -> None:
        super().__init__(json)
        self.parts = parts


class Repeat(Line):
    """A line kept before under its sender's `(identity, cid)`, found only when a log went to
    keep it again (another server kept it meanwhile): its sender is answered with it, nobody
    else is sent it."""

    __slots__ = ()


def render(lines: Iterable[Line], dialect: Dialect) -> bytes:
    """Several lines in `dialect`'s bytes, as one buffer."""
    if dialect is JSON_LINES:
        return b"".join([line.json for line in lines])
    return b"".join([line.encoded(dialect) for line in lines])
