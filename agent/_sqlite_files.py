"""SQLite files that may be damaged: what says so, the read-only check at open, and moving a
damaged file aside. Shared by the sidecar's spool and the SQLite ledger, which both survive a
damaged file the same way: found at open by ``PRAGMA quick_check`` (on a read-only connection,
which never writes the file under inspection), renamed with its -wal and -shm to
``<name>.corrupt-<UTC time>`` (kept for ``sqlite3 .recover``), and replaced by a fresh file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import sqlite3
import time

__all__ = ["is_damage", "is_full", "move_aside", "quick_check"]


def is_damage(error: BaseException) -> bool:
    """Whether ``error`` (or one it was raised from) says a SQLite file is damaged or is not a
    database (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``), as opposed to locked, read-only or full."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlite3.DatabaseError):
            code = getattr(current, "sqlite_errorcode", None)
            if isinstance(code, int) and code & 0xFF in (
                sqlite3.SQLITE_CORRUPT,
                sqlite3.SQLITE_NOTADB,
            ):
                return True
            text = str(current)
            if "malformed" in text or "not a database" in text:
                return True
        current = current.__cause__ or current.__context__
    return False


def is_full(error: BaseException) -> bool:
    """Whether ``error`` says there is no room (``SQLITE_FULL``, ENOSPC)."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF == sqlite3.SQLITE_FULL
    return "disk is full" in str(error)


def quick_check(path: str) -> str | None:
    """Why the SQLite file at ``path`` is damaged (``PRAGMA quick_check``'s first findings, or
    SQLite's error), None when it is sound or absent. Read-only: the file is never written."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    try:
        connection = sqlite3.connect(
            pathlib.Path(path).resolve().as_uri() + "?mode=ro", uri=True, timeout=5.0
        )
    except sqlite3.DatabaseError as error:
        return str(error) if is_damage(error) else None
    try:
        rows = connection.execute("PRAGMA quick_check(3)").fetchall()
    except sqlite3.DatabaseError as error:
        if is_damage(error):
            return str(error)
        raise
    finally:
        connection.close()
    if rows == [("ok",)]:
        return None
    return "; ".join(str(row[0]) for row in rows)


def move_aside(path: str) -> str:
    """Rename ``path`` and its -wal and -shm to ``<path>.corrupt-<UTC timestamp>`` (kept for
    ``sqlite3 .recover``); returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = f"{path}.corrupt-{stamp}"
    number = 1
    while os.path.exists(target):
        number += 1
        target = f"{path}.corrupt-{stamp}-{number}"
    os.rename(path, target)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(path + suffix, target + suffix)
    return target
