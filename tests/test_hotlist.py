"""The status bar and its hotlist: pure, fitted to the screen's width."""

from __future__ import annotations

from chat.client.buffers import Buffer
from chat.client.hotlist import activity, status_bar


def text(fragments) -> str:
    return "".join(part for _, part in fragments)


def buffers(count: int) -> list[tuple[int, Buffer]]:
    return [(number, Buffer(f"#room{number}", f"room{number}")) for number in range(1, count + 1)]


CONNECTED = [("", "alice: connected, lag 12 ms")]
SHORT = [("", "connected")]
MORE = [([("", "more below: PageDown")], [("", "↓ PgDn")])]


def test_few_buffers_are_all_listed_with_their_counts():
    numbered = buffers(3)
    numbered[1][1].unread, numbered[1][1].mentioned = 2, True
    bar = text(status_bar(numbered, numbered[0][1], [CONNECTED, SHORT], [], 80))
    assert bar == " 1:room1 2:room2(2!) 3:room3 │ alice: connected, lag 12 ms"


def test_many_buffers_fold_into_the_hotlist_keeping_the_buffer_shown_the_connection_and_the_scroll_hint():
    numbered = buffers(16)
    for number, unread in ((3, 5), (14, 1), (10, 2)):
        numbered[number - 1][1].unread = unread
    numbered[13][1].mentioned = True
    bar = text(status_bar(numbered, numbered[6][1], [CONNECTED, SHORT], MORE, 80))
    assert len(bar) <= 80
    assert bar.startswith(" [7:room7] Act: 14(1!),3(5),10(2)")
    assert "connected" in bar and ("more below" in bar or "PgDn" in bar)


def test_a_hotlist_too_long_for_the_screen_counts_what_is_left_out():
    numbered = buffers(40)
    for _, buffer in numbered[1:]:
        buffer.unread = 100
    bar = text(status_bar(numbered, numbered[0][1], [CONNECTED, SHORT], MORE, 80))
    assert len(bar) <= 80 and "connected" in bar and "PgDn" in bar and ",+" in bar


def test_alt_a_visits_private_and_mentions_first_then_by_number():
    numbered = buffers(5)
    numbered.append((6, Buffer("@bob", "bob")))
    for number in (2, 4, 6):
        numbered[number - 1][1].unread = 1
    numbered[3][1].mentioned = True
    assert [number for number, _ in activity(numbered, numbered[0][1])] == [4, 6, 2]
