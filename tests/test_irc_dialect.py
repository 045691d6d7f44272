"""The IRC dialect without sockets: framing and limits, registration and CAP, each command's
request or numerics, and any bytes in giving numerics or requests, never an exception."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from chat.errors import Refused
from chat.server.config import ServerConfig
from chat.server.dialects.base import Handled, LogIn, Request, Said
from chat.server.dialects.irc import (
    CHATHISTORY_LIMIT,
    IrcConnection,
    IrcLine,
    labeled_response,
    nick_problem,
    room_of,
)
from chat.server.dialects.ircwire import MAX_BODY, MAX_CLIENT_TAGS, MAX_TAGS, IrcFramer, TooLong, parse
from chat.server.history import HistoryQuery
from chat.server.lines import Line
from chat.server.session import Presence
from chat.wire.protocol import (
    Away,
    Join,
    Kick,
    Leave,
    Part,
    SendAction,
    SendMessage,
    SendPrivate,
    SetModes,
    Welcome,
    Who,
)


class Directory:
    def __init__(self, *names: str) -> None:
        self.names = {name.casefold(): name for name in names}

        #: When each room last said something (CHATHISTORY TARGETS).
        self.said: dict[str, datetime] = {}

    def presence(self, name: str) -> Presence | None:
        found = self.names.get(name.casefold())
        return Presence(found, None, None, ("dev",)) if found else None

    def newest_said(self, room: str) -> datetime | None:
        return self.said.get(room)


def connection(*others: str) -> IrcConnection:
    conn = IrcConnection(ServerConfig(flood_rate=0))
    conn.attach(Directory(*others))
    return conn


def feed(conn: IrcConnection, *lines: str) -> list[object]:
    """Every request due after `lines`, with each one's served (successfully); the answers stay queued."""
    conn.receive_data(b"".join(line.encode() + b"\r\n" for line in lines), 0.0)
    out: list[object] = []
    while (due := conn.next_request(0.0)) is not None:
        out.append(due)
        conn.served(due, None)
    return out


def said(conn: IrcConnection) -> list[str]:
    return [answer.raw.decode() for answer in conn.answers_to_send() if isinstance(answer, IrcLine)]


def registered(nick: str = "bob", *others: str) -> IrcConnection:
    conn = connection(*others)
    [due] = [d for d in feed(conn, f"NICK {nick}", f"USER {nick} 0 * :{nick}") if not isinstance(d, Handled)]
    assert isinstance(due, Request) and isinstance(due.message, LogIn)
    assert due.message.join.name == nick
    said(conn)
    return conn


def test_the_framer_cuts_on_lf_drops_cr_and_reports_over_long_lines():
    framer = IrcFramer()
    assert framer.feed(b"PING a\r\nPING b\nPI") == [b"PING a", b"PING b"]
    assert framer.feed(b"NG c\r\n") == [b"PING c"]
    assert framer.feed(b"x" * MAX_BODY + b"\r\n") == [TooLong(False)]
    assert framer.feed(b"@" + b"t" * MAX_TAGS + b" PING x\r\n") == [TooLong(True)]
    assert framer.feed(b"@" + b"t" * (MAX_CLIENT_TAGS + 1) + b" PING x\r\n") == [TooLong(True)]
    assert framer.feed(b"@" + b"t" * MAX_CLIENT_TAGS + b" PING x\r\n") == [b"@" + b"t" * MAX_CLIENT_TAGS + b" PING x"]
    assert framer.feed(b"@" + b"t" * 100 + b" PING x\r\n") == [b"@" + b"t" * 100 + b" PING x"]


def test_parse_reads_tags_source_command_and_trailing():
    message = parse(b"@a=b\\sc;d :src privmsg #dev :hello there")
    assert message.tags == {"a": "b c", "d": ""}
    assert message.source == "src"
    assert message.command == "PRIVMSG"
    assert message.params == ["#dev", "hello there"]


