"""The SQLite ledger: every finished invocation, in an embedded file (the record of truth).

A ``postgresql://`` (or ``postgres://``) location opens a shared PostgreSQL ledger instead (see
``_ledger_pg``), so that a fleet of workers and ``gpuledger report`` use one database. Both
back-ends share this module's schema (:data:`MIGRATIONS`, written in SQLite's dialect and translated
for PostgreSQL), its row encoding and its read paging, so they store and return the same records.

One table, ``invocations``, holds one row per :class:`InvocationRecord` and one column per field
(dicts as JSON text, bools as INTEGER 0/1). ``schema_migrations`` holds one row per applied
migration; the schema version is the highest. The column list for reading and writing is derived
from the dataclass, while the schema is built only by :data:`MIGRATIONS`: a field added to the
record needs a new migration, and :func:`open_ledger` refuses a ledger that lacks a column.

Several processes (workers, the sidecar, ``gpuledger report``) may share one file: it runs in WAL
mode, every write is one ``BEGIN IMMEDIATE`` transaction that retries on ``SQLITE_BUSY`` with
bounded backoff, and migrations run inside such a transaction so that two processes opening a new
file at once do not both migrate it. A :class:`Ledger` may be opened on one thread and written from
another (the background writer); its calls are serialised by a lock.

Needs SQLite 3.24 or newer (upsert syntax), which every supported Python ships.
"""

from __future__ import annotations

import os
import pathlib
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TypeVar

from gpuledger._errors import LedgerError
from gpuledger._location import MEMORY as _MEMORY
from gpuledger._location import is_postgres as _is_postgres
from gpuledger._location import parse_location as _parse_location
from gpuledger._location import private_file
from gpuledger._record import InvocationRecord
from gpuledger._settings import resolve_setting
from gpuledger._sqlite_files import move_aside, quick_check
from gpuledger.ledger._schema import (
    MIGRATIONS,
    SCHEMA_MIGRATIONS_TABLE,
    SCHEMA_VERSION,
    STREAM_BATCH,
    Ledger,
    Migration,
    Usage,
    _by_shape,
    _check_schema,
    _empty_error,
    _encode,
    _insert_sql_for,
    _stored_once,
)

__all__ = [
    "DEFAULT_LEDGER",
    "LEDGER_ENV",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Ledger",
    "SqliteLedger",
    "Usage",
    "default_ledger_location",
    "display_location",
    "open_ledger",
]

DEFAULT_LEDGER: Final = "gpuledger.db"
"""Where the ledger lives when nothing says otherwise, relative to the working directory (the
``ledger`` row of the settings table has the same default; a test keeps them equal)."""
LEDGER_ENV: Final = "GPULEDGER_LEDGER"
"""The environment variable naming the ledger location."""

_BUSY_TIMEOUT_S = 5.0
"""How long SQLite itself waits on a locked file before reporting SQLITE_BUSY."""
_BUSY_RETRIES = 5
"""Further attempts after SQLITE_BUSY, for the cases SQLite's own wait does not cover."""
_BACKOFF_S = 0.05
"""First backoff between attempts; doubles each time, jittered, capped at one second."""
_T = TypeVar("_T")


def default_ledger_location() -> str:
    """The ``ledger`` setting given no argument: ``GPULEDGER_LEDGER``, else the settings file,
    else :data:`DEFAULT_LEDGER`. Raises ConfigError for a bad value or settings file."""
    location: str = resolve_setting("ledger")[0]
    return location


