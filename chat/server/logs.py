"""How the server's log lines look: text for a person at a terminal, or one JSON object per
line for a machine (journald, a log shipper), with `time`, `level`, `logger`, `message` and
whatever structured fields the call gave (`extra={"address": ..., "name_": ...}`).

Only formats: the command line calls configure() once, and reload may change the level.
Messages are the same sentences in both (names and rooms quoted as the text log quotes them).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

#: The formats --log-format takes.
FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PLAIN = (str, int, float, bool, type(None))
#: Attributes every LogRecord has: anything else on a record came from `extra=` and is a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a message's own newlines are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                # A field LogRecord reserves (`name`) is given as `name_` and written as `name`.
                entry.setdefault(key.removesuffix("_"), value if isinstance(value, _PLAIN) else str(value))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, form: str) -> None:
    """Send the server's log to stderr at `level`, as text or JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
