"""Who is where when several servers share one Redis: the servers alive, the names taken and by
whom, each room's members, the rooms that exist and their topics, and accounts and tokens.

Every server holds a lease (its score in `chat:nodes`, an end time on Redis' clock) that it
renews every few seconds; a name or a membership recorded by a server whose lease ran out
counts for nothing, and the first server to see that lease gone tells the rooms its members
left. Scripts read Redis' own clock, so servers on different machines need not agree on time.
The scripts touch keys they compute (a holder's lease), so they need one Redis (with replicas
if wanted), not a Redis Cluster.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import cast

import redis

from chat.server.session import Holder
from chat.server.store import AccountRecord, Sanction, StoreError

log = logging.getLogger(__name__)

#: How long (s) a server's names and memberships outlive its last renewal.
LEASE = 10.0
#: How often (s) a server renews its lease.
RENEW_EVERY = 2.5

NODES = "chat:nodes"
NAMES = "chat:names"
ROOMS = "chat:rooms"

# Redis' own clock, in seconds: every server reads the same one.
_CLOCK = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
"""

# ... and whether a server's lease (in KEYS[2]) runs.
_NOW = _CLOCK + """
local function alive(node)
  local lease = redis.call('ZSCORE', KEYS[2], node)
  return lease and tonumber(lease) > now
end
"""

# Renew this server's lease; 1 if it had run out (others may have dropped what it held).
# KEYS: nodes. ARGV: node, lease.
_RENEW = _CLOCK + """
local lease = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if lease and tonumber(lease) > now then return 0 end
return 1
"""

# The servers whose lease ran out, each taken off the list by exactly one caller.
# KEYS: nodes. ARGV: node asking.
_REAP = _CLOCK + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
local mine = {}
for _, node in ipairs(dead) do
  if node ~= ARGV[1] and redis.call('ZREM', KEYS[1], node) == 1 then mine[#mine + 1] = node end
end
return mine
"""

# Give a name (all its look-alike keys) to an identity on a server, unless a live server holds
# it for another identity. KEYS: names, nodes. ARGV: node, identity, record, keys...
# Returns {0, holder record} when taken, else {1, servers that held it for the same identity...}.
_CLAIM = _NOW + """
for i = 4, #ARGV do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held then
    local holder = cjson.decode(held)
    if holder.identity ~= ARGV[2] and alive(holder.node) then return {0, held} end
  end
end
local told = {1}
for i = 4, #ARGV do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held then
    local holder = cjson.decode(held)
    if holder.identity == ARGV[2] and holder.node ~= ARGV[1] then told[#told + 1] = holder.node end
  end
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[3])
end
return told
"""

# Drop the name's keys that this server holds for this identity. KEYS: names. ARGV: node, identity, keys...
_RELEASE = """
for i = 3, #ARGV do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held then
    local holder = cjson.decode(held)
    if holder.node == ARGV[1] and holder.identity == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[i]) end
  end
end
"""

# Say why the holder of a name is away (no `why`: back). KEYS: names. ARGV: node, identity, why, keys...
_AWAY = """
for i = 4, #ARGV do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held then
    local holder = cjson.decode(held)
    if holder.node == ARGV[1] and holder.identity == ARGV[2] then
      if ARGV[3] == '' then holder.away = nil else holder.away = ARGV[3] end
      redis.call('HSET', KEYS[1], ARGV[i], cjson.encode(holder))
    end
  end
