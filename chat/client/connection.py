"""The client's connection to a chat server: join, send, receive, reconnect.

ChatClient runs on asyncio and yields a stream of events: the server's
protocol messages plus a few of its own (connection lost, reconnected). It
answers pings, rejoins under the same name after a drop, and never imports
prompt_toolkit: the UI is a separate layer on top of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import BaseModel

from chat.errors import ChatError, ConnectionClosed, JoinRefused, ProtocolError
from chat.wire.codec import decode_server, encode
from chat.wire.protocol import (
    DEFAULT_MAX_LINE,
    Action,
    ChatMessage,
    ErrorReply,
    HistoryRequest,
    Join,
    Joined,
    Leave,
    Left,
    Pong,
    PrivateMessage,
    Renamed,
    ServerMessage,
    ServerPing,
    Shutdown,
    Users,
    Welcome,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLost:
    """The connection broke; the client is trying again in `retry_in` seconds."""

    detail: str
    retry_in: float


@dataclass(frozen=True)
class Reconnected:
    """The client is back in the room after a drop; its Welcome comes next."""

    attempts: int


ClientEvent = ServerMessage | ConnectionLost | Reconnected

#: How many recent ids the client remembers to drop duplicates.
_REMEMBERED_IDS = 10_000


class ChatClient:
    """One person's connection to the room, kept alive across server restarts.

    It remembers the highest message id it has received (`last_id`) and
    resumes from it on every reconnect, so nothing said while it was away is
    lost; a message it already has is never passed on twice.
    """

    def __init__(
        self,
        host: str,
        port: int,
        name: str,
        *,
        reconnect: bool = True,
        first_retry: float = 0.25,
        max_retry: float = 8.0,
        since: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self.reconnect = reconnect
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.users: list[str] = []
        #: The highest message id received; the join after a drop resumes from it.
        self.last_id = since or 0
        self._resume = since is not None
        self._oldest_id: int | None = None
        self._seen_ids: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._events: asyncio.Queue[ClientEvent | None] = asyncio.Queue()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._closing = False

    async def connect(self) -> Welcome:
        """Connect and join; raises OSError if unreachable, JoinRefused if refused."""
        reader, welcome = await self._open()
        await self._events.put(welcome)
        self._reader_task = asyncio.create_task(self._keep_reading(reader), name="chat-client-reader")
        return welcome

    async def events(self) -> AsyncIterator[ClientEvent]:
        """Every event until the client is closed (or the server goes for good)."""
        while (event := await self._events.get()) is not None:
            yield event

    async def send(self, message: BaseModel) -> None:
        """Send one protocol message; ConnectionClosed if there is no connection now."""
        writer = self._writer
        if writer is None:
            raise ConnectionClosed("not connected to the server right now")
        try:
            writer.write(encode(message))
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(str(exc) or "connection lost") from exc

    async def page_back(self, limit: int) -> None:
        """Ask for `limit` messages older than the oldest one received."""
        await self.send(HistoryRequest(before=self._oldest_id, limit=limit))

    async def close(self) -> None:
        """Leave cleanly (if connected) and stop reconnecting."""
        self._closing = True
        if self._writer is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.send(Leave())
        task = self._reader_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._drop_writer()
        self._events.put_nowait(None)

    # --- inside ---------------------------------------------------------------------

    async def _open(self) -> tuple[asyncio.StreamReader, Welcome]:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=DEFAULT_MAX_LINE * 4)
        try:
            since = self.last_id if self._resume else None
            writer.write(encode(Join(name=self.name, since=since)))
            await writer.drain()
            while True:
                message = await self._read(reader)
                if isinstance(message, Welcome):
                    break
                if isinstance(message, ErrorReply):
                    raise JoinRefused(message.code, message.detail)
                if isinstance(message, Shutdown):
                    raise ConnectionClosed(message.detail)
        except BaseException:
            writer.close()
            raise
        self._writer = writer
        self.name = message.name
        self.users = list(message.users)
        self._resume = True
        if message.last_id < self.last_id:  # the server started a new room: its ids begin again
            self.last_id = 0
            self._seen_ids.clear()
            self._seen_order.clear()
        return reader, message

    async def _read(self, reader: asyncio.StreamReader) -> ServerMessage:
        try:
            line = await reader.readline()
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(str(exc) or "connection lost") from exc
        except ValueError as exc:  # a line over the reader's limit
            raise ConnectionClosed("the server sent an overlong line") from exc
        if not line.endswith(b"\n"):
            raise ConnectionClosed("the server closed the connection")
        return decode_server(line)

    async def _keep_reading(self, reader: asyncio.StreamReader) -> None:
        attempts = 0
        while True:
            detail = await self._pump(reader)
            self._drop_writer()
            if self._closing:
                return
            if not self.reconnect:
                await self._events.put(ConnectionLost(detail, retry_in=0))
                await self._events.put(None)
                return
            delay = self.first_retry
            await self._events.put(ConnectionLost(detail, retry_in=delay))
            while True:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                attempts += 1
                try:
                    reader, welcome = await self._open()
                except (OSError, ChatError) as exc:
                    delay = min(delay * 2, self.max_retry)
                    reason = str(exc) or type(exc).__name__
                    if reason != detail:  # say why, once per new reason (a taken name, say)
                        detail = reason
                        await self._events.put(ConnectionLost(detail, retry_in=delay))
                    continue
                break
            await self._events.put(Reconnected(attempts))
            await self._events.put(welcome)
            attempts = 0

    async def _pump(self, reader: asyncio.StreamReader) -> str:
        """Pass the server's lines on until the connection ends; say why it ended."""
        while True:
            try:
                message = await self._read(reader)
            except ConnectionClosed as exc:
                return str(exc)
            except ProtocolError as exc:
                log.warning("ignoring a line the client does not understand: %s", exc)
                continue
            if isinstance(message, ServerPing):
                with contextlib.suppress(ConnectionClosed):
                    await self.send(Pong())
                continue
            if isinstance(message, ChatMessage | Action | PrivateMessage) and not self._first_sight(message.id):
                continue
            self._track_users(message)
            await self._events.put(message)
            if isinstance(message, Shutdown):
                return message.detail

    def _first_sight(self, message_id: int) -> bool:
        """Note a numbered message; False if it was received before."""
        if message_id in self._seen_ids:
            return False
        self._seen_ids.add(message_id)
        self._seen_order.append(message_id)
        if len(self._seen_order) > _REMEMBERED_IDS:
            self._seen_ids.discard(self._seen_order.popleft())
        self.last_id = max(self.last_id, message_id)
        self._oldest_id = message_id if self._oldest_id is None else min(self._oldest_id, message_id)
        return True

    def _track_users(self, message: ServerMessage) -> None:
        match message:
            case Joined(name=name):
                self.users = sorted({*self.users, name}, key=str.casefold)
            case Left(name=name):
                self.users = [user for user in self.users if user != name]
            case Renamed(old=old, new=new):
                self.users = sorted({new, *(user for user in self.users if user != old)}, key=str.casefold)
                if old == self.name:
                    self.name = new
            case Users(users=users):
                self.users = list(users)

    def _drop_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
