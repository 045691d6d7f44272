"""Who is where when several servers share one Redis: the names taken and by whom (and why
they are away), and each room's members, each recorded under the server that has them.

A name or a membership recorded by a server whose lease ran out (chat.server.redis.lease)
counts for nothing, and is dropped by the first server that sees that lease gone. Scripts
read Redis' own clock, so servers on different machines need not agree on time.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection
from typing import cast

import redis

from chat.server.redis import keys
from chat.server.session import Holder

#: Redis' own clock, in seconds, for a script: every server reads the same one.
CLOCK = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
"""

# ... and whether a server's lease (in KEYS[2]) runs; whether any of a holder's servers (an account
# may hold its name on several: `nodes`) does.
_NOW = CLOCK + """
local function alive(node)
  local lease = redis.call('ZSCORE', KEYS[2], node)
  return lease and tonumber(lease) > now
end
local function any_alive(holder)
  for _, node in ipairs(holder.nodes or {holder.node}) do
    if alive(node) then return true end
  end
  return false
end
"""

# Give a name (all its look-alike keys) to an identity on a server, unless a live server holds
# it for another identity. KEYS: names, nodes. ARGV: node, identity, record, keys...
# Returns {0, holder record} when taken, else {1, servers that held it for the same identity...}.
_CLAIM = _NOW + """
for i = 4, #ARGV do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held then
    local holder = cjson.decode(held)
    if holder.identity ~= ARGV[2] and any_alive(holder) then return {0, held} end
  end
end
local told = {1}
for i = 4, #ARGV do
  local record = cjson.decode(ARGV[3])
  record.nodes = {ARGV[1]}
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held then
    local holder = cjson.decode(held)
    if holder.identity == ARGV[2] then
      for _, node in ipairs(holder.nodes or {holder.node}) do
        if node ~= ARGV[1] and alive(node) then
          told[#told + 1] = node
          record.nodes[#record.nodes + 1] = node
        end
      end
    end
  end
  redis.call('HSET', KEYS[1], ARGV[i], cjson.encode(record))
end
return told
"""

# Drop the name's keys that this server holds for this identity. KEYS: names. ARGV: node, identity, keys...
_RELEASE = """
for i = 3, #ARGV do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held then
    local holder = cjson.decode(held)
    if holder.identity == ARGV[2] then
      local rest = {}
      for _, node in ipairs(holder.nodes or {holder.node}) do
        if node ~= ARGV[1] then rest[#rest + 1] = node end
      end
      if #rest == 0 then
        redis.call('HDEL', KEYS[1], ARGV[i])
      elseif #rest < #(holder.nodes or {holder.node}) then
        holder.nodes = rest
        holder.node = rest[1]
        redis.call('HSET', KEYS[1], ARGV[i], cjson.encode(holder))
      end
    end
  end
end
"""

# Say why the holder of a name is away (no `why`: back). KEYS: names. ARGV: node, identity, why, keys...
_AWAY = """
for i = 4, #ARGV do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held then
    local holder = cjson.decode(held)
    if holder.identity == ARGV[2] then
      if ARGV[3] == '' then holder.away = nil else holder.away = ARGV[3] end
      redis.call('HSET', KEYS[1], ARGV[i], cjson.encode(holder))
    end
  end
end
"""

# Who holds a name key, if a live server does. KEYS: names, nodes. ARGV: key.
_HOLDER = _NOW + """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and any_alive(cjson.decode(held)) then return held end
return false
"""

# A room's members on live servers (a member's value: the servers it is on, comma-separated: an
# account may be in the room from several). KEYS: members, nodes.
_MEMBERS = _NOW + """
local all = redis.call('HGETALL', KEYS[1])
local names = {}
for i = 1, #all, 2 do
  for node in string.gmatch(all[i + 1], '[^,]+') do
    if alive(node) then
      names[#names + 1] = all[i]
      break
    end
  end
end
return names
"""

# A member is in the room on a server too. KEYS: members. ARGV: name, node.
_ENTER = """
local now = redis.call('HGET', KEYS[1], ARGV[1])
if not now or now == '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
for node in string.gmatch(now, '[^,]+') do
  if node == ARGV[2] then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], now .. ',' .. ARGV[2])
return 0
"""

# A member is no longer in the room on a server; 1 if it is in it on no server now.
# KEYS: members. ARGV: name, node.
_DROP_MEMBER = """
local now = redis.call('HGET', KEYS[1], ARGV[1])
if not now then return 0 end
local rest = {}
local found = false
for node in string.gmatch(now, '[^,]+') do
  if node == ARGV[2] then found = true else rest[#rest + 1] = node end
end
if not found then return 0 end
if #rest == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
redis.call('HSET', KEYS[1], ARGV[1], table.concat(rest, ','))
return 0
"""