end
"""

# Who holds a name key, if a live server does. KEYS: names, nodes. ARGV: key.
_HOLDER = _NOW + """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and alive(cjson.decode(held).node) then return held end
return false
"""

# A room's members on live servers. KEYS: members, nodes.
_MEMBERS = _NOW + """
local all = redis.call('HGETALL', KEYS[1])
local names = {}
for i = 1, #all, 2 do
  if alive(all[i + 1]) then names[#names + 1] = all[i] end
end
return names
"""

# Drop a member if the given server still has it there; 1 if it did. KEYS: members. ARGV: name, node.
_DROP_MEMBER = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


def _holder(record: dict[str, str]) -> Holder:
    return Holder(record["identity"], record["name"], record.get("away"), record.get("address"))


def members_key(room: str) -> str:
    return f"chat:{{{room}}}:members"


def _node_rooms(node: str) -> str:
    """The rooms a server has (had) members in: where to look when it dies."""
    return f"chat:node:{node}:rooms"


class Directory:
    """Names, memberships, rooms and leases in one Redis, for the server `node`.

    Every method may raise redis.RedisError: the caller decides what that means to a user.
    """

    def __init__(self, client: redis.Redis, node: str) -> None:
        self._redis = client
        self.node = node
        self._renew = client.register_script(_RENEW)
        self._reap = client.register_script(_REAP)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._holder = client.register_script(_HOLDER)
        self._away = client.register_script(_AWAY)
        self._members = client.register_script(_MEMBERS)
        self._drop_member = client.register_script(_DROP_MEMBER)

    # --- leases ----------------------------------------------------------------------

    def renew(self) -> bool:
        """Renew this server's lease; True if it had run out (what it held may be gone)."""
        return bool(self._renew(keys=[NODES], args=[self.node, LEASE]))

    def reap(self) -> list[tuple[str, str, str]]:
        """Forget the servers whose lease ran out (each reaped by one server): the members they
        had, as (room key, room name, member name), each no longer in the room."""
        gone: list[tuple[str, str, str]] = []
        for dead in cast(list[bytes], self._reap(keys=[NODES], args=[self.node])):
            node = dead.decode()
            log.warning("server %s stopped renewing its lease: its users are gone", node)
            rooms = cast(set[bytes], self._redis.smembers(_node_rooms(node)))
            for room_bytes in rooms:
                room = room_bytes.decode()
                members = cast(dict[bytes, bytes], self._redis.hgetall(members_key(room)))
                name = self.room_name(room) or room
                for member, where in members.items():
                    if where.decode() == node and self._drop_member(keys=[members_key(room)], args=[member, node]):
                        gone.append((room, name, member.decode()))
            self._redis.delete(_node_rooms(node))
            for key, held in cast(dict[bytes, bytes], self._redis.hgetall(NAMES)).items():
                record = json.loads(held)
                if record["node"] == node:
                    self._release(keys=[NAMES], args=[node, record["identity"], key])
        return gone

    def alive(self) -> list[str]:
        """The servers whose lease runs."""
        seconds, micro = self._redis.time()
        now = seconds + micro / 1e6
        return [node.decode() for node in cast(list[bytes], self._redis.zrangebyscore(NODES, now, "+inf"))]

    def leave_all(self) -> None:
        """This server stops: its lease ends now (its connections are closed and said so)."""
        self._redis.zrem(NODES, self.node)
        self._redis.delete(_node_rooms(self.node))

    # --- names -----------------------------------------------------------------------

    def claim(self, keys: Collection[str], holder: Holder) -> tuple[Holder | None, list[str]]:
        """Take a name for `holder` here: (None, the servers to tell that it moved) when taken,
        else (who holds it, [])."""
        identity = holder.identity
        record = json.dumps({"node": self.node, **dataclasses.asdict(holder)})
        args = [self.node, identity, record, *sorted(keys)]
        reply = cast(list[int | bytes], self._claim(keys=[NAMES, NODES], args=args))
        if reply[0] == 0:
            return _holder(json.loads(cast(bytes, reply[1]))), []
        return None, sorted({cast(bytes, node).decode() for node in reply[1:]})

    def release(self, keys: Collection[str], identity: str) -> None:
        self._release(keys=[NAMES], args=[self.node, identity, *keys])

    def holder(self, key: str) -> Holder | None:
        """Who holds the name key on a live server, if anybody."""
        held = self._holder(keys=[NAMES, NODES], args=[key])
        if not held:
            return None
        return _holder(json.loads(cast(bytes, held)))

    def set_away(self, keys: Collection[str], identity: str, why: str | None) -> None:
        self._away(keys=[NAMES], args=[self.node, identity, why or "", *sorted(keys)])

    def away(self, keys: Collection[str]) -> dict[str, str]:
        """Why the holders of these name keys are away: name -> why, for those who said."""
        if not keys:
            return {}
        found: dict[str, str] = {}
        for held in cast(list[bytes | None], self._redis.hmget(NAMES, sorted(keys))):
            record = json.loads(held) if held else None
            if record is not None and record.get("away"):
                found[record["name"]] = record["away"]
        return found

    # --- rooms and their members -----------------------------------------------------------

    def add_room(self, key: str, name: str) -> None:
        self._redis.hsetnx(ROOMS, key, name)

    def rooms(self) -> dict[str, str]:
        """Every shared room: key -> name."""
        found = cast(dict[bytes, bytes], self._redis.hgetall(ROOMS))
        return {key.decode(): name.decode() for key, name in found.items()}

    def room_name(self, key: str) -> str | None:
        name = cast(bytes | None, self._redis.hget(ROOMS, key))
        return name.decode() if name is not None else None

    def enter(self, room: str, name: str) -> None:
        with self._redis.pipeline() as pipe:
            pipe.hset(members_key(room), name, self.node)
            pipe.sadd(_node_rooms(self.node), room)
            pipe.execute()

    def leave(self, room: str, name: str) -> None:
        self._drop_member(keys=[members_key(room)], args=[name, self.node])

    def members(self, room: str) -> list[str]:
        """The room's members on every live server."""
        names = cast(list[bytes], self._members(keys=[members_key(room), NODES]))
        return [name.decode() for name in names]


class SharedAccounts:
    """Accounts and session tokens in Redis, so that a user can log in, or come back with its
    token, on any of the servers (the part of a Store that chat.server.accounts uses)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def account(self, key: str) -> AccountRecord | None:
        with _stored():
            found = cast(dict[bytes, bytes], self._redis.hgetall(f"chat:account:{key}"))
            if not found:
                return None
            return AccountRecord(key, found[b"name"].decode(), found[b"hash"].decode(), float(found[b"created"]))

    def save_account(self, account: AccountRecord) -> None:
        with _stored():
            key = f"chat:account:{account.key}"
            with self._redis.pipeline() as pipe:
                pipe.hsetnx(key, "name", account.name)
                pipe.hsetnx(key, "created", account.created_at or time.time())
                pipe.hset(key, "hash", account.password_hash)
                pipe.execute()

    def session(self, token_hash: str) -> tuple[str, float] | None:
        with _stored():
            found = cast(dict[bytes, bytes], self._redis.hgetall(f"chat:token:{token_hash}"))
            if not found:
                return None
            return found[b"identity"].decode(), float(found[b"expires"])

    def save_session(self, token_hash: str, identity: str, expires_at: float) -> None:
        with _stored():
            key = f"chat:token:{token_hash}"
            with self._redis.pipeline() as pipe:
                pipe.hset(key, mapping={"identity": identity, "expires": expires_at})
                pipe.expireat(key, int(expires_at) + 1)
                pipe.sadd(f"chat:tokens:{identity}", token_hash)
                pipe.execute()

    def drop_sessions(self, identity: str) -> None:
        with _stored():
            tokens = cast(set[bytes], self._redis.smembers(f"chat:tokens:{identity}"))
            with self._redis.pipeline() as pipe:
                for token_hash in tokens:
                    pipe.delete(f"chat:token:{token_hash.decode()}")
                pipe.delete(f"chat:tokens:{identity}")
                pipe.execute()


class SharedRules:
    """Roles, modes, bans and mutes in Redis, so that every server enforces the same ones (the
    part of a Store that rooms and the server's own scope use). Each server keeps a copy per
    room and reads it again when the rules stream says a room's rules changed."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def roles(self, room: str) -> dict[str, str]:
        with _stored():
            found = cast(dict[bytes, bytes], self._redis.hgetall(f"chat:{{{room}}}:roles"))
            return {identity.decode(): role.decode() for identity, role in found.items()}

    def save_role(self, room: str, identity: str, role: str | None) -> None:
        with _stored():
            if role is None:
                self._redis.hdel(f"chat:{{{room}}}:roles", identity)
            else:
                self._redis.hset(f"chat:{{{room}}}:roles", identity, role)

    def modes(self, room: str) -> set[str]:
        with _stored():
            return {mode.decode() for mode in cast(set[bytes], self._redis.smembers(f"chat:{{{room}}}:modes"))}

    def save_mode(self, room: str, mode: str, on: bool) -> None:
        with _stored():
            if on:
                self._redis.sadd(f"chat:{{{room}}}:modes", mode)
            else:
                self._redis.srem(f"chat:{{{room}}}:modes", mode)

    def sanctions(self, room: str) -> list[Sanction]:
        with _stored():
            found = cast(dict[bytes, bytes], self._redis.hgetall(f"chat:{{{room}}}:sanctions"))
            return [Sanction(**json.loads(record)) for record in found.values()]

    def save_sanction(self, sanction: Sanction) -> None:
        with _stored():
            field = f"{sanction.target}\0{sanction.kind}"
            self._redis.hset(f"chat:{{{sanction.room}}}:sanctions", field, json.dumps(dataclasses.asdict(sanction)))

    def drop_sanction(self, room: str, target: str, kind: str) -> None:
        with _stored():
            self._redis.hdel(f"chat:{{{room}}}:sanctions", f"{target}\0{kind}")


@contextmanager
def _stored() -> Iterator[None]:
    """Redis failing is the store failing: the request is refused with storage_failed."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreError(f"Redis: {exc}") from exc
