"""The terminal chat: a prompt_toolkit prompt with the rooms' lines printed above it.

Two tasks race on one event loop: one prints every incoming event above the
prompt, the other reads what the user types and sends it to the room it is
typed into (shown in the prompt). Whichever ends first (Ctrl-D, /quit, the
server gone for good) ends the other. All the looks are in render.py and all
the meaning of typed lines in commands.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Iterable
from datetime import date
from pathlib import Path

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application import get_app_session
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style
from pydantic import BaseModel, ValidationError

from chat.client import render
from chat.client.commands import (
    COMMANDS,
    HELP,
    ClearScreen,
    Ignore,
    JoinRoom,
    Mistake,
    PageBack,
    PartRoom,
    Query,
    Quit,
    RegisterName,
    Reply,
    Send,
    ShowHelp,
    ShowTopic,
    SwitchRoom,
    parse,
)
from chat.client.connection import ChatClient, ClientEvent, Reconnected, Resumed
from chat.client.ignored import Ignored
from chat.errors import ConnectionClosed
from chat.wire.protocol import (
    LOBBY,
    MAX_MSG,
    MAX_PASSWORD,
    MIN_PASSWORD,
    Action,
    ChatMessage,
    Left,
    Moderation,
    PrivateMessage,
    Register,
    SendAction,
    SendMessage,
    SendPrivate,
    Welcome,
    room_key,
)

STYLE = Style.from_dict(render.STYLE)
#: Earlier lines shown for context in a room rejoined with nothing new in it.
CONTEXT_LINES = 5


class ChatCompleter(Completer):
    """Commands at the start of a line, user names anywhere."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        word = document.get_word_before_cursor(WORD=True)
        before = document.text_before_cursor
        if word.startswith("/") and before == word:
            for command in COMMANDS:
                if command.startswith(word.casefold()) and command != word:
                    yield Completion(command, start_position=-len(word))
            return
        # A name that starts the line is who the line is for: `alice: `, as IRC clients write it.
        ending = ": " if before == word else ""
        for name in self.client.users:
            if name.casefold().startswith(word.casefold()) and name + ending != word:
                yield Completion(name + ending, start_position=-len(word), display=name)


