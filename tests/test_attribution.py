"""Worker bills attributed to requests, and reports that add up to the bills on their face.

The invariant over random timelines, every catalogue platform's rules and every policy: the
requests' charges plus the worker's own (``(idle)``) are the worker's bill, exactly. Then the
report: every row reads ``cost = fees + GPU + CPU + memory`` and ``GPU = rate x billed
GPU-seconds`` with billed the sum of its parts (CPU and memory: the workers' own, where the
platform charges them, over the same time), on the demo's ledger, on a real ledger written by
an older gpuledger (migrated), and on records of two processes of one container, billed once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuledger._pricing import edition_catalogue
from gpuledger._record import InvocationRecord
from gpuledger.billing import (
    IDLE_KEY,
    POLICIES,
    Request,
    Rules,
    Worker,
    WorkerTimeline,
    attribute,
    bill,
    workers_of,
)
from gpuledger.cli import main
from gpuledger.ledger import SCHEMA_VERSION, aggregate, open_ledger, period_charges, totals
from gpuledger.testing import make_record

from .support.ledgers import union_length

SEED_CATALOGUE = edition_catalogue("seed-2026-03")
"""The seed article's edition: these tests work its numbers."""

S = 1_000_000_000
T0 = 1_772_323_200 * S
OLD_LEDGER = Path(__file__).parent / "data" / "ledger-gpuledger-3606b28-schema3.sqlite"
"""A ledger the gpuledger of commit 3606b28 (schema 3, before worker bills) wrote with
``gpuledger demo --requests 64``: 64 requests, 5 workers, old report TOTAL $16.0622."""

_MODAL_H100 = edition_catalogue("published-2026-12").lookup("modal", "H100")
assert _MODAL_H100 is not None
CATALOGUE_RULES = [
    *(Rules.from_price(price) for price in SEED_CATALOGUE.prices()),
    # Modal charges the worker's CPU and memory too: its minimum, and 4 cores and 16 GiB.
    Rules.from_price(_MODAL_H100),
    Rules.from_price(_MODAL_H100, cpu=4, memory_gib=16),
]


def _worker(timeline: WorkerTimeline, rules: Rules) -> Worker:
    return Worker(
        key="w",
        timeline=timeline,
        rules=rules,
        pricing_version="test",
        stop_inferred=False,
        record_ids=tuple(r.request_id for r in timeline.requests),
    )


