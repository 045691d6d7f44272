"""Several servers sharing rooms through a real Redis: one order, one history, whichever server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
from typing import Any

import pytest
import redis

from chat.client.connection import ChatClient
from chat.server.config import ServerConfig
from chat.server.lines import Line
from chat.server.redis.log import PLACEHOLDER_ID, Logs
from chat.testing import TIMEOUT, LineClient, talk_at_once
from chat.testing_irc import IrcClient
from chat.wire.protocol import (
    Away,
    ChatMessage,
    ErrorReply,
    Gap,
    Joined,
    Left,
    Moderation,
    PrivateMessage,
    ReadMarker,
    Renamed,
    Reset,
    RoomList,
    SendMessage,
    ServerNotice,
    SessionToken,
    Topic,
    Users,
    Welcome,
)

#: A lease short enough for a test to wait for it to run out (the default is 10 s), still long
#: enough that a busy machine renews it in time.
SHORT_LEASE = 3.0


@pytest.fixture
def nodes(redis_server, start_chat_server):  # servers stop before their Redis does
    """`nodes(n)`: n servers on one Redis, each with its own (in-memory) local store."""

    def start(count: int = 2, **settings):
        config = ServerConfig(redis=redis_server.url, **settings)
        return [start_chat_server(config) for _ in range(count)]

    return start


def _people(connect, servers) -> list[LineClient]:
    """alice, bob and carol, one on each server, joined in that order."""
    people = [connect(server) for server in servers]
    for person, name in zip(people, ("alice", "bob", "carol"), strict=False):
        person.join(name)
    return people


def test_a_message_said_on_one_server_reaches_members_on_the_others(nodes, connect):
    alice, bob, carol = _people(connect, nodes(3))
    alice.expect(Joined, name="bob")  # notices cross servers too
    alice.say("hello from a")
    got = [client.expect(ChatMessage, msg="hello from a") for client in (alice, bob, carol)]
    assert {message.id for message in got} == {got[0].id} and got[0].name == "alice"
    carol.say("and from c")
    assert alice.expect(ChatMessage, msg="and from c").id == got[0].id + 1


def test_a_newcomer_on_another_server_gets_the_history_and_a_resume_there_gets_what_it_missed(nodes, connect):
    a, b = nodes(2)
    alice = connect(a)
    alice.join("alice")
    last = alice.say_all([f"line {n}" for n in range(5)])
    bob = connect(b)
    welcome = bob.join("bob")
    assert welcome.history == 5 and welcome.last_id == last.id
    assert [bob.expect(ChatMessage).msg for _ in range(5)] == [f"line {n}" for n in range(5)]
    bob.send({"type": "leave"})
    bob.expect_closed()
    alice.say_all(["missed 1", "missed 2"])
    again = connect(a)  # back on the other server, from where it was
    again.send({"type": "join", "name": "bob", "since": last.id})
    assert again.expect(Welcome).history == 2
    assert [again.expect(ChatMessage).msg for _ in range(2)] == ["missed 1", "missed 2"]


def test_concurrent_senders_on_two_servers_are_seen_in_one_order_everywhere(nodes, connect):
    a, b = nodes(2, flood_rate=0)
    observers = [connect(server) for server in (a, b, a, b)]
    for number, observer in enumerate(observers):
        observer.join(f"observer{number}")
    senders = [connect(server) for server in (a, b) for _ in range(10)]
    for number, sender in enumerate(senders):
        sender.join(f"sender{number}")
    per_sender = 20
    threads = talk_at_once(senders, per_sender)
    for thread in threads:
        thread.join()
    total = per_sender * len(senders)
    seen = [[observer.expect(ChatMessage) for _ in range(total)] for observer in observers]
    orders = [[(m.id, m.name, m.msg) for m in lines] for lines in seen]
    assert all(order == orders[0] for order in orders)
    ids = [entry[0] for entry in orders[0]]
    assert ids == list(range(ids[0], ids[0] + total))  # gap-free, one sequence
    for number in range(len(senders)):  # and each sender's lines in the order it said them
        mine = [msg for _, name, msg in orders[0] if name == f"sender{number}"]
        assert mine == [f"{number}:{line}" for line in range(per_sender)]


def test_parting_is_confirmed_and_seen_on_both_servers(nodes, connect):
    a, b = nodes(2)
    alice, bob = connect(a), connect(b)
    alice.join("alice")
    bob.join("bob")
    alice.send({"type": "join", "room": "dev"})
    alice.expect(Welcome, room="dev")
    bob.send({"type": "join", "room": "dev"})
    bob.expect(Welcome, room="dev")
    alice.send({"type": "part", "room": "dev"})
    assert alice.expect(Left, room="dev").name == "alice"
    assert bob.expect(Left, room="dev").name == "alice"


def test_when_redis_is_down_a_message_is_refused_as_not_stored_and_nobody_gets_it(nodes, connect, redis_server):
    a, b = nodes(2)
    alice, bob = connect(a), connect(b)
    alice.join("alice")
    first_epoch = bob.join("bob").epoch
    assert first_epoch
    alice.say_all(["before", "the outage"])
    assert bob.expect(ChatMessage, msg="the outage").id == 2
    redis_server.kill()
    alice.say("into the void")
    assert alice.expect(ErrorReply).code == "storage_failed"
    redis_server.start()  # an empty Redis again (no persistence here): the room starts over
    alice.say("back again")
    reset = bob.expect(Reset)  # told before the new numbers come: forget the old ids
    assert reset.room == "lobby" and reset.epoch != first_epoch
    again = bob.expect(ChatMessage)
    assert (again.msg, again.id) == ("back again", 1)  # numbered from the start: Redis forgot the rest
    newcomer = connect(b)
    newcomer.send({"type": "join", "name": "carol"})  # accounts, bans and roles are gone: refused, not served empty
    assert newcomer.expect(ErrorReply).code == "storage_failed"
    redis.Redis.from_url(redis_server.url).set("chat:identity", "restarted")  # the operator accepts the loss
    assert newcomer.join("carol").epoch not in (None, first_epoch)


def _enter(client: LineClient, room: str) -> Welcome:
    client.send({"type": "join", "room": room})
    return client.expect(Welcome)


def test_a_name_is_taken_on_every_server_and_freed_on_all_when_its_holder_leaves(nodes, connect):
    a, b = nodes(2)
    alice = connect(a)
    alice.join("alice")
    stranger = connect(b)
    stranger.send({"type": "join", "name": "ALICE"})  # a look-alike is the same name
    refusal = stranger.expect(ErrorReply)
    assert refusal.code == "name_taken" and "alice" in refusal.detail
    alice.send({"type": "nick", "name": "alicia"})
    alice.expect(Renamed, new="alicia")
    stranger.join("alice")  # the old name is free on every server now
    taker = connect(a)
    taker.send({"type": "join", "name": "alicia"})
    assert taker.expect(ErrorReply).code == "name_taken"
    alice.send({"type": "leave"})
    alice.expect_closed()
    connect(b).join("alicia")


def test_who_and_rooms_show_the_members_and_rooms_of_every_server(nodes, connect):
    alice, bob, carol = _people(connect, nodes(3))
    _enter(alice, "dev")
    assert _enter(bob, "Dev").users == ["alice", "bob"]  # one room, spelled as its creator did
    bob.send({"type": "who", "room": "dev"})
    assert bob.expect(Users, room="dev").users == ["alice", "bob"]
    carol.send({"type": "rooms"})  # carol's server has nobody in dev: it lists it anyway
    rooms = {info.room: info.users for info in carol.expect(RoomList).rooms}
    assert rooms == {"dev": 2, "lobby": 3}
    carol.send({"type": "who", "room": "dev"})
    assert carol.expect(Users, room="dev").users == ["alice", "bob"]
    bob.send({"type": "part", "room": "dev"})
    bob.expect(Left, room="dev")
    carol.send({"type": "who", "room": "dev"})
    assert carol.expect(Users, room="dev").users == ["alice"]


def test_a_topic_set_on_one_server_is_the_topic_on_the_others(nodes, connect):
    a, b = nodes(2)
    alice = connect(a)
    alice.join("alice")
    alice.send({"type": "topic", "room": "lobby", "topic": "release friday"})
    alice.expect(Topic, topic="release friday")
    bob = connect(b)
    assert bob.join("bob").topic == "release friday"
    bob.send({"type": "rooms"})
    assert [info.topic for info in bob.expect(RoomList).rooms] == ["release friday"]


def test_a_private_message_reaches_its_person_on_another_server_and_comes_back_on_a_resume(nodes, connect):
    a, b = nodes(2)
    alice, bob, carol = connect(a), connect(b), connect(b)
    alice.join("alice")
    welcome = bob.join("bob")
    carol.join("carol")
    alice.send({"type": "private", "to": "BOB", "msg": "psst"})
    sent = alice.expect(PrivateMessage)  # the echo
    got = bob.expect(PrivateMessage)
    assert (got.id, got.name, got.to, got.msg) == (sent.id, "alice", "bob", "psst")
    bob.send({"type": "private", "to": "alice", "msg": "yes?"})
    assert alice.expect(PrivateMessage, msg="yes?").id == sent.id + 1
    carol.send({"type": "private", "to": "nobody", "msg": "hello?"})
    assert carol.expect(ErrorReply).code == "no_such_user"
    bob.send({"type": "leave"})
    bob.expect_closed()
    alice.send({"type": "private", "to": "carol", "msg": "not for bob"})
    again = connect(a)  # bob, back with his token on the other server, from where he was
    again.send({"type": "join", "name": "bob", "token": welcome.token, "private_since": sent.id - 1})
    again.expect(Welcome)
    replayed = [again.expect(PrivateMessage) for _ in range(2)]
    assert [line.msg for line in replayed] == ["psst", "yes?"]
    carol.expect(PrivateMessage, msg="not for bob")  # seen only by its parties


def test_coming_back_with_a_token_on_another_server_closes_the_old_connection(nodes, connect):
    a, b = nodes(2)
    old = connect(a)
    welcome = old.join("alice")
    observer = connect(b)
    observer.join("observer")
    new = connect(b)
    new.send({"type": "join", "name": "alice", "token": welcome.token})
    assert new.expect(Welcome).name == "alice"
    closing = old.expect_closed()
    assert any(isinstance(line, ErrorReply) and line.code == "session_replaced" for line in closing)
    observer.send({"type": "who", "room": "lobby"})
    assert observer.expect(Users).users == ["alice", "observer"]


def test_clients_of_a_server_killed_during_traffic_carry_on_with_another_and_miss_nothing(
    redis_server, chat_server_process
):
    """Two server processes on one Redis; the one three clients use is killed (SIGKILL) while
    a fourth client on the other one talks. They reconnect to the other one, with their
    token (the dead server still holds their names until its lease runs out), and each ends
    with every message once, in order."""
    a = chat_server_process("--redis", redis_server.url)
    b = chat_server_process("--redis", redis_server.url, "--flood-rate", "0")
    total = 300

    async def scenario() -> list[list[int]]:
        clients = [ChatClient(*a.address, f"user{n}", also=[b.address], first_retry=0.05) for n in range(3)]
        for client in clients:
            await client.connect()
        talker = LineClient(b.address)
        talker.join("talker")

        killed = threading.Event()

        def talk() -> None:  # a third before the kill, the rest after it (some may be on their way still)
            for number in range(total):
                if number == total // 3:
                    killed.wait(TIMEOUT)
                talker.say(f"line {number}")

        async def watch(client: ChatClient, seen: list[int], started: asyncio.Event) -> None:
            async for event in client.events():
                if isinstance(event, ChatMessage) and event.name == "talker":
                    seen.append(event.id)
                    if len(seen) == total // 6:
                        started.set()
                    if event.msg == f"line {total - 1}":
                        return

        seen: list[list[int]] = [[] for _ in clients]
        started = [asyncio.Event() for _ in clients]
        watchers = [
            asyncio.create_task(watch(client, ids, event))
            for client, ids, event in zip(clients, seen, started, strict=True)
        ]
        sender = threading.Thread(target=talk)
        sender.start()
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), TIMEOUT)
        a.process.kill()
        killed.set()
        try:
            await asyncio.wait_for(asyncio.gather(*watchers), TIMEOUT * 2)
        except TimeoutError:
            raise AssertionError(f"seen so far: {[len(ids) for ids in seen]}; log of b: {b.log[-20:]}") from None
        await asyncio.to_thread(sender.join)
        assert all(client.host == b.host and client.port == b.port for client in clients)
        for client in clients:
            await client.close()
        talker.close()
        return seen

    seen = asyncio.run(scenario())
    for ids in seen:
        assert ids == list(range(ids[0], ids[0] + total))  # every line once, in order


def test_a_name_held_by_a_dead_server_is_free_for_anybody_once_its_lease_runs_out(
    redis_server, chat_server_process, nodes, connect
):
    a = chat_server_process("--redis", redis_server.url, "--redis-lease", str(SHORT_LEASE), "--redis-renew", "0.5")
    (b,) = nodes(1, redis_lease=SHORT_LEASE, redis_renew=0.5)
    held = LineClient(a.address)
    held.join("alice")
    # It waits for the dead server's lease to run out and the next renewal to notice.
    watcher = LineClient(b.address, timeout=SHORT_LEASE + 2 * 0.5 + TIMEOUT)
    watcher.join("watcher")
    a.process.kill()
    stranger = connect(b)  # another identity: refused while the dead server's lease lasts
    stranger.send({"type": "join", "name": "alice"})
    assert stranger.expect(ErrorReply).code == "name_taken"
    left = watcher.expect(Left)  # the lease ran out
    assert (left.name, left.reason) == ("alice", "disconnected")
    watcher.send({"type": "who", "room": "lobby"})
    assert watcher.expect(Users).users == ["watcher"]
    connect(b).join("alice")
    watcher.close()
    held.close()


def test_a_durable_redis_killed_and_restarted_during_traffic_loses_no_message_anybody_saw(
    durable_redis_server, start_chat_server, connect
):
    a, b = (start_chat_server(ServerConfig(redis=durable_redis_server.url, flood_rate=0)) for _ in range(2))
    talker, watcher = connect(a), connect(b)
    talker.join("talker")
    epoch = watcher.join("watcher").epoch
    total = 200
    watching = threading.Event()

    def talk() -> None:  # refused lines (storage_failed) are never seen by anybody: that is allowed
        for number in range(total):
            if number == total // 2:
                watching.wait(TIMEOUT)
            talker.say(f"line {number}")
        talker.say_all(["the end"])  # after the outage: stored, and its echo waited for

    sender = threading.Thread(target=talk)
    sender.start()
    seen: list[ChatMessage] = []
    while len(seen) < total // 4:
        seen.append(watcher.expect(ChatMessage))
    durable_redis_server.kill()
    durable_redis_server.start()  # from its append-only file
    watching.set()
    while not seen or seen[-1].msg != "the end":
        seen.append(watcher.expect(ChatMessage))
    sender.join(TIMEOUT)
    ids = [message.id for message in seen]
    assert ids == list(range(1, len(ids) + 1))  # no hole, no repeat, and no restart of the numbering
    newcomer = connect(b)
    newcomer.send({"type": "join", "name": "newcomer", "since": 0})
    welcome = newcomer.expect(Welcome)
    assert welcome.epoch == epoch  # the same history, not a new one
    replayed = [newcomer.expect(ChatMessage) for _ in range(welcome.history)]
    assert [(m.id, m.msg) for m in replayed if m.id <= ids[-1]] == [(m.id, m.msg) for m in seen]


def test_an_account_registered_on_one_server_logs_in_on_another(nodes, connect):
    a, b = nodes(2)
    alice = connect(a)
    alice.join("alice")
    alice.send({"type": "register", "password": "correct horse battery"})
    alice.expect(SessionToken)
    alice.send({"type": "leave"})
    alice.expect_closed()
    stranger = connect(b)
    stranger.send({"type": "join", "name": "alice"})
    assert stranger.expect(ErrorReply).code == "name_registered"
    again = connect(b)
    again.send({"type": "join", "name": "alice", "password": "correct horse battery"})
    assert again.expect(Welcome).account is True


class _Heard(logging.Handler):
    """Log records as they come, for a test to wait on."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.messages.append(record.getMessage())
            self.changed.notify_all()

    def wait_for(self, text: str, times: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: sum(text in m for m in self.messages) >= times, timeout)


