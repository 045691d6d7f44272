"""The IRC front door: an IRC client's commands as the hub's requests, and the hub's Lines as IRC lines.
It owns registration, capabilities, the mapping of each command and the wording of every reply.

IrcConnection is a base.Connection: bytes in (CRLF framing, IRCv3 tags), the
registration and CAP/SASL state machine, each command mapped to the client
model the hub takes (or answered here: PING, CAP, WHOIS, ...), paced by the same
token bucket as JSON lines. Its IrcWriter is the Lines dialect its peer is
written in: room lines come from an IrcRender shared by every client with the
same capabilities (made once per line), replies to this client's own requests
are worded with what it asked. No sockets or clocks: the writer is called from
the outbox's thread and the client's handler, and a lock guards what both touch.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from pydantic import ValidationError

from chat.errors import RequestFailed
from chat.server.config import ServerConfig
from chat.server.dialects.base import (
    MAX_BATCH,
    Answer,
    Close,
    Connection,
    Describe,
    Directory,
    Due,
    Handled,
    JoinTwinRooms,
    LogIn,
    Request,
    Said,
    _Waiting,
)
from chat.server.dialects.ircwire import (
    MAX_BODY,
    IrcFramer,
    IrcMessage,
    IrcSyntaxError,
    TooLong,
    format_tags,
    line,
    parse,
    split_text,
)
from chat.server.history import HistoryQuery, Ref
from chat.server.lines import Line, SaidLine, SaidParts
from chat.server.session import Presence
from chat.wire.codec import error_reply
from chat.wire.protocol import (
    CLOSING_ERRORS,
    MAX_NAME,
    MAX_REASON,
    MAX_ROOM,
    MAX_TOPIC,
    Action,
    Away,
    Ban,
    ChatMessage,
    ClientMessage,
    Deop,
    ErrorReply,
    Gap,
    HistoryPage,
    Join,
    Joined,
    Kick,
    Leave,
    Left,
    ListRooms,
    Moderation,
    Nick,
    Notice,
    Op,
    Part,
    PrivateMessage,
    ReadMarker,
    Renamed,
    Reset,
    RoomList,
    SearchResults,
    SendAction,
    SendMessage,
    SendPrivate,
    ServerNotice,
    ServerPing,
    ServerPong,
    SessionToken,
    SetAway,
    SetModes,
    SetTopic,
    Shutdown,
    Topic,
    Unban,
    Users,
    Voice,
    Welcome,
    Who,
    format_time,
    room_key,
)
from chat.wire.text import has_invisible, is_visible

#: The host part of every user's hostmask (the server keeps no idents or hosts).
USER_HOST = "chat"
#: The capabilities offered (`CAP LS`), each honoured.
CAPS = (
    "server-time",
    "message-tags",
    "echo-message",
    "sasl",
    "batch",
    "draft/chathistory",
    "account-tag",
    "extended-join",
    "away-notify",
    "multi-prefix",
    "userhost-in-names",
    "labeled-response",
)
#: Their values for `CAP LS 302`.
CAP_VALUES = {"sasl": "PLAIN"}
#: Most lines CHATHISTORY answers at once (and ISUPPORT's CHATHISTORY).
CHATHISTORY_LIMIT = 500
#: CHATHISTORY's subcommands that read a channel's history, and how many references each takes.
_CHATHISTORY_REFS = {"LATEST": 1, "BEFORE": 1, "AFTER": 1, "AROUND": 1, "BETWEEN": 2}
#: RPL_ISUPPORT's tokens.
ISUPPORT = (
    "CASEMAPPING=ascii",
    "CHANTYPES=#",
    "PREFIX=(qov)~@+",
    "CHANMODES=b,,,mt",
    f"NICKLEN={MAX_NAME}",
    f"CHANNELLEN={MAX_ROOM + 1}",
    f"TOPICLEN={MAX_TOPIC}",
    f"AWAYLEN={MAX_TOPIC}",
    f"KICKLEN={MAX_TOPIC}",
    "UTF8ONLY",
    f"CHATHISTORY={CHATHISTORY_LIMIT}",
    "MSGREFTYPES=msgid,timestamp",
    "TARGMAX=PRIVMSG:4,NOTICE:4,JOIN:,PART:,KICK:1,NAMES:1,WHOIS:1",
    "NETWORK=chat",
    "CLIENTTAGDENY=*",  # client-only tags (+tag) are relayed to nobody: our lines carry none
)
#: Most bytes of parting words in a PART or QUIT line (what a member said on leaving, as KICKLEN's
#: reasons: the rest of the 512 is the command, channel and source).
_MAX_WORDS_BYTES = 300
#: IRC's formatting codes: colours (mIRC's, with their numbers; hex ones), bold, italics, reset...
_FORMATTING = re.compile(
    r"\x03(?:\d{1,2}(?:,\d{1,2})?)?"  # a colour: foreground, background
    r"|\x04(?:[0-9a-fA-F]{6}(?:,[0-9a-fA-F]{6})?)?"  # a hex colour
    r"|[\x02\x0f\x11\x16\x1d\x1e\x1f]"  # bold, reset, monospace, reverse, italics, strike, underline
)
#: Most nicks an IrcWriter remembers the away text of (away-notify said once per change).
_MAX_AWAY_KEPT = 4096
#: Most 400-byte AUTHENTICATE chunks one PLAIN exchange may take (a name, a password of 1024
#: characters and a token fit in far fewer): more is refused, never kept.
_MAX_SASL_CHUNKS = 12
#: Commands a client may send before it is registered.
_BEFORE_REGISTRATION = frozenset({"CAP", "NICK", "USER", "PASS", "AUTHENTICATE", "PING", "PONG", "QUIT"})
#: Characters a nick may not hold, and may not start with.
_NOT_IN_NICK = frozenset(" ,*?!@.:\0")
_NOT_FIRST_IN_NICK = frozenset("#&$:~%+0123456789-'")
_PREFIXES = {"owner": "~", "admin": "~", "op": "@", "voice": "+"}
_MODE_LETTERS = {"topic": "t", "moderated": "m"}
#: How a replayed moderation line says what was done (it is told, not done again).
_DONE = {
    "kick": "kicked", "ban": "banned", "unban": "unbanned", "mute": "muted", "unmute": "unmuted",
    "op": "made an operator:", "deop": "took operator from", "voice": "gave voice to", "devoice": "took voice from",
}
_LETTER_MODES = {letter: mode for mode, letter in _MODE_LETTERS.items()}
_ERROR_NUMERICS = {
    "banned": "474",
    "account_required": "477",
    "room_invalid": "479",
    "not_operator": "482",
    "cannot_moderate": "482",
    "muted": "404",
    "no_such_user": "401",
    "no_such_room": "403",
    "not_in_room": "442",
}


def hostmask(nick: str) -> str:
    """The source an IRC line gives a user (every user looks alike: the server keeps no idents)."""
    return f"{nick}!~u@{USER_HOST}"


def is_action(text: str) -> bool:
    """Whether a PRIVMSG's text is a CTCP ACTION (`/me`): `\\x01ACTION words\\x01`."""
    return text.startswith("\x01ACTION") and text.endswith("\x01") and len(text) > 9


def channel(room: str) -> str:
    return "#" + room


def nick_problem(nick: str) -> str | None:
    """Why `nick` cannot be an IRC client's name (None: it can)."""
    if not nick:
        return "a nick cannot be empty"
    if len(nick) > MAX_NAME:
        return f"a nick is at most {MAX_NAME} characters"
    if nick[0] in _NOT_FIRST_IN_NICK or any(char in _NOT_IN_NICK for char in nick):
        return "a nick cannot start with a digit or #&$:~%+-, nor hold spaces or ,*?!@.:"
    if has_invisible(nick) or not is_visible(nick):
        return "a nick cannot hold control or invisible characters"
    return None


def room_of(target: str) -> str | None:
    """The room a channel name stands for (None: it is no channel of ours)."""
    if not target.startswith("#") or len(target) < 2 or len(target) > MAX_ROOM + 1:
        return None
    room = target[1:]
    if has_invisible(room) or not is_visible(room) or "," in room:
        return None
    return room


