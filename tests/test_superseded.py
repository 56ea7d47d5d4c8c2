"""A real record replaces the sidecar's stand-in for it: every killed invocation recorded as
killed, and no finished one.

The sidecar's watcher records an invocation whose process died (or whose timeout passed) as
``killed`` (``timeout``), marked ``recorded_by="sidecar"``. The worker's real record may still
come (kept in its journal while the sidecar was down and replayed by the next worker, or sent by
a worker frozen past the grace): in the ledger (both back-ends), in the spool (spooled or
delivered, across a re-drive and an older spool's schema) and end to end through a sidecar, it
takes the stand-in's place; everything else stays idempotent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuledger import InvocationRecord
from gpuledger._build import closing_record
from gpuledger._record import FIELD_NAMES, RECORD_FORMAT, RECORDED_BY_SIDECAR
from gpuledger.exporters._records import span_ids
from gpuledger.ledger import _schema
from gpuledger.ledger import _sqlite as _ledger
from gpuledger.ledger._sqlite import MIGRATIONS, SCHEMA_VERSION, open_ledger
from gpuledger.sidecar._server import Sidecar
from gpuledger.sidecar._spool import Spool, redrive_dead_letters
from gpuledger.sidecar._validation import dumps
from gpuledger.testing import make_record

from .conftest import FakeClock
from .support.sidecars import in_process_sidecars
from .test_sidecar import FakeOtlp, _start, ledger_rows, post, wait_for
from .test_sidecar import make_record as record_body

SECOND_NS = 1_000_000_000


def stand_in_for(real: InvocationRecord, outcome: str = "killed") -> InvocationRecord:
    """The sidecar's record of ``real``'s invocation had its process died first: made from the
    start notice the worker sent, as the watcher makes it."""
    notice = {
        "record_id": real.record_id,
        "invocation_id": real.invocation_id,
        "handler": real.handler,
        "start_ns": real.start_ns,
        "pid": 4242,
        "service_name": real.service_name,
        "platform": real.platform,
        "gpu_count": real.gpu_count,
    }
    return closing_record(notice, outcome, real.start_ns + 30 * SECOND_NS, None, "unpriced")


def finished(**fields: Any) -> InvocationRecord:
    """A real record that differs from its stand-in in every way that shows: outcome, duration,
    GPU fields, cost, tags."""
    return make_record(
        3,
        0.75,
        outcome="ok",
        busy_gpu_seconds=0.5,
        cost_usd=0.001,
        cost_source="edition:seed-2026-03",
        tags={"model": "sdxl"},
        **fields,
    )


# --- the ledger, on both back-ends ---------------------------------------------------------------


def test_the_stand_in_is_marked() -> None:
    """The watcher's record says it is the sidecar's, and the real one does not."""
    real = finished()
    assert stand_in_for(real).recorded_by == RECORDED_BY_SIDECAR == "sidecar"
    assert real.recorded_by is None


def test_a_real_record_replaces_the_stand_in(ledger_location: str) -> None:
    """Killed, then the real record: one row, the real one in every column; write() counts the
    replaced row."""
    real = finished()
    with open_ledger(ledger_location) as ledger:
        assert ledger.write([stand_in_for(real)]) == 1
        assert [row.outcome for row in ledger.read()] == ["killed"]
        assert ledger.write([real]) == 1
        assert ledger.count() == 1
        (back,) = ledger.read()
    assert back == real
    assert back.recorded_by is None


def test_a_stand_in_after_the_real_record_changes_nothing(ledger_location: str) -> None:
    """The real record, then a stand-in of it (a start notice the watcher closed late): the real
    one stays."""
    real = finished()
    with open_ledger(ledger_location) as ledger:
        assert ledger.write([real]) == 1
        assert ledger.write([stand_in_for(real)]) == 0
        assert ledger.write([stand_in_for(real, "timeout")]) == 0
        assert list(ledger.read()) == [real]


def test_copies_change_nothing(ledger_location: str) -> None:
    """A second copy of a real record, changed or not, is skipped; so is a second stand-in, and a
    real record does not replace another real one."""
    real = finished()
    other = make_record(4)
    stand_in = stand_in_for(other)
    with open_ledger(ledger_location) as ledger:
        assert ledger.write([real, stand_in]) == 2
        assert ledger.write([real]) == 0
        assert ledger.write([dataclasses.replace(real, outcome="error", handler="other")]) == 0
        assert ledger.write([stand_in_for(other, "timeout")]) == 0
        assert sorted(ledger.read(), key=lambda record: record.record_id) == sorted(
            [real, stand_in], key=lambda record: record.record_id
        )


@pytest.mark.parametrize("order", ["stand-in first", "real first"])
def test_both_in_one_batch(ledger_location: str, order: str) -> None:
    """A stand-in and its real record in one batch, either order: one row, the real one, counted
    once (PostgreSQL writes a batch sorted, SQLite in order: both keep the same)."""
    real = finished()
    batch = [stand_in_for(real), real]
    if order == "real first":
        batch.reverse()
    with open_ledger(ledger_location) as ledger:
        assert ledger.write(batch) == 1
        assert list(ledger.read()) == [real]


def _at_version_5(location: str, record: InvocationRecord) -> None:
    """Make a ledger at ``location`` as gpuledger with schema 5 left it, holding ``record``."""
    newer = ("recorded_by", "service_version", "model", "operation", "first_item_s", "items")
    old_fields = [name for name in FIELD_NAMES if name not in newer]
    if location.startswith("postgresql://"):
        import psycopg  # only where PostgreSQL runs

        from gpuledger.ledger import _postgres

        row = _postgres._encode_row(record)
        with psycopg.connect(location, autocommit=True) as connection:
            assert _postgres._migrate(connection, location, MIGRATIONS[:5]) == 5
            connection.execute(
                f"INSERT INTO invocations ({', '.join(old_fields)}) "
                f"VALUES ({', '.join(['%s'] * len(old_fields))})",
                [row[FIELD_NAMES.index(name)] for name in old_fields],
            )
        return
    row = _schema._encode(record)
    with contextlib.closing(sqlite3.connect(location, isolation_level=None)) as connection:
        assert _ledger._migrate(connection, location, MIGRATIONS[:5]) == 5
        connection.execute(
            f"INSERT INTO invocations ({', '.join(old_fields)}) "
            f"VALUES ({', '.join('?' * len(old_fields))})",
            [row[FIELD_NAMES.index(name)] for name in old_fields],
        )


def test_a_version_5_ledger_gains_the_column(ledger_location: str) -> None:
    """A ledger at schema 5 opens at 6 with ``recorded_by``; its rows read as the agent's (None),
    so neither a stand-in nor another copy replaces them, and new stand-ins are replaceable."""
    assert SCHEMA_VERSION >= 6
    old = make_record(1)
    _at_version_5(ledger_location, old)
    real = finished()
    with open_ledger(ledger_location, create=False) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        assert list(ledger.read()) == [old]
        assert ledger.write([stand_in_for(old)]) == 0
        assert ledger.write([stand_in_for(real)]) == 1
        assert ledger.write([real]) == 1
        assert sorted(ledger.read(), key=lambda record: record.record_id) == sorted(
            [old, real], key=lambda record: record.record_id
        )


# --- the spool -----------------------------------------------------------------------------------


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """A new spool in the test's directory."""
    opened = Spool(str(tmp_path / "spool.db"))
    yield opened
    opened.close()


