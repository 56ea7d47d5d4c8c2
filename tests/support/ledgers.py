"""Ledgers in tests: one fixture for both back-ends, and reading what a process under test wrote
to its ledger, from the outside.

``ledger_location`` is parametrised over the two back-ends, so that a test of behaviour both
share runs once on each: ``sqlite`` (a file in the test's directory) and ``postgres`` (a new
database on the session's real PostgreSQL server, ``postgres_db`` of ``services``; skipped where
PostgreSQL is not installed, failed under CI).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from gpuledger import InvocationRecord
from gpuledger.testing import make_record

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=BACKENDS)
def ledger_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a new ledger goes, once per back-end: a SQLite file path that does not exist yet,
    then the URL of a new, empty PostgreSQL database."""
    if request.param == "postgres":
        dsn: str = request.getfixturevalue("postgres_db")
        return dsn
    return str(tmp_path / "ledger.db")


def ledger_rows(path: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The ledger's rows, oldest first, as soon as there are ``count`` (writers write in
    batches), or those there are at ``timeout``; the caller asserts how many it expects.

    Read-only, so a file another process is writing is never changed by the test.
    """
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while True:
        if path.exists():
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
                db.row_factory = sqlite3.Row
                with contextlib.suppress(sqlite3.OperationalError):  # no table yet
                    query = "SELECT * FROM invocations ORDER BY start_ns, rowid"
                    rows = [dict(row) for row in db.execute(query)]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def union_length(intervals: Iterable[tuple[int, int]]) -> int:
    """The length covered by at least one of the ``(start, end)`` intervals, in their unit.

    An oracle for the agent's own union (``_external.union_ns``) and the billing engine's, so it
    is worked out another way: a sweep over +1/-1 events counting how many intervals are open.
    """
    events = sorted(
        (point, step)
        for start, end in intervals
        if end > start
        for point, step in ((start, 1), (end, -1))
    )
    total = open_count = 0
    previous = None
    for point, step in events:
        if open_count > 0 and previous is not None:
            total += point - previous
        open_count += step
        previous = point
    return total


def union_seconds(intervals: Iterable[tuple[int, int]]) -> float:
    """The time, in seconds, covered by at least one of the ``(start_ns, end_ns)`` intervals."""
    return union_length(intervals) / 1e9


def record_at(index: int, **fields: Any) -> InvocationRecord:
    """``make_record(index)``, with a ``record_id`` fixed by ``index``: the same in every process
    (writers that must overlap)."""
    return make_record(index, record_id=f"{index:032x}", **fields)


def full_record() -> InvocationRecord:
    """A record with every field set to a value other than its default (the ledgers' round
    trips; ``tests/test_ledger.py`` checks that it still is when a field is added)."""
    return make_record(
        7,
        0.25,
        endpoint="ep-1",
        worker_id="w-1",
        billing_worker="pod-abc123",
        worker_start_ns=1_772_323_000_000_000_000,
        worker_start_source="container",
        worker_ready_ns=1_772_323_012_500_000_000,
        request_startup_s=0.125,
        billing_rules={
            "per_gpu_second_usd": "0.00076",
            "execution_fee_usd": "0.25",
            "increment_ns": 1_000_000_000,
            "minimum_ns": 0,
            "bills_startup": True,
            "bills_idle": False,
            "idle_window_ns": 5_000_000_000,
            "reserved": False,
        },
        region="EU-RO-1",
        gpu_model="NVIDIA A100 80GB PCIe",
        gpu_count=2,
        outcome="error",
        error_type="RuntimeError",
        cold=True,
        init_duration_s=12.5,
        init_phases={"model_load": 9.25, "imports": 2.0, "(unnamed)": 1.25},
        idle_gap_s=0.125,
        billed_gpu_seconds=0.5,
        busy_gpu_seconds=0.3125,
        busy_source="process",
        energy_j=71.0,
        energy_active_j=50.5,
        energy_idle_j=20.5,
        energy_source="counter",
        peak_gpu_memory_bytes=40 * 2**30,
        gpu_uuids="GPU-5f1c0d7e-0000-1111-2222-333344445555",
        gpu_unmeasured={"peak_gpu_memory_bytes": "needs the sampler"},
        external_wait_cost_usd=0.000_012,
        external_targets={"postgresql://10.0.0.5:5432": {"calls": 3, "wait_s": 0.05}},
        external_calls=3,
        external_call_seconds=0.2,
        external_wait_seconds=0.15,
        user_id="3f9a",
        user_id_pseudonymised=True,
        tenant="acme",
        tags={"model": "sdxl", "ünïcode": "✓"},
        input_tokens=120,
        output_tokens=980,
        model="llama-3.1-8b-instruct",
        operation="chat",
        first_item_s=0.0625,
        items=979,
        service_version="2026.12.07-3",
        cost_usd=0.000_987_654_321,
        cost_execution_usd=0.000_1,
        cost_gpu_usd=0.000_8,
        cost_coldstart_usd=0.000_087_654_321,
        pricing_platform="runpod-serverless",
        pricing_version="seed-2026-03",
        cost_source="edition:seed-2026-03",
        recorded_by="sidecar",
    )
