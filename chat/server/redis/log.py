"""Rooms' logs in Redis: each room's lines are a Redis Stream, numbered by Redis, so that every
server appends to one sequence; the private messages are one more such log.

No server numbers a message itself: one atomic script takes a log's next id and appends the
line under it, so every member on every server sees one order. Notices (joined, left,
renamed) go into the same stream between the messages, under `<last id>-<n>`, so they stay in
place. Logs owns the scripts on the command connection; RedisLog is one log as a room (or the
hub, for private lines) sees it (chat.server.log.RoomLog).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import redis

from chat.errors import StorageFailed
from chat.server.lines import Line, Repeat
from chat.server.log import Span, Tag
from chat.server.redis import keys
from chat.server.redis.reader import Entries, position

log = logging.getLogger(__name__)

#: The id a line is built with before Redis numbers it; the script puts the real one in its place.
#: It appears in an encoded line only as the `id` field: inside a string a quote is escaped.
PLACEHOLDER_ID = 9_007_199_254_740_881
#: Seconds Redis keeps a line under its sender's (identity, cid): the protocol promises 10
#: minutes, and a client resends within that (chat.client.connection.RESEND_WITHIN). Less than
#: a history file keeps them (an hour): in Redis each costs its line's bytes in memory.
CID_KEEP = 900
#: Seconds after it was sent that Redis still stores an append: half the command timeout (5 s),
#: so that an append whose answer the server gave up on is never stored later.
APPEND_FENCE = 2.5
_PLACEHOLDER = f'"id":{PLACEHOLDER_ID}'.encode()
# Number each template's line, in order, and append it under its id: atomically, so that
# ids are gap-free and ordered however many servers append. KEYS: meta, log, then one key per
# line: its sender's (identity, cid) key, or '' for a line sent without a cid.
# ARGV: max length, epoch if new, sender, recipient (both '' but in the private log),
# deadline (ms, Redis' clock), seconds a cid is kept, then per line: template, echo token ('' for
# none: the entry's `e` field, by which the sender's server gives the sender its echo).
# A line whose cid key exists is not kept again: the line kept then is answered in its place
# (the check and the write in one script, so two servers sent one cid at once keep it once).
# The deadline fences a late append: one that Redis runs after its server stopped waiting for
# it (a stall past the command timeout, answered storage_failed) stores nothing, so that a
# refusal is final. Redis 7 replicates a script's effects, so TIME may come before writes.
_APPEND = """
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[5]) then
  return redis.error_reply('FENCED the append came after its server had stopped waiting for it')
end
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[2])
local out = {}
for i = 1, (#ARGV - 6) / 2 do
  local template, token, tag = ARGV[5 + 2 * i], ARGV[6 + 2 * i], KEYS[2 + i]
  local before = false
  if tag ~= '' then
    before = redis.call('GET', tag)
  end
  if before then
    out[#out + 1] = before
  else
    local id = redis.call('HINCRBY', KEYS[1], 'last', 1)
    local at, stop = string.find(template, '"id":PLACEHOLDER', 1, true)
    local line = string.sub(template, 1, at - 1) .. '"id":' .. id .. string.sub(template, stop + 1)
    local fields = {'l', line}
    if ARGV[3] ~= '' then
      fields[3], fields[4], fields[5], fields[6] = 's', ARGV[3], 'r', ARGV[4]
    end
    if token ~= '' then
      fields[#fields + 1], fields[#fields + 2] = 'e', token
    end
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id .. '-0', unpack(fields))
    if tag ~= '' then
      redis.call('SET', tag, line, 'EX', ARGV[6])
    end
    out[#out + 1] = id
  end
end
return out
""".replace("PLACEHOLDER", str(PLACEHOLDER_ID))

# An unnumbered line after the room's last numbered one. KEYS: meta, log.
# ARGV: max length, line, epoch if new.
_NOTICE = """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[3])
local last = redis.call('HGET', KEYS[1], 'last') or '0'
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], last .. '-*', 'l', ARGV[2])
"""




class Echoes:
    """The echoes this server owes its senders: a line a connection said gets a token in its
    stream entry, and this server's reader, delivering the entry, marks the line as that
    connection's own, with its `cid` if it was sent with one (Line.echoed: an IRC client without
    echo-message leaves its own lines out by it, and only those); other servers do not know the
    token and deliver the line as it is. Thread-safe: appending threads expect, the reader claims."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._count = itertools.count(1)
        self._waiting: dict[str, tuple[object, str | None]] = {}
        self._lock = threading.Lock()

    def expect(self, to: object, cid: str | None) -> str:
        """A new token for the echo (with `cid`, if the line was sent with one) owed to the peer `to`."""
        token = f"{self._prefix}-{next(self._count)}"
        with self._lock:
            self._waiting[token] = (to, cid)
        return token

    def forget(self, token: str) -> None:
        """The line with `token` was not appended: no echo is owed."""
        if token:
            with self._lock:
                self._waiting.pop(token, None)

    def claim(self, line: Line, fields: dict[bytes, bytes]) -> Line:
        """`line`, read from a stream entry with `fields`: with its echo if this server owes it."""
        token = fields.get(b"e")
        if token is None:
            return line
        with self._lock:
            owed = self._waiting.pop(token.decode(), None)
        return line if owed is None else line.echoed(owed[1], owed[0])


