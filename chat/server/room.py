"""One room: its members, its topic, and the order of everything said in it.

A Room turns what its members do into Lines for a Delivery, under a
lock of its own that fixes the order of its lines, so its ids, history and
live traffic never disagree; no other room ever waits for it. Reading
history (a join, a resume, a page) happens outside that lock and leaves in
bounded chunks. No sockets and no threads of its own.
"""

from __future__ import annotations

import bisect
import functools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, Protocol, TypeVar

from chat.errors import Refused, RequestFailed, StorageFailed
from chat.server.accounts import Identity
from chat.server.history import HistoryQuery, select
from chat.server.lines import Line, Repeat
from chat.server.log import RoomLog, Span, Tag
from chat.server.session import Session
from chat.server.store import RoomRecord, RoomStore, Rules, Sanction, Store, StoreError, kept
from chat.wire.protocol import (
    Away,
    Ban,
    Deop,
    Gap,
    HistoryPage,
    Joined,
    Kick,
    LeaveReason,
    Left,
    Moderation,
    ModerationAction,
    Mute,
    Op,
    Renamed,
    RoomInfo,
    Stamper,
    Topic,
    Unban,
    Unmute,
    Users,
    Voice,
    Welcome,
    room_key,
    utc_now,
)
from chat.wire.text import name_key, quoted

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
    """How lines reach connections (the Outbox, or a recording fake in tests): each connection
    gets them in its own dialect's bytes, which is the Delivery's business, not the room's."""

    def publish(self, room: str, *lines: Line) -> None: ...
    def subscribe(self, peer: P_contra, room: str, held: bool = False) -> None: ...
    def send_held(self, peer: P_contra, room: str, *lines: Line) -> None: ...
    def release_held(self, peer: P_contra, room: str) -> None: ...
    def unsubscribe(self, peer: P_contra, room: str) -> None: ...
    def send_to(self, peer: P_contra, *lines: Line, room: str | None = None) -> None: ...
    def wait_drained(self, peer: P_contra, below: int) -> bool: ...
    def close(self, peer: P_contra, final: Line | None = None, reason: str | None = None) -> None: ...


class RoomFeed(Protocol[P_contra]):
    """How one room's lines reach its members, in the room's order: straight to this server's
    Delivery (LocalFeed), or through a log shared by several servers whose reader delivers them.
    The room calls it with its lock held."""

    def enter(self, peer: P_contra, name: str, joined: Line | None) -> int:
        """Tell the members `joined` (None: another session of the same account is here already,
        nobody new arrives), then take `peer` in as `name`, holding its live lines back until its
        history is sent; the last numbered id before it (what that history runs up to)."""
        ...

    def publish(self, lines: Sequence[Line]) -> None:
        """Numbered lines just kept in the room's log."""
        ...

    def rename(self, old: str, new: str, line: Line) -> None:
        """A member is called `new` now; `line` tells every member."""
        ...

    def notice(self, line: Line) -> None:
        """An unnumbered, unkept line for every member (a member's away changed)."""
        ...

    def leave(self, peer: P_contra, name: str, left: Line | None, sees_it: bool) -> None:
        """Take `peer` (`name`) out and tell the members `left` (None: another session of the same
        account stays, nobody leaves); `peer` sees it too if `sees_it` (a part)."""
        ...

    def present(self, names: list[str]) -> None:
        """Record again that these members are here (after the others took this server for dead)."""
        ...

    def empty(self) -> None:
        """The room's last member on this server left: nothing of it need reach this server now."""
        ...

    def rules_changed(self, removed: str | None = None, reason: str = "", upto: int = 0) -> None:
        """The room's roles, modes, bans or mutes changed: other servers read them again, and
        remove `removed` (kicked or banned, `reason`) once line `upto` reached them."""
        ...

    def users(self, here: list[str]) -> list[str]:
        """The members' names, sorted; `here` are those on this server."""
        ...

    def away(self, names: list[str], here: dict[str, str]) -> dict[str, str]:
        """Which of the members `names` are away and why; `here`: those on this server."""
        ...

    def topic(self, kept_here: str) -> str:
        """The room's topic; `kept_here` is the one it had when opened, or last set here."""
        ...

    def keep_topic(self, topic: str) -> None:
        """Keep a new topic: in this server's store, or where every server reads it (StorageFailed
        if it cannot)."""
        ...


