"""gpuledger demo: a synthetic workload through the real agent into a ledger, then the report."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuledger._cli import main


def _rows(ledger: Path) -> list[tuple[str, int, str, float | None]]:
    return (
        sqlite3.connect(ledger)
        .execute("SELECT user_id, cold, worker_id, cost_usd FROM invocations ORDER BY start_ns")
        .fetchall()
    )


def test_demo_serves_requests_and_prints_the_per_user_report(tmp_path: Path) -> None:
    """The demo writes one row per request, cold once per worker start, and prints the report."""
    ledger = tmp_path / "demo.db"
    result = CliRunner().invoke(main, ["demo", "--requests", "120", "--ledger", str(ledger)])
    assert result.exit_code == 0, result.output
    rows = _rows(ledger)
    assert len(rows) == 120
    workers = {worker for _, _, worker, _ in rows}
    assert sum(cold for _, cold, _, _ in rows) == len(workers) > 1
    assert {user for user, _, _, _ in rows} == {"alice", "bob", "carol", "dave"}
    assert all(cost is not None and cost >= 0.25 for _, _, _, cost in rows)
    for user in ("alice", "bob", "carol", "dave", "TOTAL"):
        assert user in result.output
    assert "served 120 requests" in result.output


def test_demo_is_reproducible_by_seed(tmp_path: Path) -> None:
    """The same seed gives the same traffic: identical per-user reports."""
    reports = []
    for run in ("a", "b"):
        ledger = tmp_path / f"{run}.db"
        assert (
            CliRunner()
            .invoke(main, ["demo", "--requests", "60", "--ledger", str(ledger)])
            .exit_code
            == 0
        )
        result = CliRunner().invoke(
            main, ["report", "--ledger", str(ledger), "--by", "user", "--format", "json"]
        )
        reports.append(json.loads(result.output))
    assert reports[0] == reports[1]


def test_demo_writes_to_gpuledger_ledger_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With GPULEDGER_LEDGER set, the demo writes there; otherwise it prints the new path."""
    ledger = tmp_path / "env.db"
    monkeypatch.setenv("GPULEDGER_LEDGER", str(ledger))
    result = CliRunner().invoke(main, ["demo", "--requests", "10"])
    assert result.exit_code == 0, result.output
    assert len(_rows(ledger)) == 10
    assert str(ledger) in result.output


def test_demo_rejects_an_unknown_platform(tmp_path: Path) -> None:
    """A platform the catalogue does not know is a clear error, not a traceback."""
    result = CliRunner().invoke(
        main, ["demo", "--platform", "nowhere", "--ledger", str(tmp_path / "x.db")]
    )
    assert result.exit_code == 1
    assert "no such platform" in result.output
