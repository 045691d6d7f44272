"""The web front door's pure parts, without sockets: WebSite's answers and WebSocketStream's frames.

A real WebSocket client (websockets' sans-I/O ClientProtocol) makes the bytes a browser would
send and reads what the server answers, so each test is the two protocol objects talking.
"""

from __future__ import annotations

import http

import pytest
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.uri import parse_uri

from chat.server.web import SOCKET_PATH, StaticFile, WebSite, WebSocketStream

FILES = {
    "/": StaticFile.of("index.html", b"<!doctype html><title>chat</title>"),
    "/app.js": StaticFile.of("app.js", b"'use strict';"),
}


def request(path: str, **headers: str) -> Request:
    return Request(path, Headers({"Host": "chat.example:8080", **headers}))


def opened(max_message: int = 1024) -> tuple[WebSocketStream, ClientProtocol]:
    """A server stream and a client protocol that completed the handshake with each other."""
    client = ClientProtocol(parse_uri("ws://chat.example:8080/ws"))
    server = WebSocketStream(max_message)
    client.send_request(client.connect())
    assert server.receive_data(b"".join(client.data_to_send())) == b""
    assert server.request is not None and server.request.path == SOCKET_PATH
    assert server.accept(server.request)
    client.receive_data(server.data_to_send())
    [response] = client.events_received()
    assert isinstance(response, Response) and response.status_code == 101
    assert client.state is State.OPEN and server.open
    return server, client


def to_server(client: ClientProtocol, server: WebSocketStream) -> bytes:
    return server.receive_data(b"".join(client.data_to_send()))


def to_client(server: WebSocketStream, client: ClientProtocol) -> list[Frame]:
    client.receive_data(server.data_to_send())
    return [event for event in client.events_received() if isinstance(event, Frame)]


# --- WebSite --------------------------------------------------------------------------------


def test_the_page_is_served_with_its_etag_and_security_headers() -> None:
    site = WebSite(FILES)
    response = site.respond(request("/"), secure=False)
    assert response is not None and response.status_code == 200
    assert response.body == FILES["/"].body
    headers = response.headers
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["ETag"] == FILES["/"].etag
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_a_file_the_browser_has_is_not_sent_again() -> None:
    site = WebSite(FILES)
    etag = FILES["/app.js"].etag
    response = site.respond(request("/app.js?v=1", **{"If-None-Match": f'W/{etag}, "other"'}), secure=False)
    assert response is not None and response.status_code == 304 and response.body == b""
    changed = site.respond(request("/app.js", **{"If-None-Match": '"stale"'}), secure=False)
    assert changed is not None and changed.status_code == 200 and changed.body == b"'use strict';"


def test_an_unknown_path_is_404_and_says_which() -> None:
    response = WebSite(FILES).respond(request("/../etc/passwd"), secure=False)
    assert response is not None and response.status_code == 404
    assert b"/../etc/passwd" in response.body


@pytest.mark.parametrize(
    ("origin", "secure", "allowed"),
    [
        ("http://chat.example:8080", False, True),
        ("HTTP://Chat.Example:8080/", False, True),
        ("https://chat.example:8080", True, True),
        ("http://chat.example:8080", True, False),  # the page is https: an http page is another origin
        ("http://evil.example", False, False),
        ("https://friends.example", False, True),  # --web-origin
        ("null", False, False),
    ],
)
def test_a_websocket_from_a_foreign_origin_is_refused(origin: str, secure: bool, allowed: bool) -> None:
    site = WebSite(FILES, origins=["https://friends.example/"])
    response = site.respond(request("/ws", Origin=origin), secure=secure)
    if allowed:
        assert response is None
    else:
        assert response is not None and response.status_code == http.HTTPStatus.FORBIDDEN
        assert origin.encode() in response.body


def test_a_program_that_sends_no_origin_gets_its_websocket() -> None:
    assert WebSite(FILES).respond(request("/ws"), secure=False) is None


# --- WebSocketStream ------------------------------------------------------------------------


