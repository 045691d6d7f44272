"""The full-screen client's buffers: pure line keeping, wrapping and scrolling."""

from __future__ import annotations

from datetime import UTC, date, datetime

from hypothesis import given
from hypothesis import strategies as st
from prompt_toolkit.utils import get_cwidth

from chat.client.buffers import Buffer, Buffers, buffer_of, private_buffer, room_buffer, wrap
from chat.client.connection import ConnectionLost
from chat.client.render import INDENT, render
from chat.wire.protocol import ChatMessage, ErrorReply, Joined, PrivateMessage

WHEN = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)


def text(row) -> str:
    return "".join(part for _, part in row)


def said(message_id: int, msg: str, name: str = "bob") -> ChatMessage:
    return ChatMessage(room="dev", id=message_id, name=name, msg=msg, time=WHEN)


def test_a_long_message_wraps_at_spaces_with_its_rows_under_the_text():
    message = "the quick brown fox jumps over it"
    fragments = [("class:time", "09:30 "), ("bold", "bob"), ("", ": "), (INDENT, ""), ("", message)]
    rows = [text(row).rstrip() for row in wrap(fragments, 32)]
    assert rows == ["09:30 bob: the quick brown fox", "           jumps over it"]


def test_a_word_longer_than_the_row_is_cut_where_the_row_ends():
    rows = [text(row) for row in wrap([("", "ab: "), (INDENT, ""), ("", "x" * 50)], 24)]
    assert rows == ["ab: " + "x" * 20, "    " + "x" * 20, "    " + "x" * 10]


def test_a_screen_too_narrow_for_the_indent_wraps_from_the_first_column():
    rows = [text(row) for row in wrap([("", "0123456789: "), (INDENT, ""), ("", "y" * 30)], 25)]
    assert rows == ["0123456789: ", "y" * 25, "y" * 5]


@given(st.text(alphabet=st.sampled_from("ab 字\n"), max_size=200), st.integers(min_value=1, max_value=60))
def test_no_row_is_wider_than_the_screen_and_no_character_is_lost(message, width):
    fragments = [("class:time", "09:30 "), (INDENT, ""), ("", message)]
    rows = wrap(fragments, width)
    for row in rows:
        # a double-width character on a one-column screen is the only row allowed to overflow
        assert get_cwidth(text(row)) <= max(width, 2)
    assert "".join(text(row) for row in rows).replace(" ", "") == ("09:30 " + message).replace(" ", "").replace(
        "\n", ""
    )


def test_older_messages_fetched_later_go_in_above_the_newer_ones_in_id_order():
    buffer = Buffer(room_buffer("dev"), "dev")
    buffer.add([("", "welcome")])
    for message_id in (50, 51):
        buffer.add([("", f"m{message_id}")], message_id)
    buffer.add([("", "joined")])
    for message_id in (48, 49):
        buffer.add([("", f"m{message_id}")], message_id)
    assert [text(line.fragments) for line in buffer.lines] == ["welcome", "m48", "m49", "m50", "m51", "joined"]


def test_a_day_change_line_comes_before_the_first_line_of_a_new_day():
    buffer = Buffer(room_buffer("dev"), "dev")
    buffer.add([("", "one")], 1, date(2026, 11, 21))
    buffer.add([("", "two")], 2, date(2026, 11, 21))
    buffer.add([("", "three")], 3, date(2026, 11, 22))
    assert [text(line.fragments) for line in buffer.lines] == [
        "one",
        "two",
        "-- Sunday 22 November 2026 --",
        "three",
    ]


def test_the_view_fills_from_the_bottom_and_stays_put_while_scrolled_up():
    buffer = Buffer(room_buffer("dev"), "dev")
    buffer.add([("", "first")], 1)
    rows, at_top = buffer.view(20, 3)
    assert [text(row) for row in rows] == ["", "", "first"] and at_top
    for message_id in range(2, 11):
        buffer.add([("", f"line {message_id}")], message_id)
    rows, at_top = buffer.view(20, 3)
    assert [text(row) for row in rows] == ["line 8", "line 9", "line 10"] and not at_top
    buffer.scroll(4)
    assert [text(row) for row in buffer.view(20, 3)[0]] == ["line 4", "line 5", "line 6"]
    buffer.add([("", "line 11")], 11)  # arrives while the user reads further up
    assert [text(row) for row in buffer.view(20, 3)[0]] == ["line 4", "line 5", "line 6"]
    buffer.scroll(100)
    rows, at_top = buffer.view(20, 3)
    assert [text(row) for row in rows] == ["first", "line 2", "line 3"] and at_top
    buffer.scroll(-1000)
    assert [text(row) for row in buffer.view(20, 3)[0]] == ["line 9", "line 10", "line 11"]


