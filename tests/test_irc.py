"""The IRC front door over real sockets: registration, channels, JSON and IRC clients seeing each
other, history on join, limits, SASL and moderation."""

from __future__ import annotations

import base64
import re
import socket
import ssl

import pytest
import trustme

from chat.server.config import ServerConfig
from chat.testing import TIMEOUT, LineClient
from chat.testing_irc import IrcClient
from chat.wire.protocol import (
    Away,
    ChatMessage,
    ErrorReply,
    Joined,
    Left,
    Moderation,
    PrivateMessage,
    SessionToken,
    Topic,
    Welcome,
)


@pytest.fixture
def irc_server(start_chat_server):
    return start_chat_server(ServerConfig(irc_port=0, db=":memory:"))


def irc(server) -> IrcClient:
    return IrcClient(server.address_of("irc"))


def test_registration_answers_001_to_005_with_the_pinned_isupport_and_a_motd(irc_server):
    client = irc(irc_server)
    lines = client.register("bob")
    numerics = [line.split()[1] for line in lines]
    assert numerics[:4] == ["001", "002", "003", "004"]
    isupport = " ".join(line for line in lines if " 005 " in line)
    for token in ("CHANTYPES=#", "PREFIX=(qov)~@+", "CASEMAPPING=", "NICKLEN=", "CHANNELLEN=", "TOPICLEN=",
                  "UTF8ONLY", "CHATHISTORY=", "MSGREFTYPES="):
        assert token in isupport
    assert lines[-1].split()[1] == "376"


def test_cap_ls_302_offers_the_pinned_caps_and_registration_waits_for_cap_end(irc_server):
    client = irc(irc_server)
    client.send("CAP LS 302", "NICK bob", "USER bob 0 * :Bob")
    offered = client.expect("CAP * LS").split(":", 2)[2].split()
    for cap in ("server-time", "message-tags", "echo-message", "sasl=PLAIN", "batch", "draft/chathistory",
                "account-tag", "extended-join", "away-notify", "multi-prefix"):
        assert cap in offered
    client.send("CAP REQ :server-time bogus-cap")
    assert "NAK" in client.expect("CAP * ")
    client.send("PING sync")
    assert "001" not in " ".join(client.until("PONG"))
    client.send("CAP END")
    client.expect(" 001 bob ")


def test_commands_before_registration_get_451(irc_server):
    client = irc(irc_server)
    client.send("JOIN :")
    assert " 451 " in client.read()


def test_an_irc_and_a_json_client_talk_in_a_room_and_privately(irc_server):
    alice = LineClient(irc_server.address)
    alice.join("alice")
    bob = irc(irc_server)
    bob.register("bob")
    bob.send("JOIN #lobby")
    names = bob.expect(" 353 ")
    assert "alice" in names and "bob" in names
    alice.expect(Joined, name="bob")
    bob.send("PRIVMSG #lobby :hello from irc")
    assert alice.expect(ChatMessage, msg="hello from irc").name == "bob"
    alice.say("hello from json")
    assert bob.expect("PRIVMSG #lobby").endswith(":hello from json")
    alice.send({"type": "private", "to": "bob", "msg": "psst"})
    assert bob.expect("PRIVMSG bob").startswith(":alice!")
    bob.send("PRIVMSG alice :psst back")
    assert alice.expect(PrivateMessage, name="bob").msg == "psst back"
    bob.send("PART #lobby")
    assert alice.expect(Left, name="bob").reason == "part"


def test_an_irc_sender_gets_its_own_line_only_with_echo_message(irc_server):
    plain, echoing = irc(irc_server), irc(irc_server)
    plain.register("plain")
    echoing.register("echoing", "echo-message")
    for client in (plain, echoing):
        client.send("JOIN #dev")
        client.expect(" 366 ")
    plain.send("PRIVMSG #dev :one", "PING sync")
    assert not any("PRIVMSG" in line for line in plain.until("PONG"))
    echoing.send("PRIVMSG #dev :two")
    assert echoing.expect("PRIVMSG #dev", "two").startswith(":echoing!")


