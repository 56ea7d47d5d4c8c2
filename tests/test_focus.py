"""FOCUS 1.0 export (`gpuledger report --format focus`, gpuledger.ledger.focus_rows): the
FinOps Foundation's validator passes it, its EffectiveCost adds up to the report's total, and
each column says what FOCUS means by it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gpuledger import InvocationRecord
from gpuledger.billing import Rules
from gpuledger.cli._report import report
from gpuledger.ledger import (
    FOCUS_COLUMNS,
    FOCUS_CUSTOM_COLUMNS,
    FocusKey,
    FocusRow,
    aggregate,
    focus_rows,
    open_ledger,
    period_charges,
    totals,
    write_focus_csv,
)
from gpuledger.testing import RECORDS_START_NS, make_record

from .support.focus import (
    VALIDATOR_BUG,
    focus_validator_venv,
    run_focus_validator,
    with_validator_aliases,
)
from .support.venvs import venv_or_skip

NS = 1_000_000_000
HOUR_S = 3600
CENT = Decimal("0.01")

RUNPOD = Rules(
    per_gpu_second_usd=Fraction("0.00024"),
    execution_fee_usd=Fraction("0.25"),
    increment_ns=NS,
    bills_startup=True,
    idle_window_ns=900 * NS,
)
"""A fee per request, whole seconds per busy stretch, idle time not billed."""
MODAL = Rules(
    per_gpu_second_usd=Fraction("0.001097"),
    bills_startup=True,
    bills_idle=True,
    idle_window_ns=60 * NS,
)
"""No fee, no rounding; a warm worker's idle minute is billed."""
RESERVED = Rules(
    per_gpu_second_usd=Fraction("2.69") / 3600,
    bills_startup=True,
    bills_idle=True,
    reserved=True,
)
"""$2.69 an hour: a rate per GPU-second with no end in decimals."""


def record(
    offset_s: float, duration_s: float, rules: Rules | None, **fields: Any
) -> InvocationRecord:
    """A record of ``make_record``'s with ``rules`` frozen on it (None: priced as recorded)."""
    frozen = {"billing_rules": rules.to_json(), "pricing_version": "test-1"} if rules else {}
    return make_record(offset_s, duration_s, **{"gpu_model": "H100", **frozen, **fields})


def traffic() -> list[InvocationRecord]:
    """Four workers over March 2026: every gpuledger category, charges that cross hours and
    the month's end, requests that share a GPU three ways, and one worker with no rules."""
    runpod = {"platform": "runpod", "billing_worker": "rp-1", "endpoint": "ep-chat"}
    start = RECORDS_START_NS + (HOUR_S - 10) * NS
    modal = {"platform": "modal", "billing_worker": "md-1", "gpu_model": "A100"}
    month_end = 30 * 86_400 + 23 * HOUR_S + 59 * 60 + 50  # 2026-03-31T23:59:50Z
    reserved = {"platform": "reserved", "billing_worker": "box-1", "endpoint": "ep-batch"}
    return [
        # A cold start from 00:59:50, a request across 01:00.
        record(HOUR_S - 5, 20.3, RUNPOD, user_id="alice", tenant="acme", cold=True,
               worker_start_ns=start, worker_ready_ns=start + 5 * NS, **runpod),
        record(HOUR_S + 100, 2.5, RUNPOD, user_id="bob", **runpod),
        record(2 * HOUR_S - 5, 10.0, RUNPOD, user_id="carol", tenant="acme", **runpod),
        # Three requests sharing one GPU (thirds of a nanosecond), then a billed idle minute.
        record(2 * HOUR_S + 100, 3.0, MODAL, user_id="alice", tenant="acme", **modal),
        record(2 * HOUR_S + 101, 3.0, MODAL, user_id="bob", **modal),
        record(2 * HOUR_S + 102, 3.0, MODAL, user_id="dave", tenant="zeta", **modal),
        # A reserved GPU's request across the month's end.
        record(month_end, 20.0, RESERVED, user_id="erin", tenant="zeta",
               worker_start_ns=RECORDS_START_NS + (month_end - 60) * NS, **reserved),
        # Priced before rules were frozen, on a platform no catalogue has: as recorded.
        record(3 * HOUR_S, 4.0, None, platform="acme-cloud", billing_worker="ac-1",
               user_id="frank", cost_usd=0.75, cost_execution_usd=0.25),
    ]  # fmt: skip


def rows_of(focus_csv: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(focus_csv)))


def effective_total(rows: Iterable[dict[str, str]]) -> Decimal:
    return sum((Decimal(row["EffectiveCost"]) for row in rows), Decimal(0))


