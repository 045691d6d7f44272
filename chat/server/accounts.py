"""Who may use a name: registered accounts, their passwords, and session tokens.

Accounts proves identities: a registered name only to its password or a
session token of its account, an unregistered one to anybody (a guest, who
gets a token of its own). Passwords are hashed with Argon2id (OWASP's
parameters), at most two at a time, and never under a lock that anybody
else's messages need; only a token's SHA-256 is stored. Every password check
is paced per address (IPv6 per /64) and per account, one at a time per account.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from chat.errors import Refused
from chat.server.limits import TokenBucket, address_group
from chat.server.store import AccountRecord, AccountStore, HistoryStore, StoreError, kept
from chat.wire.text import name_key, skeleton

log = logging.getLogger(__name__)

#: How long a session token stays good after its last use.
TOKEN_LIFETIME = 30 * 24 * 3600.0
_NOT_KEPT = "the server could not keep your account; try again"
#: Guests' tokens held in memory at most while the store takes no writes.
UNWRITTEN_TOKENS = 100_000
#: Password hashes computed at once, at most (each takes about 19 MiB and a core for ~25 ms).
CONCURRENT_HASHES = 2


@dataclass(frozen=True)
class Identity:
    """Who a connection has proved to be: an account (`account:` + its key) or a guest."""

    id: str
    #: The token the connection may come back with.
    token: str
    #: The account's name as registered; None for a guest.
    account: str | None = None
    #: The account's password hash when it proved itself: a session whose account's hash
    #: changed since (or whose account is gone) is ended.
    proof: str = ""

    def answerable(self, held_at: str | None) -> list[str]:
        """What bans and mutes hold against: the identity, and the address it acts from
        (`held_at`, None for a shared one): a sanction of a guest holds on its address, also once
        it registers or logs in, and a ban of an account on the addresses it used while banned."""
        return [self.id] if held_at is None else [self.id, held_at]


class AccountsStore(AccountStore, HistoryStore, Protocol):
    """What Accounts needs of the server's store: accounts and tokens (unless `records` keeps
    them elsewhere), and the private log, to hand an account the lines an older release kept
    under its bare name."""


class Accounts:
    """Registration, login, tokens and their throttles, over an AccountStore."""

    def __init__(
        self,
        store: AccountsStore,
        require_account: bool = False,
        records: AccountStore | None = None,
        shared_take: Callable[[str, float, float], bool] | None = None,
    ) -> None:
        """`records`: where accounts and tokens are kept, if not in `store`; `shared_take`: the
        throttles every server shares (key, burst, per second -> whether one was taken), if any."""
        self._shared_take = shared_take
        self._store = store
        self._records: AccountStore = records or store
        self.require_account = require_account
        self._hasher = password_hasher()
        self._hashing = threading.BoundedSemaphore(CONCURRENT_HASHES)
        # A valid hash to verify against when there is no account, so that a
        # wrong name costs as long as a wrong password.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        self._lock = threading.Lock()
        self._attempts: dict[str, TokenBucket] = {}
        #: Guests' tokens the store could not take (a full disk), kept here until it can: hash ->
        #: (identity, expiry), oldest first.
        self._unwritten: dict[str, tuple[str, float]] = {}
        #: Keys of the accounts whose password is being checked now (one check per account at once).
        self._checking: set[str] = set()
        #: Name keys nobody may join under or register (the operators' names while their accounts
        #: do not exist): `name_reserved`.
        self.reserved: frozenset[str] = frozenset()

    def is_reserved(self, name: str) -> bool:
        """Whether `name` (or a look-alike) is an operator's name whose account does not exist yet."""
        return name_key(name) in self.reserved and self._account(name) is None

    def current(self, identity: Identity) -> bool:
        """Whether the account `identity` proved itself as still exists with the password it
        proved (a guest always is)."""
        if identity.account is None:
            return True
        account = self._account(identity.account)
        return account is not None and _account_id(account.key) == identity.id and (
            not identity.proof or account.password_hash == identity.proof
        )

    def record(self, name: str) -> AccountRecord | None:
        """The account registered under `name` or a look-alike of it, if any."""
        return self._account(name)

    def rooms_of(self, identity: str) -> list[str]:
        """The rooms the account is in, whatever device joined them."""
        return kept(self._records.account_rooms, identity, failure="the server could not read your rooms")

    def joined(self, identity: str, room: str, in_it: bool) -> None:
        kept(self._records.save_account_room, identity, room, in_it, failure="the server could not keep your rooms")

    def markers(self, identity: str) -> dict[str, int]:
        return kept(self._records.read_markers, identity, failure="the server could not read your read markers")

    def mark(self, identity: str, room: str, id: int) -> bool:
        """Move the account's read marker in `room` forward to `id`; False if it was there already."""
        failure = "the server could not keep your read marker"
        return kept(self._records.save_read_marker, identity, room, id, failure=failure)

    def is_registered(self, name: str) -> bool:
        return self._account(name) is not None

    def prove(self, name: str, password: str | None, token: str | None, address: str) -> Identity:
        """The identity `name` may be used under, or Refused: `auth_failed`, `name_registered`, `account_required`."""
        account = self._account(name)
        if account is None and name_key(name) in self.reserved:
            raise Refused("name_reserved", f"{name} is reserved for a server operator's account")
        if token is not None:
            found = self._session(token)
            if found is not None:
                identity, _ = found
                if account is None and identity.startswith("guest:"):
                    return self._refresh(identity, token, None)
                if account is not None and identity == _account_id(account.key):
                    return self._refresh(identity, token, account.name, account.password_hash)
            if account is not None and password is None:
                raise Refused("auth_failed", "that token is not good for this name (expired or revoked); log in")
        if password is not None:
            if account is None:
                self._verify_nothing(password, address)
                raise Refused("auth_failed", f"wrong name or password for {name}")
            self._verify(account, password, address)
            identity = _account_id(account.key)
            # Private lines an older release kept under the bare name wait for the account's first login.
            kept(self._store.adopt_private, account.name.casefold(), identity, failure=_NOT_KEPT)
            return self._issue(identity, account.name, account.password_hash)
        if account is not None:
            raise Refused("name_registered", f"{name} is a registered name: log in with its password")
        if self.require_account:
            raise Refused("account_required", "this server takes accounts only: register, then log in")
        return self._issue(f"guest:{secrets.token_urlsafe(12)}", None)

    def register(self, name: str, password: str, guest: Identity, address: str) -> Identity:
        """Make `name` an account with `password`; the guest's token is revoked for a new one."""
        if not self._take(f"register {address_group(address)}", burst=3, per_second=1 / 60):
            raise Refused("auth_failed", "too many registrations from your address; try again later")
        if self._account(name) is not None:
            raise Refused("name_registered", f"{name} is already registered")
        if name_key(name) in self.reserved:
            raise Refused("name_reserved", f"{name} is reserved for a server operator's account")
        with self._hashing:
            password_hash = self._hasher.hash(password)
        account = AccountRecord(name_key(name), name, password_hash, time.time())
        failure = f"the server could not register {name} (it could not write); try again later"
        kept(self._records.save_account, account, failure=failure)
        kept(self._records.drop_sessions, guest.id, failure=failure)
        return self._issue(_account_id(name_key(name)), name, password_hash)

    def change_password(self, identity: Identity, old: str, new: str, address: str) -> Identity:
        """A new password for the identity's account; every token of it is revoked for one new one."""
        account = self._account(identity.account) if identity.account else None
        if account is None:
            raise Refused("not_registered", "register first: guests have no password to change")
        self._verify(account, old, address)
        with self._hashing:
            password_hash = self._hasher.hash(new)
        kept(self._records.save_account, AccountRecord(account.key, account.name, password_hash), failure=_NOT_KEPT)
        kept(self._records.drop_sessions, identity.id, failure=_NOT_KEPT)
        return self._issue(identity.id, account.name, password_hash)

    # --- inside --------------------------------------------------------------------------

    def _account(self, name: str) -> AccountRecord | None:
        failure = "the server could not read its accounts; try again"
        found = kept(self._records.account, name_key(name), failure=failure)
        if found is None and (legacy := legacy_name_key(name)) != name_key(name):
            found = kept(self._records.account, legacy, failure=failure)  # registered by an older release
        return found

    def _session(self, token: str) -> tuple[str, float] | None:
        with self._lock:
            found = self._unwritten.get(_token_hash(token))
        if found is None:
            found = kept(self._records.session, _token_hash(token), failure="the server could not read its sessions")
        if found is None or found[1] < time.time():
            return None
        return found

    def _verify(self, account: AccountRecord, password: str, address: str) -> None:
        """Check a password: every check counts (a right one too, so that nobody makes the server
        hash without limit), per address (IPv6 per /64) and per account, and one account has at
        most one check running, so that other people's logins never queue behind its."""
        if not (self._take(f"login {address_group(address)}", burst=5, per_second=1 / 12) and
                self._take(f"account {account.key}", burst=5, per_second=1 / 60)):
            raise Refused("auth_failed", "too many logins; wait a minute and try again")
        with self._lock:
            if account.key in self._checking:
                busy = True
            else:
                busy = False
                self._checking.add(account.key)
        if busy:
            raise Refused("auth_failed", "a login of this account is being checked already; try again")
        try:
            with self._hashing:
                self._hasher.verify(account.password_hash, password)
        except (VerificationError, InvalidHashError):
            raise Refused("auth_failed", f"wrong name or password for {account.name}") from None
        finally:
            with self._lock:
                self._checking.discard(account.key)

    def _verify_nothing(self, password: str, address: str) -> None:
        """As long as a wrong password takes, for a name with no account."""
        if not self._take(f"login {address_group(address)}", burst=5, per_second=1 / 12):
            raise Refused("auth_failed", "too many logins; wait a minute and try again")
        try:
            with self._hashing:
                self._hasher.verify(self._dummy_hash, password)
        except VerificationError:
            pass  # the expected outcome: there is no account to match

    def _issue(self, identity: str, account: str | None, proof: str = "") -> Identity:
        return self._refresh(identity, secrets.token_urlsafe(32), account, proof)

    def _refresh(self, identity: str, token: str, account: str | None, proof: str = "") -> Identity:
        expires_at = time.time() + TOKEN_LIFETIME
        if account is not None:
            kept(self._records.save_session, _token_hash(token), identity, expires_at, failure=_NOT_KEPT)
            return Identity(identity, token, account, proof)
        # A guest joins even when nothing can be written (a full disk): its token waits in memory.
        try:
            self._records.save_session(_token_hash(token), identity, expires_at)
        except StoreError as exc:
            log.warning("a guest's token is kept in memory until the store takes writes again: %s", exc)
            with self._lock:
                if len(self._unwritten) >= UNWRITTEN_TOKENS:
                    self._unwritten.pop(next(iter(self._unwritten)))
                self._unwritten[_token_hash(token)] = (identity, expires_at)
            return Identity(identity, token, None)
        self._write_unwritten()
        return Identity(identity, token, None)

    def _write_unwritten(self) -> None:
        """The store takes writes again: the guests' tokens held in memory are written now."""
        with self._lock:
            if not self._unwritten:
                return
            waiting, self._unwritten = self._unwritten, {}
        for number, (token_hash, (identity, expires_at)) in enumerate(waiting.items()):
            try:
                self._records.save_session(token_hash, identity, expires_at)
            except StoreError:
                with self._lock:
                    self._unwritten.update(dict(list(waiting.items())[number:]))
                return

    def _take(self, key: str, burst: float, per_second: float) -> bool:
        if self._shared_take is not None:
            try:
                return self._shared_take(key, burst, per_second)
            except StoreError as exc:  # this server's own count, until the shared one answers again
                log.warning("could not reach the shared login throttles: %s", exc)
        with self._lock:
            bucket = self._attempts.get(key)
            if bucket is None:
                if len(self._attempts) > 10_000:
                    for stale in [k for k, b in self._attempts.items() if b.full()]:
                        del self._attempts[stale]
                bucket = self._attempts[key] = TokenBucket(per_second, burst)
            return bucket.try_take()



def password_hasher() -> PasswordHasher:
    """Argon2id with OWASP's parameters: what the server and chat-admin hash passwords with."""
    return PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def account_identity(key: str) -> str:
    """The identity an account's tokens, roles and sanctions are kept under."""
    return _account_id(key)


def legacy_name_key(name: str) -> str:
    """The key an older release kept accounts under (case folding, then the skeleton): such an
    account keeps its key, and is found by this one."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", skeleton(folded)).casefold())


def _account_id(key: str) -> str:
    return f"account:{key}"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