class LocalFeed(Generic[P]):
    """A room whose members are all on this server: its lines go straight to the Delivery."""

    def __init__(self, delivery: Delivery[P], key: str, room_log: RoomLog, store: RoomStore, room: str) -> None:
        """The room `key` (called `room`), whose topic `store` keeps."""
        self._delivery = delivery
        self._key = key
        self._log = room_log
        self._store = store
        self._room = room

    def enter(self, peer: P, name: str, joined: Line | None) -> int:
        snapshot = self._log.last_id
        if joined is not None:
            self._delivery.publish(self._key, joined)
        self._delivery.subscribe(peer, self._key, held=True)
        return snapshot

    def publish(self, lines: Sequence[Line]) -> None:
        self._delivery.publish(self._key, *lines)

    def rename(self, old: str, new: str, line: Line) -> None:
        self._delivery.publish(self._key, line)

    def notice(self, line: Line) -> None:
        self._delivery.publish(self._key, line)

    def present(self, names: list[str]) -> None:
        """Nothing to record: the members are all here."""

    def empty(self) -> None:
        """Nothing to stop: the lines go nowhere when nobody subscribes."""

    def rules_changed(self, removed: str | None = None, reason: str = "", upto: int = 0) -> None:
        """Nobody else to tell: this room is this server's alone."""

    def users(self, here: list[str]) -> list[str]:
        return here

    def away(self, names: list[str], here: dict[str, str]) -> dict[str, str]:
        return here

    def topic(self, kept_here: str) -> str:
        return kept_here

    def keep_topic(self, topic: str) -> None:
        record = RoomRecord(self._key, self._room, topic)
        kept(self._store.save_room, record, failure="the server could not keep the topic", room=self._room)

    def leave(self, peer: P, name: str, left: Line | None, sees_it: bool) -> None:
        if sees_it and left is not None:
            self._delivery.publish(self._key, left)
            self._delivery.unsubscribe(peer, self._key)
        else:
            self._delivery.unsubscribe(peer, self._key)
            if left is not None:
                self._delivery.publish(self._key, left)


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
        feed: RoomFeed[P] | None = None,
        rules: Rules | None = None,
    ) -> None:
        """`feed`: how lines reach the members (default: straight to `delivery`); `rules`: where
        its roles, modes, bans and mutes are kept (default: `store`)."""
        self.key = record.key
        #: The key the session of a member lists this room under (Session.rooms); changed only
        #: under the room's lock, so that what a member's session says and who is in the room agree.
        self.listed_as = room_key(record.name)
        #: The room's name as first spelled; every line about the room carries it.
        self.name = record.name
        self._record = record
        self._log = room_log
        self._delivery = delivery
        self._feed: RoomFeed[P] = feed or LocalFeed(delivery, record.key, room_log, store, record.name)
        self._settings = settings or HistorySettings()
        self._lock = threading.Lock()
        self._members: dict[Session[P], str] = {}  # session -> the name it has here
        #: The same members indexed for a join: names sorted, sessions by identity (no walk over all).
        self._roster: _Roster[P] = _Roster()
        self._rules: Rules = rules or store
        #: Identity -> `owner` or `op`, as kept in the store.
        self._roles = self._rules.roles(record.key)
        #: The modes that are on: `topic`, `accounts`, `moderated`.
        self._modes = self._rules.modes(record.key)
        #: (target, kind) -> the ban or mute on it; expired ones are dropped when met.
        self._sanctions = {(s.target, s.kind): s for s in self._rules.sanctions(record.key)}
        #: Another server changed the rules: they are read again before they are next used.
        self._rules_stale = False
        #: Identities of the server's operators (set by the hub).
        self.admins: frozenset[str] = frozenset()
        self._stamper = Stamper()
        #: What members said that waits for the room's next write (see speak); its own short lock.
        self._said: list[_Said[P]] = []
        self._said_lock = threading.Lock()
        #: time.time() of the last thing that happened in the room (since this server opened it).
        self.active_at = time.time()
        #: Removed for having nobody, no owner account and no line for --room-expiry: joins go to a
        #: new room of the name.
        self.retired = False

    @property
    def last_id(self) -> int:
        """The id of the room's newest numbered line (0: none yet)."""
        return self._log.last_id

    @property
    def topic(self) -> str:
        return self._feed.topic(self._record.topic)

    def info(self) -> RoomInfo:
        with self._lock:
            here = sorted(set(self._members.values()))  # an account on several devices once
        return RoomInfo(room=self.name, users=len(self._feed.users(here)), topic=self.topic)

    def join(
        self,
        session: Session[P],
        name: str,
        since: int | None = None,
        identity: Identity | None = None,
        rooms: list[str] | None = None,
        read: int | None = None,
    ) -> None:
        """Welcome `session` as `name`, then history, then every later line of the room.

        With `since`, the history is what it missed after that id (preceded
        by a Gap if some of that is no longer kept); else the recent history.
        Only the membership change happens under the lock: the history is read
        and sent afterwards, while the member's live lines wait behind it.
        """
        with self._locked():
            if self.retired:
                raise Refused("no_such_room", f"{self.name} was just removed; join it again", self.name)
            if session in self._members:
                raise Refused("already_joined", f"you are already in {self.name}", self.name)
            self.active_at = time.time()
            ban = self._sanction_on(session, "ban")
            if ban is not None:
                self._hold_address_locked(session, ban)
                raise Refused("banned", f"you are banned from {self.name}{_ending(ban)}", self.name)
            guest = session.identity is None or session.identity.account is None
            if "accounts" in self._modes and guest and self.role_of(session) != "admin":
                raise Refused("account_required", f"{self.name} is for accounts only: register first", self.name)
            # A second device of an account that is here already: nobody new arrives.
            joined = None if self._twin_locked(session) else Line.of(Joined(room=self.name, name=name, time=utc_now()))
            snapshot = self._feed.enter(session.peer, name, joined)
            if joined is not None and session.away:  # who arrives away says so, as away-notify has it
                self._feed.notice(Line.of(Away(room=self.name, name=name, msg=session.away)))
            self._members[session] = name
            self._roster.add(session, name)
            session.rooms[self.listed_as] = None
            users = self._sorted_users()
            roles = self._roles_by_name()
            topic = self.topic
        log.info("%s joined %s as %s", session.label, quoted(self.name), quoted(name),
                 extra={"address": session.label, "room": self.name, "name_": name})
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
                roles=roles,
                modes=sorted(self._modes),
                epoch=self._log.epoch,
                rooms=rooms,
                read=read,
            )
            lead = [Line.of(welcome)]
            if span.gap is not None:
                first, last = span.gap
                detail = f"{last - first + 1} messages ({first} to {last}) are no longer kept"
                lead.append(Line.of(Gap(room=self.name, first=first, last=last, detail=detail)))
            self._delivery.send_held(peer, self.key, *lead)
            if failure is not None:
                self._delivery.send_held(peer, self.key, Line.refusal(failure))
            else:
                self._stream(peer, span, lambda lines: self._delivery.send_held(peer, self.key, *lines))
        finally:
            self._delivery.release_held(peer, self.key)

    def history(self, session: Session[P], before: int | None, limit: int) -> None:
        """Send `session` a page of older lines: a HistoryPage, then its lines, in chunks."""
        self._member(session)
        edge = before if before is not None else self._log.last_id + 1
        span = self._log.before(edge, limit)
        header = HistoryPage(room=self.name, before=edge, count=span.count, more=span.more)
        peer = session.peer
        self._delivery.send_to(peer, Line.of(header), room=self.key)
        self._stream(peer, span, lambda lines: self._delivery.send_to(peer, *lines, room=self.key))

    def newest_said(self) -> datetime | None:
        """When the newest message or action kept here was said (None: none is kept)."""
        newest = select(self._log, HistoryQuery(self.name, "latest", (), 1))
        stamp = getattr(newest[0].message, "time", None) if newest else None
        return stamp if isinstance(stamp, datetime) else None

    def history_query(self, session: Session[P], query: HistoryQuery) -> None:
        """Send `session` the lines a query by reference names (IRC's CHATHISTORY): a HistoryPage
        counting them, then the lines, oldest first."""
        self._member(session)
        lines = select(self._log, query)
        edge = lines[-1].id + 1 if lines else self._log.last_id + 1
        header = HistoryPage(room=self.name, before=edge, count=len(lines), more=0)
        peer = session.peer
        self._delivery.send_to(peer, Line.of(header), room=self.key)
        stream_chunks(self._delivery, peer, [lines], lambda piece: self._delivery.send_to(peer, *piece, room=self.key))

    def speak(self, session: Session[P], said: Sequence[tuple[Said, str, str | None]]) -> None:
        """Number, keep and publish what a member says (`message` or `action` lines), in the room's order.

        Group commit: what members say while the room writes waits in a
        queue, and whoever takes the room's lock next writes the whole queue
        in one store write and publishes it as one piece (its own lines among
        them, or already written by the one before). The cost of a message is
        mostly per write and per wake-up of the writer, not per byte. A line
        is kept before anyone sees it; if the write fails, every line in it is
        refused with storage_failed and nobody sees any of them.

        Each line may carry its sender's `cid`: kept with the line, it goes back in the
        sender's echo only; a line whose `(identity, cid)` was kept before is not kept
        again, and only its sender gets the kept line once more.
        """
        turn = _Said(session, said)
        with self._said_lock:
            self._said.append(turn)
        with self._locked():
            if not turn.taken:
                with self._said_lock:
                    queue, self._said = self._said, []
                self._write_said_locked(queue)
        if turn.failure is not None:
            raise turn.failure
        if not turn.written:  # taken by a write that failed before it said why: never told it was kept
            raise StorageFailed("storage_failed", _NOT_KEPT, self.name)

    def _write_said_locked(self, queue: list[_Said[P]]) -> None:
        for turn in queue:
            turn.taken = True
        stamp = self._stamper.now()
        builds: list[Callable[[int], Line]] = []
        speaking: list[_Said[P]] = []
        tags: list[Tag | None] = []
        # Lines sent with a cid: index in builds -> (sender's peer, cid); repeats: (peer, cid, kept line or index).
        echoes: dict[int, tuple[P, str]] = {}
        repeats: list[tuple[P, str, Line | int]] = []
        in_batch: dict[Tag, int] = {}
        try:
            wanted = [
                (turn.session.identity.id, cid)
                for turn in queue
                if turn.session.identity is not None
                for _, _, cid in turn.said
                if cid is not None
            ]
            kept = self._log.tagged_all(wanted) if wanted else {}  # one read for the whole batch
            for turn in queue:
                try:
                    name = self._speaker(turn.session)
                except RequestFailed as exc:
                    turn.failure = exc
                    continue
                identity = turn.session.identity.id if turn.session.identity is not None else None
                peer = turn.session.peer
                for kind, text, cid in turn.said:
                    tag = None if cid is None or identity is None else (identity, cid)
                    if tag is not None:
                        found: Line | int | None = in_batch.get(tag)
                        if found is None:
                            found = kept.get(tag)
                        if found is not None:
                            repeats.append((peer, tag[1], found))
                            continue
                        in_batch[tag] = len(builds)
                        echoes[len(builds)] = (peer, tag[1])
                        # Built with its echo: a log whose lines reach members through another
                        # way (Redis' reader) has the sender's echo go with it.
                        builds.append(functools.partial(_with_echo, kind, self.name, name, text, stamp, tag[1], peer))
                    else:  # its sender's peer still known: a dialect may write its own lines otherwise
                        builds.append(functools.partial(_with_echo, kind, self.name, name, text, stamp, None, peer))
                    tags.append(tag)
                speaking.append(turn)
            lines = self._log.append_all(builds, tags if echoes else ())
        except StorageFailed as exc:
            for turn in queue:
                if turn.failure is None:
                    turn.failure = exc
            return
        answers = [(peer, cid, lines[at] if isinstance(at, int) else at) for peer, cid, at in repeats]
        if echoes and any(isinstance(line, Repeat) for line in lines):
            # Kept meanwhile under the same cid by another server: answered, not published.
            answers += [(*echoes[index], line) for index, line in enumerate(lines) if isinstance(line, Repeat)]
            lines = [line for line in lines if not isinstance(line, Repeat)]
        if lines:
            self.active_at = time.time()
            self._feed.publish(lines)
        for peer, cid, line in answers:
            self._delivery.send_to(peer, line.with_cid(cid), room=self.key)
        for turn in speaking:
            turn.written = True

    def set_topic(self, session: Session[P], topic: str) -> None:
        """A numbered, kept topic line for every member; the room list shows the new topic."""
        with self._locked():
            name = self._speaker(session)
            if "topic" in self._modes and self.role_of(session) not in _OPERATORS:
                raise Refused("not_operator", f"only operators set the topic of {self.name}", self.name)
            record = RoomRecord(self.key, self.name, topic)
            self._feed.keep_topic(topic)
            line = self._log.append(
                lambda id: Line.of(Topic(room=self.name, topic=topic, name=name, id=id, time=utc_now()))
            )
            self._record = record
            self.active_at = time.time()
            self._feed.publish([line])

    def away_changed(self, session: Session[P], why: str) -> None:
        """A member went away (`why`) or came back (""): every member is told (IRC's away-notify)."""
        with self._locked():
            name = self._members.get(session)
            if name is not None:
                self._feed.notice(Line.of(Away(room=self.name, name=name, msg=why)))

    def rename(self, session: Session[P], old: str, new: str) -> None:
        with self._locked():
            old_here = self._members.get(session)
            if old_here is None:
                return
            self._members[session] = new
            self._roster.rename(old_here, new)
            self._feed.rename(old, new, Line.of(Renamed(room=self.name, old=old, new=new, time=utc_now())))

    def rules_changed(self) -> None:
        """Another server changed this room's rules: read them again before they are next used."""
        self._rules_stale = True

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The room's lock, with the rules as every server has them: whatever is done under it
        sees a mute, a ban or a mode another server set."""
        with self._lock:
            if self._rules_stale:
                self._read_rules_locked()
            yield

    def _read_rules_locked(self) -> None:
        self._rules_stale = False  # before reading: a change told meanwhile is read next time
        try:
            roles, modes = self._rules.roles(self.key), self._rules.modes(self.key)
            sanctions = self._rules.sanctions(self.key)
        except StoreError as exc:  # the rules as they were, until they can be read
            log.warning("could not read the rules of %s again: %s", quoted(self.name), exc)
            self._rules_stale = True
            return
        self._roles, self._modes = roles, modes
        self._sanctions = {(s.target, s.kind): s for s in sanctions}

    def retire(self, now: float, expiry: float) -> bool:
        """Mark the room removed if it has no member (on any server), no owner account and no line
        for `expiry` seconds; whether it did. Joins racing with it are refused, not lost."""
        with self._locked():
            if self.retired:
                return True
            if self._members or now - self.active_at < expiry or "owner" in self._roles.values():
                return False
            if self._feed.users([]):
                return False
            self.retired = True
            return True

    def enter_again(self) -> None:
        """Record this server's members again where other servers see them."""
        with self._locked():
            self._feed.present(list(self._members.values()))

    def who(self, session: Session[P]) -> None:
        with self._locked():
            away = {name: member.away for member, name in self._members.items() if member.away is not None}
            names = self._sorted_users()
            away = self._feed.away(names, away)
            users = Users(room=self.name, users=names, roles=self._roles_by_name(), away=away)
        self._delivery.send_to(session.peer, Line.of(users), room=self.key)

    def role_of(self, session: Session[P]) -> str | None:
        """`admin` (a server operator), `owner`, `op`, or None."""
        identity = session.identity.id if session.identity else None
        if identity in self.admins:
            return "admin"
        return self._roles.get(identity) if identity else None

    def make_owner(self, identity: str) -> None:
        """The account that created the room owns it."""
        with self._locked():
            self._save_role(identity, "owner")
            self._feed.rules_changed()

    def moderate(self, actor: Session[P], request: Moderate, target: Target[P]) -> Session[P] | None:
        """Do one moderation action; the member it removed from the room, if any.

        Refused with `not_operator`, `cannot_moderate` or `no_such_user`;
        nothing has happened then. The action is a numbered line of the room.
        """
        action = request.type
        with self._locked():
            by = self._members.get(actor) or actor.name or "?"
            role = self.role_of(actor)
            needed = ("owner", "admin") if action in ("op", "deop") else _OPERATORS
            if role not in needed:
                who = "its owner" if action in ("op", "deop") else "its operators"
                raise Refused("not_operator", f"only {who} may {action} in {self.name}", self.name)
            self._check_actor_locked(actor, role)
            target_role = self._roles.get(target.identity) if target.identity else None
            protected = target.identity in self.admins or (target_role == "owner" and role != "admin")
            if protected and action not in ("voice", "devoice"):
                raise Refused("cannot_moderate", f"{target.name} cannot be moderated in {self.name}", self.name)
            elsewhere: str | None = None
            reason = request.reason if isinstance(request, Kick | Ban | Mute) else ""
            duration = request.duration if isinstance(request, Ban | Mute) else None
            until = time.time() + duration if duration is not None else None
            removed: Session[P] | None = None
            twins: list[Session[P]] = []
            match action:
                case "kick" | "ban":
                    if action == "ban":
                        self._sanction(target, "ban", until, reason, by)
                    member = target.session if target.session in self._members else None
                    twins = [m for m in self._members if m is not member and target.identity is not None and
                             m.identity is not None and m.identity.id == target.identity]
                    member = member or (twins.pop() if twins else None)
                    if member is None:  # a member on another server (rooms shared through Redis)?
                        elsewhere = next(
                            (name for name in self._feed.users([]) if name_key(name) == name_key(target.name)), None
                        )
                    if member is None and elsewhere is None and action == "kick":
                        raise Refused("no_such_user", f"{target.name} is not in {self.name}", self.name)
                    removed = member
                case "mute":
                    self._sanction(target, "mute", until, reason, by)
                case "unban" | "unmute":
                    kind = "ban" if action == "unban" else "mute"
                    found = [key for key, s in self._sanctions.items() if key[1] == kind and s.name == target.name]
                    found += [(t, kind) for t in target.targets() if (t, kind) in self._sanctions]
                    if not found:
                        raise Refused("no_such_user", f"{target.name} is not {kind}ned in {self.name}", self.name)
                    for key in set(found):
                        self._sanctions.pop(key, None)
                        kept(self._rules.drop_sanction, self.key, *key, room=self.name)
                case "op" | "deop":
                    if target.identity is None or not target.identity.startswith("account:"):
                        raise Refused("cannot_moderate", f"{target.name} has no account; only accounts are operators")
                    self._save_role(target.identity, "op" if action == "op" else None)
                case "voice" | "devoice":
                    if target.identity is None:
                        raise Refused("no_such_user", f"nobody called {target.name} is here", self.name)
                    if target_role not in ("owner", "op"):  # an operator speaks anyway
                        self._save_role(target.identity, "voice" if action == "voice" else None)
            if action != "kick":  # every other action changes a rule: told before its line, so that
                self._feed.rules_changed()  # a server that shows the line already enforces it
            upto = self._record_locked(action, target.name, by, reason, until)
            if elsewhere is not None:
                self._feed.rules_changed(elsewhere, "kicked" if action == "kick" else "banned", upto)
            if removed is not None:
                for twin in twins:  # every device of the account goes
                    self._remove_locked(twin, "kicked" if action == "kick" else "banned")
                self._remove_locked(removed, "kicked" if action == "kick" else "banned")
        log.info("%s: %s %s %s in %s", actor.label, quoted(by), action, quoted(target.name), quoted(self.name))
        return removed

    def leave(self, session: Session[P], reason: LeaveReason, words: str | None = None) -> bool:
        """Forget `session` and tell the others (and, for a part, the one leaving), with its parting
        `words` if any; False if it was not here."""
        with self._locked():
            name = self._remove_locked(session, reason, words)
            if name is None:
                return False
        log.info("%s left %s as %s (%s)", session.label, quoted(self.name), quoted(name), reason,
                 extra={"address": session.label, "room": self.name, "name_": name, "reason": reason})
        return True

    # --- inside ------------------------------------------------------------------------

    def _welcome_span(self, since: int | None, snapshot: int) -> Span:
        if since is not None and since <= snapshot:
            return self._log.missed(since, snapshot, self._settings.replay_limit)
        # A plain join, or an id higher than any here (the room was reset): the recent
        # history, and no count of older lines (they are no news to a newcomer).
        return self._log.recent(snapshot, self._settings.recent)

    def _stream(self, peer: P, span: Span, send: Callable[[Sequence[Line]], None]) -> None:
        """Send the span's lines in pieces of about CHUNK_BYTES, each once the peer has taken most of the last."""
        stream_chunks(self._delivery, peer, self._log.lines(span, CHUNK_LINES), send)

    def set_modes(self, actor: Session[P], on: list[str], off: list[str]) -> None:
        """An operator turns modes on and off; a numbered line says which."""
        with self._locked():
            if self.role_of(actor) not in _OPERATORS:
                raise Refused("not_operator", f"only operators set the modes of {self.name}", self.name)
            self._check_actor_locked(actor, self.role_of(actor))
            changes = [(mode, True) for mode in on if mode not in self._modes]
            changes += [(mode, False) for mode in off if mode in self._modes and mode not in on]
            for mode, turned_on in changes:
                kept(self._rules.save_mode, self.key, mode, turned_on, room=self.name)
                (self._modes.add if turned_on else self._modes.discard)(mode)
            summary = " ".join(f"{'+' if turned_on else '-'}{mode}" for mode, turned_on in changes) or "no change"
            if changes:  # before the line, as in moderate
                self._feed.rules_changed()
            self._record_locked("mode", summary, self._members.get(actor) or actor.name or "?")

    def _remove_locked(self, session: Session[P], reason: LeaveReason, words: str | None = None) -> str | None:
        """Take `session` out and tell the others (a part is shown to the one leaving too), with its
        parting `words` (one line, MAX_REASON characters at most, as `parting_words` makes them); its name here."""
        name = self._members.pop(session, None)
        session.rooms.pop(self.listed_as, None)
        if name is None:
            return None
        self._roster.remove(session, name)
        # Another device of the account stays: nobody leaves (unless this one parts: it sees that).
        twin = self._twin_locked(session)
        left = None if twin and reason != "part" else Line.of(
            Left(room=self.name, name=name, reason=reason, msg=words, time=utc_now())
        )
        if twin and left is not None:  # the part is shown to the one parting alone
            self._delivery.send_to(session.peer, left, room=self.key)
            self._delivery.unsubscribe(session.peer, self.key)
            return name
        # The one who parts sees it too: that is its confirmation.
        self._feed.leave(session.peer, name, left, sees_it=reason == "part")
        if not self._members:
            self._feed.empty()
        return name

    def _record_locked(
        self, action: ModerationAction, name: str, by: str, reason: str = "", until: float | None = None
    ) -> int:
        """A moderation line, numbered and kept like a message, for every member; its id."""
        when = datetime.fromtimestamp(until, UTC) if until is not None else None
        line = self._log.append(
            lambda id: Line.of(
                Moderation(
                    room=self.name, id=id, action=action, name=name, by=by, reason=reason, until=when, time=utc_now()
                )
            )
        )
        self.active_at = time.time()
        self._feed.publish([line])
        return line.id

    def _speaker(self, session: Session[P]) -> str:
        """The member's name, if it may speak here (not muted; voiced if the room is moderated)."""
        name = self._member(session)
        mute = self._sanction_on(session, "mute")
        if mute is not None:
            raise Refused("muted", f"you are muted in {self.name}{_ending(mute)}", self.name)
        if "moderated" in self._modes and self.role_of(session) not in (*_OPERATORS, "voice"):
            raise Refused("muted", f"{self.name} is moderated: only operators and voiced members speak", self.name)
        return name

    def _sanction_on(self, session: Session[P], kind: str) -> Sanction | None:
        """The active ban or mute on the session's identity or, for a guest, its address."""
        now = time.time()
        for target in _targets_of(session):
            found = self._sanctions.get((target, kind))
            if found is None:
                continue
            if found.active(now):
                return found
            del self._sanctions[target, kind]  # expired: it goes by itself
            kept(self._rules.drop_sanction, self.key, found.target, found.kind, room=self.name)
        return None

    def _sanction(self, target: Target[P], kind: str, until: float | None, reason: str, by: str) -> None:
        """Keep a ban or mute on the target's identity and on every address it acts from (a ban of
        an account: the addresses its sessions use now; more are added as it tries them)."""
        held_on = target.targets() if kind == "ban" or not _is_account(target.identity) else [target.identity or ""]
        if not [on for on in held_on if on]:
            raise Refused("no_such_user", f"nobody called {target.name} can be {kind}ned here", self.name)
        for on in held_on:
            if on:
                sanction = Sanction(self.key, on, kind, target.name, until, reason, by)
                kept(self._rules.save_sanction, sanction, room=self.name)
                self._sanctions[on, kind] = sanction

    def _hold_address_locked(self, session: Session[P], sanction: Sanction) -> None:
        """A banned account tried from this address: the ban holds on it too, for its duration."""
        held_at = session.held_at
        if held_at is None or not _is_account(sanction.target) or (held_at, sanction.kind) in self._sanctions:
            return
        address_ban = Sanction(self.key, held_at, sanction.kind, sanction.name, sanction.until, sanction.reason,
                               sanction.by)
        try:
            self._rules.save_sanction(address_ban)
        except StoreError as exc:
            log.warning("could not hold a ban in %s on an address too: %s", quoted(self.name), exc)
            return
        self._sanctions[held_at, sanction.kind] = address_ban

    def _check_actor_locked(self, actor: Session[P], role: str | None) -> None:
        """An operator banned or muted here acts as nobody here: not even to lift its own sanction
        (from inside the room or out). Server operators cannot be sanctioned."""
        if role == "admin":
            return
        for kind, code in (("ban", "banned"), ("mute", "muted")):
            found = self._sanction_on(actor, kind)
            if found is not None:
                raise Refused(code, f"you are {kind}ned in {self.name}{_ending(found)}", self.name)

    def _save_role(self, identity: str, role: str | None) -> None:
        kept(self._rules.save_role, self.key, identity, role, room=self.name)
        if role is None:
            self._roles.pop(identity, None)
        else:
            self._roles[identity] = role

    def _roles_by_name(self) -> dict[str, str]:
        """The names of the members with a role (what role_of says of each), found through the
        identities that have one: a join into a big room walks its few roles, not its members."""
        roles: dict[str, str] = {}
        for identity in (*self._roles, *self.admins):
            for member in self._roster.of_identity(identity):
                role = self.role_of(member)
                name = self._members.get(member)
                if role is not None and name is not None:
                    roles[name] = role
        return roles

    def identity_changed(self, session: Session[P]) -> None:
        """`session` proved another identity while in the room (a guest registered): its role
        and its twins are looked up under the new one from now on."""
        with self._locked():
            if session in self._members:
                self._roster.reindex(session)

    def _member(self, session: Session[P]) -> str:
        name = self._members.get(session)
        if name is None:
            raise Refused("not_in_room", f"you are not in {self.name}; join it first", self.name)
        return name

    def _sorted_users(self) -> list[str]:
        """Every member's name (an account on several devices once), on this server or (shared
        rooms) any other."""
        return self._feed.users(self._roster.sorted_names())

    def _twin_locked(self, session: Session[P]) -> bool:
        """Whether another session of the same account is a member here."""
        identity = session.identity
        if identity is None or identity.account is None:
            return False
        return any(member is not session for member in self._roster.of_identity(identity.id))


