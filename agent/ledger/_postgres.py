"""The ledger in PostgreSQL: one database shared by a fleet of workers, sidecars and reports.

Opened by :func:`gpuledger.ledger._sqlite.open_ledger` for a ``postgresql://`` or ``postgres://``
location. It keeps the SQLite ledger's schema, records and behaviour, so that a deployment can
move from a file per worker to one shared database without a second schema to keep in step:

- The schema is :data:`MIGRATIONS` (``_sqlite``), written in SQLite's dialect and translated
  statement by statement by :func:`to_postgres` (64-bit integers, double precision, byte-order
  text). Migrations run in one transaction holding an advisory lock, so that workers opening a new
  database at once migrate it once; a newer schema or a missing column is refused with the SQLite
  ledger's own messages.
- Rows are encoded as for SQLite (dicts as JSON text, bools as 0/1) with one difference that keeps
  reads identical: NaN is stored as NULL, as SQLite does by itself.
- ``write`` is one transaction of the shared upsert (``INSERT ... ON CONFLICT (record_id) DO
  UPDATE ... WHERE``: a stored row is kept unless it is the sidecar's stand-in and the new one is
  not); reading, ordering and paging are the shared :class:`~gpuledger.ledger._sqlite.Ledger`
  code.

psycopg (3) is imported only here, and only when a PostgreSQL ledger is opened: SQLite users need
not install it. The password in a location is never shown: :func:`mask_dsn` replaces it in every
message, and errors from libpq (which can quote a malformed URL) are scrubbed of it too.
"""

from __future__ import annotations

