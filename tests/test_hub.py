"""The hub's and the rooms' rules, with a fake delivery that records who would get which line."""

from __future__ import annotations

import threading
from collections.abc import Hashable

import pytest

from chat.errors import RequestFailed
from chat.server.hub import Hub
from chat.server.lines import Line
from chat.server.room import HistorySettings
from chat.server.session import Session
from chat.server.store import MemoryStore, RoomRecord, StoreError
from chat.testing import TIMEOUT, scaled
from chat.wire.protocol import (
    Action,
    Ban,
    ChatMessage,
    ClassicMessage,
    ClientMessage,
    Gap,
    HistoryPage,
    HistoryRequest,
    Join,
    Joined,
    Leave,
    Left,
    ListRooms,
    Moderation,
    Nick,
    Op,
    Part,
    Ping,
    PrivateMessage,
    Register,
    Renamed,
    RoomInfo,
    RoomList,
    SendAction,
    SendMessage,
    SendPrivate,
    ServerMessage,
    ServerPong,
    SetTopic,
    Topic,
    Users,
    Welcome,
    Who,
)


class FakeDelivery:
    """Delivers at once, except what a held subscription collects until it is released: the
    lines' messages, as the hub and rooms made them (no bytes: encoding is the edge's business)."""

    def __init__(self) -> None:
        self.inboxes: dict[Hashable, list[ServerMessage]] = {}
        self.members: dict[str, set[Hashable]] = {}
        self.held: dict[tuple[Hashable, str], list[Line]] = {}
        self.closed: set[Hashable] = set()

    def publish(self, room: str, *lines: Line) -> None:
        for peer in self.members.get(room, set()):
            if (peer, room) in self.held:
                self.held[peer, room] += lines
            else:
                self._deliver(peer, *lines)

    def subscribe(self, peer: Hashable, room: str, held: bool = False) -> None:
        self.members.setdefault(room, set()).add(peer)
        if held:
            self.held[peer, room] = []

    def send_held(self, peer: Hashable, room: str, *lines: Line) -> None:
        self._deliver(peer, *lines)

    def release_held(self, peer: Hashable, room: str) -> None:
        self._deliver(peer, *self.held.pop((peer, room), []))

    def unsubscribe(self, peer: Hashable, room: str) -> None:
        self.members.get(room, set()).discard(peer)

    def send_to(self, peer: Hashable, *lines: Line, room: str | None = None) -> None:
        self._deliver(peer, *lines)

    def wait_drained(self, peer: Hashable, below: int) -> bool:
        return True

    def close(self, peer: Hashable, final: Line | None = None, reason: str | None = None) -> None:
        if final is not None:
            self._deliver(peer, final)
        self.closed.add(peer)

    def _deliver(self, peer: Hashable, *lines: Line) -> None:
        self.inboxes.setdefault(peer, []).extend(line.message for line in lines)

    def take(self, peer: Hashable) -> list[ServerMessage]:
        return self.inboxes.pop(peer, [])


class Harness:
    """A hub whose connections are named by strings: `h.send("alice", Join(name="alice"))`."""

    def __init__(self, store: MemoryStore | None = None, **settings: int) -> None:
        self.delivery = FakeDelivery()
        self.store = store or MemoryStore()
        self.hub: Hub[str] = Hub(self.delivery, self.store, HistorySettings(**settings))
        self.sessions: dict[str, Session[str]] = {}

    def session(self, peer: str) -> Session[str]:
        if peer not in self.sessions:
            self.sessions[peer] = self.hub.connect(peer, peer)
        return self.sessions[peer]

    def send(self, peer: str, message: ClientMessage | ClassicMessage) -> bool:
        return self.hub.receive(self.session(peer), message)

    def refused(self, peer: str, message: ClientMessage | ClassicMessage) -> RequestFailed:
        with pytest.raises(RequestFailed) as caught:
            self.send(peer, message)
        return caught.value

    def join(self, *names: str, room: str = "lobby") -> None:
        for name in names:
            session = self.session(name)
            self.send(name, Join(name=None if session.name else name, room=room))
        for name in names:
            self.take(name)

    def disconnect(self, peer: str, reason: str = "disconnected") -> None:
        self.hub.disconnect(self.sessions.pop(peer), reason)

    def take(self, peer: str) -> list[ServerMessage]:
        return self.delivery.take(peer)

    def users(self, room: str = "lobby") -> list[str]:
        self.send("observer", Who(room=room))
        [users] = self.take("observer")
        assert isinstance(users, Users)
        return users.users