def test_after_redis_lost_everything_the_servers_hold_their_names_and_members_again(nodes, connect, redis_server):
    a, b = nodes(2, redis_lease=SHORT_LEASE, redis_renew=0.5)
    alice, watcher = connect(a), connect(b)
    alice.join("alice")
    watcher.join("watcher")
    heard = _Heard()
    logger = logging.getLogger("chat.server.redis.lease")
    logger.addHandler(heard)
    try:
        redis_server.kill()
        redis_server.start()  # empty: no server's lease, no name, no member is recorded any more
        # Waited for once done (the warning that it begins comes before the work).
        assert heard.wait_for("names and room members are claimed again", times=2, timeout=SHORT_LEASE + TIMEOUT)
    finally:
        logger.removeHandler(heard)
    redis.Redis.from_url(redis_server.url).set("chat:identity", "restarted")  # the operator accepts the loss
    stranger = connect(b)
    stranger.send({"type": "join", "name": "alice"})
    assert stranger.expect(ErrorReply).code == "name_taken"
    watcher.send({"type": "who", "room": "lobby"})
    assert watcher.expect(Users).users == ["alice", "watcher"]


def test_away_on_one_server_answers_private_messages_and_shows_in_who_on_the_others(nodes, connect):
    a, b = nodes(2)
    alice, bob, carol = _people(connect, [a, b, a])  # alice and carol on one server, bob on the other
    bob.send({"type": "away", "msg": "lunch"})
    bob.expect(ServerNotice)
    alice.send({"type": "private", "to": "bob", "msg": "are you there?"})
    alice.expect(PrivateMessage, msg="are you there?")  # the echo first, then the answer
    assert alice.expect(Away, room=None) == Away(name="bob", msg="lunch")  # (the room's away line may come between)
    carol.send({"type": "who", "room": "lobby"})
    assert carol.expect(Users).away == {"bob": "lunch"}
    bob.send({"type": "away"})
    bob.expect(ServerNotice)
    carol.send({"type": "who", "room": "lobby"})
    assert carol.expect(Users).away == {}


