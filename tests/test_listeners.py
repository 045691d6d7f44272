"""The listeners a server opens, read from its options in one place."""

from __future__ import annotations

import pytest

from chat.server.config import ServerConfig
from chat.server.dialects.jsonlines import JsonLinesConnection
from chat.server.tcp import Listener, listeners

TLS = {"tls_cert": "chain.pem", "tls_key": "key.pem"}


def test_a_plain_server_listens_once_in_json_lines():
    assert listeners(ServerConfig(host="::", port=7000)) == [
        Listener("main", ("::", 7000), tls=False, dialect=JsonLinesConnection)
    ]


def test_a_tls_server_listens_once_in_tls():
    [main] = listeners(ServerConfig(port=7000, **TLS))
    assert main.tls and main.address == ("127.0.0.1", 7000)


@pytest.mark.parametrize(
    ("host", "allow_plaintext", "plain_host"),
    [
        ("0.0.0.0", False, "127.0.0.1"),
        ("::", False, "::1"),
        ("0.0.0.0", True, "0.0.0.0"),
    ],
)
def test_a_plain_port_beside_tls_is_loopback_unless_allowed(host, allow_plaintext, plain_host):
    main, plain = listeners(ServerConfig(host=host, plain_port=7001, allow_plaintext=allow_plaintext, **TLS))
    assert main.tls and main.name == "main"
    assert plain == Listener("plain", (plain_host, 7001), tls=False, dialect=JsonLinesConnection)


def test_a_plain_port_without_tls_is_refused():
    with pytest.raises(OSError, match="plain-port"):
        listeners(ServerConfig(plain_port=7001))
