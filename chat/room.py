"""Who is in the room, what each member may do, and what everybody is sent.

The room is the protocol's state machine: it turns decoded client messages
into encoded lines for a Delivery, under one lock that fixes the order of
everything it sends, so ids, history and live traffic never disagree. No
sockets and no threads of its own; connections are opaque handles here.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

from chat.codec import encode
from chat.errors import ProtocolError
from chat.protocol import (
    Action,
    ChatMessage,
    ClassicMessage,
    ClientMessage,
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
_PONG = encode(ServerPong())


P = TypeVar("P", bound=Hashable)
P_contra = TypeVar("P_contra", bound=Hashable, contravariant=True)


class Delivery(Protocol[P_contra]):
    """How the room's lines reach connections (the Outbox, or a fake in tests)."""

    def publish(self, line: bytes) -> None: ...
    def subscribe(self, peer: P_contra) -> None: ...
    def unsubscribe(self, peer: P_contra) -> None: ...
    def send_to(self, peer: P_contra, line: bytes) -> None: ...


class Room(Generic[P]):
    """Members by name, the id sequence, and the recent history."""

    def __init__(self, delivery: Delivery[P], history_size: int = DEFAULT_HISTORY) -> None:
        self._delivery = delivery
        self._lock = threading.Lock()
        self._names: dict[P, str] = {}
        self._by_key: dict[str, P] = {}  # casefolded name -> peer
        self._history: deque[bytes] = deque(maxlen=history_size)
        self._last_id = 0

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
            case Join(name=name):
                self.join(peer, name)
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
            case Who():
                self._delivery.send_to(peer, encode(Users(users=self.users())))
            case Ping():
                self._delivery.send_to(peer, _PONG)
            case Pong():
                pass  # any line keeps a connection alive; the handler noted it
            case Leave():
                return False
        return True

    def join(self, peer: P, name: str) -> None:
        """Welcome `peer` as `name`: welcome, history, then every later broadcast."""
        with self._lock:
            if peer in self._names:
                raise ProtocolError("already_joined", f"you are already in the room as {self._names[peer]}")
            self._claim(name)
            self._names[peer] = name
            self._by_key[name.casefold()] = peer
            welcome = Welcome(name=name, users=self._sorted_users(), history=len(self._history))
            self._delivery.send_to(peer, encode(welcome) + b"".join(self._history))
            self._delivery.publish(encode(Joined(name=name, time=utc_now())))
            self._delivery.subscribe(peer)
        log.info("%s joined as %s", peer, name)

    def say(self, peer: P, text: str) -> None:
        with self._lock:
            name = self._member(peer)
            self._last_id += 1
            self._remember(encode(ChatMessage(id=self._last_id, name=name, msg=text, time=utc_now())))

    def act(self, peer: P, text: str) -> None:
        with self._lock:
            name = self._member(peer)
            self._last_id += 1
            self._remember(encode(Action(id=self._last_id, name=name, msg=text, time=utc_now())))

    def whisper(self, peer: P, to: str, text: str) -> None:
        """A private message to `to`, echoed to the sender."""
        with self._lock:
            name = self._member(peer)
            target = self._by_key.get(to.casefold())
            if target is None:
                raise ProtocolError("no_such_user", f"nobody called {to} is in the room")
            line = encode(PrivateMessage(name=name, to=self._names[target], msg=text, time=utc_now()))
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

    def _remember(self, line: bytes) -> None:
        self._history.append(line)
        self._delivery.publish(line)

    def _sorted_users(self) -> list[str]:
        return sorted(self._names.values(), key=str.casefold)