def test_retention_trims_the_shared_log_and_a_resume_from_before_it_is_told_of_the_gap(nodes, connect):
    a, b = nodes(2, retention=10, flood_rate=0)
    alice = connect(a)
    alice.join("alice")
    last = alice.say_all([f"line {n}" for n in range(400)])  # Redis trims whole blocks of ~100 entries
    again = connect(b)
    again.send({"type": "join", "name": "bob", "since": 1})
    welcome = again.expect(Welcome)
    gap = again.expect(Gap)
    assert gap.first == 2 and gap.last < last.id - 10  # the oldest lines are gone: said so, with which
    replayed = [again.expect(ChatMessage) for _ in range(welcome.history)]
    assert [m.id for m in replayed] == list(range(gap.last + 1, last.id + 1))  # and all the rest, in order


def test_a_room_left_by_its_last_member_on_a_server_is_followed_again_on_the_next_join(nodes, connect):
    a, b = nodes(2)
    alice, bob = connect(a), connect(b)
    alice.join("alice")
    bob.join("bob")
    _enter(alice, "dev")
    _enter(bob, "dev")
    bob.send({"type": "part", "room": "dev"})  # nobody is in dev on b now: b stops reading it
    bob.expect(Left, room="dev")
    alice.send({"type": "message", "room": "dev", "msg": "while bob was out"})
    said = alice.expect(ChatMessage, msg="while bob was out")
    welcome = _enter(bob, "dev")
    assert welcome.last_id == said.id
    assert bob.expect(ChatMessage, room="dev").msg == "while bob was out"  # as history
    alice.send({"type": "message", "room": "dev", "msg": "live again"})
    assert bob.expect(ChatMessage, room="dev").msg == "live again"  # once, live
    alice.send({"type": "message", "room": "dev", "msg": "and again"})
    bob.expect(ChatMessage, msg="and again")  # a second copy of "live again" would have come before it
    said_twice = [line for line in bob.seen if isinstance(line, ChatMessage) and line.msg == "live again"]
    assert len(said_twice) == 1


