"""What each event looks like: pure, and safe against hostile text."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from chat.client.connection import ConnectionLost, Reconnected
from chat.client.render import day_change, day_of, mentions, name_colour, neutralise, render
from chat.wire.protocol import (
    Action,
    Away,
    ChatMessage,
    ErrorReply,
    Joined,
    Left,
    Moderation,
    Notice,
    PrivateMessage,
    Renamed,
    RoomInfo,
    RoomList,
    ServerPong,
    Topic,
    Users,
    Welcome,
)

WHEN = datetime.now(UTC).replace(microsecond=0)  # today: lines of today show the time alone


def text_of(fragments) -> str:
    return "".join(text for _, text in fragments)


def styles_of(fragments, text: str) -> list[str]:
    return [style for style, part in fragments if text in part]


@pytest.mark.parametrize(
    ("hostile", "shown"),
    [
        ("\x1b[2J", "^[[2J"),
        ("\x1b[31mred", "^[[31mred"),
        ("\x9b2J", "<9B>2J"),
        ("\x1b]0;title\x07", "^[]0;title^G"),
        ("over\rwrite", "over^Mwrite"),
        ("back\x08space", "back^Hspace"),
        ("\u202eevil", "<U+202E>evil"),
        ("\u2066isolate\u2069", "<U+2066>isolate<U+2069>"),
        ("tab\there", "tab    here"),
        ("\x7f", "^?"),
    ],
)
def test_control_characters_are_shown_harmlessly(hostile, shown):
    assert neutralise(hostile) == shown


def test_neutralised_text_has_no_control_characters_left():
    everything = "".join(chr(c) for c in range(0x00, 0xA0)) + "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    shown = neutralise(everything)
    assert all(ch.isprintable() for ch in shown)


def test_newlines_stay_only_when_asked():
    assert neutralise("a\nb") == "a^Jb"
    assert neutralise("a\nb", keep_newlines=True) == "a\nb"


def test_hostile_name_and_message_render_neutralised():
    fragments = render(ChatMessage(id=1, name="x\x1b[2J", msg="\x1b[2Jhi\x9b", time=WHEN), me="alice")
    assert "\x1b" not in text_of(fragments) and "\x9b" not in text_of(fragments)
    assert "^[[2Jhi<9B>" in text_of(fragments)


def test_message_shows_time_name_and_text():
    fragments = render(ChatMessage(id=1, name="bob", msg="hi", time=WHEN), me="alice")
    local = WHEN.astimezone().strftime("%H:%M")
    assert text_of(fragments) == f"{local} bob: hi"
    assert styles_of(fragments, "bob") == [f"{name_colour('bob')} bold"]


def test_name_colour_is_stable_and_names_differ():
    assert name_colour("bob") == name_colour("bob") == name_colour("BOB")
    assert len({name_colour(n) for n in ["alice", "bob", "carol", "dave", "erin", "frank"]}) > 2


def test_own_private_action_notice_and_error_lines_look_different():
    own = render(ChatMessage(id=1, name="alice", msg="mine", time=WHEN), me="alice")
    other = render(ChatMessage(id=2, name="bob", msg="theirs", time=WHEN), me="alice")
    private = render(PrivateMessage(id=4, name="bob", to="alice", msg="psst", time=WHEN), me="alice")
    action = render(Action(id=3, name="bob", msg="waves", time=WHEN), me="alice")
    notice = render(Joined(name="carol", time=WHEN), me="alice")
    error = render(ErrorReply(code="name_taken", detail="taken"), me="alice")
    styles = [
        styles_of(own, "mine"),
        styles_of(other, "theirs"),
        styles_of(private, "psst"),
        styles_of(action, "waves"),
        styles_of(notice, "carol joined"),
        styles_of(error, "taken"),
    ]
    assert len({tuple(s) for s in styles}) == 6
    assert "* " in text_of(action) and "[bob → alice]" in text_of(private)


def test_mention_of_my_name_is_highlighted():
    fragments = render(ChatMessage(id=1, name="bob", msg="hey Alice, look", time=WHEN), me="alice")
    assert styles_of(fragments, "hey Alice") == ["class:mention"]
    assert mentions("hi alice!", "alice") and not mentions("malice", "alice")


def test_multiline_message_is_indented_under_one_header():
    fragments = render(ChatMessage(id=1, name="bob", msg="one\ntwo\nthree", time=WHEN), me="alice")
    first, second, third = text_of(fragments).split("\n")
    assert first.endswith("bob: one")
    assert second == " " * (len(first) - 3) + "two"
    assert third.strip() == "three" and len(third) == len(second) + 2


def test_wide_characters_keep_continuation_lines_aligned():
    fragments = render(ChatMessage(id=1, name="李雷", msg="一\n二", time=WHEN), me="alice")
    first, second = text_of(fragments).split("\n")
    # "李雷" takes four columns: the indent counts columns, not characters.
    assert len(second) - 1 == len(first) - 1 + 2


def test_notices_and_connection_events_are_shown():
    assert "bob left lobby (timeout)" in text_of(render(Left(name="bob", reason="timeout", time=WHEN), "me"))
    assert "bob left dev" in text_of(render(Left(room="dev", name="bob", reason="part", time=WHEN), "me"))
    assert "bob is now known as rob" in text_of(render(Renamed(old="bob", new="rob", time=WHEN), "me"))
    assert "here: a, b" in text_of(render(Welcome(name="a", users=["a", "b"], history=0), "a"))
    assert "reconnecting in 0.5 s" in text_of(render(ConnectionLost("refused", 0.5), "me"))
    assert "reconnected" in text_of(render(Reconnected(1), "me"))
    assert render(ServerPong(), "me") is None


def test_being_slowed_down_is_shown_with_the_delay():
    notice = Notice(code="rate_limited", detail="you send too fast", delay_ms=1200)
    assert "holding your lines back about 1.2 s" in text_of(render(notice, "me"))
    assert "bob left lobby (excess flood)" in text_of(render(Left(name="bob", reason="excess_flood", time=WHEN), "me"))


def test_a_line_from_another_room_than_the_one_typed_into_names_it():
    message = ChatMessage(room="dev", id=1, name="bob", msg="hi", time=WHEN)
    assert text_of(render(message, "me", room="dev")).endswith("bob: hi")
    assert "[dev] bob: hi" in text_of(render(message, "me", room="lobby"))
    assert "[dev]" not in text_of(render(message, "me", room="DEV"))


def test_topics_and_the_room_list_are_shown():
    topic = Topic(room="dev", topic="release friday", name="bob", id=3, time=WHEN)
    assert "bob set the topic of dev: release friday" in text_of(render(topic, "me", room="dev"))
    welcome = Welcome(room="dev", name="me", users=["me"], history=0, topic="ship\x1b[2J it")
    assert "topic: ship^[[2J it" in text_of(render(welcome, "me", room="dev"))
    listing = RoomList(rooms=[RoomInfo(room="dev", users=2, topic="t"), RoomInfo(room="lobby", users=0, topic="")])
    assert "2 rooms: name, people here, topic\n  dev      2  t\n  lobby    0" in text_of(render(listing, "me"))


def test_a_notice_that_names_its_room_is_not_prefixed_again():
    left = Left(room="dev", name="bob", reason="quit", time=WHEN)
    text = text_of(render(left, "me", room="lobby"))
    assert "bob left dev" in text and "[dev]" not in text


def test_roles_and_moderation_are_shown():
    users = Users(room="den", users=["alice", "bob", "carol"], roles={"alice": "owner", "carol": "op"})
    assert "in den: alice (owner), bob, carol (op)" in text_of(render(users, "me"))
    ban = Moderation(room="den", id=3, action="ban", name="troll", by="alice", reason="spam", time=WHEN)
    shown = render(ban, "me", room="den")
    assert "troll was banned from den by alice: spam" in text_of(shown)
    assert any("moderation" in style for style, _ in shown)


def test_a_line_from_another_day_shows_its_date_and_a_new_day_gets_a_line():
    old = datetime.now(UTC) - timedelta(days=3)
    fragments = render(ChatMessage(id=1, name="bob", msg="hi", time=old), me="alice")
    assert text_of(fragments) == f"{old.astimezone():%Y-%m-%d %H:%M} bob: hi"
    assert day_of(ChatMessage(id=1, name="bob", msg="hi", time=old)) == old.astimezone().date()
    assert day_of(ConnectionLost("gone", 1.0)) is None
    assert text_of(day_change(date(2026, 11, 19))) == "-- Thursday 19 November 2026 --"


def test_the_welcome_has_no_clock_so_the_older_history_under_it_reads_in_order():
    welcome = render(Welcome(room="lobby", name="alice", users=["alice"], history=2, last_id=9), me="alice")
    assert text_of(welcome).startswith("-- you are alice in lobby")


def test_a_room_members_away_and_back_read_as_such_and_ones_own_is_not_shown_twice():
    away = render(Away(room="dev", name="bob", msg="lunch"), "alice", room="dev")
    back = render(Away(room="dev", name="bob", msg=""), "alice", room="dev")
    assert away is not None and text_of(away).endswith("bob is away: lunch")
    assert back is not None and text_of(back).endswith("bob is back")
    assert render(Away(room="dev", name="alice", msg="lunch"), "alice", room="dev") is None
    answer = render(Away(name="bob", msg="lunch"), "alice", room="dev")  # after a private line to bob
    assert answer is not None and text_of(answer).endswith("bob is away: lunch")


def test_parting_words_follow_the_left_line():
    words = render(Left(room="dev", name="bob", reason="part", msg="off to lunch", time=WHEN), "alice", room="dev")
    assert words is not None and text_of(words).endswith("bob left dev: off to lunch")
    plain = render(Left(room="dev", name="bob", reason="timeout", time=WHEN), "alice", room="dev")
    assert plain is not None and text_of(plain).endswith("bob left dev (timeout)")
