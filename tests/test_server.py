"""The server over real sockets: framing, errors, fan-out, departures and shutdown."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest

from chat.server.tcp import SPARE_HANDLERS, ServerConfig
from chat.testing import TIMEOUT, LineClient, admitted_client, scaled, talk_at_once
from chat.wire.protocol import (
    Action,
    Away,
    ChatMessage,
    ErrorReply,
    Gap,
    Joined,
    Left,
    PrivateMessage,
    Renamed,
    ServerNotice,
    ServerPing,
    ServerPong,
    Shutdown,
    Users,
    Welcome,
)


@pytest.fixture
def alice_and_bob(connect):
    alice, bob = connect(), connect()
    alice.join("alice")
    bob.join("bob")
    alice.expect(Joined, name="bob")
    return alice, bob


def test_join_gets_welcome_with_everyone_present(connect):
    bob = connect()
    assert bob.join("bob").users == ["bob"]
    alice = connect()
    welcome = alice.join("alice")
    assert (welcome.name, welcome.users, welcome.history, welcome.account) == ("alice", ["alice", "bob"], 0, False)
    assert bob.next() == Joined(name="alice", time=bob.seen[-1].time)


def test_message_reaches_everyone_with_id_name_and_server_time(alice_and_bob):
    alice, bob = alice_and_bob
    alice.say("hello")
    for client in (alice, bob):
        message = client.expect(ChatMessage)
        assert (message.id, message.name, message.msg) == (1, "alice", "hello")
        assert message.time.utcoffset().total_seconds() == 0
    raw = json.loads(_next_raw_message(alice, bob))
    assert raw["time"].endswith("Z") and raw["id"] == 2


def _next_raw_message(alice: LineClient, bob: LineClient) -> bytes:
    alice.say("again")
    alice.expect(ChatMessage)
    return bob.read_line()


def test_nobody_can_speak_as_somebody_else(alice_and_bob):
    alice, bob = alice_and_bob
    alice.send({"type": "message", "name": "bob", "time": "1999-01-01T00:00:00Z", "msg": "I am bob"})
    message = bob.expect(ChatMessage)
    assert message.name == "alice"
    assert message.time.year >= 2026


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"\xc3\x28 not utf-8\n", "invalid_utf8"),
        (b"this is not json\n", "invalid_json"),
        (b"[1, 2, 3]\n", "not_an_object"),
        (b'{"type": "message", "msg": ["a"]}\n', "invalid_field"),
        (b'{"type": "teleport"}\n', "unknown_type"),
        (b'{"type": "message", "msg": "   "}\n', "empty_message"),
        (b'{"type": "nick", "name": "alice"}\n', "name_taken"),
        (b'{"type": "nick", "name": ""}\n', "name_empty"),
        (b'{"type": "nick", "name": "' + b"x" * 33 + b'"}\n', "name_too_long"),
        (b'{"type": "nick", "name": "a\\u0000b"}\n', "name_invalid"),
        (b'{"type": "private", "to": "nobody", "msg": "hi"}\n', "no_such_user"),
        (b'{"type": "join", "name": "again"}\n', "already_joined"),
    ],
)
def test_bad_line_gets_error_to_sender_only_and_connection_stays_open(alice_and_bob, connect, line, code):
    _alice, bob = alice_and_bob
    mallory = connect()
    mallory.join("mallory")
    bob.expect(Joined, name="mallory")
    mallory.send_raw(line)
    error = mallory.next()
    assert isinstance(error, ErrorReply) and error.code == code and error.detail
    mallory.say("still here")
    assert bob.next().msg == "still here"  # the bad line sent bob nothing


def test_message_before_join_is_an_error(connect):
    stranger = connect()
    stranger.say("hi")
    assert stranger.expect(ErrorReply).code == "not_joined"


def test_taken_name_gets_error_and_stays_connected(connect):
    connect().join("alice")
    impostor = connect()
    impostor.send({"type": "join", "name": "Alice"})
    assert impostor.next().code == "name_taken"
    assert impostor.join("alicia").name == "alicia"


def test_overlong_line_is_refused_and_the_connection_closed(start_chat_server, connect):
    server = start_chat_server(ServerConfig(max_line=1024))
    watcher, flooder = connect(server), connect(server)
    watcher.join("watcher")
    flooder.join("flooder")
    watcher.expect(Joined)
    flooder.send_raw(b'{"type": "message", "msg": "' + b"x" * 5000 + b'"}\n')
    assert [m.code for m in flooder.expect_closed() if isinstance(m, ErrorReply)] == ["line_too_long"]
    assert watcher.expect(Left, name="flooder").reason == "disconnected"


def test_endless_bytes_without_newline_are_cut_off(start_chat_server, connect):
    server = start_chat_server(ServerConfig(max_line=4096))
    endless = connect(server)  # (a TLS ClientHello gets plaintext_only instead: see test_tls)
    no_newline = bytes(byte for byte in range(256) if byte != ord("\n"))
    try:
        for _ in range(64):
            endless.send_raw(b"\x17\x03\x01" + no_newline * 4)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server already hung up, as it should
    messages = endless.expect_closed()
    assert [m.code for m in messages if isinstance(m, ErrorReply)] == ["line_too_long"]


def test_line_sent_one_byte_at_a_time_decodes(alice_and_bob):
    alice, bob = alice_and_bob
    for byte in json.dumps({"type": "message", "msg": "slow"}).encode() + b"\n":
        alice.send_raw(bytes([byte]))
    assert bob.expect(ChatMessage).msg == "slow"


def test_utf8_character_split_across_packets_decodes(alice_and_bob):
    alice, bob = alice_and_bob
    line = json.dumps({"type": "message", "msg": "naïve ☕"}, ensure_ascii=False).encode() + b"\n"
    cut = line.index("☕".encode()) + 1
    alice.send_raw(line[:cut])
    alice.send_raw(line[cut:])
    assert bob.expect(ChatMessage).msg == "naïve ☕"


def test_many_lines_in_one_packet_all_arrive_in_order(start_chat_server, connect):
    server = start_chat_server(ServerConfig().without_limits())  # a hundred lines at once is a flood
    alice, bob = connect(server), connect(server)
    alice.join("alice")
    bob.join("bob")
    packet = b"".join(json.dumps({"type": "message", "msg": str(i)}).encode() + b"\r\n" for i in range(100))
    alice.send_raw(packet)
    assert [bob.expect(ChatMessage).msg for _ in range(100)] == [str(i) for i in range(100)]


def test_lines_said_together_keep_their_order_ids_and_answers(start_chat_server, connect):
    """Lines said to one room in one packet are kept and published together; a refused
    or different line between them is answered once, and nothing is reordered."""
    server = start_chat_server(ServerConfig().without_limits())
    alice, bob = connect(server), connect(server)
    alice.join("alice")
    bob.join("bob")
    for client in (alice, bob):
        client.send({"type": "join", "room": "den"})
        client.expect(Welcome, room="den")
    said = [
        *({"type": "message", "msg": f"a{i}"} for i in range(40)),
        {"type": "action", "msg": "waves"},
        {"type": "message", "room": "den", "msg": "to den"},
        {"type": "message", "msg": ""},
        {"type": "message", "room": "nowhere", "msg": "lost"},
        *({"type": "message", "msg": f"b{i}"} for i in range(40)),
    ]
    alice.send_raw(b"".join(json.dumps(line).encode() + b"\n" for line in said))
    seen = [bob.expect(ChatMessage | Action) for _ in range(82)]
    lobby = [line for line in seen if line.room == "lobby"]
    assert [line.msg for line in lobby] == [f"a{i}" for i in range(40)] + ["waves"] + [f"b{i}" for i in range(40)]
    assert [line.id for line in lobby] == list(range(lobby[0].id, lobby[0].id + 81))
    assert [(line.room, line.msg) for line in seen if line.room == "den"] == [("den", "to den")]
    alice.expect(ChatMessage, msg="b39")
    assert [m.code for m in alice.seen if isinstance(m, ErrorReply)] == ["empty_message", "not_in_room"]


def test_blank_lines_are_ignored(alice_and_bob):
    alice, bob = alice_and_bob
    alice.send_raw(b"\n\r\n  \n")
    alice.say("after blanks")
    assert bob.next().msg == "after blanks"
    assert alice.next().msg == "after blanks"


def test_seed_client_joins_with_its_first_lines_name(connect):
    bob = connect()
    bob.join("bob")
    seed = connect()
    seed.send({"name": "alice", "msg": "hi", "time": "2024-2-24"})
    assert bob.expect(Joined).name == "alice"
    message = bob.expect(ChatMessage)
    assert (message.name, message.msg) == ("alice", "hi")
    seed.send({"name": "bob", "msg": "impersonating", "time": "2024-2-24"})
    assert bob.expect(ChatMessage).name == "alice"
    assert seed.expect(ChatMessage, msg="impersonating").name == "alice"


def test_newcomer_sees_recent_history_in_order_before_live_traffic(start_chat_server, connect):
    server = start_chat_server(ServerConfig(history=5))
    alice = connect(server)
    alice.join("alice")
    alice.say_all(f"m{i}" for i in range(8))
    late = connect(server)
    assert late.join("late").history == 5
    assert [late.next().msg for _ in range(5)] == ["m3", "m4", "m5", "m6", "m7"]
    alice.say("live")
    assert late.next().msg == "live"


def test_private_message_is_delivered_to_target_and_echoed_only(alice_and_bob, connect):
    alice, bob = alice_and_bob
    carol = connect()
    carol.join("carol")
    alice.send({"type": "private", "to": "bob", "msg": "psst"})
    for client in (bob, alice):
        dm = client.expect(PrivateMessage)
        assert (dm.name, dm.to, dm.msg) == ("alice", "bob", "psst")
    alice.say("public")
    assert carol.next().msg == "public"  # carol never saw the private line


def test_action_name_change_and_who(alice_and_bob):
    alice, bob = alice_and_bob
    alice.send({"type": "action", "msg": "waves"})
    action = bob.expect(Action)
    assert (action.name, action.msg) == ("alice", "waves")
    bob.send({"type": "nick", "name": "robert"})
    renamed = alice.expect(Renamed)
    assert (renamed.old, renamed.new) == ("bob", "robert")
    alice.send({"type": "who"})
    assert alice.expect(Users).users == ["alice", "robert"]


def test_clean_leave_closes_and_tells_the_others(alice_and_bob):
    alice, bob = alice_and_bob
    bob.send({"type": "leave"})
    bob.expect_closed()
    assert alice.expect(Left, name="bob").reason == "quit"


def test_client_ping_gets_pong(connect):
    client = connect()
    client.send({"type": "ping"})
    assert client.next() == ServerPong()


def test_silent_client_is_pinged_then_dropped(start_chat_server, connect):
    # The watcher's answers must beat the idle timeout: it runs on this machine's time.
    server = start_chat_server(ServerConfig(ping_interval=scaled(0.05), idle_timeout=scaled(0.5)))
    watcher, sleeper = connect(server), connect(server)
    watcher.join("watcher")
    sleeper.join("sleeper")
    while not isinstance(notice := watcher.next(), Left):
        if isinstance(notice, ServerPing):
            watcher.send({"type": "pong"})  # the watcher stays, answering pings
    assert (notice.name, notice.reason) == ("sleeper", "timeout")
    seen_by_sleeper = sleeper.expect_closed()
    assert ServerPing() in seen_by_sleeper
    assert seen_by_sleeper[-1].code == "idle_timeout"


def test_answering_pings_keeps_a_client_connected(start_chat_server, connect):
    # The talker's answers must beat the idle timeout: it runs on this machine's time.
    server = start_chat_server(ServerConfig(ping_interval=scaled(0.05), idle_timeout=scaled(0.3)))
    talker, sleeper = connect(server), connect(server)
    talker.join("talker")
    sleeper.join("sleeper")
    pings = 0
    while not isinstance(notice := talker.next(), Left):
        if isinstance(notice, ServerPing):
            pings += 1
            talker.send({"type": "pong"})
    assert notice.name == "sleeper"
    for _ in range(10):  # ten more pings answered: well past the idle timeout
        talker.expect(ServerPing)
        talker.send({"type": "pong"})
    talker.say("still here")
    assert talker.expect(ChatMessage).msg == "still here"


def test_killed_client_is_removed_and_the_room_goes_on(alice_and_bob, connect):
    alice, bob = alice_and_bob
    victim = connect()
    victim.join("victim")
    victim.say("about to die")
    alice.expect(ChatMessage, msg="about to die")
    # SO_LINGER 0: close() sends a reset, as when a process is killed.
    victim.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    victim.close()
    assert alice.expect(Left, name="victim").reason == "disconnected"
    bob.say("carry on")
    assert alice.expect(ChatMessage).msg == "carry on"


def test_half_closed_client_is_removed(alice_and_bob):
    alice, bob = alice_and_bob
    bob.sock.shutdown(socket.SHUT_WR)
    assert alice.expect(Left, name="bob").reason == "disconnected"


def test_client_that_never_reads_does_not_hold_up_the_others(start_chat_server, connect):
    server = start_chat_server(ServerConfig().without_limits())  # the talkers are floods
    alice, bob = connect(server), connect(server)
    alice.join("alice")
    bob.join("bob")
    stuck = connect(server)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.join("stuck")  # and never reads again
    count = 3000
    text = "x" * 200

    def talk(client: LineClient, name: str) -> None:
        for i in range(count):
            client.say(f"{name} {i} {text}")

    talkers = [threading.Thread(target=talk, args=(c, n)) for c, n in ((alice, "a"), (bob, "b"))]
    for talker in talkers:
        talker.start()
    for client in (alice, bob):
        seen = {"a": 0, "b": 0}
        while seen != {"a": count, "b": count}:
            message = client.next()
            if isinstance(message, ChatMessage):
                name, number, _ = message.msg.split(" ", 2)
                assert int(number) == seen[name]
                seen[name] += 1
    for talker in talkers:
        talker.join(TIMEOUT)


def test_client_whose_backlog_overflows_is_dropped(start_chat_server, connect):
    server = start_chat_server(ServerConfig(max_backlog=64 * 1024).without_limits())
    alice, stuck = connect(server), connect(server)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    alice.join("alice")
    stuck.join("stuck")
    alice.expect(Joined, name="stuck")
    text = "y" * 1000
    i = 0
    while True:
        alice.say(f"{i} {text}")
        message = alice.expect(ChatMessage | Left)  # type: ignore[arg-type]
        if isinstance(message, Left):
            break
        i += 1
        assert i < 100_000, "the stuck client was never dropped"
    assert (message.name, message.reason) == ("stuck", "slow_consumer")


def test_stop_tells_every_client_then_closes(start_chat_server, connect):
    server = start_chat_server()
    alice, lurker = connect(server), connect(server)
    alice.join("alice")
    lurker.send({"type": "ping"})
    lurker.expect(ServerPong)  # the server has taken the lurker's connection (not just the kernel)
    server.stop()
    assert isinstance(alice.expect_closed()[-1], Shutdown)
    assert isinstance(lurker.expect_closed()[-1], Shutdown)


def test_every_connection_has_a_handler_thread_of_its_own_beyond_the_spares(start_chat_server, connect):
    """Spare handlers wait for connections so that accepting never waits for a thread to start;
    each connection still gets a thread of its own, and stop() (the fixture) ends spares too."""
    server = start_chat_server()
    clients = [connect(server) for _ in range(2 * SPARE_HANDLERS + 3)]
    for i, client in enumerate(clients):
        assert client.join(f"c{i}").name == f"c{i}"
    handlers = [t for t in threading.enumerate() if t.name == "chat-handler"]
    assert len(handlers) >= len(clients)


def test_many_servers_live_in_one_process(start_chat_server, connect):
    first, second = start_chat_server(), start_chat_server()
    a, b = connect(first), connect(second)
    a.join("same")
    assert b.join("same").users == ["same"]


def test_two_hundred_clients_each_get_every_message_once_in_id_order(chat_server, connect):
    clients = [connect() for _ in range(200)]
    for i, client in enumerate(clients):
        client.send({"type": "join", "name": f"user{i}"})
    for client in clients:
        client.expect(Welcome)
    senders = clients[:10]
    per_sender = 20
    threads = talk_at_once(senders, per_sender)
    total = len(senders) * per_sender
    first_ids: list[int] | None = None
    for client in clients:
        ids = [client.expect(ChatMessage).id for _ in range(total)]
        assert ids == sorted(set(ids)), "duplicates or out of order"
        first_ids = first_ids or ids
        assert ids == first_ids
    for thread in threads:
        thread.join(TIMEOUT)


def test_reconnect_with_last_id_gets_exactly_the_missed_messages(start_chat_server, connect):
    server = start_chat_server(ServerConfig().without_limits())
    alice, bob = connect(server), connect(server)
    alice.join("alice")
    bob.join("bob")
    alice.say("before")
    last_seen = bob.expect(ChatMessage, msg="before").id
    bob.send({"type": "leave"})
    bob.expect_closed()
    alice.say_all(f"missed {i}" for i in range(100))
    again = connect(server)
    again.send({"type": "join", "name": "bob", "since": last_seen})
    welcome = again.expect(Welcome)
    assert (welcome.history, welcome.more) == (100, 0)
    replay = [again.next() for _ in range(100)]
    assert [m.msg for m in replay] == [f"missed {i}" for i in range(100)]
    alice.say("live")
    assert again.next().msg == "live"


def test_message_broadcast_during_a_replay_arrives_once_after_it(start_chat_server, connect):
    server = start_chat_server(ServerConfig(replay_limit=5000).without_limits())
    talker = connect(server)
    talker.join("talker")
    talker.say_all(f"old {i}" for i in range(2000))
    stop = threading.Event()

    def keep_talking() -> None:
        n = 0
        while not stop.is_set():
            talker.say(f"new {n}")
            n += 1

    chatter = threading.Thread(target=keep_talking)
    chatter.start()
    try:
        resumer = connect(server)
        resumer.send({"type": "join", "name": "resumer", "since": 0})
        welcome = resumer.expect(Welcome)
        ids = [resumer.expect(ChatMessage).id for _ in range(welcome.history + 200)]
    finally:
        stop.set()
        chatter.join(TIMEOUT)
    assert ids == list(range(1, len(ids) + 1))  # every id once, in order, no hole at the seam


def test_resume_from_before_retention_gets_a_gap_notice(start_chat_server, connect):
    server = start_chat_server(ServerConfig(retention=10))
    talker = connect(server)
    talker.join("talker")
    talker.say_all(f"m{i}" for i in range(30))
    late = connect(server)
    late.send({"type": "join", "name": "late", "since": 5})
    late.expect(Welcome)
    gap = late.next()
    assert isinstance(gap, Gap) and (gap.first, gap.last) == (6, 20)
    assert [late.next().id for _ in range(10)] == list(range(21, 31))


def test_connections_past_the_maximum_are_refused_with_a_clear_error(start_chat_server, connect):
    server = start_chat_server(ServerConfig(max_clients=2))
    first, second = connect(server), connect(server)
    first.join("first")
    second.join("second")
    third = connect(server)
    closing = third.expect_closed()
    assert [m.code for m in closing if isinstance(m, ErrorReply)] == ["server_full"]
    second.send({"type": "leave"})
    second.expect_closed()
    first.expect(Left, name="second")
    assert admitted_client(server).join("fourth").name == "fourth"  # room again once one left


def test_client_that_pauses_reading_catches_up_on_everything(start_chat_server, connect):
    server = start_chat_server(ServerConfig(max_backlog=64 * 1024 * 1024).without_limits())
    alice, sleepy = connect(server), connect(server)
    alice.join("alice")
    sleepy.join("sleepy")
    alice.expect(Joined, name="sleepy")
    text = "z" * 500
    count = 20_000  # about 10 MB: more than the socket buffers hold, so some waits in the outbox
    alice.say_all(f"{i} {text}" for i in range(count))
    # Nothing more is said: whatever is still queued must go out on its own.
    numbers = [int(sleepy.expect(ChatMessage).msg.split()[0]) for _ in range(count)]
    assert numbers == list(range(count))


def test_away_answers_private_messages_shows_in_who_and_ends_when_back(alice_and_bob):
    alice, bob = alice_and_bob
    bob.send({"type": "away", "msg": "lunch"})
    assert "away: lunch" in bob.expect(ServerNotice).detail
    assert alice.expect(Away) == Away(room="lobby", name="bob", msg="lunch")  # said in the room they share
    alice.send({"type": "private", "to": "bob", "msg": "are you there?"})
    assert alice.expect(PrivateMessage).msg == "are you there?"
    assert alice.expect(Away) == Away(name="bob", msg="lunch")
    assert bob.expect(PrivateMessage).msg == "are you there?"  # delivered all the same
    alice.send({"type": "who", "room": "lobby"})
    assert alice.expect(Users).away == {"bob": "lunch"}
    bob.send({"type": "away"})
    assert bob.expect(ServerNotice).detail == "you are back"
    assert alice.expect(Away) == Away(room="lobby", name="bob", msg="")
    alice.send({"type": "private", "to": "bob", "msg": "now?"})
    alice.expect(PrivateMessage, msg="now?")
    alice.send({"type": "who", "room": "lobby"})
    assert alice.expect(Users).away == {}
    assert not any(isinstance(m, Away) and m.room is None for m in alice.seen[-3:])  # no answer: back
