"""The terminal chat: a prompt_toolkit prompt with the room's lines printed above it.

Two tasks race on one event loop: one prints every incoming event above the
prompt, the other reads what the user types and sends it. Whichever ends
first (Ctrl-D, /quit, the server gone for good) ends the other. All the
looks are in render.py and all the meaning of typed lines in commands.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style

from chat.client import render
from chat.client.commands import COMMANDS, HELP, Mistake, PageBack, Quit, Send, ShowHelp, parse
from chat.client.connection import ChatClient
from chat.errors import ConnectionClosed

STYLE = Style.from_dict(render.STYLE)


class ChatCompleter(Completer):
    """Commands at the start of a line, user names anywhere."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        word = document.get_word_before_cursor(WORD=True)
        before = document.text_before_cursor
        if word.startswith("/") and before == word:
            candidates: Iterable[str] = COMMANDS
        else:
            candidates = self.client.users
        for candidate in candidates:
            if candidate.casefold().startswith(word.casefold()) and candidate != word:
                yield Completion(candidate, start_position=-len(word))


def show(fragments: render.Fragments | None) -> None:
    """Print above the prompt (prompt_toolkit redraws the prompt under it)."""
    if fragments:
        print_formatted_text(FormattedText(fragments), style=STYLE)


def make_session(client: ChatClient) -> PromptSession[str]:
    return PromptSession(completer=ChatCompleter(client), complete_while_typing=False, erase_when_done=True)


async def run_ui(client: ChatClient, session: PromptSession[str] | None = None) -> None:
    """Chat until the user quits or the connection ends for good; then leave cleanly."""
    session = session or make_session(client)
    with patch_stdout(raw=True):
        incoming = asyncio.create_task(_show_incoming(client), name="chat-show-incoming")
        typed = asyncio.create_task(_send_typed(client, session), name="chat-send-typed")
        try:
            await asyncio.wait({incoming, typed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (incoming, typed):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await client.close()


async def _show_incoming(client: ChatClient) -> None:
    async for event in client.events():
        show(render.render(event, client.name))


async def _send_typed(client: ChatClient, session: PromptSession[str]) -> None:
    while True:
        try:
            line = await session.prompt_async(lambda: [("bold", f"{client.name}> ")], style=STYLE)
        except (EOFError, KeyboardInterrupt):
            return  # Ctrl-D or Ctrl-C: leave quietly
        match parse(line):
            case None:
                continue
            case Quit():
                return
            case ShowHelp():
                for help_line in HELP.splitlines():
                    show(render.notice(help_line))
            case Mistake(detail=detail):
                show(render.error(detail))
            case Send(message=message):
                await _send(client.send(message))
            case PageBack(limit=limit):
                await _send(client.page_back(limit))


async def _send(sending: Awaitable[None]) -> None:
    try:
        await sending
    except ConnectionClosed:
        show(render.error("not connected right now; that was not sent"))
