"""Several servers sharing rooms through a real Redis: one order, one history, whichever server."""

from __future__ import annotations

import threading

import pytest

from chat.server.config import ServerConfig
from chat.testing import LineClient
from chat.wire.protocol import ChatMessage, ErrorReply, Joined, Left, Reset, Welcome


@pytest.fixture
def nodes(start_chat_server, redis_server):
    """`nodes(n)`: n servers on one Redis, each with its own (in-memory) local store."""

    def start(count: int = 2, **settings):
        config = ServerConfig(redis=redis_server.url, **settings)
        return [start_chat_server(config) for _ in range(count)]

    return start


def test_a_message_said_on_one_server_reaches_members_on_the_others(nodes, connect):
    a, b, c = nodes(3)
    alice, bob, carol = connect(a), connect(b), connect(c)
    alice.join("alice")
    bob.join("bob")
    carol.join("carol")
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

    def talk(sender: LineClient, number: int) -> None:
        for line in range(per_sender):
            sender.say(f"{number}:{line}")

    threads = [threading.Thread(target=talk, args=(s, n)) for n, s in enumerate(senders)]
    for thread in threads:
        thread.start()
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
    assert newcomer.join("carol").epoch not in (None, first_epoch)
