"""`gpuledger reconcile` (gpuledger.reconcile): the platforms' usage exports read in the shapes they
document, and a simulated fleet's bill whose differences were planted (tests/data/usage/fleet.py)
found and explained one by one."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gpuledger import InvocationRecord
from gpuledger._pricing import edition_catalogue
from gpuledger.billing import Rules
from gpuledger.cli._main import main
from gpuledger.ledger import aggregate, open_ledger, period_charges, totals
from gpuledger.reconcile import (
    ACCOUNT_KEY,
    CAUSES,
    UNKNOWN_PODS,
    Invoice,
    ReconcileRow,
    Reconciliation,
    UsageFileError,
    parse_usage,
    read_usage,
    reconcile,
    resource_part,
)
from gpuledger.testing import RECORDS_START_NS, make_record

from .data.usage import fleet
from .support.cli import separate_runner

DATA = Path(__file__).parent / "data" / "usage"
V2, V1 = DATA / "runpod-v2-serverless.json", DATA / "runpod-v1-endpoints-by-pod.json"
MODAL_CSV, MODAL_JSON = DATA / "modal-report-resources.csv", DATA / "modal-report.json"
MODAL_ITEMS = DATA / "modal-report-items.json"
HOUR_NS = 3600 * 1_000_000_000
ROUNDING = Fraction(1, 100_000)
"""How far a cause may be from its planted amount: the files' amounts have six decimals."""


@pytest.fixture(scope="module")
def records() -> list[InvocationRecord]:
    return fleet.records()


def _hour(row_start_ns: int) -> int:
    return (row_start_ns - fleet.START_NS) // HOUR_NS


def _causes(result: Reconciliation) -> dict[tuple[str, int, str], Fraction]:
    return {
        (row.endpoint, _hour(row.period_start_ns), cause.kind): cause.usd
        for row in result.rows
        for cause in row.causes
    }


# --- the fixture files ------------------------------------------------------------------------


def test_the_fixture_files_are_what_the_fleet_generator_writes() -> None:
    """tests/data/usage/ holds what `python tests/data/usage/fleet.py` writes now."""
    for name, text in fleet.contents().items():
        # Line ends aside: the CSV has the CLI's \r\n, which a checkout may turn into \n.
        written = (DATA / name).read_bytes().replace(b"\r\n", b"\n")
        assert written == text.encode("utf-8").replace(b"\r\n", b"\n"), name


def test_the_readme_names_each_fixture_and_its_documented_source() -> None:
    """Every fixture file is in the README, beside the URL of the shape it follows."""
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    for name in fleet.FILES:
        assert f"`{name}`" in readme
    for url in (
        "https://docs.runpod.io/api-reference-v2/billing/get-serverless-billing-history",
        "https://docs.runpod.io/api-reference/billing/GET/billing/endpoints",
        "https://modal.com/docs/cli/latest/billing",
        "https://modal.com/docs/sdk/py/latest/Workspace",
    ):
        assert url in readme


@pytest.mark.parametrize(
    ("path", "platform", "shape", "lines"),
    [
        (V2, "runpod", "runpod-v2", 13),
        (V1, "runpod", "runpod-v1", 14),
        (MODAL_CSV, "modal", "modal-csv", 15),
        (MODAL_JSON, "modal", "modal-json", 15),
        (MODAL_ITEMS, "modal", "modal-items", 15),
    ],
    ids=lambda value: value.name if isinstance(value, Path) else None,
)
def test_each_shape_is_detected_and_read(path: Path, platform: str, shape: str, lines: int) -> None:
    """The shape is told from the content; hourly buckets; every amount exact."""
    invoice = read_usage(path)
    assert (invoice.platform, invoice.shape, invoice.bucket, len(invoice.lines)) == (
        platform,
        shape,
        "hour",
        lines,
    )
    for line in invoice.lines:
        assert line.period_end_ns - line.period_start_ns == HOUR_NS
        if line.parts is not None:
            assert sum(line.parts.values(), Fraction(0)) == line.amount_usd
    assert read_usage(path, platform=platform).lines == invoice.lines