def _spool_row(record: InvocationRecord) -> tuple[str, str, bool]:
    return record.record_id, dumps(record.to_dict()), record.recorded_by is not None


def _close_as_killed(spool: Spool, real: InvocationRecord, now_ns: int) -> None:
    """What the watcher does: a start notice for ``real``'s invocation, closed as killed."""
    notice = json.dumps({"record_id": real.record_id, "pid": 4242})
    assert spool.add_starts([(real.record_id, notice, None)], now_ns) == (1, 0)
    stand_in = stand_in_for(real)
    assert spool.close_start(real.record_id, dumps(stand_in.to_dict()), now_ns)


def _spooled(spool: Spool) -> list[tuple[int, str]]:
    """``(seq, outcome)`` of every spooled row, in ``seq`` order."""
    return [(seq, json.loads(body)["outcome"]) for seq, body, _ in spool.read(0, 100)]


def _deliver_all(spool: Spool, now_ns: int) -> None:
    """Both consumers pass every row, and the rows are pruned into ``delivered``."""
    last = max(seq for seq, _, _ in spool.read(0, 100))
    for consumer in ("ledger", "otlp"):
        spool.advance(consumer, last)
    assert spool.prune(["ledger", "otlp"], now_ns) > 0
    assert spool.read(0, 100) == []


