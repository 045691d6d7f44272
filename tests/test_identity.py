"""Identity over the wire: one name key for live names, accounts and reserved names; the operator
reservation; several sessions of one account; sanctions that hold on identity and address."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from chat.errors import Refused
from chat.server.accounts import Accounts
from chat.server.config import ServerConfig
from chat.server.store import MemoryStore
from chat.testing import TIMEOUT, LineClient
from chat.wire.protocol import (
    ChatMessage,
    ErrorReply,
    Joined,
    Left,
    Moderation,
    PrivateMessage,
    ReadMarker,
    Renamed,
    RoomList,
    SessionToken,
    Welcome,
)

PASSWORD = "correct horse battery"


def join(client: LineClient, **fields: object) -> Welcome | ErrorReply:
    client.send({"type": "join", **fields})
    reply = client.next()
    while not isinstance(reply, Welcome | ErrorReply):
        reply = client.next()
    return reply


def registered(connect, name: str = "alice", server=None) -> tuple[LineClient, str]:
    client = connect(server) if server is not None else connect()
    assert isinstance(join(client, name=name), Welcome)
    client.send({"type": "register", "password": PASSWORD})
    return client, client.expect(SessionToken).token


@pytest.mark.parametrize(
    ("live", "look_alike"), [("mallory", "MaIIory"), ("michael", "michaeI"), ("root", "r\u043e\u043et")]
)
def test_a_look_alike_of_a_live_name_is_taken(connect, live, look_alike):
    connect().join(live)
    assert join(connect(), name=look_alike).code == "name_taken"
    other = connect()
    other.join("somebody")
    other.send({"type": "nick", "name": look_alike})
    assert other.expect(ErrorReply).code == "name_taken"


def test_a_look_alike_of_an_offline_account_is_registered_and_cannot_be_registered_again(connect):
    alice, _ = registered(connect)
    alice.send({"type": "leave"})
    alice.expect_closed()
    assert join(connect(), name="aIice").code == "name_registered"
    assert join(connect(), name="a1ice").code == "name_registered"
    assert isinstance(join(connect(), name="alice", password=PASSWORD), Welcome)


def test_an_operator_name_without_its_account_is_reserved_with_one_warning(start_chat_server, connect, caplog):
    caplog.set_level("WARNING", logger="chat")
    server = start_chat_server(ServerConfig(admin=("root",)))
    warnings = [r for r in caplog.records if "chat-admin accounts add root" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    for squat in ("root", "R00T", "r\u043e\u043et"):
        assert join(connect(server), name=squat).code == "name_reserved"
        assert join(connect(server), name=squat, password=PASSWORD).code == "name_reserved"
    guest = connect(server)
    guest.join("stranger")
    guest.send({"type": "nick", "name": "root"})
    assert guest.expect(ErrorReply).code == "name_reserved"


def test_chat_admin_creates_the_operator_account_while_the_server_runs(
    start_chat_server, connect, tmp_path, monkeypatch
):
    from chat.admin import main as chat_admin

    db = str(tmp_path / "chat.db")
    server = start_chat_server(ServerConfig(db=db, admin=("root",)))
    monkeypatch.setenv("ROOT_PASSWORD", PASSWORD)
    assert chat_admin(["--db", db, "accounts", "add", "root", "--password-env", "ROOT_PASSWORD"]) == 0
    root = connect(server)
    welcome = join(root, name="root", password=PASSWORD)
    assert isinstance(welcome, Welcome) and welcome.account
    troll = connect(server)
    token = troll.join("troll").token
    root.send({"type": "server_ban", "name": "troll"})
    troll.expect_closed()
    assert join(connect(server), name="troll", token=token).code == "banned"


def enter(client: LineClient, room: str) -> Welcome | ErrorReply:
    client.send({"type": "join", "room": room})
    while True:
        reply = client.next()
        if isinstance(reply, Welcome | ErrorReply) and reply.room == room:
            return reply


def test_two_devices_of_one_account_share_rooms_lines_and_private_lines(connect):
    laptop, token = registered(connect)
    assert isinstance(enter(laptop, "dev"), Welcome)
    bob = connect()
    bob.join("bob")
    enter(bob, "dev")
    phone = connect()
    welcome = join(phone, name="alice", token=token)
    assert isinstance(welcome, Welcome) and welcome.name == "alice"
    assert phone.expect(Welcome, room="dev").users == ["alice", "bob"]  # in the account's rooms at once
    bob.send({"type": "message", "room": "dev", "msg": "hi alice"})
    laptop.expect(ChatMessage, msg="hi alice")
    phone.expect(ChatMessage, msg="hi alice")
    laptop.send({"type": "message", "room": "dev", "msg": "said on the laptop"})
    assert phone.expect(ChatMessage, msg="said on the laptop").name == "alice"
    bob.send({"type": "private", "to": "alice", "msg": "psst"})
    laptop.expect(PrivateMessage, msg="psst")
    phone.expect(PrivateMessage, msg="psst")
    phone.send({"type": "private", "to": "bob", "msg": "from the phone"})
    assert laptop.expect(PrivateMessage, msg="from the phone").to == "bob"
    bob.expect(PrivateMessage, msg="from the phone")
    bob.send({"type": "rooms"})
    assert {info.room: info.users for info in bob.expect(RoomList).rooms}["dev"] == 2  # alice once, and bob
    phone.send({"type": "leave"})
    phone.expect_closed()
    bob.send({"type": "message", "room": "dev", "msg": "still there?"})
    laptop.expect(ChatMessage, msg="still there?")
    assert not [m for m in bob.seen if isinstance(m, Joined | Left) and m.name == "alice"]


def test_a_third_device_past_max_sessions_closes_the_oldest(start_chat_server, connect):
    server = start_chat_server(ServerConfig(max_sessions=2))
    first, token = registered(connect, server=server)
    second = connect(server)
    assert isinstance(join(second, name="alice", token=token), Welcome)
    third = connect(server)
    assert isinstance(join(third, name="alice", password=PASSWORD), Welcome)
    assert "session_replaced" in [m.code for m in first.expect_closed() if isinstance(m, ErrorReply)]
    second.say("second stays")
    third.expect(ChatMessage, msg="second stays")


def test_a_new_device_is_told_the_accounts_rooms_and_read_markers(connect):
    laptop, token = registered(connect)
    enter(laptop, "dev")
    laptop.send({"type": "message", "room": "dev", "msg": "one"})
    said = laptop.expect(ChatMessage, msg="one")
    enter(laptop, "ops")
    laptop.send({"type": "part", "room": "ops"})
    laptop.expect(Left, room="ops")
    phone = connect()
    welcome = join(phone, name="alice", token=token)
    assert welcome.read == 0
    phone.expect(Welcome, room="dev")
    phone.send({"type": "read", "room": "dev", "id": said.id})
    assert laptop.expect(ReadMarker) == ReadMarker(room="dev", id=said.id)
    phone.send({"type": "read", "room": "dev", "id": 0})  # only forward: nothing happens
    phone.send({"type": "read", "room": "dev", "id": 10**9})  # never past the room's newest line
    laptop.send({"type": "leave"})
    phone.send({"type": "leave"})
    laptop.expect_closed()
    phone.expect_closed()
    tablet = connect()
    welcome = join(tablet, name="alice", password=PASSWORD)
    assert welcome.rooms == ["lobby", "dev"]
    tablet.send({"type": "join", "room": "dev"})
    assert tablet.expect(Welcome, room="dev").read == said.id
    assert not [m for m in phone.seen if isinstance(m, ReadMarker)]


def test_an_account_keeps_its_name_and_a_guest_keeps_nick(connect):
    alice, _ = registered(connect)
    shouting = connect()
    assert join(shouting, name="ALICE", password=PASSWORD).name == "alice"  # its account name, as registered
    alice.send({"type": "nick", "name": "alicia"})
    assert alice.expect(ErrorReply).code == "nick_locked"
    guest = connect()
    guest.join("wanderer")
    guest.send({"type": "nick", "name": "wandering"})
    guest.expect(Renamed, new="wandering")


def test_a_password_change_ends_every_other_session_and_token(connect):
    owner, token = registered(connect)
    thief = connect()
    assert isinstance(join(thief, name="alice", token=token), Welcome)
    owner.send({"type": "password", "old": PASSWORD, "new": "a brand new passphrase"})
    owner.expect(SessionToken)
    assert "session_replaced" in [m.code for m in thief.expect_closed() if isinstance(m, ErrorReply)]
    assert join(connect(), name="alice", token=token).code == "auth_failed"


def test_chat_admin_passwd_and_delete_end_the_sessions_of_a_running_server(
    start_chat_server, connect, tmp_path, monkeypatch, capsys
):
    from chat.admin import main as chat_admin

    db = str(tmp_path / "chat.db")
    server = start_chat_server(ServerConfig(db=db))
    alice, token = registered(connect, server=server)
    monkeypatch.setenv("NEW_PASSWORD", "the operator chose this")
    assert chat_admin(["--db", db, "accounts", "passwd", "aIice", "--password-env", "NEW_PASSWORD"]) == 0
    assert "session_replaced" in [m.code for m in alice.expect_closed() if isinstance(m, ErrorReply)]
    assert join(connect(server), name="alice", token=token).code == "auth_failed"
    again = connect(server)
    assert isinstance(join(again, name="alice", password="the operator chose this"), Welcome)
    assert chat_admin(["--db", db, "accounts", "list"]) == 0
    assert "alice\t" in capsys.readouterr().out
    assert chat_admin(["--db", db, "accounts", "delete", "alice"]) == 0
    again.expect_closed()
    assert isinstance(join(connect(server), name="alice"), Welcome)  # a free name again


def test_the_room_list_comes_in_pages_of_100(start_chat_server, connect):
    server = start_chat_server(dataclasses.replace(ServerConfig().without_limits(), max_rooms_per_user=0))
    maker = connect(server)
    maker.join("maker")
    names = [f"room{number:03}" for number in range(120)]
    for name in names:
        maker.send({"type": "join", "room": name})
    maker.expect(Welcome, room=names[-1])
    maker.send({"type": "rooms"})
    first = maker.expect(RoomList)
    assert len(first.rooms) == 100 and first.more == 21  # the lobby and 120 rooms
    maker.send({"type": "rooms", "after": first.rooms[-1].room})
    second = maker.expect(RoomList)
    assert second.more == 0
    assert sorted(info.room for info in first.rooms + second.rooms) == sorted(["lobby", *names])


# --- sanctions hold on identity and address -------------------------------------------------


@pytest.fixture
def strict_server(start_chat_server):
    """A server that treats loopback as one person's address (no --limit-exempt networks)."""
    return start_chat_server(ServerConfig(limit_exempt=""))


