"""Reports computed in the database (``ledger_report``) against the same report computed from
the records in memory (``aggregate``): every grouping, every attribution policy, both back-ends,
over a ledger that has what makes billing hard (concurrent requests sharing a GPU, start-up work
inside a request, workers with no rules, records priced as recorded, unpriced ones, observed and
inferred stops, a worker that may still run) and what makes sums hard (unknown values, floats
that do not add up exactly in binary, a request before the epoch's day boundary)."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import pytest
from click.testing import CliRunner

from gpuledger import InvocationRecord
from gpuledger._pricing import edition_catalogue
from gpuledger.billing import POLICIES, Rules
from gpuledger.cli import main
from gpuledger.cli._billing import billing_options
from gpuledger.ledger import (
    GROUP_BY,
    ReportRow,
    WorkerStop,
    aggregate,
    ledger_report,
    open_ledger,
    totals,
)
from gpuledger.ledger._report import fixed
from gpuledger.testing import make_record

S = 1_000_000_000
DAY = 86_400 * S
T0 = 1_772_323_200 * S  # 2026-03-01T00:00:00Z
NOW = T0 - 40 * S + 5 * DAY // 3 + 600 * S
"""While pod-f, the last worker, is serving: its bill is provisional."""
_SEED = edition_catalogue("seed-2026-03")
_PUBLISHED = edition_catalogue("published-2026-12")
RUNPOD = Rules.from_price(_SEED.lookup("runpod", "H100"))  # type: ignore[arg-type]
MODAL = Rules.from_price(_PUBLISHED.lookup("modal", "H100"), cpu=4, memory_gib=16)  # type: ignore[arg-type]
USERS = ("alice", "bob", "carol", None, "")
TARGETS = ("db:5432", "s3.amazonaws.com:443", "api.example.com:443")


def _records() -> list[InvocationRecord]:
    rng = random.Random(16)
    records: list[InvocationRecord] = []
    workers: list[dict[str, Any]] = [
        {"billing_worker": billing_worker, "rules": rules, "version": version, "overlap": overlap}
        for billing_worker, rules, version, overlap in (
            ("pod-a", RUNPOD, "seed-2026-03", False),
            ("pod-b", RUNPOD, "seed-2026-03", True),
            ("modal-c", MODAL, "published-2026-12", True),
            ("old-d", None, "2026-03", False),  # priced as recorded, before rules were frozen
            (None, None, None, False),  # older still: its process only, unpriced
            ("pod-f", RUNPOD, "seed-2026-03", False),
        )
    ]
    workers[4]["worker_id"] = "proc-e"
    for index, worker in enumerate(workers):
        start = T0 - 40 * S + index * DAY // 3  # pod-a starts before the day boundary
        cursor = start + 5 * S
        for n in range(40):
            duration = round(rng.uniform(0.1, 9.0), 3)
            if not (worker["overlap"] and n % 3):
                cursor += round(rng.uniform(0.5, 90.0) * S)
            cold = n == 0
            user = USERS[rng.randrange(len(USERS))]
            calls = rng.randrange(4) if n % 2 else None
            targets = None
            if calls:
                targets = {
                    target: {"calls": 1, "wait_s": 0.1 * (i + 1), "errors": 0, "wait_usd": 1e-5}
                    for i, target in enumerate(TARGETS[:calls])
                }
            records.append(
                make_record(
                    start_ns=cursor,
                    duration_s=duration,
                    platform="modal" if worker["rules"] is MODAL else "runpod",
                    gpu_model="H100",
                    user_id=user,
                    tenant=("acme", "globex", None)[n % 3],
                    endpoint=("sdxl", "llm")[n % 2],
                    invocation_id=f"job-{index}-{n // 2}",
                    outcome="ok" if n % 7 else ("error", "rejected")[n % 2],
                    service_version=("v1", "v2", None)[(index + n) % 3],
                    model=("llama", None)[n % 2],
                    first_item_s=round(duration * 0.25, 3) if n % 4 == 1 else None,
                    items=n if n % 4 == 1 else None,
                    cold=cold,
                    init_duration_s=round(rng.uniform(5, 30), 3) if cold else None,
                    request_startup_s=1.5 if cold and index == 1 else None,
                    busy_gpu_seconds=0.1 * n if n % 4 else None,
                    energy_j=(0.3 * n + 0.1) if n % 5 else None,
                    external_calls=calls,
                    external_wait_seconds=0.1 * calls if calls is not None else None,
                    external_wait_cost_usd=2e-5 * calls if calls else None,
                    external_targets=targets,
                    input_tokens=n * 10 if n % 2 else None,
                    output_tokens=n if n % 3 else None,
                    billing_worker=worker["billing_worker"],
                    worker_id=worker.get("worker_id", worker["billing_worker"]),
                    worker_start_ns=start if worker["billing_worker"] else None,
                    worker_ready_ns=start + 4 * S if worker["billing_worker"] else None,
                    billing_rules=worker["rules"].to_json() if worker["rules"] else None,
                    pricing_version=worker["version"],
                    cost_usd=None if index == 4 else 0.001 * duration,
                    cost_execution_usd=0.0001 if index == 3 else None,
                )
            )
    # Records with no worker at all: each its own ("record:<id>").
    records += [
        make_record(start_ns=T0 + DAY + i * S, duration_s=0.25 * (i + 1), worker_id=None)
        for i in range(3)
    ]
    return records


STOPS = [
    WorkerStop("pod-a", "host:1", T0 + DAY, "shutdown"),
    WorkerStop("modal-c", "host:3", T0 + 3 * DAY, "shutdown"),
]


@pytest.fixture
def ledger_with_records(ledger_location: str) -> tuple[str, list[InvocationRecord]]:
    with open_ledger(ledger_location) as ledger:
        ledger.write(_records())
        ledger.write_stops(STOPS)
        stored = list(ledger.read())
    return ledger_location, stored


def _plain(row: ReportRow | None) -> Any:
    """A row's public values, NaN as None (NaN is not equal to itself)."""
    if row is None:
        return None
    return {
        key: None if isinstance(value, float) and math.isnan(value) else value
        for key, value in dataclasses.asdict(row).items()
        if not key.startswith("_")
    }


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("by", GROUP_BY)
def test_the_database_report_is_the_records_report(
    ledger_with_records: tuple[str, list[InvocationRecord]], by: str, policy: str
) -> None:
    location, records = ledger_with_records
    billing = billing_options(None, policy)
    with open_ledger(location, create=False) as ledger:
        stops = ledger.read_stops()
        rows, total = ledger_report(ledger, by, now_ns=NOW, **billing)
    expected = aggregate(records, by, stops=stops, now_ns=NOW, **billing)
    assert [_plain(row) for row in rows] == [_plain(row) for row in expected]
    whole = aggregate(records, "platform", stops=stops, now_ns=NOW, **billing)
    assert _plain(total) == _plain(totals(whole))
    assert total is not None
    assert total.provisional > 0  # pod-f may still be running at NOW
    assert any(row.key == "(idle)" for row in rows) == (policy == "separate")


