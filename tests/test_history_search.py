"""`search` over real sockets and a real SQLite file: what the asker may read and nothing else,
FTS5 phrases and prefixes, paging, refusals, retention, restarts, and an older file indexed
while the server answers."""

from __future__ import annotations

import contextlib
import json
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.server.config import ServerConfig
from chat.server.store import Record, SqliteStore
from chat.server.store.query import match_expression
from chat.testing import LineClient
from chat.wire.protocol import ChatMessage, ErrorReply, PrivateMessage, SearchResults, ServerPong, Welcome


def join(client: LineClient, room: str, name: str | None = None, **fields: object) -> Welcome:
    client.send({"type": "join", "room": room, **({"name": name} if name else {}), **fields})
    return client.expect(Welcome, room=room)


def say(client: LineClient, room: str, *texts: str) -> list[int]:
    for text in texts:
        client.send({"type": "message", "room": room, "msg": text})
    return [client.expect(ChatMessage, room=room, msg=text).id for text in texts]


def search(client: LineClient, text: str, **fields: object) -> tuple[SearchResults, list[dict[str, object]]]:
    client.send({"type": "search", "text": text, **fields})
    header = client.expect(SearchResults)
    return header, [client.next().model_dump(exclude_none=True) for _ in range(header.count)]


def found(client: LineClient, text: str, **fields: object) -> list[str]:
    return [str(line["msg"]) for line in search(client, text, **fields)[1]]


def refusal(client: LineClient, text: object, **fields: object) -> str:
    client.send({"type": "search", "text": text, **fields})
    return client.expect(ErrorReply).code


@pytest.fixture
def server(start_chat_server, tmp_path):
    return start_chat_server(ServerConfig(db=str(tmp_path / "chat.db")).without_limits())


def test_a_search_finds_lines_of_the_rooms_the_asker_is_in_and_its_own_private_lines(server, connect):
    alice, bob, carol = connect(server), connect(server), connect(server)
    join(alice, "dev", "alice")
    join(bob, "ops", "bob")
    join(carol, "dev", "carol")
    join(carol, "ops")
    say(alice, "dev", "release checklist for dev")
    say(bob, "ops", "release checklist for ops")
    alice.send({"type": "private", "to": "carol", "msg": "release checklist, privately"})
    alice.expect(PrivateMessage)
    bob.send({"type": "private", "to": "carol", "msg": "release checklist between bob and carol"})
    bob.expect(PrivateMessage)
    header, lines = search(alice, "release")
    assert (header.text, header.count, header.more) == ("release", 2, 0)
    assert [(line.get("room"), line["msg"]) for line in lines] == [
        (None, "release checklist, privately"),
        ("dev", "release checklist for dev"),
    ]  # newest first; the private line as it is kept, with its parties
    assert lines[0]["to"] == "carol"
    assert sorted(found(carol, "checklist")) == sorted([
        "release checklist for dev", "release checklist for ops",
        "release checklist, privately", "release checklist between bob and carol",
    ])  # fmt: skip
    assert found(bob, "dev") == []  # not a member of dev
    assert refusal(bob, "release", room="dev") == "not_in_room"


def test_phrases_prefixes_and_every_word_must_match(server, connect):
    alice = connect(server)
    join(alice, "dev", "alice")
    say(alice, "dev", "the release checklist is done", "checklist for the release", "releases are friday")
    assert found(alice, '"release checklist"') == ["the release checklist is done"]
    assert found(alice, "release checklist") == ["checklist for the release", "the release checklist is done"]
    assert found(alice, "releas*") == [
        "releases are friday",
        "checklist for the release",
        "the release checklist is done",
    ]
    assert found(alice, "friday release") == []  # "releases" is another word
    assert found(alice, 'release-checklist OR "unclosed') == []  # no operator, no syntax error: all words


def test_paging_back_in_a_room_with_before(server, connect):
    alice = connect(server)
    join(alice, "dev", "alice")
    ids = say(alice, "dev", *[f"deploy number {n}" for n in range(1, 8)])
    header, lines = search(alice, "deploy", room="dev", limit=3)
    assert (header.count, header.more) == (3, 4)
    assert [line["id"] for line in lines] == ids[:-4:-1]
    header, lines = search(alice, "deploy", room="dev", limit=3, before=lines[-1]["id"])
    assert (header.count, header.more) == (3, 1)
    assert [line["id"] for line in lines] == [ids[3], ids[2], ids[1]]


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("", {}),
        ("   ", {}),
        ("x" * 201, {}),
        ("?!", {}),  # no word to look for
        ("deploy", {"before": 5}),  # before only with a room
        ("deploy", {"limit": 0}),
        ("deploy", {"limit": 101}),
    ],
)
def test_a_search_that_cannot_be_made_gets_search_invalid(server, connect, text, fields):
    alice = connect(server)
    join(alice, "dev", "alice")
    assert refusal(alice, text, **fields) == "search_invalid"
    alice.send({"type": "ping"})
    alice.expect(ServerPong)  # still connected


def test_without_a_history_file_search_is_unavailable(chat_server, connect):
    alice = connect(chat_server)
    alice.join("alice")
    assert refusal(alice, "anything") == "search_unavailable"


def test_lines_that_retention_deleted_are_no_longer_found(start_chat_server, connect, tmp_path):
    server = start_chat_server(ServerConfig(db=str(tmp_path / "chat.db"), retention=10).without_limits())
    alice = connect(server)
    join(alice, "dev", "alice")
    say(alice, "dev", *[f"old line {n}" for n in range(600)])  # retention trims every 512 appends
    say(alice, "dev", "a new line")
    header, lines = search(alice, "line", room="dev", limit=100)
    assert header.count + header.more <= 10 + SqliteStore.TRIM_EVERY
    assert "old line 0" not in [line["msg"] for line in lines]
    with contextlib.closing(sqlite3.connect(tmp_path / "chat.db")) as db:
        indexed, kept = (
            db.execute("SELECT COUNT(*) FROM search").fetchone()[0],
            db.execute("SELECT COUNT(*) FROM lines").fetchone()[0],
        )
    assert indexed <= kept


