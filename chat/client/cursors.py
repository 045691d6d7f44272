"""Where the terminal client remembers, between runs, its rooms and where it was in each.

One small JSON file keeps, per server and identity (the session token the server gave, which
stands for an account or a guest), the rooms the client was in (in the order it joined them),
the last id it saw in each and the last private id; and, per server and name, which identity
last used that name. Starting the client under any name the identity used (before or after a
/nick) finds the same, newest place. Losing or garbling the file only loses that convenience:
it is never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Place:
    """Where a client was: each room (as spelled) with its last id seen, and the last private id."""

    rooms: dict[str, int] = field(default_factory=dict)
    private: int | None = None
    #: The session token that proves who we were (never the password).
    token: str | None = None
    #: The private conversations open (the other people's names), in the order they were opened.
    conversations: list[str] = field(default_factory=list)


def _key(host: str, port: int, name: str) -> str:
    return f"{host}:{port}/{name.casefold()}"


def _identity(host: str, port: int, name: str, token: str | None) -> str:
    """The key of an identity's place: its token's digest (never the token), else the name."""
    who = "token:" + hashlib.sha256(token.encode()).hexdigest()[:32] if token else "name:" + name.casefold()
    return f"{host}:{port}/{who}"


def _read(path: Path) -> dict[str, Any]:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def load(path: Path, host: str, port: int, name: str) -> Place | None:
    """Where the identity that last used `name` on that server was, or None if it was never saved
    (or cannot be read)."""
    saved = _read(path)
    names, places = saved.get("names"), saved.get("places")
    identity = names.get(_key(host, port, name)) if isinstance(names, dict) else None
    if isinstance(identity, str) and isinstance(places, dict) and identity in places:
        return _place(places[identity])
    return _place(saved.get(_key(host, port, name)))  # as the releases before identities kept it


def _place(value: object) -> Place | None:
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
    talks = value.get("conversations")
    conversations = [name for name in talks if isinstance(name, str)] if isinstance(talks, list) else []
    return Place(
        rooms,
        private if isinstance(private, int) and private >= 0 else None,
        token if isinstance(token, str) else None,
        conversations,
    )


def save(path: Path, host: str, port: int, name: str, place: Place, aliases: Iterable[str] = ()) -> None:
    """Remember `place` for its identity, and that `name` and each of `aliases` (the other names it
    used in the run) lead to it; a failure is logged, not raised."""
    saved = _read(path)
    names: dict[str, Any] = saved["names"] if isinstance(saved.get("names"), dict) else {}
    places: dict[str, Any] = saved["places"] if isinstance(saved.get("places"), dict) else {}
    identity = _identity(host, port, name, place.token)
    # Rooms as [room, id] pairs: a list keeps the order they were joined in.
    places[identity] = {
        "rooms": [[room, id] for room, id in place.rooms.items()],
        "private": place.private,
        "token": place.token,
        "conversations": list(place.conversations),
    }
    for each in {name, *aliases}:
        names[_key(host, port, each)] = identity
        saved.pop(_key(host, port, each), None)  # the older layout's entry, now superseded
    # A place no name leads to any more (its token was replaced) is forgotten.
    used = set(names.values())
    saved["places"] = {key: value for key, value in places.items() if key in used}
    saved["names"] = names
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