def test_runpod_v2_totals_and_parts_are_read_as_written() -> None:
    """metadata.totals.totalAmount is kept, and equals the records' sum; parts by field."""
    invoice = read_usage(V2)
    data = json.loads(V2.read_text(), parse_float=Decimal)
    assert invoice.declared_total_usd == Fraction(data["metadata"]["totals"]["totalAmount"])
    assert invoice.total_usd == invoice.declared_total_usd
    first, record = invoice.lines[0], data["records"][0]
    assert first.endpoint == record["serverlessId"]
    assert first.parts == {
        "gpu": Fraction(record["gpuAmount"]),
        "cpu": Fraction(0),
        "disk": Fraction(record["diskAmount"]),
        "fee": Fraction(record["feeAmount"]),
    }
    assert (invoice.query_start_ns, invoice.query_end_ns) == (fleet.START_NS, fleet.END_NS)


# The response examples of the platforms' own specs, verbatim.
RUNPOD_V2_EXAMPLE = """{"records": [{"startTime": "2026-06-01T00:00:00Z",
  "endTime": "2026-06-02T00:00:00Z", "serverlessId": "4m7x2k9q", "totalAmount": 8.9,
  "gpuAmount": 7.5, "cpuAmount": 0, "diskAmount": 0.4, "feeAmount": 1.0}],
  "metadata": {"query": {"startTime": "2026-06-01T00:00:00Z", "endTime": "2026-06-02T00:00:00Z",
  "bucketSize": "day", "serverlessId": "4m7x2k9q"}, "recordCount": 1, "totals": {
  "totalAmount": 8.9, "gpuAmount": 7.5, "cpuAmount": 0, "diskAmount": 0.4, "feeAmount": 1.0},
  "uniqueServerlessCount": 1}}"""
"""api-reference-v2/openapi.json (runpod/docs), /v2/billing/serverless, example
``serverlessBilling``."""
RUNPOD_V1_EXAMPLE = """[{"amount": 100.5, "diskSpaceBilledGb": 50, "endpointId": "<string>",
  "gpuTypeId": "<string>", "podId": "<string>", "time": "2023-01-01T00:00:00Z",
  "timeBilledMs": 3600000}]"""
"""docs.runpod.io/api-reference/billing/GET/billing/endpoints, the response example."""


def test_runpod_v2_reads_the_spec_example_exactly() -> None:
    """8.9 = 7.5 + 0 + 0.4 + 1.0 as decimals, a day bucket, the endpoint named."""
    invoice = parse_usage(RUNPOD_V2_EXAMPLE)
    (line,) = invoice.lines
    assert invoice.bucket == "day" and not invoice.bucket_inferred
    assert line.amount_usd == Fraction("8.9") == invoice.declared_total_usd
    assert line.parts == {
        "gpu": Fraction("7.5"),
        "cpu": Fraction(0),
        "disk": Fraction("0.4"),
        "fee": Fraction(1),
    }
    assert line.endpoint == "4m7x2k9q"
    assert line.period_end_ns - line.period_start_ns == 24 * HOUR_NS


def test_runpod_v1_reads_the_spec_example() -> None:
    """One record at midnight: a day bucket (inferred), billed ms, disk, pod and GPU type."""
    invoice = parse_usage(RUNPOD_V1_EXAMPLE)
    (line,) = invoice.lines
    assert (invoice.shape, invoice.bucket, invoice.bucket_inferred) == ("runpod-v1", "day", True)
    assert line.amount_usd == Fraction("100.5")
    assert (line.billed_ms, line.disk_gb, line.worker, line.gpu_type) == (
        3_600_000,
        50,
        "<string>",
        "<string>",
    )
    assert parse_usage(RUNPOD_V1_EXAMPLE, bucket="hour").lines[0].period_end_ns == (
        line.period_start_ns + HOUR_NS
    )


def test_modal_items_from_the_installed_client_are_read() -> None:
    """modal.types.BillingReportItem, written out as JSON, reads back exactly."""
    types = pytest.importorskip("modal.types")
    if not hasattr(types, "BillingReportItem"):
        pytest.skip("this modal client predates Workspace.billing.report() (modal 1.3)")
    item = types.BillingReportItem(
        object_id="ap-123",
        description="app1",
        environment_name="main",
        interval_start=dt.datetime(2025, 1, 1, 1, tzinfo=dt.UTC),
        cost=Decimal("100.123456"),
        cost_by_resource={"CPU": Decimal("100"), "Memory": Decimal("0.123456")},
        tags={"team": "eng", "project": "p7r"},
    )
    text = json.dumps([dataclasses.asdict(item)], default=str)
    invoice = parse_usage(text)
    (line,) = invoice.lines
    assert invoice.shape == "modal-items"
    assert line.amount_usd == Fraction("100.123456")
    assert line.parts == {"cpu": Fraction(100), "memory": Fraction("0.123456")}
    assert (line.endpoint, line.name, line.environment) == ("ap-123", "app1", "main")
    assert line.tags == {"team": "eng", "project": "p7r"}
    assert line.period_start_ns == int(item.interval_start.timestamp()) * 1_000_000_000


