"""What is server-wide: sessions by name, rooms by key, private messages, and dispatch.

The Hub turns each decoded client line into calls on a room or on itself.
Its own lock guards only its dictionaries (names, sessions, rooms) and is
never held while a room works, nor taken by a line said in a room, so a busy
or slow room delays no other. Names, private lines, rules and rooms are the
Cluster's (chat.server.cluster: this server alone, or several on Redis); the
hub calls it the same way whichever it is, and hears from it as its
ClusterEvents. Private lines reach each party through its inbox, a delivery
log of one subscriber. Lock order: the cluster's private-line lock, then the
hub's. No sockets and no threads.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from datetime import datetime
from typing import Generic, TypeVar

from chat.errors import Refused, StorageFailed
from chat.server.accounts import Accounts, Identity
from chat.server.cluster import Cluster, LocalCluster
from chat.server.history import HistoryQuery
from chat.server.limits import in_networks
from chat.server.lines import Line, Repeat
from chat.server.room import (
    CHUNK_LINES,
    Delivery,
    HistorySettings,
    Moderate,
    Room,
    Target,
    stream_chunks,
)
from chat.server.session import Holder, Presence, Session
from chat.server.store import (
    PRIVATE_LOG,
    RoomRecord,
    Rules,
    Sanction,
    SearchIndex,
    SearchInvalid,
    Store,
    StoreError,
    kept,
)
from chat.wire.protocol import (
    DEFAULT_SEARCH_RESULTS,
    LOBBY,
    MAX_REASON,
    MAX_SEARCH_RESULTS,
    MAX_SEARCH_TEXT,
    ROOM_PAGE,
    Away,
    Ban,
    ChangePassword,
    ClassicMessage,
    ClientMessage,
    Deop,
    Disconnect,
    HistoryRequest,
    Join,
    Kick,
    Leave,
    LeaveReason,
    ListRooms,
    Lockdown,
    MarkRead,
    Mute,
    Nick,
    Op,
    Part,
    Ping,
    Pong,
    PrivateMessage,
    ReadMarker,
    Register,
    Renamed,
    RoomList,
    Search,
    SearchResults,
    SendAction,
    SendMessage,
    SendPrivate,
    ServerBan,
    ServerNotice,
    ServerPong,
    ServerUnban,
    SessionToken,
    SetAway,
    SetModes,
    SetTopic,
    Unban,
    Unmute,
    Voice,
    Who,
    room_key,
    utc_now,
)
from chat.wire.text import name_key, name_keys, one_line, quoted

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Hashable)

#: Sessions one account may have at once by default (--max-sessions).
DEFAULT_MAX_SESSIONS = 10
#: Rooms one identity may create by default (--max-rooms-per-user).
DEFAULT_MAX_ROOMS_PER_USER = 20
#: Where server-wide bans and modes are kept: a key no room can have ("\0" starts no room name).
SERVER_SCOPE = "\0server"



class Hub(Generic[P]):
    """Every session and every room of one server."""

    def __init__(
        self,
        delivery: Delivery[P],
        store: Store,
        settings: HistorySettings | None = None,
        accounts: Accounts | None = None,
        admins: Iterable[str] = (),
        cluster: Cluster[P] | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        shared_addresses: Iterable[str] = (),
        max_rooms_per_user: int = DEFAULT_MAX_ROOMS_PER_USER,
        search: SearchIndex | None = None,
    ) -> None:
        """`cluster`: where names, private lines, rules and rooms live (default: this server
        alone, in `store`); it starts telling this hub what other servers do. `search`: the
        full-text index that answers `search` (None: answered with search_unavailable)."""
        self._search = search
        self._delivery = delivery
        self._cluster: Cluster[P] = cluster or LocalCluster(delivery, store)
        self._store = store
        #: Roles, modes, bans and mutes, as every server has them.
        self._rules: Rules = self._cluster.rules
        self._accounts = accounts or Accounts(store)
        #: Sessions one account may have at once; past it the oldest is closed.
        self.max_sessions = max_sessions
        #: Rooms one identity may create (0: no limit).
        self.max_rooms_per_user = max_rooms_per_user
        #: Networks many people share (loopback, a proxy: --limit-exempt): no sanction holds on them.
        self.shared_addresses = tuple(shared_addresses)
        #: The server operators' identities (`--admin`): they may do anything in any room (read
        #: once the cluster has started, below).
        self._admins: frozenset[str] = frozenset()
        self._settings = settings or HistorySettings()
        self._lock = threading.Lock()
        self._sessions: set[Session[P]] = set()
        # Each proven identity -> its sessions: where a private line kept by any server goes.
        self._by_identity: dict[str, set[Session[P]]] = {}
        # Each of a name's keys (wire.text.name_keys) -> its session: look-alikes clash.
        self._by_name: dict[str, Session[P]] = {}
        # Rooms are only ever added, so a reader may look one up without the lock.
        self._rooms: dict[str, Room[P]] = {}
        self._inboxes = itertools.count(1)
        # Rooms are found by room_key(name); a room kept by an older release stays
        # under the store key it was saved with (room.key), which may differ.
        for record in self._cluster.rooms():  # StoreError here stops the server at start: that is the right time
            key = room_key(record.name)
            if key in self._rooms:
                shadow = self._rooms[key].name
                log.warning("room %s is hidden: its name looks like %s", quoted(record.name), quoted(shadow))
                continue
            self._rooms[key] = self._open_room(record)
        if room_key(LOBBY) not in self._rooms:
            self._rooms[room_key(LOBBY)] = self._create_room(LOBBY)
        self._cluster.start(self)
        self.set_admins(admins)

    # --- connections ---------------------------------------------------------------------

    def connect(self, peer: P, label: str, address: str = "") -> Session[P]:
        # "\0" starts no room name (those have no control characters): inbox keys never meet rooms.
        session = Session(peer, label, f"\0inbox {next(self._inboxes)}", address)
        if in_networks(session.address, self.shared_addresses):
            session.held_at = None  # banning one of them must not ban everybody behind it
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
            held = False
            if session.name is not None:
                self._free_name_locked(session, session.name)
                held = any(self._by_name.get(key) is not None for key in name_keys(session.name))
            self._prove_locked(session, None)
        if session.name is not None and session.identity is not None and not held:
            self._cluster.release_name(name_keys(session.name), session.identity.id)
        words = session.parting if reason == "quit" else None
        for room in self._rooms_of(session):
            room.leave(session, reason, words)
        session.rooms.clear()
        self._delivery.unsubscribe(session.peer, session.inbox)

    # --- what a client line does ---------------------------------------------------------

    def receive(self, session: Session[P], message: ClientMessage | ClassicMessage) -> bool:
        """Act on one decoded line from `session`; False when it said goodbye.

        Raises Refused or StorageFailed for a request that is not done; nothing
        has been sent to anybody then.
        """
        match message:
            case Join():
                self.join(session, message)
            case Kick() | Ban() | Unban() | Mute() | Unmute() | Op() | Deop() | Voice():
                self.moderate(session, message)
            case Disconnect() | ServerBan() | ServerUnban() | Lockdown():
                self.administer(session, message)
            case SetModes(room=room, on=on, off=off):
                self._room_of(session, room).set_modes(session, list(on), list(off))
            case Register(password=password):
                self.register(session, password)
            case ChangePassword(old=old, new=new):
                self.change_password(session, old, new)
            case ClassicMessage(name=name, msg=text):
                if session.name is None:
                    if name is None:
                        raise Refused("not_joined", "join first: send a join line, or a name with your message")
                    self.join(session, Join(name=name))
                self._room_of(session, LOBBY).speak(session, [("message", text, None)])
            case SendMessage(room=room) | SendAction(room=room):
                self.speak(session, room, [message])
            case SetTopic(room=room, topic=topic):
                self._room_of(session, room).set_topic(session, topic)
            case Search() as asked:
                self.search(session, asked)
            case HistoryRequest(room=room, before=before, limit=limit):
                self._room_of(session, room).history(session, before, limit)
            case Part(room=room, msg=words):
                self.part(session, room, words)
            case SendPrivate(to=to, msg=text, cid=cid):
                self.whisper(session, to, text, cid)
            case SetAway(msg=why):
                self.set_away(session, why)
            case Nick(name=name):
                self.rename(session, name)
            case Who(room=room):
                found = self._rooms.get(room_key(room)) or self._kept_room(room)
                if found is None:
                    raise Refused("no_such_room", f"there is no room called {room}", room)
                found.who(session)
            case ListRooms(after=after):
                self._delivery.send_to(session.peer, Line.of(self.room_list(after)))
            case MarkRead(room=room, id=id):
                self.mark_read(session, room, id)
            case Ping():
                self._delivery.send_to(session.peer, Line.of(ServerPong()))
            case Pong():
                pass  # any line keeps a connection alive; the reader noted it
            case Leave(msg=words):
                session.parting = parting_words(words)
                return False
        return True

    def speak(self, session: Session[P], room_name: str, said: Sequence[SendMessage | SendAction]) -> None:
        """Lines `session` said to one room, one after the other: kept and published together."""
        self._room_of(session, room_name).speak(session, [(line.type, line.msg, line.cid) for line in said])

    def search(self, session: Session[P], request: Search) -> None:
        """Send `session` the newest lines matching a search, among those its identity may read
        now: the rooms it is in (or the one it names) and its own private lines."""
        text, room, before = request.text, request.room, request.before
        limit = DEFAULT_SEARCH_RESULTS if request.limit is None else request.limit
        if not text.strip() or len(text) > MAX_SEARCH_TEXT:
            raise Refused("search_invalid", f"a search is 1 to {MAX_SEARCH_TEXT} characters, not all blank", room)
        if not 1 <= limit <= MAX_SEARCH_RESULTS:
            raise Refused("search_invalid", f"a search answers 1 to {MAX_SEARCH_RESULTS} lines", room)
        if before is not None and room is None:
            raise Refused("search_invalid", "before is an id in one room: name the room too")
        if self._search is None:
            raise Refused("search_unavailable", _NO_SEARCH, room)
        identity = _identity_of(session)
        with self._lock:
            sessions = self._by_identity.get(identity, set()) | {session}
            rooms = {key for each in sessions for key in each.rooms}
        if room is not None:
            if room_key(room) not in rooms:
                raise Refused("not_in_room", f"you are not in {room}; join it first", room)
            logs = [room_key(room)]
        else:
            logs = [*sorted(rooms), PRIVATE_LOG]
        try:
            found = self._search.search(text, logs, identity, before, limit)
        except SearchInvalid as exc:
            raise Refused("search_invalid", str(exc), room) from exc
        except StoreError as exc:
            log.error("%s", exc)
            raise StorageFailed("storage_failed", "the server could not search its history; try again", room) from exc
        header = Line.of(SearchResults(text=text, count=len(found.lines), more=found.more))
        self._delivery.send_to(session.peer, header, *[Line(line) for line in found.lines])

    def join(self, session: Session[P], request: Join) -> None:
        """Enter a room; the first join also claims the session's name (and may resume its private lines)."""
        if session.name is not None:
            if request.name is not None and name_key(request.name) != name_key(session.name):
                raise Refused("already_joined", f"you are already {session.name}; use nick to change your name")
            self._enter(session, request)
            return
        identity, snapshot, first = self._log_in(session, request)
        replay = request.private_since
        try:
            self._enter(session, request, identity, first)
            self._follow_twins(session)
        finally:  # a held inbox is released whatever became of the room
            if replay is not None:
                self._replay_private(session, replay, snapshot)

    def log_in(self, session: Session[P], request: Join, user_name: str = "", real_name: str = "") -> Identity:
        """Claim the session's name (the first half of a first join), before any room: a front
        door whose connections are named before they join (IRC's registration, with its USER's
        user and real names)."""
        if session.name is not None:
            raise Refused("already_joined", f"you are already {session.name}; use nick to change your name")
        identity, _, _ = self._log_in(session, request)
        session.user_name, session.real_name = user_name, real_name
        log.info("%s logged in as %s", session.label, quoted(session.name or ""))
        return identity

    def newest_said(self, room: str) -> datetime | None:
        """When the newest message or action kept in `room` was said (IRC's CHATHISTORY TARGETS)."""
        found = self._rooms.get(room_key(room))
        return found.newest_said() if found is not None else None

    def history_query(self, session: Session[P], query: HistoryQuery) -> None:
        """Send `session` the lines of a room it is in that a query by reference names (IRC's CHATHISTORY)."""
        self._room_of(session, query.room).history_query(session, query)

    def join_twin_rooms(self, session: Session[P]) -> None:
        """Enter the rooms the account's other sessions are in: the rest of a log_in, once the
        front door has welcomed the session (IRC, after its registration burst)."""
        self._follow_twins(session)

    def presence(self, name: str) -> Presence | None:
        """Who holds `name` on this server now (or on another, where rooms are shared), if anybody."""
        with self._lock:
            holder = self._by_name.get(name_key(name))
        if holder is not None and holder.name is not None:
            account = holder.identity.account if holder.identity is not None else None
            return Presence(
                holder.name, account, holder.away, tuple(holder.rooms), holder.user_name, holder.real_name
            )
        elsewhere = self._cluster.holder_of(name_key(name))
        if elsewhere is None:
            return None
        account = elsewhere.name if elsewhere.identity.startswith("account:") else None
        return Presence(elsewhere.name, account, elsewhere.away, ())

    def _log_in(self, session: Session[P], request: Join) -> tuple[Identity, int, bool]:
        """Prove and claim the name a first join carries: the identity, the inbox's snapshot, and
        whether this is the account's first session (its welcome lists the account's rooms)."""
        if request.name is None:
            raise Refused("not_joined", "your first join must carry a name")
        # The password hash is checked here, in the joining client's thread, under no lock.
        identity = self._accounts.prove(request.name, request.password, request.token, session.address)
        self._check_server_bans(session, identity)
        if identity.account is None:
            self._take_back(request.name, identity)  # a guest is one session: its ghost goes
        else:
            self._make_way(identity)  # an account has several, up to max_sessions
        first = identity.account is not None and not self._sessions_of(identity.id)
        replay = request.private_since
        name = identity.account or request.name  # an account appears under its account name only
        self._cluster.claim_name(name_keys(name), self._holder(session, name, identity.id))
        try:
            snapshot = self._claim(session, name, identity, held=replay is not None)
        except Refused:
            self._cluster.release_name(name_keys(name), identity.id)
            raise
        return identity, snapshot, first

    def register(self, session: Session[P], password: str) -> None:
        """Make the session's name an account; it gets a new token for it."""
        name = self._name_of(session)
        guest = session.identity
        if guest is None or guest.account is not None:
            raise Refused("name_registered", f"{name} is already registered")
        identity = self._accounts.register(name, password, guest, session.address)
        self._prove(session, identity)
        # The name is held by the account now, on every server.
        self._cluster.release_name(name_keys(name), guest.id)
        self._cluster.claim_name(name_keys(name), self._holder(session, name, identity.id))
        for room in self._rooms_of(session):  # the rooms it is in are the account's from now on
            room.identity_changed(session)
            try:
                self._accounts.joined(identity.id, room.name, True)
            except StorageFailed as exc:
                log.warning("%s: could not keep room %s of the account: %s", session.label, room.name, exc.detail)
        log.info("%s registered %s", session.label, quoted(name))
        detail = f"{name} is now registered: come back with this token, or log in with your password"
        self._delivery.send_to(session.peer, Line.of(SessionToken(name=name, token=identity.token, detail=detail)))

    def change_password(self, session: Session[P], old: str, new: str) -> None:
        name = self._name_of(session)
        if session.identity is None:
            raise Refused("not_registered", "register first: guests have no password to change")
        identity = self._accounts.change_password(session.identity, old, new, session.address)
        others = [other for other in self._sessions_of(identity.id) if other is not session]
        self._prove(session, identity)
        detail = "password changed; every other token of this account is revoked, its other sessions closed"
        self._delivery.send_to(session.peer, Line.of(SessionToken(name=name, token=identity.token, detail=detail)))
        for other in others:
            self._replace(other, "the account's password changed; log in again")

    def moderate(self, session: Session[P], request: Moderate) -> None:
        """A moderation action in a room, by one of its operators (the room checks who may)."""
        self._name_of(session)
        room = self._rooms.get(room_key(request.room))
        if room is None:
            raise Refused("no_such_room", f"there is no room called {request.room}", request.room)
        room.moderate(session, request, self._target(request.name))

    def set_admins(self, admins: Iterable[str]) -> None:
        """The server operators from now on (`--admin` reloaded); every room follows at once."""
        operators = self._operators(admins)
        with self._lock:
            self._admins = operators
            rooms = list(self._rooms.values())
        for room in rooms:
            room.admins = self._admins

    def administer(self, session: Session[P], request: Disconnect | ServerBan | ServerUnban | Lockdown) -> None:
        """What only server operators (`--admin`) do: disconnect, server-wide bans, lockdown."""
        name = self._name_of(session)
        if session.identity is None or session.identity.id not in self._admins:
            raise Refused("not_operator", "only server operators may do that")
        match request:
            case Lockdown(on=on):
                kept(self._rules.save_mode, SERVER_SCOPE, "lockdown", on)
                done = "the server refuses new guests" if on else "the server welcomes guests again"
            case ServerUnban(name=target_name):
                bans = kept(self._rules.sanctions, SERVER_SCOPE, failure="the server could not read its bans")
                found = [ban for ban in bans if name_key(ban.name) == name_key(target_name)]
                if not found:
                    raise Refused("no_such_user", f"{target_name} is not banned from the server")
                for ban in found:
                    kept(self._rules.drop_sanction, SERVER_SCOPE, ban.target, "ban")
                done = f"{target_name} may come back"
            case Disconnect(name=target_name, reason=reason) | ServerBan(name=target_name, reason=reason):
                target = self._target(target_name)
                if isinstance(request, ServerBan):
                    held_on = target.targets()  # the identity, and every address it acts from
                    if not held_on:
                        raise Refused("no_such_user", f"nobody called {target_name} is connected or registered")
                    until = time.time() + request.duration if request.duration else None
                    for held in held_on:
                        ban = Sanction(SERVER_SCOPE, held, "ban", target_name, until, reason, name)
                        kept(self._rules.save_sanction, ban)
                elif target.session is None and not target.elsewhere:
                    raise Refused("no_such_user", f"nobody called {target_name} is connected")
                why = f"removed from the server by {name}" + (f": {reason}" if reason else "")
                removed = set(self._sessions_of(target.identity)) if target.identity else set()
                if target.session is not None:
                    removed.add(target.session)
                for gone in removed:  # every device of an account
                    self._delivery.close(gone.peer, Line.refusal(Refused("removed", why)), "disconnected")
                    self.disconnect(gone, "kicked")
                if not removed and target.elsewhere and target.identity is not None:
                    self._cluster.disconnect_elsewhere(name_key(target.name), target.identity, why)
                banned = isinstance(request, ServerBan)
                done = f"{target_name} {'is banned from the server' if banned else 'is gone'}"
        log.info("%s: server operator %s: %s", session.label, quoted(name), done)
        self._delivery.send_to(session.peer, Line.of(ServerNotice(detail=done)))

    def _check_server_bans(self, session: Session[P], identity: Identity) -> None:
        now = time.time()
        targets = identity.answerable(session.held_at)
        failure = "the server could not check its bans; try again"
        sanctions = kept(self._rules.sanctions, SERVER_SCOPE, failure=failure)
        lockdown = "lockdown" in kept(self._rules.modes, SERVER_SCOPE, failure=failure)
        for sanction in sanctions:
            if sanction.target in targets and sanction.active(now):
                held_at = session.held_at
                if sanction.target.startswith("account:") and held_at is not None:  # tried from here while banned
                    address_ban = Sanction(SERVER_SCOPE, held_at, "ban", sanction.name, sanction.until,
                                           sanction.reason, sanction.by)
                    try:
                        self._rules.save_sanction(address_ban)
                    except StoreError as exc:  # the ban holds on the account all the same
                        log.warning("could not hold a server ban on an address too: %s", exc)
                reason = f": {sanction.reason}" if sanction.reason else ""
                raise Refused("banned", f"you are banned from this server{reason}")
        if lockdown and identity.account is None:
            raise Refused("account_required", "the server takes no new guests right now; log in with an account")

    def part(self, session: Session[P], room_name: str, words: str | None = None) -> None:
        """Leave a room (saying `words`, if any); an account leaves it on every device."""
        room = self._room_of(session, room_name)
        twins = [other for other in self._twins(session) if room.listed_as in other.rooms]
        said = parting_words(words)
        room.leave(session, "part", said)
        for twin in twins:
            room.leave(twin, "part", said)
        if session.identity is not None and session.identity.account is not None:
            try:
                self._accounts.joined(session.identity.id, room.name, False)
            except StorageFailed as exc:
                log.warning("%s: could not forget room %s of the account: %s", session.label, room.name, exc.detail)

    def mark_read(self, session: Session[P], room_name: str, id: int) -> None:
        """An account read `room` up to `id`: kept (only forward), and told to its other sessions."""
        self._name_of(session)
        identity = session.identity
        if identity is None or identity.account is None:
            raise Refused("not_registered", "read markers are kept for accounts: register first")
        room = self._rooms.get(room_key(room_name))
        if room is None or room.listed_as not in session.rooms:
            raise Refused("not_in_room", f"you are not in {room_name}; join it first", room_name)
        id = min(id, room.last_id)  # no marker past what the room has said
        if id > 0 and self._accounts.mark(identity.id, room.name, id):
            marker = Line.of(ReadMarker(room=room.name, id=id))
            for twin in self._twins(session):
                self._delivery.send_to(twin.peer, marker)
            self._cluster.tell_read(identity.id, room.name, id)

    def read_elsewhere(self, identity: str, room: str, id: int) -> None:
        """The account read a room further on another server: its sessions here are told."""
        marker = Line.of(ReadMarker(room=room, id=id))
        for session in self._sessions_of(identity):
            self._delivery.send_to(session.peer, marker)

    def check_accounts(self) -> None:
        """End the sessions whose account was deleted or whose password changed since they proved
        it (`chat-admin accounts passwd|delete` while the server runs)."""
        with self._lock:
            sessions = [s for s in self._sessions if s.identity is not None and s.identity.account is not None]
        verdicts: dict[tuple[str, str], bool] = {}
        for session in sessions:
            identity = session.identity
            if identity is None:
                continue
            key = (identity.id, identity.proof)
            if key not in verdicts:
                try:
                    verdicts[key] = self._accounts.current(identity)
                except StorageFailed:
                    verdicts[key] = True  # cannot tell now: asked again next time
            if not verdicts[key]:
                self._replace(session, "the account's password changed or the account was deleted; log in again")

    def whisper(self, session: Session[P], to: str, text: str, cid: str | None = None) -> None:
        """A private message to `to`, numbered in the private log, echoed to the sender (with
        `cid`, if it came with one; a repeat of a `cid` kept before is answered, not sent again)."""
        name = self._name_of(session)
        if cid is not None:
            # Most repeats are answered here; one sent from two connections at once is caught
            # where the line is numbered (send_private answers it with a Repeat).
            kept = self._cluster.private_log.tagged(_identity_of(session), cid)
            if kept is not None:
                self._delivery.publish(session.inbox, kept.with_cid(cid))
                return
        with self._lock:
            target = self._by_name.get(name_key(to))
        if target is not None and target.name is not None:
            recipient, recipient_id, away = target.name, _identity_of(target), target.away
        elif (elsewhere := self._cluster.holder_of(name_key(to))) is not None:
            recipient_id, recipient, away = elsewhere.identity, elsewhere.name, elsewhere.away
        else:
            raise Refused("no_such_user", f"nobody called {to} is connected")
        # Kept under the parties' identities, not their names: only they ever see it
        # again, whoever holds either name later.
        sender_id = _identity_of(session)

        def build(id: int) -> Line:
            line = Line.of(PrivateMessage(id=id, name=name, to=recipient, msg=text, time=utc_now()))
            return line.echoed(cid, session.peer)

        # It reaches both parties (here, through private_line) in id order, on whichever server.
        tag = None if cid is None else (sender_id, cid)
        line = self._cluster.send_private(build, sender_id, recipient_id, tag)
        if isinstance(line, Repeat) and cid is not None:  # kept meanwhile, from another connection
            self._delivery.publish(session.inbox, line.with_cid(cid))
            return
        if target is not session and away is not None:
            self._cluster.settle_private(line.id)  # after the echo, so it reads as the answer
            self._delivery.publish(session.inbox, Line.of(Away(name=recipient, msg=away)))

    # --- what the cluster tells this one (chat.server.cluster.ClusterEvents) ---------------------

    def private_line(self, line: Line, sender: str, recipient: str) -> None:
        """A private line kept by any server, in id order: to its parties' inboxes here."""
        with self._lock:
            parties = self._by_identity.get(sender, set()) | self._by_identity.get(recipient, set())
        for party in parties:
            self._delivery.publish(party.inbox, line)

    def taken_elsewhere(self, key: str, identity: str) -> None:
        """The owner of a name connected to another server: its connection here is closed."""
        if identity.startswith("account:"):
            return  # an account may be on several servers at once, as on several devices
        with self._lock:
            holder = self._by_name.get(key)
        if holder is not None and holder.identity is not None and holder.identity.id == identity:
            self._replace(holder)

    def disconnected_elsewhere(self, key: str, identity: str, why: str) -> None:
        """A server operator on another server removed this one's holder of a name."""
        with self._lock:
            holder = self._by_name.get(key)
        if holder is not None and holder.identity is not None and holder.identity.id == identity:
            self._delivery.close(holder.peer, Line.refusal(Refused("removed", why)), "disconnected")
            self.disconnect(holder, "kicked")
            log.info("%s: removed from the server by an operator on another server", holder.label)

    def rules_changed(self, room: str, removed: str | None, reason: str, upto: int) -> None:
        """Another server changed a room's rules; if it removed a member who is here, they go
        (in a thread of their own: the shared reader that calls this must not wait for a room)."""
        found = self._rooms.get(room)
        if found is None:
            return
        found.rules_changed()
        if removed is None:
            return
        with self._lock:
            member = self._by_name.get(name_key(removed))
        if member is not None and room in member.rooms:
            why: LeaveReason = "kicked" if reason == "kicked" else "banned"
            threading.Thread(
                target=self._removed_elsewhere, args=(found, member, why, upto), name="chat-removal", daemon=True
            ).start()

    def _removed_elsewhere(self, room: Room[P], member: Session[P], reason: LeaveReason, upto: int) -> None:
        self._cluster.settle_room(room.key, upto)  # the member sees the line that removes them
        room.leave(member, reason)

    def lease_lost(self) -> None:
        """The other servers took this one for dead: its names and members are recorded again."""
        for session in self.sessions():
            if session.name is None or session.identity is None:
                continue
            try:
                self._cluster.claim_name(
                    name_keys(session.name), self._holder(session, session.name, session.identity.id)
                )
            except (Refused, StorageFailed) as exc:
                log.warning("%s: could not claim %s again: %s", session.label, quoted(session.name), exc.detail)
        for room in list(self._rooms.values()):
            room.enter_again()

    def set_away(self, session: Session[P], why: str) -> None:
        """Away (and why), or back with an empty `why`: the session is told, and its rooms (an
        `away` line with the room) if that changed anything."""
        name = self._name_of(session)
        if session.identity is not None:  # answered on every server
            self._cluster.set_away(name_keys(name), session.identity.id, why or None)
        changed = (session.away or "") != why
        session.away = why or None
        if changed:  # the rooms are told before the session hears it is done
            for room in self._rooms_of(session):
                room.away_changed(session, why)
        said = f"you are away: {why}; private messages get that answer" if why else "you are back"
        self._delivery.send_to(session.peer, Line.of(ServerNotice(detail=said)))

    def rename(self, session: Session[P], new: str) -> None:
        """Change the session's name; each of its rooms shows the change once."""
        old = self._name_of(session)
        if new == old:
            return
        identity = session.identity
        if identity is not None and identity.account is not None:
            raise Refused("nick_locked", f"an account appears under its own name: you stay {old}")
        if self._accounts.is_registered(new):
            raise Refused("name_registered", f"{new} is a registered name; only its account may use it")
        if self._accounts.is_reserved(new):
            raise Refused("name_reserved", f"{new} is reserved for a server operator's account")
        if identity is not None:
            self._cluster.claim_name(name_keys(new), self._holder(session, new, identity.id))
        try:
            with self._lock:
                self._check_free_locked(session, new)
                self._free_name_locked(session, old)
                self._take_name_locked(session, new)
        except Refused:
            if identity is not None:
                self._cluster.release_name(name_keys(new), identity.id)
            raise
        if identity is not None:
            self._cluster.release_name([key for key in name_keys(old) if key not in name_keys(new)], identity.id)
        rooms = self._rooms_of(session)
        for room in rooms:
            room.rename(session, old, new)
        if not rooms:  # in no room: nobody else to tell, but the renamer needs to know
            self._delivery.send_to(session.peer, Line.of(Renamed(room=None, old=old, new=new, time=utc_now())))
        log.info("%s renamed %s to %s", session.label, quoted(old), quoted(new))

    def room_list(self, after: str | None = None) -> RoomList:
        try:
            kept_rooms = self._cluster.rooms()
        except StoreError as exc:
            log.warning("could not list every room (listing those open here): %s", exc)
            kept_rooms = []
        for record in kept_rooms:  # rooms other servers created are known here from now on
            if room_key(record.name) not in self._rooms:
                self._opened(record)
        with self._lock:
            rooms = sorted(self._rooms.values(), key=lambda room: (room.name.casefold(), room.name))
        if after is not None:
            edge = (after.casefold(), after)
            rooms = [room for room in rooms if (room.name.casefold(), room.name) > edge]
        page = rooms[:ROOM_PAGE]  # only the page's rooms are asked how many are in them
        return RoomList(rooms=[room.info() for room in page], more=len(rooms) - len(page))

    # --- inside --------------------------------------------------------------------------

    def _enter(self, session: Session[P], request: Join, identity: Identity | None = None, first: bool = False) -> None:
        """Join a room; a first join's `identity` puts its token in the welcome, and the welcome of
        an account's `first` session its rooms. An account's other sessions join the room too."""
        name = self._name_of(session)
        account = session.identity if session.identity is not None and session.identity.account else None
        room = self._room_for_join(request.room, session.identity)
        rooms = read = None
        if account is not None:
            read = self._accounts.markers(account.id).get(room.name, 0)
            rooms = self._accounts.rooms_of(account.id) if first else None
        # The room says whether the session is in it already, and lists itself in session.rooms,
        # under its own lock: a kick being carried out right now is over before this join is judged.
        room.join(session, name, request.since, identity, rooms, read)
        if account is None:
            return
        try:
            self._accounts.joined(account.id, room.name, True)
        except StorageFailed as exc:
            log.warning("%s: could not keep room %s of the account: %s", session.label, room.name, exc.detail)
        for twin in self._twins(session):
            if room.listed_as not in twin.rooms:
                try:
                    room.join(twin, name, None, None, None, read)
                except (Refused, StorageFailed):
                    pass  # that device is already on its way in, or out

    def _follow_twins(self, session: Session[P]) -> None:
        """A new session of an account joins the rooms its other sessions are in."""
        identity = session.identity
        name = session.name
        if identity is None or identity.account is None or name is None:
            return
        keys = {key for twin in self._twins(session) for key in list(twin.rooms)} - set(session.rooms)
        if not keys:
            return
        markers = self._accounts.markers(identity.id)
        for key in keys:
            room = self._rooms.get(key)
            if room is None:
                continue
            try:
                room.join(session, name, None, None, None, markers.get(room.name, 0))
            except (Refused, StorageFailed):
                pass  # banned there meanwhile, or already in

    def _sessions_of(self, identity: str) -> list[Session[P]]:
        with self._lock:
            return list(self._by_identity.get(identity, ()))

    def _twins(self, session: Session[P]) -> list[Session[P]]:
        """The other sessions of the same account (none for a guest)."""
        identity = session.identity
        if identity is None or identity.account is None:
            return []
        return [other for other in self._sessions_of(identity.id) if other is not session]

    def _make_way(self, identity: Identity) -> None:
        """Close the oldest sessions of the account until a new one fits under max_sessions."""
        sessions = sorted(self._sessions_of(identity.id), key=lambda session: session.connected_at)
        for oldest in sessions[: max(0, len(sessions) - self.max_sessions + 1)]:
            self._replace(oldest, f"more than {self.max_sessions} sessions of this account; closing the oldest")

    def _operators(self, admins: Iterable[str]) -> frozenset[str]:
        """The identities of the accounts named by `--admin`; a name whose account does not exist
        is reserved until it does, and said once in the log."""
        identities = set()
        for name in admins:
            try:
                record = self._accounts.record(name)
            except StorageFailed as exc:
                log.error("--admin %s: its account cannot be read now (%s)", quoted(name), exc.detail)
                record = None
            identities.add(f"account:{record.key if record is not None else name_key(name)}")
            if record is None:
                log.warning(
                    "--admin %s names no account: %s and its look-alikes are reserved until you create it "
                    "with `chat-admin accounts add %s`", quoted(name), quoted(name), name,
                )
        self._accounts.reserved = frozenset(name_key(name) for name in admins)
        return frozenset(identities)

    def _claim(self, session: Session[P], name: str, identity: Identity, held: bool) -> int:
        """Give `session` the name and identity, and open its inbox (held for a replay); the last
        private id handed to inboxes before it opened."""

        def open_inbox() -> None:
            # While no private line is handed to inboxes: none numbered after the snapshot can
            # miss this inbox, and none before it reaches it live as well as in the replay.
            with self._lock:
                self._check_free_locked(session, name, identity)
                self._delivery.subscribe(session.peer, session.inbox, held=held)
                self._take_name_locked(session, name)
                self._prove_locked(session, identity)

        return self._cluster.open_inbox(open_inbox)

    def _target(self, name: str) -> Target[P]:
        """What moderation can hold against `name`: the connection holding it now, and its
        identity (or a guest's address); else the account registered under it."""
        with self._lock:
            holder = self._by_name.get(name_key(name))
        if holder is not None and holder.identity is not None:
            others = tuple(twin.held_at for twin in self._twins(holder) if twin.held_at)
            return Target(holder.name or name, holder.identity.id, holder.held_at, holder, addresses=others)
        elsewhere = self._cluster.holder_of(name_key(name))
        if elsewhere is not None:  # connected to another server
            return Target(elsewhere.name, elsewhere.identity, elsewhere.address, elsewhere=True)
        record = self._accounts.record(name)
        if record is not None:
            return Target(name, f"account:{record.key}")
        return Target(name)

    def _take_back(self, name: str, identity: Identity) -> None:
        """A connection of the same identity that still holds `name` (a dead one, not yet
        timed out) is closed at once, so that its owner has the name back."""
        with self._lock:
            holders = {self._by_name.get(key) for key in name_keys(name)} - {None}
        for holder in holders:
            if holder is not None and holder.identity is not None and holder.identity.id == identity.id:
                self._replace(holder)

    @staticmethod
    def _holder(session: Session[P], name: str, identity: str) -> Holder:
        """What other servers know of who holds `name` here (the address its bans hold on too)."""
        return Holder(identity, name, session.away, session.held_at)

    def _replace(self, holder: Session[P], why: str = "you connected again elsewhere; closing this connection") -> None:
        replaced = Refused("session_replaced", why)
        self._delivery.close(holder.peer, Line.refusal(replaced), "disconnected")
        self.disconnect(holder, "disconnected")
        log.info("%s: replaced by a new connection of the same identity", holder.label)

    def _prove(self, session: Session[P], identity: Identity) -> None:
        with self._lock:
            self._prove_locked(session, identity)

    def _prove_locked(self, session: Session[P], identity: Identity | None) -> None:
        """`session` is `identity` now (None: it is gone), in `_by_identity` too."""
        if session.identity is not None:
            others = self._by_identity.get(session.identity.id, set())
            others.discard(session)
            if not others:
                self._by_identity.pop(session.identity.id, None)
        if identity is not None:
            self._by_identity.setdefault(identity.id, set()).add(session)
            session.identity = identity

    def _check_free_locked(self, session: Session[P], name: str, identity: Identity | None = None) -> None:
        identity = identity or session.identity
        for key in name_keys(name):
            holder = self._by_name.get(key)
            same_account = (
                identity is not None and identity.account is not None
                and holder is not None and holder.identity is not None and holder.identity.id == identity.id
            )
            if holder is not None and holder is not session and not same_account:
                shown = "" if holder.name is None or holder.name == name else f" (it looks like {holder.name})"
                raise Refused("name_taken", f"the name {name} is taken{shown}; choose another")

    def _take_name_locked(self, session: Session[P], name: str) -> None:
        for key in name_keys(name):
            self._by_name.setdefault(key, session)  # an account's other session may hold it already
        session.name = name

    def _free_name_locked(self, session: Session[P], name: str) -> None:
        """`session` no longer holds `name`; another session of its account that has it keeps it."""
        identity = session.identity
        twins = [
            other for other in self._by_identity.get(identity.id, ()) if other is not session and other.name == name
        ] if identity is not None and identity.account is not None else []
        for key in name_keys(name):
            if self._by_name.get(key) is session:
                if twins:
                    self._by_name[key] = twins[0]
                else:
                    del self._by_name[key]

    def _name_of(self, session: Session[P]) -> str:
        if session.name is None:
            raise Refused("not_joined", "join first")
        return session.name

    def _room_of(self, session: Session[P], name: str) -> Room[P]:
        """The room `name`, for a line that needs its sender to be in it (the room checks that)."""
        self._name_of(session)
        room = self._rooms.get(room_key(name))
        if room is None:
            raise Refused("not_in_room", f"you are not in {name}; join it first", name)
        return room

    def _rooms_of(self, session: Session[P]) -> list[Room[P]]:
        return [self._rooms[key] for key in list(session.rooms)]  # a room may take itself out meanwhile

    def _room_for_join(self, name: str, creator: Identity | None = None) -> Room[P]:
        """The room `name`, created (and kept) if this is its first join: owned by its creator if an account."""
        key = room_key(name)
        if key in self._rooms and not self._rooms[key].retired:
            return self._rooms[key]
        kept_room = self._cluster.room(key)
        if kept_room is not None:  # another server's room: its spelling, its owner
            return self._opened(kept_room)
        return self._known_room(name, creator)

    def _known_room(self, name: str, creator: Identity | None = None) -> Room[P]:
        """The room `name` on this server, opened here now if it is new here (too_many_rooms if
        its creator created --max-rooms-per-user rooms already)."""
        key = room_key(name)
        if key not in self._rooms and creator is not None and self.max_rooms_per_user:
            rooms = kept(self._cluster.rooms, failure="the server could not count your rooms; try again")
            if sum(1 for record in rooms if record.creator == creator.id) >= self.max_rooms_per_user:
                raise Refused(
                    "too_many_rooms", f"you created {self.max_rooms_per_user} rooms already; join one of those", name
                )
        with self._lock:
            room = self._rooms.get(key)
            if room is None or room.retired:
                room = self._rooms[key] = self._create_room(name, creator.id if creator is not None else "")
                if creator is not None and creator.account is not None:
                    room.make_owner(creator.id)
                log.info("room %s created", quoted(name))
            return room

    def _create_room(self, name: str, creator: str = "") -> Room[P]:
        """A new room, kept (with another server's spelling if it kept it first) and opened here."""
        return self._open_room(self._cluster.add_room(RoomRecord(room_key(name), name, creator=creator)))

    def expire_rooms(self, expiry: float) -> int:
        """Remove the rooms with no member, no owner account and no line for `expiry` seconds (never
        the lobby); how many went."""
        now = time.time()
        with self._lock:
            rooms = [room for key, room in self._rooms.items() if key != room_key(LOBBY)]
        removed = 0
        for room in rooms:
            if not room.retire(now, expiry):
                continue
            with self._lock:
                if self._rooms.get(room.listed_as) is room:
                    del self._rooms[room.listed_as]
            try:
                self._cluster.drop_room(room.key)
            except StoreError as exc:
                log.warning("room %s was not removed from the store: %s", quoted(room.name), exc)
                continue
            removed += 1
            log.info("room %s removed: nobody, no owner and no line for %g s", quoted(room.name), expiry)
        return removed

    def _kept_room(self, name: str) -> Room[P] | None:
        """A room another server created, known here from now on (None if no server has it)."""
        record = self._cluster.room(room_key(name))
        return self._opened(record) if record is not None else None

    def _opened(self, record: RoomRecord) -> Room[P]:
        """The room kept as `record`, open on this server (opened now if it is new here)."""
        key = room_key(record.name)
        with self._lock:
            room = self._rooms.get(key)
            if room is None or room.retired:
                room = self._rooms[key] = self._open_room(record)
            return room

    def _open_room(self, record: RoomRecord) -> Room[P]:
        room_log, feed = self._cluster.open_room(record)
        room = Room(record, room_log, self._delivery, self._store, self._settings, feed, self._rules)
        room.admins = self._admins
        return room

    def _replay_private(self, session: Session[P], since: int, snapshot: int) -> None:
        """Queue the private lines `session` missed after `since` in its held inbox, then let live ones through."""
        peer, inbox = session.peer, session.inbox
        try:
            viewer = _identity_of(session)
            private = self._cluster.private_log
            span = private.missed(since, snapshot, self._settings.replay_limit, viewer)
            chunks = private.lines(span, CHUNK_LINES, viewer)
            stream_chunks(self._delivery, peer, chunks, lambda lines: self._delivery.send_held(peer, inbox, *lines))
        finally:
            self._delivery.release_held(peer, inbox)


_NO_SEARCH = (
    "this server keeps no search index: it keeps history in memory, or shares rooms through Redis"
)


def _identity_of(session: Session[P]) -> str:
    """Who a joined session proved to be (its private messages are kept under this)."""
    if session.identity is None:
        raise Refused("not_joined", "join first")
    return session.identity.id


def parting_words(words: str | None) -> str | None:
    """A member's parting words as its rooms show them, whichever door they came through: one line
    of at most MAX_REASON characters (see text.one_line); None if nothing visible is left."""
    if words is None:
        return None
    return one_line(words, MAX_REASON) or None
