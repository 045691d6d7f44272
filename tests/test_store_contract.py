"""One contract per seam where things are kept, run against every implementation of it.

History: a RoomLog as LocalLog over a MemoryStore, LocalLog over an SqliteStore,
and RedisLog on a real redis-server. Rules (roles, modes, bans, mutes) and
AccountStore: MemoryStore, SqliteStore and their Redis counterparts. RoomStore:
the two local stores (several servers keep their room list in the directory).
Where two implementations may answer differently on purpose, the test says so;
where one answers wrongly today, it is marked xfail(strict) with the reason, so
that the fix makes the test fail until the mark goes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chat.errors import StorageFailed
from chat.server.history import HistoryQuery, first_at, select
from chat.server.lines import Line
from chat.server.log import LocalLog, RoomLog, Span
from chat.server.redis.cluster import RedisCluster  # the one import of the Redis-backed stores
from chat.server.store import (
    PRIVATE_LOG,
    AccountRecord,
    AccountStore,
    MemoryStore,
    RoomRecord,
    RoomStore,
    Rules,
    Sanction,
    SqliteStore,
    Store,
)
from chat.wire.protocol import ChatMessage, Topic

KINDS = ["memory", "sqlite", "redis"]
LOBBY = "lobby"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def said(text: str) -> Callable[[int], Line]:
    """How every test here builds a line: alice saying `text`, under whatever id the log gives it."""
    return lambda id: Line.of(ChatMessage(room=LOBBY, id=id, name="alice", msg=text, time=WHEN))


def seen(line: Line) -> tuple[int, str]:
    """A line a log gave back, as (its id, what was said), read from what is kept (its JSON)."""
    value = json.loads(line.json)
    return value["id"], value["msg"]


def on_redis(url: str, retention: int) -> RedisCluster[Any]:
    """The Redis-backed stores of one server (its logs, rules and accounts): the one place that
    knows how to make them. Not started: no reader runs, so nothing is delivered anywhere."""
    shared: RedisCluster[Any] = RedisCluster(url, delivery=None, retention=retention)
    shared.mark_identity()  # a new Redis, as a server's start marks it
    return shared


class Places:
    """The stores of one kind that a test opens, all closed at its end."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self._tmp_path = tmp_path
        self._request = request
        self._redis_url: str | None = None
        self._closing: list[Callable[[], None]] = []
        self.sqlite_paths: list[Path] = []

    def log(self, key: str = LOBBY, retention: int = 1000) -> RoomLog:
        """A log of its own (a private one for PRIVATE_LOG) keeping about `retention` lines."""
        room = None if key == PRIVATE_LOG else key
        if self.kind == "redis":
            shared = self._shared(retention)
            return shared.private_log if room is None else shared.open_room(RoomRecord(key, key))[0]
        return LocalLog(self.store(retention), key, room)

    def rules(self) -> Rules:
        return self._shared(1000).rules if self.kind == "redis" else self.store()

    def accounts(self) -> AccountStore:
        return self._shared(1000).accounts if self.kind == "redis" else self.store()

    def store(self, retention: int = 1000) -> Store:
        """A local store of its own (MemoryStore, or SqliteStore in a file of its own)."""
        made: Store
        if self.kind == "memory":
            made = MemoryStore(retention)
        elif self.kind == "sqlite":
            path = self._tmp_path / f"chat-{len(self.sqlite_paths)}.db"
            self.sqlite_paths.append(path)
            made = SqliteStore(str(path), retention)
        else:
            raise AssertionError(f"no local store of kind {self.kind}")
        self._closing.append(made.close)
        return made

    def break_storage(self) -> None:
        """Make every write from now on fail."""
        if self.kind == "sqlite":
            for path in self.sqlite_paths:
                os.remove(path)
        elif self.kind == "redis":
            self._request.getfixturevalue("redis_server").kill()
        else:
            pytest.skip("nothing makes a memory store fail")

    def close(self) -> None:
        for close in reversed(self._closing):
            close()

    def _shared(self, retention: int) -> RedisCluster[Any]:
        if self._redis_url is None:
            self._redis_url = self._request.getfixturevalue("redis_server").url
        shared = on_redis(self._redis_url, retention)
        self._closing.append(shared.stop)
        return shared


