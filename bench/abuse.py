"""Abuse against a server with its default limits, measured as ratios within one run.

`flood`: 100 clients chat at 200 msgs/s in all (2 each: under the rate limit)
while one client from another loopback address (127.0.0.2, not exempt) floods
as fast as its socket takes lines and reconnects each time it is cut. Rounds
with and without the flooder alternate; prints the others' p99 both ways.

`accept`: opens (or closes) idle connections to each level, 1,000 and 9,000
twice, and times the next 500 accepts (connect to a served ping) there. `storm`: 30 clients open and drop
connections at full speed for a few seconds; then how long a newcomer waits.

`pages`: 200 clients that never read each ask for 40 pages of 500 messages
of 8,000 characters; prints the server's RSS and a chatter's echo latency.

Usage: .venv/bin/python bench/abuse.py flood|accept|storm|pages
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chat.bench import _free_port, run_bench, spawn_server
from chat.cli import raise_open_file_limit

ROOT = Path(__file__).resolve().parent.parent
PAGES = 2
FLOOD_LINE = b'{"type":"message","room":"flood","msg":"' + b"f" * 200 + b'"}\n'


def server_command(db: str, *flags: str) -> list[str]:
    """server.py with its default limits, except that 127.0.0.2 (the attacker) is not exempt."""
    return [sys.executable, str(ROOT / "server.py"), "--db", db, "--log-level", "ERROR", "--limit-exempt",
            "127.0.0.1/32", *flags]


async def flooder(port: int, stop: asyncio.Event, tally: dict[str, int]) -> None:
    """Flood from 127.0.0.2 as fast as the socket takes it; reconnect whenever cut off."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
        except OSError:
            tally["refused"] += 1
            await asyncio.sleep(0.01)
            continue
        tally["connections"] += 1
        writer.write(b'{"type":"join","name":"flooder%d","room":"flood"}\n' % tally["connections"])
        drain = asyncio.create_task(_discard(reader, tally))
        try:
            while not stop.is_set() and not drain.done():
                writer.write(FLOOD_LINE * 100)
                tally["lines"] += 100
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        drain.cancel()
        writer.close()


async def _discard(reader: asyncio.StreamReader, tally: dict[str, int]) -> None:
    first = await reader.readline()
    if b"too_many_connections" in first:
        tally["refused"] += 1
    elif b"welcome" in first:
        tally["served"] += 1
    while await reader.read(65536):
        pass


async def flood_rounds(port: int, rounds: int, seconds: float) -> None:
    p99: dict[str, list[float]] = {"alone": [], "with flooder": []}
    for _ in range(rounds):
        for label in ("alone", "with flooder"):
            stop = asyncio.Event()
            tally = {"connections": 0, "refused": 0, "served": 0, "lines": 0}
            task = asyncio.create_task(flooder(port, stop, tally)) if label != "alone" else None
            result = await run_bench("127.0.0.1", port, clients=100, senders=100, rate=200.0, seconds=seconds,
                                     sampled=100, progress=False)
            stop.set()
            if task is not None:
                await task
            p99[label].append(result.latency_ms["p99"])
            print(f"{label:>12}: p99 {result.latency_ms['p99']:6.1f} ms, p50 {result.latency_ms['p50']:5.1f} ms, "
                  f"lost {result.lost}, dropped {result.dropped_clients}"
                  + (f"; flooder wrote {tally['lines']:,} lines over {tally['connections']} connects: "
                     f"{tally['served']} served, {tally['refused']} refused" if task else ""), flush=True)
    alone, flooded = statistics.median(p99["alone"]), statistics.median(p99["with flooder"])
    print(f"median p99: alone {alone:.1f} ms, with flooder {flooded:.1f} ms, ratio {flooded / alone:.2f}")


async def accept_rate(port: int, levels: list[int]) -> None:
    idle: list[asyncio.StreamWriter] = []
    for level in levels:
        while len(idle) > level:
            idle.pop().close()
        while len(idle) < level:
            wave = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port)
                                          for _ in range(min(200, level - len(idle)))))
            idle += [writer for _, writer in wave]
        started = time.perf_counter()
        for _ in range(500):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b'{"type":"ping"}\n')
            assert b"pong" in await reader.readline()
            writer.close()
        took = time.perf_counter() - started
        print(f"with {level:>5} connections open: 500 accepts served in {took:.2f} s, {500 / took:,.0f}/s", flush=True)
    for writer in idle:
        writer.close()


