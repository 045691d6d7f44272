"""The web front door's pure parts: the HTTP answer a connection opens with, and WebSocket frames.

WebSite decides what an HTTP request gets (the page's files with ETags and security headers, a
refusal, or the upgrade at /ws, whose Origin it checks); WebSocketStream turns a WebSocket's text
frames into the JSON-line bytes the dialect reads and lines into frames, through websockets'
sans-I/O ServerProtocol (no sockets, threads or clocks: bytes and requests in, bytes and decisions out).
"""

from __future__ import annotations

import hashlib
import http
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from chat.errors import Refused

log = logging.getLogger(__name__)

#: Where the WebSocket is; every other path is a file of the page.
SOCKET_PATH = "/ws"

#: No inline script or style, nothing from another origin; the socket is the page's own (or an allowed one).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Sent with every answer of the web port.
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/manifest+json",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One file of the page, with what its answer says about it."""

    body: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, name: str, body: bytes) -> StaticFile:
        suffix = name[name.rfind(".") :]
        digest = hashlib.sha256(body).hexdigest()[:20]
        return cls(body, _TYPES.get(suffix, "application/octet-stream"), f'"{digest}"')


def package_files() -> dict[str, StaticFile]:
    """The page's files shipped in chat/web/static, by the path they are served at (index.html at /)."""
    found: dict[str, StaticFile] = {}
    for entry in resources.files("chat.web").joinpath("static").iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            found["/" + entry.name] = StaticFile.of(entry.name, entry.read_bytes())
    if "/index.html" in found:
        found["/"] = found["/index.html"]
    return found


class WebSite:
    """What each HTTP request on the web port gets: a file, a refusal, or None (upgrade it to a WebSocket).

    A WebSocket is accepted from the page's own origin (the scheme and Host the request came
    with), from the `origins` allowed besides, or from a program that sends no Origin (only
    browsers do, and only they can be made to connect by a foreign page).
    """

    def __init__(self, files: Mapping[str, StaticFile], origins: Sequence[str] = ()) -> None:
        self.files = dict(files)
        self.origins = frozenset(origin.lower().rstrip("/") for origin in origins)

    def respond(self, request: Request, secure: bool) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == SOCKET_PATH:
            origin = request.headers.get("Origin")
            if origin is None or self.origin_allowed(origin, request.headers.get("Host", ""), secure):
                return None
            return text_response(http.HTTPStatus.FORBIDDEN, f"WebSockets from {origin} are not accepted here\n")
        found = self.files.get(path)
        if found is None:
            return text_response(http.HTTPStatus.NOT_FOUND, f"nothing at {path[:200]}\n")
        headers = [("ETag", found.etag), ("Cache-Control", "no-cache")]
        if found.etag in _etags(request.headers.get("If-None-Match", "")):
            return _response(http.HTTPStatus.NOT_MODIFIED, headers, b"")
        return _response(http.HTTPStatus.OK, [*headers, ("Content-Type", found.content_type)], found.body)

    def origin_allowed(self, origin: str, host: str, secure: bool) -> bool:
        own = f"{'https' if secure else 'http'}://{host}".lower()
        return origin.lower().rstrip("/") in (self.origins | {own})


def text_response(status: http.HTTPStatus, text: str) -> Response:
    """A short plain-text answer, then the connection closes."""
    return _response(status, [("Content-Type", "text/plain; charset=utf-8")], text.encode())


def http_refusal(refusal: Refused) -> bytes:
    """A connection refused before it was served (too many from its address, a full server, no TLS), in HTTP."""
    status = {
        "too_many_connections": http.HTTPStatus.TOO_MANY_REQUESTS,
        "tls_required": http.HTTPStatus.BAD_REQUEST,  # plain http to the https port
    }.get(refusal.code, http.HTTPStatus.SERVICE_UNAVAILABLE)
    return text_response(status, f"{refusal.code}: {refusal}\n").serialize()


def _response(status: http.HTTPStatus, headers: list[tuple[str, str]], body: bytes) -> Response:
    every = [*headers, *SECURITY_HEADERS, ("Content-Length", str(len(body))), ("Connection", "close")]
    return Response(status.value, status.phrase, Headers(every), body)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


