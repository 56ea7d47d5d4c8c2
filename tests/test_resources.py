"""Costs beyond the GPU: a worker's CPU and memory, where the platform charges them (Modal).

Billed by the same engine over exactly the same billed time as the GPUs (start-up, requests,
idle, rounding), so one bill; attributed per resource; shown as their own report columns, each
row reading ``cost_usd = fee_usd + gpu_usd + cpu_usd + memory_usd``. The worked worker below is
priced by hand: a Modal H100 reserving 4 cores and 16 GiB.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

import gpuledger
from gpuledger import ConfigError
from gpuledger._pricing import compile_pricer, edition_catalogue
from gpuledger._settings import resolve_settings
from gpuledger.billing import (
    IDLE_KEY,
    RESOURCES,
    Request,
    Rules,
    RunningBill,
    Worker,
    WorkerTimeline,
    attribute,
    bill,
    rate_key,
)
from gpuledger.ledger import aggregate, period_charges, totals
from gpuledger.testing import make_record

from .conftest import Telemetry

S = 1_000_000_000
T0 = 1_772_323_200 * S  # 2026-03-01T00:00:00Z, on the hour
PUBLISHED = edition_catalogue("published-2026-12")
MODAL_H100 = PUBLISHED.lookup("modal", "H100")
assert MODAL_H100 is not None

GPU = Fraction("0.001097")  # Modal's H100, per second
CPU = 4 * Fraction("0.0000131")  # 4 physical cores, per second: $0.0000524
MEMORY = 16 * Fraction("0.00000222")  # 16 GiB, per second: $0.00003552
WORKER = GPU + CPU + MEMORY  # $0.00118492 per second of billed time
README = Path(__file__).resolve().parents[1] / "README.md"


def _timeline(gpu_count: int = 1) -> WorkerTimeline:
    """README's worked worker on Modal: start 0 s, ready 20 s; A 20-23.4 s, B 22-25 s, C 40-41.5
    s; Modal bills idle and stops it 60 s after the last request, at 101.5 s."""
    return WorkerTimeline(
        T0,
        T0 + 20 * S,
        T0 + 1015 * S // 10,
        (
            Request("A", T0 + 20 * S, T0 + 234 * S // 10),
            Request("B", T0 + 22 * S, T0 + 25 * S),
            Request("C", T0 + 40 * S, T0 + 415 * S // 10),
        ),
        gpu_count,
    )


def _rules(**reserved: Any) -> Rules:
    return Rules.from_price(MODAL_H100, **reserved)  # type: ignore[arg-type]


def test_the_rules_price_the_reservation_exactly() -> None:
    """cpu=4 and memory_gib=16 are the worker's $0.0000524 and $0.00003552 a second, exactly."""
    rules = _rules(cpu=4, memory_gib=16)
    assert rules.per_gpu_second_usd == GPU
    assert rules.cpu_usd_per_second == CPU == Fraction("0.0000524")
    assert rules.memory_usd_per_second == MEMORY == Fraction("0.00003552")
    assert rules.usd_per_gpu_ns(1) * S == WORKER == Fraction("0.00118492")
    # Two GPUs share the worker's CPU and memory: per GPU-second, half each.
    assert rules.per_gpu_second_by_resource(2) == {"gpu": GPU, "cpu": CPU / 2, "memory": MEMORY / 2}


def test_unset_is_the_platform_s_minimum_and_below_it_is_raised_to_it() -> None:
    """Modal's default reservation, 0.125 cores and 128 MiB (0.125 GiB), is what an unset
    worker pays; a smaller reservation pays it too; a platform without the charge pays none."""
    unset = _rules()
    assert unset.cpu_usd_per_second == Fraction("0.125") * Fraction("0.0000131")
    assert unset.cpu_usd_per_second == Fraction("0.0000016375")
    assert unset.memory_usd_per_second == Fraction("0.0000002775")
    assert _rules(cpu=0.1, memory_gib=0.0625) == unset
    runpod = Rules.from_price(PUBLISHED.lookup("runpod", "H100"), cpu=4, memory_gib=16)  # type: ignore[arg-type]
    assert (runpod.cpu_usd_per_second, runpod.memory_usd_per_second) == (0, 0)
    with pytest.raises(ValueError, match="above 0"):
        _rules(cpu=0)


