#!/usr/bin/env python3
"""How fast the terminal client draws: a burst of N lines into a room, drawn by the real UI.

Starts `server.py --db :memory:`, runs the client's prompt_toolkit UI (the full screen, then
the plain line mode) in this process on a captured 200x50 xterm screen (everything it writes
is kept, as a terminal would receive it), has another connection say N lines at once, and
reports how long until the last one was drawn, with the UI's CPU time. During a second burst
it types a line and times how long until another connection receives it.

    .venv/bin/python bench/draw.py 2000
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
import time

from prompt_toolkit.application import create_app_session
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output

from chat.bench import server_command, serving
from chat.client.connection import ChatClient
from chat.client.screen import run_screen
from chat.client.ui import make_session, run_ui


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


def first_line_of(text: str, joined: socket.socket) -> float:
    """Wait on `joined` (already in the room) for the line `text`; when it came (perf_counter)."""
    joined.settimeout(60)
    seen = b""
    wanted = json.dumps(text).encode()
    while wanted not in seen:
        seen = seen[-4096:] + joined.recv(1 << 16)
    return time.perf_counter()


async def measure(port: int, count: int, full_screen: bool) -> str:
    marker = "END-OF-BURST"
    screen = Terminal(marker)
    output = Vt100_Output(screen, lambda: Size(rows=50, columns=200), term="xterm-256color")
    with create_pipe_input() as keys, create_app_session(input=keys, output=output):
        client = ChatClient("127.0.0.1", port, "reader")
        await client.connect()
        chatting = run_screen(client, mouse=False) if full_screen else run_ui(client, make_session(client))
        ui = asyncio.create_task(chatting)
        await asyncio.sleep(0.5)  # the prompt is up
        started, cpu = time.perf_counter(), time.process_time()
        sender = asyncio.create_task(asyncio.to_thread(burst, port, count, marker))
        await asyncio.wait_for(screen.seen.wait(), 600)
        took, used = time.perf_counter() - started, time.process_time() - cpu
        await sender

        # A line typed while a second burst arrives: how long until somebody else has it.
        with socket.create_connection(("127.0.0.1", port)) as watcher:
            watcher.sendall(json.dumps({"type": "join", "name": "watcher"}).encode() + b"\n")
            watcher.recv(1 << 16)
            screen.marker, screen.seen = "SECOND-BURST-END", asyncio.Event()
            sender = asyncio.create_task(asyncio.to_thread(burst, port, count, "SECOND-BURST-END"))
            await asyncio.sleep(0.05)  # the burst is under way
            typed = "typed during the burst"
            arrived = asyncio.create_task(asyncio.to_thread(first_line_of, typed, watcher))
            typed_at = time.perf_counter()
            keys.send_text(typed + "\r")
            reached = await asyncio.wait_for(arrived, 60) - typed_at
            await sender
            await asyncio.wait_for(screen.seen.wait(), 600)
        mode = "full screen" if full_screen else "plain lines"
        report = (f"{mode}: {count} lines drawn in {took:.2f} s: {count / took:,.0f} lines/s, UI CPU {used:.2f} s "
                  f"({used / count * 1e6:.0f} µs per line); {len(screen.getvalue()) / 1e3:,.0f} kB written; "
                  f"a line typed during a burst reached another client in {reached * 1000:.0f} ms")
        keys.send_text("\x03\x03\x03\x04")
        await asyncio.wait_for(ui, 30)
    return report


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with serving(server_command()) as (server,):
        for full_screen in (True, False):
            # Printed after each UI has ended: while one runs, stdout is its screen.
            print(asyncio.run(measure(server.port, count, full_screen)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
