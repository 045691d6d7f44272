"""The TCP server: one handler thread per connection, reading lines into the room.

ChatServer owns a Room and an Outbox, so several servers can live in one
process. Handlers only read; every write goes through the Outbox. Stopping
tells every client, wakes every handler, and joins every thread started here.
"""

from __future__ import annotations

import logging
import socketserver
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

from chat.errors import ProtocolError
from chat.server.outbox import Outbox, Peer
from chat.server.room import DEFAULT_HISTORY, DEFAULT_REPLAY_LIMIT, Room
from chat.server.store import DEFAULT_RETENTION, open_store
from chat.wire.codec import decode_client, encode, encode_error
from chat.wire.protocol import DEFAULT_MAX_LINE, ErrorReply, LeaveReason, ServerPing, Shutdown

log = logging.getLogger(__name__)

_PING = encode(ServerPing())
#: Protocol errors logged per connection: a client flooding garbage must not flood the log.
_LOGGED_ERRORS = 5
_TOO_IDLE = encode(ErrorReply(code="idle_timeout", detail="no line from you for too long; closing"))


@dataclass(frozen=True)
class ServerConfig:
    """Everything about a server that a user may choose."""

    #: Longest accepted line in bytes, newline included; longer ones close the connection.
    max_line: int = DEFAULT_MAX_LINE
    #: How many recent chat messages a newcomer is shown.
    history: int = DEFAULT_HISTORY
    #: Bytes queued for one client before it counts as not reading and is dropped.
    max_backlog: int = 8 * 1024 * 1024
    #: Seconds of silence from a client before the server pings it.
    ping_interval: float = 60.0
    #: Seconds of silence after which a client is disconnected; 0 never.
    idle_timeout: float = 300.0
    #: Seconds that stop() waits for clients to take the shutdown notice.
    shutdown_grace: float = 2.0
    #: Where messages are kept: an SQLite file, or ":memory:" to forget them at stop.
    db: str = ":memory:"
    #: How many messages the store keeps.
    retention: int = DEFAULT_RETENTION
    #: Seconds a message is kept at most (SQLite only); None for no age limit.
    max_age: float | None = None
    #: Most missed messages a resuming join replays.
    replay_limit: int = DEFAULT_REPLAY_LIMIT
    #: Most simultaneous connections; more are refused with a server_full error.
    max_clients: int = 10_000


class ChatHandler(socketserver.StreamRequestHandler):
    """Reads one client's lines and hands them to the room; never writes."""

    server: ChatServer
    # The outbox coalesces lines itself; Nagle would only add latency.
    disable_nagle_algorithm = True

    def handle(self) -> None:
        server = self.server
        label = "{}:{}".format(*self.client_address[:2])
        peer = server.outbox.register(self.request, label)
        reason: LeaveReason = "disconnected"
        log.info("%s connected", label)
        try:
            if server.outbox.peer_count() > server.config.max_clients:
                log.warning("%s refused: already %d connections", label, server.config.max_clients)
                full = ProtocolError("server_full", f"the server takes at most {server.config.max_clients} connections")
                server.outbox.close(peer, encode_error(full))
            else:
                reason = self._read_lines(peer)
        except OSError as exc:
            log.info("%s: connection lost (%s)", label, exc)
        finally:
            server.room.leave(peer, cast(LeaveReason, peer.drop_reason) or reason)
            server.outbox.release(peer, server.config.shutdown_grace)
            log.info("%s disconnected", label)

    def _read_lines(self, peer: Peer) -> LeaveReason:
        server = self.server
        max_line = server.config.max_line
        errors = 0
        while True:
            line = self.rfile.readline(max_line + 1)
            if not line:
                return "disconnected"
            peer.last_heard = time.monotonic()
            peer.pinged = False
            if len(line) > max_line:
                too_long = ProtocolError("line_too_long", f"a line is at most {max_line} bytes; closing")
                server.outbox.close(peer, encode_error(too_long))
                log.warning("%s: line over %d bytes; closing", peer.label, max_line)
                return "disconnected"
            if not line.strip():
                continue  # blank lines (an extra Enter in nc) are not an error
            try:
                if not server.room.receive(peer, decode_client(line)):
                    return "quit"
            except ProtocolError as exc:
                errors += 1
                if errors <= _LOGGED_ERRORS:
                    log.info("%s: %s%s", peer.label, exc, " (not logging more)" if errors == _LOGGED_ERRORS else "")
                server.outbox.send_to(peer, encode_error(exc))
            server.outbox.wait_for_writer(timeout=1.0)


class ChatServer(socketserver.ThreadingTCPServer):
    """A chat room listening on `address`; call serve_forever(), then stop()."""

    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True
    request_queue_size = 4096  # the kernel caps it at net.core.somaxconn

    def __init__(self, address: tuple[str, int], config: ServerConfig | None = None) -> None:
        self.config = config = config or ServerConfig()
        self.store = open_store(config.db, config.retention, config.max_age)  # StoreError if unusable
        self.outbox = Outbox(max_backlog=config.max_backlog)
        self.room: Room[Peer] = Room(
            self.outbox, self.store, history_size=config.history, replay_limit=config.replay_limit
        )
        self._serving = threading.Event()
        self._stopping = threading.Event()
        self._stop_lock = threading.Lock()
        try:
            super().__init__(address, ChatHandler)
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
            for peer in self.outbox.peers():
                silent = now - peer.last_heard
                if silent >= config.idle_timeout:
                    log.info("%s: silent for %.0f s; closing", peer.label, silent)
                    self.outbox.close(peer, _TOO_IDLE, reason="timeout")
                elif silent >= ping_after and not peer.pinged:
                    peer.pinged = True
                    self.outbox.send_to(peer, _PING)
