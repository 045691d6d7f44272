"""The Outbox's writer thread over fake transports: who gets which bytes, in what order, and when
a connection is let go. No sockets: each fake's peer reads exactly as many bytes as the test allows."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pytest

from chat.server.fanout import PeerState
from chat.server.lines import Line
from chat.server.outbox import INLINE_PASS_MAX, SEND_CHUNK, Outbox, Peer
from chat.testing import TIMEOUT


class FakeTransport:
    """A connection whose peer reads only the bytes the test allows (`allow`), or everything.

    The writer waits for a connection it could not finish to become writable, through
    fileno(): here the write end of a pipe that is kept full, so never writable, while the
    peer may read nothing more, and emptied when the test allows more bytes.
    """

    buffers = False

    def __init__(self, allowance: int | None = None) -> None:
        #: Bytes the peer will still read (None: all of them).
        self.allowance = allowance
        self.received = bytearray()
        #: The names of the threads that sent to it.
        self.senders: set[str] = set()
        self.shut = threading.Event()
        self.changed = threading.Condition()
        self._gate_out, self._gate_in = os.pipe()
        os.set_blocking(self._gate_out, False)
        os.set_blocking(self._gate_in, False)
        if allowance == 0:
            self._close_gate()

    # --- what the writer calls (the Transport protocol) ------------------------------------

    def try_send(self, data: memoryview | bytes) -> int | None:
        with self.changed:
            count = len(data) if self.allowance is None else min(self.allowance, len(data))
            self.received += data[:count]
            self.senders.add(threading.current_thread().name)
            if self.allowance is not None:
                self.allowance -= count
                if self.allowance == 0:
                    self._close_gate()
            self.changed.notify_all()
            return count

    def shutdown(self) -> None:
        self.shut.set()

    def fileno(self) -> int:
        return self._gate_in

    def has_input(self) -> bool:
        return False

    def wants_write(self) -> bool:
        return False

    def receive(self, data: bytes) -> bytes | None:
        return data

    # --- what the tests call -----------------------------------------------------------

    def allow(self, count: int | None) -> None:
        """The peer reads `count` more bytes (None: everything from now on)."""
        with self.changed:
            self.allowance = None if count is None else (self.allowance or 0) + count
            self._open_gate()

    def wait_for(self, predicate: Callable[[bytes], bool], what: str) -> bytes:
        """What the peer has read, once `predicate` holds for it."""
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(bytes(self.received)), TIMEOUT):
                raise AssertionError(f"the peer never read {what}; it read {bytes(self.received)!r}")
            return bytes(self.received)

    def wait_until_read(self, expected: bytes) -> None:
        """Wait until the peer has read exactly `expected`."""
        got = self.wait_for(lambda received: len(received) >= len(expected), f"{len(expected)} bytes")
        assert got == expected

    def close(self) -> None:
        os.close(self._gate_out)
        os.close(self._gate_in)

    def _close_gate(self) -> None:
        try:
            while os.write(self._gate_in, b"\0" * 65536):
                pass
        except BlockingIOError:
            pass  # the pipe is full: not writable until the gate opens

    def _open_gate(self) -> None:
        try:
            while os.read(self._gate_out, 65536):
                pass
        except BlockingIOError:
            pass  # empty: writable


class Harness:
    """One started Outbox and the fake connections registered with it."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.transports: list[FakeTransport] = []

    def peer(self, label: str, *rooms: str, allowance: int | None = None) -> tuple[Peer, FakeTransport]:
        """A registered connection subscribed to `rooms`, whose peer reads `allowance` bytes."""
        transport = FakeTransport(allowance)
        self.transports.append(transport)
        peer = self.outbox.register(transport, label)
        for room in rooms:
            self.outbox.subscribe(peer, room)
        return peer, transport


@pytest.fixture
def idle_outbox() -> Iterator[Harness]:
    """An Outbox whose writer thread is not started: only a thread in writing_here sends."""
    harness = Harness(Outbox())
    yield harness
    harness.outbox.stop(TIMEOUT)
    for transport in harness.transports:
        transport.close()
    assert harness.outbox.failure is None, f"a pass crashed: {harness.outbox.failure!r}"


