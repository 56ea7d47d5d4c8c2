"""`gpuledger report` through click's CliRunner: formats, grouping, --since, bad ledgers."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from gpuledger import InvocationRecord, testing
from gpuledger.cli._main import main
from gpuledger.cli._report import TABLE_COLUMNS, report
from gpuledger.ledger import open_ledger
from gpuledger.ledger._report import REPORT_COLUMNS

DAY_NS = 86_400 * 1_000_000_000


def make_record(**fields: Any) -> InvocationRecord:
    """A one-second warm record (``invocation_id`` ``job-1``) that started an hour ago, so that
    ``--since`` (counted back from now) takes it; no user, unpriced, unmetered."""
    start_ns = time.time_ns() - DAY_NS // 24
    return testing.make_record(**{"start_ns": start_ns, "invocation_id": "job-1", **fields})


@pytest.fixture
def ledger_path(tmp_path: Path) -> str:
    """A ledger holding two users' invocations, one of them ten days old."""
    path = str(tmp_path / "ledger.db")
    with open_ledger(path) as ledger:
        ledger.write(
            [
                make_record(user_id="alice", cost_usd=0.000_190, busy_gpu_seconds=0.5, cold=True),
                make_record(user_id="alice", cost_usd=0.000_210, busy_gpu_seconds=0.25),
                make_record(user_id="bob", cost_usd=1.234_567, platform="modal"),
                make_record(user_id="old", cost_usd=5.0, start_ns=time.time_ns() - 10 * DAY_NS),
            ]
        )
    return path


def run(*args: str) -> Result:
    """Invoke `gpuledger report` with ``args``."""
    return CliRunner().invoke(report, list(args))


