"""The real prompt_toolkit UI, typed into through a pipe, its screen captured."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output
from terminals import ANSI, Screen

from chat.client.actions import split_text
from chat.client.connection import ChatClient
from chat.client.ignored import Ignored
from chat.client.ui import make_session, run_ui
from chat.server.config import ServerConfig
from chat.server.store import Record, SqliteStore
from chat.testing import TIMEOUT, LineClient
from chat.wire.codec import encode
from chat.wire.protocol import ChatMessage, ErrorReply, Left, PrivateMessage, Welcome


@dataclass
class Terminal:
    """One person's client: what they type goes in `keys`, what they see is `screen`."""

    keys: PipeInput
    output: Screen
    task: asyncio.Task[None]

    @property
    def raw(self) -> str:
        return self.output.getvalue()

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw)

    def type(self, text: str) -> None:
        self.keys.send_text(text)

    async def sees(self, predicate: Callable[[str], bool], what: str) -> None:
        """Wait until the captured screen satisfies `predicate`, waking on each write."""
        await self.output.until(lambda: predicate(self.screen), what, lambda: self.screen)


@asynccontextmanager
async def terminal(
    address: tuple[str, int],
    name: str,
    bell: bool = True,
    *,
    cursors: dict[str, int] | None = None,
    history: Path | None = None,
    ignored: Ignored | None = None,
) -> AsyncIterator[Terminal]:
    """One person's client UI on a captured 100x40 screen, once its prompt is up; Ctrl-D at the end."""
    with create_pipe_input() as keys:
        output = Screen(asyncio.get_running_loop())
        screen = Vt100_Output(output, lambda: Size(rows=40, columns=100), term="xterm-256color")
        with create_app_session(input=keys, output=screen):
            client = ChatClient(*address, name, cursors=cursors)
            await client.connect()
            session = make_session(client, history)
            task = asyncio.create_task(run_ui(client, session, bell=bell, ignored=ignored))
            person = Terminal(keys, output, task)
            await person.sees(lambda s: f"{name}>" in s, "the prompt")
            try:
                yield person
            finally:
                if not task.done():
                    keys.send_text("\x04")  # Ctrl-D
                await asyncio.wait_for(task, TIMEOUT)


def run(coroutine) -> None:
    asyncio.run(asyncio.wait_for(coroutine, TIMEOUT * 2))


def test_typed_line_appears_on_the_other_screen_with_name_and_colour(chat_server):
    async def scenario():
        async with terminal(chat_server.address, "alice") as alice, terminal(chat_server.address, "bob") as bob:
            alice.type("hello bob\r")
            await bob.sees(lambda s: "alice: hello bob" in s, "alice's line")
            # bob's screen shows alice's name in her colour, bold: 1;<colour> then the name
            assert re.search(r"\x1b\[[0-9;]*m[^\x1b]*alice", bob.raw)
            assert re.search(r"\d\d:\d\d alice: hello bob", bob.screen)

    run(scenario())


def test_half_typed_input_survives_incoming_lines(chat_server, connect):
    async def scenario():
        async with terminal(chat_server.address, "alice") as alice:
            alice.type("draft in prog")
            other = LineClient(chat_server.address)
            await asyncio.to_thread(other.join, "bob")
            await asyncio.to_thread(other.say, "interrupting")
            await alice.sees(lambda s: "bob: interrupting" in s, "bob's line")
            alice.type("ress\r")
            message = await asyncio.to_thread(other.expect, ChatMessage, name="alice")
            assert message.msg == "draft in progress"
            other.close()

    run(scenario())


def test_escape_sequence_from_a_raw_client_arrives_neutralised(chat_server):
    async def scenario():
        async with terminal(chat_server.address, "alice") as alice:
            raw = LineClient(chat_server.address)
            await asyncio.to_thread(raw.join, "mallory")
            await asyncio.to_thread(raw.say, "\x1b[2J\x1b[31mgotcha\x9b2J\u202eevil")
            await alice.sees(lambda s: "gotcha" in s, "mallory's line")
            assert "\x1b[2J" not in alice.raw and "\x1b[31m" not in alice.raw
            assert "\x9b" not in alice.raw and "\u202e" not in alice.raw
            assert "^[[2J^[[31mgotcha<9B>2J<U+202E>evil" in alice.screen
            raw.close()

    run(scenario())


