"""The full screen's status bar: which buffer is shown, which others have something new (the
hotlist, as WeeChat calls it), and the connection's state, fitted to the screen's width.

Pure: buffers and widths in, styled fragments out; no prompt_toolkit application, no I/O. With
few buffers every one is listed (`1:lobby 2:dev(2!)`); when they do not fit, the list folds into
the shown buffer and the hotlist (`[3:den] Act: 14(1!),2(3)`), and what must stay visible at 80
columns (the shown buffer, the connection, the hotlist) is kept while the rest is cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prompt_toolkit.utils import get_cwidth

from chat.client.buffers import Buffer
from chat.client.render import Fragments, neutralise


def calls(buffer: Buffer) -> bool:
    """Whether a buffer's unread lines call for the user: a mention, or anything new in a private one."""
    return buffer.mentioned or (buffer.private and buffer.unread > 0)


def activity(numbered: Iterable[tuple[int, Buffer]], active: Buffer) -> list[tuple[int, Buffer]]:
    """The buffers other than `active` with unread lines, those calling for the user first, then in
    number order: the order Alt-A visits them in."""
    busy = [(number, buffer) for number, buffer in numbered if buffer is not active and buffer.unread]
    return sorted(busy, key=lambda pair: (not calls(pair[1]), pair[0]))


def label(number: int, buffer: Buffer) -> str:
    """`2:dev`, `3:@bob`."""
    return f"{number}:{'@' if buffer.private else ''}{neutralise(buffer.title)}"


def count(buffer: Buffer) -> str:
    """`(3)`, or `(3!)` when one of them calls for the user; "" when nothing is unread."""
    return f"({buffer.unread}{'!' if calls(buffer) else ''})" if buffer.unread else ""


def _style(buffer: Buffer) -> str:
    return "class:bar.mention" if calls(buffer) else "class:bar.unread"


def width_of(fragments: Fragments) -> int:
    return sum(get_cwidth(text) for _, text in fragments)


def full_list(numbered: Sequence[tuple[int, Buffer]], active: Buffer) -> Fragments:
    """Every buffer: ` 1:lobby 2:dev(2!) 3:@bob`."""
    parts: Fragments = []
    for number, buffer in numbered:
        parts.append(("class:bar", " "))
        if buffer is active:
            parts.append(("class:bar.active", label(number, buffer)))
        elif buffer.unread:
            parts.append((_style(buffer), label(number, buffer) + count(buffer)))
        else:
            parts.append(("class:bar", label(number, buffer)))
    return parts


def folded(numbered: Sequence[tuple[int, Buffer]], active: Buffer, room: int) -> tuple[Fragments, bool]:
    """The shown buffer and the hotlist in at most `room` columns: ` [3:den] Act: 14(1!),2(3)`;
    what does not fit is counted (`+4`); and whether all of it fitted."""
    number = next((n for n, buffer in numbered if buffer is active), 0)
    parts: Fragments = [("class:bar", " ["), ("class:bar.active", label(number, active)), ("class:bar", "]")]
    busy = activity(numbered, active)
    if not busy:
        return parts, True
    parts.append(("class:bar", " Act: "))
    used = width_of(parts)
    for at, (other, buffer) in enumerate(busy):
        entry = f"{',' if at else ''}{other}{count(buffer)}"
        rest = len(busy) - at
        if used + get_cwidth(entry) + (len(f",+{rest - 1}") if rest > 1 else 0) > room:
            parts.append(("class:bar", f"{',' if at else ''}+{rest}"))
            return parts, False
        parts.append((_style(buffer), entry))
        used += get_cwidth(entry)
    return parts, True


def status_bar(
    numbered: Sequence[tuple[int, Buffer]],
    active: Buffer,
    connection: Sequence[Fragments],
    notes: Sequence[tuple[Fragments, Fragments]],
    width: int,
) -> Fragments:
    """The status bar for a screen `width` columns wide. `connection` is the connection's state in
    forms from the longest to the shortest, for narrower screens; `notes`, more about the buffer
    shown (its long and short forms), such as `more below: PageDown`."""
    separator: Fragments = [("class:bar", " │ ")]

    def joined(buffers: Fragments, link: Fragments, extra: list[Fragments]) -> Fragments:
        parts = [*buffers, *separator, *link]
        for note in extra:
            parts += [*separator, *note]
        return parts

    long_notes = [note for note, _ in notes]
    short_notes = [short for _, short in notes]
    tails = [(link, extra) for link in connection for extra in (long_notes, short_notes)]
    for link, extra in tails[:-2]:  # every buffer, if the shortest forms are not needed for that
        attempt = joined(full_list(numbered, active), link, extra)
        if width_of(attempt) <= width:
            return attempt
    # The whole hotlist before the long forms of the rest; cut only when even the short forms leave no room.
    for link, extra in tails:
        tail = joined([], link, extra)
        hot, whole = folded(numbered, active, width - width_of(tail))
        attempt = [*hot, *tail]
        if whole and width_of(attempt) <= width:
            return attempt
    return attempt  # the screen cuts what still does not fit: the end, the least needed
