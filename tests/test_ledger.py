"""The ledger, on both back-ends where they share behaviour, and what only SQLite does.

The tests taking ``ledger_location`` run once on SQLite and once on a real PostgreSQL
(``tests/support/ledgers.py``): round trips, idempotent writes, reading, closing. The rest are
SQLite's own: files and URLs, refusals of damaged or foreign files, schema versions and
migrations, locking, concurrent processes. PostgreSQL's own are in ``tests/test_ledger_pg.py``.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import sqlite3
import threading
import typing
from pathlib import Path
from typing import Any

import pytest

from gpuledger import InvocationRecord, LedgerError
from gpuledger._record import FIELD_NAMES
from gpuledger.ledger import Usage, _schema
from gpuledger.ledger import _sqlite as _ledger
from gpuledger.ledger._sqlite import (
    DEFAULT_LEDGER,
    MIGRATIONS,
    SCHEMA_VERSION,
    default_ledger_location,
    open_ledger,
)
from gpuledger.testing import RECORDS_START_NS as BASE_NS
from gpuledger.testing import make_record

from .support.ledgers import full_record, record_at


@pytest.fixture
def ledger_path(tmp_path: Path) -> str:
    """A path where no SQLite ledger exists yet."""
    return str(tmp_path / "ledger.db")


def test_full_record_sets_every_field() -> None:
    """The round-trip fixture covers every field, so a new field cannot go untested."""
    record = full_record()
    unset = []
    for field in dataclasses.fields(InvocationRecord):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            continue
        if getattr(record, field.name) == default:
            unset.append(field.name)
    assert unset == []


# --- both back-ends ------------------------------------------------------------------------------


def test_round_trip_every_field_set(ledger_location: str) -> None:
    """A record with every field set reads back equal, types included."""
    record = full_record()
    with open_ledger(ledger_location) as ledger:
        assert ledger.write([record]) == 1
        (back,) = ledger.read()
    assert back == record
    assert back.cold is True
    assert back.user_id_pseudonymised is True
    assert type(back.start_ns) is int
    assert type(back.duration_s) is float
    assert list(back.init_phases or {}) == ["model_load", "imports", "(unnamed)"]
    assert back.tags == {"model": "sdxl", "ünïcode": "✓"}


def test_round_trip_optional_fields_unknown(ledger_location: str) -> None:
    """A record whose optional fields are all None reads back with them still None."""
    record = make_record()
    with open_ledger(ledger_location) as ledger:
        ledger.write([record])
        (back,) = ledger.read()
    assert back == record
    assert back.cold is False
    assert back.busy_gpu_seconds is None
    assert back.cost_usd is None
    assert back.init_phases is None
    assert back.tags == {}


def test_round_trip_survives_reopen(ledger_location: str) -> None:
    """Records written by one Ledger are read by the next one opened on the same location."""
    records = [full_record(), make_record(1)]
    with open_ledger(ledger_location) as ledger:
        ledger.write(records)
    with open_ledger(ledger_location, create=False) as ledger:
        assert sorted(ledger.read(), key=lambda r: r.record_id) == sorted(
            records, key=lambda r: r.record_id
        )


def test_nan_reads_back_as_nan_or_none(ledger_location: str) -> None:
    """NaN is stored as NULL: a required float reads back NaN, an optional one None; infinity
    stays infinite; and the record reads back alike from both back-ends."""
    record = make_record(duration_s=math.nan, busy_gpu_seconds=math.nan, energy_j=math.inf)
    with open_ledger(ledger_location) as ledger:
        assert ledger.write([record]) == 1
        (back,) = ledger.read()
    assert math.isnan(back.duration_s)
    assert back.busy_gpu_seconds is None
    assert back.energy_j == math.inf
    with open_ledger(":memory:") as sqlite:
        sqlite.write([record])
        (from_sqlite,) = sqlite.read()
    assert dataclasses.replace(from_sqlite, duration_s=0.0) == dataclasses.replace(
        back, duration_s=0.0
    )


def test_rewrite_is_idempotent(ledger_location: str) -> None:
    """Re-sending records never stores them twice, and write() counts only the new ones."""
    first = [make_record(i) for i in range(5)]
    more = [make_record(i) for i in range(5, 8)]
    lone = make_record(9)
    with open_ledger(ledger_location) as ledger:
        assert ledger.write(first) == 5
        assert ledger.write(first) == 0
        assert ledger.write([*first[:2], *more]) == 3
        assert ledger.write([more[0], more[0]]) == 0
        assert ledger.count() == 8
        assert ledger.write([lone]) == 1
        assert ledger.write([lone]) == 0
        assert ledger.count() == 9


def test_duplicate_within_one_batch_counts_once(ledger_location: str) -> None:
    """The same record_id twice in one batch is stored once: the first."""
    record = make_record()
    twin = dataclasses.replace(record, handler="other")
    again = make_record(1)
    with open_ledger(ledger_location) as ledger:
        assert ledger.write([record, twin]) == 1
        assert ledger.count() == 1
        assert [r.handler for r in ledger.read()] == ["predict"]
        assert ledger.write([again, again]) == 1
        assert ledger.count() == 2


def test_write_empty_batch(ledger_location: str) -> None:
    """An empty batch writes nothing and returns 0."""
    with open_ledger(ledger_location) as ledger:
        assert ledger.write([]) == 0
        assert ledger.count() == 0


def test_bad_record_fails_its_batch_whole(ledger_location: str) -> None:
    """A record breaking the schema raises LedgerError and stores none of its batch; the ledger
    stays usable."""
    broken = dataclasses.replace(make_record(1), handler=None)  # type: ignore[arg-type]
    with open_ledger(ledger_location) as ledger:
        with pytest.raises(LedgerError, match=r"could not write 2 record\(s\).*handler"):
            ledger.write([make_record(0), broken])
        assert ledger.count() == 0
        assert ledger.write([make_record(2)]) == 1


def test_write_from_threads(ledger_location: str) -> None:
    """A ledger opened on one thread, written from several others at once, stores every record
    once."""
    failures: list[BaseException] = []
    with open_ledger(ledger_location) as ledger:

        def writer(offset: int) -> None:
            try:
                for batch in range(5):
                    ledger.write([record_at(offset + batch * 10 + i) for i in range(10)])
            except BaseException as exc:  # surfaced below, in the test's thread
                failures.append(exc)

        threads = [threading.Thread(target=writer, args=(n * 1000,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert failures == []
        assert ledger.count() == 200


def test_read_orders_by_start_and_filters(ledger_location: str) -> None:
    """read() yields by start_ns; since_ns is inclusive, until_ns exclusive."""
    records = [make_record(i) for i in (5, 1, 4, 2, 3)]
    with open_ledger(ledger_location) as ledger:
        ledger.write(records)
        starts = [r.start_ns for r in ledger.read()]
        window = [
            r.invocation_id
            for r in ledger.read(since_ns=BASE_NS + 2_000_000_000, until_ns=BASE_NS + 4_000_000_000)
        ]
        since = [r.invocation_id for r in ledger.read(since_ns=BASE_NS + 4_000_000_000)]
    assert starts == sorted(starts)
    assert len(starts) == 5
    assert window == ["job-2", "job-3"]
    assert since == ["job-4", "job-5"]


def test_read_pages_in_sqlite_order(ledger_location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read longer than one page yields every record once, ordered by (start_ns, record_id)
    exactly as the SQLite ledger orders them, ties and mixed-case ids included."""
    monkeypatch.setattr(_schema, "_READ_PAGE", 7)
    # Three records per start instant, so page boundaries fall inside ties; ids that a locale
    # would sort differently from code points ("B" < "a" < "b" in SQLite).
    ids = [f"{prefix}{i:02d}" for i in range(17) for prefix in ("a", "B", "b")][:50]
    records = [make_record(i // 3, record_id=rid) for i, rid in enumerate(ids)]
    with open_ledger(ledger_location) as ledger, open_ledger(":memory:") as sqlite:
        ledger.write(records)
        sqlite.write(records)
        back = [(r.start_ns, r.record_id) for r in ledger.read()]
        since = list(ledger.read(since_ns=BASE_NS + 10_000_000_000))
        assert back == [(r.start_ns, r.record_id) for r in sqlite.read()]
    assert sorted(record_id for _, record_id in back) == sorted(ids)
    assert back == sorted((r.start_ns, r.record_id) for r in records)
    assert len(since) == 50 - 30


def test_read_usage_matches_read(ledger_location: str) -> None:
    """read_usage yields the replay fields of exactly the records read() yields, in order."""
    records = [
        record_at(
            7 - index,
            gpu_model="H100" if index % 2 else None,
            gpu_count=1 + index % 3,
            duration_s=0.5 * index,
            cold=index == 3,
            init_duration_s=4.0 if index == 3 else None,
            input_tokens=index or None,
        )
        for index in range(8)
    ]
    with open_ledger(ledger_location) as ledger:
        ledger.write(records)
        full = list(ledger.read(since_ns=BASE_NS + 1_000_000_000))
        usage = list(ledger.read_usage(since_ns=BASE_NS + 1_000_000_000))
    assert usage == [Usage(*(getattr(record, name) for name in Usage._fields)) for record in full]
    assert len(usage) == 7
    assert [u.cold for u in usage].count(True) == 1


def test_read_bounds_beyond_64_bits(ledger_location: str) -> None:
    """Bounds past 64-bit integers select nothing or everything instead of failing."""
    with open_ledger(ledger_location) as ledger:
        ledger.write([make_record()])
        assert list(ledger.read(since_ns=2**70)) == []
        assert list(ledger.read(until_ns=-(2**70))) == []
        assert len(list(ledger.read(since_ns=-(2**70), until_ns=2**70))) == 1


def test_closed_ledger_refuses_use(ledger_location: str) -> None:
    """After close(), calls raise LedgerError; closing again is harmless."""
    ledger = open_ledger(ledger_location)
    assert "schema" in repr(ledger)
    ledger.close()
    ledger.close()
    assert "closed" in repr(ledger)
    with pytest.raises(LedgerError, match="closed"):
        ledger.write([make_record()])
    with pytest.raises(LedgerError, match="closed"):
        ledger.count()


# --- SQLite --------------------------------------------------------------------------------------


def test_sqlite_url_location(tmp_path: Path) -> None:
    """sqlite:////absolute/path names the same file as the bare path."""
    path = tmp_path / "url.db"
    with open_ledger(f"sqlite:///{path}") as ledger:
        ledger.write([make_record()])
        assert ledger.path == str(path)
    with open_ledger(str(path), create=False) as ledger:
        assert ledger.count() == 1


def test_create_makes_missing_folders(tmp_path: Path) -> None:
    """create=True makes the ledger's folder when it does not exist."""
    path = tmp_path / "a" / "b" / "ledger.db"
    with open_ledger(str(path)) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
    assert path.is_file()


@pytest.mark.parametrize("location", ["mysql://db/x", "sqlite://", "sqlite:///", "  "])
def test_bad_location_refused(location: str) -> None:
    """Unknown schemes, malformed sqlite URLs and empty locations raise LedgerError."""
    with pytest.raises(LedgerError):
        open_ledger(location)


def test_missing_file_without_create(ledger_path: str) -> None:
    """create=False on a missing file raises LedgerError and creates nothing."""
    with pytest.raises(LedgerError, match="no ledger at"):
        open_ledger(ledger_path, create=False)
    assert not os.path.exists(ledger_path)


def test_empty_file_without_create(ledger_path: str) -> None:
    """create=False on an empty file says it has no schema rather than migrating it."""
    Path(ledger_path).touch()
    with pytest.raises(LedgerError, match="no gpuledger schema"):
        open_ledger(ledger_path, create=False)


@pytest.mark.parametrize("create", [True, False])
def test_corrupt_file_refused(ledger_path: str, create: bool) -> None:
    """A file that is not a SQLite database raises LedgerError naming it, and is left alone."""
    garbage = b"this is not a database\n" * 200
    Path(ledger_path).write_bytes(garbage)
    with pytest.raises(LedgerError, match="not a SQLite database") as caught:
        open_ledger(ledger_path, create=create)
    assert ledger_path in str(caught.value)
    assert Path(ledger_path).read_bytes() == garbage


def test_foreign_sqlite_database_refused(ledger_path: str) -> None:
    """A SQLite database without the gpuledger schema raises LedgerError and is not touched."""
    with sqlite3.connect(ledger_path) as connection:
        connection.execute("CREATE TABLE customers (id INTEGER)")
    connection.close()
    with pytest.raises(LedgerError, match=r"not a gpuledger ledger.*customers"):
        open_ledger(ledger_path)
    with sqlite3.connect(ledger_path) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    connection.close()
    assert tables == {"customers"}


def test_directory_refused(tmp_path: Path) -> None:
    """A directory as the ledger location raises LedgerError."""
    with pytest.raises(LedgerError, match="is a directory"):
        open_ledger(str(tmp_path))


def test_newer_schema_refused(ledger_path: str) -> None:
    """A ledger written by a newer gpuledger (higher schema version) is refused."""
    open_ledger(ledger_path).close()
    with sqlite3.connect(ledger_path) as connection:
        connection.execute(
            "INSERT INTO schema_migrations (version, applied_ns) VALUES (?, 0)",
            (SCHEMA_VERSION + 1,),
        )
    connection.close()
    with pytest.raises(LedgerError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        open_ledger(ledger_path)


def test_fresh_ledger_state(ledger_path: str) -> None:
    """A new ledger is at the current version, in WAL mode, with one row per migration."""
    with open_ledger(ledger_path) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    with sqlite3.connect(ledger_path) as connection:
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
        versions = [row[0] for row in connection.execute("SELECT version FROM schema_migrations")]
    connection.close()
    assert mode == "wal"
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_schema_columns_match_record(ledger_path: str) -> None:
    """The migrated table has one column per record field, typed from the field's annotation."""
    expected_types = {}
    for name, hint in typing.get_type_hints(InvocationRecord).items():
        base = _schema._strip_optional(hint)
        if base in (bool, int):
            expected_types[name] = "INTEGER"
        elif base is float:
            expected_types[name] = "REAL"
        else:  # str, the outcome Literal, and dicts stored as JSON text
            expected_types[name] = "TEXT"
    open_ledger(ledger_path).close()
    with sqlite3.connect(ledger_path) as connection:
        columns = {row[1]: row[2] for row in connection.execute("PRAGMA table_info(invocations)")}
        indexes = {row[1] for row in connection.execute("PRAGMA index_list(invocations)")}
    connection.close()
    assert columns == expected_types
    assert {"invocations_by_start", "invocations_by_invocation", "invocations_by_user"} <= indexes


def test_migrates_version_1_forward(ledger_path: str) -> None:
    """A ledger written at schema 1 (gpuledger 0.1) is brought to the newest schema by the real
    migrations, keeping its rows; the columns added since read as unknown (None)."""
    record = full_record()
    added = (
        "busy_source",
        "energy_active_j",
        "energy_idle_j",
        "energy_source",
        "gpu_uuids",
        "external_wait_cost_usd",
        "billing_worker",
        "worker_start_ns",
        "worker_start_source",
        "worker_ready_ns",
        "request_startup_s",
        "recorded_by",
        "service_version",
        "model",
        "operation",
        "first_item_s",
        "items",
    )
    added_json = ("gpu_unmeasured", "external_targets", "billing_rules")
    old_fields = [name for name in FIELD_NAMES if name not in (*added, *added_json)]
    with sqlite3.connect(ledger_path) as connection:
        _ledger._migrate(connection, ledger_path, MIGRATIONS[:1])
        row = _schema._encode(record)
        values = [row[FIELD_NAMES.index(name)] for name in old_fields]
        connection.execute(
            f"INSERT INTO invocations ({', '.join(old_fields)}) "
            f"VALUES ({', '.join('?' * len(old_fields))})",
            values,
        )
    connection.close()
    with open_ledger(ledger_path, create=False) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        (read,) = ledger.read()
    expected = dataclasses.replace(record, **dict.fromkeys((*added, *added_json)))
    assert read == expected
    with sqlite3.connect(ledger_path) as connection:
        versions = [row[0] for row in connection.execute("SELECT version FROM schema_migrations")]
    connection.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    # Code that knows only schema 1 refuses the migrated file rather than misread it.
    with pytest.raises(LedgerError, match="newer"):
        _ledger._open(ledger_path, create=False, migrations=MIGRATIONS[:1])


def test_missing_column_refused(ledger_path: str) -> None:
    """A schema lacking a record field's column is refused, naming the column."""
    broken = (
        tuple(s.replace("cost_source TEXT", "cost_sauce TEXT") for s in MIGRATIONS[0]),
        *MIGRATIONS[1:],
    )
    with pytest.raises(LedgerError, match=r"lacks the column.*cost_source"):
        _ledger._open(ledger_path, create=True, migrations=broken)


def test_write_retries_while_file_is_locked(
    ledger_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write() backs off and retries on SQLITE_BUSY until another writer lets go."""
    monkeypatch.setattr(_ledger, "_BUSY_TIMEOUT_S", 0.0)  # report BUSY at once: test our retries
    monkeypatch.setattr(_ledger, "_BACKOFF_S", 0.05)
    with open_ledger(ledger_path) as ledger:
        other = sqlite3.connect(ledger_path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.2, lambda: other.execute("COMMIT"))
        release.start()
        try:
            assert ledger.write([make_record()]) == 1
        finally:
            release.join()
            other.close()


def test_write_gives_up_when_lock_is_held(
    ledger_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write() raises LedgerError after its bounded retries if the file stays locked."""
    monkeypatch.setattr(_ledger, "_BUSY_TIMEOUT_S", 0.0)
    monkeypatch.setattr(_ledger, "_BACKOFF_S", 0.001)
    with open_ledger(ledger_path) as ledger:
        other = sqlite3.connect(ledger_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(LedgerError, match="locked"):
                ledger.write([make_record()])
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert ledger.write([make_record()]) == 1


def test_default_location(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPULEDGER_LEDGER names the ledger; unset or empty, it is gpuledger.db."""
    monkeypatch.delenv("GPULEDGER_LEDGER", raising=False)
    assert default_ledger_location() == DEFAULT_LEDGER == "gpuledger.db"
    monkeypatch.setenv("GPULEDGER_LEDGER", "")
    assert default_ledger_location() == DEFAULT_LEDGER
    monkeypatch.setenv("GPULEDGER_LEDGER", "/data/ledger.db")
    assert default_ledger_location() == "/data/ledger.db"


# --- SQLite: several processes, one new file ----------------------------------------------------

_PROCESSES = 4
_BATCHES = 5
_BATCH_SIZE = 40


def _process_writes(
    path: str, worker: int, shared: list[InvocationRecord], start: Any, inserted: Any
) -> None:
    """Child process: open the (new) ledger at the same moment as the others and write to it.

    Puts the number of records it inserted on ``inserted``, or the error it met.
    """
    start.wait()
    total = 0
    try:
        with open_ledger(path) as ledger:
            for batch in range(_BATCHES):
                records = [
                    make_record(worker * 1000 + batch * 100 + i, invocation_id=f"w{worker}")
                    for i in range(_BATCH_SIZE)
                ]
                total += ledger.write(records)
                # Every process also re-sends the same shared records: each must count once.
                total += ledger.write(shared)
    except Exception as exc:  # reported to the parent, which fails the test with it
        inserted.put(repr(exc))
    else:
        inserted.put(total)


@pytest.mark.slow
def test_concurrent_processes_share_a_new_file(ledger_path: str) -> None:
    """Processes opening and writing one new file at once all succeed and lose nothing."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(_PROCESSES)
    inserted = context.Queue()
    shared = [make_record(90_000 + i, invocation_id="shared") for i in range(10)]
    processes = [
        context.Process(target=_process_writes, args=(ledger_path, n, shared, start, inserted))
        for n in range(_PROCESSES)
    ]
    for process in processes:
        process.start()
    counts = [inserted.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [count for count in counts if not isinstance(count, int)] == []
    assert [process.exitcode for process in processes] == [0] * _PROCESSES
    own = _PROCESSES * _BATCHES * _BATCH_SIZE
    assert sum(counts) == own + len(shared)
    with open_ledger(ledger_path, create=False) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        assert ledger.count() == own + len(shared)
        per_worker = [r.invocation_id for r in ledger.read()]
    for worker in range(_PROCESSES):
        assert per_worker.count(f"w{worker}") == _BATCHES * _BATCH_SIZE
    with sqlite3.connect(ledger_path) as connection:
        versions = [row[0] for row in connection.execute("SELECT version FROM schema_migrations")]
    connection.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