def test_a_message_that_spells_the_placeholder_id_is_stored_as_said(nodes, connect):
    a, b = nodes(2)
    alice, bob = connect(a), connect(b)
    alice.join("alice")
    bob.join("bob")
    text = f'"id":{PLACEHOLDER_ID} {{"id":{PLACEHOLDER_ID}}}'
    alice.say(text)
    got = bob.expect(ChatMessage)
    assert (got.msg, got.id) == (text, 1)


def _owner_of_dev(client: LineClient) -> None:
    """alice, registered, creates dev: she owns it."""
    client.join("alice")
    client.send({"type": "register", "password": "correct horse battery"})
    client.expect(SessionToken)
    _enter(client, "dev")


def _dev_across(nodes, connect, name: str, **settings: Any) -> tuple[Any, LineClient, LineClient]:
    """alice owns dev on one server (returned first); `name` is in dev on the other."""
    a, b = nodes(2, **settings)
    alice, member = connect(a), connect(b)
    _owner_of_dev(alice)
    member.join(name)
    _enter(member, "dev")
    return a, alice, member


def test_a_ban_on_one_server_removes_the_member_on_another_and_holds_on_every_server(nodes, connect):
    a, alice, troll = _dev_across(nodes, connect, "troll", limit_exempt="")  # loopback: one person's address
    alice.send({"type": "ban", "room": "dev", "name": "troll", "reason": "spam"})
    assert troll.expect(Moderation, room="dev").action == "ban"  # told why, on its own server
    left = alice.expect(Left, room="dev", name="troll")
    assert left.reason == "banned"
    troll.send({"type": "join", "room": "dev"})
    assert troll.expect(ErrorReply).code == "banned"
    elsewhere = connect(a)  # the other server: the same guest's address is banned there too
    elsewhere.join("troll2")
    elsewhere.send({"type": "join", "room": "dev"})
    assert elsewhere.expect(ErrorReply).code == "banned"


