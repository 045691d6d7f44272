"""The smart filter: pure judgement of which lines are noise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chat.client.connection import ConnectionLost, Reconnected, Resumed
from chat.client.filters import SmartFilter
from chat.wire.protocol import ChatMessage, Joined, Left

NOON = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_joins_and_parts_of_people_who_have_not_spoken_lately_are_noise():
    smart = SmartFilter()
    assert smart.hides(Joined(room="den", name="lurker", time=NOON), "alice")
    assert not smart.hides(ChatMessage(room="den", id=1, name="bob", msg="hi", time=NOON), "alice")
    assert not smart.hides(Left(room="den", name="bob", reason="quit", time=NOON + timedelta(minutes=3)), "alice")
    assert smart.hides(Joined(room="den", name="bob", time=NOON + timedelta(hours=1)), "alice")
    assert smart.hides(Joined(room="dev", name="bob", time=NOON), "alice")  # he spoke in den, not dev
    assert not smart.hides(Joined(room="den", name="alice", time=NOON), "alice")


def test_a_reconnect_says_once_that_the_connection_went_and_not_that_nothing_is_new():
    smart = SmartFilter()
    assert not smart.hides(Resumed("den", 0), "alice")  # at start: what the user came back to
    assert not smart.hides(ConnectionLost("the server cut the connection", 0.25), "alice")
    assert smart.hides(ConnectionLost("nothing is listening there", 0.5), "alice")
    assert not smart.hides(Reconnected(3), "alice")
    assert smart.hides(Resumed("den", 0), "alice")
    assert not smart.hides(Resumed("dev", 4), "alice")  # what was missed is news