class IrcLine(Line):
    """A line made in IRC's own words for one IRC peer (numerics, CAP, PONG): never stored or sent
    to another dialect."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        super().__init__(b"")
        self.raw = raw

    def encoded(self, dialect: object) -> bytes:
        return self.raw

    def __repr__(self) -> str:
        return f"IrcLine({self.raw!r})"


@dataclass(frozen=True, slots=True)
class _Asked:
    """What an IRC command that became a hub request asked, so that the reply is worded for it."""

    command: str
    target: str = ""
    #: The subcommand (CHATHISTORY's), for a reply that names it.
    sub: str = ""


@dataclass(slots=True)
class _Labeled:
    """A command sent with a `label` tag (labeled-response), while it is served: what it answers
    goes out in its turn (never after the lines its room sends next), its first line held until a
    second says whether the answer is one labeled line or a labeled-response batch."""

    label: str
    #: The handler thread serving it: only Lines written from there are part of its answer.
    thread: int
    #: The answer's first line, held while it is the only one.
    first: bytes | None = None
    #: The labeled-response batch once a second line started it ("" without the batch cap: the
    #: first line went out labeled, the rest as they are).
    batch: str | None = None
    #: Served whole: its answer ends when its answers are next taken out.
    done: bool = False
    #: Requests queued behind it that are part of it (JOIN #a,#b), not served yet.
    left: int = 0
    #: Whether the command's first request was served (its follow-ups come after it).
    served: bool = False
    #: Where a said line went and its text, when its echo is the answer (echo-message).
    echo: tuple[str, str] | None = None


class IrcDialect:
    """What an IRC listener makes each connection with; the renderers its connections share
    (one per set of capabilities that changes how a room's lines look)."""

    def __init__(self, server: str = "chat") -> None:
        #: The name the server gives itself (--irc-server-name): the source of numerics.
        self.server = server
        self._renderers: dict[frozenset[str], IrcRender] = {}
        self._lock = threading.Lock()

    def __call__(self, config: ServerConfig, *, tls: bool) -> IrcConnection:
        return IrcConnection(config, self, tls=tls)

    def renderer(self, caps: frozenset[str], directory: Directory | None) -> IrcRender:
        """The renderer for clients with `caps` (only those that change room lines count)."""
        wanted = caps & IrcRender.RENDERING
        with self._lock:
            found = self._renderers.get(wanted)
            if found is None:
                found = self._renderers[wanted] = IrcRender(wanted, directory, self.server)
            return found


class IrcConnection(Connection):
    """One IRC client: registration (NICK, USER, CAP, SASL PLAIN), then its commands as requests."""

    def __init__(self, config: ServerConfig, dialect: IrcDialect | None = None, *, tls: bool = False) -> None:
        super().__init__(config.flood_rate, config.flood_burst, config.flood_max_delay)
        self._dialect = dialect or IrcDialect()
        self._framer = IrcFramer()
        self.directory: Directory | None = None
        #: The client's nick once registered (also the hub's name for it); before, the one it asked for.
        self.nick: str | None = None
        self.registered = False
        self.logged_in = False
        self.account: str | None = None
        self._user: tuple[str, str] | None = None
        self._password: str | None = None
        self._negotiating = False
        self._version = 301
        #: Capabilities the client enabled.
        self.caps: frozenset[str] = frozenset()
        self._sasl: list[str] | None = None  # the AUTHENTICATE payload so far, while one runs
        self._sasl_login: tuple[str, str] | None = None
        self._wanted: str | None = None  # the nick asked for, when SASL logged in under another
        #: The request being served, for the wording of its reply.
        self.asking: _Asked | None = None
        self._asked: dict[int, _Asked] = {}
        #: The labeled command being served, if one is (labeled-response).
        self.labeled: _Labeled | None = None
        self.writer = IrcWriter(self)

    # --- base.Connection -------------------------------------------------------------------

    @property
    def writes(self) -> IrcWriter:
        return self.writer

    def attach(self, directory: Directory) -> None:
        self.directory = directory

    @property
    def unfinished(self) -> int:
        return self._framer.unfinished

    def receive_data(self, data: bytes, now: float) -> None:
        if self.closing is not None or self.ended or not data:
            return
        for framed in self._framer.feed(data):
            if isinstance(framed, TooLong):
                self._reply("417", "Input line was too long")
                continue
            if not framed.strip():
                continue
            try:
                message = parse(framed)
            except IrcSyntaxError as exc:
                if exc.utf8:
                    self._answers.append(self._line("FAIL", "*", "INVALID_UTF8", "Lines are UTF-8 here"))
                continue  # as most servers do, any other garbled line is dropped without a word
            if not self._admit(message, len(framed), now):
                return

    def _request(self, message: object) -> Due:
        labeled = self.labeled
        if labeled is not None:  # one of its follow-ups (the next channel of a JOIN, ...)
            return self._mapped(message)
        label = message.tags.get("label") if isinstance(message, IrcMessage) else None
        if not label or "labeled-response" not in self.caps or not self.registered:
            return self._mapped(message)
        if isinstance(message, IrcMessage) and message.command == "QUIT":
            return self._mapped(message)  # answered by the ERROR that ends the connection
        labeled = self.labeled = _Labeled(label[:64], threading.get_ident())
        due = self._mapped(message)
        if isinstance(due, Handled) and labeled.left == 0:
            labeled.done = True  # answered here, nothing for the hub
        elif "echo-message" in self.caps and labeled.left == 0:
            # A said line's echo is its answer: expected before the line is said (the echo may
            # be written by the outbox's thread before this one hears the line was kept).
            if isinstance(due, Said):
                labeled.echo = (room_key(due.room), due.lines[0].msg)
            elif isinstance(due, Request) and isinstance(due.message, SendPrivate):
                labeled.echo = ("@" + due.message.to.casefold(), due.message.msg)
            if labeled.echo is not None:
                self.writer.expect_echo(labeled.echo, labeled.label)
        return due

    def answers_to_send(self) -> Sequence[Answer]:
        labeled = self.labeled
        if labeled is None or labeled.thread != threading.get_ident():
            return super().answers_to_send()
        # Part of the labeled command's answer, in its turn; its end once it is served whole.
        out: list[Answer] = []
        for answer in super().answers_to_send():
            data = answer.raw if isinstance(answer, IrcLine) else self.writer.written(_as_line(answer))
            data = self.writer.labeled_part(labeled, data)
            if data:
                out.append(IrcLine(data))
        if labeled.done:
            self.labeled = None
            out.append(IrcLine(self.writer.labeled_end(labeled)))
        return out

    def _labeled_served(self, failure: RequestFailed | None, worded: Sequence[Answer] | None) -> None:
        """Count one served request of the labeled command, and see whether it is served whole.
        `worded`, what it answers a failure with, is part of its answer."""
        labeled = self.labeled
        if labeled is None:
            return
        if failure is not None:
            self._answers.extend(worded if worded is not None else [error_reply(failure)])
        if labeled.served:
            labeled.left -= 1
        labeled.served = True
        if labeled.left > 0:
            return
        if labeled.echo is not None:
            if failure is None and labeled.first is None and labeled.batch is None:
                self.labeled = None  # its echo answers it, labeled
                return
            self.writer.forget_echo(labeled.echo)
        labeled.done = True

    def _mapped(self, message: object) -> Due:
        self.asking = None
        try:
            mapped = self._command(message) if isinstance(message, IrcMessage) else message
        except _Numeric as refusal:
            if refusal.numeric == "FAIL":
                self._answers.append(self._line("FAIL", *refusal.params))
            else:
                self._answers.append(self._numeric(refusal.numeric, *refusal.params))
            return Handled()
        except ValidationError as exc:  # a param our models refuse (a topic with control characters, ...)
            command = message.command if isinstance(message, IrcMessage) else "*"
            if command != "NOTICE":
                detail = str(exc.errors()[0].get("msg", "invalid parameters"))
                self._answers.append(self._line("FAIL", command, "INVALID_PARAMS", detail))
            return Handled()
        if mapped is None:
            return Handled()
        command = message.command if isinstance(message, IrcMessage) else ""
        self.asking = self._asked.pop(id(mapped), _Asked(command))
        if isinstance(mapped, SendMessage | SendAction):
            return Said(mapped.room, (mapped,))
        return Request(mapped)  # type: ignore[arg-type]  # only requests are queued here

    def next_request(self, now: float) -> Due | None:
        due = super().next_request(now)
        if isinstance(due, Said):
            due = self._with_following_lines(due, now)
            self.asking = _Asked("PRIVMSG", channel(due.room))
        return due

    def _with_following_lines(self, due: Said, now: float) -> Said:
        """`due` with the PRIVMSGs to the same channel due right after it (as JSON lines to one
        room are batched: one write and one publish for all). Stops at anything else, or at a
        line that would be refused, which is then served on its own."""
        said = list(due.lines)
        key = room_key(due.room)
        while len(said) < MAX_BATCH and self.due(now):
            message = self._waiting[0].message
            if not isinstance(message, IrcMessage) or message.command != "PRIVMSG" or len(message.params) < 2:
                break
            target, text = message.params[0], message.params[1]
            room = room_of(target) if target.startswith("#") else None
            if room is None or room_key(room) != key or not text.strip():
                break
            action = is_action(text)
            try:
                mapped = self._said(target, text, action)
            except (_Numeric, ValueError):  # ValidationError is a ValueError
                break
            if not isinstance(mapped, SendMessage | SendAction):
                break
            self._waiting.popleft()
            said.append(mapped)
        return due if len(said) == len(due.lines) else Said(due.room, tuple(said))

    def served(self, due: Due, failure: RequestFailed | None) -> Sequence[Answer] | None:
        worded = self._served(due, failure)
        if self.labeled is None:
            return worded
        self._labeled_served(failure, worded)
        return () if failure is not None else None  # a failure goes out with the rest of the answer

    def _served(self, due: Due, failure: RequestFailed | None) -> Sequence[Answer] | None:
        asked = self.asking or _Asked("")
        if isinstance(due, Request) and isinstance(due.message, LogIn):
            return self._logged_in(due.message.join, failure)
        if asked.command == "REGISTER":  # the nick asked for beside a SASL login: taken or not, welcome
            self._welcome()
            return () if failure is None else [self._line("NOTICE", self.me, f"you stay {self.me}: {failure.detail}")]
        if failure is None:
            return None
        if asked.command == "NOTICE":
            return ()  # a NOTICE is never answered with an error
        if asked.command == "NICK":
            numeric = "433" if failure.code in ("name_taken", "name_registered") else "432"
            return [self._numeric(numeric, asked.target, failure.detail)]
        if asked.command == "JOIN" and failure.code == "already_joined":
            return ()
        if asked.command in ("NAMES",):
            return [self._numeric("366", asked.target, "End of /NAMES list")]
        if asked.command == "WHO":
            return [self._numeric("315", asked.target, "End of /WHO list")]
        if asked.command in ("TOPIC", "PART", "KICK", "MODE") and failure.code == "not_in_room":
            return [self._numeric("442", asked.target, failure.detail)]
        if asked.command == "KICK" and failure.code == "no_such_user":
            return [self._numeric("441", asked.target, failure.detail)]
        if asked.command == "CHATHISTORY":
            code = "MESSAGE_ERROR" if failure.code == "storage_failed" else "INVALID_TARGET"
            return [self._line("FAIL", "CHATHISTORY", code, asked.sub or "*", asked.target, failure.detail)]
        worded = _ERROR_NUMERICS.get(failure.code)
        if worded is not None and asked.target:
            return [self._numeric(worded, asked.target, failure.detail)]
        return [self._line("NOTICE", self.nick or "*", failure.detail)]

    # --- replies ------------------------------------------------------------------------

    @property
    def server(self) -> str:
        """The name the server gives itself (the source of numerics)."""
        return self._dialect.server

    @property
    def real_name(self) -> str:
        return self._user[1] if self._user else ""

    @property
    def me(self) -> str:
        return self.nick if self.registered and self.nick else "*"

    def _line(self, command: str, *params: str, source: str | None = None) -> IrcLine:
        return IrcLine(line(command, *params, source=self.server if source is None else source))

    def _numeric(self, numeric: str, *params: str) -> IrcLine:
        return self._line(numeric, self.me, *params)

    def _reply(self, numeric: str, *params: str) -> None:
        self._answers.append(self._numeric(numeric, *params))

    def _close_with(self, why: str) -> None:
        self._close(Close(IrcLine(line("ERROR", why)), None, why))

    # --- commands ------------------------------------------------------------------------

    def _command(self, message: IrcMessage) -> ClientMessage | LogIn | HistoryQuery | None:
        """The hub request a command maps to (None: answered here); _Numeric to refuse it."""
        command, params = message.command, message.params
        if not self.registered and command not in _BEFORE_REGISTRATION:
            raise _Numeric("451", "You have not registered")
        handler = getattr(self, f"_on_{command.lower()}", None)
        if handler is None:
            raise _Numeric("421", command, "Unknown command")
        result: ClientMessage | LogIn | HistoryQuery | None = handler(params)
        return result

    def _need(self, params: list[str], count: int, command: str) -> None:
        if len(params) < count or not params[0]:
            raise _Numeric("461", command, "Not enough parameters")

    def _ask(self, request: ClientMessage, command: str, target: str = "") -> ClientMessage:
        self._asked[id(request)] = _Asked(command, target)
        return request

    def _follow(self, requests: Sequence[ClientMessage | Describe]) -> None:
        """Queue requests right behind the one being served (the other channels of one JOIN):
        due at once, as the line that asked for them was charged already."""
        for request in reversed(requests):
            self._waiting.appendleft(_Waiting(0.0, request))
        if self.labeled is not None:
            self.labeled.left += len(requests)

    def _on_ping(self, params: list[str]) -> None:
        self._need(params, 1, "PING")
        self._answers.append(self._line("PONG", self.server, params[0]))

    def _on_pong(self, params: list[str]) -> None:
        return None  # any line keeps a connection alive

    def _on_quit(self, params: list[str]) -> ClientMessage:
        why = params[0] if params else "Client Quit"
        self._answers.append(IrcLine(line("ERROR", f"Closing link: {why}")))
        return Leave(msg=_unformatted(params[0])[:MAX_REASON] if params and params[0] else None)

    def _on_cap(self, params: list[str]) -> ClientMessage | LogIn | None:
        self._need(params, 1, "CAP")
        sub = params[0].upper()
        me = self.nick if self.registered and self.nick else "*"
        if sub == "LS":
            if not self.registered:
                self._negotiating = True
            if len(params) > 1 and params[1].isdigit():
                self._version = max(self._version, int(params[1]))
            offered = [
                f"{cap}={CAP_VALUES[cap]}" if self._version >= 302 and cap in CAP_VALUES else cap for cap in CAPS
            ]
            self._answers.append(self._line("CAP", me, "LS", " ".join(offered)))
        elif sub == "LIST":
            self._answers.append(self._line("CAP", me, "LIST", " ".join(sorted(self.caps))))
        elif sub == "REQ":
            if not self.registered:
                self._negotiating = True
            asked = params[1] if len(params) > 1 else ""
            wanted = set(self.caps)
            ok = True
            for cap in asked.split():
                name = cap.removeprefix("-")
                if name not in CAPS:
                    ok = False
                elif cap.startswith("-"):
                    wanted.discard(name)
                else:
                    wanted.add(name)
            if ok and asked.strip():
                self.caps = frozenset(wanted)
                self.writer.caps_changed()
            self._answers.append(self._line("CAP", me, "ACK" if ok and asked.strip() else "NAK", asked))
        elif sub == "END":
            if not self.registered:
                self._negotiating = False
                if self._sasl is not None:  # registration ends an unfinished SASL exchange
                    self._sasl = None
                    self._reply("906", "SASL authentication aborted")
                return self._try_register()
        else:
            raise _Numeric("410", params[0], "Invalid CAP command")
        return None

    def _on_pass(self, params: list[str]) -> None:
        self._need(params, 1, "PASS")
        if self.registered:
            raise _Numeric("462", "You may not reregister")
        self._password = params[0]

    def _on_nick(self, params: list[str]) -> ClientMessage | LogIn | None:
        if not params or not params[0]:
            raise _Numeric("431", "No nickname given")
        nick = params[0]
        problem = nick_problem(nick)
        if problem is not None:
            raise _Numeric("432", nick, f"Erroneous nickname: {problem}")
        if self.registered:
            if nick == self.nick:
                return None
            return self._ask(Nick(name=nick), "NICK", nick)
        if self.logged_in:  # SASL named the connection already: this nick is taken at the end of registration
            self._wanted = nick
            return None
        self.nick = nick
        return self._try_register()

    def _on_user(self, params: list[str]) -> ClientMessage | LogIn | None:
        if self.registered:
            raise _Numeric("462", "You may not reregister")
        if len(params) < 4 or not params[0] or not params[3]:
            raise _Numeric("461", "USER", "Not enough parameters")
        self._user = (params[0], params[3])
        return self._try_register()

    def _try_register(self) -> ClientMessage | LogIn | None:
        """Registration ends once NICK, USER and any CAP negotiation are done: the name is claimed."""
        if self.registered or self._negotiating or self._user is None or self.nick is None or self._sasl is not None:
            return None
        if self.logged_in:
            user, real = self._user
            self._follow([Describe(user[:MAX_NAME], real[:MAX_TOPIC])])
            wanted, self._wanted = self._wanted, None
            if wanted is not None and wanted != self.nick:
                return self._ask(Nick(name=wanted), "REGISTER", wanted)
            self._welcome()
            return None
        return self._login(self.nick, self._password, None)

    def _on_authenticate(self, params: list[str]) -> LogIn | None:
        self._need(params, 1, "AUTHENTICATE")
        if "sasl" not in self.caps:
            raise _Numeric("904", "SASL authentication failed: request the sasl capability first")
        if self.logged_in:
            raise _Numeric("907", "You have already authenticated")
        word = params[0]
        if word == "*":
            self._sasl = None
            raise _Numeric("906", "SASL authentication aborted")
        if self._sasl is None:
            if word.upper() != "PLAIN":
                self._answers.append(self._numeric("908", "PLAIN", "are available SASL mechanisms"))
                raise _Numeric("904", "SASL authentication failed")
            self._sasl = []
            self._answers.append(self._line("AUTHENTICATE", "+", source=""))
            return None
        if len(word) > 400:
            self._sasl = None
            raise _Numeric("905", "SASL message too long")
        if word != "+":
            self._sasl.append(word)
        if len(self._sasl) > _MAX_SASL_CHUNKS:  # more than any name and password of ours can take
            self._sasl = None
            raise _Numeric("904", "SASL authentication failed: the message is too long")
        if len(word) == 400:
            return None  # more follows
        payload, self._sasl = "".join(self._sasl), None
        try:
            fields = base64.b64decode(payload, validate=True).decode("utf-8").split("\0")
        except (binascii.Error, UnicodeDecodeError):
            raise _Numeric("904", "SASL authentication failed: not base64 PLAIN") from None
        if len(fields) != 3 or not fields[1] or not fields[2]:
            raise _Numeric("904", "SASL authentication failed: not PLAIN")
        authzid, account, password = fields
        if authzid and authzid != account:
            raise _Numeric("904", "SASL authentication failed: no other authorization identity")
        if self.registered:
            raise _Numeric("904", "SASL authentication failed: log in before registering")
        self._sasl_login = (account, password)
        # A password, or a session token a welcome gave this account.
        return self._login(account, password, password)

    def _login(self, name: str, password: str | None, token: str | None) -> LogIn:
        try:
            if token is not None and len(token) > 256:
                token = None
            user, real = self._user or ("", "")
            return LogIn(Join(name=name, password=password, token=token), user[:MAX_NAME], real[:MAX_TOPIC])
        except ValidationError:
            numeric = "904" if self._sasl_login is not None else "464"
            self._sasl_login = None
            raise _Numeric(numeric, "That password cannot be one of ours") from None

    def _logged_in(self, login: Join, failure: RequestFailed | None) -> Sequence[Answer]:
        name = login.name or "*"
        sasl = self._sasl_login is not None
        self._sasl_login = None
        if failure is not None:
            if sasl:
                return [self._numeric("904", f"SASL authentication failed: {failure.detail}")]
            if failure.code in ("name_taken", "name_registered"):
                return [self._numeric("433", name, failure.detail)]
            if failure.code == "auth_failed":
                return [self._numeric("464", failure.detail)]
            if failure.code == "name_invalid" or failure.code.startswith("name_"):
                return [self._numeric("432", name, failure.detail)]
            self._close_with(failure.detail)
            return [self._numeric("465", failure.detail)]
        previous, self.nick = self.nick, name
        self.logged_in = True
        found = self.directory.presence(name) if self.directory is not None else None
        self.account = found.account if found is not None else None
        if sasl:  # registration goes on with CAP END
            self._wanted = previous if previous and previous != name else None
            self._reply("900", hostmask(name), self.account or name, f"You are now logged in as {name}")
            self._reply("903", "SASL authentication successful")
            return ()
        self._welcome()
        return ()

    def _welcome(self) -> None:
        """The registration burst: 001-005 and the MOTD."""
        self.registered = True
        nick = self.nick or "*"
        self._reply("001", f"Welcome to the chat IRC network, {hostmask(nick)}")
        self._reply("002", f"Your host is {self.server}, running chat")
        self._reply("003", "This server was created some time ago")
        self._answers.append(self._line("004", nick, self.server, "chat", "i", "bmtov"))
        tokens = list(ISUPPORT)
        while tokens:
            self._answers.append(self._line("005", nick, *tokens[:12], "are supported by this server"))
            tokens = tokens[12:]
        self._motd()
        if self.account is not None:
            # Then, first of what is due, the rooms the account's other devices are in (their
            # JOINs come after this burst: never before 001).
            self._waiting.appendleft(_Waiting(self._now, JoinTwinRooms()))

    def _motd(self) -> None:
        self._reply("375", f"- {self.server} Message of the day -")
        self._reply("372", "- Rooms are channels: #lobby, #dev, ... History replays on join.")
        self._reply("376", "End of /MOTD command.")

    def _on_motd(self, params: list[str]) -> None:
        self._motd()

    def _on_join(self, params: list[str]) -> ClientMessage | None:
        self._need(params, 1, "JOIN")
        if params[0] == "0":
            raise _Numeric("421", "JOIN", "JOIN 0 is not supported: PART each channel")
        joins = [target for target in params[0].split(",") if target]
        return self._each(joins, "JOIN", lambda room: Join(room=room))

    def _on_part(self, params: list[str]) -> ClientMessage | None:
        self._need(params, 1, "PART")
        for target in params[0].split(","):
            room = room_of(target)
            if room is not None and room_key(room) not in self.writer.joined:
                raise _Numeric("442", target, "You're not on that channel")
        words = _unformatted(params[1])[:MAX_REASON] if len(params) > 1 and params[1] else None
        return self._each([t for t in params[0].split(",") if t], "PART", lambda room: Part(room=room, msg=words))

    def _each(self, targets: list[str], command: str, make: object) -> ClientMessage | None:
        """One request per channel: the first is returned, the rest queued behind it."""
        requests: list[ClientMessage] = []
        for target in targets:
            room = room_of(target)
            if room is None:
                self._reply("403", target, "No such channel")
                continue
            requests.append(self._ask(make(room), command, target))  # type: ignore[operator]
        if not requests:
            return None
        self._follow(requests[1:])
        return requests[0]

    def _on_privmsg(self, params: list[str], command: str = "PRIVMSG") -> ClientMessage | None:
        quiet = command == "NOTICE"
        if not params or not params[0]:
            if quiet:
                return None
            raise _Numeric("411", f"No recipient given ({command})")
        if len(params) < 2 or not params[1].strip():
            if quiet:
                return None
            raise _Numeric("412", "No text to send")
        text = params[1]
        action = is_action(text)
        requests: list[ClientMessage] = []
        for target in params[0].split(",")[:4]:
            try:
                requests.append(self._ask(self._said(target, text, action), command, target))
            except _Numeric as refusal:
                if not quiet:
                    self._answers.append(self._numeric(refusal.numeric, *refusal.params))
            except ValueError:
                if not quiet:
                    self._reply("412", "No text to send")
        if not requests:
            return None
        self._follow(requests[1:])
        return requests[0]

    def _said(self, target: str, text: str, action: bool) -> ClientMessage:
        if target.startswith("#"):
            room = room_of(target)
            if room is None:
                raise _Numeric("403", target, "No such channel")
            if room_key(room) not in self.writer.joined:
                raise _Numeric("404", target, "Cannot send to channel: join it first")
            if action:
                return SendAction(room=room, msg=text[8:-1])
            return SendMessage(room=room, msg=text)
        if nick_problem(target) is not None and len(target) > MAX_NAME:
            raise _Numeric("401", target, "No such nick/channel")
        return SendPrivate(to=target, msg=text)

    def _on_notice(self, params: list[str]) -> ClientMessage | None:
        return self._on_privmsg(params, "NOTICE")

    def _on_names(self, params: list[str]) -> ClientMessage | None:
        if not params or not params[0]:
            self._reply("366", "*", "End of /NAMES list")
            return None
        target = params[0].split(",")[0]
        room = room_of(target)
        if room is None:
            self._reply("366", target, "End of /NAMES list")
            return None
        return self._ask(Who(room=room), "NAMES", target)

    def _on_who(self, params: list[str]) -> ClientMessage | None:
        mask = params[0] if params and params[0] else "*"
        room = room_of(mask)
        if room is not None:
            return self._ask(Who(room=room), "WHO", mask)
        found = self.directory.presence(mask) if self.directory is not None and mask != "*" else None
        if found is not None:
            first = next(iter(found.rooms), None)
            self._reply(
                "352", channel(first) if first else "*", _user_of(found), USER_HOST, self.server, found.name,
                "G" if found.away else "H", f"0 {found.real_name or found.name}",
            )
        self._reply("315", mask, "End of /WHO list")
        return None

    def _on_whois(self, params: list[str]) -> None:
        self._need(params, 1, "WHOIS")
        nick = params[-1].split(",")[0]
        found = self.directory.presence(nick) if self.directory is not None else None
        if found is None:
            self._reply("401", nick, "No such nick/channel")
            self._reply("318", nick, "End of /WHOIS list")
            return
        self._reply("311", found.name, _user_of(found), USER_HOST, "*", found.real_name or found.name)
        if found.rooms:
            self._reply("319", found.name, " ".join(channel(room) for room in found.rooms))
        self._reply("312", found.name, self.server, "chat")
        if found.account is not None:
            self._reply("330", found.name, found.account, "is logged in as")
        if found.away:
            self._reply("301", found.name, found.away)
        self._reply("318", found.name, "End of /WHOIS list")

    def _on_ison(self, params: list[str]) -> None:
        self._need(params, 1, "ISON")
        online = []
        for nick in " ".join(params).split()[:32]:
            found = self.directory.presence(nick) if self.directory is not None else None
            if found is not None:
                online.append(found.name)
        self._reply("303", " ".join(online))

    def _on_userhost(self, params: list[str]) -> None:
        self._need(params, 1, "USERHOST")
        replies = []
        for nick in params[:5]:
            found = self.directory.presence(nick) if self.directory is not None else None
            if found is not None:
                replies.append(f"{found.name}={'-' if found.away else '+'}~u@{self.server}")
        self._reply("302", " ".join(replies))

    def _on_list(self, params: list[str]) -> ClientMessage:
        return self._ask(ListRooms(), "LIST", params[0] if params else "")

    def _on_topic(self, params: list[str]) -> ClientMessage | None:
        self._need(params, 1, "TOPIC")
        room = room_of(params[0])
        if room is None:
            raise _Numeric("403", params[0], "No such channel")
        if len(params) == 1:
            return self._ask(ListRooms(), "TOPIC", params[0])
        if len(params[1]) > MAX_TOPIC or any(not char.isprintable() for char in params[1]):
            raise _Numeric("417", "Topic too long or not printable")
        return self._ask(SetTopic(room=room, topic=params[1]), "TOPIC", params[0])

    def _on_away(self, params: list[str]) -> ClientMessage:
        why = params[0] if params else ""
        return self._ask(SetAway(msg=why[:MAX_TOPIC].replace("\t", " ")), "AWAY", why)

    def _on_kick(self, params: list[str]) -> ClientMessage | None:
        self._need(params, 2, "KICK")
        room = room_of(params[0])
        if room is None:
            raise _Numeric("403", params[0], "No such channel")
        reason = params[2] if len(params) > 2 else ""
        nick = params[1].split(",")[0]
        return self._ask(Kick(room=room, name=nick[:MAX_NAME], reason=reason[:MAX_TOPIC]), "KICK", params[0])

    def _on_mode(self, params: list[str]) -> ClientMessage | None:
        self._need(params, 1, "MODE")
        target = params[0]
        if not target.startswith("#"):
            if self.nick is None or target.casefold() != self.nick.casefold():
                raise _Numeric("502", "Can't change mode for other users")
            if len(params) > 1:
                self._answers.append(self._line("MODE", self.me, params[1], source=hostmask(self.me)))
            else:
                self._reply("221", "+i")
            return None
        room = room_of(target)
        if room is None:
            raise _Numeric("403", target, "No such channel")
        if len(params) == 1:
            modes = self.writer.modes.get(room, ())
            self._reply("324", target, "+" + "".join(sorted(_MODE_LETTERS[m] for m in modes if m in _MODE_LETTERS)))
            return None
        changes = _mode_changes(params[1], params[2:])
        if changes is None:
            raise _Numeric("472", params[1], "is an unknown mode char to me")
        requests: list[ClientMessage] = []
        on: list[str] = []
        off: list[str] = []
        for sign, letter, argument in changes:
            if letter == "b" and argument is None:
                self._reply("368", target, "End of channel ban list")
                continue
            if letter in _LETTER_MODES:
                (on if sign == "+" else off).append(_LETTER_MODES[letter])
                continue
            if argument is None:
                raise _Numeric("461", "MODE", "Not enough parameters")
            name = argument.split("!")[0][:MAX_NAME] or argument[:MAX_NAME]
            match sign, letter:
                case "+", "o":
                    requests.append(Op(room=room, name=name))
                case "-", "o":
                    requests.append(Deop(room=room, name=name))
                case "+", "v":
                    requests.append(Voice(room=room, name=name, type="voice"))
                case "-", "v":
                    requests.append(Voice(room=room, name=name, type="devoice"))
                case "+", "b":
                    requests.append(Ban(room=room, name=name))
                case _:
                    requests.append(Unban(room=room, name=name))
        if on or off:
            requests.insert(0, SetModes(room=room, on=on, off=off))  # type: ignore[arg-type]
        requests = [self._ask(request, "MODE", target) for request in requests]
        if not requests:
            return None
        self._follow(requests[1:])
        return requests[0]

    def _on_chathistory(self, params: list[str]) -> HistoryQuery | None:
        sub = params[0].upper() if params else ""
        if not sub:
            raise _Numeric("FAIL", "CHATHISTORY", "NEED_MORE_PARAMS", "*", "CHATHISTORY needs a subcommand")
        if sub not in _CHATHISTORY_REFS and sub != "TARGETS":
            raise _Numeric("FAIL", "CHATHISTORY", "UNKNOWN_COMMAND", params[0], "Unknown CHATHISTORY subcommand")
        if sub == "TARGETS":
            self._targets(params)
            return None
        wanted = _CHATHISTORY_REFS[sub] + 2  # the target, the references, the limit
        if len(params) - 1 < wanted:
            raise _Numeric("FAIL", "CHATHISTORY", "NEED_MORE_PARAMS", sub, f"{sub} takes {wanted} parameters")
        target, refs, limit_text = params[1], params[2:wanted], params[wanted]
        room = room_of(target)
        if room is None:
            raise _Numeric("FAIL", "CHATHISTORY", "INVALID_TARGET", sub, target, "Only channels keep history here")
        if not limit_text.isdigit():
            raise _Numeric("FAIL", "CHATHISTORY", "INVALID_PARAMS", limit_text, "The limit is a number")
        limit = int(limit_text)
        limit = CHATHISTORY_LIMIT if limit == 0 or limit > CHATHISTORY_LIMIT else limit  # as Ergo: 0 is the most
        references: list[Ref] = []
        for text in refs:
            if sub == "LATEST" and text == "*":
                continue
            reference = _reference(text)
            if reference is None:
                either = "msgid=<id> or timestamp=<YYYY-MM-DDThh:mm:ss.sssZ>" + (" or *" if sub == "LATEST" else "")
                raise _Numeric("FAIL", "CHATHISTORY", "INVALID_PARAMS", text, f"A reference is {either}")
            references.append(reference)
        query = HistoryQuery(room=room, kind=sub.lower(), refs=tuple(references), limit=limit)  # type: ignore[arg-type]
        self._asked[id(query)] = _Asked("CHATHISTORY", target, sub)
        return query


    def _targets(self, params: list[str]) -> None:
        """CHATHISTORY TARGETS: the channels the client is in whose newest message falls between two
        times (both left out), oldest first, in a draft/chathistory-targets batch."""
        if len(params) < 4:
            raise _Numeric("FAIL", "CHATHISTORY", "NEED_MORE_PARAMS", "TARGETS", "TARGETS takes 3 parameters")
        ends = [_reference(text) for text in params[1:3]]
        if not all(isinstance(end, datetime) for end in ends):
            bad = next(text for text, end in zip(params[1:3], ends, strict=True) if not isinstance(end, datetime))
            raise _Numeric("FAIL", "CHATHISTORY", "INVALID_PARAMS", bad, "TARGETS takes two timestamp= references")
        low, high = sorted(end for end in ends if isinstance(end, datetime))
        if not params[3].isdigit():
            raise _Numeric("FAIL", "CHATHISTORY", "INVALID_PARAMS", params[3], "The limit is a number")
        limit = int(params[3]) or CHATHISTORY_LIMIT
        found: list[tuple[datetime, str]] = []
        for room in list(self.writer.modes):  # the rooms it is in, as their welcomes named them
            try:
                newest = self.directory.newest_said(room) if self.directory is not None else None
            except RequestFailed as failure:
                detail = failure.detail
                raise _Numeric("FAIL", "CHATHISTORY", "MESSAGE_ERROR", "TARGETS", channel(room), detail) from None
            if newest is not None and low < newest < high:
                found.append((newest, room))
        batch = self.writer.new_batch() if "batch" in self.caps else None
        tags = {"batch": batch} if batch else None
        if batch:
            self._answers.append(self._line("BATCH", f"+{batch}", "draft/chathistory-targets"))
        for newest, room in sorted(found)[:limit]:
            said = IrcLine(line("CHATHISTORY", "TARGETS", channel(room), _stamp(newest), source=self.server, tags=tags))
            self._answers.append(said)
        if batch:
            self._answers.append(self._line("BATCH", f"-{batch}"))


def _stamp(when: datetime) -> str:
    """A time as IRCv3 writes it: UTC, to the millisecond, with a Z."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _user_of(found: Presence) -> str:
    return f"~{found.user_name}" if found.user_name else "~u"


class _Numeric(Exception):
    """A command refused with a numeric (or a FAIL), answered in its turn."""

    def __init__(self, numeric: str, *params: str) -> None:
        super().__init__(numeric)
        self.numeric = numeric
        self.params = params


def _reference(text: str) -> Ref | None:
    """A CHATHISTORY reference: `msgid=` a room line's id, or `timestamp=` an ISO 8601 time (UTC if
    it names no zone); None if it is neither."""
    kind, _, value = text.partition("=")
    if kind == "msgid":
        return int(value) if value.isdigit() and len(value) < 19 else None
    if kind != "timestamp":
        return None
    try:
        stamp = datetime.fromisoformat(value)
        return (stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):  # not a time, or one UTC cannot hold (year 1 east of Greenwich)
        return None


def _mode_changes(modes: str, arguments: list[str]) -> list[tuple[str, str, str | None]] | None:
    """(sign, letter, argument) for each letter of a MODE string; None if one is not ours."""
    changes: list[tuple[str, str, str | None]] = []
    sign = "+"
    queue = list(arguments)
    for letter in modes:
        if letter in "+-":
            sign = letter
            continue
        if letter not in "bovmt":
            return None
        argument = queue.pop(0) if letter in "bov" and queue else None
        changes.append((sign, letter, argument))
    return changes


class IrcRender:
    """Writes a room's lines as IRC for every client with the same rendering capabilities, once per line."""

    #: The capabilities that change how a room's lines look.
    RENDERING: ClassVar[frozenset[str]] = frozenset({"server-time", "message-tags", "account-tag", "extended-join"})
    name = "irc"

    def __init__(self, caps: frozenset[str], directory: Directory | None, server: str = "chat") -> None:
        self.caps = caps
        self.server = server
        self.directory = directory
        self._time = "server-time" in caps
        self._msgid = "message-tags" in caps
        self._account = "account-tag" in caps

    def tags(self, time: str | None, msgid: str | None = None, name: str | None = None) -> dict[str, str]:
        tags: dict[str, str] = {}
        if self._time and time:
            tags["time"] = time
        if self._msgid and msgid:
            tags["msgid"] = msgid
        if self._account and name is not None:
            account = self.account_of(name)
            if account:
                tags["account"] = account
        return tags

    def account_of(self, name: str) -> str | None:
        found = self.directory.presence(name) if self.directory is not None else None
        return found.account if found is not None else None

    def stamp(self, message: object) -> str | None:
        """`message`'s time as the server-time tag writes it, if these clients asked for it."""
        return _time(message) if self._time else None

    def encode(self, line: Line) -> bytes:
        if type(line) is SaidLine:  # the hot path: written from its parts, its JSON never decoded
            parts = line.parts
            return self.said_parts(parts, "#" + parts.room, parts.time if self._time else None)
        message = line.message
        match message:
            case ChatMessage() | Action():
                return self.said(message, channel(message.room))
            case PrivateMessage():
                tags = self.tags(self.stamp(message), f"p{message.id}", message.name)
                return _privmsg(hostmask(message.name), message.to, message.msg, tags)
            case Topic():
                tags = self.tags(self.stamp(message), str(message.id))
                return line_of("TOPIC", channel(message.room), message.topic, source=hostmask(message.name), tags=tags)
            case Moderation():
                return self.moderation(message)
            case Joined():
                tags = self.tags(self.stamp(message), None, message.name)
                if "extended-join" in self.caps:
                    found = self.directory.presence(message.name) if self.directory is not None else None
                    account = (found.account if found is not None else None) or "*"
                    real = (found.real_name if found is not None else "") or message.name
                    return line_of("JOIN", channel(message.room), account, real,
                                   source=hostmask(message.name), tags=tags)
                return line_of("JOIN", channel(message.room), source=hostmask(message.name), tags=tags)
            case Left():
                tags = self.tags(self.stamp(message))
                words = _fitted(message.msg) if message.msg else None
                if message.reason == "part":
                    return line_of("PART", channel(message.room), *([words] if words else []),
                                   source=hostmask(message.name), tags=tags)
                if message.reason == "kicked":
                    return b""  # the kick's own line said it
                if message.reason == "banned":
                    return line_of("KICK", channel(message.room), message.name, "banned", source=self.server, tags=tags)
                said = f"Quit: {words}" if words and message.reason == "quit" else _quit_reason(message.reason)
                return line_of("QUIT", said, source=hostmask(message.name), tags=tags)
            case Renamed():
                return line_of("NICK", message.new, source=hostmask(message.old), tags=self.tags(self.stamp(message)))
            case Away(room=str()):
                why = [message.msg] if message.msg else []
                return line_of("AWAY", *why, source=hostmask(message.name), tags={})
        return b""

    def said(self, message: ChatMessage | Action, target: str, extra: dict[str, str] | None = None) -> bytes:
        said = SaidParts(message.type, message.room, message.id, message.name, message.msg, "")
        return self.said_parts(said, target, self.stamp(message), extra)

    def said_parts(self, said: SaidParts, target: str, stamp: str | None, extra: dict[str, str] | None = None) -> bytes:
        """A line said in a room, to `target`, from its parts (`stamp`: its server-time tag, if any)."""
        tags = self.tags(stamp, str(said.id), said.name)
        if extra:
            tags.update(extra)
        if said.kind == "action":
            return b"".join(
                line("PRIVMSG", target, f"\x01ACTION {part}\x01", source=hostmask(said.name), tags=tags)
                for part in split_text(said.msg, MAX_BODY - 120 - len(target.encode()))
            )
        return _privmsg(hostmask(said.name), target, said.msg, tags)

    def moderation(self, message: Moderation) -> bytes:
        tags = self.tags(self.stamp(message), str(message.id), message.by)
        target, source = channel(message.room), hostmask(message.by)
        match message.action:
            case "kick":
                return line_of("KICK", target, message.name, message.reason or message.by, source=source, tags=tags)
            case "ban" | "unban":
                sign = "+" if message.action == "ban" else "-"
                return line_of("MODE", target, f"{sign}b", f"{message.name}!*@*", source=source, tags=tags)
            case "op" | "deop" | "voice" | "devoice":
                sign = "+" if message.action in ("op", "voice") else "-"
                letter = "o" if message.action in ("op", "deop") else "v"
                return line_of("MODE", target, f"{sign}{letter}", message.name, source=source, tags=tags)
            case "mode":
                letters = ""
                for change in message.name.split():
                    mode_letter = _MODE_LETTERS.get(change[1:])
                    if mode_letter is not None:
                        letters += change[0] + mode_letter
                if not letters:
                    return line_of("NOTICE", target, f"{message.by} set {message.name}", source=self.server, tags=tags)
                return line_of("MODE", target, letters, source=source, tags=tags)
        return self.moderation_told(message, {})  # a mute: IRC has no line for it, so it is told


    def moderation_told(self, message: Moderation, extra: dict[str, str]) -> bytes:
        """A moderation line in a replay of the channel's history: a NOTICE that tells it. Done
        again, a replayed KICK of the client would take it out of the channel it just joined
        (irssi leaves; the server still has it joined), and a MODE would set what was undone since."""
        tags = self.tags(self.stamp(message), str(message.id), message.by) | extra
        if message.action == "mode":
            said = f"{message.by} set {message.name}"
        else:
            said = f"{message.by} {_DONE.get(message.action, message.action)} {message.name}"
        said += f": {message.reason}" if message.reason else ""
        return line_of("NOTICE", channel(message.room), said, source=self.server, tags=tags)