def test_registration_waits_for_cap_end_and_welcomes_after_the_login():
    conn = connection()
    assert all(isinstance(d, Handled) for d in feed(conn, "CAP LS 302", "NICK bob", "USER b 0 * :B"))
    assert any("CAP * LS" in line and "sasl=PLAIN" in line for line in said(conn))
    feed(conn, "CAP REQ :server-time batch")
    assert any("ACK" in line for line in said(conn))
    [due] = feed(conn, "CAP END")
    assert isinstance(due, Request) and isinstance(due.message, LogIn)
    welcome = said(conn)
    assert [line.split()[1] for line in welcome[:5]] == ["001", "002", "003", "004", "005"]
    assert conn.caps == {"server-time", "batch"}


def test_commands_before_registration_get_451():
    conn = connection()
    feed(conn, "JOIN :", "PRIVMSG #dev :x")
    assert [line.split()[1] for line in said(conn)] == ["451", "451"]


def test_a_refused_login_is_433_and_registration_may_go_on():
    conn = connection()
    conn.receive_data(b"NICK alice\r\nUSER a 0 * :a\r\n", 0.0)
    assert isinstance(conn.next_request(0.0), Handled)
    due = conn.next_request(0.0)
    assert isinstance(due, Request) and isinstance(due.message, LogIn)
    [refusal] = conn.served(due, Refused("name_taken", "taken")) or []
    assert isinstance(refusal, IrcLine) and refusal.raw.split()[1] == b"433"
    [due] = feed(conn, "NICK bob")
    assert isinstance(due, Request) and isinstance(due.message, LogIn)


def test_sasl_plain_becomes_a_login_with_the_password_also_tried_as_a_token():
    conn = connection()
    feed(conn, "CAP LS 302", "NICK x", "USER x 0 * :x", "CAP REQ :sasl", "AUTHENTICATE PLAIN")
    assert "AUTHENTICATE +\r\n" in said(conn)
    payload = base64.b64encode(b"alice\0alice\0secret password").decode()
    [due] = feed(conn, f"AUTHENTICATE {payload}")
    assert isinstance(due, Request) and isinstance(due.message, LogIn)
    assert due.message.join == Join(name="alice", password="secret password", token="secret password")
    assert [line.split()[1] for line in said(conn)] == ["900", "903"]
    feed(conn, "CAP END")
    assert said(conn)[0].startswith(":chat 001 alice ")


def test_each_command_maps_to_the_hubs_request():
    conn = registered()
    conn.writer.joined.add("dev")  # as its welcome to #dev would have
    cases = {
        "JOIN #dev": Join(room="dev"),
        "PART #dev": Part(room="dev"),
        "PART #dev :\x02bye\x02 \x0304,01all": Part(room="dev", msg="bye all"),  # IRC's formatting left out
        "QUIT :later": Leave(msg="later"),
        "QUIT": Leave(),
        "PRIVMSG #dev :hi": SendMessage(room="dev", msg="hi"),
        "PRIVMSG #dev :\x01ACTION waves\x01": SendAction(room="dev", msg="waves"),
        "PRIVMSG alice :psst": SendPrivate(to="alice", msg="psst"),
        "NAMES #dev": Who(room="dev"),
        "WHO #dev": Who(room="dev"),
        "KICK #dev alice :go": Kick(room="dev", name="alice", reason="go"),
        "MODE #dev +m": SetModes(room="dev", on=["moderated"]),
    }
    for command, expected in cases.items():
        [due] = feed(conn, command)
        got = due.lines[0] if isinstance(due, Said) else due.message  # type: ignore[union-attr]
        assert got == expected, command


def test_lines_to_a_channel_not_joined_get_404_and_a_part_of_it_442():
    conn = registered()
    feed(conn, "PRIVMSG #dev :hi", "NOTICE #dev :quiet", "PART #dev")
    assert [line.split()[1] for line in said(conn)] == ["404", "442"]


def test_join_of_several_channels_is_one_request_each():
    conn = registered()
    dues = feed(conn, "JOIN #a,#b,bad")
    assert [d.message for d in dues if isinstance(d, Request)] == [Join(room="a"), Join(room="b")]
    assert any(" 403 " in line for line in said(conn))