def test_joining_replays_history_with_time_and_msgid_in_a_batch(irc_server):
    alice = LineClient(irc_server.address)
    alice.join("alice")
    said = alice.say_all(["first", "second"])
    bob = irc(irc_server)
    bob.register("bob", "server-time message-tags batch")
    bob.send("JOIN #lobby")
    lines = bob.until("BATCH -")
    start = next(line for line in lines if "BATCH +" in line)
    batch = start.split()[2][1:]
    assert "chathistory #lobby" in start
    replayed = [line for line in lines if "PRIVMSG" in line]
    assert [line.rsplit(":", 1)[1] for line in replayed] == ["first", "second"]
    assert f"msgid={said.id}" in replayed[-1] and f"batch={batch}" in replayed[-1]
    stamp = re.search(r"time=([^;]+)", replayed[-1])
    assert stamp is not None and stamp.group(1) == said.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_nick_in_use_gets_433_and_the_client_may_choose_another(irc_server):
    alice = LineClient(irc_server.address)
    alice.join("alice")
    bob = irc(irc_server)
    bob.send("NICK alice", "USER x 0 * :x")
    assert " 433 " in bob.expect(" 433 ")
    bob.send("NICK bob")
    bob.expect(" 001 bob ")


def test_an_erroneous_nick_is_refused_with_432_never_mangled(irc_server):
    bob = irc(irc_server)
    bob.send("NICK #bob")
    assert " 432 " in bob.read()


def test_a_line_over_512_bytes_gets_417_and_the_connection_goes_on(irc_server):
    bob = irc(irc_server)
    bob.register("bob")
    bob.send("PRIVMSG #lobby :" + "x" * 600, "PING after")
    assert " 417 " in bob.read()
    assert "PONG" in bob.read()


def test_sasl_plain_logs_into_an_account_with_a_password_or_a_token(irc_server):
    alice = LineClient(irc_server.address)
    alice.join("alice")
    alice.send({"type": "register", "password": "correct horse"})
    token = alice.expect(SessionToken).token
    alice.close()
    first = irc(irc_server)
    first.register("alice", password="correct horse")
    assert any(" 900 " in line and "alice" in line for line in first.seen)
    first.send("QUIT")
    first.until("ERROR")
    second = irc(irc_server)
    second.register("alice", password=token)
    wrong = irc(irc_server)
    wrong.send("CAP LS 302", "NICK alice", "USER a 0 * :a", "CAP REQ :sasl", "AUTHENTICATE PLAIN")
    wrong.expect("AUTHENTICATE +")
    wrong.send("AUTHENTICATE " + base64.b64encode(b"alice\0alice\0wrong password").decode())
    assert " 904 " in wrong.expect(" 90")


def owner_and_irc_member(irc_server, password: str | None = None) -> tuple[LineClient, IrcClient, list[str]]:
    """`owner`, a JSON account that owns #dev, and `bob` on IRC in #dev (an account with `password`,
    else a guest); and what bob read of his JOIN up to the end of the names."""
    owner = LineClient(irc_server.address)
    owner.join("owner")
    owner.send({"type": "register", "password": "owner password"})
    owner.expect(SessionToken)
    owner.send({"type": "join", "room": "dev"})
    owner.expect(Welcome, room="dev")
    if password is not None:
        account = LineClient(irc_server.address)
        account.join("bob")
        account.send({"type": "register", "password": password})
        account.expect(SessionToken)
        account.close()
    bob = irc(irc_server)
    bob.register("bob", password=password)
    bob.send("JOIN #dev")
    return owner, bob, bob.until(" 366 ")


def test_a_json_owner_kicks_an_irc_user(irc_server):
    owner, bob, joined = owner_and_irc_member(irc_server)
    assert any(" 353 " in line and "~owner" in line for line in joined)
    owner.send({"type": "kick", "room": "dev", "name": "bob", "reason": "out"})
    kick = bob.expect("KICK")
    assert kick.startswith(":owner!") and "#dev bob :out" in kick


def test_an_irc_user_banned_by_a_json_owner_is_told_it_is_out_of_the_channel(irc_server):
    """A ban takes a member out of the room: its IRC client sees the ban, then a KICK of itself,
    or it would go on showing the channel as joined (WeeChat did)."""
    owner, bob, _ = owner_and_irc_member(irc_server, password="bob password")
    owner.send({"type": "ban", "room": "dev", "name": "bob", "reason": "spam"})
    assert "MODE #dev +b bob!*@*" in bob.expect("MODE #dev")
    assert "KICK #dev bob :" in bob.expect("KICK")
    bob.send("JOIN #dev")
    assert " 474 " in bob.expect(" 474 ")


