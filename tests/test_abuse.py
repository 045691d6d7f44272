"""Abuse over the wire: floods are slowed then cut, addresses are capped, silence before a join ends,
and whatever one client does, the others keep talking."""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.server.config import ServerConfig
from chat.server.fanout import PeerState
from chat.server.session import Session
from chat.testing import TIMEOUT, LineClient, admitted_client, scaled
from chat.wire.protocol import (
    ChatMessage,
    ErrorReply,
    Gap,
    HistoryPage,
    Joined,
    Left,
    Notice,
    ServerPing,
    ServerPong,
    Welcome,
)


def lines(count: int, prefix: str = "n") -> bytes:
    return b"".join(json.dumps({"type": "message", "msg": f"{prefix}{i}"}).encode() + b"\n" for i in range(count))


@pytest.fixture
def alice_and_bob_under(start_chat_server, connect):
    """`alice_and_bob_under(config)`: a server with `config` and two joined clients."""

    def start(config: ServerConfig) -> tuple[LineClient, LineClient]:
        server = start_chat_server(config)
        alice, bob = connect(server), connect(server)
        alice.join("alice")
        bob.join("bob")
        return alice, bob

    return start


def test_a_burst_over_the_limit_is_slowed_announced_and_delivered_in_order(alice_and_bob_under):
    alice, bob = alice_and_bob_under(ServerConfig(flood_burst=5, flood_rate=50, flood_max_delay=10))
    alice.send_raw(lines(30))
    notice = alice.expect(Notice)
    assert notice.code == "rate_limited" and notice.delay_ms > 0
    assert [bob.expect(ChatMessage).msg for _ in range(30)] == [f"n{i}" for i in range(30)]


def test_a_flooder_is_cut_with_excess_flood_and_the_others_see_why(alice_and_bob_under):
    alice, bob = alice_and_bob_under(ServerConfig(flood_burst=5, flood_rate=20, flood_max_delay=0.5))
    alice.send_raw(lines(100))
    seen = alice.expect_closed()
    errors = [m for m in seen if isinstance(m, ErrorReply)]
    assert [e.code for e in errors] == ["excess_flood"]
    left = bob.expect(Left, name="alice")
    assert left.reason == "excess_flood"
    said = [m.msg for m in bob.seen if isinstance(m, ChatMessage)]
    assert said == [f"n{i}" for i in range(len(said))]  # what was served came in order, before the cut
    assert len(said) < 100


def test_a_slowed_client_delays_nobody_else(alice_and_bob_under):
    alice, bob = alice_and_bob_under(ServerConfig(flood_burst=2, flood_rate=10, flood_max_delay=10))
    alice.send_raw(lines(40))  # served over about 4 s
    bob.say("meanwhile")
    order = []
    while len(order) < 41:
        order.append(bob.expect(ChatMessage).msg)
    # Served long before alice's last line (without per-client pacing it would come after all 40).
    assert order.index("meanwhile") < 30


def test_heavy_requests_cost_more_than_messages(start_chat_server, connect):
    server = start_chat_server(ServerConfig(flood_burst=10, flood_rate=5, flood_max_delay=10))
    alice = connect(server)
    alice.join("alice")
    for _ in range(4):
        alice.send({"type": "history", "limit": 10})
    alice.say("after four pages")
    alice.expect(Notice)  # four pages cost more than a burst of ten lines: the line said after them waits


def test_the_limits_are_per_address_and_say_so(start_chat_server, connect):
    server = start_chat_server(ServerConfig(limit_exempt="", max_per_address=3))
    clients = [connect(server) for _ in range(3)]
    for number, client in enumerate(clients):
        client.join(f"c{number}")
    fourth = connect(server)
    [refusal] = fourth.expect_closed()
    assert isinstance(refusal, ErrorReply) and refusal.code == "too_many_connections"
    clients[0].send({"type": "leave"})
    clients[0].expect_closed()
    late = admitted_client(server)
    assert late.join("late").name == "late"


