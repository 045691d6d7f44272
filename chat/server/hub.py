"""What is server-wide: sessions by name, rooms by key, private messages, and dispatch.

The Hub turns each decoded client line into calls on a room or on itself.
Its own lock guards only its dictionaries (names, sessions, rooms) and is
never held while a room works, so a busy or slow room delays no other; the
private-message log has a lock of its own. No sockets and no threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

from chat.errors import Refused, StorageFailed
from chat.server.log import LocalLog
from chat.server.room import CHUNK_LINES, Delivery, HistorySettings, Room, stream_chunks
from chat.server.session import Session
from chat.server.store import PRIVATE_LOG, RoomRecord, Store, StoreError
from chat.wire.codec import encode
from chat.wire.protocol import (
    LOBBY,
    ClassicMessage,
    ClientMessage,
    HistoryRequest,
    Join,
    Leave,
    LeaveReason,
    ListRooms,
    Nick,
    Part,
    Ping,
    Pong,
    PrivateMessage,
    Renamed,
    RoomList,
    SendAction,
    SendMessage,
    SendPrivate,
    ServerPong,
    SetTopic,
    Who,
    room_key,
    utc_now,
)

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Hashable)

_PONG = encode(ServerPong())


class Hub(Generic[P]):
    """Every session and every room of one server."""

    def __init__(self, delivery: Delivery[P], store: Store, settings: HistorySettings | None = None) -> None:
        self._delivery = delivery
        self._store = store
        self._settings = settings or HistorySettings()
        self._lock = threading.Lock()
        self._sessions: set[Session[P]] = set()
        self._by_name: dict[str, Session[P]] = {}  # casefolded name -> session
        self._rooms: dict[str, Room[P]] = {}
        self._private_lock = threading.Lock()
        self._private = LocalLog(store, PRIVATE_LOG, "private messages")
        for record in store.rooms():  # StoreError here stops the server at start: that is the right time
            self._rooms[record.key] = self._open_room(record)
        if LOBBY not in self._rooms:
            self._rooms[LOBBY] = self._create_room(LOBBY)

    # --- connections ---------------------------------------------------------------------

    def connect(self, peer: P, label: str) -> Session[P]:
        session = Session(peer, label)
        with self._lock:
            self._sessions.add(session)
        return session

    def sessions(self) -> list[Session[P]]:
        with self._lock:
            return list(self._sessions)

    def disconnect(self, session: Session[P], reason: LeaveReason) -> None:
        """Take `session` out of every room (each tells its members) and free its name."""
        with self._lock:
            self._sessions.discard(session)
            if session.name is not None and self._by_name.get(session.name.casefold()) is session:
                del self._by_name[session.name.casefold()]
        for room in self._rooms_of(session):
            room.leave(session, reason)
        session.rooms.clear()

    # --- what a client line does ---------------------------------------------------------

    def receive(self, session: Session[P], message: ClientMessage | ClassicMessage) -> bool:
        """Act on one decoded line from `session`; False when it said goodbye.

        Raises Refused or StorageFailed for a request that is not done; nothing
        has been sent to anybody then.
        """
        match message:
            case Join():
                self.join(session, message)
            case ClassicMessage(name=name, msg=text):
                if session.name is None:
                    if name is None:
                        raise Refused("not_joined", "join first: send a join line, or a name with your message")
                    self.join(session, Join(name=name))
                self._room(LOBBY).say(session, text)
            case SendMessage(room=room, msg=text):
                self._room_of(session, room).say(session, text)
            case SendAction(room=room, msg=text):
                self._room_of(session, room).act(session, text)
            case SetTopic(room=room, topic=topic):
                self._room_of(session, room).set_topic(session, topic)
            case HistoryRequest(room=room, before=before, limit=limit):
                self._room_of(session, room).history(session, before, limit)
            case Part(room=room):
                self.part(session, room)
            case SendPrivate(to=to, msg=text):
                self.whisper(session, to, text)
            case Nick(name=name):
                self.rename(session, name)
            case Who(room=room):
                found = self._rooms.get(room_key(room))
                if found is None:
                    raise Refused("no_such_room", f"there is no room called {room}", room)
                found.who(session)
            case ListRooms():
                self._delivery.send_to(session.peer, encode(self.room_list()))
            case Ping():
                self._delivery.send_to(session.peer, _PONG)
            case Pong():
                pass  # any line keeps a connection alive; the reader noted it
            case Leave():
                return False
        return True

    def join(self, session: Session[P], request: Join) -> None:
        """Enter a room; the first join also claims the session's name."""
        first = session.name is None
        if first:
            if request.name is None:
                raise Refused("not_joined", "your first join must carry a name")
            self._claim(session, request.name)
        elif request.name is not None and request.name != session.name:
            raise Refused("already_joined", f"you are already {session.name}; use nick to change your name")
        assert session.name is not None
        room = self._room_for_join(request.room)
        if room.key in session.rooms:
            raise Refused("already_joined", f"you are already in {room.name}", room.name)
        session.rooms[room.key] = None
        try:
            room.join(session, session.name, request.since)
        except BaseException:
            session.rooms.pop(room.key, None)
            raise
        if first and request.private_since is not None:
            self._replay_private(session, request.private_since)

    def part(self, session: Session[P], room_name: str) -> None:
        room = self._room_of(session, room_name)
        session.rooms.pop(room.key, None)
        room.leave(session, "part")

    def whisper(self, session: Session[P], to: str, text: str) -> None:
        """A private message to `to`, numbered in the private log, echoed to the sender."""
        name = self._name_of(session)
        with self._lock:
            target = self._by_name.get(to.casefold())
        if target is None or target.name is None:
            raise Refused("no_such_user", f"nobody called {to} is connected")
        recipient = target.name
        with self._private_lock:
            line = self._private.append(
                lambda id: encode(PrivateMessage(id=id, name=name, to=recipient, msg=text, time=utc_now())),
                sender=name.casefold(),
                recipient=recipient.casefold(),
            )
            self._send_private(target, line)
            if target is not session:
                self._send_private(session, line)

    def rename(self, session: Session[P], new: str) -> None:
        """Change the session's name; each of its rooms shows the change once."""
        old = self._name_of(session)
        if new == old:
            return
        with self._lock:
            holder = self._by_name.get(new.casefold())
            if holder is not None and holder is not session:
                raise Refused("name_taken", f"the name {new} is taken; choose another")
            del self._by_name[old.casefold()]
            self._by_name[new.casefold()] = session
            session.name = new
        rooms = self._rooms_of(session)
        for room in rooms:
            room.rename(session, old, new)
        if not rooms:  # in no room: nobody else to tell, but the renamer needs to know
            self._delivery.send_to(session.peer, encode(Renamed(room=None, old=old, new=new, time=utc_now())))
        log.info("%s renamed %s to %s", session.label, old, new)

    def room_list(self) -> RoomList:
        with self._lock:
            rooms = list(self._rooms.values())
        return RoomList(rooms=sorted((room.info() for room in rooms), key=lambda info: info.room.casefold()))

    # --- inside --------------------------------------------------------------------------

    def _claim(self, session: Session[P], name: str) -> None:
        with self._lock:
            if name.casefold() in self._by_name:
                raise Refused("name_taken", f"the name {name} is taken; choose another")
            self._by_name[name.casefold()] = session
            session.name = name

    def _name_of(self, session: Session[P]) -> str:
        if session.name is None:
            raise Refused("not_joined", "join first")
        return session.name

    def _room(self, name: str) -> Room[P]:
        with self._lock:
            return self._rooms[room_key(name)]

    def _room_of(self, session: Session[P], name: str) -> Room[P]:
        """The room `name`, which `session` must be in."""
        self._name_of(session)
        key = room_key(name)
        if key not in session.rooms:
            raise Refused("not_in_room", f"you are not in {name}; join it first", name)
        return self._room(key)

    def _rooms_of(self, session: Session[P]) -> list[Room[P]]:
        with self._lock:
            return [self._rooms[key] for key in session.rooms]

    def _room_for_join(self, name: str) -> Room[P]:
        """The room `name`, created (and kept) if this is its first join."""
        key = room_key(name)
        with self._lock:
            room = self._rooms.get(key)
            if room is None:
                room = self._rooms[key] = self._create_room(name)
                log.info("room %s created", name)
            return room

    def _create_room(self, name: str) -> Room[P]:
        record = RoomRecord(room_key(name), name)
        try:
            self._store.save_room(record)
        except StoreError as exc:
            log.error("%s", exc)
            raise StorageFailed("storage_failed", f"the server could not create the room {name}", name) from exc
        return self._open_room(record)

    def _open_room(self, record: RoomRecord) -> Room[P]:
        return Room(record, LocalLog(self._store, record.key, record.name), self._delivery, self._store, self._settings)

    def _send_private(self, session: Session[P], line: bytes) -> None:
        # Called with the private lock held, so that each party gets private lines in id order.
        if session.held_private is not None:
            session.held_private.append(line)
        else:
            self._delivery.send_to(session.peer, line)

    def _replay_private(self, session: Session[P], since: int) -> None:
        """Send the private messages `session` missed after `since`, then let live ones through."""
        viewer = self._name_of(session).casefold()
        with self._private_lock:
            snapshot = self._private.last_id
            session.held_private = []
        try:
            span = self._private.missed(since, snapshot, self._settings.replay_limit, viewer)
            chunks = self._private.lines(span, CHUNK_LINES, viewer)
            stream_chunks(self._delivery, session.peer, chunks, lambda data: self._delivery.send_to(session.peer, data))
        finally:
            with self._private_lock:
                held, session.held_private = session.held_private or [], None
                for line in held:
                    self._delivery.send_to(session.peer, line)
