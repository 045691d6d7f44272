"""The TCP server: one handler thread per connection, reading lines into the hub.

ChatServer owns a Hub and an Outbox, so several servers can live in one
process. Handlers only read; every write goes through the Outbox. Stopping
tells every client, wakes every handler, and joins every thread started here.
"""

from __future__ import annotations

import logging
import math
import select
import socket
import socketserver
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from chat.errors import ProtocolError, Refused, RequestFailed
from chat.server.accounts import Accounts
from chat.server.config import ServerConfig
from chat.server.fanout import PeerState
from chat.server.hub import Hub
from chat.server.limits import AddressBook, AddressPolicy, TokenBucket, parse_networks, request_cost
from chat.server.lines import Line
from chat.server.outbox import SOFT_BACKLOG, Outbox, Peer
from chat.server.room import HistorySettings
from chat.server.session import Session
from chat.server.store import StoreError, open_store
from chat.server.transport import TcpTransport, TlsTransport, Transport
from chat.wire.codec import LineFramer, decode_client, encode_error
from chat.wire.protocol import (
    ClassicMessage,
    ClientMessage,
    ErrorReply,
    LeaveReason,
    Notice,
    SendAction,
    SendMessage,
    SendPrivate,
    ServerPing,
    Shutdown,
)
from chat.wire.text import quoted

if TYPE_CHECKING:  # loaded only with --redis: the redis package is an optional extra
    from chat.server.redis.cluster import RedisCluster

log = logging.getLogger(__name__)

_TOO_IDLE = ErrorReply(code="idle_timeout", detail="no line from you for too long; closing")
_NO_JOIN = ErrorReply(code="join_timeout", detail="no join from you in time; closing")
_READ_SIZE = 64 * 1024
#: Lines a person says: when one of them waits for the rate limit, its sender is told.
_SAID = (SendMessage, SendAction, SendPrivate, ClassicMessage)
#: Most lines one client said to one room that are kept and published together.
MAX_BATCH = 64
# A TLS record of type handshake, version 3.x: what a ClientHello starts with.
_TLS_HANDSHAKE = b"\x16\x03"

__all__ = ["ChatHandler", "ChatServer", "ServerConfig"]


