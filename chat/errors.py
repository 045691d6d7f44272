"""The few errors of the chat package, named for what happened.

Each has one owner that raises it: the codec raises ProtocolError when a peer
sends something that is not the protocol, the connection layers raise
ConnectionClosed when the peer goes away, and the client raises JoinRefused.
"""

from __future__ import annotations


class ChatError(Exception):
    """Base of every error this package raises on purpose."""


class ProtocolError(ChatError):
    """A peer sent a line that is not valid protocol.

    `code` is one of protocol.ErrorCode and `detail` a short sentence, both
    safe to send back to the peer in an ErrorReply.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class ConnectionClosed(ChatError):
    """The peer closed the connection, or it broke."""


class JoinRefused(ChatError):
    """The server answered a join with an error (the name is taken, say)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