class Typing:
    """Which room what the user types goes to, and what was typed while the connection was down."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        #: Messages typed while disconnected, sent in order once the connection is back.
        self.pending: list[BaseModel] = []
        #: Whom plain lines go to privately (/query), if not the room; who last wrote privately (/r).
        self.private_to: str | None = None
        self.last_private_from: str | None = None
        #: Names whose lines are not shown (/ignore).
        self.ignored = Ignored()
        #: Ring the bell for lines that call for the user; how many came since they last typed.
        self.bell = True
        self.calls = 0
        #: A line refused as too long, which Enter again (unchanged) sends in parts.
        self.split_offer: str | None = None
        #: Rooms welcomed this run: a room rejoined after a reconnect needs no lines of context.
        self.welcomed: set[str] = set()
        #: The date of the last dated line drawn: a line of another day is preceded by a day-change line.
        self.last_day: date | None = None
        self.room = next(iter(client.rooms.values())).name if client.rooms else LOBBY
        #: A room the user asked to join: typing switches to it once it is welcomed.
        self.joining: str | None = None

    def follow(self, event: ClientEvent) -> None:
        """Keep the room typed into one the client is in, as joins and parts arrive."""
        match event:
            case Welcome(room=room) if self.joining is not None and room_key(room) == room_key(self.joining):
                self.room, self.joining, self.private_to = room, None, None
            case Welcome(room=room) if room_key(room) == room_key(self.room):
                self.room = room  # the server's spelling
            case Left(room=room, name=name, reason="part") | Moderation(
                room=room, action="kick" | "ban", name=name
            ) if name == self.client.name:
                if room_key(room) == room_key(self.room) and self.client.rooms:
                    self.room = next(iter(self.client.rooms.values())).name

    def switch(self, room: str) -> str | None:
        """Type into `room`; a sentence saying why not if the client is not in it."""
        view = self.client.rooms.get(room_key(room))
        if view is None:
            return f"you are not in {room}; /join it first"
        self.room, self.private_to = view.name, None
        return None


def show(fragments: render.Fragments | None) -> None:
    """Print above the prompt (prompt_toolkit redraws the prompt under it)."""
    if fragments:
        print_formatted_text(FormattedText(fragments), style=STYLE)


def make_session(client: ChatClient, history_file: Path | None = None) -> PromptSession[str]:
    """The input line; with `history_file`, what was typed is remembered there between runs (0600:
    it holds private messages). Passwords are asked for by sessions of their own and kept nowhere."""
    history: History = InMemoryHistory()
    if history_file is not None:
        history_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(history_file, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600))
        history = FileHistory(str(history_file))
    return PromptSession(
        completer=ChatCompleter(client), complete_while_typing=False, erase_when_done=True, history=history
    )


async def run_ui(
    client: ChatClient, session: PromptSession[str] | None = None, bell: bool = True, ignored: Ignored | None = None
) -> None:
    """Chat until the user quits or the connection ends for good; then leave cleanly.

    A mention of the user's name or a private message to them rings the bell
    (unless `bell` is off) and counts in the terminal's title until they next type.
    """
    session = session or make_session(client)
    typing = Typing(client)
    typing.bell = bell
    typing.ignored = ignored or Ignored()
    with patch_stdout(raw=True):
        incoming = asyncio.create_task(_show_incoming(client, typing), name="chat-show-incoming")
        typed = asyncio.create_task(_send_typed(client, session, typing), name="chat-send-typed")
        try:
            await asyncio.wait({incoming, typed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (incoming, typed):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await client.close()


async def _show_incoming(client: ChatClient, typing: Typing) -> None:
    """Draw what arrives, all that is waiting in one print: a burst is one redraw, not one per line."""
    first = False  # the last welcome was the first of its room this run
    async for batch in client.event_batches():
        lines: list[render.Fragments] = []
        for event in batch:
            typing.follow(event)
            if _from_ignored(event, typing.ignored):
                continue
            if isinstance(event, PrivateMessage) and event.name != client.name:
                typing.last_private_from = event.name
            if _calls_for(event, client.name):
                _called(typing)
            if fragments := render.render(event, client.name, room=typing.room):
                day = render.day_of(event)
                if day is not None and day != typing.last_day:
                    if typing.last_day is not None:  # the first line of a run has its own date if not today's
                        lines.append(render.day_change(day))
                    typing.last_day = day
                lines.append(fragments)
            if isinstance(event, Reconnected) and typing.pending:
                show(_one_print(lines))
                lines = []
                await _send_pending(client, typing)
            if isinstance(event, Welcome):
                first = room_key(event.room) not in typing.welcomed
                typing.welcomed.add(room_key(event.room))
            if isinstance(event, Resumed) and not event.missed and first:
                # Back after a restart with nothing missed: a few earlier lines, so the screen is not empty.
                with contextlib.suppress(ConnectionClosed):
                    await client.page_back(event.room, CONTEXT_LINES)
        show(_one_print(lines))


def _from_ignored(event: ClientEvent, ignored: Ignored) -> bool:
    """Whether `event` is something said by a name the user hides."""
    match event:
        case ChatMessage(name=name) | Action(name=name) | PrivateMessage(name=name):
            return ignored.hides(name)
    return False


def _calls_for(event: ClientEvent, me: str) -> bool:
    """Whether a line calls for `me`: somebody else names them, or writes to them privately."""
    match event:
        case ChatMessage(name=name, msg=msg) | Action(name=name, msg=msg) if name != me:
            return render.mentions(msg, me)
        case PrivateMessage(name=name) if name != me:
            return True
    return False


def _called(typing: Typing) -> None:
    """Ring the bell (if wanted) and show in the terminal's title how many lines called since the user typed."""
    typing.calls += 1
    output = get_app_session().output
    if typing.bell:
        output.bell()
    output.set_title(f"chat: {typing.calls} for you")
    output.flush()