def focus_csv(records: list[InvocationRecord], **options: Any) -> str:
    """The FOCUS CSV of ``records`` billed as the report bills them (library path)."""
    billed = options.pop("billed", None)
    account = options.pop("billing_account_id", None)
    rows = focus_rows(period_charges(records, **options), billed=billed, billing_account_id=account)
    out = io.StringIO()
    write_focus_csv(rows, out)
    return out.getvalue()


@pytest.fixture
def ledger_path(tmp_path: Path) -> str:
    """A real SQLite ledger holding :func:`traffic`."""
    path = str(tmp_path / "ledger.db")
    with open_ledger(path) as ledger:
        ledger.write(traffic())
    return path


@pytest.fixture(scope="session")
def validator() -> Path:
    """The FOCUS validator's venv (made once per machine, then cached)."""
    return venv_or_skip(focus_validator_venv, "focus-validator (the FOCUS validator)")


@pytest.mark.slow
def test_the_focus_validator_passes_the_export(
    ledger_path: str, validator: Path, tmp_path: Path
) -> None:
    """The FinOps Foundation's validator finds nothing wrong with `report --format focus`."""
    result = CliRunner().invoke(report, ["--ledger", ledger_path, "--format", "focus"])
    assert result.exit_code == 0, result.output
    data = tmp_path / "focus.csv"
    # The validator's rules name four columns by names no FOCUS version has (Provider, ...):
    # it is given them as copies of FOCUS's own, so that its checks read our values.
    data.write_text(with_validator_aliases(result.stdout), encoding="utf-8")
    found = run_focus_validator(validator, data, tmp_path / "validator.log")
    # Release 1.0.0's SkuPriceId_Nullable rule queries ChargeType, a FOCUS 0.5 column (1.0 has
    # ChargeCategory): the KeyError is the validator's bug, the one failure accepted, exactly.
    check, values = VALIDATOR_BUG
    assert found.failures == {check: values}, found.output


@pytest.mark.parametrize("policy", ["separate", "share", "cause"])
def test_effective_cost_adds_up_to_the_report_total(ledger_path: str, policy: str) -> None:
    """EffectiveCost sums to the report's TOTAL cost to the cent, whoever pays the idle time."""
    run = CliRunner().invoke
    focus = run(report, ["--ledger", ledger_path, "--format", "focus", "--idle", policy])
    table = run(report, ["--ledger", ledger_path, "--wide", "--idle", policy])
    assert focus.exit_code == 0, focus.output
    header = table.stdout.splitlines()[0].split("  ")
    total_line = next(line for line in table.stdout.splitlines() if line.startswith("TOTAL"))
    printed = Decimal(
        total_line.split()[[cell.strip() for cell in header if cell].index("cost USD")]
    )
    exact = Decimal(repr(totals(aggregate(traffic(), "user", policy=policy)).cost_usd or 0.0))
    focus_total = effective_total(rows_of(focus.stdout))
    assert focus_total.quantize(CENT) == printed.quantize(CENT) == exact.quantize(CENT)
    assert abs(focus_total - exact) < Decimal("1e-9")


def test_every_focus_column_in_order_then_ours() -> None:
    """All 43 columns of FOCUS 1.0, in the specification's order, then x_ columns."""
    header = next(csv.reader(io.StringIO(focus_csv(traffic()))))
    assert header == [*FOCUS_COLUMNS, *FOCUS_CUSTOM_COLUMNS]
    assert len(FOCUS_COLUMNS) == 43
    mandatory = {"BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency",
                 "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass",
                 "ChargeDescription", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost",
                 "EffectiveCost", "InvoiceIssuerName", "ListCost", "PricingQuantity",
                 "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory",
                 "ServiceName"}  # fmt: skip
    assert mandatory <= set(header)
    assert all(name.startswith("x_") for name in FOCUS_CUSTOM_COLUMNS)


def test_one_row_per_hour_worker_endpoint_user_tenant_and_category() -> None:
    """Rows are charge periods (UTC hours) x owner x gpuledger category, each once."""
    rows = rows_of(focus_csv(traffic()))
    keys = [
        (row["ChargePeriodStart"], row["x_GpuledgerWorker"], row["ResourceId"], row["Tags"],
         row["x_GpuledgerChargeCategory"])
        for row in rows
    ]  # fmt: skip
    assert len(keys) == len(set(keys))
    alice = [row for row in rows if row["x_GpuledgerWorker"] == "rp-1" and "alice" in row["Tags"]]
    assert {(row["ChargePeriodStart"], row["ChargePeriodEnd"], row["x_GpuledgerChargeCategory"])
            for row in alice} == {
        ("2026-03-01T00:00:00Z", "2026-03-01T01:00:00Z", "startup"),
        ("2026-03-01T00:00:00Z", "2026-03-01T01:00:00Z", "request"),
        ("2026-03-01T00:00:00Z", "2026-03-01T01:00:00Z", "fee"),
        ("2026-03-01T01:00:00Z", "2026-03-01T02:00:00Z", "request"),
    }  # fmt: skip
    categories = {row["x_GpuledgerChargeCategory"] for row in rows}
    assert categories == {"startup", "request", "idle", "rounding", "fee"}
    assert {row["ChargeCategory"] for row in rows} == {"Usage"}
    assert {row["ChargeFrequency"] for row in rows} == {"Usage-Based"}


