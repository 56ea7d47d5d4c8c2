"""The sidecar: a process beside serverless workers that records every invocation exactly once.

Workers are frozen or killed without warning, and collectors go down. The in-process agent (with
``GPULEDGER_SIDECAR`` set) POSTs each finished record, and each invocation's start, to the
sidecar on loopback; the sidecar answers only once they are committed to its spool on disk, then
delivers them, at its own pace, to the ledger and to an OTLP receiver. ::

    worker ──POST /v1/records, /v1/starts──▶ receiver ──one transaction──▶ spool (SQLite, WAL)
                                                                            │  seq order, a
                          watcher: start notices whose pid died or          │  cursor each
                          whose timeout passed become killed/timeout ───────┤
                                                                            ├─▶ ledger writer
                                                                            └─▶ OTLP exporter

**The API** (JSON bodies, ``Content-Type: application/json``; errors are ``{"error": "..."}``
saying what is wrong and where, e.g. ``records[3].start_ns: expected an integer, got a string``):

- ``POST /v1/records`` ``{"records": [InvocationRecord.to_dict(), ...]}`` -> 200
  ``{"accepted": n, "duplicates": d}`` once committed; 400 (nothing of the request is kept), 401,
  411, 413 (answered from the headers), 415, 503 (the spool cannot be written, or stopping).
- ``POST /v1/starts`` ``{"starts": [{"record_id", "invocation_id", "handler", "start_ns", "pid",
  "service_name", "platform", and optionally "endpoint", "worker_id", "region", "gpu_model",
  "gpu_count", "timeout_s", "user_id", "user_id_pseudonymised", "tenant"}, ...]}`` -> the same.
- ``GET /healthz`` -> 200 ``{"status": "ok", "spooled", "pending_export", "pending_ledger",
  "open_invocations"}``, or 503 with a ``reason`` while the spool cannot be written. No token.
- ``GET /metrics`` -> the Prometheus text format (``gpuledger_sidecar_*``).

With a token, every path but ``/healthz`` needs ``Authorization: Bearer <token>`` (compared in
constant time); without one the sidecar refuses to listen beyond loopback.

**The spool** (:class:`Spool`) is one SQLite file in WAL mode: ``records`` (``seq`` AUTOINCREMENT,
so a deleted row's number is never reused and no cursor can skip a row), ``starts`` (invocations
that began and have no record yet), ``cursors`` (how far each consumer got) and ``delivered``
(the ids of records delivered and deleted, kept for ``dedupe_window_s`` so that a record arriving
late, after its row is gone, is still a duplicate). Each request is one transaction; a record whose
``record_id`` is spooled or delivered already is counted as a duplicate and not stored again.
``synchronous=NORMAL`` makes a commit survive the process being killed (what kills workers and
sidecars); surviving the machine losing power needs ``synchronous="full"``, an fsync per commit.

**The consumers** read the spool in ``seq`` order, each from its own cursor, and advance it only
after their sink took the batch: the ledger writer (``open_ledger(location).write``, which skips
records it has) and, when an OTLP endpoint is configured, the exporter (:func:`record_to_span`
spans, ids derived from ``record_id``, then the invocation metrics). A failed batch is retried,
the same batch, after a jittered backoff from ``backoff_s[0]`` doubling to ``backoff_s[1]``. Rows
every active consumer has passed are deleted. So the ledger gets every record once; the OTLP
receiver gets every span at least once, with the same ids each time (a crash between an export and
its cursor's commit sends the batch again).

**The watcher** looks at the open starts every ``watch_interval_s``. The sidecar must share the
workers' PID namespace (the same container, or ``pid: service:<worker>``): a start whose ``pid``
is gone (no such process, a zombie, or the pid reused by a process that started later) and whose
record has not arrived ``grace_s`` later becomes a record with outcome ``killed``, ending when the
pid was found gone; a start older than its ``timeout_s`` (plus the grace) becomes ``timeout``,
ending at the timeout, even while the pid lives. Both are priced from the catalogue and spooled
under the start's ``record_id``, so the real record, should it come after all, is a duplicate.

**Stopping** (:meth:`Sidecar.stop`): the listener closes, requests in flight finish, the consumers
get up to the drain timeout to empty the spool, and what is left stays in the spool for the next
start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hmac
import ipaddress
import json
import math
import os
import random
import socket
import socketserver
import sqlite3
import threading
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Protocol

from gpuledger import _guard
from gpuledger._errors import ConfigError, SidecarError
from gpuledger._logging import get_logger
from gpuledger._process import process_alive, process_start
from gpuledger._record import InvocationRecord

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT_S",
    "DEFAULT_GRACE_S",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_BODY",
    "DEFAULT_SPOOL",
    "TOKEN_ENV",
    "Invalid",
    "OtlpTarget",
    "Sidecar",
    "SidecarError",
    "Spool",
    "parse_json",
    "parse_listen",
    "parse_records",
    "parse_starts",
    "process_alive",
    "process_start",
    "resolve_otlp",
]

DEFAULT_LISTEN: Final = "127.0.0.1:4319"
DEFAULT_SPOOL: Final = "gpuledger-spool.db"
DEFAULT_MAX_BODY: Final = 16 * 1024 * 1024
"""Largest request body accepted, in bytes (16 MiB: some 12,000 records)."""
DEFAULT_GRACE_S: Final = 2.0
"""How long after its pid is gone a start waits for its record (the agent flushes at exit)."""
DEFAULT_DRAIN_TIMEOUT_S: Final = 10.0
DEFAULT_DEDUPE_WINDOW_S: Final = 3600.0
"""How long the id of a delivered (and deleted) record is remembered to catch late duplicates."""
TOKEN_ENV: Final = "GPULEDGER_SIDECAR_TOKEN"  # noqa: S105 - a variable name, not a secret

_BATCH_RECORDS: Final = 512
"""Records per delivery: the SDK's batch span processor exports 512 spans at a time too."""
_IDLE_WAIT_S: Final = 1.0
"""A consumer with nothing to do looks again after this long even if nobody woke it."""
DEFAULT_LINGER_S: Final = 0.2
"""Woken after being idle, a consumer waits this long for more records before delivering: one
export of a hundred records costs little more than one of a single record (the SDK's batch
span processor waits 5 s)."""
_MIN_SPOOL_BYTES: Final = 64 * 1024
_MAX_ID_CHARS: Final = 256
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_MAX_PID: Final = 2**31 - 1
_REQUEST_TIMEOUT_S: Final = 30.0
"""A connection that sends nothing for this long is closed (slow or idle clients)."""
_SYNCHRONOUS: Final = ("normal", "full")


class Clock(Protocol):
    """Wall time (Unix ns): ``time`` itself, or a test's controllable clock."""

    def time_ns(self) -> int: ...


# --- validation ------------------------------------------------------------------------------


class Invalid(ValueError):
    """A request body that cannot be taken; the message says what is wrong and where."""


