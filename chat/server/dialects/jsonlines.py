"""The server's own dialect: one JSON object a line, as protocol.md says.

Pure: bytes in (framed by codec.LineFramer, decoded by codec.decode_client),
requests, answers and a close decision out, through base.Connection. Blank
lines are ignored, a line that is not protocol is answered with an error in its
turn, an over-long line closes the connection, and so does a TLS handshake on a
plain connection.
"""

from __future__ import annotations

import logging

from chat.errors import ProtocolError, Refused
from chat.server.config import ServerConfig
from chat.server.dialects.base import Close, Connection
from chat.wire.codec import LineFramer, decode_client, error_reply
from chat.wire.protocol import ClassicMessage, ClientMessage

# A TLS record of type handshake, version 3.x: what a ClientHello starts with.
_TLS_HANDSHAKE = b"\x16\x03"


class JsonLinesConnection(Connection):
    """One client speaking JSON lines, under `config`'s line and flood limits.

    `tls`: the bytes arrive through TLS, already decrypted. Without it, a
    stream that starts like a TLS handshake is a client at the wrong port, and
    is told so in plain lines.
    """

    def __init__(self, config: ServerConfig, *, tls: bool = False) -> None:
        super().__init__(config.flood_rate, config.flood_burst, config.flood_max_delay)
        self.max_line = config.max_line
        self._framer = LineFramer(config.max_line)
        self._head = b""  # the stream's first bytes, while they may still start a TLS handshake
        self._sniffing = not tls

    def receive_data(self, data: bytes, now: float) -> None:
        if self.closing is not None or self.ended or not data:
            return
        if self._sniffing and self._looks_like_tls(data):
            plain = Refused("plaintext_only", "this port speaks plain JSON lines, not TLS; closing")
            self._close(Close(error_reply(plain), None, "a TLS handshake on the plaintext port", logging.INFO))
            return
        try:
            lines = self._framer.feed(data)
        except ProtocolError as exc:
            self._close(Close(error_reply(exc), None, f"line over {self.max_line} bytes"))
            return
        for line in lines:
            if not line.strip():
                continue  # blank lines (an extra Enter in nc) are not an error
            if not self._admit(_decode(line), len(line), now):
                return  # cut off: what came after is not read

    @property
    def unfinished(self) -> int:
        return self._framer.unfinished

    def _looks_like_tls(self, data: bytes) -> bool:
        """Whether the stream so far starts with a TLS handshake record (however it was split)."""
        head = self._head + data[: len(_TLS_HANDSHAKE) - len(self._head)]
        if not _TLS_HANDSHAKE.startswith(head):
            self._sniffing = False
            return False
        if len(head) < len(_TLS_HANDSHAKE):
            self._head = head
            return False
        return True


def _decode(line: bytes) -> ClientMessage | ClassicMessage | ProtocolError:
    """The request one line asks for, or why it is none."""
    try:
        return decode_client(line)
    except ProtocolError as exc:
        return exc