def open_ledger(
    location: str,
    *,
    create: bool = True,
    on_damaged: Callable[[str, str], None] | None = None,
) -> Ledger:
    """Open the ledger at ``location``, bringing its schema up to date.

    ``location`` is a file path or a URL: ``sqlite:///relative/path.db`` or
    ``sqlite:////absolute/path.db`` (SQLAlchemy's spelling), or ``postgresql://`` /
    ``postgres://`` for a PostgreSQL database (libpq's URL: user, password, host, port, database
    and query parameters such as ``sslmode``; needs ``pip install 'gpuledger[postgres]'``).
    With ``create=False`` a missing file, or a database without the gpuledger schema, raises
    :class:`LedgerError` instead of being created; with ``create=True`` missing folders are made
    too (a PostgreSQL database must exist: only its tables are made). A ledger at an older schema
    version is migrated forward either way. Raises :class:`LedgerError` when the file is not a
    SQLite database, the server cannot be reached or refuses the login, the database holds
    something other than the gpuledger schema, or it was written by a newer gpuledger.

    ``on_damaged`` (the sidecar's): a SQLite file that fails ``PRAGMA quick_check`` (read-only,
    it reads every page: about 0.1 s per 100 MB) or is not a database is moved aside to
    ``<path>.corrupt-<UTC timestamp>`` (with its -wal and -shm), ``on_damaged(moved_to, reason)``
    is called, and a fresh ledger is started. Without it, nothing is checked or moved.
    """
    if _is_postgres(location):
        from gpuledger.ledger._postgres import open_postgres  # noqa: PLC0415 - psycopg only if asked

        return open_postgres(location, create=create, migrations=MIGRATIONS)
    if on_damaged is not None and create:
        _set_aside_if_damaged(_parse_location(location), on_damaged)
    return _open(location, create=create, migrations=MIGRATIONS)


def display_location(location: str) -> str:
    """``location`` as it may be shown or logged: a PostgreSQL URL's password is masked."""
    if _is_postgres(location):
        from gpuledger.ledger._postgres import mask_dsn  # noqa: PLC0415

        return mask_dsn(location)
    return location


