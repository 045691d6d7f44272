"""Every Redis key the servers use, built here and nowhere else.

A room's keys carry its key in braces (`chat:{room}:log`), so that a room's keys would stay
together under Redis Cluster's hashing; the scripts also touch global keys, so the servers
need one Redis (with replicas if wanted). Pure: names only, no client. A test holds every
other module to building no key of its own.
"""

from __future__ import annotations

from chat.server.store import PRIVATE_LOG

#: Every server's lease: node -> the end time of its lease (a sorted set, Redis' clock).
NODES = "chat:nodes"
#: Each name key -> who holds it, on which server (a hash of JSON records).
NAMES = "chat:names"
#: Every room: key -> its name as first spelled (a hash).
ROOMS = "chat:rooms"
#: A token set once per Redis data set (SET NX): when it is gone or another, Redis lost its data
#: (FLUSHALL, a restart without it) and every log's lines and numbering with it.
SENTINEL = "chat:sentinel"
#: Where servers tell each other that a room's rules changed (a stream).
RULES = "chat:rules"
#: Set once by the first server on a new Redis, and never deleted: while it is missing, Redis
#: lost its data, and accounts, tokens, roles, bans and modes are refused rather than served empty.
IDENTITY = "chat:identity"
#: Every account's key (a set): what `chat-admin accounts list` lists.
ACCOUNTS = "chat:accounts"
#: The private messages' log key (the same as the local private log's: no room has it).
PRIVATE = PRIVATE_LOG


def _room(room: str, what: str) -> str:
    return f"chat:{{{room}}}:{what}"


def meta(room: str) -> str:
    """A room's (or the private log's) last id, epoch and topic (a hash)."""
    return _room(room, "meta")


def log(room: str) -> str:
    """A room's (or the private log's) lines, under their ids (a stream)."""
    return _room(room, "log")


def members(room: str) -> str:
    """A room's members: name -> the server they are on (a hash)."""
    return _room(room, "members")


def roles(room: str) -> str:
    return _room(room, "roles")


def modes(room: str) -> str:
    return _room(room, "modes")


def sanctions(room: str) -> str:
    return _room(room, "sanctions")


def node_rooms(node: str) -> str:
    """The rooms a server has (had) members in: where to look when it dies (a set)."""
    return f"chat:node:{node}:rooms"


def wake(node: str) -> str:
    """A server's own stream of commands from the others (and from itself: follow, stop)."""
    return f"chat:node:{node}:wake"


def account(key: str) -> str:
    return f"chat:account:{key}"


def token(token_hash: str) -> str:
    return f"chat:token:{token_hash}"


def tokens(identity: str) -> str:
    """The token hashes of one identity (a set): what a password change revokes."""
    return f"chat:tokens:{identity}"


def account_rooms(identity: str) -> str:
    """The rooms an account is in, as named (a sorted set scored by when it joined)."""
    return f"chat:account-rooms:{identity}"


def read_markers(identity: str) -> str:
    """An account's read marker per room (a hash: room -> id)."""
    return f"chat:read:{identity}"


def throttle(key: str) -> str:
    """A login throttle's bucket, shared by every server (a hash: tokens, at)."""
    return f"chat:throttle:{key}"
def cid(identity: str, cid: str) -> str:
    """The line `identity` sent with `cid` lately (a string that expires): its length first, so
    that no identity and cid spell another pair's key."""
    return f"chat:cid:{len(identity)}:{identity}:{cid}"
