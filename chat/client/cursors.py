"""Where the terminal client remembers, between runs, the last message id it saw.

One small JSON file maps "host:port/name" to an id, so that starting the
client again shows what was said while it was closed. Losing or garbling
the file only loses that convenience: it is never an error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _key(host: str, port: int, name: str) -> str:
    return f"{host}:{port}/{name.casefold()}"


def load(path: Path, host: str, port: int, name: str) -> int | None:
    """The last id seen as `name` on that server, or None."""
    try:
        value = json.loads(path.read_text()).get(_key(host, port, name))
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value >= 0 else None


def save(path: Path, host: str, port: int, name: str, last_id: int) -> None:
    """Remember `last_id`; a failure is logged, not raised."""
    try:
        cursors = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(cursors, dict):
            cursors = {}
    except (OSError, ValueError):
        cursors = {}
    cursors[_key(host, port, name)] = last_id
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(cursors, indent=1, sort_keys=True))
        temporary.replace(path)
    except OSError as exc:
        log.warning("could not remember the last message seen: %s", exc)
