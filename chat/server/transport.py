"""How bytes leave for one connection: a non-blocking send, a shutdown, a file number.

The outbox's writer sends through this small interface so that it never
knows what kind of socket it holds: plain TCP today (MSG_DONTWAIT, since the
handler thread reads the same socket in blocking mode), TLS later
(`ssl.SSLSocket.send` refuses flags, so it needs a transport of its own).
"""

from __future__ import annotations

import select
import socket
from typing import Protocol


class Transport(Protocol):
    """What the writer needs of a connection."""

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


class TcpTransport:
    """A plain TCP socket that a handler thread reads in blocking mode."""

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

    def has_input(self) -> bool:
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return False  # closed already: nothing more will be read