class SqliteLedger(Ledger):
    """A ledger in a SQLite file: WAL mode, ``BEGIN IMMEDIATE`` writes retried while busy."""

    def __init__(
        self, connection: sqlite3.Connection, *, location: str, path: str, schema_version: int
    ) -> None:
        super().__init__(location=location, path=path, schema_version=schema_version)
        self._connection: sqlite3.Connection | None = connection

    @property
    def _closed(self) -> bool:
        return self._connection is None

    def write(self, records: Sequence[InvocationRecord]) -> int:
        """Store ``records`` in one transaction; return how many rows were written: new ones,
        and stand-ins replaced.

        A record whose ``record_id`` is already stored is skipped, so re-sending a batch never
        counts a record twice, unless the stored one is the sidecar's stand-in and this one is
        not (:meth:`Ledger.write`). Waits and retries while other processes hold the file, and
        raises :class:`LedgerError` if it stays locked or a record cannot be stored.
        """
        if not records:
            return 0
        if any(record.recorded_by is not None for record in records):
            # A stand-in and its real record in one batch: one row written, as in PostgreSQL
            # (a worker's own ledger never sees a stand-in, and skips this).
            records = _stored_once(records)
        shapes = _by_shape(map(_encode, records))
        with self._lock:
            connection = self._require_open()

            def insert() -> int:
                before = connection.total_changes
                connection.execute("BEGIN IMMEDIATE")
                try:
                    for flags, rows in shapes.items():
                        connection.executemany(_insert_sql_for(flags), rows)
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
                return connection.total_changes - before

            try:
                return _retry_busy(insert)
            except sqlite3.Error as exc:
                raise LedgerError(
                    f"could not write {len(records)} record(s) to the ledger at {self.path}: {exc}"
                ) from exc

    def _execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with self._lock:
            connection = self._require_open()

            def run() -> None:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    connection.executemany(sql, rows)
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise

            try:
                _retry_busy(run)
            except sqlite3.Error as exc:
                raise LedgerError(f"could not write to the ledger at {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the file; calling it again does nothing."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _require_open(self) -> sqlite3.Connection:
        if self._connection is None:
            raise LedgerError(f"the ledger at {self.path} is closed")
        return self._connection

    def _query(self, sql: str, parameters: Sequence[object]) -> list[Any]:
        with self._lock:
            connection = self._require_open()
            try:
                return _retry_busy(lambda: connection.execute(sql, parameters).fetchall())
            except sqlite3.Error as exc:
                raise LedgerError(f"could not read the ledger at {self.path}: {exc}") from exc

    def _stream(self, sql: str, parameters: Sequence[object]) -> Iterator[tuple[Any, ...]]:
        with self._lock:
            connection = self._require_open()
            try:
                cursor = _retry_busy(lambda: connection.execute(sql, parameters))
            except sqlite3.Error as exc:
                raise LedgerError(f"could not read the ledger at {self.path}: {exc}") from exc
        try:
            while True:
                with self._lock:
                    self._require_open()
                    try:
                        rows = cursor.fetchmany(STREAM_BATCH)
                    except sqlite3.Error as exc:
                        raise LedgerError(
                            f"could not read the ledger at {self.path}: {exc}"
                        ) from exc
                if not rows:
                    return
                yield from rows
        finally:
            cursor.close()


# --- opening -------------------------------------------------------------------------------------


def _open(location: str, *, create: bool, migrations: Sequence[Migration]) -> SqliteLedger:
    """Open ``location`` against an explicit migration list (tests pass a longer one)."""
    path = _parse_location(location)
    uri = False
    target = path
    if path != _MEMORY:
        if os.path.isdir(path):
            raise LedgerError(f"the ledger location {path} is a directory, not a file")
        if not create:
            if not os.path.exists(path):
                raise LedgerError(
                    f"no ledger at {path} (give the ledger's location, or set {LEDGER_ENV})"
                )
            # mode=rw: never create the file, even if it vanishes after the check above.
            target = pathlib.Path(path).resolve().as_uri() + "?mode=rw"
            uri = True
            if not _writable(path):
                return _open_read_only(location, path, migrations)
        else:
            parent = os.path.dirname(os.path.abspath(path))
            try:
                private_file(path)  # 0600 (and new folders 0700) before SQLite creates it
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise LedgerError(f"cannot create the ledger's folder {parent}: {exc}") from exc
    try:
        connection = sqlite3.connect(
            target,
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
            check_same_thread=False,  # the Ledger's lock serialises use across threads
            uri=uri,
        )
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the ledger at {path}: {exc}") from exc
    try:
        version = _prepare(connection, path, create=create, migrations=migrations)
    except BaseException:
        connection.close()
        raise
    return SqliteLedger(connection, location=location, path=path, schema_version=version)


def _set_aside_if_damaged(path: str, on_damaged: Callable[[str, str], None]) -> None:
    """Move ``path`` aside if it is damaged (see :func:`open_ledger`'s ``on_damaged``)."""
    if path == _MEMORY or not os.path.isfile(path):
        return
    try:
        reason = quick_check(path)
    except sqlite3.DatabaseError:
        return  # a problem that is not damage (locked, unreadable): opening says what
    if reason is None:
        return
    try:
        target = move_aside(path)
    except OSError as exc:
        raise LedgerError(
            f"the ledger at {path} is damaged ({reason}) and cannot be moved aside: {exc}"
        ) from exc
    on_damaged(target, reason)


def _writable(path: str) -> bool:
    """Whether SQLite could write ``path``: the file, and its folder for the -wal and -shm."""
    folder = os.path.dirname(os.path.abspath(path))
    return os.access(path, os.W_OK) and os.access(folder, os.W_OK | os.X_OK)


def _open_read_only(location: str, path: str, migrations: Sequence[Migration]) -> SqliteLedger:
    """Open a ledger this process cannot write (a read-only folder or file), to read it.

    A WAL database normally needs its -shm file, which SQLite cannot create in a read-only
    folder. With no -wal content there is nothing beyond the main file to read, and
    ``immutable=1`` reads it without the side files; with -wal content (or a -shm already
    there), ``mode=ro`` reads through them, as SQLite allows since 3.22.
    """
    uri = pathlib.Path(path).resolve().as_uri()
    wal = f"{path}-wal"
    has_wal = os.path.exists(f"{path}-shm") or (os.path.exists(wal) and os.path.getsize(wal) > 0)
    target = f"{uri}?mode=ro" if has_wal else f"{uri}?mode=ro&immutable=1"
    try:
        connection = sqlite3.connect(
            target, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False, uri=True
        )
        connection.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        version = _schema_version(connection, path)
    except sqlite3.DatabaseError as exc:
        raise LedgerError(
            f"cannot read the ledger at {path}: it is read-only for this user and SQLite "
            f"could not open it read-only ({exc})"
        ) from exc
    newest = len(migrations)
    if version is None:
        connection.close()
        raise _empty_error(path)
    if version < newest:
        connection.close()
        raise LedgerError(
            f"the ledger at {path} is read-only for this user and at schema version {version}; "
            f"this gpuledger reads version {newest}: open it once where it can be written "
            "(any gpuledger command) to migrate it"
        )
    _check_schema(path, version, newest, lambda: _columns(connection))
    return SqliteLedger(connection, location=location, path=path, schema_version=version)


def _prepare(
    connection: sqlite3.Connection, path: str, *, create: bool, migrations: Sequence[Migration]
) -> int:
    """Set the connection up and migrate the schema; return the schema version."""
    newest = len(migrations)
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        if create:
            # WAL lets readers and one writer share the file; the setting persists in the file.
            _retry_busy(lambda: connection.execute("PRAGMA journal_mode = WAL").fetchall())
        # NORMAL is durable against a crash of the process, which is what a worker dies of.
        connection.execute("PRAGMA synchronous = NORMAL")
        version = _retry_busy(lambda: _schema_version(connection, path))
        if version is None and not create:
            raise _empty_error(path)
        if version is None or version < newest:
            version = _retry_busy(lambda: _migrate(connection, path, migrations))
    except sqlite3.DatabaseError as exc:
        raise _open_error(path, exc) from exc
    _check_schema(path, version, newest, lambda: _columns(connection))
    return version


def _open_error(path: str, exc: sqlite3.DatabaseError) -> LedgerError:
    """A LedgerError saying in words why SQLite could not open ``path``."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT) or (
        primary is None and "not a database" in str(exc)
    ):
        return LedgerError(
            f"{path} is not a gpuledger ledger: it is not a SQLite database, or a damaged one "
            f"({exc})"
        )
    if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
        return LedgerError(f"the ledger at {path} stayed locked by another process ({exc})")
    return LedgerError(f"cannot open the ledger at {path}: {exc}")


def _schema_version(connection: sqlite3.Connection, path: str) -> int | None:
    """The stored schema version, or None for a database with no tables at all."""
    tables = {
        name
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    if "schema_migrations" not in tables:
        if tables:
            raise LedgerError(
                f"{path} is a SQLite database but not a gpuledger ledger "
                f"(it has the table(s) {', '.join(sorted(tables))} and no schema_migrations)"
            )
        return None
    (version,) = connection.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(version or 0)


def _migrate(connection: sqlite3.Connection, path: str, migrations: Sequence[Migration]) -> int:
    """Apply the migrations the ledger lacks in one ``BEGIN IMMEDIATE`` transaction."""
    # The write lock is taken before the version is read, so a second process opening the same
    # new file waits here and then finds nothing left to do.
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = _schema_version(connection, path) or 0
        if version == 0:
            connection.execute(SCHEMA_MIGRATIONS_TABLE)
        for number, statements in enumerate(migrations[version:], start=version + 1):
            for statement in statements:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_migrations (version, applied_ns) VALUES (?, ?)",
                (number, time.time_ns()),
            )
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return max(version, len(migrations))


def _columns(connection: sqlite3.Connection) -> set[str]:
    return {row[1] for row in connection.execute("PRAGMA table_info(invocations)")}


def _retry_busy(action: Callable[[], _T]) -> _T:
    """Run ``action``, retrying with jittered exponential backoff while the file is locked."""
    for attempt in range(_BUSY_RETRIES + 1):
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if attempt == _BUSY_RETRIES or not _is_busy(exc):
                raise
            delay = min(_BACKOFF_S * 2**attempt, 1.0)
            time.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not secrecy
    raise AssertionError("unreachable")  # pragma: no cover


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        # Extended codes (SQLITE_BUSY_SNAPSHOT, ...) keep the primary code in the low byte.
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)