def test_connects_from_one_address_are_paced(start_chat_server, connect):
    server = start_chat_server(ServerConfig(limit_exempt="", connect_burst=3, connect_interval=3600))
    for number in range(3):
        client = connect(server)
        client.join(f"c{number}")
        client.close()
    refused = connect(server)
    [refusal] = refused.expect_closed()
    assert refusal.code == "too_many_connections"


def test_loopback_is_exempt_by_default(start_chat_server, connect):
    server = start_chat_server(ServerConfig(max_per_address=2))
    clients = [connect(server) for _ in range(5)]
    for number, client in enumerate(clients):
        assert client.join(f"c{number}").name == f"c{number}"


def test_a_connection_that_never_joins_is_closed_and_pings_do_not_save_it(start_chat_server, connect):
    # The ping and its answer must come back within the join deadline: on this machine's time.
    server = start_chat_server(ServerConfig(join_timeout=scaled(0.5)))
    idler = connect(server)
    idler.send({"type": "ping"})
    idler.expect(ServerPong)
    idler.send_raw(b"\n")
    seen = idler.expect_closed()
    assert [m.code for m in seen if isinstance(m, ErrorReply)] == ["join_timeout"]


def test_a_joined_connection_is_not_timed_out_by_the_join_deadline(start_chat_server, connect):
    # The join must beat the join deadline, and the ping come after it: both on this machine's time.
    config = ServerConfig(join_timeout=scaled(0.3), ping_interval=scaled(0.6), idle_timeout=60)
    server = start_chat_server(config)
    alice = connect(server)
    alice.join("alice")
    alice.expect(ServerPing)  # past the join deadline, and still connected
    alice.say("still here")
    assert alice.expect(ChatMessage).msg == "still here"


def test_an_unterminated_last_line_is_dropped_not_executed(connect):
    alice, bob = connect(), connect()
    alice.join("alice")
    bob.join("bob")
    alice.send_raw(b'{"type": "message", "msg": "complete"}\n{"type": "message", "msg": "cut off"}')
    alice.sock.shutdown(socket.SHUT_WR)
    assert bob.expect(ChatMessage).msg == "complete"
    assert bob.expect(Left).name == "alice"
    assert not any(isinstance(m, ChatMessage) and m.msg == "cut off" for m in bob.seen)


def test_a_non_reader_asking_for_pages_holds_bounded_memory_and_delays_nobody(start_chat_server, connect):
    server = start_chat_server(ServerConfig(history=0, max_line=256 * 1024).without_limits())
    filler = connect(server)
    filler.join("filler")
    filler.say_all(f"{i} " + "x" * 7990 for i in range(300))  # 2.4 MB of history
    hog = socket.create_connection(server.address, timeout=TIMEOUT)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.sendall(b'{"type": "join", "name": "hog"}\n' + b'{"type": "history", "limit": 500}\n' * 40)
    filler.say("after the pages")
    assert filler.expect(ChatMessage, msg="after the pages")
    for _ in range(3):  # a few writer passes later the hog is still waiting, with one page held
        filler.say_all(["tick"])
    held = server.outbox._fanout.held_bytes(server.outbox._peers)
    assert held < 4 * 1024 * 1024  # of the 96 MB asked for
    hog.close()


def test_a_peer_owed_more_than_its_backlog_in_replies_is_dropped(start_chat_server, connect):
    server = start_chat_server(ServerConfig(max_backlog=64 * 1024, history=0).without_limits())
    filler = connect(server)
    filler.join("filler")
    filler.say_all("y" * 7000 for _ in range(50))
    hog = socket.create_connection(server.address, timeout=TIMEOUT)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.sendall(b'{"type": "join", "name": "hog"}\n' + b'{"type": "history", "limit": 50}\n' * 20)
    left = filler.expect(Left, name="hog")
    assert left.reason == "slow_consumer"
    hog.close()


