"""How each client event looks on screen, as styled text fragments.

Pure: an event and the viewer's name in, (style, text) fragments out, which
prompt_toolkit prints as they are. Everything that came from the network goes
through `neutralise` first, so no name or message can move the cursor, clear
the screen, recolour the terminal or reorder text on display.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from datetime import date, datetime

from prompt_toolkit.utils import get_cwidth

from chat.client.connection import (
    ClientEvent,
    ConnectionLost,
    PutOut,
    Reconnected,
    Resumed,
    SearchFound,
    SignedInElsewhere,
)
from chat.wire.protocol import (
    Action,
    Away,
    ChatMessage,
    ErrorReply,
    Gap,
    HistoryPage,
    Joined,
    Left,
    Moderation,
    Notice,
    PrivateMessage,
    Renamed,
    Reset,
    RoomList,
    ServerNotice,
    SessionToken,
    Shutdown,
    Topic,
    Users,
    Welcome,
    room_key,
)

Fragments = list[tuple[str, str]]

#: An empty fragment marking where a line's text begins: rows it wraps onto start under it.
INDENT = "class:indent"

#: Styles by class name; the UI hands this to prompt_toolkit.
STYLE = {
    "time": "#888888",
    "text": "",
    "me": "bold",
    "mention": "bg:#5f5f00 #ffffff bold",
    "private": "ansimagenta",
    "action": "italic",
    "notice": "#888888 italic",
    "marker": "#aa4444",
    "moderation": "ansiyellow bold",
    "error": "ansired bold",
    "room": "ansicyan",
    # The full screen's bars.
    "bar": "bg:#303030 #d0d0d0",
    "bar.title": "bg:#303030 #ffffff bold",
    "bar.active": "bg:#303030 #ffffff bold underline",
    "bar.unread": "bg:#303030 ansibrightyellow",
    "bar.mention": "bg:#303030 ansibrightmagenta bold",
    "bar.good": "bg:#303030 ansibrightgreen",
    "bar.bad": "bg:#303030 ansibrightred bold",
    "search.match": "reverse bold",
}

#: Name colours; a name always gets the same one.
NAME_COLOURS = (
    "ansired",
    "ansigreen",
    "ansiyellow",
    "ansiblue",
    "ansimagenta",
    "ansicyan",
    "ansibrightred",
    "ansibrightgreen",
    "ansibrightblue",
    "ansibrightmagenta",
    "ansibrightcyan",
)

# Bidirectional embeddings, overrides and isolates: they make text display in
# another order than it was sent.
_BIDI = {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}


def _visible(char: str) -> str:
    code = ord(char)
    if code < 0x20 or code == 0x7F:
        return "^" + chr(code ^ 0x40)  # caret notation: ESC is ^[, BEL is ^G
    if 0x80 <= code <= 0x9F:
        return f"<{code:02X}>"  # C1 controls, \x9b (a one-byte CSI) among them
    return f"<U+{code:04X}>"  # bidi controls


_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f" + "".join(sorted(_BIDI)) + "]")
_UNSAFE_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f" + "".join(sorted(_BIDI)) + "]")


def neutralise(text: str, keep_newlines: bool = False) -> str:
    """`text` with every control character shown as harmless visible text.

    ESC, CSI (7- and 8-bit), BEL, backspace, carriage return and the bidi
    controls become `^[`, `<9B>`, `^G`, `^H`, `^M`, `<U+202E>`...; a tab
    becomes spaces. Newlines stay only if `keep_newlines`.
    """
    text = text.replace("\t", "    ")
    pattern = _UNSAFE_BUT_NEWLINE if keep_newlines else _UNSAFE
    return pattern.sub(lambda match: _visible(match.group()), text)


def name_colour(name: str) -> str:
    """A colour that stays the same for a name, across runs and machines."""
    return NAME_COLOURS[zlib.crc32(name.casefold().encode()) % len(NAME_COLOURS)]


def mentions(text: str, name: str) -> bool:
    """Whether `text` mentions `name` as a word, whatever its case."""
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE) is not None


@dataclass(frozen=True)
class Look:
    """The user's settings that change how lines look: the time's format, the words besides their
    name that call for them, and whether names are coloured."""

    timestamp_format: str = "%H:%M"
    highlight_words: tuple[str, ...] = ()
    nick_colors: bool = True

    def calls(self, text: str, me: str) -> bool:
        """Whether `text` names `me` or one of the highlight words."""
        return any(mentions(text, word) for word in (me, *self.highlight_words) if word)


#: The defaults.
LOOK = Look()


def render(
    event: ClientEvent, me: str, now: datetime | None = None, *, room: str | None = None, look: Look = LOOK
) -> Fragments | None:
    """The fragments for one event as `me`, typing into `room`, sees it; None for events not shown.

    A line about another room than `room` starts with that room's name.
    """
    fragments = _render(event, me, now, look)
    where = getattr(event, "room", None)
    if fragments is None or where is None or room is None or room_key(where) == room_key(room):
        return fragments
    if isinstance(event, _NAMES_ITS_ROOM):
        return fragments
    clock, *rest = fragments
    return [clock, ("class:room", f"[{neutralise(where)}] "), *rest]


#: How a moderation line reads: "troll was banned from den by alice".
_MODERATED = {
    "kick": "kicked from",
    "ban": "banned from",
    "unban": "unbanned in",
    "mute": "muted in",
    "unmute": "unmuted in",
    "op": "made an operator of",
    "deop": "no longer an operator of",
    "voice": "given a voice in",
    "devoice": "no longer voiced in",
}

#: Notices whose text already says which room they are about (or that are about a person, not a room).
_NAMES_ITS_ROOM = (Welcome, Joined, Left, Topic, Users, Renamed, PutOut)


def _render(event: ClientEvent, me: str, now: datetime | None, look: Look) -> Fragments | None:
    match event:
        case ChatMessage(name=name, msg=msg, time=time):
            return _said(time, "", name, ": ", msg, me, "class:me" if name == me else "class:text", look)
        case Action(name=name, msg=msg, time=time):
            return _said(time, "* ", name, " ", msg, me, "class:action", look)
        case PrivateMessage(name=name, to=to, msg=msg, time=time):
            label = f"[{neutralise(name)} → {neutralise(to)}]"
            return _lines(_clock(time, look), [("class:private bold", label)], " ", msg, "class:private")
        case Topic(room=where, topic=topic, name=name, time=time):
            if not topic:
                return _in(look).notice(time, f"{neutralise(name)} cleared the topic of {neutralise(where)}")
            text = f"{neutralise(name)} set the topic of {neutralise(where)}: {neutralise(topic)}"
            return _in(look).notice(time, text)
        case Moderation(room=where, action="mode", name=changes, by=by, time=time):
            text = f"{neutralise(by)} set the modes of {neutralise(where)}: {neutralise(changes)}"
            return [*_clock(time, look), ("class:moderation", "!! "), (INDENT, ""), ("class:moderation", text)]
        case Moderation(room=where, action=action, name=name, by=by, reason=reason, until=until, time=time):
            done = _MODERATED.get(action, f"{action}ed in")
            text = f"{neutralise(name)} was {done} {neutralise(where)} by {neutralise(by)}"
            if until is not None:
                text += f" until {until.astimezone().strftime('%Y-%m-%d %H:%M')}"
            text += f": {neutralise(reason)}" if reason else ""
            return [*_clock(time, look), ("class:moderation", "!! "), (INDENT, ""), ("class:moderation", text)]
        case Joined(room=where, name=name, time=time):
            return _in(look).notice(time, f"{neutralise(name)} joined {neutralise(where)}")
        case Left(room=where, name=name, reason=reason, msg=words, time=time):
            why = "" if reason in ("quit", "part") else f" ({reason.replace('_', ' ')})"
            said = f": {neutralise(words)}" if words else ""
            return _in(look).notice(time, f"{neutralise(name)} left {neutralise(where)}{why}{said}")
        case Renamed(old=old, new=new, time=time):
            return _in(look).notice(time, f"{neutralise(old)} is now known as {neutralise(new)}")
        case Welcome(room=where, name=name, users=users, history=history, more=more, topic=topic, account=account):
            who = neutralise(name) + (" (your account)" if account else " (a guest: /register to own the name)"
                                      if account is False else "")
            text = f"you are {who} in {neutralise(where)}; here: {_names(users, event.roles)}"
            if topic:
                text += f"; topic: {neutralise(topic)}"
            if history == 1:
                text += "; the last message follows"
            elif history:
                text += f"; the last {history} messages follow"
            if more:
                text += f" ({more} older ones: /history)"
            # No clock: the history lines that follow carry their own, older, times; a welcome
            # stamped now above them made the times read out of order.
            return [("class:notice", "-- "), (INDENT, ""), ("class:notice", text)]
        case Reset(detail=detail):
            return _in(look).error(neutralise(detail), now)
        case Gap(detail=detail):
            return _in(look).error(f"missed messages are lost: {neutralise(detail)}", now)
        case HistoryPage(count=count, more=more):
            if not count:
                return _in(look).notice(now, "no earlier messages")
            earlier = "1 earlier message" if count == 1 else f"{count} earlier messages"
            return _in(look).notice(now, earlier + (f" ({more} more: /history)" if more else ""))
        case Users(room=where, users=users, roles=roles, away=away):
            gone = "; away: " + ", ".join(f"{neutralise(n)} ({neutralise(w)})" for n, w in away.items()) if away else ""
            return _in(look).notice(now, f"in {neutralise(where)}: {_names(users, roles)}{gone}")
        case Away(room=str(), name=name, msg=why):  # a member of a room went away or came back
            if name == me:
                return None  # its own away was answered already (done)
            if not why:
                return _in(look).notice(now, f"{neutralise(name)} is back")
            return _in(look).notice(now, f"{neutralise(name)} is away: {neutralise(why)}")
        case Away(name=name, msg=why):
            return _in(look).notice(now, f"{neutralise(name)} is away: {neutralise(why)}")
        case RoomList(rooms=rooms):
            if not rooms:
                return _in(look).notice(now, "rooms: none")
            # One row per room, the names and counts in columns.
            wide = min(24, max(get_cwidth(neutralise(info.room)) for info in rooms))
            rows = [
                f"  {neutralise(info.room):<{wide}} {info.users:>4}  {neutralise(info.topic)}".rstrip()
                for info in rooms
            ]
            heading = f"{len(rooms)} room{'s' if len(rooms) != 1 else ''}: name, people here, topic"
            return [*_in(look).notice(now, heading), ("class:notice", "\n" + "\n".join(rows))]
        case ErrorReply(detail=detail):
            return _in(look).error(neutralise(detail), now)
        case Shutdown(detail=detail):
            return _in(look).error(f"server: {neutralise(detail)}", now)
        case ServerNotice(detail=detail):
            return _in(look).notice(now, neutralise(detail))
        case SessionToken(detail=detail):
            return _in(look).notice(now, neutralise(detail))
        case Notice(delay_ms=delay_ms):
            text = f"slow down: the server is holding your lines back about {delay_ms / 1000:.1f} s"
            return _in(look).notice(now, text)
        case ConnectionLost(detail=detail, retry_in=retry_in):
            then = f"; reconnecting in {retry_in:.1f} s" if retry_in else ""
            return _in(look).error(f"connection lost ({neutralise(detail)}){then}", now)
        case Reconnected():
            return _in(look).notice(now, "reconnected")
        case SignedInElsewhere():
            text = ("signed in elsewhere: another connection of yours (same name, same session) took over; "
                    "this one waits. /reconnect takes the session back")
            return _in(look).error(text, now)
        case PutOut(room=where, action=action, by=by, reason=reason):
            done = "kicked from" if action == "kick" else "banned from"
            why = f" ({neutralise(reason)})" if reason else ""
            back = f"; /join {neutralise(where)} to go back in" if action == "kick" else ""  # a ban keeps you out
            text = f"you were {done} {neutralise(where)} by {neutralise(by)}{why}{back}"
            return _in(look).error(text, now)
        case SearchFound(results=results, lines=lines):
            return _found(results.text, results.more, lines, now, look)
        case Resumed(room=where, missed=missed) if missed:
            new = "1 new message" if missed == 1 else f"{missed} new messages"
            return [("class:notice", f"-- {new} in {neutralise(where)} since you left --")]
        case Resumed(room=where):
            return [("class:notice", f"-- nothing new in {neutralise(where)} since you left --")]
    return None


def _found(
    text: str, more: int, lines: list[ChatMessage | Action | PrivateMessage], now: datetime | None, look: Look
) -> Fragments:
    """A search's answer: a heading, then each match numbered (for /jump N), newest first, with
    its date, its room (or its two parties) and who said it."""
    older = f", {more} older (/search again with fewer or more words)" if more else ""
    if not lines:
        return _in(look).notice(now, f"search {text!r}: nothing found")
    heading = f"search {text!r}: {len(lines)} found{older}; /jump N shows one where it was said"
    fragments: Fragments = list(_in(look).notice(now, heading))
    for number, line in enumerate(lines, 1):
        when = line.time.astimezone().strftime("%Y-%m-%d %H:%M")
        if isinstance(line, PrivateMessage):
            where = f"[{neutralise(line.name)} → {neutralise(line.to)}]"
            said = f" {neutralise(line.msg)}"
        else:
            where = f"#{neutralise(line.room)}"
            star = "* " if isinstance(line, Action) else ""
            said = f" {star}{neutralise(line.name)}{' ' if star else ': '}{neutralise(line.msg)}"
        fragments += [
            ("", "\n"),
            ("class:notice", f"  [{number}] "),
            ("class:time", f"{when} "),
            ("class:room", where),
            ("class:text", said.replace("\n", " ")),
        ]
    return fragments


def notice(text: str, now: datetime | None = None, look: Look = LOOK) -> Fragments:
    """A line from the client itself (help, hints)."""
    return _notice(now, text, look)


def error(text: str, now: datetime | None = None, look: Look = LOOK) -> Fragments:
    """Something went wrong, in one line."""
    return [*_clock(now, look), ("class:error", "! "), (INDENT, ""), ("class:error", text)]


@dataclass(frozen=True)
class _in:
    """notice() and error() in a given look, for _render's many lines."""

    look: Look

    def notice(self, when: datetime | None, text: str) -> Fragments:
        return _notice(when, text, self.look)

    def error(self, text: str, now: datetime | None = None) -> Fragments:
        return error(text, now, self.look)