@pytest.fixture
def start_outbox() -> Iterator[Callable[..., Harness]]:
    """`start_outbox(max_backlog=...)`: a running Outbox; stopped at teardown, its writer must not have crashed."""
    harnesses: list[Harness] = []

    def start(**config: int) -> Harness:
        outbox = Outbox(**config)
        outbox.start()
        harnesses.append(Harness(outbox))
        return harnesses[-1]

    yield start
    for harness in harnesses:
        harness.outbox.stop(TIMEOUT)
        assert not harness.outbox._writer_thread.is_alive(), "the writer did not stop"
        for transport in harness.transports:
            transport.close()
        assert harness.outbox.failure is None, f"the writer crashed: {harness.outbox.failure!r}"


def numbered(count: int, prefix: str = "line") -> list[bytes]:
    return [f"{prefix} {i}\n".encode() for i in range(count)]


def test_a_published_line_reaches_every_subscriber_in_order_and_nobody_else(start_outbox):
    box = start_outbox()
    readers = [box.peer(f"reader{i}", "lobby") for i in range(3)]
    _, elsewhere = box.peer("elsewhere", "dev")
    lines = numbered(200)
    for line in lines:
        box.outbox.publish("lobby", Line(line))
    box.outbox.publish("dev", Line(b"only dev\n"))
    for _, transport in readers:
        transport.wait_until_read(b"".join(lines))
    elsewhere.wait_until_read(b"only dev\n")


def test_a_peer_reading_a_few_bytes_at_a_time_gets_every_byte_once_in_order(start_outbox):
    box = start_outbox()
    _, transport = box.peer("trickle", "lobby", allowance=0)
    expected = b"".join(numbered(20))
    for line in numbered(20):
        box.outbox.publish("lobby", Line(line))
    while len(transport.received) < len(expected):
        before = len(transport.received)
        transport.allow(7)
        transport.wait_for(lambda received, before=before: len(received) >= min(before + 7, len(expected)), "7 more")
    assert transport.received == expected


def test_a_peer_that_reads_nothing_is_dropped_past_its_backlog_while_the_others_go_on(start_outbox):
    box = start_outbox(max_backlog=4096)
    slow, slow_transport = box.peer("slow", "lobby", allowance=0)
    _, fast = box.peer("fast", "lobby")
    lines = numbered(100, "x" * 90)  # about 10 KB: past the slow peer's 4 KB
    for line in lines:
        box.outbox.publish("lobby", Line(line))
    fast.wait_until_read(b"".join(lines))
    # The writer judges a backlog when it next has something for the peer: the room goes on.
    box.outbox.publish("lobby", Line(b"after\n"))
    assert slow.released.wait(TIMEOUT)
    assert (slow.state, slow.drop_reason) == (PeerState.RELEASED, "slow_consumer")
    assert slow_transport.shut.is_set()  # its handler, blocked reading, is woken
    assert slow_transport.received == b""
    fast.wait_until_read(b"".join(lines) + b"after\n")


def test_a_peer_owed_more_than_its_backlog_in_its_own_replies_is_dropped(start_outbox):
    box = start_outbox(max_backlog=4096)
    asker, transport = box.peer("asker", allowance=0)
    for page in numbered(100, "page" * 20):
        box.outbox.send_to(asker, Line(page))
    assert asker.released.wait(TIMEOUT)
    assert asker.drop_reason == "slow_consumer" and transport.shut.is_set()


