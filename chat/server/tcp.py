"""The TCP server: one handler thread per connection, reading lines into the hub.

ChatServer owns a Hub and an Outbox, so several servers can live in one
process. It listens where `listeners(config)` says, each listener with its
dialect (chat.server.dialects: a sans-I/O object that frames, decodes and
paces); the handler is the loop around it. Handlers only read; every write goes
through the Outbox. Stopping tells every client, wakes every handler, and joins
every thread started here.
"""

from __future__ import annotations

import logging
import math
import queue
import select
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from chat.errors import Refused, RequestFailed
from chat.server.accounts import Accounts
from chat.server.config import ServerConfig
from chat.server.dialects.base import (
    Answer,
    Connection,
    Describe,
    Dialect,
    Due,
    Handled,
    JoinTwinRooms,
    LogIn,
    Refusal,
    Request,
    Said,
)
from chat.server.dialects.irc import IrcDialect
from chat.server.dialects.jsonlines import JsonLinesConnection
from chat.server.fanout import PeerState
from chat.server.history import HistoryQuery
from chat.server.hub import Hub
from chat.server.limits import AddressBook, AddressPolicy, parse_networks
from chat.server.lines import JSON_LINES, Line
from chat.server.metrics import MetricsEndpoint, Stats
from chat.server.outbox import SOFT_BACKLOG, Outbox, Peer
from chat.server.room import HistorySettings
from chat.server.session import Session
from chat.server.store import SqliteStore, Store, StoreError, open_store
from chat.server.transport import TcpTransport, TlsTransport, Transport
from chat.server.web import WebSite, http_refusal, package_files
from chat.server.webtransport import WsTransport
from chat.wire.codec import encode_error, error_reply
from chat.wire.protocol import ErrorReply, LeaveReason, Notice, ServerPing, Shutdown
from chat.wire.text import quoted

if TYPE_CHECKING:  # loaded only with --redis: the redis package is an optional extra
    from chat.server.redis.cluster import RedisCluster

log = logging.getLogger(__name__)

_TOO_IDLE = ErrorReply(code="idle_timeout", detail="no line from you for too long; closing")
_NO_JOIN = ErrorReply(code="join_timeout", detail="no join from you in time; closing")
_TLS_ONLY = "this port speaks TLS only; closing"
_READ_SIZE = 64 * 1024
#: Seconds between checks that every account with a session still has the password it proved.
ACCOUNTS_CHECK_EVERY = 1.0
#: Seconds between sweeps for expired rooms, at most.
ROOMS_SWEEP_EVERY = 600.0
#: Handler threads started ahead, each waiting for a connection of its own: the accepting thread
#: hands one over instead of starting a thread and waiting until it runs (with the GIL busy, that
#: wait took milliseconds per connect and set the pace of a connect storm).
SPARE_HANDLERS = 8

__all__ = ["ChatHandler", "ChatServer", "Listener", "ServerConfig", "listeners"]


