"""What the servers keep in Redis besides the logs: the rooms and their topics, accounts and
session tokens, and each room's roles, modes, bans and mutes; each the part of a Store
that one user of it needs, so that every server reads and writes the same ones.

Each method raises StoreError when Redis fails, as a Store does: the caller (kept())
refuses the request with storage_failed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import redis

from chat.server.redis import keys
from chat.server.store import AccountRecord, RoomRecord, Sanction, StoreError

# Move a read marker forward only. KEYS: markers. ARGV: room, id. 1 if it moved.
_FORWARD = """
local now = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > now then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1 end
return 0
"""


class SharedRoomRecords:
    """Every room any server has (key -> name as first spelled) and each room's topic: in
    Redis mode their only home."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def rooms(self) -> list[RoomRecord]:
        with _stored():
            found = cast(dict[bytes, bytes], self._redis.hgetall(keys.ROOMS))
            ordered = sorted((key.decode(), name.decode()) for key, name in found.items())
            with self._redis.pipeline(transaction=False) as pipe:
                for key, _ in ordered:
                    pipe.hmget(keys.meta(key), "topic", "creator")
                found_meta = cast(list[list[bytes | None]], pipe.execute())
        return [
            RoomRecord(key, name, (topic or b"").decode(), (creator or b"").decode())
            for (key, name), (topic, creator) in zip(ordered, found_meta, strict=True)
        ]

    def room(self, key: str) -> RoomRecord | None:
        with _stored():
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.hget(keys.ROOMS, key)
                pipe.hmget(keys.meta(key), "topic", "creator")
                name, (topic, creator) = cast(tuple[bytes | None, list[bytes | None]], pipe.execute())
        if name is None:
            return None
        return RoomRecord(key, name.decode(), (topic or b"").decode(), (creator or b"").decode())

    def name(self, key: str) -> str | None:
        with _stored():
            name = cast(bytes | None, self._redis.hget(keys.ROOMS, key))
        return name.decode() if name is not None else None

    def add(self, record: RoomRecord) -> RoomRecord:
        """Keep a new room unless a room with its key is kept already: the room as kept."""
        with _stored():
            if self._redis.hsetnx(keys.ROOMS, record.key, record.name):
                if record.creator:
                    self._redis.hset(keys.meta(record.key), "creator", record.creator)
                return record
        return self.room(record.key) or record

    def drop(self, key: str) -> None:
        """Forget the room `key`: its record, topic, rules and log (a later room of the name
        starts a new epoch)."""
        with _stored():
            with self._redis.pipeline() as pipe:
                pipe.hdel(keys.ROOMS, key)
                pipe.delete(keys.meta(key), keys.log(key), keys.roles(key), keys.modes(key), keys.sanctions(key))
                pipe.execute()

    def topic(self, key: str) -> str | None:
        with _stored():
            topic = cast(bytes | None, self._redis.hget(keys.meta(key), "topic"))
        return topic.decode() if topic is not None else None

    def keep_topic(self, key: str, topic: str) -> None:
        with _stored():
            self._redis.hset(keys.meta(key), "topic", topic)


