"""Every byte the server sends leaves through the Outbox, and never blocks anyone.

Broadcast lines go into one shared log, in order, encoded once; each connection
(a Peer) has a cursor into that log and a short queue of lines for it alone.
One writer thread sends each peer everything pending in a single non-blocking
send, so a burst of messages leaves as one packet and a peer that stops
reading only ever costs its own cursor. Knows sockets and threads, not the
protocol: lines are opaque bytes here.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)

#: How many published lines the writer may fall behind before publishers wait.
#: This is backpressure on senders when the server is at capacity, not a
#: limit on slow readers (that is max_backlog).
DEFAULT_WINDOW = 4096


class Peer:
    """One connection as the outbox sees it.

    The handler thread reads `sock`; only the writer thread writes it. After
    `released` is set the writer never touches the socket again, and the
    handler may close it.
    """

    __slots__ = (
        "_watching",
        "closing",
        "cursor",
        "drop_reason",
        "give_up",
        "label",
        "last_heard",
        "pending",
        "pinged",
        "private",
        "released",
        "sock",
    )

    def __init__(self, sock: socket.socket, label: str) -> None:
        self.sock = sock
        self.label = label
        #: Absolute log index of the next broadcast line; None when not subscribed.
        self.cursor: int | None = None
        #: Lines for this peer alone, each with the log position it belongs before.
        self.private: list[tuple[int, bytes]] = []
        #: Bytes taken from the log that the kernel has not accepted yet.
        self.pending: memoryview | bytes = b""
        #: Close the connection once everything queued so far is sent.
        self.closing = False
        #: Why the server cut this peer off (slow_consumer, timeout, shutdown), if it did.
        self.drop_reason: str | None = None
        self.released = threading.Event()
        #: time.monotonic() of the last line received; the handler keeps it fresh.
        self.last_heard = time.monotonic()
        self.pinged = False
        #: Closing, and no longer waiting for the peer to read what is queued.
        self.give_up = False
        self._watching = False  # registered with the selector for EVENT_WRITE

    def __repr__(self) -> str:
        return f"<Peer {self.label}>"


class Outbox:
    """The shared broadcast log, the per-peer queues, and the writer thread."""

    def __init__(self, max_backlog: int = 8 * 1024 * 1024, window: int = DEFAULT_WINDOW) -> None:
        self.max_backlog = max_backlog
        self.window = window
        self._lock = threading.Lock()
        self._writer_caught_up = threading.Condition(self._lock)
        # The log: _lines[i] is line number _base + i; _ends[i] counts the bytes
        # published up to and including it, so a backlog in bytes is a subtraction.
        self._lines: list[bytes] = []
        self._ends: list[int] = []
        self._base = 0
        self._base_bytes = 0
        self._published_bytes = 0
        self._written_head = 0  # the log head as of the writer's last finished pass
        self._peers: set[Peer] = set()
        self._dirty: set[Peer] = set()
        self._all_dirty = False
        self._closing_all: bytes | None = None
        self._stopping = False
        self._wake_pending = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="chat-outbox")
        #: What crashed the writer thread, if anything did (a bug).
        self.failure: BaseException | None = None

    # --- used by the room and the handlers -------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def head(self) -> int:
        """The number of lines ever published."""
        return self._base + len(self._lines)

    def register(self, sock: socket.socket, label: str) -> Peer:
        """A new connection; it gets private lines at once, broadcasts once subscribed."""
        peer = Peer(sock, label)
        with self._lock:
            self._peers.add(peer)
            if self._closing_all is not None:
                self._close_locked(peer, self._closing_all, "shutdown")
        return peer

    def peer_count(self) -> int:
        return len(self._peers)

    def peers(self) -> list[Peer]:
        with self._lock:
            return list(self._peers)

    def publish(self, line: bytes) -> None:
        """Queue a line for every subscribed peer. Call with the room's order held."""
        with self._lock:
            self._lines.append(line)
            self._published_bytes += len(line)
            self._ends.append(self._published_bytes)
            self._all_dirty = True
            self._wake_locked()

    def subscribe(self, peer: Peer) -> None:
        """From now on `peer` gets every line published after this call."""
        with self._lock:
            if not peer.closing:
                peer.cursor = self.head

    def unsubscribe(self, peer: Peer) -> None:
        """`peer` gets no broadcast published after this call (what is queued still goes)."""
        with self._lock:
            self._unsubscribe_locked(peer)

    def send_to(self, peer: Peer, line: bytes) -> None:
        """Queue a line for one peer, after every broadcast published before it."""
        with self._lock:
            if peer.closing:
                return
            peer.private.append((self.head, line))
            self._dirty.add(peer)
            self._wake_locked()

    def close(self, peer: Peer, final: bytes | None = None, reason: str | None = None) -> None:
        """Send what is queued (and `final`), then shut the connection down.

        Shutting it down wakes the handler blocked reading it. `reason`, if
        given, records why the server cut the peer off.
        """
        with self._lock:
            self._close_locked(peer, final, reason)

    def close_all(self, final: bytes) -> None:
        """Close every peer, now and registered later, after sending it `final`."""
        with self._lock:
            self._closing_all = final
            for peer in self._peers:
                self._close_locked(peer, final, "shutdown")

    def release(self, peer: Peer, timeout: float) -> None:
        """Wait until the writer is done with `peer`, giving up on its unsent bytes
        after `timeout`; afterwards the caller may close the socket."""
        self.close(peer)
        if peer.released.wait(timeout):
            return
        with self._lock:
            alive = self._thread.is_alive() and not self._stopping
            if alive:
                peer.give_up = True
                self._dirty.add(peer)
                self._wake_locked()
            else:
                self._forget_locked(peer)
        if not peer.released.wait(timeout):  # the writer never blocks: this is short
            log.error("%s: the writer did not let go in time; forgetting it", peer.label)
            self._forget(peer)

    def wait_for_writer(self, timeout: float) -> None:
        """Backpressure: block while the writer is more than `window` lines behind."""
        if self.head - self._written_head <= self.window:
            return
        with self._writer_caught_up:
            self._writer_caught_up.wait_for(
                lambda: self.head - self._written_head <= self.window or self._stopping, timeout
            )

    def stop(self, timeout: float) -> None:
        """End the writer thread; every peer still known is released."""
        with self._lock:
            self._stopping = True
            self._wake_locked()
            self._writer_caught_up.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        for peer in self.peers():
            self._forget(peer)
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()

    # --- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._write_until_stopped()
        except BaseException as exc:
            # A bug here would freeze every client: record it, say it loudly, and
            # hang up on everyone so that clients notice and reconnect.
            log.exception("the outbox writer crashed; disconnecting every client")
            self.failure = exc
            with self._lock:
                for peer in list(self._peers):
                    self._drop_locked(peer, None)

    def _write_until_stopped(self) -> None:
        while not self._stopping:
            ready = self._selector.select()
            with self._lock:
                self._drain_wake()
                writable = {key.data for key, _ in ready if key.data is not None}
                if self._all_dirty:
                    self._all_dirty = False
                    self._dirty.clear()
                    batch = writable.union(self._peers)
                else:
                    batch, self._dirty = self._dirty | writable, set()
                head = self.head
                work = self._collect(batch, writable, head)
            # The sends, and only the sends, happen outside the lock; then one
            # acquisition settles every peer, instead of one per peer.
            sent = [(peer, data, self._send(peer, data)) for peer, data in work]
            with self._lock:
                for peer, data, count in sent:
                    self._settle_locked(peer, data, count)
                self._finish_pass(head)

    def _collect(self, peers: Iterable[Peer], writable: set[Peer], head: int) -> list[tuple[Peer, memoryview | bytes]]:
        """Under the lock: what each peer should be sent now, advancing its cursor."""
        work: list[tuple[Peer, memoryview | bytes]] = []
        joined: dict[int, bytes] = {}  # most peers sit at the same cursor: join once
        for peer in peers:
            if peer.released.is_set():
                continue
            if peer.give_up:
                self._drop_locked(peer, None)
                continue
            if peer.pending:
                if self._backlog_locked(peer) > self.max_backlog:
                    self._drop_locked(peer, "slow_consumer")
                elif peer in writable:
                    work.append((peer, peer.pending))
                continue
            if peer.private:
                data = self._merge_private(peer, head)
            elif peer.cursor is not None and peer.cursor < head:
                cached = joined.get(peer.cursor)
                if cached is None:
                    cached = joined[peer.cursor] = b"".join(self._lines[peer.cursor - self._base : head - self._base])
                data = cached
                peer.cursor = head
            else:
                data = b""
            if data or peer.closing:
                work.append((peer, data))
        return work

    def _merge_private(self, peer: Peer, head: int) -> bytes:
        parts: list[bytes] = []
        cursor = peer.cursor
        for position, line in peer.private:
            if cursor is not None and cursor < position:
                parts.extend(self._lines[cursor - self._base : position - self._base])
                cursor = position
            parts.append(line)
        peer.private.clear()
        if cursor is not None:
            parts.extend(self._lines[cursor - self._base : head - self._base])
            peer.cursor = head
        return b"".join(parts)

    def _send(self, peer: Peer, data: memoryview | bytes) -> int | None:
        """Outside the lock: one non-blocking send. How many bytes the kernel
        took, or None if the connection is broken."""
        if not data:
            return 0
        try:
            return peer.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
        except OSError as exc:
            log.info("%s: connection lost while sending (%s)", peer.label, exc)
            return None

    def _settle_locked(self, peer: Peer, data: memoryview | bytes, sent: int | None) -> None:
        """Keep what the kernel refused, and decide what comes next for `peer`."""
        if peer.released.is_set():
            return
        if sent is None:
            self._drop_locked(peer, None)
            return
        peer.pending = memoryview(data)[sent:] if sent < len(data) else b""
        self._watch_writable(peer, bool(peer.pending))
        if not peer.pending and (peer.private or (peer.cursor is not None and peer.cursor < self.head)):
            # Lines arrived while this peer was catching up: go round again for them.
            self._dirty.add(peer)
            self._wake_locked()
        if peer.give_up or (peer.closing and not peer.pending and not peer.private):
            self._drop_locked(peer, None)

    def _finish_pass(self, head: int) -> None:
        self._written_head = head
        self._writer_caught_up.notify_all()
        if len(self._lines) < 2048:
            return  # not worth a look at every peer's cursor yet
        # Forget log lines every subscribed peer has been given.
        lowest = min((peer.cursor for peer in self._peers if peer.cursor is not None), default=head)
        drop = lowest - self._base
        if drop * 2 > len(self._lines):
            self._base_bytes = self._ends[drop - 1]
            del self._lines[:drop]
            del self._ends[:drop]
            self._base = lowest

    # --- helpers, all called with the lock held ------------------------------------------

    def _backlog_locked(self, peer: Peer) -> int:
        """Bytes queued for `peer` that the kernel has not accepted."""
        queued = len(peer.pending) + sum(len(line) for _, line in peer.private)
        if peer.cursor is not None:
            index = peer.cursor - self._base
            before = self._ends[index - 1] if index > 0 else self._base_bytes
            queued += self._published_bytes - before
        return queued

    def _unsubscribe_locked(self, peer: Peer) -> None:
        # Lines published before now still reach the peer: turn them into private
        # lines so that the cursor can go.
        if peer.cursor is not None:
            head = self.head
            if peer.cursor < head:
                batch = b"".join(self._lines[peer.cursor - self._base : head - self._base])
                peer.private.insert(0, (peer.cursor, batch))
            peer.cursor = None

    def _close_locked(self, peer: Peer, final: bytes | None, reason: str | None) -> None:
        if peer.released.is_set():
            return
        if final is not None and not peer.closing:
            peer.private.append((self.head, final))
        self._unsubscribe_locked(peer)
        if reason is not None and peer.drop_reason is None:
            peer.drop_reason = reason
        peer.closing = True
        self._dirty.add(peer)
        self._wake_locked()

    def _drop_locked(self, peer: Peer, reason: str | None) -> None:
        """Cut `peer` off now: shut the socket down (waking its handler) and let go of it."""
        if peer.released.is_set():
            return
        if reason is not None and peer.drop_reason is None:
            peer.drop_reason = reason
            log.warning("%s: dropped (%s)", peer.label, reason)
        try:
            peer.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already reset by the peer: nothing left to shut down
        self._forget_locked(peer)

    def _forget(self, peer: Peer) -> None:
        with self._lock:
            self._forget_locked(peer)

    def _forget_locked(self, peer: Peer) -> None:
        self._watch_writable(peer, False)
        self._peers.discard(peer)
        self._dirty.discard(peer)
        peer.cursor = None
        peer.private.clear()
        peer.pending = b""
        peer.released.set()

    def _watch_writable(self, peer: Peer, watch: bool) -> None:
        if watch == peer._watching or self._stopping:
            return
        if watch:
            self._selector.register(peer.sock, selectors.EVENT_WRITE, peer)
        else:
            self._selector.unregister(peer.sock)
        peer._watching = watch

    def _wake_locked(self) -> None:
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
