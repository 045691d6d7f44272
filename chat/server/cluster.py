"""The servers a hub shares its names, rooms and private lines with: one interface, Cluster,
with two implementations. LocalCluster is this server alone (everything in its own Store);
RedisCluster (chat.server.redis.cluster, with --redis) is several servers on one Redis.

The hub calls a Cluster and never asks which one it has; what the other servers tell this
one comes back through ClusterEvents, which the hub implements. No sockets and no threads
here (a RedisCluster has its own).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Hashable
from typing import Generic, Protocol, TypeVar

from chat.server.lines import Line, Repeat
from chat.server.log import LocalLog, RoomLog, Tag
from chat.server.room import Delivery, LocalFeed, RoomFeed
from chat.server.session import Holder
from chat.server.store import PRIVATE_LOG, RoomRecord, Rules, Store, kept
from chat.wire.protocol import room_key

P = TypeVar("P", bound=Hashable)
P_contra = TypeVar("P_contra", bound=Hashable, contravariant=True)


class ClusterEvents(Protocol):
    """What a hub hears from its cluster (from other servers, or its own private lines)."""

    def private_line(self, line: Line, sender: str, recipient: str) -> None:
        """A private line between two identities, in id order: to their inboxes here, if any."""
        ...

    def taken_elsewhere(self, key: str, identity: str) -> None:
        """The identity took its name (key) on another server: close its connection here."""
        ...

    def lease_lost(self) -> None:
        """This server was taken for dead: record its names and members again."""
        ...

    def disconnected_elsewhere(self, key: str, identity: str, why: str) -> None:
        """A server operator on another server removed whoever holds the name `key` as `identity`."""
        ...

    def rules_changed(self, room: str, removed: str | None, reason: str, upto: int) -> None:
        """A room's rules changed on some server (read them again), and `removed` is out of it
        (kicked or banned) once line `upto` reached them."""
        ...

    def read_elsewhere(self, identity: str, room: str, id: int) -> None:
        """The account `identity` read `room` up to `id` on another server."""
        ...


class Cluster(Protocol[P_contra]):
    """Where names, presence, private lines, rules and rooms live, for this server and any
    others it shares them with. A call for a client's request raises Refused or
    StorageFailed where it says; nothing was done then."""

    def start(self, events: ClusterEvents) -> None:
        """Begin: `events` hears what the others say from now on (StoreError if that cannot be)."""
        ...

    def stop(self, timeout: float = 5.0) -> None: ...

    # --- names and presence ------------------------------------------------------------------

    def claim_name(self, keys: Collection[str], claimant: Holder) -> None:
        """Take a name (its look-alike `keys`) where other servers see it, or Refused `name_taken`.
        A server that held it for the same identity closes that connection."""
        ...

    def release_name(self, keys: Collection[str], identity: str) -> None:
        """The name is free again (never fails: a name held by a stopped server frees itself)."""
        ...

    def holder_of(self, key: str) -> Holder | None:
        """Who holds the name key on another server, if anybody (this server's own holders are
        the hub's to know)."""
        ...

    def set_away(self, keys: Collection[str], identity: str, why: str | None) -> None:
        """The holder of the name is away, and why (None: back), where other servers see it."""
        ...

    def disconnect_elsewhere(self, key: str, identity: str, why: str) -> None:
        """Ask the other servers to close the connection of `identity` holding the name `key`."""
        ...

    def tell_read(self, identity: str, room: str, id: int) -> None:
        """Tell the other servers that the account `identity` read `room` up to `id` (never fails)."""
        ...

    # --- private lines -------------------------------------------------------------------------

    @property
    def private_log(self) -> RoomLog:
        """Every private line, numbered in one sequence: what replays read."""
        ...

    def open_inbox(self, open_it: Callable[[], None]) -> int:
        """Call `open_it` (which subscribes an inbox, and makes its session findable by
        identity) while no private line is being handed to inboxes here; the last private id
        handed to them before (what a replay runs up to)."""
        ...

    def send_private(self, build: Callable[[int], Line], sender: str, recipient: str, cid: Tag | None = None) -> Line:
        """Number and keep a private line between two identities, and have it reach their inboxes
        (through ClusterEvents.private_line, in id order); the line. StorageFailed if not kept.
        `cid`: the sender's `(identity, cid)`, kept with the line (RoomLog.tagged finds it); if
        a line was kept with it already, that line as a Repeat, and nothing is sent."""
        ...

    def settle_private(self, upto: int) -> None:
        """Wait (briefly) until private line `upto` has reached the inboxes here."""
        ...

    # --- rules and rooms ---------------------------------------------------------------------

    @property
    def rules(self) -> Rules:
        """Roles, modes, bans and mutes: the same on every server."""
        ...

    def rooms(self) -> list[RoomRecord]:
        """Every room (StoreError if they cannot be read)."""
        ...

    def room(self, key: str) -> RoomRecord | None:
        """The room `key` (room_key of its name), if it exists (StorageFailed if unknown for now)."""
        ...

    def add_room(self, record: RoomRecord) -> RoomRecord:
        """Keep a new room, unless one with its key exists: the room as kept (StorageFailed if not)."""
        ...

    def open_room(self, record: RoomRecord) -> tuple[RoomLog, RoomFeed[P_contra]]:
        """A room's log, and how its lines reach its members here."""
        ...

    def drop_room(self, key: str) -> None:
        """Forget a room nobody uses (StoreError if it cannot be)."""
        ...

    def settle_room(self, key: str, upto: int) -> None:
        """Wait (briefly) until this server has delivered the room `key` up to line `upto`."""
        ...


class LocalCluster(Generic[P]):
    """This server alone: rooms, topics, rules and private lines in its Store, names in its hub."""

    def __init__(self, delivery: Delivery[P], store: Store) -> None:
        self._delivery = delivery
        self._store = store
        self._events: ClusterEvents | None = None
        self._private = LocalLog(store, PRIVATE_LOG, None)
        # Held while a private line is numbered and handed to inboxes, so that each party gets
        # them in id order and an inbox opened meanwhile misses none.
        self._private_lock = threading.Lock()
        self._rooms_lock = threading.Lock()  # one add_room at a time: a key is kept once

    def start(self, events: ClusterEvents) -> None:
        self._events = events

    def stop(self, timeout: float = 5.0) -> None:
        """Nothing runs: the store is the server's to close."""

    # --- names and presence: nobody else to tell ---------------------------------------------

    def claim_name(self, keys: Collection[str], claimant: Holder) -> None:
        """No other server: the hub's own names are all there is."""

    def release_name(self, keys: Collection[str], identity: str) -> None:
        """No other server was told."""

    def holder_of(self, key: str) -> Holder | None:
        return None  # no other server

    def set_away(self, keys: Collection[str], identity: str, why: str | None) -> None:
        """Nobody elsewhere asks: the session says it."""

    def disconnect_elsewhere(self, key: str, identity: str, why: str) -> None:
        """There is nowhere else."""

    def tell_read(self, identity: str, room: str, id: int) -> None:
        """Nobody else to tell."""

    # --- private lines -------------------------------------------------------------------------

    @property
    def private_log(self) -> RoomLog:
        return self._private

    def open_inbox(self, open_it: Callable[[], None]) -> int:
        with self._private_lock:
            open_it()
            return self._private.last_id

    def send_private(self, build: Callable[[int], Line], sender: str, recipient: str, cid: Tag | None = None) -> Line:
        with self._private_lock:
            # Checked again under the lock that numbers private lines: a repeat sent from two
            # connections of one identity at once is kept once, and the second is answered.
            kept = self._private.tagged(*cid) if cid is not None else None
            if kept is not None:
                return Repeat(kept.json)
            line = self._private.append(build, sender=sender, recipient=recipient, cid=cid)
            if self._events is not None:
                self._events.private_line(line, sender, recipient)
        return line

    def settle_private(self, upto: int) -> None:
        """Nothing to wait for: send_private handed the line over itself."""

    # --- rules and rooms: the store's --------------------------------------------------------

    @property
    def rules(self) -> Rules:
        return self._store

    def rooms(self) -> list[RoomRecord]:
        return self._store.rooms()

    def room(self, key: str) -> RoomRecord | None:
        found = kept(self._store.rooms, failure="the server could not read its rooms; try again")
        return next((record for record in found if room_key(record.name) == key), None)

    def add_room(self, record: RoomRecord) -> RoomRecord:
        with self._rooms_lock:
            kept_already = self.room(record.key)
            if kept_already is not None:
                return kept_already
            failure = f"the server could not create the room {record.name}"
            kept(self._store.save_room, record, failure=failure, room=record.name)
            return record

    def drop_room(self, key: str) -> None:
        self._store.drop_room(key)

    def open_room(self, record: RoomRecord) -> tuple[RoomLog, RoomFeed[P]]:
        room_log = LocalLog(self._store, record.key, record.name)
        return room_log, LocalFeed(self._delivery, record.key, room_log, self._store, record.name)

    def settle_room(self, key: str, upto: int) -> None:
        """Nothing to wait for: a room's lines reach its members as they are said."""
