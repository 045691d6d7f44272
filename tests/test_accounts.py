"""Accounts own their names: registration, login, tokens, taking a name back, and the throttles."""

from __future__ import annotations

import logging

import pytest

from chat.server.config import ServerConfig
from chat.server.store import PRIVATE_LOG, Record, SqliteStore
from chat.testing import LineClient
from chat.wire.codec import encode
from chat.wire.protocol import (
    ChatMessage,
    ErrorReply,
    Left,
    PrivateMessage,
    SessionToken,
    Users,
    Welcome,
    utc_now,
)

PASSWORD = "correct horse battery"


def join(client: LineClient, **fields: object) -> Welcome | ErrorReply:
    client.send({"type": "join", **fields})
    reply = client.next()
    while not isinstance(reply, Welcome | ErrorReply):
        reply = client.next()
    return reply


def registered(connect, name: str = "alice") -> tuple[LineClient, str]:
    """A connection joined as `name`, which it has registered; and the token it got."""
    client = connect()
    client.join(name)
    client.send({"type": "register", "password": PASSWORD})
    return client, client.expect(SessionToken).token


def test_a_registered_name_is_refused_to_guests_and_taken_with_its_password(connect):
    alice, _ = registered(connect)
    alice.send({"type": "leave"})
    alice.expect_closed()
    guest = connect()
    assert join(guest, name="alice").code == "name_registered"
    assert join(guest, name="ALICE").code == "name_registered"  # the name and its look-alikes
    again = connect()
    welcome = join(again, name="alice", password=PASSWORD)
    assert isinstance(welcome, Welcome) and welcome.account is True and welcome.token


def test_a_wrong_password_and_an_unknown_name_get_the_same_answer(connect):
    registered(connect)
    wrong, unknown = connect(), connect()
    assert join(wrong, name="alice", password="not the password").code == "auth_failed"
    assert join(unknown, name="nobody", password="not the password").code == "auth_failed"
    assert join(wrong, name="bob").name == "bob"  # the connection stays usable


def test_a_token_resumes_without_the_password_beside_the_accounts_other_session(connect):
    first, token = registered(connect)  # stays connected: another device of the same account
    watcher = connect()
    watcher.join("watcher")
    second = connect()
    welcome = join(second, name="alice", token=token)
    assert isinstance(welcome, Welcome) and welcome.name == "alice"
    second.say("from the second device")
    assert first.expect(ChatMessage, msg="from the second device").name == "alice"
    assert not [m for m in watcher.seen if isinstance(m, Left)]
    assert not [m for m in first.seen if isinstance(m, ErrorReply)]


def test_a_guest_token_takes_a_guest_name_back(connect):
    first = connect()
    token = first.join("wanderer").token
    second = connect()
    assert join(second, name="wanderer", token=token).name == "wanderer"
    first.expect_closed()
    stranger = connect()
    assert join(stranger, name="wanderer").code == "name_taken"


def test_a_changed_password_revokes_the_old_tokens(connect):
    alice, old_token = registered(connect)
    alice.send({"type": "password", "old": PASSWORD, "new": "a new passphrase"})
    new_token = alice.expect(SessionToken).token
    alice.send({"type": "leave"})
    alice.expect_closed()
    assert join(connect(), name="alice", token=old_token).code == "auth_failed"
    assert join(connect(), name="alice", password=PASSWORD).code == "auth_failed"
    assert join(connect(), name="alice", token=new_token).name == "alice"


def test_only_the_account_may_rename_to_its_name(connect):
    alice, _ = registered(connect)
    alice.send({"type": "nick", "name": "alicia"})
    bob = connect()
    bob.join("bob")
    bob.send({"type": "nick", "name": "alice"})
    assert bob.expect(ErrorReply).code == "name_registered"
    alice.send({"type": "nick", "name": "alice"})
    alice.send({"type": "who"})
    assert "alice" in alice.expect(Users).users


def test_a_server_that_requires_accounts_refuses_guests(start_chat_server, connect):
    server = start_chat_server(ServerConfig(require_account=True))
    assert join(connect(server), name="guest").code == "account_required"


def test_failed_logins_are_throttled(connect):
    registered(connect)
    answers = [join(connect(), name="alice", password=f"guess {i}").detail for i in range(8)]
    assert any("too many" in detail for detail in answers)


def test_passwords_never_reach_the_log(connect, caplog):
    caplog.set_level(logging.DEBUG, logger="chat")
    registered(connect)
    join(connect(), name="alice", password="a wrong guess")
    assert PASSWORD not in caplog.text and "a wrong guess" not in caplog.text


@pytest.mark.parametrize("password", ["short", "x" * 1025])
def test_a_password_must_be_8_to_1024_characters(connect, password):
    alice = connect()
    alice.join("alice")
    alice.send({"type": "register", "password": password})
    assert alice.expect(ErrorReply).code == "invalid_field"


def test_private_lines_of_an_older_release_wait_for_the_account_of_that_name(start_chat_server, connect, tmp_path):
    path = str(tmp_path / "chat.db")
    store = SqliteStore(path)
    old = PrivateMessage(id=1, name="bob", to="alice", msg="from before accounts", time=utc_now())
    store.append(PRIVATE_LOG, Record(1, encode(old), "bob", "alice"))
    store.close()
    server = start_chat_server(ServerConfig(db=path))
    guest = connect(server)
    guest.send({"type": "join", "name": "alice", "private_since": 0})
    guest.expect(Welcome)
    guest.send({"type": "register", "password": PASSWORD})
    guest.expect(SessionToken)
    guest.say("nothing private came before this")
    guest.expect(ChatMessage)
    assert not [m for m in guest.seen if isinstance(m, PrivateMessage)]  # not to a guest, nor on registering
    guest.send({"type": "leave"})
    guest.expect_closed()
    account = connect(server)
    account.send({"type": "join", "name": "alice", "password": PASSWORD, "private_since": 0})
    assert account.expect(PrivateMessage).msg == "from before accounts"


def test_an_account_gets_its_private_messages_on_any_connection_and_nobody_else_does(connect):
    alice, _ = registered(connect)
    bob = connect()
    bob.join("bob")
    bob.send({"type": "private", "to": "alice", "msg": "only for alice"})
    alice.expect(PrivateMessage)
    alice.send({"type": "nick", "name": "alicia"})
    squatter = connect()
    squatter.send({"type": "join", "name": "alice", "private_since": 0})
    assert squatter.expect(ErrorReply).code == "name_registered"
    elsewhere = connect()
    elsewhere.send({"type": "join", "name": "alice", "password": PASSWORD, "private_since": 0})
    assert elsewhere.expect(PrivateMessage).msg == "only for alice"