def _said(
    when: datetime, prefix: str, speaker: str, gap: str, msg: str, me: str, style: str, look: Look = LOOK
) -> Fragments:
    if speaker != me and look.calls(msg, me):
        style = "class:mention"
    colour = name_colour(speaker) if look.nick_colors else ""
    header = [(style, prefix), (f"{colour} bold".strip(), neutralise(speaker))]
    return _lines(_clock(when, look), header, gap, msg, style)


def _lines(clock: Fragments, header: Fragments, gap: str, msg: str, style: str) -> Fragments:
    """Header and first line of `msg`; any further lines indented beneath the text."""
    first, *rest = neutralise(msg, keep_newlines=True).split("\n")
    fragments = [*clock, *header, ("", gap), (INDENT, ""), (style, first)]
    indent = " " * sum(get_cwidth(text) for _, text in [*clock, *header, ("", gap)])
    for line in rest:
        fragments += [("", "\n" + indent), (style, line)]
    return fragments


def _notice(when: datetime | None, text: str, look: Look = LOOK) -> Fragments:
    return [*_clock(when, look), ("class:notice", "-- "), (INDENT, ""), ("class:notice", text)]


def _clock(when: datetime | None, look: Look = LOOK) -> Fragments:
    """`14:05 `, or with the date for a line from another day than today: `2026-11-19 14:05 `
    (in the format of the `timestamp_format` setting; an empty one shows no time)."""
    if not look.timestamp_format:
        return []
    local = (when or datetime.now()).astimezone()
    if local.date() != datetime.now().astimezone().date():
        return [("class:time", local.strftime(f"%Y-%m-%d {look.timestamp_format} "))]
    return [("class:time", local.strftime(f"{look.timestamp_format} "))]


def day_of(event: ClientEvent) -> date | None:
    """The local date a line is stamped with; None for events without a time."""
    when = getattr(event, "time", None)
    return when.astimezone().date() if isinstance(when, datetime) else None


def day_change(day: date) -> Fragments:
    """The line drawn before the first line of a new day: `-- Thursday 19 November 2026 --`."""
    return [("class:notice", f"-- {day:%A} {day.day} {day:%B %Y} --")]


def _names(users: list[str], roles: dict[str, str] | None = None) -> str:
    """Names as a list, each with its role in the room if it has one: `alice (owner)`."""
    roles = roles or {}
    return ", ".join(neutralise(user) + (f" ({roles[user]})" if user in roles else "") for user in users) or "nobody"
