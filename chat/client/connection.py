"""The client's connection to a chat server: join rooms, send, receive, reconnect.

ChatClient runs on asyncio and yields a stream of events: the server's
protocol messages plus a few of its own (connection lost, reconnected). It
keeps a cursor per room, answers pings, rejoins every room from its cursor
under the same name after a drop, and never imports prompt_toolkit: the UI
is a separate layer on top of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import secrets
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

from chat.errors import ChatError, ConnectionClosed, JoinRefused, ProtocolError
from chat.wire.codec import decode_server, encode
from chat.wire.protocol import (
    DEFAULT_MAX_LINE,
    LOBBY,
    Action,
    ChatMessage,
    ErrorReply,
    HistoryRequest,
    Join,
    Joined,
    Leave,
    Left,
    Moderation,
    Part,
    Ping,
    Pong,
    PrivateMessage,
    Renamed,
    Reset,
    Search,
    SearchResults,
    SendAction,
    SendMessage,
    SendPrivate,
    ServerMessage,
    ServerPing,
    ServerPong,
    SessionToken,
    Shutdown,
    Topic,
    Users,
    Welcome,
    room_key,
)

log = logging.getLogger(__name__)

#: Seconds a line without its echo is sent again after a reconnect: the server remembers a
#: line's cid for at least 10 minutes, and a resend after that could be kept twice.
RESEND_WITHIN = 600.0
#: The lines a client says: each carries a cid, and is sent again until its echo comes.
Said = SendMessage | SendAction | SendPrivate


def failure_in_words(exc: OSError) -> str:
    """Why a connection could not be made or was lost, in words rather than errno text."""
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return "nothing is listening there"
    if isinstance(exc, socket.gaierror):
        return "that host name is unknown"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "there is no route to that host"
    if isinstance(exc, ConnectionResetError | BrokenPipeError) or exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "the server cut the connection"
    return str(exc.strerror or exc)



@dataclass(frozen=True)
class ConnectionLost:
    """The connection broke; the client is trying again in `retry_in` seconds."""

    detail: str
    retry_in: float


@dataclass(frozen=True)
class Reconnected:
    """The client is back in the room after a drop; its Welcome comes next."""

    attempts: int


@dataclass(frozen=True)
class Resumed:
    """A room was joined again from where this client had been: `missed` lines follow (0: none)."""

    room: str
    missed: int


@dataclass(frozen=True)
class SignedInElsewhere:
    """The same identity connected again elsewhere and the server closed this connection
    (`session_replaced`). Not a reason to reconnect: two clients of one identity would take the
    name from each other for ever. The client waits until `reconnect_now()` takes it back."""

    detail: str


@dataclass(frozen=True)
class PutOut:
    """This client was kicked or banned from `room` just now (not a kick replayed with the
    history of a room joined again): the room is no longer one of its rooms."""

    room: str
    action: str
    by: str
    reason: str = ""


@dataclass(frozen=True)
class SearchFound:
    """The server's answer to a search (`results`) and its matching lines, newest first; each
    carries its room (a private line its two parties). Not lines of any buffer: a list to read."""

    results: SearchResults
    lines: list[ChatMessage | Action | PrivateMessage]


ClientEvent = ServerMessage | ConnectionLost | Reconnected | Resumed | SignedInElsewhere | PutOut | SearchFound

#: Seconds between the client's pings, which measure the lag and find a connection that died silently.
KEEPALIVE = 15.0
#: Pings in a row left unanswered before the connection is taken for dead.
DEAD_AFTER_PINGS = 3

#: How many recent ids the client remembers per room, to drop duplicates.
_REMEMBERED_IDS = 10_000


class _Seen:
    """The ids of one sequence (a room's, or the private one) received lately."""

    def __init__(self, last_id: int = 0) -> None:
        #: The highest id received; a resume starts after it.
        self.last_id = last_id
        self.oldest_id: int | None = None
        self._ids: set[int] = set()
        self._order: deque[int] = deque()

    def first_sight(self, message_id: int) -> bool:
        """Note an id; False if it was received before."""
        if message_id in self._ids:
            return False
        self._ids.add(message_id)
        self._order.append(message_id)
        if len(self._order) > _REMEMBERED_IDS:
            self._ids.discard(self._order.popleft())
        self.last_id = max(self.last_id, message_id)
        self.oldest_id = message_id if self.oldest_id is None else min(self.oldest_id, message_id)
        return True

    def reset(self) -> None:
        """The server started this sequence over: forget every id."""
        self.last_id, self.oldest_id = 0, None
        self._ids.clear()
        self._order.clear()


@dataclass
class RoomView:
    """What the client knows of one room it is in."""

    name: str
    users: list[str] = field(default_factory=list)
    topic: str = ""
    seen: _Seen = field(default_factory=_Seen)
    #: Whether `seen.last_id` came from the server (or a saved cursor): then a rejoin resumes.
    resume: bool = False
    #: Members with a role here: name -> `owner`, `op`, `voice` or `admin`.
    roles: dict[str, str] = field(default_factory=dict)
    #: The epoch of the room's log (rooms shared through Redis): another one means new ids.
    epoch: str | None = None
    #: The room's last id when this client was last welcomed into it: a line numbered up to it
    #: (a kick replayed with the history) happened before this membership, not to it.
    joined_after: int = 0


class ChatClient:
    """One person's connection to the server, kept alive across server restarts.

    It remembers, per room, the highest id it has received and resumes each
    room from it on every reconnect, so nothing said while it was away is
    lost; a message it already has is never passed on twice.
    """

    def __init__(
        self,
        host: str,
        port: int,
        name: str,
        *,
        rooms: Iterable[str] = (LOBBY,),
        cursors: Mapping[str, int] | None = None,
        private_since: int | None = None,
        reconnect: bool = True,
        first_retry: float = 0.25,
        max_retry: float = 8.0,
        since: int | None = None,
        token: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        keepalive: float = KEEPALIVE,
        also: Sequence[tuple[str, int]] = (),
        conversations: Iterable[str] = (),
    ) -> None:
        """`cursors` maps rooms to the last id seen there (resume from it); `since` is the first room's;
        `token`, a session token from an earlier welcome, proves this is the same person again;
        every `keepalive` seconds a `ping` measures the lag, and a connection that answers none of
        DEAD_AFTER_PINGS in a row is taken for dead and made again; `also` are more servers
        sharing the same rooms (several servers on one Redis), tried in turn when one cannot be
        reached, so that a client of a server that died carries on with another."""
        self.host = host
        self.port = port
        #: Every server this client may use, and which one it tries first.
        self.servers = [(host, port), *also]
        self._server = 0
        self.name = name
        self.reconnect = reconnect
        self.first_retry = first_retry
        self.max_retry = max_retry
        saved = {room_key(room): id for room, id in (cursors or {}).items()}
        #: The rooms this client is in (or will rejoin), by key, in the order it joined them.
        self.rooms: dict[str, RoomView] = {}
        for index, room in enumerate(rooms or (LOBBY,)):
            cursor = since if index == 0 and since is not None else saved.get(room_key(room))
            self.rooms[room_key(room)] = RoomView(room, seen=_Seen(cursor or 0), resume=cursor is not None)
        self.private = _Seen(private_since or 0)
        #: The people this client has private conversations open with, by folded name, in order.
        self.conversations: dict[str, str] = {name.casefold(): name for name in conversations}
        self._renames: dict[str, str] = {}  # old name -> new name, for renames passed on
        self._private_resume = private_since is not None
        #: Private lines up to this id were read in an earlier run: the first connection asks for the
        #: recent ones again (private_since 0) to fill the conversations still open, not as news.
        self.recalled_private = private_since or 0
        self._recall_private = private_since is not None and bool(self.conversations)
        #: Rooms whose join asked to resume and whose welcome has not come yet.
        self._resuming: set[str] = set()
        #: The session token the server gave: every reconnect proves who we are with it.
        self.token = token
        #: TLS settings (certificate checks included) to connect with; None: plaintext.
        self.tls = tls
        self._password = password  # for the first join only; a token does from then on
        self._events: asyncio.Queue[ClientEvent | None] = asyncio.Queue()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._closing = False
        self.keepalive = keepalive
        #: The last round trip of a ping, in seconds (None before the first answer).
        self.lag: float | None = None
        #: Set whenever a ping's answer arrives.
        self.lag_measured = asyncio.Event()
        self._ping_sent: float | None = None
        self._silent: str | None = None  # why the keepalive cut the connection
        #: While the connection is down: when (loop time) the next attempt to make it again starts.
        self.retry_at: float | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        #: Set while the connection was taken over by another of this identity's (session_replaced):
        #: nothing is tried again until the user asks (reconnect_now).
        self.replaced: str | None = None
        self._take_back = asyncio.Event()
        #: The lines sent whose echo has not come, by cid, in the order sent, with when (loop time).
        self._unechoed: dict[str, tuple[float, Said]] = {}
        self._cid_prefix = secrets.token_hex(4)
        self._cids = 0

    @property
    def users(self) -> list[str]:
        """Everybody in any of this client's rooms (for completion)."""
        return sorted({user for view in self.rooms.values() for user in view.users}, key=str.casefold)

    @property
    def last_id(self) -> int:
        """The last id seen in the first room (the lobby for a client that names no room)."""
        return next(iter(self.rooms.values())).seen.last_id if self.rooms else 0

    def cursors(self) -> dict[str, int]:
        """Each room (as spelled) and the last id seen there: what a later run resumes from."""
        return {view.name: view.seen.last_id for view in self.rooms.values() if view.resume}

    async def connect(self) -> Welcome:
        """Connect and join; raises OSError if unreachable, JoinRefused if refused."""
        reader, welcome = await self._open()
        await self._announce(welcome)
        self._reader_task = asyncio.create_task(self._keep_reading(reader), name="chat-client-reader")
        self._keepalive_task = asyncio.create_task(self._keep_alive(), name="chat-client-keepalive")
        return welcome

    def lag_now(self) -> float | None:
        """The lag as it stands: the last round trip, or longer if a ping is waiting longer for its answer."""
        if self._ping_sent is None or not self.connected:
            return self.lag
        return max(self.lag or 0.0, asyncio.get_running_loop().time() - self._ping_sent)

    @property
    def connected(self) -> bool:
        """Whether lines can be sent now (not between a drop and the reconnect)."""
        return self._writer is not None

    async def events(self) -> AsyncIterator[ClientEvent]:
        """Every event until the client is closed (or the server goes for good)."""
        async for batch in self.event_batches(1):
            yield batch[0]

    async def event_batches(self, most: int = 1000) -> AsyncIterator[list[ClientEvent]]:
        """Every event, in lists of those already waiting (at most `most`): a screen draws each list
        at once, so a burst costs one redraw per list instead of one per line."""
        while (event := await self._events.get()) is not None:
            batch = [event]
            while len(batch) < most and not self._events.empty():
                following = self._events.get_nowait()
                if following is None:
                    yield batch
                    return
                batch.append(following)
            yield batch

    async def send(self, message: BaseModel) -> None:
        """Send one protocol message; ConnectionClosed if there is no connection now.

        A line said (message, action, private) gets a cid, and is kept until its echo comes:
        if the connection drops first, it is sent again, with the same cid, after the next
        reconnect, and the server keeps it once whichever copy it got."""
        writer = self._writer
        if writer is None:
            raise ConnectionClosed("not connected to the server right now")
        if isinstance(message, Said) and message.cid is None:
            self._cids += 1
            message = message.model_copy(update={"cid": f"{self._cid_prefix}-{self._cids}"})
            self._unechoed[f"{self._cid_prefix}-{self._cids}"] = (asyncio.get_running_loop().time(), message)
        try:
            writer.write(encode(message))
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(failure_in_words(exc)) from exc

    async def join(self, room: str) -> None:
        """Enter `room` (resuming it if this client was there before); a welcome answers."""
        view = self.rooms.get(room_key(room))
        await self.send(Join(room=room, since=self._since(view) if view else None))

    async def part(self, room: str) -> None:
        """Leave `room`; the `left` line that answers takes it out of `rooms`."""
        await self.send(Part(room=room))

    async def search(self, text: str, room: str | None = None) -> None:
        """Ask the server for the newest lines matching `text` in `room` (None: in every room this
        client is in, and its private lines); a SearchFound answers, or an error line."""
        await self.send(Search(text=text, room=room))

    async def page_back(self, room: str, limit: int) -> None:
        """Ask for `limit` messages of `room` older than the oldest one received there."""
        view = self.rooms.get(room_key(room))
        await self.send(HistoryRequest(room=room, before=view.seen.oldest_id if view else None, limit=limit))

    def reconnect_now(self) -> bool:
        """Take the session back after SignedInElsewhere (the other connection is closed in turn);
        False if the connection was not waiting for that."""
        if self.replaced is None:
            return False
        self._take_back.set()
        return True

    async def close(self) -> None:
        """Leave cleanly (if connected) and stop reconnecting."""
        self._closing = True
        self._take_back.set()
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
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
        reader, writer = await self._reach()
        views = list(self.rooms.values()) or [RoomView(LOBBY)]
        first, *others = views
        try:
            private_since = self.private.last_id if self._private_resume else None
            if self._recall_private:
                private_since, self._recall_private = 0, False
            writer.write(
                encode(
                    Join(
                        name=self.name,
                        room=first.name,
                        since=self._since(first),
                        private_since=private_since,
                        token=self.token,
                        password=self._password,
                    )
                )
            )
            await writer.drain()
            while True:
                message = await self._read(reader)
                if isinstance(message, Welcome):
                    break
                if isinstance(message, ErrorReply):
                    raise JoinRefused(message.code, message.detail)
                if isinstance(message, Shutdown):
                    raise ConnectionClosed(message.detail)
            # The other rooms' welcomes come as events; a refusal there is an error line, not fatal.
            for view in others:
                writer.write(encode(Join(room=view.name, since=self._since(view))))
            # An account's rooms follow it from device to device: the ones it is in elsewhere too.
            asked = {room_key(view.name) for view in views}
            for room in message.rooms or ():
                if room_key(room) not in asked:
                    asked.add(room_key(room))
                    writer.write(encode(Join(room=room)))
            # Then every line said whose echo never came, in order: kept once, shown once.
            now = asyncio.get_running_loop().time()
            for cid, (sent, said) in list(self._unechoed.items()):
                if now - sent > RESEND_WITHIN:
                    del self._unechoed[cid]
                    continue
                writer.write(encode(said))
            await writer.drain()
        except BaseException:
            writer.close()
            raise
        self._writer = writer
        self._ping_sent = None
        self.name = message.name
        self.token = message.token or self.token
        self._password = None  # never kept once a token stands for it
        self._private_resume = True
        self._welcomed(message)
        return reader, message

    async def _reach(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the server used last, or else to the next one that answers."""
        failure: OSError | None = None
        for _ in self.servers:
            host, port = self.servers[self._server]
            try:
                connection = await asyncio.open_connection(
                    host,
                    port,
                    limit=DEFAULT_MAX_LINE * 4,
                    ssl=self.tls,
                    server_hostname=host if self.tls is not None else None,
                    ssl_handshake_timeout=10.0 if self.tls is not None else None,
                )
            except ssl.SSLError:
                raise  # a certificate problem is no reason to try elsewhere: it is the user's to fix
            except OSError as exc:
                failure = exc
                self._server = (self._server + 1) % len(self.servers)
                continue
            self.host, self.port = host, port
            return connection
        assert failure is not None
        raise failure

    def _since(self, view: RoomView) -> int | None:
        """Where a join of `view`'s room resumes from (None: no resume); its welcome then says so."""
        if not view.resume:
            return None
        self._resuming.add(room_key(view.name))
        return view.seen.last_id

    async def _announce(self, welcome: Welcome) -> None:
        """A welcome as an event; after it, for a room joined again, how much was missed."""
        await self._events.put(welcome)
        key = room_key(welcome.room)
        if key in self._resuming:
            self._resuming.discard(key)
            await self._events.put(Resumed(welcome.room, welcome.history))

    def _welcomed(self, welcome: Welcome) -> None:
        view = self.rooms.setdefault(room_key(welcome.room), RoomView(welcome.room))
        view.name, view.users, view.topic = welcome.room, list(welcome.users), welcome.topic
        view.roles = dict(welcome.roles)
        restarted = view.epoch is not None and welcome.epoch is not None and welcome.epoch != view.epoch
        if restarted or welcome.last_id < view.seen.last_id:  # the room's ids begin again
            view.seen.reset()
        view.epoch = welcome.epoch or view.epoch
        view.resume = True
        view.joined_after = welcome.last_id

    async def _read(self, reader: asyncio.StreamReader) -> ServerMessage:
        try:
            line = await reader.readline()
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(failure_in_words(exc)) from exc
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
            if self.replaced is not None:
                await self._events.put(SignedInElsewhere(self.replaced))
                self._take_back.clear()
                await self._take_back.wait()
                if self._closed_meanwhile():
                    return
                self.replaced = None
                try:
                    reader, welcome = await self._open()
                except (OSError, ChatError) as exc:
                    detail = failure_in_words(exc) if isinstance(exc, OSError) else str(exc) or type(exc).__name__
                else:
                    await self._events.put(Reconnected(1))
                    await self._announce(welcome)
                    continue
            if not self.reconnect:
                await self._events.put(ConnectionLost(detail, retry_in=0))
                await self._events.put(None)
                return
            delay = self.first_retry
            await self._events.put(ConnectionLost(detail, retry_in=delay))
            while True:
                wait = delay * random.uniform(0.8, 1.2)
                self.retry_at = asyncio.get_running_loop().time() + wait
                await asyncio.sleep(wait)
                self.retry_at = None
                attempts += 1
                try:
                    reader, welcome = await self._open()
                except (OSError, ChatError) as exc:
                    delay = min(delay * 2, self.max_retry)
                    reason = failure_in_words(exc) if isinstance(exc, OSError) else str(exc) or type(exc).__name__
                    if reason != detail:  # say why, once per new reason (a taken name, say)
                        detail = reason
                        await self._events.put(ConnectionLost(detail, retry_in=delay))
                    continue
                break
            await self._events.put(Reconnected(attempts))
            await self._announce(welcome)
            attempts = 0

    async def _pump(self, reader: asyncio.StreamReader) -> str:
        """Pass the server's lines on until the connection ends; say why it ended."""
        while True:
            try:
                message = await self._read(reader)
            except ConnectionClosed as exc:
                silent, self._silent = self._silent, None
                return silent or str(exc)
            except ProtocolError as exc:
                log.warning("ignoring a line the client does not understand: %s", exc)
                continue
            if isinstance(message, ServerPong):
                if self._ping_sent is not None:
                    self.lag = asyncio.get_running_loop().time() - self._ping_sent
                    self._ping_sent = None
                    self.lag_measured.set()
                continue
            if isinstance(message, ServerPing):
                with contextlib.suppress(ConnectionClosed):
                    await self.send(Pong())
                continue
            if (
                isinstance(message, ErrorReply) and message.code == "already_joined" and message.room is not None
                and room_key(message.room) in self.rooms
            ):
                continue  # another device of the account put this one in the room first: nothing is wrong
            if isinstance(message, SearchResults):
                said: list[ChatMessage | Action | PrivateMessage] = []
                for _ in range(message.count):
                    try:
                        line = await self._read(reader)
                    except ConnectionClosed as exc:
                        return str(exc)
                    except ProtocolError as exc:
                        log.warning("ignoring a search result the client does not understand: %s", exc)
                        continue
                    if isinstance(line, ChatMessage | Action | PrivateMessage):
                        said.append(line)
                await self._events.put(SearchFound(message, said))
                continue  # matches are not news: they go through no room's bookkeeping
            if isinstance(message, ErrorReply) and message.code == "session_replaced":
                self.replaced = "signed in elsewhere: another connection of yours took the session over"
                return self.replaced
            if isinstance(message, ChatMessage | Action | PrivateMessage):
                self._echoed(message)
            if self._closed_conversation(message):
                continue  # recalled for the conversations open in the last run, and not one of them
            if not self._first_sight(message):
                continue  # the echo of a line sent again, seen already (in the history replayed)
            fresh_removal = self._removes_me(message)
            self._track(message)
            if isinstance(message, Renamed) and not self._first_copy(message):
                continue  # the server sends a rename once per shared room; a person needs it once
            if isinstance(message, Welcome):
                await self._announce(message)
            else:
                await self._events.put(message)
            if fresh_removal:
                assert isinstance(message, Moderation)
                await self._events.put(PutOut(message.room, message.action, message.by, message.reason))
            if isinstance(message, Shutdown):
                return message.detail

    async def _keep_alive(self) -> None:
        """Ping every `keepalive` seconds; a connection that leaves several in a row unanswered is
        dead however quiet its socket is (a server that froze, a cable pulled): close it, and the
        reader reconnects."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.keepalive)
            writer = self._writer
            if writer is None:
                continue
            if self._ping_sent is not None and loop.time() - self._ping_sent > self.keepalive * DEAD_AFTER_PINGS:
                self._silent = f"no answer from the server for {loop.time() - self._ping_sent:.0f} s"
                writer.transport.abort()
                continue
            if self._ping_sent is None:
                self._ping_sent = loop.time()
                with contextlib.suppress(ConnectionClosed):
                    await self.send(Ping())

    def _first_sight(self, message: ServerMessage) -> bool:
        """Note a numbered message; False if it was received before (or is for a room this client left)."""
        if isinstance(message, PrivateMessage):
            return self.private.first_sight(message.id)
        if isinstance(message, ChatMessage | Action | Topic | Moderation):
            view = self.rooms.get(room_key(message.room))
            return view is None or view.seen.first_sight(message.id)
        return True

    def _closed_conversation(self, message: ServerMessage) -> bool:
        """Whether `message` is a private line read in an earlier run, of a conversation since closed."""
        if not isinstance(message, PrivateMessage) or message.id > self.recalled_private:
            return False
        other = message.to if message.name == self.name else message.name
        return other.casefold() not in self.conversations

    def _echoed(self, message: ChatMessage | Action | PrivateMessage) -> None:
        """Forget the line `message` is the echo of: by its cid, or, for a line of this client's
        name without one (a server that keeps no cids, or the line in a resumed history), the
        oldest unechoed line of the same kind, place and text."""
        if message.cid is not None:
            self._unechoed.pop(message.cid, None)
            return
        if message.name != self.name or not self._unechoed:
            return
        for cid, (_, said) in self._unechoed.items():
            if said.type != message.type or said.msg != message.msg:
                continue
            if isinstance(said, SendPrivate) and isinstance(message, PrivateMessage):
                same_place = said.to.casefold() == message.to.casefold()
            else:
                same_place = room_key(getattr(said, "room", LOBBY)) == room_key(getattr(message, "room", LOBBY))
            if same_place:
                del self._unechoed[cid]
                return

    def _closed_meanwhile(self) -> bool:
        """Whether close() was called while this task waited (a method: a type checker would take
        the attribute, tested before the wait, for unchanged)."""
        return self._closing

    def _removes_me(self, message: ServerMessage) -> bool:
        """Whether a line kicks or bans this client from a room it is in now: a kick numbered up to
        the room's last id at the welcome is one replayed with the history, from before this join."""
        if not isinstance(message, Moderation) or message.action not in ("kick", "ban") or message.name != self.name:
            return False
        view = self.rooms.get(room_key(message.room))
        return view is not None and message.id > view.joined_after

    def _first_copy(self, renamed: Renamed) -> bool:
        """Whether this rename has not been passed on yet (from another room)."""
        if self._renames.get(renamed.old) == renamed.new:
            return False
        self._renames[renamed.old] = renamed.new
        self._renames.pop(renamed.new, None)  # a later rename back, then again, is news once more
        return True

    def forget_conversation(self, name: str) -> None:
        """The user closed the conversation with `name`: a later run does not open it again."""
        self.conversations.pop(name.casefold(), None)

    def _follow_conversations(self, message: ServerMessage) -> None:
        """A private line opens its conversation; a rename carries one over to the new name, in its place."""
        match message:
            case PrivateMessage(name=name, to=to):
                other = to if name == self.name else name
                self.conversations.setdefault(other.casefold(), other)
            case Renamed(old=old, new=new) if old.casefold() in self.conversations:
                self.conversations = {
                    (new.casefold() if key == old.casefold() else key): (new if key == old.casefold() else name)
                    for key, name in self.conversations.items()
                }

    def _track(self, message: ServerMessage) -> None:
        self._follow_conversations(message)
        match message:
            case SessionToken(token=token):
                self.token = token
            case Welcome():
                self._welcomed(message)
            case Joined(room=room, name=name):
                if view := self.rooms.get(room_key(room)):
                    view.users = sorted({*view.users, name}, key=str.casefold)
            case Moderation() if self._removes_me(message):
                self.rooms.pop(room_key(message.room), None)  # put out of the room: not rejoined on a reconnect
            case Moderation(room=room, action="op" | "voice" as action, name=name):
                if view := self.rooms.get(room_key(room)):
                    view.roles.setdefault(name, action)
                    if view.roles[name] == "voice" and action == "op":
                        view.roles[name] = "op"
            case Moderation(room=room, action="deop" | "devoice", name=name):
                if view := self.rooms.get(room_key(room)):
                    view.roles.pop(name, None)
            case Left(room=room, name=name, reason=reason):
                if reason == "part" and name == self.name:
                    self.rooms.pop(room_key(room), None)
                elif view := self.rooms.get(room_key(room)):
                    view.users = [user for user in view.users if user != name]
            case Renamed(room=room, old=old, new=new):
                if room is not None and (view := self.rooms.get(room_key(room))):
                    view.users = sorted({new, *(user for user in view.users if user != old)}, key=str.casefold)
                if old == self.name:
                    self.name = new
            case Users(room=room, users=users, roles=roles):
                # One case for both: a second `case Users` never ran, so a who left the list stale.
                if view := self.rooms.get(room_key(room)):
                    view.users = list(users)
                    view.roles = dict(roles)
            case Topic(room=room, topic=topic):
                if view := self.rooms.get(room_key(room)):
                    view.topic = topic
            case Reset(room=room, epoch=epoch):
                if view := self.rooms.get(room_key(room)):
                    view.seen.reset()
                    view.epoch = epoch

    def _drop_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
