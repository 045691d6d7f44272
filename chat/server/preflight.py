"""--check-config: everything a start would find wrong with a configuration, found without
starting (Ergo's `run --smoke`, Centrifugo's `checkconfig`, as a unit's ExecStartPre).

Each check opens what a start would open (the certificate and key, the history file, Redis, the
listening ports) and closes it before returning: nothing is served, created or kept, so a check
may run beside a server that uses the same files. Problems are sentences for the operator.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import ssl
from collections.abc import Iterator

from chat.server.config import ServerConfig
from chat.server.tcp import listeners  # the one place options become listeners

#: Seconds a check waits for Redis to answer before calling it unreachable.
REDIS_TIMEOUT = 3.0


def problems(config: ServerConfig) -> list[str]:
    """One sentence per thing that would stop (or break) a start with `config`; [] when none."""
    return [*_listeners(config), *_tls(config), *_history_file(config.db), *_redis(config.redis)]


def addresses(config: ServerConfig) -> list[tuple[str, str, int]]:
    """Every (what, host, port) a server with `config` listens on, its front doors and the rest."""
    found = [(listener.option, *listener.address) for listener in listeners(config)]
    if config.metrics_port is not None:
        found.append(("--metrics-port", config.host, config.metrics_port))
    return found


def _listeners(config: ServerConfig) -> Iterator[str]:
    try:
        found = addresses(config)
    except OSError as exc:  # options that do not go together
        yield str(exc)
        return
    for what, host, port in found:
        if port == 0:
            continue  # any free port: nothing to prove
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except socket.gaierror as exc:
            yield f"{what}: cannot resolve {host}: {exc.strerror}"
            continue
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            try:
                probe.bind(address)
            except OSError as exc:
                yield f"{what}: cannot listen on {host}:{port}: {exc.strerror or exc}"


def _tls(config: ServerConfig) -> Iterator[str]:
    if not (config.tls_cert or config.tls_key):
        return
    if not (config.tls_cert and config.tls_key):
        yield "--tls-cert and --tls-key go together: give both"
        return
    for flag, path in (("--tls-cert", config.tls_cert), ("--tls-key", config.tls_key)):
        if not os.access(path, os.R_OK):
            yield f"{flag} {path}: cannot be read" + ("" if os.path.exists(path) else " (no such file)")
            return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            yield f"--tls-key {config.tls_key} is not the key of the certificate in --tls-cert {config.tls_cert}"
        else:
            yield f"--tls-cert {config.tls_cert} with --tls-key {config.tls_key}: {exc.reason or exc}"
    except OSError as exc:
        yield f"--tls-cert {config.tls_cert}: {exc.strerror or exc}"


def _history_file(path: str) -> Iterator[str]:
    """Whether the server could create, or open and write, its history file (a write in a
    transaction, rolled back, as the store proves at start)."""
    if path == ":memory:":
        return
    if os.path.isdir(path):
        yield f"--db {path}: is a directory, not a history file"
        return
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
            yield f"--db {path}: cannot be created ({parent} is not a writable directory)"
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(directory, os.W_OK | os.X_OK):
        yield f"--db {path}: not writable by this user (the file and its directory must be)"
        return
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=REDIS_TIMEOUT, isolation_level=None)
    except sqlite3.Error as exc:
        yield f"--db {path}: cannot be opened: {exc}"
        return
    try:
        db.execute("PRAGMA quick_check").fetchone()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE chat_check_config_probe (x)")
        finally:
            db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        yield f"--db {path}: cannot be written as a history file: {exc}"
    finally:
        db.close()


def _redis(url: str | None) -> Iterator[str]:
    if not url:
        return
    where = url.split("@")[-1]  # no password in the output
    try:
        import redis
    except ImportError:
        yield "--redis needs the redis package: pip install 'chat[redis]'"
        return
    try:
        client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)
    except ValueError as exc:
        yield f"--redis {where}: not a Redis URL ({exc})"
        return
    try:
        client.ping()
    except redis.RedisError as exc:
        yield f"--redis {where}: cannot be reached: {exc}"
    finally:
        client.close()