class SharedAccounts:
    """Accounts and session tokens in Redis, so that a user can log in, or come back with its
    token, on any of the servers (the part of a Store that chat.server.accounts uses)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._forward = client.register_script(_FORWARD)

    @contextmanager
    def _kept(self) -> Iterator[None]:
        """Redis, with what identity needs still there (else StoreError: storage_failed)."""
        with _stored():
            intact(self._redis)
            yield

    def account(self, key: str) -> AccountRecord | None:
        with self._kept():
            found = cast(dict[bytes, bytes], self._redis.hgetall(keys.account(key)))
            if not found:
                return None
            return AccountRecord(key, found[b"name"].decode(), found[b"hash"].decode(), float(found[b"created"]))

    def save_account(self, account: AccountRecord) -> None:
        with self._kept():
            key = keys.account(account.key)
            with self._redis.pipeline() as pipe:
                pipe.hsetnx(key, "name", account.name)
                pipe.hsetnx(key, "created", account.created_at or time.time())
                pipe.hset(key, "hash", account.password_hash)
                pipe.sadd(keys.ACCOUNTS, account.key)
                pipe.execute()

    def session(self, token_hash: str) -> tuple[str, float] | None:
        with self._kept():
            found = cast(dict[bytes, bytes], self._redis.hgetall(keys.token(token_hash)))
            if not found:
                return None
            return found[b"identity"].decode(), float(found[b"expires"])

    def save_session(self, token_hash: str, identity: str, expires_at: float) -> None:
        with self._kept():
            key = keys.token(token_hash)
            with self._redis.pipeline() as pipe:
                pipe.hset(key, mapping={"identity": identity, "expires": expires_at})
                pipe.expireat(key, int(expires_at) + 1)
                pipe.sadd(keys.tokens(identity), token_hash)
                pipe.execute()

    def drop_sessions(self, identity: str) -> None:
        with self._kept():
            tokens = cast(set[bytes], self._redis.smembers(keys.tokens(identity)))
            with self._redis.pipeline() as pipe:
                for token_hash in tokens:
                    pipe.delete(keys.token(token_hash.decode()))
                pipe.delete(keys.tokens(identity))
                pipe.execute()


    def accounts(self) -> list[AccountRecord]:
        with self._kept():
            found = sorted(key.decode() for key in cast(set[bytes], self._redis.smembers(keys.ACCOUNTS)))
        return [record for key in found if (record := self.account(key)) is not None]

    def drop_account(self, key: str) -> None:
        identity = f"account:{key}"
        self.drop_sessions(identity)
        with self._kept():
            with self._redis.pipeline() as pipe:
                pipe.delete(keys.account(key), keys.account_rooms(identity), keys.read_markers(identity))
                pipe.srem(keys.ACCOUNTS, key)
                pipe.execute()

    def account_rooms(self, identity: str) -> list[str]:
        with self._kept():
            rooms = cast(list[bytes], self._redis.zrange(keys.account_rooms(identity), 0, -1))
        return [room.decode() for room in rooms]

    def save_account_room(self, identity: str, room: str, in_it: bool) -> None:
        with self._kept():
            if in_it:
                self._redis.zadd(keys.account_rooms(identity), {room: time.time()}, nx=True)
            else:
                self._redis.zrem(keys.account_rooms(identity), room)

    def read_markers(self, identity: str) -> dict[str, int]:
        with self._kept():
            found = cast(dict[bytes, bytes], self._redis.hgetall(keys.read_markers(identity)))
        return {room.decode(): int(id) for room, id in found.items()}

    def save_read_marker(self, identity: str, room: str, id: int) -> bool:
        with self._kept():
            return bool(self._forward(keys=[keys.read_markers(identity)], args=[room, id]))


class SharedRules:
    """Roles, modes, bans and mutes in Redis, so that every server enforces the same ones (the
    part of a Store that rooms and the server's own scope use). Each server keeps a copy per
    room and reads it again when the rules stream says a room's rules changed."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    @contextmanager
    def _kept(self) -> Iterator[None]:
        """Redis, with what identity needs still there (else StoreError: storage_failed)."""
        with _stored():
            intact(self._redis)
            yield

    def roles(self, room: str) -> dict[str, str]:
        with self._kept():
            found = cast(dict[bytes, bytes], self._redis.hgetall(keys.roles(room)))
            return {identity.decode(): role.decode() for identity, role in found.items()}

    def save_role(self, room: str, identity: str, role: str | None) -> None:
        with self._kept():
            if role is None:
                self._redis.hdel(keys.roles(room), identity)
            else:
                self._redis.hset(keys.roles(room), identity, role)

    def modes(self, room: str) -> set[str]:
        with self._kept():
            return {mode.decode() for mode in cast(set[bytes], self._redis.smembers(keys.modes(room)))}

    def save_mode(self, room: str, mode: str, on: bool) -> None:
        with self._kept():
            if on:
                self._redis.sadd(keys.modes(room), mode)
            else:
                self._redis.srem(keys.modes(room), mode)

    def sanctions(self, room: str) -> list[Sanction]:
        with self._kept():
            found = cast(dict[bytes, bytes], self._redis.hgetall(keys.sanctions(room)))
            return [Sanction(**json.loads(record)) for record in found.values()]

    def save_sanction(self, sanction: Sanction) -> None:
        with self._kept():
            field = f"{sanction.target}\0{sanction.kind}"
            self._redis.hset(keys.sanctions(sanction.room), field, json.dumps(dataclasses.asdict(sanction)))

    def drop_sanction(self, room: str, target: str, kind: str) -> None:
        with self._kept():
            self._redis.hdel(keys.sanctions(room), f"{target}\0{kind}")


def intact(client: redis.Redis) -> None:
    """StoreError unless Redis still has what the servers keep of identity (chat:identity marks
    it): after a FLUSHALL, an eviction or a failover to an empty replica, accounts, tokens, roles,
    bans and modes are refused with storage_failed until Redis is restored, never served empty."""
    if not client.exists(keys.IDENTITY):
        raise StoreError(IDENTITY_LOST)


#: Why identity is refused while Redis has lost it.
IDENTITY_LOST = (
    "Redis lost the accounts, tokens, roles and bans (chat:identity is gone): restore it from its backup, "
    "or, to start again without them, set chat:identity (redis-cli SET chat:identity restarted)"
)


@contextmanager
def _stored() -> Iterator[None]:
    """Redis failing is the store failing: the request is refused with storage_failed."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreError(f"Redis: {exc}") from exc
