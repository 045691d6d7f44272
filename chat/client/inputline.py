"""The input line's aids, in either mode: completion of commands and names, the history of what
was typed (kept between runs), and the colours.

No drawing and no network: the completer reads the names the connection already knows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.styles import Style

from chat.client import render
from chat.client.commands import COMMANDS
from chat.client.connection import ChatClient

STYLE = Style.from_dict(render.STYLE)


class ChatCompleter(Completer):
    """Commands at the start of a line, user names anywhere: by default everybody the client knows;
    given `names`, in the order it says (the room's recent speakers first)."""

    def __init__(
        self,
        client: ChatClient,
        names: Callable[[], list[str]] | None = None,
        typing_a_line: Callable[[], bool] = lambda: True,
    ) -> None:
        """`typing_a_line` says whether the input is a line to send (else a search's query: no
        commands, and a name at its start is what to look for, not whom the line is for)."""
        self.client = client
        self.names = names
        self.typing_a_line = typing_a_line

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        word = document.get_word_before_cursor(WORD=True)
        before = document.text_before_cursor
        a_line = self.typing_a_line()
        if a_line and word.startswith("/") and before == word:
            for command in COMMANDS:
                if command.startswith(word.casefold()) and command != word:
                    yield Completion(command, start_position=-len(word))
            return
        # A name that starts the line is who the line is for: `alice: `, as IRC clients write it.
        ending = ": " if a_line and before == word else ""
        for name in self.names() if self.names is not None else self.client.users:
            if name.casefold().startswith(word.casefold()) and name + ending != word:
                yield Completion(name + ending, start_position=-len(word), display=name)


def remembered_history(history_file: Path | None) -> History:
    """What was typed, kept in `history_file` between runs (0600: it holds private messages), or
    only for this run. Passwords are asked for apart and kept nowhere."""
    if history_file is None:
        return InMemoryHistory()
    history_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(history_file, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600))
    return FileHistory(str(history_file))
