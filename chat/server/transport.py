"""How bytes leave for one connection: a non-blocking send, a shutdown, a file number.

The outbox's writer sends through this small interface so that it never
knows what kind of socket it holds: plain TCP today (MSG_DONTWAIT, since the
handler thread reads the same socket in blocking mode), TLS later
(`ssl.SSLSocket.send` refuses flags, so it needs a transport of its own).
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from typing import Protocol


class Transport(Protocol):
    """What the writer needs of a connection."""

    #: Whether it may keep bytes of its own after a send took them (TLS records): wants_write() is worth asking.
    buffers: bool

    def try_send(self, data: memoryview | bytes) -> int | None:
        """Send without blocking: how many bytes were taken (0 if none fit now), None if the connection is broken."""
        ...

    def shutdown(self) -> None:
        """Stop both directions now, waking a reader blocked on the connection. Never raises."""
        ...

    def fileno(self) -> int: ...

    def has_input(self) -> bool:
        """Whether bytes from the peer wait unread (or its end of stream does)."""
        ...

    def wants_write(self) -> bool:
        """Whether bytes the transport already took still wait for the socket (TLS records)."""
        ...

    def receive(self, data: bytes) -> bytes | None:
        """What the handler should read in `data` from the socket; None: the peer closed."""
        ...


class TcpTransport:
    """A plain TCP socket that a handler thread reads in blocking mode."""

    buffers = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def try_send(self, data: memoryview | bytes) -> int | None:
        try:
            return self.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
        except OSError:
            return None

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already reset by the peer: nothing left to shut down

    def fileno(self) -> int:
        return self.sock.fileno()

    def wants_write(self) -> bool:
        return False

    def receive(self, data: bytes) -> bytes | None:
        return data

    def has_input(self) -> bool:
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return False  # closed already: nothing more will be read


class TlsTransport(TcpTransport):
    """TLS over a plain socket through ssl.MemoryBIO, so that two threads may share it.

    The handler thread receives raw bytes and has them decrypted (`receive`);
    the writer thread has lines encrypted and sent without blocking
    (`try_send`). Both go through one small lock around the TLS object (one
    SSL object must never be used by two threads at once), and the socket
    itself is never touched under it except by non-blocking sends. Ciphertext
    the socket would not take waits here; `wants_write` tells the writer.
    """

    buffers = True
    #: Plaintext encrypted per call at most, so that a slow reader's ciphertext stays small.
    MAX_ENCRYPT = 256 * 1024

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        super().__init__(sock)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._lock = threading.Lock()
        self._cipher = bytearray()  # encrypted, not yet taken by the socket
        self._broken = False

    def handshake(self, deadline: float) -> None:
        """Complete the TLS handshake by `deadline` (time.monotonic()); raises ssl.SSLError,
        TimeoutError, or ConnectionError if the peer closes first."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while True:
            with self._lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                self._cipher += self._outgoing.read()
            self._send_all(deadline)
            if done:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise TimeoutError("the TLS handshake did not finish in time")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the peer closed the connection during the TLS handshake")
            with self._lock:
                self._incoming.write(data)

    def receive(self, data: bytes) -> bytes | None:
        """The plaintext in `data` just received (b"" if none is complete yet); None once the peer closed TLS."""
        chunks: list[bytes] = []
        closed = False
        with self._lock:
            self._incoming.write(data)
            while True:
                try:
                    chunk = self._tls.read(65536)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                chunks.append(chunk)
            # Reading may make TLS answer (tickets, key updates, alerts): that goes out with the next send.
            self._cipher += self._outgoing.read()
        if closed and not chunks:
            return None
        return b"".join(chunks)

    def try_send(self, data: memoryview | bytes) -> int | None:
        with self._lock:
            if not self._flush_locked():
                return None
            if self._cipher or not data:
                return 0  # the socket still has the last bytes to take: no more yet
            chunk = data[: self.MAX_ENCRYPT]
            try:
                self._tls.write(chunk)
            except ssl.SSLError:
                self._broken = True
                return None
            self._cipher += self._outgoing.read()
            if not self._flush_locked():
                return None
            return len(chunk)

    def wants_write(self) -> bool:
        return bool(self._cipher) and not self._broken

    def has_input(self) -> bool:
        return self._incoming.pending > 0 or super().has_input()

    def _flush_locked(self) -> bool:
        if not self._cipher:
            return True
        try:
            sent = self.sock.send(self._cipher, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            self._broken = True
            return False
        del self._cipher[:sent]
        return True

    def _send_all(self, deadline: float) -> None:
        """During the handshake only (nothing else writes yet): send what TLS produced, by `deadline`."""
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT)
        while True:
            with self._lock:
                if not self._flush_locked():
                    raise ConnectionError("the connection broke during the TLS handshake")
                if not self._cipher:
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise TimeoutError("the TLS handshake did not finish in time")
