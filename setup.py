"""The build: pure Python by default; with CHAT_MYPYC=1, the hot pure modules compiled with mypyc.

Everything else about the package is in pyproject.toml. With CHAT_MYPYC=1 mypy (which ships mypyc)
is a build requirement, and the build writes the SHA-256 of every source it compiled beside them,
so that chat/compiled.py runs pure Python instead of a compiled module older than its source.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import sys
import tomllib
from importlib.machinery import EXTENSION_SUFFIXES

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
# chat/compiled.py by its path: importing `chat` here would run the guard it installs.
_spec = importlib.util.spec_from_file_location("_chat_compiled", os.path.join(HERE, "chat", "compiled.py"))
assert _spec is not None and _spec.loader is not None
compiled = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = compiled  # dataclasses look their module up while building the class
_spec.loader.exec_module(compiled)

WANTED = os.environ.get("CHAT_MYPYC") == "1"
#: What mypyc needs installed to compile: mypy itself, and the project's dependencies, since it
#: type-checks the compiled modules against them (and pyproject's mypy config names pydantic's plugin).
with open(os.path.join(HERE, "pyproject.toml"), "rb") as _pyproject:
    COMPILE_REQUIRES = ["mypy>=1.10", *tomllib.load(_pyproject)["project"]["dependencies"]]


class BuildWithSources(build_ext):
    """build_ext, then the record of which sources the extensions were compiled from."""

    def run(self) -> None:
        in_place = self.inplace or getattr(self, "editable_mode", False)
        if in_place:
            remove_in_place_build()  # also the modules an earlier build compiled and this one does not
        super().run()
        if not self.extensions:
            return
        package = os.path.join(HERE if in_place else self.build_lib, "chat")
        os.makedirs(package, exist_ok=True)
        with open(os.path.join(package, compiled.SOURCES_FILE), "w") as record:
            json.dump(compiled.source_digests(HERE), record, indent=1, sort_keys=True)

    def get_outputs(self) -> list[str]:
        outputs: list[str] = super().get_outputs()
        if self.extensions:
            outputs.append(os.path.join(self.build_lib, "chat", compiled.SOURCES_FILE))
        return outputs


def remove_in_place_build() -> None:
    """An editable install without CHAT_MYPYC=1 is pure: take away what an earlier one compiled
    beside the sources (it would shadow them, stale after the next edit)."""
    built = [
        name
        for suffix in EXTENSION_SUFFIXES
        for name in glob.glob(f"chat/**/*{suffix}", root_dir=HERE, recursive=True)  # chat has no other C code
    ]
    built += glob.glob("chat_native__mypyc*", root_dir=HERE)
    for name in {*built, os.path.join("chat", compiled.SOURCES_FILE)}:
        if os.path.exists(os.path.join(HERE, name)):
            os.remove(os.path.join(HERE, name))


def extensions() -> list[object]:
    if not WANTED or "egg_info" in sys.argv or "dist_info" in sys.argv:
        return []  # the metadata (and the build requirements) need no compiling
    try:
        from mypyc.build import mypycify
    except ImportError:
        raise SystemExit("CHAT_MYPYC=1 needs mypy (mypyc) to build: pip install mypy, then build again") from None
    # One group: the compiled modules call each other natively. opt_level 3 is mypyc's default.
    return list(mypycify(list(compiled.MODULES), opt_level="3", group_name="chat_native"))


if not WANTED and "editable_wheel" in sys.argv:
    remove_in_place_build()
setup(
    ext_modules=extensions(),
    setup_requires=COMPILE_REQUIRES if WANTED else [],
    cmdclass={"build_ext": BuildWithSources},
)
