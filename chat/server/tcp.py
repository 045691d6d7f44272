"""The TCP server: one handler thread per connection, reading lines into the hub.

ChatServer owns a Hub and an Outbox, so several servers can live in one
process. Handlers only read; every write goes through the Outbox. Stopping
tells every client, wakes every handler, and joins every thread started here.
"""

from __future__ import annotations

import logging
import socketserver
import threading
import time
from typing import Any, cast

from chat.errors import ProtocolError, Refused, RequestFailed
from chat.server.config import ServerConfig
from chat.server.hub import Hub
from chat.server.outbox import Outbox, Peer
from chat.server.room import HistorySettings
from chat.server.session import Session
from chat.server.store import open_store
from chat.server.transport import TcpTransport
from chat.wire.codec import decode_client, encode, encode_error
from chat.wire.protocol import ErrorReply, LeaveReason, ServerPing, Shutdown

log = logging.getLogger(__name__)

_PING = encode(ServerPing())
#: Protocol errors logged per connection: a client flooding garbage must not flood the log.
_LOGGED_ERRORS = 5
_TOO_IDLE = encode(ErrorReply(code="idle_timeout", detail="no line from you for too long; closing"))

__all__ = ["ChatHandler", "ChatServer", "ServerConfig"]


class ChatHandler(socketserver.StreamRequestHandler):
    """Reads one client's lines and hands them to the hub; never writes."""

    server: ChatServer
    # The outbox coalesces lines itself; Nagle would only add latency.
    disable_nagle_algorithm = True

    def handle(self) -> None:
        server = self.server
        label = "{}:{}".format(*self.client_address[:2])
        peer = server.outbox.register(TcpTransport(self.request), label)
        session = server.hub.connect(peer, label)
        reason: LeaveReason = "disconnected"
        log.info("%s connected", label)
        try:
            if server.outbox.peer_count() > server.config.max_clients:
                log.warning("%s refused: already %d connections", label, server.config.max_clients)
                full = Refused("server_full", f"the server takes at most {server.config.max_clients} connections")
                server.outbox.close(peer, encode_error(full))
            else:
                reason = self._read_lines(session)
        except OSError as exc:
            log.info("%s: connection lost (%s)", label, exc)
        finally:
            server.hub.disconnect(session, cast(LeaveReason, peer.drop_reason) or reason)
            server.outbox.release(peer, server.config.shutdown_grace)
            log.info("%s disconnected", label)

    def _read_lines(self, session: Session[Peer]) -> LeaveReason:
        server = self.server
        peer = session.peer
        max_line = server.config.max_line
        errors = 0
        while True:
            line = self.rfile.readline(max_line + 1)
            if not line:
                return "disconnected"
            session.heard()
            if len(line) > max_line:
                too_long = ProtocolError("line_too_long", f"a line is at most {max_line} bytes; closing")
                server.outbox.close(peer, encode_error(too_long))
                log.warning("%s: line over %d bytes; closing", peer.label, max_line)
                return "disconnected"
            if not line.strip():
                continue  # blank lines (an extra Enter in nc) are not an error
            try:
                if not server.hub.receive(session, decode_client(line)):
                    return "quit"
            except RequestFailed as exc:
                errors += 1
                if errors <= _LOGGED_ERRORS:
                    log.info("%s: %s%s", peer.label, exc, " (not logging more)" if errors == _LOGGED_ERRORS else "")
                server.outbox.send_to(peer, encode_error(exc))
            server.outbox.wait_for_writer(timeout=1.0)


class ChatServer(socketserver.ThreadingTCPServer):
    """A chat server listening on `config.address`; call serve_forever(), then stop()."""

    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True
    request_queue_size = 4096  # the kernel caps it at net.core.somaxconn

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config = config or ServerConfig()
        self.store = open_store(config.db, config.retention, config.max_age)  # StoreError if unusable
        self.outbox = Outbox(max_backlog=config.max_backlog)
        try:
            self.hub: Hub[Peer] = Hub(self.outbox, self.store, HistorySettings(config.history, config.replay_limit))
        except BaseException:
            self.store.close()
            raise
        self._serving = threading.Event()
        self._stopping = threading.Event()
        self._stop_lock = threading.Lock()
        try:
            super().__init__(config.address, ChatHandler)
        except OSError:
            self.store.close()
            raise
        self._keepalive = threading.Thread(target=self._watch_idle, name="chat-keepalive")
        self.outbox.start()
        self._keepalive.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._serving.set()
        if not self._stopping.is_set():
            super().serve_forever(poll_interval)

    def stop(self, timeout: float = 5.0) -> None:
        """Tell every client, close every connection, and join every thread. Idempotent."""
        with self._stop_lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
        log.info("stopping")
        if self._serving.is_set():
            self.shutdown()  # stop accepting; must not run on the serve_forever thread
        self.outbox.close_all(encode(Shutdown(detail="the server is shutting down")))
        self.server_close()  # closes the listener and joins every handler thread
        self._keepalive.join(timeout)
        self.outbox.stop(timeout)
        self.store.close()
        log.info("stopped")

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("handler for %s crashed", client_address)

    def _watch_idle(self) -> None:
        config = self.config
        if not config.idle_timeout:
            self._stopping.wait()
            return
        ping_after = min(config.ping_interval, config.idle_timeout)
        check_every = min(max(ping_after / 4, 0.01), 5.0)
        while not self._stopping.wait(check_every):
            now = time.monotonic()
            for session in self.hub.sessions():
                silent = now - session.last_heard
                if silent >= config.idle_timeout:
                    log.info("%s: silent for %.0f s; closing", session.label, silent)
                    self.outbox.close(session.peer, _TOO_IDLE, reason="timeout")
                elif silent >= ping_after and not session.pinged:
                    session.pinged = True
                    self.outbox.send_to(session.peer, _PING)