def test_the_worked_modal_worker_is_billed_by_hand() -> None:
    """101.5 s billed (20 start-up, 6.5 requests, 75 idle, no rounding: Modal bills by the
    second): GPU $0.1113455, CPU $0.0053186, memory $0.00360528, bill $0.12026938."""
    result = bill(_timeline(), _rules(cpu=4, memory_gib=16))
    seconds = {category: ns / S for category, ns in result.gpu_ns_by_category.items()}
    assert seconds == {
        "startup": 20,
        "request": Fraction("6.5"),
        "idle": 75,
        "rounding": 0,
        "fee": 0,
    }
    assert result.usd_by_resource == {
        "gpu": Fraction("0.1113455"),
        "cpu": Fraction("0.0053186"),
        "memory": Fraction("0.00360528"),
    }
    assert result.total_usd == Fraction("101.5") * WORKER == Fraction("0.12026938")
    # Every time category pays every resource: the idle window is 75 s of all three.
    assert result.usd_by_category["idle"] == 75 * WORKER
    assert result.usd_by_category["startup"] == 20 * WORKER
    assert sum((line.usd for line in result.lines), Fraction(0)) == result.total_usd
    assert sum(result.nano_usd()) == 120_269_380
    quick = bill(_timeline(), _rules(cpu=4, memory_gib=16), lines=False)
    assert quick.usd_by_resource == result.usd_by_resource
    assert quick.total_usd == result.total_usd
    readme = " ".join(README.read_text(encoding="utf-8").split())
    assert "= $0.12026938 (GPU $0.1113455, CPU $0.0053186, memory $0.00360528)" in readme


def test_more_gpus_share_the_worker_s_cpu_and_memory_not_multiply_them() -> None:
    """On 2 GPUs the GPU time doubles; the CPU and memory are still the worker's, once."""
    result = bill(_timeline(gpu_count=2), _rules(cpu=4, memory_gib=16))
    assert result.billed_gpu_ns == 203 * S
    assert result.usd_by_resource == {
        "gpu": 203 * GPU,
        "cpu": Fraction("101.5") * CPU,
        "memory": Fraction("101.5") * MEMORY,
    }


def test_attribution_keeps_dollars_per_resource() -> None:
    """A waited for the start-up and ran 22.7 s; its charges are 22.7 s of each resource."""
    rules = _rules(cpu=4, memory_gib=16)
    timeline = _timeline()
    worker = Worker("ta-1", timeline, rules, "published-2026-12", True, ("A", "B", "C"))
    per_request, own = attribute(worker, bill(timeline, rules), "separate")
    a = per_request["A"]
    assert a.gpu_ns["startup"] + a.gpu_ns["request"] == Fraction("22.7") * S
    assert a.usd_by_resource == {
        "gpu": Fraction("22.7") * GPU,
        "cpu": Fraction("22.7") * CPU,
        "memory": Fraction("22.7") * MEMORY,
    }
    assert a.total_usd == Fraction("22.7") * WORKER == Fraction("0.026897684")
    assert a.rates == {GPU}  # the GPU's rate alone
    assert own.usd_by_resource["cpu"] == 75 * CPU
    assert own.total_usd == 75 * WORKER
    # The fast key stays two integers where the GPU alone is charged.
    assert rate_key(GPU) == (1097, 1_000_000)
    assert len(rate_key(GPU, CPU, MEMORY)) == 6


def _records(rules: Rules, gpu_count: int = 1) -> list[Any]:
    """The worked worker's three requests as its records carry them (users a, b, c)."""
    out = []
    for user, request in zip("abc", _timeline().requests, strict=True):
        duration = (request.end_ns - request.start_ns) / S
        record = make_record(
            start_ns=request.start_ns,
            duration_s=duration,
            platform="modal",
            gpu_model="H100",
            gpu_count=gpu_count,
            user_id=user,
            billing_worker="ta-1",
            worker_start_ns=T0,
            worker_ready_ns=T0 + 20 * S,
            billing_rules=rules.to_json(),
            pricing_platform="modal",
            pricing_version="published-2026-12",
            cost_usd=0.0,
        )
        out.append(record)
    return out