import math
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from gpuledger._errors import LedgerError
from gpuledger._location import mask_secrets
from gpuledger._record import InvocationRecord
from gpuledger.ledger._schema import (
    SCHEMA_MIGRATIONS_TABLE,
    STREAM_BATCH,
    Ledger,
    Migration,
    _check_schema,
    _empty_error,
    _encode,
    _float_indices,
    _indices,
    _insert_sql,
    _stored_once,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["MIGRATION_LOCK", "PostgresLedger", "mask_dsn", "open_postgres", "to_postgres"]

MIGRATION_LOCK: Final = 0x6770_756C_6564_6772
"""The ``pg_advisory_xact_lock`` key migrations hold (the bytes of "gpuledgr"): one constant, so
every gpuledger process that migrates a database takes the same lock."""
CONNECT_TIMEOUT_S: Final = 10
"""libpq's ``connect_timeout`` unless the location sets one: an unreachable host fails the open
in seconds rather than after the operating system's TCP timeout (minutes)."""
APPLICATION_NAME: Final = "gpuledger"
"""``application_name`` unless the location sets one, so that a DBA sees who is connected."""

_RETRIES = 5
"""Further attempts after a deadlock or serialisation failure, which PostgreSQL asks to retry."""
_BACKOFF_S = 0.05
"""First backoff between attempts; doubles each time, jittered, capped at one second."""
_MASK = "***"

_T = TypeVar("_T")

# SQLite's type names -> PostgreSQL's. INTEGER is 64-bit in SQLite (start_ns is ~1.8e18, past
# PostgreSQL's 32-bit integer); REAL is SQLite's 8-byte float. TEXT gets the "C" collation, which
# is SQLite's BINARY: text sorts by code point whatever the database's locale, so that read()'s
# order by (start_ns, record_id) is SQLite's, and comparisons skip the locale's cost.
_TYPES: Final = (
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
)
_SQLITE_ONLY: Final = re.compile(
    r"\b(AUTOINCREMENT|WITHOUT\s+ROWID|PRAGMA|INSERT\s+OR|REPLACE\s+INTO|ATTACH|VACUUM\s+INTO)\b",
    re.IGNORECASE,
)


def to_postgres(statement: str) -> str:
    """``statement``, a migration in SQLite's dialect, in PostgreSQL's.

    The migrations use the portable subset of SQL (CREATE TABLE, ALTER TABLE ADD COLUMN, CREATE
    INDEX) with SQLite's type names in capitals; only the type names differ. A statement using
    something only SQLite has raises :class:`ValueError`, so that a migration that cannot be
    translated fails the tests rather than a fleet's first start.
    """
    unsupported = _SQLITE_ONLY.search(statement)
    if unsupported:
        raise ValueError(
            f"cannot translate {unsupported.group(0)!r} for PostgreSQL in the migration "
            f"{' '.join(statement.split())!r}"
        )
    for pattern, replacement in _TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


# --- the location and its password --------------------------------------------------------------


def mask_dsn(location: str) -> str:
    """``location`` with its password (in the user part or a ``password=`` parameter) masked:
    :func:`gpuledger._location.mask_secrets`, the one masking function, on one location."""
    return mask_secrets(location.strip())


def _is_password_key(key: str) -> bool:
    return urllib.parse.unquote(key).strip().lower() == "password"


def _secrets(location: str) -> tuple[str, ...]:
    """Every spelling of the password in ``location``, to scrub from libpq's messages.

    As written and percent-decoded, and its pieces between ``/``, ``?`` and ``#``: libpq splits a
    malformed URL there and may quote a piece (``invalid port number: "..."``).
    """
    found: set[str] = set()
    before_query, _, query = location.strip().partition("://")[2].partition("?")
    userinfo, at, _ = before_query.rpartition("@")
    if at and ":" in userinfo:
        found.add(userinfo.partition(":")[2])
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if _is_password_key(key):
            found.add(value)
    found |= {urllib.parse.unquote(value) for value in found}
    # Pieces shorter than four characters are left: masking every "x" would garble the message
    # for little gain.
    found |= {piece for value in found for piece in re.split(r"[/?#]", value) if len(piece) >= 4}
    # Longest first, so that a password containing another spelling is masked whole.
    return tuple(sorted((value for value in found if value), key=len, reverse=True))


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` on one line, with every spelling of the password masked."""
    for secret in secrets:
        text = text.replace(secret, _MASK)
    return " ".join(text.split())


# --- opening -------------------------------------------------------------------------------------


def open_postgres(
    location: str, *, create: bool, migrations: Sequence[Migration]
) -> PostgresLedger:
    """Connect to ``location`` and bring its schema to ``migrations`` (tests pass other lists).

    With ``create=False`` a database without the gpuledger schema is refused instead of given one;
    the database itself is never created (that needs rights over the whole server).
    """
    dsn = location.strip()
    path = mask_dsn(dsn)
    connection = _connect(dsn, path)
    try:
        version = _prepare(connection, path, create=create, migrations=migrations)
    except BaseException:
        connection.close()
        raise
    return PostgresLedger(connection, dsn=dsn, path=path, schema_version=version)


def _connect(dsn: str, path: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A new autocommit connection (transactions are explicit), or LedgerError saying why not.

    Errors are raised ``from None``: libpq's message can quote the location, so only the scrubbed
    text travels on, never the original exception.
    """
    try:
        import psycopg  # noqa: PLC0415 - only PostgreSQL users need it
        from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415
    except ImportError as exc:
        raise LedgerError(
            f"the ledger at {path} is a PostgreSQL database, which needs psycopg 3: "
            f"pip install 'gpuledger[postgres]' ({exc})"
        ) from None
    secrets = _secrets(dsn)
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        reason = _scrub(str(exc), secrets)
        raise LedgerError(f"cannot read the ledger location {path}: {reason}") from None
    defaults: dict[str, Any] = {}
    if "connect_timeout" not in given:
        defaults["connect_timeout"] = CONNECT_TIMEOUT_S
    if "application_name" not in given:
        defaults["application_name"] = APPLICATION_NAME
    try:
        return psycopg.connect(dsn, autocommit=True, **defaults)
    except psycopg.Error as exc:
        reason = _scrub(str(exc), secrets)
        raise LedgerError(f"cannot connect to the ledger at {path}: {reason}") from None


def _prepare(
    connection: psycopg.Connection[tuple[Any, ...]],
    path: str,
    *,
    create: bool,
    migrations: Sequence[Migration],
) -> int:
    """Migrate the schema if it is behind, check it, and return its version."""
    import psycopg  # noqa: PLC0415

    newest = len(migrations)
    try:
        version = _schema_version(connection, path)
        if version is None and not create:
            raise _empty_error(path)
        if version is None or version < newest:
            version = _migrate(connection, path, migrations)
        columns = _columns(connection)
    except psycopg.Error as exc:
        raise LedgerError(f"cannot open the ledger at {path}: {_scrub(str(exc), ())}") from exc
    _check_schema(path, version, newest, lambda: columns)
    return version


def _schema_version(connection: psycopg.Connection[tuple[Any, ...]], path: str) -> int | None:
    """The stored schema version, or None where the gpuledger tables do not exist yet.

    Looks in the current schema (the first of the search_path, where CREATE TABLE puts tables).
    Unlike a SQLite file, a database is shared with other applications, so other tables are no
    reason to refuse it; an ``invocations`` table that gpuledger did not make is.
    """
    # A query of pg_class, not to_regclass(): it reads the catalog as of this statement, while
    # to_regclass() may answer from this session's cache, which waiting for an advisory lock does
    # not refresh (a second migrator would then miss the tables the first one just committed).
    # Locking pg_class for the query also refreshes that cache for the statements that follow.
    tables = {
        name
        for (name,) in connection.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() "
            "AND c.relname IN ('schema_migrations', 'invocations')"
        )
    }
    if "schema_migrations" not in tables:
        if "invocations" in tables:
            raise LedgerError(
                f"{path} is not a gpuledger ledger: it has an invocations table but no "
                "schema_migrations (use another database, or a schema of its own via "
                "options=-csearch_path=...)"
            )
        return None
    row = connection.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0) if row is not None else 0


def _migrate(
    connection: psycopg.Connection[tuple[Any, ...]], path: str, migrations: Sequence[Migration]
) -> int:
    """Apply the migrations the ledger lacks, in one transaction holding the migration lock."""
    with connection.transaction():
        # Taken before the version is read: a second process opening the same new database waits
        # here, then finds nothing left to do. DDL is transactional, so a failure leaves nothing.
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        version = _schema_version(connection, path) or 0
        if version == 0:
            connection.execute(to_postgres(SCHEMA_MIGRATIONS_TABLE))
        for number, statements in enumerate(migrations[version:], start=version + 1):
            for statement in statements:
                connection.execute(to_postgres(statement))
            connection.execute(
                "INSERT INTO schema_migrations (version, applied_ns) VALUES (%s, %s)",
                (number, time.time_ns()),
            )
    return max(version, len(migrations))


def _columns(connection: psycopg.Connection[tuple[Any, ...]]) -> set[str]:
    """The ``invocations`` table's columns, in the current schema like :func:`_schema_version`."""
    rows = connection.execute(
        "SELECT a.attname FROM pg_catalog.pg_attribute a "
        "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relname = 'invocations' "
        "AND a.attnum > 0 AND NOT a.attisdropped"
    ).fetchall()
    return {str(name) for (name,) in rows}


# --- the ledger ----------------------------------------------------------------------------------


class PostgresLedger(Ledger):
    """A ledger in a PostgreSQL database, on one connection serialised by the ledger's lock.

    ``location`` and ``path`` are the URL with its password masked; the URL itself is kept
    privately, to reconnect when the connection breaks (a server restart, a proxy's idle
    timeout): a long-lived worker then recovers on its next write instead of failing for good.
    """

    _PARAMETER = "%s"
    DIALECT = "postgresql"

    def __init__(
        self,
        connection: psycopg.Connection[tuple[Any, ...]],
        *,
        dsn: str,
        path: str,
        schema_version: int,
    ) -> None:
        super().__init__(location=path, path=path, schema_version=schema_version)
        self._connection: psycopg.Connection[tuple[Any, ...]] | None = connection
        self._dsn = dsn

    @property
    def _closed(self) -> bool:
        return self._connection is None

    def write(self, records: Sequence[InvocationRecord]) -> int:
        """Store ``records`` in one transaction; return how many rows were written: new ones,
        and stand-ins replaced.

        A record whose ``record_id`` is already stored is skipped, so re-sending a batch never
        counts a record twice, unless the stored one is the sidecar's stand-in and this one is
        not (:meth:`Ledger.write`). Retries a deadlock or serialisation failure with backoff, and
        raises :class:`LedgerError` if a record cannot be stored, storing none of the batch.
        """
        if not records:
            return 0
        # Deduplicated (what SQLite keeps, writing them in order) and sorted by record_id: two
        # writers whose batches overlap then take the rows' locks in the same order and cannot
        # deadlock on each other.
        unique = _stored_once(records)
        rows = [_encode_row(record) for record in sorted(unique, key=_by_record_id)]

        def insert(connection: psycopg.Connection[tuple[Any, ...]]) -> int:
            with connection.transaction(), connection.cursor() as cursor:
                # executemany pipelines the statements: one round trip for the batch. COPY into a
                # temporary table and one INSERT ... SELECT measured about 20% faster (client time
                # and server CPU, batches of 1000), but needs a temporary table per session, which
                # a transaction-pooling proxy (PgBouncer) does not keep; at ~25,000 records/s per
                # connection this is far above what a worker writes.
                cursor.executemany(_insert_sql(self._PARAMETER), rows)
                return max(cursor.rowcount, 0)

        import psycopg  # noqa: PLC0415

        with self._lock:
            try:
                return self._run(insert)
            except psycopg.Error as exc:
                raise LedgerError(
                    f"could not write {len(records)} record(s) to the ledger at {self.path}: "
                    f"{_scrub(str(exc), ())}"
                ) from exc

    def _execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        import psycopg  # noqa: PLC0415

        def run(connection: psycopg.Connection[tuple[Any, ...]]) -> None:
            with connection.transaction(), connection.cursor() as cursor:
                cursor.executemany(sql, rows)

        with self._lock:
            try:
                self._run(run)
            except psycopg.Error as exc:
                raise LedgerError(
                    f"could not write to the ledger at {self.path}: {_scrub(str(exc), ())}"
                ) from exc

    def close(self) -> None:
        """Close the connection; calling it again does nothing."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _query(self, sql: str, parameters: Sequence[object]) -> list[Any]:
        import psycopg  # noqa: PLC0415

        with self._lock:
            try:
                return self._run(lambda connection: connection.execute(sql, parameters).fetchall())
            except psycopg.Error as exc:
                raise LedgerError(
                    f"could not read the ledger at {self.path}: {_scrub(str(exc), ())}"
                ) from exc

    def _stream(self, sql: str, parameters: Sequence[object]) -> Iterator[tuple[Any, ...]]:
        """A server-side cursor in a read-only transaction of its own, fetched a batch at a
        time (``_query`` runs on the same connection, inside that transaction, meanwhile)."""
        import psycopg  # noqa: PLC0415

        with self._lock:
            connection = self._live_connection()
        try:
            with connection.transaction(), connection.cursor(name="gpuledger_stream") as cursor:
                with self._lock:
                    cursor.execute(sql, parameters)
                while True:
                    with self._lock:
                        rows = cursor.fetchmany(STREAM_BATCH)
                    if not rows:
                        return
                    yield from rows
        except psycopg.Error as exc:
            raise LedgerError(
                f"could not read the ledger at {self.path}: {_scrub(str(exc), ())}"
            ) from exc

    def _run(self, action: Callable[[psycopg.Connection[tuple[Any, ...]]], _T]) -> _T:
        """Run ``action`` on the connection (the lock held), retrying what PostgreSQL asks to.

        A deadlock or serialisation failure is retried with jittered exponential backoff; a
        broken connection is reopened and the action run once more. Both are safe because a write
        is idempotent and a read has no effect.
        """
        import psycopg  # noqa: PLC0415

        reconnected = False
        attempt = 0
        while True:
            connection = self._live_connection()
            try:
                return action(connection)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _RETRIES:
                    raise
                delay = min(_BACKOFF_S * 2**attempt, 1.0)
                time.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not secrecy
                attempt += 1
            except psycopg.OperationalError:
                if reconnected or not connection.broken:
                    raise
                reconnected = True

    def _live_connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The open connection, reopened first if it broke; LedgerError once closed."""
        connection = self._connection
        if connection is None:
            raise LedgerError(f"the ledger at {self.path} is closed")
        if connection.broken:
            connection.close()
            self._connection = connection = _connect(self._dsn, self.path)
        return connection


def _by_record_id(record: InvocationRecord) -> str:
    return record.record_id


def _encode_row(record: InvocationRecord) -> list[Any]:
    """The SQLite row, made to store alike in PostgreSQL: bools as the 0/1 that SQLite keeps
    (the columns are BIGINT), and NaN as the NULL that SQLite turns it into."""
    row = _encode(record)
    for index in _indices("bool"):
        value = row[index]
        if value is not None:
            row[index] = int(value)
    for index in _float_indices():
        value = row[index]
        if isinstance(value, float) and math.isnan(value):
            row[index] = None
    return row