def test_quit_ends_the_app_and_the_server_reports_a_clean_leave(chat_server):
    async def scenario():
        watcher = LineClient(chat_server.address)
        await asyncio.to_thread(watcher.join, "watcher")
        async with terminal(chat_server.address, "alice") as alice:
            alice.type("/quit\r")
            await asyncio.wait_for(alice.task, TIMEOUT)
        left = await asyncio.to_thread(watcher.expect, Left, name="alice")
        assert left.reason == "quit"
        watcher.close()

    run(scenario())


def test_commands_help_and_mistakes_are_shown(chat_server):
    async def scenario():
        async with terminal(chat_server.address, "alice") as alice:
            alice.type("/help\r")
            await alice.sees(lambda s: "next buffer with activity" in s and "/msg" in s, "the keys and commands")
            alice.type("/help msg\r")
            await alice.sees(lambda s: "/msg NAME TEXT" in s, "one command's help")
            alice.type("/msg ghost boo\r")
            await alice.sees(lambda s: "nobody called ghost" in s, "the server's error")
            alice.type("/me waves\r")
            await alice.sees(lambda s: "* alice waves" in s, "the action")
            alice.type("/bogus\r")
            await alice.sees(lambda s: "unknown command /bogus" in s, "the mistake")

    run(scenario())


def test_pasted_lines_are_sent_as_one_message(chat_server):
    async def scenario():
        async with terminal(chat_server.address, "alice") as alice:
            watcher = LineClient(chat_server.address)
            assert isinstance(await asyncio.to_thread(watcher.join, "watcher"), Welcome)
            alice.type("\x1b[200~first line\nsecond line\x1b[201~")
            alice.type("\r")
            message = await asyncio.to_thread(watcher.expect, ChatMessage)
            assert message.msg == "first line\nsecond line"
            await alice.sees(lambda s: re.search(r"alice: first line\n +second line", s) is not None, "the paste")
            watcher.close()

    run(scenario())


def test_join_switch_part_and_rooms_from_the_keyboard(chat_server):
    async def scenario():
        other = LineClient(chat_server.address)
        await asyncio.to_thread(other.join, "bob")
        async with terminal(chat_server.address, "alice") as alice:
            alice.type("/join dev\r")
            await alice.sees(lambda s: "you are alice in dev" in s and "[dev] alice>" in s, "the welcome and prompt")
            alice.type("in dev\r")
            await alice.sees(lambda s: "alice: in dev" in s, "her line in dev")
            alice.type("/switch lobby\r")
            # Not the lobby prompt: the first one was that too, and would not prove the switch done.
            await alice.sees(lambda s: "typing into lobby" in s, "the switch")
            await asyncio.to_thread(other.send, {"type": "join", "room": "dev"})
            await asyncio.to_thread(other.send, {"type": "message", "room": "dev", "msg": "from bob"})
            await alice.sees(lambda s: "[dev] bob: from bob" in s, "bob's dev line, named")
            alice.type("to the lobby\r")
            said = await asyncio.to_thread(other.expect, ChatMessage, msg="to the lobby")
            assert said.room == "lobby"
            alice.type("/rooms\r")
            await alice.sees(lambda s: "  dev      2\n  lobby    2" in s, "the room list, one row per room")
            alice.type("/part dev\r")
            await alice.sees(lambda s: "alice left dev" in s, "her part")
            left = await asyncio.to_thread(other.expect, Left, room="dev")
            assert (left.name, left.reason) == ("alice", "part")
            alice.type("/switch dev\r")
            await alice.sees(lambda s: "you are not in dev" in s, "the refusal")
        other.close()

    run(scenario())


def test_topic_is_set_and_shown(chat_server):
    async def scenario():
        async with terminal(chat_server.address, "alice") as alice:
            alice.type("/topic release friday\r")
            await alice.sees(lambda s: "alice set the topic of lobby: release friday" in s, "the topic line")
            alice.type("/topic\r")
            await alice.sees(lambda s: "topic of lobby: release friday" in s, "the topic shown")

    run(scenario())


async def register(screen: Terminal, name: str, password: str) -> None:
    """/register, answering both password prompts, until the server confirms."""
    screen.type("/register\r")
    await screen.sees(lambda s: "new password:" in s, "the password prompt")
    screen.type(password + "\r")
    await screen.sees(lambda s: "the same again:" in s, "the second prompt")
    screen.type(password + "\r")
    await screen.sees(lambda s: f"{name} is now registered" in s, "the confirmation")