def line_of(command: str, *params: str, source: str, tags: dict[str, str]) -> bytes:
    return line(command, *params, source=source, tags=tags)


def _privmsg(source: str, target: str, text: str, tags: dict[str, str]) -> bytes:
    # A line an IRC client could send in one line goes on in one line (a little over 512 bytes with
    # our prefix, as other servers do); longer text is cut to fit.
    room = max(MAX_BODY - 14 - len(source.encode()) - len(target.encode()), MAX_BODY - 2)
    data = text.encode()
    if len(data) <= room and "\n" not in text and "\r" not in text and text.strip():
        # The usual line, one line long, written straight (what line() would make of it).
        head = f"{format_tags(tags)}:{source} PRIVMSG {target} :"
        if "\r" not in head and "\n" not in head:
            return head.encode() + data + b"\r\n"
    return b"".join(line("PRIVMSG", target, part, source=source, tags=tags) for part in split_text(text, room))


def _time(message: object) -> str | None:
    stamp = getattr(message, "time", None)
    if stamp is None:
        return None
    return format_time(stamp)


def _fitted(words: str) -> str:
    """Parting words cut to fit one IRC line beside its command, channel and source."""
    return split_text(words, _MAX_WORDS_BYTES)[0] if words.strip() else ""


def _unformatted(text: str) -> str:
    """IRC text without its colour and formatting codes (mIRC colours with their digits, bold, ...)."""
    return _FORMATTING.sub("", text)