def test_modal_cli_json_keys_are_the_clients_own() -> None:
    """The CLI's JSON keys are its column names through its own snake-casing."""
    utils = pytest.importorskip("modal.cli.utils")
    if not hasattr(utils, "_col_name_to_json_key"):
        pytest.skip("this modal client predates `modal billing report --json` (modal 1.3)")
    columns = ["Object ID", "Description", "Environment", "Interval Start", "Resource", "Cost"]
    keys = [utils._col_name_to_json_key(column) for column in columns]
    rows = json.loads(MODAL_JSON.read_text())
    assert set(rows[0]) == {*keys, "tags"} - {"resource"}
    assert MODAL_CSV.read_text().splitlines()[0] == ",".join([*columns, "Tags"])


def test_the_three_modal_shapes_read_the_same_bill() -> None:
    """--csv with resources, --json without, and the API items: same totals per line."""
    amounts = [
        sorted((line.endpoint, line.period_start_ns, line.amount_usd) for line in invoice.lines)
        for invoice in map(read_usage, (MODAL_CSV, MODAL_JSON, MODAL_ITEMS))
    ]
    assert amounts[0] == amounts[1] == amounts[2]
    assert read_usage(MODAL_CSV).lines == read_usage(MODAL_ITEMS).lines
    assert all(line.parts is None for line in read_usage(MODAL_JSON).lines)


@pytest.mark.parametrize(
    ("resource", "part"),
    [
        ("CPU", "cpu"),
        ("Memory", "memory"),
        ("H100", "gpu"),
        ("A10G", "gpu"),
        ("GPU (A100-80GB)", "gpu"),
        ("L4", "gpu"),
        ("Storage", "disk"),
        ("Sandbox egress", "other"),
    ],
)
def test_modal_resources_are_sorted_into_parts(resource: str, part: str) -> None:
    """CPU, memory, GPU types, storage; anything else is 'other', never dropped."""
    assert resource_part(resource) == part


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("[]", "empty JSON array"),
        ('{"data": []}', "without 'records'"),
        ('[{"foo": 1}]', "none of"),
        ("name,cost\nx,1\n", "'Object ID'"),
        ('[{"time": "yesterday", "amount": 1}]', "not a billing export"),
        ('{"records": []}', "no records"),
    ],
)
def test_an_unreadable_export_says_why(text: str, message: str) -> None:
    """A typed error naming the file and the reason, never a traceback."""
    with pytest.raises(UsageFileError, match=r"usage file x\.json") as caught:
        parse_usage(text, source="x.json")
    assert message in str(caught.value)


def test_a_platform_or_bucket_that_contradicts_the_file_is_refused() -> None:
    """--platform modal on a RunPod export; a bucket the export states otherwise."""
    with pytest.raises(UsageFileError, match="not a modal export"):
        read_usage(V2, platform="modal")
    with pytest.raises(UsageFileError, match="bucketSize is 'hour', not 'day'"):
        read_usage(V2, bucket="day")
    with pytest.raises(UsageFileError, match="hour or day"):
        read_usage(MODAL_CSV, bucket="week")


# --- the planted differences, found ---------------------------------------------------------


def test_the_invoices_are_the_platforms_truth(records: list[InvocationRecord]) -> None:
    """The fixture bills are the fleet billed under the platform's rules (the generator's
    truth), and the planted differences are the only ones: the ledger's own bill differs."""
    truth = fleet.truth()
    invoice = read_usage(V1)
    by_pod = {(line.worker, _hour(line.period_start_ns)): line for line in invoice.lines}
    for (worker, hour), billed in truth["runpod"].items():
        line = by_pod[(worker, hour)]
        assert abs(line.amount_usd - billed.gpu_usd) <= Fraction(1, 2_000_000)
        assert line.billed_ms == round(billed.gpu_ns / 1_000_000)


