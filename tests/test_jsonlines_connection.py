"""The JSON-lines connection without sockets: bytes in at a given time; requests, answers and a close out."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.errors import ProtocolError, Refused, RequestFailed
from chat.server.config import ServerConfig
from chat.server.dialects.base import MAX_BATCH, Due, Refusal, Request, Said
from chat.server.dialects.jsonlines import JsonLinesConnection
from chat.wire.codec import encode, encode_error, error_reply
from chat.wire.protocol import ErrorReply, Join, Notice, Ping, SendAction, SendMessage


def connection(tls: bool = False, **options: Any) -> JsonLinesConnection:
    return JsonLinesConnection(ServerConfig(**options), tls=tls)


def line(**fields: object) -> bytes:
    return json.dumps(fields).encode() + b"\n"


def say(msg: str, room: str = "lobby") -> bytes:
    return line(type="message", room=room, msg=msg)


def ping() -> bytes:
    return line(type="ping")


def due_now(conn: JsonLinesConnection, now: float = 0.0) -> list[Due]:
    """Every request due at `now`, taken out."""
    taken = []
    while (request := conn.next_request(now)) is not None:
        taken.append(request)
    return taken


def said(request: Due | None) -> list[str]:
    assert isinstance(request, Said), request
    return [line.msg for line in request.lines]


# --- framing --------------------------------------------------------------------------------


def test_a_line_split_across_reads_is_one_request():
    conn = connection()
    for piece in (b'{"type": "mes', b'sage", "msg": "h', b'i"}', b"\n"):
        assert conn.next_request(0.0) is None
        conn.receive_data(piece, 0.0)
    [request] = due_now(conn)
    assert said(request) == ["hi"]


def test_several_lines_in_one_read_are_several_requests_in_order():
    conn = connection()
    conn.receive_data(line(type="join", name="alice") + ping() + say("hi"), 0.0)
    assert due_now(conn) == [
        Request(Join(name="alice")),
        Request(Ping()),
        Said("lobby", (SendMessage(msg="hi"),)),
    ]


def test_blank_lines_are_ignored_and_cost_nothing():
    conn = connection(flood_rate=1, flood_burst=1)
    conn.receive_data(b"\n  \n\r\n\t\n", 0.0)
    assert conn.next_due is None and not conn.answers_to_send() and conn.closing is None
    conn.receive_data(ping(), 0.0)
    assert due_now(conn) == [Request(Ping())]  # the burst of one is still whole


def test_a_line_over_the_limit_closes_before_it_ends():
    conn = connection(max_line=64, flood_rate=1, flood_burst=1)
    conn.receive_data(ping() + ping(), 0.0)  # the second waits its turn
    conn.receive_data(b'{"type": "message", "msg": "' + b"x" * 64, 0.0)
    close = conn.closing
    assert close is not None
    assert isinstance(close.final, ErrorReply) and close.final.code == "line_too_long"
    assert close.reason is None and close.log == "line over 64 bytes" and close.level == logging.WARNING
    assert conn.next_due is None  # nothing waiting is served once it closes
    conn.receive_data(ping(), 0.0)
    assert conn.next_due is None


def test_garbage_is_answered_in_its_turn_and_the_connection_goes_on():
    conn = connection()
    conn.receive_data(say("before") + b"nonsense\n" + b'{"type": "teleport"}\n' + say("after"), 0.0)
    before, garbage, unknown, after = due_now(conn)
    assert said(before) == ["before"] and said(after) == ["after"]
    assert isinstance(garbage, Refusal) and garbage.failure.code == "invalid_json"
    assert isinstance(unknown, Refusal) and unknown.failure.code == "unknown_type"
    assert conn.closing is None and not conn.answers_to_send()


def test_garbage_is_paced_like_any_line():
    conn = connection(flood_rate=10, flood_burst=1)
    conn.receive_data(b"nonsense\n" * 2, 0.0)
    assert isinstance(conn.next_request(0.0), Refusal)
    assert conn.next_request(0.0) is None
    assert conn.next_due == pytest.approx(0.1)


# --- pacing ---------------------------------------------------------------------------------


def test_the_burst_is_served_at_once_then_the_rate():
    conn = connection(flood_rate=10, flood_burst=5)
    conn.receive_data(ping() * 8, 0.0)
    assert len(due_now(conn, 0.0)) == 5
    assert conn.next_due == pytest.approx(0.1)
    assert conn.next_request(0.05) is None
    assert len(due_now(conn, 0.1 + 1e-6)) == 1
    assert len(due_now(conn, 0.3 + 1e-6)) == 2
    assert conn.next_due is None


def test_a_client_too_far_ahead_of_its_rate_is_cut_off_with_excess_flood():
    conn = connection(flood_rate=10, flood_burst=5, flood_max_delay=1)
    conn.receive_data(ping() * 10, 0.0)
    assert conn.closing is None
    conn.receive_data(ping() * 10, 0.0)  # the 16th line would wait 1.1 s
    close = conn.closing
    assert close is not None
    assert isinstance(close.final, ErrorReply) and close.final.code == "excess_flood"
    assert close.reason == "excess_flood" and close.log == "excess flood"
    assert conn.next_request(10.0) is None  # what it sent before is not served


def test_time_passing_refills_the_burst():
    conn = connection(flood_rate=10, flood_burst=5, flood_max_delay=1)
    for second in range(20):
        conn.receive_data(ping() * 5, float(second))
        assert len(due_now(conn, float(second))) == 5
    assert conn.closing is None


def test_a_person_slowed_down_is_told_once_per_slow_streak():
    conn = connection(flood_rate=10, flood_burst=2)
    conn.receive_data(say("a") + say("b"), 0.0)
    assert not conn.answers_to_send()  # within the burst
    conn.receive_data(say("c") + say("d"), 0.0)
    [notice] = conn.answers_to_send()
    assert isinstance(notice, Notice) and notice.code == "rate_limited" and notice.delay_ms == 100
    conn.receive_data(say("e"), 0.0)
    assert not conn.answers_to_send()  # the same streak
    conn.receive_data(say("f"), 10.0)  # the bucket refilled: a line served at once ends the streak
    conn.receive_data(say("g") + say("h"), 10.0)
    [again] = conn.answers_to_send()
    assert isinstance(again, Notice) and again.code == "rate_limited"


def test_requests_a_client_makes_by_itself_are_paced_without_a_word():
    conn = connection(flood_rate=10, flood_burst=2)
    conn.receive_data(line(type="join", room="a") + line(type="history", room="a") + ping() * 3, 0.0)
    assert conn.next_due > 0.0  # a join costs more than the whole burst
    assert not conn.answers_to_send()
    conn.receive_data(line(type="private", to="bob", msg="hi"), 0.0)  # said: now it is told
    [notice] = conn.answers_to_send()
    assert isinstance(notice, Notice) and notice.code == "rate_limited"


def test_no_rate_means_no_limit():
    conn = connection(flood_rate=0, flood_max_delay=0)
    conn.receive_data(ping() * 1000, 0.0)
    assert conn.closing is None and len(due_now(conn)) == 1000


# --- batching -------------------------------------------------------------------------------


def test_lines_said_to_one_room_are_served_as_one_batch():
    conn = connection()
    conn.receive_data(say("a") + line(type="action", msg="waves") + say("b"), 0.0)
    [batch] = due_now(conn)
    assert batch == Said("lobby", (SendMessage(msg="a"), SendAction(msg="waves"), SendMessage(msg="b")))


def test_a_batch_stops_at_another_room_or_another_request():
    conn = connection()
    conn.receive_data(say("a") + say("b", room="other") + say("c") + ping() + say("d") + b"x\n" + say("e"), 0.0)
    requests = due_now(conn)
    assert [type(request).__name__ for request in requests] == [
        "Said",
        "Said",
        "Said",
        "Request",
        "Said",
        "Refusal",
        "Said",
    ]
    assert [said(r) for r in requests if isinstance(r, Said)] == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert [r.room for r in requests if isinstance(r, Said)] == ["lobby", "other", "lobby", "lobby", "lobby"]


def test_a_batch_takes_only_lines_already_due_and_at_most_max_batch():
    conn = connection(flood_rate=10, flood_burst=2)
    conn.receive_data(say("a") + say("b") + say("c"), 0.0)
    assert said(conn.next_request(0.0)) == ["a", "b"]
    assert said(conn.next_request(0.1 + 1e-6)) == ["c"]
    unlimited = connection(flood_rate=0)
    unlimited.receive_data(b"".join(say(str(n)) for n in range(MAX_BATCH + 6)), 0.0)
    assert [len(said(batch)) for batch in due_now(unlimited)] == [MAX_BATCH, 6]


def test_private_and_classic_lines_are_not_batched():
    conn = connection()
    conn.receive_data(
        line(name="old", msg="a") + line(name="old", msg="b") + line(type="private", to="b", msg="c"), 0.0
    )
    assert [type(request) for request in due_now(conn)] == [Request, Request, Request]


# --- TLS where plain lines are spoken, and the end of input ---------------------------------

CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)


def test_a_tls_handshake_on_a_plain_connection_is_refused():
    conn = connection()
    conn.receive_data(CLIENT_HELLO, 0.0)
    close = conn.closing
    assert close is not None
    assert isinstance(close.final, ErrorReply) and close.final.code == "plaintext_only"
    assert close.reason is None and close.level == logging.INFO
    assert close.log == "a TLS handshake on the plaintext port"


def test_a_tls_handshake_is_recognised_however_its_first_bytes_arrive():
    conn = connection()
    conn.receive_data(CLIENT_HELLO[:1], 0.0)
    assert conn.closing is None
    conn.receive_data(CLIENT_HELLO[1:], 0.0)
    assert conn.closing is not None
    assert isinstance(conn.closing.final, ErrorReply) and conn.closing.final.code == "plaintext_only"


@pytest.mark.parametrize(
    ("first", "later"),
    [
        (ping(), CLIENT_HELLO),  # only the stream's first bytes are sniffed
        (b"\x16\n", ping()),  # one byte of it is no handshake
    ],
)
def test_only_a_stream_that_starts_with_a_handshake_is_refused(first, later):
    conn = connection()
    conn.receive_data(first, 0.0)
    conn.receive_data(later, 0.0)
    assert conn.closing is None


def test_a_tls_connection_does_not_sniff_its_decrypted_bytes():
    conn = connection(tls=True)
    conn.receive_data(CLIENT_HELLO + b"\n", 0.0)
    assert conn.closing is None
    assert isinstance(conn.next_request(0.0), Refusal)


def test_at_the_end_of_input_waiting_lines_still_come_due_and_an_unfinished_one_is_dropped():
    conn = connection(flood_rate=10, flood_burst=1)
    conn.receive_data(say("a") + say("b") + b'{"type": "message", "msg": "unfinished"}', 0.0)
    conn.receive_eof()
    assert conn.ended and conn.unfinished > 0
    assert said(conn.next_request(0.0)) == ["a"]
    assert conn.next_due == pytest.approx(0.1)
    conn.receive_data(b"\n" + say("after the end"), 0.0)  # nothing is read after the end
    assert said(conn.next_request(1.0)) == ["b"]
    assert conn.next_request(1.0) is None and conn.next_due is None


def test_waiting_requests_can_be_dropped():
    conn = connection(flood_rate=10, flood_burst=1)
    conn.receive_data(ping() * 3, 0.0)
    conn.drop_waiting()
    assert conn.next_due is None and conn.next_request(10.0) is None


# --- whatever arrives -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        ProtocolError("invalid_json", "x"),
        Refused("muted", "you are muted in \ud800 room", room="\udfff"),
        RequestFailed("storage_failed", "oops", room="r"),
    ],
)
def test_an_error_reply_encodes_as_encode_error_does(failure):
    assert encode(error_reply(failure)) == encode_error(failure)


chunks = st.lists(
    st.one_of(
        st.binary(max_size=80),
        st.sampled_from([say("hi"), ping(), b"\n", b"\x16\x03", b"{", b"\r\n", CLIENT_HELLO, b"\xff\n"]),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(chunks, st.booleans(), st.booleans(), st.integers(8, 200))
def test_any_bytes_in_never_raise(pieces, tls, end, max_line):
    conn = connection(tls=tls, max_line=max_line, flood_rate=50, flood_burst=3, flood_max_delay=0.2)
    now = 0.0
    for piece in pieces:
        conn.receive_data(piece, now)
        for answer in conn.answers_to_send():
            encode(answer)
        for request in due_now(conn, now):
            if isinstance(request, Refusal):
                encode(error_reply(request.failure))
        now += 0.01
    if end:
        conn.receive_eof()
    due_now(conn, now + 100.0)
    if conn.closing is not None:
        encode(conn.closing.final)
        assert conn.next_due is None
