"""What a person types into a search, as an FTS5 match expression: words, "quoted phrases" and
`prefix*`, all of which must match. Pure: no database; nothing typed reaches FTS5's own syntax
(no operators, column filters or NEAR), so no search text can be a syntax error.
"""

from __future__ import annotations

import re

# A quoted phrase (its closing quote optional), or a run of anything else but spaces and quotes.
_PART = re.compile(r'"([^"]*)"?|([^\s"]+)')


def match_expression(text: str) -> str | None:
    """The FTS5 expression for `text`, or None if it has no word to look for."""
    terms: list[str] = []
    for match in _PART.finditer(text):
        phrase, bare = match.group(1), match.group(2)
        if phrase is not None:
            words = phrase.split()
            if any(_has_word(word) for word in words):
                terms.append(_quoted(" ".join(words)))
            continue
        prefix = bare.endswith("*")
        word = bare.rstrip("*")
        if _has_word(word):
            terms.append(_quoted(word) + ("*" if prefix else ""))
    return " ".join(terms) if terms else None


def _has_word(text: str) -> bool:
    return any(char.isalnum() for char in text)


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'
