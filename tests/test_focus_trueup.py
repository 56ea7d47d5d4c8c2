"""`gpuledger report --true-up FILE --format focus` (gpuledger.reconcile.true_up_focus_rows): the
FOCUS export's BilledCost from the trued-up invoice. BilledCost adds up to the invoice's total to
the cent, the residual included as rows of its own; EffectiveCost stays the report's; the
FinOps Foundation's validator still passes it."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuledger import InvocationRecord
from gpuledger.billing import IDLE_KEY, POLICIES, Rules
from gpuledger.cli._main import main
from gpuledger.ledger import HOUR_NS, FocusRow, focus_rows, open_ledger, period_charges
from gpuledger.reconcile import (
    RESIDUAL_KEY,
    TrueUp,
    parse_usage,
    read_usage,
    reconcile,
    true_up,
    true_up_focus_rows,
)
from gpuledger.testing import make_record

from .data.usage import fleet
from .support.focus import (
    VALIDATOR_BUG,
    focus_validator_venv,
    run_focus_validator,
    with_validator_aliases,
)
from .support.venvs import venv_or_skip

DATA = Path(__file__).parent / "data" / "usage"
FIXTURES = sorted(DATA.glob("*.json")) + sorted(DATA.glob("*.csv"))
CENT = Decimal("0.01")


@pytest.fixture(scope="module")
def records() -> list[InvocationRecord]:
    return fleet.records()


@pytest.fixture(scope="module")
def fleet_ledger(tmp_path_factory: pytest.TempPathFactory, records: list[InvocationRecord]) -> str:
    """A real SQLite ledger holding the simulated fleet (RunPod and Modal)."""
    path = str(tmp_path_factory.mktemp("fleet") / "fleet.db")
    with open_ledger(path) as ledger:
        ledger.write(records)
    return path


@pytest.fixture(scope="session")
def validator() -> Path:
    """The FOCUS validator's venv (made once per machine, then cached)."""
    return venv_or_skip(focus_validator_venv, "focus-validator (the FOCUS validator)")


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, ["report", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def rows_of(focus_csv: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(focus_csv)))


def total(rows: list[dict[str, str]], column: str) -> Decimal:
    return sum((Decimal(row[column]) for row in rows), Decimal(0))


def own(row: dict[str, str]) -> bool:
    """A row of the true-up's own (no worker): the residual, or a share no report row carries."""
    return row["x_GpuledgerWorker"] == ""


def trued_up(records: list[InvocationRecord], path: Path, policy: str = "separate") -> TrueUp:
    return true_up(reconcile(read_usage(path), records, policy=policy))


def library_rows(records: list[InvocationRecord], result: TrueUp, policy: str) -> list[FocusRow]:
    return true_up_focus_rows(result, focus_rows(period_charges(records, policy=policy)))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda path: path.name)
def test_billed_cost_is_the_invoice_to_the_cent_effective_cost_the_report(
    fleet_ledger: str, records: list[InvocationRecord], path: Path
) -> None:
    """Every export: BilledCost sums to the invoice's total to the cent, residual included;
    the report's rows are `report --format focus`'s with BilledCost filled in, so
    EffectiveCost sums to the report's total exactly."""
    trued = rows_of(invoke("--ledger", fleet_ledger, "--true-up", str(path), "--format", "focus"))
    plain = rows_of(invoke("--ledger", fleet_ledger, "--format", "focus"))
    invoice = read_usage(path)
    invoice_total = Decimal(invoice.total_usd.numerator) / invoice.total_usd.denominator
    assert total(trued, "BilledCost") == invoice_total.quantize(CENT)
    assert all(Decimal(row["BilledCost"]) % CENT == 0 for row in trued)  # whole cents
    assert [{**row, "BilledCost": "0.0"} for row in trued if not own(row)] == plain
    assert all(row["EffectiveCost"] == row["ListCost"] == "0.0" for row in trued if own(row))
    report_total = sum((charge.charges.total_usd for charge in period_charges(records)), Fraction())
    # Each row is written to 18 decimal places: exact to well within 1e-15 over the file.
    assert abs(Fraction(total(trued, "EffectiveCost")) - report_total) < Fraction(1, 10**15)
    assert total(trued, "EffectiveCost") == total(plain, "EffectiveCost")
    other = [row for row in trued if row["x_GpuledgerPlatform"] != invoice.platform]
    assert other  # the fleet runs on both platforms: the other's rows are billed nothing here
    assert {row["BilledCost"] for row in other} == {"0.0"}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("path", [fleet.DATA_V2, fleet.DATA_ITEMS], ids=lambda path: path.name)
