"""deploy/: the systemd unit passes `systemd-analyze verify` and its security review, the
configuration file it reads is the option table's, the server speaks sd_notify to a real
socket, and the image's health check works against a real server (no container engine here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chat.cli import notify_systemd
from chat.server import config_file
from chat.server.config import ServerConfig
from chat.testing import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "chat-server.service"
CONTAINERFILE = DEPLOY / "Containerfile"
#: Where the unit expects the installed package (`python3 -m venv /opt/chat`).
INSTALLED = "/opt/chat/bin/"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CHAT_REQUIRE_SYSTEMD"):
            pytest.fail("systemd-analyze is not installed, and CHAT_REQUIRE_SYSTEMD says the unit must be verified")
        pytest.skip("systemd-analyze is not installed (apt-get install -y systemd): the unit cannot be verified")
    return found


def unit_here(tmp_path: Path) -> Path:
    """The unit as shipped, but running this checkout's chat-server (verify checks the binary exists)."""
    installed_here = str(Path(sys.executable).parent) + "/"
    assert (Path(installed_here) / "chat-server").exists(), "pip install -e . makes the chat-server script"
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED, installed_here))
    return copy


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit_here(tmp_path))],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert UNIT.name not in result.stderr, result.stderr  # not even a warning about ours


def test_the_unit_is_locked_down_by_systemd_s_own_measure(tmp_path):
    result = subprocess.run(
        # --threshold counts tenths: fail above an exposure of 2.0
        [systemd_analyze(), "security", "--offline=true", "--threshold=20", str(unit_here(tmp_path))],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    level = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert level is not None and float(level.group(1)) <= 2.0 and level.group(2) == "OK", result.stdout[-500:]


def test_the_unit_is_a_notify_service_that_checks_before_it_starts_and_reloads_with_sighup():
    settings = unit_settings()
    assert settings["Type"] == ["notify"]
    assert settings["ExecStartPre"] == [f"{INSTALLED}chat-server --check-config"]
    assert settings["ExecStart"] == [f"{INSTALLED}chat-server"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["DynamicUser"] == ["yes"] and settings["StateDirectory"] == ["chat"]
    assert settings["Environment"][0] == "CHAT_CONFIG=/etc/chat/chat-server.toml"
    stop = float(settings["TimeoutStopSec"][0].rstrip("s"))
    assert stop > config_file.SERVICE.shutdown_grace + 5
    assert config_file.SERVICE.db.startswith("/var/lib/chat/")  # the StateDirectory


def test_the_shipped_configuration_file_is_the_option_table_s():
    expected = config_file.service_file()
    assert (DEPLOY / "chat-server.toml").read_text() == expected, (
        "regenerate: python -c 'from chat.server.config_file import service_file; "
        "print(service_file(), end=\"\")' > deploy/chat-server.toml"
    )
    assert config_file.read(str(DEPLOY / "chat-server.toml")) == {
        name: value for name, value in vars(config_file.SERVICE).items() if value is not None
    }


def test_the_containerfile_runs_unprivileged_with_a_state_volume_ports_and_a_health_check():
    text = CONTAINERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")):]  # the last stage
    user = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    assert "VOLUME /var/lib/chat" in final
    [expose] = [line.split()[1:] for line in final if line.startswith("EXPOSE ")]
    service = config_file.SERVICE
    assert expose == [str(service.port), str(service.metrics_port)]
    [health] = [line for line in final if line.startswith("HEALTHCHECK ")]
    assert f"127.0.0.1:{service.metrics_port}/healthz" in health
    assert any(line.startswith("COPY deploy/chat-server.toml /etc/chat/chat-server.toml") for line in final)
    assert "CHAT_CONFIG=/etc/chat/chat-server.toml" in text


def health_check_command(port: int) -> list[str]:
    """The Containerfile's HEALTHCHECK command, pointed at `port`."""
    text = CONTAINERFILE.read_text().replace("\\\n", " ")
    found = re.search(r"HEALTHCHECK .*?CMD (\[.*\])", text)
    assert found is not None
    command = json.loads(found.group(1))
    return [sys.executable if part == "python" else part.replace(":9477/", f":{port}/") for part in command]


def test_the_image_s_health_check_passes_on_a_serving_server_and_fails_when_it_cannot_store(
    start_chat_server, tmp_path
):
    server = start_chat_server(ServerConfig(metrics_port=0, db=str(tmp_path / "chat.db")))
    assert server.metrics is not None
    command = health_check_command(server.metrics.address[1])
    assert subprocess.run(command, capture_output=True, timeout=TIMEOUT).returncode == 0
    (tmp_path / "chat.db").unlink()
    assert subprocess.run(command, capture_output=True, timeout=TIMEOUT).returncode != 0


def test_the_server_tells_systemd_ready_reloading_and_stopping(chat_server_process, tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        manager.settimeout(TIMEOUT)
        server = chat_server_process(env={"NOTIFY_SOCKET": str(path)})
        ready = manager.recv(4096).decode()
        assert ready.startswith("READY=1\n") and f":{server.port}" in ready
        server.process.send_signal(signal.SIGHUP)
        reloading = manager.recv(4096).decode()
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert manager.recv(4096).decode() == "READY=1"
        server.process.send_signal(signal.SIGTERM)
        assert manager.recv(4096).decode() == "STOPPING=1"
        assert server.stop() == 0


def test_without_a_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify_systemd("READY=1") is False


def test_readme_s_configuration_example_is_the_generated_file():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running it as a service", 1)[1].split("\n## ", 1)[0]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    assert block == config_file.service_file()
    for path in ("deploy/chat-server.service", "deploy/Containerfile", "deploy/chat-server.toml"):
        assert path in section and (ROOT / path).exists()