@pytest.fixture(params=KINDS)
def places(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Places]:
    made = Places(request.param, tmp_path, request)
    try:
        yield made
    finally:
        made.close()


def texts(log: RoomLog, span: Span, chunk: int = 100, viewer: str | None = None) -> list[str]:
    return [seen(line)[1] for lines in log.lines(span, chunk, viewer) for line in lines]


def ids(log: RoomLog, span: Span, chunk: int = 100, viewer: str | None = None) -> list[int]:
    return [seen(line)[0] for lines in log.lines(span, chunk, viewer) for line in lines]


def fill(log: RoomLog, count: int, batch: int = 50) -> None:
    """`count` lines saying "1", "2", ..., kept `batch` at a time."""
    start = log.last_id + 1
    for first in range(start, start + count, batch):
        log.append_all([said(str(n)) for n in range(first, min(first + batch, start + count))])


def redis_fails(reason: str) -> Callable[[Any], Any]:
    """Mark a history test as failing for RedisLog today, for `reason`."""

    def mark(test: Any) -> Any:
        test.redis_bug = reason
        return test

    return mark


@pytest.fixture(autouse=True)
def _known_redis_bugs(request: pytest.FixtureRequest) -> None:
    reason = getattr(request.function, "redis_bug", None)
    callspec = getattr(request.node, "callspec", None)
    if reason is not None and callspec is not None and callspec.params.get("places") == "redis":
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


# --- history: numbering and keeping -----------------------------------------------------