def test_table_by_user(ledger_path: str) -> None:
    """The default table has one row per user, a TOTAL row, and busy shown as "-" if unknown."""
    result = run("--ledger", ledger_path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["user", "invocations"]
    rows = {line.split()[0]: line.split() for line in lines[2:] if line and line[0] != "-"}
    assert list(rows) == ["old", "bob", "alice", "TOTAL"]
    assert rows["alice"][1] == "2"
    assert "0.000400" in rows["alice"]
    assert "1.2346" in rows["bob"]
    assert "-" in rows["bob"]  # busy unknown for bob, not 0
    assert "37.5" in rows["alice"]  # busy %: 0.75 of 2 billed GPU seconds
    wide = run("--ledger", ledger_path, "--wide").output.splitlines()
    assert "0.750" in next(line for line in wide if line.startswith("alice")).split()
    assert rows["TOTAL"][1] == "4"
    assert "6.2350" in rows["TOTAL"]


def test_table_columns_line_up(ledger_path: str) -> None:
    """Every table line is as wide as the header, so columns align."""
    result = run("--ledger", ledger_path, "--by", "platform")
    lines = [line for line in result.output.splitlines() if line]
    widths = {len(line) for line in lines if not line.startswith(("-", "TOTAL"))}
    assert len(widths) == 1


def test_table_notes_unpriced(tmp_path: Path) -> None:
    """When some invocations have no price, the table says the cost leaves them out."""
    path = str(tmp_path / "l.db")
    with open_ledger(path) as ledger:
        ledger.write([make_record(cost_usd=0.5), make_record(cost_usd=None)])
    result = run("--ledger", path)
    assert "1 invocation(s) had no price" in result.output


def test_json_keys_and_values(ledger_path: str) -> None:
    """--format json prints one object per group with the documented keys, unknown as null."""
    result = run("--ledger", ledger_path, "--format", "json", "--by", "platform")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {"key", "invocations", "cold_starts", "billed_gpu_seconds", "busy_gpu_seconds",
            "cost_usd"} <= set(rows[0])  # fmt: skip
    by_key = {row["key"]: row for row in rows}
    assert set(by_key) == {"runpod", "modal"}  # no TOTAL in json
    assert by_key["modal"]["busy_gpu_seconds"] is None
    assert by_key["modal"]["cost_usd"] == 1.234567
    assert by_key["runpod"]["invocations"] == 3
    assert by_key["runpod"]["cold_starts"] == 1
    assert by_key["runpod"]["busy_gpu_seconds"] == 0.75


def test_csv_header_and_rows(ledger_path: str) -> None:
    """--format csv prints a header and one line per group, unknown as an empty field."""
    result = run("--ledger", ledger_path, "--format", "csv", "--by", "platform")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [row["key"] for row in rows] == ["runpod", "modal"]
    assert rows[1]["busy_gpu_seconds"] == ""
    assert float(rows[0]["cost_usd"]) == pytest.approx(5.0004)
    assert rows[0]["invocations"] == "3"


@pytest.mark.parametrize(
    ("by", "keys"),
    [
        ("user", {"alice", "bob", "old"}),
        ("tenant", {"(none)"}),
        ("endpoint", {"(none)"}),
        ("platform", {"runpod", "modal"}),
        ("invocation", {"job-1"}),
    ],
)
def test_by_option(ledger_path: str, by: str, keys: set[str]) -> None:
    """--by chooses what each row stands for."""
    result = run("--ledger", ledger_path, "--by", by, "--format", "json")
    assert {row["key"] for row in json.loads(result.output)} == keys


def test_by_day(ledger_path: str) -> None:
    """--by day keys rows by UTC date, oldest first."""
    result = run("--ledger", ledger_path, "--by", "day", "--format", "json")
    keys = [row["key"] for row in json.loads(result.output)]
    assert len(keys) == 2
    assert keys == sorted(keys)


def test_since_filters(ledger_path: str) -> None:
    """--since 7d leaves out the ten-day-old invocation."""
    result = run("--ledger", ledger_path, "--since", "7d", "--format", "json")
    assert result.exit_code == 0, result.output
    assert {row["key"] for row in json.loads(result.output)} == {"alice", "bob"}


def test_since_iso_date(ledger_path: str) -> None:
    """--since accepts an ISO date; one in the future leaves nothing to report."""
    result = run("--ledger", ledger_path, "--since", "2999-01-01", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == []


def test_bad_since_is_a_usage_error(ledger_path: str) -> None:
    """An unreadable --since exits 2 with a message saying what is accepted."""
    result = run("--ledger", ledger_path, "--since", "last tuesday")
    assert result.exit_code == 2
    assert "cannot read 'last tuesday'" in result.output


def test_missing_ledger(tmp_path: Path) -> None:
    """A missing ledger exits 1 with a clear message, no traceback, and creates no file."""
    path = tmp_path / "nope.db"
    result = run("--ledger", str(path))
    assert result.exit_code == 1
    assert f"Error: no ledger at {path}" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert not path.exists()


def test_corrupt_ledger(tmp_path: Path) -> None:
    """A file that is not a ledger exits 1 with a clear message, no traceback."""
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"\x00garbage" * 512)
    result = run("--ledger", str(path))
    assert result.exit_code == 1
    assert "not a SQLite database" in result.output
    assert isinstance(result.exception, SystemExit)


def test_unreachable_postgres_ledger_exits_1_without_the_password(tmp_path: Path) -> None:
    """A postgresql:// ledger that cannot be reached exits 1 with one line; no password."""
    result = run("--ledger", "postgresql://user:hunter2@127.0.0.1:1/gpuledger")
    assert result.exit_code == 1
    assert "cannot connect" in result.output
    assert "hunter2" not in result.output


@pytest.mark.parametrize(("output_format", "expected"), [("table", None), ("json", "[]\n")])
def test_empty_ledger(tmp_path: Path, output_format: str, expected: str | None) -> None:
    """An empty ledger exits 0: a friendly line for people, [] for json."""
    path = str(tmp_path / "empty.db")
    open_ledger(path).close()
    result = run("--ledger", path, "--format", output_format)
    assert result.exit_code == 0, result.output
    if expected is None:
        assert result.output.startswith("no invocations in ")
    else:
        assert result.output == expected


def test_empty_ledger_csv_is_header_only(tmp_path: Path) -> None:
    """An empty ledger in csv is just the header line, which tools can still read."""
    path = str(tmp_path / "empty.db")
    open_ledger(path).close()
    result = run("--ledger", path, "--format", "csv")
    assert result.exit_code == 0
    assert result.output.count("\n") == 1
    assert result.output.startswith("key,invocations,")


def test_ledger_from_environment(ledger_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --ledger, GPULEDGER_LEDGER names the ledger."""
    monkeypatch.setenv("GPULEDGER_LEDGER", ledger_path)
    result = run("--format", "json", "--by", "platform")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)) == 2


def test_default_ledger_in_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --ledger or GPULEDGER_LEDGER, ./gpuledger.db is read."""
    monkeypatch.delenv("GPULEDGER_LEDGER", raising=False)
    monkeypatch.chdir(tmp_path)
    with open_ledger("gpuledger.db") as ledger:
        ledger.write([make_record(user_id="here")])
    result = run("--format", "json")
    assert [row["key"] for row in json.loads(result.output)] == ["here"]


# --- the table's columns: a default set that fits, --wide for all -------------------------------


@pytest.fixture
def demo_ledger(tmp_path: Path) -> str:
    """A ledger the demo wrote (its users, tenants, endpoint and days)."""
    path = str(tmp_path / "demo.db")
    result = CliRunner().invoke(main, ["demo", "--ledger", path])
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize("by", ["user", "tenant", "endpoint", "platform", "day", "invocation"])
def test_default_table_of_the_demo_fits_100_columns(demo_ledger: str, by: str) -> None:
    """The default table of the demo's ledger is at most 100 characters wide, whatever COLUMNS."""
    result = CliRunner().invoke(
        report, ["--ledger", demo_ledger, "--by", by], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    widest = max(len(line) for line in result.output.splitlines())
    assert widest <= 100, result.output


def test_default_table_keeps_the_chargeback_columns(demo_ledger: str) -> None:
    """The default table shows the money and what explains it; the rest waits for --wide."""
    header = run("--ledger", demo_ledger).output.splitlines()[0]
    shown = [column.header for column in TABLE_COLUMNS if column.default]
    hidden = [column.header for column in TABLE_COLUMNS if not column.default]
    assert {"invocations", "cold", "errors", "billed GPU s", "busy %", "cost USD", "p95 s"} <= set(
        shown
    )
    assert hidden
    assert header.split("  ")[0].strip() == "user"
    assert [cell.strip() for cell in header.split("  ")[1:] if cell.strip()] == shown


def test_wide_table_has_every_column(demo_ledger: str) -> None:
    """--wide shows every declared column, each for a field that json and csv carry too."""
    result = run("--ledger", demo_ledger, "--wide")
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0]
    cells = [cell.strip() for cell in header.split("  ") if cell.strip()]
    assert cells == ["user", *(column.header for column in TABLE_COLUMNS)]
    assert {column.field for column in TABLE_COLUMNS} <= set(REPORT_COLUMNS)
    lines = [line for line in result.output.splitlines() if line]
    assert len({len(line) for line in lines[:3]}) == 1  # header, rule and rows line up


def test_help_says_wide_shows_the_rest() -> None:
    """`report --help` names the default columns' purpose and what --wide adds."""
    result = run("--help")
    assert "--wide" in result.output
    assert "every column" in result.output
