"""The room's rules, with a fake delivery that records who would get which line."""

from __future__ import annotations

from collections.abc import Hashable

import pytest

from chat.errors import ProtocolError
from chat.server.room import Room
from chat.server.store import MemoryStore, StoreError
from chat.wire.codec import decode_server
from chat.wire.protocol import (
    Action,
    ChatMessage,
    ClassicMessage,
    Gap,
    HistoryPage,
    HistoryRequest,
    Join,
    Joined,
    Leave,
    Left,
    Nick,
    Ping,
    PrivateMessage,
    Renamed,
    SendAction,
    SendMessage,
    SendPrivate,
    ServerMessage,
    ServerPong,
    Users,
    Welcome,
    Who,
)


class FakeDelivery:
    """Delivers at once: each subscribed peer's inbox gets every published line."""

    def __init__(self) -> None:
        self.inboxes: dict[Hashable, list[ServerMessage]] = {}
        self.subscribed: set[Hashable] = set()

    def publish(self, line: bytes) -> None:
        for peer in self.subscribed:
            self._deliver(peer, line)

    def subscribe(self, peer: Hashable) -> None:
        self.subscribed.add(peer)

    def unsubscribe(self, peer: Hashable) -> None:
        self.subscribed.discard(peer)

    def send_to(self, peer: Hashable, line: bytes) -> None:
        self._deliver(peer, line)

    def _deliver(self, peer: Hashable, data: bytes) -> None:
        for line in data.splitlines(keepends=True):
            self.inboxes.setdefault(peer, []).append(decode_server(line))

    def take(self, peer: Hashable) -> list[ServerMessage]:
        return self.inboxes.pop(peer, [])


@pytest.fixture
def delivery() -> FakeDelivery:
    return FakeDelivery()


@pytest.fixture
def room(delivery: FakeDelivery) -> Room:
    return Room(delivery, history_size=3)


def joined(room: Room, delivery: FakeDelivery, *names: str) -> None:
    for name in names:
        room.receive(name, Join(name=name))
    for name in names:
        delivery.take(name)


def test_join_welcomes_with_name_and_users(room, delivery):
    joined(room, delivery, "bob")
    room.receive("alice", Join(name="alice"))
    [welcome] = delivery.take("alice")
    assert welcome == Welcome(name="alice", users=["alice", "bob"], history=0)
    [notice] = delivery.take("bob")
    assert isinstance(notice, Joined) and notice.name == "alice"


def test_say_is_broadcast_to_every_member_sender_included_with_increasing_ids(room, delivery):
    joined(room, delivery, "alice", "bob")
    room.receive("alice", SendMessage(msg="one"))
    room.receive("bob", SendMessage(msg="two"))
    for peer in ("alice", "bob"):
        messages = delivery.take(peer)
        assert [(m.id, m.name, m.msg) for m in messages] == [(1, "alice", "one"), (2, "bob", "two")]


def test_newcomer_gets_the_last_n_messages_in_order_after_the_welcome(room, delivery):
    joined(room, delivery, "alice")
    for text in ["1", "2", "3", "4", "5"]:
        room.receive("alice", SendMessage(msg=text))
    room.receive("carol", Join(name="carol"))
    welcome, *history = delivery.take("carol")
    assert welcome.history == 3
    assert [m.msg for m in history] == ["3", "4", "5"]


def test_taken_name_is_refused_whatever_its_case(room, delivery):
    joined(room, delivery, "alice")
    with pytest.raises(ProtocolError) as caught:
        room.receive("other", Join(name="ALICE"))
    assert caught.value.code == "name_taken"
    assert room.users() == ["alice"]


def test_second_join_is_refused(room, delivery):
    joined(room, delivery, "alice")
    with pytest.raises(ProtocolError) as caught:
        room.receive("alice", Join(name="alice2"))
    assert caught.value.code == "already_joined"


def test_message_before_join_is_refused_and_reaches_nobody(room, delivery):
    joined(room, delivery, "bob")
    with pytest.raises(ProtocolError) as caught:
        room.receive("stranger", SendMessage(msg="hi"))
    assert caught.value.code == "not_joined"
    assert delivery.take("bob") == []


def test_classic_line_joins_with_its_name_then_speaks(room, delivery):
    joined(room, delivery, "bob")
    room.receive("seed", ClassicMessage(name="alice", msg="hi"))
    room.receive("seed", ClassicMessage(name="mallory", msg="still me"))
    said = [m for m in delivery.take("bob") if isinstance(m, ChatMessage)]
    assert [(m.name, m.msg) for m in said] == [("alice", "hi"), ("alice", "still me")]


def test_classic_line_without_name_before_join_is_refused(room, delivery):
    with pytest.raises(ProtocolError) as caught:
        room.receive("seed", ClassicMessage(msg="hi"))
    assert caught.value.code == "not_joined"


def test_action_shares_the_id_sequence_and_the_history(room, delivery):
    joined(room, delivery, "alice")
    room.receive("alice", SendMessage(msg="hi"))
    room.receive("alice", SendAction(msg="waves"))
    hi, wave = delivery.take("alice")
    assert isinstance(wave, Action) and (wave.id, wave.msg) == (hi.id + 1, "waves")


def test_private_message_reaches_only_target_and_sender(room, delivery):
    joined(room, delivery, "alice", "bob", "carol")
    room.receive("alice", SendPrivate(to="BOB", msg="psst"))
    sent = delivery.inboxes["bob"][0]
    expected = [PrivateMessage(id=sent.id, name="alice", to="bob", msg="psst", time=sent.time)]
    assert delivery.take("bob") == expected
    assert delivery.take("alice") == expected
    assert delivery.take("carol") == []


