"""The terminal client's settings: read from `$XDG_CONFIG_HOME/chat/client.toml` (by default
`~/.config/chat/client.toml`), changed one at a time by `/set KEY VALUE`, which writes the file.

Settings in, settings out: the UI applies them. A file that cannot be read or holds a mistake is
one sentence for the user and the defaults (or the valid keys) for the run, never a traceback.
The file is written whole, private (0600 in a 0700 directory): a notification command and a log
directory say something about whoever uses it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Settings:
    """Every setting, with its default."""

    #: strftime format of the time before each line.
    timestamp_format: str = "%H:%M"
    #: Words besides your name that make a line call for you (highlighted, counted, bell).
    highlight_words: list[str] = field(default_factory=list)
    #: Ring the terminal's bell (once per burst) for a line that calls for you.
    bell: bool = True
    #: A directory for one log file per buffer (ROOM.log, @NAME.log); "" for no logs.
    log_dir: str = ""
    #: Hide joins, parts and quits of people who have not spoken lately; fold reconnect noise.
    smart_filter: bool = True
    #: Each name in a colour of its own.
    nick_colors: bool = True
    #: Show the member list beside the messages (F2 toggles it).
    member_list: bool = True
    #: A command run with a line that calls for you (its text as the last argument), such as
    #: `notify-send chat`; "" for none.
    notify_command: str = ""


#: What each setting is, for /set alone and the file's comments.
DESCRIPTIONS = {
    "timestamp_format": "strftime format of each line's time (%H:%M:%S for seconds)",
    "highlight_words": "words besides your name that call for you, separated by commas",
    "bell": "ring the bell (once per burst) for a line that calls for you: on or off",
    "log_dir": "directory for one log file per buffer; empty: no logs",
    "smart_filter": "hide joins and parts of people who have not spoken lately: on or off",
    "nick_colors": "a colour per name: on or off",
    "member_list": "the member list beside the messages: on or off",
    "notify_command": "command run with each line that calls for you (desktop notifications); empty: none",
}

_TRUE = ("on", "true", "yes", "1")
_FALSE = ("off", "false", "no", "0")


def config_path(environ: dict[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/chat/client.toml`, or `~/.config/chat/client.toml`."""
    environ = dict(os.environ) if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "chat" / "client.toml"


def _kind(key: str) -> type:
    return type(getattr(Settings(), key))


def load(path: Path) -> tuple[Settings, str | None]:
    """The settings in `path` (the defaults if there is no such file), and a sentence about what
    was wrong with it, if anything: a key unknown or of the wrong kind is left out, the rest kept."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings(), None
    except (OSError, UnicodeDecodeError) as exc:
        return Settings(), f"the settings in {path} could not be read ({exc.__class__.__name__}); using the defaults"
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return Settings(), f"the settings in {path} are not valid TOML ({exc}); using the defaults"
    settings = Settings()
    wrong: list[str] = []
    for key, value in values.items():
        if key not in DESCRIPTIONS:
            wrong.append(f"{key} is not a setting")
        elif _kind(key) is list and isinstance(value, list) and all(isinstance(item, str) for item in value):
            setattr(settings, key, list(value))
        elif _kind(key) is not list and type(value) is _kind(key):
            setattr(settings, key, value)
        else:
            wrong.append(f"{key} should be {_kind_words(key)}")
    problem = f"in {path}: {'; '.join(wrong)} (left at the default)" if wrong else None
    return settings, problem


def _kind_words(key: str) -> str:
    return {bool: "true or false", list: "a list of strings", str: "a string"}.get(_kind(key), "another kind")


def change(settings: Settings, key: str, text: str) -> Settings | str:
    """`settings` with `key` set from what was typed after `/set KEY`; a sentence if that cannot be."""
    if key not in DESCRIPTIONS:
        return f"no setting {key}; /set alone lists them"
    text = text.strip()
    if text in ('""', "''"):
        text = ""
    kind = _kind(key)
    value: object
    if kind is bool:
        if text.lower() not in (*_TRUE, *_FALSE):
            return f"{key} is on or off"
        value = text.lower() in _TRUE
    elif kind is list:
        value = [word.strip() for word in text.split(",") if word.strip()]
    else:
        value = text
    changed = dataclasses.replace(settings)
    setattr(changed, key, value)
    return changed


def shown(settings: Settings, key: str) -> str:
    """A setting's value as /set would take it."""
    value = getattr(settings, key)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(value) or '""'
    return value or '""'


def listing(settings: Settings) -> list[str]:
    """One line per setting: `bell = on  (ring the bell ...)`."""
    return [f"{key} = {shown(settings, key)}  ({DESCRIPTIONS[key]})" for key in DESCRIPTIONS]


def to_toml(settings: Settings) -> str:
    """The file's text: every setting, each under its description."""
    lines = ["# chat client settings; /set KEY VALUE changes one and rewrites this file", ""]
    for key in DESCRIPTIONS:
        value = getattr(settings, key)
        if isinstance(value, bool):
            written = "true" if value else "false"
        elif isinstance(value, list):
            written = "[" + ", ".join(json.dumps(item, ensure_ascii=False) for item in value) + "]"
        else:
            written = json.dumps(value, ensure_ascii=False)  # a TOML basic string: the same escapes
        lines += [f"# {DESCRIPTIONS[key]}", f"{key} = {written}", ""]
    return "\n".join(lines)


def save(path: Path, settings: Settings) -> None:
    """Write the settings whole (a new file renamed over the old), private to the user: the file
    0600, its directory (chat's own) 0700."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    spare = path.with_name(path.name + ".new")
    descriptor = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(to_toml(settings))
    os.replace(spare, path)
