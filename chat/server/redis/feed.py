"""How a room's lines reach its members on this server when its log is in Redis: through the
reader, which delivers the room's stream in stream order, this server's own lines included
(never first), so that every member on every server sees one order.

A RedisFeed is one room's RoomFeed (chat.server.room): what a join, a leave or a rename does
in Redis (members, notices), following the room's stream while it has members here, and the
room's topic, kept in Redis only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

import redis

from chat.server.lines import Line
from chat.server.redis import keys
from chat.server.redis.commands import Post, RulesChanged
from chat.server.redis.directory import Directory
from chat.server.redis.log import NOT_STORED, Logs, refused_if_away
from chat.server.redis.reader import Followed, Reader, deliver_lines
from chat.server.redis.records import SharedRoomRecords
from chat.server.room import Delivery
from chat.server.store import RoomRecord, StoreError, kept
from chat.wire.protocol import Reset
from chat.wire.text import name_key

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Hashable)


class RedisFeed(Generic[P]):
    """A room's lines reach its members on this server through the shared reader (see RoomFeed)."""

    def __init__(
        self,
        record: RoomRecord,
        delivery: Delivery[P],
        logs: Logs,
        reader: Reader,
        directory: Directory,
        rooms: SharedRoomRecords,
        post: Post,
    ) -> None:
        self._key = record.key
        self._room = record.name
        self._stream = keys.log(record.key)
        self._delivery = delivery
        self._logs = logs
        self._reader = reader
        self._directory = directory
        self._rooms = rooms
        self._post = post

    def enter(self, peer: P, name: str, joined: Line | None) -> int:
        with refused_if_away(NOT_STORED, self._room):
            new = self._directory.enter(self._key, name)
            if joined is not None and new:  # not when another device of the account is in it elsewhere
                at = self._logs.notice(self._key, joined.json)
            else:  # another device of the account is here: nobody is told
                at = self._reader.newest(self._stream)
            followed = self._follow(at)
        self._reader.settle(followed, at)
        with followed.lock:  # the reader delivers under this lock: nothing slips between
            self._delivery.subscribe(peer, self._key, held=True)
            return followed.position[0]

    def publish(self, lines: Sequence[Line]) -> None:
        """Nothing to do: the lines are in the stream, and the reader delivers them in its order."""

    def rename(self, old: str, new: str, line: Line) -> None:
        try:
            self._directory.leave(self._key, old)
            self._directory.enter(self._key, new)
            self._logs.notice(self._key, line.json)
        except redis.RedisError as exc:  # a notice is not a message: nobody is told it was kept
            log.warning("a rename in %s was not told: %s", self._room, exc)

    def notice(self, line: Line) -> None:
        try:
            self._logs.notice(self._key, line.json)
        except redis.RedisError as exc:  # a notice is not a message: nobody is told it was kept
            log.warning("a notice in %s was not told: %s", self._room, exc)

    def leave(self, peer: P, name: str, left: Line | None, sees_it: bool) -> None:
        if left is None:  # another device of the account stays in the room
            self._delivery.unsubscribe(peer, self._key)
            return
        if not sees_it:
            self._delivery.unsubscribe(peer, self._key)
        at: tuple[int, int] | None = None
        try:
            gone = self._directory.leave(self._key, name)
            if not gone and not sees_it:  # another device of the account stays in it elsewhere
                return
            at = self._logs.notice(self._key, left.json)
            followed = self._follow(at) if sees_it else None
        except redis.RedisError as exc:
            log.warning("the leave in %s was not told: %s", self._room, exc)
            followed = None
        if sees_it:
            if followed is not None and at is not None:
                self._reader.settle(followed, at)
            self._delivery.unsubscribe(peer, self._key)

    def empty(self) -> None:
        self._reader.unfollow(self._stream)

    def rules_changed(self, removed: str | None = None, reason: str = "", upto: int = 0) -> None:
        try:
            self._post.rules_changed(RulesChanged(self._key, removed, reason, upto))
        except redis.RedisError as exc:
            log.warning("could not tell the other servers that the rules of %s changed: %s", self._room, exc)

    def present(self, names: list[str]) -> None:
        try:
            for name in names:
                self._directory.enter(self._key, name)
        except redis.RedisError as exc:
            log.warning("could not record the members of %s again: %s", self._room, exc)

    def users(self, here: list[str]) -> list[str]:
        try:
            return sorted(self._directory.members(self._key), key=str.casefold)
        except redis.RedisError as exc:
            log.warning("could not list the members of %s (showing this server's): %s", self._room, exc)
            return here

    def away(self, names: list[str], here: dict[str, str]) -> dict[str, str]:
        try:
            return {**self._directory.away({name_key(name) for name in names}), **here}
        except redis.RedisError as exc:
            log.warning("could not read who is away in %s (showing this server's): %s", self._room, exc)
            return here

    def topic(self, kept_here: str) -> str:
        try:
            topic = self._rooms.topic(self._key)
        except StoreError as exc:
            log.warning("could not read the topic of %s: %s", self._room, exc)
            return kept_here
        return kept_here if topic is None else topic

    def keep_topic(self, topic: str) -> None:
        kept(self._rooms.keep_topic, self._key, topic, failure="the server could not keep the topic", room=self._room)

    # --- inside --------------------------------------------------------------------------

    def _follow(self, after: tuple[int, int]) -> Followed:
        """Deliver the room's stream on this server from after `after` on (if not already):
        RedisError if Redis is away."""
        followed = self._reader.following(self._stream)
        if followed is not None:
            return followed
        return self._reader.follow(
            Followed(
                self._key,
                self._stream.encode(),
                after,
                functools.partial(deliver_lines, self._delivery, self._key, self._logs.echoes.claim),
                functools.partial(self._logs.epoch, self._key),
                self._lost,
                self._logs.epoch(self._key),
            )
        )

    def _lost(self, epoch: bytes | None) -> None:
        """Redis lost the room's stream: its members here forget the old ids before the new come."""
        log.warning("Redis lost the history of %s: its numbering starts again", self._key)
        detail = f"the history of {self._room} was lost; its ids start again"
        reset = Reset(room=self._room, epoch=epoch.decode() if epoch else None, detail=detail)
        self._delivery.publish(self._key, Line.of(reset))