def test_events_go_to_their_room_or_their_private_conversation_or_where_the_user_is():
    me = "alice"
    assert buffer_of(said(1, "hi"), me) == room_buffer("DEV") == "#dev"
    assert buffer_of(Joined(room="Dev", name="bob", time=WHEN), me) == "#dev"
    assert buffer_of(PrivateMessage(id=1, name="Bob", to=me, msg="psst", time=WHEN), me) == private_buffer("bob")
    assert buffer_of(PrivateMessage(id=2, name=me, to="Bob", msg="yes?", time=WHEN), me) == "@bob"
    assert buffer_of(ErrorReply(code="muted", detail="slow down"), me) is None
    assert buffer_of(ConnectionLost("gone", 1.0), me) is None


def test_buffers_are_numbered_in_the_order_opened_and_switching_goes_round():
    buffers = Buffers()
    for key, title in (("#lobby", "lobby"), ("#dev", "dev"), ("@bob", "bob")):
        buffers.open(key, title)
    assert buffers.number("#dev") == 2 and buffers.nth(3).title == "bob" and buffers.nth(4) is None
    assert buffers.beside("@bob", 1).key == "#lobby" and buffers.beside("#lobby", -1).key == "@bob"
    buffers.rename("@bob", "@robert", "robert")
    assert buffers.number("@robert") == 3 and buffers.get("@bob") is None


def test_rendered_lines_carry_the_indent_mark_before_their_text():
    fragments = render(said(1, "hello"), "alice")
    assert fragments is not None and (INDENT, "") in fragments
    assert text(wrap(fragments, 80)[0]).endswith("bob: hello")


def test_a_word_of_wide_characters_carried_to_the_next_row_still_fits_it():
    # Found by the property above: the carried word fitted, but not with the next character.
    rows = wrap([("class:time", "09:30 "), (INDENT, ""), ("", "  字字")], 3)
    assert all(get_cwidth(text(row)) <= 3 for row in rows)
    assert "".join(text(row) for row in rows).replace(" ", "") == "09:30字字"


def test_the_view_keeps_following_once_a_wrapped_first_line_fills_the_screen():
    # The join welcome almost always wraps: once the buffer first fills the screen, the view
    # took the rows above the top for a scroll position and stopped following new lines.
    buffer = Buffer("#den", "den")
    buffer.add([("", "-- "), (INDENT, ""), ("", "welcome " * 12)])  # three rows at 40 columns
    for number in range(1, 10):
        buffer.add(render(said(number, f"line {number}"), "alice"), number)
        rows, _ = buffer.view(40, 5)
        assert "line " + str(number) in text(rows[-1])
        assert buffer.scrolled == 0
    buffer.scroll(100)  # as far up as it goes: the top, not beyond it
    rows, at_top = buffer.view(40, 5)
    assert at_top and "welcome" in text(rows[0])


def test_a_long_web_address_goes_on_at_the_first_column_with_no_indent_inside_it():
    url = "https://example.com/" + "a" * 60
    rows = [text(row) for row in wrap([("", "09:30 bob: "), (INDENT, ""), ("", "see " + url + " now")], 40)]
    assert rows == [
        "09:30 bob: see ",
        "           https://example.com/aaaaaaaaa",  # it starts under the text
        "a" * 40,  # and goes on from the first column: copied, it has no spaces inside
        "a" * 11 + " now",
    ]


def test_bare_rows_are_not_indented():
    rows = [text(row) for row in wrap([("", "09:30 bob: "), (INDENT, ""), ("", "word " * 12)], 30, indent_rows=False)]
    assert all(not row.startswith(" ") for row in rows[1:])
