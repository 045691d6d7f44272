"""Bytes to protocol models and back.

Pure: no sockets, threads or logging. The only place that knows about JSON
and pydantic errors; everything else sees models or a ProtocolError whose
code and detail can be sent straight back to the peer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar, get_args

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
#: Deepest nesting of arrays and objects a line may have; the protocol itself needs 1.
MAX_DEPTH = 16
#: Longest integer literal accepted anywhere in a line: 2^53 has 16 digits.
MAX_DIGITS = 16
# A string (skipped whole) or a bracket: enough to measure nesting outside strings.
_NESTING = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
# A \u escape of a UTF-16 surrogate: only these can smuggle a lone surrogate in.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

T = TypeVar("T")


class _Refused(ValueError):
    """A JSON text that parses but that the protocol does not take."""


def encode(message: BaseModel) -> bytes:
    """One wire line: compact JSON, UTF-8, ending in a newline; null fields are left out."""
    return message.model_dump_json(exclude_none=True).encode() + b"\n"


# The C encoder of one JSON string as the models write it: non-ASCII kept, controls escaped.
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def encode_said(kind: Literal["message", "action"], room: str, id: int, name: str, msg: str, time: str) -> bytes:
    """encode(ChatMessage(...)) or encode(Action(...)), without building the model.

    Every line said in a room costs one of these, so it is formatted straight
    from its parts; `time` is already in wire form (protocol.format_millis).
    Tests hold it byte for byte equal to the model's own encoding.
    """
    return (
        f'{{"type":"{kind}","room":{_json_string(room)},"id":{id},"name":{_json_string(name)},'
        f'"msg":{_json_string(msg)},"time":"{time}"}}\n'
    ).encode()


def with_cid(line: bytes, cid: str) -> bytes:
    """A numbered line's JSON encoding (`{...}` and a newline) as its sender's echo: with `cid`."""
    return line[:-2] + b',"cid":' + _json_string(cid).encode() + b"}\n"


def error_reply(failure: RequestFailed) -> ErrorReply:
    """The error that tells a peer why its request was not done.

    Never fails: whatever of the peer's own text the detail quotes is made
    encodable first (a lone surrogate becomes U+FFFD).
    """
    room = None if failure.room is None else _encodable(failure.room)
    return ErrorReply(code=failure.code, detail=_encodable(failure.detail), room=room)


def encode_error(failure: RequestFailed) -> bytes:
    """The error line that tells a peer why its request was not done (see error_reply)."""
    return encode(error_reply(failure))


def _encodable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def strip_line_ending(line: bytes) -> bytes:
    """The line without its `\\n` or `\\r\\n` ending."""
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


#: A read up to this size, with nothing left over from the last, is cut into lines in one call.
_SPLIT_AT_ONCE = 1024 * 1024


class LineFramer:
    """Cuts a byte stream into lines, none longer than `max_line` bytes with its newline.

    Feed it whatever arrived; it returns the complete lines (without their
    newline) and keeps the unfinished rest, refusing it with `line_too_long` as
    soon as it is too long to ever fit. Linear in the bytes fed, however they
    are split.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._scanned = 0  # no newline before this offset of the buffer

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        if not buffer and len(data) <= _SPLIT_AT_ONCE:
            # The common case, at C speed: a read that starts at a line's start, cut in one call.
            whole = data.split(b"\n")
            rest = whole.pop()
            self._check(max(map(len, whole)) + 1 if whole else 0)
            buffer += rest
            self._scanned = len(rest)
            self._check(len(rest) + 1 if rest else 0)
            return whole
        buffer += data
        lines: list[bytes] = []
        start = 0
        while (end := buffer.find(b"\n", max(start, self._scanned))) >= 0:
            self._check(end + 1 - start)
            lines.append(bytes(buffer[start:end]))
            start = end + 1
        del buffer[:start]
        self._scanned = len(buffer)
        self._check(len(buffer) + 1 if buffer else 0)
        return lines

    @property
    def unfinished(self) -> int:
        """Bytes received after the last newline."""
        return len(self._buffer)

    def _check(self, length: int) -> None:
        if length > self.max_line:
            raise ProtocolError("line_too_long", f"a line is at most {self.max_line} bytes; closing")


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
    """Strict JSON: no NaN or Infinity, no duplicate keys, no lone surrogates,
    no integer past MAX_DIGITS digits, no nesting past MAX_DEPTH."""
    line = strip_line_ending(line)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("invalid_utf8", f"the line is not valid UTF-8 (byte {exc.start})") from exc
    try:
        _check_depth(line)
        value = _STRICT_JSON.decode(text)
        if _SURROGATE_ESCAPE.search(line):
            _check_surrogates(value)
    except json.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"the line is not valid JSON ({exc.msg} at column {exc.colno})") from exc
    except _Refused as exc:
        raise ProtocolError("invalid_json", f"the line is not JSON this server takes: {exc}") from exc
    if not isinstance(value, dict):
        raise ProtocolError("not_an_object", f"a line must be a JSON object, not {type(value).__name__}")
    return value


def _check_depth(line: bytes) -> None:
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return  # the common case, found at C speed
    depth = 0
    for token in _NESTING.finditer(line):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} deep")
        elif bracket in (b"]", b"}"):
            depth -= 1


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise _Refused("a key appears twice in one object")
    return value


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise _Refused(f"an integer of more than {MAX_DIGITS} digits")
    return int(digits)


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise _Refused(f"{text[:20]} is too large a number")
    return number


#: One decoder for every line (json.loads with hooks would build a new one each call).
_STRICT_JSON = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite_float
)


def _check_surrogates(value: Any) -> None:
    """Refuse a string (or key) holding half of a UTF-16 surrogate pair: it is no character."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _Refused("a string holds a lone UTF-16 surrogate") from exc
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_surrogates(key)
            _check_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _check_surrogates(item)


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