class ChatHandler(socketserver.BaseRequestHandler):
    """Reads one client's lines and hands them to the hub, at the pace its limits allow; never writes.

    Lines are read as they arrive and each is charged to the connection's token
    bucket: within the burst it is served at once, past it it waits its turn
    (the client is slowed, nobody else is), and a client more than
    `flood_max_delay` seconds ahead of its rate is cut off with `excess_flood`.
    While a client's own replies are over SOFT_BACKLOG unsent, its next request
    waits, so what it asked for leaves before it may ask for more.
    """

    server: ChatServer
    request: socket.socket

    def handle(self) -> None:
        server = self.server
        label = peer_label(self.client_address)
        # The outbox coalesces lines itself; Nagle would only add latency.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        secure = server.tls_context is not None and self.request.getsockname()[1] != server.plain_port
        transport = self._secure(label) if secure else TcpTransport(self.request)
        if transport is None:
            return
        self.transport: Transport = transport
        peer = server.outbox.register(transport, label)
        session = server.hub.connect(peer, label, str(self.client_address[0]))
        reason: LeaveReason = "disconnected"
        log.info("%s connected", label)
        try:
            reason = self._serve(session)
        except OSError as exc:
            log.info("%s: connection lost (%s)", label, exc)
        finally:
            server.hub.disconnect(session, cast(LeaveReason, peer.drop_reason) or reason)
            server.outbox.release(peer, server.config.shutdown_grace)
            log.info("%s disconnected", label)

    def _secure(self, label: str) -> TlsTransport | None:
        """The TLS handshake, here in this connection's thread with a deadline, never on the
        accepting thread: a client that connects and says nothing delays nobody else."""
        server = self.server
        assert server.tls_context is not None
        transport = TlsTransport(self.request, server.tls_context)
        try:
            transport.handshake(time.monotonic() + server.config.tls_handshake_timeout)
        except ssl.SSLError as exc:
            log.info("%s: no TLS (%s); closing", label, exc.reason or exc)
            # Most likely a plaintext client: tell it in plaintext.
            _refuse(self.request, encode_error(Refused("tls_required", "this port speaks TLS only; closing")))
            return None
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.info("%s: TLS handshake failed (%s); closing", label, exc)
            return None
        return transport

    def _serve(self, session: Session[Peer]) -> LeaveReason:
        """Read and serve lines until the client leaves or is cut off; why it went."""
        config = self.server.config
        framer = LineFramer(config.max_line)
        self._bucket = TokenBucket(config.flood_rate, config.flood_burst)
        self._slowed = False
        waiting: deque[_Request] = deque()
        readable = select.poll()
        readable.register(self.request, select.POLLIN)
        first_read = True
        # Lines that came with the end of a TLS handshake already wait in the transport.
        early = self.transport.receive(b"")
        if early and (cut := self._take_lines(session, framer, waiting, early)):
            return cut
        while True:
            if not self._serve_due(session, waiting):
                return "quit"
            timeout_ms = None if not waiting else max(0, math.ceil((waiting[0].due - time.monotonic()) * 1000))
            if not readable.poll(timeout_ms):
                continue  # the first waiting line is due
            # Heard before the bytes leave the socket: the keepalive, which counts unread
            # input as life, never sees the input gone and the client not yet heard.
            session.heard()
            received = self.request.recv(_READ_SIZE)
            if first_read and received.startswith(_TLS_HANDSHAKE) and not isinstance(self.transport, TlsTransport):
                plain = Refused("plaintext_only", "this port speaks plain JSON lines, not TLS; closing")
                self.server.outbox.close(session.peer, Line.refusal(plain))
                log.info("%s: a TLS handshake on the plaintext port; closing", session.label)
                return "disconnected"
            first_read = False
            data = self.transport.receive(received) if received else None
            if data is None:
                if framer.unfinished:
                    log.debug("%s: dropped an unterminated last line", session.label)
                return self._serve_rest(session, waiting)
            if cut := self._take_lines(session, framer, waiting, data):
                return cut

    def _take_lines(
        self, session: Session[Peer], framer: LineFramer, waiting: deque[_Request], data: bytes
    ) -> LeaveReason | None:
        """Frame, decode and charge what arrived; each line waits its turn. A reason if the client is cut off."""
        config = self.server.config
        try:
            lines = framer.feed(data)
        except ProtocolError as exc:
            self.server.outbox.close(session.peer, Line.refusal(exc))
            log.warning("%s: line over %d bytes; closing", session.label, config.max_line)
            return "disconnected"
        for line in lines:
            if not line.strip():
                continue  # blank lines (an extra Enter in nc) are not an error
            request = _Request.decode(line)
            delay = self._bucket.charge(request_cost(request.message, len(line)))
            if delay > config.flood_max_delay:
                behind = f"you are more than {config.flood_max_delay:g} s ahead of the rate limit; closing"
                self.server.outbox.close(
                    session.peer, Line.refusal(Refused("excess_flood", behind)), reason="excess_flood"
                )
                log.warning("%s: excess flood; closing", session.label)
                return "excess_flood"
            # Told when a line a person said starts waiting: joins and history pages a client
            # asks for by itself (a restart in several rooms) are paced without a word.
            if delay and not self._slowed and isinstance(request.message, _SAID):
                detail = f"you send faster than {config.flood_rate:g} lines a second; your lines wait their turn"
                notice = Notice(code="rate_limited", detail=detail, delay_ms=round(delay * 1000))
                self.server.outbox.send_to(session.peer, Line.of(notice))
                self._slowed = True
            if not delay:
                self._slowed = False
            request.due = time.monotonic() + delay
            waiting.append(request)
        return None

    def _serve_due(self, session: Session[Peer], waiting: deque[_Request]) -> bool:
        """Serve every waiting line that is due; False when the client said goodbye."""
        outbox, peer = self.server.outbox, session.peer
        while waiting and waiting[0].due <= time.monotonic():
            if peer.state is not PeerState.OPEN or (
                outbox.queued_bytes(peer) >= SOFT_BACKLOG and not outbox.wait_drained(peer, SOFT_BACKLOG)
            ):
                waiting.clear()  # closing: nobody to answer
                return True
            if not self._serve_line(session, waiting.popleft(), waiting):
                return False
        return True

    @staticmethod
    def _said_with(first: SendMessage | SendAction, waiting: deque[_Request]) -> list[SendMessage | SendAction]:
        """`first` and the due lines after it said to the same room (taken from `waiting`): served as
        one batch, with one lock, one write to the store and one publish for all of them."""
        said = [first]
        now = time.monotonic()
        while waiting and len(said) < MAX_BATCH and waiting[0].due <= now:
            message = waiting[0].message
            if not isinstance(message, SendMessage | SendAction) or message.room != first.room:
                break
            said.append(message)
            waiting.popleft()
        return said

    def _serve_rest(self, session: Session[Peer], waiting: deque[_Request]) -> LeaveReason:
        """The client closed its side: what it sent before still counts, at its pace."""
        stopping = self.server.stopping
        while waiting and session.peer.state is PeerState.OPEN:
            if stopping.wait(max(0.0, waiting[0].due - time.monotonic())):
                break
            if not self._serve_due(session, waiting):
                return "quit"
        return "disconnected"

    def _serve_line(self, session: Session[Peer], request: _Request, waiting: deque[_Request]) -> bool:
        """Serve one line (a line said to a room with the due ones said there after it); False when the
        client said goodbye. Each line refused is answered with its own error, as if served alone."""
        server = self.server
        lines = 1
        try:
            message = request.message
            if isinstance(message, RequestFailed):
                raise message
            if isinstance(message, SendMessage | SendAction):
                said = self._said_with(message, waiting)
                lines = len(said)
                server.hub.speak(session, message.room, said)
            elif not server.hub.receive(session, message):
                return False
        except RequestFailed as exc:
            self._answer_failure(session, exc, lines)
        server.outbox.wait_for_writer(timeout=1.0)
        return True

    def _answer_failure(self, session: Session[Peer], failure: RequestFailed, lines: int = 1) -> None:
        """Tell the client why its request (or each of `lines` requests) was not done."""
        server = self.server
        if server.addresses.may_log(str(self.client_address[0])):
            log.info("%s: %s", session.label, quoted(str(failure), 200))
        server.outbox.send_to(session.peer, *[Line.refusal(failure)] * lines)


