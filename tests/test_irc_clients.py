"""Real IRC clients against the IRC port: WeeChat (headless: FIFO in, logger file out) and irssi (in
tmux), each joining with SASL, exchanging lines with a JSON client, seeing replayed history with
its original time, and being kicked by a JSON owner."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path

import pytest

from chat.server.config import ServerConfig
from chat.testing import TIMEOUT, LineClient, RecordingChatServer
from chat.wire.protocol import ChatMessage, Joined, Moderation, SessionToken, Welcome


def needs(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        if os.environ.get("CHAT_REQUIRE_IRC"):
            pytest.fail(f"{program} is not installed, and CHAT_REQUIRE_IRC says the IRC clients must be tested")
        pytest.skip(f"{program} is not installed (apt-get install -y weechat-headless irssi tmux)")
    return found


def wait_for(what: str, check: Callable[[], str | None]) -> str:
    """Poll `check` (a file a client writes, a screen) until it finds something; fail after TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    seen: str | None = None
    while time.monotonic() < deadline:
        seen = check()
        if seen:
            return seen
        time.sleep(0.05)  # polling what another program writes: there is no event to wait on
    raise AssertionError(f"timed out waiting for {what}")


def account(server: RecordingChatServer, name: str, password: str) -> LineClient:
    client = LineClient(server.address)
    client.join(name)
    client.send({"type": "register", "password": password})
    client.expect(SessionToken)
    return client


@pytest.fixture
def irc_room(start_chat_server) -> Iterator[tuple[RecordingChatServer, LineClient, ChatMessage]]:
    """A server with an IRC port, an owner (a JSON client with an account) in #dev who said one
    line before anybody else came, and the account `ircuser` (password `irc password`)."""
    server = start_chat_server(ServerConfig(irc_port=0, db=":memory:"))
    account(server, "ircuser", "irc password").close()
    owner = account(server, "owner", "owner password")
    owner.send({"type": "join", "room": "dev"})
    owner.expect(Welcome, room="dev")
    owner.send({"type": "message", "room": "dev", "msg": "said before you came"})
    said = owner.expect(ChatMessage, msg="said before you came")
    time.sleep(1.1)  # the replayed line's time must differ from the time it is replayed at, to tell them apart
    yield server, owner, said


def local_time(said: ChatMessage) -> str:
    return said.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def test_weechat_joins_with_sasl_talks_sees_history_and_is_kicked(irc_room, tmp_path: Path):
    weechat = needs("weechat-headless")
    server, owner, said = irc_room
    host, port = server.address_of("irc") or ("", 0)
    home = tmp_path / "weechat"
    fifo = home / "fifo"
    commands = ";".join([
        f"/set fifo.file.path {fifo}",
        "/set logger.file.flush_delay 0",
        "/set logger.file.time_format \"%Y-%m-%d %H:%M:%S\"",
        f"/server add chat {host}/{port} -notls",
        "/set irc.server.chat.nicks ircuser",
        "/set irc.server.chat.sasl_mechanism plain",
        "/set irc.server.chat.sasl_username ircuser",
        "/set irc.server.chat.sasl_password \"irc password\"",
        "/set irc.server.chat.autojoin #dev",
        "/connect chat",
    ])
    process = subprocess.Popen(
        [weechat, "--dir", str(home), "-r", commands],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TZ": "UTC"},
    )
    try:
        log = home / "logs" / "irc.chat.#dev.weechatlog"

        def logged(text: str) -> Callable[[], str | None]:
            return lambda: next((line for line in _lines(log) if text in line), None)

        replayed = wait_for("the replayed line in WeeChat's log", logged("said before you came"))
        assert replayed.startswith(local_time(said)), replayed
        owner.expect(Joined, room="dev", name="ircuser")
        owner.send({"type": "message", "room": "dev", "msg": "hello weechat"})
        wait_for("the owner's line in WeeChat's log", logged("hello weechat"))
        fifo.open("w").write("irc.chat.#dev *hello from weechat\n")
        assert owner.expect(ChatMessage, room="dev", msg="hello from weechat").name == "ircuser"
        owner.send({"type": "kick", "room": "dev", "name": "ircuser", "reason": "bye now"})
        owner.expect(Moderation, action="kick", name="ircuser")
        kicked = wait_for("the kick in WeeChat's log", logged("kicked"))
        assert "ircuser" in kicked and "bye now" in kicked
    finally:
        process.terminate()
        process.wait(TIMEOUT)


def test_irssi_in_tmux_joins_with_sasl_talks_sees_history_and_is_kicked(irc_room, tmp_path: Path):
    irssi, tmux = needs("irssi"), needs("tmux")
    server, owner, said = irc_room
    host, port = server.address_of("irc") or ("", 0)
    home = tmp_path / "irssi"
    home.mkdir()
    (home / "startup").write_text(
        '/network add -sasl_mechanism PLAIN -sasl_username ircuser -sasl_password "irc password" chat\n'
        f"/server add -network chat -notls {host} {port}\n"
        "/set timestamp_format %H:%M:%S\n"
        "/set show_server_time on\n"
        "/connect chat\n"
    )
    socket_name = f"chat-test-{os.getpid()}-{port}"
    session = "irssi"
    tmux_cmd = [tmux, "-L", socket_name]
    subprocess.run(
        [*tmux_cmd, "new-session", "-d", "-s", session, "-x", "200", "-y", "50",
         f"TZ=UTC {irssi} --home={home} -n ircuser"],
        check=True, timeout=TIMEOUT,
    )

    def screen() -> str:
        return subprocess.run([*tmux_cmd, "capture-pane", "-p", "-t", session, "-S", "-200"],
                              capture_output=True, text=True, timeout=TIMEOUT).stdout

    def showing(text: str) -> Callable[[], str | None]:
        return lambda: next((line for line in screen().splitlines() if text in line), None)

    def type_line(text: str) -> None:
        subprocess.run([*tmux_cmd, "send-keys", "-t", session, "-l", text], check=True, timeout=TIMEOUT)
        subprocess.run([*tmux_cmd, "send-keys", "-t", session, "Enter"], check=True, timeout=TIMEOUT)

    try:
        wait_for("irssi's SASL login", showing("SASL authentication succeeded"))
        wait_for("the end of irssi's registration", showing("End of /MOTD"))
        type_line("/join #dev")
        owner.expect(Joined, room="dev", name="ircuser")
        replayed = wait_for("the replayed line on irssi's screen", showing("said before you came"))
        assert said.time.astimezone(UTC).strftime("%H:%M:%S") in replayed, replayed
        owner.send({"type": "message", "room": "dev", "msg": "hello irssi"})
        wait_for("the owner's line on irssi's screen", showing("hello irssi"))
        type_line("hello from irssi")
        assert owner.expect(ChatMessage, room="dev", msg="hello from irssi").name == "ircuser"
        owner.send({"type": "kick", "room": "dev", "name": "ircuser", "reason": "bye now"})
        kicked = wait_for("the kick on irssi's screen", showing("was kicked"))
        assert "bye now" in kicked
    finally:
        subprocess.run([*tmux_cmd, "kill-server"], timeout=TIMEOUT, check=False)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
