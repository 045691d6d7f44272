"""The hot path's shortcuts give exactly what the general code gives: line encoding, timestamps, text rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from chat.wire.codec import encode, encode_said
from chat.wire.protocol import Action, ChatMessage, Stamper, format_millis, format_time
from chat.wire.text import has_invisible, is_visible

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Any text a model can hold: every code point but the lone surrogates.
texts = st.text(st.characters(blacklist_categories=("Cs",)))
millis = st.integers(min_value=0, max_value=253402300799999)  # up to the end of year 9999


@given(kind=st.sampled_from(["message", "action"]), room=texts, id=st.integers(1, 2**53), name=texts, msg=texts,
       at=millis)
def test_a_said_line_is_the_models_own_encoding(kind, room, id, name, msg, at):
    model = {"message": ChatMessage, "action": Action}[kind]
    time = EPOCH + timedelta(milliseconds=at)
    expected = encode(model(room=room, id=id, name=name, msg=msg, time=time))
    assert encode_said(kind, room, id, name, msg, format_millis(at)) == expected


@given(at=millis)
def test_timestamps_are_formatted_as_the_models_format_them(at):
    assert format_millis(at) == format_time(EPOCH + timedelta(milliseconds=at))


def test_the_stamper_gives_the_current_millisecond():
    before = datetime.now(UTC)
    stamp = Stamper().now()
    after = datetime.now(UTC)
    assert before - timedelta(milliseconds=1) < datetime.fromisoformat(stamp) <= after


ascii_text = st.text(st.characters(max_codepoint=127))


@given(ascii_text)
def test_ascii_text_is_visible_when_a_character_draws(text):
    assert is_visible(text) == any(char.isprintable() and not char.isspace() for char in text)


@given(ascii_text)
def test_ascii_text_hides_something_when_it_has_a_space_or_a_control(text):
    assert has_invisible(text) == any(char.isspace() or not char.isprintable() for char in text)


def test_non_ascii_text_still_follows_the_unicode_rules():
    assert not is_visible("\u200b\u3164 \u2800")
    assert is_visible("\u200bé")
    assert has_invisible("bob\u200d")
    assert not has_invisible("zoë")
