"""The plain line mode: a prompt_toolkit prompt with the rooms' lines printed above it.

For screen readers, pipes and scripts (`--plain`), and the basis of the full screen's behaviour:
two tasks race on one event loop, one printing every incoming event above the prompt, the other
reading what the user types. Whichever ends first (Ctrl-D, /quit, the server gone for good) ends
the other. What either does with a line is in actions.py; the looks are in render.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import Collection
from datetime import date
from pathlib import Path

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application import get_app_session
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.patch_stdout import patch_stdout

from chat.client import render
from chat.client.actions import ChatState, PasswordRefused, carry_out, prompt, take_in
from chat.client.buffers import Line
from chat.client.connection import ChatClient, ClientEvent
from chat.client.ignored import Ignored
from chat.client.inputline import STYLE, ChatCompleter, remembered_history
from chat.client.search import matching
from chat.client.settings import Settings
from chat.wire.protocol import Action, ChatMessage, PrivateMessage

#: Lines the plain mode keeps for /search, and how many matches it prints at most.
SEARCHED_LINES = 5_000
SEARCH_SHOWN = 50


def show(fragments: render.Fragments | None) -> None:
    """Print above the prompt (prompt_toolkit redraws the prompt under it)."""
    if fragments:
        print_formatted_text(FormattedText(fragments), style=STYLE)


def make_session(client: ChatClient, history_file: Path | None = None) -> PromptSession[str]:
    """The input line; with `history_file`, what was typed is remembered there between runs."""
    return PromptSession(
        completer=ChatCompleter(client),
        complete_while_typing=False,
        erase_when_done=True,
        history=remembered_history(history_file),
    )


async def run_ui(
    client: ChatClient,
    session: PromptSession[str] | None = None,
    bell: bool = True,
    ignored: Ignored | None = None,
    settings: Settings | None = None,
    settings_path: Path | None = None,
) -> None:
    """Chat until the user quits or the connection ends for good; then leave cleanly.

    A mention of the user's name or a private message to them rings the bell
    (unless `bell` is off) and counts in the terminal's title until they next type.
    """
    session = session or make_session(client)
    state = ChatState(client)
    state.settings, state.settings_path = dataclasses.replace(settings or Settings()), settings_path
    state.bell = state.bell and bell
    state.ignored = ignored or Ignored()
    view = PlainView(client, state)
    if isinstance(session.completer, ChatCompleter):
        session.completer.names = state.names_for_completion
    with patch_stdout(raw=True):
        incoming = asyncio.create_task(_show_incoming(client, state, view), name="chat-show-incoming")
        typed = asyncio.create_task(_send_typed(client, session, state, view), name="chat-send-typed")
        try:
            await asyncio.wait({incoming, typed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (incoming, typed):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            state.close_logs()
            await client.close()


class PlainView:
    """Lines printed above the prompt, one per event, other rooms' lines with their room's name."""

    def __init__(self, client: ChatClient, state: ChatState) -> None:
        self.client = client
        self.state = state
        #: The date of the last dated line drawn: a line of another day is preceded by a day-change line.
        self.last_day: date | None = None
        #: The lines printed lately, for /search.
        self.printed: deque[Line] = deque(maxlen=SEARCHED_LINES)

    def show(self, fragments: render.Fragments) -> None:
        show(fragments)

    def draw(self, events: list[ClientEvent], quiet: Collection[int] = ()) -> None:
        """Everything in one print: a burst is one redraw, not one per line."""
        lines: list[render.Fragments] = []
        for at, event in enumerate(events):
            if at in quiet:
                continue
            if fragments := render.render(event, self.client.name, room=self.state.room, look=self.state.look):
                day = render.day_of(event)
                if day is not None and day != self.last_day:
                    if self.last_day is not None:  # the first line of a run has its own date if not today's
                        lines.append(render.day_change(day))
                    self.last_day = day
                lines.append(fragments)
                self.printed.append(Line(len(self.printed), fragments))
        joined: render.Fragments = []
        for line in lines:
            joined += [("", "\n"), *line] if joined else line
        show(joined)

    def clear(self) -> None:
        output = get_app_session().output
        output.erase_screen()
        output.cursor_goto(0, 0)
        output.flush()

    def close_private(self, name: str) -> None:
        self.client.forget_conversation(name)  # the lines printed above the prompt stay where they are

    def go_to(self, target: str) -> str | None:
        """A room by number or name, or `@NAME` for a private conversation (/query NAME)."""
        if target.startswith("@"):
            self.state.private_to = target[1:]
            show(render.notice(f"typing to {target[1:]} privately"))
            return None
        rooms = [view.name for view in self.client.rooms.values()]
        if target.isdigit() and 1 <= int(target) <= len(rooms):
            target = rooms[int(target) - 1]
        if why := self.state.switch(target.removeprefix("#")):
            return why
        show(render.notice(f"typing into {self.state.room}"))
        return None

    def show_search(self, text: str) -> str | None:
        """The lines printed lately that contain `text`, printed again below a heading."""
        found = matching(list(self.printed), text)
        shown = found[-SEARCH_SHOWN:]
        more = f" (the last {len(shown)} of {len(found)})" if len(found) > len(shown) else ""
        heading = render.notice(f"search {text!r}: {len(found)} of the last {len(self.printed)} lines{more}")
        joined: render.Fragments = heading
        for line in shown:
            joined += [("", "\n"), *line.fragments]
        show(joined)
        return None

    def jump_to(self, line: ChatMessage | Action | PrivateMessage) -> str | None:
        return "the plain mode prints lines as they come and cannot scroll back: /history N shows earlier ones"

    def show_help(self, lines: list[str]) -> None:
        for line in lines:
            show(render.notice(line))

    def apply_settings(self) -> None:
        pass  # every line printed from now on follows them

    def list_buffers(self) -> list[str]:
        rooms = [f"{number}: {view.name}" for number, view in enumerate(self.client.rooms.values(), 1)]
        return rooms + ([f"@{self.state.private_to}"] if self.state.private_to else [])

    async def ask_secret(self, question: str) -> str:
        session: PromptSession[str] = PromptSession()  # its own history: a password never comes back on up-arrow
        try:
            return await session.prompt_async(question, is_password=True)
        except (EOFError, KeyboardInterrupt) as exc:
            raise PasswordRefused from exc


async def _show_incoming(client: ChatClient, state: ChatState, view: PlainView) -> None:
    async for batch in client.event_batches():
        await take_in(batch, client, state, view)


async def _send_typed(client: ChatClient, session: PromptSession[str], state: ChatState, view: PlainView) -> None:
    draft = ""  # a line handed back to the user to edit (a message too long to send)
    quitting = False  # Ctrl-C on an empty line once: a second one leaves
    while True:
        try:
            line = await session.prompt_async(lambda: prompt(client, state), style=STYLE, default=draft)
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
        quitting = False
        after = await carry_out(line, client, state, view)
        if after is None:
            return
        draft = after
