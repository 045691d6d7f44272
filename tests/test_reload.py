"""SIGHUP: the configuration read again and applied where a running server can take it, with a
log line saying what was reloaded and what waits for a restart; signals together never hang."""

from __future__ import annotations

import dataclasses
import signal
import time

from chat.server import reload
from chat.server.config import ServerConfig
from chat.testing import TIMEOUT, LineClient, scaled
from chat.wire.protocol import ErrorReply, ServerNotice, SessionToken

PASSWORD = "long enough password"


def test_a_reload_applies_limits_and_admins_and_keeps_what_needs_a_restart(start_chat_server, connect):
    server = start_chat_server(ServerConfig(admin=("root",)))
    root = connect(server)
    root.join("boss")
    root.send({"type": "register", "password": PASSWORD})
    root.expect(SessionToken)
    root.send({"type": "lockdown", "on": True})
    assert root.expect(ErrorReply).code == "not_operator"

    new = dataclasses.replace(server.config, admin=("boss",), max_backlog=4096, port=1, flood_rate=1.0,
                              db="/elsewhere.db", log_level="DEBUG")  # fmt: skip
    done = reload.apply(server, new)
    assert set(done.applied) == {"admin", "max_backlog", "flood_rate", "log_level"}
    assert set(done.needs_restart) == {"port", "db"}
    assert (server.config.port, server.config.db) != (1, "/elsewhere.db")
    assert server.config.max_backlog == server.outbox.max_backlog == 4096
    root.send({"type": "lockdown", "on": True})
    root.expect(ServerNotice)  # boss is an operator now, without reconnecting


def test_turning_tls_on_needs_a_restart(start_chat_server):
    server = start_chat_server()
    done = reload.apply(server, dataclasses.replace(server.config, tls_cert="c.pem", tls_key="k.pem"))
    assert done.applied == () and set(done.needs_restart) == {"tls_cert", "tls_key"} and done.certificate is None
    assert server.tls_context is None


def test_sighup_rereads_the_file_and_says_what_it_reloaded(chat_server_process, tmp_path):
    path = tmp_path / "chat.toml"
    path.write_text("flood_rate = 5\n")
    server = chat_server_process("--config", str(path))
    path.write_text('flood_rate = 2\nadmin = ["root"]\nhistory = 3\n')
    server.process.send_signal(signal.SIGHUP)
    line = server.wait_for_log(r"reloaded the configuration")
    assert "--flood-rate, --admin" in line and "needs a restart: --history (kept 50)" in line

    path.write_text("flood_rat = 2\n")  # a typo: the running configuration stays
    server.process.send_signal(signal.SIGHUP)
    assert "unknown key 'flood_rat'" in server.wait_for_log(r"kept the running configuration")
    alice = LineClient(server.address)
    assert alice.join("alice").name == "alice"  # still serving, without TLS too
    alice.close()


def test_sighup_sigint_and_sigterm_together_stop_within_five_seconds(chat_server_process):
    for _ in range(5):
        server = chat_server_process()
        started = time.monotonic()
        for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            server.process.send_signal(signum)
        assert server.exit_status(TIMEOUT) == 0, server.log
        assert time.monotonic() - started < scaled(5.0)
