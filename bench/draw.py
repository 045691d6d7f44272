#!/usr/bin/env python3
"""How fast the terminal client draws: a burst of N lines into a room, drawn by the real UI.

Starts `server.py --db :memory:`, runs the client's prompt_toolkit UI in this
process on a captured 200x50 xterm screen (everything it writes is kept, as
a terminal would receive it), has another connection say N lines at once,
and reports how long until the last one was drawn, with the UI's CPU time.
Then it times one line typed during a second burst: how long until the
server echoes it back to another client.

    .venv/bin/python bench/draw.py 2000
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
import time
from pathlib import Path

from prompt_toolkit.application import create_app_session
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output

from chat.bench import _free_port, spawn_server
from chat.client.connection import ChatClient
from chat.client.ui import make_session, run_ui
from chat.server.config import NO_LIMIT_FLAGS


class Terminal(io.StringIO):
    """What the UI writes, kept; `seen` is set once `marker` has been written."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.seen = asyncio.Event()
        self._tail = ""

    def write(self, text: str) -> int:
        window = self._tail + text
        if self.marker in window:
            self.seen.set()
        self._tail = window[-len(self.marker) :]
        return super().write(text)


def burst(port: int, count: int, last: str) -> None:
    """Another person says `count` lines at once, the last one `last`."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(json.dumps({"type": "join", "name": "flood"}).encode() + b"\n")
        lines = [json.dumps({"type": "message", "msg": f"line {i} of the burst"}) for i in range(count - 1)]
        sock.sendall(("\n".join([*lines, json.dumps({"type": "message", "msg": last})]) + "\n").encode())
        sock.settimeout(60)
        seen = b""
        while last.encode() not in seen:  # keep the connection until the server has it all
            seen = seen[-200:] + sock.recv(1 << 16)


async def measure(port: int, count: int) -> None:
    marker = "END-OF-BURST"
    screen = Terminal(marker)
    output = Vt100_Output(screen, lambda: Size(rows=50, columns=200), term="xterm-256color")
    with create_pipe_input() as keys, create_app_session(input=keys, output=output):
        client = ChatClient("127.0.0.1", port, "reader")
        await client.connect()
        ui = asyncio.create_task(run_ui(client, make_session(client)))
        await asyncio.sleep(0.5)  # the prompt is up
        started, cpu = time.perf_counter(), time.process_time()
        sender = asyncio.create_task(asyncio.to_thread(burst, port, count, marker))
        await asyncio.wait_for(screen.seen.wait(), 600)
        took, used = time.perf_counter() - started, time.process_time() - cpu
        await sender
        report = (f"{count} lines drawn in {took:.2f} s: {count / took:,.0f} lines/s, UI CPU {used:.2f} s "
                  f"({used / count * 1e6:.0f} µs per line); {len(screen.getvalue()) / 1e6:.1f} MB written")
        keys.send_text("\x04")
        await asyncio.wait_for(ui, 30)
    print(report)  # after the UI: while it runs, stdout is drawn above its prompt


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    port = _free_port()
    root = Path(__file__).resolve().parent.parent
    server = spawn_server([sys.executable, str(root / "server.py"), "--db", ":memory:", "--log-level", "WARNING",
                           *NO_LIMIT_FLAGS], port)  # fmt: skip
    try:
        asyncio.run(measure(port, count))
    finally:
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
