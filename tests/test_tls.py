"""TLS with real certificates from a test CA: chat, stalls, wrong ports, reloads, refusals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from chat.client.connection import ChatClient
from chat.server.config import ServerConfig
from chat.testing import TIMEOUT, LineClient, scaled
from chat.wire.protocol import ChatMessage, ErrorReply, SendMessage


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(start_chat_server, ca, tmp_path):
    def start(**settings: object):
        cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
        chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
        cert.private_key_pem.write_to_path(str(key))
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        return start_chat_server(ServerConfig(tls_cert=str(chain), tls_key=str(key), **settings))

    return start


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_two_clients_chat_over_tls(tls_server, ca):
    server = tls_server()
    alice = LineClient(server.address, tls=trusting(ca))
    bob = LineClient(server.address, tls=trusting(ca))
    alice.join("alice")
    bob.join("bob")
    alice.say("over TLS")
    assert bob.expect(ChatMessage).msg == "over TLS"
    assert alice.sock.version() in ("TLSv1.2", "TLSv1.3")


def test_a_client_that_never_handshakes_delays_nobody_and_is_closed(tls_server, ca):
    server = tls_server(tls_handshake_timeout=scaled(0.5))  # alice's handshake must fit in it
    silent = socket.create_connection(server.address, timeout=TIMEOUT)
    alice = LineClient(server.address, tls=trusting(ca))
    assert alice.join("alice").name == "alice"
    assert silent.recv(100) == b""  # closed once its handshake time ran out
    silent.close()


def test_plaintext_to_the_tls_port_gets_a_plaintext_error(tls_server):
    server = tls_server()
    plain = LineClient(server.address)
    plain.send({"type": "join", "name": "alice"})
    [refusal] = plain.expect_closed()
    assert isinstance(refusal, ErrorReply) and refusal.code == "tls_required"


def test_tls_to_the_plaintext_port_gets_a_clear_error(chat_server, ca):
    raw = socket.create_connection(chat_server.address, timeout=TIMEOUT)
    context = trusting(ca)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        hello.do_handshake()
    raw.sendall(outgoing.read())
    reply = raw.makefile("rb").readline()
    assert b'"plaintext_only"' in reply
    raw.close()


def test_many_clients_and_one_that_never_reads_over_tls(tls_server, ca):
    server = tls_server(max_backlog=256 * 1024, flood_rate=0)
    stuck = LineClient(server.address, tls=trusting(ca))
    stuck.join("stuck")
    readers = [LineClient(server.address, tls=trusting(ca)) for _ in range(5)]
    for number, reader in enumerate(readers):
        reader.join(f"r{number}")
    talker = readers[0]
    for i in range(300):
        talker.say(f"{i} " + "t" * 1000)
    for reader in readers:
        assert reader.expect(ChatMessage, msg="299 " + "t" * 1000)


def test_the_client_refuses_an_untrusted_certificate_in_one_sentence(tls_server):
    server = tls_server()

    async def scenario() -> str:
        client = ChatClient("127.0.0.1", server.port, "alice", tls=ssl.create_default_context(), reconnect=False)
        try:
            await client.connect()
        except ssl.SSLCertVerificationError as exc:
            return exc.verify_message
        return ""

    assert "certificate" in asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_the_client_library_chats_over_tls(tls_server, ca):
    server = tls_server()

    async def scenario() -> str:
        client = ChatClient("localhost", server.port, "alice", tls=trusting(ca))
        await client.connect()
        await client.send(SendMessage(msg="hi over TLS"))
        async for event in client.events():
            if isinstance(event, ChatMessage):
                await client.close()
                return event.msg
        return ""

    assert asyncio.run(asyncio.wait_for(scenario(), TIMEOUT)) == "hi over TLS"


def test_a_reloaded_certificate_serves_new_connections_and_old_ones_go_on(tls_server, ca, tmp_path):
    server = tls_server()
    before = LineClient(server.address, tls=trusting(ca))
    before.join("before")
    old_serial = before.sock.getpeercert()["serialNumber"]
    renewed = ca.issue_cert("localhost", "127.0.0.1")
    renewed.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "chain.pem").write_bytes(b"".join(blob.bytes() for blob in renewed.cert_chain_pems))
    assert server.reload_tls()
    after = LineClient(server.address, tls=trusting(ca))
    after.join("after")
    assert after.sock.getpeercert()["serialNumber"] != old_serial
    before.say("still here")
    assert after.expect(ChatMessage).msg == "still here"


def test_the_client_command_says_why_it_will_not_connect_in_one_sentence(tls_server, tmp_path):
    server = tls_server()
    env = {**os.environ, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
    result = subprocess.run(
        [sys.executable, "client.py", "--port", str(server.port), "--name", "alice", "--tls"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "certificate is not trusted" in line and "--tls-ca" in line


def test_a_plain_port_beside_tls_serves_plain_lines_on_loopback_only(tls_server, ca):
    server = tls_server(plain_port=0)
    host, port = server.plain_address
    assert host == "127.0.0.1"
    local = LineClient((host, port))
    remote = LineClient(server.address, tls=trusting(ca))
    local.join("local")
    remote.join("remote")
    local.say("plain on loopback")
    assert remote.expect(ChatMessage).msg == "plain on loopback"


def test_a_plain_port_without_tls_is_refused_at_start(start_chat_server):
    with pytest.raises(OSError, match="plain-port"):
        start_chat_server(ServerConfig(plain_port=0))


def test_a_certificate_for_another_host_is_refused(start_chat_server, ca, tmp_path):
    cert = ca.issue_cert("chat.example.org")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "chain.pem").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    server = start_chat_server(ServerConfig(tls_cert=str(tmp_path / "chain.pem"), tls_key=str(tmp_path / "key.pem")))
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        LineClient(server.address, tls=trusting(ca))


def test_sighup_reloads_the_certificate_of_a_running_server(chat_server_process, ca, tmp_path):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "chain.pem").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    server = chat_server_process("--tls-cert", str(tmp_path / "chain.pem"), "--tls-key", str(tmp_path / "key.pem"))
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log("TLS certificate reloaded")
    alice = LineClient(server.address, tls=trusting(ca))
    assert alice.join("alice").name == "alice"


def test_tls_to_the_plain_port_beside_tls_gets_a_clear_error(tls_server, ca):
    server = tls_server(plain_port=0)
    raw = socket.create_connection(server.plain_address, timeout=TIMEOUT)
    hello = trusting(ca).wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        hello.do_handshake()
    raw.sendall(outgoing.read())
    assert b'"plaintext_only"' in raw.makefile("rb").readline()
    raw.close()