def test_text_frames_become_lines_and_lines_become_one_text_frame() -> None:
    server, client = opened()
    client.send_text(b'{"type":"join","name":"alice"}')  # no newline: the frame's end ends the line
    client.send_text(b'{"type":"ping"}\n{"type":"rooms"}\n')
    assert to_server(client, server) == b'{"type":"join","name":"alice"}\n{"type":"ping"}\n{"type":"rooms"}\n'
    assert server.send_lines(b'{"type":"pong"}\n{"type":"rooms","rooms":[]}\n')
    [frame] = to_client(server, client)
    assert frame.opcode is Opcode.TEXT and frame.data == b'{"type":"pong"}\n{"type":"rooms","rooms":[]}\n'


def test_a_fragmented_message_is_one_line_however_it_is_split() -> None:
    server, client = opened()
    text = '{"type":"message","msg":"héllo ☃"}'.encode()
    client.send_text(text[:5], fin=False)
    client.send_continuation(text[5:27], fin=False)  # splits the ☃ in two
    client.send_continuation(text[27:], fin=True)
    assert to_server(client, server) == text + b"\n"


def test_a_ping_is_answered_with_a_pong_and_yields_no_line() -> None:
    server, client = opened()
    client.send_ping(b"are you there")
    assert to_server(client, server) == b""
    [pong] = to_client(server, client)
    assert pong.opcode is Opcode.PONG and pong.data == b"are you there"
    assert server.open


def test_the_browsers_close_is_answered_and_ends_the_stream() -> None:
    server, client = opened()
    client.send_text(b'{"type":"leave"}\n')
    client.send_close(CloseCode.GOING_AWAY, "tab closed")
    assert to_server(client, server) == b'{"type":"leave"}\n'  # what came before the close still counts
    assert server.closed and "tab closed" in server.close_reason
    frames = to_client(server, client)
    assert frames[-1].opcode is Opcode.CLOSE
    assert server.eof and not server.send_lines(b'{"type":"pong"}\n')


def test_the_server_closes_with_a_close_frame() -> None:
    server, client = opened()
    server.close()
    [frame] = to_client(server, client)
    assert frame.opcode is Opcode.CLOSE and client.close_rcvd is not None
    assert client.close_rcvd.code == CloseCode.NORMAL_CLOSURE


def test_an_oversize_message_closes_with_1009() -> None:
    server, client = opened(max_message=64)
    client.send_text(b"x" * 40, fin=False)
    client.send_continuation(b"y" * 40, fin=True)  # 80 bytes in all: over, though each fragment fits
    assert to_server(client, server) == b"x" * 40  # the first fragment was read before the limit was passed
    assert server.closed
    frames = to_client(server, client)
    assert client.close_rcvd is not None and client.close_rcvd.code == CloseCode.MESSAGE_TOO_BIG, frames


def test_a_binary_frame_is_refused_with_1003() -> None:
    server, client = opened()
    client.send_binary(b'{"type":"ping"}\n')
    client.send_text(b'{"type":"rooms"}\n')  # in the same read: not taken after the refusal
    assert to_server(client, server) == b""
    assert server.closed
    to_client(server, client)
    assert client.close_rcvd is not None and client.close_rcvd.code == CloseCode.UNSUPPORTED_DATA
    assert "text" in client.close_rcvd.reason


def test_a_request_that_is_no_websocket_handshake_gets_a_4xx() -> None:
    server = WebSocketStream(1024)
    server.receive_data(b"GET /ws HTTP/1.1\r\nHost: chat.example\r\n\r\n")
    assert server.request is not None
    assert not server.accept(server.request)
    answer = server.data_to_send()
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 426 ")) and b"nosniff" in answer
    assert server.eof and not server.open


def test_what_is_no_http_at_all_closes() -> None:
    server = WebSocketStream(1024)
    server.receive_data(b"\x16\x03\x01 a TLS hello on a plain port\r\n\r\n")
    assert server.request is None and server.closed
    server.data_to_send()
    assert server.eof