@pytest.fixture
def h() -> Harness:
    return Harness(recent=3)


# --- one room, as before rooms ------------------------------------------------------------


def test_join_welcomes_with_name_users_and_room(h):
    h.join("bob")
    h.send("alice", Join(name="alice"))
    [welcome] = h.take("alice")
    assert welcome.model_copy(update={"token": None, "account": None}) == Welcome(
        room="lobby", name="alice", users=["alice", "bob"], history=0
    )
    [notice] = h.take("bob")
    assert isinstance(notice, Joined) and (notice.room, notice.name) == ("lobby", "alice")


def test_say_is_broadcast_to_every_member_sender_included_with_increasing_ids(h):
    h.join("alice", "bob")
    h.send("alice", SendMessage(msg="one"))
    h.send("bob", SendMessage(msg="two"))
    for peer in ("alice", "bob"):
        assert [(m.id, m.name, m.msg) for m in h.take(peer)] == [(1, "alice", "one"), (2, "bob", "two")]


def test_newcomer_gets_the_last_n_messages_in_order_after_the_welcome(h):
    h.join("alice")
    for text in ["1", "2", "3", "4", "5"]:
        h.send("alice", SendMessage(msg=text))
    h.send("carol", Join(name="carol"))
    welcome, *history = h.take("carol")
    assert welcome.history == 3
    assert [m.msg for m in history] == ["3", "4", "5"]


def test_taken_name_is_refused_whatever_its_case(h):
    h.join("alice")
    assert h.refused("other", Join(name="ALICE")).code == "name_taken"
    assert h.users() == ["alice"]


@pytest.mark.parametrize(
    "look_alike", ["\u0430lice", "\uff41lice", "a1ice", "aIice", "ALICE", "alic\u0065\u0301"[:-1]]
)
def test_a_look_alike_of_a_taken_name_is_refused_and_says_whose(h, look_alike):
    h.join("alice")
    refusal = h.refused("other", Join(name=look_alike))
    assert refusal.code == "name_taken"
    assert h.users() == ["alice"]


def test_renaming_to_a_look_alike_is_refused_but_the_old_name_is_freed_by_a_rename(h):
    h.join("alice", "bob")
    assert h.refused("bob", Nick(name="\u0430lice")).code == "name_taken"
    h.send("alice", Nick(name="carol"))
    h.send("bob", Nick(name="\u0430lice"))
    assert h.users() == ["carol", "\u0430lice"]


def test_look_alike_room_names_are_one_room(h):
    h.join("alice", room="dev1")
    h.send("bob", Join(name="bob", room="DEVl"))
    [welcome] = h.take("bob")
    assert (welcome.room, welcome.users) == ("dev1", ["alice", "bob"])


def test_a_room_kept_under_an_older_key_is_still_found(h):
    store = MemoryStore()
    store.save_room(RoomRecord("caf\u00e9", "Caf\u00e9"))
    hub = Harness(store=store)
    hub.join("alice", room="CAFE\u0301")
    hub.send("alice", SendMessage(room="caf\u00e9", msg="hi"))
    assert [m.room for m in hub.take("alice")] == ["Caf\u00e9"]


def test_joining_the_same_room_twice_is_refused(h):
    h.join("alice")
    error = h.refused("alice", Join(room="LOBBY"))
    assert (error.code, error.room) == ("already_joined", "lobby")


def test_a_later_join_under_another_name_is_refused(h):
    h.join("alice")
    assert h.refused("alice", Join(name="alice2", room="dev")).code == "already_joined"


def test_message_before_join_is_refused_and_reaches_nobody(h):
    h.join("bob")
    assert h.refused("stranger", SendMessage(msg="hi")).code == "not_joined"
    assert h.take("bob") == []