class _Roster(Generic[P]):
    """A room's members indexed for the work a join does under the room's lock: their names
    sorted (an account on several devices once), kept sorted as members come and go, and the
    sessions of each identity, so that a join into a room of thousands walks none of them."""

    __slots__ = ("_by_identity", "_counts", "_indexed_as", "_names")

    def __init__(self) -> None:
        #: Each name once, sorted as `users` lists them (case-insensitively).
        self._names: list[str] = []
        #: How many member sessions have each name (an account's devices share one).
        self._counts: dict[str, int] = {}
        #: Identity -> its member sessions; and each member's identity as indexed.
        self._by_identity: dict[str, dict[Session[P], None]] = {}
        self._indexed_as: dict[Session[P], str | None] = {}

    def add(self, session: Session[P], name: str) -> None:
        self._add_name(name)
        self._index(session)

    def remove(self, session: Session[P], name: str) -> None:
        self._remove_name(name)
        self._unindex(session)

    def rename(self, old: str, new: str) -> None:
        self._remove_name(old)
        self._add_name(new)

    def reindex(self, session: Session[P]) -> None:
        """The session's identity changed: index it under the new one."""
        self._unindex(session)
        self._index(session)

    def sorted_names(self) -> list[str]:
        return list(self._names)

    def of_identity(self, identity: str | None) -> list[Session[P]]:
        """The member sessions that are `identity` now."""
        found = self._by_identity.get(identity) if identity is not None else None
        if not found:
            return []
        return [member for member in found if member.identity is not None and member.identity.id == identity]

    def _add_name(self, name: str) -> None:
        count = self._counts.get(name, 0)
        self._counts[name] = count + 1
        if not count:
            bisect.insort(self._names, name, key=str.casefold)

    def _remove_name(self, name: str) -> None:
        count = self._counts.get(name, 0)
        if count > 1:
            self._counts[name] = count - 1
            return
        self._counts.pop(name, None)
        key = name.casefold()
        at = bisect.bisect_left(self._names, key, key=str.casefold)
        while at < len(self._names) and self._names[at].casefold() == key:
            if self._names[at] == name:
                del self._names[at]
                return
            at += 1

    def _index(self, session: Session[P]) -> None:
        identity = session.identity.id if session.identity is not None else None
        self._indexed_as[session] = identity
        if identity is not None:
            self._by_identity.setdefault(identity, {})[session] = None

    def _unindex(self, session: Session[P]) -> None:
        identity = self._indexed_as.pop(session, None)
        if identity is None:
            return
        sessions = self._by_identity.get(identity)
        if sessions is not None:
            sessions.pop(session, None)
            if not sessions:
                del self._by_identity[identity]