def owner_of(connect, server, room: str = "den") -> LineClient:
    owner, _ = registered(connect, name="owner", server=server)
    assert isinstance(enter(owner, room), Welcome)
    return owner


def test_a_muted_guest_that_registers_is_still_muted(strict_server, connect):
    owner = owner_of(connect, strict_server)
    loud = connect(strict_server)
    loud.join("loud")
    enter(loud, "den")
    owner.send({"type": "mute", "room": "den", "name": "loud"})
    loud.expect(Moderation, action="mute")
    loud.send({"type": "register", "password": PASSWORD})
    loud.expect(SessionToken)
    loud.send({"type": "message", "room": "den", "msg": "free again?"})
    assert loud.expect(ErrorReply).code == "muted"


def test_a_banned_guest_that_registers_or_logs_in_stays_out(strict_server, connect):
    owner = owner_of(connect, strict_server)
    troll = connect(strict_server)
    troll.join("troll")
    enter(troll, "den")
    owner.send({"type": "ban", "room": "den", "name": "troll"})
    owner.expect(Left, name="troll")
    troll.send({"type": "register", "password": PASSWORD})
    troll.expect(SessionToken)
    assert enter(troll, "den").code == "banned"


def test_a_banned_account_that_comes_back_as_a_guest_stays_out(strict_server, connect):
    owner = owner_of(connect, strict_server)
    bob, _ = registered(connect, name="bob", server=strict_server)
    enter(bob, "den")
    owner.send({"type": "ban", "room": "den", "name": "bob"})
    owner.expect(Left, name="bob")
    bob.send({"type": "leave"})
    bob.expect_closed()
    guest = connect(strict_server)
    guest.join("notbob")
    assert enter(guest, "den").code == "banned"