def test_classic_line_joins_the_lobby_with_its_name_then_speaks(h):
    h.join("bob")
    h.send("seed", ClassicMessage(name="alice", msg="hi"))
    h.send("seed", ClassicMessage(name="mallory", msg="still me"))
    said = [m for m in h.take("bob") if isinstance(m, ChatMessage)]
    assert [(m.room, m.name, m.msg) for m in said] == [("lobby", "alice", "hi"), ("lobby", "alice", "still me")]


def test_classic_line_without_name_before_join_is_refused(h):
    assert h.refused("seed", ClassicMessage(msg="hi")).code == "not_joined"


def test_action_shares_the_id_sequence_and_the_history(h):
    h.join("alice")
    h.send("alice", SendMessage(msg="hi"))
    h.send("alice", SendAction(msg="waves"))
    hi, wave = h.take("alice")
    assert isinstance(wave, Action) and (wave.id, wave.msg) == (hi.id + 1, "waves")


def test_private_message_reaches_only_target_and_sender(h):
    h.join("alice", "bob", "carol")
    h.send("alice", SendPrivate(to="BOB", msg="psst"))
    sent = h.delivery.inboxes["bob"][0]
    expected = [PrivateMessage(id=sent.id, name="alice", to="bob", msg="psst", time=sent.time)]
    assert h.take("bob") == expected
    assert h.take("alice") == expected
    assert h.take("carol") == []


def test_private_message_to_absent_user_is_an_error(h):
    h.join("alice")
    assert h.refused("alice", SendPrivate(to="ghost", msg="boo")).code == "no_such_user"


def test_rename_tells_everyone_and_frees_the_old_name(h):
    h.join("bob", "carol")
    h.send("bob", Nick(name="robert"))
    [notice] = h.take("carol")
    assert isinstance(notice, Renamed) and (notice.room, notice.old, notice.new) == ("lobby", "bob", "robert")
    h.send("bob", SendMessage(msg="hi"))
    assert h.take("carol")[0].name == "robert"
    h.send("newbob", Join(name="bob"))
    assert h.users() == ["bob", "carol", "robert"]


def test_rename_to_a_taken_name_is_refused(h):
    h.join("bob", "carol")
    assert h.refused("bob", Nick(name="Carol")).code == "name_taken"


def test_rename_may_change_only_the_case(h):
    h.join("bob")
    h.send("bob", Nick(name="Bob"))
    assert h.users() == ["Bob"]


def test_who_lists_a_rooms_users_to_the_asker_only(h):
    h.join("bob", "alice")
    h.send("alice", Who())
    assert h.take("alice") == [Users(room="lobby", users=["alice", "bob"])]
    assert h.take("bob") == []


def test_who_of_a_room_nobody_made_is_an_error(h):
    assert h.refused("alice", Who(room="nowhere")).code == "no_such_room"


def test_ping_gets_pong(h):
    h.send("anyone", Ping())
    assert h.take("anyone") == [ServerPong()]


def test_leave_ends_the_session_and_tells_the_others(h):
    h.join("alice", "bob")
    assert h.send("alice", Leave()) is False
    h.disconnect("alice", "quit")
    [notice] = h.take("bob")
    assert isinstance(notice, Left) and (notice.name, notice.reason) == ("alice", "quit")
    assert h.take("alice") == []
    assert h.users() == ["bob"]


# --- rooms ------------------------------------------------------------------------------


def test_rooms_are_isolated_and_number_their_messages_by_themselves(h):
    h.join("alice", "bob")
    h.join("alice", "carol", room="dev")
    h.send("alice", SendMessage(room="dev", msg="in dev"))
    h.send("bob", SendMessage(msg="in lobby"))
    h.send("carol", SendMessage(room="DEV", msg="dev again"))
    assert [(m.room, m.id, m.msg) for m in h.take("carol")] == [("dev", 1, "in dev"), ("dev", 2, "dev again")]
    assert [(m.room, m.id, m.msg) for m in h.take("bob")] == [("lobby", 1, "in lobby")]
    assert len(h.take("alice")) == 3