def test_close_sends_what_is_owed_and_the_final_line_then_releases(start_outbox):
    box = start_outbox()
    peer, transport = box.peer("leaving", "lobby", allowance=0)
    box.outbox.publish("lobby", Line(b"last words\n"))
    box.outbox.close(peer, Line(b"goodbye\n"), reason="kicked")
    box.outbox.publish("lobby", Line(b"said after the close\n"))  # not owed: it was published after
    assert peer.state is PeerState.CLOSING and not transport.shut.is_set()
    transport.allow(None)  # the peer reads again
    assert peer.released.wait(TIMEOUT)
    assert transport.received == b"last words\ngoodbye\n"
    assert transport.shut.is_set() and peer.drop_reason == "kicked"


def test_wait_drained_returns_once_the_peer_has_read_its_own_lines(start_outbox):
    box = start_outbox()
    peer, transport = box.peer("reader", allowance=0)
    page = b"p" * 10_000 + b"\n"
    box.outbox.send_to(peer, Line(page))
    drained: list[bool] = []
    waiter = threading.Thread(target=lambda: drained.append(box.outbox.wait_drained(peer, below=1)))
    waiter.start()
    transport.allow(None)
    waiter.join(TIMEOUT)
    assert drained == [True]
    assert transport.received == page  # it returned only once all of it was read


def test_wait_drained_gives_up_when_the_peer_is_closed(start_outbox):
    box = start_outbox()
    peer, _ = box.peer("never reads", allowance=0)
    box.outbox.send_to(peer, Line(b"p" * 10_000 + b"\n"))
    drained: list[bool] = []
    waiter = threading.Thread(target=lambda: drained.append(box.outbox.wait_drained(peer, below=1)))
    waiter.start()
    box.outbox.close(peer)
    waiter.join(TIMEOUT)
    assert drained == [False]


def test_close_all_says_the_final_line_to_every_peer_and_to_any_that_comes_later(start_outbox):
    box = start_outbox()
    peers = [box.peer(f"member{i}", "lobby") for i in range(3)]
    box.outbox.publish("lobby", Line(b"before\n"))
    box.outbox.close_all(Line(b"shutting down\n"))
    for peer, transport in peers:
        assert peer.released.wait(TIMEOUT)
        assert transport.received == b"before\nshutting down\n"
        assert transport.shut.is_set() and peer.drop_reason == "shutdown"
    late, late_transport = box.peer("late")
    assert late.released.wait(TIMEOUT)
    assert late_transport.received == b"shutting down\n" and late.drop_reason == "shutdown"


def test_a_held_subscription_sends_its_history_first_then_what_was_said_meanwhile(start_outbox):
    box = start_outbox()
    _, member = box.peer("member", "lobby")
    joiner, transport = box.peer("joiner")
    box.outbox.subscribe(joiner, "lobby", held=True)
    box.outbox.publish("lobby", Line(b"live 1\n"))
    box.outbox.send_held(joiner, "lobby", Line(b"history 1\n"))
    box.outbox.publish("lobby", Line(b"live 2\n"))
    box.outbox.send_held(joiner, "lobby", Line(b"history 2\n"))  # still before every live line
    member.wait_until_read(b"live 1\nlive 2\n")  # the room went on for the others
    box.outbox.send_to(joiner, Line(b"welcome\n"))  # its own lines are not held
    transport.wait_for(lambda received: b"welcome\n" in received, "its welcome")
    box.outbox.release_held(joiner, "lobby")
    box.outbox.publish("lobby", Line(b"live 3\n"))
    transport.wait_until_read(b"history 1\nhistory 2\nwelcome\nlive 1\nlive 2\nlive 3\n")


class RecordingTransport(FakeTransport):
    """A FakeTransport that notes each send in a list shared by several, and may run `hook` on
    its first send (from the writer thread, between sends: as a handler queueing a line would)."""

    def __init__(self, label: str, order: list[str], hook: Callable[[], None] | None = None) -> None:
        super().__init__(None)
        self.label, self.order, self.hook = label, order, hook

    def try_send(self, data: memoryview | bytes) -> int | None:
        self.order.append(self.label)
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return super().try_send(data)


