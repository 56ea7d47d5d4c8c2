"""The ledger: every finished invocation, kept in an embedded SQLite file (the record of truth).

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

import abc
import functools
import json
import math
import operator
import os
import pathlib
import random
import sqlite3
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Final, Literal, NamedTuple, TypeVar

from gpuledger._errors import LedgerError
from gpuledger._location import MEMORY as _MEMORY
from gpuledger._location import is_postgres as _is_postgres
from gpuledger._location import parse_location as _parse_location
from gpuledger._record import FIELD_NAMES, InvocationRecord

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
"""Where the ledger lives when nothing says otherwise, relative to the working directory."""
LEDGER_ENV: Final = "GPULEDGER_LEDGER"
"""The environment variable naming the ledger location."""

Migration = tuple[str, ...]
"""One migration: SQL statements applied together, in order, in one transaction."""

MIGRATIONS: Final[tuple[Migration, ...]] = (
    # 1: the invocation record as of gpuledger 0.1. Floats stay nullable even where the record
    # requires them, because SQLite stores NaN as NULL and one NaN must not fail a whole batch.
    (
        """
        CREATE TABLE invocations (
            record_id TEXT NOT NULL PRIMARY KEY,
            invocation_id TEXT NOT NULL,
            handler TEXT NOT NULL,
            service_name TEXT NOT NULL,
            platform TEXT NOT NULL,
            endpoint TEXT,
            worker_id TEXT,
            region TEXT,
            gpu_model TEXT,
            gpu_count INTEGER NOT NULL,
            start_ns INTEGER NOT NULL,
            end_ns INTEGER NOT NULL,
            duration_s REAL,
            outcome TEXT NOT NULL,
            error_type TEXT,
            cold INTEGER NOT NULL,
            init_duration_s REAL,
            init_phases TEXT,
            idle_gap_s REAL,
            billed_gpu_seconds REAL,
            busy_gpu_seconds REAL,
            energy_j REAL,
            peak_gpu_memory_bytes INTEGER,
            external_calls INTEGER,
            external_call_seconds REAL,
            external_wait_seconds REAL,
            user_id TEXT,
            user_id_pseudonymised INTEGER NOT NULL,
            tenant TEXT,
            tags TEXT NOT NULL,
            input_tokens INTEGER,
            output_tokens INTEGER,
            cost_usd REAL,
            cost_execution_usd REAL,
            cost_gpu_usd REAL,
            cost_coldstart_usd REAL,
            pricing_platform TEXT,
            pricing_version TEXT,
            cost_source TEXT
        )
        """,
        # record_id second so that read()'s keyset paging walks the index without sorting.
        "CREATE INDEX invocations_by_start ON invocations (start_ns, record_id)",
        "CREATE INDEX invocations_by_invocation ON invocations (invocation_id)",
        "CREATE INDEX invocations_by_user ON invocations (user_id)",
    ),
    # 2: GPU metering (NVML): where busy time and energy came from, the idle/active split, the
    # GPUs held, and why a GPU field is unknown.
    (
        "ALTER TABLE invocations ADD COLUMN busy_source TEXT",
        "ALTER TABLE invocations ADD COLUMN energy_active_j REAL",
        "ALTER TABLE invocations ADD COLUMN energy_idle_j REAL",
        "ALTER TABLE invocations ADD COLUMN energy_source TEXT",
        "ALTER TABLE invocations ADD COLUMN gpu_uuids TEXT",
        "ALTER TABLE invocations ADD COLUMN gpu_unmeasured TEXT",
    ),
    # 3: outgoing calls: the cost of the wait, and calls and wait per target (JSON).
    (
        "ALTER TABLE invocations ADD COLUMN external_wait_cost_usd REAL",
        "ALTER TABLE invocations ADD COLUMN external_targets TEXT",
    ),
)
"""The schema, as an ordered list: migration ``n`` (1-based) brings a ledger to version ``n``.
Append, never edit: a ledger at version ``n`` has run exactly the first ``n`` entries."""

SCHEMA_VERSION: Final = len(MIGRATIONS)
"""The newest schema version this code knows."""

SCHEMA_MIGRATIONS_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER NOT NULL PRIMARY KEY, applied_ns INTEGER NOT NULL)"
)
"""The bookkeeping table, made by the first migration run (SQLite's dialect, like MIGRATIONS)."""

_BUSY_TIMEOUT_S = 5.0
"""How long SQLite itself waits on a locked file before reporting SQLITE_BUSY."""
_BUSY_RETRIES = 5
"""Further attempts after SQLITE_BUSY, for the cases SQLite's own wait does not cover."""
_BACKOFF_S = 0.05
"""First backoff between attempts; doubles each time, jittered, capped at one second."""
_READ_PAGE = 1000
"""Rows fetched per query while reading, so a long read never holds the lock or the file."""

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_T = TypeVar("_T")


def default_ledger_location() -> str:
    """The ledger location from ``GPULEDGER_LEDGER``, else :data:`DEFAULT_LEDGER`."""
    return os.environ.get(LEDGER_ENV) or DEFAULT_LEDGER


def open_ledger(location: str, *, create: bool = True) -> Ledger:
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
    """
    if _is_postgres(location):
        from gpuledger.ledger._postgres import open_postgres  # noqa: PLC0415 - psycopg only if asked

        return open_postgres(location, create=create, migrations=MIGRATIONS)
    return _open(location, create=create, migrations=MIGRATIONS)


def display_location(location: str) -> str:
    """``location`` as it may be shown or logged: a PostgreSQL URL's password is masked."""
    if _is_postgres(location):
        from gpuledger.ledger._postgres import mask_dsn  # noqa: PLC0415

        return mask_dsn(location)
    return location


class Usage(NamedTuple):
    """The fields of a record that a replay (``gpuledger compare``) reads."""

    start_ns: int
    end_ns: int
    duration_s: float
    input_tokens: int | None
    output_tokens: int | None
    gpu_model: str | None
    gpu_count: int
    init_duration_s: float | None
    cold: bool


class Ledger(abc.ABC):
    """An open ledger, SQLite or PostgreSQL. Use :func:`open_ledger`; close it, or use it as a
    context manager.

    The back-ends differ in how they connect, write and run a query; reading (ordering, paging,
    decoding) is written once here, so that both return the same records in the same order.
    """

    location: str
    """The location as given to :func:`open_ledger` (a PostgreSQL password masked)."""
    path: str
    """What the ledger is, for messages: the SQLite file (``:memory:`` for an in-memory ledger),
    or the PostgreSQL URL with its password masked."""
    schema_version: int
    """The ledger's schema version after opening."""

    _PARAMETER: ClassVar[str] = "?"
    """The back-end's query parameter placeholder."""

    def __init__(self, *, location: str, path: str, schema_version: int) -> None:
        self._lock = threading.Lock()
        self.location = location
        self.path = path
        self.schema_version = schema_version

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"schema {self.schema_version}"
        return f"<Ledger {self.path!r} {state}>"

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    @abc.abstractmethod
    def _closed(self) -> bool:
        """True once :meth:`close` was called."""

    @abc.abstractmethod
    def write(self, records: Sequence[InvocationRecord]) -> int:
        """Store ``records`` in one transaction; return how many were new.

        A record whose ``record_id`` is already stored is skipped, so re-sending a batch never
        counts a record twice. Raises :class:`LedgerError` if a record cannot be stored, and then
        stores none of the batch.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close the file or connection; calling it again does nothing."""

    @abc.abstractmethod
    def _query(self, sql: str, parameters: Sequence[object]) -> list[Any]:
        """All rows of one read-only query, under the lock; errors become LedgerError."""

    def read(
        self, *, since_ns: int | None = None, until_ns: int | None = None
    ) -> Iterator[InvocationRecord]:
        """Yield stored records ordered by ``start_ns`` (then ``record_id``).

        ``since_ns`` is inclusive and ``until_ns`` exclusive, both Unix nanoseconds. Records
        are fetched a page at a time, so reading a large ledger needs little memory and does not
        block writers between pages.
        """
        for row in self._rows(FIELD_NAMES, since_ns, until_ns):
            yield _decode(row)

    def read_usage(
        self, *, since_ns: int | None = None, until_ns: int | None = None
    ) -> Iterator[Usage]:
        """Like :meth:`read`, but only the fields a replay needs (``Usage``): ten times faster
        than building whole records, which matters for ``compare`` over millions of rows."""
        for row in self._rows(Usage._fields, since_ns, until_ns):
            yield Usage._make((*row[:-1], bool(row[-1])))

    def _rows(
        self, names: Sequence[str], since_ns: int | None, until_ns: int | None
    ) -> Iterator[tuple[Any, ...]]:
        # Both back-ends store 64-bit integers; a bound beyond them (the year 2300 on) excludes
        # everything or nothing rather than overflowing.
        if (since_ns is not None and since_ns > _INT64_MAX) or (
            until_ns is not None and until_ns <= _INT64_MIN
        ):
            return
        p = self._PARAMETER
        bounds: list[str] = []
        bound_values: list[int] = []
        if since_ns is not None and since_ns > _INT64_MIN:
            bounds.append(f"start_ns >= {p}")
            bound_values.append(since_ns)
        if until_ns is not None and until_ns <= _INT64_MAX:
            bounds.append(f"start_ns < {p}")
            bound_values.append(until_ns)
        # The paging key rides along at the end of each row.
        columns = ", ".join([*names, "start_ns", "record_id"])
        after_last = f"(start_ns, record_id) > ({p}, {p})"
        order = f" ORDER BY start_ns, record_id LIMIT {_READ_PAGE}"
        first_page = f"SELECT {columns} FROM invocations {_where(bounds)}{order}"
        next_page = f"SELECT {columns} FROM invocations {_where([*bounds, after_last])}{order}"
        last: tuple[int, str] | None = None
        while True:
            if last is None:
                page = self._query(first_page, bound_values)
            else:
                page = self._query(next_page, [*bound_values, *last])
            for row in page:
                yield row[:-2]
            if len(page) < _READ_PAGE:
                return
            last = (page[-1][-2], page[-1][-1])

    def count(self, *, service_name_not: str | None = None) -> int:
        """The number of records stored (those of other services than ``service_name_not``)."""
        if service_name_not is None:
            (total,) = self._query("SELECT COUNT(*) FROM invocations", [])[0]
        else:
            (total,) = self._query(
                "SELECT COUNT(*) FROM invocations "
                f"WHERE service_name IS NULL OR service_name <> {self._PARAMETER}",
                [service_name_not],
            )[0]
        return int(total)


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
        """Store ``records`` in one transaction; return how many were new.

        A record whose ``record_id`` is already stored is skipped, so re-sending a batch never
        counts a record twice. Waits and retries while other processes hold the file, and raises
        :class:`LedgerError` if it stays locked or a record cannot be stored.
        """
        if not records:
            return 0
        rows = [_encode(record) for record in records]
        with self._lock:
            connection = self._require_open()

            def insert() -> int:
                before = connection.total_changes
                connection.execute("BEGIN IMMEDIATE")
                try:
                    connection.executemany(_insert_sql(), rows)
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
                    f"could not write {len(rows)} record(s) to the ledger at {self.path}: {exc}"
                ) from exc

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


