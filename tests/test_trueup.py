"""`gpuledger report --true-up` (gpuledger.reconcile.true_up): the invoice's dollars split over
the ledger's owners by their measured shares, in whole cents that add up to the invoice exactly,
with what no ledger row explains as a row of its own."""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuledger import InvocationRecord
from gpuledger.billing import IDLE_KEY, POLICIES, Rules
from gpuledger.cli._main import main
from gpuledger.ledger import open_ledger
from gpuledger.reconcile import (
    RESIDUAL_KEY,
    TRUE_UP_BY,
    TrueUp,
    parse_usage,
    read_usage,
    reconcile,
    true_up,
)
from gpuledger.testing import make_record

from .data.usage import fleet

DATA = Path(__file__).parent / "data" / "usage"
FIXTURES = sorted(DATA.glob("*.json")) + sorted(DATA.glob("*.csv"))


@pytest.fixture(scope="module")
def records() -> list[InvocationRecord]:
    return fleet.records()


def _cents(amount: Fraction) -> int:
    return round(amount * 100)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("path", FIXTURES, ids=lambda path: path.name)
def test_the_cells_and_every_grouping_sum_to_the_invoice_to_the_cent(
    path: Path, policy: str, records: list[InvocationRecord]
) -> None:
    """Every fixture, every policy, every grouping: the cents add up to the invoice's total."""
    invoice = read_usage(path)
    result = true_up(reconcile(invoice, records, policy=policy))
    assert result.total_cents == _cents(invoice.total_usd)
    assert sum(cell.cents for cell in result.cells) == result.total_cents
    assert sum(cell.invoiced_usd for cell in result.cells) == invoice.total_usd
    for by in TRUE_UP_BY:
        rows = result.rows(by)
        assert sum(row.cents for row in rows) == result.total_cents, by
        assert len({row.key for row in rows}) == len(rows)


def test_each_cell_is_its_rows_invoice_times_its_measured_share(
    records: list[InvocationRecord],
) -> None:
    """Within an endpoint and period, cells' exact amounts are pro rata to what the ledger
    measured, and each cell's cents are within a cent of its exact share."""
    result = true_up(reconcile(read_usage(fleet.DATA_V2), records))
    rows = {(row.endpoint, row.period_start_ns): row for row in result.reconciliation.rows}
    checked = 0
    for key, row in rows.items():
        cells = [
            cell
            for cell in result.cells
            if (cell.endpoint, cell.period_start_ns) == key and cell.kind != "residual"
        ]
        measured = sum((cell.measured_usd for cell in cells), Fraction(0))
        shared = row.invoiced_usd - row.residual_usd
        for cell in cells:
            assert cell.invoiced_usd == shared * cell.measured_usd / measured
            assert abs(cell.cents - cell.invoiced_usd * 100) < 1
            checked += 1
    assert checked > 50


def test_the_residual_is_its_own_row_never_spread(records: list[InvocationRecord]) -> None:
    """The hour with no ledger rows, the pod the ledger never saw, the App never instrumented
    and the Volume: (residual), whatever the grouping."""
    expectations = {
        fleet.DATA_V2: Fraction("0.787963"),
        fleet.DATA_V1: fleet.GHOST_S * fleet.H100_PRO_BILLED,
        fleet.DATA_ITEMS: sum(fleet.BATCH_GPU.values(), Fraction(0))
        + 2 * Fraction("0.001179")
        + 6 * fleet.VOLUME_HOURLY,
    }
    for path, residual in expectations.items():
        result = true_up(reconcile(read_usage(path), records))
        for by in TRUE_UP_BY:
            rows = {row.key: row for row in result.rows(by)}
            assert rows[RESIDUAL_KEY].invoiced_usd == residual, (path.name, by)
            assert rows[RESIDUAL_KEY].measured_usd == 0
            assert result.rows(by)[-1].key == RESIDUAL_KEY


