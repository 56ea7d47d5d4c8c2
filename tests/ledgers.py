"""Reading what a process under test wrote to its ledger, from the outside (tests only)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def ledger_rows(path: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The ledger's rows, oldest first, as soon as there are ``count`` (writers write in
    batches), or those there are at ``timeout``; the caller asserts how many it expects.

    Read-only, so a file another process is writing is never changed by the test.
    """
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while True:
        if path.exists():
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
                db.row_factory = sqlite3.Row
                with contextlib.suppress(sqlite3.OperationalError):  # no table yet
                    query = "SELECT * FROM invocations ORDER BY start_ns, rowid"
                    rows = [dict(row) for row in db.execute(query)]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def union_length(intervals: Iterable[tuple[int, int]]) -> int:
    """The length covered by at least one of the ``(start, end)`` intervals, in their unit."""
    total, cursor = 0, None
    for start, end in sorted(intervals):
        if cursor is None or start > cursor:
            total += end - start
            cursor = end
        elif end > cursor:
            total += end - cursor
            cursor = end
    return total


def union_seconds(intervals: Iterable[tuple[int, int]]) -> float:
    """The time, in seconds, covered by at least one of the ``(start_ns, end_ns)`` intervals."""
    return union_length(intervals) / 1e9
