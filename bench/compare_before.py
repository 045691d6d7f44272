"""Our server against the code before a change, with ../shared/bench/compare.py's generator, interleaved.

Adds `before` (and `before-irc`, through its IRC listener) to compare.py's servers: server.py
of another checkout (`--before DIR`, e.g. a `git archive main | tar -x -C DIR`), started as
`ours` is (SQLite history in a fresh file), so that `--servers before,ours` measures the two
in one run. Everything else is compare.py's.

  python3 bench/compare_before.py --before /tmp/main-copy --servers before,ours -n 10,100,500
  (from the project's root; --compare PATH if compare.py is not at ../shared/bench/compare.py)
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--before", required=True, help="a checkout of the code to compare against")
    parser.add_argument("--compare", default="../shared/bench/compare.py", help="the shared compare.py")
    known, rest = parser.parse_known_args()
    if not os.path.isfile(known.compare):
        parser.error(f"no compare.py at {known.compare}: say where it is with --compare")
    sys.path.insert(0, os.path.dirname(os.path.abspath(known.compare)))
    import compare  # compare.py lives beside the shared generator, not in this package

    table = compare.servers

    def servers(py: str, checkout: str, work: str, extra: list[str]) -> dict[str, object]:
        found = table(py, checkout, work, extra)
        server = os.path.join(os.path.abspath(known.before), "server.py")
        def before(port: int, *listen: str, name: str = "before") -> list[str]:
            """The other checkout's server.py, started as compare.py starts `ours`."""
            db = os.path.join(work, f"{name}-{port}.db")
            return [py, server, "--host", "127.0.0.1", *listen, "--db", db, "--log-level", "WARNING", *extra]

        found["before"] = ("jsonl", lambda port: before(port, "--port", str(port)))
        found["before-irc"] = (
            "irc",
            lambda port: before(port, "--port", str(compare.free_port()), "--irc-port", str(port), name="before-irc"),
        )
        return found

    compare.servers = servers
    sys.argv = [sys.argv[0], *rest]
    return int(compare.main())


if __name__ == "__main__":
    raise SystemExit(main())
