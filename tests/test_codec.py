"""The codec turns any bytes into a model or a ProtocolError with the right code."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from chat.errors import ProtocolError
from chat.wire.codec import decode_client, decode_server, encode
from chat.wire.protocol import ChatMessage, ClassicMessage, Join, SendMessage, SendPrivate


def error_code(line: bytes) -> str:
    with pytest.raises(ProtocolError) as caught:
        decode_client(line)
    return caught.value.code


def test_join_line_decodes_to_join():
    assert decode_client(b'{"type": "join", "name": "alice"}\n') == Join(name="alice")


def test_crlf_ending_is_accepted():
    assert decode_client(b'{"type": "message", "msg": "hi"}\r\n') == SendMessage(msg="hi")


def test_classic_line_without_type_is_a_chat_message():
    line = b'{"name": "alice", "msg": "hi", "time": "2024-2-24"}\n'
    assert decode_client(line) == ClassicMessage(name="alice", msg="hi")


def test_name_and_time_in_a_message_line_are_ignored():
    line = b'{"type": "message", "name": "mallory", "time": "1999-01-01", "msg": "hi"}\n'
    assert decode_client(line) == SendMessage(msg="hi")


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b'{"type": "message", "msg": "caf\xc3"}\n', "invalid_utf8"),
        (b"\xff\xfe\n", "invalid_utf8"),
        (b"{not json\n", "invalid_json"),
        (b'["type", "message"]\n', "not_an_object"),
        (b'"hello"\n', "not_an_object"),
        (b'{"type": "message", "msg": 5}\n', "invalid_field"),
        (b'{"type": "message"}\n', "invalid_field"),
        (b'{"type": "private", "msg": "hi"}\n', "invalid_field"),
        (b'{"type": "dance"}\n', "unknown_type"),
        (b'{"type": 7}\n', "unknown_type"),
        (b'{"type": "welcome", "name": "x", "users": [], "history": 0}\n', "unknown_type"),
        (b'{"type": "message", "msg": ""}\n', "empty_message"),
        (b'{"type": "message", "msg": " \\t\\n "}\n', "empty_message"),
        (json.dumps({"type": "message", "msg": "x" * 8001}).encode() + b"\n", "message_too_long"),
        (b'{"type": "join", "name": ""}\n', "name_empty"),
        (b'{"type": "join", "name": "   "}\n', "name_empty"),
        (json.dumps({"type": "join", "name": "a" * 33}).encode() + b"\n", "name_too_long"),
        (b'{"type": "join", "name": "evil\\u001b[2J"}\n', "name_invalid"),
        (b'{"type": "join", "name": "two words"}\n', "name_invalid"),
        (b'{"type": "join", "name": "rtl\\u202eevil"}\n', "name_invalid"),
        (b'{"type": "nick", "name": "bell\\u0007"}\n', "name_invalid"),
    ],
)
def test_bad_line_gets_its_own_error_code(line: bytes, code: str):
    assert error_code(line) == code


def test_error_detail_names_the_bad_field():
    with pytest.raises(ProtocolError) as caught:
        decode_client(b'{"type": "private", "to": 3, "msg": "hi"}\n')
    assert "'to'" in caught.value.detail


def test_a_32_character_unicode_name_is_fine():
    assert decode_client(json.dumps({"type": "join", "name": "é" * 32}).encode()) == Join(name="é" * 32)


def test_multiline_message_is_one_message():
    assert decode_client(b'{"type": "message", "msg": "one\\ntwo"}') == SendMessage(msg="one\ntwo")


def test_private_message_decodes():
    line = b'{"type": "private", "to": "bob", "msg": "psst"}\n'
    assert decode_client(line) == SendPrivate(to="bob", msg="psst")


def test_server_message_round_trips_with_utc_millisecond_time():
    when = datetime(2026, 11, 20, 12, 0, 0, 123456, tzinfo=UTC)
    line = encode(ChatMessage(id=17, name="alice", msg="hello", time=when))
    assert line == (
        b'{"type":"message","room":"lobby","id":17,"name":"alice","msg":"hello","time":"2026-11-20T12:00:00.123Z"}\n'
    )
    assert decode_server(line) == ChatMessage(id=17, name="alice", msg="hello", time=when.replace(microsecond=123000))


def test_encoded_control_characters_are_json_escapes_not_raw_bytes():
    when = datetime(2026, 11, 20, tzinfo=UTC)
    line = encode(ChatMessage(id=1, name="a", msg="\x1b[2J", time=when))
    assert b"\x1b" not in line and b"\\u001b[2J" in line
