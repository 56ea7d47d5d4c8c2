"""The PostgreSQL ledger against a real server: what only it does, as a ledger shared by a fleet.

Schema translation and migrations (once, under an advisory lock), how values are stored,
idempotent writes from concurrent processes, refusals, connection errors that never show a
password, reconnection, and the whole path from a traced handler to ``gpuledger report`` and
``compare``. What both back-ends do alike (round trips, idempotent writes, reading, closing) is
tested once for each in ``tests/test_ledger.py``, through the ``ledger_location`` fixture.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import re
import sys
import threading
import time
import typing
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

import gpuledger
from gpuledger import InvocationRecord, LedgerError
from gpuledger._record import FIELD_NAMES
from gpuledger.cli._main import main
from gpuledger.ledger import _postgres as _ledger_pg
from gpuledger.ledger import _schema
from gpuledger.ledger._postgres import (
    MIGRATION_LOCK,
    PostgresLedger,
    _encode_row,
    mask_dsn,
    open_postgres,
    to_postgres,
)
from gpuledger.ledger._sqlite import (
    MIGRATIONS,
    SCHEMA_MIGRATIONS_TABLE,
    SCHEMA_VERSION,
    Ledger,
    display_location,
    open_ledger,
)
from gpuledger.testing import FakeClock, make_record

from .support.ledgers import full_record, record_at
from .support.processes import HOST, free_port

STATEMENTS = [SCHEMA_MIGRATIONS_TABLE, *(statement for m in MIGRATIONS for statement in m)]


def query(dsn: str, text: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows of one statement (none if it returns none), run on a connection of its own: to look
    behind the ledger's back."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        cursor = connection.execute(text, params or None)
        return cursor.fetchall() if cursor.description is not None else []


# --- translating the schema ----------------------------------------------------------------------


@pytest.mark.parametrize("statement", STATEMENTS, ids=lambda s: " ".join(s.split())[:60])
def test_every_migration_statement_translates(statement: str) -> None:
    """Each statement keeps its shape and loses SQLite's type names: INTEGER is 64-bit BIGINT,
    REAL is DOUBLE PRECISION, TEXT sorts by code point ("C") as SQLite's BINARY does."""
    translated = to_postgres(statement)
    assert not re.search(r"\b(INTEGER|REAL)\b", translated)
    assert translated.count("BIGINT") == len(re.findall(r"\bINTEGER\b", statement))
    assert translated.count("DOUBLE PRECISION") == len(re.findall(r"\bREAL\b", statement))
    assert translated.count('TEXT COLLATE "C"') == len(re.findall(r"\bTEXT\b", statement))
    # Everything else (names, constraints, the CREATE INDEX statements) is left as it was.
    words = re.compile(r'\bCOLLATE "C"|\b(INTEGER|REAL|TEXT|BIGINT|DOUBLE PRECISION)\b')
    assert words.sub("", translated).split() == words.sub("", statement).split()


def test_translation_examples() -> None:
    """Type names are replaced as whole words only; SQLite-only syntax is refused."""
    assert to_postgres("ALTER TABLE invocations ADD COLUMN x REAL") == (
        "ALTER TABLE invocations ADD COLUMN x DOUBLE PRECISION"
    )
    assert to_postgres("CREATE TABLE t (real_time INTEGER, integers TEXT NOT NULL)") == (
        'CREATE TABLE t (real_time BIGINT, integers TEXT COLLATE "C" NOT NULL)'
    )
    assert to_postgres("CREATE INDEX i ON invocations (start_ns, record_id)") == (
        "CREATE INDEX i ON invocations (start_ns, record_id)"
    )
    for sqlite_only in (
        "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT)",
        "CREATE TABLE t (id TEXT PRIMARY KEY) WITHOUT ROWID",
        "PRAGMA user_version = 3",
        "INSERT OR IGNORE INTO t VALUES (1)",
    ):
        with pytest.raises(ValueError, match="cannot translate"):
            to_postgres(sqlite_only)


# --- opening and migrating -----------------------------------------------------------------------