def test_a_kicked_irc_user_who_rejoins_is_told_of_the_kick_in_the_replay_and_stays_joined(irc_server):
    """Replayed as a KICK, the kick took irssi out of the channel it had just joined again."""
    owner, bob, _ = owner_and_irc_member(irc_server)
    owner.send({"type": "kick", "room": "dev", "name": "bob", "reason": "out"})
    assert "#dev bob :out" in bob.expect("KICK")
    bob.send("JOIN #dev")
    replay = bob.until("owner kicked bob: out")
    assert not any(" KICK " in line for line in replay)
    bob.send("PRIVMSG #dev :still here")
    assert owner.expect(ChatMessage, msg="still here").name == "bob"


def test_a_mute_reaches_an_irc_member_as_a_notice_that_tells_it(irc_server):
    owner, bob, _ = owner_and_irc_member(irc_server)
    owner.send({"type": "mute", "room": "dev", "name": "bob", "reason": "calm down"})
    assert bob.expect("NOTICE #dev").endswith("NOTICE #dev :owner muted bob: calm down")


def test_the_registration_deadline_closes_a_silent_connection(start_chat_server):
    server = start_chat_server(ServerConfig(irc_port=0, db=":memory:", join_timeout=0.2))
    client = irc(server)
    assert client.expect("ERROR").startswith("ERROR")
    client.sock.settimeout(TIMEOUT)
    with pytest.raises((ConnectionError, socket.timeout, OSError)):
        while True:
            client.read()


