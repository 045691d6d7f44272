"""The client's memory of its rooms and the last id it saw in each, between runs."""

from __future__ import annotations

import json

from chat.client import cursors
from chat.client.cursors import Place


def test_saved_place_is_loaded_per_server_and_name(tmp_path):
    path = tmp_path / "state" / "cursors.json"
    cursors.save(path, "127.0.0.1", 7777, "Alice", Place({"lobby": 42, "dev": 7}, private=3))
    cursors.save(path, "127.0.0.1", 7778, "alice", Place({"lobby": 7}))
    assert cursors.load(path, "127.0.0.1", 7777, "alice") == Place({"lobby": 42, "dev": 7}, private=3)
    assert list(cursors.load(path, "127.0.0.1", 7777, "alice").rooms) == ["lobby", "dev"]  # join order kept
    assert cursors.load(path, "127.0.0.1", 7778, "alice") == Place({"lobby": 7})
    assert cursors.load(path, "127.0.0.1", 7777, "bob") is None


def test_a_cursor_saved_by_the_first_release_is_the_lobbys(tmp_path):
    path = tmp_path / "cursors.json"
    path.write_text(json.dumps({"h:1/a": 42}))
    assert cursors.load(path, "h", 1, "a") == Place({"lobby": 42})


def test_missing_or_garbled_file_means_no_place(tmp_path):
    path = tmp_path / "cursors.json"
    assert cursors.load(path, "h", 1, "a") is None
    path.write_text("{not json")
    assert cursors.load(path, "h", 1, "a") is None
    cursors.save(path, "h", 1, "a", Place({"lobby": 3}))  # and saving over it works
    assert cursors.load(path, "h", 1, "a") == Place({"lobby": 3})


def test_the_token_is_remembered_in_a_file_only_its_owner_can_read(tmp_path):
    path = tmp_path / "state" / "client-cursors.json"
    cursors.save(path, "h", 1, "alice", cursors.Place({"lobby": 3}, 2, "tok"))
    assert cursors.load(path, "h", 1, "alice") == cursors.Place({"lobby": 3}, 2, "tok")
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_place_is_found_under_every_name_used_in_the_run(tmp_path):
    path = tmp_path / "state" / "client-cursors.json"
    cursors.save(path, "h", 1, "alicia", Place({"lobby": 9}, 4, "tok"), aliases=["alice"])
    assert cursors.load(path, "h", 1, "alice") == cursors.load(path, "h", 1, "alicia") == Place({"lobby": 9}, 4, "tok")