@pytest.mark.parametrize("gpu_count", [1, 2])
def test_report_rows_read_on_their_face_per_resource(gpu_count: int) -> None:
    """Each row: cost = fee + gpu + cpu + memory, and gpu = rate x billed GPU-seconds."""
    rules = _rules(cpu=4, memory_gib=16)
    rows = aggregate(_records(rules, gpu_count), "user")
    by_key = {row.key: row for row in rows}
    assert set(by_key) == {"a", "b", "c", IDLE_KEY}
    a = by_key["a"]
    assert a.billed_gpu_s == pytest.approx(22.7 * gpu_count)
    assert a.gpu_usd == pytest.approx(float(Fraction("22.7") * gpu_count * GPU))
    assert a.cpu_usd == pytest.approx(float(Fraction("22.7") * CPU))
    assert a.memory_usd == pytest.approx(float(Fraction("22.7") * MEMORY))
    assert a.rate_usd_per_gpu_s == pytest.approx(0.001097)
    idle = by_key[IDLE_KEY]
    assert idle.idle_gpu_s == pytest.approx(75.0 * gpu_count)
    assert idle.cpu_usd == pytest.approx(float(75 * CPU))
    total = totals(rows)
    for row in [*rows, total]:
        assert row.cost_usd == pytest.approx(
            row.fee_usd + row.gpu_usd + row.cpu_usd + row.memory_usd, rel=1e-12
        ), row.key
        assert row.gpu_usd == pytest.approx(row.rate_usd_per_gpu_s * row.billed_gpu_s, rel=1e-12)
    expected = bill(_timeline(gpu_count), rules)
    assert total._charges.total_usd == expected.total_usd
    assert total._charges.usd_by_resource == expected.usd_by_resource
    if gpu_count == 1:
        assert total.cost_usd == pytest.approx(0.12026938, rel=1e-12)
        assert (total.gpu_usd, total.cpu_usd, total.memory_usd) == pytest.approx(
            (0.1113455, 0.0053186, 0.00360528), rel=1e-12
        )


@pytest.mark.parametrize("policy", ["separate", "share", "cause"])
def test_charges_per_period_add_up_per_resource(policy: str) -> None:
    """Cut per minute (the idle window crosses one), every resource still adds up to the bill."""
    rules = _rules(cpu=4, memory_gib=16)
    cells = period_charges(_records(rules), period_ns=60 * S, policy=policy)
    assert len({cell.period_start_ns for cell in cells}) == 2
    expected = bill(_timeline(), rules)
    for resource in RESOURCES:
        spread = sum((cell.charges.usd_by_resource[resource] for cell in cells), Fraction(0))
        assert spread == expected.usd_by_resource[resource], resource
    assert sum((cell.charges.total_usd for cell in cells), Fraction(0)) == Fraction("0.12026938")


def test_old_frozen_rules_without_the_new_keys_read_as_zero() -> None:
    """Rules frozen before CPU and memory were priced bill the GPU alone, and are written back
    as they were; rules with them survive JSON exactly."""
    old = {
        "per_gpu_second_usd": "1097/1000000",
        "execution_fee_usd": "0",
        "increment_ns": 0,
        "minimum_ns": 0,
        "bills_startup": True,
        "bills_idle": True,
        "idle_window_ns": 60 * S,
        "reserved": False,
    }
    rules = Rules.from_json(old)
    assert (rules.cpu_usd_per_second, rules.memory_usd_per_second) == (0, 0)
    assert rules.to_json() == old
    assert bill(_timeline(), rules).usd_by_resource == {
        "gpu": Fraction("101.5") * GPU,
        "cpu": 0,
        "memory": 0,
    }
    new = _rules(cpu=4, memory_gib=16)
    assert Rules.from_json(json.loads(json.dumps(new.to_json()))) == new
    assert new.to_json()["cpu_usd_per_second"] == "131/2500000"  # 0.0000524
    with pytest.raises(ValueError, match="negative"):
        Rules.from_json({**old, "cpu_usd_per_second": "-1"})


def test_a_running_bill_charges_cpu_and_memory_with_the_gpu() -> None:
    """The cost counter's idle charge is the worker's whole second: every resource."""
    running = RunningBill(_rules(cpu=4, memory_gib=16), T0, gpu_count=2)
    assert running.usd_per_ns * S == 2 * GPU + CPU + MEMORY


