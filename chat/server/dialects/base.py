"""What every dialect shares: requests paced by the connection's token bucket, said lines batched, answers
to send back, and the decision to close.

Pure: no sockets, threads, clocks or logging; the caller passes the time in. A
dialect subclasses Connection: its `receive_data` frames and parses what
arrived and hands each request to `_admit`, which charges it, queues it in its
turn or cuts a flooder off. The caller then takes out, in this order, the
answers to send now, the close decision if there is one, and the requests that
are due (as websockets' Protocol: bytes in, events out).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from chat.errors import Refused, RequestFailed
from chat.server.history import HistoryQuery
from chat.server.limits import TokenBucket, request_cost
from chat.server.lines import Dialect as Writing
from chat.server.lines import Line
from chat.server.session import Presence
from chat.wire.codec import error_reply
from chat.wire.protocol import (
    ClassicMessage,
    ClientMessage,
    Join,
    LeaveReason,
    Notice,
    SendAction,
    SendMessage,
    SendPrivate,
    ServerMessage,
)

if TYPE_CHECKING:
    from chat.server.config import ServerConfig

#: Lines a person says: when one of them waits for the rate limit, its sender is told.
SAID_TYPES = (SendMessage, SendAction, SendPrivate, ClassicMessage)
#: Most lines one client said to one room that are kept and published together.
MAX_BATCH = 64


@dataclass(frozen=True, slots=True)
class Request:
    """One request due now, for the hub to act on."""

    message: ClientMessage | ClassicMessage | LogIn | Describe | JoinTwinRooms | HistoryQuery


@dataclass(frozen=True, slots=True)
class Said:
    """Consecutive lines said to one room, due now: kept and published as one batch (one lock,
    one write to the store, one publish); each refused is answered as if served alone."""

    room: str
    lines: tuple[SendMessage | SendAction, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A line that is no request (not protocol), due now: answered with `failure` in its turn,
    after the requests sent before it, as if it had been served."""

    failure: RequestFailed


@dataclass(frozen=True, slots=True)
class Handled:
    """A request the dialect answered itself in its turn (IRC's PING, CAP, WHOIS): nothing for the
    hub; its answers wait in `answers_to_send`."""


@dataclass(frozen=True, slots=True)
class LogIn:
    """Claim a name before any room (IRC's registration): the first half of a first join
    (`join`'s name and credentials; its room is not entered)."""

    join: Join
    #: What the client says it is (IRC's USER): shown to others who ask.
    user_name: str = ""
    real_name: str = ""


@dataclass(frozen=True, slots=True)
class Describe:
    """What a client says it is, told after its name was claimed (IRC's USER after a SASL login)."""

    user_name: str
    real_name: str


@dataclass(frozen=True, slots=True)
class JoinTwinRooms:
    """Enter the rooms the account's other sessions are in (IRC's registration, once its welcome
    burst is out: a JSON client's first join does it by itself)."""


#: What a connection gives out when a request is due.
Due = Request | Said | Refusal | Handled

#: What a connection sends its peer: a server message, or a Line already made (in the dialect's own words).
Answer = ServerMessage | Line


class Directory(Protocol):
    """What a dialect may ask the server about other connections and rooms (the hub answers)."""

    def presence(self, name: str) -> Presence | None:
        """Who holds `name` now, if anybody."""
        ...

    def newest_said(self, room: str) -> datetime | None:
        """When the newest message or action kept in `room` was said (None: none, or no such
        room); RequestFailed if its history could not be read."""
        ...


@dataclass(frozen=True, slots=True)
class Close:
    """The connection is over: send `final`, then close. `reason` is why the server cut it off
    (None: it simply goes, "disconnected"); `log` and `level` say it for the server's log."""

    final: Answer
    reason: LeaveReason | None
    log: str
    level: int = logging.WARNING


@dataclass(slots=True)
class _Waiting:
    due: float
    message: ClientMessage | ClassicMessage | RequestFailed | LogIn | object


