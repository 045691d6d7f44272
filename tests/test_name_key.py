"""One name key for live names, accounts, reserved names and rooms: case, width and look-alikes collide."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.errors import Refused
from chat.server.hub import Hub
from chat.server.store import AccountRecord, MemoryStore
from chat.wire.protocol import Join, room_key
from chat.wire.text import name_key, skeleton

# Letters that take part in look-alike families: the I/l/1 family, Cyrillic and Greek twins of
# Latin letters, fullwidth forms, m/rn, digits that pass for letters.
FAMILY = (
    "aAbBcCeEiIlL1|oO0mMnNrRsSpPxXyY"
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0399\u03bf\u0131\uff41\uff4c\u01c0\u00df"
)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("alice", "aIice"),
        ("alice", "a1ice"),
        ("alice", "ALICE"),
        ("alice", "\u0430lice"),
        ("alice", "\uff41\uff4c\uff49\uff43\uff45"),
        ("mallory", "MaIIory"),
        ("michael", "michaeI"),
        ("root", "r\u043e\u043et"),
        ("root", "R00T"),
        ("Ilse", "ilse"),
        ("daniel", "danieI"),
        ("william", "wiIIiam"),
        ("Bob", "\u0392ob"),
    ],
)
def test_look_alikes_share_one_key(one, other):
    assert name_key(one) == name_key(other)
    assert room_key(one) == room_key(other)


@pytest.mark.parametrize(("one", "other"), [("alice", "alicia"), ("bob", "rob"), ("dev", "ops")])
def test_different_names_keep_different_keys(one, other):
    assert name_key(one) != name_key(other)


names = st.text(alphabet=FAMILY, min_size=1, max_size=8)


@settings(max_examples=400, deadline=None)
@given(names, names)
def test_names_whose_skeletons_match_share_a_key(one, other):
    if skeleton(unicodedata.normalize("NFKC", one)) == skeleton(unicodedata.normalize("NFKC", other)):
        assert name_key(one) == name_key(other)


@settings(max_examples=400, deadline=None)
@given(names)
def test_skeleton_never_changes_the_key_and_a_key_is_its_own(name):
    assert name_key(name) == name_key(skeleton(unicodedata.normalize("NFKC", name)))
    assert name_key(name) == name_key(name_key(name))


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=12))
def test_case_never_changes_the_key_of_a_latin_name(name):
    assert name_key(name) == name_key(name.upper()) == name_key(name.lower())


# --- the hub holds to it: no two names with one skeleton are both accepted ----------------------

#: Letters, each with look-alikes a squatter might put in its place.
TWINS = {
    "a": "aA\u0430\uff41",
    "e": "eE\u0435",
    "i": "iI1l|\u0456\u0399",
    "l": "lI1|\u01c0",
    "o": "oO0\u043e\u03bf",
    "r": "rR",
    "c": "cC\u0441",
    "m": "mM",
    "n": "nN",
    "p": "pP\u0440",
    "x": "xX\u0445",
}


class _Nowhere:
    """A Delivery that delivers nothing: these tests look only at what the hub refuses."""

    def publish(self, room: str, *lines: object) -> None: ...
    def subscribe(self, peer: object, room: str, held: bool = False) -> None: ...
    def send_held(self, peer: object, room: str, *lines: object) -> None: ...
    def release_held(self, peer: object, room: str) -> None: ...
    def unsubscribe(self, peer: object, room: str) -> None: ...
    def send_to(self, peer: object, *lines: object, room: str | None = None) -> None: ...
    def wait_drained(self, peer: object, below: int) -> bool:
        return True
    def close(self, peer: object, final: object = None, reason: str | None = None) -> None: ...


@st.composite
def look_alike_pairs(draw: st.DrawFn) -> tuple[str, str]:
    letters = draw(st.lists(st.sampled_from(sorted(TWINS)), min_size=1, max_size=10))
    one = "".join(draw(st.sampled_from(TWINS[letter])) for letter in letters)
    other = "".join(draw(st.sampled_from(TWINS[letter])) for letter in letters)
    return one, other


@settings(max_examples=80, deadline=None)
@given(look_alike_pairs())
def test_a_look_alike_is_never_a_second_live_name_nor_a_second_account(pair):
    one, other = pair
    hub = Hub(_Nowhere(), MemoryStore())
    first, second = hub.connect("first", "first"), hub.connect("second", "second")
    hub.receive(first, Join(name=one))
    with pytest.raises(Refused) as caught:
        hub.receive(second, Join(name=other))
    assert caught.value.code == "name_taken"
    store = MemoryStore()
    store.save_account(AccountRecord(name_key(one), one, "not a hash anybody can match"))
    hub = Hub(_Nowhere(), store)
    with pytest.raises(Refused) as caught:
        hub.receive(hub.connect("third", "third"), Join(name=other))
    assert caught.value.code == "name_registered"