def test_after_retention_trims_and_a_restart_the_index_holds_what_is_kept_and_what_comes(
    start_chat_server, connect, tmp_path
):
    config = ServerConfig(db=str(tmp_path / "chat.db"), retention=10).without_limits()
    first = start_chat_server(config)
    alice = connect(first)
    token = join(alice, "dev", "alice").token
    say(alice, "dev", *[f"trimmed line {n}" for n in range(600)])  # retention trims every 512 appends
    alice.close()
    first.stop()
    second = start_chat_server(config)
    again = connect(second)
    join(again, "dev", "alice", token=token)
    say(again, "dev", "said after the restart")
    header, lines = search(again, "line", room="dev", limit=100)
    assert "trimmed line 0" not in [line["msg"] for line in lines]
    assert header.count + header.more <= 10 + SqliteStore.TRIM_EVERY
    assert found(again, "after restart") == ["said after the restart"]
    with contextlib.closing(sqlite3.connect(tmp_path / "chat.db")) as db:
        kept = {row[0] for row in db.execute("SELECT key FROM lines")}
        indexed = {row[0] for row in db.execute("SELECT rowid FROM search")}
    assert indexed <= kept  # nothing trimmed is left in the index, before or after the restart


def test_the_index_survives_a_restart(start_chat_server, connect, tmp_path):
    config = ServerConfig(db=str(tmp_path / "chat.db"))
    first = start_chat_server(config)
    alice = connect(first)
    token = join(alice, "dev", "alice").token
    say(alice, "dev", "kept across the restart")
    alice.close()
    first.stop()
    second = start_chat_server(config)
    again = connect(second)
    join(again, "dev", "alice", token=token)
    assert found(again, "restart") == ["kept across the restart"]


OLD_LINE = (
    '{{"type":"message","room":"lobby","id":{n},"name":"old","msg":"word{n} common",'
    '"time":"2026-11-20T12:00:00.000Z"}}\n'
)


def test_an_older_history_file_is_indexed_while_the_server_answers(start_chat_server, connect, tmp_path):
    path = tmp_path / "old.db"
    store = SqliteStore(str(path), retention=200_000)
    lines = 100_000
    for first in range(1, lines + 1, 5000):
        store.append_all(
            "lobby",
            [Record(n, OLD_LINE.format(n=n).encode()) for n in range(first, first + 5000)],
        )
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:  # as the release before search left it
        db.executescript(
            "DROP TRIGGER lines_leave_search; DROP TABLE search; DROP TABLE search_marks; DROP TABLE cids;"
            "PRAGMA user_version = 5;"
        )
    server = start_chat_server(ServerConfig(db=str(path)))
    alice = connect(server)
    assert join(alice, "lobby", "alice").last_id == lines  # answered at once, however far the index is
    alice.send({"type": "ping"})
    alice.expect(ServerPong)
    for _ in range(lines // 1000):  # each search also indexes a little: it ends within these
        header, hits = search(alice, "word1")
        if header.count:
            break
    assert [line["id"] for line in hits] == [1]
    for _ in range(lines // 1000):  # until the whole file is indexed (the indexer and searches fill it)
        header, _ = search(alice, "common")
        if header.count + header.more == lines:
            break
    assert header.count + header.more == lines


def test_search_text_becomes_an_fts5_expression_with_no_operator_left():
    assert match_expression("release checklist") == '"release" "checklist"'
    assert match_expression('"release checklist" fri*') == '"release checklist" "fri"*'
    assert match_expression('a "b" OR NEAR(c) "unclosed') == '"a" "b" "OR" "NEAR(c)" "unclosed"'
    assert match_expression('say "hi""') == '"say" "hi"'
    assert match_expression("?! *") is None


@settings(max_examples=200)
@given(
    kind=st.sampled_from(["message", "action"]),
    room=st.text(min_size=1, max_size=20),
    name=st.text(min_size=1, max_size=20),
    msg=st.text(min_size=1, max_size=200),
)
def test_the_text_indexed_for_a_said_line_is_what_its_json_says(kind, room, name, msg):
    from chat.server.store.sqlite import _searchable
    from chat.wire.codec import encode_said

    line = encode_said(kind, room, 7, name, msg, "2026-12-07T00:00:00.000Z")
    assert _searchable(line) == json.loads(line)["msg"] == msg
    spaced = json.dumps(json.loads(line)).encode()  # another writer's spelling: parsed whole
    assert _searchable(spaced) == msg


def test_a_private_line_is_indexed_by_its_text():
    from datetime import UTC, datetime

    from chat.server.lines import Line
    from chat.server.store.sqlite import _searchable

    private = PrivateMessage(id=3, name="ann", to="bob", msg='say "msg":"no"', time=datetime.now(UTC))
    assert _searchable(Line.of(private).json) == 'say "msg":"no"'


def test_lines_nobody_wrote_are_not_indexed():
    from chat.server.store.sqlite import _searchable

    assert _searchable(b'{"type":"joined","room":"dev","name":"a\\"msg\\":\\"x","time":"t"}\n') is None
    assert _searchable(b'{"type":"topic","room":"dev","topic":"msg","id":1}\n') is None
    assert _searchable(b"\xff not json") is None