def test_past_the_global_budget_the_biggest_backlog_goes_first(start_chat_server, connect):
    server = start_chat_server(ServerConfig(max_backlog=256 * 1024 * 1024, max_queued=2 * 1024 * 1024).without_limits())
    talker = connect(server)
    talker.join("talker")
    hog = socket.create_connection(server.address, timeout=TIMEOUT)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.sendall(b'{"type": "join", "name": "hog"}\n')
    talker.expect(Joined, name="hog")
    for batch in range(40):  # up to 28 MB, read by the talker as it goes: more than any kernel buffers
        talker.say_all(f"{batch}.{i} " + "z" * 7000 for i in range(100))
        if any(isinstance(m, Left) for m in talker.seen):
            break
    left = next(m for m in talker.seen if isinstance(m, Left))
    assert (left.name, left.reason) == ("hog", "slow_consumer")
    talker.say("still talking")
    assert talker.expect(ChatMessage, msg="still talking")
    hog.close()


def test_client_text_reaches_the_log_escaped_and_errors_are_paced_per_address(start_chat_server, connect, caplog):
    caplog.set_level(logging.INFO, logger="chat")
    server = start_chat_server(ServerConfig().without_limits())
    for _ in range(5):
        client = connect(server)
        client.join("mallory")
        client.send({"type": "private", "to": "x\n2026 forged\x1b[2J", "msg": "hi"})
        client.send({"type": "private", "to": "bob", "msg": "hi"})
        client.expect(ErrorReply)
        client.expect(ErrorReply)
        client.send({"type": "leave"})
        client.expect_closed()
    text = caplog.text
    assert "\x1b" not in text and "\n2026 forged" not in text
    assert text.count("no_such_user") + text.count("invalid_field") <= 6


VALID_LINES = [
    {"type": "join", "name": "fuzz"},
    {"type": "join", "room": "dev"},
    {"type": "part", "room": "dev"},
    {"type": "message", "msg": "hi"},
    {"type": "message", "room": "dev", "msg": "hi dev"},
    {"type": "action", "msg": "waves"},
    {"type": "private", "to": "bystander", "msg": "psst"},
    {"type": "topic", "topic": "fuzzing"},
    {"type": "nick", "name": "fuzz2"},
    {"type": "who"},
    {"type": "rooms"},
    {"type": "ping"},
    {"type": "history", "limit": 3},
    {"type": "history", "before": 2**63, "limit": 3},
    {"type": "history", "before": 2**53, "limit": 500},
    {"name": "classic", "msg": "old style"},
]
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(["type", "name", "room", "msg", "to", "since", "before", "limit", "topic"])
any_line = st.one_of(
    st.sampled_from([json.dumps(line).encode() for line in VALID_LINES]),
    st.dictionaries(field_names, json_values, max_size=4).map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=60).map(lambda data: data.replace(b"\n", b" ")),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(any_line, max_size=12), min_size=1, max_size=3))
def test_random_lines_from_several_clients_never_hurt_the_server_or_the_others(fuzz_server, scripts):
    server, bystander = fuzz_server
    clients = [LineClient(server.address) for _ in scripts]
    try:
        for client, script in zip(clients, scripts, strict=True):
            client.send_raw(b"".join(line + b"\n" for line in script) + b'{"type": "leave"}\n')
        for client in clients:
            client.expect_closed()  # every line it got decoded as a documented server line
        bystander.say("still fine")
        bystander.expect(ChatMessage, msg="still fine")
    finally:
        for client in clients:
            client.close()
    assert server.errors == []


@pytest.fixture(params=["memory", "sqlite"])
def fuzz_server(request, start_chat_server, connect, tmp_path):
    db = ":memory:" if request.param == "memory" else str(tmp_path / "fuzz.db")
    server = start_chat_server(ServerConfig(db=db).without_limits())
    bystander = connect(server)
    bystander.join("bystander")
    return server, bystander


