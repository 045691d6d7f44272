"""History on disk: a `kill -9` mid-traffic loses nothing anybody saw."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys

from chat.client.connection import ChatClient, Reconnected
from chat.errors import ConnectionClosed
from chat.server.config import NO_LIMIT_FLAGS
from chat.server.store import ID_LIMIT, SqliteStore
from chat.testing import TIMEOUT, restartable_port
from chat.wire.protocol import ChatMessage, SendMessage


def stored_lines(path) -> list[tuple[int, tuple[str, str]]]:
    """The lobby's kept lines: (id, (name, text))."""
    store = SqliteStore(str(path))
    try:
        records = store.read("lobby", 1, ID_LIMIT - 1, ID_LIMIT)
    finally:
        store.close()
    lines = [(record.id, json.loads(record.line)) for record in records]
    return [(id, (line["name"], line["msg"])) for id, line in lines]


def test_kill_9_mid_traffic_then_restart_loses_and_repeats_nothing(chat_server_process, tmp_path):
    db = str(tmp_path / "chat.db")
    # The talkers are floods: on a loaded machine a reader may be more lines behind at the kill
    # than the default replay limit (1,000), past which a resume rightly starts later. A limit
    # above what they can say keeps every resume whole, so that any line lost is one the test sees.
    flags = (*NO_LIMIT_FLAGS, "--replay-limit", "1000000")
    port = restartable_port()
    first = chat_server_process("--port", str(port), *flags, env={"CHAT_DB": db})

    async def scenario() -> tuple[list[list[int]], int]:
        clients = [ChatClient("127.0.0.1", port, f"user{i}", first_retry=0.05) for i in range(3)]
        for client in clients:
            await client.connect()
        talkers = clients[:2]
        seen: list[list[int]] = [[] for _ in clients]
        reconnected = [asyncio.Event() for _ in clients]
        # Each talker says "done" after its reconnect: its lines without an echo are sent again
        # first on the same connection, so they are kept before its "done". A talker's lines may
        # come after another's "done": the end is when every talker's has been seen.
        dones: list[set[str]] = [set() for _ in clients]
        done = [asyncio.Event() for _ in clients]
        enough = asyncio.Event()

        async def watch(i: int) -> None:
            async for event in clients[i].events():
                if isinstance(event, Reconnected):
                    reconnected[i].set()
                elif isinstance(event, ChatMessage):
                    seen[i].append(event.id)
                    if len(seen[i]) >= 200:
                        enough.set()
                    if event.msg == "done":
                        dones[i].add(event.name)
                        if len(dones[i]) == len(talkers):
                            done[i].set()

        async def talk(client: ChatClient, stop: asyncio.Event) -> None:
            n = 0
            while not stop.is_set():
                with contextlib.suppress(ConnectionClosed):
                    await client.send(SendMessage(msg=f"{client.name} {n}"))
                n += 1
                await asyncio.sleep(0)

        watchers = [asyncio.create_task(watch(i)) for i in range(len(clients))]
        stop_talking = asyncio.Event()
        talking = [asyncio.create_task(talk(client, stop_talking)) for client in talkers]
        await enough.wait()
        first.process.kill()  # SIGKILL: no shutdown notice, no clean close
        await asyncio.to_thread(first.process.wait, TIMEOUT)
        stop_talking.set()
        await asyncio.gather(*talking)
        ids_before_crash = max(max(ids) for ids in seen)

        await asyncio.to_thread(chat_server_process, "--port", str(port), *flags, env={"CHAT_DB": db})
        for event in reconnected:
            await event.wait()
        for client in talkers:
            await client.send(SendMessage(msg="done"))
        for event in done:
            await event.wait()
        for client in clients:
            await client.close()
        for watcher in watchers:
            await watcher
        return seen, ids_before_crash

    seen, ids_before_crash = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 3))
    lines = stored_lines(db)
    stored = [id for id, _ in lines]
    said = [name_and_text for _, name_and_text in lines]
    assert len(set(said)) == len(said), "a line sent again after the restart was kept twice"
    assert stored == list(range(1, len(stored) + 1)), "ids were reused or skipped"
    assert stored[-1] > ids_before_crash, "ids went on after the restart"
    for ids in seen:
        assert ids == stored, "a client missed or repeated a message"


def test_corrupt_database_is_a_one_line_error_at_start(tmp_path):
    db = tmp_path / "chat.db"
    db.write_bytes(b"garbage, not sqlite " * 200)
    result = subprocess.run(
        [sys.executable, "-m", "chat", "--port", "0", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert "cannot use the database" in result.stderr
    assert "Traceback" not in result.stderr