class ChatHandler(socketserver.BaseRequestHandler):
    """Reads one client's bytes into its dialect's connection and serves what comes due; never writes.

    The connection (the dialect of the listener the client came in on) frames,
    decodes and paces; this loop owns the socket and the transport (TLS), keeps
    the client alive for the keepalive, and hands due requests to the hub.
    While a client's own replies are over SOFT_BACKLOG unsent, its next request
    waits, so what it asked for leaves before it may ask for more.
    """

    server: ChatServer
    request: socket.socket

    def __init__(self, request: Any, client_address: Any, server: ChatServer, listener: Listener | None = None) -> None:
        #: The listener the connection came in on: whether it speaks TLS, and its dialect.
        self.listener = listener or server.listener
        super().__init__(request, client_address, server)

    def handle(self) -> None:
        server = self.server
        label = peer_label(self.client_address)
        # The outbox coalesces lines itself; Nagle would only add latency.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport: Transport | None
        if self.listener.web:
            transport = self._open_web(label)
        else:
            transport = self._secure(label) if self.listener.tls else TcpTransport(self.request)
        if transport is None:
            return
        self.transport: Transport = transport
        connection = self.listener.dialect(server.config, tls=self.listener.tls)
        peer = server.outbox.register(transport, label, connection.writes or JSON_LINES)
        connection.attach(server.hub)
        session = server.hub.connect(peer, label, str(self.client_address[0]))
        reason: LeaveReason = "disconnected"
        log.info("%s connected", label, extra={"address": label})
        server.stats.connected(self.listener.name, 1)
        try:
            reason = self._serve(session, connection)
        except OSError as exc:
            log.info("%s: connection lost (%s)", label, exc, extra={"address": label})
        finally:
            reason = cast("LeaveReason | None", peer.drop_reason) or reason
            server.stats.connected(self.listener.name, -1)
            server.stats.ended(reason)
            server.hub.disconnect(session, reason)
            server.outbox.release(peer, server.config.shutdown_grace)
            log.info("%s disconnected", label, extra={"address": label, "reason": reason})

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
            # Most likely a plaintext client: tell it in plaintext (in HTTP, on the web port).
            refusal = Refused("tls_required", _TLS_ONLY)
            _refuse(self.request, http_refusal(refusal) if self.listener.web else encode_error(refusal))
            return None
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.info("%s: TLS handshake failed (%s); closing", label, exc)
            return None
        return transport

    def _open_web(self, label: str) -> WsTransport | None:
        """The web port: TLS if it speaks it, then the HTTP request by a deadline. A page or a
        refusal is answered here and the connection ends (None); /ws becomes a WebSocket."""
        server = self.server
        inner = self._secure(label) if self.listener.tls else TcpTransport(self.request)
        if inner is None:
            return None
        transport = WsTransport(inner, max_message=4 * server.config.max_line)
        with server.opening(self.request) as open_:
            try:
                deadline = time.monotonic() + server.config.tls_handshake_timeout
                if open_ and transport.handshake(server.web_site, deadline, secure=self.listener.tls):
                    return transport
            except (TimeoutError, ConnectionError, OSError) as exc:
                if not server.stopping.is_set():
                    log.info("%s: no WebSocket (%s); closing", label, exc)
        return None

    def _serve(self, session: Session[Peer], connection: Connection) -> LeaveReason:
        """Read and serve requests until the client leaves or is cut off; why it went."""
        readable = select.poll()
        readable.register(self.request, select.POLLIN)
        # Lines that came with the end of a TLS handshake already wait in the transport.
        early = self.transport.receive(b"")
        if early:
            connection.receive_data(early, time.monotonic())
        while True:
            if (gone := self._act(session, connection)) is not None:
                return gone
            due = connection.next_due
            timeout_ms = None if due is None else max(0, math.ceil((due - time.monotonic()) * 1000))
            if not readable.poll(timeout_ms):
                continue  # the first waiting request is due
            # Heard before the bytes leave the socket, and reading until they are heard again
            # after: the keepalive, which counts unread input as life, never sees the input
            # gone and the client not heard since (a freeze of the server may fall between).
            session.heard()
            session.reading = True
            try:
                received = self.request.recv(_READ_SIZE)
                session.heard()
            finally:
                session.reading = False
            data = self.transport.receive(received) if received else None
            if data is None:
                connection.receive_eof()
                if connection.unfinished:
                    log.debug("%s: dropped an unterminated last line", session.label)
                return self._serve_rest(session, connection)
            connection.receive_data(data, time.monotonic())

    def _act(self, session: Session[Peer], connection: Connection) -> LeaveReason | None:
        """Do what the connection asks now: send its answers, close if it must, serve the due
        requests. Why the client went, if it did."""
        for answer in connection.answers_to_send():
            if isinstance(answer, Notice) and answer.code == "rate_limited":
                self.server.stats.slowed()
            self._send(session.peer, answer)
        if (close := connection.closing) is not None:
            self._close(session.peer, close.final, close.reason)
            log.log(close.level, "%s: %s; closing", session.label, close.log)
            return close.reason or "disconnected"
        return None if self._serve_due(session, connection) else "quit"

    def _serve_due(self, session: Session[Peer], connection: Connection) -> bool:
        """Serve every request that is due; False when the client said goodbye."""
        outbox, peer = self.server.outbox, session.peer
        while connection.due(time.monotonic()):
            if peer.state is not PeerState.OPEN or (
                outbox.queued_bytes(peer) >= SOFT_BACKLOG and not outbox.wait_drained(peer, SOFT_BACKLOG)
            ):
                connection.drop_waiting()  # closing: nobody to answer
                return True
            # Taken after any wait above: lines said meanwhile join the batch.
            request = connection.next_request(time.monotonic())
            for answer in connection.answers_to_send():  # what the dialect said on taking it out
                self._send(peer, answer)
            if request is not None and not self._serve_request(session, connection, request):
                return False
            # What the dialect says about it, right after what the hub said.
            for answer in connection.answers_to_send():
                self._send(peer, answer)
        return True

    def _serve_rest(self, session: Session[Peer], connection: Connection) -> LeaveReason:
        """The client closed its side: what it sent before still counts, at its pace."""
        stopping = self.server.stopping
        while (due := connection.next_due) is not None and session.peer.state is PeerState.OPEN:
            if stopping.wait(max(0.0, due - time.monotonic())):
                break
            if not self._serve_due(session, connection):
                return "quit"
        return "disconnected"

    def _serve_request(self, session: Session[Peer], connection: Connection, request: Due) -> bool:
        """Serve one request (lines said to a room as one batch); False when the client said
        goodbye. Each line refused is answered with its own error, as if served alone (or as
        the dialect words it)."""
        server = self.server
        failure: RequestFailed | None = None
        try:
            match request:
                case Handled():
                    return True
                case Request(LogIn(join, user_name, real_name)):
                    server.hub.log_in(session, join, user_name, real_name)
                case Request(Describe(user_name, real_name)):
                    session.user_name, session.real_name = user_name, real_name
                case Request(JoinTwinRooms()):
                    server.hub.join_twin_rooms(session)
                case Request(HistoryQuery() as query):
                    server.hub.history_query(session, query)
                case Said(room, lines):
                    started = time.monotonic()
                    with server.outbox.writing_here():  # a small room's line wakes no other thread
                        server.hub.speak(session, room, lines)
                        # Counted before the scope's end sends them: a reader never sees a line
                        # the metrics do not count yet.
                        server.stats.kept(len(lines), time.monotonic() - started)
                case Request(message):
                    assert not isinstance(message, LogIn | Describe | JoinTwinRooms | HistoryQuery)
                    if not server.hub.receive(session, message):
                        return False
                case Refusal(refused):
                    self._answer_failure(session, refused)
        except RequestFailed as exc:
            failure = exc
        worded = connection.served(request, failure)
        if failure is not None:
            if worded is None:
                self._answer_failure(session, failure, len(request.lines) if isinstance(request, Said) else 1)
            else:
                self._log_failure(session, failure)
                self._send(session.peer, *worded)
        server.outbox.wait_for_writer(timeout=1.0)
        return True

    def _answer_failure(self, session: Session[Peer], failure: RequestFailed, lines: int = 1) -> None:
        """Tell the client why its request (or each of `lines` requests) was not done."""
        self._log_failure(session, failure)
        self._send(session.peer, *[error_reply(failure)] * lines)

    def _log_failure(self, session: Session[Peer], failure: RequestFailed) -> None:
        if self.server.addresses.may_log(str(self.client_address[0])):
            log.info("%s: %s", session.label, quoted(str(failure), 200))

    # --- answers leave as Lines: the outbox writes them in the peer's dialect ---------------

    def _send(self, peer: Peer, *answers: Answer) -> None:
        self.server.outbox.send_to(peer, *[_line(answer) for answer in answers])

    def _close(self, peer: Peer, final: Answer, reason: str | None) -> None:
        self.server.outbox.close(peer, _line(final), reason=reason)


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
        # OSError for options that do not make sense together, before anything is opened.
        #: The main listener (this socket's); the others get a socket of their own.
        self.listener, *others = listeners(config)
        #: What the server counts as it works, for --metrics-port.
        self.stats = Stats(tuple(listener.name for listener in (self.listener, *others)))
        # StoreError if unusable: the command line turns it into one line and exit status 1.
        self.store = open_store(config.db, config.retention, config.max_age, config.retention_bytes)
        self.outbox = Outbox(max_backlog=config.max_backlog, max_queued=config.max_queued)
        #: The Redis through which rooms are shared with other servers (--redis), if any.
        self.shared: RedisCluster[Peer] | None = None
        try:
            settings = HistorySettings(config.history, config.replay_limit)
            self.shared = _redis_cluster(config, self.outbox, self.store) if config.redis else None
            records = self.shared.accounts if self.shared is not None else None
            accounts = Accounts(self.store, require_account=config.require_account, records=records,
                                shared_take=self.shared.take if self.shared is not None else None)
            # Search needs an index of every line this server may answer with: its SQLite file's.
            # With --redis the rooms' lines live in Redis, so that file does not hold them.
            search = self.store if isinstance(self.store, SqliteStore) and self.shared is None else None
            self.hub: Hub[Peer] = Hub(
                self.outbox, self.store, settings, accounts, config.admin, self.shared,
                max_sessions=config.max_sessions,
                shared_addresses=parse_networks(config.limit_exempt),
                max_rooms_per_user=config.max_rooms_per_user,
                search=search,
            )
            if search is not None:
                search.start_indexing()
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
        #: What the web port serves (--web-port): the page's files, and which origins' WebSockets it takes.
        self.web_site = WebSite(package_files() if config.web_port is not None else {}, config.web_origin)
        #: The TLS settings new connections get (None: plaintext); reload_tls() swaps it.
        self.tls_context = self._load_tls() if config.tls_cert or config.tls_key else None
        self._handlers: set[threading.Thread] = set()
        self._handlers_lock = threading.Lock()
        #: Connections with a handler now (under _handlers_lock; read without it to refuse).
        self._connections = 0
        #: Connections handed to spare handlers, and how many spares wait for one (under the lock).
        self._spares: queue.SimpleQueue[tuple[Any, Any, Listener] | None] = queue.SimpleQueue()
        self._idle_spares = 0
        self._starting_spares = 0
        #: Told when a spare was taken (or the server stops): the spawner starts the next one.
        self._spares_wanted = threading.Condition(self._handlers_lock)
        #: Web connections still in their HTTP request (under _handlers_lock): stop() wakes them.
        self._opening: set[socket.socket] = set()
        self._serving = threading.Event()
        #: Set once stop() begins: handlers waiting out a client's pace stop waiting.
        self.stopping = threading.Event()
        self._stop_lock = threading.Lock()
        #: The listening sockets beside this one (each a listener of the table), in its order.
        self._others: list[_Listener] = []
        #: /metrics, /healthz and /readyz over HTTP (--metrics-port), if asked for.
        self.metrics: MetricsEndpoint | None = None
        try:
            self.address_family = _family(*self.listener.address)
            super().__init__(self.listener.address, ChatHandler)  # closes its socket if it fails
        except OSError:
            self._close_storage()
            raise
        try:
            for listener in others:
                self._others.append(_Listener(self, listener))
            if config.metrics_port is not None:
                self.metrics = MetricsEndpoint(self, config.host, config.metrics_port)
        except OSError:
            self._close_listeners()
            self._close_storage()
            raise
        self._keepalive = threading.Thread(target=self._watch_idle, name="chat-keepalive")
        self._accounts_watch = threading.Thread(target=self._watch_accounts, name="chat-accounts")
        self._spawner = threading.Thread(target=self._keep_spares, name="chat-spawner")
        self.outbox.start()
        self._keepalive.start()
        self._accounts_watch.start()
        self._spawner.start()

    def _close_listeners(self) -> None:
        """Close every listening socket: this one and the others opened so far."""
        self.server_close()
        for other in self._others:
            other.server_close()

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
        address = self.plain_address
        return address[1] if address is not None else None

    @property
    def plain_address(self) -> tuple[str, int] | None:
        """Where the plaintext listener beside the TLS one listens, if there is one."""
        return self.address_of("plain")

    def address_of(self, listener: str) -> tuple[str, int] | None:
        """Where the listener called `listener` (`plain`, `irc`, `irc-tls`) listens, if there is one."""
        for other in self._others:
            if other.listener.name == listener:
                return str(other.server_address[0]), int(other.server_address[1])
        return None

    @contextmanager
    def opening(self, sock: socket.socket) -> Iterator[bool]:
        """While a web connection waits for its HTTP request, stop() shuts it down rather than
        wait for its deadline; False if the server is stopping already (serve nothing)."""
        with self._handlers_lock:
            admitted = not self.stopping.is_set()
            if admitted:
                self._opening.add(sock)
        try:
            yield admitted
        finally:
            with self._handlers_lock:
                self._opening.discard(sock)

    @property
    def web_address(self) -> tuple[str, int] | None:
        """Where the web client is served (--web-port), if it is."""
        for other in self._others:
            if other.listener.web:
                return str(other.server_address[0]), int(other.server_address[1])
        return None

    @property
    def serving(self) -> bool:
        """Whether it accepts and serves connections now (serve_forever runs, stop() not begun)."""
        return self._serving.is_set() and not self.stopping.is_set()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._serving.set()
        if self.stopping.is_set():
            return
        threads = [
            threading.Thread(target=other.serve_forever, args=(poll_interval,), name=f"chat-{other.listener.name}")
            for other in self._others
        ]
        for thread in threads:
            thread.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            for other, thread in zip(self._others, threads, strict=True):
                other.shutdown()
                thread.join()

    def stop(self, timeout: float = 5.0) -> None:
        """Tell every client, close every connection, and join every thread. Idempotent."""
        with self._stop_lock:
            if self.stopping.is_set():
                return
            self.stopping.set()
        log.info("stopping")
        with self._handlers_lock:
            for sock in self._opening:
                _shutdown(sock)  # a web connection waiting for its request (keep-alive) ends now
        if self._serving.is_set():
            self.shutdown()  # stop accepting; must not run on the serve_forever thread
        self.outbox.close_all(Line.of(Shutdown(detail="the server is shutting down")))
        self._close_listeners()
        if self.metrics is not None:
            self.metrics.close()
        self._join_handlers(timeout)
        self._keepalive.join(timeout)
        self._accounts_watch.join(timeout)
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

    def verify_request(self, request: Any, client_address: Any, listener: Listener | None = None) -> bool:
        """On the accepting thread: whether this connection gets a handler (on `listener`, this
        server's own if None). Never blocks."""
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
        elif self._connections >= self.config.max_clients:
            self.addresses.release(host)
            refusal = Refused("server_full", f"the server takes at most {self.config.max_clients} connections")
        if refusal is None:
            return True
        if self.addresses.may_log(host):
            log.warning("%s refused: %s", peer_label(client_address), refusal.code)
        web = listener is not None and listener.web
        _refuse(sock, http_refusal(refusal) if web else encode_error(refusal))
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        self.start_handler(request, client_address, self.listener)

    def finish_request(self, request: Any, client_address: Any, listener: Listener | None = None) -> None:
        ChatHandler(request, client_address, self, listener or self.listener)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("handler for %s crashed", client_address)

    # --- inside --------------------------------------------------------------------------

    def start_handler(self, request: Any, client_address: Any, listener: Listener) -> None:
        """A thread of its own for a connection accepted on `listener` (this server's or another):
        a spare one that waits for a connection if there is one, else one started now."""
        connection = (request, client_address, listener)
        with self._handlers_lock:
            self._connections += 1
            if self._idle_spares:
                self._idle_spares -= 1
                self._spares.put(connection)
                self._spares_wanted.notify()
                return
        try:
            self._start_thread(self._handle_connection, connection)
        except BaseException:  # no thread: socketserver closes the connection, which is not counted
            with self._handlers_lock:
                self._connections -= 1
            raise

    def _start_thread(self, target: Any, args: tuple[Any, ...]) -> None:
        thread = threading.Thread(target=target, args=args, name="chat-handler", daemon=True)
        with self._handlers_lock:
            self._handlers.add(thread)
        try:
            thread.start()
        except BaseException:  # never started: stop() must not wait for it
            with self._handlers_lock:
                self._handlers.discard(thread)
            raise

    def _handle_connection(self, request: Any, client_address: Any, listener: Listener) -> None:
        try:
            self.finish_request(request, client_address, listener)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.addresses.release(str(client_address[0]))
            with self._handlers_lock:
                self._connections -= 1
                self._handlers.discard(threading.current_thread())

    def _keep_spares(self) -> None:
        """The spawner thread: keeps SPARE_HANDLERS handler threads waiting for a connection,
        starting each here, so that neither the accepting thread nor a connection's own handler
        waits for a thread to start."""
        while True:
            with self._spares_wanted:
                self._spares_wanted.wait_for(
                    lambda: self.stopping.is_set() or self._idle_spares + self._starting_spares < SPARE_HANDLERS
                )
                if self.stopping.is_set():
                    return
                self._starting_spares += 1
            try:
                self._start_thread(self._wait_as_spare, ())
            except RuntimeError as exc:  # no more threads now: connections get one started for them
                log.warning("could not start a spare handler thread: %s", exc)
                with self._handlers_lock:
                    self._starting_spares -= 1
                if self.stopping.wait(1.0):
                    return

    def _wait_as_spare(self) -> None:
        """A spare handler: wait for a connection, and handle it (None: the server stops)."""
        with self._handlers_lock:
            self._starting_spares -= 1
            spare = not self.stopping.is_set()
            if spare:
                self._idle_spares += 1
            else:
                self._handlers.discard(threading.current_thread())
        if not spare:
            return
        connection = self._spares.get()
        if connection is None:
            with self._handlers_lock:
                self._handlers.discard(threading.current_thread())
            return
        self._handle_connection(*connection)

    def _join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._spares_wanted:
            self._spares_wanted.notify_all()  # the spawner sees the server stopping, and ends
        self._spawner.join(timeout)
        with self._handlers_lock:
            for _ in range(self._idle_spares):
                self._spares.put(None)  # no connection will come: end
            self._idle_spares = 0
            handlers = list(self._handlers)
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in handlers):
            log.error("%d handler threads did not end in time", sum(thread.is_alive() for thread in handlers))

    def _watch_accounts(self) -> None:
        """Now and then: end the sessions of accounts that chat-admin deleted or gave a new
        password while the server ran (it writes the store, not to this process), and remove
        the rooms nobody used for --room-expiry."""
        swept = time.monotonic()
        while not self.stopping.wait(ACCOUNTS_CHECK_EVERY):
            self.hub.check_accounts()
            expiry = self.config.room_expiry
            if expiry and time.monotonic() - swept >= min(expiry / 10, ROOMS_SWEEP_EVERY):
                swept = time.monotonic()
                self.hub.expire_rooms(expiry)

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
            # Its handler, woken by the same resume, may be reading those lines, or have read
            # them between the two looks above: look once more.
            if session.reading or now - session.last_heard < config.idle_timeout:
                return
            log.info("%s: silent for %.0f s; closing", session.label, silent)
            self.outbox.close(peer, Line.of(_TOO_IDLE), reason="timeout")


