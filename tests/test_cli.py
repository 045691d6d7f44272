"""`python server.py` as a person runs it: flags, environment, logs and signals."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from chat.server.config import options
from chat.testing import TIMEOUT, LineClient, restartable_port
from chat.wire.protocol import ChatMessage, Shutdown

ROOT = Path(__file__).resolve().parent.parent


def test_help_documents_every_option():
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--help"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0
    for _, option, _ in options():
        assert option.flag in result.stdout and option.env in result.stdout


def test_readme_option_table_matches_the_option_table():
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("--") and not cells[0].startswith("---"):
            rows[cells[0]] = cells[1:]
    expected = {}
    for name, option, default in options():
        shown = "~/.local/state/chat/chat.db" if name == "db" else str(default)
        expected[option.flag] = [option.env, shown, option.help]
    assert rows == expected


def test_readme_client_flag_table_matches_the_clients_help(monkeypatch):
    from chat.cli import client_parser

    for variable in ("CHAT_HOST", "CHAT_PORT", "CHAT_NAME", "CHAT_ALSO"):
        monkeypatch.delenv(variable, raising=False)  # the defaults the README shows

    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`--"):
            rows[cells[0].strip("`")] = cells[1]
    parser = client_parser()
    formatter = parser._get_formatter()
    expected = {
        max(action.option_strings, key=len): formatter._expand_help(action)
        for action in parser._actions
        if action.option_strings and action.option_strings[0] != "-h"
    }
    assert rows == expected


def test_server_script_logs_its_real_address_and_serves(server_script):
    server = server_script()
    assert server.port != 0
    alice = LineClient(server.address)
    alice.join("alice")
    alice.say("hi")
    assert alice.expect(ChatMessage).msg == "hi"
    server.wait_for_log(r"alice")
    alice.close()


def test_sigterm_sends_shutdown_notice_and_exits_zero(server_script):
    server = server_script()
    alice = LineClient(server.address)
    alice.join("alice")
    server.process.send_signal(signal.SIGTERM)
    assert isinstance(alice.expect_closed()[-1], Shutdown)
    assert server.stop() == 0
    assert any("stopped" in line for line in server.log)
    alice.close()


def test_sigint_exits_zero_without_a_traceback(server_script):
    server = server_script()
    server.process.send_signal(signal.SIGINT)
    assert server.stop() == 0
    assert not any("Traceback" in line for line in server.log)


def test_sigint_and_sigterm_together_stop_every_server_cleanly(chat_server_process):
    """Both signals back to back, as a terminal's Ctrl-C and a service manager's stop may come:
    the handler takes no lock, so no run of 50 deadlocks, and each exits 0 having said why."""
    runs, at_once = 50, 5
    for _ in range(runs // at_once):
        servers = [chat_server_process(wait=False) for _ in range(at_once)]
        for server in servers:
            server.wait_for_log(r"listening on")
        for server in servers:
            server.process.send_signal(signal.SIGINT)
            server.process.send_signal(signal.SIGTERM)
        for server in servers:
            assert server.exit_status(TIMEOUT) == 0, server.log
            assert any(re.search(r"SIG(INT|TERM) received", line) for line in server.log), server.log
            assert not any("Traceback" in line for line in server.log), server.log


def test_environment_chooses_the_history_length(chat_server_process):
    server = chat_server_process(env={"CHAT_HISTORY": "1"})
    alice = LineClient(server.address)
    alice.join("alice")
    alice.say("one")
    alice.say("two")
    alice.expect(ChatMessage, msg="two")
    late = LineClient(server.address)
    assert late.join("late").history == 1
    alice.close()
    late.close()


def test_port_in_use_is_a_one_line_error_not_a_traceback(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(ROOT / "server.py"), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")},
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr


def test_restart_on_the_same_port_works_at_once(server_script, chat_server_process):
    first = server_script("--port", str(restartable_port()))
    client = LineClient(first.address)
    client.join("alice")  # a live connection leaves TIME_WAIT behind on the server side
    assert first.stop() == 0
    client.close()
    again = chat_server_process("--port", str(first.port), command=[sys.executable, str(ROOT / "server.py")])
    assert again.port == first.port