def test_banning_a_guest_on_a_shared_address_bans_that_guest_only(chat_server, connect):
    owner = owner_of(connect, chat_server)  # loopback is shared by default (--limit-exempt)
    troll = connect()
    token = troll.join("troll").token
    enter(troll, "den")
    owner.send({"type": "ban", "room": "den", "name": "troll"})
    owner.expect(Left, name="troll")
    troll.close()
    again = connect()
    join(again, name="troll", token=token)
    assert enter(again, "den").code == "banned"
    bystander = connect()
    bystander.join("bystander")
    assert isinstance(enter(bystander, "den"), Welcome)


def test_a_banned_or_muted_operator_cannot_lift_its_own_sanction(connect):
    owner, _ = registered(connect, name="owner")
    enter(owner, "den")
    carol, _ = registered(connect, name="carol")
    enter(carol, "den")
    owner.send({"type": "op", "room": "den", "name": "carol"})
    carol.expect(Moderation, action="op")
    owner.send({"type": "mute", "room": "den", "name": "carol"})
    carol.expect(Moderation, action="mute")
    carol.send({"type": "unmute", "room": "den", "name": "carol"})
    assert carol.expect(ErrorReply).code == "muted"
    owner.send({"type": "ban", "room": "den", "name": "carol"})
    owner.expect(Left, name="carol")
    carol.send({"type": "unban", "room": "den", "name": "carol"})  # from outside the room
    assert carol.expect(ErrorReply).code == "banned"


