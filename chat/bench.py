"""chat-bench: how many deliveries a second a chat server makes, and how fast.

N clients join one room; S of them send at an aggregate rate (or as fast as
the server takes) for T seconds; every client receives everything. Most
receivers only count newlines (cheap, so the generator is not the
bottleneck); a few sampled ones parse every line, check ids for loss,
duplicates and order, and measure latency from a send timestamp carried in
the text. Markers START and END bracket the measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from chat.cli import raise_open_file_limit
from chat.server.config import NO_LIMIT_FLAGS

START = b"bench:START"
END = b"bench:END"


class Dialect:
    """How a bench client speaks to one kind of server: our JSON lines (this class) or IRC."""

    name = "chat"
    #: Whether the server sends a sender its own messages back (ours does; IRC does not).
    echoes = True
    #: How many clients may be connecting and joining at once.
    connect_at_once = 200
    #: Whether its lines travel in WebSocket text frames (the web port) rather than straight on TCP.
    websocket = False

    def room(self, index: int | None) -> bytes:
        return b"lobby" if index is None else b"r%d" % index

    def hello(self, name: str, room: bytes) -> bytes:
        """What a client writes right after connecting."""
        join = {"type": "join", "name": name, **({"room": room.decode()} if room != b"lobby" else {})}
        return json.dumps(join).encode() + b"\n"

    def setup(self, line: bytes, room: bytes) -> tuple[bool, bytes]:
        """A line read before the client is in its room: whether it now is, and what to answer."""
        return b'"welcome"' in line, b""

    def say(self, room: bytes, text: bytes) -> bytes:
        where = b"" if room == b"lobby" else b'"room":"%s",' % room
        return b'{"type":"message",%s"msg":"%s"}\n' % (where, text)

    def said(self, line: bytes) -> tuple[int | None, str] | None:
        """The id (if the protocol numbers lines) and text of a chat line; None for any other line."""
        message = json.loads(line)
        if message.get("type") != "message":
            return None
        return message["id"], message["msg"]


class IrcDialect(Dialect):
    """IRC (RFC 2812) as ngIRCd speaks it: NICK and USER, JOIN after the 001 welcome, in once 366 ends the names."""

    name = "irc"
    echoes = False
    # ngIRCd registers a crowd of new connections slowly (minutes for 500 at 200 at once); 20 keeps it flowing.
    connect_at_once = 20

    def room(self, index: int | None) -> bytes:
        return b"#bench" if index is None else b"#r%d" % index

    def hello(self, name: str, room: bytes) -> bytes:
        nick = name.encode()
        return b"NICK %s\r\nUSER %s 0 * :%s\r\n" % (nick, nick, nick)

    def setup(self, line: bytes, room: bytes) -> tuple[bool, bytes]:
        words = line.split(b" ", 3)
        if words[0] == b"PING":
            return False, b"PONG " + line[5:] + b"\r\n"
        if len(words) > 1 and words[1] == b"001":
            return False, b"JOIN " + room + b"\r\n"
        return len(words) > 1 and words[1] == b"366", b""

    def say(self, room: bytes, text: bytes) -> bytes:
        return b"PRIVMSG %s :%s\r\n" % (room, text)

    def said(self, line: bytes) -> tuple[int | None, str] | None:
        at = line.find(b" PRIVMSG ")
        if at < 0:
            return None
        text = line.find(b" :", at + 9)
        return None, line[text + 2 :].rstrip(b"\r").decode() if text >= 0 else ""


class WebDialect(Dialect):
    """Our JSON lines in WebSocket text frames through the web port (--web-port): what a browser page costs."""

    name = "web"
    websocket = True


DIALECTS: dict[str, Dialect] = {"chat": Dialect(), "irc": IrcDialect(), "web": WebDialect()}


class Receiver(asyncio.Protocol):
    """Counts the lines between the START and END markers; sampled ones parse them."""

    def __init__(self, sampled: bool, dialect: Dialect | None = None, room: bytes = b"lobby") -> None:
        self.sampled = sampled
        #: A sampled receiver parses at most one read per this many ns, and only counts the others
        #: (0: parses every read). At full speed parsing every line would make the generator the limit.
        self.parse_every_ns = 0
        self._parsed_at = -(1 << 62)  # long ago: the first read after START is parsed
        self._fragment = False  # the last read was counted, not parsed, and ended inside a line
        self.dialect = dialect or DIALECTS["chat"]
        self.room = room
        #: Messages this client sent itself: what it never sees back from a server that does not echo.
        self.own = 0
        #: Its number as a sender (it starts the text of what it says).
        self.index = 0
        #: The max-mode flow this client is the probe of: every read it makes tops the flow up.
        self.flow: Flow | None = None
        self.transport: asyncio.Transport | None = None
        self.welcomed = asyncio.Event()
        self.ended = asyncio.Event()
        self.closed = asyncio.Event()
        self.started = asyncio.Event()  # the START marker has gone by
        self.count = 0
        self.latencies: list[float] = []
        self.ids: list[int] = []
        self._tail = b""
        self._previous = b""  # the end of the last chunk, for a marker split across two

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self._take(data)
        if self.flow is not None:
            self.flow.top_up()

    def _take(self, data: bytes) -> None:
        if self.welcomed.is_set() and not self.started.is_set():
            self._await_start(data)
            return
        if not self.started.is_set() or not self.welcomed.is_set():
            self._parse(data)
            return
        if self.sampled:
            now = time.monotonic_ns()
            if now - self._parsed_at >= self.parse_every_ns:
                if b"\n" in data:  # a read that ends no line is no sample
                    self._parsed_at = now
                if not self.parse_every_ns:
                    self._parse(data)
                    return
                cut = _after_lines(data, SAMPLE_LINES)  # parse a few lines of this read, count the rest
                self._parse(data[:cut])
                data = data[cut:]
                if not data or self.ended.is_set():
                    return
            self._tail = b""  # its line ends in this read, and is counted here
            self._fragment = not data.endswith(b"\n")
        if self.ended.is_set():
            return
        window = self._previous + data
        end = window.find(END)
        if end < 0:
            self.count += data.count(b"\n")
            self._previous = data[-len(END) :]
        else:
            self.count += data.count(b"\n", 0, max(0, end - len(self._previous)))
            self.ended.set()

    def _await_start(self, data: bytes) -> None:
        """Between the welcome and START only the marker matters: find it in the bytes rather
        than split every line (in a connect storm each client is sent a joined line for every
        client after it, N^2/2 lines in all, which made the generator the limit)."""
        window = self._tail + data
        at = window.find(START)
        if at < 0:
            self._tail = window[window.rfind(b"\n") + 1 :]  # the last line, unfinished, may hold it
            return
        self._tail = b""
        self._parse(window[window.rfind(b"\n", 0, at) + 1 :])  # from the START line on

    def _parse(self, data: bytes) -> None:
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        now = time.time_ns()
        fragment, self._fragment = self._fragment, False
        for line in lines:
            if not self.welcomed.is_set():
                joined, answer = self.dialect.setup(line.rstrip(b"\r"), self.room)
                if answer and self.transport is not None:
                    self.transport.write(answer)
                if joined:
                    self.welcomed.set()
                continue
            if not self.started.is_set():
                if START in line:
                    self.started.set()
                continue
            if self.ended.is_set():
                continue
            if END in line:
                self.ended.set()
                continue
            self.count += 1
            if fragment:
                fragment = False  # the end of a line whose start was only counted
            elif self.sampled:
                said = self.dialect.said(line)
                if said is None:
                    continue
                id, text = said
                if id is not None:
                    self.ids.append(id)
                sent_ns = int(text.split(" ", 2)[1])
                self.latencies.append((now - sent_ns) / 1e6)
        if not self.sampled and self.started.is_set() and self._tail:
            # From now on this receiver only counts: account for the partial line.
            self._tail = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.ended.set()

    def expects(self, messages: int) -> int:
        """How many of `messages` said in its room this client should receive."""
        return messages if self.dialect.echoes else messages - self.own

    def message(self) -> bytes:
        """A message to say now: who sends it and when, for the receivers to time it."""
        return self.dialect.say(self.room, b"%d %d %s" % (self.index, time.time_ns(), FILLER))

    def mark(self, marker: bytes) -> None:
        """Say a START or END marker; a client that never hears itself marks its own copy seen."""
        assert self.transport is not None
        self.transport.write(self.dialect.say(self.room, marker + b" 0"))
        if not self.dialect.echoes:
            (self.started if marker == START else self.ended).set()


@dataclass
class Result:
    clients: int
    senders: int
    rate: str
    seconds: float
    server: str
    connect_seconds: float = 0.0
    messages_in: int = 0
    deliveries: int = 0
    deliveries_per_s: float = 0.0
    messages_in_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    dropped_clients: int = 0
    bench_cpu_s: float = 0.0
    server_cpu_s: float | None = None
    server_cpu_us_per_delivery: float | None = None
    server_peak_rss_mb: float | None = None
    server_idle_rss_kb_per_client: float | None = None
    #: With several servers on one Redis: commands Redis ran, and its CPU, per message sent.
    redis_calls_per_message: float | None = None
    redis_cpu_us_per_message: float | None = None


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_status_kb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return float("nan")


async def _join(
    host: str, port: int, name: str, sampled: bool, room: int | None = None, dialect: Dialect | None = None
) -> Receiver:
    dialect = dialect or DIALECTS["chat"]
    loop = asyncio.get_running_loop()
    channel = dialect.room(room)
    protocol: Receiver
    if dialect.websocket:
        _, adapter = await loop.create_connection(
            lambda: WebSocketClient(Receiver(sampled, dialect, channel), host, port), host, port
        )
        protocol = adapter.inner
    else:
        _, protocol = await loop.create_connection(lambda: Receiver(sampled, dialect, channel), host, port)
    assert protocol.transport is not None
    protocol.transport.write(dialect.hello(name, channel))
    await protocol.welcomed.wait()
    return protocol


class WebSocketClient(asyncio.Protocol):
    """A Receiver behind a WebSocket (websockets' sans-I/O ClientProtocol): the HTTP upgrade first,
    then each write one text frame, and each frame's payload the bytes the Receiver reads."""

    def __init__(self, inner: Receiver, host: str, port: int) -> None:
        self.inner = inner
        self.protocol = ClientProtocol(parse_uri(f"ws://{host}:{port}/ws"), max_size=None)
        self.transport: asyncio.Transport | None = None
        self._waiting: list[bytes] = []  # written before the upgrade was answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self.inner.connection_made(cast(asyncio.BaseTransport, _Framed(self)))  # write, close, get_extra_info suffice

    def write(self, data: bytes) -> None:
        if self.protocol.state is not State.OPEN:
            self._waiting.append(data)
            return
        self.protocol.send_text(data)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                if event.status_code != 101:
                    raise SystemExit(f"the web port refused the WebSocket: {event.status_code}")
                waiting, self._waiting = self._waiting, []
                for chunk in waiting:
                    self.write(chunk)
            elif isinstance(event, Frame) and event.opcode in (Opcode.TEXT, Opcode.CONT):
                self.inner.data_received(bytes(event.data))
        self._flush()  # pongs, close replies

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)