@pytest.mark.parametrize("path", [V2, V1], ids=["v2", "v1"])
def test_runpod_planted_differences_are_found_and_explained(
    path: Path, records: list[InvocationRecord]
) -> None:
    """Idle billed (chat), start-up billed (embed), another price (image), a worker the ledger
    never saw (image, hour 3), another account's endpoint (stage): each found, in the row it
    was planted in, at the amount worked out by hand; nothing left unexplained."""
    result = reconcile(read_usage(path), records)
    found = _causes(result)
    planted = fleet.planted()
    for (endpoint, hour, kind), amount in planted.items():
        if (
            endpoint in (fleet.CHAT, fleet.EMBED, fleet.IMAGE, fleet.STAGE)
            and kind != "no_ledger_rows"
        ):
            assert abs(found[(endpoint, hour, kind)] - amount) <= ROUNDING, (endpoint, hour, kind)
    ghost = fleet.GHOST_S * fleet.H100_PRO_BILLED
    if path == V1:  # grouped by pod: the ghost pod is named
        assert found[(UNKNOWN_PODS, fleet.GHOST_HOUR, "unseen_workers")] == ghost
        (row,) = [row for row in result.rows if row.endpoint == UNKNOWN_PODS]
        assert fleet.GHOST_POD in row.causes[0].detail
    else:  # by endpoint: the hour with no ledger rows, fee and disk included
        amount = found[(fleet.IMAGE, fleet.GHOST_HOUR, "no_ledger_rows")]
        assert amount == Fraction("0.787963")  # 0.75 GPU + 5 % fee + 2 x 5 min of 20 GB disk
    kinds = {(endpoint, kind) for endpoint, _, kind in found}
    expected = {
        (fleet.CHAT, "idle"),
        (fleet.EMBED, "startup"),
        (fleet.IMAGE, "price"),
        (fleet.STAGE, "not_invoiced"),
    }
    if path == V2:
        expected |= {(fleet.IMAGE, "no_ledger_rows")}
        expected |= {
            (each, kind)
            for each in (fleet.CHAT, fleet.EMBED, fleet.IMAGE)
            for kind in ("fee", "disk")
        }
    else:
        expected |= {(UNKNOWN_PODS, "unseen_workers")}
    assert kinds == expected
    for row in result.rows:
        assert abs(row.unexplained_usd) <= ROUNDING, row


def test_runpod_fee_and_disk_are_the_exports_own(records: list[InvocationRecord]) -> None:
    """The platform fee and the disk amount gpuledger does not model are explained as such,
    to the cent of each record."""
    result = reconcile(read_usage(V2), records)
    for row in result.rows:
        for line in row.lines:
            assert line.parts is not None
            causes = {cause.kind: cause.usd for cause in row.causes}
            if "no_ledger_rows" not in causes:
                assert causes["fee"] == line.parts["fee"]
                assert causes["disk"] == line.parts["disk"]
                assert row.adjustments in ((), ("idle",), ("startup",))


@pytest.mark.parametrize("path", [MODAL_CSV, MODAL_ITEMS], ids=["csv", "items"])
def test_modal_planted_differences_are_found_and_explained(
    path: Path, records: list[InvocationRecord]
) -> None:
    """The 60 s scale-down window billed (llm-serve), the seed catalogue's price against
    Modal's and 2 cores reserved against the ledger's default 0.125 (sd-turbo), an App with no
    ledger rows (batch-embed), a Volume (not metered): each found at its planted amount. The
    GPU's causes are GPU dollars alone; the CPU and memory are compared part by part, so
    llm-serve's are its idle time's and sd-turbo's memory, the same, is no cause."""
    result = reconcile(read_usage(path), records)
    found = _causes(result)
    for key, amount in fleet.planted().items():
        if key[0] in (fleet.LLM_ID, fleet.SD_ID, fleet.BATCH_ID, fleet.VOLUME_ID):
            expected = amount
            if key[2] == "no_ledger_rows":  # the App's whole line: GPU and CPU
                expected += Fraction("0.001179")
            assert abs(found[key] - expected) <= ROUNDING, key
    assert {(endpoint, kind) for endpoint, _, kind in found} == {
        (fleet.LLM_ID, "idle"),
        (fleet.LLM_ID, "cpu"),
        (fleet.LLM_ID, "memory"),
        (fleet.SD_ID, "price"),
        (fleet.SD_ID, "cpu"),
        (fleet.BATCH_ID, "no_ledger_rows"),
        (fleet.VOLUME_ID, "not_metered"),
    }
    for row in result.rows:
        assert abs(row.unexplained_usd) <= ROUNDING, row
        assert row.explained_usd + row.unexplained_usd == row.difference_usd
        details = {cause.kind: cause.detail for cause in row.causes}
        if row.endpoint == fleet.SD_ID:
            assert "the invoice's is 16 x gpuledger's" in details["cpu"]
            assert "set the cpu setting to what your functions reserve" in details["cpu"]
        elif row.endpoint == fleet.LLM_ID:
            for resource in ("cpu", "memory"):
                assert "with the idle time billed as the platform bills it" in details[resource]
                assert "(the reservation matches)" in details[resource]


