"""The ledger's schema and row encoding, shared by its SQLite and PostgreSQL back-ends.

:data:`MIGRATIONS` (SQLite's dialect; ``_postgres`` translates it), :class:`Ledger` (the one
interface both back-ends implement: writing, and reading with ordering and paging), and how a
record becomes a row and back (dicts as JSON text, bools as 0/1, NaN as NULL). Neither back-end
imports the other: ``_open`` chooses between them.
"""

from __future__ import annotations

import abc
import functools
import itertools
import json
import math
import operator
import threading
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Final, Literal, NamedTuple

from gpuledger._errors import LedgerError
from gpuledger._pricing import LEGACY_VERSIONS
from gpuledger._record import FIELD_NAMES, InvocationRecord

_READ_PAGE = 1000
"""Rows fetched per query while reading, so a long read never holds the lock or the file."""
STREAM_BATCH: Final = 5000
"""Rows fetched at a time by ``Ledger._stream``."""

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _where(conditions: Sequence[str]) -> str:
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""


__all__ = [
    "MIGRATIONS",
    "SCHEMA_MIGRATIONS_TABLE",
    "SCHEMA_VERSION",
    "STREAM_BATCH",
    "Ledger",
    "Migration",
    "Usage",
    "WorkerStop",
]

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
    # 4: the billing worker (issue 13): the container a request ran in, its start and ready,
    # start-up done inside a request, and the billing rules frozen when the worker started.
    (
        "ALTER TABLE invocations ADD COLUMN billing_worker TEXT",
        "ALTER TABLE invocations ADD COLUMN worker_start_ns INTEGER",
        "ALTER TABLE invocations ADD COLUMN worker_start_source TEXT",
        "ALTER TABLE invocations ADD COLUMN worker_ready_ns INTEGER",
        "ALTER TABLE invocations ADD COLUMN request_startup_s REAL",
        "ALTER TABLE invocations ADD COLUMN billing_rules TEXT",
    ),
    # 5: observed worker stops (issue 13): when each process of a billing worker stopped, and
    # what said so (``shutdown``: the agent's own, at exit or SIGTERM). A worker whose stop is
    # not here has it inferred from its platform's idle rule.
    (
        """
        CREATE TABLE worker_stops (
            billing_worker TEXT NOT NULL,
            process TEXT NOT NULL,
            stop_ns INTEGER NOT NULL,
            source TEXT NOT NULL,
            PRIMARY KEY (billing_worker, process)
        )
        """,
    ),
    # 6: who wrote the record: NULL, the agent; 'sidecar', the sidecar's stand-in for an
    # invocation that never reported (killed, timeout), which the real record replaces.
    ("ALTER TABLE invocations ADD COLUMN recorded_by TEXT",),
    # 7: the deploy version, the model and GenAI operation a handler serves, and streaming
    # (issue 17): time to a generator handler's first item and how many it yielded.
    (
        "ALTER TABLE invocations ADD COLUMN service_version TEXT",
        "ALTER TABLE invocations ADD COLUMN model TEXT",
        "ALTER TABLE invocations ADD COLUMN operation TEXT",
        "ALTER TABLE invocations ADD COLUMN first_item_s REAL",
        "ALTER TABLE invocations ADD COLUMN items INTEGER",
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


class WorkerStop(NamedTuple):
    """One process of a billing worker stopped: when, and what said so."""

    billing_worker: str
    process: str
    """``host:pid``."""
    stop_ns: int
    source: str


_STOPS_SINCE: Final = 5
"""The schema version that has ``worker_stops``."""


def _stop_sql(parameter: str) -> str:
    """Store a stop, keeping the later one when a process is stopped twice (``configure`` again
    after ``shutdown``)."""
    p = parameter
    return (
        "INSERT INTO worker_stops (billing_worker, process, stop_ns, source) "
        f"VALUES ({p}, {p}, {p}, {p}) ON CONFLICT (billing_worker, process) DO UPDATE SET "
        "stop_ns = CASE WHEN excluded.stop_ns > worker_stops.stop_ns "
        "THEN excluded.stop_ns ELSE worker_stops.stop_ns END, "
        "source = CASE WHEN excluded.stop_ns > worker_stops.stop_ns "
        "THEN excluded.source ELSE worker_stops.source END"
    )


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
    DIALECT: ClassVar[Literal["sqlite", "postgresql"]] = "sqlite"
    """The back-end's SQL dialect, where a query is written differently for each."""

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
        """Store ``records`` in one transaction; return how many rows were written: new ones,
        and stand-ins replaced.

        A record whose ``record_id`` is already stored is skipped, so re-sending a batch never
        counts a record twice; the one exception is a stored stand-in (``recorded_by`` set: the
        sidecar's ``killed``/``timeout`` record of an invocation that never reported), which a
        record not written by the sidecar replaces (see :func:`_insert_sql`). Raises
        :class:`LedgerError` if a record cannot be stored, and then stores none of the batch.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close the file or connection; calling it again does nothing."""

    @abc.abstractmethod
    def _execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """Run one statement over ``rows`` in one transaction (retried as ``write`` is);
        errors become LedgerError."""

    def write_stops(self, stops: Sequence[WorkerStop]) -> None:
        """Store observed worker stops (idempotent: a process's later stop wins)."""
        if stops:
            self._execute_many(_stop_sql(self._PARAMETER), [tuple(stop) for stop in stops])

    def read_stops(self) -> dict[str, int]:
        """Per billing worker, the latest stop observed of its processes (none before schema 5)."""
        if self.schema_version < _STOPS_SINCE:
            return {}
        rows = self._query(
            "SELECT billing_worker, MAX(stop_ns) FROM worker_stops GROUP BY billing_worker", []
        )
        return {str(key): int(stop) for key, stop in rows}

    @abc.abstractmethod
    def _query(self, sql: str, parameters: Sequence[object]) -> list[Any]:
        """All rows of one read-only query, under the lock; errors become LedgerError."""

    @abc.abstractmethod
    def _stream(self, sql: str, parameters: Sequence[object]) -> Iterator[tuple[Any, ...]]:
        """The rows of one read-only query, fetched :data:`STREAM_BATCH` at a time, for reads
        too large to hold (a report over every row): the lock is held while fetching, not
        between batches, so ``_query`` can run while a stream is open. Errors become
        LedgerError."""

    def read_by_id(self, record_ids: Sequence[str]) -> dict[str, InvocationRecord]:
        """The stored records of ``record_ids`` (those that are stored), by record id."""
        found: dict[str, InvocationRecord] = {}
        p = self._PARAMETER
        for start in range(0, len(record_ids), _READ_PAGE):
            chunk = list(record_ids[start : start + _READ_PAGE])
            marks = ", ".join([p] * len(chunk))
            rows = self._query(
                f"SELECT {', '.join(FIELD_NAMES)} FROM invocations WHERE record_id IN ({marks})",
                chunk,
            )
            for row in rows:
                record = _decode(row)
                found[record.record_id] = record
        return found

    def pricing_versions(self, *, since_ns: int | None = None) -> set[str]:
        """The price editions the records (started since ``since_ns``) were priced from."""
        sql = "SELECT DISTINCT pricing_version FROM invocations WHERE pricing_version IS NOT NULL"
        parameters: list[object] = []
        if since_ns is not None:
            sql += f" AND start_ns >= {self._PARAMETER}"
            parameters.append(max(_INT64_MIN, min(since_ns, _INT64_MAX)))
        return {str(version) for (version,) in self._query(sql, parameters)}

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
def _shared_json_indices() -> frozenset[int]:
    return frozenset(i for i, name in enumerate(FIELD_NAMES) if name in _SHARED_JSON)


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
            if not value:  # no tags, no phases: most records; a new empty dict each time
                row[index] = "{}" if isinstance(value, dict) else "[]"
                continue
            last = _last_json.get(index)
            if last is not None and last[0] is value:
                row[index] = last[1]
            else:
                row[index] = text = json.dumps(value, separators=(",", ":"))
                _last_json[index] = (value, text)
    return row


_SHARED_JSON: Final = frozenset({"billing_rules", "gpu_unmeasured"})
"""JSON columns whose text repeats row after row (the same for every record of a worker):
decoded once per distinct text while reading, the records sharing the value (records are
values: treat them as read-only)."""

_last_decoded: dict[int, tuple[str, object]] = {}
_PRICING_VERSION: Final = FIELD_NAMES.index("pricing_version")


def _decode(row: Sequence[Any]) -> InvocationRecord:
    values = list(row)
    shared = _shared_json_indices()
    for index in _indices("json"):
        text = values[index]
        if text is None:
            continue
        if index in shared:
            last = _last_decoded.get(index)
            if last is not None and last[0] == text:
                values[index] = last[1]
                continue
            values[index] = decoded = json.loads(text)
            _last_decoded[index] = (text, decoded)
        else:
            values[index] = json.loads(text)
    for index in _indices("bool"):
        if values[index] is not None:
            values[index] = bool(values[index])
    for index in _indices("nan"):
        if values[index] is None:
            values[index] = math.nan
    version = values[_PRICING_VERSION]
    if version in LEGACY_VERSIONS:
        # Written before editions had names: "2026-03" reads as the edition it became.
        values[_PRICING_VERSION] = LEGACY_VERSIONS[version]
    return InvocationRecord(**dict(zip(FIELD_NAMES, values, strict=True)))


_ON_CONFLICT: Final = (
    "ON CONFLICT (record_id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in FIELD_NAMES if name != "record_id")
    + " WHERE invocations.recorded_by IS NOT NULL AND excluded.recorded_by IS NULL"
)
"""A stored row is kept, unless it is a stand-in and the new one is not (:func:`_insert_sql`).
ON CONFLICT names the key: unlike INSERT OR IGNORE, it does not also drop rows that break a NOT
NULL constraint without a word."""


@functools.cache
def _insert_sql(parameter: str = "?") -> str:
    """The idempotent insert of one row, with the back-end's parameter placeholder.

    A row already stored is kept, unless it is a stand-in (``recorded_by`` not NULL) and the new
    one is not: then every column is replaced, so that an invocation that finished is never left
    recorded as ``killed``. A stand-in never replaces anything, nor a second copy of a record.
    Upsert syntax that SQLite (3.24 and on) and PostgreSQL share.
    """
    columns = ", ".join(FIELD_NAMES)
    placeholders = ", ".join([parameter] * len(FIELD_NAMES))
    return f"INSERT INTO invocations ({columns}) VALUES ({placeholders}) {_ON_CONFLICT}"


_NONES: Final = (None,) * len(FIELD_NAMES)


def _by_shape(rows: Iterable[Sequence[Any]]) -> dict[tuple[bool, ...], list[tuple[Any, ...]]]:
    """Encoded rows grouped by which of their columns are not NULL, each row reduced to those
    values, for :func:`_insert_sql_for`. Python's ``sqlite3`` binds a ``None`` through its
    adapter lookup (two failed attribute lookups, some 0.5 µs each): with most of a record's 54
    columns NULL, that was half the cost of an insert. Left out of the statement, a column is
    NULL all the same (none has a default). A worker's records come in a handful of shapes."""
    groups: dict[tuple[bool, ...], list[tuple[Any, ...]]] = {}
    for row in rows:
        flags = tuple(map(operator.is_not, row, _NONES))
        group = groups.get(flags)
        if group is None:
            groups[flags] = group = []
        group.append(tuple(itertools.compress(row, flags)))
    return groups


@functools.lru_cache(maxsize=256)
def _insert_sql_for(flags: tuple[bool, ...]) -> str:
    """:func:`_insert_sql` (SQLite's placeholder) naming only the columns ``flags`` marks."""
    columns = list(itertools.compress(FIELD_NAMES, flags))
    placeholders = ", ".join("?" * len(columns))
    return f"INSERT INTO invocations ({', '.join(columns)}) VALUES ({placeholders}) {_ON_CONFLICT}"


def _stored_once(records: Sequence[InvocationRecord]) -> list[InvocationRecord]:
    """One record per ``record_id``, as a batch written in order would leave the ledger: the
    first, unless a later one that is not a stand-in replaces a stand-in. PostgreSQL writes a
    batch sorted by ``record_id``, so it needs this to keep what SQLite keeps; SQLite uses it for
    a batch holding a stand-in, so that both count a stand-in and its real record as one row."""
    kept: dict[str, InvocationRecord] = {}
    for record in records:
        first = kept.get(record.record_id)
        if first is None or (first.recorded_by is not None and record.recorded_by is None):
            kept[record.record_id] = record
    return list(kept.values())