def test_register_asks_for_the_password_twice_without_showing_it(chat_server, connect):
    async def scenario():
        async with terminal(chat_server.address, "alice") as alice:
            await alice.sees(lambda s: "a guest: /register to own the name" in s, "the guest's welcome")
            await register(alice, "alice", "hunter2hunter2")
            assert "hunter2" not in alice.raw

    run(scenario())
    guest = connect()
    guest.send({"type": "join", "name": "alice"})
    assert guest.expect(ErrorReply).code == "name_registered"


def test_moderation_commands_reach_the_server_and_its_answer_is_shown(chat_server):
    async def scenario():
        async with terminal(chat_server.address, "alice") as alice, terminal(chat_server.address, "bob"):
            alice.type("/kick bo\t\r")  # the name completes
            await alice.sees(lambda s: "only its operators may kick in lobby" in s, "the refusal")
            alice.type("/ban\r")
            await alice.sees(lambda s: "usage: /ban NAME [FOR] [WHY]" in s, "the usage line")

    run(scenario())


def test_the_prompt_shows_the_users_role_in_the_room(chat_server):
    async def scenario():
        async with terminal(chat_server.address, "alice") as alice:
            await register(alice, "alice", "owner password")
            alice.type("/join den\r")
            await alice.sees(lambda s: "[den] alice (owner)>" in s, "the owner's prompt")

    run(scenario())


def test_ctrl_c_clears_the_line_and_on_an_empty_line_asks_before_leaving(chat_server, connect):
    async def scenario():
        async with terminal(chat_server.address, "alice") as alice:
            alice.type("half a thou")
            alice.type("\x03")  # Ctrl-C: the half line goes, nothing is sent, the client stays
            alice.type("\x03")  # on the empty line now: asks
            await alice.sees(lambda s: "Ctrl-C again" in s, "the question")
            assert not alice.task.done()
            alice.type("still here\r")
            message = await asyncio.to_thread(other.expect, ChatMessage, name="alice")
            assert message.msg == "still here"  # the half line never left
            alice.type("\x03")
            alice.type("\x03")  # twice on an empty line: leaves
            await asyncio.wait_for(alice.task, TIMEOUT)

    other = connect()
    other.join("bob")
    run(scenario())
    other.expect(Left, name="alice")


def test_a_message_too_long_is_refused_before_sending_and_stays_in_the_input(chat_server, connect):
    async def scenario():
        async with terminal(chat_server.address, "alice") as alice:
            alice.type("y" * 8001 + "\r")
            await alice.sees(lambda s: "8,001 characters" in s and "at most 8,000" in s, "the refusal")
            alice.type("\x7f" * 2 + "\r")  # two backspaces: the same text, 7,999 characters
            message = await asyncio.to_thread(other.expect, ChatMessage, name="alice")
            assert message.msg == "y" * 7999

    other = connect()
    other.join("bob")
    run(scenario())


def test_a_name_completed_at_the_start_of_a_line_is_addressed(chat_server, connect):
    async def scenario():
        async with terminal(chat_server.address, "alice") as alice:
            await alice.sees(lambda s: "bobby" in s, "bobby in the room")
            alice.type("bob\t")
            # The screen is drawn as differences: what completion adds is the rest of the name.
            await alice.sees(lambda s: s.rstrip(" ").endswith("by:"), "the name completed, addressed")
            alice.type("hi and bob\t")
            await alice.sees(lambda s: s.endswith("by"), "the name completed in the line")
            alice.type("\r")
            message = await asyncio.to_thread(other.expect, ChatMessage, name="alice")
            assert message.msg == "bobby: hi and bobby"

    other = connect()
    other.join("bobby")
    run(scenario())


def test_typed_lines_are_remembered_between_runs_but_never_a_password(chat_server, tmp_path):
    history = tmp_path / "state" / "client-history"

    async def session(name: str, typed: str) -> None:
        async with terminal(chat_server.address, name, history=history) as person:
            person.type(typed)
            await asyncio.wait_for(person.task, TIMEOUT)

    run(session("alice", "first line\r/register\rsecret-password-1\rsecret-password-1\r/quit\r"))
    assert history.stat().st_mode & 0o777 == 0o600
    assert "first line" in history.read_text() and "secret-password" not in history.read_text()
    run(session("carol", "\x1b[A\x1b[A\x1b[A\r/quit\r"))  # up-arrow three times: the oldest line, sent again
    assert history.read_text().count("+first line") == 2