def test_quantities_units_and_prices() -> None:
    """Time is GPU-seconds at the rate per GPU-second, a fee is requests at the fee; list
    price x quantity = list cost, and list = contracted = effective cost."""
    rows = rows_of(focus_csv(traffic()))
    by = {(row["x_GpuledgerWorker"], row["ChargePeriodStart"], row["Tags"],
           row["x_GpuledgerChargeCategory"]): row for row in rows}  # fmt: skip
    alice_tags = json.dumps({"endpoint": "ep-chat", "tenant": "acme", "user": "alice"})
    startup = by[("rp-1", "2026-03-01T00:00:00Z", alice_tags, "startup")]
    assert (startup["ConsumedQuantity"], startup["ConsumedUnit"]) == ("5.0", "GPU-Seconds")
    assert (startup["PricingQuantity"], startup["PricingUnit"]) == ("5.0", "GPU-Seconds")
    assert startup["ListUnitPrice"] == startup["ContractedUnitPrice"] == "0.00024"
    assert startup["ListCost"] == startup["ContractedCost"] == startup["EffectiveCost"] == "0.0012"
    assert startup["SkuId"] == "runpod/H100"
    assert startup["SkuPriceId"] == "runpod/H100/gpu-second@test-1"
    fee = by[("rp-1", "2026-03-01T00:00:00Z", alice_tags, "fee")]
    assert (fee["ConsumedQuantity"], fee["ConsumedUnit"], fee["PricingUnit"]) == (
        "1.0", "Requests", "Requests")  # fmt: skip
    assert fee["ListUnitPrice"] == fee["EffectiveCost"] == "0.25"
    assert fee["SkuPriceId"] == "runpod/H100/request@test-1"
    for row in rows:
        if row["ListUnitPrice"]:  # exact where the decimals end, else to the 18th place
            product = Decimal(row["ListUnitPrice"]) * Decimal(row["PricingQuantity"])
            assert abs(product - Decimal(row["ListCost"])) < Decimal("1e-15")
        assert row["ListCost"] == row["ContractedCost"] == row["EffectiveCost"]
        for column in ("BilledCost", "EffectiveCost", "ConsumedQuantity", "ListUnitPrice"):
            assert "e" not in row[column].lower()
            assert row[column] == "" or "." in row[column]  # read as decimals, never integers


def test_time_shared_three_ways_and_rates_with_no_end() -> None:
    """GPU time shared by three requests at once, and a rate of $2.69 an hour, have no end in
    decimals: they are written to 18 places, and still add up."""
    rows = rows_of(focus_csv(traffic()))
    shared = {
        json.loads(row["Tags"])["user"]: row["ConsumedQuantity"]
        for row in rows
        if row["x_GpuledgerWorker"] == "md-1" and row["x_GpuledgerChargeCategory"] == "request"
    }
    # 0-1 s alone, 1-2 s halved, 2-3 s in thirds, ...: 1 + 1/2 + 1/3 = 11/6 GPU-seconds.
    assert shared == {
        "alice": "1.833333333333333333",
        "bob": "1.333333333333333333",
        "dave": "1.833333333333333333",
    }
    assert sum(Decimal(value) for value in shared.values()) == Decimal("4.999999999999999999")
    reserved = {row["ListUnitPrice"] for row in rows if row["x_GpuledgerPlatform"] == "reserved"}
    assert reserved == {"0.000747222222222222"}


