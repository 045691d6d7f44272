"""The configuration file: every option a key, precedence flags > environment > file > defaults,
one line and status 2 for a key or value it cannot take, and --print-config that reads back."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chat.cli import server_config
from chat.server import config_file
from chat.server.config import ServerConfig, options
from chat.testing import TIMEOUT, LineClient
from chat.wire.protocol import ChatMessage, Welcome

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_chat_environment(monkeypatch):
    """The options' environment variables unset, so that only what a test sets counts."""
    for _, option, _ in options():
        monkeypatch.delenv(option.env, raising=False)
    monkeypatch.delenv("CHAT_CONFIG", raising=False)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_every_option_is_a_key_with_dashes_or_underscores(tmp_path, no_chat_environment):
    path = write(tmp_path / "chat.toml", 'max-backlog = 1024\nidle_timeout = 7.5\nadmin = ["alice", "bob"]\n'
                 'require-account = true\nmax_age = 60\nlog-level = "DEBUG"\n')
    config, _ = server_config(["--config", path])
    assert (config.max_backlog, config.idle_timeout, config.admin) == (1024, 7.5, ("alice", "bob"))
    assert (config.require_account, config.max_age, config.log_level) == (True, 60.0, "DEBUG")


def test_flags_win_over_the_environment_which_wins_over_the_file(tmp_path, monkeypatch, no_chat_environment):
    path = write(tmp_path / "chat.toml", "history = 10\nretention = 20\nreplay_limit = 30\n")
    monkeypatch.setenv("CHAT_RETENTION", "21")
    monkeypatch.setenv("CHAT_HISTORY", "11")
    config, _ = server_config(["--config", path, "--history", "12"])
    assert (config.history, config.retention, config.replay_limit) == (12, 21, 30)
    assert config.max_line == ServerConfig().max_line  # neither: the default


def test_the_environment_names_the_file(tmp_path, monkeypatch, no_chat_environment):
    monkeypatch.setenv("CHAT_CONFIG", write(tmp_path / "chat.toml", "history = 3\n"))
    assert server_config([])[0].history == 3


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("max_backlogg = 5\n", "unknown key 'max_backlogg' (did you mean max_backlog?)"),
        ("port = \"seven\"\n", "port = \"seven\" is not a valid --port"),
        ("port = 7.5\n", "port = 7.5 is not a valid --port"),
        ("history = true\n", "history = true is not a valid --history"),
        ('log_level = "LOUD"\n', "is not a valid --log-level (one of DEBUG, INFO, WARNING, ERROR)"),
        ("[tls]\ncert = 1\n", "unknown key 'tls'"),
        ("port = 1\nport-x = 2\n", "unknown key 'port-x'"),
        ("max-line = 1\nmax_line = 2\n", "given twice"),
        ("port = \n", "not a TOML file"),
    ],
)
def test_a_bad_file_stops_the_server_with_one_line_naming_key_and_file(tmp_path, text, says):
    path = write(tmp_path / "bad.toml", text)
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--config", path],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and path in result.stderr and says in result.stderr, result.stderr


def test_a_missing_file_is_one_line_too(tmp_path, no_chat_environment, capsys):
    with pytest.raises(SystemExit) as stopped:
        server_config(["--config", str(tmp_path / "nowhere.toml")])
    assert stopped.value.code == 2
    assert "nowhere.toml: cannot read" in capsys.readouterr().err


def test_print_config_reads_back_as_the_same_configuration(tmp_path, no_chat_environment):
    given = ["--history", "7", "--admin", "alice", "--admin", "bob", "--max-age", "3600", "--require-account",
             "--tls-cert", "/etc/chat/cert.pem", "--db", str(tmp_path / "h.db")]  # fmt: skip
    config, _ = server_config(given)
    printed = write(tmp_path / "printed.toml", config_file.dump(config))
    assert server_config(["--config", printed])[0] == config


def test_print_config_masks_a_password_in_the_redis_url(no_chat_environment):
    config = ServerConfig(redis="redis://:hunter2@cache:6379/0")
    printed = config_file.dump(config)
    assert "hunter2" not in printed and 'redis = "redis://***@cache:6379/0"' in printed


def test_print_config_documents_every_option_and_comments_out_the_unset(no_chat_environment):
    printed = config_file.dump(ServerConfig())
    for name, option, _ in options():
        assert option.help in printed
        assert f"\n{name} = " in printed or f"\n# {name} =" in printed
    assert "\n# redis =\n" in printed


def test_print_config_is_the_command_line_s_too(tmp_path):
    path = write(tmp_path / "chat.toml", "history = 9\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--config", path, "--print-config", "--port", "7000"],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "\nhistory = 9\n" in result.stdout and "\nport = 7000\n" in result.stdout
    assert result.stderr == ""  # nothing started, nothing logged


def test_a_server_started_from_a_file_serves_with_its_options(chat_server_process, tmp_path):
    path = write(tmp_path / "chat.toml", 'history = 1\nhost = "127.0.0.1"\n')
    server = chat_server_process("--config", path)
    alice = LineClient(server.address)
    alice.join("alice")
    alice.say("one")
    alice.say("two")
    alice.expect(ChatMessage, msg="two")
    late = LineClient(server.address)
    late.send({"type": "join", "name": "late"})
    assert late.expect(Welcome).history == 1
    alice.close()
    late.close()


def test_the_option_table_has_a_key_for_every_field():
    assert [name for name, _, _ in options()] == [field.name for field in dataclasses.fields(ServerConfig)]


def test_strings_with_quotes_backslashes_and_unicode_read_back(tmp_path, no_chat_environment):
    config = ServerConfig(tls_cert='/etc/chat/"odd" \\ name é.pem', admin=("zoë", 'a"b'), max_age=0.5)
    printed = write(tmp_path / "printed.toml", config_file.dump(config))
    assert server_config(["--config", printed])[0] == config