def test_the_modal_ledger_charges_cpu_and_memory_at_the_published_minimum() -> None:
    """The fleet's Modal records carry the rules a recorder with the published edition and no
    cpu or memory_gib setting freezes: Modal's minimum reservation, 0.125 core and 0.125 GiB."""
    price = edition_catalogue("published-2026-12").lookup("modal", "H100")
    assert price is not None
    published = Rules.from_price(price, cpu=0.125, memory_gib=0.125)
    rules = {
        Rules.from_json(record.billing_rules or {})
        for record in fleet.records()
        if record.platform == "modal"
    }
    assert {(r.cpu_usd_per_second, r.memory_usd_per_second) for r in rules} == {
        (published.cpu_usd_per_second, published.memory_usd_per_second)
    }
    assert published.cpu_usd_per_second == fleet.CORES * fleet.CPU_CORE_S


@pytest.mark.parametrize("path", [MODAL_CSV, MODAL_ITEMS], ids=["csv", "items"])
def test_modal_parts_are_held_against_the_ledger_s_own_resources(
    path: Path, records: list[InvocationRecord]
) -> None:
    """Each row's GPU part against the ledger's GPU dollars, its CPU and memory parts against
    the ledger's CPU and memory dollars (usd_by_resource), billed with the rules as they are."""
    result = reconcile(read_usage(path), records)
    for row in result.rows:
        if not row.charges or not row.lines:
            continue
        base = _ledger_by_resource(row)
        causes = {cause.kind: cause.usd for cause in row.causes}
        for resource in ("cpu", "memory"):
            invoiced = sum(((line.parts or {}).get(resource, 0) for line in row.lines), Fraction(0))
            gap = invoiced - base[resource]
            assert abs(causes.get(resource, Fraction(0)) - gap) <= ROUNDING, (row, resource)
        invoiced_gpu = sum(((line.parts or {}).get("gpu", 0) for line in row.lines), Fraction(0))
        gpu_causes = sum(
            (usd for kind, usd in causes.items() if kind in ("idle", "startup", "price")),
            Fraction(0),
        )
        assert abs(invoiced_gpu - base["gpu"] - gpu_causes) <= ROUNDING, row


def _ledger_by_resource(row: ReconcileRow) -> dict[str, Fraction]:
    """The ledger's dollars per resource in ``row`` under the rules as they are (no flips)."""
    base = {"gpu": Fraction(0), "cpu": Fraction(0), "memory": Fraction(0)}
    start, end = row.period_start_ns, row.period_end_ns
    workers = {charge.worker for charge in row.charges}
    mine = [record for record in fleet.records() if record.billing_worker in workers]
    for charge in period_charges(mine, period_ns=end - start):
        if charge.period_start_ns == start:
            for resource, usd in charge.charges.usd_by_resource.items():
                base[resource] += usd
    return base


