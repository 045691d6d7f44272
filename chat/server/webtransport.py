"""A WebSocket over a socket's transport (plain or TLS): an HTTP request by a deadline, then lines in frames.

The handler thread reads (`handshake`, then `receive`: frames in, line bytes out) and the
outbox's writer sends (`try_send`: whole lines in, one text frame out, never blocking),
through one small lock around the WebSocketStream; frame bytes the socket would not take
yet wait here, as TLS records wait in TlsTransport.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time

from websockets.http11 import Request

from chat.server.transport import TcpTransport
from chat.server.web import WebSite, WebSocketStream

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024


class WsTransport:
    """The Transport of a WebSocket connection, over `inner` (a TcpTransport or TlsTransport)."""

    buffers = True
    #: Line bytes framed per call at most, so that a slow reader's frames stay small.
    MAX_FRAME = 256 * 1024
    #: Seconds a connection that was answered a file may wait for its next request.
    KEEP_ALIVE = 2.0
    #: Requests answered on one connection at most (the page has a handful of files).
    MAX_REQUESTS = 32

    def __init__(self, inner: TcpTransport, max_message: int) -> None:
        self.inner = inner
        self.sock = inner.sock
        self._max_message = max_message
        self._stream = WebSocketStream(max_message)
        self._lock = threading.Lock()
        self._wire = bytearray()  # frame bytes the inner transport has not taken yet
        self._early = b""  # line bytes that came with the HTTP request
        self._broken = False
        self._read_shut = False

    # --- the handler thread ------------------------------------------------------------------

    def handshake(self, site: WebSite, deadline: float, secure: bool) -> bool:
        """Read HTTP requests and answer them: True once one is upgraded to a WebSocket, False
        when the connection ends with a page or a refusal. The first request must be complete
        by `deadline` (time.monotonic()), else TimeoutError (ConnectionError if the peer closes
        first); the page's files may follow on the same connection (keep-alive), each within
        KEEP_ALIVE seconds of the last answer, MAX_REQUESTS at most."""
        data = self.inner.receive(b"") or b""  # bytes that came with the end of a TLS handshake
        served = 0
        while True:
            try:
                request = self._read_request(data, deadline)
            except (TimeoutError, ConnectionError):
                if served:
                    return False  # an idle keep-alive connection ends quietly
                raise
            data = b""
            if request is None:  # what was no HTTP request got its 4xx
                self._send_all(deadline)
                return False
            response = site.respond(request, secure)
            keep = (
                response is not None
                and served + 1 < self.MAX_REQUESTS
                and response.status_code in (200, 304, 404)
                and "close" not in request.headers.get("Connection", "").lower()
            )
            with self._lock:
                if response is None:
                    upgraded = self._stream.accept(request)
                else:
                    if keep:
                        del response.headers["Connection"]
                        response.headers["Connection"] = "keep-alive"
                    self._stream.respond(response)
                    upgraded = False
                self._wire += self._stream.data_to_send()
            log.debug("%s -> %s", request.path[:200], "upgrade" if response is None else response.status_code)
            self._send_all(deadline)
            if upgraded or not keep:
                return upgraded
            served += 1
            self._stream = WebSocketStream(self._max_message)  # a fresh parser for the next request
            deadline = time.monotonic() + self.KEEP_ALIVE

    def _read_request(self, data: bytes, deadline: float) -> Request | None:
        """The next HTTP request, read by `deadline`; None if what came was none (its 4xx waits to be sent)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while True:
            with self._lock:
                if data:
                    self._early += self._stream.receive_data(data)
                if self._stream.request is not None:
                    return self._stream.request
                if self._stream.eof or self._stream.closed:
                    self._wire += self._stream.data_to_send()
                    return None
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise TimeoutError("no complete HTTP request in time")
            raw = self.sock.recv(_READ_SIZE)
            if not raw:
                raise ConnectionError("the peer closed before its HTTP request was complete")
            received = self.inner.receive(raw)
            if received is None:
                raise ConnectionError("the peer closed TLS before its HTTP request was complete")
            data = received

    def receive(self, data: bytes) -> bytes | None:
        """The line bytes in `data` just received (b"" if none is complete yet); None once the WebSocket is closed."""
        plain = self.inner.receive(data)
        with self._lock:
            early, self._early = self._early, b""
            lines = early + (self._stream.receive_data(plain) if plain else b"")
            if plain is None:
                lines += self._stream.receive_eof()
            closed = self._stream.closed
            self._wire += self._stream.data_to_send()
            self._flush_locked()
        if closed and not self._read_shut:
            self._read_shut = True
            log.debug("WebSocket %s", self._stream.close_reason)
            if lines:
                # What came with the close still counts; then the handler reads the end of input.
                try:
                    self.sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass  # already gone: the next read says so
        return None if closed and not lines else lines

    # --- the writer thread -------------------------------------------------------------------

    def try_send(self, data: memoryview | bytes) -> int | None:
        with self._lock:
            if not self._flush_locked():
                return None
            if self._wire or not data:
                return 0  # the socket still has the last frame to take: no more yet
            if not self._stream.open:
                return None  # closing: no more frames may go out
            chunk = data if len(data) <= self.MAX_FRAME else self._whole_lines(data)
            self._stream.send_lines(chunk)
            frame = self._stream.data_to_send()
            sent = self.inner.try_send(frame) if not self.inner.wants_write() else 0
            if sent is None:
                self._broken = True
                return None
            if sent < len(frame):
                self._wire += memoryview(frame)[sent:]  # the rest waits for room in the socket
            return len(chunk)

    def _whole_lines(self, data: memoryview | bytes) -> bytes:
        """The longest start of `data` that is whole lines and fits a frame; a longer line goes out whole."""
        head = bytes(data[: self.MAX_FRAME])
        end = head.rfind(b"\n") + 1
        if end:
            return head[:end]
        tail = bytes(data[len(head) :])
        return head + (tail[: tail.find(b"\n") + 1] if b"\n" in tail else tail)

    def wants_write(self) -> bool:
        return (bool(self._wire) or self.inner.wants_write()) and not self._broken

    def shutdown(self) -> None:
        """Say goodbye with a close frame if it fits now, then stop both directions."""
        with self._lock:
            if not self._broken and not self._wire:
                self._stream.close()
                self._wire += self._stream.data_to_send()
                self._flush_locked()
        self.inner.shutdown()

    def fileno(self) -> int:
        return self.inner.fileno()

    def has_input(self) -> bool:
        return self.inner.has_input()

    # --- inside ---------------------------------------------------------------------------------

    def _flush_locked(self) -> bool:
        """Hand waiting frame bytes to the inner transport; False once it is broken."""
        if self._broken:
            return False
        while self._wire or self.inner.wants_write():
            with memoryview(self._wire) as view:
                sent = self.inner.try_send(view)
            if sent is None:
                self._broken = True
                return False
            if not sent:
                break
            del self._wire[:sent]
        return True

    def _send_all(self, deadline: float) -> None:
        """During the handshake only (nothing else writes yet): send the answer by `deadline`."""
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT)
        while True:
            with self._lock:
                if not self._flush_locked():
                    raise ConnectionError("the connection broke while its HTTP answer was sent")
                if not self.wants_write():
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise TimeoutError("the HTTP answer was not taken in time")