@pytest.mark.parametrize("by", ["user", "day"])
def test_since_and_repricing_are_applied_in_the_database(
    ledger_with_records: tuple[str, list[InvocationRecord]], by: str
) -> None:
    location, records = ledger_with_records
    since = T0 + DAY // 2
    billing = {"policy": "share", "rules_for": _reprice}
    with open_ledger(location, create=False) as ledger:
        stops = ledger.read_stops()
        rows, total = ledger_report(ledger, by, since_ns=since, now_ns=NOW, **billing)
    kept = [record for record in records if record.start_ns >= since]
    expected = aggregate(kept, by, stops=stops, now_ns=NOW, **billing)
    assert [_plain(row) for row in rows] == [_plain(row) for row in expected]
    assert total is not None
    assert total.invocations == len(kept) < len(records)
    assert total.pricing_version == "published-2026-12"


def _reprice(record: InvocationRecord) -> tuple[Rules | None, str | None]:
    price = _PUBLISHED.lookup(record.platform, "H100")
    return (Rules.from_price(price) if price else None), _PUBLISHED.version


def test_an_empty_ledger_or_window_has_no_rows(ledger_location: str) -> None:
    with open_ledger(ledger_location) as ledger:
        assert ledger_report(ledger, "user") == ([], None)
        ledger.write([make_record(start_ns=T0)])
        assert ledger_report(ledger, "user", since_ns=T0 + 1) == ([], None)
        (row,), total = ledger_report(ledger, "user", since_ns=T0)
    assert row.invocations == 1
    assert total is not None


def test_a_grouping_the_report_does_not_know_is_refused(ledger_location: str) -> None:
    with open_ledger(ledger_location) as ledger, pytest.raises(ValueError, match="group by"):
        ledger_report(ledger, "colour")


def test_measured_floats_add_up_exactly_in_any_order() -> None:
    """0.1 + 0.2 + 0.3 summed as binary floats depends on the order; in integers of 1e-9 it
    does not, and it is what both the database and aggregate compute."""
    values = [0.1, 0.2, 0.3, 1e-9, 12345.678901234]
    forward = sum(fixed(value) or 0 for value in values)
    backward = sum(fixed(value) or 0 for value in reversed(values))
    assert forward == backward == 12346.278901235 * 1e9
    assert fixed(math.nan) is None
    assert fixed(None) is None


def test_the_cli_report_reads_the_database_report(tmp_path: Any) -> None:
    """``gpuledger report`` prints the database's TOTAL, percentiles included."""
    location = str(tmp_path / "ledger.db")
    records = [
        make_record(start_ns=T0 + i * S * 10, duration_s=float(i + 1), user_id="alice")
        for i in range(20)
    ]
    with open_ledger(location) as ledger:
        ledger.write(records)
    result = CliRunner().invoke(main, ["report", "--ledger", location, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"duration_p95_s": 19.05' in result.output
    table = CliRunner().invoke(main, ["report", "--ledger", location])
    assert "TOTAL" in table.output
    assert "19.050" in table.output