def test_without_parts_modal_s_cpu_and_memory_are_in_the_whole_amount(
    records: list[InvocationRecord],
) -> None:
    """`--json` has no cost by resource: the whole amount against the ledger's every resource,
    so llm-serve's idle cause is its idle time's GPU, CPU and memory, and sd-turbo's price the
    GPU's and the CPU's together; nothing is left over."""
    result = reconcile(read_usage(MODAL_JSON), records)
    found = _causes(result)
    planted = fleet.planted()
    for (endpoint, hour, kind), amount in planted.items():
        if endpoint == fleet.LLM_ID and kind == "idle":
            whole = amount + planted[(endpoint, hour, "cpu")] + planted[(endpoint, hour, "memory")]
            assert abs(found[(endpoint, hour, "idle")] - whole) <= ROUNDING
        if endpoint == fleet.SD_ID and kind == "price":
            whole = amount + planted[(endpoint, hour, "cpu")]
            assert abs(found[(endpoint, hour, "price")] - whole) <= ROUNDING
    assert not {kind for _, _, kind in found} & {"cpu", "memory"}
    for row in result.rows:
        assert abs(row.unexplained_usd) <= ROUNDING, row


def test_runpod_cpu_amount_is_its_cpu_workers_which_the_rules_do_not_charge() -> None:
    """RunPod's cpuAmount (its CPU workers): the whole amount is the cause, said so, and the
    GPU part is still held against the GPU dollars alone."""
    rules = Rules(per_gpu_second_usd=Fraction("0.001"), increment_ns=1_000_000_000)
    record = make_record(10, 5, endpoint="ep", billing_rules=rules.to_json())
    text = json.dumps(
        {
            "records": [
                {
                    "startTime": "2026-03-01T00:00:00Z",
                    "endTime": "2026-03-01T01:00:00Z",
                    "serverlessId": "ep",
                    "totalAmount": 0.025,
                    "gpuAmount": 0.005,
                    "cpuAmount": 0.02,
                    "diskAmount": 0,
                    "feeAmount": 0,
                }
            ],
            "metadata": {"query": {"bucketSize": "hour"}},
        }
    )
    (row,) = reconcile(parse_usage(text), [record]).rows
    (cause,) = row.causes
    assert (cause.kind, cause.usd) == ("cpu", Fraction("0.02"))
    assert cause.detail == "the invoice's cpu amount; gpuledger's rules charge no CPU here"
    assert row.unexplained_usd == 0
    assert "does not model" not in CAUSES["cpu"] + CAUSES["memory"]


def test_a_modal_app_matches_by_name_or_by_id(records: list[InvocationRecord]) -> None:
    """llm-serve's records name the App (MODAL_APP_NAME), sd-turbo's its id (MODAL_APP_ID):
    both land on the report's object, labelled with its name."""
    result = reconcile(read_usage(MODAL_ITEMS), records)
    endpoints = {row.endpoint: row.label for row in result.rows}
    assert endpoints[fleet.LLM_ID] == f"{fleet.LLM_NAME} ({fleet.LLM_ID})"
    assert endpoints[fleet.SD_ID] == f"{fleet.SD_NAME} ({fleet.SD_ID})"
    assert fleet.LLM_NAME not in endpoints


def test_attributed_is_the_reports_total_over_the_invoices_window(
    records: list[InvocationRecord],
) -> None:
    """What reconcile calls attributed is `report`'s TOTAL for the same records, exactly."""
    for path, platform in ((V2, "runpod"), (MODAL_ITEMS, "modal")):
        result = reconcile(read_usage(path), records)
        mine = [record for record in records if record.platform == platform]
        total = totals(aggregate(mine, "user"))
        assert result.attributed_usd == total._charges.total_usd


def test_a_daily_export_reconciles_like_the_hourly_one(records: list[InvocationRecord]) -> None:
    """The same Modal bill summed per day (`-r d`): one row per App, the same causes summed."""
    daily: dict[str, dict[str, Any]] = {}
    for item in json.loads(MODAL_ITEMS.read_text()):
        day = daily.setdefault(
            item["object_id"],
            {
                **item,
                "interval_start": "2026-03-01T00:00:00+00:00",
                "cost": Decimal(0),
                "cost_by_resource": {},
            },
        )
        day["cost"] += Decimal(item["cost"])
        for name, cost in item["cost_by_resource"].items():
            resources = day["cost_by_resource"]
            resources[name] = resources.get(name, Decimal(0)) + Decimal(cost)
    invoice = parse_usage(json.dumps(list(daily.values()), default=str), bucket="day")
    result = reconcile(invoice, records)
    assert result.period_ns == 24 * HOUR_NS
    assert {row.endpoint for row in result.rows} == set(daily)
    per_hour = reconcile(read_usage(MODAL_ITEMS), records)
    assert result.invoiced_usd == per_hour.invoiced_usd
    assert result.attributed_usd == per_hour.attributed_usd
    day_causes = result.causes()
    for kind, amount in per_hour.causes().items():
        assert abs(day_causes.get(kind, Fraction(0)) - amount) <= ROUNDING * 10, kind


