"""The Cluster seam: one contract, run against this server alone (LocalCluster) and against
several on a real Redis (RedisCluster), so that the hub may call either the same way; then
what only one of them does."""

from __future__ import annotations

import ast
import re
import threading
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chat.errors import StorageFailed
from chat.server.cluster import Cluster, LocalCluster
from chat.server.lines import Line, Repeat
from chat.server.session import Holder
from chat.server.store import MemoryStore, RoomRecord, Sanction
from chat.wire.protocol import Joined, PrivateMessage, utc_now

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """A Delivery and the ClusterEvents in one: what reached whom, and what the cluster told."""

    def __init__(self) -> None:
        self.published: dict[str, list[Line]] = {}
        self.subscribed: dict[str, set[Hashable]] = {}
        self.private: list[tuple[Line, str, str]] = []
        self.changed = threading.Condition()

    # Delivery
    def publish(self, room: str, *lines: Line) -> None:
        with self.changed:
            self.published.setdefault(room, []).extend(lines)
            self.changed.notify_all()

    def subscribe(self, peer: Hashable, room: str, held: bool = False) -> None:
        self.subscribed.setdefault(room, set()).add(peer)

    def unsubscribe(self, peer: Hashable, room: str) -> None:
        self.subscribed.get(room, set()).discard(peer)

    def send_held(self, peer: Hashable, room: str, *lines: Line) -> None: ...
    def release_held(self, peer: Hashable, room: str) -> None: ...
    def send_to(self, peer: Hashable, *lines: Line, room: str | None = None) -> None: ...
    def close(self, peer: Hashable, final: Line | None = None, reason: str | None = None) -> None: ...

    def wait_drained(self, peer: Hashable, below: int) -> bool:
        return True

    # ClusterEvents
    def private_line(self, line: Line, sender: str, recipient: str) -> None:
        with self.changed:
            self.private.append((line, sender, recipient))
            self.changed.notify_all()

    def taken_elsewhere(self, key: str, identity: str) -> None: ...
    def lease_lost(self) -> None: ...
    def disconnected_elsewhere(self, key: str, identity: str, why: str) -> None: ...
    def rules_changed(self, room: str, removed: str | None, reason: str, upto: int) -> None: ...