def test_idle_billed_by_the_platform_goes_where_the_policy_says(
    records: list[InvocationRecord],
) -> None:
    """The idle time the platform billed (matched by reconcile) is (idle) under separate, and
    the users' under share: the total is the same."""
    reconciled = {
        policy: reconcile(read_usage(fleet.DATA_V2), records, policy=policy)
        for policy in ("separate", "share")
    }
    separate = {row.key: row for row in true_up(reconciled["separate"]).rows("user")}
    share = {row.key: row for row in true_up(reconciled["share"]).rows("user")}
    assert separate[IDLE_KEY].cents > 0
    assert IDLE_KEY not in share
    for user in ("alice", "bob", "carol", "dave"):
        assert share[user].cents > separate[user].cents
    assert sum(row.cents for row in separate.values()) == sum(row.cents for row in share.values())


def test_cells_are_per_period_endpoint_user_and_tenant(records: list[InvocationRecord]) -> None:
    """What a FOCUS export needs: one cell per hour, endpoint, user and tenant, no more."""
    result = true_up(reconcile(read_usage(fleet.DATA_V2), records))
    keys = [
        (cell.period_start_ns, cell.endpoint, cell.user, cell.tenant, cell.kind)
        for cell in result.cells
    ]
    assert len(keys) == len(set(keys))
    assert keys == sorted(keys, key=lambda key: (key[0], key[1]))
    alice = [cell for cell in result.cells if cell.user == "alice"]
    assert {cell.tenant for cell in alice} == {"acme"}
    assert all(cell.billed_usd == Fraction(cell.cents, 100) for cell in result.cells)


def test_ledger_charges_the_invoice_does_not_bill_are_in_no_cell(
    records: list[InvocationRecord],
) -> None:
    """The other account's endpoint: reported as unbilled, split into nothing."""
    result = true_up(reconcile(read_usage(fleet.DATA_V2), records))
    assert result.unbilled_usd == 30 * fleet.A100  # ten 3 s requests
    assert all(cell.endpoint != fleet.STAGE for cell in result.cells)


def test_largest_remainder_cents_sum_to_the_invoice() -> None:
    """$1.00 over three equal users is 34 + 33 + 33 cents; random splits always add up."""
    rules = Rules(per_gpu_second_usd=Fraction(1, 1000))
    users = [
        make_record(index * 10, 5, endpoint="ep", user_id=user, billing_rules=rules.to_json())
        for index, user in enumerate(("ann", "ben", "cat"))
    ]
    text = '[{"time": "2026-03-01T00:00:00Z", "amount": 1.0, "endpointId": "ep"}]'
    result = true_up(reconcile(parse_usage(text, bucket="hour"), users))
    assert sorted(cell.cents for cell in result.cells) == [33, 33, 34]
    generator = random.Random(7)
    for _ in range(50):
        count = generator.randint(1, 12)
        spread = [
            make_record(
                generator.randint(0, 3000),
                generator.randint(1, 400) / 7,
                endpoint="ep",
                user_id=f"u{generator.randint(0, 5)}",
                billing_worker=f"w{index}",
                billing_rules=rules.to_json(),
            )
            for index in range(count)
        ]
        amount = Fraction(generator.randint(1, 10**7), 10**6)
        text = json.dumps(
            [{"time": "2026-03-01T00:00:00Z", "amount": float(amount), "endpointId": "ep"}]
        )
        result = true_up(reconcile(parse_usage(text, bucket="hour"), spread))
        assert sum(cell.cents for cell in result.cells) == result.total_cents
        assert sum(row.cents for row in result.rows("user")) == result.total_cents


def test_rows_cannot_group_by_what_cells_do_not_carry(records: list[InvocationRecord]) -> None:
    """A true-up groups by user, tenant, endpoint, platform or day."""
    result = true_up(reconcile(read_usage(fleet.DATA_V2), records))
    assert isinstance(result, TrueUp)
    with pytest.raises(ValueError, match="cannot true up by 'invocation'"):
        result.rows("invocation")
    days = result.rows("day")
    assert [row.key for row in days] == ["2026-03-01", IDLE_KEY, RESIDUAL_KEY]


# --- the command ----------------------------------------------------------------------------