def test_a_client_that_kept_talking_through_a_server_stall_is_not_called_idle(chat_server_process):
    # The timers and the stall scale together: the stall stays longer than the idle timeout.
    server = chat_server_process("--ping-interval", str(scaled(0.4)), "--idle-timeout", str(scaled(1.0)))
    alice = LineClient(server.address)
    alice.join("alice")
    server.process.send_signal(signal.SIGSTOP)
    try:
        # The stall itself is the scenario: longer than the idle timeout, with
        # alice's lines waiting unread in the server's socket all along.
        for _ in range(6):
            alice.send({"type": "pong"})
            threading.Event().wait(scaled(0.25))
    finally:
        server.process.send_signal(signal.SIGCONT)
    alice.say("I was here all along")
    assert alice.expect(ChatMessage).msg == "I was here all along"
    assert not [m for m in alice.seen if isinstance(m, ErrorReply)]


class _StalledTransport:
    """A connection whose bytes wait unread, as after a stall of the whole server."""

    buffers = False

    def __init__(self, waiting: bool) -> None:
        self.waiting = waiting
        self.shut = False

    def try_send(self, data: bytes) -> int:
        return len(data)

    def shutdown(self) -> None:
        self.shut = True

    def fileno(self) -> int:
        return -1

    def has_input(self) -> bool:
        return self.waiting

    def wants_write(self) -> bool:
        return False

    def receive(self, data: bytes) -> bytes:
        return data


@pytest.mark.parametrize("waiting", [True, False])
def test_the_keepalive_counts_unread_input_as_life(start_chat_server, waiting):
    server = start_chat_server(ServerConfig(idle_timeout=3600, ping_interval=3600))
    peer = server.outbox.register(_StalledTransport(waiting), "stalled")
    session = Session(peer, "stalled", "\0inbox test")
    session.last_heard -= 7200
    server._check_alive(session, time.monotonic())
    assert (peer.state is PeerState.OPEN) is waiting
    assert (peer.drop_reason is None) is waiting
    server.outbox.release(peer, TIMEOUT)


def test_a_look_alike_name_is_refused_over_the_wire(connect):
    alice, impostor = connect(), connect()
    alice.join("alice")
    impostor.send({"type": "join", "name": "\u0430lice"})  # Cyrillic a
    refusal = impostor.expect(ErrorReply)
    assert refusal.code == "name_taken" and "alice" in refusal.detail
    assert impostor.join("carol").name == "carol"  # the connection stays usable


def test_a_room_keeps_its_history_within_its_byte_limit(start_chat_server, connect):
    server = start_chat_server(ServerConfig(retention_bytes=64 * 1024).without_limits())
    talker = connect(server)
    talker.join("talker")
    talker.say_all(f"{i} " + "w" * 2000 for i in range(100))  # about 200 KB
    newcomer = connect(server)
    newcomer.send({"type": "join", "name": "newcomer", "since": 0})
    welcome = newcomer.expect(Welcome)
    assert welcome.last_id == 100 and 0 < welcome.history < 40
    gap = newcomer.expect(Gap)
    assert gap.first == 1 and gap.last == 100 - welcome.history


def test_joins_and_history_a_client_asks_for_by_itself_are_paced_without_a_word(alice_and_bob_under):
    """A client that comes back to several rooms joins each and asks each for a page of context:
    over the burst, but nothing its person said waits, so nothing is said about it."""
    alice, _ = alice_and_bob_under(ServerConfig(flood_burst=10, flood_rate=50, flood_max_delay=10))
    for room in ("r0", "r1", "r2", "r3"):
        alice.send({"type": "join", "room": room})
        alice.send({"type": "history", "room": room, "limit": 5})
    alice.expect(HistoryPage, room="r3")  # served, paced
    assert not [line for line in alice.seen if isinstance(line, Notice)]
    alice.send_raw(lines(30))  # now what alice says waits: she is told
    assert alice.expect(Notice).code == "rate_limited"