def _empty_error(path: str) -> LedgerError:
    """Opening without ``create`` found no schema (both back-ends say it alike)."""
    return LedgerError(f"the ledger at {path} is empty: it has no gpuledger schema yet")


def _check_schema(path: str, version: int, newest: int, columns: Callable[[], set[str]]) -> None:
    """Refuse a ledger this code must not write: a newer schema, or a column missing.

    Shared by both back-ends so that they refuse alike; ``columns`` is asked only when the version
    is readable, and returns the ``invocations`` table's column names.
    """
    if version > newest:
        raise LedgerError(
            f"the ledger at {path} has schema version {version}, newer than this gpuledger "
            f"knows ({newest}): upgrade gpuledger to read it"
        )
    missing = set(FIELD_NAMES) - columns()
    if missing:
        raise LedgerError(
            f"the ledger at {path} (schema version {version}) lacks the column(s) "
            f"{', '.join(sorted(missing))}: a field was added to InvocationRecord without a "
            "migration"
        )


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


def _where(conditions: Sequence[str]) -> str:
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""


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


# --- rows <-> records ----------------------------------------------------------------------------

_Kind = Literal["plain", "bool", "json", "nan"]


@functools.cache
def _field_kinds() -> tuple[_Kind, ...]:
    """How each field is stored, in :data:`FIELD_NAMES` order, read from the type hints."""
    hints = typing.get_type_hints(InvocationRecord)
    kinds: list[_Kind] = []
    for name in FIELD_NAMES:
        hint = hints[name]
        base = _strip_optional(hint)
        if base is bool:
            kinds.append("bool")
        elif typing.get_origin(base) is dict or base is dict:
            kinds.append("json")
        elif hint is float:
            # SQLite stores NaN as NULL; a required float comes back as the NaN it was.
            kinds.append("nan")
        else:
            kinds.append("plain")
    return tuple(kinds)


