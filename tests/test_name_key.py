"""One name key for live names, accounts, reserved names and rooms: case, width and look-alikes collide."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.wire.protocol import room_key
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