def test_a_kick_reaches_a_member_on_another_server_and_a_mute_there_holds(nodes, connect):
    _, alice, loud = _dev_across(nodes, connect, "loud")
    alice.send({"type": "mute", "room": "dev", "name": "loud"})
    alice.expect(Moderation, action="mute")
    loud.expect(Moderation, action="mute")
    loud.send({"type": "message", "room": "dev", "msg": "LOUD"})
    assert loud.expect(ErrorReply).code == "muted"  # refused on its own server
    alice.send({"type": "kick", "room": "dev", "name": "loud", "reason": "cool off"})
    assert alice.expect(Left, room="dev", name="loud").reason == "kicked"
    loud.expect(Moderation, action="kick")
    loud.send({"type": "message", "room": "dev", "msg": "still here?"})
    assert loud.expect(ErrorReply).code == "not_in_room"


def test_a_mode_set_on_one_server_holds_on_the_others(nodes, connect):
    _, alice, bob = _dev_across(nodes, connect, "bob")
    alice.send({"type": "mode", "room": "dev", "on": ["moderated"]})
    bob.expect(Moderation, action="mode")
    bob.send({"type": "message", "room": "dev", "msg": "may I?"})
    assert bob.expect(ErrorReply).code == "muted"


def test_a_server_ban_given_on_one_server_keeps_the_person_off_every_server(
    nodes, connect, redis_server, monkeypatch
):
    from chat.admin import main as chat_admin

    a, b = nodes(2, admin=("alice",), limit_exempt="")  # loopback: one person's address
    monkeypatch.setenv("ALICE_PASSWORD", "correct horse battery")  # the operator's account, made by chat-admin
    command = ["--redis", redis_server.url, "accounts", "add", "alice", "--password-env", "ALICE_PASSWORD"]
    assert chat_admin(command) == 0
    alice = connect(a)
    alice.send({"type": "join", "name": "alice", "password": "correct horse battery"})
    alice.expect(Welcome)
    _enter(alice, "dev")
    troll = connect(b)
    troll.join("troll")
    alice.send({"type": "server_ban", "name": "troll", "reason": "spam"})
    alice.expect(ServerNotice)
    closing = troll.expect_closed()  # its own server puts it out, saying why
    assert any(isinstance(line, ErrorReply) and line.code == "removed" for line in closing)
    again = connect(a)
    again.send({"type": "join", "name": "troll2"})
    assert again.expect(ErrorReply).code == "banned"  # same address, the other server


