"""IRC's words: a line framed from bytes, parsed into a message with its IRCv3 tags, and a message
formatted back into a line.

Pure: no sockets, threads or clocks. Limits are IRCv3's: a line is at most 512 bytes without its
tags (CRLF included) and its tags at most 8191 bytes; the framer says so for a longer one, drops
it whole, and goes on with the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Most bytes of a line without its tags, CRLF included (RFC 1459).
MAX_BODY = 512
#: Most bytes of a line's tags, the leading `@` and the space after them included (IRCv3 message-tags).
MAX_TAGS = 8191
#: Most bytes of the tag data a client may send (IRCv3 message-tags: 4094, without `@` and the space).
MAX_CLIENT_TAGS = 4094
#: Most bytes the framer holds of a line that has no end yet.
MAX_PENDING = MAX_BODY + MAX_TAGS

#: Commands whose last param is text: always written as a trailing one (`:text`), as clients expect.
TEXT_COMMANDS = frozenset({"PRIVMSG", "NOTICE", "TOPIC", "KICK", "QUIT", "ERROR", "AWAY"})

_TAG_ESCAPES = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_TAG_TABLE = str.maketrans(_TAG_ESCAPES)
_TAG_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


class IrcSyntaxError(ValueError):
    """A line that is no IRC message (the client's fault): answered, never raised past the dialect.
    `utf8`: it is not UTF-8 (an IRCv3 UTF8ONLY server says so)."""

    def __init__(self, detail: str, utf8: bool = False) -> None:
        super().__init__(detail)
        self.utf8 = utf8


@dataclass(frozen=True, slots=True)
class IrcMessage:
    """One parsed IRC message: tags, the source a client may give (ignored), the command in upper case, params."""

    command: str
    params: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    source: str | None = None


@dataclass(frozen=True, slots=True)
class TooLong:
    """A line over the limits, dropped; `tags`: its tags were the part too long."""

    tags: bool


class IrcFramer:
    """Splits a byte stream into lines on LF (a CR before it is dropped), and drops over-long ones."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False

    @property
    def unfinished(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | TooLong]:
        """The complete lines in what arrived so far (without their ends), and a TooLong for each dropped one."""
        out: list[bytes | TooLong] = []
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buffer[start:end])
            start = end + 1
            if self._discarding:
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            too_long = _too_long(line)
            out.append(line if too_long is None else too_long)
        del buffer[:start]
        if len(buffer) > MAX_PENDING:
            if not self._discarding:
                out.append(TooLong(buffer.startswith(b"@") and buffer.find(b" ") in (-1, MAX_TAGS)))
            self._discarding = True
            buffer.clear()
        return out


def _too_long(line: bytes) -> TooLong | None:
    body = line
    if line.startswith(b"@"):
        space = line.find(b" ")
        tags_size = (space if space >= 0 else len(line)) + 1
        if tags_size - 2 > MAX_CLIENT_TAGS:
            return TooLong(True)
        body = line[tags_size:]
    return TooLong(False) if len(body) + 2 > MAX_BODY else None


def parse(line: bytes) -> IrcMessage:
    """The message in one line (its end already cut off); IrcSyntaxError if it is none."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IrcSyntaxError("the line is not UTF-8", utf8=True) from exc
    if "\0" in text or "\r" in text:
        raise IrcSyntaxError("the line has a NUL or a lone CR")
    tags: dict[str, str] = {}
    rest = text.lstrip(" ")
    if rest.startswith("@"):
        raw, _, rest = rest[1:].partition(" ")
        for item in raw.split(";"):
            if item:
                key, _, value = item.partition("=")
                tags[key] = unescape_tag(value)
        rest = rest.lstrip(" ")
    source: str | None = None
    if rest.startswith(":"):
        source, _, rest = rest[1:].partition(" ")
        rest = rest.lstrip(" ")
    params: list[str] = []
    while rest:
        if rest.startswith(":"):
            params.append(rest[1:])
            break
        word, _, rest = rest.partition(" ")
        params.append(word)
        rest = rest.lstrip(" ")
    if not params:
        raise IrcSyntaxError("the line has no command")
    command = params.pop(0)
    if not command.isascii() or not command.isalnum():
        raise IrcSyntaxError(f"{command[:20]!r} is no command")
    return IrcMessage(command.upper(), params, tags, source)


def escape_tag(value: str) -> str:
    return value.translate(_TAG_TABLE)


def unescape_tag(value: str) -> str:
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            out.append(_TAG_UNESCAPES.get(following, following))
        else:
            out.append(char)
    return "".join(out)


def format_tags(tags: dict[str, str]) -> str:
    """`@k=v;k2 ` for a line's start ("" without tags)."""
    if not tags:
        return ""
    return "@" + ";".join(f"{key}={escape_tag(value)}" if value else key for key, value in tags.items()) + " "


def line(command: str, *params: str, source: str | None = None, tags: dict[str, str] | None = None) -> bytes:
    """One IRC line, CRLF included; the last param is a trailing one when it must be."""
    parts: list[str] = []
    if source:
        parts.append(":" + source)
    parts.append(command)
    text_last = command in TEXT_COMMANDS
    for index, param in enumerate(params):
        last = index == len(params) - 1
        if last and (text_last or not param or " " in param or param.startswith(":")):
            parts.append(":" + param)
        else:
            parts.append(param)
    text = format_tags(tags or {}) + " ".join(parts)
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8") + b"\r\n"


def split_text(text: str, room: int) -> list[str]:
    """`text` as IRC lines of at most `room` UTF-8 bytes each: one a line of text, long ones cut
    between characters; blank lines dropped."""
    out: list[str] = []
    for part in text.split("\n"):
        part = part.rstrip("\r")
        if not part.strip():
            continue
        data = part.encode("utf-8")
        while len(data) > room:
            cut = room
            while cut > 0 and (data[cut] & 0xC0) == 0x80:  # not inside a character
                cut -= 1
            out.append(data[:cut].decode("utf-8"))
            data = data[cut:]
        out.append(data.decode("utf-8"))
    return out