def test_the_spool_takes_a_real_record_in_a_spooled_stand_ins_place(spool: Spool) -> None:
    """A stand-in still spooled is deleted and the real record spooled after it (a consumer not
    yet at the stand-in delivers only the real one); the same again is a duplicate."""
    real = finished()
    _close_as_killed(spool, real, 1)
    ((stand_in_seq, outcome),) = _spooled(spool)
    assert outcome == "killed"
    assert spool.add_records([_spool_row(real)], 2) == (1, 0)
    assert [(seq > stand_in_seq, outcome) for seq, outcome in _spooled(spool)] == [(True, "ok")]
    assert spool.add_records([_spool_row(real)], 3) == (0, 1)
    assert spool.add_records([_spool_row(stand_in_for(real))], 3) == (0, 1)
    assert [outcome for _, outcome in _spooled(spool)] == ["ok"]


def test_the_spool_takes_a_real_record_after_its_stand_in_was_delivered(spool: Spool) -> None:
    """A stand-in delivered and pruned is remembered as one: the real record is accepted (a new
    row for every consumer), then remembered as real once delivered; copies of either are
    duplicates throughout."""
    real = finished()
    _close_as_killed(spool, real, 1)
    _deliver_all(spool, 2)
    assert spool.add_records([_spool_row(stand_in_for(real))], 3) == (0, 1)
    assert spool.add_records([_spool_row(real), _spool_row(real)], 3) == (1, 1)
    assert [outcome for _, outcome in _spooled(spool)] == ["ok"]
    _deliver_all(spool, 4)
    assert spool.add_records([_spool_row(real)], 5) == (0, 1)
    assert spool.add_records([_spool_row(stand_in_for(real))], 5) == (0, 1)
    assert spool.read(0, 100) == []


def test_a_delivered_real_record_is_not_replaced(spool: Spool) -> None:
    """A real record delivered and pruned stays a duplicate for a later copy of itself."""
    real = finished()
    assert spool.add_records([_spool_row(real)], 1) == (1, 0)
    _deliver_all(spool, 2)
    assert spool.add_records([_spool_row(real)], 3) == (0, 1)


def test_an_older_spool_gains_the_column(tmp_path: Path) -> None:
    """A spool made before records said who wrote them opens with ``stand_in`` on ``records``
    and ``delivered``; what it had delivered stays a duplicate (its stand-ins are not known as
    such)."""
    path = tmp_path / "old.db"
    real = finished()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute(
            "CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "record_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL, received_ns INTEGER NOT NULL, "
            "only_for TEXT)"
        )
        connection.execute(
            "CREATE TABLE delivered (record_id TEXT NOT NULL PRIMARY KEY, "
            "delivered_ns INTEGER NOT NULL)"
        )
        connection.execute("INSERT INTO delivered VALUES (?, 1)", (real.record_id,))
    opened = Spool(str(path))
    try:
        assert opened.add_records([_spool_row(real)], 2) == (0, 1)
        late = finished()
        _close_as_killed(opened, late, 3)
        assert opened.add_records([_spool_row(late)], 4) == (1, 0)
    finally:
        opened.close()
    with contextlib.closing(sqlite3.connect(path)) as connection:
        for table in ("records", "delivered"):
            columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            assert "stand_in" in columns, table