@dataclass(frozen=True)
class Target(Generic[P]):
    """Whom a moderation action is about: a name, and what the hub found for it."""

    name: str
    #: The identity to hold it against (`account:...` or a guest's), if known.
    identity: str | None = None
    #: Where it acts from (`address:...`): bans of anybody and mutes of guests hold on it too.
    address: str | None = None
    #: The connection holding the name now, if any.
    session: Session[P] | None = None
    #: Whether the name is held on another server (rooms shared through Redis).
    elsewhere: bool = False
    #: More addresses it acts from (the other sessions of an account).
    addresses: tuple[str, ...] = ()

    def targets(self) -> list[str]:
        return list(dict.fromkeys(t for t in (self.identity, self.address, *self.addresses) if t))


Moderate = Kick | Ban | Unban | Mute | Unmute | Op | Deop | Voice
#: The roles that may moderate a room.
_OPERATORS = ("op", "owner", "admin")
#: The kinds of line a member says: a chat message, or a /me action.
Said = Literal["message", "action"]


def _with_echo(kind: Said, room: str, name: str, text: str, stamp: str, cid: str | None, peer: object,
               id: int) -> Line:
    """A said line, numbered `id`, sent by the peer `peer` (its echo carrying `cid`, if any)."""
    return Line.said(kind, room, name, text, stamp, id).echoed(cid, peer)


