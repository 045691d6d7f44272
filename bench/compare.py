#!/usr/bin/env python3
"""Our server against ngIRCd, measured by chat-bench in one run, interleaved; a ratio table and a chart.

For every repetition, room size and mode it starts each server fresh, runs
chat-bench's generator against it (our JSON lines, or IRC for ngIRCd), stops
it, and goes on to the next server, so that all servers are measured close
together in time: on a shared machine only ratios measured that way mean
anything. Servers: `ours` (server.py as a user starts it: SQLite history,
in a fresh file per point), `ours-mem` (--db :memory:) and `ngircd`
(`apt-get install -y ngircd`; bench/ngircd.conf, loopback only). Flood
control is off in all of them: the generator floods on purpose.

    .venv/bin/python bench/compare.py                         # 10,100,500,2000 clients, max and 200/s, 3 reps
    .venv/bin/python bench/compare.py -n 10,100 --modes max --reps 1
    .venv/bin/python bench/compare.py --out runs.jsonl --chart bench/compare.png

Every run is bounded in time; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from chat.bench import DIALECTS, Result, run_bench
from chat.cli import raise_open_file_limit
from chat.server.config import NO_LIMIT_FLAGS

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("ours", "ours-mem", "ngircd")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def command(server: str, port: int, work: Path) -> tuple[list[str], str]:
    """How to start `server` on `port`, and the protocol it speaks."""
    if server == "ngircd":
        config = work / f"ngircd-{port}.conf"
        config.write_text((ROOT / "bench" / "ngircd.conf").read_text().replace("Ports = 6667", f"Ports = {port}"))
        config.chmod(0o644)  # ngIRCd reads it after dropping root's rights
        return ["ngircd", "--nodaemon", "--config", str(config)], "irc"
    db = str(work / f"ours-{port}.db") if server == "ours" else ":memory:"
    ours = [sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1", "--port", str(port), "--db", db]
    return [*ours, "--log-level", "WARNING", *NO_LIMIT_FLAGS], "chat"


def start(argv: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited at once; see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.05)
    stop(process)
    raise RuntimeError(f"{argv[0]} never listened on {port}; see {log}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def measure(server: str, clients: int, mode: str, seconds: float, work: Path) -> Result:
    port = free_port()
    argv, proto = command(server, port, work)
    process = start(argv, port, work / f"{server}.log")
    try:
        rate = None if mode == "max" else float(mode)
        run = run_bench(
            "127.0.0.1", port, clients, min(10, clients), rate, seconds,
            server_pid=process.pid, server_label=server, progress=False, dialect=DIALECTS[proto],
        )  # fmt: skip
        return asyncio.run(asyncio.wait_for(run, seconds + 240))
    finally:
        stop(process)


def median(rows: list[dict[str, object]], server: str, clients: int, mode: str, key: str) -> float | None:
    values = [
        float(row[key])  # type: ignore[arg-type]
        for row in rows
        if (row["server"], row["clients"], row["mode"]) == (server, clients, mode) and row.get(key) is not None
    ]
    return statistics.median(values) if values else None


def table(rows: list[dict[str, object]], servers: list[str], sizes: list[int], modes: list[str]) -> str:
    """Medians per point; ratios to ngIRCd (> 1: we are ahead, more deliveries/s or a lower p99)."""
    ours = [name for name in servers if name != "ngircd"]
    ratios = [f"{name} / ngircd" for name in ours] if "ngircd" in servers else []
    lines = ["| clients | measure | " + " | ".join([*servers, *ratios]) + " |"]
    lines.append("|---" * (2 + len(servers) + len(ratios)) + "|")
    for clients in sizes:
        for mode in modes:
            measures = [("M deliveries/s", "deliveries_per_s", 1e-6)] if mode == "max" else []
            measures += [(f"p99 ms @{mode}", "p99_ms", 1.0)]
            measures += [("server CPU µs/delivery", "server_cpu_us_per_delivery", 1.0)]
            if mode != "max":
                measures += [(f"server CPU % @{mode}", "server_cpu_percent", 1.0)]
            for label, key, scale in measures:
                found = {name: median(rows, name, clients, mode, key) for name in servers}
                cells = [f"{value * scale:.3g}" if (value := found[name]) is not None else "fail" for name in servers]
                if ratios:
                    anchor = found["ngircd"]
                    for name in ours:
                        mine = found[name]
                        if not mine or not anchor:
                            cells.append("-")
                        elif key == "deliveries_per_s":
                            cells.append(f"{mine / anchor:.2f}x")
                        else:  # lower is better: the ratio says how many times better we are
                            cells.append(f"{anchor / mine:.2f}x")
                lines.append(f"| {clients} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(rows: list[dict[str, object]], servers: list[str], sizes: list[int], modes: list[str], path: str) -> None:
    """Deliveries/s (max mode) and p99 latency (each fixed rate) against room size, one line per server."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, ScalarFormatter
    except ImportError:
        raise SystemExit("--chart needs matplotlib: pip install -e '.[bench]'") from None
    panels = [(mode, "deliveries_per_s" if mode == "max" else "p99_ms") for mode in modes]
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for axis, (mode, key) in zip(axes[0], panels, strict=True):
        for name in servers:
            points = [(n, median(rows, name, n, mode, key)) for n in sizes]
            xs = [n for n, value in points if value is not None]
            ys = [value / (1e6 if key == "deliveries_per_s" else 1) for _, value in points if value is not None]
            axis.plot(xs, ys, marker="o", label=name, linestyle="--" if name == "ngircd" else "-")
        axis.set_xscale("log")
        axis.set_xticks(sizes, [str(n) for n in sizes])
        axis.set_xlabel("clients in the room")
        if key == "deliveries_per_s":
            axis.set_ylabel("M deliveries/s (higher is better)")
            axis.set_title("max rate, 10 senders")
        else:
            axis.set_ylabel("p99 latency, ms (lower is better)")
            axis.set_yscale("log")
            axis.yaxis.set_major_formatter(ScalarFormatter())
            axis.yaxis.set_minor_formatter(NullFormatter())
            axis.set_yticks([1, 2, 5, 10, 20, 50, 100, 200])
            axis.set_title(f"{mode} messages/s in all, 10 senders")
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"chart: {path}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma list of %(default)s")
    parser.add_argument("-n", "--clients", default="10,100,500,2000", help="room sizes (default %(default)s)")
    parser.add_argument("--modes", default="max,200", help="'max' and/or aggregate msgs/s (default %(default)s)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every point (default %(default)s)")
    parser.add_argument("-t", "--seconds", type=float, default=4.0, help="sending time per point")
    parser.add_argument("--out", help="append every measurement here as a JSON line")
    parser.add_argument("--chart", help="draw the chart to this PNG file (needs matplotlib)")
    parser.add_argument("--from-file", help="no measuring: print the table (and chart) of an --out file")
    args = parser.parse_args()
    servers = args.servers.split(",")
    sizes = [int(n) for n in args.clients.split(",")]
    modes = args.modes.split(",")
    if args.from_file:
        rows = [json.loads(line) for line in Path(args.from_file).read_text().splitlines() if line.strip()]
    else:
        if "ngircd" in servers and not shutil.which("ngircd"):
            parser.error("ngircd is not installed (apt-get install -y ngircd); or leave it out with --servers")
        rows = run_all(servers, sizes, modes, args.reps, args.seconds, args.out)
    print(table(rows, servers, sizes, modes))
    if args.chart:
        chart(rows, servers, sizes, modes, args.chart)
    return 0


