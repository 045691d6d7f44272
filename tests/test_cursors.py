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


def test_every_name_an_identity_used_leads_to_its_newest_place(tmp_path):
    path = tmp_path / "cursors.json"
    # Run 1: started as alice, renamed to alicia.
    cursors.save(path, "h", 1, "alicia", Place({"lobby": 10}, token="t1"), aliases=["alice"])
    # Run 2: started as alicia, renamed to ali; alice is not among this run's names.
    cursors.save(path, "h", 1, "ali", Place({"lobby": 20}, token="t1"), aliases=["alicia"])
    for name in ("alice", "alicia", "ali"):
        assert cursors.load(path, "h", 1, name) == Place({"lobby": 20}, token="t1")
    assert "t1" not in json.dumps(json.loads(path.read_text())["names"])  # keyed by a digest, not the token


def test_a_name_taken_over_by_another_identity_leads_to_that_one(tmp_path):
    path = tmp_path / "cursors.json"
    cursors.save(path, "h", 1, "alice", Place({"lobby": 5}, token="old"))
    cursors.save(path, "h", 1, "alice", Place({"lobby": 9}, token="registered"))  # a new token after /register
    assert cursors.load(path, "h", 1, "alice") == Place({"lobby": 9}, token="registered")
    assert len(json.loads(path.read_text())["places"]) == 1  # the old token's place is forgotten


def test_a_place_saved_by_the_release_before_identities_is_still_found(tmp_path):
    path = tmp_path / "cursors.json"
    path.write_text(json.dumps({"h:1/alice": {"rooms": [["dev", 3]], "private": 1, "token": "t"}}))
    assert cursors.load(path, "h", 1, "alice") == Place({"dev": 3}, private=1, token="t")
    cursors.save(path, "h", 1, "alice", Place({"dev": 4}, token="t"))
    assert cursors.load(path, "h", 1, "alice") == Place({"dev": 4}, token="t")
    assert "h:1/alice" not in json.loads(path.read_text())


def test_the_open_private_conversations_are_remembered_in_order(tmp_path):
    path = tmp_path / "cursors.json"
    cursors.save(path, "h", 1, "alice", Place({"lobby": 3}, 7, "token", ["Bob", "carol"]))
    assert cursors.load(path, "h", 1, "alice") == Place({"lobby": 3}, 7, "token", ["Bob", "carol"])