def test_private_message_to_absent_user_is_an_error(room, delivery):
    joined(room, delivery, "alice")
    with pytest.raises(ProtocolError) as caught:
        room.receive("alice", SendPrivate(to="ghost", msg="boo"))
    assert caught.value.code == "no_such_user"


def test_rename_tells_everyone_and_frees_the_old_name(room, delivery):
    joined(room, delivery, "bob", "carol")
    room.receive("bob", Nick(name="robert"))
    [notice] = delivery.take("carol")
    assert isinstance(notice, Renamed) and (notice.old, notice.new) == ("bob", "robert")
    room.receive("bob", SendMessage(msg="hi"))
    assert delivery.take("carol")[0].name == "robert"
    room.receive("newbob", Join(name="bob"))
    assert room.users() == ["bob", "carol", "robert"]


def test_rename_to_a_taken_name_is_refused(room, delivery):
    joined(room, delivery, "bob", "carol")
    with pytest.raises(ProtocolError) as caught:
        room.receive("bob", Nick(name="Carol"))
    assert caught.value.code == "name_taken"


def test_rename_may_change_only_the_case(room, delivery):
    joined(room, delivery, "bob")
    room.receive("bob", Nick(name="Bob"))
    assert room.users() == ["Bob"]


def test_who_lists_users_to_the_asker_only(room, delivery):
    joined(room, delivery, "bob", "alice")
    room.receive("alice", Who())
    assert delivery.take("alice") == [Users(users=["alice", "bob"])]
    assert delivery.take("bob") == []


def test_ping_gets_pong(room, delivery):
    room.receive("anyone", Ping())
    assert delivery.take("anyone") == [ServerPong()]


def test_leave_ends_the_session_and_tells_the_others(room, delivery):
    joined(room, delivery, "alice", "bob")
    assert room.receive("alice", Leave()) is False
    room.leave("alice", "quit")
    [notice] = delivery.take("bob")
    assert isinstance(notice, Left) and (notice.name, notice.reason) == ("alice", "quit")
    assert delivery.take("alice") == []
    room.leave("alice", "quit")  # harmless twice
    assert room.users() == ["bob"]


# --- resume, gaps and paging (the room over a store) ------------------------------------


def talk(room: Room, delivery: FakeDelivery, count: int) -> None:
    joined(room, delivery, "talker")
    for i in range(1, count + 1):
        room.receive("talker", SendMessage(msg=f"m{i}"))
    room.leave("talker", "quit")


def test_resume_replays_exactly_what_was_missed(delivery):
    room = Room(delivery, MemoryStore(), history_size=3)
    talk(room, delivery, 10)
    room.receive("bob", Join(name="bob", since=6))
    welcome, *replay = delivery.take("bob")
    assert (welcome.history, welcome.more, welcome.last_id) == (4, 0, 10)
    assert [m.id for m in replay] == [7, 8, 9, 10]


def test_resume_past_the_replay_limit_says_how_many_more(delivery):
    room = Room(delivery, MemoryStore(), replay_limit=5)
    talk(room, delivery, 12)
    room.receive("bob", Join(name="bob", since=0))
    welcome, *replay = delivery.take("bob")
    assert (welcome.history, welcome.more) == (5, 7)
    assert [m.id for m in replay] == [8, 9, 10, 11, 12]


def test_resume_from_before_what_is_kept_gets_a_gap_notice_first(delivery):
    room = Room(delivery, MemoryStore(retention=4))
    talk(room, delivery, 10)
    room.receive("bob", Join(name="bob", since=2))
    welcome, gap, *replay = delivery.take("bob")
    assert welcome.history == 4
    assert isinstance(gap, Gap) and (gap.first, gap.last) == (3, 6)
    assert [m.id for m in replay] == [7, 8, 9, 10]


def test_resume_from_an_id_this_room_never_had_is_a_plain_join(delivery):
    room = Room(delivery, MemoryStore(), history_size=2)
    talk(room, delivery, 3)
    room.receive("bob", Join(name="bob", since=500))
    welcome, *history = delivery.take("bob")
    assert welcome.last_id == 3 and [m.id for m in history] == [2, 3]


def test_private_messages_are_replayed_to_their_parties_only(delivery):
    room = Room(delivery, MemoryStore())
    joined(room, delivery, "alice", "bob")
    room.receive("alice", SendPrivate(to="bob", msg="psst"))
    room.receive("alice", SendMessage(msg="public"))
    room.leave("bob", "quit")
    room.receive("bob2", Join(name="bob", since=0))
    assert [m.msg for m in delivery.take("bob2")[1:]] == ["psst", "public"]
    room.receive("carol", Join(name="carol", since=0))
    assert [m.msg for m in delivery.take("carol")[1:]] == ["public"]


def test_history_request_pages_back(delivery):
    room = Room(delivery, MemoryStore(), history_size=2)
    talk(room, delivery, 10)
    room.receive("bob", Join(name="bob"))
    delivery.take("bob")
    room.receive("bob", HistoryRequest(before=9, limit=3))
    header, *page = delivery.take("bob")
    assert header == HistoryPage(before=9, count=3, more=5)
    assert [m.id for m in page] == [6, 7, 8]


class BrokenStore(MemoryStore):
    def append(self, record):
        raise StoreError("database or disk is full")


def test_message_that_cannot_be_stored_reaches_nobody_and_says_why(delivery):
    room = Room(delivery, BrokenStore())
    joined(room, delivery, "alice", "bob")
    with pytest.raises(ProtocolError) as caught:
        room.receive("alice", SendMessage(msg="lost?"))
    assert caught.value.code == "storage_failed"
    assert delivery.take("bob") == []
