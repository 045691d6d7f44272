"""A line's `cid` over real sockets: a repeat is kept once and answered to its sender only,
on the memory store, SQLite and Redis, after a drop and after a restart."""

from __future__ import annotations

import json

import pytest

from chat.server.config import ServerConfig
from chat.testing import LineClient
from chat.wire.protocol import Action, ChatMessage, ErrorReply, PrivateMessage, Welcome


def first_join(client: LineClient, name: str, **fields: object) -> Welcome:
    client.send({"type": "join", "name": name, **fields})
    return client.expect(Welcome)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def config(request: pytest.FixtureRequest, tmp_path) -> ServerConfig:
    """Where the lines are kept. Ask for it before start_chat_server: its Redis then stops after
    the servers that use it."""
    if request.param == "redis":
        return ServerConfig(redis=request.getfixturevalue("redis_server").url)
    return ServerConfig(db=":memory:" if request.param == "memory" else str(tmp_path / "chat.db"))


def test_a_repeated_cid_is_kept_once_and_answered_to_its_sender_alone(config, start_chat_server, connect):
    server = start_chat_server(config)
    alice, bob = connect(server), connect(server)
    first_join(alice, "alice")
    first_join(bob, "bob")
    alice.send({"type": "message", "msg": "release friday", "cid": "c-1"})
    echo = alice.expect(ChatMessage, msg="release friday")
    assert echo.cid == "c-1"
    seen = bob.expect(ChatMessage, msg="release friday")
    assert (seen.id, seen.cid) == (echo.id, None)
    alice.send({"type": "message", "msg": "release friday", "cid": "c-1"})
    again = alice.expect(ChatMessage, msg="release friday")
    assert (again.id, again.time, again.cid) == (echo.id, echo.time, "c-1")
    alice.send({"type": "action", "msg": "waves", "cid": "c-2"})
    assert alice.expect(Action, msg="waves").cid == "c-2"
    assert bob.next() == Action(room="lobby", id=echo.id + 1, name="alice", msg="waves", time=bob.seen[-1].time)
    carol = connect(server)
    welcome = first_join(carol, "carol")
    assert (welcome.last_id, welcome.history) == (echo.id + 1, 2)


def test_the_same_cid_from_another_identity_is_its_own_line(config, start_chat_server, connect):
    server = start_chat_server(config)
    alice, bob = connect(server), connect(server)
    first_join(alice, "alice")
    first_join(bob, "bob")
    alice.send({"type": "message", "msg": "one", "cid": "same"})
    mine = alice.expect(ChatMessage, msg="one")
    bob.send({"type": "message", "msg": "two", "cid": "same"})
    theirs = bob.expect(ChatMessage, msg="two")
    assert (theirs.id, theirs.cid) == (mine.id + 1, "same")
    assert alice.expect(ChatMessage, msg="two").cid is None


def test_lines_said_together_with_one_cid_are_kept_once(config, start_chat_server, connect):
    server = start_chat_server(config)
    alice = connect(server)
    first_join(alice, "alice")
    line = {"type": "message", "msg": "twice in one breath", "cid": "burst"}
    alice.send_raw((json.dumps(line) + "\n").encode() * 2)
    echoes = [alice.expect(ChatMessage, msg="twice in one breath") for _ in range(2)]
    assert {(e.id, e.cid) for e in echoes} == {(1, "burst")}


def test_a_drop_before_the_echo_then_a_resend_keeps_one_line(config, start_chat_server, connect):
    server = start_chat_server(config)
    alice, bob = connect(server), connect(server)
    token = first_join(alice, "alice").token
    first_join(bob, "bob")
    alice.send({"type": "message", "msg": "did it arrive?", "cid": "drop-1"})
    alice.close()  # before reading the echo
    again = connect(server)
    replayed = first_join(again, "alice", token=token).history  # lines kept before, without cids
    assert all(again.next().cid is None for _ in range(replayed))  # type: ignore[union-attr]
    again.send({"type": "message", "msg": "did it arrive?", "cid": "drop-1"})
    echo = again.expect(ChatMessage, msg="did it arrive?")
    assert (echo.id, echo.cid) == (1, "drop-1")
    again.send({"type": "message", "msg": "after"})
    assert bob.expect(ChatMessage, msg="did it arrive?").id == 1
    assert bob.expect(ChatMessage).msg == "after"  # the resend reached nobody else


def test_a_repeated_cid_after_a_restart_is_answered_not_kept(start_chat_server, connect, tmp_path):
    config = ServerConfig(db=str(tmp_path / "chat.db"))
    first = start_chat_server(config)
    alice = connect(first)
    token = first_join(alice, "alice").token
    alice.send({"type": "message", "msg": "before the restart", "cid": "r-1"})
    echo = alice.expect(ChatMessage, msg="before the restart")
    alice.close()
    first.stop()
    second = start_chat_server(config)
    again = connect(second)
    assert first_join(again, "alice", token=token).history == 1
    assert again.expect(ChatMessage, msg="before the restart").cid is None  # the history line
    again.send({"type": "message", "msg": "before the restart", "cid": "r-1"})
    repeat = again.expect(ChatMessage, msg="before the restart")
    assert (repeat.id, repeat.time, repeat.cid) == (echo.id, echo.time, "r-1")
    again.send({"type": "message", "msg": "new"})
    assert again.expect(ChatMessage, msg="new").id == echo.id + 1


def test_a_repeated_private_cid_is_answered_to_its_sender_alone(config, start_chat_server, connect):
    server = start_chat_server(config)
    alice, bob = connect(server), connect(server)
    first_join(alice, "alice")
    first_join(bob, "bob")
    alice.send({"type": "private", "to": "bob", "msg": "psst", "cid": "p-1"})
    echo = alice.expect(PrivateMessage, msg="psst")
    assert echo.cid == "p-1"
    assert bob.expect(PrivateMessage, msg="psst").cid is None
    alice.send({"type": "private", "to": "bob", "msg": "psst", "cid": "p-1"})
    again = alice.expect(PrivateMessage, msg="psst")
    assert (again.id, again.time, again.cid) == (echo.id, echo.time, "p-1")
    alice.send({"type": "private", "to": "bob", "msg": "next"})
    assert bob.expect(PrivateMessage).msg == "next"  # nothing between: the repeat reached bob not


@pytest.mark.parametrize("cid", ["", "x" * 65, "tab\there", "é"])
def test_a_cid_that_is_not_1_to_64_printable_ascii_is_refused(chat_server, connect, cid):
    alice = connect(chat_server)
    first_join(alice, "alice")
    alice.send({"type": "message", "msg": "hi", "cid": cid})
    assert alice.expect(ErrorReply).code == "invalid_field"