@dataclass
class _Said(Generic[P]):
    """Lines one member said together, waiting for the room's next write; then whether they were refused."""

    session: Session[P]
    said: Sequence[tuple[Said, str, str | None]]
    #: A member holding the room's lock has taken these lines to write...
    taken: bool = False
    #: ...and they were kept and published; or why not.
    written: bool = False
    failure: RequestFailed | None = None


_NOT_KEPT = "the server could not store your message, so nobody got it"


def _targets_of(session: Session[Any]) -> list[str]:
    if session.identity is None:  # not joined yet: only its address says who it is
        return [session.held_at] if session.held_at else []
    return session.identity.answerable(session.held_at)


def _is_account(identity: str | None) -> bool:
    return identity is not None and identity.startswith("account:")


def _ending(sanction: Sanction) -> str:
    reason = f": {sanction.reason}" if sanction.reason else ""
    if sanction.until is None:
        return reason
    return f" until {datetime.fromtimestamp(sanction.until, UTC).strftime('%Y-%m-%d %H:%M UTC')}{reason}"


def stream_chunks(
    delivery: Delivery[P], peer: P, chunks: Iterable[list[Line]], send: Callable[[Sequence[Line]], None]
) -> None:
    """Send lines read chunk by chunk in pieces of at most about CHUNK_BYTES (as JSON), never
    queueing a piece before the peer has taken most of the one before, so that a
    client reading as fast as it can always gets all of them."""
    piece: list[Line] = []
    size = 0
    for chunk in chunks:
        for line in chunk:
            piece.append(line)
            size += len(line.json)
            if size >= CHUNK_BYTES:
                if not delivery.wait_drained(peer, CHUNK_BYTES):
                    return  # the connection is closing: nobody to read the rest for
                send(piece)
                piece, size = [], 0
    if piece and delivery.wait_drained(peer, CHUNK_BYTES):
        send(piece)