def test_saying_something_in_a_room_one_is_not_in_is_refused(h):
    h.join("alice")
    error = h.refused("alice", SendMessage(room="dev", msg="hi"))
    assert (error.code, error.room) == ("not_in_room", "dev")


def test_a_room_keeps_the_spelling_of_its_first_join(h):
    h.join("alice", room="Dev")
    h.send("bob", Join(name="bob", room="DEV"))
    [welcome] = h.take("bob")
    assert (welcome.room, welcome.users) == ("Dev", ["alice", "bob"])


def test_part_leaves_one_room_and_the_connection_stays(h):
    h.join("alice", "bob")
    h.join("alice", "bob", room="dev")
    h.send("alice", Part(room="dev"))
    for peer in ("alice", "bob"):
        [left] = h.take(peer)
        assert isinstance(left, Left) and (left.room, left.name, left.reason) == ("dev", "alice", "part")
    h.send("bob", SendMessage(room="dev", msg="gone?"))
    assert h.take("alice") == []
    h.take("bob")
    h.send("alice", SendMessage(msg="still here"))
    assert [m.msg for m in h.take("bob")] == ["still here"]


def test_parting_the_last_room_keeps_the_name_and_a_later_join_works(h):
    h.join("alice")
    h.send("alice", Part())
    assert h.users() == []
    assert h.refused("intruder", Join(name="Alice")).code == "name_taken"
    h.send("alice", Join(room="dev"))
    [welcome] = h.take("alice")[1:]
    assert (welcome.room, welcome.name) == ("dev", "alice")


def test_parting_a_room_one_is_not_in_is_refused(h):
    h.join("alice")
    assert h.refused("alice", Part(room="dev")).code == "not_in_room"


def test_rename_and_disconnect_are_shown_once_in_each_shared_room(h):
    h.join("alice", "bob")
    h.join("alice", "bob", room="dev")
    h.join("alice", room="solo")
    h.send("alice", Nick(name="alicia"))
    renames = h.take("bob")
    assert sorted((m.room, m.old, m.new) for m in renames) == [("dev", "alice", "alicia"), ("lobby", "alice", "alicia")]
    h.disconnect("alice")
    assert sorted((m.room, m.reason) for m in h.take("bob")) == [("dev", "disconnected"), ("lobby", "disconnected")]


def test_a_renamer_in_no_room_is_told(h):
    h.join("alice")
    h.send("alice", Part())
    h.take("alice")
    h.send("alice", Nick(name="alicia"))
    [renamed] = h.take("alice")
    assert isinstance(renamed, Renamed) and renamed.room is None and renamed.new == "alicia"


def test_topic_is_numbered_kept_and_shown_in_the_welcome_and_the_list(h):
    h.join("alice", room="dev")
    h.send("alice", SendMessage(room="dev", msg="hi"))
    h.send("alice", SetTopic(room="dev", topic="release friday"))
    _, topic = h.take("alice")
    assert isinstance(topic, Topic) and (topic.id, topic.topic, topic.name) == (2, "release friday", "alice")
    h.send("bob", Join(name="bob", room="dev"))
    welcome, *history = h.take("bob")
    assert welcome.topic == "release friday" and [m.id for m in history] == [1, 2]
    h.send("bob", ListRooms())
    assert h.take("bob") == [
        RoomList(
            rooms=[RoomInfo(room="dev", users=2, topic="release friday"), RoomInfo(room="lobby", users=0, topic="")]
        )
    ]


def test_rooms_and_topics_outlive_their_members_and_the_hub(h):
    h.join("alice", room="dev")
    h.send("alice", SetTopic(room="dev", topic="kept"))
    h.disconnect("alice")
    again = Harness(h.store)
    again.send("bob", ListRooms())
    [listing] = again.take("bob")
    assert RoomInfo(room="dev", users=0, topic="kept") in listing.rooms


# --- resume, gaps and paging (rooms over a store) -----------------------------------------


def talk(h: Harness, count: int, room: str = "lobby") -> None:
    h.join("talker", room=room)
    for i in range(1, count + 1):
        h.send("talker", SendMessage(room=room, msg=f"m{i}"))
    h.disconnect("talker", "quit")


