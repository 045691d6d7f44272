"""Room owners and operators: kick, ban, mute, op, over the wire, and what holds after."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from chat.server.accounts import password_hasher
from chat.server.config import ServerConfig
from chat.server.store import AccountRecord
from chat.testing import TIMEOUT, LineClient
from chat.wire.protocol import ChatMessage, ErrorReply, Left, Moderation, ServerNotice, SessionToken, Users, Welcome
from chat.wire.text import name_key

PASSWORD = "long enough password"


def account(connect, name: str, server=None) -> LineClient:
    """A connection joined (to the lobby) as `name`, registered (an operator's name, which is
    reserved, is created beside the server as chat-admin does)."""
    client = connect(server) if server is not None else connect()
    if server is not None and name in server.config.admin:
        server.store.save_account(AccountRecord(name_key(name), name, password_hasher().hash(PASSWORD)))
        client.send({"type": "join", "name": name, "password": PASSWORD})
        client.token = client.expect(Welcome).token  # type: ignore[attr-defined]
        return client
    client.join(name)
    client.send({"type": "register", "password": PASSWORD})
    client.token = client.expect(SessionToken).token  # type: ignore[attr-defined]
    return client


def enter(client: LineClient, room: str = "den") -> Welcome | ErrorReply:
    client.send({"type": "join", "room": room})
    while True:
        reply = client.next()
        if isinstance(reply, ErrorReply) or (isinstance(reply, Welcome) and reply.room == room):
            return reply


@pytest.fixture
def den(connect):
    """alice owns the room `den` (she created it); bob is in it too."""
    alice, bob = account(connect, "alice"), account(connect, "bob")
    assert enter(alice).roles == {"alice": "owner"}
    enter(bob)
    return alice, bob


def test_the_owner_kicks_a_member_who_is_told_why_and_may_come_back(den):
    alice, bob = den
    alice.send({"type": "kick", "room": "den", "name": "bob", "reason": "cool off"})
    event = bob.expect(Moderation)
    assert (event.action, event.name, event.by, event.reason) == ("kick", "bob", "alice", "cool off")
    assert alice.expect(Left, name="bob").reason == "kicked"
    assert isinstance(enter(bob), Welcome)


def test_a_member_without_a_role_cannot_moderate(den):
    _, bob = den
    bob.send({"type": "kick", "room": "den", "name": "alice"})
    assert bob.expect(ErrorReply).code == "not_operator"


def test_a_banned_account_stays_out_through_rejoin_token_and_rename(den, connect):
    alice, bob = den
    token = bob.token
    alice.send({"type": "ban", "room": "den", "name": "bob", "reason": "spam"})
    assert alice.expect(Left, name="bob").reason == "banned"
    refusal = enter(bob)
    assert isinstance(refusal, ErrorReply) and refusal.code == "banned" and "spam" in refusal.detail
    bob.send({"type": "nick", "name": "robert"})
    assert bob.expect(ErrorReply).code == "nick_locked"
    assert enter(bob).code == "banned"
    again = connect()
    again.send({"type": "join", "name": "bob", "password": PASSWORD})
    again.expect(Welcome)
    assert enter(again).code == "banned"
    resumed = connect()
    resumed.send({"type": "join", "name": "bob", "token": token})
    resumed.expect(Welcome)
    assert enter(resumed).code == "banned"


def test_a_guest_is_banned_by_address_under_any_name(start_chat_server, connect):
    server = start_chat_server(ServerConfig(limit_exempt=""))  # loopback as one person's address
    alice = account(connect, "alice", server)
    enter(alice)
    troll = connect(server)
    troll.join("troll")
    enter(troll)
    alice.send({"type": "ban", "room": "den", "name": "troll", "reason": "trolling"})
    troll.expect(Moderation)
    troll.send({"type": "leave"})
    troll.expect_closed()
    back = connect(server)
    back.join("not_a_troll")
    assert enter(back).code == "banned"


def test_a_timed_ban_ends_by_itself(den):
    alice, bob = den
    alice.send({"type": "ban", "room": "den", "name": "bob", "duration": 1})
    until = bob.expect(Moderation).until
    assert until is not None
    assert enter(bob).code == "banned"
    # The ban ends when the server said it would (sent to the millisecond, rounded down):
    # one wait until just past then, however slow the machine, and one try.
    left = (until + timedelta(milliseconds=1) - datetime.now(UTC)).total_seconds()
    assert left < TIMEOUT, f"a ban of 1 s ends in {left:.1f} s"
    threading.Event().wait(max(0.0, left))
    assert isinstance(enter(bob), Welcome)


def test_a_muted_member_reads_but_cannot_speak_until_unmuted(den):
    alice, bob = den
    alice.send({"type": "mute", "room": "den", "name": "bob", "reason": "shouting"})
    bob.expect(Moderation)
    bob.send({"type": "message", "room": "den", "msg": "can you hear me"})
    assert bob.expect(ErrorReply).code == "muted"
    alice.send({"type": "message", "room": "den", "msg": "bob still reads"})
    assert bob.expect(ChatMessage).msg == "bob still reads"
    alice.send({"type": "unmute", "room": "den", "name": "bob"})
    bob.expect(Moderation, action="unmute")
    bob.send({"type": "message", "room": "den", "msg": "thanks"})
    assert alice.expect(ChatMessage, msg="thanks")


def test_the_owner_makes_and_unmakes_operators_who_cannot_touch_the_owner(den, connect):
    alice, _ = den
    carol = account(connect, "carol")
    enter(carol)
    alice.send({"type": "op", "room": "den", "name": "carol"})
    carol.expect(Moderation, action="op")
    carol.send({"type": "who", "room": "den"})
    assert carol.expect(Users).roles == {"alice": "owner", "carol": "op"}
    carol.send({"type": "kick", "room": "den", "name": "alice"})
    assert carol.expect(ErrorReply).code == "cannot_moderate"
    carol.send({"type": "kick", "room": "den", "name": "bob"})
    assert carol.expect(Left, name="bob").reason == "kicked"
    alice.send({"type": "deop", "room": "den", "name": "carol"})
    carol.expect(Moderation, action="deop")
    carol.send({"type": "mute", "room": "den", "name": "alice"})
    assert carol.expect(ErrorReply).code == "not_operator"


def test_only_accounts_can_be_operators(den, connect):
    alice, _ = den
    guest = connect()
    guest.join("guesty")
    enter(guest)
    alice.send({"type": "op", "room": "den", "name": "guesty"})
    assert alice.expect(ErrorReply).code == "cannot_moderate"


def test_a_server_operator_moderates_any_room(start_chat_server, connect):
    server = start_chat_server(ServerConfig(admin=("root",)))
    alice, bob, root = (account(connect, name, server) for name in ("alice", "bob", "root"))
    enter(alice)
    enter(bob)
    root.send({"type": "kick", "room": "den", "name": "bob", "reason": "server rules"})
    assert alice.expect(Left, name="bob").reason == "kicked"
    root.send({"type": "kick", "room": "den", "name": "alice"})  # even the owner
    assert alice.expect(Moderation, action="kick").by == "root"


def test_roles_bans_and_the_record_survive_a_restart(start_chat_server, connect, tmp_path):
    config = ServerConfig(db=str(tmp_path / "chat.db"))
    server = start_chat_server(config)
    alice, bob = account(connect, "alice", server), account(connect, "bob", server)
    enter(alice)
    enter(bob)
    alice.send({"type": "ban", "room": "den", "name": "bob", "reason": "spam"})
    alice.expect(Left, name="bob")
    for client in (alice, bob):
        client.close()
    server.stop()
    again = start_chat_server(config)
    bob = connect(again)
    bob.send({"type": "join", "name": "bob", "password": PASSWORD})
    bob.expect(Welcome)
    assert enter(bob).code == "banned"
    alice = connect(again)
    alice.send({"type": "join", "name": "alice", "password": PASSWORD})
    alice.expect(Welcome)
    alice.send({"type": "join", "room": "den", "since": 0})
    welcome = alice.expect(Welcome)
    assert welcome.roles == {"alice": "owner"}
    event = alice.expect(Moderation)  # the room's record, replayed with its history
    assert (event.action, event.name, event.reason) == ("ban", "bob", "spam")


def test_a_moderated_room_lets_only_operators_and_voiced_members_speak(den):
    alice, bob = den
    alice.send({"type": "mode", "room": "den", "on": ["moderated"]})
    assert bob.expect(Moderation, action="mode").name == "+moderated"
    bob.send({"type": "message", "room": "den", "msg": "may I?"})
    assert bob.expect(ErrorReply).code == "muted"
    alice.send({"type": "voice", "room": "den", "name": "bob"})
    bob.expect(Moderation, action="voice")
    bob.send({"type": "message", "room": "den", "msg": "thank you"})
    assert alice.expect(ChatMessage, msg="thank you")
    bob.send({"type": "mode", "room": "den", "off": ["moderated"]})
    assert bob.expect(ErrorReply).code == "not_operator"


def test_topic_mode_keeps_the_topic_to_operators(den):
    alice, bob = den
    alice.send({"type": "mode", "room": "den", "on": ["topic"]})
    bob.expect(Moderation, action="mode")
    bob.send({"type": "topic", "room": "den", "topic": "mine now"})
    assert bob.expect(ErrorReply).code == "not_operator"


def test_an_accounts_only_room_refuses_guests(den, connect):
    alice, _ = den
    alice.send({"type": "mode", "room": "den", "on": ["accounts"]})
    alice.expect(Moderation, action="mode")
    guest = connect()
    guest.join("guesty")
    assert enter(guest).code == "account_required"
    welcome = enter(account(connect, "dora"))
    assert welcome.modes == ["accounts"]


@pytest.fixture
def admin_server(start_chat_server, connect):
    server = start_chat_server(ServerConfig(admin=("root",), limit_exempt=""))  # loopback: one person's address
    return server, account(connect, "root", server)


def test_a_server_operator_disconnects_a_connection_which_is_told_why(admin_server, connect):
    server, root = admin_server
    troll = connect(server)
    troll.join("troll")
    root.send({"type": "disconnect", "name": "troll", "reason": "enough"})
    root.expect(ServerNotice)
    [refusal] = [m for m in troll.expect_closed() if isinstance(m, ErrorReply)]
    assert refusal.code == "removed" and "enough" in refusal.detail


def test_a_server_wide_ban_holds_for_a_guest_under_any_name_until_lifted(admin_server, connect):
    server, root = admin_server
    troll = connect(server)
    troll.join("troll")
    root.send({"type": "server_ban", "name": "troll", "reason": "spam"})
    root.expect(ServerNotice)
    troll.expect_closed()
    back = connect(server)
    back.send({"type": "join", "name": "innocent"})
    assert back.expect(ErrorReply).code == "banned"
    root.send({"type": "server_unban", "name": "troll"})
    root.expect(ServerNotice)
    assert back.join("innocent").name == "innocent"


def test_lockdown_refuses_new_guests_but_not_accounts(admin_server, connect):
    server, root = admin_server
    account(connect, "member", server).close()
    root.send({"type": "lockdown", "on": True})
    root.expect(ServerNotice)
    guest = connect(server)
    guest.send({"type": "join", "name": "newbie"})
    assert guest.expect(ErrorReply).code == "account_required"
    member = connect(server)
    member.send({"type": "join", "name": "member", "password": PASSWORD})
    assert member.expect(Welcome).account is True


def test_only_server_operators_act_server_wide(den):
    alice, _ = den
    alice.send({"type": "lockdown", "on": True})
    assert alice.expect(ErrorReply).code == "not_operator"


def test_each_line_of_a_muted_members_burst_is_refused_and_none_is_heard(den):
    alice, bob = den
    alice.send({"type": "mute", "room": "den", "name": "bob"})
    bob.expect(Moderation)
    bob.send_raw(b"".join(b'{"type": "message", "room": "den", "msg": "%d"}\n' % i for i in range(3)))
    assert [bob.expect(ErrorReply).code for _ in range(3)] == ["muted"] * 3
    alice.send({"type": "message", "room": "den", "msg": "after"})
    assert alice.expect(ChatMessage).msg == "after"
    assert bob.expect(ChatMessage).msg == "after"
