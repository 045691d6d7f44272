"""Every byte the server sends leaves through the Outbox, and never blocks anyone.

The Outbox is the thin, threaded shell around the pure fan-out core
(fanout.py): one lock around every call into it, and one writer thread that
sends each due connection everything it is owed in a single non-blocking
send through its Transport (a handler that said a small room's line while
the writer is idle runs that pass itself: writing_here). Knows threads and selectors, not the protocol:
the delivery edge, where a Line becomes bytes in its peer's dialect (once per
dialect for a room's line, whoever reads it).
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from types import TracebackType

from chat.server.fanout import Fanout, PeerState, Subscriber
from chat.server.lines import JSON_LINES, Dialect, Line, render
from chat.server.transport import Transport

log = logging.getLogger(__name__)

#: How many published lines the writer may fall behind before publishers wait.
#: This is backpressure on senders when the server is at capacity, not a
#: limit on slow readers (that is max_backlog).
DEFAULT_WINDOW = 4096
#: A client's own unsent replies past which the server serves none of its
#: requests (InspIRCd's softsendq): what it asked for leaves before it may ask for more.
SOFT_BACKLOG = 256 * 1024
_OPEN = PeerState.OPEN
#: How often, at most, the writer adds up what every client is owed.
BUDGET_CHECK_INTERVAL = 0.25
#: In a pass over more connections than this, the writer stops after each this many sends to
#: serve those owed lines of their own meanwhile (a joiner's welcome): in a room of thousands a
#: pass takes a second, and a connect storm's joiners waited a pass each for their welcome.
SEND_CHUNK = 256
#: A thread that queued lines sends them itself when the writer is idle and at most this many
#: connections are owed anything (see Outbox.writing_here): a small room's line then wakes no
#: other thread. A bigger pass goes to the writer, which splits it (SEND_CHUNK).
INLINE_PASS_MAX = 32


class Peer(Subscriber):
    """One connection as the outbox sees it.

    The handler thread reads the connection; only the writer thread writes
    it. After `released` is set the writer never touches it again, and the
    handler may close it.
    """

    __slots__ = ("_watching", "plain", "released", "transport")

    def __init__(self, transport: Transport, label: str, dialect: Dialect = JSON_LINES) -> None:
        super().__init__(label, dialect)
        self.transport = transport
        self.released = threading.Event()
        self._watching = False  # registered with the selector for EVENT_WRITE
        #: The transport keeps no bytes of its own (plain TCP): a complete send leaves nothing to watch.
        self.plain = not transport.buffers


class WritingHere:
    """Outbox.writing_here's scope: wakes of the writer are owed, not sent, until it ends;
    then this thread passes itself or wakes the writer once. Nested scopes are one."""

    __slots__ = ("_outbox", "_outer")

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._outer = False

    def __enter__(self) -> None:
        here = self._outbox._here
        self._outer = getattr(here, "deferring", False)
        if not self._outer:
            here.deferring, here.owed = True, False

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._outer:
            return
        here = self._outbox._here
        here.deferring = False
        if here.owed:
            self._outbox._pass_here()


#: One send of a pass: to whom, what, and how many bytes went (None: the connection is lost).
_Sent = tuple[Peer, memoryview | bytes, int | None]


class Outbox:
    """The fan-out core behind one lock, and the writer thread."""

    def __init__(
        self, max_backlog: int = 8 * 1024 * 1024, window: int = DEFAULT_WINDOW, max_queued: int = 0
    ) -> None:
        #: Bytes one peer may be owed before it is dropped as a slow consumer.
        self.max_backlog = max_backlog
        #: Bytes all peers together may be owed (0: no limit); past it the biggest backlogs go first.
        self.max_queued = max_queued
        self.window = window
        self._budget_checked = 0.0
        self._fanout: Fanout[Peer] = Fanout()
        self._lock = threading.Lock()
        # Notified after every pass of the writer: publishers waiting for it to
        # catch up, and handlers streaming history waiting for a peer to drain.
        self._pass_done = threading.Condition(self._lock)
        self._written = 0  # lines published as of the writer's last finished pass
        self._peers: set[Peer] = set()
        self._closing_all: Line | None = None
        self._stopping = False
        self._wake_pending = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        #: Held by whoever runs a pass (the writer, or a thread in writing_here): one pass at a
        #: time, so that no two threads ever send to one connection at once.
        self._pass_lock = threading.Lock()
        #: Per thread: whether it is inside writing_here, and whether it owes the writer a wake.
        self._here = threading.local()
        # Not `_thread`: mypyc would name its C field `__thread`, which is a keyword to GCC.
        self._writer_thread = threading.Thread(target=self._run, name="chat-outbox")
        #: What crashed the writer thread, if anything did (a bug).
        self.failure: BaseException | None = None

    # --- used by rooms, the hub and the handlers ----------------------------------------

    def start(self) -> None:
        self._writer_thread.start()

    def register(self, transport: Transport, label: str, dialect: Dialect = JSON_LINES) -> Peer:
        """A new connection, written in `dialect`; it gets its own lines at once, a room's once subscribed."""
        peer = Peer(transport, label, dialect)
        attach = getattr(dialect, "attach_peer", None)
        if attach is not None:  # a writer of one peer (IRC's): it knows its peer's own lines by it
            attach(peer)
        with self._lock:
            self._peers.add(peer)
            if self._closing_all is not None:
                self._close_locked(peer, self._closing_all, "shutdown")
        return peer

    def publish(self, room: str, *lines: Line) -> None:
        """Queue lines for every subscriber of `room`. Call with the room's order held."""
        with self._lock:
            self._fanout.publish(room, *lines)
            self._wake_locked()

    def writing_here(self) -> WritingHere:
        """A scope whose lines leave when it ends, sent by this thread itself if the writer is
        idle and few connections are owed anything; otherwise the writer is woken for them.

        At a low rate a line to a small room then costs no other thread a wake-up (on a
        virtual machine a wake-up costs about as much CPU as sending to ten connections).
        Nothing inside may wait for the writer: it is not woken until the end.
        """
        return WritingHere(self)

    def subscribe(self, peer: Peer, room: str, held: bool = False) -> None:
        """From now on `peer` gets every line published to `room`; held, only after release_held()."""
        with self._lock:
            self._fanout.subscribe(peer, room, held)

    def send_held(self, peer: Peer, room: str, *lines: Line) -> None:
        """Queue `lines` where `peer`'s held cursor in `room` stands: before the lines it holds back."""
        data = render(lines, peer.dialect)
        with self._lock:
            self._fanout.send_held(peer, room, data)
            self._wake_locked()

    def release_held(self, peer: Peer, room: str) -> None:
        """Let the room lines a held subscription collected go."""
        with self._lock:
            self._fanout.release(peer, room)
            self._wake_locked()

    def unsubscribe(self, peer: Peer, room: str) -> None:
        """`peer` gets nothing published to `room` after this call (what is queued still goes)."""
        with self._lock:
            self._fanout.unsubscribe(peer, room)
            self._wake_locked()

    def send_to(self, peer: Peer, *lines: Line, room: str | None = None) -> None:
        """Queue lines for one peer (with `room`: after that room's lines published before them).

        A peer already owed `max_backlog` bytes of its own is dropped instead: a
        client that asks and never reads cannot make the server hold its answers.
        """
        data = render(lines, peer.dialect)
        with self._lock:
            if self._fanout.queued_bytes(peer) + len(data) > self.max_backlog:
                self._drop_locked(peer, "slow_consumer")
                return
            self._fanout.send_to(peer, data, room)
            self._wake_locked()

    @property
    def fanned_out(self) -> int:
        """Room lines handed to connections so far: each line once per member it went to."""
        return self._fanout.fanned_out

    def queued_bytes(self, peer: Peer) -> int:
        """Bytes of `peer`'s own lines (replies, history) not yet sent."""
        with self._lock:
            return self._fanout.queued_bytes(peer)

    def close(self, peer: Peer, final: Line | None = None, reason: str | None = None) -> None:
        """Send what is queued (and `final`), then shut the connection down.

        Shutting it down wakes the handler blocked reading it. `reason`, if
        given, records why the server cut the peer off.
        """
        with self._lock:
            self._close_locked(peer, final, reason)

    def close_all(self, final: Line) -> None:
        """Close every peer, now and registered later, after sending it `final`."""
        with self._lock:
            self._closing_all = final
            for peer in self._peers:
                self._close_locked(peer, final, "shutdown")

    def wait_drained(self, peer: Peer, below: int) -> bool:
        """Block until fewer than `below` bytes of `peer`'s own lines are unsent: True,
        or until the peer is closing (nothing more should be queued for it): False.

        A handler streaming history waits here between chunks; a peer that never
        reads is closed in the end (backlog, keepalive or shutdown), which wakes it.
        """
        with self._pass_done:
            self._pass_done.wait_for(
                lambda: peer.state is not PeerState.OPEN or self._fanout.queued_bytes(peer) < below or self._stopping
            )
            return peer.state is PeerState.OPEN and not self._stopping

    def release(self, peer: Peer, timeout: float) -> None:
        """Wait until the writer is done with `peer`, giving up on its unsent bytes
        after `timeout`; afterwards the caller may close the connection."""
        self.close(peer)
        if peer.released.wait(timeout):
            return
        with self._lock:
            if self._writer_thread.is_alive() and not self._stopping:
                peer.give_up = True
                self._fanout.mark_due(peer)
                self._wake_locked()
            else:
                self._forget_locked(peer)
        if not peer.released.wait(timeout):  # the writer never blocks: this is short
            log.error("%s: the writer did not let go in time; forgetting it", peer.label)
            with self._lock:
                self._forget_locked(peer)

    def wait_for_writer(self, timeout: float) -> None:
        """Backpressure: block while the writer is more than `window` lines behind."""
        if self._fanout.published - self._written <= self.window:
            return
        with self._pass_done:
            self._pass_done.wait_for(
                lambda: self._fanout.published - self._written <= self.window or self._stopping, timeout
            )

    def stop(self, timeout: float) -> None:
        """End the writer thread; every peer still known is released."""
        with self._lock:
            self._stopping = True
            self._wake_locked()
            self._pass_done.notify_all()
        if self._writer_thread.ident is not None:
            self._writer_thread.join(timeout)
        # A pass on a handler thread finishes its sends first (they never block).
        passing = self._pass_lock.acquire(timeout=timeout)
        try:
            with self._lock:
                for peer in list(self._peers):
                    self._forget_locked(peer)
        finally:
            if passing:
                self._pass_lock.release()
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()

    # --- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._write_until_stopped()
        except BaseException as exc:
            self._fail(exc, "the outbox writer crashed")

    def _fail(self, exc: BaseException, what: str) -> None:
        """A bug in a pass would freeze every client: record it, say it loudly, and hang up
        on everyone so that clients notice and reconnect."""
        log.exception("%s; disconnecting every client", what)
        self.failure = exc
        with self._lock:
            for peer in list(self._peers):
                self._drop_locked(peer, None)
            self._pass_done.notify_all()

    def _write_until_stopped(self) -> None:
        # With a global budget the writer also wakes on its own, to check it while nothing is sent.
        idle_wake = BUDGET_CHECK_INTERVAL if self.max_queued else None
        while not self._stopping:
            ready = self._selector.select(idle_wake)
            with self._pass_lock:
                with self._lock:
                    self._drain_wake()
                    writable: set[Peer] = {key.data for key, _ in ready if key.data is not None}
                    published = self._fanout.published
                    work = self._collect(writable | self._fanout.due(), writable)
                self._pass(work, published)

    def _pass_here(self) -> None:
        """What writing_here owes at its end: a small pass on this thread if no pass runs now,
        else a wake-up for the writer (which takes these lines in its next pass)."""
        if not self._pass_lock.acquire(blocking=False):
            with self._lock:
                self._wake_locked()
            return
        try:
            with self._lock:
                if self._stopping or self._fanout.due_size() > INLINE_PASS_MAX:
                    self._wake_locked()
                    return
                published = self._fanout.published
                work = self._collect(self._fanout.due(), set())
            self._pass(work, published)
        except BaseException as exc:
            self._fail(exc, "a pass on a handler thread crashed")
            raise
        finally:
            self._pass_lock.release()

    def _pass(self, work: list[tuple[Peer, memoryview | bytes]], published: int) -> None:
        """Send what _collect took, then settle every peer: called with the pass lock held."""
        # The sends, and only the sends, happen outside the lock; then one
        # acquisition settles every peer, instead of one per peer.
        if len(work) <= SEND_CHUNK:
            sent = [
                (peer, data, peer.transport.try_send(data) if data or peer.transport.wants_write() else 0)
                for peer, data in work
            ]
        else:
            sent = self._send_in_chunks(work)
        with self._lock:
            for peer, data, count in sent:
                # The common case, decided in one line: all of a fresh take went, nothing waits.
                # (Lines published meanwhile made their log due again, so nothing is missed.)
                if (
                    count == len(data)
                    and peer.plain
                    and peer.state is _OPEN
                    and not (peer.pending or peer._watching or peer.give_up)
                ):
                    peer.taken_own = 0  # what accepted() would say: nothing of its own is owed
                    continue
                self._settle_locked(peer, data, count)
            self._written = max(self._written, published)
            self._fanout.trim()
            self._keep_to_budget_locked()
            self._pass_done.notify_all()

    def _send_in_chunks(self, work: list[tuple[Peer, memoryview | bytes]]) -> list[_Sent]:
        """A long pass's sends, outside the lock; after every SEND_CHUNK of them, what the peers
        outside this pass are owed alone (welcomes, replies) is taken and sent at once. A peer is
        never taken twice in a pass (its first send is not settled yet): it waits for the next."""
        sent: list[_Sent] = []
        busy = {peer for peer, _ in work}
        for index, (peer, data) in enumerate(work):
            if index and not index % SEND_CHUNK:
                with self._lock:
                    alone = self._collect(self._fanout.due_alone(busy), set())
                for other, extra in alone:
                    busy.add(other)
                    sent.append((other, extra, _try_send(other, extra)))
            sent.append((peer, data, _try_send(peer, data)))
        return sent

    def _keep_to_budget_locked(self) -> None:
        """Past `max_queued` bytes owed in all, drop the peers owed most until back under it."""
        now = time.monotonic()
        if not self.max_queued or now - self._budget_checked < BUDGET_CHECK_INTERVAL:
            return
        self._budget_checked = now
        held = self._fanout.held_bytes(self._peers)
        if held <= self.max_queued:
            return
        by_backlog = sorted(((self._fanout.backlog(peer), peer) for peer in self._peers), key=lambda item: -item[0])
        for backlog, peer in by_backlog:
            if held <= self.max_queued or backlog == 0:
                break
            log.warning("%s: the server holds %d bytes for its clients; dropping the biggest backlog", peer.label, held)
            self._drop_locked(peer, "slow_consumer")
            held -= backlog
        self._fanout.trim()

    def _collect(self, batch: set[Peer], writable: set[Peer]) -> list[tuple[Peer, memoryview | bytes]]:
        """Under the lock: what each peer should be sent now."""
        work: list[tuple[Peer, memoryview | bytes]] = []
        for peer in batch:
            if peer.state is PeerState.RELEASED:
                continue
            if peer.give_up:
                self._drop_locked(peer, None)
            elif peer.pending:
                if self._fanout.backlog(peer) > self.max_backlog:
                    self._drop_locked(peer, "slow_consumer")
                elif peer in writable:
                    work.append((peer, peer.pending))
            else:
                data = self._fanout.take(peer)
                if data or peer.state is PeerState.CLOSING or peer.transport.wants_write():
                    work.append((peer, data))
        return work

    def _settle_locked(self, peer: Peer, data: memoryview | bytes, sent: int | None) -> None:
        """Keep what the connection refused, and decide what comes next for `peer`."""
        if peer.state is PeerState.RELEASED:
            return
        if sent is None:
            log.info("%s: connection lost while sending", peer.label)
            self._drop_locked(peer, None)
            return
        more = self._fanout.accepted(peer, data, sent)
        # Watch for room in the socket while bytes wait: ours, or ones the transport took (TLS records).
        waiting = bool(peer.pending) or peer.transport.wants_write()
        if waiting != peer._watching:
            self._watch_writable(peer, waiting)
        if more:
            # Lines arrived while this peer was catching up: go round again for them.
            self._fanout.mark_due(peer)
            self._wake_locked()
        if peer.give_up or (
            peer.state is PeerState.CLOSING and not peer.pending and not peer.queue and not waiting
        ):
            self._drop_locked(peer, None)

    # --- helpers, all called with the lock held ------------------------------------------

    def _close_locked(self, peer: Peer, final: Line | None, reason: str | None) -> None:
        if peer.state is PeerState.RELEASED:
            return
        if reason is not None and peer.drop_reason is None:
            peer.drop_reason = reason
        self._fanout.close(peer, final.encoded(peer.dialect) if final is not None else None)
        self._wake_locked()
        self._pass_done.notify_all()

    def _drop_locked(self, peer: Peer, reason: str | None) -> None:
        """Cut `peer` off now: shut the connection down (waking its handler) and let go of it."""
        if peer.state is PeerState.RELEASED:
            return
        if reason is not None and peer.drop_reason is None:
            peer.drop_reason = reason
            log.warning("%s: dropped (%s)", peer.label, reason)
        peer.transport.shutdown()
        self._forget_locked(peer)

    def _forget_locked(self, peer: Peer) -> None:
        self._watch_writable(peer, False)
        self._peers.discard(peer)
        self._fanout.forget(peer)
        peer.released.set()
        self._pass_done.notify_all()

    def _watch_writable(self, peer: Peer, watch: bool) -> None:
        if watch == peer._watching or self._stopping:
            return
        if watch:
            self._selector.register(peer.transport.fileno(), selectors.EVENT_WRITE, peer)
        else:
            self._selector.unregister(peer.transport.fileno())
        peer._watching = watch

    def _wake_locked(self) -> None:
        here = self._here
        if getattr(here, "deferring", False):
            here.owed = True  # writing_here passes or wakes at its end
            return
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._wake_writer.send(b"\0", socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass  # the wake socket is full, so the writer is awake anyway

    def _drain_wake(self) -> None:
        self._wake_pending = False
        try:
            while self._wake_reader.recv(4096):
                pass
        except BlockingIOError:
            pass  # drained


def _try_send(peer: Peer, data: memoryview | bytes) -> int | None:
    """Send what a pass took for `peer` (nothing to send: 0, unless its transport holds bytes)."""
    return peer.transport.try_send(data) if data or peer.transport.wants_write() else 0