def test_a_stand_in_and_its_real_record_in_one_batch(spool: Spool) -> None:
    """Both in one request, either order: the real record is spooled, the stand-in a
    duplicate."""
    for first_real in (False, True):
        real = finished()
        batch = [_spool_row(stand_in_for(real)), _spool_row(real)]
        if first_real:
            batch.reverse()
        assert spool.add_records(batch, 1) == (1, 1)
    assert [outcome for _, outcome in _spooled(spool)] == ["ok", "ok"]


def test_a_superseded_stand_in_is_not_re_driven(spool: Spool, tmp_path: Path) -> None:
    """A stand-in set aside as a dead letter is re-driven as a stand-in (a real record still
    replaces it); once its real record has arrived, and been delivered, it is only removed,
    never put back over it."""
    kept, replaced = finished(), finished()
    for real in (kept, replaced):
        _close_as_killed(spool, real, 1)
    spool.dead_letter("otlp", [(seq, "refused") for seq, _, _ in spool.read(0, 100)], 2)
    _deliver_all(spool, 2)
    assert spool.add_records([_spool_row(replaced)], 3) == (1, 0)
    _deliver_all(spool, 4)
    letters = redrive_dead_letters(str(tmp_path / "spool.db"))
    assert sorted(letter.record_id for letter in letters) == sorted(
        [kept.record_id, replaced.record_id]
    )
    assert [
        (json.loads(body)["record_id"], json.loads(body)["outcome"])
        for _, body, _ in spool.read(0, 100)
    ] == [(kept.record_id, "killed")]
    assert spool.add_records([_spool_row(replaced)], 5) == (0, 1)
    assert spool.add_records([_spool_row(kept)], 5) == (1, 0)
    assert [outcome for _, outcome in _spooled(spool)] == ["ok"]


# --- end to end, through a sidecar ---------------------------------------------------------------