class _Bad(Exception):
    """A value's problem, raised by a check; ``path`` is where below the field (``.key``).

    Checks say where only when something is wrong: building ``records[3].start_ns`` for every
    field of every record would cost more than checking it."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


_Check = Callable[[object], object]
_ABSENT: Final = object()


def _describe(value: object) -> str:
    """A JSON value's kind in words, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _text(value: object) -> str:
    if type(value) is not str:
        raise _Bad(f"expected a string, got {_describe(value)}")
    if "\x00" in value:
        # SQLite would keep it; PostgreSQL ledgers refuse it, and one such row would stall them.
        raise _Bad("contains a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Bad("not valid Unicode (a lone surrogate escape)") from None
    return value


def _integer(value: object) -> int:
    if type(value) is not int:
        raise _Bad(f"expected an integer, got {_describe(value)}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise _Bad("integer out of range (64-bit signed)")
    return value


def _number(value: object) -> int | float:
    """A finite number, kept as given (an integer stays one)."""
    if type(value) is float:
        if not math.isfinite(value):
            raise _Bad("expected a finite number")
        return value
    if type(value) is int:
        return _integer(value)
    raise _Bad(f"expected a number, got {_describe(value)}")


def _real(value: object) -> float:
    return float(_number(value))


def _boolean(value: object) -> bool:
    if type(value) is not bool:
        raise _Bad(f"expected true or false, got {_describe(value)}")
    return value


def _mapping(value_check: _Check) -> _Check:
    def mapping(value: object) -> dict[str, object]:
        if type(value) is not dict:
            raise _Bad(f"expected an object, got {_describe(value)}")
        result: dict[str, object] = {}
        for key, item in value.items():
            try:
                _text(key)
            except _Bad as bad:
                raise _Bad(bad.message, " (a key)") from None
            try:
                result[key] = value_check(item)
            except _Bad as bad:
                raise _Bad(bad.message, f".{key}{bad.path}") from None
        return result

    return mapping


def _choice(options: tuple[str, ...]) -> _Check:
    def choice(value: object) -> str:
        if type(value) is not str or value not in options:
            raise _Bad(f"expected one of {', '.join(options)}")
        return value

    return choice


_Field = tuple[str, bool, bool, _Check]
"""``(name, required, nullable, check)``: how one field of a body is checked."""


def _check_for(hint: Any, *, nested: bool = False) -> tuple[bool, _Check]:
    """``(nullable, check)`` of one ``InvocationRecord`` field, from its type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return True, _check_for(args[0], nested=nested)[1]
    if origin is typing.Literal:
        return False, _choice(tuple(typing.get_args(hint)))
    if origin is dict:
        _key, value = typing.get_args(hint)
        nullable, check = _check_for(value, nested=True)
        if nullable:  # pragma: no cover - no record field has dict values that may be null
            raise TypeError(f"no check for {hint!r}")
        return False, _mapping(check)
    if hint is str:
        return False, _text
    if hint is bool:
        return False, _boolean
    if hint is int:
        return False, _integer
    if hint is float:
        # Inside a dict (external_targets' calls, errors, bytes) an integer stays an integer.
        return False, _number if nested else _real
    raise TypeError(f"no check for {hint!r}")  # pragma: no cover - a new kind of field


def _record_id(value: object) -> str:
    text = _text(value)
    if not text or len(text) > _MAX_ID_CHARS:
        raise _Bad(f"must be 1 to {_MAX_ID_CHARS} characters")
    return text


def _count(value: object) -> int:
    number = _integer(value)
    if number < 0:
        raise _Bad("must not be negative")
    return number


def _pid(value: object) -> int:
    number = _integer(value)
    if not 1 <= number <= _MAX_PID:
        # pid 0 or -1 would make os.kill address a process group, or every process.
        raise _Bad("expected a process id (1 or more)")
    return number


def _timeout(value: object) -> float:
    number = _real(value)
    if number <= 0:
        raise _Bad("must be more than 0 seconds")
    return number


_OVERRIDES: Final[Mapping[str, _Check]] = {"record_id": _record_id, "gpu_count": _count}


@functools.cache
def _record_fields() -> tuple[_Field, ...]:
    """How every ``InvocationRecord`` field is checked, in order."""
    hints = typing.get_type_hints(InvocationRecord)
    fields = []
    for field in dataclasses.fields(InvocationRecord):
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        nullable, check = _check_for(hints[field.name])
        fields.append((field.name, required, nullable, _OVERRIDES.get(field.name, check)))
    return tuple(fields)


_START_FIELDS: Final[tuple[_Field, ...]] = (
    ("record_id", True, False, _record_id),
    ("invocation_id", True, False, _text),
    ("handler", True, False, _text),
    ("start_ns", True, False, _integer),
    ("pid", True, False, _pid),
    ("service_name", True, False, _text),
    ("platform", True, False, _text),
    ("endpoint", False, True, _text),
    ("worker_id", False, True, _text),
    ("region", False, True, _text),
    ("gpu_model", False, True, _text),
    ("gpu_count", False, False, _count),
    ("timeout_s", False, True, _timeout),
    ("user_id", False, True, _text),
    ("user_id_pseudonymised", False, False, _boolean),
    ("tenant", False, True, _text),
)


def _items(payload: object, key: str) -> list[object]:
    if type(payload) is not dict:
        raise Invalid(f'body: expected a JSON object {{"{key}": [...]}}, got {_describe(payload)}')
    if key not in payload:
        raise Invalid(f"body: no {key!r} list")
    items = payload[key]
    if type(items) is not list:
        raise Invalid(f"{key}: expected a list, got {_describe(items)}")
    return items


def _fields(item: object, where: Callable[[], str], fields: Iterable[_Field]) -> dict[str, object]:
    if type(item) is not dict:
        raise Invalid(f"{where()}: expected an object, got {_describe(item)}")
    values: dict[str, object] = {}
    for name, required, nullable, check in fields:
        value = item.get(name, _ABSENT)
        if value is _ABSENT:
            if required:
                raise Invalid(f"{where()}.{name}: missing (required)")
        elif value is None and nullable:
            values[name] = None
        else:
            try:
                values[name] = check(value)
            except _Bad as bad:
                raise Invalid(f"{where()}.{name}{bad.path}: {bad.message}") from None
    return values


def parse_records(payload: object) -> list[tuple[InvocationRecord, dict[str, object]]]:
    """The records of a ``/v1/records`` body, each with its checked field values (keys this
    version does not know are dropped); raises :class:`Invalid` at the first problem."""
    fields = _record_fields()
    parsed = []
    for index, item in enumerate(_items(payload, "records")):

        def where(index: int = index) -> str:
            return f"records[{index}]"

        values = _fields(item, where, fields)
        if typing.cast(int, values["end_ns"]) < typing.cast(int, values["start_ns"]):
            raise Invalid(f"{where()}.end_ns: before start_ns")
        try:
            record = InvocationRecord(**values)  # type: ignore[arg-type]
        except TypeError as error:  # pragma: no cover - the checks above cover every field
            raise Invalid(f"{where()}: {error}") from None
        parsed.append((record, values))
    return parsed


def parse_starts(payload: object) -> list[dict[str, object]]:
    """The start notices of a ``/v1/starts`` body, checked; raises :class:`Invalid`."""
    parsed = []
    for index, item in enumerate(_items(payload, "starts")):

        def where(index: int = index) -> str:
            return f"starts[{index}]"

        parsed.append(_fields(item, where, _START_FIELDS))
    return parsed


def _reject_constant(name: str) -> None:
    raise Invalid(f"invalid JSON: {name} is not a JSON number")


def parse_json(body: bytes) -> object:
    """Strict JSON from UTF-8 bytes: no ``NaN``/``Infinity``; raises :class:`Invalid`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Invalid(f"body is not valid UTF-8 (byte {error.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise Invalid("invalid JSON: nested too deeply") from None
    except json.JSONDecodeError as error:
        raise Invalid(f"invalid JSON: {error}") from None


def _dumps(values: Mapping[str, object]) -> str:
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# --- the spool -------------------------------------------------------------------------------

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        record_id TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        received_ns INTEGER NOT NULL)""",
    # pid_start: the pid's start time when the notice came (/proc), to tell a reused pid apart;
    # gone_ns: when the watcher first found the pid gone.
    """CREATE TABLE IF NOT EXISTS starts (
        record_id TEXT NOT NULL PRIMARY KEY,
        body TEXT NOT NULL,
        received_ns INTEGER NOT NULL,
        pid_start INTEGER,
        gone_ns INTEGER)""",
    """CREATE TABLE IF NOT EXISTS cursors (
        consumer TEXT NOT NULL PRIMARY KEY,
        seq INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS delivered (
        record_id TEXT NOT NULL PRIMARY KEY,
        delivered_ns INTEGER NOT NULL)""",
)
_TABLES: Final = frozenset({"records", "starts", "cursors", "delivered", "sqlite_sequence"})

_INSERT_RECORD: Final = (
    "INSERT INTO records (record_id, body, received_ns) SELECT ?, ?, ? "
    "WHERE NOT EXISTS (SELECT 1 FROM delivered WHERE record_id = ?) "
    "ON CONFLICT (record_id) DO NOTHING"
)
_INSERT_START: Final = (
    "INSERT INTO starts (record_id, body, received_ns, pid_start) SELECT ?, ?, ?, ? "
    "WHERE NOT EXISTS (SELECT 1 FROM records WHERE record_id = ?) "
    "AND NOT EXISTS (SELECT 1 FROM delivered WHERE record_id = ?) "
    "ON CONFLICT (record_id) DO NOTHING"
)


@dataclasses.dataclass(frozen=True, slots=True)
class OpenStart:
    """A start notice with no record yet."""

    record_id: str
    values: dict[str, Any]
    pid_start: int | None
    gone_ns: int | None


class _FairLock:
    """A first-come, first-served lock. ``threading.Lock`` is not fair: under a steady stream
    of requests the receiver's threads kept taking it back, and the consumers starved (the
    ledger got nothing until the load stopped). Tickets served in order make every waiter wait
    at most one turn per thread ahead of it."""

    __slots__ = ("_condition", "_next", "_serving")

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._next = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._condition:
            ticket = self._next
            self._next += 1
            while self._serving != ticket:
                self._condition.wait()

    def __exit__(self, *exc_info: object) -> None:
        with self._condition:
            self._serving += 1
            self._condition.notify_all()


class Spool:
    """The sidecar's disk spool (see the module docstring). Thread-safe: one connection, one
    fair lock, so writes never wait on each other's file locks, ``seq`` order is commit order,
    and the consumers get their turn under a steady load."""

    def __init__(
        self, path: str, *, synchronous: str = "normal", max_bytes: int | None = None
    ) -> None:
        self.path = path
        self._lock = _FairLock()
        self._lock_file: int | None = None
        self._connection: sqlite3.Connection | None = None
        lock_existed = os.path.exists(f"{path}.lock")
        try:
            self._take_lock()
            self._connection = connection = sqlite3.connect(
                path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            tables = {
                name
                for (name,) in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
            if tables - _TABLES:
                raise SidecarError(
                    f"{path} is not a gpuledger spool (it has the table(s) "
                    f"{', '.join(sorted(tables - _TABLES))}): give --spool a file of its own"
                )
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SidecarError(f"the spool at {path} cannot use WAL mode (got {mode})")
            connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            connection.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute("COMMIT")
            if max_bytes is not None:
                page_size = connection.execute("PRAGMA page_size").fetchone()[0]
                pages = max(max_bytes // page_size, 1)
                connection.execute(f"PRAGMA max_page_count = {pages}")
        except BaseException as error:
            self.close()
            if not lock_existed:
                with contextlib.suppress(OSError):
                    os.unlink(f"{path}.lock")
            if isinstance(error, sqlite3.Error):
                raise SidecarError(f"cannot open the spool at {path}: {error}") from error
            raise

    def _take_lock(self) -> None:
        """One sidecar per spool: two would both deliver every record. The lock is a file of its
        own (``<spool>.lock``): an flock on the database file would be released when SQLite
        closes any descriptor of it."""
        import fcntl  # noqa: PLC0415  (POSIX only, like the pid checks)

        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise SidecarError(
                f"cannot create the spool's lock file {lock_path}: {error}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SidecarError(
                f"another gpuledger sidecar is using the spool at {self.path}"
            ) from None
        self._lock_file = fd

    def _require(self) -> sqlite3.Connection:
        if self._connection is None:
            raise sqlite3.ProgrammingError("the spool is closed")
        return self._connection

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            connection = self._require()
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return result

    def _query(self, sql: str, parameters: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            return self._require().execute(sql, parameters).fetchall()

    def add_records(self, rows: Sequence[tuple[str, str]], received_ns: int) -> tuple[int, int]:
        """Spool ``(record_id, body)`` rows in one transaction and close their starts; returns
        ``(accepted, duplicates)``."""

        def work(connection: sqlite3.Connection) -> int:
            before = connection.total_changes
            connection.executemany(
                _INSERT_RECORD,
                [(record_id, body, received_ns, record_id) for record_id, body in rows],
            )
            accepted = connection.total_changes - before
            connection.executemany(
                "DELETE FROM starts WHERE record_id = ?", [(record_id,) for record_id, _ in rows]
            )
            return accepted

        accepted: int = self._transaction(work)
        return accepted, len(rows) - accepted

    def add_starts(
        self, rows: Sequence[tuple[str, str, int | None]], received_ns: int
    ) -> tuple[int, int]:
        """Spool ``(record_id, body, pid_start)`` start notices; a start whose record is here or
        was delivered already is a duplicate. Returns ``(accepted, duplicates)``."""

        def work(connection: sqlite3.Connection) -> int:
            before = connection.total_changes
            connection.executemany(
                _INSERT_START,
                [
                    (record_id, body, received_ns, pid_start, record_id, record_id)
                    for record_id, body, pid_start in rows
                ],
            )
            return connection.total_changes - before

        accepted: int = self._transaction(work)
        return accepted, len(rows) - accepted

    def cursor(self, consumer: str) -> int:
        """Where ``consumer`` got to (0: nothing delivered yet)."""
        rows = self._query("SELECT seq FROM cursors WHERE consumer = ?", (consumer,))
        return int(rows[0][0]) if rows else 0

    def read(self, after_seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` ``(seq, body)`` rows after ``after_seq``, in ``seq`` order."""
        return self._query(
            "SELECT seq, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        )

    def advance(self, consumer: str, seq: int) -> None:
        """Record that ``consumer`` delivered everything up to ``seq``."""
        self._transaction(
            lambda connection: connection.execute(
                "INSERT INTO cursors (consumer, seq) VALUES (?, ?) "
                "ON CONFLICT (consumer) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                (consumer, seq),
            )
        )

    def prune(self, consumers: Sequence[str], now_ns: int) -> int:
        """Delete the rows every one of ``consumers`` has passed, remembering their ids in
        ``delivered``; returns how many were deleted."""

        def work(connection: sqlite3.Connection, remember: bool) -> int:
            marks = ",".join("?" * len(consumers))
            found = connection.execute(
                f"SELECT COUNT(*), MIN(seq) FROM cursors WHERE consumer IN ({marks})",
                tuple(consumers),
            ).fetchone()
            if found[0] < len(consumers):
                return 0  # a consumer that never delivered holds everything
            low = int(found[1])
            if remember:
                connection.execute(
                    "INSERT INTO delivered (record_id, delivered_ns) "
                    "SELECT record_id, ? FROM records WHERE seq <= ? "
                    "ON CONFLICT (record_id) DO NOTHING",
                    (now_ns, low),
                )
            return connection.execute("DELETE FROM records WHERE seq <= ?", (low,)).rowcount

        try:
            deleted: int = self._transaction(lambda connection: work(connection, True))
        except sqlite3.OperationalError:
            # A full spool has no room for the ids: delete the rows anyway (space is what it
            # needs), forgetting those ids; a late duplicate of them would be spooled again.
            deleted = self._transaction(lambda connection: work(connection, False))
        return deleted

    def forget_delivered(self, before_ns: int) -> None:
        """Forget delivered ids older than ``before_ns``."""
        self._transaction(
            lambda connection: connection.execute(
                "DELETE FROM delivered WHERE delivered_ns < ?", (before_ns,)
            )
        )

    def open_starts(self) -> list[OpenStart]:
        """Every start notice without its record, oldest first."""
        rows = self._query(
            "SELECT record_id, body, pid_start, gone_ns FROM starts ORDER BY received_ns"
        )
        return [OpenStart(row[0], json.loads(row[1]), row[2], row[3]) for row in rows]

    def mark_gone(self, record_id: str, gone_ns: int) -> None:
        """Note when the pid of ``record_id``'s start was first found gone."""
        self._transaction(
            lambda connection: connection.execute(
                "UPDATE starts SET gone_ns = ? WHERE record_id = ? AND gone_ns IS NULL",
                (gone_ns, record_id),
            )
        )

    def close_start(self, record_id: str, body: str, received_ns: int) -> bool:
        """Replace the open start ``record_id`` by the record ``body``; False if its record
        arrived meanwhile (the start is gone already)."""

        def work(connection: sqlite3.Connection) -> bool:
            deleted = connection.execute("DELETE FROM starts WHERE record_id = ?", (record_id,))
            if deleted.rowcount == 0:
                return False
            connection.execute(_INSERT_RECORD, (record_id, body, received_ns, record_id))
            return True

        closed: bool = self._transaction(work)
        return closed

    def counts(self, cursors: Mapping[str, int]) -> dict[str, int]:
        """``spooled``, ``open_invocations`` and ``pending_<consumer>`` for each cursor given."""
        with self._lock:
            connection = self._require()
            result = {
                "spooled": connection.execute("SELECT COUNT(*) FROM records").fetchone()[0],
                "open_invocations": connection.execute("SELECT COUNT(*) FROM starts").fetchone()[0],
            }
            for consumer, seq in cursors.items():
                result[f"pending_{consumer}"] = connection.execute(
                    "SELECT COUNT(*) FROM records WHERE seq > ?", (seq,)
                ).fetchone()[0]
        return result

    def size_bytes(self) -> int:
        """The spool's files on disk (database and write-ahead log)."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(self.path + suffix)
        return total

    def close(self) -> None:
        """Close the database and release the lock; calling it again does nothing."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
        if self._lock_file is not None:
            os.close(self._lock_file)  # releases the flock
            self._lock_file = None


# --- processes -------------------------------------------------------------------------------


# --- sinks and consumers ---------------------------------------------------------------------


class DeliveryError(Exception):
    """A sink did not take a batch (it is retried)."""


class _LedgerSink:
    """Writes batches to the ledger, opened on first use and again after a failure."""

    name = "ledger"

    def __init__(self, location: str) -> None:
        self.location = location
        self._ledger: Any = None

    def deliver(self, records: Sequence[InvocationRecord]) -> None:
        from gpuledger.ledger._sqlite import open_ledger  # noqa: PLC0415

        try:
            if self._ledger is None:
                self._ledger = open_ledger(self.location)
            self._ledger.write(records)
        except Exception:
            self.close()  # a broken connection is not reused
            raise

    def abort(self) -> None:
        """Nothing to interrupt: a ledger write is bounded by its busy timeout."""

    def close(self, timeout_s: float = 0.0) -> None:
        """Close the ledger (it is opened again by the next delivery)."""
        ledger, self._ledger = self._ledger, None
        if ledger is not None:
            with contextlib.suppress(Exception):
                ledger.close()


class _ResponseCheck:
    """Reads the OTLP/HTTP answer the SDK exporter got, which its ``export()`` result does not
    tell apart: the SDK counts any status under 400 as delivered (a redirect it does not follow
    included), and ignores a 200 whose ``partial_success`` says spans were rejected."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.body = b""
        self.content_type = ""

    def hook(self, response: Any, *args: object, **kwargs: object) -> None:
        self.status = int(response.status_code)
        self.body = bytes(response.content or b"")
        self.content_type = str(response.headers.get("Content-Type", ""))

    def reset(self) -> None:
        self.status = None
        self.body = b""

    def rejected(self) -> tuple[int, str]:
        """``(rejected spans, message)`` from the last answer's ``partial_success``."""
        if not self.body or "json" in self.content_type:
            return 0, ""
        from opentelemetry.proto.collector.trace.v1 import (  # noqa: PLC0415
            trace_service_pb2,
        )

        answer = trace_service_pb2.ExportTraceServiceResponse()
        try:
            answer.ParseFromString(self.body)
        except Exception:  # an answer that is not OTLP: nothing to read from it
            return 0, ""
        partial = answer.partial_success
        return int(partial.rejected_spans), str(partial.error_message)


class _OtlpSink:
    """Exports batches as spans, then adds them to the invocation metrics."""

    name = "otlp"

    def __init__(
        self,
        span_exporter: Any,
        response_check: _ResponseCheck | None,
        meter_factory: Callable[[Any], Any] | None,
        counters: _Counters,
        pending: Callable[[], int],
    ) -> None:
        self._pending = pending
        self._exporter = span_exporter
        self._check = response_check
        self._meter_factory = meter_factory
        self._counters = counters
        self._metrics: dict[Any, Any] = {}
        self._providers: list[Any] = []
        self._rejected_warned = False
        self._too_many_warned = False

    def deliver(self, records: Sequence[InvocationRecord]) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult  # noqa: PLC0415

        from gpuledger.exporters._records import record_resource, record_to_span  # noqa: PLC0415

        spans = [record_to_span(record, record_resource(record)) for record in records]
        if self._check is not None:
            self._check.reset()
        result = self._exporter.export(spans)
        if result is not SpanExportResult.SUCCESS:
            raise DeliveryError("the OTLP receiver did not take the batch")
        if self._check is not None:
            status = self._check.status
            if status is not None and not 200 <= status < 300:
                raise DeliveryError(
                    f"the OTLP endpoint answered {status}, which is not a delivery (a redirect "
                    "is not followed: check the endpoint URL)"
                )
            rejected, message = self._check.rejected()
            if rejected:
                # OTLP says a partial success must not be retried: the receiver refused these
                # for good. They stay in the ledger.
                self._counters.add("export_rejected", rejected)
                if not self._rejected_warned:
                    self._rejected_warned = True
                    get_logger().error(
                        "the OTLP receiver rejected spans (partial success); they are in the "
                        "ledger but not in the backend; further ones are counted",
                        rejected=rejected,
                        reason=message,
                    )
        self._record_metrics(records)

    def _record_metrics(self, records: Sequence[InvocationRecord]) -> None:
        if self._meter_factory is None:
            return
        from gpuledger.exporters._records import record_resource  # noqa: PLC0415

        groups: dict[Any, list[InvocationRecord]] = {}
        for record in records:
            groups.setdefault((record_resource(record), record.platform), []).append(record)
        for (resource, platform), group in groups.items():
            metrics = self._metrics.get((resource, platform))
            if metrics is None:
                metrics = self._new_metrics(resource, platform)
                if metrics is None:
                    continue
            try:
                metrics.record(group)
            except Exception as error:  # metrics are best effort: the span went out
                _guard.log_once(
                    "sidecar.metrics",
                    "gpuledger sidecar: recording invocation metrics failed",
                    error,
                )

    def _new_metrics(self, resource: Any, platform: str) -> Any:
        from gpuledger._platform import platform_defaults  # noqa: PLC0415
        from gpuledger.exporters._metrics import InvocationMetrics  # noqa: PLC0415

        assert self._meter_factory is not None
        if len(self._metrics) >= 32:
            # A provider (and its export thread) per worker resource: bounded. Spans and the
            # ledger carry every record regardless.
            if not self._too_many_warned:
                self._too_many_warned = True
                get_logger().warning(
                    "invocation metrics are kept for the first 32 workers seen only"
                )
            return None
        provider = self._meter_factory(resource)
        self._providers.append(provider)
        metrics = InvocationMetrics(
            provider,
            trigger=platform_defaults(platform).faas_trigger,
            user_attributes=False,
            telemetry_errors=dict,
            pending=self._pending,  # records the sidecar holds for the ledger
        )
        self._metrics[(resource, platform)] = metrics
        return metrics

    def abort(self) -> None:
        """Shut the span exporter down, ending any retry wait of its own."""
        with contextlib.suppress(Exception):
            self._exporter.shutdown()

    def close(self, timeout_s: float) -> None:
        """Export the metrics recorded so far and shut their exporters down."""
        deadline = time.monotonic() + timeout_s
        for provider in self._providers:
            remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
            with contextlib.suppress(Exception):
                provider.shutdown(timeout_millis=remaining_ms)
        self._providers.clear()
        self._metrics.clear()


class _Counters:
    """The sidecar's own counters (reset at each start, as Prometheus counters may be)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)


class _Backoff:
    """Jittered exponential backoff: ``first`` doubling up to ``most`` seconds."""

    def __init__(self, first: float, most: float) -> None:
        self._first = first
        self._most = most
        self._attempt = 0

    def next_delay(self) -> float:
        base = min(self._first * 2.0**self._attempt, self._most)
        self._attempt = min(self._attempt + 1, 64)
        return min(base * random.uniform(0.75, 1.25), self._most)  # noqa: S311 - jitter only

    def reset(self) -> None:
        self._attempt = 0


class _Consumer:
    """Delivers the spool's records to one sink, in ``seq`` order, on a thread of its own."""

    def __init__(
        self,
        sink: _LedgerSink | _OtlpSink,
        spool: Spool,
        counters: _Counters,
        backoff: _Backoff,
        on_advance: Callable[[], None],
        linger_s: float = DEFAULT_LINGER_S,
        batch_size: int = _BATCH_RECORDS,
    ) -> None:
        self.sink = sink
        self._linger_s = linger_s
        self.name = sink.name
        self._spool = spool
        self._counters = counters
        self._backoff = backoff
        self._on_advance = on_advance
        self._batch_size = batch_size
        self.cursor = spool.cursor(self.name)
        self._unsaved: int | None = None
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"gpuledger-sidecar-{self.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def signal_stop(self) -> None:
        """Ask the thread to stop after the batch in hand."""
        self._stop.set()
        self.wake.set()

    def join(self, timeout_s: float) -> bool:
        """Wait for the thread; False if it still runs ``timeout_s`` later."""
        self._thread.join(max(timeout_s, 0.0))
        return not self._thread.is_alive()

    def _run(self) -> None:
        batch: list[tuple[int, InvocationRecord]] | None = None
        failures = 0
        while not self._stop.is_set():
            if self._unsaved is not None:
                self._save(self._unsaved)
            try:
                if batch is None:
                    self.wake.clear()  # before reading: a wake during the read is not lost
                    rows = self._spool.read(self.cursor, self._batch_size)
                    if not rows:
                        if self.wake.wait(_IDLE_WAIT_S) and self._linger_s:
                            self._stop.wait(self._linger_s)
                        continue
                    batch = [
                        (seq, InvocationRecord.from_dict(json.loads(body))) for seq, body in rows
                    ]
                self.sink.deliver([record for _, record in batch])
            except Exception as error:
                if self._stop.is_set():
                    return  # stopping: the spool or the exporter was closed under us
                failures += 1
                self._counters.add(f"{self.name}_failures")
                if failures == 1:
                    get_logger().error(
                        f"gpuledger sidecar: {self.name} delivery failing; the records stay in "
                        "the spool and the same batch is retried with backoff",
                        consumer=self.name,
                        error=f"{type(error).__name__}: {error}",
                    )
                self._stop.wait(self._backoff.next_delay())
                continue
            if failures:
                get_logger().warning(
                    f"gpuledger sidecar: {self.name} delivery recovered",
                    consumer=self.name,
                    failed_attempts=failures,
                )
                failures = 0
            self._backoff.reset()
            self._counters.add(f"{self.name}_delivered", len(batch))
            self.cursor = batch[-1][0]
            batch = None
            self._save(self.cursor)

    def _save(self, seq: int) -> None:
        """Commit the cursor, then prune the spool. A cursor the spool cannot take now is kept
        and tried again before the next batch; delivery goes on meanwhile (should the sidecar
        die first, the batches since the last saved cursor are delivered again: the ledger
        skips them, OTLP receivers see the same span ids)."""
        self._unsaved = seq
        try:
            self._spool.advance(self.name, seq)
            self._unsaved = None
            self._on_advance()
        except Exception as error:
            if not self._stop.is_set():
                _guard.log_once(
                    f"sidecar.save.{self.name}",
                    f"gpuledger sidecar: the {self.name} cursor cannot be saved in the spool "
                    "(retried with each batch)",
                    error,
                )


# --- HTTP ------------------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> ``(host, port)``; raises ValueError."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT (e.g. {DEFAULT_LISTEN}), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"the port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"the port {port} is out of range (0-65535)")
    return host, port


def _resolve(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ConfigError("listen", f"{host}:{port}", f"cannot resolve {host!r}: {error}") from None
    return [(family, address) for family, _type, _proto, _name, address in found]


def _is_loopback(addresses: Iterable[tuple[int, tuple[Any, ...]]]) -> bool:
    try:
        return all(ipaddress.ip_address(address[0]).is_loopback for _, address in addresses)
    except ValueError:
        return False


_ROUTES: Final = {
    "/v1/records": "POST",
    "/v1/starts": "POST",
    "/healthz": "GET",
    "/metrics": "GET",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # an idle kept-alive connection must not hold the process
    request_queue_size = 128

    def __init__(self, address: tuple[Any, ...], family: int, sidecar: Sidecar) -> None:
        self.address_family = family
        self.sidecar = sidecar
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke outside a request (reset, timed out): not worth a traceback
        on the worker's console, which is what ``socketserver`` prints by default."""

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the host's name (getfqdn), which can take seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the agent reuses one connection
    server_version = "gpuledger-sidecar"
    sys_version = ""
    timeout = _REQUEST_TIMEOUT_S
    # Headers and body leave in one write, with Nagle off: no delayed-ACK stall on keep-alive.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.sidecar._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sidecar._connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per request would be the busiest log in the worker's container."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        sidecar = self.server.sidecar
        path = self.path.split("?", 1)[0]
        allowed = _ROUTES.get(path)
        if allowed is None:
            self._error(404, f"no such path {path!r}", close=True)
            return
        if method != allowed:
            self._error(405, f"{path} takes {allowed}", close=True, headers={"Allow": allowed})
            return
        if path != "/healthz" and not sidecar._authorised(self.headers.get("Authorization")):
            self._error(
                401,
                "missing or wrong token (Authorization: Bearer <token>)",
                close=True,
                headers={"WWW-Authenticate": "Bearer"},
            )
            return
        if not sidecar._request_begins():
            self._error(503, "the sidecar is shutting down", close=True)
            return
        try:
            if path == "/healthz":
                status, answer = sidecar.health()
                self._json(status, answer)
            elif path == "/metrics":
                self._send(
                    200, sidecar.metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8"
                )
            else:
                self._post(path)
        except OSError:
            self.close_connection = True  # the client went away or stalled past the timeout
        except Exception as error:  # a bug: say so, keep serving
            _guard.log_once(
                "sidecar.http",
                "gpuledger sidecar: a request failed (a bug: please report it)",
                error,
            )
            with contextlib.suppress(Exception):
                self._error(500, f"internal error: {type(error).__name__}", close=True)
        finally:
            sidecar._request_ends()

    def _post(self, path: str) -> None:
        sidecar = self.server.sidecar
        content_type = self.headers.get("Content-Type", "")
        media, _, parameters = content_type.partition(";")
        charset = parameters.strip().lower().removeprefix("charset=").strip('"')
        if media.strip().lower() != "application/json" or charset not in ("", "utf-8"):
            self._error(415, f"expected Content-Type: application/json, got {content_type!r}", True)
            return
        if self.headers.get("Transfer-Encoding"):
            self._error(411, "send a Content-Length (chunked bodies are not accepted)", True)
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._error(411, "Content-Length required", True)
            return
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self._error(400, f"bad Content-Length {length_text!r}", True)
            return
        if length > sidecar.max_body:
            # Answered without reading the body, so the connection cannot be reused.
            sidecar._rejected(None, 413)
            self._error(
                413, f"body of {length} bytes is over the limit of {sidecar.max_body}", True
            )
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True  # the client went away mid-body
            return
        kind = "records" if path == "/v1/records" else "starts"
        status, answer = sidecar._take(kind, body)
        self._json(status, answer)

    def _error(
        self, status: int, message: str, close: bool, headers: Mapping[str, str] | None = None
    ) -> None:
        self._json(status, {"error": message}, close=close, headers=headers)

    def _json(
        self,
        status: int,
        answer: Mapping[str, object],
        *,
        close: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._send(status, json.dumps(answer).encode(), "application/json", close, headers)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        close: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if close or self.server.sidecar._stopping:
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


# --- the sidecar -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class OtlpTarget:
    """Where and how spans (and metrics) are exported."""

    protocol: str
    """``http/protobuf`` or ``grpc``."""
    traces_endpoint: str | None
    """Passed to the span exporter; None: the exporter reads the ``OTEL_*`` environment."""
    metrics_endpoint: str | None
    metrics: bool
    """Whether a metrics endpoint is known (given, or in the environment)."""
    description: str


def resolve_otlp(
    endpoint: str | None, protocol: str | None, environ: Mapping[str, str]
) -> OtlpTarget | None:
    """The OTLP target from ``--otlp-endpoint``/``--otlp-protocol``, else the standard
    ``OTEL_EXPORTER_OTLP_*`` variables; None when no endpoint is given anywhere."""
    from gpuledger.exporters._providers import otlp_protocol  # noqa: PLC0415

    protocol = otlp_protocol("TRACES", environ, given=protocol)
    if endpoint:
        base = endpoint.strip()
        if protocol == "grpc":
            return OtlpTarget(protocol, base, base, True, f"{base} (grpc)")
        traces = f"{base.rstrip('/')}/v1/traces"
        metrics_url = f"{base.rstrip('/')}/v1/metrics"
        return OtlpTarget(protocol, traces, metrics_url, True, f"{traces} (http/protobuf)")
    traces_env = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base_env = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not (traces_env or base_env):
        return None
    metrics = bool(base_env or environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
    where = traces_env or base_env
    return OtlpTarget(protocol, None, None, metrics, f"{where} ({protocol}, from the environment)")


_COUNTERS: Final = (
    # (name, description, counter key)
    ("records_received_total", "Records received, new and duplicates.", "records_received"),
    (
        "records_duplicate_total",
        "Records received that were spooled or delivered already.",
        "records_duplicate",
    ),
    ("records_rejected_total", "Records in requests refused as invalid.", "records_rejected"),
    ("starts_received_total", "Start notices received.", "starts_received"),
    ("records_exported_total", "Records exported over OTLP.", "otlp_delivered"),
    ("export_failures_total", "Failed OTLP export attempts (retried).", "otlp_failures"),
    (
        "export_rejected_spans_total",
        "Spans the OTLP receiver refused for good (partial success).",
        "export_rejected",
    ),
    ("ledger_written_total", "Records written to the ledger.", "ledger_delivered"),
    ("ledger_failures_total", "Failed ledger writes (retried).", "ledger_failures"),
    (
        "spool_write_failures_total",
        "Requests refused because the spool could not be written.",
        "spool_write_failures",
    ),
)
_GAUGES: Final = (
    ("spool_records", "Records in the spool."),
    ("spool_bytes", "Size of the spool's files on disk."),
    ("pending_export", "Records not yet exported over OTLP."),
    ("pending_ledger", "Records not yet in the ledger."),
    ("open_invocations", "Invocations started and not yet recorded."),
    ("spool_writable", "1 while the spool can be written."),
)
_WATCHED: Final = ("killed", "timeout")


class _SystemClock:
    time_ns = staticmethod(time.time_ns)


class _Exposition:
    """The Prometheus text format, written by hand: a dozen lines need no client library."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._lines: list[str] = []

    def add(self, name: str, kind: str, description: str, *samples: int | tuple[str, int]) -> None:
        """One metric: a plain value, or ``(labels, value)`` pairs (``'code="400"'``)."""
        full = self._prefix + name
        self._lines.append(f"# HELP {full} {description}")
        self._lines.append(f"# TYPE {full} {kind}")
        for sample in samples:
            if isinstance(sample, tuple):
                labels, value = sample
                self._lines.append(f"{full}{{{labels}}} {value}")
            else:
                self._lines.append(f"{full} {sample}")

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"


class Sidecar:
    """The receiver, the spool, the consumers and the watcher: :meth:`start`, then :meth:`stop`.

    Arguments mirror ``gpuledger sidecar``'s options (seconds, bytes). For tests: ``clock`` (wall
    time for received/killed instants), ``pid_alive`` (``(pid, started) -> bool``),
    ``watch_interval_s`` (None: no watcher thread; call :meth:`check_open_invocations`),
    ``backoff_s`` (first and longest retry delay), ``linger_s`` (how long a woken consumer
    gathers records) and ``export_timeout_s``. ``gpu``: a container-wide GPU meter
    (``gpuledger.sidecar._gpu.SidecarGpu``: ``started(starts)``, ``fill(records)``) that fills the
    GPU fields records arrive without, before they are spooled.
    """

    def __init__(
        self,
        *,
        listen: str = DEFAULT_LISTEN,
        token: str | None = None,
        spool: str = DEFAULT_SPOOL,
        ledger: str | None = None,
        otlp_endpoint: str | None = None,
        otlp_protocol: str | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        max_body: int = DEFAULT_MAX_BODY,
        synchronous: str = "normal",
        max_spool_bytes: int | None = None,
        dedupe_window_s: float = DEFAULT_DEDUPE_WINDOW_S,
        watch_interval_s: float | None = 1.0,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        linger_s: float = DEFAULT_LINGER_S,
        export_timeout_s: float = 10.0,
        clock: Clock | None = None,
        pid_alive: Callable[[int, int | None], bool] = process_alive,
        environ: Mapping[str, str] | None = None,
        gpu: Any = None,
    ) -> None:
        from gpuledger.ledger._sqlite import default_ledger_location  # noqa: PLC0415

        env = os.environ if environ is None else environ
        try:
            self._host, self._port = parse_listen(listen)
        except ValueError as error:
            raise ConfigError("listen", listen, str(error)) from None
        _positive("grace_s", grace_s, allow_zero=True)
        _positive("dedupe_window_s", dedupe_window_s, allow_zero=True)
        _positive("export_timeout_s", export_timeout_s)
        _positive("linger_s", linger_s, allow_zero=True)
        if watch_interval_s is not None:
            _positive("watch_interval_s", watch_interval_s)
        if max_body < 1:
            raise ConfigError("max_body", max_body, "must be at least 1 byte")
        if max_spool_bytes is not None and max_spool_bytes < _MIN_SPOOL_BYTES:
            raise ConfigError("max_spool_bytes", max_spool_bytes, f"at least {_MIN_SPOOL_BYTES}")
        if synchronous not in _SYNCHRONOUS:
            raise ConfigError("synchronous", synchronous, "expected normal or full")
        if token is not None and not token.strip():
            raise ConfigError("token", "(empty)", "an empty token protects nothing")
        self.listen = listen
        self._token = None if token is None else f"Bearer {token}".encode()
        self.spool_path = os.path.abspath(os.path.expanduser(spool))
        self.ledger_location = ledger or default_ledger_location()
        self.otlp = resolve_otlp(otlp_endpoint, otlp_protocol, env)
        self.grace_s = grace_s
        self.max_body = max_body
        self._synchronous = synchronous
        self._max_spool_bytes = max_spool_bytes
        self._dedupe_window_ns = int(dedupe_window_s * 1e9)
        self._watch_interval_s = watch_interval_s
        self._backoff_s = backoff_s
        self._linger_s = linger_s
        self._export_timeout_s = export_timeout_s
        self._clock: Clock = clock or _SystemClock()
        self._pid_alive = pid_alive
        self._gpu = gpu
        self._counters = _Counters()
        self._spool: Spool | None = None
        self._server: _Server | None = None
        self._consumers: list[_Consumer] = []
        self._threads: list[threading.Thread] = []
        self._stop_watch = threading.Event()
        self._stopping = False
        self._in_flight = 0
        self._requests = threading.Condition()
        self._connections: set[socket.socket] = set()
        self._spool_error: str | None = None
        self._pricers: dict[tuple[str, str | None], Any] = {}
        self._catalogue: Any = None
        self._prune_lock = threading.Lock()
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Sidecar:
        """Open the spool, bind the listener, start the consumers and the watcher.

        Raises :class:`ConfigError` for a non-loopback address without a token, and
        :class:`SidecarError` when the spool cannot be used or the address cannot be bound.
        """
        if self._started:
            raise SidecarError("this sidecar was started already")
        addresses = _resolve(self._host, self._port)
        if self._token is None and not _is_loopback(addresses):
            raise ConfigError(
                "listen",
                self.listen,
                "listening beyond loopback needs a token (--token or "
                f"{TOKEN_ENV}): anyone who can reach the port could write the ledger",
            )
        if os.path.abspath(self.ledger_location) == self.spool_path:
            raise ConfigError("spool", self.spool_path, "the spool and the ledger must differ")
        from gpuledger._location import unwritable_reason  # noqa: PLC0415

        # As the agent does: a missing folder is a mistake to name (a typo would otherwise
        # create /nonexist/ and write there), not a folder to make.
        for setting, location in (("spool", self.spool_path), ("ledger", self.ledger_location)):
            reason = unwritable_reason(location)
            if reason is not None:
                raise ConfigError(setting, location, reason)
        span_exporter, check, meter_factory = self._otlp_parts()
        spool = Spool(
            self.spool_path, synchronous=self._synchronous, max_bytes=self._max_spool_bytes
        )
        family, address = addresses[0]
        try:
            server = _Server(address, family, self)
        except OSError as error:
            spool.close()
            raise SidecarError(f"cannot listen on {self.listen}: {error}") from error
        self._started = True
        self._spool = spool
        self._server = server
        sinks: list[_LedgerSink | _OtlpSink] = [_LedgerSink(self.ledger_location)]
        if span_exporter is not None:
            sinks.append(
                _OtlpSink(
                    span_exporter,
                    check,
                    meter_factory,
                    self._counters,
                    lambda: self._counts().get("pending_ledger", 0),
                )
            )
        else:
            get_logger().info(
                "gpuledger sidecar: no OTLP endpoint (--otlp-endpoint or "
                "OTEL_EXPORTER_OTLP_ENDPOINT): records go to the ledger only"
            )
        first, most = self._backoff_s
        self._consumers = [
            _Consumer(
                sink, spool, self._counters, _Backoff(first, most), self._prune, self._linger_s
            )
            for sink in sinks
        ]
        for consumer in self._consumers:
            consumer.start()
        serve = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="gpuledger-sidecar-http",
            daemon=True,
        )
        serve.start()
        self._threads.append(serve)
        if self._watch_interval_s is not None:
            watch = threading.Thread(
                target=self._watch, name="gpuledger-sidecar-watch", daemon=True
            )
            watch.start()
            self._threads.append(watch)
        return self

    def _otlp_parts(self) -> tuple[Any, _ResponseCheck | None, Callable[[Any], Any] | None]:
        target = self.otlp
        if target is None:
            return None, None, None
        timeout = self._export_timeout_s
        check: _ResponseCheck | None = None
        if target.protocol == "grpc":
            try:
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # noqa: PLC0415
                    OTLPMetricExporter as GrpcMetricExporter,
                )
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
                    OTLPSpanExporter as GrpcSpanExporter,
                )
            except ImportError:
                raise SidecarError(
                    "--otlp-protocol grpc needs the gRPC exporter: pip install 'gpuledger[grpc]'"
                ) from None
            span_exporter: Any = GrpcSpanExporter(endpoint=target.traces_endpoint, timeout=timeout)

            def metric_exporter() -> Any:
                return GrpcMetricExporter(endpoint=target.metrics_endpoint, timeout=timeout)
        else:
            import requests  # noqa: PLC0415  (the HTTP exporter's own transport)
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )

            class _NoRedirects(requests.Session):
                """Never follows a redirect, whatever the exporter asks: exporters before
                opentelemetry 1.45 followed one (to wherever it pointed) and called its answer
                a delivery; from 1.45 they do not. Either way the 3xx reaches the check."""

                def request(self, *args: Any, **kwargs: Any) -> Any:
                    kwargs["allow_redirects"] = False
                    return super().request(*args, **kwargs)

            check = _ResponseCheck()
            session = _NoRedirects()
            session.hooks["response"].append(check.hook)
            span_exporter = OTLPSpanExporter(
                endpoint=target.traces_endpoint, timeout=timeout, session=session
            )

            def metric_exporter() -> Any:
                return OTLPMetricExporter(endpoint=target.metrics_endpoint, timeout=timeout)

        if not target.metrics:
            return span_exporter, check, None

        def meter_factory(resource: Any) -> Any:
            from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
            from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
                PeriodicExportingMetricReader,
            )

            reader = PeriodicExportingMetricReader(metric_exporter())
            return MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)

        return span_exporter, check, meter_factory

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` listened on (the real port when asked for port 0)."""
        if self._server is None:
            raise SidecarError("the sidecar is not started")
        return str(self._server.server_address[0]), int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port`` of the receiver."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def stop(self, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> int:
        """Stop accepting, let the consumers drain for up to ``drain_timeout_s``, stop; return
        how many records are left in the spool for the next start. Idempotent."""
        if not self._started or self._spool is None:
            return 0
        deadline = time.monotonic() + max(drain_timeout_s, 0.0)
        self._stopping = True
        server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._requests:
            self._requests.wait_for(
                lambda: self._in_flight == 0, timeout=max(deadline - time.monotonic(), 0.1)
            )
            idle = list(self._connections)
        for connection in idle:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        while time.monotonic() < deadline and self._pending_total() > 0:
            for consumer in self._consumers:
                consumer.wake.set()
            time.sleep(0.02)
        self._stop_watch.set()
        for consumer in self._consumers:
            consumer.signal_stop()
            # Ends an export retry the SDK exporter is waiting out (a batch it had not
            # delivered stays in the spool).
            consumer.sink.abort()
        for consumer in self._consumers:
            consumer.join(max(deadline - time.monotonic(), 0.5))
        for consumer in self._consumers:
            consumer.sink.close(max(deadline - time.monotonic(), 1.0))
        for thread in self._threads:
            thread.join(1.0)
        counts = self._counts()
        left = counts.get("spooled", 0)
        spool, self._spool = self._spool, None
        spool.close()
        log = get_logger().warning if left else get_logger().info
        log(
            f"gpuledger sidecar stopped: {left} record(s) left in the spool for the next start",
            left=left,
            not_exported=counts.get("pending_otlp", 0),
            not_in_ledger=counts.get("pending_ledger", 0),
            open_invocations=counts.get("open_invocations", 0),
            spool=self.spool_path,
        )
        return left

    def _pending_total(self) -> int:
        counts = self._counts()
        return sum(value for key, value in counts.items() if key.startswith("pending_"))

    def _counts(self) -> dict[str, int]:
        spool = self._spool
        if spool is None:
            return {}
        try:
            return spool.counts({consumer.name: consumer.cursor for consumer in self._consumers})
        except sqlite3.Error:
            return {}

    # -- the receiver -----------------------------------------------------------------------

    def _authorised(self, header: str | None) -> bool:
        if self._token is None:
            return True
        given = (header or "").strip().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self._token)

    def _request_begins(self) -> bool:
        with self._requests:
            if self._stopping:
                return False
            self._in_flight += 1
            return True

    def _request_ends(self) -> None:
        with self._requests:
            self._in_flight -= 1
            self._requests.notify_all()

    def _connection_opened(self, connection: socket.socket) -> None:
        with self._requests:
            self._connections.add(connection)

    def _connection_closed(self, connection: socket.socket) -> None:
        with self._requests:
            self._connections.discard(connection)

    def _rejected(self, records: object, status: int) -> None:
        self._counters.add(f"rejected_{status}")
        if isinstance(records, list):
            self._counters.add("records_rejected", len(records))

    def _take(self, kind: str, body: bytes) -> tuple[int, dict[str, object]]:
        """Check and spool one request body; ``(status, answer)``. All or nothing."""
        try:
            payload = parse_json(body)
        except Invalid as error:
            self._rejected(None, 400)
            return 400, {"error": str(error)}
        try:
            if kind == "records":
                parsed = [values for _, values in parse_records(payload)]
                self._fill_gpu(parsed)
                rows = [
                    (typing.cast(str, values["record_id"]), _dumps(values)) for values in parsed
                ]
            else:
                notices = parse_starts(payload)
                starts = [
                    (
                        typing.cast(str, values["record_id"]),
                        _dumps(values),
                        process_start(typing.cast(int, values["pid"])),
                    )
                    for values in notices
                ]
        except Invalid as error:
            items = payload.get(kind) if kind == "records" and isinstance(payload, dict) else None
            self._rejected(items, 400)
            return 400, {"error": str(error)}
        spool = self._spool
        if spool is None:
            return 503, {"error": "the sidecar is shutting down"}
        now_ns = self._clock.time_ns()
        try:
            if kind == "records":
                accepted, duplicates = spool.add_records(rows, now_ns)
            else:
                accepted, duplicates = spool.add_starts(starts, now_ns)
        except sqlite3.Error as error:
            return 503, {"error": self._spool_failed(error)}
        self._spool_recovered()
        if kind == "starts" and self._gpu is not None:
            try:
                self._gpu.started(notices)
            except Exception as error:  # GPU fields stay null: the record is what matters
                _guard.log_once("sidecar.gpu", "gpuledger sidecar: GPU metering failed", error)
        if kind == "records":
            self._counters.add("records_received", accepted + duplicates)
            self._counters.add("records_duplicate", duplicates)
        else:
            self._counters.add("starts_received", accepted + duplicates)
        if accepted:
            for consumer in self._consumers:
                consumer.wake.set()
        return 200, {"accepted": accepted, "duplicates": duplicates}

    def _fill_gpu(self, records: list[dict[str, object]]) -> None:
        """Fill the GPU fields ``records`` lack from the sidecar's own meter, if it has one."""
        if self._gpu is not None:
            try:
                self._gpu.fill(records)
            except Exception as error:  # GPU fields stay null: the record is what matters
                _guard.log_once("sidecar.gpu", "gpuledger sidecar: GPU metering failed", error)

    def _spool_failed(self, error: sqlite3.Error) -> str:
        reason = f"the spool cannot be written ({error}): nothing from this request was kept"
        self._counters.add("spool_write_failures")
        first = self._spool_error is None
        self._spool_error = f"the spool at {self.spool_path} cannot be written: {error}"
        if first:
            get_logger().error(
                "gpuledger sidecar: THE SPOOL CANNOT BE WRITTEN; requests are refused with 503 "
                "(workers keep their records) until it can",
                spool=self.spool_path,
                error=str(error),
            )
        return reason

    def _spool_recovered(self) -> None:
        if self._spool_error is not None:
            self._spool_error = None
            get_logger().warning("gpuledger sidecar: the spool can be written again")

    def _prune(self) -> None:
        spool = self._spool
        if spool is None:
            return
        with self._prune_lock:
            spool.prune([consumer.name for consumer in self._consumers], self._clock.time_ns())

    # -- health and metrics -----------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, object]]:
        """``(status, answer)`` of ``GET /healthz``: 503 with a reason when the spool cannot be
        written (or read)."""
        counts = self._counts()
        answer: dict[str, object] = {
            "status": "ok",
            "spooled": counts.get("spooled", 0),
            "pending_export": counts.get("pending_otlp", 0),
            "pending_ledger": counts.get("pending_ledger", 0),
            "open_invocations": counts.get("open_invocations", 0),
        }
        problem = self._spool_error or (None if counts else "the spool cannot be read")
        if problem is not None:
            answer["status"] = "unavailable"
            answer["reason"] = problem
            return 503, answer
        return 200, answer

    def metrics_text(self) -> str:
        """The Prometheus text exposition of the sidecar's counters and gauges."""
        counts = self._counts()
        counter = self._counters.get
        text = _Exposition("gpuledger_sidecar_")
        for name, description, key in _COUNTERS:
            text.add(name, "counter", description, counter(key))
        text.add(
            "requests_rejected_total",
            "counter",
            "Requests refused, by HTTP status.",
            *((f'code="{code}"', counter(f"rejected_{code}")) for code in (400, 413)),
        )
        text.add(
            "killed_total",
            "counter",
            "Invocations the watcher recorded, by outcome.",
            *((f'outcome="{outcome}"', counter(f"watch_{outcome}")) for outcome in _WATCHED),
        )
        gauges = {
            "spool_records": counts.get("spooled", 0),
            "spool_bytes": self._spool.size_bytes() if self._spool else 0,
            "pending_export": counts.get("pending_otlp", 0),
            "pending_ledger": counts.get("pending_ledger", 0),
            "open_invocations": counts.get("open_invocations", 0),
            "spool_writable": 0 if self._spool_error else 1,
        }
        for name, description in _GAUGES:
            text.add(name, "gauge", description, gauges[name])
        return text.render()

    # -- the watcher ------------------------------------------------------------------------

    def _watch(self) -> None:
        assert self._watch_interval_s is not None
        last_forget = 0.0
        while not self._stop_watch.wait(self._watch_interval_s):
            try:
                self.check_open_invocations()
                if time.monotonic() - last_forget > 60.0:
                    last_forget = time.monotonic()
                    spool = self._spool
                    if spool is not None:
                        spool.forget_delivered(self._clock.time_ns() - self._dedupe_window_ns)
            except Exception as error:
                if self._stop_watch.is_set():
                    return
                _guard.log_once(
                    "sidecar.watch", "gpuledger sidecar: the watcher failed (it keeps going)", error
                )

    def check_open_invocations(self) -> int:
        """One look at the open starts (what the watcher does every ``watch_interval_s``):
        note pids found gone, and record as ``killed`` or ``timeout`` the starts whose grace
        has passed. Returns how many were recorded."""
        spool = self._spool
        if spool is None:
            return 0
        now_ns = self._clock.time_ns()
        grace_ns = int(self.grace_s * 1e9)
        recorded = 0
        for start in spool.open_starts():
            values = start.values
            start_ns = int(values["start_ns"])
            timeout_s = values.get("timeout_s")
            timeout_end = None if timeout_s is None else start_ns + int(timeout_s * 1e9)
            gone_ns = start.gone_ns
            if gone_ns is None and not self._pid_alive(int(values["pid"]), start.pid_start):
                gone_ns = now_ns
                spool.mark_gone(start.record_id, now_ns)
            if gone_ns is not None and (timeout_end is None or gone_ns < timeout_end):
                if now_ns - gone_ns < grace_ns:
                    continue
                outcome, end_ns = "killed", max(gone_ns, start_ns)
            elif timeout_end is not None and now_ns >= timeout_end + grace_ns:
                outcome, end_ns = "timeout", timeout_end
            else:
                continue
            record = self._closing_record(values, outcome, end_ns).to_dict()
            self._fill_gpu([record])
            if spool.close_start(start.record_id, _dumps(record), now_ns):
                recorded += 1
                self._counters.add(f"watch_{outcome}")
                get_logger().info(
                    f"gpuledger sidecar: an invocation recorded as {outcome}",
                    outcome=outcome,
                    record_id=start.record_id,
                    pid=values["pid"],
                )
        if recorded:
            for consumer in self._consumers:
                consumer.wake.set()
        return recorded

    def _closing_record(
        self, start: Mapping[str, Any], outcome: str, end_ns: int
    ) -> InvocationRecord:
        """The record of an invocation that never reported: identity from its start notice,
        time from start to ``end_ns``, billed GPU time priced from the catalogue."""
        start_ns = int(start["start_ns"])
        duration_s = (end_ns - start_ns) / 1e9
        gpu_count = int(start.get("gpu_count", 1))
        platform = str(start["platform"])
        gpu_model = start.get("gpu_model")
        billed = duration_s * gpu_count
        pricer, cost_source = self._pricer(platform, gpu_model)
        cost = pricer(billed, gpu_count, None) if pricer is not None else None
        return InvocationRecord(
            record_id=str(start["record_id"]),
            invocation_id=str(start["invocation_id"]),
            handler=str(start["handler"]),
            service_name=str(start["service_name"]),
            platform=platform,
            endpoint=start.get("endpoint"),
            worker_id=start.get("worker_id"),
            region=start.get("region"),
            gpu_model=gpu_model,
            gpu_count=gpu_count,
            start_ns=start_ns,
            end_ns=end_ns,
            duration_s=duration_s,
            outcome=outcome,  # type: ignore[arg-type]
            error_type=None,
            billed_gpu_seconds=billed,
            gpu_unmeasured={"gpu": f"{outcome} before the agent reported; recorded by the sidecar"},
            user_id=start.get("user_id"),
            user_id_pseudonymised=bool(start.get("user_id_pseudonymised", False)),
            tenant=start.get("tenant"),
            cost_usd=cost.total_usd if cost else None,
            cost_execution_usd=cost.execution_usd if cost else None,
            cost_gpu_usd=cost.gpu_usd if cost else None,
            cost_coldstart_usd=cost.coldstart_usd if cost else None,
            pricing_platform=cost.platform if cost else None,
            pricing_version=cost.catalogue_version if cost else None,
            cost_source=cost.source if cost else cost_source,
        )

    def _pricer(self, platform: str, gpu: str | None) -> tuple[Any, str]:
        """The compiled price of ``gpu`` on ``platform`` (None and why, when there is none)."""
        from gpuledger._errors import PricingError  # noqa: PLC0415
        from gpuledger._pricing import (  # noqa: PLC0415
            compile_pricer,
            load_catalogue,
            unpriced_reason,
        )

        if self._catalogue is None:
            try:
                self._catalogue = load_catalogue(None)
            except PricingError as error:
                get_logger().error(
                    "gpuledger sidecar: the pricing catalogue cannot be loaded", error=str(error)
                )
                self._catalogue = False
        if self._catalogue is False:
            return None, "unpriced: the pricing catalogue could not be loaded"
        key = (platform, gpu)
        if key not in self._pricers:
            price = self._catalogue.lookup(platform, gpu)
            self._pricers[key] = (
                None if price is None else compile_pricer(price, self._catalogue.version)
            )
        pricer = self._pricers[key]
        if pricer is not None:
            return pricer, ""
        return None, unpriced_reason(platform, gpu)


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(name, value, "expected a finite number of seconds")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(
            name, value, "must be more than 0" if not allow_zero else "must be 0 or more"
        )