def test_an_export_by_gpu_type_is_one_row_a_period(records: list[InvocationRecord]) -> None:
    """RunPod v1 grouped by gpuTypeId names no endpoint: the whole account per period."""
    text = json.dumps(
        [
            {"amount": 1.5, "gpuTypeId": "NVIDIA A100 80GB PCIe", "time": "2026-03-01T00:00:00Z"},
            {"amount": 2.5, "gpuTypeId": "NVIDIA A100 80GB PCIe", "time": "2026-03-01T01:00:00Z"},
        ]
    )
    result = reconcile(parse_usage(text), records)
    assert {row.endpoint for row in result.rows} == {ACCOUNT_KEY}
    first = result.rows[0]
    assert first.attributed_usd > 0 and first.invoiced_usd == Fraction("1.5")


def test_ledger_charges_outside_the_window_are_left_out() -> None:
    """A request a day before the invoice's first period is not compared with it."""
    rules = Rules(per_gpu_second_usd=Fraction("0.001"), increment_ns=1_000_000_000)
    inside = make_record(10, 5, endpoint="ep", billing_rules=rules.to_json())
    before = make_record(-86_000, 5, endpoint="ep", billing_rules=rules.to_json())
    text = json.dumps(
        {
            "records": [
                {
                    "startTime": "2026-03-01T00:00:00Z",
                    "endTime": "2026-03-01T01:00:00Z",
                    "serverlessId": "ep",
                    "totalAmount": 0.005,
                    "gpuAmount": 0.005,
                    "cpuAmount": 0,
                    "diskAmount": 0,
                    "feeAmount": 0,
                }
            ],
            "metadata": {"query": {"bucketSize": "hour"}},
        }
    )
    result = reconcile(parse_usage(text), [inside, before])
    (row,) = result.rows
    assert (row.invoiced_usd, row.attributed_usd, row.causes) == (
        Fraction("0.005"),
        Fraction("0.005"),
        (),
    )
    assert row.within(0.0)


def test_tolerance_is_a_share_of_the_invoiced_amount() -> None:
    """Within at exactly the limit, over past it; nothing invoiced: over unless nothing
    attributed either."""
    rules = Rules(per_gpu_second_usd=Fraction(1, 100))
    record = make_record(0, 100, endpoint="ep", billing_rules=rules.to_json())  # $1.00
    text = '[{"time": "2026-03-01T00:00:00Z", "amount": %s, "endpointId": "ep"}]'
    for amount, within_10 in (("1.10", True), ("1.12", False), ("0.9", False)):
        (row,) = reconcile(parse_usage(text % amount, bucket="hour"), [record]).rows
        assert row.within(10.0) is within_10, amount
    other = make_record(7200, 10, endpoint="other", billing_rules=rules.to_json())
    rows = reconcile(parse_usage(text % "1.0", bucket="day"), [record, other]).rows
    assert {row.endpoint: row.within(100.0) for row in rows} == {"ep": True, "other": False}


# --- the command ----------------------------------------------------------------------------


@pytest.fixture
def fleet_ledger(tmp_path: Path, records: list[InvocationRecord]) -> Path:
    path = tmp_path / "fleet.db"
    with open_ledger(str(path)) as ledger:
        ledger.write(records)
    return path


def test_reconcile_prints_each_row_and_its_causes(fleet_ledger: Path) -> None:
    """The table: endpoint, period, invoiced, attributed, difference, %, and the causes under
    each row; over the tolerance it exits 1 and says how many rows are over."""
    result = CliRunner().invoke(
        main, ["reconcile", "--usage", str(V2), "--ledger", str(fleet_ledger)]
    )
    assert result.exit_code == 1, result.output
    out = result.output
    assert "RunPod GET /v2/billing/serverless" in out
    assert "chat7x2k9q   2026-03-01 00:00" in out
    for words in (
        "the platform billed 93.0 GPU s of idle time",
        "the platform billed 25.0 GPU s of start-up",
        "match $0.00125/GPU s; gpuledger's rules $0.00116/GPU s",
        "no ledger rows here",
        "the invoice bills nothing here",
        "platform fee",
    ):
        assert words in out
    assert "14 of 14 endpoint-period(s) differ by more than 5 %" in out
    assert "Traceback" not in out