def test_lines_typed_while_the_server_is_away_wait_and_go_when_it_is_back(start_chat_server, tmp_path):
    config = ServerConfig(db=str(tmp_path / "chat.db"))
    first = start_chat_server(config)
    address = first.address

    async def scenario():
        async with terminal(address, "alice") as alice:
            await asyncio.to_thread(first.stop)
            await alice.sees(lambda s: "connection lost" in s, "the drop")
            alice.type("said while away\r")
            await alice.sees(lambda s: "1 waiting to be sent" in s, "the line kept")
            await alice.sees(lambda s: "(offline, 1 waiting)" in s, "the prompt saying so")
            alice.type("and another\r")
            await alice.sees(lambda s: "2 waiting to be sent" in s, "the second line kept")
            second = await asyncio.to_thread(start_chat_server, config, address[1])
            await alice.sees(lambda s: "sent the 2 lines typed while disconnected" in s, "the lines sent")
            observer = await asyncio.to_thread(LineClient, second.address)
            welcome = await asyncio.to_thread(observer.join, "obs")
            assert welcome.history >= 2
            said = [await asyncio.to_thread(observer.expect, ChatMessage, name="alice") for _ in range(2)]
            assert [line.msg for line in said] == ["said while away", "and another"]
            observer.close()

    run(scenario())


def test_a_burst_is_drawn_in_few_redraws_not_one_per_line(start_chat_server, connect):
    """Lines that arrive together are printed together: the prompt is redrawn per batch, not per line."""
    server = start_chat_server(ServerConfig().without_limits())  # 300 lines at once is a flood
    flood = connect(server)
    flood.join("flood")

    async def scenario():
        async with terminal(server.address, "alice") as alice:
            drawn_before = alice.screen.count("alice>")
            burst = b"".join(b'{"type": "message", "msg": "burst %d"}\n' % i for i in range(300))
            await asyncio.to_thread(flood.send_raw, burst)
            await alice.sees(lambda s: "burst 299" in s, "the end of the burst")
            assert all(f"burst {i}" in alice.screen for i in range(300))
            assert alice.screen.count("alice>") - drawn_before < 30

    run(scenario())


def test_history_from_another_day_is_dated_and_today_starts_with_a_day_line(start_chat_server, tmp_path):
    path = tmp_path / "chat.db"
    store = SqliteStore(str(path))
    thursday = datetime(2026, 11, 19, 12, 0, tzinfo=UTC)
    old = ChatMessage(room="lobby", id=1, name="old", msg="from another day", time=thursday)
    store.append("lobby", Record(1, encode(old)))
    store.close()
    server = start_chat_server(ServerConfig(db=str(path)))
    today = datetime.now().astimezone().date()

    async def scenario():
        said = await asyncio.to_thread(LineClient, server.address)
        await asyncio.to_thread(said.join, "bob")
        await asyncio.to_thread(said.say_all, ["from today"])
        async with terminal(server.address, "alice") as alice:
            await alice.sees(lambda s: "from today" in s, "today's line")
            screen = alice.screen
            assert f"{thursday.astimezone():%Y-%m-%d %H:%M} old: from another day" in screen
            day_line = f"-- {today:%A} {today.day} {today:%B %Y} --"
            assert screen.index("from another day") < screen.index(day_line) < screen.index("from today")
        said.close()

    run(scenario())


def test_coming_back_shows_what_is_new_since_you_left_or_a_few_lines_for_context(chat_server):
    bob = LineClient(chat_server.address)
    bob.join("bob")
    last = bob.say_all([f"old {i}" for i in range(8)])

    async def come_back(since: int) -> str:
        async with terminal(chat_server.address, "alice", cursors={"lobby": since}) as person:
            await person.sees(lambda s: "old 7" in s and "since you left" in s, "the way back in")
            return person.screen

    missed = asyncio.run(come_back(last.id - 2))
    assert missed.index("-- 2 new messages in lobby since you left --") < missed.index("old 6") < missed.index("old 7")
    assert "old 5" not in missed
    nothing = asyncio.run(come_back(last.id))
    assert "-- nothing new in lobby since you left --" in nothing
    assert all(f"old {i}" in nothing for i in range(3, 8)) and "old 2" not in nothing
    bob.close()