@pytest.fixture
def fleet_ledger(tmp_path: Path, records: list[InvocationRecord]) -> Path:
    path = tmp_path / "fleet.db"
    with open_ledger(str(path)) as ledger:
        ledger.write(records)
    return path


def test_report_true_up_table_totals_the_invoice(fleet_ledger: Path) -> None:
    """The table's TOTAL is the invoice's total to the cent; (idle) and (residual) are rows."""
    result = CliRunner().invoke(
        main, ["report", "--ledger", str(fleet_ledger), "--true-up", str(fleet.DATA_V2)]
    )
    assert result.exit_code == 0, result.output
    total = _cents(read_usage(fleet.DATA_V2).total_usd)
    lines = result.output.splitlines()
    (footer,) = [line for line in lines if line.startswith("TOTAL")]
    assert footer.endswith(f"{total / 100:.2f}")
    assert any(line.startswith(IDLE_KEY) for line in lines)
    assert any(line.startswith(RESIDUAL_KEY) for line in lines)
    cents = [
        round(float(line.split()[-1]) * 100)
        for line in lines
        if line.split()
        and line.split()[0] in ("alice", "bob", "carol", "dave", IDLE_KEY, RESIDUAL_KEY)
    ]
    assert sum(cents) == total


@pytest.mark.parametrize("by", ["user", "tenant", "endpoint"])
def test_report_true_up_json_and_csv(fleet_ledger: Path, by: str) -> None:
    """json: rows and the cells per period, endpoint, user and tenant; csv: the rows. Both
    add up to the invoice."""
    args = ["report", "--ledger", str(fleet_ledger), "--true-up", str(fleet.DATA_ITEMS), "--by", by]
    result = CliRunner().invoke(main, [*args, "--format", "json", "--platform", "modal"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    total = _cents(read_usage(fleet.DATA_ITEMS).total_usd)
    assert round(data["total_usd"] * 100) == total
    assert sum(round(row["invoiced_usd"] * 100) for row in data["rows"]) == total
    assert sum(round(cell["invoiced_usd"] * 100) for cell in data["cells"]) == total
    assert {"period_start", "endpoint", "user", "tenant", "kind"} <= set(data["cells"][0])
    result = CliRunner().invoke(main, [*args, "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = result.output.splitlines()
    assert rows[0] == f"{by},measured_usd,invoiced_usd"
    assert sum(round(float(row.split(",")[-1]) * 100) for row in rows[1:]) == total


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--true-up", "x.json", "--by", "invocation"], "'--by'"),
        (["--true-up", "x.json", "--since", "7d"], "'--since'"),
        (["--platform", "modal"], "'--platform'"),
    ],
)
def test_report_true_up_usage_errors_exit_2(args: list[str], option: str) -> None:
    """A grouping cells do not carry, a window the invoice sets, --platform alone: exit 2."""
    result = CliRunner().invoke(main, ["report", *args])
    assert result.exit_code == 2, result.output
    assert option in result.output


def test_report_true_up_of_a_missing_file_exits_1(fleet_ledger: Path) -> None:
    """A usage file that cannot be read fails the run."""
    result = CliRunner().invoke(
        main, ["report", "--ledger", str(fleet_ledger), "--true-up", "missing.json"]
    )
    assert result.exit_code == 1
    assert "usage file missing.json" in result.output


def test_a_cell_names_the_invoices_endpoint_and_the_ledgers(
    records: list[InvocationRecord],
) -> None:
    """A Modal App billed by id whose records name it: the cell carries both, so a FOCUS row
    (keyed by the records' endpoint) can find its billed amount."""
    result = true_up(reconcile(read_usage(fleet.DATA_ITEMS), records))
    llm = {cell.ledger_endpoint for cell in result.cells if cell.endpoint == fleet.LLM_ID}
    sd = {cell.ledger_endpoint for cell in result.cells if cell.endpoint == fleet.SD_ID}
    assert (llm, sd) == ({fleet.LLM_NAME}, {fleet.SD_ID})
    residual = [cell for cell in result.cells if cell.kind == "residual"]
    assert residual and all(cell.ledger_endpoint is None for cell in residual)
