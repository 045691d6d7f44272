"""What the client does with what arrives and with what the user types, whichever screen shows it.

The plain line mode (ui.py) and the full-screen mode (screen.py) both hand incoming batches to
`take_in` and typed lines to `carry_out`; they differ only in their View: where a line is drawn,
how a password is asked for. The meaning of a typed line is in commands.py, the looks in render.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
from collections.abc import Awaitable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from prompt_toolkit.application import get_app_session
from prompt_toolkit.formatted_text import FormattedText
from pydantic import BaseModel, ValidationError

from chat.client import render, settings
from chat.client.buffers import buffer_of
from chat.client.commands import (
    ClearScreen,
    CloseBuffer,
    Ignore,
    JoinRoom,
    JumpTo,
    Mistake,
    PageBack,
    PartRoom,
    Query,
    Quit,
    Reconnect,
    RegisterName,
    Reply,
    SearchText,
    Send,
    SetOption,
    ShowBuffer,
    ShowHelp,
    ShowTopic,
    SwitchRoom,
    help_lines,
    parse,
)
from chat.client.connection import ChatClient, ClientEvent, PutOut, Reconnected, Resumed, SearchFound
from chat.client.filters import SmartFilter
from chat.client.ignored import Ignored
from chat.client.logs import BufferLogs
from chat.client.settings import Settings
from chat.errors import ConnectionClosed
from chat.wire.protocol import (
    LOBBY,
    MAX_MSG,
    MAX_PASSWORD,
    MIN_PASSWORD,
    Action,
    ChatMessage,
    HistoryPage,
    Left,
    Moderation,
    PrivateMessage,
    Register,
    SendAction,
    SendMessage,
    SendPrivate,
    Topic,
    Welcome,
    room_key,
)

#: How lines look in a log file: no clock (the log writes its own, with the date), no colours.
_LOG_LOOK = render.Look(timestamp_format="", nick_colors=False)

#: Earlier lines shown for context in a room rejoined with nothing new in it.
CONTEXT_LINES = 5


class PasswordRefused(Exception):
    """The user would not give the password asked for (Ctrl-C or Ctrl-D at the question)."""


class View(Protocol):
    """Where the client's lines appear: above a prompt, or in a full screen's buffers."""

    def show(self, fragments: render.Fragments) -> None:
        """A line from the client itself (an answer to what the user typed), where the user is looking."""

    def draw(self, events: list[ClientEvent], quiet: Collection[int] = ()) -> None:
        """Lines that arrived, each where it belongs, all in one redraw; those at the positions in
        `quiet` (noise, by the smart filter) are taken note of but not shown."""

    def clear(self) -> None:
        """Empty what the user is looking at (/clear)."""

    async def ask_secret(self, question: str) -> str:
        """Ask for a password, not echoed and not remembered; PasswordRefused if the user declines."""

    def close_private(self, name: str) -> None:
        """Forget the private conversation with `name` on screen (its lines stay on the server)."""

    def go_to(self, target: str) -> str | None:
        """Show the buffer `target` numbers or names; a sentence saying why not if there is none."""

    def list_buffers(self) -> list[str]:
        """One line per buffer: `2: dev (3 unread)`."""

    def apply_settings(self) -> None:
        """The settings changed (/set): show what they change from now on."""

    def show_help(self, lines: list[str]) -> None:
        """Help, apart from the conversation if the view can (it is not part of it)."""

    def show_search(self, text: str) -> str | None:
        """Show the lines of the buffer shown that contain `text`; a sentence if this view cannot."""

    def jump_to(self, line: ChatMessage | Action | PrivateMessage) -> str | None:
        """Show `line` (a search's match) where it was said, loading older lines up to it if
        needed; a sentence saying why not if this view cannot."""


@dataclass(frozen=True)
class Where:
    """Where a typed line goes: a room, or the private conversation with `private_to`. Fixed when
    Enter is pressed, so a key pressed right after (Alt-1, typed ahead) cannot send it elsewhere."""

    room: str
    private_to: str | None = None


class ChatState:
    """Where what the user types goes, what waits to be sent, and what the client keeps for them."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        #: Messages typed while disconnected, sent in order once the connection is back.
        self.pending: list[BaseModel] = []
        #: Whom plain lines go to privately (/query), if not the room; who last wrote privately (/r).
        self.private_to: str | None = None
        self.last_private_from: str | None = None
        #: Names whose lines are not shown (/ignore).
        self.ignored = Ignored()
        #: The user's settings (client.toml), and where /set writes them (None: nowhere).
        self.settings = Settings()
        self.settings_path: Path | None = None
        #: How many lines called for the user since they last typed; when the bell last rang.
        self.calls = 0
        self.last_bell: float | None = None
        #: Numbered lines still to come per room (by key) that are history shown for context, not news.
        self.context: dict[str, int] = {}
        #: Who spoke lately in each room (by key), the latest first: Tab offers them first.
        self.speakers: dict[str, list[str]] = {}
        #: Which lines are noise (the smart_filter setting).
        self.smart = SmartFilter()
        #: Notification commands still running.
        self.notifying: set[asyncio.Task[None]] = set()
        self._logs: BufferLogs | None = None
        #: A line refused as too long, which Enter again (unchanged) sends in parts.
        self.split_offer: str | None = None
        #: Rooms welcomed this run (a room rejoined after a reconnect needs no lines of context), and
        #: whether the last welcome was its room's first.
        self.welcomed: set[str] = set()
        self.first_welcome = False
        #: Rooms (by key) whose lines of context were asked for: their page comes without a header.
        self.context_asked: set[str] = set()
        self.room = next(iter(client.rooms.values())).name if client.rooms else LOBBY
        #: A room the user asked to join: typing switches to it once it is welcomed.
        self.joining: str | None = None
        #: A room /close was typed in once: typed again there, it parts the room.
        self.close_offer: str | None = None
        #: The matches of the last search the server answered, as numbered on screen (/jump N).
        self.found: list[ChatMessage | Action | PrivateMessage] = []

    def follow(self, event: ClientEvent) -> None:
        """Keep the room typed into one the client is in, as joins and parts arrive."""
        match event:
            case Welcome(room=room) if self.joining is not None and room_key(room) == room_key(self.joining):
                self.room, self.joining, self.private_to = room, None, None
            case Welcome(room=room) if room_key(room) == room_key(self.room):
                self.room = room  # the server's spelling
            case Left(room=room, name=name, reason="part") if name == self.client.name:
                if room_key(room) == room_key(self.room) and self.client.rooms:
                    self.room = next(iter(self.client.rooms.values())).name
            case PutOut(room=room):
                if room_key(room) == room_key(self.room) and self.client.rooms:
                    self.room = next(iter(self.client.rooms.values())).name

    @property
    def bell(self) -> bool:
        return self.settings.bell

    @bell.setter
    def bell(self, wanted: bool) -> None:
        self.settings.bell = wanted

    @property
    def look(self) -> render.Look:
        """How lines look, as the settings have it."""
        return render.Look(
            self.settings.timestamp_format, tuple(self.settings.highlight_words), self.settings.nick_colors
        )

    def is_context(self, event: ClientEvent) -> bool:
        """Whether a room's line is history shown for context (a fresh join's, a page fetched),
        not news; counts it off."""
        match event:
            case Welcome(room=room, history=history):
                self.context[room_key(room)] = history
            case Resumed(room=room):
                self.context[room_key(room)] = 0  # what follows a resumed join was missed: news
            case HistoryPage(room=room, count=count):
                self.context[room_key(room)] = count
            case ChatMessage(room=room) | Action(room=room) | Topic(room=room) | Moderation(room=room) if (
                self.context.get(room_key(room))
            ):  # every numbered line of the room counts off, as the welcome's `history` counts them
                self.context[room_key(room)] -= 1
                return True
        return False

    def spoke(self, event: ClientEvent) -> None:
        match event:
            case ChatMessage(room=room, name=name) | Action(room=room, name=name) if name != self.client.name:
                recent = self.speakers.setdefault(room_key(room), [])
                if name in recent:
                    recent.remove(name)
                recent.insert(0, name)
                del recent[50:]

    def names_for_completion(self) -> list[str]:
        """The names Tab offers, in order: the other person of a private conversation; in a room, who
        spoke there lately (the latest first), then its other members, then everybody else known."""
        if self.private_to:
            return [self.private_to]
        view = self.client.rooms.get(room_key(self.room))
        members = view.users if view else []
        recent = [name for name in self.speakers.get(room_key(self.room), []) if name in members]
        ordered = recent + [name for name in members if name not in recent]
        return ordered + [name for name in self.client.users if name not in ordered]

    def log(self, event: ClientEvent, me: str) -> None:
        """Append a line that arrived to its buffer's log file, if the log_dir setting asks for logs."""
        if not self.settings.log_dir or isinstance(event, Welcome | Resumed | HistoryPage):
            return
        key = buffer_of(event, me)
        if key is None:
            return
        directory = Path(self.settings.log_dir).expanduser()
        if self._logs is None or self._logs.directory != directory:
            self.close_logs()
            self._logs = BufferLogs(directory)
        fragments = render.render(event, me, look=_LOG_LOOK)
        if fragments:
            when = getattr(event, "time", None)
            self._logs.write(key, when if isinstance(when, datetime) else datetime.now(UTC), fragments)

    def flush_logs(self) -> str | None:
        """Write what was logged to disk; why logging stopped, the first time it does."""
        if self._logs is None:
            return None
        self._logs.flush()
        failed, self._logs.failed = self._logs.failed, None
        if failed:
            self.settings.log_dir = ""  # said once; /set log_dir DIR tries again
        return failed

    def close_logs(self) -> None:
        if self._logs is not None:
            self._logs.close()
            self._logs = None

    def where(self) -> Where:
        """Where a line typed now goes."""
        return Where(self.room, self.private_to)

    def switch(self, room: str) -> str | None:
        """Type into `room`; a sentence saying why not if the client is not in it."""
        view = self.client.rooms.get(room_key(room))
        if view is None:
            return f"you are not in {room}; /join it first"
        self.room, self.private_to = view.name, None
        return None


def from_ignored(event: ClientEvent, ignored: Ignored) -> bool:
    """Whether `event` is something said by a name the user hides."""
    match event:
        case ChatMessage(name=name) | Action(name=name) | PrivateMessage(name=name):
            return ignored.hides(name)
    return False


def calls_for(event: ClientEvent, me: str, look: render.Look = render.LOOK) -> bool:
    """Whether a line calls for `me`: somebody else names them (or a highlight word), or writes to
    them privately."""
    match event:
        case ChatMessage(name=name, msg=msg) | Action(name=name, msg=msg) if name != me:
            return look.calls(msg, me)
        case PrivateMessage(name=name) if name != me:
            return True
    return False


def prompt(client: ChatClient, state: ChatState) -> FormattedText:
    """`[room] name> `, with the user's role in that room if it has one: `[den] alice (op)> `."""
    view = client.rooms.get(room_key(state.room))
    role = view.roles.get(client.name) if view else None
    offline = [] if client.connected else [("class:error", f"(offline, {len(state.pending)} waiting) ")]
    where = f"[→ {state.private_to}] " if state.private_to else f"[{state.room}] "
    return FormattedText(
        [*offline, ("class:room", where), ("bold", client.name + (f" ({role})" if role else "") + "> ")]
    )


def _recalled(event: ClientEvent, client: ChatClient) -> bool:
    """Whether `event` is a private line read in an earlier run, recalled to fill its conversation."""
    return isinstance(event, PrivateMessage) and event.id <= client.recalled_private


async def take_in(batch: list[ClientEvent], client: ChatClient, state: ChatState, view: View) -> None:
    """Draw what arrived (less what the user hides), ring for what calls for them, and once the
    connection is back send what was typed while it was down."""
    shown: list[ClientEvent] = []
    quiet: set[int] = set()
    calling: list[ClientEvent] = []
    for event in batch:
        state.follow(event)
        state.spoke(event)
        context = state.is_context(event) or _recalled(event, client)
        if from_ignored(event, state.ignored):
            continue
        if isinstance(event, PrivateMessage) and event.name != client.name:
            state.last_private_from = event.name
        if not context and calls_for(event, client.name, state.look):
            calling.append(event)
        if not context:
            state.log(event, client.name)  # the log keeps what the smart filter hides
        if state.smart.hides(event, client.name) and state.settings.smart_filter:
            quiet.add(len(shown))
        if isinstance(event, HistoryPage) and room_key(event.room) in state.context_asked:
            state.context_asked.discard(room_key(event.room))
            quiet.add(len(shown))  # "-- nothing new since you left --" says what the lines are
        shown.append(event)
        if isinstance(event, Reconnected) and state.pending:
            view.draw(shown, quiet)
            shown, quiet = [], set()
            await _send_pending(client, state, view)
        if isinstance(event, SearchFound):
            state.found = event.lines
        if isinstance(event, Welcome):
            state.first_welcome = room_key(event.room) not in state.welcomed
            state.welcomed.add(room_key(event.room))
        if isinstance(event, Resumed) and not event.missed and state.first_welcome:
            # Back after a restart with nothing missed: a few earlier lines, so the screen is not empty.
            state.context_asked.add(room_key(event.room))
            try:
                await client.page_back(event.room, CONTEXT_LINES)
            except ConnectionClosed:
                state.context_asked.discard(room_key(event.room))  # no page is coming
    view.draw(shown, quiet)
    if failed := state.flush_logs():
        view.show(render.error(failed))
    if calling:
        _called(state, calling, client.name)


#: Seconds after a bell (or a notification) in which lines that call for the user ring no more:
#: a flood of 300 mentions is one bell, not 300.
BELL_EVERY = 10.0


def _called(state: ChatState, calling: list[ClientEvent], me: str) -> None:
    """Show in the terminal's title how many lines called since the user typed; ring the bell and
    run the notification command (if wanted) once for the burst."""
    state.calls += len(calling)
    output = get_app_session().output
    now = time.monotonic()
    quiet = state.last_bell is not None and now - state.last_bell < BELL_EVERY
    if not quiet:
        state.last_bell = now
        if state.settings.bell:
            output.bell()
        if state.settings.notify_command:
            _notify(state, calling[-1], me, len(calling))
    output.set_title(f"chat: {state.calls} for you")
    output.flush()


def _notify(state: ChatState, event: ClientEvent, me: str, count: int) -> None:
    """Run the notification command with the line (as its last argument, never through a shell)."""
    fragments = render.render(event, me, look=state.look) or []
    text = "".join(part for _, part in fragments)
    if count > 1:
        text += f" (and {count - 1} more)"
    try:
        command = [*shlex.split(state.settings.notify_command), text]
    except ValueError:
        return  # unbalanced quotes: /set shows the value, the user fixes it

    async def run() -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError:
            return  # no such program: nothing to show it on but the screen the user is not looking at
        await process.wait()

    task = asyncio.create_task(run(), name="chat-notify")
    state.notifying.add(task)
    task.add_done_callback(state.notifying.discard)


async def _send_pending(client: ChatClient, state: ChatState, view: View) -> None:
    """What was typed while the connection was down, in order, now that it is back (after the rejoins:
    the server serves lines in order, so each goes to its room as a member's)."""
    count = len(state.pending)
    while state.pending:
        try:
            await client.send(state.pending[0])
        except ConnectionClosed:
            return  # down again: they wait for the next reconnect
        state.pending.pop(0)
    view.show(render.notice(f"sent the {count} line{'s' if count != 1 else ''} typed while disconnected"))


async def carry_out(
    line: str, client: ChatClient, state: ChatState, view: View, where: Where | None = None
) -> str | None:
    """Do what a line typed into `where` (by default: where the user types now) asks; what to hand
    back to the input line to edit ("" for nothing), or None when the user leaves."""
    where = where or state.where()
    if state.calls:  # the user is here again: what called for them has been seen
        state.calls = 0
        get_app_session().output.set_title("chat")
    command = parse(line, where.room, where.private_to)
    if not isinstance(command, CloseBuffer):
        state.close_offer = None
    match command:
        case None:
            pass
        case Quit():
            return None
        case ShowHelp(command=topic):
            view.show_help(help_lines(topic))
        case RegisterName():
            await _register(client, view)
        case Mistake(detail=detail):
            view.show(render.error(detail))
        case Reply(text=text):
            if state.last_private_from is None:
                view.show(render.error("nobody has written to you privately yet"))
                return ""
            reply = SendPrivate.model_construct(to=state.last_private_from, msg=text)
            return await _say(client, state, view, reply, line)
        case Query(name=name):
            state.private_to = name
            view.show(render.notice(f"typing to {name} privately; /query alone goes back" if name else
                                    f"typing into {state.room}"))
        case Ignore(name=None):
            hidden = state.ignored.names
            view.show(render.notice(f"hidden: {', '.join(hidden)}" if hidden else "you hide nobody's lines"))
        case Ignore(name=str(name), undo=False):
            state.ignored.hide(name)
            view.show(render.notice(f"{name}'s lines are hidden from now on (/unignore {name} shows them)"))
        case Ignore(name=str(name), undo=True):
            shown = state.ignored.show(name)
            view.show(render.notice(f"{name}'s lines are shown again" if shown else f"you were not hiding {name}"))
        case ClearScreen():
            view.clear()
        case Reconnect():
            if not client.reconnect_now():
                view.show(render.notice("connected already" if client.connected else "reconnecting already"))
        case Send(message=SendMessage() | SendAction() | SendPrivate() as message):
            return await _say(client, state, view, message, line)
        case Send(message=message):
            await _send(client.send(message), view)
        case PageBack(limit=limit):
            await _send(client.page_back(where.room, limit), view)
        case JoinRoom(room=room):
            if room_key(room) in client.rooms:
                view.show(render.error(state.switch(room) or f"you are in {room}; typing there now"))
            else:
                state.joining = room
                await _send(client.join(room), view)
        case PartRoom(room=room):
            await _send(client.part(room), view)
        case SwitchRoom(room=room):
            why = state.switch(room)
            view.show(render.error(why) if why else render.notice(f"typing into {state.room}"))
        case ShowTopic():
            room_view = client.rooms.get(room_key(where.room))
            topic = room_view.topic if room_view else ""
            view.show(render.notice(f"topic of {where.room}: {render.neutralise(topic)}" if topic
                                    else f"{where.room} has no topic"))
        case SetOption(key=None):
            for listed in settings.listing(state.settings):
                view.show(render.notice(listed, look=state.look))
            if state.settings_path is not None:
                view.show(render.notice(f"kept in {state.settings_path}", look=state.look))
        case SetOption(key=str(key), value=None):
            known = key in settings.DESCRIPTIONS
            view.show(render.notice(f"{key} = {settings.shown(state.settings, key)}", look=state.look) if known
                      else render.error(f"no setting {key}; /set alone lists them"))
        case SetOption(key=str(key), value=str(value)):
            changed = settings.change(state.settings, key, value)
            if isinstance(changed, str):
                view.show(render.error(changed))
                return ""
            state.settings = changed
            view.apply_settings()
            saved = ""
            if state.settings_path is not None:
                kept, _ = settings.load(state.settings_path)  # the file's, not the run's own (--no-bell, --log-dir)
                for_file = settings.change(kept, key, value)
                try:
                    settings.save(state.settings_path, for_file if isinstance(for_file, Settings) else changed)
                    saved = f" (saved in {state.settings_path})"
                except OSError as exc:
                    saved = f" (for this run: {state.settings_path} could not be written: {exc.strerror or exc})"
            view.show(render.notice(f"{key} = {settings.shown(changed, key)}{saved}", look=state.look))
        case SearchText(text=text, everywhere=everywhere):
            if not everywhere and (why := view.show_search(text)):
                view.show(render.error(why))
            # The server's matches come later (SearchFound), below what the buffer shows now.
            in_room = None if everywhere or where.private_to is not None else where.room
            await _send(client.search(text, in_room), view)
        case JumpTo(number=number):
            if not state.found:
                view.show(render.error("no search to jump into: /search TEXT first"))
            elif number > len(state.found):
                found = len(state.found)
                view.show(render.error(f"the last search found {found} lines: /jump 1 to {found}"))
            elif why := view.jump_to(state.found[number - 1]):
                view.show(render.error(why))
        case ShowBuffer(target=None):
            for listed in view.list_buffers():
                view.show(render.notice(listed))
        case ShowBuffer(target=str(target)):
            if why := view.go_to(target):
                view.show(render.error(why))
        case CloseBuffer(private_to=str(name)):
            if state.private_to is not None and state.private_to.casefold() == name.casefold():
                state.private_to = None
            view.close_private(name)
            view.show(render.notice(f"closed the conversation with {name}"))
        case CloseBuffer(private_to=None):
            if state.close_offer != where.room:
                state.close_offer = where.room
                view.show(render.notice(f"/close again leaves {where.room}"))
                return ""
            state.close_offer = None
            await _send(client.part(where.room), view)
    return ""


async def _say(client: ChatClient, state: ChatState, view: View, message: BaseModel, line: str) -> str:
    """Send what the user said, or keep it while the connection is down; what to hand back to the
    input line (the line itself if it is too long to send, else nothing).

    A line too long to send comes back to the input once, with the offer to send it in parts: Enter
    again, unchanged, sends it as several messages (cut at line ends or spaces where it can be).
    """
    if isinstance(message, SendMessage | SendAction | SendPrivate) and len(message.msg) > MAX_MSG:
        if state.split_offer != line:
            parts = len(split_text(message.msg, MAX_MSG))
            view.show(render.error(f"that message is {len(message.msg):,} characters; the server takes at most "
                                   f"{MAX_MSG:,}: not sent. Enter again sends it as {parts} messages"))
            state.split_offer = line
            return line  # back in the input line, to shorten or to send in parts
        state.split_offer = None
        for part in split_text(message.msg, MAX_MSG):
            await _say(client, state, view, message.model_copy(update={"msg": part}), part)
        return ""
    state.split_offer = None
    if not state.pending and client.connected:
        with contextlib.suppress(ConnectionClosed):
            await client.send(message)
            return ""
    state.pending.append(message)  # after the ones already waiting: order is kept
    view.show(render.notice(f"not connected: {len(state.pending)} waiting to be sent when it is back"))
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


async def _register(client: ChatClient, view: View) -> None:
    """Ask for the new password twice, never echoed nor remembered, and register the name with it."""
    try:
        password = await view.ask_secret("new password: ")
        again = await view.ask_secret("the same again: ")
    except PasswordRefused:
        view.show(render.notice("not registered"))
        return
    if password != again:
        view.show(render.error("the two passwords differ; not registered"))
        return
    try:
        request = Register(password=password)
    except ValidationError:
        view.show(render.error(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters; not registered"))
        return
    await _send(client.send(request), view)


async def _send(sending: Awaitable[None], view: View) -> None:
    try:
        await sending
    except ConnectionClosed:
        view.show(render.error("not connected right now; that was not sent"))