@pytest.mark.parametrize("bell", [True, False])
def test_a_mention_or_a_private_message_rings_and_counts_in_the_title_until_you_type(chat_server, bell):
    async def scenario():
        address = chat_server.address
        async with terminal(address, "alice", bell=bell) as alice, terminal(address, "bob") as bob:
            bob.type("nothing for anyone\r")
            await alice.sees(lambda s: "nothing for anyone" in s, "a plain line")
            assert "\x1b]2;chat:" not in alice.raw
            bob.type("alice, look\r")
            await alice.sees(lambda s: "alice, look" in s, "the mention")
            bob.type("/msg alice psst\r")
            await alice.sees(lambda s: "psst" in s, "the private message")
            assert "\x1b]2;chat: 2 for you\x07" in alice.raw
            for number in range(20):  # a flood of mentions
                bob.type(f"alice {number}\r")
            await alice.sees(lambda s: "alice 19" in s, "the flood")
            await alice.sees(lambda s: "\x1b]2;chat: 22 for you\x07" in alice.raw, "every one counted")
            rings = alice.raw.count("\x07") - alice.raw.count("\x1b]2;")  # a title ends in BEL too
            assert rings == (1 if bell else 0)  # one bell for the burst, not one per line
            alice.type("seen\r")
            await alice.sees(lambda s: "\x1b]2;chat\x07" in alice.raw, "the title back to plain")

    run(scenario())


def test_query_sends_plain_lines_privately_r_replies_and_ignore_hides_and_is_kept(chat_server, connect, tmp_path):
    bob = connect()
    bob.join("bob")
    troll = connect()
    troll.join("troll")
    ignored_file = tmp_path / "state" / "client-ignored.json"

    async def scenario():
        async with terminal(chat_server.address, "alice", ignored=Ignored(ignored_file)) as alice:
            alice.type("/query bob\r")
            await alice.sees(lambda s: "[→ bob] alice>" in s, "the private prompt")
            alice.type("just for you\r")
            private = await asyncio.to_thread(bob.expect, PrivateMessage, name="alice")
            assert (private.to, private.msg) == ("bob", "just for you")
            await asyncio.to_thread(bob.send, {"type": "private", "to": "alice", "msg": "thanks"})
            await alice.sees(lambda s: "thanks" in s, "bob's answer")
            alice.type("/query\r/r welcome\r")
            reply = await asyncio.to_thread(bob.expect, PrivateMessage, msg="welcome")
            assert reply.to == "bob"
            alice.type("/ignore troll\r")
            await alice.sees(lambda s: "lines are hidden" in s, "the ignore confirmed")
            await asyncio.to_thread(troll.say, "noise")
            await asyncio.to_thread(bob.say, "signal")
            await alice.sees(lambda s: "signal" in s, "bob's line")
            assert "noise" not in alice.screen

    run(scenario())
    assert Ignored(ignored_file).hides("TROLL")  # kept, and compared as the server compares names


def test_a_message_too_long_goes_in_parts_when_enter_is_pressed_again(chat_server, connect):
    words = " ".join(f"w{i:04d}" for i in range(2000))  # 11,999 characters

    async def scenario():
        async with terminal(chat_server.address, "alice") as alice:
            alice.type(words + "\r")
            await alice.sees(lambda s: "Enter again sends it as 2 messages" in s, "the offer")
            alice.type("\r")
            parts = [await asyncio.to_thread(other.expect, ChatMessage, name="alice") for _ in range(2)]
            assert "".join(part.msg for part in parts) == words
            assert all(len(part.msg) <= 8000 for part in parts) and parts[0].msg.endswith(" ")

    other = connect()
    other.join("bob")
    run(scenario())


def test_split_text_cuts_at_line_ends_or_spaces_and_mid_word_only_when_it_must():
    assert split_text("aaa bbb ccc", 8) == ["aaa bbb ", "ccc"]
    assert split_text("one\\ntwo three", 9) == ["one\\ntwo ", "three"]
    assert split_text("x" * 10, 4) == ["xxxx", "xxxx", "xx"]
    assert split_text("short", 8) == ["short"]


def test_search_in_the_plain_mode_prints_the_matching_lines_again(chat_server):
    async def scenario():
        address = chat_server.address
        async with terminal(address, "alice") as alice, terminal(address, "bob") as bob:
            for text in ("the deploy is green", "lunch?", "deploy again"):
                bob.type(text + "\r")
            await alice.sees(lambda s: "bob: deploy again" in s, "the lines")
            alice.type("/search DEPLOY\r")
            await alice.sees(lambda s: "search 'DEPLOY': 2 of the last" in s, "the heading")
            await alice.sees(lambda s: "deploy again" in s.split("search 'DEPLOY'")[-1], "the matches")
            after = alice.screen.split("search 'DEPLOY'")[-1]
            assert "the deploy is green" in after and "lunch" not in after

    run(scenario())