class _Framed:
    """What a Receiver behind a WebSocket takes for its transport: writes become frames."""

    def __init__(self, client: WebSocketClient) -> None:
        self.client = client

    def write(self, data: bytes) -> None:
        self.client.write(data)

    def is_closing(self) -> bool:
        return self.client.transport is None or self.client.transport.is_closing()

    def close(self) -> None:
        if self.client.transport is not None:
            self.client.transport.close()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.client.transport.get_extra_info(name, default) if self.client.transport is not None else default


#: In max mode a sampled receiver parses one read per this many ns (latency is sampled, not exact).
SAMPLE_EVERY_NS = 5_000_000
#: ...and parses at most this many lines of that read.
SAMPLE_LINES = 32
#: Bytes a counting receiver lets gather before it is woken, while messages are sent.
RCVLOWAT = 8192
#: What pads a message's text (sender, send time in ns, this) to about 64 bytes, as the neutral generator's are.
FILLER = b"x" * 38
#: In max mode, how many messages may be sent but not yet seen by the probe receiver.
MAX_IN_FLIGHT = 4000


def _after_lines(data: bytes, count: int) -> int:
    """The offset just after the `count`th newline of `data` (or its length, if it has fewer)."""
    end = -1
    for _ in range(count):
        end = data.find(b"\n", end + 1)
        if end < 0:
            return len(data)
    return end + 1