def test_resume_replays_exactly_what_was_missed():
    h = Harness(recent=3)
    talk(h, 10)
    h.send("bob", Join(name="bob", since=6))
    welcome, *replay = h.take("bob")
    assert (welcome.history, welcome.more, welcome.last_id) == (4, 0, 10)
    assert [m.id for m in replay] == [7, 8, 9, 10]


def test_each_room_resumes_from_its_own_id():
    h = Harness()
    talk(h, 5)
    talk(h, 8, room="dev")
    h.send("bob", Join(name="bob", since=3))
    h.send("bob", Join(room="dev", since=6))
    lines = h.take("bob")
    assert [(m.room, getattr(m, "id", None)) for m in lines] == [
        ("lobby", None),
        ("lobby", 4),
        ("lobby", 5),
        ("dev", None),
        ("dev", 7),
        ("dev", 8),
    ]


def test_resume_past_the_replay_limit_says_how_many_more():
    h = Harness(replay_limit=5)
    talk(h, 12)
    h.send("bob", Join(name="bob", since=0))
    welcome, *replay = h.take("bob")
    assert (welcome.history, welcome.more) == (5, 7)
    assert [m.id for m in replay] == [8, 9, 10, 11, 12]


def test_a_replay_limit_of_0_replays_nothing_and_says_how_many_were_missed():
    h = Harness(replay_limit=0)
    talk(h, 12)
    h.send("bob", Join(name="bob", since=4))
    assert [(m.history, m.more) for m in h.take("bob")] == [(0, 8)]


def test_resume_from_before_what_is_kept_gets_a_gap_notice_first():
    h = Harness(MemoryStore(retention=4))
    talk(h, 10)
    h.send("bob", Join(name="bob", since=2))
    welcome, gap, *replay = h.take("bob")
    assert welcome.history == 4
    assert isinstance(gap, Gap) and (gap.room, gap.first, gap.last) == ("lobby", 3, 6)
    assert [m.id for m in replay] == [7, 8, 9, 10]


def test_resume_from_an_id_this_room_never_had_is_a_plain_join():
    h = Harness(recent=2)
    talk(h, 3)
    h.send("bob", Join(name="bob", since=500))
    welcome, *history = h.take("bob")
    assert welcome.last_id == 3 and [m.id for m in history] == [2, 3]


def test_private_messages_are_replayed_to_their_parties_only():
    h = Harness()
    h.join("alice", "bob")
    h.send("alice", SendPrivate(to="bob", msg="psst"))
    h.send("alice", SendPrivate(to="bob", msg="again"))
    [first, _] = h.take("bob")
    token = h.sessions["bob"].identity.token
    h.disconnect("bob")
    h.send("bob2", Join(name="bob", token=token, private_since=first.id))
    assert [type(m).__name__ for m in h.take("bob2")] == ["Welcome", "PrivateMessage"]
    h.send("carol", Join(name="carol", private_since=0))
    assert [type(m).__name__ for m in h.take("carol")] == ["Welcome"]


def test_private_messages_follow_the_identity_not_the_name():
    h = Harness()
    h.join("alice", "bob")
    h.send("bob", SendPrivate(to="alice", msg="for alice only"))
    alice_token = h.sessions["alice"].identity.token
    h.send("alice", Nick(name="alicia"))
    h.disconnect("alice")
    h.take("bob")
    # A stranger takes the old name and asks for every private line there is.
    h.send("mallory", Join(name="alice", private_since=0))
    assert [type(m).__name__ for m in h.take("mallory")] == ["Welcome"]
    h.send("mallory", SendPrivate(to="bob", msg="hi, it's me"))
    # The person comes back with her token, under her new name, and gets hers alone.
    h.send("alicia", Join(name="alicia", token=alice_token, private_since=0))
    [_, mine] = h.take("alicia")
    assert isinstance(mine, PrivateMessage) and mine.msg == "for alice only"


def test_a_plain_join_under_a_departed_name_does_not_see_its_private_messages():
    h = Harness()
    h.join("alice", "bob")
    h.send("alice", SendPrivate(to="bob", msg="psst"))
    h.disconnect("bob")
    h.send("bob2", Join(name="bob"))
    assert [type(m).__name__ for m in h.take("bob2")] == ["Welcome"]


