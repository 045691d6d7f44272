"""The client core against a real server: join, talk, and come back after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from chat.client.connection import ChatClient, ConnectionLost, PutOut, Reconnected, SignedInElsewhere
from chat.errors import ConnectionClosed, JoinRefused
from chat.server.tcp import ServerConfig
from chat.testing import TIMEOUT, LineClient, restartable_port, scaled
from chat.wire.codec import encode
from chat.wire.protocol import (
    ChatMessage,
    Joined,
    Left,
    Moderation,
    Nick,
    PrivateMessage,
    Renamed,
    SendMessage,
    SendPrivate,
    SessionToken,
    Users,
    Welcome,
    Who,
    room_key,
)

T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))  # type: ignore[arg-type]


async def next_of(client: ChatClient, kind: Any) -> Any:
    """The next event of `kind`, skipping others."""
    async for event in client.events():
        if isinstance(event, kind):
            return event
    raise AssertionError(f"events ended before a {kind}")


def test_join_say_and_receive(chat_server):
    async def scenario():
        alice = ChatClient(*chat_server.address, "alice")
        bob = ChatClient(*chat_server.address, "bob")
        welcome = await alice.connect()
        assert welcome.model_copy(update={"token": None, "account": None}) == Welcome(
            name="alice", users=["alice"], history=0
        )
        assert welcome.token and welcome.account is False
        await bob.connect()
        assert (await next_of(alice, Joined)).name == "bob"
        assert alice.users == ["alice", "bob"]
        await alice.send(SendMessage(msg="hi bob"))
        message = await next_of(bob, ChatMessage)
        assert (message.name, message.msg) == ("alice", "hi bob")
        await alice.close()
        assert (await next_of(bob, Left)).reason == "quit"
        await bob.close()

    run(scenario())


def test_private_message_and_name_change(chat_server):
    async def scenario():
        alice = ChatClient(*chat_server.address, "alice")
        bob = ChatClient(*chat_server.address, "bob")
        await alice.connect()
        await bob.connect()
        await alice.send(SendPrivate(to="bob", msg="psst"))
        assert (await next_of(bob, PrivateMessage)).msg == "psst"
        await bob.send(Nick(name="robert"))
        assert (await next_of(bob, Renamed)).new == "robert"
        assert bob.name == "robert"
        assert (await next_of(alice, Renamed)).new == "robert"
        assert alice.users == ["alice", "robert"]
        await alice.close()
        await bob.close()

    run(scenario())


def test_a_who_reply_refreshes_the_member_list_and_the_roles(chat_server, connect):
    async def scenario():
        alice = ChatClient(*chat_server.address, "alice", rooms=["den"])
        await alice.connect()
        bob = connect()
        await asyncio.to_thread(bob.join, "bob")
        await asyncio.to_thread(bob.send, {"type": "join", "room": "den"})
        assert (await next_of(alice, Joined)).name == "bob"
        view = alice.rooms[room_key("den")]
        view.users, view.roles = ["ghost"], {"ghost": "op"}  # as if some events had been missed
        await alice.send(Who(room="den"))
        await next_of(alice, Users)
        assert (view.users, view.roles) == (["alice", "bob"], {})
        await alice.close()

    run(scenario())


def test_taken_name_is_refused_with_the_servers_reason(chat_server):
    async def scenario():
        first = ChatClient(*chat_server.address, "alice")
        await first.connect()
        second = ChatClient(*chat_server.address, "ALICE")
        with pytest.raises(JoinRefused) as refused:
            await second.connect()
        assert refused.value.code == "name_taken"
        await first.close()

    run(scenario())


def test_unreachable_server_is_an_oserror():
    async def scenario():
        client = ChatClient("127.0.0.1", 1, "alice")
        with pytest.raises(OSError):
            await client.connect()

    run(scenario())


def test_reconnects_and_rejoins_after_the_server_restarts(start_chat_server):
    port = restartable_port()
    server = start_chat_server(port=port)

    async def scenario():
        alice = ChatClient("127.0.0.1", port, "alice", first_retry=0.05)
        await alice.connect()
        await asyncio.to_thread(server.stop)
        lost = await next_of(alice, ConnectionLost)
        assert lost.retry_in > 0
        with pytest.raises(ConnectionClosed):
            await alice.send(SendMessage(msg="into the void"))
        await asyncio.to_thread(start_chat_server, None, port)
        assert (await next_of(alice, Reconnected)).attempts >= 1
        assert (await next_of(alice, Welcome)).name == "alice"
        await alice.send(SendMessage(msg="back"))
        assert (await next_of(alice, ChatMessage)).msg == "back"
        await alice.close()

    run(scenario())


def test_reconnect_resumes_with_what_was_said_while_away(start_chat_server, tmp_path):
    config = ServerConfig(db=str(tmp_path / "chat.db"), history=0)  # no history: only a resume brings them
    port = restartable_port()
    server = start_chat_server(config, port)

    async def scenario():
        # The squatter must take the name between two of bob's tries: on this machine's time.
        bob = ChatClient("127.0.0.1", port, "bob", first_retry=scaled(0.5), max_retry=scaled(0.5))
        await bob.connect()
        await asyncio.to_thread(server.stop)
        await next_of(bob, ConnectionLost)
        restarted = await asyncio.to_thread(start_chat_server, config, port)
        # Somebody holds the name "bob" for a while, so bob's client must wait outside.
        squatter = LineClient(restarted.address)
        assert (await asyncio.to_thread(squatter.join, "bob")).name == "bob"
        alice = LineClient(restarted.address)
        await asyncio.to_thread(alice.join, "alice")
        for i in range(20):
            await asyncio.to_thread(alice.say, f"while away {i}")
        await asyncio.to_thread(alice.expect, ChatMessage, msg="while away 19")
        refused = await next_of(bob, ConnectionLost)  # bob's client says why it is still outside
        assert "taken" in refused.detail
        await asyncio.to_thread(squatter.send, {"type": "leave"})
        await next_of(bob, Reconnected)
        said = [(await next_of(bob, ChatMessage)).msg for _ in range(20)]
        assert said == [f"while away {i}" for i in range(20)]
        await asyncio.to_thread(alice.say, "live again")
        assert (await next_of(bob, ChatMessage)).msg == "live again"  # nothing repeated in between
        await bob.close()
        alice.close()
        squatter.close()

    run(scenario())


def test_client_started_with_a_cursor_sees_what_was_said_since(chat_server):
    talker = LineClient(chat_server.address)
    talker.join("talker")
    for i in range(5):
        talker.say(f"m{i}")
    seen_before = talker.expect(ChatMessage, msg="m1").id
    talker.expect(ChatMessage, msg="m4")  # all five kept before bob asks what he missed

    async def scenario():
        bob = ChatClient(*chat_server.address, "bob", since=seen_before)
        welcome = await bob.connect()
        assert welcome.history == 3
        assert [(await next_of(bob, ChatMessage)).msg for _ in range(3)] == ["m2", "m3", "m4"]
        assert bob.last_id == seen_before + 3
        await bob.close()

    run(scenario())
    talker.close()


def test_a_rename_seen_in_two_shared_rooms_is_passed_on_once(chat_server):
    async def scenario():
        alice = ChatClient(*chat_server.address, "alice", rooms=["lobby", "dev"])
        bob = ChatClient(*chat_server.address, "bob", rooms=["lobby", "dev"])
        await alice.connect()
        await bob.connect()
        for client in (alice, bob):  # both are in both rooms once dev's welcome has come
            while (await next_of(client, Welcome)).room != "dev":
                pass
        await alice.send(Nick(name="alicia"))
        await alice.send(SendMessage(room="dev", msg="after"))
        events = []
        async for event in bob.events():
            events.append(event)
            if isinstance(event, ChatMessage) and event.msg == "after":
                break
        assert [(e.old, e.new) for e in events if isinstance(e, Renamed)] == [("alice", "alicia")]
        assert all("alicia" in view.users for view in bob.rooms.values())  # both rooms' lists follow
        await alice.close()
        await bob.close()

    run(scenario())


def test_a_kicked_client_is_out_of_the_room_and_does_not_rejoin_it(chat_server):
    owner = LineClient(chat_server.address)
    owner.join("owner")
    owner.send({"type": "register", "password": "owner password"})
    owner.send({"type": "join", "room": "den"})
    owner.expect(Welcome, room="den")

    async def scenario() -> list[str]:
        bob = ChatClient(*chat_server.address, "bob", rooms=["lobby", "den"])
        await bob.connect()
        await next_of(bob, Welcome)
        owner.expect(Joined, room="den", name="bob")
        owner.send({"type": "kick", "room": "den", "name": "bob", "reason": "out"})
        await next_of(bob, Moderation)
        rooms = [view.name for view in bob.rooms.values()]
        await bob.close()
        return rooms

    assert run(scenario()) == ["lobby"]


def test_a_kicked_client_that_joins_again_stays_despite_the_kick_in_the_history(chat_server):
    owner = LineClient(chat_server.address)
    owner.join("owner")
    owner.send({"type": "register", "password": "owner password"})
    owner.send({"type": "join", "room": "den"})
    owner.expect(Welcome, room="den")

    async def scenario() -> None:
        bob = ChatClient(*chat_server.address, "bob", rooms=["lobby", "den"])
        await bob.connect()
        await next_of(bob, Welcome)
        owner.expect(Joined, room="den", name="bob")
        owner.send({"type": "kick", "room": "den", "name": "bob", "reason": "out"})
        assert (await next_of(bob, PutOut)).room == "den"
        await bob.join("den")
        welcome = await next_of(bob, Welcome)
        assert welcome.room == "den" and welcome.history >= 1  # the kick is replayed with the history
        replayed = await next_of(bob, Moderation)
        assert replayed.action == "kick"
        await bob.send(SendMessage(room="den", msg="back"))  # answered after the history: nothing put us out
        said = await next_of(bob, ChatMessage)
        assert said.msg == "back" and "den" in bob.rooms
        await bob.close()

    run(scenario())


def test_signed_in_elsewhere_waits_for_the_user_instead_of_taking_the_name_back(chat_server):
    async def scenario() -> None:
        first = ChatClient(*chat_server.address, "alice", first_retry=0.01)
        await first.connect()
        second = ChatClient(*chat_server.address, "alice", token=first.token, first_retry=0.01)
        await second.connect()
        assert isinstance(await next_of(first, SignedInElsewhere | ConnectionLost), SignedInElsewhere)
        assert not first.connected and first.retry_at is None
        # If the first were to reconnect it would take the session from the second: the second
        # sees its own line come back with no session_replaced before it.
        await second.send(SendMessage(msg="still mine"))
        async for event in second.events():
            assert not isinstance(event, SignedInElsewhere | ConnectionLost)
            if isinstance(event, ChatMessage):
                break
        assert first.reconnect_now()  # the user asks: it takes the session back, and the second waits
        await next_of(first, Reconnected)
        assert isinstance(await next_of(second, SignedInElsewhere | ConnectionLost), SignedInElsewhere)
        await first.close()
        await second.close()

    run(scenario())


def test_pings_measure_the_lag(chat_server):
    async def scenario():
        client = ChatClient(*chat_server.address, "alice", keepalive=0.01)
        await client.connect()
        try:
            await asyncio.wait_for(client.lag_measured.wait(), TIMEOUT)
            assert client.lag is not None and 0 <= client.lag < TIMEOUT
        finally:
            await client.close()

    run(scenario())


def test_a_server_that_stops_answering_is_taken_for_dead_and_the_reason_said():
    async def scenario():
        async def frozen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()  # the join
            writer.write(encode(Welcome(room="lobby", name="alice", users=["alice"], history=0, last_id=0)))
            while await reader.readline():  # pings read, never answered
                pass
            writer.close()

        server = await asyncio.start_server(frozen, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = ChatClient("127.0.0.1", port, "alice", keepalive=0.02, first_retry=60)
        await client.connect()
        try:
            lost = await next_of(client, ConnectionLost)
            assert lost.detail.startswith("no answer from the server for")
            assert not client.connected
        finally:
            await client.close()
            server.close()

    run(scenario())


def test_a_new_device_of_an_account_joins_the_rooms_the_account_is_in(chat_server, connect):
    laptop = connect()
    laptop.send({"type": "join", "name": "alice", "room": "dev"})
    laptop.expect(Welcome)
    laptop.send({"type": "register", "password": "correct horse battery"})
    laptop.expect(SessionToken)
    laptop.send({"type": "join", "room": "ops"})
    laptop.expect(Welcome, room="ops")
    laptop.send({"type": "leave"})
    laptop.expect_closed()

    async def scenario():
        phone = ChatClient(*chat_server.address, "alice", password="correct horse battery")
        await phone.connect()  # asks for the lobby only
        joined = set()
        while not {"dev", "ops"} <= joined:  # every welcome is an event too, the lobby's first
            joined.add((await next_of(phone, Welcome)).room)
        assert joined == {"lobby", "dev", "ops"}
        await phone.close()
def test_a_line_whose_echo_was_lost_in_a_drop_is_sent_again_kept_once_and_shown_once(start_chat_server, tmp_path):
    server = start_chat_server(ServerConfig(db=str(tmp_path / "chat.db")))

    async def scenario():
        alice = ChatClient(*server.address, "alice", first_retry=scaled(0.05), max_retry=scaled(0.05))
        await alice.connect()
        bob = LineClient(server.address)
        await asyncio.to_thread(bob.join, "bob")
        await alice.send(SendMessage(msg="did it arrive?"))
        writer = alice._writer  # the connection drops before the echo can come back
        assert writer is not None
        writer.transport.abort()
        await next_of(alice, Reconnected)
        shown = await next_of(alice, ChatMessage)
        assert (shown.msg, shown.id) == ("did it arrive?", 1)
        await alice.send(SendMessage(msg="next"))
        assert (await next_of(alice, ChatMessage)).msg == "next"  # not "did it arrive?" a second time
        assert (await asyncio.to_thread(bob.expect, ChatMessage)).msg == "did it arrive?"
        assert (await asyncio.to_thread(bob.expect, ChatMessage)).msg == "next"  # kept once
        assert alice._unechoed == {}
        await alice.close()
        bob.close()

    run(scenario())
