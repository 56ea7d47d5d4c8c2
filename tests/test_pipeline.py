"""The background writer: bursts lose nothing, the bound never blocks, failures are retried.

Failing ledgers are handed to the agent as sinks (``configure(sinks=...)``), the seam the writer
delivers through: no private attribute is patched."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import gpuledger
from gpuledger import InvocationRecord, _guard
from gpuledger._config import current_agent
from gpuledger._sinks import Delivery, LedgerSink
from gpuledger._writer import Pipeline
from gpuledger.ledger import open_ledger


def _count(path: Path) -> int:
    return int(sqlite3.connect(path).execute("SELECT count(*) FROM invocations").fetchone()[0])


@pytest.mark.slow
def test_burst_of_100000_invocations_loses_none(tmp_path: Path) -> None:
    """100,000 invocations as fast as the handler can run: every one is in the ledger."""
    ledger = tmp_path / "burst.db"
    gpuledger.configure(
        ledger=str(ledger), platform="runpod", gpu="H100", exporters="none", strict=True
    )

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> int:
        return 1

    total = sum(handler({"id": f"job-{i}", "input": {}}) for i in range(100_000))
    assert total == 100_000
    assert gpuledger.flush(60)
    assert _count(ledger) == 100_000
    ids = (
        sqlite3.connect(ledger)
        .execute("SELECT count(DISTINCT invocation_id) FROM invocations")
        .fetchone()[0]
    )
    assert ids == 100_000
    assert _guard.error_counts() == {}


def test_past_the_bound_the_handler_is_not_blocked_and_drops_are_counted(tmp_path: Path) -> None:
    """With the writer stuck, invocations past max_pending are counted and logged, not waited on."""
    ledger = tmp_path / "bound.db"
    release = threading.Event()

    class StuckLedger(LedgerSink):
        def deliver(self, records: Sequence[InvocationRecord]) -> Delivery:
            release.wait(10)
            return super().deliver(records)

    gpuledger._config.configure(
        ledger=str(ledger), exporters="none", max_pending=10, sinks=[StuckLedger(str(ledger))]
    )

    @gpuledger.traced_handler
    def handler() -> str:
        return "served"

    results = [handler() for _ in range(30)]
    assert results == ["served"] * 30  # every call returned while the writer was stuck
    dropped = _guard.error_counts().get("ledger.dropped", 0)
    release.set()
    assert gpuledger.flush(10)
    written = _count(ledger)
    assert dropped > 0
    assert written + dropped == 30  # nothing unaccounted for


def test_ledger_write_failure_is_retried_without_loss(tmp_path: Path) -> None:
    """A failed ledger write keeps its records and writes them with the next batch."""
    ledger = tmp_path / "retry.db"
    calls = {"n": 0, "opened": 0}

    class FlakyLedger:
        """Fails its first write; the sink then closes it and opens another."""

        def __init__(self) -> None:
            calls["opened"] += 1
            self.real = open_ledger(str(ledger))

        def write(self, records: list[Any]) -> int:
            calls["n"] += 1
            if calls["n"] == 1:
                raise sqlite3.OperationalError("disk I/O error")
            return self.real.write(records)

        def close(self) -> None:
            self.real.close()

    gpuledger._config.configure(
        ledger=str(ledger),
        exporters="none",
        sinks=[LedgerSink(str(ledger), opener=lambda location: FlakyLedger())],
    )

    @gpuledger.traced_handler
    def handler() -> None:
        return None

    handler()
    assert gpuledger.flush(5)
    assert _count(ledger) == 0
    assert _guard.error_counts() == {"ledger.write": 1}
    handler()
    assert gpuledger.flush(5)
    assert _count(ledger) == 2
    assert calls["opened"] == 2  # a ledger that failed is not reused


def test_flush_waits_for_everything_submitted_before_it() -> None:
    """flush() returns only after items submitted before it were processed, in order."""
    seen: list[int] = []
    pipeline = Pipeline(seen.extend, max_pending=1000, batch_size=7)
    for i in range(100):
        pipeline.submit(i)
    assert pipeline.flush(5)
    assert seen == list(range(100))
    assert pipeline.close(5)


def test_no_thread_before_first_use() -> None:
    """The writer thread starts with the first submitted item, not at construction."""
    before = threading.active_count()
    pipeline = Pipeline(lambda batch: None, max_pending=10)
    assert threading.active_count() == before
    pipeline.submit(1)
    assert threading.active_count() == before + 1
    pipeline.close(5)


def test_shutdown_writes_what_is_pending(tmp_path: Path) -> None:
    """shutdown() flushes the queue to the ledger before stopping."""
    ledger = tmp_path / "shutdown.db"
    gpuledger.configure(ledger=str(ledger), exporters="none")

    @gpuledger.traced_handler
    def handler() -> None:
        return None

    for _ in range(50):
        handler()
    assert gpuledger.shutdown()
    assert _count(ledger) == 50
    assert current_agent() is None


def test_one_bad_record_does_not_hold_back_its_batch(tmp_path: Path) -> None:
    """When a batch fails because of one record, the others are written and it is counted."""
    ledger = tmp_path / "reject.db"
    real = open_ledger(str(ledger))

    class PickyLedger:
        def write(self, records: list[Any]) -> int:
            if any(record.invocation_id == "poison" for record in records):
                raise ValueError("cannot store this record")
            return real.write(records)

        def close(self) -> None:
            real.close()

    gpuledger._config.configure(
        ledger=str(ledger),
        exporters="none",
        sinks=[LedgerSink(str(ledger), opener=lambda location: PickyLedger())],
    )

    @gpuledger.traced_handler(invocation_id=lambda name: name)
    def handler(name: str) -> None:
        return None

    for name in ("a", "poison", "b"):
        handler(name)
    assert gpuledger.flush(5)
    assert _count(ledger) == 2
    assert _guard.error_counts() == {"ledger.write": 1, "ledger.rejected": 1}
