"""A small run of the benchmark, so that it cannot rot; its figures are never asserted."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from chat.bench import DIALECTS, END, START, Receiver, format_table, run_bench, run_rooms_bench
from chat.server.config import ServerConfig
from chat.testing import TIMEOUT


@pytest.fixture
def unlimited_server(start_chat_server):
    return start_chat_server(ServerConfig().without_limits())


def test_small_run_against_a_real_server_loses_nothing(unlimited_server):
    host, port = unlimited_server.address
    result = asyncio.run(
        asyncio.wait_for(
            run_bench(host, port, clients=5, senders=2, rate=200.0, seconds=0.5, sampled=2, progress=False), TIMEOUT
        )
    )
    assert result.messages_in > 0
    assert result.deliveries == 5 * result.messages_in
    assert (result.lost, result.duplicated, result.out_of_order, result.dropped_clients) == (0, 0, 0, 0)
    assert result.latency_ms["p50"] >= 0
    assert "| 5 | 200/s |" in format_table([result])


def test_a_run_over_the_web_port_loses_nothing(start_chat_server):
    server = start_chat_server(dataclasses.replace(ServerConfig().without_limits(), web_port=0))
    host, port = server.web_address
    result = asyncio.run(
        asyncio.wait_for(
            run_bench(host, port, 5, 2, 200.0, 0.5, sampled=2, progress=False, dialect=DIALECTS["web"]), TIMEOUT
        )
    )
    assert result.messages_in > 0
    assert result.deliveries == 5 * result.messages_in
    assert (result.lost, result.duplicated, result.out_of_order, result.dropped_clients) == (0, 0, 0, 0)


def test_command_line_spawns_a_server_and_prints_json():
    completed = subprocess.run(
        [sys.executable, "-m", "chat.bench", "--spawn", "-n", "3", "-s", "1", "-t", "0.3", "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["clients"] == 3 and result["lost"] == 0
    assert result["server_cpu_s"] is not None and result["server_peak_rss_mb"] > 0


def test_rooms_run_delivers_each_rooms_lines_to_its_members_only(unlimited_server):
    host, port = unlimited_server.address
    result = asyncio.run(asyncio.wait_for(run_rooms_bench(host, port, rooms=4, per_room=3, seconds=0.3), TIMEOUT))
    assert result.messages_in > 0
    assert result.deliveries == 3 * result.messages_in  # each line reaches its room's three members, no one else
    assert (result.lost, result.duplicated, result.dropped_clients) == (0, 0, 0)


def test_rooms_run_over_irc_loses_nothing(start_chat_server):
    server = start_chat_server(dataclasses.replace(ServerConfig().without_limits(), irc_port=0))
    host, port = server.address_of("irc")
    irc = DIALECTS["irc"]
    result = asyncio.run(asyncio.wait_for(run_rooms_bench(host, port, 3, 3, 0.3, dialect=irc), TIMEOUT))
    assert result.messages_in > 0
    assert result.deliveries == 2 * result.messages_in  # IRC echoes nothing: each line to the two others
    assert (result.lost, result.duplicated, result.dropped_clients) == (0, 0, 0)


def test_max_mode_run_loses_nothing(unlimited_server):
    host, port = unlimited_server.address
    result = asyncio.run(
        asyncio.wait_for(run_bench(host, port, clients=4, senders=2, rate=None, seconds=0.3, progress=False), TIMEOUT)
    )
    assert result.messages_in > 0
    assert result.deliveries == 4 * result.messages_in
    assert (result.lost, result.duplicated, result.out_of_order) == (0, 0, 0)


def feed(receiver: Receiver, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        receiver.data_received(data[start:cut])
        start = cut


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@pytest.mark.parametrize("cuts", [[], [7], [5, 90, 91, 400, 1003], list(range(1, 2000, 37))])
def test_a_sampled_receiver_counts_every_line_however_reads_split_them(dialect, cuts):
    """A sampled receiver parses a few lines of some reads and only counts the rest: no line is missed or
    counted twice, whether a read ends inside a line, a marker, or between lines."""
    speaker = Receiver(False, DIALECTS[dialect], DIALECTS[dialect].room(None))
    receiver = Receiver(True, DIALECTS[dialect], DIALECTS[dialect].room(None))
    receiver.welcomed.set()
    receiver.parse_every_ns = 10**15  # parse the first read only, count every other one
    said = [b'{"type":"joined","room":"lobby","name":"bench%d"}' % i for i in range(30)]  # joins before START
    said = [line + (b"\r\n" if dialect == "irc" else b"\n") for line in said]
    said += [speaker.dialect.say(speaker.room, START + b" 0")]
    said += [speaker.message() for _ in range(40)]
    said += [speaker.dialect.say(speaker.room, END + b" 0")]
    if dialect == "irc":  # what the server relays carries the sender's prefix
        said = [b":bench0!~bench0@localhost " + line for line in said]
    else:  # and our server numbers lines
        said = [line.replace(b'"message",', b'"message","id":%d,' % i) for i, line in enumerate(said, 1)]
    feed(receiver, b"".join(said), [cut for cut in cuts if cut < len(b"".join(said))])
    assert receiver.ended.is_set()
    assert receiver.count == 40
    assert receiver.latencies  # the first read was parsed


def test_irc_dialect_joins_after_the_welcome_and_reads_privmsgs():
    irc = DIALECTS["irc"]
    assert irc.hello("bench1", b"#bench") == b"NICK bench1\r\nUSER bench1 0 * :bench1\r\n"
    assert irc.setup(b":server 001 bench1 :Welcome", b"#bench") == (False, b"JOIN #bench\r\n")
    assert irc.setup(b"PING :server", b"#bench") == (False, b"PONG :server\r\n")
    assert irc.setup(b":server 366 bench1 #bench :End of NAMES list", b"#bench") == (True, b"")
    assert irc.said(b":bench0!~bench0@localhost PRIVMSG #bench :3 1700 xx\r") == (None, "3 1700 xx")
    assert irc.said(b":server NOTICE bench1 :hi") is None


def test_the_comparison_prints_medians_and_ratios_of_a_recorded_run(tmp_path):
    """bench/compare.py's table, from a run recorded earlier (no servers are started)."""
    rows = [
        {"server": server, "clients": 10, "mode": "max", "rep": rep, "error": None, "deliveries_per_s": rate,
         "p99_ms": p99, "server_cpu_us_per_delivery": 1.0}
        for server, rate, p99 in (("ours", 2e6, 10.0), ("ngircd", 4e6, 5.0))
        for rep in range(3)
    ]
    recorded = tmp_path / "runs.jsonl"
    recorded.write_text("".join(json.dumps(row) + "\n" for row in rows))
    completed = subprocess.run(
        [sys.executable, "bench/compare.py", "--from-file", str(recorded), "--servers", "ours,ngircd",
         "-n", "10", "--modes", "max"],
        capture_output=True, text=True, timeout=TIMEOUT * 3, stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert completed.returncode == 0, completed.stderr
    assert "| 10 | M deliveries/s | 2 | 4 | 0.50x |" in completed.stdout
    assert "| 10 | p99 ms @max | 10 | 5 | 0.50x |" in completed.stdout