def _quit_reason(reason: str) -> str:
    return {
        "quit": "Quit",
        "disconnected": "Connection closed",
        "timeout": "Ping timeout",
        "slow_consumer": "Slow consumer",
        "excess_flood": "Excess flood",
        "shutdown": "Server shutting down",
    }.get(reason, reason)


class IrcWriter:
    """How Lines are written to one IRC client: a room's lines through the shared renderer for its
    capabilities, the rest (replies, its own JOIN, history batches) in its own words.

    A Line keeps no bytes for this object (`per_peer`): it is one client's, and its words change.
    The fan-out takes a room's said lines from `shared` instead, joined once for every client with
    the same capabilities (without the client's own lines if it `hides_own`), unless a slice holds
    a line that changes what the writer tracks (a join, a part, a nick, a mode): those slices come
    through `encode`.
    """

    name = "irc"
    per_peer = True

    def __init__(self, connection: IrcConnection) -> None:
        self._connection = connection
        self._render: IrcRender | None = None
        #: The outbox's peer for this client (attach_peer), once registered with the outbox.
        self.peer: object = None
        self._lock = threading.Lock()
        #: Per room: the history lines still to come after a welcome or a history page, their batch,
        #: and the thread that queues them (a history is rendered as it is queued, by the thread that
        #: asked for it; the room's live lines, by the outbox's writer, are never taken for history).
        self._history: dict[str, tuple[str | None, int, int]] = {}
        self._batches = itertools.count(1)
        self._quit: set[str] = set()
        self._renamed: dict[str, str] = {}
        #: Labels of labeled commands whose answer is their echo, by where the line went and its text.
        self._echo_labels: dict[tuple[str, str], str] = {}
        #: Per nick, the away text last said to the client (away-notify: once, however many rooms share it).
        self._away: dict[str, str] = {}
        #: Each joined room's modes, as its welcome and later mode lines said.
        self.modes: dict[str, tuple[str, ...]] = {}
        #: The keys of the rooms the client is in.
        self.joined: set[str] = set()

    def caps_changed(self) -> None:
        self._render = None

    def attach_peer(self, peer: object) -> None:
        """The outbox's peer this writer writes for: lines whose `echo_to` is it are the client's own."""
        self.peer = peer

    @property
    def shared(self) -> IrcRender:
        """What a room's said lines look like to this client: the renderer every client with the
        same capabilities shares (the fan-out joins its slices once for them all)."""
        return self.render

    @property
    def render(self) -> IrcRender:
        found = self._render
        if found is None:
            conn = self._connection
            found = self._render = conn._dialect.renderer(conn.caps, conn.directory)
        return found

    def new_batch(self) -> str:
        return f"h{next(self._batches)}"

    def _numeric(self, numeric: str, *params: str) -> bytes:
        return line(numeric, self._connection.me, *params, source=self._connection.server)

    @property
    def hides_own(self) -> bool | None:
        """Whether the client's own lines are left out (it has not asked for echo-message), or
        shown as everybody sees them; None while an echo is to carry a label (labeled-response):
        then its slices are this writer's to write."""
        if "echo-message" not in self._connection.caps:
            return True
        return None if self._echo_labels else False

    def encode(self, item: Line) -> bytes:
        if isinstance(item, IrcLine):
            return item.raw
        data = self._encode(item)
        labeled = self._connection.labeled
        if data and labeled is not None and labeled.thread == threading.get_ident():
            return self.labeled_part(labeled, data)  # part of the labeled command's answer
        return data

    def written(self, item: Line) -> bytes:
        """`item` in this client's words, never taken for part of a labeled answer."""
        return item.raw if isinstance(item, IrcLine) else self._encode(item)

    def labeled_part(self, labeled: _Labeled, data: bytes) -> bytes:
        """Lines of a labeled command's answer, as they go out: the first held, then (with a
        second) a labeled-response batch opened, or the label put on the first (without batch)."""
        server = self._connection.server
        out: list[bytes] = []
        for part in data.split(b"\r\n"):
            if not part:
                continue
            if labeled.batch is None:
                if labeled.first is None:
                    labeled.first = part
                    continue
                first, labeled.first = labeled.first, None
                if "batch" in self._connection.caps:
                    labeled.batch = self.new_batch()
                    tag = {"label": labeled.label}
                    out.append(line("BATCH", f"+{labeled.batch}", "labeled-response", source=server, tags=tag))
                    out.append(_in_labeled(first, labeled.batch))
                else:
                    labeled.batch = ""
                    out.append(_with_tags(first, {"label": labeled.label}))
            out.append(_in_labeled(part, labeled.batch) if labeled.batch else part + b"\r\n")
        return b"".join(out)

    def labeled_end(self, labeled: _Labeled) -> bytes:
        """The end of a labeled command's answer: its one line labeled, an ACK for none, the
        batch's end for more."""
        server = self._connection.server
        if labeled.batch is None:
            if labeled.first is None:
                return line("ACK", source=server, tags={"label": labeled.label})
            return _with_tags(labeled.first, {"label": labeled.label})
        return line("BATCH", f"-{labeled.batch}", source=server) if labeled.batch else b""

    def expect_echo(self, key: tuple[str, str], label: str) -> None:
        """The echo of the line said to `key` (a room key, or "@" and a nick) answers a labeled command."""
        with self._lock:
            if len(self._echo_labels) >= 64:
                self._echo_labels.clear()  # echoes that never came (a line refused after all)
            self._echo_labels[key] = label

    def forget_echo(self, key: tuple[str, str]) -> None:
        """No echo answers the labeled command after all (its line was refused)."""
        with self._lock:
            self._echo_labels.pop(key, None)

    def _echo_label(self, key: tuple[str, str], data: bytes) -> bytes:
        """The echo `data`, with its label if it answers a labeled command."""
        with self._lock:
            label = self._echo_labels.pop(key, None) if self._echo_labels else None
        if label is None or not data:
            return data
        return labeled_response(label, data, None, self._connection.server)

    def _encode(self, item: Line) -> bytes:
        if type(item) is SaidLine:  # the hot path: no model decoded
            parts = item.parts
            if self._history:  # only the thread that queued a history finds its own entry: no race
                with self._lock:
                    pending = self._history.get(parts.room)
                    if pending is not None and pending[2] == threading.get_ident():
                        return self._historic(item, parts.room, pending[0], pending[1])
            if self._own(item):
                if "echo-message" not in self._connection.caps:
                    return b""
                return self._echo_label((room_key(parts.room), parts.msg), item.encoded(self.render))
            return item.encoded(self.render)
        message = item.message
        conn = self._connection
        me = conn.nick
        match message:
            case ChatMessage() | Action() | Topic() | Moderation():
                with self._lock:
                    pending = self._history.get(message.room)
                    if pending is not None and pending[2] == threading.get_ident():
                        return self._historic(item, message.room, pending[0], pending[1])
                own = isinstance(message, ChatMessage | Action) and self._own(item)
                if own and "echo-message" not in conn.caps:
                    return b""
                if isinstance(message, Moderation):
                    joined = room_key(message.room) in self.joined
                    self._moderated(message, me)
                    if message.action == "ban" and message.name == me and joined:
                        # The ban took this client out of the room, and the room tells the others
                        # (a KICK, from Left): the client itself is told here, or it stays "joined".
                        render = self.render
                        kick = line_of("KICK", channel(message.room), me, message.reason or "banned",
                                       source=conn.server, tags=render.tags(render.stamp(message)))
                        return item.encoded(render) + kick
                if own and isinstance(message, ChatMessage | Action):
                    return self._echo_label((room_key(message.room), message.msg), item.encoded(self.render))
                return item.encoded(self.render)
            case PrivateMessage():
                own = self._own(item)
                if "echo-message" not in conn.caps and own:
                    return b""
                if own:
                    return self._echo_label(("@" + message.to.casefold(), message.msg), item.encoded(self.render))
                return item.encoded(self.render)
            case Joined():
                self._quit.discard(message.name)
                with self._lock:
                    self._away.pop(message.name, None)  # an away line follows if it arrives away
                return item.encoded(self.render)
            case Left():
                if message.reason not in ("part", "kicked", "banned"):
                    if message.name in self._quit:
                        return b""
                    self._quit.add(message.name)
                if message.name == me:
                    self.modes.pop(message.room, None)
                    self.joined.discard(room_key(message.room))
                return item.encoded(self.render)
            case Renamed():
                if message.old == me and not conn.registered:  # the nick asked for at registration
                    conn.nick = message.new
                    return b""
                if self._renamed.get(message.old) == message.new:
                    return b""
                self._renamed[message.old] = message.new
                self._renamed.pop(message.new, None)
                if message.old == me:
                    conn.nick = message.new
                return item.encoded(self.render)
            case Welcome():
                return self._welcome(message)
            case Users():
                return self._users(message)
            case RoomList():
                return self._rooms(message)
            case HistoryPage():
                return self._page(message)
            case ServerNotice():
                asked = conn.asking
                if asked is not None and asked.command == "AWAY":
                    if asked.target:
                        return self._numeric("306", "You have been marked as being away")
                    return self._numeric("305", "You are no longer marked as being away")
                return line("NOTICE", me or "*", message.detail, source=self._connection.server)
            case Away(room=None):
                return self._numeric("301", message.name, message.msg)
            case Away():
                if "away-notify" not in conn.caps or message.name == me:
                    return b""  # its own away was answered with 305/306
                with self._lock:
                    if self._away.get(message.name) == message.msg:
                        return b""  # told already, in another room both are in
                    if len(self._away) >= _MAX_AWAY_KEPT:
                        self._away.clear()  # at worst an AWAY is said twice
                    self._away[message.name] = message.msg
                return item.encoded(self.render)
            case ErrorReply():
                if message.code in CLOSING_ERRORS:
                    return line("ERROR", message.detail)
                return line("NOTICE", me or "*", message.detail, source=self._connection.server)
            case Shutdown():
                return line("ERROR", message.detail)
            case ServerPing():
                return line("PING", self._connection.server)
            case ServerPong():
                return line("PONG", self._connection.server, self._connection.server, source=self._connection.server)
            case Notice() | SessionToken() | Gap() | Reset():
                return line("NOTICE", me or "*", message.detail, source=self._connection.server)
            case ReadMarker() | SearchResults():
                # Answers to JSON requests (`read`, `search`) that no IRC command asks for; another
                # device's read marker has no IRC form until draft/read-marker is offered.
                return b""

    def _own(self, item: Line) -> bool:
        """Whether `item` is this connection's own line: every line a connection says carries its
        sender (`echo_to`; with --redis, set again by this server's reader for the lines its own
        connections said), so another device of its account, saying lines under the same nick
        here or on another server, is shown."""
        return item.echo_to is not None and item.echo_to is self.peer

    def _moderated(self, message: Moderation, me: str | None) -> None:
        if message.action == "mode":
            modes = set(self.modes.get(message.room, ()))
            for change in message.name.split():
                (modes.add if change.startswith("+") else modes.discard)(change[1:])
            self.modes[message.room] = tuple(sorted(modes))
        elif message.action in ("kick", "ban") and message.name == me:
            self.modes.pop(message.room, None)
            self.joined.discard(room_key(message.room))

    def _historic(self, item: Line, room: str, batch: str | None, left: int) -> bytes:
        """One line of a replay (called under the lock): in its batch, and the batch's end after the last."""
        message = item.message
        extra = {"batch": batch} if batch else {}
        render = self.render
        if isinstance(message, ChatMessage | Action):
            data = render.said(message, channel(room), extra)
        elif isinstance(message, Moderation):
            data = render.moderation_told(message, extra)
        else:
            data = item.encoded(render)
            if batch:
                data = b"".join(_with_tags(part, extra) for part in data.split(b"\r\n") if part)
        left -= 1
        if left > 0:
            self._history[room] = (batch, left, threading.get_ident())
        else:
            del self._history[room]
            if batch:
                data += line("BATCH", f"-{batch}", source=self._connection.server)
        return data

    def _open_history(self, room: str, count: int, kind: str = "chathistory") -> bytes:
        """Expect `count` history lines of `room`; the batch's start, if the client takes batches."""
        batched = "batch" in self._connection.caps
        batch = self.new_batch() if batched else None
        start = line("BATCH", f"+{batch}", kind, channel(room), source=self._connection.server) if batch else b""
        if count <= 0:
            return start + (line("BATCH", f"-{batch}", source=self._connection.server) if batch else b"")
        with self._lock:
            self._history[room] = (batch, count, threading.get_ident())
        return start

    def _welcome(self, welcome: Welcome) -> bytes:
        conn = self._connection
        me = welcome.name
        conn.nick = me
        self.modes[welcome.room] = tuple(welcome.modes)
        self.joined.add(room_key(welcome.room))
        target = channel(welcome.room)
        if "extended-join" in conn.caps:
            joined = line("JOIN", target, conn.account or "*", conn.real_name or me, source=hostmask(me))
        else:
            joined = line("JOIN", target, source=hostmask(me))
        parts = [joined]
        if welcome.topic:
            parts.append(self._numeric("332", target, welcome.topic))
        parts.append(self._names(target, welcome.users, welcome.roles))
        if welcome.history > 0:  # no empty batch for a room with nothing to replay
            parts.append(self._open_history(welcome.room, welcome.history))
        return b"".join(parts)

    def _names(self, target: str, users: list[str], roles: dict[str, str]) -> bytes:
        full = "userhost-in-names" in self._connection.caps
        shown = [_PREFIXES.get(roles.get(user, ""), "") + (hostmask(user) if full else user) for user in users]
        out: list[bytes] = []
        chunk: list[str] = []
        for name in shown:
            chunk.append(name)
            if len(chunk) >= 20:
                out.append(self._numeric("353", "=", target, " ".join(chunk)))
                chunk = []
        if chunk:
            out.append(self._numeric("353", "=", target, " ".join(chunk)))
        out.append(self._numeric("366", target, "End of /NAMES list"))
        return b"".join(out)

    def _users(self, users: Users) -> bytes:
        asked = self._connection.asking
        target = channel(users.room)
        if asked is not None and asked.command == "WHO":
            out = []
            directory = self._connection.directory
            server = self._connection.server
            for user in users.users:
                flags = ("G" if user in users.away else "H") + _PREFIXES.get(users.roles.get(user, ""), "")
                found = directory.presence(user) if directory is not None else None
                ident, real = (_user_of(found), found.real_name or user) if found is not None else ("~u", user)
                out.append(self._numeric("352", target, ident, USER_HOST, server, user, flags, f"0 {real}"))
            out.append(self._numeric("315", asked.target or target, "End of /WHO list"))
            return b"".join(out)
        return self._names(target, users.users, users.roles)

    def _rooms(self, rooms: RoomList) -> bytes:
        asked = self._connection.asking
        if asked is not None and asked.command == "TOPIC":
            for info in rooms.rooms:
                if channel(info.room).casefold() == asked.target.casefold():
                    if info.topic:
                        return self._numeric("332", channel(info.room), info.topic)
                    return self._numeric("331", channel(info.room), "No topic is set")
            return self._numeric("403", asked.target, "No such channel")
        wanted = {target.casefold() for target in asked.target.split(",") if target} if asked else set()
        out = [self._numeric("321", "Channel", "Users  Name")]
        for info in rooms.rooms:
            if wanted and channel(info.room).casefold() not in wanted:
                continue
            if not info.users and not wanted:
                continue  # as IRC has it, a channel with nobody in it is not listed (it is joinable)
            out.append(self._numeric("322", channel(info.room), str(info.users), info.topic))
        out.append(self._numeric("323", "End of /LIST"))
        return b"".join(out)

    def _page(self, page: HistoryPage) -> bytes:
        return self._open_history(page.room, page.count)


