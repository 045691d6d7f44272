"""What a line typed into the client means: a message, or a slash command.

Pure: text in, a Command out; no I/O. The UI turns commands into protocol
messages or local actions. Names and text are not validated here: the server
owns those rules and its error comes back as a clear line.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from chat.wire.protocol import (
    LOBBY,
    MAX_HISTORY_PAGE,
    Ban,
    Deop,
    Kick,
    ListRooms,
    Mute,
    Nick,
    Op,
    SendAction,
    SendMessage,
    SendPrivate,
    SetAway,
    SetModes,
    SetTopic,
    Unban,
    Unmute,
    Voice,
    Who,
)

HELP = """\
Commands:
  /join ROOM        join a room (and type into it)
  /part [ROOM]      leave a room (this one if none is named)
  /switch ROOM      type into another room you are in
  /buffer [N|NAME]  show buffer N, or a room's or a conversation's (@NAME); alone: list them
  /close            close this private conversation; in a room: leave it (asks first)
  /rooms            list every room, with who is there and its topic
  /topic [TEXT]     show this room's topic, or set it
  /nick NEW         change your name
  /register         make your name an account (asks for a password, twice)
  /kick NAME [WHY]  remove NAME from this room (operators)
  /ban NAME [FOR] [WHY]   keep NAME out of this room; FOR is like 30m, 2h, 7d (default: until /unban)
  /unban NAME       lift a ban
  /mute NAME [FOR] [WHY]  NAME reads but cannot speak here
  /unmute NAME      lift a mute
  /op NAME          make NAME an operator of this room (its owner)
  /deop NAME        take that back
  /voice NAME       let NAME speak in a moderated room (/devoice takes it back)
  /mode [+|-]MODE ...  room modes: topic (only operators set it), accounts (only accounts join),
                    moderated (only operators and voiced members speak); /mode +moderated -topic
  /who              list who is in this room (/names too)
  /msg NAME TEXT    private message to NAME
  /query [NAME]     type to NAME privately from now on; alone: back to the room
  /r TEXT           reply privately to whoever wrote to you privately last
  /ignore [NAME]    hide NAME's lines, kept between runs; alone: list who is hidden
  /unignore NAME    show NAME's lines again
  /clear            clear the screen (full screen: empty the buffer shown)
  /away [WHY]       say you are away (private messages get WHY back); alone: you are back
  /me TEXT          an action ("/me waves")
  /history [N]      show N earlier messages of this room (default 20)
  /search TEXT      show only the lines of this buffer with TEXT (Esc: all again; Ctrl-R types as you go),
                    and the server's matches in this room's whole history: words, "a phrase", prefix*
  /search -all TEXT the server's matches in every room you are in and your private lines
  /jump N           show match N of the last search where it was said (loading older lines if needed)
  /set [KEY [VALUE]]  change a setting (saved in client.toml); alone: list them
  /reconnect        take the session back after it was signed in elsewhere
  /quit             leave (Ctrl-D too)
  /help             this help
Anything else is said to the room you type into; start with // to say something beginning with /."""

#: The keys of the full screen, for /help.
KEYS = """\
Keys:  Alt-1..9, Alt-0  buffer 1..10        Alt-J NN  buffer NN
       Alt-A  next buffer with activity     Ctrl-N/P  next/previous buffer
       PageUp/PageDown  scroll              Alt-End   the newest line
       Ctrl-R  search as you type           Esc       leave search or help
       F2  member list (F11/F12 scroll)     Alt-L     bare lines, to copy
       Tab  complete a name                 Ctrl-C    clear (twice: quit)"""


def help_lines(command: str | None = None) -> list[str]:
    """/help: the keys and every command's name, short; /help CMD: that command's lines of HELP."""
    if command is None:
        names = textwrap.wrap("Commands (/help CMD for one): " + " ".join(COMMANDS), 76, subsequent_indent="  ")
        return [*KEYS.splitlines(), *names, "Anything else is said in the buffer shown (// to start with /)."]
    word = "/" + command.lstrip("/").lower()
    lines = HELP.splitlines()
    found = []
    for at, line in enumerate(lines):
        if line.strip().split(" ")[0] == word or line.strip().startswith(word + " "):
            found.append(line.strip())
            # The lines that continue its explanation are indented further.
            found += [more.strip() for more in _continued(lines[at + 1 :])]
    return found or [f"no command {word}; /help lists them"]


def _continued(lines: list[str]) -> list[str]:
    more = []
    for line in lines:
        if not line.startswith("    "):
            break
        more.append(line)
    return more


#: Every command, for completion: the ones HELP lists.
COMMANDS = tuple(sorted({line.split()[0] for line in HELP.splitlines() if line.startswith("  /")}))


@dataclass(frozen=True)
class Send:
    """Send this message to the server."""

    message: BaseModel


@dataclass(frozen=True)
class Quit:
    """Leave the room and end the client."""


