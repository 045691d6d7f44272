"""One connection as the server's logic sees it: who it is, where it is, whether it is alive.

A Session holds the connection's name (None until its first join), the keys
of the rooms it is in, its private inbox, and its keepalive state; the Hub and the rooms change
it, the TCP layer reads its keepalive fields. No sockets: the connection's
delivery handle (`peer`) is opaque here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from chat.server.limits import address_group

if TYPE_CHECKING:
    from chat.server.accounts import Identity

P = TypeVar("P")


class Session(Generic[P]):
    """A connected client, from its first byte to its disconnect."""

    def __init__(self, peer: P, label: str, inbox: str, address: str = "") -> None:
        #: The handle the delivery layer knows this connection by.
        self.peer = peer
        #: The delivery log of its private messages (a key no room can have).
        self.inbox = inbox
        #: Where it connected from, for the log.
        self.label = label
        #: Its network address, which login throttles count by.
        self.address = address or label
        #: What bans and mutes of it hold on besides its identity (`address:` and its address, an
        #: IPv6 /64); None for an address many people share (loopback, a proxy: --limit-exempt).
        self.held_at: str | None = f"address:{address_group(self.address)}"
        #: Who it proved to be at its first join (an account, or a guest with a token).
        self.identity: Identity | None = None
        #: The name it joined under; None until its first join.
        self.name: str | None = None
        #: Keys of the rooms it is in, in the order it joined them.
        self.rooms: dict[str, None] = {}
        #: Why it said it is away, if it is (`away`); private messages to it get an `away` line back.
        self.away: str | None = None
        #: The words of its goodbye (`leave`'s msg, IRC's QUIT reason), for its rooms' left lines.
        self.parting: str | None = None
        #: What an IRC client said it is at registration (USER): its user name and real name.
        self.user_name = ""
        self.real_name = ""
        #: time.monotonic() of the connect: a first join is due within the join timeout.
        self.connected_at = time.monotonic()
        #: time.monotonic() of the last bytes received; the reader keeps it fresh.
        self.last_heard = self.connected_at
        #: Whether the server has pinged it since it last said anything.
        self.pinged = False
        #: Its handler is taking bytes out of the socket now: they are life the keepalive can
        #: no longer see there, and `last_heard` may predate a freeze that fell in between.
        self.reading = False

    def heard(self) -> None:
        """The client said something: it is alive."""
        self.last_heard = time.monotonic()
        self.pinged = False

    def __repr__(self) -> str:
        return f"<Session {self.label} {self.name or '(not joined)'}>"


@dataclass(frozen=True)
class Holder:
    """Who holds a name on another server (several servers on one Redis): the identity, the
    name as spelled, why they are away if they said so, and the address a guest's bans hold on."""

    identity: str
    name: str
    away: str | None = None
    address: str | None = None


@dataclass(frozen=True)
class Presence:
    """What the server tells any connection about a connected name (IRC's WHOIS, ISON, account tags)."""

    name: str
    #: The account's name as registered; None for a guest.
    account: str | None
    away: str | None
    #: The rooms it is in, as each is spelled.
    rooms: tuple[str, ...]
    #: What an IRC client gave at registration ("" for others).
    user_name: str = ""
    real_name: str = ""