def test_history_request_pages_back():
    h = Harness(recent=2)
    talk(h, 10)
    h.join("bob")
    h.send("bob", HistoryRequest(before=9, limit=3))
    header, *page = h.take("bob")
    assert header == HistoryPage(room="lobby", before=9, count=3, more=5)
    assert [m.id for m in page] == [6, 7, 8]


def test_history_of_a_room_one_is_not_in_is_refused():
    h = Harness()
    talk(h, 3, room="dev")
    h.join("bob")
    assert h.refused("bob", HistoryRequest(room="dev")).code == "not_in_room"


class BrokenStore(MemoryStore):
    def append_all(self, log, records):
        raise StoreError("database or disk is full")


def test_message_that_cannot_be_stored_reaches_nobody_and_says_why():
    h = Harness(BrokenStore())
    h.join("alice", "bob")
    error = h.refused("alice", SendMessage(msg="lost?"))
    assert (error.code, error.room) == ("storage_failed", "lobby")
    assert h.take("bob") == []


def test_a_join_sent_the_moment_a_ban_reaches_the_member_is_judged_after_the_ban():
    # The ban line reaches the member while the room is still taking them out; their join
    # must wait for that, not find the room still listed on their session (`already_joined`).
    h = Harness()
    h.join("alice", "bob")
    h.send("alice", Register(password="long enough password"))
    h.join("alice", "bob", room="den")
    answers: list[str] = []

    def join_again() -> None:
        try:
            h.send("bob", Join(room="den"))
            answers.append("welcome")
        except RequestFailed as exc:
            answers.append(exc.code)

    rejoin = threading.Thread(target=join_again)
    publish = h.delivery.publish

    def publish_then_rejoin(room: str, *lines: Line) -> None:
        publish(room, *lines)
        if any(isinstance(line.message, Moderation) for line in lines):
            rejoin.start()
            rejoin.join(scaled(0.2))  # a join judged too early is answered at once

    h.delivery.publish = publish_then_rejoin  # type: ignore[method-assign]
    h.send("alice", Ban(room="den", name="bob"))
    rejoin.join(TIMEOUT)
    assert answers == ["banned"]


# --- a room's member list, kept sorted as members come and go ------------------------------


def test_the_welcome_lists_every_name_once_sorted_as_members_join_rename_and_leave(h):
    h.join("carol", "Bob", "dave", "alice")
    h.send("dave", Nick(name="Aaron"))
    h.disconnect("carol")
    h.send("eve", Join(name="eve"))
    [welcome] = h.take("eve")
    assert isinstance(welcome, Welcome)
    assert welcome.users == ["Aaron", "alice", "Bob", "eve"]
    assert h.users() == ["Aaron", "alice", "Bob", "eve"]


def test_a_member_who_registers_in_a_room_is_one_member_with_its_next_device():
    h = Harness()
    h.join("alice", "bob")
    h.send("alice", Register(password="long enough password"))
    h.take("alice")
    h.send("phone", Join(name="alice", password="long enough password"))
    [welcome] = [m for m in h.take("phone") if isinstance(m, Welcome)]
    assert welcome.users == ["alice", "bob"]
    assert not [m for m in h.take("bob") if isinstance(m, Joined)]  # the same account: nobody new
    h.disconnect("alice")
    assert not [m for m in h.take("bob") if isinstance(m, Left)]  # its phone stays


def test_the_welcome_names_the_roles_of_the_members_who_have_one():
    h = Harness()
    h.join("alice")
    h.send("alice", Register(password="long enough password"))
    h.join("alice", room="den")  # an account's new room is its own
    h.join("bob", "carol", room="den")
    h.send("bob", Register(password="long enough password too"))
    h.send("alice", Op(room="den", name="bob"))
    h.send("dave", Join(name="dave", room="den"))
    [welcome] = [m for m in h.take("dave") if isinstance(m, Welcome)]  # history follows it
    assert welcome.roles == {"alice": "owner", "bob": "op"}