def _as_line(answer: Answer) -> Line:
    return answer if isinstance(answer, Line) else Line.of(answer)


def labeled_response(label: str, data: bytes, batch: str | None, server: str) -> bytes:
    """The IRC lines `data` answering a command sent with `label`, as labeled-response has them:
    none is an ACK, one carries the label, more are a labeled-response batch `batch` (without
    the batch capability: the label on the first)."""
    lines = [part for part in data.split(b"\r\n") if part]
    tag = {"label": label}
    if not lines:
        return line("ACK", source=server, tags=tag)
    if len(lines) == 1 or batch is None:
        return _with_tags(lines[0], tag) + b"".join(part + b"\r\n" for part in lines[1:])
    body = b"".join(_in_labeled(part, batch) for part in lines)
    start = line("BATCH", f"+{batch}", "labeled-response", source=server, tags=tag)
    return start + body + line("BATCH", f"-{batch}", source=server)


def _in_labeled(data: bytes, batch: str) -> bytes:
    """A line of a labeled-response batch, CRLF put back (a line of a batch nested in it stays in that one)."""
    return data + b"\r\n" if _in_batch(data) else _with_tags(data, {"batch": batch})


def _in_batch(data: bytes) -> bool:
    """Whether an IRC line is inside a batch already (one nested in a labeled response)."""
    if not data.startswith(b"@"):
        return False
    tags = data[1:].split(b" ", 1)[0]
    return any(tag.startswith(b"batch=") for tag in tags.split(b";"))


def _with_tags(data: bytes, extra: dict[str, str]) -> bytes:
    """An IRC line (without its CRLF) with more tags; the CRLF put back."""
    added = format_tags(extra).encode("utf-8")  # b"@k=v "
    if data.startswith(b"@"):
        return added[:-1] + b";" + data[1:] + b"\r\n"
    return added + data + b"\r\n"
