"""Where the terminal client remembers, between runs, its rooms and where it was in each.

One small JSON file maps "host:port/name" (every name the identity used) to the rooms the client was in (in
the order it joined them), the last id it saw in each, and the last private
id, so that starting the client again rejoins those rooms and shows what was
said while it was closed. Losing or garbling the file only loses that
convenience: it is never an error.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Place:
    """Where a client was: each room (as spelled) with its last id seen, and the last private id."""

    rooms: dict[str, int] = field(default_factory=dict)
    private: int | None = None
    #: The session token that proves who we were (never the password).
    token: str | None = None


def _key(host: str, port: int, name: str) -> str:
    return f"{host}:{port}/{name.casefold()}"


def load(path: Path, host: str, port: int, name: str) -> Place | None:
    """Where `name` was on that server, or None if it was never saved (or cannot be read)."""
    try:
        value = json.loads(path.read_text()).get(_key(host, port, name))
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(value, int) and value >= 0:  # the first release kept one id: the lobby's
        return Place({"lobby": value})
    if not isinstance(value, dict):
        return None
    pairs = value.get("rooms")
    private = value.get("private")
    rooms = {
        pair[0]: pair[1]
        for pair in (pairs if isinstance(pairs, list) else [])
        if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], int)
    }
    token = value.get("token")
    return Place(
        rooms, private if isinstance(private, int) and private >= 0 else None, token if isinstance(token, str) else None
    )


def save(path: Path, host: str, port: int, name: str, place: Place, aliases: Iterable[str] = ()) -> None:
    """Remember `place` for `name` and each of `aliases` (the other names this identity used in the
    run: starting as alice after a /nick to alicia finds it too); a failure is logged, not raised."""
    try:
        saved = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(saved, dict):
            saved = {}
    except (OSError, ValueError):
        saved = {}
    # Rooms as [room, id] pairs: a list keeps the order they were joined in.
    for each in {name, *aliases}:
        saved[_key(host, port, each)] = {
            "rooms": [[room, id] for room, id in place.rooms.items()],
            "private": place.private,
            "token": place.token,
        }
    try:
        # It holds session tokens: readable by its owner only.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(json.dumps(saved, indent=1, sort_keys=True))
        temporary.replace(path)
    except OSError as exc:
        log.warning("could not remember where you were: %s", exc)