def test_migrations_create_the_schema(postgres_db: str) -> None:
    """A new database gets every migration, one schema_migrations row each, and the columns
    typed from the record's fields (64-bit integers: start_ns is about 1.8e18)."""
    with open_ledger(postgres_db) as ledger:
        assert isinstance(ledger, PostgresLedger)
        assert isinstance(ledger, Ledger)
        assert ledger.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    versions = [row[0] for row in query(postgres_db, "SELECT version FROM schema_migrations")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    expected = {}
    for name, hint in typing.get_type_hints(InvocationRecord).items():
        base = _schema._strip_optional(hint)
        if base in (bool, int):
            expected[name] = "bigint"
        elif base is float:
            expected[name] = "double precision"
        else:
            expected[name] = "text"
    columns = query(
        postgres_db,
        "SELECT column_name, data_type, collation_name FROM information_schema.columns "
        "WHERE table_name = 'invocations'",
    )
    assert {name: data_type for name, data_type, _ in columns} == expected
    assert {collation for _, data_type, collation in columns if data_type == "text"} == {"C"}
    indexes = {row[0] for row in query(postgres_db, "SELECT indexname FROM pg_indexes")}
    assert {"invocations_by_start", "invocations_by_invocation", "invocations_by_user"} <= indexes


def test_reopen_does_not_migrate_again(postgres_db: str) -> None:
    """A second open finds the schema current and leaves schema_migrations alone."""
    open_ledger(postgres_db).close()
    before = query(postgres_db, "SELECT version, applied_ns FROM schema_migrations")
    with open_ledger(postgres_db, create=False) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
    assert query(postgres_db, "SELECT version, applied_ns FROM schema_migrations") == before


def test_postgres_scheme_alias(postgres_db: str) -> None:
    """postgres:// opens the same ledger as postgresql://."""
    with open_ledger(postgres_db) as ledger:
        ledger.write([make_record()])
    alias = "postgres://" + postgres_db.removeprefix("postgresql://")
    with open_ledger(alias, create=False) as ledger:
        assert ledger.count() == 1
        assert ledger.path == alias


def test_migrates_version_1_forward(postgres_db: str) -> None:
    """A database at schema 1 (gpuledger 0.1) is brought to the newest schema by the real
    migrations, keeping its rows; the columns added since read as unknown (None)."""
    record = full_record()
    added = [name for name in FIELD_NAMES if name not in _columns_of(MIGRATIONS[0][0])]
    assert added  # migrations 2 and on added columns
    old_fields = [name for name in FIELD_NAMES if name not in added]
    row = _encode_row(record)
    with psycopg.connect(postgres_db, autocommit=True) as connection:
        assert _ledger_pg._migrate(connection, postgres_db, MIGRATIONS[:1]) == 1
        connection.execute(
            f"INSERT INTO invocations ({', '.join(old_fields)}) "
            f"VALUES ({', '.join(['%s'] * len(old_fields))})",
            [row[FIELD_NAMES.index(name)] for name in old_fields],
        )
    with open_ledger(postgres_db, create=False) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        (back,) = ledger.read()
    assert back == dataclasses.replace(record, **dict.fromkeys(added))
    versions = [row[0] for row in query(postgres_db, "SELECT version FROM schema_migrations")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    # Code that knows only schema 1 refuses the migrated database rather than misread it.
    with pytest.raises(LedgerError, match="newer"):
        open_postgres(postgres_db, create=False, migrations=MIGRATIONS[:1])


def _columns_of(create_table: str) -> set[str]:
    """The column names a CREATE TABLE statement defines."""
    return {line.split()[0] for line in create_table.splitlines()[2:] if line.strip(" )")}


def test_newer_schema_refused(postgres_db: str) -> None:
    """A database written by a newer gpuledger is refused with the SQLite ledger's message."""
    open_ledger(postgres_db).close()
    query(
        postgres_db,
        "INSERT INTO schema_migrations (version, applied_ns) VALUES (%s, 0)",
        SCHEMA_VERSION + 1,
    )
    with pytest.raises(
        LedgerError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this gpuledger"
    ):
        open_ledger(postgres_db)


def test_missing_column_refused(postgres_db: str) -> None:
    """A schema lacking a record field's column is refused, naming the column."""
    broken = (
        tuple(s.replace("cost_source TEXT", "cost_sauce TEXT") for s in MIGRATIONS[0]),
        *MIGRATIONS[1:],
    )
    with pytest.raises(LedgerError, match=r"lacks the column\(s\) cost_source: a field was added"):
        open_postgres(postgres_db, create=True, migrations=broken)


def test_empty_database_without_create(postgres_db: str) -> None:
    """create=False on a database without the schema refuses it and creates nothing."""
    with pytest.raises(LedgerError, match="no gpuledger schema"):
        open_ledger(postgres_db, create=False)
    assert query(postgres_db, "SELECT to_regclass('schema_migrations')") == [(None,)]


def test_foreign_invocations_table_refused(postgres_db: str) -> None:
    """An invocations table gpuledger did not make is refused and left alone; other tables of a
    shared database are no reason to refuse it."""
    query(postgres_db, "CREATE TABLE customers (id BIGINT)")
    with open_ledger(postgres_db) as ledger:
        assert ledger.count() == 0
    query(postgres_db, "DROP TABLE schema_migrations, invocations")
    query(postgres_db, "CREATE TABLE invocations (id BIGINT)")
    with pytest.raises(LedgerError, match=r"not a gpuledger ledger.*schema_migrations"):
        open_ledger(postgres_db)
    assert query(postgres_db, "SELECT to_regclass('schema_migrations')") == [(None,)]


def test_concurrent_opens_of_a_new_database(postgres_db: str) -> None:
    """Connections opening a new database at the same moment all succeed; it is migrated once."""
    opened = 4
    start = threading.Barrier(opened)
    results: list[object] = []

    def open_it() -> None:
        start.wait()
        try:
            with open_ledger(postgres_db) as ledger:
                results.append(ledger.schema_version)
        except BaseException as exc:  # surfaced below, in the test's thread
            results.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(opened)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [SCHEMA_VERSION] * opened
    versions = [row[0] for row in query(postgres_db, "SELECT version FROM schema_migrations")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_migration_waits_for_the_advisory_lock(postgres_db: str) -> None:
    """While another session holds the migration lock, opening a new database waits for it."""
    done = threading.Event()
    failures: list[BaseException] = []

    def open_it() -> None:
        try:
            open_ledger(postgres_db).close()
        except BaseException as exc:
            failures.append(exc)
        finally:
            done.set()

    with psycopg.connect(postgres_db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        thread = threading.Thread(target=open_it)
        thread.start()
        assert not done.wait(0.5), "migrated without the advisory lock"
        assert query(postgres_db, "SELECT to_regclass('invocations')") == [(None,)]
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        thread.join(timeout=30)
    assert failures == []
    assert done.is_set()


# --- how values are stored ------------------------------------------------------------------------


def test_nan_is_stored_as_null(postgres_db: str) -> None:
    """NaN is stored as NULL, as SQLite does (how it reads back: ``tests/test_ledger.py``)."""
    record = make_record(duration_s=math.nan, busy_gpu_seconds=math.nan)
    with open_ledger(postgres_db) as ledger:
        assert ledger.write([record]) == 1
    assert query(postgres_db, "SELECT duration_s, busy_gpu_seconds FROM invocations") == [
        (None, None)
    ]


def test_json_fields_are_json_text(postgres_db: str) -> None:
    """Dicts are stored as the same JSON text as in SQLite, readable by other tools."""
    with open_ledger(postgres_db) as ledger:
        ledger.write([full_record()])
    ((tags, cold),) = query(postgres_db, "SELECT tags, cold FROM invocations")
    assert json.loads(tags) == {"model": "sdxl", "ünïcode": "✓"}
    assert cold == 1


# --- concurrent writers ---------------------------------------------------------------------------


_PROCESSES = 4
_BATCHES = 4
_BATCH_SIZE = 50


def _process_writes(dsn: str, worker: int, start: Any, inserted: Any) -> None:
    """Child process: open the new database with the others and write batches that overlap its
    neighbour's, half of the workers in reverse order; put its insert count (or error) on
    ``inserted``."""
    start.wait()
    total = 0
    try:
        with open_ledger(dsn) as ledger:
            for batch in range(_BATCHES):
                # Worker n writes [n*150, n*150 + 200): 50 records shared with worker n + 1.
                first = worker * 150 + batch * _BATCH_SIZE
                indices = range(first, first + _BATCH_SIZE)
                records = [record_at(i) for i in indices]
                if worker % 2:
                    records.reverse()
                total += ledger.write(records)
                total += ledger.write([record_at(90_000 + i) for i in range(10)])
    except Exception as exc:  # reported to the parent, which fails the test with it
        inserted.put(repr(exc))
    else:
        inserted.put(total)


@pytest.mark.slow
def test_concurrent_processes_write_the_union(postgres_db: str) -> None:
    """Processes writing disjoint and overlapping batches at once into a new database end with
    exactly the union, each record counted new by exactly one writer."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(_PROCESSES)
    inserted = context.Queue()
    processes = [
        context.Process(target=_process_writes, args=(postgres_db, n, start, inserted))
        for n in range(_PROCESSES)
    ]
    for process in processes:
        process.start()
    counts = [inserted.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [count for count in counts if not isinstance(count, int)] == []
    assert [process.exitcode for process in processes] == [0] * _PROCESSES
    union = {
        f"{i:032x}"
        for worker in range(_PROCESSES)
        for i in range(worker * 150, worker * 150 + _BATCHES * _BATCH_SIZE)
    } | {f"{90_000 + i:032x}" for i in range(10)}
    assert sum(counts) == len(union) == 3 * 150 + 200 + 10
    with open_ledger(postgres_db, create=False) as ledger:
        assert ledger.count() == len(union)
        assert {record.record_id for record in ledger.read()} == union
    versions = [row[0] for row in query(postgres_db, "SELECT version FROM schema_migrations")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


# --- connections, errors and passwords -----------------------------------------------------------


def test_reconnects_after_the_connection_breaks(postgres_db: str) -> None:
    """A connection the server dropped (restart, idle timeout) is reopened by the next call."""
    with open_ledger(postgres_db) as ledger:
        assert isinstance(ledger, PostgresLedger)
        assert ledger.write([make_record(0)]) == 1
        connection = ledger._connection
        assert connection is not None
        query(postgres_db, "SELECT pg_terminate_backend(%s)", connection.info.backend_pid)
        assert ledger.write([make_record(1)]) == 1
        assert ledger.count() == 2


def test_closed_port_names_the_location_without_password() -> None:
    """Nothing listening: LedgerError names the location, the password masked, and the reason."""
    secret = "s3cret-" + uuid.uuid4().hex
    location = f"postgresql://ledger:{secret}@{HOST}:{free_port()}/fleet"
    with pytest.raises(LedgerError) as caught:
        open_ledger(location)
    message = str(caught.value)
    assert secret not in message
    assert f"cannot connect to the ledger at postgresql://ledger:***@{HOST}:" in message
    assert "refused" in message.lower()
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_missing_database_names_the_reason(postgres_dsn: str) -> None:
    """A database that does not exist is named in the error (databases are never created)."""
    secret = "pw-" + uuid.uuid4().hex
    base = postgres_dsn.rsplit("/", 1)[0].replace("postgres@", f"postgres:{secret}@")
    with pytest.raises(LedgerError, match='database "no_such_db" does not exist') as caught:
        open_ledger(f"{base}/no_such_db?password={secret}", create=False)
    assert secret not in str(caught.value)


def test_malformed_location_is_scrubbed() -> None:
    """libpq quotes parts of a malformed URL in its errors: the password never gets through."""
    secret = "zz" + uuid.uuid4().hex
    for location in (
        f"postgresql://ledger:{secret}%zz@{HOST}/fleet",  # a bad percent-escape in the password
        f"postgresql://ledger:{secret}/x@{HOST}/fleet",  # a raw "/" ends libpq's user part
        f"postgresql://{HOST}/fleet?password={secret}&bogus_option=1",
    ):
        with pytest.raises(LedgerError) as caught:
            open_ledger(location)
        assert secret not in str(caught.value), str(caught.value)
        assert "ledger" in str(caught.value)


@pytest.fixture
def password_role(postgres_dsn: str, postgres_db: str) -> Iterator[tuple[str, str]]:
    """``(user, password)`` of a role that must log in with a password (scram-sha-256), and may
    create tables in ``postgres_db``.

    The session's server trusts everyone, so one rule for this role alone goes first in its
    pg_hba.conf (and is taken out again afterwards): other tests are not affected.
    """
    user, password = f"gl_{uuid.uuid4().hex[:12]}", f"right-{uuid.uuid4().hex}"
    role = sql.Identifier(user)
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        row = connection.execute("SHOW hba_file").fetchone()
        assert row is not None
        hba = Path(row[0])
        connection.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password))
        )
        query(postgres_db, f"GRANT ALL ON SCHEMA public TO {role.as_string(connection)}")
        original = hba.read_text()
        hba.write_text(f"host all {user} {HOST}/32 scram-sha-256\n{original}")
        try:
            connection.execute("SELECT pg_reload_conf()")
            wrong = postgres_dsn.replace("postgres@", f"{user}:wrong@", 1)
            deadline = time.monotonic() + 10
            while True:  # the reload is asynchronous: wait until the rule is in force
                try:
                    psycopg.connect(wrong, connect_timeout=2).close()
                except psycopg.OperationalError:
                    break
                assert time.monotonic() < deadline, "pg_hba.conf reload not in force"
                time.sleep(0.05)
            yield user, password
        finally:
            hba.write_text(original)
            connection.execute("SELECT pg_reload_conf()")
            query(postgres_db, f"DROP OWNED BY {role.as_string(connection)}")
            connection.execute(sql.SQL("DROP ROLE {}").format(role))


def test_wrong_password_is_refused_without_showing_it(
    postgres_db: str, password_role: tuple[str, str]
) -> None:
    """A refused login says why and whose, never the password; the right one opens the ledger,
    whose location and repr show the password masked."""
    user, password = password_role
    host_port_db = postgres_db.split("@", 1)[1]
    wrong = f"wrong-{uuid.uuid4().hex}"
    with pytest.raises(LedgerError) as caught:
        open_ledger(f"postgresql://{user}:{wrong}@{host_port_db}")
    message = str(caught.value)
    assert wrong not in message
    assert f"cannot connect to the ledger at postgresql://{user}:***@{host_port_db}" in message
    assert "password authentication failed" in message
    with open_ledger(f"postgresql://{user}:{password}@{host_port_db}") as ledger:
        assert ledger.write([make_record()]) == 1
        assert ledger.location == ledger.path == f"postgresql://{user}:***@{host_port_db}"
        assert password not in repr(ledger)


def test_display_location_masks_passwords() -> None:
    """Locations shown to people hide the password, in the user part or as a parameter."""
    assert display_location("postgresql://u:p%40ss@db:5432/x?sslmode=require") == (
        "postgresql://u:***@db:5432/x?sslmode=require"
    )
    assert display_location("postgres://u@db/x?password=secret&x=1") == (
        "postgres://u@db/x?password=***&x=1"
    )
    assert display_location("postgresql://u:pa/ss@db/x") == "postgresql://u:***@db/x"
    assert display_location("postgresql://db/x") == "postgresql://db/x"
    assert display_location("/data/ledger.db") == "/data/ledger.db"
    assert mask_dsn(" postgresql://a:b@h/d ") == "postgresql://a:***@h/d"


def test_missing_psycopg_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without psycopg, opening a PostgreSQL ledger says what to install (and no password)."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    with pytest.raises(LedgerError, match=r"pip install 'gpuledger\[postgres\]'") as caught:
        open_ledger("postgresql://u:hunter2@db.internal/fleet")
    assert "hunter2" not in str(caught.value)
    assert "postgresql://u:***@db.internal/fleet" in str(caught.value)


# --- end to end: a worker writes, report and compare read ----------------------------------------


def test_traced_handler_to_report_and_compare(
    postgres_db: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, no_internal_errors: None
) -> None:
    """GPULEDGER_LEDGER=postgresql://...: a worker's @traced_handler writes the shared ledger,
    and `gpuledger report` and `gpuledger compare` read it (from the flag and the variable)."""
    monkeypatch.setenv("GPULEDGER_LEDGER", postgres_db)
    gpuledger.configure(
        platform="runpod",
        gpu="H100",
        service_name="fleet-service",
        tracing=False,
        metrics=False,
        clock=clock,
        strict=True,
        gpu_metering="off",
    )

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> dict[str, Any]:
        clock.advance(15.0)
        return {"id": job["id"]}

    for number in range(5):
        handler({"id": f"job-{number}", "input": {}})
        clock.advance(60.0)
    assert gpuledger.shutdown(10)

    with open_ledger(postgres_db, create=False) as ledger:
        records = list(ledger.read())
    assert [r.invocation_id for r in records] == [f"job-{n}" for n in range(5)]
    assert {(r.platform, r.service_name, r.outcome) for r in records} == {
        ("runpod", "fleet-service", "ok")
    }

    runner = CliRunner()
    result = runner.invoke(main, ["report", "--ledger", postgres_db, "--format", "json"])
    assert result.exit_code == 0, result.output
    # Its requests, and the idle time RunPod bills after each (the 5 s idle timeout): (idle).
    rows = {row["key"]: row for row in json.loads(result.stdout)}
    row, idle = rows["(none)"], rows["(idle)"]
    assert row["invocations"] == 5
    assert idle["idle_gpu_s"] > 0
    table = runner.invoke(main, ["report", "--by", "platform"])  # from GPULEDGER_LEDGER
    assert table.exit_code == 0, table.output
    assert "runpod" in table.output

    compared = runner.invoke(main, ["compare", "--ledger", postgres_db, "--format", "json"])
    assert compared.exit_code == 0, compared.output
    document = json.loads(compared.stdout)
    assert document["burstiness"]["requests"] == 5
    assert document["gpu"] == "H100"


def test_report_on_an_unreachable_ledger_exits_1() -> None:
    """`gpuledger report` on an unreachable database exits 1 with the masked location."""
    location = f"postgresql://u:topsecret@{HOST}:{free_port()}/fleet"
    result = CliRunner().invoke(main, ["report", "--ledger", location])
    assert result.exit_code == 1
    assert "cannot connect to the ledger at postgresql://u:***@" in result.output
    assert "topsecret" not in result.output
