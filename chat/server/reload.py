"""SIGHUP: a configuration read again, applied to a running server as far as it can be without
a restart (the certificate, limits, `--admin`, timeouts, logging), and an account of what it did.

Owns the line between what changes in place and what needs a restart (ports, files, Redis,
history settings): those keep their running values, and the log says so. Never stops the server:
a new certificate that does not load leaves the old one in place.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from chat.server import logs
from chat.server.config import Option, ServerConfig
from chat.server.limits import AddressPolicy, parse_networks

if TYPE_CHECKING:
    from chat.server.tcp import ChatServer

log = logging.getLogger(__name__)

#: What a running server takes from a reload. New connections get new limits and timeouts;
#: open ones keep the pace they started with. Everything else waits for a restart.
RELOADABLE = frozenset({
    "tls_cert", "tls_key", "tls_handshake_timeout",
    "flood_burst", "flood_rate", "flood_max_delay", "max_line",
    "max_per_address", "connect_burst", "connect_interval", "limit_exempt", "max_clients",
    "max_backlog", "max_queued", "ping_interval", "idle_timeout", "join_timeout", "shutdown_grace",
    "admin", "log_level", "log_format",
})  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Reloaded:
    """What a reload did: options applied, options that need a restart, and the certificate."""

    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]
    certificate: bool | None  # True: read again; False: the new one failed; None: no TLS


def apply(server: ChatServer, new: ServerConfig) -> Reloaded:
    """Make `server` run with `new` where it can, keep its running values where it cannot, and
    log one line saying which was which."""
    old = server.config
    flags = {field.name: field.metadata["option"] for field in dataclasses.fields(ServerConfig)}
    changed = [name for name in flags if getattr(old, name) != getattr(new, name)]
    # Turning TLS on or off changes what the listening socket speaks: that is a restart.
    tls_toggled = bool(old.tls_cert or old.tls_key) != bool(new.tls_cert or new.tls_key)
    restart = [name for name in changed if name not in RELOADABLE or (name.startswith("tls_") and tls_toggled)]
    running = dataclasses.replace(new, **{name: getattr(old, name) for name in restart})
    applied = [name for name in changed if name not in restart]

    server.config = running  # new connections, the keepalive and admission read it from here
    server.outbox.max_backlog, server.outbox.max_queued = running.max_backlog, running.max_queued
    server.addresses.set_policy(
        AddressPolicy(
            max_connections=running.max_per_address,
            connect_burst=running.connect_burst,
            connect_interval=running.connect_interval,
            exempt=parse_networks(running.limit_exempt),
        )
    )
    server.hub.set_admins(running.admin)
    server.hub.shared_addresses = parse_networks(running.limit_exempt)
    if "log_format" in applied:
        logs.configure(running.log_level, running.log_format)
    logging.getLogger().setLevel(running.log_level)
    certificate = server.reload_tls() if server.tls_context is not None else None

    said = [_flag(flags[name]) for name in applied]
    if certificate is not None:
        said.append("the TLS certificate" if certificate else "nothing of the new TLS certificate (see above)")
    kept = [f"{_flag(flags[name])} (kept {getattr(old, name)!r})" for name in restart]
    log.info(
        "reloaded the configuration: %s%s",
        ", ".join(said) or "nothing changed",
        f"; needs a restart: {', '.join(kept)}" if kept else "",
    )
    return Reloaded(tuple(applied), tuple(restart), certificate)


def _flag(option: Option) -> str:
    return option.flag