def _one_print(lines: list[render.Fragments]) -> render.Fragments:
    """Several rendered lines as the fragments of one print."""
    joined: render.Fragments = []
    for line in lines:
        joined += [("", "\n"), *line] if joined else line
    return joined


async def _send_pending(client: ChatClient, typing: Typing) -> None:
    """What was typed while the connection was down, in order, now that it is back (after the rejoins:
    the server serves lines in order, so each goes to its room as a member's)."""
    count = len(typing.pending)
    while typing.pending:
        try:
            await client.send(typing.pending[0])
        except ConnectionClosed:
            return  # down again: they wait for the next reconnect
        typing.pending.pop(0)
    show(render.notice(f"sent the {count} line{'s' if count != 1 else ''} typed while disconnected"))


async def _send_typed(client: ChatClient, session: PromptSession[str], typing: Typing) -> None:
    draft = ""  # a line handed back to the user to edit (a message too long to send)
    quitting = False  # Ctrl-C on an empty line once: a second one leaves
    while True:
        try:
            line = await session.prompt_async(lambda: _prompt(client, typing), style=STYLE, default=draft)
        except EOFError:
            return  # Ctrl-D on an empty line: leave quietly
        except KeyboardInterrupt:
            # Ctrl-C throws away what is typed; on an empty line it asks first, then leaves.
            if session.default_buffer.text or not quitting:
                quitting = not session.default_buffer.text
                if quitting:
                    show(render.notice("Ctrl-C again (or Ctrl-D, /quit) leaves"))
                draft = ""
                continue
            return
        draft, quitting = "", False
        if typing.calls:  # the user is here again: what called for them has been seen
            typing.calls = 0
            get_app_session().output.set_title("chat")
        match parse(line, typing.room):
            case None:
                continue
            case Quit():
                return
            case ShowHelp():
                for help_line in HELP.splitlines():
                    show(render.notice(help_line))
            case RegisterName():
                await _register(client)
            case Mistake(detail=detail):
                show(render.error(detail))
            case Send(message=SendMessage(msg=text)) if typing.private_to is not None:
                draft = await _say(client, typing, SendPrivate.model_construct(to=typing.private_to, msg=text), line)
            case Reply(text=text):
                if typing.last_private_from is None:
                    show(render.error("nobody has written to you privately yet"))
                    continue
                reply = SendPrivate.model_construct(to=typing.last_private_from, msg=text)
                draft = await _say(client, typing, reply, line)
            case Query(name=name):
                typing.private_to = name
                show(render.notice(f"typing to {name} privately; /query alone goes back" if name else
                                   f"typing into {typing.room}"))
            case Ignore(name=None):
                hidden = typing.ignored.names
                show(render.notice(f"hidden: {', '.join(hidden)}" if hidden else "you hide nobody's lines"))
            case Ignore(name=str(name), undo=False):
                typing.ignored.hide(name)
                show(render.notice(f"{name}'s lines are hidden from now on (/unignore {name} shows them)"))
            case Ignore(name=str(name), undo=True):
                shown = typing.ignored.show(name)
                show(render.notice(f"{name}'s lines are shown again" if shown else f"you were not hiding {name}"))
            case ClearScreen():
                get_app_session().output.erase_screen()
                get_app_session().output.cursor_goto(0, 0)
                get_app_session().output.flush()
            case Send(message=SendMessage() | SendAction() | SendPrivate() as message):
                draft = await _say(client, typing, message, line)
            case Send(message=message):
                await _send(client.send(message))
            case PageBack(limit=limit):
                await _send(client.page_back(typing.room, limit))
            case JoinRoom(room=room):
                if room_key(room) in client.rooms:
                    show(render.error(typing.switch(room) or f"you are in {room}; typing there now"))
                else:
                    typing.joining = room
                    await _send(client.join(room))
            case PartRoom(room=room):
                await _send(client.part(room))
            case SwitchRoom(room=room):
                show(render.error(why) if (why := typing.switch(room)) else render.notice(f"typing into {typing.room}"))
            case ShowTopic():
                view = client.rooms.get(room_key(typing.room))
                topic = view.topic if view else ""
                show(
                    render.notice(
                        f"topic of {typing.room}: {render.neutralise(topic)}"
                        if topic
                        else f"{typing.room} has no topic"
                    )
                )