@dataclass
class _Request:
    """One line read from a client, decoded (or why not), and when it may be served."""

    message: ClientMessage | ClassicMessage | RequestFailed
    due: float = 0.0

    @classmethod
    def decode(cls, line: bytes) -> _Request:
        try:
            return cls(decode_client(line))
        except ProtocolError as exc:
            return cls(exc)


class ChatServer(socketserver.ThreadingTCPServer):
    """A chat server listening on `config.address`; call serve_forever(), then stop().

    Accepting stays cheap however many connections are open: limits are
    checked on the accepting thread before any thread is started, and handler
    threads are tracked in a set (socketserver's own list is reaped on every
    accept), so that stop() still joins every one.
    """

    allow_reuse_address = True
    daemon_threads = True  # joined by stop() through self._handlers, not socketserver's list
    request_queue_size = 4096  # the kernel caps it at net.core.somaxconn

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config = config or ServerConfig()
        # StoreError if unusable: the command line turns it into one line and exit status 1.
        self.store = open_store(config.db, config.retention, config.max_age, config.retention_bytes)
        self.outbox = Outbox(max_backlog=config.max_backlog, max_queued=config.max_queued)
        #: The Redis through which rooms are shared with other servers (--redis), if any.
        self.shared: RedisCluster[Peer] | None = None
        try:
            settings = HistorySettings(config.history, config.replay_limit)
            self.shared = _redis_cluster(config, self.outbox) if config.redis else None
            records = self.shared.accounts if self.shared is not None else None
            accounts = Accounts(self.store, require_account=config.require_account, records=records)
            self.hub: Hub[Peer] = Hub(self.outbox, self.store, settings, accounts, config.admin, self.shared)
        except BaseException:
            self._close_storage()
            raise
        self.addresses = AddressBook(
            AddressPolicy(
                max_connections=config.max_per_address,
                connect_burst=config.connect_burst,
                connect_interval=config.connect_interval,
                exempt=parse_networks(config.limit_exempt),
            )
        )
        #: The TLS settings new connections get (None: plaintext); reload_tls() swaps it.
        self.tls_context = self._load_tls() if config.tls_cert or config.tls_key else None
        self._handlers: set[threading.Thread] = set()
        self._handlers_lock = threading.Lock()
        self._serving = threading.Event()
        #: Set once stop() begins: handlers waiting out a client's pace stop waiting.
        self.stopping = threading.Event()
        self._stop_lock = threading.Lock()
        try:
            self.address_family = _family(config.host, config.port)
            super().__init__(config.address, ChatHandler)
        except OSError:
            self._close_storage()
            raise
        #: The extra plaintext listener beside a TLS one (--plain-port), if any.
        self._plain: _PlainListener | None = None
        if config.plain_port is not None:
            if self.tls_context is None:
                self.server_close()
                self._close_storage()
                raise OSError("--plain-port is for a server that speaks TLS (--tls-cert, --tls-key)")
            plain_host = config.host if config.allow_plaintext else ("::1" if ":" in config.host else "127.0.0.1")
            try:
                self._plain = _PlainListener(self, (plain_host, config.plain_port))
            except OSError:
                self.server_close()
                self._close_storage()
                raise
        self._keepalive = threading.Thread(target=self._watch_idle, name="chat-keepalive")
        self.outbox.start()
        self._keepalive.start()

    def _close_storage(self) -> None:
        if self.shared is not None:
            self.shared.stop()
        self.store.close()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def plain_port(self) -> int | None:
        """The port of the plaintext listener beside the TLS one, if there is one."""
        return int(self._plain.server_address[1]) if self._plain is not None else None

    @property
    def plain_address(self) -> tuple[str, int] | None:
        return (str(self._plain.server_address[0]), int(self._plain.server_address[1])) if self._plain else None

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._serving.set()
        if self.stopping.is_set():
            return
        plain = None
        if self._plain is not None:
            plain = threading.Thread(target=self._plain.serve_forever, args=(poll_interval,), name="chat-plain")
            plain.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            if plain is not None and self._plain is not None:
                self._plain.shutdown()
                plain.join()

    def stop(self, timeout: float = 5.0) -> None:
        """Tell every client, close every connection, and join every thread. Idempotent."""
        with self._stop_lock:
            if self.stopping.is_set():
                return
            self.stopping.set()
        log.info("stopping")
        if self._serving.is_set():
            self.shutdown()  # stop accepting; must not run on the serve_forever thread
        self.outbox.close_all(Line.of(Shutdown(detail="the server is shutting down")))
        self.server_close()
        if self._plain is not None:
            self._plain.server_close()
        self._join_handlers(timeout)
        self._keepalive.join(timeout)
        if self.shared is not None:
            self.shared.stop(timeout)
        self.outbox.stop(timeout)
        self.store.close()
        log.info("stopped")

    def reload_tls(self) -> bool:
        """Read the certificate and key again (after a renewal): new connections get them,
        open ones keep theirs. On failure the old ones stay and the log says why."""
        if self.tls_context is None:
            return False
        try:
            self.tls_context = self._load_tls()
        except (OSError, ssl.SSLError) as exc:
            log.error("kept the old TLS certificate: %s", exc)
            return False
        log.info("TLS certificate reloaded from %s", self.config.tls_cert)
        return True

    def _load_tls(self) -> ssl.SSLContext:
        if not (self.config.tls_cert and self.config.tls_key):
            raise ssl.SSLError("--tls-cert and --tls-key go together")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    # --- socketserver's hooks --------------------------------------------------------------

    def server_bind(self) -> None:
        _serve_both_families(self.socket)
        super().server_bind()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """On the accepting thread: whether this connection gets a handler. Never blocks."""
        sock = cast(socket.socket, request)
        host = str(client_address[0])
        try:
            if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                return False  # closed by its client while it waited to be accepted (a storm's leftovers)
        except BlockingIOError:
            pass  # open, and quiet: the usual case
        except OSError:
            return False  # reset while it waited
        refusal: Refused | None = None
        code = self.addresses.admit(host)
        if code is not None:
            refusal = Refused(code, "too many connections from your address; closing")
        elif len(self._handlers) >= self.config.max_clients:
            self.addresses.release(host)
            refusal = Refused("server_full", f"the server takes at most {self.config.max_clients} connections")
        if refusal is None:
            return True
        if self.addresses.may_log(host):
            log.warning("%s refused: %s", peer_label(client_address), refusal.code)
        _refuse(sock, encode_error(refusal))
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._handle_connection, args=(request, client_address), name="chat-handler", daemon=True
        )
        with self._handlers_lock:
            self._handlers.add(thread)
        thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("handler for %s crashed", client_address)

    # --- inside --------------------------------------------------------------------------

    def _handle_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.addresses.release(str(client_address[0]))
            with self._handlers_lock:
                self._handlers.discard(threading.current_thread())

    def _join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._handlers_lock:
            handlers = list(self._handlers)
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in handlers):
            log.error("%d handler threads did not end in time", sum(thread.is_alive() for thread in handlers))

    def _watch_idle(self) -> None:
        config = self.config
        deadlines = [t for t in (config.idle_timeout, config.ping_interval, config.join_timeout) if t]
        if not deadlines:
            self.stopping.wait()
            return
        check_every = min(max(min(deadlines) / 4, 0.01), 5.0)
        while not self.stopping.wait(check_every):
            now = time.monotonic()
            for session in self.hub.sessions():
                self._check_alive(session, now)

    def _check_alive(self, session: Session[Peer], now: float) -> None:
        config, peer = self.config, session.peer
        if config.join_timeout and session.name is None and now - session.connected_at >= config.join_timeout:
            log.info("%s: no join within %g s; closing", session.label, config.join_timeout)
            self.outbox.close(peer, Line.of(_NO_JOIN), reason="timeout")
            return
        if not config.idle_timeout:
            return
        silent = now - session.last_heard
        if silent >= config.ping_interval and silent < config.idle_timeout and not session.pinged:
            session.pinged = True
            self.outbox.send_to(peer, Line.of(ServerPing()))
        elif silent >= config.idle_timeout:
            # After a stall (the server stopped, the machine slept) lines may wait
            # unread: the client is alive if it is still reading what it is sent.
            if peer.transport.has_input() and self.outbox.queued_bytes(peer) < SOFT_BACKLOG:
                session.heard()
                return
            log.info("%s: silent for %.0f s; closing", session.label, silent)
            self.outbox.close(peer, Line.of(_TOO_IDLE), reason="timeout")


