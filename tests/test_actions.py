"""What the client does with lines, tested without a server: the parts that need none."""

from __future__ import annotations

from datetime import UTC, datetime

from chat.client.actions import ChatState
from chat.client.connection import ChatClient
from chat.wire.protocol import ChatMessage

WHEN = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_tab_offers_this_rooms_latest_speakers_first_then_its_members_then_the_rest():
    client = ChatClient("127.0.0.1", 1, "alice", rooms=["den", "dev"])
    client.rooms["den"].users = ["aaron", "alice", "bob", "carol", "zoe"]
    client.rooms["dev"].users = ["alice", "dave"]
    state = ChatState(client)
    for number, name in enumerate(["zoe", "bob", "dave", "zoe"], 1):
        state.spoke(ChatMessage(room="dev" if name == "dave" else "den", id=number, name=name, msg="hi", time=WHEN))
    assert state.names_for_completion() == ["zoe", "bob", "aaron", "alice", "carol", "dave"]
    state.private_to = "carol"
    assert state.names_for_completion() == ["carol"]