def test_the_request_s_own_cost_includes_the_worker_s_cpu_and_memory() -> None:
    """``cost_usd`` is fee + GPU + start-up + the worker's CPU and memory for the request's wall
    time (and the start-up it was billed); no record field of its own, ``Cost.resources_usd``."""
    pricer = compile_pricer(MODAL_H100, "published-2026-12", rounds=False, cpu=4, memory_gib=16)  # type: ignore[arg-type]
    warm = pricer(40.0, 2, None)  # 20 s on 2 GPUs
    assert warm.gpu_usd == pytest.approx(40 * 0.001097)
    assert warm.resources_usd == pytest.approx(20 * float(CPU + MEMORY))
    assert warm.total_usd == pytest.approx(warm.gpu_usd + warm.resources_usd)
    cold = pricer(20.0, 1, 5.0)
    assert cold.coldstart_usd == pytest.approx(5 * 0.001097)
    assert cold.resources_usd == pytest.approx(25 * float(CPU + MEMORY))
    minimum = compile_pricer(MODAL_H100, "v", rounds=False)(1.0, 1, None)  # type: ignore[arg-type]
    assert minimum.resources_usd == pytest.approx(0.0000016375 + 0.0000002775)
    runpod = compile_pricer(PUBLISHED.lookup("runpod", "H100"), "v", cpu=4)(1.0, 1, None)  # type: ignore[arg-type]
    assert runpod.resources_usd == 0.0


def test_cpu_and_memory_settings_resolve_and_refuse_bad_values() -> None:
    """``cpu`` and ``memory_gib`` come from arguments or GPULEDGER_CPU / GPULEDGER_MEMORY_GIB,
    positive numbers; unset by default."""
    unset = resolve_settings({}, {})
    assert (unset.cpu, unset.memory_gib) == (None, None)
    env = resolve_settings({}, {"GPULEDGER_CPU": "4", "GPULEDGER_MEMORY_GIB": "0.5"})
    assert (env.cpu, env.memory_gib) == (4.0, 0.5)
    assert env.sources["cpu"] == "GPULEDGER_CPU"
    assert resolve_settings({"cpu": 2, "memory_gib": 16}, {}).cpu == 2.0
    for bad in ("0", "-1", "lots", "nan"):
        with pytest.raises(ConfigError) as caught:
            resolve_settings({}, {"GPULEDGER_CPU": bad})
        assert caught.value.setting == "cpu"
    with pytest.raises(ConfigError):
        resolve_settings({"memory_gib": True}, {})


@pytest.mark.pricing("published-2026-12")
def test_a_traced_handler_freezes_cpu_and_memory_on_its_records(telemetry: Telemetry) -> None:
    """A real handler on a Modal H100 reserving 4 cores and 16 GiB: its records carry those
    rules, and each one's cost is its GPU time and start-up plus the worker's CPU and memory
    over the same time; the report bills them with the GPU."""
    clock = telemetry.clock
    gpuledger.configure(
        ledger=str(telemetry.ledger_path),
        platform="modal",
        gpu="H100",
        cpu=4,
        memory_gib=16,
        clock=clock,
        exporters="none",
    )

    @gpuledger.traced_handler(name="generate")
    def generate(job: dict[str, Any]) -> str:
        clock.advance(20.0)
        return "text"

    generate({"id": "cold"})
    generate({"id": "warm"})
    cold, warm = telemetry.records()
    for record in (cold, warm):
        assert record.billing_rules is not None
        rules = Rules.from_json(record.billing_rules)
        assert (rules.cpu_usd_per_second, rules.memory_usd_per_second) == (CPU, MEMORY)
        # On its face: fee + GPU + start-up + the worker's CPU and memory for its time.
        assert record.cost_usd is not None
        billed_s = record.duration_s + (record.init_duration_s or 0.0 if record.cold else 0.0)
        assert record.cost_usd == pytest.approx(
            (record.cost_execution_usd or 0.0)
            + (record.cost_gpu_usd or 0.0)
            + (record.cost_coldstart_usd or 0.0)
            + billed_s * float(CPU + MEMORY),
            rel=1e-12,
        )
    assert warm.cost_gpu_usd == pytest.approx(20 * 0.001097)
    assert warm.cost_usd == pytest.approx(20 * 0.00118492)
    assert cold.cold and cold.init_duration_s
    rows = aggregate([cold, warm], "user")
    total = totals(rows)
    assert total.cpu_usd == pytest.approx(float(CPU) * total.billed_gpu_s)
    assert total.memory_usd == pytest.approx(float(MEMORY) * total.billed_gpu_s)
    assert total.cost_usd == pytest.approx(
        total.fee_usd + total.gpu_usd + total.cpu_usd + total.memory_usd, rel=1e-12
    )
