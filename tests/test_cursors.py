"""The client's memory of the last id it saw, between runs."""

from __future__ import annotations

from chat.client import cursors


def test_saved_cursor_is_loaded_per_server_and_name(tmp_path):
    path = tmp_path / "state" / "cursors.json"
    cursors.save(path, "127.0.0.1", 7777, "Alice", 42)
    cursors.save(path, "127.0.0.1", 7778, "alice", 7)
    assert cursors.load(path, "127.0.0.1", 7777, "alice") == 42
    assert cursors.load(path, "127.0.0.1", 7778, "alice") == 7
    assert cursors.load(path, "127.0.0.1", 7777, "bob") is None


def test_missing_or_garbled_file_means_no_cursor(tmp_path):
    path = tmp_path / "cursors.json"
    assert cursors.load(path, "h", 1, "a") is None
    path.write_text("{not json")
    assert cursors.load(path, "h", 1, "a") is None
    cursors.save(path, "h", 1, "a", 3)  # and saving over it works
    assert cursors.load(path, "h", 1, "a") == 3
