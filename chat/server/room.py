"""One room: its members, its topic, and the order of everything said in it.

A Room turns what its members do into encoded lines for a Delivery, under a
lock of its own that fixes the order of its lines, so its ids, history and
live traffic never disagree; no other room ever waits for it. Reading
history (a join, a resume, a page) happens outside that lock and leaves in
bounded chunks. No sockets and no threads of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from chat.errors import Refused, StorageFailed
from chat.server.accounts import Identity
from chat.server.log import RoomLog, Span
from chat.server.session import Session
from chat.server.store import RoomRecord, Store, StoreError
from chat.wire.codec import encode, encode_error
from chat.wire.protocol import (
    Action,
    ChatMessage,
    Gap,
    HistoryPage,
    Joined,
    LeaveReason,
    Left,
    Renamed,
    RoomInfo,
    Topic,
    Users,
    Welcome,
    utc_now,
)
from chat.wire.text import quoted

log = logging.getLogger(__name__)

DEFAULT_HISTORY = 50
#: Most missed messages one resuming join replays; older ones are paged with `history`.
DEFAULT_REPLAY_LIMIT = 1000
#: History leaves in chunks of at most this many lines...
CHUNK_LINES = 32
#: ...and the next chunk is queued only once fewer than this many bytes of the last are unsent.
CHUNK_BYTES = 256 * 1024

P = TypeVar("P", bound=Hashable)
P_contra = TypeVar("P_contra", bound=Hashable, contravariant=True)


class Delivery(Protocol[P_contra]):
    """How lines reach connections (the Outbox, or a recording fake in tests)."""

    def publish(self, room: str, line: bytes) -> None: ...
    def subscribe(self, peer: P_contra, room: str, held: bool = False) -> None: ...
    def send_held(self, peer: P_contra, room: str, line: bytes) -> None: ...
    def release_held(self, peer: P_contra, room: str) -> None: ...
    def unsubscribe(self, peer: P_contra, room: str) -> None: ...
    def send_to(self, peer: P_contra, line: bytes, room: str | None = None) -> None: ...
    def wait_drained(self, peer: P_contra, below: int) -> bool: ...
    def close(self, peer: P_contra, final: bytes | None = None, reason: str | None = None) -> None: ...


@dataclass(frozen=True)
class HistorySettings:
    """How much history a room sends: to a newcomer, and at most to a resuming member."""

    recent: int = DEFAULT_HISTORY
    replay_limit: int = DEFAULT_REPLAY_LIMIT


class Room(Generic[P]):
    """Members by session, the room's log, its topic, and its own lock.

    Every numbered line is kept in the log before it is sent to anybody, so
    any id a member has seen can be replayed to it later.
    """

    def __init__(
        self,
        record: RoomRecord,
        room_log: RoomLog,
        delivery: Delivery[P],
        store: Store,
        settings: HistorySettings | None = None,
    ) -> None:
        self.key = record.key
        #: The room's name as first spelled; every line about the room carries it.
        self.name = record.name
        self._record = record
        self._log = room_log
        self._delivery = delivery
        self._store = store
        self._settings = settings or HistorySettings()
        self._lock = threading.Lock()
        self._members: dict[Session[P], str] = {}  # session -> the name it has here

    @property
    def topic(self) -> str:
        return self._record.topic

    def info(self) -> RoomInfo:
        return RoomInfo(room=self.name, users=len(self._members), topic=self.topic)

    def users(self) -> list[str]:
        with self._lock:
            return self._sorted_users()

    def join(self, session: Session[P], name: str, since: int | None = None, identity: Identity | None = None) -> None:
        """Welcome `session` as `name`, then history, then every later line of the room.

        With `since`, the history is what it missed after that id (preceded
        by a Gap if some of that is no longer kept); else the recent history.
        Only the membership change happens under the lock: the history is read
        and sent afterwards, while the member's live lines wait behind it.
        """
        with self._lock:
            if session in self._members:
                raise Refused("already_joined", f"you are already in {self.name}", self.name)
            snapshot = self._log.last_id
            self._members[session] = name
            self._delivery.publish(self.key, encode(Joined(room=self.name, name=name, time=utc_now())))
            self._delivery.subscribe(session.peer, self.key, held=True)
            users = self._sorted_users()
            topic = self.topic
        log.info("%s joined %s as %s", session.label, quoted(self.name), quoted(name))
        peer = session.peer
        failure: StorageFailed | None = None
        try:
            try:
                span = self._welcome_span(since, snapshot)
            except StorageFailed as exc:
                span, failure = Span.empty(), exc
            welcome = Welcome(
                room=self.name,
                name=name,
                users=users,
                history=span.count,
                more=span.more,
                last_id=snapshot,
                topic=topic,
                token=identity.token if identity else None,
                account=identity.account is not None if identity else None,
            )
            lead = encode(welcome)
            if span.gap is not None:
                first, last = span.gap
                detail = f"{last - first + 1} messages ({first} to {last}) are no longer kept"
                lead += encode(Gap(room=self.name, first=first, last=last, detail=detail))
            self._delivery.send_held(peer, self.key, lead)
            if failure is not None:
                self._delivery.send_held(peer, self.key, encode_error(failure))
            else:
                self._stream(peer, span, lambda data: self._delivery.send_held(peer, self.key, data))
        finally:
            self._delivery.release_held(peer, self.key)

    def history(self, session: Session[P], before: int | None, limit: int) -> None:
        """Send `session` a page of older lines: a HistoryPage, then its lines, in chunks."""
        self._member(session)
        edge = before if before is not None else self._log.last_id + 1
        span = self._log.before(edge, limit)
        header = HistoryPage(room=self.name, before=edge, count=span.count, more=span.more)
        peer = session.peer
        self._delivery.send_to(peer, encode(header), self.key)
        self._stream(peer, span, lambda data: self._delivery.send_to(peer, data, self.key))

    def say(self, session: Session[P], text: str) -> None:
        self._publish_numbered(session, ChatMessage, text)

    def act(self, session: Session[P], text: str) -> None:
        self._publish_numbered(session, Action, text)

    def set_topic(self, session: Session[P], topic: str) -> None:
        """A numbered, kept topic line for every member; the room list shows the new topic."""
        with self._lock:
            name = self._member(session)
            record = RoomRecord(self.key, self.name, topic)
            try:
                self._store.save_room(record)
            except StoreError as exc:
                log.error("%s", exc)
                raise StorageFailed("storage_failed", "the server could not keep the topic", self.name) from exc
            line = self._log.append(
                lambda id: encode(Topic(room=self.name, topic=topic, name=name, id=id, time=utc_now()))
            )
            self._record = record
            self._delivery.publish(self.key, line)

    def _publish_numbered(self, session: Session[P], kind: type[ChatMessage | Action], text: str) -> None:
        """Number, keep and publish what a member says, in the room's order."""
        with self._lock:
            name = self._member(session)
            line = self._log.append(lambda id: encode(kind(room=self.name, id=id, name=name, msg=text, time=utc_now())))
            self._delivery.publish(self.key, line)

    def rename(self, session: Session[P], old: str, new: str) -> None:
        with self._lock:
            if session not in self._members:
                return
            self._members[session] = new
            self._delivery.publish(self.key, encode(Renamed(room=self.name, old=old, new=new, time=utc_now())))

    def who(self, session: Session[P]) -> None:
        self._delivery.send_to(session.peer, encode(Users(room=self.name, users=self.users())), self.key)

    def leave(self, session: Session[P], reason: LeaveReason) -> bool:
        """Forget `session` and tell the others (and, for a part, the one leaving); False if it was not here."""
        with self._lock:
            name = self._members.pop(session, None)
            if name is None:
                return False
            left = encode(Left(room=self.name, name=name, reason=reason, time=utc_now()))
            if reason == "part":  # the one who parts sees it too: that is its confirmation
                self._delivery.publish(self.key, left)
                self._delivery.unsubscribe(session.peer, self.key)
            else:
                self._delivery.unsubscribe(session.peer, self.key)
                self._delivery.publish(self.key, left)
        log.info("%s left %s as %s (%s)", session.label, quoted(self.name), quoted(name), reason)
        return True

    # --- inside ------------------------------------------------------------------------

    def _welcome_span(self, since: int | None, snapshot: int) -> Span:
        if since is not None and since <= snapshot:
            return self._log.missed(since, snapshot, self._settings.replay_limit)
        # A plain join, or an id higher than any here (the room was reset): the recent
        # history, and no count of older lines (they are no news to a newcomer).
        return self._log.recent(snapshot, self._settings.recent)

    def _stream(self, peer: P, span: Span, send: Callable[[bytes], None]) -> None:
        """Send the span's lines in pieces of about CHUNK_BYTES, each once the peer has taken most of the last."""
        stream_chunks(self._delivery, peer, self._log.lines(span, CHUNK_LINES), send)

    def _member(self, session: Session[P]) -> str:
        name = self._members.get(session)
        if name is None:
            raise Refused("not_in_room", f"you are not in {self.name}; join it first", self.name)
        return name

    def _sorted_users(self) -> list[str]:
        return sorted(self._members.values(), key=str.casefold)


def stream_chunks(delivery: Delivery[P], peer: P, chunks: Iterable[list[bytes]], send: Callable[[bytes], None]) -> None:
    """Send lines read chunk by chunk in pieces of at most about CHUNK_BYTES, never
    queueing a piece before the peer has taken most of the one before, so that a
    client reading as fast as it can always gets all of them."""
    piece: list[bytes] = []
    size = 0
    for chunk in chunks:
        for line in chunk:
            piece.append(line)
            size += len(line)
            if size >= CHUNK_BYTES:
                if not delivery.wait_drained(peer, CHUNK_BYTES):
                    return  # the connection is closing: nobody to read the rest for
                send(b"".join(piece))
                piece, size = [], 0
    if piece and delivery.wait_drained(peer, CHUNK_BYTES):
        send(b"".join(piece))
