"""The full-screen client's buffers: one per room and per private conversation, each holding its
drawn lines in message order, what the user has not read yet, and how far back they have scrolled.

Pure: rendered lines in, rows of a given width out; no prompt_toolkit application, no I/O. The
screen (screen.py) decides which buffer is shown and draws the rows this module cuts.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date

from prompt_toolkit.utils import get_cwidth

from chat.client.connection import ClientEvent
from chat.client.render import INDENT, Fragments, day_change
from chat.wire.protocol import Action, ChatMessage, PrivateMessage, room_key

#: Lines kept per buffer; older ones are forgotten on screen (the server still has them).
MAX_LINES = 20_000
#: A hanging indent is dropped on a screen too narrow to leave this many columns for the text.
MIN_TEXT_COLUMNS = 20


def room_buffer(room: str) -> str:
    """The key of `room`'s buffer."""
    return "#" + room_key(room)


def private_buffer(name: str) -> str:
    """The key of the private conversation with `name`."""
    return "@" + name.casefold()


def buffer_of(event: ClientEvent, me: str) -> str | None:
    """The key of the buffer an event belongs in; None for one that belongs to no buffer
    (an error, the connection's state, a list of rooms): it is shown where the user is."""
    if isinstance(event, PrivateMessage):
        return private_buffer(event.to if event.name == me else event.name)
    room = getattr(event, "room", None)
    return room_buffer(room) if isinstance(room, str) else None


def is_talk(event: ClientEvent) -> bool:
    """Whether an event is somebody saying something (what unread counts count)."""
    return isinstance(event, ChatMessage | Action | PrivateMessage)


@dataclass
class Line:
    """One drawn line and where it belongs: `order` is its message id, or for an unnumbered line
    the id of the numbered line before it, so older messages fetched later go in above it."""

    order: int
    fragments: Fragments
    _rows: tuple[int, list[Fragments]] | None = None

    def forget_rows(self) -> None:
        """The fragments changed: cut them into rows again."""
        self._rows = None

    def rows(self, width: int, bare: bool = False) -> list[Fragments]:
        """The line cut into rows of `width` columns (kept until the width changes); `bare`: none indented."""
        shape = -width if bare else width
        if self._rows is None or self._rows[0] != shape:
            self._rows = (shape, wrap(self.fragments, width, indent_rows=not bare))
        return self._rows[1]


