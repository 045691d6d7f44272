"""Microbenchmarks of the functions a CHAT_MYPYC=1 build compiles, in whichever build this Python runs.

Each case times one hot function on in-memory data (no sockets) and prints the best of several
repeats in µs per call, with the build (chat.BUILD) it ran. To compare the two builds of one
install, alternate them in one sitting:

  for i in 1 2 3; do CHAT_PURE_PYTHON=1 .venv/bin/python bench/mypyc_micro.py; .venv/bin/python bench/mypyc_micro.py; done
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable

import chat
from chat.server.config import ServerConfig
from chat.server.dialects.irc import IrcRender
from chat.server.dialects.ircwire import IrcFramer, parse
from chat.server.dialects.jsonlines import JsonLinesConnection
from chat.server.fanout import Fanout, Subscriber
from chat.server.limits import TokenBucket
from chat.server.lines import Line
from chat.wire.codec import LineFramer, decode_client

TIME = "2026-12-07T03:00:00.000Z"


def fanout_pass(rooms: int, members: int, lines: int) -> Callable[[], None]:
    """One writer pass: `lines` said lines published to each of `rooms` rooms of `members`, then
    due() and take() for every member (the joined slice shared per room)."""
    fanout: Fanout[Subscriber] = Fanout()
    peers = []
    for room in range(rooms):
        for member in range(members):
            peer = Subscriber(f"p{room}.{member}")
            fanout.subscribe(peer, f"r{room}")
            peers.append(peer)
    said = [Line.said("message", "r0", "alice", "hello there, how is everybody", TIME, n) for n in range(lines)]

    def run() -> None:
        for room in range(rooms):
            fanout.publish(f"r{room}", *said)
        for peer in fanout.due():
            fanout.take(peer)
            fanout.accepted(peer, b"", 0)
        fanout.trim()

    return run


def said_line() -> Callable[[], None]:
    def run() -> None:
        Line.said("message", "lobby", "alice", "hello there, how is everybody", TIME, 12345)

    return run


def json_receive(lines: int) -> Callable[[], None]:
    """A read of `lines` message lines through the JSON dialect: framed, decoded, charged, batched."""
    data = b"".join(
        json.dumps({"type": "message", "room": "lobby", "msg": f"line {n} of the burst"}).encode() + b"\n"
        for n in range(lines)
    )
    config = ServerConfig(flood_rate=0)

    def run() -> None:
        connection = JsonLinesConnection(config)
        connection.receive_data(data, 1.0)
        while connection.next_request(1.0) is not None:
            pass

    return run


def json_framer(lines: int) -> Callable[[], None]:
    data = b'{"type":"message","room":"lobby","msg":"hello there"}\n' * lines
    framer = LineFramer(16384)

    def run() -> None:
        framer.feed(data[:-7])
        framer.feed(data[-7:])

    return run


def decode() -> Callable[[], None]:
    line = b'{"type":"message","room":"lobby","msg":"hello there, how is everybody"}'

    def run() -> None:
        decode_client(line)

    return run


def irc_in(lines: int) -> Callable[[], None]:
    data = b"@time=2026-12-07T03:00:00.000Z PRIVMSG #lobby :hello there, how is everybody\r\n" * lines
    framer = IrcFramer()

    def run() -> None:
        for line in framer.feed(data):
            assert isinstance(line, bytes)
            parse(line)

    return run


def irc_render() -> Callable[[], None]:
    render = IrcRender(frozenset({"server-time", "message-tags"}), None)

    def run() -> None:
        line = Line.said("message", "lobby", "alice", "hello there, how is everybody", TIME, 12345)
        render.encode(line)

    return run


def bucket() -> Callable[[], None]:
    now = [0.0]
    pacer = TokenBucket(1000.0, 50.0, clock=lambda: now[0])

    def run() -> None:
        now[0] += 0.001
        pacer.charge(1.0)

    return run


CASES: dict[str, tuple[Callable[[], None], int]] = {
    "fan-out pass, 1 room of 100, 1 line": (fanout_pass(1, 100, 1), 100),
    "fan-out pass, 1 room of 500, 10 lines": (fanout_pass(1, 500, 10), 500),
    "fan-out pass, 20 rooms of 10, 1 line": (fanout_pass(20, 10, 1), 200),
    "Line.said (a said line's JSON)": (said_line(), 1),
    "JSON read of 20 lines -> requests": (json_receive(20), 20),
    "LineFramer.feed, 40 lines": (json_framer(40), 40),
    "decode_client, one message": (decode(), 1),
    "IRC framing + parse, 20 PRIVMSG": (irc_in(20), 20),
    "IrcRender.encode, one said line": (irc_render(), 1),
    "TokenBucket.charge": (bucket(), 1),
}


def main() -> None:
    print(f"# {chat.BUILD.describe()}")
    for name, (run, per) in CASES.items():
        calls = max(1, int(0.2 / max(min(timeit.repeat(run, number=1, repeat=3)), 1e-7)))
        best = min(timeit.repeat(run, number=calls, repeat=5)) / calls
        print(json.dumps({"case": name, "compiled": chat.BUILD.compiled, "us_per_item": round(best / per * 1e6, 4)}))


if __name__ == "__main__":
    main()