async def storm(port: int, seconds: float) -> None:
    stop = asyncio.Event()
    opened = [0]

    async def churn() -> None:
        while not stop.is_set():
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                opened[0] += 1
                writer.transport.abort()  # gone before the server gets to it
            except OSError:
                await asyncio.sleep(0)

    tasks = [asyncio.create_task(churn()) for _ in range(30)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b'{"type":"join","name":"newcomer"}\n')
    welcome = json.loads(await reader.readline())
    took = time.perf_counter() - started
    print(f"{opened[0]:,} connections opened and dropped in {seconds:g} s by 30 clients; "
          f"then a newcomer was welcomed as {welcome['name']} in {took * 1000:.0f} ms")
    writer.close()


async def pages(port: int, pid: int, hogs: int) -> None:
    """`hogs` clients that never read each ask for PAGES pages of 500 big messages (within
    the rate limit: forty would be cut as excess_flood first); a chatter times its echo."""
    from chat.bench import _proc_status_kb

    rss_before = _proc_status_kb(pid, "VmRSS")
    quiet: list[float] = []
    await _chat(port, "quiet", 100, quiet)
    sockets = []
    for index in range(hogs):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(b'{"type":"join","name":"hog%d"}\n' % index + b'{"type":"history","limit":500}\n' * PAGES)
        sockets.append(writer)
    during: list[float] = []
    await _chat(port, "during", 300, during)
    rss_after, peak = _proc_status_kb(pid, "VmRSS"), _proc_status_kb(pid, "VmHWM")
    for label, values in (("echo before", quiet), ("echo with the hogs", during)):
        ordered = sorted(values)
        print(f"{label}: p50 {statistics.median(values):.1f} ms, p99 {ordered[int(0.99 * (len(ordered) - 1))]:.1f} ms")
    print(f"{hogs} non-readers asked for {hogs * PAGES * 500 * 8 / 1000:,.0f} MB of pages; server RSS "
          f"{rss_before / 1024:.0f} MB before, {rss_after / 1024:.0f} MB after, peak {peak / 1024:.0f} MB")
    for writer in sockets:
        writer.close()


async def _chat(port: int, name: str, count: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    writer.write(json.dumps({"type": "join", "name": name}).encode() + b"\n")
    welcome = json.loads(await reader.readline())
    for _ in range(welcome["history"]):
        await reader.readline()
    for _ in range(count):
        sent = time.perf_counter()
        writer.write(b'{"type": "message", "msg": "ping"}\n')
        while b'"msg":"ping"' not in await reader.readline():
            pass
        latencies.append((time.perf_counter() - sent) * 1000)
        await asyncio.sleep(0.25)  # within the rate limit
    writer.close()


def fill(db: str, messages: int) -> None:
    """A lobby of `messages` messages of 8,000 characters, written straight into the history file."""
    from chat.server.store import Record, RoomRecord, SqliteStore

    store = SqliteStore(db, retention_bytes=1 << 40)
    store.save_room(RoomRecord("lobby", "lobby"))
    text = "x" * 7990
    for i in range(1, messages + 1):
        line = json.dumps({"type": "message", "room": "lobby", "id": i, "name": "old", "msg": f"{i} {text}",
                           "time": "2026-11-20T12:00:00.000Z"}, separators=(",", ":")).encode() + b"\n"
        store.append("lobby", Record(i, line))
    store.close()


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else "flood"
    raise_open_file_limit()
    port = _free_port()
    with tempfile.TemporaryDirectory() as directory:
        db = str(Path(directory) / "abuse.db")
        flags: tuple[str, ...] = ("--join-timeout", "0", "--max-per-address", "0") if what == "accept" else ()
        if what == "pages":
            fill(db, 2000)
            flags = ("--retention-bytes", str(1 << 30), "--history", "0")
        server = spawn_server(server_command(db, *flags), port)
        try:
            if what == "flood":
                asyncio.run(flood_rounds(port, rounds=3, seconds=6))
            elif what == "pages":
                asyncio.run(pages(port, server.pid, hogs=200))
            elif what == "accept":
                asyncio.run(accept_rate(port, [1000, 9000, 1000, 9000]))
            else:
                asyncio.run(storm(port, seconds=5))
        finally:
            server.terminate()
            server.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
