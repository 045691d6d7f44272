"""The client's settings file: read, changed by /set, written back private; a bad file is a sentence."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from chat.client import settings
from chat.client.settings import Settings
from chat.testing import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent


def test_the_path_follows_xdg_config_home_or_the_home_directory():
    assert settings.config_path({"XDG_CONFIG_HOME": "/x"}) == Path("/x/chat/client.toml")
    assert settings.config_path({}).parts[-3:] == (".config", "chat", "client.toml")


def test_no_file_is_the_defaults_and_what_is_saved_reads_back_the_same(tmp_path):
    path = tmp_path / "config" / "chat" / "client.toml"
    assert settings.load(path) == (Settings(), None)
    chosen = Settings(timestamp_format="%H:%M:%S", highlight_words=["deploy", 'quo"te'], bell=False,
                      log_dir="/tmp/logs", notify_command="notify-send chat")
    settings.save(path, chosen)
    assert settings.load(path) == (chosen, None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_set_takes_words_as_a_person_types_them():
    changed = settings.change(Settings(), "bell", "off")
    assert isinstance(changed, Settings) and changed.bell is False
    changed = settings.change(Settings(), "highlight_words", "deploy, release ,")
    assert isinstance(changed, Settings) and changed.highlight_words == ["deploy", "release"]
    changed = settings.change(Settings(log_dir="/x"), "log_dir", '""')
    assert isinstance(changed, Settings) and changed.log_dir == ""
    assert settings.change(Settings(), "bell", "loud") == "bell is on or off"
    assert "no setting colour" in str(settings.change(Settings(), "colour", "red"))
    assert any(line.startswith("timestamp_format = %H:%M") for line in settings.listing(Settings()))


def test_a_bad_file_is_one_sentence_and_the_good_keys_are_kept(tmp_path):
    path = tmp_path / "client.toml"
    path.write_text('bell = "loud"\ncolour = 3\ntimestamp_format = "%H:%M:%S"\n')
    chosen, problem = settings.load(path)
    assert chosen == Settings(timestamp_format="%H:%M:%S")
    assert problem is not None and "bell should be true or false" in problem and "colour is not a setting" in problem
    path.write_text("this is [not toml")
    chosen, problem = settings.load(path)
    assert chosen == Settings() and problem is not None and "not valid TOML" in problem and "\n" not in problem


def test_the_client_says_so_in_one_sentence_and_starts_anyway(tmp_path):
    config = tmp_path / "config"
    (config / "chat").mkdir(parents=True)
    (config / "chat" / "client.toml").write_text("this is [not toml")
    result = subprocess.run(
        [sys.executable, str(ROOT / "client.py"), "--port", "1", "--name", "frank"],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        env={"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(config), "XDG_STATE_HOME": str(tmp_path / "state"),
             "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    first, second = result.stderr.strip().splitlines()
    assert "not valid TOML" in first and "using the defaults" in first
    assert second.startswith("cannot connect")


def test_everything_the_client_keeps_is_its_owners_alone(tmp_path):
    from datetime import UTC, datetime

    from chat.client import cursors
    from chat.client.ignored import Ignored
    from chat.client.inputline import remembered_history
    from chat.client.logs import BufferLogs

    state = tmp_path / "state" / "chat"
    cursors.save(state / "client-cursors.json", "h", 1, "alice", cursors.Place({"lobby": 1}, None, "secret"))
    remembered_history(state / "client-history")
    Ignored(state / "client-ignored.json").hide("troll")
    logs = BufferLogs(tmp_path / "logs")
    logs.write("@bob", datetime.now(UTC), [("", "[bob → alice] psst")])
    logs.close()
    settings.save(tmp_path / "config" / "chat" / "client.toml", Settings())
    for directory in (state, tmp_path / "logs", tmp_path / "config" / "chat"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
        for path in directory.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
