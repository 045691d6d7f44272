"""irctest (the IRC conformance suite, a pinned copy in ../shared/irctest) against our IRC port,
through tests/irctest_controller.py: the selection it names, with zero failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chat.testing import scaled

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def irctest_checkout() -> Path:
    """The pinned irctest: ../shared/irctest beside this checkout (or beside the folder holding it)."""
    named = os.environ.get("CHAT_IRCTEST_DIR")
    candidates = [Path(named)] if named else []
    candidates += [ROOT.parent / "shared" / "irctest", ROOT.parent.parent / "shared" / "irctest"]
    for candidate in candidates:
        if (candidate / "irctest" / "server_tests").is_dir():
            return candidate
    if os.environ.get("CHAT_REQUIRE_IRC"):
        pytest.fail("no irctest in ../shared/irctest, and CHAT_REQUIRE_IRC says it must run")
    pytest.skip("no irctest in ../shared/irctest (set CHAT_IRCTEST_DIR)")


def selection_args(checkout: Path) -> list[str]:
    if str(checkout) not in sys.path:
        sys.path.append(str(checkout))  # the controller imports irctest
    from irctest_controller import DESELECTED, MARKERS, MODULES

    files = [f"irctest/server_tests/{module if module.endswith('.py') else module + '.py'}" for module in MODULES]
    keep_out = " and ".join(f"not ({expression})" for expression in DESELECTED)
    return ["-m", MARKERS, "-k", keep_out, *files]


def test_irctest_selection_passes_against_our_irc_port(tmp_path):
    checkout = irctest_checkout()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
        "PYTHONDONTWRITEBYTECODE": "1",  # the checkout is read-only: nothing is written into it
        "TMPDIR": str(tmp_path),
    }
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", "--tb=short",
        "--controller", "irctest_controller", *selection_args(checkout),
    ]
    result = subprocess.run(
        command, cwd=checkout, env=env, capture_output=True, text=True, timeout=scaled(1800), check=False
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
