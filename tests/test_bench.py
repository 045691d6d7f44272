"""A small run of the benchmark, so that it cannot rot; its figures are never asserted."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from chat.bench import format_table, run_bench, run_rooms_bench
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