def test_a_new_log_has_no_lines_and_numbers_from_1_densely(places):
    log = places.log()
    assert log.last_id == 0
    assert log.recent(0, 10) == Span.empty()
    lines = [log.append(said(text)) for text in ("a", "b", "c")]
    assert [seen(line) for line in lines] == [(1, "a"), (2, "b"), (3, "c")]
    together = log.append_all([said("d"), said("e")])
    assert [seen(line) for line in together] == [(4, "d"), (5, "e")]
    assert log.last_id == 5
    assert [seen(line) for chunk in log.lines(log.recent(5, 10), 10) for line in chunk] == [
        (1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")
    ]  # fmt: skip


def test_a_line_kept_with_a_cid_is_found_by_its_identity_and_cid_alone(places):
    log, private = places.log(), places.log(PRIVATE_LOG)
    log.append(said("before"))
    kept = log.append_all([said("tagged"), said("plain")], [("guest:alice", "c-1"), None])
    line = log.tagged("guest:alice", "c-1")
    assert line is not None and line.json == kept[0].json
    assert log.tagged("guest:bob", "c-1") is None  # another identity's cid is its own
    assert log.tagged("guest:alice", "c-2") is None
    many = log.tagged_all([("guest:alice", "c-1"), ("guest:bob", "c-1"), ("guest:alice", "c-2")])
    assert {tag: line.json for tag, line in many.items()} == {("guest:alice", "c-1"): kept[0].json}
    whisper = private.append(said("psst"), sender="guest:alice", recipient="guest:bob", cid=("guest:alice", "p-1"))
    found = private.tagged("guest:alice", "p-1")
    assert found is not None and found.json == whisper.json


def test_a_cid_outlives_the_retention_of_its_line(places):
    log = places.log(retention=3)
    first = log.append(said("old"), cid=("guest:alice", "old"))
    fill(log, 600, batch=1)  # retention trims every so many appends, not at once
    assert log.recent(log.last_id, 10).first > 1
    found = log.tagged("guest:alice", "old")
    assert found is not None and found.json == first.json


def test_the_line_kept_is_the_line_returned(places):
    log = places.log()
    line = log.append(said("exactly this"))
    (kept,) = log.lines(log.recent(1, 1), 1)
    assert [each.json for each in kept] == [line.json]
    assert seen(line) == (1, "exactly this")


def test_an_empty_batch_keeps_nothing_and_uses_no_id(places):
    log = places.log()
    assert log.append_all([]) == []
    assert log.append(said("first")) and log.last_id == 1


def test_a_batch_whose_line_cannot_be_built_keeps_none_of_itself_and_uses_no_id(places):
    log = places.log()
    log.append(said("before"))

    def broken(id: int) -> Line:
        raise RuntimeError("cannot build this one")

    with pytest.raises(RuntimeError):
        log.append_all([said("kept?"), broken, said("kept too?")])
    assert log.last_id == 1
    assert seen(log.append(said("after"))) == (2, "after")
    assert texts(log, log.recent(2, 10)) == ["before", "after"]


def test_a_line_that_cannot_be_kept_is_refused_with_storage_failed(places):
    log = places.log()
    log.append(said("kept"))
    places.break_storage()
    with pytest.raises(StorageFailed) as refused:
        log.append_all([said("lost 1"), said("lost 2")])
    assert refused.value.code == "storage_failed"
    with pytest.raises(StorageFailed):
        log.append(said("lost 3"))


def test_logs_are_apart(places):
    lobby, dev = places.log("lobby"), places.log("dev")
    fill(lobby, 3)
    fill(dev, 2)
    assert (lobby.last_id, dev.last_id) == (3, 2)
    assert texts(dev, dev.recent(2, 10)) == ["1", "2"]


# --- history: spans ---------------------------------------------------------------------


def test_recent_is_the_newest_lines_up_to_a_point(places):
    log = places.log()
    fill(log, 10)
    assert log.recent(10, 4) == Span(7, 10, 4)
    assert log.recent(6, 4) == Span(3, 6, 4)
    assert log.recent(10, 100) == Span(1, 10, 10)
    assert log.recent(10, 0) == Span.empty()
    assert log.recent(0, 5) == Span.empty()
    assert texts(log, log.recent(6, 4)) == ["3", "4", "5", "6"]


def test_missed_is_the_newest_lines_after_a_point_and_says_how_many_more(places):
    log = places.log()
    fill(log, 10)
    assert log.missed(4, 10, 3) == Span(8, 10, 3, more=3)
    assert log.missed(4, 10, 100) == Span(5, 10, 6)
    assert log.missed(4, 8, 100) == Span(5, 8, 4)
    assert texts(log, log.missed(4, 10, 3)) == ["8", "9", "10"]
    assert log.missed(10, 10, 5) == Span.empty()
    assert log.missed(12, 10, 5) == Span.empty()


def test_a_resume_with_a_limit_of_0_sends_no_line(places):
    # --replay-limit 0: LocalLog used to replay every kept line after `since` instead.
    log = places.log()
    fill(log, 10)
    span = log.missed(4, 10, 0)
    assert span.count == 0 and texts(log, span) == []


def test_a_resume_with_a_limit_of_0_is_told_how_many_lines_it_left_out(places):
    log = places.log()
    fill(log, 10)
    assert log.missed(4, 10, 0).more == 6


def test_before_is_the_newest_lines_older_than_an_edge(places):
    log = places.log()
    fill(log, 10)
    assert log.before(6, 3) == Span(3, 5, 3, more=2)
    assert log.before(4, 10) == Span(1, 3, 3)
    assert log.before(100, 3) == Span(8, 10, 3, more=7)  # the edge is past the last line
    assert log.before(1, 3) == Span.empty()
    assert texts(log, log.before(6, 3)) == ["3", "4", "5"]


def test_lines_come_oldest_first_and_whole_however_they_are_chunked(places):
    log = places.log()
    fill(log, 10)
    for chunk in (1, 3, 10, 50):
        assert ids(log, log.recent(10, 10), chunk) == list(range(1, 11))
        assert ids(log, log.missed(2, 9, 5), chunk) == [5, 6, 7, 8, 9]


def test_lines_come_in_lists_of_at_most_chunk_lines(places):
    log = places.log()
    fill(log, 10)
    assert [len(lines) for lines in log.lines(log.recent(10, 10), 3)] == [3, 3, 3, 1]


def test_retention_drops_the_oldest_and_a_resume_from_before_them_is_told_the_gap(places):
    # How many lines beyond its retention a log keeps is its own business (SQLite deletes every
    # TRIM_EVERY appends, Redis whole stream nodes); that the oldest go, and that what is kept
    # and what is gone agree, is the contract.
    log = places.log(retention=5)
    fill(log, 600)
    kept = log.recent(600, 10_000)
    oldest = kept.first
    assert 1 < oldest <= 596 and kept == Span(oldest, 600, 600 - oldest + 1)
    assert ids(log, kept, 64) == list(range(oldest, 601))
    assert log.missed(0, 600, 3) == Span(598, 600, 3, more=598 - oldest, gap=(1, oldest - 1))
    assert log.missed(oldest - 1, 600, 3).gap is None
    assert log.before(oldest + 2, 10) == Span(oldest, oldest + 1, 2)
    assert log.before(oldest, 10) == Span.empty()
    assert log.recent(oldest - 1, 10) == Span.empty()


# --- history: the private log -----------------------------------------------------------


PRIVATE = [  # (sender, recipient, what)
    ("alice", "bob", "a to b"),
    ("alice", "carol", "a to c"),
    ("bob", "alice", "b to a"),
    ("carol", "dave", "c to d"),
    ("alice", "bob", "a to b again"),
]


@pytest.fixture
def private(places) -> RoomLog:
    log = places.log(PRIVATE_LOG)
    for sender, recipient, text in PRIVATE:
        log.append(said(text), sender=sender, recipient=recipient)
    return log


# A viewer's span promises its count and its lines (what the hub's private replay sends); its
# first and last may be the viewer's own lines' or the bounds asked for, and it says nothing
# of `more` or of a gap (LocalLog works one out, RedisLog does not; the replay uses neither).


@pytest.mark.parametrize(
    ("viewer", "since", "limit", "expected"),
    [
        ("bob", 0, 10, ["a to b", "b to a", "a to b again"]),
        ("alice", 0, 10, ["a to b", "a to c", "b to a", "a to b again"]),
        ("dave", 0, 10, ["c to d"]),
        ("bob", 0, 2, ["b to a", "a to b again"]),
        ("bob", 3, 10, ["a to b again"]),
        ("bob", 0, 0, []),
        ("eve", 0, 10, []),
        (None, 0, 10, [text for _, _, text in PRIVATE]),
    ],
)
def test_a_viewer_misses_only_its_own_private_lines(private, viewer, since, limit, expected):
    span = private.missed(since, 5, limit, viewer)
    assert span.count == len(expected)
    assert texts(private, span, viewer=viewer) == expected
    assert texts(private, span, chunk=1, viewer=viewer) == expected


def test_private_lines_are_numbered_in_one_sequence(private):
    assert private.last_id == len(PRIVATE)
    assert seen(private.append(said("more"), sender="eve", recipient="bob")) == (6, "more")


def test_recent_and_before_count_only_the_viewers_lines(private):
    assert private.recent(5, 10, "bob").count == 3
    assert private.recent(5, 2, "bob").count == 2
    assert private.before(5, 10, "bob").count == 2
    assert texts(private, private.recent(5, 2, "bob"), viewer="bob") == ["b to a", "a to b again"]


# --- rules --------------------------------------------------------------------------------


SERVER_SCOPE = "\0server"  # the hub's: rules of the server itself live under a name no room has


def ban(room: str, target: str, *, kind: str = "ban", until: float | None = None, reason: str = "spam") -> Sanction:
    return Sanction(room, target, kind, target.partition(":")[2], until, reason, "account:op")


def in_order(sanctions: list[Sanction]) -> list[Sanction]:
    return sorted(sanctions, key=lambda s: (s.room, s.target, s.kind))


def test_roles_are_given_changed_and_taken_away_room_by_room(places):
    rules = places.rules()
    assert rules.roles("lobby") == {}
    rules.save_role("lobby", "account:alice", "owner")
    rules.save_role("lobby", "account:bob", "op")
    rules.save_role("dev", "account:bob", "owner")
    rules.save_role("lobby", "account:bob", "owner")
    assert rules.roles("lobby") == {"account:alice": "owner", "account:bob": "owner"}
    rules.save_role("lobby", "account:alice", None)
    rules.save_role("lobby", "account:nobody", None)
    assert rules.roles("lobby") == {"account:bob": "owner"}
    assert rules.roles("dev") == {"account:bob": "owner"}


def test_modes_go_on_and_off_room_by_room(places):
    rules = places.rules()
    assert rules.modes("lobby") == set()
    rules.save_mode("lobby", "moderated", True)
    rules.save_mode("lobby", "moderated", True)
    rules.save_mode("lobby", "invite", True)
    rules.save_mode(SERVER_SCOPE, "lockdown", True)
    rules.save_mode("lobby", "invite", False)
    rules.save_mode("lobby", "never-on", False)
    assert rules.modes("lobby") == {"moderated"}
    assert rules.modes(SERVER_SCOPE) == {"lockdown"}


def test_a_sanction_is_kept_whole_replaced_by_its_kind_and_lifted(places):
    rules = places.rules()
    assert rules.sanctions("lobby") == []
    forever = ban("lobby", "account:mallory")
    muted = ban("lobby", "account:mallory", kind="mute", until=1_900_000_000.25, reason="shouting")
    guest = ban("lobby", "address:192.0.2.7", until=1_800_000_000.5)
    for sanction in (forever, muted, guest, ban(SERVER_SCOPE, "account:mallory")):
        rules.save_sanction(sanction)
    assert in_order(rules.sanctions("lobby")) == in_order([forever, muted, guest])
    longer = ban("lobby", "account:mallory", until=2_000_000_000.0, reason="again")
    rules.save_sanction(longer)
    assert in_order(rules.sanctions("lobby")) == in_order([longer, muted, guest])
    rules.drop_sanction("lobby", "account:mallory", "ban")
    rules.drop_sanction("lobby", "account:nobody", "ban")
    assert in_order(rules.sanctions("lobby")) == in_order([muted, guest])
    assert rules.sanctions(SERVER_SCOPE) == [ban(SERVER_SCOPE, "account:mallory")]


# --- accounts -----------------------------------------------------------------------------


def test_an_account_is_kept_and_a_new_password_changes_only_its_hash(places):
    accounts = places.accounts()
    assert accounts.account("alice") is None
    accounts.save_account(AccountRecord("alice", "Alice", "hash-1", 1_700_000_000.5))
    assert accounts.account("alice") == AccountRecord("alice", "Alice", "hash-1", 1_700_000_000.5)
    accounts.save_account(AccountRecord("alice", "ALICE", "hash-2"))  # what a password change saves
    assert accounts.account("alice") == AccountRecord("alice", "Alice", "hash-2", 1_700_000_000.5)


def test_an_account_saved_without_a_creation_time_gets_one(places):
    accounts = places.accounts()
    before = time.time()
    accounts.save_account(AccountRecord("bob", "bob", "hash"))
    found = accounts.account("bob")
    assert found is not None and before <= found.created_at <= time.time()


def test_sessions_are_kept_moved_and_revoked_by_identity(places):
    accounts = places.accounts()
    later = time.time() + 3600.25
    assert accounts.session("t1") is None
    accounts.save_session("t1", "account:alice", later)
    accounts.save_session("t2", "account:alice", later)
    accounts.save_session("t3", "guest:xyz", later)
    assert accounts.session("t1") == ("account:alice", later)
    accounts.save_session("t1", "account:alice", later + 60)
    assert accounts.session("t1") == ("account:alice", later + 60)
    accounts.drop_sessions("account:alice")
    assert (accounts.session("t1"), accounts.session("t2")) == (None, None)
    assert accounts.session("t3") == ("guest:xyz", later)


def test_accounts_are_listed_and_a_deleted_one_takes_its_tokens_rooms_and_markers(places):
    accounts = places.accounts()
    later = time.time() + 3600
    accounts.save_account(AccountRecord("bob", "Bob", "hash", 1.0))
    accounts.save_account(AccountRecord("alice", "alice", "hash", 2.0))
    assert [record.name for record in accounts.accounts()] == ["alice", "Bob"]
    accounts.save_session("t1", "account:bob", later)
    accounts.save_account_room("account:bob", "Dev", True)
    accounts.save_read_marker("account:bob", "Dev", 7)
    accounts.drop_account("bob")
    assert accounts.account("bob") is None and [r.name for r in accounts.accounts()] == ["alice"]
    assert accounts.session("t1") is None
    assert accounts.account_rooms("account:bob") == [] and accounts.read_markers("account:bob") == {}


def test_an_accounts_rooms_are_kept_in_the_order_joined_and_markers_only_go_forward(places):
    accounts = places.accounts()
    for room in ("lobby", "Dev", "ops"):
        accounts.save_account_room("account:alice", room, True)
    accounts.save_account_room("account:alice", "lobby", True)
    accounts.save_account_room("account:alice", "ops", False)
    assert accounts.account_rooms("account:alice") == ["lobby", "Dev"]
    assert accounts.account_rooms("account:bob") == []
    assert accounts.save_read_marker("account:alice", "Dev", 10) is True
    assert accounts.save_read_marker("account:alice", "Dev", 4) is False
    assert accounts.read_markers("account:alice") == {"Dev": 10}


# --- rooms (the two local stores: several servers list their rooms in the directory) -------


@pytest.fixture(params=["memory", "sqlite"])
def room_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RoomStore]:
    made = Places(request.param, tmp_path, request)
    try:
        yield made.store()
    finally:
        made.close()