def _wake_after(receivers: list[Receiver], count: int) -> None:
    """SO_RCVLOWAT: the kernel wakes these receivers only once `count` bytes wait.

    Clients that only count lines need not wake for every message; one
    wake-up per few KB keeps the generator cheap, and spares the server the
    work of waking a reader for every line it sends (on loopback the sender
    pays for the receiver's wake-up).
    """
    for receiver in receivers:
        sock = receiver.transport.get_extra_info("socket") if receiver.transport is not None else None
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, count)
            except OSError:
                pass  # closed already: it counts nothing more anyway


def in_flight_for(clients: int) -> int:
    """Max mode's window: messages sent but not yet seen by the probe. Wide for small rooms, narrow for
    big ones, so the server's queues (and the latency measured) stay bounded however big the room."""
    return max(50, min(1000, 100_000 // max(1, clients)))


@dataclass
class Flow:
    """Max mode: the senders keep `in_flight` messages between them and what the probe has seen.

    Sending is driven by the probe's reads (each read tops the window up, in
    steps of a tenth of it, the senders taking turns), not by a polling loop,
    so the generator spends its time on the server's output.
    """

    probe: Receiver
    senders: list[Receiver]
    in_flight: int = MAX_IN_FLIGHT
    sent: int = 0
    sending: bool = False
    _turn: int = 0

    def top_up(self) -> None:
        step = max(1, self.in_flight // 10)
        probe = self.probe
        while self.sending and not probe.closed.is_set():
            if self.in_flight - (probe.expects(self.sent) - probe.count) < step:
                return
            sender = self.senders[self._turn % len(self.senders)]
            self._turn += 1
            if sender.transport is None or sender.transport.is_closing():
                return
            sender.transport.write(sender.message() * step)
            sender.own += step
            self.sent += step

    async def run(self, seconds: float) -> int:
        """Send for `seconds`; how many messages went."""
        self.probe.flow = self
        self.sending = True
        self.top_up()
        await asyncio.sleep(seconds)
        self.sending = False
        return self.sent


async def _send_at_rate(senders: list[Receiver], rate: float, deadline: float) -> int:
    """Send `rate` messages/s in all until `deadline`, the senders taking turns, so that messages
    are spread evenly in time (not one from each sender at the same instant); how many went."""
    sent = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    while (now := loop.time()) < deadline:
        for _ in range(int((now - started) * rate) + 1 - sent):
            sender = senders[sent % len(senders)]
            if sender.transport is None or sender.transport.is_closing():
                return sent
            sender.transport.write(sender.message())
            sender.own += 1
            sent += 1
        await asyncio.sleep(0.001)
    return sent


async def run_bench(
    host: str,
    port: int,
    clients: int,
    senders: int,
    rate: float | None,
    seconds: float,
    sampled: int = 8,
    server_pid: int | None = None,
    server_label: str = "",
    progress: bool = True,
    dialect: Dialect | None = None,
    also: Sequence[tuple[str, int]] = (),
    also_pids: Sequence[int] = (),
    redis_url: str | None = None,
) -> Result:
    """`also`: more servers sharing the room (several servers on one Redis, `redis_url`): the
    clients are dealt round the servers, senders and sampled ones included."""
    dialect = dialect or DIALECTS["chat"]
    addresses = [(host, port), *also]
    pids = [pid for pid in (server_pid, *also_pids) if pid]
    result = Result(clients, senders, "max" if rate is None else f"{rate:g}/s", seconds, server_label)
    cpu0 = time.process_time()
    rss_before_kb = _proc_status_kb(server_pid, "VmRSS") if server_pid else None
    t0 = time.perf_counter()
    receivers: list[Receiver] = []
    slots = asyncio.Semaphore(dialect.connect_at_once)  # a storm, but a bounded one

    async def join(index: int) -> Receiver:
        async with slots:
            where = addresses[index % len(addresses)]
            return await _join(*where, f"bench{index}", index >= clients - sampled, dialect=dialect)

    receivers += await asyncio.gather(*(join(i) for i in range(clients)))
    result.connect_seconds = time.perf_counter() - t0
    idle_rss_kb = _proc_status_kb(server_pid, "VmRSS") if server_pid else None

    if rate is None:
        for receiver in receivers:
            receiver.parse_every_ns = SAMPLE_EVERY_NS
    marker = receivers[-1]
    marker.mark(START)
    await asyncio.wait_for(asyncio.gather(*(r.started.wait() for r in receivers)), 60)
    server_cpu0 = sum(_proc_cpu_seconds(pid) for pid in pids)
    redis0 = _redis_counters(redis_url) if redis_url else None
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    deadline = t_start + seconds
    reporter = asyncio.create_task(_report(receivers, t_start, deadline)) if progress else None
    for index, sender in enumerate(receivers[:senders]):
        sender.index = index
    probe = receivers[-1] if dialect.echoes or clients > senders else receivers[0]
    counting = [r for r in receivers if not r.sampled and r is not probe]
    _wake_after(counting, RCVLOWAT)
    if rate is None:
        expected = await Flow(probe, receivers[:senders], in_flight_for(clients)).run(seconds)
    else:
        expected = await _send_at_rate(receivers[:senders], rate, deadline)
    _wake_after(counting, 1)  # what is left below the mark becomes readable, and is counted
    sampled_receivers = [r for r in receivers if r.sampled] or receivers[:1]
    drained = asyncio.gather(*(_delivered(r, r.expects(expected)) for r in sampled_receivers))
    try:
        await asyncio.wait_for(drained, 60)  # everything sent has come back out
    except TimeoutError:
        pass  # counted below as lost messages
    marker.mark(END)
    try:
        await asyncio.wait_for(asyncio.gather(*(r.ended.wait() for r in receivers)), 60)
    except TimeoutError:
        pass  # counted below as lost messages
    elapsed = loop.time() - t_start
    if reporter is not None:
        reporter.cancel()
        print(file=sys.stderr)

    result.messages_in = expected
    result.deliveries = sum(r.count for r in receivers)
    result.deliveries_per_s = result.deliveries / elapsed
    result.messages_in_per_s = result.messages_in / elapsed
    latencies = [v for r in receivers for v in r.latencies]
    result.latency_ms = {
        "p50": _percentile(latencies, 0.50),
        "p95": _percentile(latencies, 0.95),
        "p99": _percentile(latencies, 0.99),
        "max": max(latencies, default=float("nan")),
    }
    result.dropped_clients = sum(r.closed.is_set() for r in receivers)
    result.lost = sum(max(0, r.expects(expected) - r.count) for r in receivers)
    result.duplicated = sum(max(0, r.count - r.expects(expected)) for r in receivers)
    for r in receivers:
        result.duplicated += len(r.ids) - len(set(r.ids))
        result.out_of_order += sum(1 for a, b in zip(r.ids, r.ids[1:], strict=False) if b <= a)
    if redis_url and redis0 is not None:
        calls, cpu = (after - before for after, before in zip(_redis_counters(redis_url), redis0, strict=True))
        result.redis_calls_per_message = calls / max(1, expected)
        result.redis_cpu_us_per_message = cpu / max(1, expected) * 1e6
    _finish(result, receivers, cpu0, pids, server_cpu0)
    if server_pid and idle_rss_kb is not None and rss_before_kb is not None:
        result.server_idle_rss_kb_per_client = (idle_rss_kb - rss_before_kb) / clients
    return result


def _finish(result: Result, receivers: list[Receiver], cpu0: float, pids: Sequence[int], server_cpu0: float) -> None:
    """The CPU both sides spent and the servers' peak memory (all of them together); then hang
    up every client."""
    result.bench_cpu_s = time.process_time() - cpu0
    if pids:
        result.server_cpu_s = sum(_proc_cpu_seconds(pid) for pid in pids) - server_cpu0
        result.server_cpu_us_per_delivery = result.server_cpu_s / max(1, result.deliveries) * 1e6
        result.server_peak_rss_mb = sum(_proc_status_kb(pid, "VmHWM") for pid in pids) / 1024
    for r in receivers:
        if r.transport is not None:
            r.transport.close()


async def run_rooms_bench(
    host: str,
    port: int,
    rooms: int,
    per_room: int,
    seconds: float,
    server_pid: int | None = None,
    server_label: str = "",
    dialect: Dialect | None = None,
) -> Result:
    """`rooms` rooms of `per_room` members each; one member of every room sends as fast
    as its room takes it, and every member receives its own room's lines only (in `dialect`:
    our JSON lines by default, or IRC, so that a C IRC server takes the same load)."""
    dialect = dialect or DIALECTS["chat"]
    result = Result(rooms * per_room, rooms, "max", seconds, f"{server_label} {rooms}x{per_room} rooms")
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    members: list[list[Receiver]] = [[] for _ in range(rooms)]
    clients = [(f"bench{i}", i % rooms) for i in range(rooms * per_room)]
    wave_size = dialect.connect_at_once
    for start in range(0, len(clients), wave_size):
        wave = clients[start : start + wave_size]
        joined = await asyncio.gather(*(_join(host, port, name, False, room, dialect) for name, room in wave))
        for (_, room), receiver in zip(wave, joined, strict=True):
            members[room].append(receiver)
    result.connect_seconds = time.perf_counter() - t0
    # The last to join each room sends, and says START: a server that echoes nothing never tells
    # a sender where START fell among the lines it owes it, and the first to join is still owed the
    # others' joins then (counted as deliveries, one in a thousand runs), the last nothing.
    for receivers in members:
        receivers[-1].mark(START)
    everybody = [r for receivers in members for r in receivers]
    await asyncio.wait_for(asyncio.gather(*(r.started.wait() for r in everybody)), 60)
    server_cpu0 = _proc_cpu_seconds(server_pid) if server_pid else 0.0
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    # The rooms share one in-flight budget, so that max mode queues as much in all as in one room.
    for room, receivers in enumerate(members):
        receivers[-1].index = room
    flows = [Flow(receivers[0], receivers[-1:], max(10, MAX_IN_FLIGHT // rooms)) for receivers in members]
    counts = await asyncio.gather(*(flow.run(seconds) for flow in flows))
    for room, receivers in enumerate(members):
        await asyncio.wait_for(asyncio.gather(*(_delivered(r, r.expects(counts[room])) for r in receivers)), 60)
    elapsed = loop.time() - t_start
    result.messages_in = sum(counts)
    result.deliveries = sum(r.count for r in everybody)
    result.deliveries_per_s = result.deliveries / elapsed
    result.messages_in_per_s = result.messages_in / elapsed
    owed = [(r.expects(counts[room]), r) for room, receivers in enumerate(members) for r in receivers]
    result.lost = sum(max(0, expected - r.count) for expected, r in owed)
    result.duplicated = sum(max(0, r.count - expected) for expected, r in owed)
    result.dropped_clients = sum(r.closed.is_set() for r in everybody)
    result.latency_ms = dict.fromkeys(("p50", "p95", "p99", "max"), float("nan"))  # not sampled here
    _finish(result, everybody, cpu0, [server_pid] if server_pid else [], server_cpu0)
    return result


def _redis_counters(url: str) -> tuple[float, float]:
    """Commands Redis has run and the CPU seconds it has spent, so far."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        cpu = client.info("cpu")
    finally:
        client.close()
    calls = sum(int(entry["calls"]) for entry in stats.values())
    return float(calls), float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


async def _delivered(receiver: Receiver, expected: int) -> None:
    while receiver.count < expected and not receiver.closed.is_set():
        await asyncio.sleep(0.005)


async def _report(receivers: list[Receiver], t_start: float, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    last, last_t = 0, t_start
    while True:
        await asyncio.sleep(1.0)
        now = loop.time()
        total = sum(r.count for r in receivers)
        print(
            f"\r{now - t_start:5.1f}s  {(total - last) / (now - last_t) / 1e6:6.3f} M deliveries/s  "
            f"{total:>12,} delivered",
            end="",
            file=sys.stderr,
            flush=True,
        )
        last, last_t = total, now


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_command(db: str = ":memory:", *extra: str) -> list[str]:
    """server.py as the benchmarks run it: quiet, and without the limits that would refuse a load
    generator (one client far over any sane limit)."""
    root = Path(__file__).resolve().parent.parent
    return [sys.executable, str(root / "server.py"), "--db", db, "--log-level", "WARNING", *NO_LIMIT_FLAGS, *extra]


@dataclass(frozen=True)
class Spawned:
    """A server the benchmark started, and the port it listens on."""

    process: subprocess.Popen[bytes]
    port: int


@contextmanager
def serving(command: list[str], count: int = 1) -> Iterator[list[Spawned]]:
    """`count` servers of `command`, each on a free port, listening until the block ends."""
    started: list[Spawned] = []
    try:
        for _ in range(count):
            port = _free_port()
            started.append(Spawned(spawn_server(command, port), port))
        yield started
    finally:
        for server in started:
            server.process.terminate()
        for server in started:
            try:
                server.process.wait(10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


def spawn_server(command: list[str], port: int, port_flag: bool = True) -> subprocess.Popen[bytes]:
    """Start `command` (with `--port PORT` added, unless `port_flag` is False: the command names
    its port itself) and wait until it listens on `port`."""
    process = subprocess.Popen(
        [*command, "--port", str(port)] if port_flag else command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"the server exited at once: {' '.join(command)}") from None
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the server never started listening")


def format_table(results: Sequence[Result]) -> str:
    header = (
        "| server | clients | rate | M deliveries/s | msgs in/s | p50 ms | p99 ms | lost | dup | order "
        "| server CPU µs/delivery | peak RSS MB | connect s | bench CPU s |"
    )
    rows = [header, "|" + "---|" * 14]
    for r in results:
        cpu = f"{r.server_cpu_us_per_delivery:.2f}" if r.server_cpu_us_per_delivery is not None else "-"
        rss = f"{r.server_peak_rss_mb:.0f}" if r.server_peak_rss_mb is not None else "-"
        rows.append(
            f"| {r.server} | {r.clients} | {r.rate} | {r.deliveries_per_s / 1e6:.3f} | {r.messages_in_per_s:,.0f} "
            f"| {r.latency_ms['p50']:.1f} | {r.latency_ms['p99']:.1f} | {r.lost} | {r.duplicated} "
            f"| {r.out_of_order} | {cpu} | {rss} | {r.connect_seconds:.2f} | {r.bench_cpu_s:.1f} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat-bench", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7777)
    parser.add_argument("--spawn", action="store_true", help="start a local server.py on a free port and measure it")
    parser.add_argument("--server-command", default=None, help="with --spawn: the server command (default: server.py)")
    parser.add_argument("--db", default=":memory:", help="with --spawn: the server's --db (default %(default)s)")
    parser.add_argument("-n", "--clients", type=int, default=100)
    parser.add_argument("-s", "--senders", type=int, default=10)
    parser.add_argument("-r", "--rate", default="max", help="aggregate messages/s, or max (default %(default)s)")
    parser.add_argument("-t", "--seconds", type=float, default=5.0)
    parser.add_argument(
        "--sampled", type=int, default=8, help="clients that time lines, the last to join (default %(default)s)"
    )
    parser.add_argument(
        "--rooms",
        type=int,
        default=0,
        help="split the clients into this many rooms, one sender in each (default: one room, -s senders)",
    )
    parser.add_argument(
        "--proto", choices=sorted(DIALECTS), default="chat", help="the server's protocol (default %(default)s)"
    )
    parser.add_argument("--redis", default=None, help="with --spawn: the servers share rooms through this Redis URL")
    parser.add_argument("--nodes", type=int, default=1, help="with --spawn --redis: how many servers to start")
    parser.add_argument(
        "--also", action="append", default=[], help="another server HOST:PORT sharing the room (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    rate = None if args.rate == "max" else float(args.rate)
    raise_open_file_limit()  # thousands of client sockets
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        uvloop.install()
    except ImportError:
        pass

    if args.proto == "web" and (args.nodes > 1 or args.also):
        parser.error("--proto web measures one server's web port")
    if args.proto == "irc" and args.spawn and args.nodes > 1:
        parser.error("--spawn --proto irc measures one server's IRC port")
    if args.nodes > 1 and not (args.spawn and args.redis):
        parser.error("--nodes needs --spawn and --redis")
    if args.rooms and (args.nodes > 1 or args.also):
        parser.error("--rooms measures one server")
    host, port, label = args.host, args.port, f"{args.host}:{args.port}"
    also = [(address.rpartition(":")[0], int(address.rpartition(":")[2])) for address in args.also]
    command: list[str] = []
    if args.spawn:
        if args.server_command:
            command = args.server_command.split()
            label = Path(command[-1]).stem
        else:
            command = server_command(args.db)
            label = f"chat ({'memory' if args.db == ':memory:' else 'sqlite'})"
        if args.redis:
            command += ["--redis", args.redis]
            label = f"chat, {args.nodes} server{'s' if args.nodes > 1 else ''} on Redis"
    web_port = _free_port() if args.spawn and args.proto in ("web", "irc") else None
    if web_port is not None:  # the front door measured: the web port, or the IRC port
        command += ["--web-port" if args.proto == "web" else "--irc-port", str(web_port)]
        label += ", WebSocket" if args.proto == "web" else ", IRC"
    with serving(command, args.nodes if args.spawn else 0) as servers:
        if servers:
            host, port = "127.0.0.1", web_port or servers[0].port
            also = [("127.0.0.1", server.port) for server in servers[1:]]
        server_pid = servers[0].process.pid if servers else None
        if args.rooms:
            per_room = max(2, args.clients // args.rooms)
            measured = run_rooms_bench(
                host, port, args.rooms, per_room, args.seconds, server_pid, label, DIALECTS[args.proto]
            )
        else:
            measured = run_bench(
                host,
                port,
                args.clients,
                args.senders,
                rate,
                args.seconds,
                args.sampled,
                server_pid=server_pid,
                server_label=label,
                progress=not args.quiet,
                dialect=DIALECTS[args.proto],
                also=also,
                also_pids=[server.process.pid for server in servers[1:]],
                redis_url=args.redis,
            )
        result = asyncio.run(measured)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(format_table([result]))
        if result.redis_calls_per_message is not None:
            print(
                f"Redis per message sent: {result.redis_calls_per_message:.1f} commands, "
                f"{result.redis_cpu_us_per_message:.0f} µs of its CPU"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
