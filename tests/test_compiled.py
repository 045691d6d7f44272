"""Which build runs: the compiled modules only while they match their sources, pure Python otherwise."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import sys
from pathlib import Path

import pytest

import chat
from chat import compiled
from chat.compiled import MODULES, PURE_ENV, SOURCES_FILE, guard, module_name, source_digests


def test_the_build_that_runs_is_the_one_reported():
    """Every compiled module comes from an extension when chat.BUILD says compiled, from its .py otherwise."""
    for path in MODULES:
        origin = importlib.import_module(module_name(path)).__file__
        assert origin is not None
        assert origin.endswith(".py") is not chat.BUILD.compiled, (path, origin, chat.BUILD)


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake checkout holding MODULES' sources; sys.meta_path restored afterwards (and without the
    finder of this process's own pure run, if it has one: its modules are imported already)."""
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, compiled._PureFinder)])
    monkeypatch.delenv(PURE_ENV, raising=False)
    for path in MODULES:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(f"NAME = {path!r}\n")
    return tmp_path


def build(tree: Path) -> None:
    """What a CHAT_MYPYC=1 build leaves: an extension beside the first module, the record of the sources."""
    first = tree / MODULES[0].removesuffix(".py")
    Path(str(first) + importlib.machinery.EXTENSION_SUFFIXES[0]).write_bytes(b"")
    (tree / "chat" / SOURCES_FILE).write_text(json.dumps(source_digests(str(tree))))


def pure_finders() -> list[object]:
    return [finder for finder in sys.meta_path if isinstance(finder, compiled._PureFinder)]


def test_without_a_compiled_build_it_is_pure_and_nothing_is_hooked(tree):
    found = guard(str(tree / "chat"))
    assert not found.compiled and "CHAT_MYPYC=1" in found.describe()
    assert pure_finders() == []


def test_a_build_matching_its_sources_runs_compiled(tree):
    build(tree)
    found = guard(str(tree / "chat"))
    assert found.compiled and found.describe().startswith("compiled with mypyc")
    assert pure_finders() == []


def test_a_source_edited_after_the_build_makes_every_module_pure_and_says_which(tree):
    build(tree)
    edited = MODULES[3]
    (tree / edited).write_text("NAME = 'edited'\n")
    with pytest.warns(RuntimeWarning, match="stale") as warned:
        found = guard(str(tree / "chat"))
    assert not found.compiled and edited in found.reason and edited in str(warned[0].message)
    [finder] = pure_finders()
    for path in MODULES:
        spec = finder.find_spec(module_name(path))
        assert spec is not None and spec.origin == os.path.join(str(tree), path)
    assert finder.find_spec("chat.server.hub") is None  # never compiled: found the usual way


def test_a_build_without_its_record_of_sources_is_not_trusted(tree):
    build(tree)
    (tree / "chat" / SOURCES_FILE).unlink()
    with pytest.warns(RuntimeWarning):
        assert not guard(str(tree / "chat")).compiled
    assert len(pure_finders()) == 1


def test_chat_pure_python_runs_pure_python_beside_a_good_build(tree, monkeypatch):
    build(tree)
    monkeypatch.setenv(PURE_ENV, "1")
    found = guard(str(tree / "chat"))
    assert not found.compiled and found.reason == f"{PURE_ENV}=1"
    assert len(pure_finders()) == 1
