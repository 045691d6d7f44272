"""The full-screen client: a buffer per room and per private conversation, a title bar with the
topic, a status bar with the connection and the other buffers' unread counts, an optional member
list, and the input line, as one prompt_toolkit Application.

It shows what actions.py decides: incoming batches reach `take_in`, typed lines `carry_out`, the
same as in the plain mode. buffers.py keeps and wraps each buffer's lines; this module only lays
them out, binds the keys and routes each line to its buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer as InputBuffer
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import History
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import (
    ConditionalContainer,
    Float,
    FloatContainer,
    FormattedTextControl,
    HSplit,
    Layout,
    UIContent,
    UIControl,
    VSplit,
    Window,
)
from prompt_toolkit.layout.controls import BufferControl
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.layout.menus import CompletionsMenu
from prompt_toolkit.layout.processors import BeforeInput, ConditionalProcessor, PasswordProcessor
from prompt_toolkit.mouse_events import MouseEvent, MouseEventType
from prompt_toolkit.widgets import Frame

from chat.client import hotlist, render
from chat.client.actions import ChatState, PasswordRefused, Where, calls_for, carry_out, prompt, take_in
from chat.client.buffers import Buffer, Buffers, Line, buffer_of, is_talk, private_buffer, room_buffer
from chat.client.connection import (
    ChatClient,
    ClientEvent,
    ConnectionLost,
    PutOut,
    Reconnected,
    Resumed,
    SignedInElsewhere,
)
from chat.client.ignored import Ignored
from chat.client.inputline import STYLE, ChatCompleter
from chat.client.marks import SharedReadMarkers
from chat.client.search import Search
from chat.client.settings import Settings
from chat.errors import ConnectionClosed
from chat.wire.protocol import (
    MAX_HISTORY_PAGE,
    Action,
    Away,
    ChatMessage,
    HistoryPage,
    Left,
    MarkRead,
    Moderation,
    PrivateMessage,
    ReadMarker,
    Renamed,
    Reset,
    Users,
    Welcome,
    room_key,
)

if TYPE_CHECKING:  # a name prompt_toolkit defines for type checkers only
    from prompt_toolkit.key_binding.key_bindings import NotImplementedOrNone

#: Older messages fetched when scrolling reaches the top of a room's buffer.
PAGE = 50
#: Columns of the member list, and the narrowest screen that still shows it.
MEMBERS_WIDTH = 20
MEMBERS_MIN_SCREEN = 60
#: Rows the mouse wheel scrolls per notch.
WHEEL_ROWS = 3
#: Redraws at most this often: a burst of lines between two frames costs one frame.
FRAME = 0.04

#: Marks before a member's name for their role in the room, as IRC clients show them, in that order.
ROLE_MARKS = {"owner": "~", "admin": "&", "op": "@", "voice": "+"}
log = logging.getLogger(__name__)
ROLE_ORDER = {role: at for at, role in enumerate(ROLE_MARKS)}


class MessagesControl(UIControl):
    """The active buffer's rows, bottom-aligned; the wheel scrolls it."""

    def __init__(self, screen: ChatScreen) -> None:
        self.screen = screen

    def create_content(self, width: int, height: int) -> UIContent:
        buffer = self.screen.active()
        search = self.screen.search
        if search is not None and search.key == buffer.key:
            results = search.results(buffer)
            rows, _ = results.view(width, height, bare=self.screen.bare)
            search.scrolled = results.scrolled  # capped at the first match
        else:
            rows, buffer.at_top = buffer.view(width, height, bare=self.screen.bare)
            if buffer.at_top and buffer.scrolled:
                self.screen.fetch_older(buffer)
        def row(number: int) -> StyleAndTextTuples:
            return list(rows[number])

        return UIContent(get_line=row, line_count=len(rows), show_cursor=False)

    def mouse_handler(self, mouse_event: MouseEvent) -> NotImplementedOrNone:
        if mouse_event.event_type == MouseEventType.SCROLL_UP:
            self.screen.scroll(WHEEL_ROWS)
        elif mouse_event.event_type == MouseEventType.SCROLL_DOWN:
            self.screen.scroll(-WHEEL_ROWS)
        else:
            return NotImplemented  # not ours: prompt_toolkit passes it on
        return None

    def is_focusable(self) -> bool:
        return False


