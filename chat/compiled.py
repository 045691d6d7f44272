"""Which of the hot pure modules run as mypyc-compiled code, and the guard that runs them as pure
Python when their compiled build is stale or not wanted.

A build with CHAT_MYPYC=1 (setup.py) compiles MODULES and writes, beside them, the SHA-256 of each
source it compiled (SOURCES_FILE); at import, `guard` compares those with the sources found now
and, if one differs (an edited checkout under an editable install), or CHAT_PURE_PYTHON=1 is set,
imports every one of MODULES from its .py instead, all or none (compiled modules call each other
natively). Standard library only: setup.py loads this file by path, before chat is importable.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from types import ModuleType

#: The modules a CHAT_MYPYC=1 build compiles: the fan-out, the writer, the said line, framing,
#: parsing and pacing. Paths from the project's root, as mypyc.build.mypycify takes them.
MODULES = (
    "chat/server/fanout.py",
    "chat/server/lines.py",
    "chat/server/outbox.py",
    "chat/server/limits.py",
    "chat/server/dialects/base.py",
    "chat/server/dialects/jsonlines.py",
    "chat/server/dialects/irc.py",
    "chat/server/dialects/ircwire.py",
    "chat/wire/codec.py",
)
#: Written by the build into the `chat` package: module path -> SHA-256 of the source compiled.
SOURCES_FILE = "compiled-sources.json"
#: Set to 1 to run the pure-Python modules even where a compiled build is installed.
PURE_ENV = "CHAT_PURE_PYTHON"


def module_name(path: str) -> str:
    """`chat/server/fanout.py` -> `chat.server.fanout`."""
    return path.removesuffix(".py").replace("/", ".")


def source_digests(root: str) -> dict[str, str]:
    """The SHA-256 of each of MODULES' sources under `root` (the directory holding `chat`)."""
    digests = {}
    for path in MODULES:
        with open(os.path.join(root, path), "rb") as source:
            digests[path] = hashlib.sha256(source.read()).hexdigest()
    return digests


@dataclass(frozen=True)
class Build:
    """Which build runs: `compiled`, and why (for the server's startup line and README)."""

    compiled: bool
    reason: str

    def describe(self) -> str:
        kind = "compiled with mypyc" if self.compiled else "pure Python"
        return f"{kind} ({self.reason})"


class _PureFinder:
    """Finds each of MODULES as its .py file, ahead of the compiled extension beside it."""

    def __init__(self, root: str) -> None:
        self._paths = {module_name(path): os.path.join(root, path) for path in MODULES}

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        source = self._paths.get(name)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(name, source)


def _has_extension(root: str) -> bool:
    stem = os.path.join(root, MODULES[0].removesuffix(".py"))
    return any(os.path.exists(stem + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def guard(package_dir: str) -> Build:
    """Decide which build runs, before any of MODULES is imported; make it pure if it must be."""
    root = os.path.dirname(package_dir)
    if not _has_extension(root):
        return Build(False, "no compiled build installed; CHAT_MYPYC=1 pip install . builds one")
    if os.environ.get(PURE_ENV) == "1":
        sys.meta_path.insert(0, _PureFinder(root))
        return Build(False, f"{PURE_ENV}=1")
    try:
        with open(os.path.join(package_dir, SOURCES_FILE)) as recorded:
            built: dict[str, str] = json.load(recorded)
    except (OSError, ValueError):
        built = {}
    changed = [path for path, digest in source_digests(root).items() if built.get(path) != digest]
    if changed:
        sys.meta_path.insert(0, _PureFinder(root))
        reason = (
            f"the compiled build is stale: {', '.join(changed)} changed since it was built; "
            "rebuild with CHAT_MYPYC=1 pip install -e . (or pip install -e . to remove it)"
        )
        warnings.warn(f"chat runs as pure Python: {reason}", RuntimeWarning, stacklevel=2)
        return Build(False, reason)
    return Build(True, f"{len(MODULES)} modules")
