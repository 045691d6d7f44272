"""The errors of the chat package, named for what happened and whose fault it is.

A request that fails is answered with an error line: ProtocolError when the
peer sent something that is not the protocol, Refused when a valid request is
declined (a taken name, a room it is not in), StorageFailed when the server
itself could not keep or read history. ConnectionClosed means the peer left;
JoinRefused is the client's view of a refused join.
"""

from __future__ import annotations


class ChatError(Exception):
    """Base of every error this package raises on purpose."""


class RequestFailed(ChatError):
    """A request the server answers with an error line instead of doing it.

    `code` is one of protocol.ErrorCode, `detail` a short sentence and `room`
    the room the request was about (if any): all safe to send to the peer.
    """

    def __init__(self, code: str, detail: str, room: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.room = room


class ProtocolError(RequestFailed):
    """The peer's fault: the line is not valid protocol."""


class Refused(RequestFailed):
    """The peer's request is valid but not allowed now (the name is taken, say)."""


class StorageFailed(RequestFailed):
    """The server's fault: it could not store or read history, so nothing happened."""


class ConnectionClosed(ChatError):
    """The peer closed the connection, or it broke."""


class JoinRefused(ChatError):
    """The server answered a join with an error (the name is taken, say)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