def test_every_cell_keeps_its_cents_pro_rata_to_effective_cost(
    records: list[InvocationRecord], path: Path, policy: str
) -> None:
    """A cell's cents are split over the rows of its hour, endpoint, user and tenant, each
    within a cent of its share of their EffectiveCost, and add up to the cell's."""
    result = trued_up(records, path, policy)
    rows = library_rows(records, result, policy)
    assert sum(row.billed_usd for row in rows) * 100 == result.total_cents
    cells: dict[tuple[object, ...], int] = defaultdict(int)
    for cell in result.cells:
        if cell.kind != "residual":
            cells[(cell.period_start_ns, cell.ledger_endpoint, cell.user, cell.tenant)] += (
                cell.cents
            )
    pools: dict[tuple[object, ...], list[FocusRow]] = defaultdict(list)
    for row in rows:
        if row.worker is not None and row.platform == result.reconciliation.invoice.platform:
            pools[(row.period_start_ns, row.endpoint, row.user, row.tenant)].append(row)
    checked = 0
    for key, cents in cells.items():
        covered = pools.get(key)
        if covered is None:  # idle the rules do not bill: a row of its own (next test)
            assert policy == "separate"
            continue
        assert sum(row.billed_usd for row in covered) * 100 == cents
        cost = sum((row.cost_usd for row in covered), Fraction(0))
        for row in covered:
            assert abs(row.billed_usd * 100 - cents * row.cost_usd / cost) < 1
            checked += 1
    assert checked > 20


def test_grouped_by_user_it_is_the_true_up_report(fleet_ledger: str) -> None:
    """BilledCost per user, the workers' own rows and the residual are `report --true-up
    --by user`'s rows, cent for cent."""
    ledger = ("--ledger", fleet_ledger, "--true-up", str(fleet.DATA_V2))
    report = json.loads(invoke(*ledger, "--by", "user", "--format", "json"))
    expected = {row["key"]: round(row["invoiced_usd"] * 100) for row in report["rows"]}
    found: dict[str, int] = defaultdict(int)
    for row in rows_of(invoke(*ledger, "--format", "focus")):
        if row["x_GpuledgerChargeCategory"] == "residual":
            key = RESIDUAL_KEY
        else:
            key = json.loads(row["Tags"] or "{}").get("user", IDLE_KEY)
        found[key] += int(Decimal(row["BilledCost"]) * 100)
    assert {key: cents for key, cents in found.items() if cents} == expected
    assert set(expected) == {"alice", "bob", "carol", "dave", IDLE_KEY, RESIDUAL_KEY}


def test_the_residual_is_rows_of_its_own_with_the_invoices_endpoint(
    records: list[InvocationRecord],
) -> None:
    """The App never instrumented, the Volume (Modal) and the hour with no ledger rows
    (RunPod): residual rows, their resource the invoice's endpoint, EffectiveCost 0."""
    for path in (fleet.DATA_V2, fleet.DATA_ITEMS):
        result = trued_up(records, path)
        rows = library_rows(records, result, "separate")
        residual = [row for row in rows if row.category == "residual"]
        cells = [cell for cell in result.cells if cell.kind == "residual"]
        assert sorted((row.period_start_ns, row.endpoint, row.billed_usd) for row in residual) == (
            sorted((cell.period_start_ns, cell.endpoint, cell.billed_usd) for cell in cells)
        )
        assert all(row.worker is None and row.quantity is None for row in residual)
        assert all(row.cost_usd == 0 for row in residual)
    modal = {
        row.endpoint for row in library_rows(records, trued_up(records, fleet.DATA_ITEMS), "share")
    }
    assert {fleet.BATCH_ID, fleet.VOLUME_ID} <= modal
    v2 = library_rows(records, trued_up(records, fleet.DATA_V2), "share")
    (ghost,) = [row for row in v2 if row.category == "residual"]
    assert ghost.billed_usd == Fraction("0.79")  # 0.787963 to the cent
    written = ghost.cells()
    assert (written["ResourceId"], written["ResourceType"]) == (fleet.IMAGE, "Endpoint")
    assert written["x_GpuledgerChargeCategory"] == "residual"
    assert written["x_GpuledgerWorker"] is None
    assert (written["EffectiveCost"], written["BilledCost"]) == ("0.0", "0.79")
    assert written["ChargePeriodStart"] == "2026-03-01T03:00:00Z"
    assert (written["SkuId"], written["SkuPriceId"]) == ("runpod", "runpod/residual")
    assert written["ConsumedQuantity"] is written["PricingUnit"] is None


