"""Hostile bytes: the codec answers every line with a model or a ProtocolError, and encodes anything it accepted."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.errors import ProtocolError
from chat.wire.codec import LineFramer, decode_client, encode, encode_error
from chat.wire.protocol import (
    CLIENT_TYPES,
    DEFAULT_MAX_LINE,
    MAX_MSG,
    ChatMessage,
    SendMessage,
    utc_now,
)
from chat.wire.text import is_visible, name_key, name_keys, one_line


def error_code(line: bytes) -> str:
    with pytest.raises(ProtocolError) as caught:
        decode_client(line)
    return caught.value.code


@pytest.mark.parametrize(
    "line",
    [
        b'{"type": "message", "msg": "hi", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"type": "message", "msg": "hi", "x": ' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}",
    ],
)
def test_deep_nesting_is_refused(line):
    assert error_code(line) == "invalid_json"


@pytest.mark.parametrize("where", ["extra", "limit", "since"])
def test_a_huge_integer_anywhere_is_refused(where):
    digits = "9" * 5000
    line = {"extra": f'{{"type": "history", "limit": 5, "x": {digits}}}',
            "limit": f'{{"type": "history", "limit": {digits}}}',
            "since": f'{{"type": "join", "name": "a", "since": {digits}}}'}[where]
    assert error_code(line.encode()) in ("invalid_json", "invalid_field")


@pytest.mark.parametrize("value", ["2e308", "NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(value):
    assert error_code(f'{{"type": "ping", "x": {value}}}'.encode()) == "invalid_json"


def test_ids_past_two_to_the_53_are_refused():
    assert error_code(b'{"type": "history", "before": 9007199254740993}') == "invalid_field"
    too_big = b'{"type": "join", "name": "a", "since": 18446744073709551616}'
    assert error_code(too_big) in ("invalid_json", "invalid_field")


@pytest.mark.parametrize("value", ['"50"', "true", "50.0"])
def test_numbers_must_be_numbers(value):
    assert error_code(f'{{"type": "history", "limit": {value}}}'.encode()) == "invalid_field"


def test_duplicate_keys_are_refused():
    assert error_code(b'{"type": "ping", "type": "message", "msg": "x"}') == "invalid_json"


@pytest.mark.parametrize(
    "line",
    [
        b'{"type": "message", "msg": "a\\ud800"}',
        b'{"type": "action", "msg": "\\udc00"}',
        b'{"type": "private", "to": "bob", "msg": "\\ud800"}',
        b'{"type": "private", "to": "\\ud800", "msg": "hi"}',
        b'{"type": "message", "msg": "hi", "\\ud800": 1}',
    ],
)
def test_lone_surrogates_are_refused(line):
    assert error_code(line) == "invalid_json"


def test_a_surrogate_pair_is_one_character():
    assert decode_client(b'{"type": "message", "msg": "\\ud83d\\ude00"}') == SendMessage(msg="\U0001f600")


def test_the_longest_message_fits_a_line_however_it_is_escaped():
    line = json.dumps({"type": "message", "room": "r" * 32, "msg": "\U0001f600" * MAX_MSG}).encode() + b"\n"
    assert len(line) <= DEFAULT_MAX_LINE
    assert decode_client(line) == SendMessage(room="r" * 32, msg="\U0001f600" * MAX_MSG)


@pytest.mark.parametrize("text", ["\u200b", "\u2800\u2800", "\u3164", " \u034f \ufe0f", "\u202e\u200d"])
def test_a_message_with_nothing_visible_is_refused(text):
    assert error_code(json.dumps({"type": "message", "msg": text}).encode()) == "empty_message"


def test_visible_text_with_invisible_parts_is_kept():
    assert is_visible("hi\u200d")
    assert decode_client(json.dumps({"type": "message", "msg": "👍🏽"}).encode()).msg == "👍🏽"


@pytest.mark.parametrize(
    "name",
    ["alice\u034f", "ali\ufe0fce", "\u3164", "\u2800", "\u115f\u1160", "al\u200bice", "\u202ealice"],
)
def test_names_with_invisible_or_blank_characters_are_refused(name):
    assert error_code(json.dumps({"type": "join", "name": name}).encode()) == "name_invalid"


@pytest.mark.parametrize("look_alike", ["ALICE", "\u0430lice", "\uff41\uff4c\uff49\uff43\uff45", "aIice", "a1ice"])
def test_look_alike_names_clash(look_alike):
    assert name_keys(look_alike) & name_keys("alice")


def test_canonically_equivalent_names_share_a_key():
    assert name_key("jos\u00e9") == name_key("jose\u0301")
    assert name_key("Lobby") == name_key("l\u043ebby")


def test_different_names_do_not_clash():
    assert not name_keys("alice") & name_keys("alicia")
    assert not name_keys("bob") & name_keys("rob")


def test_encode_error_survives_anything_a_client_sent():
    line = encode_error(ProtocolError("no_such_user", "nobody called \ud800\x1b[2J is connected", "r\udc00"))
    assert json.loads(line)["code"] == "no_such_user"


def test_encode_never_fails_on_a_message():
    message = ChatMessage(id=1, name="a", msg="\x00" * MAX_MSG, time=utc_now())
    assert encode(message).endswith(b"\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_decode_to_a_model_or_a_protocol_error(data):
    try:
        decode_client(data)
    except ProtocolError as exc:
        encode_error(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([*sorted(CLIENT_TYPES), None]),
    st.dictionaries(
        st.sampled_from(["name", "room", "msg", "to", "since", "before", "limit", "topic", "private_since", "x"]),
        json_values,
        max_size=5,
    ),
)
def test_any_json_object_decodes_to_a_model_or_a_protocol_error(kind, fields):
    if kind is not None:
        fields = {**fields, "type": kind}
    line = json.dumps(fields, allow_nan=True).encode()
    try:
        message = decode_client(line)
    except ProtocolError as exc:
        encode_error(exc)
    else:
        encode(message)


def test_the_framer_cuts_lines_however_the_bytes_arrive():
    framer = LineFramer(max_line=20)
    assert framer.feed(b'{"a"') == []
    assert framer.feed(b': 1}\n{"b": 2}\n{"c') == [b'{"a": 1}', b'{"b": 2}']
    assert framer.unfinished == 3
    assert framer.feed(b"\n") == [b'{"c']


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8), st.integers(1, 40))
def test_the_framer_gives_the_same_lines_however_a_stream_is_split(data, cuts, limit):
    """Whole or in pieces, a stream gives the lines it holds, or line_too_long as soon as one is too long."""
    expected: list[bytes] | str = []
    for line in data.split(b"\n")[:-1]:
        if len(line) + 1 > limit:
            expected = "line_too_long"
            break
        expected.append(line)
    if expected != "line_too_long" and len(data.rsplit(b"\n", 1)[-1]) + 1 > limit and not data.endswith(b"\n"):
        expected = "line_too_long"
    framer = LineFramer(max_line=limit)
    got: list[bytes] = []
    start = 0
    try:
        for cut in [*sorted(cut for cut in cuts if cut <= len(data)), len(data)]:
            got += framer.feed(data[start:cut])
            start = cut
    except ProtocolError as exc:
        assert exc.code == "line_too_long" and expected == "line_too_long"
    else:
        assert got == expected


def test_the_framer_refuses_a_line_too_long_before_it_ends():
    framer = LineFramer(max_line=20)
    framer.feed(b"x" * 19)
    with pytest.raises(ProtocolError) as caught:
        framer.feed(b"x")
    assert caught.value.code == "line_too_long"


def test_a_line_of_exactly_the_limit_passes():
    assert LineFramer(max_line=5).feed(b"abcd\n") == [b"abcd"]
    with pytest.raises(ProtocolError):
        LineFramer(max_line=5).feed(b"abcde\n")


def test_the_framer_is_linear_in_bytes_fed_one_at_a_time():
    framer = LineFramer(max_line=200_000)
    for _ in range(100_000):
        framer.feed(b"x")
    assert framer.feed(b"\n") == [b"x" * 100_000]


def test_parting_words_are_one_visible_line_of_at_most_the_limit():
    assert one_line("bye\r\n\tall  of\x00 you\x07", 390) == "bye all of you"
    assert one_line("see\u200b you\u202e", 390) == "see you"  # ignorables (a zero width space, a bidi override) go
    assert one_line(" \u200b\n", 390) == ""  # nothing visible left
    assert one_line("x" * 500, 390) == "x" * 390
    assert one_line("ok then" + " " * 400 + "xyz", 8) == "ok then"  # spaces as one, none left at the end


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600))
def test_parting_words_never_hold_a_line_break_a_control_or_more_than_the_limit(text):
    line = one_line(text, 390)
    assert len(line) <= 390
    assert line == "" or (is_visible(line) and line.isprintable() and line == line.strip())