def test_redis_that_lost_its_data_refuses_identity_rather_than_serving_it_empty(nodes, connect, redis_server):
    a, b = nodes(2, admin=("root",))
    alice = connect(a)
    alice.join("alice")
    alice.send({"type": "register", "password": "correct horse battery"})
    alice.expect(SessionToken)
    alice.say_all(["before the flush"])  # kept before the flush
    redis.Redis.from_url(redis_server.url).flushall()
    for server, name, extra in ((b, "alice", {"password": "correct horse battery"}), (b, "root", {}), (a, "x", {})):
        client = connect(server)
        client.send({"type": "join", "name": name, **extra})
        assert client.expect(ErrorReply).code == "storage_failed"  # nobody is served an empty table
    alice.send({"type": "password", "old": "correct horse battery", "new": "another good passphrase"})
    assert alice.expect(ErrorReply).code == "storage_failed"
    alice.say("after the flush")  # the room's log was lost too: numbered from 1 again, after a reset
    assert alice.expect(Reset).room == "lobby"
    assert alice.expect(ChatMessage, msg="after the flush").id == 1


def test_failed_logins_are_counted_across_servers(nodes, connect):
    a, b = nodes(2)
    alice = connect(a)
    alice.join("alice")
    alice.send({"type": "register", "password": "correct horse battery"})
    alice.expect(SessionToken)
    details = []
    for number in range(8):
        client = connect((a, b)[number % 2])
        client.send({"type": "join", "name": "alice", "password": f"guess {number}"})
        details.append(client.expect(ErrorReply).detail)
    assert any("too many" in detail for detail in details[5:])


def test_an_account_on_two_servers_at_once_keeps_both_sessions(nodes, connect):
    a, b = nodes(2)
    laptop = connect(a)
    laptop.join("alice")
    laptop.send({"type": "register", "password": "correct horse battery"})
    token = laptop.expect(SessionToken).token
    bob = connect(a)
    bob.join("bob")
    phone = connect(b)  # the second device arrives on the other server: bob sees nobody new
    phone.send({"type": "join", "name": "alice", "token": token})
    phone.expect(Welcome)
    bob.say("hello alice")
    heard = laptop.expect(ChatMessage, msg="hello alice")
    phone.expect(ChatMessage, msg="hello alice")
    phone.send({"type": "read", "room": "lobby", "id": heard.id})  # read on the phone, marked on the laptop
    assert laptop.expect(ReadMarker) == ReadMarker(room="lobby", id=heard.id)
    bob.send({"type": "private", "to": "alice", "msg": "on both?"})
    laptop.expect(PrivateMessage, msg="on both?")
    phone.expect(PrivateMessage, msg="on both?")
    assert not [m for m in laptop.seen if isinstance(m, ErrorReply)]
    laptop.send({"type": "leave"})  # the laptop goes; the phone, on the other server, stays
    laptop.expect_closed()
    carol = connect(a)
    carol.join("carol")
    carol.send({"type": "private", "to": "alice", "msg": "still on the phone?"})  # found on the other server
    phone.expect(PrivateMessage, msg="still on the phone?")
    carol.send({"type": "who", "room": "lobby"})
    assert "alice" in carol.expect(Users).users
    bob.say("after the laptop left")
    bob.expect(ChatMessage, msg="after the laptop left")
    assert not [m for m in bob.seen if isinstance(m, Joined | Left) and m.name == "alice"]


