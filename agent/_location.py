"""Where a ledger is: parsing its location, and whether it could be written, without SQLite.

Kept apart from ``_ledger`` so that checking a location at configuration (``@traced_handler``
checks the environment's when it decorates, at import) loads no ``sqlite3`` or ``pathlib``:
it lengthens the cold starts gpuledger measures.
"""

from __future__ import annotations

import os
import re
from typing import Final

from gpuledger._errors import ConfigError, LedgerError

__all__ = [
    "MEMORY",
    "check_ledger_location",
    "is_postgres",
    "parse_location",
    "unwritable_reason",
]

MEMORY: Final = ":memory:"
"""SQLite's in-memory database."""
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})


def is_postgres(location: str) -> bool:
    match = _URL_SCHEME.match(location.strip())
    return match is not None and match.group(1).lower() in _POSTGRES_SCHEMES


def parse_location(location: str) -> str:
    """The SQLite file path named by ``location``."""
    text = location.strip()
    if not text:
        raise LedgerError("the ledger location is empty")
    match = _URL_SCHEME.match(text)
    if match is None:
        return text if text == MEMORY else os.path.expanduser(text)
    scheme = match.group(1).lower()
    if scheme != "sqlite":
        raise LedgerError(
            f"unknown ledger location {location!r}: use a file path, sqlite:///path or "
            "postgresql://user@host/database"
        )
    rest = text[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise LedgerError(
            f"cannot read {location!r}: write sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    return os.path.expanduser(rest[1:])


def unwritable_reason(location: str) -> str | None:
    """Why the SQLite ledger at ``location`` could not be created or written; None if it could.

    A cheap look at the file and its folder (no SQLite), for configuration time. None for a
    PostgreSQL ledger, which is checked when it is opened.
    """
    if is_postgres(location):
        return None
    try:
        path = parse_location(location)
    except LedgerError as error:
        return str(error)
    if path == MEMORY:
        return None
    file = os.path.abspath(path)
    folder = os.path.dirname(file)
    if os.path.isdir(file):
        return f"{file} is a directory, not a file"
    if not os.path.exists(folder):
        # A file on the way (/etc/hostname/x.db) makes the folder missing too: say which.
        above = os.path.dirname(folder)
        while not os.path.exists(above) and above != os.path.dirname(above):
            above = os.path.dirname(above)
        if not os.path.isdir(above):
            return f"{above} is not a directory"
        return f"directory {folder!r} does not exist"
    if not os.path.isdir(folder):
        return f"{folder} is not a directory"
    if os.path.exists(file) and not os.access(file, os.R_OK | os.W_OK):
        return f"file {file!r} is not writable"
    if not os.access(folder, os.W_OK | os.X_OK):
        # SQLite creates the file, and its -wal and -shm beside it, in this folder.
        return (
            f"directory {folder!r} is not writable (SQLite writes the ledger and its -wal "
            "and -shm files there)"
        )
    return None


def check_ledger_location(location: str, source: str) -> None:
    """Raise ConfigError if the SQLite ledger at ``location`` could not be created or written,
    so that a ledger that can never be written fails the configuration instead of losing every
    invocation later."""
    reason = unwritable_reason(location)
    if reason is not None:
        raise ConfigError("ledger", location, reason, source)