class _PlainListener(socketserver.TCPServer):
    """A second listening socket for plain lines beside a TLS one; its connections are the
    main server's in every way but TLS (the handler tells them apart by their local port)."""

    allow_reuse_address = True
    request_queue_size = 4096

    def __init__(self, main: ChatServer, address: tuple[str, int]) -> None:
        self.main = main
        self.address_family = _family(*address)
        super().__init__(address, ChatHandler)

    def server_bind(self) -> None:
        _serve_both_families(self.socket)
        super().server_bind()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.main.verify_request(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.main.process_request(request, client_address)


def _redis_cluster(config: ServerConfig, outbox: Outbox) -> RedisCluster[Peer]:
    """The Redis connection and reader for --redis; StoreError (one line for the log) if unusable."""
    url = config.redis or ""
    try:
        from chat.server.redis.cluster import RedisCluster
    except ImportError as exc:
        raise StoreError(f"--redis needs the redis package: pip install 'chat[redis]' ({exc})") from exc
    import redis

    try:
        cluster: RedisCluster[Peer] = RedisCluster(
            url, outbox, config.retention, config.redis_lease, config.redis_renew
        )
        cluster.ping()  # unreachable at start: the server says so and does not start
        return cluster
    except (redis.RedisError, ValueError) as exc:
        raise StoreError(f"cannot use Redis at {url}: {exc}") from exc


def _serve_both_families(sock: socket.socket) -> None:
    """An IPv6 listener on `::` serves IPv4 too (as ::ffff:a.b.c.d), whatever the system's default."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)


def _family(host: str, port: int) -> socket.AddressFamily:
    """The address family to listen with: IPv6 for an IPv6 address or a name that resolves to one first."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from exc


def peer_label(address: tuple[Any, ...]) -> str:
    """`host:port` as a log shows a peer, with an IPv6 host in brackets."""
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _refuse(sock: socket.socket, line: bytes) -> None:
    """Tell a connection that gets no handler why, without ever blocking the accepting thread."""
    try:
        sock.send(line, socket.MSG_DONTWAIT)
        # Read what it already sent, so that closing does not reset the connection before it reads the reason.
        sock.recv(_READ_SIZE, socket.MSG_DONTWAIT)
    except OSError:
        pass  # it is gone or not reading: the close below says enough