def test_chat_admin_passwd_on_redis_ends_the_accounts_sessions_on_every_server(
    nodes, connect, redis_server, monkeypatch
):
    from chat.admin import main as chat_admin

    a, b = nodes(2)
    laptop = connect(a)
    laptop.join("alice")
    laptop.send({"type": "register", "password": "correct horse battery"})
    token = laptop.expect(SessionToken).token
    phone = connect(b)
    phone.send({"type": "join", "name": "alice", "token": token})
    phone.expect(Welcome)
    monkeypatch.setenv("NEW_PASSWORD", "chosen by the operator")
    command = ["--redis", redis_server.url, "accounts", "passwd", "alice", "--password-env", "NEW_PASSWORD"]
    assert chat_admin(command) == 0
    for device in (laptop, phone):
        assert "session_replaced" in [m.code for m in device.expect_closed() if isinstance(m, ErrorReply)]
    again = connect(b)
    again.send({"type": "join", "name": "alice", "token": token})
    assert again.expect(ErrorReply).code == "auth_failed"
def test_search_is_unavailable_when_rooms_are_shared_through_redis_even_with_a_history_file(
    nodes, connect, tmp_path
):
    [server] = nodes(1, db=str(tmp_path / "chat.db"))
    alice = connect(server)
    alice.join("alice")
    alice.send({"type": "search", "text": "anything"})
    assert alice.expect(ErrorReply).code == "search_unavailable"


def test_after_a_flushall_during_traffic_every_line_said_reaches_every_member_on_every_server(
    nodes, connect, redis_server
):
    a, b = nodes(2)
    alice, bob = connect(a), connect(b)
    alice.join("alice")
    bob.join("bob")
    before = alice.say_all([f"before {n}" for n in range(20)])
    assert bob.expect(ChatMessage, msg=before.msg).id == before.id
    with contextlib.closing(redis.Redis.from_url(redis_server.url)) as client:
        client.flushall()  # the connections stay: no error tells the servers
    alice.say("right after")  # numbered 1 in a new epoch, below every server's read position
    for person in (alice, bob):
        assert person.expect(Reset, room="lobby").epoch is not None
    for n in range(5):
        alice.say(f"after {n}")
        bob.say(f"bob after {n}")
    said = {"right after", *(f"after {n}" for n in range(5)), *(f"bob after {n}" for n in range(5))}
    for person in (alice, bob):
        heard = [person.expect(ChatMessage) for _ in range(len(said))]
        assert {m.msg for m in heard} == said
        assert [m.id for m in heard] == list(range(1, len(said) + 1))


def test_a_line_refused_while_redis_stalled_past_the_command_timeout_is_never_delivered(
    nodes, connect, redis_server
):
    a, b = nodes(2)
    alice, bob = connect(a), connect(b)
    alice.join("alice")
    bob.join("bob")
    alice.say_all(["before the stall"])
    bob.expect(ChatMessage, msg="before the stall")
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        alice.send({"type": "message", "msg": "into the stall", "cid": "stall-1"})
        assert alice.expect(ErrorReply).code == "storage_failed"  # after the command timeout
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)  # Redis now runs the stalled append: fenced
    alice.say("after the stall")
    assert bob.expect(ChatMessage).msg == "after the stall"  # the refused line came before it, or never
    assert alice.expect(ChatMessage).msg == "after the stall"
    carol = connect(b)
    carol.join("carol")
    seen = [carol.expect(ChatMessage).msg for _ in range(2)]
    assert seen == ["before the stall", "after the stall"]  # the history has no trace of it either
    # Sent again with its cid, the refused line is kept now, once, after what came meanwhile.
    alice.send({"type": "message", "msg": "into the stall", "cid": "stall-1"})
    assert alice.expect(ChatMessage, msg="into the stall").cid == "stall-1"
    alice.send({"type": "message", "msg": "into the stall", "cid": "stall-1"})
    assert alice.expect(ChatMessage, msg="into the stall").cid == "stall-1"
    alice.say("last")
    assert [bob.expect(ChatMessage).msg for _ in range(2)] == ["into the stall", "last"]