def test_a_room_keeps_its_first_spelling_and_its_latest_topic(room_store):
    assert room_store.rooms() == []
    room_store.save_room(RoomRecord("dev", "Dev"))
    room_store.save_room(RoomRecord("lobby", "lobby", "welcome"))
    room_store.save_room(RoomRecord("dev", "DEV", "shipping"))
    assert sorted(room_store.rooms(), key=lambda room: room.key) == [
        RoomRecord("dev", "Dev", "shipping"), RoomRecord("lobby", "lobby", "welcome")
    ]  # fmt: skip


def test_a_room_keeps_its_creator_and_a_dropped_room_takes_its_rules_and_lines(room_store):
    store: Any = room_store  # a whole local store: its rules and lines go with the room
    store.save_room(RoomRecord("dev", "Dev", "", "account:alice"))
    store.save_room(RoomRecord("dev", "Dev", "a topic"))  # a topic change keeps the creator
    assert store.rooms() == [RoomRecord("dev", "Dev", "a topic", "account:alice")]
    log = LocalLog(store, "dev", "Dev")
    fill(log, 3)
    store.save_role("dev", "account:alice", "owner")
    store.save_mode("dev", "topic", True)
    store.drop_room("dev")
    assert store.rooms() == [] and store.roles("dev") == {} and store.modes("dev") == set()
    assert store.read("dev", 0, 10, 10) == []
    assert LocalLog(store, "dev", "Dev").append(said("next")).id == 4  # ids are never used again


