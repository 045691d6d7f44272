"""The web port over real sockets: the page and its headers, WebSockets that chat with JSON-line clients,
foreign origins, binary frames, silent sockets, slow readers, and https/wss with trustme certificates."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from typing import Any

import pytest
import trustme
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode, Frame, Opcode
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from chat.server.config import ServerConfig
from chat.testing import TIMEOUT, LineClient, scaled
from chat.wire.protocol import ChatMessage, Left


class WebClient:
    """A JSON-line client over a real WebSocket (websockets' own sync client), as a browser page is."""

    def __init__(self, url: str, **options: Any) -> None:
        self.ws: ClientConnection = connect(url, open_timeout=TIMEOUT, legacy=True, **options)
        self._lines: list[dict[str, Any]] = []
        self.frames = 0

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def next(self) -> dict[str, Any]:
        while not self._lines:
            frame = self.ws.recv(timeout=TIMEOUT)
            assert isinstance(frame, str), "the server sends text frames"
            assert frame.endswith("\n"), "each frame carries whole lines"
            self.frames += 1
            self._lines += [json.loads(line) for line in frame.splitlines()]
        return self._lines.pop(0)

    def expect(self, kind: str, **fields: Any) -> dict[str, Any]:
        skipped = []
        while True:
            message = self.next()
            if message.get("type") == kind and all(message.get(k) == v for k, v in fields.items()):
                return message
            skipped.append(message)
            assert len(skipped) < 10_000, f"no {kind} {fields}"

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def web_server(start_chat_server):
    def start(**settings: Any):
        server = start_chat_server(ServerConfig(web_port=0, **settings))
        assert server.web_address is not None
        return server

    return start


def ws_url(server: Any, scheme: str = "ws") -> str:
    host, port = server.web_address
    return f"{scheme}://{host}:{port}/ws"


def get(server: Any, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(*server.web_address, timeout=TIMEOUT)
    connection.request("GET", path, headers=headers or {})
    return connection.getresponse()


def test_the_page_is_served_with_strict_headers_and_cached_by_etag(web_server):
    server = web_server()
    page = get(server, "/")
    body = page.read()
    assert page.status == 200 and b"<title>chat</title>" in body
    policy = page.getheader("Content-Security-Policy") or ""
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "default-src 'none'" in policy
    assert page.getheader("X-Content-Type-Options") == "nosniff"
    assert page.getheader("Referrer-Policy") == "no-referrer"
    etag = page.getheader("ETag")
    assert etag
    again = get(server, "/", {"If-None-Match": etag})
    assert again.status == 304 and again.read() == b""
    script = get(server, "/app.js")
    assert script.status == 200 and script.getheader("Content-Type", "").startswith("text/javascript")
    assert get(server, "/nothing-here").status == 404


def test_a_browser_page_and_a_json_client_chat(web_server, connect):
    server = web_server()
    alice = WebClient(ws_url(server), origin=f"http://{server.web_address[0]}:{server.web_address[1]}")
    alice.send({"type": "join", "name": "alice"})
    assert alice.expect("welcome")["name"] == "alice"
    bob = connect(server)
    bob.join("bob")
    alice.expect("joined", name="bob")
    alice.send({"type": "message", "msg": "hello from the web é☃"})
    assert bob.expect(ChatMessage).msg == "hello from the web é☃"
    bob.say("hello back")
    assert alice.expect("message", name="bob")["msg"] == "hello back"
    alice.close()
    assert bob.expect(Left).name == "alice"


def test_a_websocket_from_a_foreign_origin_gets_403(web_server):
    server = web_server()
    with pytest.raises(InvalidStatus) as refused:
        WebClient(ws_url(server), origin="http://evil.example")
    assert refused.value.response.status_code == 403


def test_an_origin_allowed_by_web_origin_gets_its_websocket(web_server):
    server = web_server(web_origin=("https://chat.example.org",))
    alice = WebClient(ws_url(server), origin="https://chat.example.org")
    alice.send({"type": "join", "name": "alice"})
    alice.expect("welcome")
    alice.close()


def test_a_binary_frame_closes_with_1003(web_server):
    server = web_server()
    alice = WebClient(ws_url(server))
    alice.ws.send(b'{"type":"join","name":"alice"}\n')
    with pytest.raises(ConnectionClosed) as closed:
        alice.ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.UNSUPPORTED_DATA


def test_a_line_too_long_gets_its_error_then_the_close(web_server):
    server = web_server(max_line=1024)  # frames may be larger: several lines each
    alice = WebClient(ws_url(server))
    alice.send({"type": "join", "name": "alice"})
    alice.expect("welcome")
    alice.ws.send('{"type":"message","msg":"' + "x" * 1100 + '"}')
    seen = []
    with pytest.raises(ConnectionClosed):
        while True:
            seen.append(alice.next())
    assert [m.get("code") for m in seen if m["type"] == "error"] == ["line_too_long"]


def test_a_socket_that_never_finishes_its_http_request_is_closed(web_server):
    server = web_server(tls_handshake_timeout=scaled(0.5))
    silent = socket.create_connection(server.web_address, timeout=TIMEOUT)
    silent.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    assert silent.recv(1024) == b""  # closed by the server's deadline, not by this test's timeout
    page = get(server, "/")  # nobody else waited for it
    assert page.status == 200
    silent.close()


def test_a_web_reader_that_stops_reading_is_cut_by_its_backlog(web_server, connect):
    server = web_server(max_backlog=64 * 1024, flood_rate=0)
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.settimeout(TIMEOUT)
    stuck.connect(server.web_address)
    handshake = ClientProtocol(parse_uri(ws_url(server)))
    handshake.send_request(handshake.connect())
    join = Frame(Opcode.TEXT, b'{"type":"join","name":"stuck"}\n').serialize(mask=True, extensions=[])
    stuck.sendall(b"".join(handshake.data_to_send()) + join)  # and never reads again
    alice = connect(server)
    alice.join("alice")
    text = "y" * 1000
    for i in range(100_000):
        alice.say(f"{i} {text}")
        message = alice.expect(ChatMessage | Left)  # type: ignore[arg-type]
        if isinstance(message, Left):
            break
    else:
        raise AssertionError("the stuck page was never dropped")
    assert (message.name, message.reason) == ("stuck", "slow_consumer")
    stuck.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_the_web_port_speaks_https_and_wss_only_with_tls(web_server, ca, tmp_path, connect):
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    server = web_server(tls_cert=str(chain), tls_key=str(key))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    host, port = server.web_address
    page = http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=context)
    page.request("GET", "/")
    answer = page.getresponse()
    assert answer.status == 200 and answer.getheader("Content-Security-Policy")
    alice = WebClient(ws_url(server, "wss"), ssl=context, origin=f"https://{host}:{port}")
    alice.send({"type": "join", "name": "alice"})
    alice.expect("welcome")
    bob = LineClient(server.address, tls=context)
    bob.join("bob")
    alice.expect("joined", name="bob")
    bob.say("over wss")
    assert alice.expect("message", name="bob")["msg"] == "over wss"
    plain = get(server, "/")  # plain http to the https port: told so in plain http
    assert plain.status == 400 and b"TLS" in plain.read()
    bob.close()
    alice.close()


def test_the_per_address_limit_holds_on_the_web_port_and_says_so_in_http(web_server):
    server = web_server(max_per_address=1, limit_exempt="")
    alice = WebClient(ws_url(server))
    alice.send({"type": "join", "name": "alice"})
    alice.expect("welcome")
    refused = socket.create_connection(server.web_address, timeout=TIMEOUT)
    answer = refused.recv(4096)  # sent at once, before any request: it is refused on accepting
    assert answer.startswith(b"HTTP/1.1 429 ") and b"too_many_connections" in answer
    refused.close()
    alice.send({"type": "message", "msg": "still here"})
    assert alice.expect("message")["msg"] == "still here"


def test_the_log_says_where_the_web_client_is(chat_server_process):
    process = chat_server_process("--web-port", "0")
    line = process.wait_for_log(r"web listening on 127\.0\.0\.1:\d+")
    port = int(line.rsplit(":", 1)[1])
    page = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    page.request("GET", "/")
    assert page.getresponse().status == 200


def test_the_pages_files_come_over_one_kept_alive_connection(web_server):
    server = web_server()
    connection = http.client.HTTPConnection(*server.web_address, timeout=TIMEOUT)
    for path in ("/", "/app.css", "/app.js", "/favicon.svg"):
        connection.request("GET", path)
        answer = connection.getresponse()
        assert answer.status == 200 and answer.read()
        assert answer.getheader("Connection") == "keep-alive"
        if path == "/":
            first = connection.sock
        assert connection.sock is first, "the same connection answered every file"
    connection.request("GET", "/app.js", headers={"Connection": "close"})
    answer = connection.getresponse()
    assert answer.status == 200 and answer.getheader("Connection") == "close"
    answer.read()


def test_a_reply_bigger_than_one_frame_comes_in_frames_of_whole_lines(web_server, connect):
    server = web_server(flood_rate=0)
    carol = connect(server)
    carol.join("carol")
    last = carol.say_all(f"{i} " + "z" * 2000 for i in range(400))  # 800 KB: several frames' worth
    alice = WebClient(ws_url(server))
    alice.send({"type": "join", "name": "alice"})
    alice.expect("welcome")
    alice.send({"type": "history", "room": "lobby", "before": last.id + 1, "limit": 400})
    header = alice.expect("history")
    assert header["count"] == 400
    texts = [alice.expect("message")["msg"].split(" ")[0] for _ in range(400)]  # WebClient checks each frame's end
    assert texts == [str(i) for i in range(400)]
    assert alice.frames >= 3, "the page was split into frames"


def test_stopping_ends_a_web_connection_that_waits_for_its_request(web_server):
    server = web_server(tls_handshake_timeout=scaled(120))  # far longer than stop() waits
    silent = socket.create_connection(server.web_address, timeout=TIMEOUT)
    silent.sendall(b"GET / HTTP/1.1\r\n")
    alice = WebClient(ws_url(server))  # served after the silent one was accepted
    alice.send({"type": "join", "name": "alice"})
    alice.expect("welcome")
    server.stop(TIMEOUT)
    assert silent.recv(1024) == b""
    assert not [thread for thread in server._handlers if thread.is_alive()]
    silent.close()


def test_a_page_that_sends_too_fast_is_paced_like_any_client(web_server):
    server = web_server(flood_burst=5, flood_rate=50)
    alice = WebClient(ws_url(server))
    alice.send({"type": "join", "name": "alice"})
    alice.expect("welcome")
    alice.ws.send("".join(json.dumps({"type": "message", "msg": f"n{i}"}) + "\n" for i in range(20)))  # one frame
    notice = alice.expect("notice", code="rate_limited")
    assert notice["delay_ms"] > 0
    assert [alice.expect("message")["msg"] for _ in range(20)] == [f"n{i}" for i in range(20)]  # late, not lost