def test_a_line_of_its_own_queued_during_a_long_pass_goes_out_before_the_pass_ends(start_outbox):
    """A joiner's welcome does not wait for a pass over a room of thousands: every SEND_CHUNK sends
    the writer serves what connections outside the pass are owed alone. One in the pass is taken
    once per pass, so its own line still comes after the room's line queued before it."""
    box = start_outbox()
    order: list[str] = []
    newcomer = RecordingTransport("newcomer", order)
    box.transports.append(newcomer)
    newcomer_peer = box.outbox.register(newcomer, "newcomer")
    members: list[tuple[Peer, RecordingTransport]] = []
    fired = threading.Event()

    def queue_lines_once() -> None:  # on the pass's first send, as handlers would meanwhile
        if not fired.is_set():
            fired.set()
            box.outbox.send_to(newcomer_peer, Line(b"welcome\n"))
            for peer, _ in members:
                box.outbox.send_to(peer, Line(b"reply\n"))

    for i in range(2 * SEND_CHUNK + 10):
        transport = RecordingTransport(f"m{i}", order, queue_lines_once)
        box.transports.append(transport)
        peer = box.outbox.register(transport, f"m{i}")
        box.outbox.subscribe(peer, "lobby")
        members.append((peer, transport))
    box.outbox.publish("lobby", Line(b"said\n"))
    newcomer.wait_until_read(b"welcome\n")
    for _, transport in members:
        transport.wait_until_read(b"said\nreply\n")
    assert order.index("newcomer") == SEND_CHUNK  # at the first stop, not after the whole room


def test_a_small_rooms_line_said_in_writing_here_is_sent_by_the_saying_thread_before_it_returns(idle_outbox):
    """At a low rate a line to a small room wakes no other thread: the writer here never runs."""
    members = [idle_outbox.peer(f"m{i}", "lobby") for i in range(10)]
    _, elsewhere = idle_outbox.peer("elsewhere", "dev")
    with idle_outbox.outbox.writing_here():
        idle_outbox.outbox.publish("lobby", Line(b"said\n"))
        assert all(transport.received == b"" for _, transport in members)  # not before the scope ends
    me = threading.current_thread().name
    for _, transport in members:
        assert (bytes(transport.received), transport.senders) == (b"said\n", {me})
    assert elsewhere.received == b""


def test_a_big_rooms_line_said_in_writing_here_is_left_to_the_writer(idle_outbox):
    members = [idle_outbox.peer(f"m{i}", "lobby") for i in range(INLINE_PASS_MAX + 1)]
    with idle_outbox.outbox.writing_here():
        idle_outbox.outbox.publish("lobby", Line(b"said\n"))
    assert all(transport.received == b"" for _, transport in members)
    idle_outbox.outbox.start()
    for _, transport in members:
        transport.wait_until_read(b"said\n")
        assert transport.senders == {"chat-outbox"}


def test_lines_said_at_once_by_many_threads_in_writing_here_arrive_once_each_in_order(start_outbox):
    """Passes on the saying threads and the writer's take turns: no line doubled, lost or reordered."""
    box = start_outbox()
    rooms = [f"room{r}" for r in range(4)]
    readers = [box.peer(f"{room}-{i}", room) for room in rooms for i in range(5)]
    _, everywhere = box.peer("everywhere", *rooms)
    per_thread = 300

    def talk(room: str, thread: int) -> None:
        for i in range(per_thread):
            with box.outbox.writing_here():
                box.outbox.publish(room, Line(f"{thread} {i}\n".encode()))

    threads = [threading.Thread(target=talk, args=(rooms[t % 4], t), name=f"talker{t}") for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    for peer, transport in [*readers, (None, everywhere)]:
        talkers = [t for t in range(8) if peer is None or rooms[t % 4] in peer.cursors]
        owed = len(talkers) * per_thread
        got = transport.wait_for(lambda r, owed=owed: r.count(b"\n") >= owed, "every line")
        lines = got.decode().splitlines()
        assert len(lines) == owed
        for t in talkers:
            assert [line for line in lines if line.split()[0] == str(t)] == [f"{t} {i}" for i in range(per_thread)]