def test_the_irc_tls_port_speaks_irc_over_tls(start_chat_server, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    server = start_chat_server(ServerConfig(tls_cert=str(chain), tls_key=str(key), irc_tls_port=0, db=":memory:"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    client = IrcClient(server.address_of("irc-tls"), tls=context)
    assert client.register("secure")[0].startswith(":chat 001 secure ")


def test_irc_tls_port_without_a_certificate_is_refused():
    from chat.server.tcp import listeners

    with pytest.raises(OSError, match="irc-tls-port"):
        listeners(ServerConfig(irc_tls_port=0))


def test_an_irc_owner_moderates_with_kick_and_mode_and_a_guest_gets_482(irc_server):
    owner = LineClient(irc_server.address)
    owner.join("boss")
    owner.send({"type": "register", "password": "boss password"})
    owner.expect(SessionToken)
    owner.close()
    boss = irc(irc_server)
    boss.register("boss", password="boss password")
    boss.send("JOIN #ops")
    assert "~boss" in boss.expect(" 353 ")
    guest = LineClient(irc_server.address)
    guest.join("guest")
    guest.send({"type": "join", "room": "ops"})
    guest.expect(Welcome, room="ops")
    other = irc(irc_server)
    other.register("other")
    other.send("JOIN #ops")
    other.expect(" 366 ")
    other.send("KICK #ops guest :no")
    assert " 482 " in other.expect(" 482 ")
    boss.send("MODE #ops +m")
    assert other.expect("MODE #ops").endswith("+m")
    boss.send("KICK #ops guest :out")
    assert guest.expect(Moderation, action="kick").by == "boss"
    assert "KICK #ops guest :out" in other.expect("KICK")
    guest.send({"type": "join", "room": "ops"})
    guest.expect(Welcome, room="ops")
    boss.send("MODE #ops +b guest")
    assert guest.expect(Moderation, action="ban").name == "guest"
    assert "MODE #ops +b guest!*@*" in other.expect("MODE #ops +b")
    boss.send("MODE #ops")
    assert boss.expect(" 324 ").endswith("+m")


def test_chathistory_latest_and_before_answer_from_the_rooms_history_in_a_batch(irc_server):
    alice = LineClient(irc_server.address)
    alice.join("alice")
    last = alice.say_all([f"line {n}" for n in range(1, 6)])
    bob = irc(irc_server)
    bob.register("bob", "server-time message-tags batch draft/chathistory")
    bob.send("JOIN #lobby")
    bob.until("BATCH -")
    bob.send("CHATHISTORY LATEST #lobby * 2")
    lines = bob.until("BATCH -")
    assert [line.rsplit(":", 1)[1] for line in lines if "PRIVMSG" in line] == ["line 4", "line 5"]
    assert any("BATCH +" in line and "chathistory #lobby" in line for line in lines)
    bob.send(f"CHATHISTORY BEFORE #lobby msgid={last.id - 1} 2")
    lines = bob.until("BATCH -")
    assert [line.rsplit(":", 1)[1] for line in lines if "PRIVMSG" in line] == ["line 2", "line 3"]
    bob.send("CHATHISTORY LATEST #elsewhere * 2")
    assert "FAIL CHATHISTORY INVALID_TARGET LATEST #elsewhere" in bob.expect("FAIL")


def test_chathistory_after_around_and_between_by_msgid_and_by_timestamp(irc_server):
    alice = LineClient(irc_server.address)
    alice.join("alice")
    sent = [alice.say_all([f"line {n}"]) for n in range(10)]
    alice.send({"type": "topic", "room": "lobby", "topic": "not a message"})
    alice.expect(Topic)
    bob = irc(irc_server)
    bob.register("bob", "server-time message-tags batch draft/chathistory")
    bob.send("JOIN #lobby")
    bob.until("BATCH -")

    def asked(command: str) -> list[str]:
        bob.send(command)
        lines = bob.until("BATCH -")
        assert any("BATCH +" in line and "chathistory #lobby" in line for line in lines)
        assert not any(" TOPIC " in line for line in lines)  # messages only, as without event-playback
        return [line.rsplit(":", 1)[1] for line in lines if "PRIVMSG" in line]

    every = [f"line {n}" for n in range(10)]
    ids = [f"msgid={line.id}" for line in sent]
    assert asked(f"CHATHISTORY AFTER #lobby {ids[3]} 20") == every[4:]
    assert asked(f"CHATHISTORY AFTER #lobby {ids[3]} 3") == every[4:7]
    assert asked(f"CHATHISTORY AROUND #lobby {ids[7]} 1") == every[7:8]
    assert asked(f"CHATHISTORY AROUND #lobby {ids[7]} 3") == every[6:9]
    assert asked(f"CHATHISTORY BETWEEN #lobby {ids[0]} {ids[-1]} 20") == every[1:-1]
    assert asked(f"CHATHISTORY BETWEEN #lobby {ids[-1]} {ids[0]} 3") == every[-4:-1]
    assert asked(f"CHATHISTORY LATEST #lobby {ids[8]} 20") == every[9:]
    assert asked(f"CHATHISTORY AFTER #lobby {ids[9]} 20") == []  # an empty batch
    # By time: lines said within one millisecond share a time, so what a time names comes from the times sent.
    stamp = {line.msg: "timestamp=" + line.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
             for line in sent}
    after_3 = [line.msg for line in sent if line.time > sent[3].time]
    before_6 = [line.msg for line in sent if line.time < sent[6].time]
    assert asked(f"CHATHISTORY AFTER #lobby {stamp['line 3']} 3") == after_3[:3]
    assert asked(f"CHATHISTORY BEFORE #lobby {stamp['line 6']} 2") == before_6[-2:]
    between = [line.msg for line in sent if sent[0].time < line.time < sent[-1].time]
    assert asked(f"CHATHISTORY BETWEEN #lobby {stamp['line 9']} {stamp['line 0']} 3") == between[-3:]
    center = next(n for n, line in enumerate(sent) if line.time >= sent[7].time)  # the first said at that time
    assert asked(f"CHATHISTORY AROUND #lobby {stamp['line 7']} 3") == every[max(0, center - 1):center + 2]


def registered_account(server, name: str, password: str) -> LineClient:
    """A JSON device of the account `name` (registered with `password`), in #dev."""
    phone = LineClient(server.address)
    phone.join(name)
    phone.send({"type": "register", "password": password})
    phone.expect(SessionToken)
    phone.send({"type": "join", "room": "dev"})
    phone.expect(Welcome, room="dev")
    return phone


def test_a_json_device_and_an_irc_device_of_one_account_see_each_others_lines(irc_server):
    phone = registered_account(irc_server, "alice", "correct horse")
    laptop = irc(irc_server)
    burst = laptop.register("alice", password="correct horse")
    assert not any(" JOIN " in line for line in burst)  # nothing joined before the welcome burst
    assert laptop.expect("JOIN", "#dev").startswith(":alice!")
    laptop.until(" 366 ", "#dev")
    phone.send({"type": "message", "room": "dev", "msg": "sent from the phone"})
    assert laptop.expect("PRIVMSG").endswith("PRIVMSG #dev :sent from the phone")
    laptop.send("PRIVMSG #dev :sent from the laptop", "PING done")
    seen = phone.expect(ChatMessage, msg="sent from the laptop")
    assert (seen.name, seen.room) == ("alice", "dev")
    assert not any("sent from the laptop" in line for line in laptop.until("PONG"))  # its own, without echo-message


def test_two_irc_devices_of_one_account_both_stay_and_hear_each_other(irc_server):
    registered_account(irc_server, "alice", "correct horse").close()
    first = irc(irc_server)
    first.register("alice", password="correct horse")
    first.send("JOIN #dev")
    first.until(" 366 ", "#dev")
    second = irc(irc_server)
    second.register("alice", password="correct horse")
    second.until(" 366 ", "#dev")  # in the room its other device is in
    second.send("PRIVMSG #dev :from the second")
    assert first.expect("PRIVMSG").endswith("PRIVMSG #dev :from the second")
    first.send("PRIVMSG #dev :from the first", "PING still here")
    assert second.expect("PRIVMSG").endswith("PRIVMSG #dev :from the first")
    lines = first.until("PONG")
    assert not any(line.startswith("ERROR") or "from the first" in line for line in lines)


def test_a_topic_an_irc_client_sets_comes_back_to_it_without_echo_message(irc_server):
    bar = irc(irc_server)
    bar.register("bar")
    bar.send("JOIN #test")
    bar.until(" 366 ", "#test")
    bar.send("TOPIC #test :new topic")
    assert bar.expect("TOPIC").startswith(":bar!")


def test_away_and_back_reach_irc_members_with_away_notify_once_and_json_members_per_room(irc_server):
    alice = LineClient(irc_server.address)
    alice.join("alice")
    alice.send({"type": "join", "room": "dev"})
    alice.expect(Welcome, room="dev")
    watcher, plain = irc(irc_server), irc(irc_server)
    watcher.register("watcher", "away-notify")
    plain.register("plain")
    for client in (watcher, plain):
        client.send("JOIN #lobby,#dev")
        client.until(" 366 ", "#dev")
    plain.send("AWAY :lunch")
    assert " 306 plain " in plain.expect(" 306 ")
    assert watcher.expect("AWAY") == ":plain!~u@chat AWAY :lunch"
    assert {alice.expect(Away, name="plain", msg="lunch").room for _ in range(2)} == {"lobby", "dev"}
    alice.send({"type": "away"})  # back without having gone: no change, nothing said
    alice.send({"type": "away", "msg": "in a meeting"})
    assert watcher.expect("AWAY") == ":alice!~u@chat AWAY :in a meeting"
    plain.send("AWAY", "PING after")
    assert " 305 plain " in plain.expect(" 305 ")
    assert watcher.expect("AWAY") == ":plain!~u@chat AWAY"  # once, though two rooms say it
    assert alice.expect(Away, name="plain", msg="").room in ("lobby", "dev")
    lines = plain.until("PONG")
    assert not any(" AWAY" in line for line in lines)  # neither its own nor others': no away-notify
    watcher.send("PING sync")
    assert not any(" AWAY" in line for line in watcher.until("PONG"))  # no second AWAY for plain


def test_who_joins_while_away_is_followed_by_its_away_for_away_notify(irc_server):
    watcher = irc(irc_server)
    watcher.register("watcher", "away-notify")
    watcher.send("JOIN #dev")
    watcher.until(" 366 ", "#dev")
    late = irc(irc_server)
    late.register("late")
    late.send("AWAY :not here yet", "JOIN #dev")
    assert late.expect(" 366 ", "#dev")
    assert watcher.until("JOIN")[-1].startswith(":late!")
    assert watcher.read() == ":late!~u@chat AWAY :not here yet"
    late.send("PING sync")
    assert not any(" AWAY" in line for line in late.until("PONG"))


def test_part_and_quit_reasons_reach_json_and_irc_members_as_one_clean_line(irc_server):
    alice = LineClient(irc_server.address)
    alice.join("alice")
    alice.send({"type": "join", "room": "dev"})
    alice.expect(Welcome, room="dev")
    watcher, leaver = irc(irc_server), irc(irc_server)
    watcher.register("watcher")
    leaver.register("leaver")
    for client in (watcher, leaver):
        client.send("JOIN #lobby,#dev")
        client.until(" 366 ", "#dev")
    leaver.send("PART #dev :\x0304off\x03 to\tlunch")
    assert leaver.expect("PART") == ":leaver!~u@chat PART #dev :off to lunch"  # its own part, with its words
    assert watcher.expect("PART") == ":leaver!~u@chat PART #dev :off to lunch"
    left = alice.expect(Left, name="leaver")
    assert (left.room, left.reason, left.msg) == ("dev", "part", "off to lunch")
    leaver.send("QUIT :see you tomorrow")
    assert watcher.expect("QUIT") == ":leaver!~u@chat QUIT :Quit: see you tomorrow"
    left = alice.expect(Left, name="leaver")
    assert (left.room, left.reason, left.msg) == ("lobby", "quit", "see you tomorrow")

    alice.send({"type": "part", "room": "dev", "msg": "back\nlater"})
    assert watcher.expect("PART") == ":alice!~u@chat PART #dev :back later"
    alice.send({"type": "part", "room": "lobby", "msg": "x" * 391})
    assert alice.expect(ErrorReply).code == "invalid_field"  # too long: refused, and alice stays
    alice.send({"type": "leave", "msg": "good night"})
    assert watcher.expect("QUIT") == ":alice!~u@chat QUIT :Quit: good night"


def test_a_part_without_words_and_a_drop_carry_none(irc_server):
    alice = LineClient(irc_server.address)
    alice.join("alice")
    quiet = irc(irc_server)
    quiet.register("quiet")
    quiet.send("JOIN #lobby")
    quiet.until(" 366 ")
    quiet.send("PART #lobby")
    assert alice.expect(Left, name="quiet").msg is None
    quiet.send("JOIN #lobby")
    alice.expect(Joined, name="quiet")
    quiet.close()
    left = alice.expect(Left, name="quiet")
    assert (left.reason, left.msg) == ("disconnected", None)


def test_chathistory_targets_names_the_joined_channels_by_their_newest_line(irc_server):
    alice = LineClient(irc_server.address)
    alice.join("alice")
    alice.send({"type": "join", "room": "dev"})
    alice.expect(Welcome, room="dev")
    lobby = alice.say_all(["in the lobby"])
    alice.send({"type": "message", "room": "dev", "msg": "in dev"})
    dev = alice.expect(ChatMessage, msg="in dev")
    bob = irc(irc_server)
    bob.register("bob", "batch draft/chathistory")
    bob.send("JOIN #dev,#lobby,#empty")
    bob.until(" 366 ", "#empty")  # and no history batch: it has none
    bob.send("CHATHISTORY TARGETS timestamp=2020-01-01T00:00:00.000Z timestamp=2262-01-01T00:00:00.000Z 10")
    lines = bob.until("BATCH -")
    targets = [line.split()[-2:] for line in lines if "CHATHISTORY TARGETS" in line]

    def stamp(message: ChatMessage) -> str:
        return message.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    assert targets == [["#lobby", stamp(lobby)], ["#dev", stamp(dev)]] or (
        lobby.time == dev.time and sorted(targets) == [["#dev", stamp(dev)], ["#lobby", stamp(lobby)]]
    )


def test_labeled_commands_get_their_answer_labeled_an_echo_a_batch_or_an_ack(irc_server):
    alice = LineClient(irc_server.address)
    alice.join("alice")
    alice.say_all(["one", "two"])
    bob = irc(irc_server)
    bob.register("bob", "labeled-response batch echo-message draft/chathistory message-tags")
    bob.send("JOIN #lobby")
    bob.until("BATCH -")
    bob.send("@label=say PRIVMSG #lobby :three")
    echo = bob.expect("three")
    assert echo.startswith("@label=say;msgid=") and echo.endswith(":bob!~u@chat PRIVMSG #lobby :three")
    bob.send("@label=page CHATHISTORY LATEST #lobby * 2")
    lines = bob.until(":chat BATCH -")
    outer = lines[0]
    assert outer.startswith("@label=page :chat BATCH +") and outer.endswith(" labeled-response")
    ref = outer.split()[3][1:]
    while lines[-1] != f":chat BATCH -{ref}":  # the nested chathistory batch ended first
        lines.append(bob.read())
    said = [line.rsplit(" :", 1)[1] for line in lines if " PRIVMSG " in line]
    assert said == ["two", "three"]
    assert f"@batch={ref} :chat BATCH +" in lines[1] and "chathistory #lobby" in lines[1]
    bob.send("CAP REQ -echo-message")
    bob.expect("ACK")
    bob.send("@label=quiet PRIVMSG #lobby :four")
    assert bob.read() == "@label=quiet :chat ACK"
    assert alice.expect(ChatMessage, msg="four").name == "bob"