# --- throttles ---------------------------------------------------------------------------------


def test_registrations_from_one_ipv6_64_are_throttled_together():
    accounts = Accounts(MemoryStore())
    guest = accounts.prove("guest", None, None, "2001:db8::1")
    answers = []
    for number in range(6):
        try:
            accounts.register(f"user{number}", PASSWORD, guest, f"2001:db8::{number + 10:x}")
            answers.append("ok")
        except Refused as exc:
            answers.append(exc.code)
    assert answers[:3] == ["ok"] * 3 and "auth_failed" in answers[3:]
    accounts.register("elsewhere", PASSWORD, guest, "2001:db8:1::1")  # another /64


def test_right_passwords_are_throttled_too_per_account_and_address():
    accounts = Accounts(MemoryStore())
    guest = accounts.prove("alice", None, None, "192.0.2.1")
    accounts.register("alice", PASSWORD, guest, "192.0.2.1")
    codes = []
    for number in range(8):
        try:
            accounts.prove("alice", PASSWORD, None, f"198.51.100.{number}")
            codes.append("ok")
        except Refused as exc:
            codes.append(exc.code)
    assert codes.count("ok") == 5 and codes[5:] == ["auth_failed"] * 3


def test_on_a_store_that_takes_no_writes_a_guest_still_joins_and_reads(start_chat_server, connect, tmp_path):
    path = tmp_path / "chat.db"
    server = start_chat_server(ServerConfig(db=str(path)))
    talker = connect(server)
    talker.join("talker")
    talker.say_all(["kept before the disk filled"])
    path.unlink()  # every write fails from now on, as on a full disk
    guest = connect(server)
    welcome = join(guest, name="reader")
    assert isinstance(welcome, Welcome) and welcome.token
    assert guest.expect(ChatMessage).msg == "kept before the disk filled"
    guest.say("and this?")
    refusal = guest.expect(ErrorReply)
    assert refusal.code == "storage_failed" and "account" not in refusal.detail
    again = connect(server)
    guest.close()
    assert isinstance(join(again, name="reader", token=welcome.token), Welcome)  # its token held in memory


# --- rooms: a cap per creator, expiry ------------------------------------------------------------


def test_one_identity_creates_at_most_max_rooms_per_user(start_chat_server, connect):
    server = start_chat_server(ServerConfig(max_rooms_per_user=2))
    maker = connect(server)
    maker.join("maker")
    assert isinstance(enter(maker, "one"), Welcome)
    assert isinstance(enter(maker, "two"), Welcome)
    refusal = enter(maker, "three")
    assert refusal.code == "too_many_rooms"
    other = connect(server)
    other.join("other")
    assert isinstance(enter(other, "three"), Welcome)  # somebody else may
    assert isinstance(enter(maker, "three"), Welcome)  # and joining a room is not creating it