def test_a_query_by_reference_reads_the_same_lines_from_every_log(places):
    log = places.log()
    start = datetime(2026, 1, 2, 3, 0, 0, tzinfo=UTC)
    stamps = [start + timedelta(milliseconds=20 * n) for n in range(10)]
    for n, stamp in enumerate(stamps):
        log.append(lambda id, n=n, stamp=stamp: Line.of(
            ChatMessage(room=LOBBY, id=id, name="alice", msg=str(n), time=stamp)))
        if n == 4:  # a topic among the messages: not one of the kinds asked for
            log.append(lambda id: Line.of(Topic(room=LOBBY, id=id, name="alice", topic="t", time=stamps[4])))
    ids_of = {n: n + 1 if n <= 4 else n + 2 for n in range(10)}  # message n's id (the topic took 6)

    def asked(kind: str, *refs: int | datetime, limit: int = 20) -> list[str]:
        return [seen(line)[1] for line in select(log, HistoryQuery(LOBBY, kind, refs, limit))]  # type: ignore[arg-type]

    every = [str(n) for n in range(10)]
    assert asked("latest") == every and asked("latest", limit=3) == every[-3:]
    assert asked("latest", ids_of[4]) == every[5:] and asked("latest", stamps[4]) == every[5:]
    assert asked("before", ids_of[6]) == every[:6] and asked("before", stamps[6], limit=2) == every[4:6]
    assert asked("after", ids_of[3]) == every[4:] and asked("after", stamps[3], limit=3) == every[4:7]
    assert asked("around", ids_of[7], limit=1) == ["7"] and asked("around", ids_of[7], limit=3) == every[6:9]
    assert "7" in asked("around", stamps[7], limit=3)
    for one, other in ((ids_of[0], ids_of[9]), (stamps[0], stamps[9])):
        assert asked("between", one, other) == every[1:-1] == asked("between", other, one)
        assert asked("between", one, other, limit=3) == every[1:4]
        assert asked("between", other, one, limit=3) == every[-4:-1]
    assert asked("after", ids_of[9]) == [] and asked("before", 1) == []
    assert first_at(log, stamps[9] + timedelta(seconds=1)) == log.last_id + 1
