"""``gpuledger pricing show`` and ``gpuledger pricing validate`` on the seed edition, through
click's CliRunner (the published edition, ``editions`` and ``diff``: tests/test_editions.py)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gpuledger._pricing import PRICING_ENV, SEED_EDITION, shipped_path
from gpuledger.cli import _options
from gpuledger.cli._pricing import pricing

RUNPOD_OVERRIDE = "[platforms.runpod]\nexecution_fee_usd = 0.30\n"
BROKEN = (
    "[platforms.runpod.gpus.H100]\nper_gpu_secnd_usd = 0.0003\n"
    "[platforms.modal.gpus.H100]\nper_gpu_second_usd = -1\n"
)


@pytest.fixture(autouse=True)
def seed_pricing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test prices by the seed edition (whatever GPULEDGER_PRICING the machine has), on a
    day it was fresh, so no staleness warning joins the output."""
    monkeypatch.setenv(PRICING_ENV, SEED_EDITION)
    monkeypatch.setattr(_options, "today", lambda: dt.date(2026, 3, 15))


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``gpuledger pricing ARGS`` and return the result (stdout and stderr kept apart)."""
    return CliRunner().invoke(pricing, list(args), env=env)


def write(directory: Path, text: str, name: str = "mine.toml") -> Path:
    """Write a pricing file over the seed edition and return its path."""
    path = directory / name
    path.write_text(f'base = "{SEED_EDITION}"\n' + text, encoding="utf-8")
    return path


def table_rows(output: str, table: int = 0) -> dict[str, list[str]]:
    """The rows of ``show``'s prices (``table`` 0) or workers (1) table, by platform, split on
    runs of two or more spaces."""
    blocks = output.split("\n\n")
    rows: dict[str, list[str]] = {}
    for line in blocks[1 + table].splitlines():
        cells = [cell for cell in line.split("  ") if cell.strip()]
        name = cells[0].split()[0] if cells else ""  # "banana (sunset 2024-02-01)"
        if name in {"runpod", "replicate", "modal", "banana", "reserved"}:
            rows[name] = [cell.strip() for cell in cells]
    return rows


def test_show_table_lists_every_price() -> None:
    """show prints the version, the sources, a header and one row per platform and GPU."""
    result = invoke("show")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("pricing seed-2026-03, read 2026-03\nsources:\n")
    assert "Serverless GPU Computing" in result.output
    assert "per-GPU" not in result.output  # the header uses the short column names
    assert "$/GPU-s" in result.output
    rows = table_rows(result.output)
    assert sorted(rows) == ["banana", "modal", "replicate", "reserved", "runpod"]
    assert rows["banana"][0] == "banana (sunset 2024-02-01)"  # flagged wherever it appears
    assert "withdrawn products (kept for comparison):\n  banana: sunset 2024-02-01" in result.output
    assert rows["runpod"][:11] == [
        "runpod", "H100", "serverless_execution", "0.25", "0.00024", "-", "1", "0", "900",
        "900", "yes",
    ]  # fmt: skip
    assert rows["reserved"][3:6] == ["0", "0.0007472222", "2.69"]
    assert rows["runpod"][11:13] == ["2026-03", "third-party"]
    assert rows["runpod"][13].startswith("Serverless GPU Computing")


def test_show_table_lists_worker_behaviour() -> None:
    """show prints a workers table after the prices: one row per platform with its citation."""
    result = invoke("show")
    assert result.exit_code == 0, result.output
    assert "\n\nworkers:\nplatform  " in result.output
    rows = table_rows(result.output, table=1)
    assert sorted(rows) == ["banana", "modal", "replicate", "reserved", "runpod"]
    assert rows["runpod"][:8] == ["runpod", "2.5", "2", "15", "1", "-", "no", "0"]
    assert rows["banana"][:8] == ["banana", "0.5", "-", "0.5", "1", "-", "no", "1"]
    assert rows["reserved"][:8] == ["reserved", "0", "-", "-", "1", "-", "yes", "0"]
    assert rows["modal"][8].startswith("article: 'Cold start: 4-6 seconds")


def test_show_json_is_machine_readable() -> None:
    """show --format json gives the version, sources and unrounded prices."""
    result = invoke("show", "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["version"] == "seed-2026-03"
    assert len(document["sources"]) >= 1
    by_platform = {price["platform"]: price for price in document["prices"]}
    assert sorted(by_platform) == ["banana", "modal", "replicate", "reserved", "runpod"]
    assert by_platform["reserved"]["per_gpu_second_usd"] == 2.69 / 3600
    assert by_platform["banana"]["timeout_s"] is None
    assert by_platform["runpod"]["source"] == "edition:seed-2026-03"
    assert by_platform["runpod"]["reference"]["owner"] == "third-party"
    assert by_platform["banana"]["sunset"] == "2024-02-01"
    banana = by_platform["banana"]
    assert (banana["cold_start_s"], banana["cold_start_min_s"], banana["cold_start_max_s"]) == (
        0.5,
        None,
        0.5,
    )
    assert (banana["concurrency"], banana["max_workers"], banana["prewarmed_workers"]) == (
        1,
        None,
        1,
    )
    assert (banana["bills_idle"], by_platform["reserved"]["bills_idle"]) == (False, True)
    assert banana["behaviour_citation"].startswith("article: Banana")


def test_show_merges_pricing_file(tmp_path: Path) -> None:
    """show --pricing FILE shows the merged catalogue, the file's values and its source."""
    path = write(tmp_path, RUNPOD_OVERRIDE)
    result = invoke("show", "--pricing", str(path), "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["version"].startswith("file:")
    runpod = next(price for price in document["prices"] if price["platform"] == "runpod")
    assert (runpod["execution_fee_usd"], runpod["source"]) == (0.30, f"file:{path}")


def test_show_merges_behaviour_from_pricing_file(tmp_path: Path) -> None:
    """show --pricing FILE shows the file's worker behaviour in the table and in JSON."""
    path = write(tmp_path, "[platforms.modal]\nconcurrency = 8\nmax_workers = 50\n")
    table = invoke("show", "--pricing", str(path))
    assert table.exit_code == 0, table.output
    modal_row = table_rows(table.output, table=1)["modal"]
    assert modal_row == ["modal", "5", "4", "6", "8", "50", "no", "0", f"file:{path}"]
    document = json.loads(invoke("show", "--pricing", str(path), "--format", "json").output)
    modal = next(price for price in document["prices"] if price["platform"] == "modal")
    assert (modal["concurrency"], modal["max_workers"]) == (8, 50)


def test_show_bad_behaviour_is_a_clear_error(tmp_path: Path) -> None:
    """A --pricing file with concurrency 0 exits 1 naming the key and the reason."""
    path = write(tmp_path, "[platforms.modal]\nconcurrency = 0\n")
    result = invoke("show", "--pricing", str(path))
    assert result.exit_code == 1
    assert f"{path}: platforms.modal.concurrency: must be at least 1" in result.output


def test_show_uses_env_file(tmp_path: Path) -> None:
    """Without --pricing, show merges the file named by GPULEDGER_PRICING."""
    path = write(tmp_path, RUNPOD_OVERRIDE, "env.toml")
    result = invoke("show", env={PRICING_ENV: str(path)})
    assert result.exit_code == 0, result.output
    assert result.output.startswith("pricing file:")
    assert "(a file over edition seed-2026-03)" in result.output.splitlines()[0]
    assert table_rows(result.output)["runpod"][3] == "0.3"


def test_show_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A missing --pricing file exits 1 with a message naming it, and no traceback."""
    missing = tmp_path / "gone.toml"
    result = invoke("show", "--pricing", str(missing))
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert f"{missing}: (file): no such file" in result.output
    assert "Traceback" not in result.output


def test_show_broken_file_lists_problems(tmp_path: Path) -> None:
    """A --pricing file with problems exits 1 listing each one."""
    path = write(tmp_path, BROKEN)
    result = invoke("show", "--pricing", str(path))
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "3 problem(s)" in result.output
    assert "per_gpu_secnd_usd: unknown key (did you mean 'per_gpu_second_usd'?)" in result.output


def test_show_rejects_unknown_format() -> None:
    """An unknown --format is a usage error, not a traceback."""
    result = invoke("show", "--format", "yaml")
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)


def test_validate_good_file(tmp_path: Path) -> None:
    """validate prints 'FILE: ok (N prices)' and exits 0 for a good file."""
    path = write(
        tmp_path, RUNPOD_OVERRIDE + "[platforms.modal.gpus.A100]\nper_gpu_second_usd = 0.0004\n"
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output
    assert result.output == f"{path}: ok (1 prices)\n"


def test_validate_shipped_catalogue() -> None:
    """The shipped catalogue validates with its five prices."""
    result = invoke("validate", shipped_path(SEED_EDITION))
    assert result.exit_code == 0, result.output
    assert result.output == f"{shipped_path(SEED_EDITION)}: ok (5 prices)\n"


def test_validate_prints_each_problem(tmp_path: Path) -> None:
    """validate prints one 'FILE: KEY: REASON' line per problem and exits 1."""
    path = write(tmp_path, BROKEN)
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{path}: platforms.runpod.gpus.H100.per_gpu_secnd_usd: "
        "unknown key (did you mean 'per_gpu_second_usd'?)",
        f"{path}: platforms.modal.gpus.H100.per_gpu_second_usd: must not be negative, got -1",
        f"{path}: platforms.runpod.gpus.H100.per_gpu_second_usd: "
        "required for kind 'serverless_execution'",
    ]


def test_validate_missing_file(tmp_path: Path) -> None:
    """validate on a missing file says so and exits 1."""
    missing = tmp_path / "gone.toml"
    result = invoke("validate", str(missing))
    assert result.exit_code == 1
    assert result.output == f"{missing}: (file): no such file\n"


def test_validate_bad_syntax(tmp_path: Path) -> None:
    """validate reports a TOML syntax error with its line and exits 1."""
    path = write(tmp_path, 'version = "x"\nkind = \n')
    result = invoke("validate", str(path))
    assert result.exit_code == 1
    assert result.output.startswith(f"{path}: line 3: bad TOML syntax:")  # after the base line


def test_pricing_is_wired_into_main() -> None:
    """`gpuledger pricing` is reachable from the main command with show and validate."""
    # Imported here so a sibling command that does not import breaks this test only.
    from gpuledger.cli._main import main

    result = CliRunner().invoke(main, ["pricing", "--help"])
    assert result.exit_code == 0, result.output
    assert "show" in result.output
    assert "validate" in result.output