def _holder(record: dict[str, str]) -> Holder:
    return Holder(record["identity"], record["name"], record.get("away"), record.get("address"))


class Directory:
    """Names and memberships in one Redis, for the server `node`.

    Every method may raise redis.RedisError: the caller decides what that means to a user.
    """

    def __init__(self, client: redis.Redis, node: str) -> None:
        self._redis = client
        self.node = node
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._holder = client.register_script(_HOLDER)
        self._away = client.register_script(_AWAY)
        self._members = client.register_script(_MEMBERS)
        self._drop_member = client.register_script(_DROP_MEMBER)
        self._enter = client.register_script(_ENTER)

    # --- names -----------------------------------------------------------------------

    def claim(self, names: Collection[str], holder: Holder) -> tuple[Holder | None, list[str]]:
        """Take a name (its keys `names`) for `holder` here: (None, the servers to tell that it
        moved) when taken, else (who holds it, [])."""
        identity = holder.identity
        record = json.dumps({"node": self.node, **dataclasses.asdict(holder)})
        args = [self.node, identity, record, *sorted(names)]
        reply = cast(list[int | bytes], self._claim(keys=[keys.NAMES, keys.NODES], args=args))
        if reply[0] == 0:
            return _holder(json.loads(cast(bytes, reply[1]))), []
        return None, sorted({cast(bytes, node).decode() for node in reply[1:]})

    def release(self, names: Collection[str], identity: str) -> None:
        self._release(keys=[keys.NAMES], args=[self.node, identity, *names])

    def holder(self, name: str) -> Holder | None:
        """Who holds the name key on a live server, if anybody."""
        held = self._holder(keys=[keys.NAMES, keys.NODES], args=[name])
        if not held:
            return None
        return _holder(json.loads(cast(bytes, held)))

    def set_away(self, names: Collection[str], identity: str, why: str | None) -> None:
        self._away(keys=[keys.NAMES], args=[self.node, identity, why or "", *sorted(names)])

    def away(self, names: Collection[str]) -> dict[str, str]:
        """Why the holders of these name keys are away: name -> why, for those who said."""
        if not names:
            return {}
        found: dict[str, str] = {}
        for held in cast(list[bytes | None], self._redis.hmget(keys.NAMES, sorted(names))):
            record = json.loads(held) if held else None
            if record is not None and record.get("away"):
                found[record["name"]] = record["away"]
        return found

    # --- rooms' members --------------------------------------------------------------------

    def enter(self, room: str, name: str) -> bool:
        """`name` is in `room` on this server too; whether it is new in the room (on no server
        before)."""
        self._redis.sadd(keys.node_rooms(self.node), room)
        return bool(self._enter(keys=[keys.members(room)], args=[name, self.node]))

    def leave(self, room: str, name: str) -> bool:
        """`name` left `room` on this server; whether it is gone from the room (on no server now)."""
        return bool(self._drop_member(keys=[keys.members(room)], args=[name, self.node]))

    def members(self, room: str) -> list[str]:
        """The room's members on every live server."""
        names = cast(list[bytes], self._members(keys=[keys.members(room), keys.NODES]))
        return [name.decode() for name in names]

    # --- a server gone -----------------------------------------------------------------------

    def forget(self, node: str) -> list[tuple[str, str]]:
        """What the dead server `node` held is dropped: the members it had, as (room key,
        member name), each no longer in the room; its names are free."""
        gone: list[tuple[str, str]] = []
        for room_bytes in cast(set[bytes], self._redis.smembers(keys.node_rooms(node))):
            room = room_bytes.decode()
            for member, where in cast(dict[bytes, bytes], self._redis.hgetall(keys.members(room))).items():
                if node in where.decode().split(",") and self._drop_member(
                    keys=[keys.members(room)], args=[member, node]
                ):
                    gone.append((room, member.decode()))
        self._redis.delete(keys.node_rooms(node))
        for key, held in cast(dict[bytes, bytes], self._redis.hgetall(keys.NAMES)).items():
            record = json.loads(held)
            if record["node"] == node:
                self._release(keys=[keys.NAMES], args=[node, record["identity"], key])
        return gone

    def leave_all(self) -> None:
        """This server stops: what it recorded of its members goes (its lease ends too)."""
        self._redis.delete(keys.node_rooms(self.node))
