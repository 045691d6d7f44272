"""One server against two and three sharing a room through Redis, interleaved in one run.

Starts its own redis-server (append-only file, fsync on every write: the setting under which
no acknowledged message is lost), then runs chat-bench for each setting in turn, ROUNDS
times, and prints the medians and each setting's ratio to one server without Redis.
Usage: .venv/bin/python bench/nodes.py [--rounds 3] [--seconds 4] [--clients 100]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

SETTINGS = [("1 server", []), *((f"{n} on Redis", ["--nodes", str(n)]) for n in (1, 2, 3))]
RATES = ["max", "200"]


def redis_server(directory: Path) -> subprocess.Popen[str]:
    socket = directory / "redis.sock"
    command = [
        shutil.which("redis-server") or "redis-server", "--port", "0", "--unixsocket", str(socket),
        "--dir", str(directory), "--save", "", "--appendonly", "yes", "--appendfsync", "always",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if "ready to accept connections" in line.lower():
            return process
    raise SystemExit("redis-server did not start")


def bench(url: str, setting: list[str], rate: str, clients: int, seconds: float) -> dict[str, Any]:
    redis_flags = ["--redis", url] if setting else []
    command = [sys.executable, "-m", "chat.bench", "--spawn", "--json", "--quiet", *redis_flags, *setting,
               "-n", str(clients), "-s", "10", "-r", rate, "-t", str(seconds)]  # fmt: skip
    client = redis.Redis.from_url(url)
    client.flushall()  # every setting starts from an empty room
    client.close()
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    return dict(json.loads(done.stdout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nodes-", dir="/tmp") as directory:
        redis = redis_server(Path(directory))
        url = f"unix://{directory}/redis.sock"
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        try:
            for round_number in range(args.rounds):
                for rate in RATES:
                    for label, setting in SETTINGS:
                        result = bench(url, setting, rate, args.clients, args.seconds)
                        runs.setdefault((label, rate), []).append(result)
                        print(f"round {round_number + 1} {rate} {label}: {result['deliveries_per_s'] / 1e6:.3f} M/s "
                              f"p99 {result['latency_ms']['p99']:.1f} ms lost {result['lost']}", file=sys.stderr)
        finally:
            redis.terminate()
            redis.wait(10)
    print(table(runs))
    return 0


def table(runs: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    def median(label: str, rate: str, pick: Any) -> float:
        return statistics.median(pick(result) for result in runs[(label, rate)])

    rows = [
        "| setting | M deliveries/s @max | vs 1 server | p99 ms @200/s | vs 1 server | server CPU µs/delivery @max "
        "| Redis commands/message @max | Redis CPU µs/message @max | lost, dup, order |",
        "|" + "---|" * 9,
    ]
    base_rate = median("1 server", "max", lambda r: r["deliveries_per_s"])
    base_p99 = median("1 server", "200", lambda r: r["latency_ms"]["p99"])
    for label, _ in SETTINGS:
        rate = median(label, "max", lambda r: r["deliveries_per_s"])
        p99 = median(label, "200", lambda r: r["latency_ms"]["p99"])
        cpu = median(label, "max", lambda r: r["server_cpu_us_per_delivery"] or 0)
        calls = median(label, "max", lambda r: r["redis_calls_per_message"] or 0)
        redis_cpu = median(label, "max", lambda r: r["redis_cpu_us_per_message"] or 0)
        faults = sum(r["lost"] + r["duplicated"] + r["out_of_order"] for rate in RATES for r in runs[(label, rate)])
        rows.append(
            f"| {label} | {rate / 1e6:.3f} | {rate / base_rate:.2f}x | {p99:.1f} | {base_p99 / p99:.2f}x | {cpu:.2f} "
            f"| {calls:.1f} | {redis_cpu:.1f} | {faults} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