def test_a_line_resent_with_its_cid_on_another_server_is_kept_once_and_answered_there(nodes, connect):
    a, b = nodes(2)
    watcher = connect(b)
    watcher.join("watcher")
    alice = connect(a)
    token = alice.join("alice").token
    alice.send({"type": "message", "msg": "did it arrive?", "cid": "x-1"})
    alice.close()  # before reading the echo: the client cannot tell whether it was kept
    first = watcher.expect(ChatMessage, msg="did it arrive?")
    again = connect(b)  # back with its token, on the other server
    again.send({"type": "join", "name": "alice", "token": token})
    again.expect(Welcome)
    again.send({"type": "message", "msg": "did it arrive?", "cid": "x-1"})
    echo = again.expect(ChatMessage, msg="did it arrive?", cid="x-1")
    assert (echo.id, echo.time) == (first.id, first.time)
    again.send({"type": "private", "to": "watcher", "msg": "psst", "cid": "x-2"})
    assert again.expect(PrivateMessage, msg="psst").cid == "x-2"
    again.send({"type": "private", "to": "watcher", "msg": "psst", "cid": "x-2"})
    assert again.expect(PrivateMessage, msg="psst").cid == "x-2"
    again.say("next")
    assert watcher.expect(PrivateMessage).msg == "psst"
    assert watcher.expect(ChatMessage).msg == "next"  # the resent line and private reached nobody else
    carol = connect(a)
    assert carol.join("carol").history == 2  # "did it arrive?" and "next": kept once


def test_a_cid_sent_to_two_servers_at_once_is_kept_by_the_first_and_answered_by_the_second(redis_server):
    """The check and the append are one script: a repeat that no server had seen yet when it
    checked is still found in Redis, and answered with the line kept first."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        logs = Logs(client, retention=100)
        template = Line.said("message", "lobby", "alice", "hello", "2026-12-06T00:00:00.000Z", PLACEHOLDER_ID).json
        [first] = logs.append("lobby", [template], tags=[(("alice-id", "c-1"), "")])
        [second, other] = logs.append("lobby", [template, template], tags=[(("alice-id", "c-1"), ""), (None, "")])
        assert first == 1 and other == 2
        assert isinstance(second, bytes) and json.loads(second)["id"] == 1
        assert logs.tagged("alice-id", "c-1") == second
        assert logs.tagged("bob-id", "c-1") is None  # a cid is its identity's own
        assert [entry for entry, _ in logs.entries("lobby", "-", "+", 10)] == [b"1-0", b"2-0"]
    finally:
        client.close()


def test_in_redis_mode_the_echo_carries_its_cid_and_only_the_sender_sees_it(nodes, connect):
    a, b = nodes(2)
    watcher = connect(b)
    neighbour = connect(a)  # on the sender's server, reading the same stream
    watcher.join("watcher")
    neighbour.join("neighbour")

    async def scenario() -> None:
        alice = ChatClient(*a.address, "alice", first_retry=0.05, max_retry=0.05)
        await alice.connect()
        for text in ("one", "two", "one"):
            await alice.send(SendMessage(msg=text))
        heard = []
        async for event in alice.events():
            if isinstance(event, ChatMessage):
                heard.append(event)
                if len(heard) == 3:
                    break
        assert [m.msg for m in heard] == ["one", "two", "one"]
        assert all(m.cid is not None for m in heard) and len({m.cid for m in heard}) == 3
        assert alice._unechoed == {}
        await alice.close()

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    for other in (watcher, neighbour):
        seen = [other.expect(ChatMessage) for _ in range(3)]
        assert [(m.msg, m.cid) for m in seen] == [("one", None), ("two", None), ("one", None)]


def test_an_irc_device_without_echo_message_sees_its_accounts_other_devices_and_not_its_own_lines(nodes, connect):
    a, b = nodes(2, irc_port=0)
    phone = connect(b)  # on the other server
    phone.join("alice")
    phone.send({"type": "register", "password": "correct horse"})
    phone.expect(SessionToken)
    phone.send({"type": "join", "room": "dev"})
    phone.expect(Welcome, room="dev")
    desk = connect(a)  # on the laptop's server
    desk.send({"type": "join", "name": "alice", "password": "correct horse", "room": "dev"})
    desk.expect(Welcome, room="dev")
    laptop = IrcClient(a.address_of("irc"))
    try:
        laptop.register("alice", password="correct horse")
        laptop.until(" 366 ", "#dev")
        phone.send({"type": "message", "room": "dev", "msg": "from the phone"})
        assert laptop.expect("PRIVMSG").endswith("PRIVMSG #dev :from the phone")
        desk.send({"type": "message", "room": "dev", "msg": "from the desk"})
        assert laptop.expect("PRIVMSG").endswith("PRIVMSG #dev :from the desk")
        laptop.send("PRIVMSG #dev :from the laptop")
        phone.expect(ChatMessage, msg="from the laptop")
        phone.send({"type": "message", "room": "dev", "msg": "after the laptop"})
        lines = laptop.until("after the laptop")  # the room's order: the laptop's own line came before
        assert not any("from the laptop" in line for line in lines)  # its own, without echo-message
    finally:
        laptop.close()