@st.composite
def timelines(draw: st.DrawFn) -> WorkerTimeline:
    life = draw(st.integers(1, 120 * S))
    ready = draw(st.integers(0, life))
    requests = []
    for index in range(draw(st.integers(0, 6))):
        start = draw(st.integers(0, life))
        end = draw(st.integers(start, life))
        own = draw(st.sampled_from([0, 0, (end - start) // 3]))
        requests.append(Request(f"r{index}", T0 + start, T0 + end, own))
    return WorkerTimeline(T0, T0 + ready, T0 + life, tuple(requests), draw(st.integers(1, 8)))


@settings(max_examples=400, deadline=None)
@given(timelines(), st.sampled_from(CATALOGUE_RULES), st.sampled_from(POLICIES))
def test_attributed_charges_add_up_to_the_bill_exactly(
    timeline: WorkerTimeline, rules: Rules, policy: str
) -> None:
    worker_bill = bill(timeline, rules)
    per_request, own = attribute(_worker(timeline, rules), worker_bill, policy)
    total = sum((c.total_usd for c in per_request.values()), own.total_usd)
    assert total == worker_bill.total_usd
    gpu = sum((c.billed_gpu_ns for c in per_request.values()), own.billed_gpu_ns)
    assert gpu == worker_bill.billed_gpu_ns
    for category in ("request", "startup", "idle", "rounding"):
        spread = sum((c.gpu_ns[category] for c in per_request.values()), own.gpu_ns[category])
        assert spread == worker_bill.gpu_ns_by_category[category]
    if policy != "separate" and timeline.requests:
        # Only requests pay: nothing stays the worker's own.
        assert own.total_usd == 0
    for resource in ("gpu", "cpu", "memory"):
        spread = sum(
            (c.usd_by_resource[resource] for c in per_request.values()),
            own.usd_by_resource[resource],
        )
        assert spread == worker_bill.usd_by_resource[resource]
    for charges in per_request.values():
        # On its face: fee + GPU + CPU + memory, the GPU rate x billed GPU time.
        by_resource = charges.usd_by_resource
        assert charges.total_usd == charges.usd["fee"] + sum(by_resource.values(), Fraction(0))
        assert by_resource["gpu"] == rules.per_gpu_second_usd * charges.billed_gpu_ns / S
        assert by_resource["cpu"] == (
            rules.cpu_usd_per_second * charges.billed_gpu_ns / timeline.gpu_count / S
        )


# --- a worked worker, under each policy ----------------------------------------------------------

IDLE_BILLED = Rules(
    per_gpu_second_usd=Fraction("0.001"),
    execution_fee_usd=Fraction("0.01"),
    increment_ns=S,
    bills_startup=True,
    bills_idle=True,
)


def _worked() -> WorkerTimeline:
    """Start 0 s, ready 10 s; a 10-12 s and an 11-13 s request, idle until 20-21.5 s, idle until
    the stop at 26.5 s: 26.5 s of life, billed 27 s (one span, rounded once)."""
    return WorkerTimeline(
        T0,
        T0 + 10 * S,
        T0 + 265 * S // 10,
        (
            Request("a", T0 + 10 * S, T0 + 12 * S),
            Request("b", T0 + 11 * S, T0 + 13 * S),
            Request("c", T0 + 20 * S, T0 + 215 * S // 10),
        ),
    )


def test_separate_charges_requests_their_own_and_keeps_idle_apart() -> None:
    timeline = _worked()
    per_request, own = attribute(
        _worker(timeline, IDLE_BILLED), bill(timeline, IDLE_BILLED), "separate"
    )
    a, b, c = per_request["a"], per_request["b"], per_request["c"]
    # a waited for the start-up (10 s); a and b shared 11-12 s.
    assert a.gpu_ns["startup"] == 10 * S and b.gpu_ns["startup"] == 0
    assert a.gpu_ns["request"] == Fraction(15, 10) * S
    assert b.gpu_ns["request"] == Fraction(15, 10) * S
    assert c.gpu_ns["request"] == Fraction(15, 10) * S
    # Idle: 13-20 s and 21.5-26.5 s; rounding 26.5 -> 27 s: the worker's own.
    assert own.gpu_ns["idle"] == 12 * S
    assert own.gpu_ns["rounding"] == S // 2
    assert a.total_usd == Fraction("0.01") + Fraction("0.001") * Fraction(115, 10)


def test_share_spreads_idle_by_busy_time_and_cause_gives_it_to_its_request() -> None:
    timeline = _worked()
    worker = _worker(timeline, IDLE_BILLED)
    shared, own = attribute(worker, bill(timeline, IDLE_BILLED), "share")
    assert own.total_usd == 0
    # Busy time: a 1.5 s, b 1.5 s, c 1.5 s (the start-up a waited for is not busy time).
    assert shared["a"].gpu_ns["idle"] == 12 * S * Fraction(1, 3)
    assert shared["c"].gpu_ns["idle"] == 12 * S * Fraction(1, 3)
    assert shared["c"].gpu_ns["rounding"] == S // 2 * Fraction(1, 3)
    caused, own = attribute(worker, bill(timeline, IDLE_BILLED), "cause")
    assert own.total_usd == 0
    # 13-20 s was b's keep-warm window (it ended last), 21.5-26.5 s and the rounding c's.
    assert caused["a"].gpu_ns["idle"] == 0
    assert caused["b"].gpu_ns["idle"] == 7 * S
    assert caused["c"].gpu_ns["idle"] == 5 * S
    assert caused["c"].gpu_ns["rounding"] == S // 2


def test_a_worker_that_served_nothing_is_all_idle_row() -> None:
    timeline = WorkerTimeline(T0, T0 + 3 * S, T0 + 8 * S)
    for policy in POLICIES:
        per_request, own = attribute(
            _worker(timeline, IDLE_BILLED), bill(timeline, IDLE_BILLED), policy
        )
        assert per_request == {}
        assert own.total_usd == Fraction("0.001") * 8


def test_four_overlapping_requests_are_charged_the_worker_once() -> None:
    """Issue 13: 4 concurrent 0.5 s requests on 1 s increments were charged 4 x 1 s; the
    worker held the GPU 0.5 s and is billed 1 s, which the requests and (idle) add up to."""
    rules = Rules.from_price(SEED_CATALOGUE.lookup("runpod", "H100"))  # type: ignore[arg-type]
    records = [
        make_record(
            start_ns=T0,
            duration_s=0.5,
            billing_worker="pod-1",
            worker_start_ns=T0,
            worker_ready_ns=T0,
            billing_rules=rules.to_json(),
            pricing_version="2026-03",
            user_id=user,
        )
        for user in "wxyz"
    ]
    rows = aggregate(records, "user")
    total = totals(rows)
    assert total.billed_gpu_s == 1.0  # 0.5 s of requests + 0.5 s of rounding, once
    assert total.cost_usd == pytest.approx(
        float(4 * rules.execution_fee_usd + rules.per_gpu_second_usd)
    )
    (idle,) = [row for row in rows if row.key == IDLE_KEY]
    assert idle.rounding_gpu_s == 0.5


# --- the report on its face ----------------------------------------------------------------------


def _assert_reconciles(rows: list) -> None:  # type: ignore[type-arg]
    for row in [*rows, totals(rows)]:
        parts = row.request_gpu_s + row.startup_gpu_s + row.idle_gpu_s + row.rounding_gpu_s
        assert row.billed_gpu_s == pytest.approx(parts, rel=1e-12, abs=1e-9), row.key
        assert row.billed_gpu_seconds == row.billed_gpu_s
        if row.cost_usd is not None:
            # cost = fee + GPU + CPU + memory, whatever the row holds.
            parts = row.fee_usd + row.gpu_usd + row.cpu_usd + row.memory_usd
            assert row.cost_usd == pytest.approx(parts, rel=1e-12, abs=1e-12), row.key
        if row.rate_usd_per_gpu_s is not None and row.unpriced == 0:
            assert row.gpu_usd == pytest.approx(
                row.rate_usd_per_gpu_s * row.billed_gpu_s, rel=1e-12, abs=1e-12
            ), row.key


@pytest.fixture(scope="module")
def demo_ledger(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("demo") / "demo.db")
    result = CliRunner().invoke(main, ["demo", "--ledger", path, "--requests", "300"])
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("by", ["user", "tenant", "endpoint", "platform", "day", "invocation"])
def test_every_report_row_of_the_demo_reconciles(demo_ledger: str, by: str, policy: str) -> None:
    with open_ledger(demo_ledger, create=False) as ledger:
        records = list(ledger.read())
    rows = aggregate(records, by, policy=policy)
    _assert_reconciles(rows)
    # Whatever the grouping and policy, the total is the sum of the workers' bills.
    bills = sum(
        (bill(worker.timeline, worker.rules).total_usd for worker in workers_of(records)),  # type: ignore[arg-type]
        Fraction(0),
    )
    assert totals(rows).cost_usd == pytest.approx(float(bills), rel=1e-12)


def test_report_json_has_the_reconciling_columns(demo_ledger: str) -> None:
    result = CliRunner().invoke(
        main, ["report", "--ledger", demo_ledger, "--format", "json", "--idle", "share"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    for row in rows:
        for key in (
            "fee_usd",
            "gpu_usd",
            "cpu_usd",
            "memory_usd",
            "request_gpu_s",
            "startup_gpu_s",
            "idle_gpu_s",
            "rounding_gpu_s",
            "billed_gpu_s",
            "cost_usd",
            "pricing_version",
            "billed_gpu_seconds",
        ):
            assert key in row
        assert row["pricing_version"] == "published-2026-12"
        parts = row["fee_usd"] + row["gpu_usd"] + row["cpu_usd"] + row["memory_usd"]
        assert row["cost_usd"] == pytest.approx(parts, rel=1e-12)
        assert row["gpu_usd"] == pytest.approx(
            row["rate_usd_per_gpu_s"] * row["billed_gpu_s"], rel=1e-12
        )
    assert IDLE_KEY not in {row["user"] if "user" in row else row["key"] for row in rows}


def test_a_ledger_an_older_gpuledger_wrote_is_migrated_and_billed(tmp_path: Path) -> None:
    """The real file of schema 3: every row kept; its workers (then processes) billed from their
    records' init and requests, by the catalogue they were priced from; the rows reconcile."""
    path = tmp_path / "old.sqlite"
    shutil.copy(OLD_LEDGER, path)
    with open_ledger(str(path), create=False) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        records = list(ledger.read())
    assert len(records) == 64
    assert all(record.billing_worker is None for record in records)
    workers = workers_of(records, rules_for=lambda record: (None, None), fallback=_catalogue)
    assert len(workers) == 5
    rows = aggregate(records, "user", fallback=_catalogue)
    _assert_reconciles(rows)
    total = totals(rows)
    # Same bill as the old per-request pricing here (no two requests overlapped, RunPod bills
    # no idle), now with its rounding shown: $16 of fees + 259 GPU-s at $0.00024.
    assert total.cost_usd == pytest.approx(16.0622, abs=5e-5)
    assert total.billed_gpu_s == pytest.approx(259.0)
    assert total.rounding_gpu_s == pytest.approx(30.647, abs=5e-4)
    result = CliRunner().invoke(main, ["report", "--ledger", str(path), "--wide"])
    assert result.exit_code == 0, result.output
    assert "(idle)" in result.output


def _catalogue(record: InvocationRecord) -> tuple[Rules | None, str | None]:
    price = SEED_CATALOGUE.lookup(record.pricing_platform or record.platform, record.gpu_model)
    return (None, None) if price is None else (Rules.from_price(price), "2026-03")


# --- one container, two processes: one bill ------------------------------------------------------

_SERVE = textwrap.dedent(
    """
    import pathlib, sys, time
    import gpuledger

    gpuledger.configure(ledger=sys.argv[1], gpu_metering="off", tracing=False, metrics=False)
    # Both processes serve at once: wait (bounded) until the other one is up too.
    here = pathlib.Path(sys.argv[1]).parent
    (here / f"up-{sys.argv[2]}").touch()
    deadline = time.monotonic() + 30
    while len(list(here.glob("up-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)

    @gpuledger.traced_handler(name="predict")
    def predict(job):
        time.sleep(0.3)
        return job

    for index in range(2):
        predict({"id": f"{sys.argv[2]}-{index}", "input": {}})
    gpuledger.shutdown()
    """
)


def test_two_processes_of_one_worker_are_billed_once(tmp_path: Path) -> None:
    """Two processes in one RunPod pod (as an ASGI server's workers are) serve at the same time:
    their records name one billing worker, whose bill counts the overlapping time once and one
    start-up, not two."""
    ledger = str(tmp_path / "ledger.db")
    with open_ledger(ledger):
        pass
    env = {
        **os.environ,
        "RUNPOD_ENDPOINT_ID": "ep-1",
        "RUNPOD_POD_ID": "pod-1",
        "GPULEDGER_GPU": "H100",
        "GPULEDGER_WORKER_START": "process",
        "GPULEDGER_LEDGER": ledger,
    }
    script = tmp_path / "serve.py"
    script.write_text(_SERVE)
    processes = [
        subprocess.Popen([sys.executable, str(script), ledger, name], env=env)
        for name in ("p1", "p2")
    ]
    for process in processes:
        assert process.wait(timeout=60) == 0
    with open_ledger(ledger, create=False) as opened:
        records = list(opened.read())
    assert len(records) == 4
    assert {record.billing_worker for record in records} == {"pod-1"}
    assert len({record.worker_id for record in records}) == 1  # RunPod names the pod
    (worker,) = workers_of(records)
    worker_bill = bill(worker.timeline, worker.rules)  # type: ignore[arg-type]
    ready = worker.timeline.ready_ns
    intervals = [(max(r.start_ns, ready), r.end_ns) for r in records if r.end_ns > ready]
    union = union_length(intervals)
    # The processes' requests overlapped, and the overlap is billed once.
    assert union < sum(end - start for start, end in intervals)
    assert worker_bill.gpu_ns_by_category["request"] == union
    # One start-up: the earlier process's start to the first ready.
    starts = {record.worker_start_ns for record in records}
    assert worker.timeline.start_ns == min(starts)  # type: ignore[type-var]
    assert worker_bill.gpu_ns_by_category["startup"] == (
        worker.timeline.ready_ns - worker.timeline.start_ns
    )
    rows = aggregate(records, "user")
    _assert_reconciles(rows)
    assert totals(rows).cost_usd == pytest.approx(float(worker_bill.total_usd), rel=1e-12)


# --- which worker a process is billed as -------------------------------------------------------


def _info(**env: str):  # type: ignore[no-untyped-def]
    from gpuledger._platform import detect_platform

    return detect_platform(env)


def test_a_platform_container_is_billed_from_its_own_start() -> None:
    """In RunPod's container (detected from its environment, a container runtime's marker
    there), the worker is the pod, started when PID 1 did."""
    from gpuledger._platform import billing_worker

    info = _info(RUNPOD_ENDPOINT_ID="ep", RUNPOD_POD_ID="pod-9")
    worker = billing_worker(
        info,
        worker_id=None,
        worker_start="auto",
        process_start=(T0 + 5 * S, "proc"),
        exists=lambda path: path == "/.dockerenv",
        container_start=lambda: T0,
    )
    assert (worker.key, worker.start_ns, worker.start_source) == ("pod-9", T0, "container")
    # No marker: not known to be a container, so the process's own start.
    plain = billing_worker(
        info,
        worker_id=None,
        worker_start="auto",
        process_start=(T0 + 5 * S, "proc"),
        exists=lambda path: False,
        container_start=lambda: T0,
    )
    assert (plain.key, plain.start_ns, plain.start_source) == ("pod-9", T0 + 5 * S, "proc")


def test_a_plain_machine_is_billed_as_the_process() -> None:
    """On a plain machine PID 1 is the machine's init: never the worker's start."""
    from gpuledger._platform import billing_worker

    worker = billing_worker(
        _info(),
        worker_id=None,
        worker_start="auto",
        process_start=(T0 + 5 * S, "proc"),
        exists=lambda path: True,
        container_start=lambda: T0 - 86_400 * S,
    )
    assert worker.start_ns == T0 + 5 * S and worker.start_source == "proc"
    assert worker.key.endswith(f":{os.getpid()}")
    # Replicate (Cog) names no worker: the container's hostname, shared by the predictor's
    # subprocess and the server.
    cog = billing_worker(
        _info(COG_PREDICT_TYPE_STUB="x"),
        worker_id=None,
        worker_start="container",
        process_start=(T0 + 5 * S, "proc"),
        container_start=lambda: T0,
    )
    assert (cog.key, cog.start_ns) == (os.uname().nodename, T0)
    # A container start after the process's cannot be: the process's own.
    odd = billing_worker(
        _info(COG_PREDICT_TYPE_STUB="x"),
        worker_id="w-1",
        worker_start="container",
        process_start=(T0, "proc"),
        container_start=lambda: T0 + S,
    )
    assert (odd.key, odd.start_ns) == ("w-1", T0)


def test_report_pricing_re_prices_the_same_traffic(demo_ledger: str, tmp_path: Path) -> None:
    """--pricing FILE bills the recorded workers under other prices: here RunPod's H100 rate
    doubled, so every GPU-second costs twice, fees unchanged."""
    pricing = tmp_path / "double.toml"
    pricing.write_text(
        'version = "doubled"\n[platforms.runpod.gpus.H100]\nper_gpu_second_usd = 0.00232\n'
    )
    recorded = json.loads(
        CliRunner().invoke(main, ["report", "--ledger", demo_ledger, "--format", "json"]).output
    )
    result = CliRunner().invoke(
        main, ["report", "--ledger", demo_ledger, "--format", "json", "--pricing", str(pricing)]
    )
    assert result.exit_code == 0, result.output
    doubled = {row["key"]: row for row in json.loads(result.output)}
    for row in recorded:
        other = doubled[row["key"]]
        # Recorded as the file (its content's hash) over the default edition.
        assert other["pricing_version"].startswith("file:")
        assert other["billed_gpu_s"] == pytest.approx(row["billed_gpu_s"])
        assert other["cost_usd"] - other["fee_usd"] == pytest.approx(
            2 * (row["cost_usd"] - row["fee_usd"]), rel=1e-9
        )


def test_compare_as_recorded_is_the_report_total_exactly(demo_ledger: str) -> None:
    report = CliRunner().invoke(main, ["report", "--ledger", demo_ledger, "--format", "json"])
    rows = json.loads(report.output)
    compared = CliRunner().invoke(
        main, ["compare", "--ledger", demo_ledger, "--format", "json", "--platforms", "runpod"]
    )
    assert compared.exit_code == 0, compared.output
    recorded = json.loads(compared.output)["as_recorded"]
    with open_ledger(demo_ledger, create=False) as ledger:
        total = totals(aggregate(list(ledger.read()), "user", stops=ledger.read_stops()))
    assert recorded["cost_usd"] == total.cost_usd  # the same bill, to the last bit
    assert recorded["cost_usd"] == pytest.approx(sum(row["cost_usd"] for row in rows), rel=1e-12)
    assert recorded["requests"] == 300
    table = CliRunner().invoke(main, ["compare", "--ledger", demo_ledger, "--platforms", "runpod"])
    assert f"${total.cost_usd:,.4f} for 300 requests" in table.output


# --- the README's worked worker -----------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_worked_worker_is_billed_as_it_says() -> None:
    """README "How a bill is built": one worker priced by hand under each platform's rules."""
    timeline = WorkerTimeline(
        0,
        20 * S,
        60 * S,
        (
            Request("A", 20 * S, 234 * S // 10),
            Request("B", 22 * S, 25 * S),
            Request("C", 40 * S, 415 * S // 10),
        ),
    )
    # By hand: spans 0-25 s (whole) and 40-41.5 s (-> 2 s) where idle is free; 0-60 s reserved.
    by_hand = {
        "runpod": (20, "6.5", 0, "0.5", 27, "0.75", Fraction("0.75") + 27 * Fraction("0.00024")),
        "modal": (20, "6.5", 0, "0.5", 27, "0", 27 * Fraction("0.0005")),
        "replicate": (20, "6.5", 0, "0.5", 27, "0", 27 * Fraction("0.001")),
        "banana": (20, "6.5", 0, "0.5", 27, "0", 27 * Fraction("0.0003")),
        "reserved": (20, "6.5", "33.5", 0, 60, "0", 60 * Fraction("2.69") / 3600),
    }
    readme = README.read_text()
    for platform, (startup, request, idle, rounding, billed, fees, total) in by_hand.items():
        rules = Rules.from_price(SEED_CATALOGUE.lookup(platform, "H100"))  # type: ignore[arg-type]
        result = bill(timeline, rules)
        seconds = result.gpu_ns_by_category
        assert seconds["startup"] == Fraction(startup) * S, platform
        assert seconds["request"] == Fraction(request) * S, platform
        assert seconds["idle"] == Fraction(idle) * S, platform
        assert seconds["rounding"] == Fraction(rounding) * S, platform
        assert result.billed_gpu_ns == billed * S, platform
        assert result.by_category()["fee"] == Fraction(fees), platform
        assert result.total_usd == total, platform
        shown = f"{float(total):.7g}"
        line = (
            f"| {platform} | {startup} | {request} | {idle} | {rounding} | {billed} | ${fees} | "
            f"${shown} |"
        )
        assert line in readme, line
    # The same worker under the published edition: idle billed (one 60 s span) on RunPod, Modal
    # and Replicate's private models; Replicate's public ones bill the requests alone; Modal adds
    # its least CPU (0.125 core) and memory (0.125 GiB) over the same 60 s.
    modal_second = Fraction("0.001097") + Fraction("0.125") * (
        Fraction("0.0000131") + Fraction("0.00000222")
    )
    published = {
        "runpod": (20, "6.5", "33.5", 0, 60, "0", 60 * Fraction("0.00116")),
        "replicate": (0, "6.5", 0, 0, "6.5", "0", Fraction("6.5") * Fraction("0.001525")),
        "replicate-private": (20, "6.5", "33.5", 0, 60, "0", 60 * Fraction("0.001525")),
        "modal": (20, "6.5", "33.5", 0, 60, "0", 60 * modal_second),
        "reserved": (20, "6.5", "33.5", 0, 60, "0", 60 * Fraction("3.49") / 3600),
    }
    edition = edition_catalogue("published-2026-12")
    for platform, (startup, request, idle, rounding, billed, fees, total) in published.items():
        result = bill(timeline, Rules.from_price(edition.lookup(platform, "H100")))  # type: ignore[arg-type]
        seconds = result.gpu_ns_by_category
        assert seconds["startup"] == Fraction(startup) * S, platform
        assert seconds["idle"] == Fraction(idle) * S, platform
        assert result.billed_gpu_ns == Fraction(billed) * S, platform
        assert result.total_usd == total, platform
        line = (
            f"| {platform} | {startup} | {request} | {idle} | {rounding} | {billed} | ${fees} | "
            f"${float(total):.7g} |"
        )
        assert line in readme, line
    rules = Rules.from_price(SEED_CATALOGUE.lookup("runpod", "H100"))  # type: ignore[arg-type]
    per_request, own = attribute(
        Worker("w", timeline, rules, "2026-03", False, ("A", "B", "C")),
        bill(timeline, rules),
        "separate",
    )
    fee, rate = Fraction("0.25"), Fraction("0.00024")
    assert per_request["A"].total_usd == fee + rate * Fraction("22.7")
    assert per_request["B"].total_usd == fee + rate * Fraction("2.3")
    assert per_request["C"].total_usd == fee + rate * Fraction("1.5")
    assert own.total_usd == rate * Fraction("0.5")
    for amount in ("A $0.255448", "B $0.250552", "C $0.25036", "`(idle)`\n$0.00012"):
        assert amount in readme, amount
    caused, _ = attribute(
        Worker("w", timeline, rules, "2026-03", False, ("A", "B", "C")),
        bill(timeline, rules),
        "cause",
    )
    assert caused["C"].gpu_ns["rounding"] == S // 2


# --- observed stops ------------------------------------------------------------------------------


def test_stops_are_stored_once_per_process_the_later_winning(ledger_location: str) -> None:
    from gpuledger.ledger import WorkerStop

    with open_ledger(ledger_location) as ledger:
        assert ledger.read_stops() == {}
        ledger.write_stops([WorkerStop("pod-1", "h:1", T0 + 5 * S, "shutdown")])
        ledger.write_stops([WorkerStop("pod-1", "h:1", T0 + 5 * S, "shutdown")])  # again
        ledger.write_stops([WorkerStop("pod-1", "h:2", T0 + 9 * S, "shutdown")])
        ledger.write_stops([WorkerStop("pod-1", "h:2", T0 + 7 * S, "shutdown")])  # earlier: kept
        ledger.write_stops([WorkerStop("pod-2", "h:3", T0, "shutdown")])
        assert ledger.read_stops() == {"pod-1": T0 + 9 * S, "pod-2": T0}


def test_a_reserved_worker_is_billed_to_its_observed_stop(tmp_path: Path) -> None:
    """A reserved GPU is paid until it stops: the agent stores its stop at shutdown, and the
    report bills the idle hour after the last request (inferred, it would end at that request)."""
    from gpuledger.testing import FakeClock, capture_telemetry

    ledger = tmp_path / "ledger.db"
    clock = FakeClock(start_ns=T0)
    with capture_telemetry(
        ledger, clock=clock, platform="reserved", gpu="H100", worker_start="process"
    ):
        import gpuledger

        @gpuledger.traced_handler(name="predict")
        def predict(job: dict[str, object]) -> None:
            clock.advance(2.0)

        predict({"id": "1", "input": {}})
        clock.advance(3600.0)
        gpuledger.shutdown()
    with open_ledger(str(ledger), create=False) as opened:
        records = list(opened.read())
        stops = opened.read_stops()
    (record,) = records
    assert stops == {record.billing_worker: record.end_ns + 3600 * S}
    (observed,) = workers_of(records, stops=stops)
    assert not observed.stop_inferred
    rows = aggregate(records, "user", stops=stops)
    assert totals(rows).idle_gpu_s == pytest.approx(3600.0)
    (inferred,) = workers_of(records)
    assert inferred.stop_inferred and inferred.timeline.stop_ns == record.end_ns
    assert totals(aggregate(records, "user")).idle_gpu_s == 0.0


def test_a_worker_that_may_still_run_has_a_provisional_bill() -> None:
    """A worker on a platform that bills idle time, within its idle window and with no stop
    observed, may still be running: its requests' charges are provisional until the window
    ends or its stop is stored."""
    rules = dataclasses.replace(IDLE_BILLED, idle_window_ns=60 * S)
    records = [
        make_record(
            start_ns=T0,
            duration_s=1.0,
            billing_worker="w-1",
            worker_start_ns=T0,
            worker_ready_ns=T0,
            billing_rules=rules.to_json(),
            pricing_version="test",
        )
    ]
    rows = {r.key: r for r in aggregate(records, "user", now_ns=T0 + 30 * S)}
    row, idle = rows["(none)"], rows[IDLE_KEY]
    assert (row.provisional, idle.provisional) == (1, 1)
    assert totals([row, idle]).provisional == 1
    assert idle.idle_gpu_s == 60.0  # the window, inferred
    later = aggregate(records, "user", now_ns=T0 + 61 * S)
    assert [r.provisional for r in later] == [0, 0]  # the window is over: the platform stopped it
    stopped = aggregate(records, "user", now_ns=T0 + 30 * S, stops={"w-1": T0 + 20 * S})
    assert [r.provisional for r in stopped] == [0, 0]
    assert totals(stopped).idle_gpu_s == 19.0


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("period_s", [60, 3600, 86_400])
def test_charges_per_period_add_up_to_the_report_exactly(
    demo_ledger: str, policy: str, period_s: int
) -> None:
    """Invoices and FOCUS rows are per hour or day: the report's dollars cut at those boundaries
    (lines crossing one split pro rata) still add up to its total, to the last bit."""
    with open_ledger(demo_ledger, create=False) as ledger:
        records = list(ledger.read())
        stops = ledger.read_stops()
    rows = aggregate(records, "user", policy=policy, stops=stops)
    cells = period_charges(records, period_ns=period_s * S, policy=policy, stops=stops)
    total = Fraction(0)
    for cell in cells:
        assert cell.period_start_ns % (period_s * S) == 0
        assert cell.period_end_ns - cell.period_start_ns == period_s * S
        total += cell.charges.total_usd
    assert total == sum((row._charges.total_usd for row in rows), Fraction(0))
    # Per owner, the periods add up to what the report charged that request.
    per_request: dict[str, Fraction] = {}
    for cell in cells:
        if cell.record is not None:
            rid = cell.record.record_id
            per_request[rid] = per_request.get(rid, Fraction(0)) + cell.charges.total_usd
    by_invocation = aggregate(records, "invocation", policy=policy, stops=stops)
    for row in by_invocation:
        if row.key != IDLE_KEY:
            rid = next(r.record_id for r in records if r.invocation_id == row.key)
            assert per_request.get(rid, Fraction(0)) == row._charges.total_usd


def test_a_line_across_an_hour_is_split_pro_rata() -> None:
    rules = Rules(per_gpu_second_usd=Fraction(1, 1000), bills_idle=True, idle_window_ns=0)
    start = T0 + 3600 * S - 30 * S  # 30 s before the hour, 90 s long: 1/3 before, 2/3 after
    record = make_record(
        0,
        billing_worker="w",
        worker_start_ns=start,
        worker_ready_ns=start,
        billing_rules=rules.to_json(),
        pricing_version="test",
        cost_usd=0.09,
    )
    record = dataclasses.replace(record, start_ns=start, end_ns=start + 90 * S, duration_s=90.0)
    cells = period_charges([record], stops={"w": start + 90 * S})
    assert [(c.period_start_ns - T0, c.charges.total_usd) for c in cells] == [
        (0, Fraction(3, 100)),
        (3600 * S, Fraction(6, 100)),
    ]
