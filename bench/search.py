"""Search over a million kept lines: how long the FTS5 index takes to fill, and a search to answer.

Writes 1,000,000 lines into 10 rooms of a fresh SQLite file (8 words each from a vocabulary of
19, so that a common word matches a third of the lines, plus one rare word), indexes them, and
times searches through SqliteStore.search. Usage: python bench/search.py [PATH].
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time

from chat.server.store import Record, SqliteStore

WORDS = (
    "release checklist deploy friday lunch build broken test merge review "
    "coffee server redis index search alpha beta gamma delta"
).split()
LINE = '{{"type":"message","room":"{room}","id":{id},"name":"u","msg":"{msg}","time":"2026-11-20T12:00:00.000Z"}}\n'
ROOMS = [f"room{n}" for n in range(10)]
LINES = 1_000_000
QUERIES = [
    ("release", ROOMS),
    ('"release checklist"', ROOMS),
    ("rel*", ROOMS),
    ("w4242", ROOMS),
    ("release checklist", ROOMS[3:4]),
    ("w4242", ROOMS[3:4]),
]


def fill(store: SqliteStore, rng: random.Random) -> None:
    for room in ROOMS:
        for first in range(1, LINES // len(ROOMS) + 1, 5000):
            records = []
            for id in range(first, first + 5000):
                msg = " ".join(rng.choice(WORDS) for _ in range(8)) + f" w{rng.randrange(100_000)}"
                records.append(Record(id, LINE.format(room=room, id=id, msg=msg).encode()))
            store.append_all(room, records)


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/chat-search-bench.db"
    for stale in (path, f"{path}-wal", f"{path}-shm", f"{path}.last-ids"):
        if os.path.exists(stale):
            os.remove(stale)
    store = SqliteStore(path, retention=2 * LINES, retention_bytes=1 << 40)
    try:
        started = time.perf_counter()
        fill(store, random.Random(1))
        print(f"wrote {LINES:,} lines in {time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        while store.index_some(20_000):
            pass
        print(f"indexed them in {time.perf_counter() - started:.1f} s", flush=True)
        for text, logs in QUERIES:
            times = []
            for _ in range(5):
                started = time.perf_counter()
                found = store.search(text, logs, "guest:bench", None, 20)
                times.append(time.perf_counter() - started)
            matches = len(found.lines) + found.more
            median = statistics.median(times) * 1000
            print(f"search {text!r} in {len(logs)} rooms: {matches:,} matches, median {median:.1f} ms", flush=True)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
