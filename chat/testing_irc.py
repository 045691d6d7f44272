"""What tests of the IRC front door share: a raw IRC client over a real socket.

It sends lines and waits for the one that matches, every read under the tests' one timeout."""

from __future__ import annotations

import base64
import socket
import ssl

from chat.testing import TIMEOUT


class IrcClient:
    """One IRC connection, with a timeout on every read; `seen` keeps every line read."""

    def __init__(self, address: tuple[str, int], timeout: float = TIMEOUT, tls: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(address, timeout=timeout)
        self.sock = tls.wrap_socket(sock, server_hostname=address[0]) if tls is not None else sock
        self._buffer = bytearray()
        self.seen: list[str] = []

    def send(self, *lines: str) -> None:
        self.sock.sendall(b"".join(line.encode() + b"\r\n" for line in lines))

    def read(self) -> str:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end]).decode()
                del self._buffer[: end + 2]
                self.seen.append(line)
                return line
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unread {bytes(self._buffer)!r}")
            self._buffer += chunk

    def expect(self, *words: str) -> str:
        """The next line holding every one of `words` (lines before it are skipped, kept in `seen`)."""
        while True:
            line = self.read()
            if all(word in line for word in words):
                return line

    def until(self, *words: str) -> list[str]:
        """Every line up to and including the one holding every one of `words`."""
        lines = []
        while True:
            line = self.read()
            lines.append(line)
            if all(word in line for word in words):
                return lines

    def register(self, nick: str, caps: str = "", password: str | None = None) -> list[str]:
        """Register as `nick` (with `caps`, and SASL PLAIN with `password`); the lines up to the MOTD's end."""
        if caps or password:
            self.send("CAP LS 302")
        self.send(f"NICK {nick}", f"USER {nick} 0 * :{nick}")
        if caps or password:
            wanted = caps + (" sasl" if password else "")
            self.send(f"CAP REQ :{wanted.strip()}")
            self.expect("CAP", "ACK")
            if password:
                self.send("AUTHENTICATE PLAIN")
                self.expect("AUTHENTICATE +")
                token = base64.b64encode(f"{nick}\0{nick}\0{password}".encode()).decode()
                self.send(f"AUTHENTICATE {token}")
                self.expect(" 903 ")
            self.send("CAP END")
        return self.until(" 376 ")

    def close(self) -> None:
        self.sock.close()
