"""A join storm: N clients join a room whose history holds 100,000 messages, while
two people chat in the lobby. Prints how long until everybody was welcomed (with
the room's recent history) and the lobby's echo latency before and during the
storm. Usage: .venv/bin/python bench/join_storm.py [CLIENTS]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chat.bench import _proc_cpu_seconds, server_command, serving
from chat.server.store import Record, RoomRecord, SqliteStore

HISTORY = 100_000
LINE = b'{"type":"message","room":"big","id":%d,"name":"old","msg":"x","time":"2026-11-20T12:00:00.000Z"}\n'


async def joiner(port: int, index: int, slots: asyncio.Semaphore) -> None:
    """Connect, join the big room, and read the welcome and all of its history; at most `slots` at once."""
    async with slots:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        writer.write(json.dumps({"type": "join", "name": f"storm{index}", "room": "big"}).encode() + b"\n")
        welcome = json.loads(await reader.readline())
        owed = welcome["history"]
        while owed > 0:  # count the history's lines as they come, without parsing them one by one
            chunk = await reader.read(1 << 16)
            if not chunk:
                raise ConnectionError(f"storm{index}: closed with {owed} history lines still owed")
            owed -= chunk.count(b"\n")
        writer.close()


async def chatter(port: int, name: str, until: asyncio.Event, latencies: list[float]) -> None:
    """Say something every 10 ms in the lobby and time its echo."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(json.dumps({"type": "join", "name": name}).encode() + b"\n")
    welcome = json.loads(await reader.readline())
    for _ in range(welcome["history"]):  # earlier pings: not echoes of ours
        await reader.readline()
    while not until.is_set():
        sent = time.perf_counter()
        writer.write(b'{"type": "message", "msg": "ping"}\n')
        while b'"msg":"ping"' not in await reader.readline():
            pass
        latencies.append((time.perf_counter() - sent) * 1000)
        await asyncio.sleep(0.01)
    writer.close()


async def storm(port: int, clients: int, server_pid: int) -> None:
    quiet: list[float] = []
    stop_quiet = asyncio.Event()
    task = asyncio.create_task(chatter(port, "quiet", stop_quiet, quiet))
    await asyncio.sleep(1.0)  # a second of lobby traffic with no storm, to compare against
    stop_quiet.set()
    await task
    during: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(chatter(port, "during", stop, during))
    started, server_cpu, own_cpu = time.perf_counter(), _proc_cpu_seconds(server_pid), time.process_time()
    slots = asyncio.Semaphore(200)  # a storm, but a bounded one: 200 joins in flight at any time
    await asyncio.gather(*(joiner(port, i, slots) for i in range(clients)))
    took = time.perf_counter() - started
    server_cpu, own_cpu = _proc_cpu_seconds(server_pid) - server_cpu, time.process_time() - own_cpu
    stop.set()
    await task
    print(f"{clients} clients welcomed with the recent history of a {HISTORY:,}-message room in {took:.1f} s")
    print(f"CPU meanwhile: server {server_cpu:.1f} s, this generator {own_cpu:.1f} s")
    for label, values in (("lobby echo before the storm", quiet), ("lobby echo during the storm", during)):
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        p50, worst = statistics.median(values), max(values)
        print(f"{label}: {len(values)} echoes, p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms")


def main() -> int:
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "storm.db")
        store = SqliteStore(path)
        store.save_room(RoomRecord("big", "big"))
        for first in range(1, HISTORY + 1, 10_000):
            store.append_all("big", [Record(i, LINE % i) for i in range(first, min(HISTORY, first + 9_999) + 1)])
        # Searchable, as a room whose lines were said through the server is: otherwise the server
        # would spend the storm indexing 100,000 lines, as it does once for a file of an old release.
        while store.index_some(10_000):
            pass
        store.close()
        with serving(server_command(path)) as (server,):
            try:
                import uvloop  # type: ignore[import-not-found,unused-ignore]

                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            except ImportError:
                pass
            asyncio.run(storm(server.port, clients, server.process.pid))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
