"""Bytes to protocol models and back.

Pure: no sockets, threads or logging. The only place that knows about JSON
and pydantic errors; everything else sees models or a ProtocolError whose
code and detail can be sent straight back to the peer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, TypeAdapter, ValidationError

from chat.errors import ProtocolError, RequestFailed
from chat.wire.protocol import (
    CLIENT_TYPES,
    ClassicMessage,
    ClientMessage,
    ErrorCode,
    ErrorReply,
    ServerMessage,
)

_client_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
_server_adapter: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)
_ERROR_CODES = frozenset(get_args(ErrorCode))

T = TypeVar("T")


def encode(message: BaseModel) -> bytes:
    """One wire line: compact JSON, UTF-8, ending in a newline; null fields are left out."""
    return message.model_dump_json(exclude_none=True).encode() + b"\n"


def encode_error(error: RequestFailed) -> bytes:
    """The error line that tells a peer why its request was not done."""
    return encode(ErrorReply(code=error.code, detail=error.detail, room=error.room))


def strip_line_ending(line: bytes) -> bytes:
    """The line without its `\\n` or `\\r\\n` ending."""
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def decode_client(line: bytes) -> ClientMessage | ClassicMessage:
    """Decode one line a client sent; raise ProtocolError if it is not protocol.

    A JSON object without `type` is the classic `{"name", "msg", "time"}` form.
    """
    value = _parse_object(line)
    kind = value.get("type")
    if "type" not in value:
        return _validate(ClassicMessage.model_validate, value)
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {_shorten(kind)}")
    return _validate(_client_adapter.validate_python, value)


def decode_server(line: bytes) -> ServerMessage:
    """Decode one line the server sent (used by clients)."""
    value = _parse_object(line)
    return _validate(_server_adapter.validate_python, value)


def _parse_object(line: bytes) -> dict[str, Any]:
    try:
        text = strip_line_ending(line).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("invalid_utf8", f"the line is not valid UTF-8 (byte {exc.start})") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"the line is not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(value, dict):
        raise ProtocolError("not_an_object", f"a line must be a JSON object, not {type(value).__name__}")
    return value


def _validate(validate: Callable[[dict[str, Any]], T], value: dict[str, Any]) -> T:
    try:
        return validate(value)
    except ValidationError as exc:
        raise ProtocolError(*_short_reason(exc)) from exc


def _short_reason(exc: ValidationError) -> tuple[str, str]:
    # Our own checks raise errors whose type is the wire's error code
    # (see protocol._check_name); anything else is a field of the wrong shape.
    error = exc.errors(include_url=False)[0]
    if error["type"] in _ERROR_CODES:
        return error["type"], error["msg"]
    where = ".".join(str(part) for part in error["loc"] if part not in CLIENT_TYPES)
    return "invalid_field", f"field {where!r}: {error['msg']}" if where else error["msg"]


def _shorten(value: object, limit: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
