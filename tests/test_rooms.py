"""Rooms over real sockets: isolation, per-room ids and resume, notices, restarts, scale."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
from collections import defaultdict

from chat.server.config import ServerConfig
from chat.server.store import Record, RoomRecord, SqliteStore
from chat.testing import TIMEOUT, LineClient
from chat.wire.protocol import (
    ChatMessage,
    ErrorReply,
    Left,
    Renamed,
    RoomList,
    ServerPong,
    Topic,
    Users,
    Welcome,
)


def join(client: LineClient, room: str, name: str | None = None, **fields) -> Welcome:
    client.send({"type": "join", "room": room, **({"name": name} if name else {}), **fields})
    welcome = client.expect(Welcome)
    assert welcome.room.casefold() == room.casefold()
    return welcome


def test_a_message_in_one_room_never_reaches_a_member_of_another_only(connect):
    alice, bob = connect(), connect()
    alice.join("alice")
    join(alice, "dev")
    bob.join("bob")
    alice.send({"type": "message", "room": "dev", "msg": "dev only"})
    alice.expect(ChatMessage, room="dev")
    alice.send({"type": "message", "msg": "lobby"})
    assert bob.expect(ChatMessage).msg == "lobby"  # and nothing from dev came before it
    assert [m for m in bob.seen if isinstance(m, ChatMessage)] == [bob.seen[-1]]


def test_ids_are_per_room(connect):
    alice = connect()
    alice.join("alice")
    join(alice, "dev")
    alice.send({"type": "message", "room": "dev", "msg": "a"})
    alice.send({"type": "message", "msg": "b"})
    alice.send({"type": "message", "room": "dev", "msg": "c"})
    assert alice.expect(ChatMessage, msg="a").id == 1
    assert alice.expect(ChatMessage, msg="b").id == 1
    assert alice.expect(ChatMessage, msg="c").id == 2


def test_bad_room_names_and_rooms_one_is_not_in_get_their_own_errors(connect):
    alice = connect()
    alice.join("alice")
    for room in ["", "two words", "x" * 33, "tab\there"]:
        alice.send({"type": "join", "room": room})
        assert alice.expect(ErrorReply).code == "room_invalid"
    alice.send({"type": "message", "room": "dev", "msg": "hi"})
    error = alice.expect(ErrorReply)
    assert (error.code, error.room) == ("not_in_room", "dev")


def test_part_rooms_list_and_who_over_the_wire(connect):
    alice, bob = connect(), connect()
    alice.join("alice")
    bob.join("bob")
    join(alice, "dev")
    join(bob, "Dev")
    alice.send({"type": "topic", "room": "dev", "topic": "release friday"})
    assert bob.expect(Topic).topic == "release friday"
    bob.send({"type": "rooms"})
    assert bob.expect(RoomList).model_dump()["rooms"] == [
        {"room": "dev", "users": 2, "topic": "release friday"},
        {"room": "lobby", "users": 2, "topic": ""},
    ]
    bob.send({"type": "part", "room": "dev"})
    assert alice.expect(Left, room="dev").reason == "part"
    assert bob.expect(Left, room="dev").name == "bob"
    alice.send({"type": "who", "room": "dev"})
    assert alice.expect(Users).users == ["alice"]


def test_rename_and_disconnect_are_shown_once_per_shared_room(connect):
    alice, bob = connect(), connect()
    alice.join("alice")
    bob.join("bob")
    for room in ("dev", "ops"):
        join(alice, room)
        join(bob, room)
    join(alice, "solo")
    alice.send({"type": "nick", "name": "alicia"})
    renames = [bob.expect(Renamed) for _ in range(3)]
    assert sorted(m.room for m in renames) == ["dev", "lobby", "ops"]
    alice.close()
    lefts = [bob.expect(Left) for _ in range(3)]
    assert sorted((m.room, m.reason) for m in lefts) == [
        ("dev", "disconnected"),
        ("lobby", "disconnected"),
        ("ops", "disconnected"),
    ]
    bob.send({"type": "ping"})
    bob.expect(ServerPong)  # everything sent before the pong has arrived: no further notice
    assert [m for m in bob.seen if isinstance(m, Renamed | Left)] == renames + lefts


def test_a_client_that_never_names_a_room_works_as_before(connect):
    old = connect()
    old.send({"name": "seed", "msg": "hi", "time": "2024-2-24"})
    said = old.expect(ChatMessage)
    assert (said.room, said.name, said.msg, said.id) == ("lobby", "seed", "hi", 1)


def test_per_room_resume_during_traffic_in_both_rooms_is_exact(start_chat_server, connect):
    # The talkers are floods, and may say up to 10,000 lines before the resume is served: a
    # replay limit above that, so that the resume is whole however slow the machine.
    server = start_chat_server(ServerConfig(replay_limit=20_000).without_limits())
    talkers = {room: connect(server) for room in ("lobby", "dev")}
    for room, talker in talkers.items():
        talker.join(f"talk-{room}")
        if room != "lobby":
            join(talker, room)
    reader = connect(server)
    reader.join("reader")
    join(reader, "dev")
    for room, talker in talkers.items():
        talker.send({"type": "message", "room": room, "msg": "before"})
    seen: dict[str, int] = {}
    while len(seen) < 2:  # the two rooms' lines may come in either order
        message = reader.expect(ChatMessage)
        seen[message.room] = message.id
    reader.close()
    stop = threading.Event()

    def talk(room: str) -> None:
        n = 0
        while not stop.is_set() and n < 5000:
            talkers[room].send({"type": "message", "room": room, "msg": f"n{n}"})
            n += 1

    threads = [threading.Thread(target=talk, args=(room,)) for room in talkers]
    for thread in threads:
        thread.start()
    try:
        back = connect(server)
        back.send({"type": "join", "name": "reader", "since": seen["lobby"]})
        back.send({"type": "join", "room": "dev", "since": seen["dev"]})
        got: dict[str, list[int]] = defaultdict(list)
        while min(len(got["lobby"]), len(got["dev"])) < 300:
            message = back.next()
            if isinstance(message, ChatMessage):
                got[message.room].append(message.id)
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT)
    for room in ("lobby", "dev"):
        ids = got[room]
        assert ids == list(range(seen[room] + 1, seen[room] + 1 + len(ids))), room


def test_rooms_topics_and_ids_survive_a_restart(start_chat_server, connect, tmp_path):
    config = ServerConfig(db=str(tmp_path / "chat.db"))
    first = start_chat_server(config)
    alice = connect(first)
    alice.join("alice")
    join(alice, "dev")
    alice.send({"type": "topic", "room": "dev", "topic": "kept"})
    alice.send({"type": "message", "room": "dev", "msg": "one"})
    alice.expect(ChatMessage, msg="one")
    alice.close()
    first.stop()
    second = start_chat_server(config)
    bob = connect(second)
    bob.join("bob")
    bob.send({"type": "rooms"})
    assert {"room": "dev", "users": 0, "topic": "kept"} in bob.expect(RoomList).model_dump()["rooms"]
    welcome = join(bob, "dev")
    assert (welcome.topic, welcome.last_id, welcome.history) == ("kept", 2, 2)
    bob.send({"type": "message", "room": "dev", "msg": "two"})
    assert bob.expect(ChatMessage, msg="two").id == 3


def test_a_first_release_database_opens_as_the_lobby_over_the_wire(start_chat_server, connect, tmp_path):
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.execute(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, stored_at REAL NOT NULL,"
            " sender TEXT, recipient TEXT, line BLOB NOT NULL)"
        )
        for i in range(1, 41):
            line = f'{{"type":"message","id":{i},"name":"old","msg":"m{i}","time":"2026-11-20T12:00:00.000Z"}}\n'
            old.execute("INSERT INTO messages VALUES (?, 1.0, NULL, NULL, ?)", (i, line.encode()))
        old.commit()
    server = start_chat_server(ServerConfig(db=str(path)))
    bob = connect(server)
    bob.send({"type": "join", "name": "bob", "since": 35})
    welcome = bob.expect(Welcome)
    assert (welcome.room, welcome.last_id, welcome.history) == ("lobby", 40, 5)
    assert [(m.room, m.id) for m in (bob.expect(ChatMessage) for _ in range(5))] == [
        ("lobby", i) for i in range(36, 41)
    ]
    bob.say("new")
    assert bob.expect(ChatMessage, msg="new").id == 41


def test_a_resume_of_large_messages_completes_for_a_client_that_reads(start_chat_server, connect):
    # 1,000 messages of about 48 KB (JSON-escaped NULs): far more than the backlog limit at once.
    config = ServerConfig(
        max_backlog=4 * 1024 * 1024, replay_limit=1000, max_line=256 * 1024, retention_bytes=64 * 1024 * 1024
    )
    server = start_chat_server(config.without_limits())
    talker = connect(server)
    talker.join("talker")
    heavy = "\0" * 7990
    for i in range(1000):
        talker.say(f"{i}{heavy}")
        talker.expect(ChatMessage)  # the talker reads its echoes, or it would be the slow one
    reader = connect(server)
    reader.send({"type": "join", "name": "reader", "since": 0})
    welcome = reader.expect(Welcome)
    assert welcome.history == 1000
    ids = [reader.expect(ChatMessage).id for _ in range(1000)]
    assert ids == list(range(1, 1001))


def test_many_rooms_everybody_talking_each_gets_exactly_its_rooms_in_order(start_chat_server, connect):
    server = start_chat_server(ServerConfig(max_backlog=64 * 1024 * 1024).without_limits())
    rooms = [f"r{i}" for i in range(100)]
    pick = random.Random(8)
    members: dict[str, list[str]] = defaultdict(list)
    clients: list[tuple[LineClient, list[str]]] = []
    for index in range(800):  # each in 2 or 3 rooms: about 20 members a room
        mine = pick.sample(rooms, pick.choice((2, 3)))
        client = connect(server)
        client.send({"type": "join", "name": f"u{index}", "room": mine[0]})
        for room in mine[1:]:
            client.send({"type": "join", "room": room})
        clients.append((client, mine))
        for room in mine:
            members[room].append(f"u{index}")
    for client, mine in clients:
        for room in mine:
            client.expect(Welcome, room=room)
    for index, (client, mine) in enumerate(clients):
        for room in mine:
            client.send({"type": "message", "room": room, "msg": f"u{index}"})
    for client, mine in clients:
        expected = {room: len(members[room]) for room in mine}
        got: dict[str, list[int]] = defaultdict(list)
        while sum(len(ids) for ids in got.values()) < sum(expected.values()):
            message = client.next()
            if isinstance(message, ChatMessage):
                assert message.room in mine
                got[message.room].append(message.id)
        for room in mine:
            assert got[room] == list(range(1, expected[room] + 1))


def test_a_join_storm_into_a_room_with_a_long_history_welcomes_everybody(start_chat_server, connect, tmp_path):
    path = str(tmp_path / "chat.db")
    store = SqliteStore(path)
    store.save_room(RoomRecord("big", "big"))
    line = b'{"type":"message","room":"big","id":%d,"name":"old","msg":"x","time":"2026-11-20T12:00:00.000Z"}\n'
    for first in range(1, 100_001, 25_000):  # a few big transactions, not 100,000 small ones
        store.append_all("big", [Record(i, line % i) for i in range(first, first + 25_000)])
    store.close()
    server = start_chat_server(ServerConfig(db=path, history=50).without_limits())
    chatter = connect(server)
    chatter.join("chatter")
    crowd = [connect(server) for _ in range(2000)]
    for index, client in enumerate(crowd):
        client.send({"type": "join", "name": f"c{index}", "room": "big"})
    chatter.say("still moving")  # another room is not held up by the storm
    assert chatter.expect(ChatMessage, msg="still moving").room == "lobby"
    for client in crowd:
        welcome = client.expect(Welcome)
        assert (welcome.last_id, welcome.history) == (100_000, 50)
        assert [client.expect(ChatMessage).id for _ in range(50)] == list(range(99_951, 100_001))