def run_all(
    servers: list[str], sizes: list[int], modes: list[str], reps: int, seconds: float, out: str | None
) -> list[dict[str, object]]:
    raise_open_file_limit()
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    rows: list[dict[str, object]] = []
    total = reps * len(sizes) * len(modes) * len(servers)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chat-compare-") as scratch:
        work = Path(scratch)
        os.chmod(work, 0o755)  # ngIRCd reads its config as the user irc
        for rep in range(reps):
            for clients in sizes:
                for mode in modes:
                    for server in servers:
                        try:
                            result = measure(server, clients, mode, seconds, work)
                            row: dict[str, object] = asdict(result) | {"error": None}
                            row["p99_ms"] = result.latency_ms["p99"]
                            if result.server_cpu_s is not None:
                                row["server_cpu_percent"] = 100 * result.server_cpu_s / seconds
                        except (RuntimeError, OSError, TimeoutError) as exc:
                            row = {"error": f"{type(exc).__name__}: {exc}"}
                        row |= {"server": server, "clients": clients, "mode": mode, "rep": rep}
                        rows.append(row)
                        if out:
                            with open(out, "a") as sink:
                                sink.write(json.dumps(row) + "\n")
                        progress(row, len(rows), total, time.monotonic() - began)
    return rows


def progress(row: dict[str, object], done: int, total: int, elapsed: float) -> None:
    """One line per point on stderr: what was measured, and how long the rest will take."""
    if row["error"]:
        summary = f"ERROR {row['error']}"
    else:
        rate = float(row["deliveries_per_s"])  # type: ignore[arg-type]
        summary = f"{rate / 1e6:.3f} M/s p99 {row['p99_ms']:.1f} ms lost {row['lost']}"
    where = f"rep {row['rep']} {row['clients']} clients {row['mode']} {row['server']}"
    left = elapsed / done * (total - done)
    print(f"[{done}/{total}, {left:.0f} s left] {where}: {summary}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