@dataclass(frozen=True)
class PageBack:
    """Fetch `limit` messages older than the oldest one on screen."""

    limit: int


@dataclass(frozen=True)
class JoinRoom:
    """Join `room` (resuming it if the client was there) and type into it."""

    room: str


@dataclass(frozen=True)
class PartRoom:
    """Leave `room`."""

    room: str


@dataclass(frozen=True)
class SwitchRoom:
    """Type into `room` from now on."""

    room: str


@dataclass(frozen=True)
class ShowTopic:
    """Show the topic of the room typed into."""


@dataclass(frozen=True)
class RegisterName:
    """Make the name an account: the UI asks for the password without echoing it."""


@dataclass(frozen=True)
class ShowHelp:
    """Show the keys and commands, or one `command`'s help."""

    command: str | None = None


@dataclass(frozen=True)
class Mistake:
    """The line was not a valid command; tell the user why."""

    detail: str


@dataclass(frozen=True)
class Query:
    """Type to `name` privately from now on (None: back to the room)."""

    name: str | None


@dataclass(frozen=True)
class Reply:
    """Say `text` privately to whoever last wrote privately."""

    text: str


@dataclass(frozen=True)
class Ignore:
    """Hide `name`'s lines (None: say who is hidden); `undo` shows them again."""

    name: str | None
    undo: bool = False


@dataclass(frozen=True)
class CloseBuffer:
    """Close the private conversation with `private_to` (None: the room typed into, which parts it)."""

    private_to: str | None


@dataclass(frozen=True)
class ShowBuffer:
    """Show the buffer numbered or named `target` (None: list the buffers)."""

    target: str | None


@dataclass(frozen=True)
class SearchText:
    """Show only the lines of the buffer shown that contain `text`, and ask the server for the
    matches in its whole history there; `everywhere`: in every room (and private lines) instead."""

    text: str
    everywhere: bool = False


@dataclass(frozen=True)
class JumpTo:
    """Show the line the last search found as number `number`, where it was said."""

    number: int


@dataclass(frozen=True)
class SetOption:
    """Change setting `key` to what `value` says (None: show it; no key: list every setting)."""

    key: str | None
    value: str | None = None


@dataclass(frozen=True)
class Reconnect:
    """Take the session back from another connection of the same identity."""


@dataclass(frozen=True)
class ClearScreen:
    """Clear the terminal."""


Command = (
    Send | Quit | ShowHelp | PageBack | JoinRoom | PartRoom | SwitchRoom | ShowTopic | RegisterName | Mistake
    | Query | Reply | Ignore | ClearScreen | Reconnect | CloseBuffer | ShowBuffer | SetOption | SearchText | JumpTo
)


#: Units a duration may end in, as in `/ban troll 2h spam`.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _sanction_args(rest: str) -> tuple[str, int | None, str]:
    """NAME [DURATION] [REASON]; the duration is -1 if it looks like one but is not valid."""
    name, _, more = rest.partition(" ")
    first, _, reason = more.strip().partition(" ")
    if first and first[-1:].lower() in _UNITS and first[:-1].isdigit():
        seconds = int(first[:-1]) * _UNITS[first[-1].lower()]
        return name, seconds if seconds > 0 else -1, reason.strip()
    if first.isdigit():
        return name, int(first) if int(first) > 0 else -1, reason.strip()
    return name, None, more.strip()


def _validated(kind: type[Voice | SetModes], fields: dict[str, object]) -> Send | Mistake:
    try:
        return Send(kind.model_validate(fields))
    except ValidationError as exc:
        return Mistake(str(exc.errors(include_url=False)[0]["msg"]))


def _usage(word: str) -> Mistake:
    line = next((line.strip() for line in HELP.splitlines() if line.strip().startswith(word.lower() + " ")), word)
    return Mistake(f"usage: {line.split('  ')[0]}")


#: Commands that act on the room typed into: refused in a private conversation, never sent to a
#: room behind it.
ROOM_COMMANDS = frozenset(
    {"/me", "/topic", "/history", "/who", "/names", "/kick", "/ban", "/mute", "/unban", "/unmute", "/op", "/deop",
     "/voice", "/devoice", "/mode"}
)


