"""Who is in the room, what each member may do, and what everybody is sent.

The room is the protocol's state machine: it turns decoded client messages
into encoded lines for a Delivery, under one lock that fixes the order of
everything it sends, so ids, history and live traffic never disagree. No
sockets and no threads of its own; connections are opaque handles here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from chat.errors import ProtocolError
from chat.server.store import MemoryStore, Record, Store, StoreError
from chat.wire.codec import encode
from chat.wire.protocol import (
    Action,
    ChatMessage,
    ClassicMessage,
    ClientMessage,
    Gap,
    HistoryPage,
    HistoryRequest,
    Join,
    Joined,
    Leave,
    LeaveReason,
    Left,
    Nick,
    Ping,
    Pong,
    PrivateMessage,
    Renamed,
    SendAction,
    SendMessage,
    SendPrivate,
    ServerPong,
    Users,
    Welcome,
    Who,
    utc_now,
)

log = logging.getLogger(__name__)

DEFAULT_HISTORY = 50
#: Most missed messages one resuming join replays; older ones are paged with `history`.
DEFAULT_REPLAY_LIMIT = 1000
_PONG = encode(ServerPong())


T = TypeVar("T")
P = TypeVar("P", bound=Hashable)
P_contra = TypeVar("P_contra", bound=Hashable, contravariant=True)


class Delivery(Protocol[P_contra]):
    """How the room's lines reach connections (the Outbox, or a fake in tests)."""

    def publish(self, line: bytes) -> None: ...
    def subscribe(self, peer: P_contra) -> None: ...
    def unsubscribe(self, peer: P_contra) -> None: ...
    def send_to(self, peer: P_contra, line: bytes) -> None: ...