def test_billing_period_is_the_calendar_month_of_the_charge() -> None:
    """A charge across midnight of March 31 is two rows, billed in March and in April."""
    rows = rows_of(focus_csv(traffic()))
    erin = [row for row in rows if row["Tags"] and "erin" in row["Tags"]
            and row["x_GpuledgerChargeCategory"] == "request"]  # fmt: skip
    assert [(row["ChargePeriodStart"], row["BillingPeriodStart"], row["BillingPeriodEnd"])
            for row in erin] == [
        ("2026-03-31T23:00:00Z", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"),
        ("2026-04-01T00:00:00Z", "2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z"),
    ]  # fmt: skip
    assert [row["ConsumedQuantity"] for row in erin] == ["10.0", "10.0"]


def test_provider_resource_and_tags() -> None:
    """The platform is provider, publisher and invoice issuer; the resource is the endpoint,
    else the worker; Tags carry user, tenant and endpoint, and the worker's own rows none."""
    rows = rows_of(focus_csv(traffic()))
    runpod = next(row for row in rows if row["x_GpuledgerWorker"] == "rp-1")
    assert runpod["ProviderName"] == runpod["PublisherName"] == "RunPod"
    assert runpod["InvoiceIssuerName"] == "RunPod"
    assert runpod["ServiceName"] == "RunPod Serverless"
    assert runpod["ServiceCategory"] == "AI and Machine Learning"
    assert (runpod["ResourceId"], runpod["ResourceType"]) == ("ep-chat", "Endpoint")
    assert runpod["BillingCurrency"] == "USD"
    assert runpod["BillingAccountId"] == "runpod"  # no account given: the platform's name
    idle = next(row for row in rows if row["x_GpuledgerChargeCategory"] == "idle")
    assert (idle["ResourceId"], idle["ResourceType"], idle["Tags"]) == ("md-1", "Worker", "")
    assert idle["ProviderName"] == "Modal"
    tags = json.loads(next(row["Tags"] for row in rows if "dave" in row["Tags"]))
    assert tags == {"tenant": "zeta", "user": "dave"}
    for row in rows:  # what gpuledger cannot know is null, never a stand-in
        for column in (
            "AvailabilityZone",
            "BillingAccountName",
            "ChargeClass",
            "CommitmentDiscountId",
            "ResourceName",
            "RegionName",
            "SubAccountId",
        ):
            assert row[column] == "", column  # fmt: skip


def test_billed_cost_is_zero_without_an_invoice_and_the_invoice_with_one() -> None:
    """BilledCost is 0 (never null) unless a true-up gives it, by row key or by function."""
    records = traffic()
    assert {row["BilledCost"] for row in rows_of(focus_csv(records))} == {"0.0"}
    rows = focus_rows(period_charges(records))
    fee = next(row for row in rows if row.category == "fee")
    invoice = {
        FocusKey(fee.period_start_ns, "rp-1", "ep-chat", "alice", "acme", "fee"): Decimal("0.25")
    }
    assert fee.key in invoice
    by_key = rows_of(focus_csv(records, billed=invoice))
    billed = [row for row in by_key if row["BilledCost"] != "0.0"]
    assert [(row["x_GpuledgerChargeCategory"], row["BilledCost"]) for row in billed] == [
        ("fee", "0.25")
    ]

    def invoiced(row: FocusRow) -> float | None:
        return 0.1 if row.platform == "modal" else None

    by_function = rows_of(focus_csv(records, billed=invoiced))
    modal = [row["BilledCost"] for row in by_function if row["x_GpuledgerPlatform"] == "modal"]
    assert modal
    assert set(modal) == {"0.1"}  # the float as written, not its binary expansion


def test_provisional_and_pricing_version() -> None:
    """A worker that may still be running is marked provisional; the pricing edition is kept."""
    records = [record for record in traffic() if record.billing_worker in {"rp-1", "md-1"}]
    still_running = RECORDS_START_NS + 2 * HOUR_S * NS + 120 * NS  # modal's idle minute not over
    rows = rows_of(focus_csv(records, now_ns=still_running))
    provisional = {
        row["x_GpuledgerWorker"] for row in rows if row["x_GpuledgerProvisional"] == "true"
    }
    assert provisional == {"md-1"}
    assert {row["x_GpuledgerPricingVersion"] for row in rows} == {"test-1"}


def test_priced_as_recorded_has_no_unit_price() -> None:
    """A record priced before rules were frozen keeps its dollars; its rate is unknown (null)."""
    rows = [row for row in rows_of(focus_csv(traffic())) if row["x_GpuledgerWorker"] == "ac-1"]
    by_category = {row["x_GpuledgerChargeCategory"]: row for row in rows}
    assert set(by_category) == {"request", "fee"}
    assert by_category["request"]["ListUnitPrice"] == ""
    assert by_category["request"]["ConsumedQuantity"] == "4.0"
    assert by_category["request"]["EffectiveCost"] == "0.5"
    assert by_category["fee"]["ListUnitPrice"] == "0.25"
    assert by_category["request"]["ProviderName"] == "acme-cloud"


def test_cli_writes_focus_to_stdout_with_the_billing_account(ledger_path: str) -> None:
    """`report --format focus --billing-account ID` prints the CSV with that account."""
    result = CliRunner().invoke(
        report, ["--ledger", ledger_path, "--format", "focus", "--billing-account", "acct-42"]
    )
    assert result.exit_code == 0, result.output
    rows = rows_of(result.stdout)
    assert rows
    assert {row["BillingAccountId"] for row in rows} == {"acct-42"}
    assert result.stdout == focus_csv(traffic(), billing_account_id="acct-42")
