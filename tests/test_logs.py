"""--log-format json: every line the server logs is one JSON object a machine can read."""

from __future__ import annotations

import json
import logging
import sys

from chat.server.logs import JsonFormatter
from chat.testing import LineClient
from chat.wire.protocol import ChatMessage


def test_a_json_log_is_one_object_per_line_with_the_fields(chat_server_process):
    server = chat_server_process("--log-format", "json")
    alice = LineClient(server.address)
    alice.join("alice")
    alice.say("hi")
    alice.expect(ChatMessage, msg="hi")
    alice.close()
    server.wait_for_log(r"disconnected")
    assert server.stop() == 0
    entries = [json.loads(line) for line in server.log]  # every line parses
    assert entries and all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(entry["message"].startswith("listening on ") for entry in entries)
    connected = next(entry for entry in entries if entry["message"].endswith(" connected"))
    assert connected["level"] == "INFO" and connected["logger"] == "chat.server.tcp"
    assert connected["message"] == f"{connected['address']} connected"
    left = next(entry for entry in entries if entry["message"].endswith(" disconnected"))
    assert left["address"] == connected["address"] and left["reason"] == "disconnected"
    joined = next(entry for entry in entries if " joined " in entry["message"])
    assert (joined["address"], joined["room"], joined["name"]) == (connected["address"], "lobby", "alice")
    assert joined["message"] == f"{connected['address']} joined 'lobby' as 'alice'"  # quoted as in text


def test_text_stays_the_default(chat_server_process):
    server = chat_server_process()
    line = server.wait_for_log(r"listening on")
    assert not line.startswith("{") and " INFO chat: listening on " in line


def test_a_traceback_and_a_newline_stay_inside_one_line():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.getLogger("chat.test").makeRecord(
            "chat.test", logging.ERROR, __file__, 1, "it broke:\n%s", ("twice",), exc_info=sys.exc_info()
        )
    text = JsonFormatter().format(record)
    assert "\n" not in text
    entry = json.loads(text)
    assert entry["message"] == "it broke:\ntwice" and "ValueError: bad" in entry["exception"]