def test_numerics_answered_here():
    conn = registered("bob", "alice")
    feed(conn, "PING tok", "ISON alice carol", "USERHOST alice", "WHOIS carol", "FROB", "PRIVMSG #dev")
    lines = said(conn)
    assert lines[0] == ":chat PONG chat tok\r\n"
    assert lines[1] == ":chat 303 bob alice\r\n"
    assert lines[2].startswith(":chat 302 bob alice=+")
    assert [line.split()[1] for line in lines[3:]] == ["401", "318", "421", "412"]


def test_nicks_and_channels_irc_cannot_carry_are_refused():
    assert nick_problem("bob") is None
    for bad in ("#bob", "b ob", "1bob", "bo,b", "", "x" * 40):
        assert nick_problem(bad) is not None
    assert room_of("#dev") == "dev"
    assert room_of("dev") is None
    assert room_of("#" + "x" * 40) is None


def test_a_line_over_the_limit_is_417_and_the_next_line_is_read():
    conn = registered()
    conn.receive_data(b"PRIVMSG #dev :" + b"x" * 600 + b"\r\nPING x\r\n", 0.0)
    assert said(conn)[0].split()[1] == "417"
    assert isinstance(conn.next_request(0.0), Handled)
    assert "PONG" in said(conn)[0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=600), max_size=8), st.booleans())
def test_any_bytes_give_numerics_or_requests_never_an_exception(chunks, register_first):
    conn = registered() if register_first else connection()
    for chunk in chunks:
        conn.receive_data(chunk, 0.0)
        while (due := conn.next_request(0.0)) is not None:
            assert isinstance(due, Request | Said | Handled)
            conn.served(due, None)
        for answer in conn.answers_to_send():
            assert isinstance(answer, IrcLine) or answer is not None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["NICK", "USER", "CAP", "JOIN", "PRIVMSG", "MODE", "KICK", "AUTHENTICATE",
                                  "CHATHISTORY", "TOPIC", "WHO", "AWAY", "PART", "NAMES", "LIST"]), max_size=6),
       st.lists(st.text(max_size=40), max_size=5))
def test_any_command_with_any_params_never_raises(commands, params):
    conn = registered()
    for command in commands:
        text = " ".join([command, *[p.replace("\r", "").replace("\n", "") for p in params]])
        conn.receive_data(text.encode() + b"\r\n", 0.0)
        while (due := conn.next_request(0.0)) is not None:
            conn.served(due, Refused("not_in_room", "no"))
        conn.answers_to_send()


def test_a_sasl_exchange_that_never_ends_is_refused_not_kept():
    conn = connection()
    feed(conn, "CAP LS 302", "NICK x", "USER x 0 * :x", "CAP REQ :sasl", "AUTHENTICATE PLAIN")
    said(conn)
    feed(conn, *["AUTHENTICATE " + "A" * 400] * 20)
    assert any(" 904 " in line for line in said(conn))


@settings(max_examples=60)
@given(
    caps=st.sets(st.sampled_from(["server-time", "message-tags", "account-tag", "extended-join"])),
    kind=st.sampled_from(["message", "action"]),
    text=st.text(min_size=1, max_size=700).filter(lambda t: t.strip()),
)
def test_a_said_line_is_written_from_its_parts_as_its_model_would_be(caps, kind, text):
    from datetime import UTC, datetime

    from chat.server.dialects.irc import IrcRender
    from chat.server.lines import Line
    from chat.wire.protocol import Action, ChatMessage, format_time

    stamp = datetime(2026, 12, 7, 3, 4, 5, 678000, tzinfo=UTC)
    model = (ChatMessage if kind == "message" else Action)(room="dev", id=7, name="ann", msg=text, time=stamp)
    render = IrcRender(frozenset(caps), None)
    from_parts = Line.said(kind, "dev", "ann", text, format_time(stamp), 7)
    assert from_parts.encoded(render) == Line.of(model).encoded(render)