class ChatScreen:
    """The Application, its layout and keys, and the View that take_in and carry_out draw through."""

    def __init__(
        self,
        client: ChatClient,
        state: ChatState,
        history: History | None = None,
        mouse: bool = True,
    ) -> None:
        self.client = client
        self.state = state
        self.buffers = Buffers()
        for view in client.rooms.values():
            self.buffers.open(room_buffer(view.name), view.name)
        for name in client.conversations.values():  # the conversations open in the last run
            self.buffers.open(private_buffer(name), name)
        self.show_members = True
        #: Lines typed and accepted, for the loop that carries them out.
        self.typed: asyncio.Queue[tuple[str, Where]] = asyncio.Queue()
        #: While a password is asked for: the question, and where the answer goes.
        self.secret: tuple[str, asyncio.Future[str]] | None = None
        #: Ctrl-C pressed once on an empty line: a second one leaves.
        self.quitting = False
        #: The last ConnectionLost while the connection is down; set when the connection went or came back.
        self.lost: ConnectionLost | None = None
        self.connection_changed = asyncio.Event()
        #: The buffer the first of a run of Alt-A left, gone back to when nothing new is left.
        self.before_jump: str | None = None
        #: The line that said the connection was lost, while it is down: the reconnect rewrites it.
        self._outage: tuple[Line, ConnectionLost, datetime] | None = None
        #: The search shown (/search, Ctrl-R), and what was being typed before Ctrl-R.
        self.search: Search | None = None
        #: How far each buffer has been read: shared with the account's other devices (marks.py).
        self.markers: SharedReadMarkers = SharedReadMarkers(self._tell_read)
        #: Whether the session is an account's (only accounts keep read markers on the server).
        self._account = False
        #: The read lines being sent (kept so that they are not collected half-way).
        self._telling: set[asyncio.Task[None]] = set()
        #: Bare mode (Alt-L): only the lines, not indented, no bars, for copying with the mouse.
        self.bare = False
        #: The line /jump asked for, by buffer key and id, until its buffer holds it.
        self._jump: tuple[str, int] | None = None
        #: The help shown over the messages (/help), until Esc.
        self.help: list[str] | None = None
        self._draft = ""
        self.input = InputBuffer(
            completer=ChatCompleter(
                client, state.names_for_completion, lambda: self.search is None or not self.search.typing
            ),
            complete_while_typing=False,
            history=history,
            multiline=True,  # a pasted text keeps its line ends; Enter is bound to send
        )
        self.messages = Window(MessagesControl(self), wrap_lines=False)
        self.members_window = Window(FormattedTextControl(self._members), width=MEMBERS_WIDTH, wrap_lines=False)
        #: How far the member list is scrolled; who is away, and who is muted, per room (by key).
        self.members_top = 0
        self.away: dict[str, set[str]] = {}
        self.muted: dict[str, set[str]] = {}
        self.input.on_text_changed += self._query_changed
        self.app: Application[None] = Application(
            layout=Layout(self._layout(), focused_element=self.input),
            key_bindings=self._keys(),
            style=STYLE,
            full_screen=True,
            mouse_support=mouse,
            min_redraw_interval=FRAME,
        )

    # --- the View -------------------------------------------------------------------

    def show(self, fragments: render.Fragments) -> None:
        self.active().add(fragments)
        self.app.invalidate()

    def draw(self, events: list[ClientEvent], quiet: Collection[int] = ()) -> None:
        me = self.client.name
        for at, event in enumerate(events):
            self._note(event)
            if isinstance(event, ReadMarker):  # another device of the account read this far
                self._heard_read(room_buffer(event.room), event.id)
                continue
            key = buffer_of(event, me)
            if isinstance(event, Renamed) and self._near(event.new):
                key = self.active_key()  # the client passes a rename on once: shown where the user is
            leaving = _leaves(event, me)
            if leaving:  # out of the room: its buffer goes, and the line shows where the user is now
                self.buffers.close(key or "")
                key = None
            target = self._buffer_for(key, _other(event, me))
            if target is None:
                target = self.active()
            if isinstance(event, Reset) or (isinstance(event, Welcome) and event.last_id < target.last_order):
                target.restart_ids()  # the room's ids began again (its history was lost)
                self.markers.forget(target.key)
            if isinstance(event, HistoryPage):
                target.context = event.count  # older lines, or the context after a restart: not news
                if target.fetching:
                    target.fetching = False  # asked for by scrolling: the lines go in above, no header
                    target.complete = event.more == 0
                    continue
            # A fresh join's history is context, not news; a resumed one's is what was missed.
            if isinstance(event, Welcome):
                target.context = event.history
                if event.account is not None:
                    self._account = event.account
                if event.read:
                    self.markers.heard(target.key, event.read)
            elif isinstance(event, Resumed):
                target.context = 0
            if isinstance(event, Reconnected) and self._outage is not None and self.state.settings.smart_filter:
                self._fold_outage()  # one line for the whole outage, not one per step of it
                continue
            if at in quiet:
                continue
            where = target.title if not target.private else ""
            fragments = render.render(event, me, room=where, look=self.state.look)
            if fragments is None:
                continue
            numbered = _numbered(event)
            news = numbered is None or numbered >= target.last_order  # not an older line fetched late
            if numbered is not None and target.context:
                target.context -= 1
                news = False
            read_before = target.lines[-1] if target.lines else None
            target.add(fragments, numbered, render.day_of(event))
            if isinstance(event, ConnectionLost):
                self._outage = (target.lines[-1], event, datetime.now())
            if numbered is not None and numbered <= self.markers.read_up_to(target.key):
                news = False  # read already (on another device, once markers are shared)
            if isinstance(event, PrivateMessage) and event.id <= self.client.recalled_private:
                news = False  # read in an earlier run: recalled to fill the conversation again
            if news and target is not self.active() and is_talk(event) and getattr(event, "name", me) != me:
                if not target.unread:
                    target.unread_from(read_before)
                target.unread += 1
                target.mentioned = target.mentioned or calls_for(event, me, self.state.look)
        self._settle_jump()
        self.app.invalidate()

    def _heard_read(self, key: str, up_to: int) -> None:
        self.markers.heard(key, up_to)
        buffer = self.buffers.get(key)
        if buffer is not None and buffer.last_order <= up_to:
            buffer.read()
        self.app.invalidate()

    def _tell_read(self, key: str, up_to: int) -> None:
        """The user read a room further: its account's other devices are told, through the server."""
        buffer = self.buffers.get(key)
        if not self._account or buffer is None or buffer.private or up_to <= 0 or not self.client.connected:
            return
        task = asyncio.get_running_loop().create_task(self.client.send(MarkRead(room=buffer.title, id=up_to)))
        self._telling.add(task)
        task.add_done_callback(self._told)

    def _told(self, task: asyncio.Task[None]) -> None:
        self._telling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("a read marker was not sent: %s", task.exception())

    def _fold_outage(self) -> None:
        """The line that said the connection was lost now also says it is back, and when."""
        assert self._outage is not None
        line, lost, since = self._outage
        self._outage = None
        seconds = (datetime.now() - since).total_seconds()
        back = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
        text = f"connection lost at {since:%H:%M:%S} ({render.neutralise(lost.detail)}); back after {back}"
        line.fragments = render.notice(text, since, self.state.look)
        line.forget_rows()

    def clear(self) -> None:
        self.active().clear()
        self.app.invalidate()

    def apply_settings(self) -> None:
        self.show_members = self.state.settings.member_list
        self.app.invalidate()

    def close_private(self, name: str) -> None:
        self.buffers.close(private_buffer(name))
        self.client.forget_conversation(name)
        self.app.invalidate()

    async def ask_secret(self, question: str) -> str:
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.secret = (question, answer)
        self.app.invalidate()
        try:
            return await answer
        finally:
            self.secret = None
            self.app.invalidate()

    # --- buffers ------------------------------------------------------------------

    def active_key(self) -> str:
        """The buffer typed into: the private conversation, else the room (state says which)."""
        if self.state.private_to:
            return private_buffer(self.state.private_to)
        return room_buffer(self.state.room)

    def active(self) -> Buffer:
        if self.state.private_to:
            return self.buffers.open(self.active_key(), self.state.private_to)
        view = self.client.rooms.get(room_key(self.state.room))
        return self.buffers.open(self.active_key(), view.name if view else self.state.room)

    def _buffer_for(self, key: str | None, other: str | None = None) -> Buffer | None:
        """The buffer for a line: its room's (if the client is in it), its conversation's (with
        `other`, as spelled), or None."""
        if key is None:
            return None
        if key.startswith("@"):
            return self.buffers.get(key) or self.buffers.open(key, other or key[1:])
        view = self.client.rooms.get(key[1:])
        if view is None:
            return self.buffers.get(key)
        return self.buffers.open(key, view.name)

    def _near(self, name: str) -> bool:
        """Whether `name` is somebody in the buffer the user looks at (its room, or its conversation)."""
        if self.state.private_to:
            return self.state.private_to.casefold() == name.casefold() or self.client.name == name
        view = self.client.rooms.get(room_key(self.state.room))
        return view is not None and name in view.users

    def switch_to(self, buffer: Buffer | None) -> None:
        """Show and type into `buffer`."""
        if buffer is None:
            return
        if buffer.private:
            self.state.private_to = buffer.title
        else:
            self.state.room, self.state.private_to = buffer.title, None
        buffer.read()
        self.end_search()
        self.app.invalidate()

    # --- search -------------------------------------------------------------------

    def start_search(self, text: str | None = None) -> None:
        """Show only the lines of the buffer shown that contain `text` (/search TEXT); without text,
        the input line types the query and every key narrows the lines (Ctrl-R)."""
        self.search = Search(self.active_key(), text or "", typing=text is None)
        if text is None:
            self._draft = self.input.text
            self.input.reset()
        self.app.invalidate()

    def show_search(self, text: str) -> str | None:
        self.start_search(text)
        return None

    def end_search(self) -> None:
        """Esc: every line again, and the line that was being typed before Ctrl-R."""
        if self.search is None:
            return
        if self.search.typing:
            self.input.text, self.input.cursor_position = self._draft, len(self._draft)
        self.search = None
        self.app.invalidate()

    def _query_changed(self, _: object) -> None:
        if self.search is not None and self.search.typing:
            self.search.text = self.input.text
            self.search.scrolled = 0

    def scroll(self, rows: int) -> None:
        if self.search is not None and self.search.key == self.active_key():
            self.search.scrolled = max(0, self.search.scrolled + rows)
            self.app.invalidate()
            return
        buffer = self.active()
        if rows > 0 and buffer.at_top:
            self.fetch_older(buffer)
        buffer.scroll(rows)
        self.app.invalidate()

    def jump_to(self, line: ChatMessage | Action | PrivateMessage) -> str | None:
        if isinstance(line, PrivateMessage):
            other = line.to if line.name == self.client.name else line.name
            buffer = self.buffers.get(private_buffer(other))
            where = f"the conversation with {other}"
        else:
            buffer = self.buffers.get(room_buffer(line.room))
            where = line.room
        if buffer is None:
            return f"{where} has no buffer here now (/join it, or /query the person, and /jump again)"
        self.switch_to(buffer)
        self._jump = (buffer.key, line.id)
        self._settle_jump()
        return None

    def _settle_jump(self) -> None:
        """Scroll to the line /jump asked for once its buffer holds it; until then ask for the
        older lines between it and the oldest held, in one page if they fit."""
        if self._jump is None:
            return
        key, message_id = self._jump
        buffer = self.active()
        if buffer.key != key:
            self._jump = None  # the user went elsewhere meanwhile
            return
        if buffer.scroll_to(message_id, max(1, self.app.output.get_size().rows - 3)):
            self._jump = None
            self.app.invalidate()
            return
        if buffer.fetching or buffer.context:
            return  # a page of older lines is on its way: look again once it is in
        oldest = buffer.oldest_order
        if buffer.private or buffer.complete or (oldest is not None and message_id > oldest):
            self._jump = None  # not in what the buffer holds, and nothing older to ask for
            buffer.add(render.notice("that line is not in this buffer any more (the server's history may hold it)"))
            self.app.invalidate()
            return
        if not self.client.connected:
            return
        buffer.fetching = True
        wanted = min(MAX_HISTORY_PAGE, (oldest or message_id) - message_id + PAGE)

        async def fetch() -> None:
            try:
                await self.client.page_back(buffer.title, wanted)
            except ConnectionClosed:
                buffer.fetching = False

        self.app.create_background_task(fetch())

    def fetch_older(self, buffer: Buffer) -> None:
        """Ask for the messages above the top of a room's buffer, once at a time."""
        if buffer.private and not buffer.complete:  # the server pages back rooms only
            buffer.complete = True
            older = "older private lines than these: /search -all WORDS finds them on the server"
            buffer.add(render.notice(older, look=self.state.look), 0)
            self.app.invalidate()
            return
        if buffer.private or buffer.fetching or buffer.complete or not self.client.connected:
            return
        buffer.fetching = True
        self.app.invalidate()

        async def fetch() -> None:
            try:
                await self.client.page_back(buffer.title, PAGE)
            except ConnectionClosed:
                buffer.fetching = False  # tried again on the next scroll once the connection is back

        self.app.create_background_task(fetch())

    async def tick(self) -> None:
        """Redraw for what changes with time alone, and nothing else: idle, the screen is still.
        While the connection is down the countdown to the next attempt, every second; else the
        lag, when a ping is answered (every KEEPALIVE seconds)."""
        client = self.client
        while True:
            if not client.connected and client.replaced is None:
                await asyncio.sleep(1.0)
            else:
                self.connection_changed.clear()
                client.lag_measured.clear()
                waits = {
                    asyncio.ensure_future(self.connection_changed.wait()),
                    asyncio.ensure_future(client.lag_measured.wait()),
                }
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()
            self.app.invalidate()

    def _note(self, event: ClientEvent) -> None:
        """What the status bar keeps of an event: the connection's state, renamed conversations."""
        if isinstance(event, ConnectionLost | Reconnected | SignedInElsewhere):
            self.connection_changed.set()
        match event:
            case Users(room=room, away=away):
                self.away[room_key(room)] = set(away)
            case Away(room=str() as room, name=name, msg=why):  # a member of a room went away or came back
                marked = self.away.setdefault(room_key(room), set())
                (marked.add if why else marked.discard)(name)
            case Away(name=name):  # the answer to a private line: away in every room they are in
                for key, view in self.client.rooms.items():
                    if name in view.users:
                        self.away.setdefault(key, set()).add(name)
            case Moderation(room=room, action="mute", name=name):
                self.muted.setdefault(room_key(room), set()).add(name)
            case Moderation(room=room, action="unmute", name=name):
                self.muted.setdefault(room_key(room), set()).discard(name)
        match event:
            case ConnectionLost():
                self.lost = event
                for buffer in self.buffers:
                    buffer.fetching = False  # its answer will not come: asked again on the next scroll
            case Reconnected():
                self.lost = None
            case SignedInElsewhere(detail=detail):
                self.lost = ConnectionLost(detail, retry_in=0)
            case Renamed(old=old, new=new):
                self.buffers.rename(private_buffer(old), private_buffer(new), new)
                if self.state.private_to == old:
                    self.state.private_to = new

    # --- layout -------------------------------------------------------------------

    def _layout(self) -> FloatContainer:
        members = ConditionalContainer(
            VSplit([Window(width=1, char="│", style="class:bar"), self.members_window]),
            filter=Condition(lambda: self.show_members and not self.bare and self._width() >= MEMBERS_MIN_SCREEN),
        )
        dressed = Condition(lambda: not self.bare)
        body = HSplit(
            [
                ConditionalContainer(
                    Window(FormattedTextControl(self._title), height=1, style="class:bar"), filter=dressed
                ),
                VSplit([self.messages, members]),
                ConditionalContainer(
                    Window(FormattedTextControl(self._status), height=1, style="class:bar"), filter=dressed
                ),
                Window(
                    BufferControl(
                        self.input,
                        input_processors=[
                            # A password shows as stars; the question before it does not.
                            ConditionalProcessor(PasswordProcessor(), Condition(lambda: self.secret is not None)),
                            BeforeInput(self._prompt),
                        ],
                    ),
                    height=Dimension(min=1, max=6),
                    wrap_lines=True,
                    dont_extend_height=True,
                ),
            ]
        )
        help_box = ConditionalContainer(
            Frame(Window(FormattedTextControl(self._help), wrap_lines=True), title="help (Esc closes)",
                  style="class:bar"),
            filter=Condition(lambda: self.help is not None),
        )
        return FloatContainer(
            body,
            floats=[
                Float(xcursor=True, ycursor=True, content=CompletionsMenu(max_height=8)),
                Float(help_box, top=1, left=1, right=1),
            ],
        )

    def _help(self) -> StyleAndTextTuples:
        return [("class:bar", "\n".join(self.help or []))]

    def show_help(self, lines: list[str]) -> None:
        self.help = lines
        self.app.invalidate()

    def _width(self) -> int:
        return self.app.output.get_size().columns

    def _prompt(self) -> StyleAndTextTuples:
        if self.secret is not None:
            return [("class:notice", self.secret[0])]
        if self.search is not None and self.search.typing:
            return [("class:room", f"[search in {render.neutralise(self.active().title)}] "), ("bold", "> ")]
        return list(prompt(self.client, self.state))

    def _title(self) -> StyleAndTextTuples:
        buffer = self.active()
        if buffer.private:
            return [("class:bar.title", f" private conversation with {render.neutralise(buffer.title)}")]
        view = self.client.rooms.get(room_key(buffer.title))
        topic = render.neutralise(view.topic) if view and view.topic else "no topic"
        return [("class:bar.title", f" {render.neutralise(buffer.title)}: "), ("class:bar", topic)]

    def _status(self) -> StyleAndTextTuples:
        """` 1:lobby 2:dev(3) 3:@bob(1!) │ alice: connected, lag 12 ms`, folded on a narrow screen or
        with many buffers into ` [3:den] Act: 14(1!),2(3) │ connected` (hotlist.py)."""
        active = self.active()
        active.read()
        self.markers.read(active.key, active.last_order)
        notes: list[tuple[render.Fragments, render.Fragments]] = []
        search = self.search
        if search is not None and search.key == active.key:
            found = len(search.found)
            query = render.neutralise(search.text)
            notes.append(([("class:bar.mention", f"search {query!r}: {found} line{'s' if found != 1 else ''}"
                            " (Esc leaves)")], [("class:bar.mention", f"{query!r}: {found}, Esc")]))
        elif active.fetching:
            notes.append(([("class:bar", "fetching older messages…")], [("class:bar", "fetching…")]))
        elif active.scrolled:
            notes.append(([("class:bar.mention", "more below: PageDown")], [("class:bar.mention", "↓ PgDn")]))
        numbered = list(enumerate(self.buffers, 1))
        forms = [self._connection(), self._connection(reason=False), self._connection(short=True)]
        return list(hotlist.status_bar(numbered, active, forms, notes, self._width()))

    def next_active(self) -> None:
        """Alt-A: the next buffer with something new (what calls for the user first); with none
        left, back to the buffer the first Alt-A left."""
        busy = hotlist.activity(enumerate(self.buffers, 1), self.active())
        if busy:
            if self.before_jump is None:
                self.before_jump = self.active_key()
            self.switch_to(busy[0][1])
        elif self.before_jump is not None:
            back, self.before_jump = self.buffers.get(self.before_jump), None
            self.switch_to(back)

    def go_to(self, target: str) -> str | None:
        """/buffer N or NAME: show that buffer; a sentence saying why not if there is none."""
        found = self.buffers.find(target)
        if found is None:
            return f"no buffer {target}; /buffer alone lists them"
        self.switch_to(found)
        return None

    def list_buffers(self) -> list[str]:
        return [f"{number}: {'@' if buffer.private else ''}{buffer.title}"
                + (f" ({buffer.unread} unread{', calling for you' if hotlist.calls(buffer) else ''})"
                   if buffer.unread else "")
                for number, buffer in enumerate(self.buffers, 1)]

    def _connection(self, short: bool = False, reason: bool = True) -> render.Fragments:
        """alice: connected, lag 12 ms · reconnecting in 3 s: nothing is listening there · disconnected: why."""
        waiting = f", {len(self.state.pending)} waiting to send" if self.state.pending else ""
        me = render.neutralise(self.client.name)
        if short:
            if self.client.connected:
                return [("class:bar.good", "connected")]
            if self.client.replaced is not None:
                return [("class:bar.bad", "signed in elsewhere: /reconnect")]
            waiting = f", {len(self.state.pending)} waiting" if self.state.pending else ""
            return [("class:bar.bad", ("disconnected" if self.lost and not self.lost.retry_in
                                        else "reconnecting") + waiting)]
        if self.client.connected:
            lag = self.client.lag_now()
            shown = "" if lag is None else f", lag {lag * 1000:.0f} ms" if lag < 1 else f", lag {lag:.0f} s"
            return [("class:bar.good", f"{me}: connected{shown}")]
        why = f": {render.neutralise(self.lost.detail)}" if self.lost and reason else ""
        if self.client.replaced is not None:
            return [("class:bar.bad", f"{me}: signed in elsewhere{waiting} (/reconnect takes it back)")]
        if self.lost is not None and not self.lost.retry_in:
            return [("class:bar.bad", f"{me}: disconnected{waiting}{why}")]
        retry_at = self.client.retry_at
        left = retry_at - asyncio.get_running_loop().time() if retry_at is not None else 0
        again = f"reconnecting in {left:.0f} s" if left >= 1 else "reconnecting"
        return [("class:bar.bad", f"{me}: {again}{waiting}{why}")]

    def _members(self) -> StyleAndTextTuples:
        """`3 here`, then the members by role (~ & @ + then the rest), away ones greyed, muted ones
        struck through; scrolled by F11/F12 (or the wheel over it) when they do not fit."""
        buffer = self.active()
        key = room_key(buffer.title)
        if buffer.private:
            names = [self.client.name, buffer.title]
            roles: dict[str, str] = {}
        else:
            view = self.client.rooms.get(key)
            names, roles = (view.users, view.roles) if view else ([], {})
        ranked = sorted(names, key=lambda name: (ROLE_ORDER.get(roles.get(name, ""), len(ROLE_ORDER)), name.casefold()))
        info = self.members_window.render_info
        height = info.window_height if info else 20
        room_for = max(1, height - 1)
        self.members_top = max(0, min(self.members_top, len(ranked) - room_for + 1))
        shown_names = ranked[self.members_top :]
        above = self.members_top
        heading = f"{len(names)} here" + (f", ↑{above}" if above else "")
        lines: StyleAndTextTuples = [("class:notice", heading + "\n")]
        for at, name in enumerate(shown_names):
            if at == room_for - 1 and len(shown_names) > room_for:
                lines += [("class:notice", f"↓ {len(shown_names) - at} more (F12)")]
                break
            mark = ROLE_MARKS.get(roles.get(name, ""), " ")
            style = "class:notice" if name in self.away.get(key, ()) else render.name_colour(name)
            if name in self.muted.get(key, ()):
                style += " strike"
            shown = render.neutralise(name)[: MEMBERS_WIDTH - 1]
            lines += [("class:bar", mark), (style, shown), ("", "\n")]
        return lines

    def scroll_members(self, rows: int) -> None:
        self.members_top = max(0, self.members_top + rows)
        self.app.invalidate()

    # --- keys ---------------------------------------------------------------------

    def _keys(self) -> KeyBindings:
        keys = KeyBindings()
        typing = Condition(lambda: not self.input.complete_state)

        searching = Condition(lambda: self.search is not None)

        @keys.add("c-r", filter=Condition(lambda: self.secret is None))  # never while a password is typed
        def _search(event: KeyPressEvent) -> None:
            if self.search is None or not self.search.typing:
                self.start_search()

        @keys.add("escape", filter=searching | Condition(lambda: self.help is not None))
        def _end_search(event: KeyPressEvent) -> None:
            if self.help is not None:
                self.help = None
                return
            self.end_search()

        @keys.add("enter", filter=typing)
        def _send(event: KeyPressEvent) -> None:
            text = self.input.text
            if self.search is not None and self.search.typing:  # the query is typed: read the lines
                self.search.typing = False
                self.input.text, self.input.cursor_position = self._draft, len(self._draft)
                self.app.invalidate()
                return
            if self.secret is not None:
                self.input.reset()
                if not self.secret[1].done():
                    self.secret[1].set_result(text)
                return
            self.quitting = False
            self.input.reset(append_to_history=bool(text.strip()))
            self.typed.put_nowait((text, self.state.where()))  # where it goes is decided now

        @keys.add("c-c")
        def _interrupt(event: KeyPressEvent) -> None:
            if self.secret is not None:
                self.input.reset()
                if not self.secret[1].done():
                    self.secret[1].set_exception(PasswordRefused())
                return
            if self.input.text:  # Ctrl-C throws away what is typed
                self.input.reset()
                self.quitting = False
                return
            if self.quitting:
                event.app.exit()
                return
            self.quitting = True
            self.show(render.notice("Ctrl-C again (or Ctrl-D, /quit) leaves"))

        @keys.add("c-d", filter=Condition(lambda: not self.input.text))
        def _leave(event: KeyPressEvent) -> None:
            if self.secret is not None:
                if not self.secret[1].done():
                    self.secret[1].set_exception(PasswordRefused())
                return
            event.app.exit()

        @keys.add("pageup")
        def _page_up(event: KeyPressEvent) -> None:
            self.scroll(self._page())

        @keys.add("pagedown")
        def _page_down(event: KeyPressEvent) -> None:
            self.scroll(-self._page())

        @keys.add("escape", "end")
        def _newest(event: KeyPressEvent) -> None:
            self.active().scrolled = 0

        for number in range(1, 10):
            keys.add("escape", str(number))(self._switcher(number=number))
        keys.add("escape", "0")(self._switcher(number=10))

        @keys.add("escape", "a")
        def _next_active(event: KeyPressEvent) -> None:
            self.next_active()

        @keys.add("escape", "j", Keys.Any, Keys.Any)
        def _jump(event: KeyPressEvent) -> None:
            """Alt-J then two digits: buffer 01 to 99, as in WeeChat."""
            digits = "".join(press.data for press in event.key_sequence[2:])
            if digits.isdigit():
                self.switch_to(self.buffers.nth(int(digits)))
        for key, step in (("c-n", 1), ("c-p", -1)):
            keys.add(key, filter=typing)(self._switcher(step=step))
        for key, step in (("right", 1), ("left", -1)):
            keys.add("escape", key)(self._switcher(step=step))

        @keys.add("escape", "l")
        def _bare(event: KeyPressEvent) -> None:
            self.bare = not self.bare

        @keys.add("f11")
        def _members_up(event: KeyPressEvent) -> None:
            self.scroll_members(-self._page())

        @keys.add("f12")
        def _members_down(event: KeyPressEvent) -> None:
            self.scroll_members(self._page())

        @keys.add("f2")
        def _toggle_members(event: KeyPressEvent) -> None:
            self.show_members = not self.show_members

        return keys

    def _switcher(self, number: int = 0, step: int = 0) -> Callable[[KeyPressEvent], None]:
        """A key's action: show buffer `number`, or the one `step` places along."""

        def switch(event: KeyPressEvent) -> None:
            self.switch_to(self.buffers.nth(number) if number else self.buffers.beside(self.active_key(), step))

        return switch

    def _page(self) -> int:
        info = self.messages.render_info
        return max(1, (info.window_height if info else 20) - 2)