def test_idle_the_platform_bills_and_the_rules_do_not_is_a_row_of_its_own(
    fleet_ledger: str, records: list[InvocationRecord]
) -> None:
    """Under separate, the (idle) cells of the endpoints whose platform bills idle time have no
    report row to land on (the rules bill none): idle rows of the endpoint, no worker,
    EffectiveCost 0, BilledCost the cell's cents."""
    result = trued_up(records, fleet.DATA_ITEMS)
    idle = {cell.period_start_ns: cell for cell in result.cells if cell.kind == "idle"}
    assert {cell.ledger_endpoint for cell in idle.values()} == {fleet.LLM_NAME}
    args = ("--ledger", fleet_ledger, "--true-up", str(fleet.DATA_ITEMS), "--format", "focus")
    rows = rows_of(invoke(*args, "--billing-account", "ws-7"))
    own_idle = [row for row in rows if own(row) and row["x_GpuledgerChargeCategory"] == "idle"]
    assert len(own_idle) == len(idle)
    for row in own_idle:
        assert (row["ResourceId"], row["Tags"]) == (fleet.LLM_NAME, '{"endpoint": "llm-serve"}')
        assert (row["EffectiveCost"], row["ConsumedQuantity"], row["BillingAccountId"]) == (
            "0.0", "", "ws-7")  # fmt: skip
    assert sorted(Decimal(row["BilledCost"]) for row in own_idle) == sorted(
        Decimal(cell.cents) / 100 for cell in idle.values()
    )


def test_a_daily_invoice_is_split_over_the_hours_of_its_day() -> None:
    """A day's $1.00 over two users' hourly rows, by their cost: 3 s at 01:00 and 1 s at 05:00
    are 75 and 25 cents."""
    rules = Rules(per_gpu_second_usd=Fraction(1, 1000)).to_json()
    users = [
        make_record(3600, 3, endpoint="ep", user_id="ann", billing_rules=rules),
        make_record(5 * 3600, 1, endpoint="ep", user_id="ben", billing_rules=rules),
    ]
    text = '[{"time": "2026-03-01T00:00:00Z", "amount": 1.0, "endpointId": "ep"}]'
    result = true_up(reconcile(parse_usage(text, bucket="day"), users))
    assert result.reconciliation.period_ns == 24 * HOUR_NS
    rows = true_up_focus_rows(result, focus_rows(period_charges(users)))
    billed = {(row.user, row.period_end_ns - row.period_start_ns): row.billed_usd for row in rows}
    assert billed == {("ann", HOUR_NS): Fraction("0.75"), ("ben", HOUR_NS): Fraction("0.25")}


def test_rows_across_an_invoice_period_are_refused(records: list[InvocationRecord]) -> None:
    """Rows cut in two-hour periods cannot carry an hourly invoice: ValueError, not a guess."""
    result = trued_up(records, fleet.DATA_V2)
    rows = focus_rows(period_charges(records, period_ns=2 * HOUR_NS))
    with pytest.raises(ValueError, match="crosses an edge of the invoice's periods"):
        true_up_focus_rows(result, rows)


@pytest.mark.slow
@pytest.mark.parametrize("path", [fleet.DATA_V2, fleet.DATA_ITEMS], ids=lambda path: path.name)
def test_the_focus_validator_passes_the_trued_up_export(
    fleet_ledger: str, validator: Path, tmp_path: Path, path: Path
) -> None:
    """The FinOps Foundation's validator finds nothing wrong with the trued-up export, its
    residual and idle rows included (but its own bug, as in tests/test_focus.py)."""
    output = invoke("--ledger", fleet_ledger, "--true-up", str(path), "--format", "focus")
    assert any(row["x_GpuledgerChargeCategory"] == "residual" for row in rows_of(output))
    data = tmp_path / "focus.csv"
    data.write_text(with_validator_aliases(output), encoding="utf-8")
    found = run_focus_validator(validator, data, tmp_path / "validator.log")
    check, values = VALIDATOR_BUG
    assert found.failures == {check: values}, found.output