def _prompt(client: ChatClient, typing: Typing) -> FormattedText:
    """`[room] name> `, with the user's role in that room if it has one: `[den] alice (op)> `."""
    view = client.rooms.get(room_key(typing.room))
    role = view.roles.get(client.name) if view else None
    offline = [] if client.connected else [("class:error", f"(offline, {len(typing.pending)} waiting) ")]
    where = f"[→ {typing.private_to}] " if typing.private_to else f"[{typing.room}] "
    return FormattedText(
        [*offline, ("class:room", where), ("bold", client.name + (f" ({role})" if role else "") + "> ")]
    )


async def _say(client: ChatClient, typing: Typing, message: BaseModel, line: str) -> str:
    """Send what the user said, or keep it while the connection is down; what to hand back to the
    input line (the line itself if it is too long to send, else nothing).

    A line too long to send comes back to the input once, with the offer to send it in parts: Enter
    again, unchanged, sends it as several messages (cut at line ends or spaces where it can be).
    """
    if isinstance(message, SendMessage | SendAction | SendPrivate) and len(message.msg) > MAX_MSG:
        if typing.split_offer != line:
            parts = len(split_text(message.msg, MAX_MSG))
            show(render.error(f"that message is {len(message.msg):,} characters; the server takes at most "
                              f"{MAX_MSG:,}: not sent. Enter again sends it as {parts} messages"))
            typing.split_offer = line
            return line  # back in the input line, to shorten or to send in parts
        typing.split_offer = None
        for part in split_text(message.msg, MAX_MSG):
            await _say(client, typing, message.model_copy(update={"msg": part}), part)
        return ""
    typing.split_offer = None
    if not typing.pending and client.connected:
        with contextlib.suppress(ConnectionClosed):
            await client.send(message)
            return ""
    typing.pending.append(message)  # after the ones already waiting: order is kept
    show(render.notice(f"not connected: {len(typing.pending)} waiting to be sent when it is back"))
    return ""


def split_text(text: str, most: int) -> list[str]:
    """`text` in parts of at most `most` characters, each cut after the last line end or space that
    fits (mid-word only where a part has neither)."""
    parts: list[str] = []
    while len(text) > most:
        cut = max(text.rfind("\n", 0, most), text.rfind(" ", 0, most))
        cut = cut + 1 if cut > 0 else most
        parts.append(text[:cut])
        text = text[cut:]
    return [*parts, text] if text else parts


async def _register(client: ChatClient) -> None:
    """Ask for the new password twice, never echoed nor remembered, and register the name with it."""
    session: PromptSession[str] = PromptSession()  # its own history: a password never comes back on up-arrow
    try:
        password = await session.prompt_async("new password: ", is_password=True)
        again = await session.prompt_async("the same again: ", is_password=True)
    except (EOFError, KeyboardInterrupt):
        show(render.notice("not registered"))
        return
    if password != again:
        show(render.error("the two passwords differ; not registered"))
        return
    try:
        request = Register(password=password)
    except ValidationError:
        show(render.error(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters; not registered"))
        return
    await _send(client.send(request))


async def _send(sending: Awaitable[None]) -> None:
    try:
        await sending
    except ConnectionClosed:
        show(render.error("not connected right now; that was not sent"))