def parse(line: str, room: str = LOBBY, private_to: str | None = None) -> Command | None:
    """The command a line typed into `room` means, or into the private conversation with
    `private_to` if there is one; None for a blank line (sends nothing)."""
    if not line.strip():
        return None
    if not line.startswith("/") or line.startswith("//"):
        text = line[1:] if line.startswith("//") else line
        if private_to is not None:
            return Send(SendPrivate.model_construct(to=private_to, msg=text))
        return Send(SendMessage.model_construct(room=room, msg=text))
    word, _, rest = line.partition(" ")
    rest = rest.strip()
    if private_to is not None:
        if word.lower() in ROOM_COMMANDS:
            return Mistake(f"{word} acts on a room, and this is your private conversation with {private_to}: "
                           "nothing was sent (/buffer ROOM goes to a room)")
        if word.lower() in ("/part", "/leave") and not rest:
            return CloseBuffer(private_to)
    match word.lower():
        case "/quit" | "/exit":
            return Quit()
        case "/help":
            return ShowHelp(rest or None) if " " not in rest else Mistake("usage: /help [COMMAND]")
        case "/register":
            if rest:
                return Mistake("usage: /register (the password is asked for, not typed here)")
            return RegisterName()
        case "/history":
            if not rest:
                return PageBack(20)
            if rest.isdigit() and 1 <= int(rest) <= MAX_HISTORY_PAGE:
                return PageBack(int(rest))
            return Mistake(f"usage: /history [N], N from 1 to {MAX_HISTORY_PAGE}")
        case "/who" | "/names":
            return Send(Who.model_construct(room=room))
        case "/query":
            return Query(rest or None) if " " not in rest else Mistake("usage: /query [NAME]")
        case "/r":
            return Reply(rest) if rest else Mistake("usage: /r TEXT")
        case "/ignore":
            return Ignore(rest or None) if " " not in rest else Mistake("usage: /ignore [NAME]")
        case "/unignore":
            return Ignore(rest, undo=True) if rest and " " not in rest else Mistake("usage: /unignore NAME")
        case "/clear":
            return ClearScreen()
        case "/reconnect":
            return Reconnect()
        case "/away":
            return Send(SetAway.model_construct(msg=rest))
        case "/rooms" | "/list":
            return Send(ListRooms())
        case "/join":
            return JoinRoom(rest) if rest and " " not in rest else Mistake("usage: /join ROOM (no spaces)")
        case "/part" | "/leave":
            return PartRoom(rest or room) if " " not in rest else Mistake("usage: /part [ROOM]")
        case "/buffer" | "/b":
            return ShowBuffer(rest or None) if " " not in rest else Mistake("usage: /buffer [N|NAME]")
        case "/search":
            everywhere = rest == "-all" or rest.startswith("-all ")
            text = rest.removeprefix("-all").strip() if everywhere else rest
            if not text:
                return Mistake("usage: /search [-all] TEXT (or Ctrl-R, to search as you type)")
            return SearchText(text, everywhere)
        case "/jump":
            if not rest.isdigit() or int(rest) < 1:
                return Mistake("usage: /jump N (a number the last /search showed)")
            return JumpTo(int(rest))
        case "/set":
            key, _, value = rest.partition(" ")
            return SetOption(key or None, value.strip() or None)
        case "/close":
            return CloseBuffer(private_to) if not rest else Mistake("usage: /close (closes the buffer shown)")
        case "/switch":
            return SwitchRoom(rest) if rest and " " not in rest else Mistake("usage: /switch ROOM")
        case "/topic":
            return Send(SetTopic.model_construct(room=room, topic=rest)) if rest else ShowTopic()
        case "/me":
            return Send(SendAction.model_construct(room=room, msg=rest)) if rest else Mistake("usage: /me TEXT")
        case "/nick":
            return (
                Send(Nick.model_construct(name=rest))
                if rest and " " not in rest
                else Mistake("usage: /nick NEW (no spaces)")
            )
        case "/kick":
            name, _, reason = rest.partition(" ")
            return Send(Kick.model_construct(room=room, name=name, reason=reason.strip())) if name else _usage(word)
        case "/ban" | "/mute":
            name, duration, reason = _sanction_args(rest)
            if not name or duration == -1:
                return _usage(word)
            kind = Ban if word.lower() == "/ban" else Mute
            return Send(kind.model_construct(room=room, name=name, duration=duration, reason=reason))
        case "/unban" | "/unmute" | "/op" | "/deop":
            kinds: dict[str, type[Unban | Unmute | Op | Deop]] = {
                "/unban": Unban, "/unmute": Unmute, "/op": Op, "/deop": Deop
            }
            return Send(kinds[word.lower()].model_construct(room=room, name=rest)) if rest and " " not in rest \
                else _usage(word)
        case "/voice" | "/devoice":
            if not rest or " " in rest:
                return _usage("/voice")
            return _validated(Voice, {"type": word.lower()[1:], "room": room, "name": rest})
        case "/mode":
            changes = rest.split()
            modes = ("topic", "accounts", "moderated")
            if not changes or any(change[:1] not in "+-" or change[1:] not in modes for change in changes):
                return Mistake("usage: /mode +moderated -topic (modes: topic, accounts, moderated)")
            on = [change[1:] for change in changes if change.startswith("+")]
            off = [change[1:] for change in changes if change.startswith("-")]
            return _validated(SetModes, {"room": room, "on": on, "off": off})
        case "/msg":
            to, _, text = rest.partition(" ")
            return (
                Send(SendPrivate.model_construct(to=to, msg=text))
                if to and text.strip()
                else Mistake("usage: /msg NAME TEXT")
            )
        case _:
            return Mistake(f"unknown command {word}; /help lists them")