class Logs:
    """Every log in one Redis, on the command connection; each log keeps about `retention`
    entries. Every method may raise redis.RedisError."""

    def __init__(self, client: redis.Redis, retention: int, fence: float = APPEND_FENCE) -> None:
        """`fence`: seconds after it is sent that an append is still stored (see _APPEND); less
        than the command timeout, after which the server answers storage_failed."""
        self._redis = client
        self._retention = retention
        self._fence = fence
        self.echoes = Echoes()
        self._append = client.register_script(_APPEND)
        self._notice = client.register_script(_NOTICE)
        #: Redis' clock minus ours (seconds), and when (monotonic) it was measured.
        self._offset = 0.0
        self._measured: float | None = None

    def append(
        self,
        key: str,
        templates: Sequence[bytes],
        parties: tuple[str, str] = ("", ""),
        tags: Sequence[tuple[Tag | None, str]] = (),
    ) -> list[int | bytes]:
        """Number the lines (built with PLACEHOLDER_ID) and append them; per line its id, or, for
        a line whose `(identity, cid)` tag was kept before, the line kept then. `tags`: per line
        its tag (or None) and its echo token (or ''). A redis.ResponseError (FENCED) if Redis ran
        it too late to keep it."""
        deadline = int((time.time() + self._clock_offset() + self._fence) * 1000)
        tags = tags or [(None, "")] * len(templates)
        args: list[bytes | str | int] = [self._retention, secrets.token_hex(8), *parties, deadline, CID_KEEP]
        for template, (_, token) in zip(templates, tags, strict=True):
            args += [template, token]
        cid_keys = ["" if tag is None else keys.cid(*tag) for tag, _ in tags]
        found = self._append(keys=[keys.meta(key), keys.log(key), *cid_keys], args=args)
        return [each if isinstance(each, bytes) else int(each) for each in cast(list[int | bytes], found)]

    def tagged(self, identity: str, cid: str) -> bytes | None:
        """The line `identity` kept with `cid` lately (in any log), or None."""
        return cast(bytes | None, self._redis.get(keys.cid(identity, cid)))

    def tagged_all(self, tags: Sequence[Tag]) -> dict[Tag, bytes]:
        """tagged() for many tags, in one round trip: the lines found, by tag."""
        if not tags:
            return {}
        lines = cast(list[bytes | None], self._redis.mget([keys.cid(*tag) for tag in tags]))
        return {tag: line for tag, line in zip(tags, lines, strict=True) if line is not None}

    def _clock_offset(self) -> float:
        """Redis' clock minus ours, measured again each minute (clocks drift, slowly).

        Never more than it is: Redis read its clock somewhere between our `before` and `after`,
        and taking `after` errs, by the round trip at most, towards a deadline that comes early
        (an append fenced that could have been kept: refused, and safe). The midpoint could err
        the other way on a loaded machine, by half a slow round trip, and let an append the
        server had stopped waiting for be kept after all."""
        if self._measured is None or time.monotonic() - self._measured > 60:
            seconds, micro = self._redis.time()
            after = time.time()
            self._offset = seconds + micro / 1e6 - after
            self._measured = time.monotonic()
        return self._offset

    def notice(self, key: str, line: bytes) -> tuple[int, int]:
        """Append an unnumbered line; where it went in the stream."""
        args: list[bytes | str | int] = [self._retention, line, secrets.token_hex(8)]
        return position(cast(bytes, self._notice(keys=[keys.meta(key), keys.log(key)], args=args)))

    def epoch(self, key: str) -> bytes | None:
        """The log's epoch: made with its first line, so a Redis that lost its data has a new one."""
        return cast(bytes | None, self._redis.hget(keys.meta(key), "epoch"))

    def last_id(self, key: str) -> int:
        return int(cast(bytes | None, self._redis.hget(keys.meta(key), "last")) or 0)

    def entries(self, key: str, start: str, end: str, count: int) -> Entries:
        """The log's entries from `start` to `end`, oldest first."""
        return cast(Entries, self._redis.xrange(keys.log(key), start, end, count=count))

    def entries_back(self, key: str, end: str, start: str, count: int) -> Entries:
        """The log's entries from `end` back to `start`, newest first."""
        return cast(Entries, self._redis.xrevrange(keys.log(key), end, start, count=count))