class Room(Generic[P]):
    """Members by name, the id sequence, and the store of numbered messages.

    Every numbered message is stored before it is sent to anybody, so any id
    a client has seen can be replayed to it later.
    """

    def __init__(
        self,
        delivery: Delivery[P],
        store: Store | None = None,
        history_size: int = DEFAULT_HISTORY,
        replay_limit: int = DEFAULT_REPLAY_LIMIT,
    ) -> None:
        self._delivery = delivery
        self._store = store if store is not None else MemoryStore()
        self._history_size = history_size
        self._replay_limit = replay_limit
        self._lock = threading.Lock()
        self._names: dict[P, str] = {}
        self._by_key: dict[str, P] = {}  # casefolded name -> peer
        self._last_id = self._store.last_id()

    def users(self) -> list[str]:
        with self._lock:
            return self._sorted_users()

    def name_of(self, peer: P) -> str | None:
        with self._lock:
            return self._names.get(peer)

    def receive(self, peer: P, message: ClientMessage | ClassicMessage) -> bool:
        """Act on one decoded line from `peer`; False when it said goodbye.

        Raises ProtocolError for a request the room refuses; nothing has been
        sent to anybody then.
        """
        match message:
            case Join(name=name, since=since):
                self.join(peer, name, since)
            case SendMessage(msg=text):
                self.say(peer, text)
            case ClassicMessage(name=name, msg=text):
                if self.name_of(peer) is None:
                    if name is None:
                        raise ProtocolError("not_joined", "join first: send a join line, or a name with your message")
                    self.join(peer, name)
                self.say(peer, text)
            case SendAction(msg=text):
                self.act(peer, text)
            case SendPrivate(to=to, msg=text):
                self.whisper(peer, to, text)
            case Nick(name=name):
                self.rename(peer, name)
            case HistoryRequest(before=before, limit=limit):
                self.history(peer, before, limit)
            case Who():
                self._delivery.send_to(peer, encode(Users(users=self.users())))
            case Ping():
                self._delivery.send_to(peer, _PONG)
            case Pong():
                pass  # any line keeps a connection alive; the handler noted it
            case Leave():
                return False
        return True

    def join(self, peer: P, name: str, since: int | None = None) -> None:
        """Welcome `peer` as `name`, then history, then every later broadcast.

        With `since`, the history is what it missed after that id (preceded
        by a Gap if some of that is no longer kept); else the recent history.
        """
        with self._lock:
            if peer in self._names:
                raise ProtocolError("already_joined", f"you are already in the room as {self._names[peer]}")
            self._claim(name)
            viewer = name.casefold()
            if since is not None and since <= self._last_id:
                gap = self._gap_after(since)
                page = self._read(lambda: self._store.after(since, viewer, self._replay_limit))
                more = page.more
            else:  # a plain join, or an id higher than any here: this room was reset
                gap, page = None, self._read(lambda: self._store.after(0, viewer, self._history_size))
                more = 0  # older history is no news to a newcomer
            self._names[peer] = name
            self._by_key[viewer] = peer
            welcome = Welcome(
                name=name,
                users=self._sorted_users(),
                history=len(page.lines),
                more=more,
                last_id=self._last_id,
            )
            lead = encode(welcome) + (encode(gap) if gap else b"")
            self._delivery.send_to(peer, lead + b"".join(page.lines))
            self._delivery.publish(encode(Joined(name=name, time=utc_now())))
            self._delivery.subscribe(peer)
        log.info("%s joined as %s", peer, name)

    def history(self, peer: P, before: int | None, limit: int) -> None:
        """Send `peer` a page of older messages: a HistoryPage, then its lines."""
        with self._lock:
            name = self._member(peer)
            edge = before if before is not None else self._last_id + 1
            page = self._read(lambda: self._store.before(edge, name.casefold(), limit))
            header = HistoryPage(before=edge, count=len(page.lines), more=page.more)
            self._delivery.send_to(peer, encode(header) + b"".join(page.lines))

    def say(self, peer: P, text: str) -> None:
        with self._lock:
            name = self._member(peer)
            self._delivery.publish(self._store_next(lambda id: ChatMessage(id=id, name=name, msg=text, time=utc_now())))

    def act(self, peer: P, text: str) -> None:
        with self._lock:
            name = self._member(peer)
            self._delivery.publish(self._store_next(lambda id: Action(id=id, name=name, msg=text, time=utc_now())))

    def whisper(self, peer: P, to: str, text: str) -> None:
        """A private message to `to`, echoed to the sender."""
        with self._lock:
            name = self._member(peer)
            target = self._by_key.get(to.casefold())
            if target is None:
                raise ProtocolError("no_such_user", f"nobody called {to} is in the room")
            recipient = self._names[target]
            line = self._store_next(
                lambda id: PrivateMessage(id=id, name=name, to=recipient, msg=text, time=utc_now()),
                parties=(name.casefold(), recipient.casefold()),
            )
            self._delivery.send_to(target, line)
            if target != peer:
                self._delivery.send_to(peer, line)

    def rename(self, peer: P, new: str) -> None:
        with self._lock:
            old = self._member(peer)
            if new == old:
                return
            if new.casefold() != old.casefold():
                self._claim(new)
            del self._by_key[old.casefold()]
            self._by_key[new.casefold()] = peer
            self._names[peer] = new
            self._delivery.publish(encode(Renamed(old=old, new=new, time=utc_now())))
        log.info("%s renamed %s to %s", peer, old, new)

    def leave(self, peer: P, reason: LeaveReason) -> None:
        """Forget `peer` and tell the others; harmless if it never joined."""
        with self._lock:
            name = self._names.pop(peer, None)
            if name is None:
                return
            del self._by_key[name.casefold()]
            self._delivery.unsubscribe(peer)
            self._delivery.publish(encode(Left(name=name, reason=reason, time=utc_now())))
        log.info("%s left as %s (%s)", peer, name, reason)

    # --- with the lock held ---------------------------------------------------------

    def _member(self, peer: P) -> str:
        name = self._names.get(peer)
        if name is None:
            raise ProtocolError("not_joined", "join the room first")
        return name

    def _claim(self, name: str) -> None:
        if name.casefold() in self._by_key:
            raise ProtocolError("name_taken", f"the name {name} is taken; choose another")

    def _store_next(self, build: Callable[[int], BaseModel], parties: tuple[str, str] | None = None) -> bytes:
        """Number, encode and store a message; the id is used only once it is stored."""
        next_id = self._last_id + 1
        line = encode(build(next_id))
        sender, recipient = parties or (None, None)
        try:
            self._store.append(Record(next_id, line, sender, recipient))
        except StoreError as exc:
            log.error("%s", exc)
            raise ProtocolError("storage_failed", "the server could not store your message, so nobody got it") from exc
        self._last_id = next_id
        return line

    def _read(self, read: Callable[[], T]) -> T:
        try:
            return read()
        except StoreError as exc:
            log.error("%s", exc)
            raise ProtocolError("storage_failed", "the server could not read its history; try again") from exc

    def _gap_after(self, since: int) -> Gap | None:
        """The ids after `since` that are no longer kept, if any."""
        oldest = self._read(self._store.oldest_id)
        first_kept = oldest if oldest is not None else self._last_id + 1
        if since + 1 >= first_kept:
            return None
        first, last = since + 1, first_kept - 1
        return Gap(first=first, last=last, detail=f"{last - first + 1} messages ({first} to {last}) are no longer kept")

    def _sorted_users(self) -> list[str]:
        return sorted(self._names.values(), key=str.casefold)
