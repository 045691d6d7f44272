"""The configuration file: TOML with one key per row of the option table, read into the values
the command line takes as its defaults, and any configuration written back as such a file.

Reads the one file it is given and nothing else (cli.py decides what wins: flags, then the
environment, then this file, then the defaults); every error names the key and the file, and
is the user's to fix. Writing is generated from the table, so no example file is kept by hand.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
from typing import Any

from chat.errors import ChatError
from chat.server.config import Option, ServerConfig, options


class ConfigFileError(ChatError):
    """The user's configuration file cannot be used: unreadable, not TOML, an unknown key or a
    bad value. The message is one line naming the file (and the key)."""


def read(path: str) -> dict[str, Any]:
    """{ServerConfig field: value} for every key of the TOML file at `path`, each value parsed
    and checked as its flag would be."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path}: not a TOML file: {exc}") from exc
    table = {name: (option, default) for name, option, default in options()}
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = key.replace("-", "_")
        if name not in table:
            near = difflib.get_close_matches(name, table, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigFileError(f"{path}: unknown key {key!r}{hint}")
        if name in values:
            raise ConfigFileError(f"{path}: key {key!r} is given twice (with - and with _)")
        option, default = table[name]
        try:
            values[name] = _value(option, default, raw)
        except (ValueError, TypeError):
            choices = f" (one of {', '.join(option.choices)})" if option.choices else ""
            raise ConfigFileError(f"{path}: {key} = {_toml(raw)} is not a valid {option.flag}{choices}") from None
    return values


def _value(option: Option, default: Any, raw: Any) -> Any:
    """`raw` as read from TOML, parsed as the flag `option` would parse it; ValueError if not."""
    if isinstance(default, tuple):  # repeatable: a list of strings, or one comma-separated string
        items = raw if isinstance(raw, list) else [raw]
        if not all(isinstance(item, str) for item in items):
            raise ValueError(raw)
        return tuple(part for item in items for part in option.parse(item))
    if isinstance(raw, (dict, list, tuple)) or (isinstance(raw, bool) and not isinstance(default, bool)):
        raise ValueError(raw)
    if isinstance(default, bool) and not isinstance(raw, (bool, str)):
        raise ValueError(raw)
    value = option.parse(str(raw).lower() if isinstance(raw, bool) else str(raw))
    if option.choices and value not in option.choices:
        raise ValueError(raw)
    return value


#: What a user-info part of a URL looks like: masked when a configuration is printed.
_SECRET = re.compile(r"(?<=://)[^/@]*@")


def dump(config: ServerConfig, header: str = "") -> str:
    """`config` as a TOML file that `read` takes back: every option, its help as a comment, and
    an unset one commented out. A password in a URL is masked (the file is for reading)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    if lines:
        lines.append("")
    for field in dataclasses.fields(ServerConfig):
        option: Option = field.metadata["option"]
        value = getattr(config, field.name)
        lines.append(f"# {option.help} ({option.flag}, {option.env})")
        if value is None:
            lines.append(f"# {field.name} =")
        else:
            text = _toml(value)
            lines.append(f"{field.name} = {_SECRET.sub('***@', text) if isinstance(value, str) else text}")
        lines.append("")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    """One TOML value (JSON's string escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value == math.inf else repr(value))
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)


#: The configuration the shipped unit and image run with (deploy/chat-server.toml): the defaults,
#: with the history in the state directory systemd and the image provide, and metrics on.
SERVICE = ServerConfig(db="/var/lib/chat/chat.db", metrics_port=9477)
_SERVICE_HEADER = """\
/etc/chat/chat-server.toml: the chat server's configuration, read by deploy/chat-server.service
and deploy/Containerfile (CHAT_CONFIG). Every option is here with its help, its flag and its
environment variable; flags and the environment win over this file. Check a change with
`chat-server --check-config`, apply it with `systemctl reload chat-server` (SIGHUP).
Generated by chat.server.config_file.service_file() from the option table: do not edit the
copy in the repository by hand (a test holds it to the table)."""


def service_file() -> str:
    """deploy/chat-server.toml, as the option table makes it."""
    return dump(SERVICE, _SERVICE_HEADER)