def test_reconcile_exits_0_within_the_tolerance(
    tmp_path: Path, records: list[InvocationRecord]
) -> None:
    """Without the other account's endpoint, every row is within 100 %: exit 0."""
    path = tmp_path / "ledger.db"
    with open_ledger(str(path)) as ledger:
        ledger.write([record for record in records if record.endpoint != fleet.STAGE])
    args = ["reconcile", "--usage", str(V1), "--ledger", str(path), "--platform", "runpod"]
    result = CliRunner().invoke(main, [*args, "--tolerance", "100"])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(main, [*args, "--tolerance", "30"]).exit_code == 1


def test_reconcile_json_carries_every_row_and_cause(fleet_ledger: Path) -> None:
    """--format json: the rows with their causes; the sums hold."""
    result = separate_runner().invoke(
        main,
        ["reconcile", "--usage", str(MODAL_CSV), "--ledger", str(fleet_ledger), "--format", "json"],
    )
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["usage"]["shape"] == "modal-csv" and data["within_tolerance"] is False
    assert len(data["rows"]) == 15
    for row in data["rows"]:
        explained = sum(cause["usd"] for cause in row["causes"]) + row["unexplained_usd"]
        assert abs(explained - row["difference_usd"]) < 1e-9
    assert data["causes_usd"]["idle"] > 0
    volume = [row for row in data["rows"] if row["endpoint"] == fleet.VOLUME_ID]
    assert all(row["within_tolerance"] for row in volume)  # not metered: nothing to hold


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--usage", "missing.json"], 1, "missing.json"),
        (["--usage", str(V2), "--platform", "modal"], 1, "not a modal export"),
        (["--usage", str(V2), "--format", "yaml"], 2, "'--format'"),
        (["--usage", str(V2), "--tolerance", "-1"], 2, "'--tolerance'"),
        (["--usage", str(V2), "--ledger", "missing.db"], 1, "no ledger at missing.db"),
        (["--usage", str(V2), "--pricing", "missing.toml"], 1, "missing.toml"),
        ([], 2, "'--usage'"),
    ],
)
def test_reconcile_errors_follow_the_exit_code_convention(
    args: list[str], code: int, message: str
) -> None:
    """Usage errors exit 2 naming the option; a file that cannot be used exits 1."""
    result = CliRunner().invoke(main, ["reconcile", *args])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_records_of_an_unaligned_window_are_refused() -> None:
    """Periods that do not start and end on whole minutes cannot be cut: said, not guessed."""
    text = '[{"time": "2026-03-01T00:00:30Z", "amount": 1, "endpointId": "ep"}]'
    with pytest.raises(ValueError, match="whole minutes"):
        reconcile(parse_usage(text, bucket="hour"), [make_record(0, 1, endpoint="ep")])


def test_invoice_window_covers_the_query_and_the_lines() -> None:
    """An Invoice's window: the query's where the export states it, else its lines'."""
    invoice = read_usage(V2)
    assert isinstance(invoice, Invoice)
    assert invoice.start_ns == RECORDS_START_NS and invoice.end_ns == fleet.END_NS


def test_the_readmes_sample_is_what_the_command_prints(fleet_ledger: Path) -> None:
    """README "Reconcile with your invoice": its sample lines are lines of the real output."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Reconcile with your invoice", 1)[1].split("\n## ", 1)[0]
    samples = re.findall(r"^```(\w*)\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    samples = [body for language, body in samples if not language]
    assert len(samples) == 3
    reconciled = CliRunner().invoke(
        main, ["reconcile", "--usage", str(V2), "--ledger", str(fleet_ledger)]
    )
    modal = CliRunner().invoke(
        main, ["reconcile", "--usage", str(MODAL_CSV), "--ledger", str(fleet_ledger)]
    )
    trued = CliRunner().invoke(
        main, ["report", "--true-up", str(V2), "--ledger", str(fleet_ledger), "--by", "tenant"]
    )
    for sample, result in zip(samples, (reconciled, modal, trued), strict=True):
        printed = set(result.output.splitlines())
        for line in sample.strip().splitlines():
            assert line in printed, line