@settings(max_examples=200)
@given(
    text=st.one_of(st.text(max_size=600), st.text(alphabet="ab \r\n\\;", max_size=30)),
    tags=st.dictionaries(st.sampled_from(["time", "msgid", "account", "batch"]), st.text(max_size=12), max_size=4),
    nick=st.sampled_from(["ann", "bob_1", "x" * 30]),
)
def test_a_privmsg_written_straight_is_what_the_general_writer_makes(text, tags, nick):
    from chat.server.dialects.irc import _privmsg, hostmask
    from chat.server.dialects.ircwire import escape_tag, line, split_text

    source, target = hostmask(nick), "#dev"
    room = max(MAX_BODY - 14 - len(source.encode()) - len(target.encode()), MAX_BODY - 2)
    general = b"".join(line("PRIVMSG", target, part, source=source, tags=tags) for part in split_text(text, room))
    assert _privmsg(source, target, text, tags) == general
    escapes = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
    assert escape_tag(text) == "".join(escapes.get(c, c) for c in text)


def test_privmsgs_to_one_channel_read_together_are_one_batch_as_json_lines_are():
    conn = registered("bob")
    conn.writer.joined.update({"dev", "ops"})  # as its welcomes would have
    lines = ["PRIVMSG #dev :one", "PRIVMSG #Dev :\x01ACTION two\x01", "PRIVMSG #dev :three", "PRIVMSG #ops :four",
             "PRIVMSG #dev :five", "PRIVMSG #nowhere :six", "PRIVMSG #dev :seven"]  # fmt: skip
    due = feed(conn, *lines)
    batches = [[(type(line).__name__, line.room, line.msg) for line in d.lines] for d in due if isinstance(d, Said)]
    assert batches == [
        [("SendMessage", "dev", "one"), ("SendAction", "Dev", "two"), ("SendMessage", "dev", "three")],
        [("SendMessage", "ops", "four")],
        [("SendMessage", "dev", "five")],  # a line to a channel it is not in is not taken along
        [("SendMessage", "dev", "seven")],
    ]
    assert b"404" in b"".join(answer.raw for answer in conn.answers_to_send() if isinstance(answer, IrcLine))
def chathistory(conn: IrcConnection, command: str) -> object:
    """What one CHATHISTORY line becomes: its HistoryQuery, or the FAIL it was answered with."""
    [due] = feed(conn, command)
    if isinstance(due, Request):
        return due.message
    [answer] = said(conn)
    return answer.split(" :")[0].split(" ", 1)[1]


def test_chathistory_subcommands_become_queries_by_id_or_time():
    conn = registered()
    stamp = datetime(2026, 12, 7, 3, 4, 5, 123000, tzinfo=UTC)
    cases = {
        "CHATHISTORY LATEST #dev * 10": HistoryQuery("dev", "latest", (), 10),
        "CHATHISTORY latest #dev msgid=7 10": HistoryQuery("dev", "latest", (7,), 10),
        "CHATHISTORY BEFORE #dev timestamp=2026-12-07T03:04:05.123Z 2": HistoryQuery("dev", "before", (stamp,), 2),
        "CHATHISTORY AFTER #dev msgid=3 600": HistoryQuery("dev", "after", (3,), CHATHISTORY_LIMIT),
        "CHATHISTORY AROUND #dev msgid=3 0": HistoryQuery("dev", "around", (3,), CHATHISTORY_LIMIT),
        "CHATHISTORY BETWEEN #dev msgid=9 timestamp=2026-12-07T03:04:05.123Z 3":
            HistoryQuery("dev", "between", (9, stamp), 3),
    }
    for command, expected in cases.items():
        assert chathistory(conn, command) == expected, command


