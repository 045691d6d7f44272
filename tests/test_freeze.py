"""A server frozen longer than its idle timeout (a VM pause, SIGSTOP) cuts nobody who kept
talking meanwhile: their lines waited in the kernel, which is life, not silence."""

from __future__ import annotations

import signal
import threading
import time

from chat.server.config import ServerConfig
from chat.server.fanout import PeerState
from chat.server.session import Session
from chat.testing import LineClient, scaled
from chat.wire.protocol import ChatMessage, ErrorReply

MEMBERS = 60
FREEZES = 3


def ping_all(members: list[LineClient], cut: set[int]) -> None:
    """Every member pings; one whose connection the server closed is noted as cut."""
    for n, member in enumerate(members):
        if n not in cut:
            try:
                member.send({"type": "ping"})
            except OSError:
                cut.add(n)


def test_members_who_kept_pinging_through_three_freezes_are_never_cut(chat_server_process):
    # Every freeze outlasts the idle timeout; the timers and the freezes scale together.
    idle = scaled(2.0)  # short timers, but not so short that a busy machine's scheduling looks like a cut
    server = chat_server_process("--ping-interval", str(idle / 2), "--idle-timeout", str(idle),
                                 "--max-per-address", "0", "--flood-rate", "0")  # fmt: skip
    members = [LineClient(server.address) for _ in range(MEMBERS)]
    cut: set[int] = set()
    try:
        for n, member in enumerate(members):
            member.join(f"m{n}")
        for _ in range(FREEZES):
            server.process.send_signal(signal.SIGSTOP)
            try:
                frozen_until = time.monotonic() + 1.6 * idle
                while time.monotonic() < frozen_until:  # the freeze itself is the scenario
                    ping_all(members, cut)
                    threading.Event().wait(idle / 8)
            finally:
                server.process.send_signal(signal.SIGCONT)
            awake_until = time.monotonic() + idle / 2  # long enough for the keepalive to look at everyone
            while time.monotonic() < awake_until:
                ping_all(members, cut)
                threading.Event().wait(idle / 8)
        assert not cut, f"cut after a freeze: {sorted(cut)}; {[line for line in server.log if 'silent' in line]}"
        # Everyone speaks first: a member left waiting, silent, while the others took turns would be
        # cut for its silence on a slow machine, as it should be.
        for n, member in enumerate(members):
            member.say(f"m{n} is still here")
        for n, member in enumerate(members):
            member.expect(ChatMessage, msg=f"m{n} is still here")
        told = [n for n, member in enumerate(members) if any(isinstance(m, ErrorReply) for m in member.seen)]
        assert told == [], f"told off after a freeze: {told}"
    finally:
        for member in members:
            member.close()


class _ReadMeanwhile:
    """A connection whose waiting bytes its handler reads between the keepalive's two looks:
    the handler marks the session heard, then the bytes are gone from the socket."""

    buffers = False

    def __init__(self) -> None:
        self.session: Session[object] | None = None

    def try_send(self, data: bytes) -> int:
        return len(data)

    def shutdown(self) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def has_input(self) -> bool:
        assert self.session is not None
        self.session.heard()  # the handler thread, woken after the freeze, got there first
        return False

    def wants_write(self) -> bool:
        return False

    def receive(self, data: bytes) -> bytes:
        return data


def test_input_read_by_the_handler_while_the_keepalive_looks_is_life(start_chat_server):
    server = start_chat_server(ServerConfig(idle_timeout=3600, ping_interval=3600))
    transport = _ReadMeanwhile()
    peer = server.outbox.register(transport, "resumed")
    session: Session[object] = Session(peer, "resumed", "\0inbox test")
    transport.session = session
    session.last_heard -= 7200  # silent for longer than the idle timeout, as seen before the freeze
    server._check_alive(session, time.monotonic())  # type: ignore[arg-type]
    assert peer.state is PeerState.OPEN and peer.drop_reason is None


class _BeingRead(_ReadMeanwhile):
    """A connection whose handler was frozen between hearing the client and reading its socket:
    the bytes are being read now, and the last time it was heard is from before the freeze."""

    def has_input(self) -> bool:
        return False


def test_input_being_read_when_the_keepalive_looks_is_life(start_chat_server):
    server = start_chat_server(ServerConfig(idle_timeout=3600, ping_interval=3600))
    transport = _BeingRead()
    peer = server.outbox.register(transport, "resumed")
    session: Session[object] = Session(peer, "resumed", "\0inbox test")
    transport.session = session
    session.last_heard -= 7200  # heard just before the freeze, which came before its read
    session.reading = True
    server._check_alive(session, time.monotonic())  # type: ignore[arg-type]
    assert peer.state is PeerState.OPEN and peer.drop_reason is None