def _strip_optional(hint: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


@functools.cache
def _indices(kind: _Kind) -> tuple[int, ...]:
    return tuple(i for i, each in enumerate(_field_kinds()) if each == kind)


@functools.cache
def _float_indices() -> tuple[int, ...]:
    """Every float field, required or optional: where a back-end that keeps NaN must store NULL
    instead, to read back as SQLite does (NaN for a required float, None for an optional one)."""
    hints = typing.get_type_hints(InvocationRecord)
    return tuple(i for i, name in enumerate(FIELD_NAMES) if _strip_optional(hints[name]) is float)


_getter: Final = operator.attrgetter(*FIELD_NAMES)


_last_json: dict[int, tuple[object, str]] = {}
"""Per JSON column, the last object encoded and its text: records are values, and a worker's
records share one ``gpu_unmeasured`` dict while it has no GPU, so most rows re-use the text."""


def _encode(record: InvocationRecord) -> list[Any]:
    """The row for ``record``: dicts become JSON text; sqlite3 stores bools as 0/1 itself."""
    row = list(_getter(record))
    for index in _indices("json"):
        value = row[index]
        if value is not None:
            last = _last_json.get(index)
            if last is not None and last[0] is value:
                row[index] = last[1]
            else:
                row[index] = text = json.dumps(value, separators=(",", ":"))
                _last_json[index] = (value, text)
    return row


def _decode(row: Sequence[Any]) -> InvocationRecord:
    values = list(row)
    for index in _indices("json"):
        if values[index] is not None:
            values[index] = json.loads(values[index])
    for index in _indices("bool"):
        if values[index] is not None:
            values[index] = bool(values[index])
    for index in _indices("nan"):
        if values[index] is None:
            values[index] = math.nan
    return InvocationRecord(**dict(zip(FIELD_NAMES, values, strict=True)))


@functools.cache
def _insert_sql(parameter: str = "?") -> str:
    """The idempotent insert of one row, with the back-end's parameter placeholder."""
    columns = ", ".join(FIELD_NAMES)
    placeholders = ", ".join([parameter] * len(FIELD_NAMES))
    # ON CONFLICT names the key: unlike INSERT OR IGNORE, it does not also drop rows that break
    # a NOT NULL constraint without a word.
    return (
        f"INSERT INTO invocations ({columns}) VALUES ({placeholders}) "
        "ON CONFLICT (record_id) DO NOTHING"
    )