def test_a_room_nobody_uses_is_removed_after_room_expiry(start_chat_server, connect):
    server = start_chat_server(ServerConfig(room_expiry=0.05))
    guest = connect(server)
    guest.join("guest")
    enter(guest, "brief")
    guest.send({"type": "message", "room": "brief", "msg": "soon gone"})
    guest.expect(ChatMessage, msg="soon gone")
    guest.send({"type": "part", "room": "brief"})
    guest.expect(Left, room="brief")
    owner, _ = registered(connect, name="owner", server=server)
    enter(owner, "kept")  # an account owns it: it stays
    owner.send({"type": "part", "room": "kept"})
    owner.expect(Left, room="kept")
    deadline = time.monotonic() + TIMEOUT
    while True:
        guest.send({"type": "rooms"})
        names = [info.room for info in guest.expect(RoomList).rooms]
        if "brief" not in names or time.monotonic() > deadline:
            break
    assert names == ["kept", "lobby"]
    again = enter(guest, "brief")  # a new room of that name: nothing of the old one
    assert isinstance(again, Welcome) and again.history == 0


def test_password_checks_never_queue_behind_one_account():
    accounts = Accounts(MemoryStore())
    for name in ("alice", "bob"):
        accounts.register(name, PASSWORD, accounts.prove(name, None, None, f"192.0.2.{len(name)}"), "192.0.2.9")
    inside, go_on = threading.Event(), threading.Event()
    real = accounts._hasher

    class SlowForAlice:
        """Argon2 as it is, except that alice's first check waits until the test lets it go."""

        hash = real.hash

        @staticmethod
        def verify(password_hash: str, password: str) -> bool:
            if threading.current_thread().name == "alice-login":
                inside.set()
                go_on.wait(TIMEOUT)
            return real.verify(password_hash, password)

    accounts._hasher = SlowForAlice()
    first = threading.Thread(target=accounts.prove, args=("alice", PASSWORD, None, "198.51.100.1"), name="alice-login")
    first.start()
    try:
        assert inside.wait(TIMEOUT)
        with pytest.raises(Refused) as caught:  # a second check of alice's password is not queued
            accounts.prove("alice", PASSWORD, None, "198.51.100.2")
        assert "being checked" in caught.value.detail
        assert accounts.prove("bob", PASSWORD, None, "198.51.100.3").account == "bob"  # nor is bob's
    finally:
        go_on.set()
        first.join(TIMEOUT)


def test_chat_admin_creates_the_operator_before_the_first_start_and_lists_nothing_it_has_not(
    start_chat_server, connect, tmp_path, monkeypatch, capsys
):
    from chat.admin import main as chat_admin

    db = str(tmp_path / "new" / "chat.db")
    assert chat_admin(["--db", db, "accounts", "list"]) == 1  # no file: not made by a list
    assert "no history file" in capsys.readouterr().err
    monkeypatch.setenv("ROOT_PASSWORD", PASSWORD)
    assert chat_admin(["--db", db, "accounts", "add", "root", "--password-env", "ROOT_PASSWORD"]) == 0
    assert chat_admin(["--db", db, "accounts", "add", "R00T", "--password-env", "ROOT_PASSWORD"]) == 1
    monkeypatch.setenv("SHORT", "short")
    assert chat_admin(["--db", db, "accounts", "add", "bob", "--password-env", "SHORT"]) == 1
    server = start_chat_server(ServerConfig(db=db, admin=("root",)))
    assert isinstance(join(connect(server), name="root", password=PASSWORD), Welcome)


def test_chat_admin_asks_for_the_password_twice_without_echo(tmp_path, monkeypatch, capsys):
    import getpass

    from chat.admin import main as chat_admin

    db = str(tmp_path / "chat.db")
    answers = iter(["first choice here", "a different one!"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt: next(answers))
    assert chat_admin(["--db", db, "accounts", "add", "alice"]) == 1
    assert "differ" in capsys.readouterr().err
    answers = iter([PASSWORD, PASSWORD])
    assert chat_admin(["--db", db, "accounts", "add", "alice"]) == 0
    assert chat_admin(["--db", db, "accounts", "list"]) == 0
    assert capsys.readouterr().out.count("alice\t") == 1