class WebSocketStream:
    """One WebSocket as JSON-line bytes, from its HTTP request to its close.

    Text messages may come in fragments and carry one or more lines; the end of a
    message ends a line (a browser's `ws.send(JSON.stringify(...))` needs no newline).
    Binary messages are refused (close 1003), a message over `max_message` bytes closes
    the socket (1009, websockets' own check), pings are answered. What to send leaves
    through `data_to_send`.
    """

    def __init__(self, max_message: int) -> None:
        self._protocol = ServerProtocol(max_size=max_message, logger=log)
        self._ends_line = True
        #: The HTTP request the connection opened with, once it is complete.
        self.request: Request | None = None
        #: Set once the socket is closing: by the peer, or because of what it sent.
        self.closed = False
        #: The end of output was asked for (the protocol's EOF): close the connection once sent.
        self.eof = False

    @property
    def open(self) -> bool:
        return self._protocol.state is State.OPEN

    @property
    def close_reason(self) -> str:
        """Why the socket closes, for the log."""
        protocol = self._protocol
        if protocol.parser_exc is not None:
            return str(protocol.parser_exc)
        if protocol.close_rcvd is not None:
            return f"closed by the browser ({protocol.close_rcvd})"
        if protocol.close_sent is not None:
            return f"closed ({protocol.close_sent})"
        return "closed"

    def receive_data(self, data: bytes) -> bytes:
        """Take bytes from the peer; the line bytes that arrived in whole text messages or fragments."""
        self._protocol.receive_data(data)
        return self._take_events()

    def receive_eof(self) -> bytes:
        self._protocol.receive_eof()
        self.closed = True
        return self._take_events()

    def accept(self, request: Request) -> bool:
        """Answer the upgrade; False if the request was no valid WebSocket handshake (it gets a 4xx)."""
        response = self._protocol.accept(request)
        if response.status_code == 101:
            if "Server" in response.headers:
                del response.headers["Server"]
        else:
            response = text_response(http.HTTPStatus(response.status_code), response.body.decode(errors="replace"))
        self._protocol.send_response(response)
        return response.status_code == 101

    def respond(self, response: Response) -> None:
        """Answer with a page or a refusal; the connection closes once it is sent."""
        self._protocol.send_response(response)

    def send_lines(self, data: bytes | memoryview) -> bool:
        """Queue whole lines as one text message; False if the socket is no longer open."""
        try:
            self._protocol.send_text(data)
        except InvalidState:
            return False
        return True

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake, if the socket is open."""
        if self.open:
            self._protocol.send_close(code, reason)

    def data_to_send(self) -> bytes:
        chunks = self._protocol.data_to_send()
        if any(not chunk for chunk in chunks):
            self.eof = True  # websockets' SEND_EOF: nothing more goes out
        return b"".join(chunks)

    def _take_events(self) -> bytes:
        lines: list[bytes] = []
        for event in self._protocol.events_received():
            if isinstance(event, Request):
                self.request = event
            elif isinstance(event, Frame):
                self._take_frame(event, lines)
        protocol = self._protocol
        if protocol.parser_exc is not None or protocol.close_rcvd is not None or protocol.handshake_exc is not None:
            self.closed = True
        return b"".join(lines)

    def _take_frame(self, frame: Frame, lines: list[bytes]) -> None:
        if self.closed:
            return  # nothing after a refusal counts
        if frame.opcode is Opcode.BINARY:
            self._protocol.fail(CloseCode.UNSUPPORTED_DATA, "binary frames are refused: send JSON lines as text")
            self.closed = True
            return
        if frame.opcode not in (Opcode.TEXT, Opcode.CONT):
            return  # ping (answered by the protocol), pong, close (taken in _take_events)
        if frame.data:
            payload = bytes(frame.data)
            lines.append(payload)
            self._ends_line = payload.endswith(b"\n")
        if frame.fin and not self._ends_line:
            lines.append(b"\n")
            self._ends_line = True