def _sees(viewer: str, fields: dict[bytes, bytes]) -> bool:
    """A private line is seen by its two parties only."""
    party = viewer.encode()
    return fields.get(b"s") == party or fields.get(b"r") == party


_NOT_READ = "the server could not read its history; try again"
NOT_STORED = "the server could not store your message, so nobody got it"


@contextmanager
def refused_if_away(detail: str, room: str | None = None) -> Iterator[None]:
    """Redis failing is the server's storage failing: the request is refused with
    storage_failed and `detail` (nothing was done that anybody was told of)."""
    try:
        yield
    except redis.RedisError as exc:
        log.warning("Redis failed (%s): %s", detail, exc)
        raise StorageFailed("storage_failed", detail, room) from exc


class RedisLog:
    """A room's log in its Redis Stream: numbered there, read from there (see RoomLog)."""

    def __init__(self, logs: Logs, key: str, room: str | None) -> None:
        """The log `key` of `logs`; `room` (None for private messages) is named in its errors."""
        self._logs = logs
        self._key = key
        self._room = room

    @property
    def epoch(self) -> str | None:
        with refused_if_away(_NOT_READ, self._room):
            epoch = self._logs.epoch(self._key)
        return epoch.decode() if epoch else None

    @property
    def last_id(self) -> int:
        with refused_if_away(_NOT_READ, self._room):
            return self._logs.last_id(self._key)

    def append(
        self,
        build: Callable[[int], Line],
        sender: str | None = None,
        recipient: str | None = None,
        cid: Tag | None = None,
    ) -> Line:
        return self._append_all([build], (sender or "", recipient or ""), [cid])[0]

    def append_all(self, builds: Sequence[Callable[[int], Line]], cids: Sequence[Tag | None] = ()) -> list[Line]:
        return self._append_all(builds, ("", ""), cids)

    def tagged(self, identity: str, cid: str) -> Line | None:
        with refused_if_away(NOT_STORED, self._room):
            line = self._logs.tagged(identity, cid)
        return None if line is None else Line(line)

    def tagged_all(self, tags: Sequence[Tag]) -> dict[Tag, Line]:
        with refused_if_away(NOT_STORED, self._room):
            found = self._logs.tagged_all(tags)
        return {tag: Line(line) for tag, line in found.items()}

    def _append_all(
        self, builds: Sequence[Callable[[int], Line]], parties: tuple[str, str], cids: Sequence[Tag | None]
    ) -> list[Line]:
        """Keep the lines; a line built with an echo (Line.echoed: every line a connection said)
        gets a token in its stream entry, by which this server's reader gives the sender its echo,
        or tells its connection the line is its own (see Echoes)."""
        if not builds:
            return []
        built = [build(PLACEHOLDER_ID) for build in builds]
        templates = [line.json for line in built]
        tags: list[tuple[Tag | None, str]] = []
        if any(cids) or any(line.echo_to is not None for line in built):
            echoes = self._logs.echoes
            for line, tag in zip(built, cids or [None] * len(built), strict=True):
                cid = tag[1] if tag is not None else None
                token = echoes.expect(line.echo_to, cid) if line.echo_to is not None else ""
                tags.append((tag, token))
        try:
            with refused_if_away(NOT_STORED, self._room):
                found = self._logs.append(self._key, templates, parties, tags)
        except StorageFailed:
            for _, token in tags:
                self._logs.echoes.forget(token)
            raise
        lines: list[Line] = []
        for template, (_, token), each in zip(templates, tags or [(None, "")] * len(built), found, strict=True):
            if isinstance(each, bytes):
                self._logs.echoes.forget(token)  # nothing new in the stream: nothing to echo
                lines.append(Repeat(each))
            else:
                lines.append(Line(template.replace(_PLACEHOLDER, f'"id":{each}'.encode(), 1)))
        return lines

    def recent(self, upto: int, limit: int, viewer: str | None = None) -> Span:
        if viewer is not None:
            return self._missed_by(viewer, 0, upto, limit)
        return self._newest(upto, limit, counting_older=False)

    def missed(self, since: int, upto: int, limit: int, viewer: str | None = None) -> Span:
        if since >= upto:
            return Span.empty()
        if viewer is not None:
            return self._missed_by(viewer, since, upto, limit)
        oldest = self._oldest()
        first_kept = oldest if oldest is not None else upto + 1
        gap = (since + 1, first_kept - 1) if since + 1 < first_kept else None
        first = max(since + 1, first_kept, upto - limit + 1)
        if first > upto:  # a limit of 0: every missed line is left out, and counted
            return Span(1, 0, 0, max(0, first - max(since + 1, first_kept)), gap)
        return Span(first, upto, upto - first + 1, first - max(since + 1, first_kept), gap)

    def before(self, edge: int, limit: int, viewer: str | None = None) -> Span:
        upto = min(edge - 1, self.last_id)
        if viewer is not None:
            return self._missed_by(viewer, 0, upto, limit)
        return self._newest(upto, limit, counting_older=True)

    def _newest(self, upto: int, limit: int, counting_older: bool) -> Span:
        """The newest `limit` kept lines with id <= upto (ids are dense in a room's stream),
        with how many older ones are still kept if `counting_older`."""
        oldest = self._oldest()
        if oldest is None or upto < oldest or limit < 1:
            return Span.empty()
        first = max(oldest, upto - limit + 1)
        return Span(first, upto, upto - first + 1, first - oldest if counting_older else 0)

    def lines(self, span: Span, chunk: int, viewer: str | None = None) -> Iterator[list[Line]]:
        start = f"{span.first}-0"
        pending: list[Line] = []  # numbered lines read, not yet given: never more than `chunk` at once
        while True:
            with refused_if_away(_NOT_READ, self._room):
                entries = self._logs.entries(self._key, start, f"{span.last}-0", chunk * 2)
            if not entries:
                break
            pending += [
                Line(fields[b"l"]) for entry, fields in entries
                if position(entry)[1] == 0 and (viewer is None or _sees(viewer, fields))
            ]
            while len(pending) >= chunk:
                yield pending[:chunk]
                pending = pending[chunk:]
            last = position(entries[-1][0])
            start = f"{last[0]}-{last[1] + 1}"
        if pending:
            yield pending

    def _missed_by(self, viewer: str, since: int, upto: int, limit: int) -> Span:
        """The newest `limit` of the viewer's own lines after `since` (read newest first, so a
        resume costs what it sends and what lies between)."""
        found: list[int] = []
        end = f"{upto}-0"
        with refused_if_away(_NOT_READ, self._room):
            while len(found) < limit:
                entries = self._logs.entries_back(self._key, end, f"{since + 1}-0", 256)
                seen = [position(entry)[0] for entry, fields in entries if _sees(viewer, fields)]
                found += seen[: limit - len(found)]
                if len(entries) < 256:
                    break
                number, place = position(entries[-1][0])
                end = f"({number}-{place}"
        if not found:
            return Span.empty()
        return Span(found[-1], found[0], len(found))

    def _oldest(self) -> int | None:
        """The oldest numbered id the stream still keeps."""
        start = "-"
        with refused_if_away(_NOT_READ, self._room):
            while True:
                entries = self._logs.entries(self._key, start, "+", 64)
                if not entries:
                    return None
                for entry, _ in entries:
                    number, place = position(entry)
                    if place == 0:
                        return number
                number, place = position(entries[-1][0])
                start = f"{number}-{place + 1}"