@dataclass(frozen=True)
class Listener:
    """One socket the server listens on: where, whether its connections speak TLS, and the
    dialect they speak (what makes each one's connection object)."""

    name: str
    address: tuple[str, int]
    tls: bool
    dialect: Dialect
    #: Its connections open with HTTP: the web client's files, or a WebSocket carrying the dialect.
    web: bool = False

    @property
    def option(self) -> str:
        """The command-line option that asked for it (what an operator is told to change)."""
        return "--port" if self.name == "main" else f"--{self.name}-port"


def listeners(config: ServerConfig) -> list[Listener]:
    """Every socket `config` asks the server to listen on, the main one first.

    The one place options become listeners: another front door (IRC, a web
    client) is one more entry here. OSError for options that do not go together.
    """
    tls = bool(config.tls_cert or config.tls_key)
    found = [Listener("main", config.address, tls, JsonLinesConnection)]
    if config.plain_port is not None:
        if not tls:
            raise OSError("--plain-port is for a server that speaks TLS (--tls-cert, --tls-key)")
        host = config.host if config.allow_plaintext else ("::1" if ":" in config.host else "127.0.0.1")
        found.append(Listener("plain", (host, config.plain_port), False, JsonLinesConnection))
    if config.irc_port is not None:
        found.append(Listener("irc", (config.host, config.irc_port), False, IrcDialect(config.irc_server_name)))
    if config.irc_tls_port is not None:
        if not tls:
            raise OSError("--irc-tls-port is for a server that speaks TLS (--tls-cert, --tls-key)")
        found.append(Listener("irc-tls", (config.host, config.irc_tls_port), True, IrcDialect(config.irc_server_name)))
    if config.web_port is not None:
        found.append(Listener("web", (config.host, config.web_port), tls, JsonLinesConnection, web=True))
    return found


