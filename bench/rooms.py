"""Many small rooms against one room of the same size: the server CPU each delivery costs, through
our JSON port, our IRC port and ngIRCd, interleaved in one run (every room has one sender at full speed).

  .venv/bin/python bench/rooms.py --rooms 200 --per-room 10 --reps 2 -t 4

Needs ngIRCd (apt-get install -y ngircd) unless --servers leaves it out. Prints one table; the
target (bench/README.md) is many rooms at no more than 1.5x the CPU per delivery of one room.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
from pathlib import Path

from chat.bench import DIALECTS, Result, _free_port, run_bench, run_rooms_bench, server_command, spawn_server
from chat.cli import raise_open_file_limit

HERE = Path(__file__).resolve().parent


def start(server: str, work: str) -> tuple[subprocess.Popen[bytes], int]:
    """A fresh server: `ours` (SQLite history, its JSON port), `ours-irc` (its IRC port) or `ngircd`."""
    port = _free_port()
    if server == "ngircd":
        conf = Path(work, f"ngircd-{port}.conf")
        conf.write_text((HERE / "ngircd.conf").read_text().replace("Ports = 6667", f"Ports = {port}"))
        command = ["ngircd", "-n", "-f", str(conf)]
    else:
        command = server_command(str(Path(work, f"{server}-{port}.db")))
        if server == "ours-irc":
            command += ["--port", str(_free_port()), "--irc-port", str(port)]
        else:
            command += ["--port", str(port)]
    return spawn_server(command, port, port_flag=False), port


def measure(server: str, rooms: int, per_room: int, seconds: float, work: str) -> Result:
    process, port = start(server, work)
    dialect = DIALECTS["chat" if server == "ours" else "irc"]
    try:
        if rooms == 1:
            run = run_bench("127.0.0.1", port, per_room, 1, None, seconds, 2, process.pid, server, False, dialect)
        else:
            run = run_rooms_bench("127.0.0.1", port, rooms, per_room, seconds, process.pid, server, dialect)
        return asyncio.run(run)
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="ours,ours-irc,ngircd")
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--per-room", type=int, default=10)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("-t", "--seconds", type=float, default=4.0)
    args = parser.parse_args()
    raise_open_file_limit()
    servers = args.servers.split(",")
    cpu: dict[tuple[str, int], list[float]] = {}
    rate: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="chat-rooms-") as work:
        for rep in range(args.reps):
            for rooms in (1, args.rooms):
                for server in servers:
                    result = measure(server, rooms, args.per_room, args.seconds, work)
                    key = (server, rooms)
                    cpu.setdefault(key, []).append(result.server_cpu_us_per_delivery or float("nan"))
                    rate.setdefault(key, []).append(result.deliveries_per_s)
                    print(
                        f"rep{rep} {server:9} {rooms:4}x{args.per_room} rooms: {result.deliveries_per_s / 1e6:.3f} M "
                        f"deliveries/s, {result.server_cpu_us_per_delivery:.2f} us CPU/delivery, lost {result.lost}",
                        flush=True,
                    )
    print()
    print(f"| server | 1x{args.per_room}: M deliveries/s | µs CPU/delivery | {args.rooms}x{args.per_room}: "
          "M deliveries/s | µs CPU/delivery | many/one CPU per delivery |")
    print("|---|---|---|---|---|---|")
    for server in servers:
        one, many = (statistics.median(cpu[server, r]) for r in (1, args.rooms))
        one_rate, many_rate = (statistics.median(rate[server, r]) / 1e6 for r in (1, args.rooms))
        print(f"| {server} | {one_rate:.3f} | {one:.2f} | {many_rate:.3f} | {many:.2f} | {many / one:.2f}x |")


if __name__ == "__main__":
    main()
