"""Lines: a server message made once, with its bytes in each dialect made once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chat.errors import Refused
from chat.server.lines import JSON_LINES, Line, render
from chat.wire.codec import encode
from chat.wire.protocol import ChatMessage, ErrorReply, Joined, format_millis

WHEN = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_a_line_of_a_message_is_its_json_encoding_and_keeps_the_model():
    message = Joined(room="dev", name="alice", time=WHEN)
    line = Line.of(message)
    assert line.json == encode(message)
    assert line.message is message
    assert line.encoded(JSON_LINES) is line.json


def test_a_line_read_back_from_history_decodes_its_message_when_asked():
    stored = encode(ChatMessage(room="dev", id=7, name="bob", msg="hi", time=WHEN))
    line = Line(stored)
    assert line.message == ChatMessage(room="dev", id=7, name="bob", msg="hi", time=WHEN)
    assert line.id == 7


def test_a_said_line_is_the_models_encoding_and_its_id_comes_last():
    line = Line.said("message", "dev", "bob", "hi", format_millis(int(WHEN.timestamp() * 1000)), 12)
    assert line.json == encode(ChatMessage(room="dev", id=12, name="bob", msg="hi", time=WHEN))
    assert line.id == 12


def test_a_line_without_an_id_says_so():
    with pytest.raises(ValueError, match="joined"):
        _ = Line.of(Joined(room="dev", name="alice", time=WHEN)).id


def test_a_refusal_is_an_error_line():
    line = Line.refusal(Refused("name_taken", "the name bob is taken"))
    assert line.message == ErrorReply(code="name_taken", detail="the name bob is taken")


def test_render_joins_lines_in_a_dialect():
    class Shout:
        name = "shout"

        def encode(self, line: Line) -> bytes:
            return line.json.upper()

    lines = [Line(b"a\n"), Line(b"b\n")]
    assert render(lines, JSON_LINES) == b"a\nb\n"
    assert render(lines, Shout()) == b"A\nB\n"
