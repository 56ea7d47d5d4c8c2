"""gpuledger demo: a synthetic workload through the real agent into a ledger, then the report."""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuledger import InvocationRecord
from gpuledger.cli._demo import DEMO_SERVICE_NAME
from gpuledger.cli._main import main
from gpuledger.ledger import open_ledger


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
    assert all(cost is not None and cost > 0 for _, _, _, cost in rows)
    for user in ("alice", "bob", "carol", "dave", "TOTAL"):
        assert user in result.output
    assert "served 120 requests" in result.output


def test_the_demo_writes_everything_it_served_whatever_the_flush_budget(tmp_path: Path) -> None:
    """The demo is not a worker a platform kills: each simulated worker's stop waits for all its
    records, also with a flush budget of 1 ms (which a burst outruns: the issue's 300,000-request
    demo lost 150,000 in one run)."""
    ledger = tmp_path / "demo.db"
    result = CliRunner().invoke(
        main,
        ["demo", "--requests", "20000", "--ledger", str(ledger)],
        env={"GPULEDGER_FLUSH_TIMEOUT": "0.001"},
    )
    assert result.exit_code == 0, result.output
    assert len(_rows(ledger)) == 20000
    assert re.search(r"TOTAL +20,000 ", result.output), result.output


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


def test_demo_leaves_gpuledger_ledger_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GPULEDGER_LEDGER names the fleet's ledger: the demo writes a new one of its own instead."""
    fleet = tmp_path / "fleet.db"
    monkeypatch.setenv("GPULEDGER_LEDGER", str(fleet))
    result = CliRunner().invoke(main, ["demo", "--requests", "10"])
    assert result.exit_code == 0, result.output
    assert not fleet.exists()
    written = Path(result.output.splitlines()[0].rsplit("ledger ", 1)[1])
    assert written != fleet
    assert len(_rows(written)) == 10


def test_demo_rejects_an_unknown_platform(tmp_path: Path) -> None:
    """A platform the catalogue does not know is a usage error, before anything is written."""
    ledger = tmp_path / "x.db"
    result = CliRunner().invoke(main, ["demo", "--platform", "nowhere", "--ledger", str(ledger)])
    assert result.exit_code == 2
    assert "Invalid value for '--platform'" in result.output
    assert "'nowhere'" in result.output
    assert not ledger.exists()


def test_demo_ends_with_commands_that_can_be_pasted(tmp_path: Path) -> None:
    """The demo's last lines are complete commands, the ledger quoted for the shell; each runs."""
    folder = tmp_path / "my ledgers"
    folder.mkdir()
    ledger = folder / "demo.db"
    result = CliRunner().invoke(main, ["demo", "--requests", "20", "--ledger", str(ledger)])
    assert result.exit_code == 0, result.output
    tail = result.output.rstrip("\n").split("\n\n")[-1].splitlines()
    commands = [line.strip() for line in tail[1:]]
    assert len(commands) >= 2
    for command in commands:
        assert command.startswith(f"gpuledger report --ledger {shlex.quote(str(ledger))} ")
        assert "|" not in command
        assert "[" not in command
        argv = shlex.split(command)
        assert argv[3] == str(ledger)
        pasted = CliRunner().invoke(main, argv[1:])
        assert pasted.exit_code == 0, (command, pasted.output)


def _write_foreign_rows(ledger: Path, count: int) -> None:
    with open_ledger(str(ledger)) as opened:
        opened.write(
            [
                InvocationRecord(
                    record_id=f"prod-{number}",
                    invocation_id=f"job-{number}",
                    handler="predict",
                    service_name="production",
                    platform="runpod",
                    user_id="real-customer",
                    start_ns=1_772_323_200_000_000_000 + number,
                    end_ns=1_772_323_201_000_000_000 + number,
                    duration_s=1.0,
                )
                for number in range(count)
            ]
        )


def test_demo_refuses_a_ledger_with_other_rows(tmp_path: Path) -> None:
    """A ledger holding rows the demo did not write is refused (exit 1) before serving."""
    ledger = tmp_path / "fleet.db"
    _write_foreign_rows(ledger, 3)
    result = CliRunner().invoke(main, ["demo", "--requests", "10", "--ledger", str(ledger)])
    assert result.exit_code == 1, result.output
    assert str(ledger) in result.output
    assert "3 row(s) not written by the demo" in result.output
    assert "--force" in result.output
    assert "served" not in result.output
    assert len(_rows(ledger)) == 3


def test_demo_force_writes_beside_other_rows(tmp_path: Path) -> None:
    """--force adds the demo's rows to a ledger that holds other rows."""
    ledger = tmp_path / "fleet.db"
    _write_foreign_rows(ledger, 3)
    result = CliRunner().invoke(
        main, ["demo", "--requests", "10", "--ledger", str(ledger), "--force"]
    )
    assert result.exit_code == 0, result.output
    assert len(_rows(ledger)) == 13


def test_demo_runs_again_into_its_own_ledger(tmp_path: Path) -> None:
    """A ledger that holds only the demo's rows takes another run without --force."""
    ledger = tmp_path / "demo.db"
    for _ in range(2):
        result = CliRunner().invoke(main, ["demo", "--requests", "10", "--ledger", str(ledger)])
        assert result.exit_code == 0, result.output
    assert len(_rows(ledger)) == 20
    service_names = sqlite3.connect(ledger).execute("SELECT DISTINCT service_name FROM invocations")
    assert service_names.fetchall() == [(DEMO_SERVICE_NAME,)]


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("missing/demo.db", "does not exist"),
        ("a-file/demo.db", "is not a directory"),
        ("a-folder", "is a directory"),
    ],
)
def test_demo_refuses_a_ledger_it_cannot_write_before_serving(
    tmp_path: Path, where: str, reason: str
) -> None:
    """A ledger in a missing folder, under a file, or that is a folder: one line, exit 1."""
    (tmp_path / "a-file").write_text("not a folder\n", encoding="utf-8")
    (tmp_path / "a-folder").mkdir()
    ledger = tmp_path / where
    result = CliRunner().invoke(main, ["demo", "--requests", "5", "--ledger", str(ledger)])
    assert result.exit_code == 1, result.output
    assert "served" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert str(ledger) in errors[0]
    assert reason in errors[0]
    assert not (tmp_path / "missing").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_demo_refuses_a_folder_nobody_can_create_files_in() -> None:
    """/proc takes no new files, even from root: refused before serving, not after it."""
    result = CliRunner().invoke(main, ["demo", "--requests", "5", "--ledger", "/proc/demo.db"])
    assert result.exit_code == 1, result.output
    assert "served" not in result.output
    assert result.output.splitlines()[-1].startswith("Error: cannot write the demo's ledger")
    assert "/proc/demo.db" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_demo_refuses_a_read_only_folder(tmp_path: Path) -> None:
    """A ledger in a folder it may not write to is refused before serving."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = CliRunner().invoke(
            main, ["demo", "--requests", "5", "--ledger", str(folder / "demo.db")]
        )
    finally:
        folder.chmod(0o755)
    assert result.exit_code == 1, result.output
    assert "served" not in result.output
    assert "not writable" in result.output
