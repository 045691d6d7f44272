"""Listening beyond IPv4 loopback: IPv6, dual stack, and what the server says about it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from chat.client.connection import ChatClient
from chat.server.config import ServerConfig
from chat.testing import TIMEOUT, LineClient
from chat.wire.protocol import ChatMessage, SendMessage


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback")


@needs_ipv6
def test_a_server_on_ipv6_loopback_serves_ipv6_clients(start_chat_server):
    server = start_chat_server(host="::1")
    alice, bob = LineClient(("::1", server.port)), LineClient(("::1", server.port))
    alice.join("alice")
    bob.join("bob")
    alice.say("over IPv6")
    assert bob.expect(ChatMessage).msg == "over IPv6"


@needs_ipv6
def test_a_server_on_every_address_serves_both_families(start_chat_server):
    server = start_chat_server(host="::")
    six, four = LineClient(("::1", server.port)), LineClient(("127.0.0.1", server.port))
    six.join("six")
    four.join("four")
    four.say("from IPv4")
    assert six.expect(ChatMessage).msg == "from IPv4"


@needs_ipv6
def test_per_address_limits_count_ipv4_clients_of_a_dual_stack_server_as_ipv4(start_chat_server):
    server = start_chat_server(ServerConfig(max_per_address=1), host="::")
    clients = [LineClient(("127.0.0.1", server.port)) for _ in range(3)]
    for number, client in enumerate(clients):
        assert client.join(f"c{number}").name == f"c{number}"  # loopback, mapped or not, is exempt


@needs_ipv6
def test_the_client_library_connects_to_an_ipv6_address(start_chat_server):
    server = start_chat_server(host="::1")

    async def scenario() -> str:
        client = ChatClient("::1", server.port, "alice")
        await client.connect()
        await client.send(SendMessage(msg="hi from the client"))
        async for event in client.events():
            if isinstance(event, ChatMessage):
                await client.close()
                return event.msg
        return ""

    assert asyncio.run(asyncio.wait_for(scenario(), TIMEOUT)) == "hi from the client"


def test_the_server_warns_when_it_listens_beyond_loopback_in_clear(chat_server_process):
    loopback = chat_server_process("--port", "0")
    everywhere = chat_server_process("--host", "0.0.0.0", "--port", "0")
    assert "without TLS" in everywhere.wait_for_log("without TLS")
    loopback.stop()  # its whole log is in once it has ended
    assert not any("without TLS" in line for line in loopback.log)