def test_chathistory_that_cannot_be_answered_fails_as_the_spec_words_it():
    conn = registered()
    cases = {
        "CHATHISTORY FROB #dev * 1": "FAIL CHATHISTORY UNKNOWN_COMMAND FROB",
        "CHATHISTORY BETWEEN #dev msgid=1 2": "FAIL CHATHISTORY NEED_MORE_PARAMS BETWEEN",
        "CHATHISTORY AFTER #dev msgid=x 2": "FAIL CHATHISTORY INVALID_PARAMS msgid=x",
        "CHATHISTORY BEFORE #dev * 2": "FAIL CHATHISTORY INVALID_PARAMS *",
        "CHATHISTORY AFTER #dev timestamp=yesterday 2": "FAIL CHATHISTORY INVALID_PARAMS timestamp=yesterday",
        "CHATHISTORY LATEST #dev * ten": "FAIL CHATHISTORY INVALID_PARAMS ten",
        "CHATHISTORY LATEST alice * 10": "FAIL CHATHISTORY INVALID_TARGET LATEST alice",
    }
    for command, expected in cases.items():
        assert chathistory(conn, command) == expected, command
    conn.receive_data(b"CHATHISTORY LATEST #dev * 10\r\n", 0.0)
    due = conn.next_request(0.0)
    assert due is not None
    [refusal] = conn.served(due, Refused("not_in_room", "you are not in dev")) or []
    assert isinstance(refusal, IrcLine)
    assert refusal.raw.startswith(b":chat FAIL CHATHISTORY INVALID_TARGET LATEST #dev :")


def test_away_notify_says_each_change_once_however_many_rooms_tell_it():
    conn = registered("bob")
    plain = conn.writer.encode(Line.of(Away(room="dev", name="alice", msg="lunch")))
    assert plain == b""  # without away-notify
    conn.caps = frozenset({"away-notify"})
    conn.writer.caps_changed()
    lines = [
        conn.writer.encode(Line.of(away))
        for away in (
            Away(room="dev", name="alice", msg="lunch"),
            Away(room="lobby", name="alice", msg="lunch"),  # the same change, told by a second room
            Away(room="dev", name="bob", msg="gone"),  # its own: answered with 306 already
            Away(room="dev", name="alice", msg=""),
        )
    ]
    assert lines == [b":alice!~u@chat AWAY :lunch\r\n", b"", b"", b":alice!~u@chat AWAY\r\n"]
    assert conn.writer.encode(Line.of(Away(name="alice", msg="lunch"))) == b":chat 301 bob alice lunch\r\n"


def test_chathistory_targets_lists_the_channels_it_is_in_by_their_newest_line_between_two_times():
    conn = registered()
    conn.caps = frozenset({"batch"})
    directory = Directory()
    conn.attach(directory)
    start = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
    for room, minutes in (("dev", 2), ("ops", 1), ("quiet", 9), ("elsewhere", 3)):
        directory.said[room] = start.replace(minute=minutes)
    for room in ("dev", "ops", "quiet", "idle"):  # not in "elsewhere"; nothing said in "idle"
        conn.writer.modes[room] = ()
    feed(conn, "CHATHISTORY TARGETS timestamp=2026-12-07T03:00:00.000Z timestamp=2026-12-07T03:05:00.000Z 10")
    lines = said(conn)
    assert lines[0].startswith(":chat BATCH +") and lines[0].endswith(" draft/chathistory-targets\r\n")
    batch = lines[0].split()[2][1:]
    assert lines[1:-1] == [
        f"@batch={batch} :chat CHATHISTORY TARGETS #ops 2026-12-07T03:01:00.000Z\r\n",
        f"@batch={batch} :chat CHATHISTORY TARGETS #dev 2026-12-07T03:02:00.000Z\r\n",
    ]
    assert lines[-1] == f":chat BATCH -{batch}\r\n"
    feed(conn, "CHATHISTORY TARGETS timestamp=2026-12-07T03:05:00.000Z timestamp=2026-12-07T03:01:00.000Z 1")
    assert [line.split()[-2] for line in said(conn)[1:-1]] == ["#dev"]  # either order; the limit; both ends left out
    feed(conn, "CHATHISTORY TARGETS msgid=1 timestamp=2026-12-07T03:01:00.000Z 1")
    assert said(conn)[0].startswith(":chat FAIL CHATHISTORY INVALID_PARAMS msgid=1 ")