class Connection(ABC):
    """One client's requests between the bytes it sent and the hub, at the pace its limits allow.

    Each request is charged to the connection's token bucket: within the burst
    it is due at once, past it it waits its turn (the client is slowed, nobody
    else is), and a client more than `max_delay` seconds ahead of its rate is
    cut off with `excess_flood`. The first line a person says that has to wait
    brings a `rate_limited` notice, once per slow streak. Never raises on what
    the peer sent.
    """

    def __init__(self, rate: float, burst: float, max_delay: float) -> None:
        self.rate = rate
        self.max_delay = max_delay
        self._now = 0.0
        # The bucket reads the time it is given here: this object has no clock of its own.
        self._bucket = TokenBucket(rate, burst, clock=lambda: self._now)
        self._waiting: deque[_Waiting] = deque()
        self._answers: list[Answer] = []
        self._slowed = False
        #: Set once the connection must close; nothing more is served or read after it.
        self.closing: Close | None = None
        #: Set once the peer ended its input: what it sent before still comes due.
        self.ended = False

    # --- for the dialect -------------------------------------------------------------------

    @abstractmethod
    def receive_data(self, data: bytes, now: float) -> None:
        """Take bytes the peer sent at `now` (time.monotonic()); never raises on them."""

    @property
    def unfinished(self) -> int:
        """Bytes received after the last complete request (dropped if the input ends here)."""
        return 0

    def _admit(self, message: ClientMessage | ClassicMessage | RequestFailed | LogIn | object, size: int,
               now: float) -> bool:
        """Charge one request of `size` bytes that arrived at `now` and queue it in its turn;
        False if it put the client so far ahead of its rate that it is cut off."""
        self._now = now
        delay = self._bucket.charge(request_cost(message, size))
        if delay > self.max_delay:
            behind = f"you are more than {self.max_delay:g} s ahead of the rate limit; closing"
            self._close(Close(error_reply(Refused("excess_flood", behind)), "excess_flood", "excess flood"))
            return False
        # Told when a line a person said starts waiting: joins and history pages a client
        # asks for by itself (a restart in several rooms) are paced without a word.
        if delay and not self._slowed and isinstance(message, SAID_TYPES):
            detail = f"you send faster than {self.rate:g} lines a second; your lines wait their turn"
            self._answers.append(Notice(code="rate_limited", detail=detail, delay_ms=round(delay * 1000)))
            self._slowed = True
        if not delay:
            self._slowed = False
        self._waiting.append(_Waiting(now + delay, message))
        return True

    def _close(self, decision: Close) -> None:
        """Decide to close: nothing waiting is served any more, nothing more is read."""
        if self.closing is None:
            self.closing = decision
            self._waiting.clear()

    # --- for the caller --------------------------------------------------------------------

    def receive_eof(self) -> None:
        """The peer ended its input; what it sent before still comes due, an unfinished rest is dropped."""
        self.ended = True

    def answers_to_send(self) -> Sequence[Answer]:
        """What to send the peer now, in order (before any request due now is served)."""
        if not self._answers:
            return ()  # the usual case, asked after every read: no list made
        answers, self._answers = self._answers, []
        return answers

    @property
    def next_due(self) -> float | None:
        """When the first waiting request comes due; None if none waits."""
        return self._waiting[0].due if self._waiting else None

    def due(self, now: float) -> bool:
        """Whether a request is due at `now`."""
        return bool(self._waiting) and self._waiting[0].due <= now

    def next_request(self, now: float) -> Due | None:
        """The first request due at `now`, taken out; None if none is due.

        A line said to a room comes with the due lines said to the same room
        right after it (at most MAX_BATCH): never across rooms, never past
        another request.
        """
        if not self.due(now):
            return None
        message = self._waiting.popleft().message
        if isinstance(message, RequestFailed):
            return Refusal(message)
        if not isinstance(message, SendMessage | SendAction):
            return self._request(message)
        said = [message]
        while len(said) < MAX_BATCH and self.due(now):
            follower = self._waiting[0].message
            if not isinstance(follower, SendMessage | SendAction) or follower.room != message.room:
                break
            said.append(follower)
            self._waiting.popleft()
        return Said(message.room, tuple(said))

    def _request(self, message: object) -> Due:
        """The due request for a waiting one that is no line said to a room (a dialect that queues
        its own commands serves them here, and gives out Handled)."""
        return Request(message)  # type: ignore[arg-type]  # what _admit queued: this base queues only requests

    def served(self, due: Due, failure: RequestFailed | None) -> Sequence[Answer] | None:
        """The hub served `due` (refused with `failure`, if it was): what to tell the peer about
        the failure in the dialect's own words (None: the usual error line for each request)."""
        return None

    @property
    def writes(self) -> Writing | None:
        """How Lines are written to this connection's peer (None: as JSON lines)."""
        return None

    def attach(self, directory: Directory) -> None:  # noqa: B027  # most dialects ask nothing
        """The server this connection talks to, for the dialect's questions about others."""

    def drop_waiting(self) -> None:
        """Forget every waiting request (the connection is closing: nobody to answer)."""
        self._waiting.clear()


class Dialect(Protocol):
    """What a listener makes each new connection with (a Connection subclass itself)."""

    def __call__(self, config: ServerConfig, *, tls: bool) -> Connection:
        """A connection under `config`'s limits; `tls`: its bytes arrive through TLS, already decrypted."""
        ...
