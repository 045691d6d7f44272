"""Who the user does not want to see: names whose lines the client hides, kept between runs.

A small JSON list in the state directory, compared by the server's own name
keys (case and look-alikes do not matter). Losing or garbling the file only
loses the list: it is never an error.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from chat.wire.text import name_key

log = logging.getLogger(__name__)


class Ignored:
    """The hidden names, and the file they are kept in (None: kept for this run only)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._names: dict[str, str] = {}  # key -> the name as the user typed it
        try:
            saved = json.loads(path.read_text()) if path is not None and path.exists() else []
        except (OSError, ValueError):
            saved = []
        for name in saved if isinstance(saved, list) else []:
            if isinstance(name, str):
                self._names[name_key(name)] = name

    @property
    def names(self) -> list[str]:
        return sorted(self._names.values(), key=str.casefold)

    def hides(self, name: str) -> bool:
        return name_key(name) in self._names

    def hide(self, name: str) -> None:
        self._names[name_key(name)] = name
        self._save()

    def show(self, name: str) -> bool:
        """Show `name` again; False if it was not hidden."""
        found = self._names.pop(name_key(name), None) is not None
        self._save()
        return found

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(json.dumps(self.names))
            temporary.replace(self.path)
        except OSError as exc:
            log.warning("could not keep the list of ignored names: %s", exc)
