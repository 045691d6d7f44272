"""Search in a buffer's lines (/search TEXT, Ctrl-R): which lines match, with the match marked.

Pure: lines and a query in, matching lines out. Only the lines the client holds are searched
now; the server's search (for lines older than those loaded) is a later addition, and comes in
through `SearchSource`: its matches are older lines, put in their place by id as a history
page's are, so the screen that shows `Search.found` needs no change for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from chat.client.buffers import Buffer, Line
from chat.client.render import Fragments

#: The style of the matched text.
MATCH = "class:search.match"


class SearchSource(Protocol):
    """Where matches beyond the loaded lines come from (the server, later): asked for the matches
    of `text` in `room` older than id `before`; they arrive as events like a history page's."""

    async def search_older(self, room: str, text: str, before: int | None) -> None: ...


@dataclass
class Search:
    """A search of one buffer: its query, and how far up the results are scrolled."""

    key: str
    text: str = ""
    #: Rows the results are scrolled up from the newest match.
    scrolled: int = 0
    #: Whether the user is still typing the query (Ctrl-R) rather than reading the results.
    typing: bool = False
    #: The results as last drawn, to count them on the status bar.
    found: list[Line] = field(default_factory=list)

    def results(self, buffer: Buffer) -> Buffer:
        """A buffer of the matching lines, the match marked, scrolled as the search is."""
        self.found = matching(buffer.lines, self.text)
        results = Buffer(buffer.key, buffer.title, lines=self.found)
        results.scrolled = self.scrolled
        return results


def line_text(fragments: Fragments) -> str:
    return "".join(text for _, text in fragments)


def matching(lines: Sequence[Line], text: str) -> list[Line]:
    """The lines that contain `text` (whatever its case), each with the matches marked."""
    if not text:
        return list(lines)
    wanted = text.casefold()
    found = []
    for line in lines:
        if wanted in line_text(line.fragments).casefold():
            found.append(Line(line.order, marked(line.fragments, wanted)))
    return found


def marked(fragments: Fragments, wanted: str) -> Fragments:
    """`fragments` with every occurrence of `wanted` (casefolded) in the MATCH style."""
    flat = line_text(fragments)
    folded = flat.casefold()
    if len(folded) != len(flat):  # a character whose case folds to several: mark nothing rather than misplace
        return fragments
    hits = [False] * len(flat)
    start = folded.find(wanted)
    while start >= 0:
        for at in range(start, start + len(wanted)):
            hits[at] = True
        start = folded.find(wanted, start + 1)
    out: Fragments = []
    at = 0
    for style, text in fragments:
        for char in text:
            shown = MATCH if hits[at] and style != "class:indent" else style
            if out and out[-1][0] == shown:
                out[-1] = (shown, out[-1][1] + char)
            else:
                out.append((shown, char))
            at += 1
        if not text:
            out.append((style, ""))  # the INDENT mark, which is empty
    return out