@pytest.fixture
def sidecar_at(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """In-process sidecars (no watcher thread: the test calls ``check_open_invocations``) with
    a spool and a ledger in ``tmp_path``; all are stopped at the end."""
    with in_process_sidecars(tmp_path) as make:
        yield make


def _killed(
    sidecar_at: Callable[..., Sidecar], **options: Any
) -> tuple[Sidecar, dict[str, Any], FakeClock]:
    """A sidecar whose watcher has just recorded one invocation as killed: its pid found gone,
    then the grace (2 s) passed."""
    clock = FakeClock(start_ns=time.time_ns())
    gone: set[int] = set()
    sidecar = sidecar_at(
        clock=clock, grace_s=2.0, pid_alive=lambda pid, started: pid not in gone, **options
    )
    start = _start(4242, start_ns=clock.time_ns())
    assert post(sidecar.url, "/v1/starts", {"starts": [start]}) == (
        200,
        {"accepted": 1, "duplicates": 0},
    )
    gone.add(4242)
    assert sidecar.check_open_invocations() == 0  # found gone: the grace starts
    clock.advance(2.5)
    assert sidecar.check_open_invocations() == 1
    return sidecar, start, clock


def _outcomes(ledger: Path) -> list[tuple[str, str | None]]:
    return [(row["outcome"], row["recorded_by"]) for row in ledger_rows(ledger)]


def test_a_late_record_replaces_a_delivered_killed_one(
    sidecar_at: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """Killed, delivered to the ledger and OTLP and gone from the spool; then the real record:
    accepted, the ledger holds it alone, and OTLP gets the span again with the same ids and the
    real outcome. Copies of either afterwards change nothing."""
    otlp = FakeOtlp()
    try:
        sidecar, start, _ = _killed(sidecar_at, otlp_endpoint=otlp.endpoint)
        ledger = tmp_path / "ledger.db"
        wait_for("the killed record", lambda: _outcomes(ledger) == [("killed", "sidecar")])
        wait_for("the spool to empty", lambda: sidecar.health()[1]["spooled"] == 0)
        wait_for("the killed span", lambda: otlp.span_count() == 1)
        with open_ledger(str(ledger), create=False) as reader:
            (stand_in,) = reader.read()

        real = record_body(0, record_id=start["record_id"], invocation_id=start["invocation_id"])
        assert post(sidecar.url, "/v1/records", {"records": [real]}) == (
            200,
            {"accepted": 1, "duplicates": 0},
        )
        wait_for("the real record", lambda: _outcomes(ledger) == [("ok", None)])
        (row,) = ledger_rows(ledger)
        assert (row["record_id"], row["start_ns"], row["cost_usd"]) == (
            real["record_id"],
            real["start_ns"],
            real["cost_usd"],
        )
        wait_for("the span again", lambda: otlp.span_count() == 2)
        first, second = otlp.spans
        trace_id, span_id = span_ids(start["record_id"])
        for span in (first, second):
            assert (span["trace_id"], span["span_id"]) == (
                f"{trace_id:032x}",
                f"{span_id:016x}",
            )
        assert [span["attributes"]["gpuledger.outcome"] for span in (first, second)] == [
            "killed",
            "ok",
        ]

        for copy in (real, stand_in.to_dict()):
            assert post(sidecar.url, "/v1/records", {"records": [copy]}) == (
                200,
                {"accepted": 0, "duplicates": 1},
            )
        time.sleep(0.3)  # what a copy would have changed, it would have by now
        assert _outcomes(ledger) == [("ok", None)]
        assert otlp.span_count() == 2
    finally:
        otlp.close()


def test_a_real_record_before_the_killed_one_was_delivered(
    sidecar_at: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """The ledger held (another process has it locked) while the invocation is recorded killed
    and the real record arrives: once it can be written, it holds the real record alone."""
    ledger = tmp_path / "ledger.db"
    open_ledger(str(ledger)).close()
    lock = sqlite3.connect(ledger, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        sidecar, start, _ = _killed(sidecar_at)
        real = record_body(0, record_id=start["record_id"])
        assert post(sidecar.url, "/v1/records", {"records": [real]}) == (
            200,
            {"accepted": 1, "duplicates": 0},
        )
        assert _outcomes(ledger) == []
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_for("the real record", lambda: _outcomes(ledger) == [("ok", None)], timeout=30.0)
    wait_for("the spool to empty", lambda: sidecar.health()[1]["spooled"] == 0)
    assert _outcomes(ledger) == [("ok", None)]


def test_an_unknown_recorded_by_is_refused(sidecar_at: Callable[..., Sidecar]) -> None:
    """``recorded_by`` is None or ``"sidecar"``: anything else is a 400 naming the field (in a
    newer format, an unknown value is dropped)."""
    sidecar = sidecar_at()
    for value, problem in (("proxy", "expected one of sidecar"), (1, "expected one of sidecar")):
        assert post(
            sidecar.url, "/v1/records", {"records": [record_body(0, recorded_by=value)]}
        ) == (400, {"error": f"records[0].recorded_by: {problem}"})
    stand_in = record_body(2, recorded_by="sidecar", outcome="killed")
    assert post(
        sidecar.url, "/v1/records", {"records": [record_body(1, recorded_by=None), stand_in]}
    ) == (200, {"accepted": 2, "duplicates": 0})
    # A newer worker's value this version does not know is dropped, not refused: its record is
    # a real one (a newer format must never turn into a 400).
    newer = {"format": RECORD_FORMAT + 1, "records": [record_body(3, recorded_by="proxy")]}
    assert post(sidecar.url, "/v1/records", newer) == (200, {"accepted": 1, "duplicates": 0})
    # A stand-in that came through the door is replaceable like the watcher's own.
    real = {**stand_in, "recorded_by": None, "outcome": "ok"}
    assert post(sidecar.url, "/v1/records", {"records": [real]}) == (
        200,
        {"accepted": 1, "duplicates": 0},
    )
