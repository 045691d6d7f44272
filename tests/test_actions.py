"""What the client does with lines, tested without a server: the parts that need none."""

from __future__ import annotations

from datetime import UTC, datetime

from chat.client.actions import ChatState
from chat.client.connection import ChatClient
from chat.testing import TIMEOUT
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


def test_the_notify_command_runs_once_per_burst_with_the_line_as_its_last_argument(tmp_path):
    import asyncio
    import shlex
    import sys

    from prompt_toolkit.application import create_app_session
    from prompt_toolkit.output import DummyOutput

    from chat.client.actions import _called

    out = tmp_path / "notified"
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    client = ChatClient("127.0.0.1", 1, "alice")
    state = ChatState(client)
    state.settings.notify_command = shlex.join([sys.executable, "-c", script, str(out)])
    calling = [ChatMessage(room="lobby", id=n, name="bob", msg=f"alice: look {n}", time=WHEN) for n in (1, 2)]

    async def scenario() -> None:
        with create_app_session(output=DummyOutput()):
            _called(state, calling, "alice")
            _called(state, calling, "alice")  # the same burst: quiet
            await asyncio.gather(*state.notifying)

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    [line] = out.read_text().splitlines()
    assert "bob: alice: look 2" in line and "(and 1 more)" in line


def test_a_joins_history_is_context_whatever_its_lines_and_what_follows_is_news():
    from chat.wire.protocol import Moderation, Topic, Welcome

    client = ChatClient("127.0.0.1", 1, "alice", rooms=["den"])
    state = ChatState(client)
    history = [
        Welcome(room="den", name="alice", users=["alice"], history=3, last_id=3),
        ChatMessage(room="den", id=1, name="bob", msg="alice: old", time=WHEN),
        Moderation(room="den", id=2, action="kick", name="carol", by="bob", time=WHEN),
        Topic(room="den", id=3, topic="t", name="bob", time=WHEN),
    ]
    assert [state.is_context(event) for event in history] == [False, True, True, True]
    assert not state.is_context(ChatMessage(room="den", id=4, name="bob", msg="alice: new", time=WHEN))