def _other(event: ClientEvent, me: str) -> str | None:
    """The other person of a private line."""
    if isinstance(event, PrivateMessage):
        return event.to if event.name == me else event.name
    return None


def _numbered(event: ClientEvent) -> int | None:
    """The id a line is ordered by in its buffer, if it has one."""
    message_id = getattr(event, "id", None)
    return message_id if isinstance(message_id, int) else None


def _leaves(event: ClientEvent, me: str) -> bool:
    """Whether an event takes the user out of a room (they parted, or were kicked or banned just now)."""
    match event:
        case Left(name=name, reason="part"):
            return name == me
        case PutOut():
            return True
    return False


async def run_screen(
    client: ChatClient,
    history: History | None = None,
    bell: bool = True,
    ignored: Ignored | None = None,
    mouse: bool = True,
    settings: Settings | None = None,
    settings_path: Path | None = None,
) -> None:
    """Chat full-screen until the user quits or the connection ends for good; then leave cleanly.
    `settings` are the user's (client.toml, which /set rewrites: `settings_path`)."""
    state = ChatState(client)
    state.settings, state.settings_path = dataclasses.replace(settings or Settings()), settings_path
    state.bell = state.bell and bell
    state.ignored = ignored or Ignored()
    screen = ChatScreen(client, state, history, mouse=mouse)
    screen.apply_settings()

    async def show_incoming() -> None:
        async for batch in client.event_batches():
            await take_in(batch, client, state, screen)

    async def carry_out_typed() -> None:
        while True:
            line, where = await screen.typed.get()
            draft = await carry_out(line, client, state, screen, where)
            if draft is None:
                return
            if draft:
                screen.input.text = draft
                screen.input.cursor_position = len(draft)
            screen.app.invalidate()

    tasks = [
        asyncio.create_task(screen.app.run_async(), name="chat-screen"),
        asyncio.create_task(show_incoming(), name="chat-show-incoming"),
        asyncio.create_task(carry_out_typed(), name="chat-carry-out-typed"),
        asyncio.create_task(screen.tick(), name="chat-screen-tick"),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if screen.app.is_running:
            screen.app.exit()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        state.close_logs()
        await client.close()