@dataclass
class Buffer:
    """A room's or a private conversation's lines, what of them is unread, and the view on them."""

    key: str
    #: The room or the other person, as spelled on screen.
    title: str
    lines: list[Line] = field(default_factory=list)
    #: Talk lines that arrived while this buffer was not shown; whether one of them called for the user.
    unread: int = 0
    mentioned: bool = False
    #: Numbered lines still to come of a fresh join's history: context, so not counted as unread.
    context: int = 0
    #: How many rows the view is scrolled up from the newest (0: following what arrives).
    scrolled: int = 0
    #: Whether the top of the buffer is in view (as last drawn); whether older lines were asked
    #: for and not come yet; whether the server has none older.
    at_top: bool = True
    fetching: bool = False
    complete: bool = False
    #: The date of the last line appended, for the day-change line.
    last_day: date | None = None
    _orders: list[int] = field(default_factory=list)
    #: The width last drawn at: how many rows a line appended while scrolled up moves the view.
    _width: int = 0
    #: The last line read before the first unread one (WeeChat's read marker): a rule is drawn
    #: under it while lines follow it.
    marker: Line | None = None

    @property
    def private(self) -> bool:
        return self.key.startswith("@")

    def add(self, fragments: Fragments, message_id: int | None = None, day: date | None = None) -> None:
        """Add a line: after everything for a new line, in id order for an older message fetched late.
        A line of another day than the last one appended is preceded by a day-change line."""
        last = self._orders[-1] if self._orders else 0
        if message_id is not None and message_id < last:
            at = bisect.bisect_right(self._orders, message_id)
            self._orders.insert(at, message_id)
            self.lines.insert(at, Line(message_id, fragments))
            return
        if day is not None and day != self.last_day:
            if self.last_day is not None:
                self._append(Line(last, day_change(day)))
            self.last_day = day
        self._append(Line(message_id if message_id is not None else last, fragments))

    def _append(self, line: Line) -> None:
        self.lines.append(line)
        self._orders.append(line.order)
        if self.scrolled:  # the user is reading further up: what they read stays where it is
            self.scrolled += len(line.rows(self._width)) if self._width else 1
        if len(self.lines) > MAX_LINES:
            del self.lines[: len(self.lines) - MAX_LINES]
            del self._orders[: len(self._orders) - MAX_LINES]

    @property
    def last_order(self) -> int:
        """The order of the newest line (0 for an empty buffer)."""
        return self._orders[-1] if self._orders else 0

    def restart_ids(self) -> None:
        """The server numbers this room from the start again: every line here is older than anything new."""
        for line in self.lines:
            line.order = -1
        self._orders = [-1] * len(self.lines)
        self.complete = False

    def clear(self) -> None:
        self.lines.clear()
        self._orders.clear()
        self.scrolled = 0

    def view(self, width: int, height: int, bare: bool = False) -> tuple[list[Fragments], bool]:
        """The rows on screen, top to bottom, filling `height` (blank rows at the top if the buffer
        is short), and whether the top of the buffer is in view; `bare`: rows not indented."""
        self._width = width
        wanted = self.scrolled + height
        rows: list[Fragments] = []
        at_top = True
        newest = len(self.lines) - 1
        for at in range(newest, -1, -1):
            line = self.lines[at]
            marked = line is self.marker and at < newest and not bare
            rows[:0] = line.rows(width, bare) + ([marker_row(width)] if marked else [])
            if len(rows) >= wanted:
                at_top = at == 0
                break
        if at_top:  # nothing further up: scrolling stops at the first line (capped, never raised:
            # a first line that wraps leaves more rows than the screen without the user scrolling)
            self.scrolled = min(self.scrolled, max(0, len(rows) - height))
        end = len(rows) - self.scrolled
        shown = rows[max(0, end - height) : end]
        return [[] for _ in range(height - len(shown))] + shown, at_top

    def holds(self, message_id: int) -> bool:
        """Whether the line numbered `message_id` is in the buffer."""
        at = bisect.bisect_left(self._orders, message_id)
        return at < len(self._orders) and self._orders[at] == message_id

    @property
    def oldest_order(self) -> int | None:
        """The id of the oldest numbered line held (None: none)."""
        return next((order for order in self._orders if order > 0), None)

    def scroll_to(self, message_id: int, height: int) -> bool:
        """Scroll so that the line numbered `message_id` is in the middle of a view `height` rows
        high (as far as the newest lines allow); False if the buffer does not hold it."""
        if not self.holds(message_id):
            return False
        at = bisect.bisect_left(self._orders, message_id)
        width = self._width or 80
        below = sum(len(line.rows(width)) for line in self.lines[at + 1 :])
        self.scrolled = max(0, below - (height - len(self.lines[at].rows(width))) // 2)
        return True

    def scroll(self, rows: int) -> None:
        """Scroll up (`rows` > 0) or down; never below the newest line."""
        self.scrolled = max(0, self.scrolled + rows)

    def unread_from(self, line: Line | None) -> None:
        """A line after `line` is the first one unread: the read marker goes under `line`."""
        self.marker = line

    def read(self) -> None:
        """The user is looking at this buffer: nothing in it is unread."""
        self.unread, self.mentioned = 0, False


def marker_row(width: int) -> Fragments:
    """The rule under the last line read."""
    return [("class:marker", "─" * width)]


class Buffers:
    """Every buffer, in the order they were opened (Alt-1 is the first)."""

    def __init__(self) -> None:
        self._buffers: dict[str, Buffer] = {}

    def __iter__(self) -> Iterator[Buffer]:
        return iter(self._buffers.values())

    def __len__(self) -> int:
        return len(self._buffers)

    def get(self, key: str) -> Buffer | None:
        return self._buffers.get(key)

    def open(self, key: str, title: str) -> Buffer:
        """The buffer under `key`, opened (last) if there is none yet; its title follows `title`."""
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = Buffer(key, title)
        buffer.title = title
        return buffer

    def close(self, key: str) -> None:
        self._buffers.pop(key, None)

    def rename(self, old_key: str, new_key: str, title: str) -> None:
        """A private conversation follows its other person's new name (keeping its place)."""
        if old_key not in self._buffers or new_key in self._buffers:
            return
        self._buffers = {
            (new_key if key == old_key else key): buffer for key, buffer in self._buffers.items()
        }
        self._buffers[new_key].key, self._buffers[new_key].title = new_key, title

    def number(self, key: str) -> int:
        """The buffer's number on the status bar (1 for the first), 0 if there is none."""
        return next((n for n, k in enumerate(self._buffers, 1) if k == key), 0)

    def nth(self, number: int) -> Buffer | None:
        """The buffer numbered `number` (1 for the first)."""
        keys = list(self._buffers)
        return self._buffers[keys[number - 1]] if 1 <= number <= len(keys) else None

    def find(self, target: str) -> Buffer | None:
        """The buffer `target` names: its number, its room (`den`, `#den`) or its other person (`@bob`,
        or `bob` when no room is called that)."""
        if target.isdigit():
            return self.nth(int(target))
        if target.startswith("@"):
            return self.get(private_buffer(target[1:]))
        return self.get(room_buffer(target.removeprefix("#"))) or self.get(private_buffer(target))

    def beside(self, key: str, step: int) -> Buffer | None:
        """The buffer `step` places after `key`'s (before it if negative), round the end."""
        keys = list(self._buffers)
        if not keys:
            return None
        at = keys.index(key) if key in keys else 0
        return self._buffers[keys[(at + step) % len(keys)]]


#: A web address: it is never cut by the wrap indent, which would put spaces inside it.
_URL = re.compile(r"(?:https?|ftp)://\S+|www\.\S+", re.IGNORECASE)

_Cell = tuple[str, str, int, bool]  # (style, character, columns, part of a web address)
_PAD: _Cell = ("", " ", 1, False)


def wrap(fragments: Fragments, width: int, indent_rows: bool = True) -> list[Fragments]:
    """A line's fragments cut into rows of at most `width` columns, at spaces where it can be.

    Rows after the first start under the message text (the width of everything before the
    INDENT mark), so a long message reads as a block beside its time and name; a newline in
    the fragments starts a new row. A web address too long for its row goes on at the first
    column, so that it has no spaces in it; without `indent_rows` (bare mode) no row is indented.
    """
    width = max(1, width)
    cells: list[_Cell] = []
    indent = 0
    for style, text in fragments:
        if style == INDENT:
            indent = sum(cell[2] for cell in cells)
            continue
        cells.extend((style, char, get_cwidth(char), False) for char in text)
    flat = "".join(cell[1] for cell in cells)
    for found in _URL.finditer(flat):
        for at in range(found.start(), found.end()):
            cells[at] = (*cells[at][:3], True)
    if width - indent < MIN_TEXT_COLUMNS or not indent_rows:
        indent = 0
    rows: list[list[_Cell]] = []
    row: list[_Cell] = []
    used = 0
    start = 0  # where this row's own text begins (after the indent of a continued row)
    for cell in cells:
        if cell[1] == "\n":
            rows.append(row)
            row, used, start = [], 0, 0
            continue
        if used + cell[2] > width and row and cell[1] == " ":  # the row ends at a word's end
            rows.append(row)
            row, used, start = [_PAD] * indent, indent, indent
            continue
        if used + cell[2] > width and row:
            # At the last space, if what follows it, and this character, fit on the next row
            # beside the indent (a wide character takes two columns, not one).
            cut = len(row)
            spaces = [at for at in range(start, len(row)) if row[at][1] == " "]
            if spaces and indent + sum(c[2] for c in row[spaces[-1] + 1 :]) + cell[2] <= width:
                cut = spaces[-1] + 1
            rows.append(row[:cut])
            carried = row[cut:]
            inside_url = cut == len(row) and cell[3] and row[-1][3]
            row = carried if inside_url else [_PAD] * indent + carried
            start = 0 if inside_url else indent
            used = sum(c[2] for c in row)
        row.append(cell)
        used += cell[2]
    rows.append(row)
    return [_fragments(cells_of_row) for cells_of_row in rows]


def _fragments(cells: list[_Cell]) -> Fragments:
    """Cells merged back into fragments, one per run of the same style."""
    merged: Fragments = []
    for style, char, _, _ in cells:
        if merged and merged[-1][0] == style:
            merged[-1] = (style, merged[-1][1] + char)
        else:
            merged.append((style, char))
    return merged