def test_a_labeled_response_is_an_ack_one_labeled_line_or_a_batch():
    assert labeled_response("a", b"", "b1", "chat") == b"@label=a :chat ACK\r\n"
    assert labeled_response("a", b":chat 306 bob :away\r\n", "b1", "chat") == b"@label=a :chat 306 bob :away\r\n"
    nested = b":chat BATCH +h1 chathistory #dev\r\n@batch=h1 :x!~u@chat PRIVMSG #dev hi\r\n:chat BATCH -h1\r\n"
    assert labeled_response("a", nested, "b1", "chat").split(b"\r\n") == [
        b"@label=a :chat BATCH +b1 labeled-response",
        b"@batch=b1 :chat BATCH +h1 chathistory #dev",
        b"@batch=h1 :x!~u@chat PRIVMSG #dev hi",  # inside its own batch, nested in the labeled one
        b"@batch=b1 :chat BATCH -h1",
        b":chat BATCH -b1",
        b"",
    ]
    assert labeled_response("a", b":chat 1\r\n:chat 2\r\n", None, "chat") == b"@label=a :chat 1\r\n:chat 2\r\n"


def test_a_labeled_command_is_answered_whole_once_served():
    conn = registered()
    conn.caps = frozenset({"labeled-response", "batch"})
    feed(conn, "@label=p PING x")
    assert said(conn) == ["@label=p :chat PONG chat x\r\n"]
    conn.receive_data(b"@label=j JOIN #a,bad,#b\r\n", 0.0)
    first = conn.next_request(0.0)
    assert isinstance(first, Request) and first.message == Join(room="a")
    assert said(conn) == []  # the 403 for "bad" waits for the rest of the answer
    conn.served(first, None)
    second = conn.next_request(0.0)
    assert isinstance(second, Request) and second.message == Join(room="b")
    assert conn.served(second, Refused("banned", "you are banned from b", "b")) == ()
    lines = "".join(said(conn)).split("\r\n")
    assert lines[0].startswith("@label=j :chat BATCH +") and lines[0].endswith(" labeled-response")
    batch = lines[0].split()[3][1:]
    assert [line.split()[2] for line in lines[1:3]] == ["403", "474"]
    assert all(line.startswith(f"@batch={batch} ") for line in lines[1:3]) and lines[3] == f":chat BATCH -{batch}"
    feed(conn, "@label=q QUIT :bye")  # answered by the ERROR that ends the connection, at once
    assert said(conn)[0].startswith("ERROR ")
    feed(conn, "@label=n PRIVMSG nobody")  # not enough parameters: answered at once
    assert said(conn)[0].startswith("@label=n :chat 412 ")


def test_a_labeled_answer_goes_out_as_it_is_written_not_after_the_rooms_next_lines():
    conn = registered()
    conn.caps = frozenset({"labeled-response", "batch"})
    conn.receive_data(b"@label=w JOIN #dev\r\n", 0.0)
    due = conn.next_request(0.0)
    assert isinstance(due, Request) and due.message == Join(room="dev")
    # The hub's welcome, written from the thread serving the JOIN: out at once, in the labeled batch
    # (so a line the room says right after it cannot come before the JOIN).
    written = conn.writer.encode(Line.of(Welcome(room="dev", name="bob", users=["bob"], history=0)))
    lines = written.decode().split("\r\n")
    assert lines[0].startswith("@label=w :chat BATCH +") and lines[0].endswith(" labeled-response")
    batch = lines[0].split()[3][1:]
    assert [line.split()[2] for line in lines[1:4]] == ["JOIN", "353", "366"]
    assert all(line.startswith(f"@batch={batch} ") for line in lines[1:4])
    assert conn.served(due, None) is None
    assert said(conn) == [f":chat BATCH -{batch}\r\n"]