class _Listener(socketserver.TCPServer):
    """A listening socket beside the main one; its connections are the main server's in every
    way but the listener they came in on (its TLS and dialect)."""

    allow_reuse_address = True
    request_queue_size = 4096

    def __init__(self, main: ChatServer, listener: Listener) -> None:
        self.main = main
        self.listener = listener
        self.address_family = _family(*listener.address)
        # Never asked for a handler: process_request hands each connection to the main server.
        super().__init__(listener.address, socketserver.BaseRequestHandler)

    def server_bind(self) -> None:
        _serve_both_families(self.socket)
        super().server_bind()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.main.verify_request(request, client_address, self.listener)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.main.start_handler(request, client_address, self.listener)


def _line(answer: Answer) -> Line:
    return answer if isinstance(answer, Line) else Line.of(answer)


def _redis_cluster(config: ServerConfig, outbox: Outbox, store: Store) -> RedisCluster[Peer]:
    """The Redis connection and reader for --redis; StoreError (one line for the log) if unusable."""
    url = config.redis or ""
    try:
        from chat.server.redis.cluster import RedisCluster
    except ImportError as exc:
        raise StoreError(f"--redis needs the redis package: pip install 'chat[redis]' ({exc})") from exc
    import redis

    try:
        cluster: RedisCluster[Peer] = RedisCluster(
            url, outbox, config.retention, config.redis_lease, config.redis_renew, local=store
        )
        cluster.ping()  # unreachable at start: the server says so and does not start
        cluster.mark_identity()
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


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already: nothing to wake


def _refuse(sock: socket.socket, line: bytes) -> None:
    """Tell a connection that gets no handler why, without ever blocking the accepting thread."""
    try:
        sock.send(line, socket.MSG_DONTWAIT)
        # Read what it already sent, so that closing does not reset the connection before it reads the reason.
        sock.recv(_READ_SIZE, socket.MSG_DONTWAIT)
    except OSError:
        pass  # it is gone or not reading: the close below says enough
