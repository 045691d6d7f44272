"""The full-screen client, typed into through a pipe and read through a terminal emulator."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output
from terminals import Emulator, Screen

from chat.client import settings as settings_module
from chat.client.connection import ChatClient
from chat.client.inputline import remembered_history
from chat.client.screen import run_screen
from chat.client.settings import Settings
from chat.server.config import ServerConfig
from chat.testing import TIMEOUT, LineClient
from chat.wire.protocol import (
    MAX_MSG,
    ChatMessage,
    Joined,
    Left,
    Nick,
    PrivateMessage,
    ReadMarker,
    SendMessage,
    SendPrivate,
    SessionToken,
    Welcome,
)

ALT = "\x1b"
PAGE_UP, PAGE_DOWN, F2, CTRL_N, CTRL_C, CTRL_D = "\x1b[5~", "\x1b[6~", "\x1bOQ", "\x0e", "\x03", "\x04"


@dataclass
class FullScreen:
    """One person's full-screen client: keys in, the emulated screen's rows out."""

    keys: PipeInput
    output: Screen
    emulator: Emulator
    task: asyncio.Task[None]
    client: ChatClient

    @property
    def text(self) -> str:
        return self.emulator.text

    @property
    def rows(self) -> list[str]:
        return self.emulator.rows

    @property
    def status(self) -> str:
        """The status bar: the row above the input line."""
        rows = self.rows
        prompt_row = max(at for at, row in enumerate(rows) if "> " in row or row.endswith(">"))
        return rows[prompt_row - 1]

    def type(self, text: str) -> None:
        self.keys.send_text(text)

    async def sees(self, predicate: Callable[[str], bool], what: str) -> None:
        await self.output.until(lambda: predicate(self.text), what, lambda: self.text)


@asynccontextmanager
async def full_screen(
    address: tuple[str, int],
    name: str,
    *,
    rooms: tuple[str, ...] = ("lobby",),
    size: tuple[int, int] = (100, 30),
    history: Path | None = None,
    cursors: dict[str, int] | None = None,
    settings: Settings | None = None,
    settings_path: Path | None = None,
    conversations: tuple[str, ...] = (),
    password: str | None = None,
    private_since: int | None = None,
) -> AsyncIterator[FullScreen]:
    """One person's full-screen client on an emulated `size` (columns, rows) terminal, once it shows
    its prompt; Ctrl-D at the end."""
    columns, lines = size
    with create_pipe_input() as keys:
        output = Screen(asyncio.get_running_loop())
        terminal = Vt100_Output(output, lambda: Size(rows=lines, columns=columns), term="xterm-256color")
        with create_app_session(input=keys, output=terminal):
            client = ChatClient(
                *address,
                name,
                rooms=rooms,
                cursors=cursors,
                conversations=conversations,
                password=password,
                private_since=private_since,
            )
            await client.connect()
            task = asyncio.create_task(
                run_screen(
                    client, remembered_history(history), mouse=False, settings=settings, settings_path=settings_path
                )
            )
            person = FullScreen(keys, output, Emulator(output, columns, lines), task, client)
            await person.sees(lambda s: f"{name}>" in s, "the prompt")
            try:
                yield person
            finally:
                if not task.done():
                    keys.send_text(CTRL_C * 3 + CTRL_D)
                await asyncio.wait_for(task, TIMEOUT)


def run(coroutine) -> None:
    asyncio.run(asyncio.wait_for(coroutine, TIMEOUT * 2))


def test_each_room_has_its_buffer_and_the_status_bar_counts_what_is_unread(chat_server, connect):
    bob = connect()
    bob.send({"type": "join", "name": "bob", "room": "dev"})
    bob.expect(Welcome)
    bob.send(SendMessage(room="dev", msg="said before alice came"))
    bob.expect(ChatMessage, msg="said before alice came")

    async def scenario():
        async with full_screen(chat_server.address, "alice", rooms=("lobby", "dev")) as alice:
            await alice.sees(lambda s: "2:dev" in alice.status, "dev on the status bar")
            for text in ("nobody reads this yet", "alice: are you there?"):
                await asyncio.to_thread(bob.send, SendMessage(room="dev", msg=text))
            # Two: the line said before alice joined is history, context rather than news.
            await alice.sees(lambda s: "2:dev(2!)" in alice.status, "two unread, one calling for alice")
            assert "are you there" not in alice.text  # it is in dev's buffer, not on screen
            alice.type(ALT + "2")
            await alice.sees(lambda s: "bob: alice: are you there?" in s, "dev's buffer")
            assert "dev:" in alice.rows[0]  # the title bar names the room shown
            assert "(2" not in alice.status
            alice.type("yes, here\r")
            said = await asyncio.to_thread(bob.expect, ChatMessage, name="alice")
            assert (said.room, said.msg) == ("dev", "yes, here")
            alice.type(CTRL_N)  # round to the first buffer again
            await alice.sees(lambda s: "[lobby] alice>" in s, "lobby typed into")

    run(scenario())


def test_what_one_device_of_an_account_reads_is_read_on_the_other(chat_server, connect):
    laptop = connect()
    laptop.send({"type": "join", "name": "alice", "room": "dev"})
    laptop.expect(Welcome)
    laptop.send({"type": "register", "password": "correct horse battery"})
    laptop.expect(SessionToken)
    bob = connect()
    bob.send({"type": "join", "name": "bob", "room": "dev"})
    bob.expect(Welcome)

    async def scenario():
        async with full_screen(
            chat_server.address, "alice", rooms=("lobby", "dev"), password="correct horse battery"
        ) as phone:
            await phone.sees(lambda s: "2:dev" in phone.status, "dev on the status bar")
            for text in ("first", "second"):
                await asyncio.to_thread(bob.send, SendMessage(room="dev", msg=text))
            await phone.sees(lambda s: "2:dev(2)" in phone.status, "two unread on the phone")
            last = await asyncio.to_thread(laptop.expect, ChatMessage, msg="second")
            await asyncio.to_thread(laptop.send, {"type": "read", "room": "dev", "id": last.id})
            await phone.sees(lambda s: "2:dev" in phone.status and "(2" not in phone.status, "read on the laptop")
            await asyncio.to_thread(bob.send, SendMessage(room="dev", msg="third"))
            await phone.sees(lambda s: "2:dev(1)" in phone.status, "one new line")
            phone.type(ALT + "2")  # read on the phone: the laptop is told
            await phone.sees(lambda s: "bob: third" in s, "dev's buffer")
            marker = await asyncio.to_thread(laptop.expect, ReadMarker)
            assert marker.room == "dev" and marker.id == last.id + 1

    run(scenario())


def test_a_private_message_opens_its_own_buffer_and_typing_there_answers_privately(chat_server, connect):
    bob = connect()
    bob.join("bob")

    async def scenario():
        async with full_screen(chat_server.address, "alice") as alice:
            await asyncio.to_thread(bob.send, SendPrivate(to="alice", msg="psst"))
            await alice.sees(lambda s: "2:@bob(1!)" in alice.status, "the private buffer, calling")
            alice.type(ALT + "2")
            await alice.sees(lambda s: "[bob → alice] psst" in s, "the private line")
            assert "private conversation with bob" in alice.rows[0]
            alice.type("what is it?\r")
            answer = await asyncio.to_thread(bob.expect, PrivateMessage, name="alice")
            assert (answer.to, answer.msg) == ("bob", "what is it?")
            await asyncio.to_thread(bob.send, Nick(name="robert"))
            await alice.sees(lambda s: "2:@robert" in alice.status, "the conversation following the new name")

    run(scenario())


def test_scrolling_to_the_top_fetches_older_messages_and_puts_them_in_order(start_chat_server, connect):
    server = start_chat_server(ServerConfig().without_limits())
    bob = connect(server)
    bob.join("bob")
    bob.say_all([f"message {number:03}" for number in range(120)])

    async def scenario():
        async with full_screen(server.address, "alice", size=(80, 24)) as alice:
            await alice.sees(lambda s: "message 119" in s, "the newest messages")
            assert "message 000" not in alice.text
            for _ in range(40):  # up past the welcome's history: older pages are fetched on the way
                if "message 000" in alice.text:
                    break
                await alice.sees(lambda s: "fetching" not in alice.status, "the last page arrived")
                before = alice.text
                alice.type(PAGE_UP)
                await alice.sees(lambda s, before=before: s != before, "the page up")
            assert "message 000" in alice.text
            numbers = [int(found) for row in alice.rows for found in re.findall(r"bob: message (\d+)", row)]
            assert numbers == sorted(numbers) and numbers[0] == 0
            assert "more below" in alice.status
            alice.type(ALT + "\x1b[F")  # Alt-End: back to the newest
            await alice.sees(lambda s: "message 119" in s and "more below" not in alice.status, "the newest again")

    run(scenario())


def test_long_lines_wrap_under_the_text_and_the_member_list_shows_roles(chat_server, connect):
    bob = connect()
    bob.join("bob")
    bob.send({"type": "register", "password": "bob's password"})
    bob.expect(SessionToken)
    bob.send({"type": "join", "room": "den"})  # an account's new room is its own
    bob.expect(Welcome, room="den")

    async def scenario():
        async with full_screen(chat_server.address, "alice", rooms=("den",), size=(80, 24)) as alice:
            await alice.sees(lambda s: "~bob" in s, "bob in the member list, as the room's owner")
            long_line = "a long line " + "that keeps going " * 8 + "until the end"
            await asyncio.to_thread(bob.send, SendMessage(room="den", msg=long_line))
            await alice.sees(lambda s: "until the end" in s, "the long line")
            rows = alice.rows
            first = next(at for at, row in enumerate(rows) if "bob: a long line" in row)
            indent = rows[first].index("a long line")
            assert rows[first + 1][:indent].strip() == "" and rows[first + 1][indent] != " "
            assert all(len(row) <= 80 for row in rows)
            alice.type(F2)
            await alice.sees(lambda s: "~bob" not in s, "the member list hidden")
            assert "keeps going that keeps going that keeps going that keeps going" in alice.text  # wider now
            alice.type(F2)
            await alice.sees(lambda s: "~bob" in s, "the member list back")

    run(scenario())


def test_the_status_bar_shows_the_outage_and_the_lines_waiting_to_be_sent(start_chat_server, tmp_path):
    config = ServerConfig(db=str(tmp_path / "chat.db"))
    first = start_chat_server(config)
    address = first.address

    async def scenario():
        async with full_screen(address, "alice") as alice:
            await alice.sees(lambda s: "alice: connected" in alice.status, "connected")
            await asyncio.to_thread(first.stop)
            await alice.sees(lambda s: "reconnecting" in alice.status, "the outage on the status bar")
            alice.type("typed during the outage\r")
            await alice.sees(lambda s: "1 waiting to send" in alice.status, "the line waiting")
            second = await asyncio.to_thread(start_chat_server, config, address[1])
            await alice.sees(lambda s: "alice: connected" in alice.status, "connected again")
            await alice.sees(lambda s: "sent the 1 line typed while disconnected" in s, "the line sent")
            observer = await asyncio.to_thread(LineClient, second.address)
            await asyncio.to_thread(observer.join, "obs")
            said = await asyncio.to_thread(observer.expect, ChatMessage, name="alice")
            assert said.msg == "typed during the outage"
            observer.close()

    run(scenario())


def test_ctrl_c_clears_the_input_and_twice_on_an_empty_line_leaves(chat_server, connect):
    watcher = connect()
    watcher.join("watcher")

    async def scenario():
        async with full_screen(chat_server.address, "alice") as alice:
            await asyncio.to_thread(watcher.expect, Joined, name="alice")
            alice.type("half a thought")
            await alice.sees(lambda s: "half a thought" in s, "the draft")
            alice.type(CTRL_C)
            await alice.sees(lambda s: "half a thought" not in s, "the draft gone")
            alice.type(CTRL_C)
            await alice.sees(lambda s: "Ctrl-C again" in s, "the question")
            assert not alice.task.done()
            alice.type(CTRL_C)
            await asyncio.wait_for(alice.task, TIMEOUT)
        left = await asyncio.to_thread(watcher.expect, Left, name="alice")  # nothing said before leaving
        assert left.reason == "quit"

    run(scenario())


def test_a_password_typed_in_the_screen_is_hidden_and_not_remembered(chat_server, tmp_path):
    history = tmp_path / "history"

    async def scenario():
        async with full_screen(chat_server.address, "alice", history=history) as alice:
            alice.type("/register\r")
            await alice.sees(lambda s: "new password:" in s, "the question")
            alice.type("hunter2-hunter2")
            await alice.sees(lambda s: "*" * 15 in s, "stars for the password")
            assert "hunter2" not in alice.text
            alice.type("\r")
            await alice.sees(lambda s: "the same again:" in s, "the second question")
            alice.type("hunter2-hunter2\r")
            await alice.sees(lambda s: "registered" in s, "the server's answer")
        assert "hunter2" not in history.read_text()

    run(scenario())


def test_a_message_too_long_is_refused_and_stays_in_the_input_line(chat_server):
    async def scenario():
        async with full_screen(chat_server.address, "alice") as alice:
            alice.type("x" * (MAX_MSG + 1) + "\r")
            await alice.sees(lambda s: f"{MAX_MSG + 1:,} characters" in s, "the refusal with the size")
            assert alice.client.connected
            await alice.sees(lambda s: "xxxxxxxx" in s.splitlines()[-1], "the text back in the input line")

    run(scenario())


def test_coming_back_marks_what_is_new_in_each_room_and_counts_it_as_unread(chat_server, connect):
    bob = connect()
    bob.join("bob")
    bob.send({"type": "join", "room": "dev"})
    bob.expect(Welcome, room="dev")
    seen_lobby = bob.say_all(["read before leaving"]).id
    seen_dev = 0
    bob.send(SendMessage(room="dev", msg="said while alice was away"))
    bob.send(SendMessage(room="dev", msg="alice: you will want this"))
    bob.expect(ChatMessage, msg="alice: you will want this")

    async def scenario():
        cursors = {"lobby": seen_lobby, "dev": seen_dev}
        async with full_screen(chat_server.address, "alice", rooms=("lobby", "dev"), cursors=cursors) as alice:
            await alice.sees(lambda s: "nothing new in lobby since you left" in s, "lobby's marker")
            await alice.sees(lambda s: "2:dev(2!)" in alice.status, "dev's missed lines counted")
            alice.type(ALT + "2")
            await alice.sees(lambda s: "2 new messages in dev since you left" in s, "dev's marker")
            text = alice.text
            assert text.index("since you left") < text.index("said while alice was away") < text.index("want this")

    run(scenario())


def test_at_80_by_24_the_view_keeps_following_after_a_wrapped_welcome_fills_the_screen(chat_server, connect):
    bob = connect()
    bob.join("bob")

    async def scenario():
        async with full_screen(chat_server.address, "alice", size=(80, 24)) as alice:
            await alice.sees(lambda s: "you are alice" in s, "the welcome, wrapped at 59 columns")
            for number in range(30):  # well past the first screenful
                await asyncio.to_thread(bob.send, SendMessage(msg=f"line {number:02}"))
                await alice.sees(lambda s, number=number: f"bob: line {number:02}" in s, f"line {number:02}")
            assert "more below" not in alice.status

    run(scenario())


def test_commands_typed_in_a_private_buffer_never_act_on_the_room_behind_it(chat_server, connect):
    bob = connect()
    bob.join("bob")

    async def scenario():
        async with full_screen(chat_server.address, "alice", size=(80, 24)) as alice:
            await asyncio.to_thread(bob.send, SendPrivate(to="alice", msg="psst"))
            await alice.sees(lambda s: "2:@bob" in alice.status, "the private buffer")
            alice.type(ALT + "2")
            await alice.sees(lambda s: "private conversation with bob" in alice.rows[0], "the private buffer shown")
            for line in ("/me waves", "/topic our secret", "/history", "/kick bob"):
                alice.type(line + "\r")
                word = line.split()[0]
                await alice.sees(lambda s, word=word: f"{word} acts on a room" in s, f"{word} refused")
            alice.type("only for bob\r")
            await alice.sees(lambda s: "[alice → bob] only for bob" in s, "her line, back from the server")
            answer = await asyncio.to_thread(bob.expect, PrivateMessage, name="alice")
            assert answer.msg == "only for bob"
            from_alice = [seen for seen in bob.seen if getattr(seen, "name", "") == "alice"][1:]  # after her join
            assert [type(seen) for seen in from_alice] == [PrivateMessage]  # no action, topic nor kick in lobby
            alice.type("/part\r")  # in a conversation: closes it, leaves no room
            await alice.sees(lambda s: "closed the conversation with bob" in s, "the conversation closed")
            assert "@bob" not in alice.status and "lobby" in alice.client.rooms

    run(scenario())


def test_enter_then_alt_1_in_one_read_sends_the_line_where_it_was_typed(chat_server, connect):
    bob = connect()
    bob.send({"type": "join", "name": "bob", "room": "dev"})
    bob.expect(Welcome)

    async def scenario():
        async with full_screen(chat_server.address, "alice", rooms=("lobby", "dev")) as alice:
            await alice.sees(lambda s: "2:dev" in alice.status, "dev's buffer")
            alice.type(ALT + "2")
            await alice.sees(lambda s: "[dev] alice>" in s, "typing into dev")
            for number in range(5):
                alice.type(f"typed ahead {number}\r" + ALT + "1")  # one read, as over ssh
                await alice.sees(lambda s: "[lobby] alice>" in s, "the lobby shown")
                said = await asyncio.to_thread(bob.expect, ChatMessage, name="alice")
                assert (said.room, said.msg) == ("dev", f"typed ahead {number}")
                alice.type(ALT + "2")
                await alice.sees(lambda s: "[dev] alice>" in s, "dev again")

    run(scenario())


def test_kicked_then_joining_again_the_room_stays_and_typing_goes_there(chat_server, connect):
    owner = connect()
    owner.join("owner")
    owner.send({"type": "register", "password": "owner password"})
    owner.send({"type": "join", "room": "den"})
    owner.expect(Welcome, room="den")

    async def scenario():
        async with full_screen(chat_server.address, "alice", rooms=("lobby", "den")) as alice:
            await asyncio.to_thread(owner.expect, Joined, room="den", name="alice")
            await asyncio.to_thread(owner.send, {"type": "kick", "room": "den", "name": "alice", "reason": "out"})
            kicked = "you were kicked from den by owner (out); /join den to go back in"
            await alice.sees(lambda s: kicked in s, "the kick")
            assert "den" not in alice.status
            alice.type("/join den\r")
            await alice.sees(lambda s: "[den] alice>" in s, "typing into den again")
            await alice.sees(lambda s: "2:den" in alice.status, "den's buffer back")
            alice.type("back again\r")
            said = await asyncio.to_thread(owner.expect, ChatMessage, name="alice")
            assert (said.room, said.msg) == ("den", "back again")
            assert "den" in alice.client.rooms

    run(scenario())


def test_signed_in_elsewhere_is_said_on_screen_and_not_a_reconnect_loop(chat_server, connect):
    watcher = connect()
    watcher.join("watcher")

    async def scenario():
        async with full_screen(chat_server.address, "alice") as alice:
            other = ChatClient(*chat_server.address, "alice", token=alice.client.token)
            await other.connect()
            await alice.sees(lambda s: "signed in elsewhere" in alice.status, "where the session went")
            await other.send(SendMessage(msg="from the other device"))
            await asyncio.to_thread(watcher.expect, ChatMessage, msg="from the other device")
            assert other.connected and alice.client.retry_at is None
            joins = [seen for seen in watcher.seen if isinstance(seen, Joined) and seen.name == "alice"]
            lefts = [seen for seen in watcher.seen if isinstance(seen, Left) and seen.name == "alice"]
            assert (len(joins), len(lefts)) == (2, 1)  # the first, the other device, and no join back
            await other.close()

    run(scenario())


def test_sixteen_buffers_at_80_columns_fold_into_a_hotlist_that_alt_a_and_buffer_n_reach(chat_server, connect):
    bob = connect()
    bob.join("bob")
    for room in ("r05", "r14"):
        bob.send({"type": "join", "room": room})
        bob.expect(Welcome, room=room)
    rooms = ("lobby", *(f"r{number:02}" for number in range(2, 17)))

    async def scenario():
        async with full_screen(chat_server.address, "alice", rooms=rooms, size=(80, 24)) as alice:
            for room in ("r05", "r14"):
                await asyncio.to_thread(bob.expect, Joined, room=room, name="alice")
            await asyncio.to_thread(bob.send, SendMessage(room="r05", msg="news in five"))
            await asyncio.to_thread(bob.send, SendMessage(room="r14", msg="alice: look here"))
            await alice.sees(lambda s: "Act: 14(1!),5(1)" in alice.status, "the hotlist, the mention first")
            assert alice.status.startswith(" [1:lobby]") and "connected" in alice.status
            assert len(alice.status) <= 80
            alice.type(ALT + "a")
            await alice.sees(lambda s: "bob: alice: look here" in s, "Alt-A: the mention")
            assert "r14:" in alice.rows[0] and "Act: 5(1)" in alice.status
            alice.type(ALT + "a")
            await alice.sees(lambda s: "bob: news in five" in s, "Alt-A: the other one")
            assert "Act" not in alice.status
            alice.type(ALT + "a")  # nothing new left: back where the first Alt-A started
            await alice.sees(lambda s: "[1:lobby]" in alice.status, "back in the lobby")
            alice.type("/buffer 14\r")
            await alice.sees(lambda s: "[14:r14]" in alice.status, "/buffer 14")
            alice.type(ALT + "j05")
            await alice.sees(lambda s: "[5:r05]" in alice.status, "Alt-J 05")
            alice.type("/buffer r16\r")
            await alice.sees(lambda s: "[16:r16]" in alice.status, "/buffer by name")

    run(scenario())


def test_set_changes_a_setting_at_once_and_writes_the_file(chat_server, connect, tmp_path):
    bob = connect()
    bob.join("bob")
    path = tmp_path / "config" / "chat" / "client.toml"

    async def scenario():
        async with full_screen(chat_server.address, "alice", settings_path=path, size=(100, 30)) as alice:
            alice.type("/set\r")
            await alice.sees(lambda s: "bell = on" in s and "smart_filter = on" in s, "every setting listed")
            alice.type("/set timestamp_format %H:%M:%S\r")
            await alice.sees(lambda s: "timestamp_format = %H:%M:%S (saved in" in s, "the change")
            await asyncio.to_thread(bob.say, "what time is it")
            await alice.sees(lambda s: re.search(r"\d\d:\d\d:\d\d bob: what time is it", s), "seconds shown")
            alice.type("/set highlight_words deploy\r")
            await alice.sees(lambda s: "highlight_words = deploy" in s, "a highlight word")
            alice.type("/set member_list off\r")
            await alice.sees(lambda s: "1 here" not in s and "2 here" not in s, "the member list hidden")
            alice.type("/set bell loud\r")
            await alice.sees(lambda s: "bell is on or off" in s, "a wrong value refused")
        chosen, problem = settings_module.load(path)
        assert problem is None
        assert (chosen.timestamp_format, chosen.highlight_words, chosen.member_list, chosen.bell) == (
            "%H:%M:%S", ["deploy"], False, True
        )
        assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"

    run(scenario())


def test_log_dir_keeps_a_dated_file_per_buffer_appended_as_lines_arrive(chat_server, connect, tmp_path):
    bob = connect()
    bob.join("bob")
    bob.say("said before alice came")  # history when she joins: not logged again
    bob.expect(ChatMessage)
    logs = tmp_path / "logs"

    async def scenario():
        chosen = Settings(log_dir=str(logs))
        async with full_screen(chat_server.address, "alice", settings=chosen) as alice:
            await asyncio.to_thread(bob.say, "hello alice")
            await alice.sees(lambda s: "bob: hello alice" in s, "the line")
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d bob: hello alice\n",
                                (logs / "lobby.log").read_text().splitlines(keepends=True)[-1])
            await asyncio.to_thread(bob.send, SendPrivate(to="alice", msg="psst"))
            await alice.sees(lambda s: "2:@bob" in alice.status, "the private buffer")
            assert "[bob → alice] psst" in (logs / "@bob.log").read_text()
            alice.type("back to you\r")
            await asyncio.to_thread(bob.expect, ChatMessage, msg="back to you")
            await alice.sees(lambda s: "alice: back to you" in s, "her own line")
        text = (logs / "lobby.log").read_text()
        assert "said before alice came" not in text and "alice: back to you" in text
        assert oct((logs / "lobby.log").stat().st_mode & 0o777) == "0o600"
        assert oct(logs.stat().st_mode & 0o777) == "0o700"

    run(scenario())


def test_search_shows_the_matching_lines_and_ctrl_r_narrows_them_as_you_type(chat_server, connect):
    bob = connect()
    bob.join("bob")

    async def scenario():
        async with full_screen(chat_server.address, "alice", size=(80, 24)) as alice:
            for text in ("the deploy is green", "lunch at noon?", "deploy again tomorrow", "DEPLOYED it"):
                await asyncio.to_thread(bob.say, text)
            await alice.sees(lambda s: "DEPLOYED it" in s, "the lines")
            alice.type("/search deploy\r")
            await alice.sees(lambda s: "lunch" not in s, "only the matches")
            assert "the deploy is green" in alice.text and "DEPLOYED it" in alice.text
            assert "'deploy': 3 lines" in alice.status
            alice.type(ALT)  # Esc alone
            await alice.sees(lambda s: "lunch at noon?" in s, "every line again")
            alice.type("half a thought")
            alice.type("\x12")  # Ctrl-R
            await alice.sees(lambda s: "[search in lobby]" in s, "the query prompt")
            alice.type("lun")
            await alice.sees(lambda s: "deploy is green" not in s and "lunch at noon?" in s, "narrowed as typed")
            alice.type("\r")  # read the results; the draft comes back to the input line
            await alice.sees(lambda s: "half a thought" in s, "the draft back")
            assert "deploy is green" not in alice.text
            alice.type(ALT)
            await alice.sees(lambda s: "deploy is green" in s and "search" not in alice.status, "search left")

    run(scenario())


def test_tab_in_a_search_completes_a_name_to_look_for_not_a_line_addressed_to_it(chat_server, connect):
    bob = connect()
    bob.join("bob")

    async def scenario():
        async with full_screen(chat_server.address, "alice", size=(80, 24)) as alice:
            await asyncio.to_thread(bob.say, "bob was here")
            await alice.sees(lambda s: "bob was here" in s, "the line")
            alice.type("\x12")  # Ctrl-R
            await alice.sees(lambda s: "[search in lobby]" in s, "the query prompt")
            alice.type("b\t")
            await alice.sees(lambda s: "search 'bob'" in alice.status, "the name completed")
            assert "bob:" not in alice.rows[-1]
            alice.type(ALT)
            await alice.sees(lambda s: "[search in lobby]" not in s, "search left")
            alice.type("b\t")  # typing a line again: a name at its start addresses it
            await alice.sees(lambda s: "alice> bob:" in s, "the line addressed")

    run(scenario())


def test_a_server_restart_is_one_line_and_silent_peoples_joins_and_parts_are_hidden(start_chat_server, tmp_path):
    config = ServerConfig(db=str(tmp_path / "chat.db"))
    first = start_chat_server(config)
    address = first.address

    async def scenario():
        async with full_screen(address, "alice", rooms=("lobby", "dev", "ops"), size=(140, 30)) as alice:
            await alice.sees(lambda s: "3:ops" in alice.status, "three rooms")
            lurker = await asyncio.to_thread(LineClient, address)
            await asyncio.to_thread(lurker.join, "lurker")
            talker = await asyncio.to_thread(LineClient, address)
            await asyncio.to_thread(talker.join, "talker")
            await asyncio.to_thread(talker.say, "I speak")
            await alice.sees(lambda s: "talker: I speak" in s, "talker's line")
            lurker.close()
            await asyncio.to_thread(talker.send, {"type": "leave"})
            await alice.sees(lambda s: "talker left" in s, "the part of somebody who spoke")
            assert "lurker" not in alice.text  # neither his join nor his quit
            before = len(alice.client.rooms) and len(screen_lines(alice))
            await asyncio.to_thread(first.stop)
            await alice.sees(lambda s: "reconnecting" in alice.status, "the outage")
            await asyncio.to_thread(start_chat_server, config, address[1])
            await alice.sees(lambda s: "back after" in s, "the outage folded into its line")
            await alice.sees(lambda s: "alice: connected" in alice.status, "connected again")
            added = screen_lines(alice)[before:]
            assert len(added) == 1 and "connection lost at" in added[0], added
            assert "nothing new" not in alice.text and "reconnected" not in alice.text

    run(scenario())


def screen_lines(person: FullScreen) -> list[str]:
    """The lines of the buffer shown, as the client keeps them."""
    rows = person.rows
    top = 1
    bottom = max(at for at, row in enumerate(rows) if "> " in row or row.endswith(">")) - 1
    return [row.split("│")[0].rstrip() for row in rows[top:bottom] if row.split("│")[0].strip()]


def test_an_idle_screen_draws_nothing(chat_server, connect):
    bob = connect()
    bob.join("bob")

    async def scenario():
        async with full_screen(chat_server.address, "alice") as alice:
            await asyncio.to_thread(bob.say, "the last thing said")
            await alice.sees(lambda s: "the last thing said" in s, "the line")
            await alice.sees(lambda s: "alice: connected" in alice.status, "the status")
            written = len(alice.output.getvalue())
            # It used to redraw every second: nothing happens, so nothing may be written for longer.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(alice.output.until(lambda: len(alice.output.getvalue()) > written,
                                                          "a redraw", lambda: ""), TIMEOUT / 4)
            await asyncio.to_thread(bob.say, "something new")
            await alice.sees(lambda s: "something new" in s, "a change drawn at once")

    run(scenario())


def test_help_is_an_overlay_with_the_keys_that_esc_closes_and_help_cmd_shows_one(chat_server):
    async def scenario():
        async with full_screen(chat_server.address, "alice", size=(100, 30)) as alice:
            alice.type("/help\r")
            await alice.sees(lambda s: "help (Esc closes)" in s and "next buffer with activity" in s, "the overlay")
            alice.type(ALT)
            await alice.sees(lambda s: "help (Esc closes)" not in s, "the overlay closed")
            assert "Alt-A" not in alice.text  # nothing of it was put in the room's buffer
            alice.type("/help search\r")
            await alice.sees(lambda s: "/search TEXT" in s, "one command")

    run(scenario())


def test_alt_l_shows_the_lines_bare_for_copying_and_again_dressed(chat_server, connect):
    bob = connect()
    bob.join("bob")

    async def scenario():
        async with full_screen(chat_server.address, "alice", size=(80, 24)) as alice:
            long_line = "words " * 20 + "end"
            await asyncio.to_thread(bob.say, long_line)
            await alice.sees(lambda s: "words end" in s, "the long line")
            alice.type(ALT + "l")
            await alice.sees(lambda s: "lobby:" not in alice.rows[0] and "connected" not in s, "no bars")
            rows = alice.rows
            first = next(at for at, row in enumerate(rows) if "bob: words" in row)
            assert rows[first + 1].startswith("words") and "│" not in "".join(rows)  # no indent, no member list
            alice.type(ALT + "l")
            await alice.sees(lambda s: "alice: connected" in alice.status, "the bars again")

    run(scenario())


def test_the_member_list_puts_roles_first_and_scrolls_when_it_does_not_fit(chat_server, connect):
    owner = connect()
    owner.join("zed")
    owner.send({"type": "register", "password": "zed's password"})
    owner.expect(SessionToken)
    owner.send({"type": "join", "room": "den"})
    owner.expect(Welcome, room="den")
    crowd = []
    for number in range(25):
        member = connect()
        member.send({"type": "join", "name": f"m{number:02}", "room": "den"})
        member.expect(Welcome)
        crowd.append(member)

    async def scenario():
        async with full_screen(chat_server.address, "alice", rooms=("den",), size=(80, 24)) as alice:
            await alice.sees(lambda s: "27 here" in s, "everybody counted")
            side = [row.split("│")[-1] for row in alice.rows[1:-2]]
            assert side[1].startswith("~zed")  # the owner first, though z comes last
            assert any("more (F12)" in row for row in side) and "m24" not in alice.text
            alice.type("\x1b[24~")  # F12
            await alice.sees(lambda s: "m24" in s, "the list scrolled to its end")
            alice.type("\x1b[23~")  # F11
            await alice.sees(lambda s: "~zed" in s, "and back")

    run(scenario())


def test_private_buffers_open_in_the_last_run_are_there_again(chat_server, connect):
    bob = connect()
    bob.join("bob")

    async def scenario():
        async with full_screen(chat_server.address, "alice") as alice:
            await asyncio.to_thread(bob.send, SendPrivate(to="alice", msg="psst"))
            await alice.sees(lambda s: "2:@bob" in alice.status, "the conversation")
            conversations = list(alice.client.conversations.values())
        assert conversations == ["bob"]  # what the client remembers (cursors.Place) for the next start
        await asyncio.to_thread(bob.expect, Left, name="alice")  # the server let go of the name
        async with full_screen(chat_server.address, "alice", conversations=tuple(conversations)) as again:
            await again.sees(lambda s: "2:@bob" in again.status, "the conversation open again")
            again.type(ALT + "2")
            await again.sees(lambda s: "private conversation with bob" in again.rows[0], "and shown")

    run(scenario())


def test_private_buffers_come_back_after_a_restart_with_their_recent_lines(chat_server, connect):
    laptop = connect()
    laptop.send({"type": "join", "name": "alice"})
    laptop.expect(Welcome)
    laptop.send({"type": "register", "password": "correct horse battery"})
    laptop.expect(SessionToken)
    bob, carol = connect(), connect()
    bob.join("bob")
    carol.join("carol")
    bob.send(SendPrivate(to="alice", msg="remember the keys"))
    bob.expect(PrivateMessage, msg="remember the keys")  # its echo: kept before alice leaves
    carol.send(SendPrivate(to="alice", msg="a chat alice closed"))
    carol.expect(PrivateMessage, msg="a chat alice closed")
    laptop.send(SendPrivate(to="bob", msg="I will"))
    seen = laptop.expect(PrivateMessage, msg="I will").id
    laptop.send({"type": "leave"})
    bob.expect(Left, name="alice")

    async def scenario():
        async with full_screen(
            chat_server.address,
            "alice",
            conversations=("bob",),
            private_since=seen,
            password="correct horse battery",
        ) as alice:
            await alice.sees(lambda s: "2:@bob" in alice.status, "the conversation open again")
            await asyncio.to_thread(bob.send, SendPrivate(to="alice", msg="welcome back"))
            await alice.sees(lambda s: "2:@bob(1!)" in alice.status, "one unread: the lines read before are not")
            raw = alice.output.getvalue()
            assert "\x1b]2;chat: 1 for you\x07" in raw and "\x1b]2;chat: 2" not in raw  # nor do they call
            alice.type(ALT + "2")
            await alice.sees(lambda s: "welcome back" in s, "the new line")
            text = alice.text
            assert text.index("remember the keys") < text.index("I will") < text.index("welcome back")
            alice.type(PAGE_UP)  # the server pages back rooms only: the top says where older lines are
            await alice.sees(lambda s: "/search -all WORDS finds them" in s, "where older private lines are")
            assert "@carol" not in alice.status and "a chat alice closed" not in text  # closed stays closed

    run(scenario())


def test_a_marker_line_shows_where_reading_stopped_in_a_buffer_left_for_another(chat_server, connect):
    bob = connect()
    bob.join("bob")
    bob.send({"type": "join", "room": "dev"})
    bob.expect(Welcome, room="dev")

    async def scenario():
        async with full_screen(chat_server.address, "alice", rooms=("lobby", "dev")) as alice:
            alice.type(ALT + "2")
            await alice.sees(lambda s: "[dev] alice>" in s, "dev shown")
            await asyncio.to_thread(bob.send, SendMessage(room="dev", msg="read this one"))
            await alice.sees(lambda s: "bob: read this one" in s, "a line read")
            assert not any(set(row.split("│")[0].strip()) == {"─"} for row in alice.rows)  # nothing unread: no marker
            alice.type(ALT + "1")
            await alice.sees(lambda s: "[lobby] alice>" in s, "lobby shown")
            for text in ("missed one", "missed two"):
                await asyncio.to_thread(bob.send, SendMessage(room="dev", msg=text))
            await alice.sees(lambda s: "2:dev(2)" in alice.status, "two unread")
            alice.type(ALT + "2")
            await alice.sees(lambda s: "bob: missed two" in s, "dev again")
            rows = alice.rows
            read = next(at for at, row in enumerate(rows) if "read this one" in row)
            missed = next(at for at, row in enumerate(rows) if "missed one" in row)
            between = [set(row.split("│")[0].strip()) for row in rows[read + 1 : missed]]
            assert between == [{"─"}]  # the marker, left of the member list

    run(scenario())


def test_lines_shown_for_context_after_a_restart_are_not_counted_as_unread(chat_server, connect):
    bob = connect()
    bob.join("bob")
    bob.send({"type": "join", "room": "dev"})
    bob.expect(Welcome, room="dev")
    last_lobby = bob.say_all(["alice: old news", "more old news"]).id
    bob.send(SendMessage(room="dev", msg="old in dev"))
    last_dev = bob.expect(ChatMessage, msg="old in dev").id

    async def scenario():
        cursors = {"dev": last_dev, "lobby": last_lobby}  # nothing missed in either
        async with full_screen(chat_server.address, "alice", rooms=("dev", "lobby"), cursors=cursors) as alice:
            await alice.sees(lambda s: "old in dev" in s, "dev's lines for context")
            alice.type("/history 1\r")  # answered after lobby's context: the connection keeps the order
            await alice.sees(lambda s: "no earlier messages" in s, "the answer")
            assert not re.search(r"\d earlier message", alice.text)  # the context needs no header
            assert "2:lobby " in alice.status + " " and "2:lobby(" not in alice.status

    run(scenario())


def test_close_in_a_room_asks_first_and_then_leaves_it(chat_server, connect):
    watcher = connect()
    watcher.send({"type": "join", "name": "watcher", "room": "dev"})
    watcher.expect(Welcome)

    async def scenario():
        async with full_screen(chat_server.address, "alice", rooms=("lobby", "dev")) as alice:
            alice.type(ALT + "2")
            await alice.sees(lambda s: "[dev] alice>" in s, "dev shown")
            alice.type("/close\r")
            await alice.sees(lambda s: "/close again leaves dev" in s, "the question")
            assert "dev" in alice.client.rooms
            alice.type("/close\r")
            await asyncio.to_thread(watcher.expect, Left, name="alice")
            await alice.sees(lambda s: "2:dev" not in alice.status and "[lobby] alice>" in s, "dev closed")

    run(scenario())


def test_search_asks_the_server_and_jump_shows_a_match_where_it_was_said(start_chat_server, connect, tmp_path):
    server = start_chat_server(ServerConfig(db=str(tmp_path / "chat.db")).without_limits())  # 300 lines at once
    bob = connect(server)
    bob.join("bob")
    bob.send({"type": "join", "room": "dev"})
    bob.expect(Welcome, room="dev")
    bob.say("the release checklist is long")
    bob.say_all([f"filler {n}" for n in range(300)])  # the match is far above what a join shows
    bob.send({"type": "message", "room": "dev", "msg": "dev has its own release checklist"})

    async def scenario():
        async with full_screen(server.address, "alice", rooms=("lobby", "dev"), size=(100, 30)) as alice:
            await alice.sees(lambda s: "2:dev" in alice.status, "both rooms")
            alice.type("/buffer 1\r")
            await alice.sees(lambda s: "filler 299" in s, "the newest lines of the lobby")
            alice.type("/search -all release checklist\r")
            await alice.sees(lambda s: "2 found" in s, "the server's matches")
            listed = alice.text.split("2 found")[-1]
            assert re.search(r"\[1\] \d{4}-\d\d-\d\d \d\d:\d\d #dev bob: dev has its own release checklist", listed)
            assert re.search(r"\[2\] \d{4}-\d\d-\d\d \d\d:\d\d #lobby bob: the release checklist is long", listed)
            alice.type("/jump 2\r")  # older than the buffer holds: fetched, then scrolled to
            await alice.sees(lambda s: "bob: the release checklist is long" in s and "filler 299" not in s, "its place")
            assert "filler 0" in alice.text  # shown among the lines said around it
            alice.type("/jump 1\r")
            await alice.sees(lambda s: "bob: dev has its own release checklist" in s and "1:lobby" in alice.status,
                             "the dev line, in the dev buffer")
            alice.type("/search long\r")  # in the buffer shown only: dev has no such line
            await alice.sees(lambda s: "search 'long': nothing found" in s, "the server's answer for dev")

    run(scenario())