@pytest.fixture(params=["local", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def cluster(kind: str, recorder: Recorder, request: pytest.FixtureRequest) -> Iterator[Cluster[Any]]:
    """A started cluster of each kind, told to `recorder`; a Redis one on its own redis-server."""
    if kind == "local":
        local: LocalCluster[Hashable] = LocalCluster(recorder, MemoryStore())
        local.start(recorder)
        yield local
        return
    from chat.server.redis.cluster import RedisCluster

    redis_server = request.getfixturevalue("redis_server")
    shared: RedisCluster[Hashable] = RedisCluster(redis_server.url, recorder, 100, lease=3.0, renew_every=0.5)
    shared.mark_identity()
    shared.start(recorder)
    try:
        yield shared
    finally:
        shared.stop()


def _private(cluster: Cluster[Any], msg: str, sender: str = "account:alice", recipient: str = "account:bob") -> Line:
    def build(id: int) -> Line:
        return Line.of(PrivateMessage(id=id, name=sender, to=recipient, msg=msg, time=utc_now()))

    return cluster.send_private(build, sender, recipient)


# --- the contract: both kinds -----------------------------------------------------------------


def test_private_lines_are_numbered_in_one_sequence_and_reach_the_hub_in_that_order(cluster, recorder):
    lines = [_private(cluster, f"line {n}") for n in range(3)]
    assert [line.id for line in lines] == [1, 2, 3]
    cluster.settle_private(3)
    handed = [(line.json, sender, recipient) for line, sender, recipient in recorder.private]
    assert handed == [(line.json, "account:alice", "account:bob") for line in lines]


def test_a_private_line_sent_twice_with_one_cid_is_kept_and_handed_over_once(cluster, recorder):
    def build(id: int) -> Line:
        return Line.of(PrivateMessage(id=id, name="alice", to="bob", msg="psst", time=utc_now()))

    tag = ("account:alice", "p-1")
    first = cluster.send_private(build, "account:alice", "account:bob", tag)
    again = cluster.send_private(build, "account:alice", "account:bob", tag)  # as from a second connection
    assert not isinstance(first, Repeat) and isinstance(again, Repeat)
    assert again.json == first.json
    assert cluster.private_log.last_id == first.id == 1
    cluster.settle_private(1)
    assert [line.json for line, _, _ in recorder.private] == [first.json]


def test_an_inbox_opens_while_no_private_line_is_handed_over_and_learns_where_to_replay_up_to(cluster):
    _private(cluster, "before")
    cluster.settle_private(1)
    opened: list[bool] = []
    assert cluster.open_inbox(lambda: opened.append(True)) == 1
    assert opened == [True]


def test_the_private_log_replays_to_each_party_its_own_lines_only(cluster):
    _private(cluster, "to bob")
    _private(cluster, "to carol", recipient="account:carol")
    _private(cluster, "bob answers", "account:bob", "account:alice")
    private = cluster.private_log
    span = private.missed(0, 3, 10, "account:bob")
    said = [getattr(line.message, "msg", None) for chunk in private.lines(span, 10, "account:bob") for line in chunk]
    assert said == ["to bob", "bob answers"]


def test_a_room_added_is_found_by_its_key_and_listed(cluster):
    assert cluster.room("dev") is None
    record = RoomRecord("dev", "Dev")
    assert cluster.add_room(record) == record
    assert cluster.room("dev") == record
    assert record in cluster.rooms()


def test_a_room_is_kept_once_with_its_first_spelling(cluster):
    cluster.add_room(RoomRecord("dev", "Dev"))
    assert cluster.add_room(RoomRecord("dev", "DEV")).name == "Dev"
    assert [room.name for room in cluster.rooms() if room.key == "dev"] == ["Dev"]


def test_a_topic_kept_through_the_rooms_feed_is_its_topic_and_listed_with_it(cluster):
    record = cluster.add_room(RoomRecord("dev", "dev"))
    _, feed = cluster.open_room(record)
    feed.keep_topic("release friday")
    assert [room.topic for room in cluster.rooms() if room.key == "dev"] == ["release friday"]
    kept = cluster.room("dev")  # the room opened again (on another server, or after a restart)
    assert kept is not None
    _, again = cluster.open_room(kept)
    assert again.topic(kept.topic) == "release friday"


def test_a_room_log_numbers_lines_that_the_feed_delivers_to_members_here(cluster, recorder):
    record = cluster.add_room(RoomRecord("dev", "dev"))
    room_log, feed = cluster.open_room(record)
    joined = Line.of(Joined(room="dev", name="alice", time=utc_now()))
    assert feed.enter("alice-peer", "alice", joined) == 0
    assert "alice-peer" in recorder.subscribed["dev"]
    line = room_log.append(lambda id: Line.of(PrivateMessage(id=id, name="a", to="b", msg="hi", time=utc_now())))
    feed.publish([line])
    def delivered() -> bool:
        return line.json in [seen.json for seen in recorder.published.get("dev", [])]

    with recorder.changed:
        assert recorder.changed.wait_for(delivered, 5)
    assert room_log.last_id == line.id == 1


def test_rules_are_kept_where_every_server_reads_them(cluster):
    rules = cluster.rules
    rules.save_role("dev", "account:alice", "op")
    rules.save_mode("dev", "moderated", True)
    rules.save_sanction(Sanction("dev", "account:troll", "ban", "troll", None, "spam", "alice"))
    assert rules.roles("dev") == {"account:alice": "op"}
    assert rules.modes("dev") == {"moderated"}
    assert [s.target for s in rules.sanctions("dev")] == ["account:troll"]


# --- this server alone ------------------------------------------------------------------------


def test_a_local_cluster_has_nobody_elsewhere_to_ask_or_tell():
    recorder = Recorder()
    local: LocalCluster[Hashable] = LocalCluster(recorder, MemoryStore())
    local.start(recorder)
    holder = Holder("account:alice", "alice")
    local.claim_name({"alice"}, holder)  # never refused: the hub's own names are all there are
    local.claim_name({"alice"}, Holder("guest:x", "alice"))
    assert local.holder_of("alice") is None
    local.disconnect_elsewhere("alice", "account:alice", "bye")
    local.set_away({"alice"}, "account:alice", "lunch")
    local.release_name({"alice"}, "account:alice")


def test_a_local_cluster_hands_a_private_line_over_before_send_private_returns():
    recorder = Recorder()
    local: LocalCluster[Hashable] = LocalCluster(recorder, MemoryStore())
    local.start(recorder)
    line = _private(local, "at once")
    assert recorder.private == [(line, "account:alice", "account:bob")]  # the very line, handed on


def test_a_local_cluster_keeps_its_rooms_and_topics_in_its_store():
    store = MemoryStore()
    recorder = Recorder()
    local: LocalCluster[Hashable] = LocalCluster(recorder, store)
    _, feed = local.open_room(local.add_room(RoomRecord("dev", "dev")))
    feed.keep_topic("kept here")
    assert store.rooms() == [RoomRecord("dev", "dev", "kept here")]


def test_a_local_cluster_refuses_a_room_its_store_cannot_keep():
    class Broken(MemoryStore):
        def save_room(self, room: RoomRecord) -> None:
            from chat.server.store import StoreError

            raise StoreError("disk full")

    local: LocalCluster[Hashable] = LocalCluster(Recorder(), Broken())
    with pytest.raises(StorageFailed):
        local.add_room(RoomRecord("dev", "dev"))


# --- the Redis key schema -----------------------------------------------------------------------


def test_only_the_key_schema_module_spells_redis_key_names():
    """Every `chat:...` key is built by chat/server/redis/keys.py, so the schema is one page."""
    spelled: list[str] = []
    for path in (ROOT / "chat").rglob("*.py"):
        if path == ROOT / "chat" / "server" / "redis" / "keys.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.match(r"chat:[\w{]", node.value):
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert spelled == []


# --- what servers tell each other ---------------------------------------------------------------


def test_each_wake_command_reads_back_from_its_stream_fields_and_an_unknown_one_is_skipped():
    from chat.server.redis.commands import Close, Follow, RulesChanged, Stop, Taken, wake_command

    for command in (Stop(), Follow("dev"), Taken("alice", "account:alice"), Close("bob", "guest:x", "spam")):
        fields = {name.encode(): str(value).encode() for name, value in command.fields().items()}
        assert wake_command(fields) == command
    assert wake_command({b"something": b"new"}) is None
    change = RulesChanged("dev", "troll", "banned", 12)
    assert RulesChanged.of({name.encode(): str(value).encode() for name, value in change.fields().items()}) == change
    assert RulesChanged.of({b"room": b"dev", b"removed": b"", b"reason": b"", b"upto": b"0"}) == RulesChanged("dev")


def test_a_lease_renewed_no_more_often_than_it_lasts_is_refused():
    import redis

    from chat.server.redis.lease import Lease

    client = redis.Redis()  # never connects: nothing is sent before start()
    try:
        with pytest.raises(ValueError):
            Lease(client, "node", lambda node: [], lambda: None, lambda room, member: None, period=2, renew_every=2)
    finally:
        client.close()
