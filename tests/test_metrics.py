"""--metrics-port: /metrics read with prometheus-client's own parser while real clients talk,
and /healthz and /readyz as a load balancer sees them."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chat.server.config import ServerConfig
from chat.server.metrics import MetricsPortError
from chat.testing import TIMEOUT, LineClient, RecordingChatServer, scaled
from chat.wire.protocol import ChatMessage, ErrorReply, Notice


def get(server: RecordingChatServer, path: str) -> tuple[int, str]:
    assert server.metrics is not None
    host, port = server.metrics.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(server: RecordingChatServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus-client: {(name, labels): value}."""
    status, text = get(server, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def until(found: Callable[[], bool], what: str) -> None:
    """Wait for `found()`, checking again each time the server had a moment to act (bounded by TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while not found():
        assert time.monotonic() < deadline, f"never: {what}"
        threading.Event().wait(0.01)


@pytest.fixture
def metered(start_chat_server, tmp_path) -> Callable[..., RecordingChatServer]:
    def start(**settings: object) -> RecordingChatServer:
        config = ServerConfig(metrics_port=0, db=str(tmp_path / "chat.db"), **settings)  # type: ignore[arg-type]
        return start_chat_server(config)

    return start


def test_metrics_count_connections_messages_and_deliveries(metered, connect):
    server = metered()
    before = scrape(server)
    assert before[("chat_connections", (("door", "main"),))] == 0
    assert before[("chat_messages_total", ())] == 0
    assert before[("chat_accounts", ())] == 0
    alice, bob = connect(server), connect(server)
    alice.join("alice")
    bob.join("bob")
    alice.say_all(["one", "two", "three"])
    bob.expect(ChatMessage, msg="three")
    after = scrape(server)
    assert after[("chat_connections", (("door", "main"),))] == 2
    assert after[("chat_messages_total", ())] == 3
    assert after[("chat_deliveries_total", ())] - before[("chat_deliveries_total", ())] >= 6  # 3 lines, 2 members
    assert after[("chat_rooms", ())] >= 1
    batches = after[("chat_store_seconds_count", ())]
    assert 1 <= batches <= 3 and after[("chat_store_seconds_bucket", (("le", "+Inf"),))] == batches
    assert after[("chat_store_seconds_sum", ())] > 0
    for reason in ("timeout", "slow_consumer", "excess_flood"):
        assert after[("chat_dropped_total", (("reason", reason),))] == 0
    alice.close()
    until(lambda: scrape(server)[("chat_connections", (("door", "main"),))] == 1, "alice's connection counted gone")


def test_rate_limits_and_cuts_are_counted(metered, connect):
    server = metered(flood_burst=5, flood_rate=1, flood_max_delay=scaled(3))
    eager = connect(server)
    eager.join("eager")
    for text in ("one", "two", "three"):  # the last waits its turn: a rate_limited notice
        eager.say(text)
    eager.expect(Notice, code="rate_limited")
    assert scrape(server)[("chat_rate_limited_total", ())] == 1
    for n in range(10):  # far past the delay the server tolerates
        eager.say(f"more {n}")
    assert any(isinstance(m, ErrorReply) and m.code == "excess_flood" for m in eager.expect_closed())
    until(lambda: scrape(server)[("chat_dropped_total", (("reason", "excess_flood"),))] == 1, "the cut counted")


def test_healthz_turns_503_when_the_history_file_is_deleted(metered, connect, tmp_path):
    server = metered()
    assert get(server, "/healthz") == (200, "ok\n")
    assert get(server, "/readyz") == (200, "ready\n")
    (tmp_path / "chat.db").unlink()
    status, text = get(server, "/healthz")
    assert status == 503 and "was deleted" in text
    assert get(server, "/readyz")[0] == 503
    assert scrape(server)  # metrics still answer: they say what happened
    assert get(server, "/nowhere")[0] == 404


def test_a_taken_metrics_port_is_said_to_be_the_metrics_port(start_chat_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            start_chat_server(ServerConfig(metrics_port=port))


def test_without_the_option_there_is_no_endpoint(start_chat_server):
    assert start_chat_server().metrics is None


def test_with_redis_the_round_trip_is_measured_and_readiness_follows_redis(metered, redis_server):
    server = metered(redis=redis_server.url)
    samples = scrape(server)
    assert 0 < samples[("chat_redis_round_trip_seconds", ())] < TIMEOUT
    assert get(server, "/readyz")[0] == 200
    redis_server.kill()
    status, text = get(server, "/readyz")
    assert status == 503 and "Redis" in text
    assert get(server, "/healthz")[0] == 200  # it still serves its connections


def test_the_command_line_says_where_the_metrics_are(chat_server_process):
    server = chat_server_process("--metrics-port", "0")
    line = server.wait_for_log(r"metrics on http://")
    url = line.split("metrics on ", 1)[1].split(" ", 1)[0]
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        assert "chat_messages_total" in response.read().decode()
    LineClient(server.address).close()
