"""The billing engine: a worker's bill under a platform's rules, exact, and adding up.

Worked cases first (the two the issue measured: overlapping requests on 1 s increments, a lazy
load inside a request), then the invariants over random timelines and rules (Hypothesis):
the lines add up to the bill exactly, integer nano-dollars add up to the rounded total, no
instant is charged in two categories or twice to one request, and no worker is charged for more
than its life plus what the platform's rounding adds to each billing span.
"""

from __future__ import annotations

import dataclasses
import itertools
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuledger._pricing import edition_catalogue
from gpuledger.billing import CATEGORIES, Request, Rules, WorkerTimeline, bill
from gpuledger.billing._engine import _clip, _lone_segments, _swept_segments, _union

SEED_CATALOGUE = edition_catalogue("seed-2026-03")
"""The seed article's edition: these tests work its numbers."""

S = 1_000_000_000  # ns per second
T0 = 1_772_323_200 * S  # 2026-03-01T00:00:00Z

RUNPOD_LIKE = Rules(
    per_gpu_second_usd=Fraction("0.00076"),
    execution_fee_usd=Fraction("0.25"),
    increment_ns=S,
    bills_startup=True,
)


def _worker(*requests: tuple[float, float], ready: float = 0.0, stop: float | None = None):
    """A worker started at T0, ready ``ready`` s later, serving ``(start_s, end_s)`` requests."""
    served = tuple(
        Request(f"r{i}", T0 + round(a * S), T0 + round(b * S)) for i, (a, b) in enumerate(requests)
    )
    end = stop if stop is not None else max([ready, *(b for _, b in requests)])
    return WorkerTimeline(T0, T0 + round(ready * S), T0 + round(end * S), served)


def test_four_overlapping_requests_on_one_second_increments_are_billed_one_second() -> None:
    """4 concurrent 0.5 s requests: the worker held the GPU 0.5 s and is billed 1 s, once (the
    per-request pricing charged 4 x 1 s)."""
    result = bill(_worker(*[(0.0, 0.5)] * 4), RUNPOD_LIKE)
    categories = result.by_category()
    assert result.billed_gpu_ns == S  # 0.5 s of requests + 0.5 s of rounding
    assert categories["request"] == Fraction("0.5") * Fraction("0.00076")
    assert categories["rounding"] == Fraction("0.5") * Fraction("0.00076")
    assert categories["fee"] == 4 * Fraction("0.25")  # the seed's edition: a fee per request
    assert result.total_usd == Fraction("0.00076") + 1
    shares = [line.usd for line in result.lines if line.category == "request"]
    assert shares == [Fraction("0.5") * Fraction("0.00076") / 4] * 4


def test_a_model_loaded_inside_a_request_is_charged_once() -> None:
    """A 0.6 s warm request that spends 0.5 s loading a model is 0.6 s of the worker's life,
    billed 1 s under 1 s increments, not 0.6 s + 0.5 s."""
    result = bill(_worker((10.0, 10.6), stop=10.6), RUNPOD_LIKE)
    assert result.billed_gpu_ns == S
    lazy = WorkerTimeline(
        T0, T0, T0 + 11 * S, (Request("r0", T0 + 10 * S, T0 + 106 * S // 10, S // 2),)
    )
    categories = bill(lazy, RUNPOD_LIKE).gpu_ns_by_category
    assert categories["startup"] == S // 2  # the load, once, as start-up
    assert categories["request"] == S // 10
    assert sum(categories.values()) == S  # rounded to 1 s with the rest of the span
    assert result.by_category()["startup"] == 0


def test_idle_is_billed_where_the_platform_bills_it_and_rounds_once() -> None:
    """Start 2 s, a 1.2 s request, 3.1 s idle to the stop: one billing span of 6.3 s, billed
    7 s; without idle billing, two spans (startup + request: 3.2 s -> 4 s)."""
    worker = _worker((2.0, 3.2), ready=2.0, stop=6.3)
    rate = Fraction("0.001")
    with_idle = bill(worker, Rules(rate, increment_ns=S, bills_startup=True, bills_idle=True))
    assert with_idle.billed_gpu_ns == 7 * S
    assert {c: v / rate for c, v in with_idle.by_category().items() if v} == {
        "startup": 2,
        "request": Fraction("1.2"),
        "idle": Fraction("3.1"),
        "rounding": Fraction("0.7"),
    }
    without = bill(worker, Rules(rate, increment_ns=S, bills_startup=True))
    assert without.billed_gpu_ns == 4 * S


def test_a_request_waiting_for_the_start_up_is_charged_start_up_not_twice() -> None:
    """The cold request arrives at 0 and the worker is ready at 3 s: 0-3 s is start-up (billed
    or not), 3-4 s is the request."""
    worker = _worker((0.0, 4.0), ready=3.0)
    rate = Fraction(1)
    billed = bill(worker, Rules(rate, bills_startup=True)).by_category()
    assert (billed["startup"], billed["request"]) == (3, 1)
    unbilled = bill(worker, Rules(rate, bills_startup=False)).by_category()
    assert (unbilled["startup"], unbilled["request"]) == (0, 1)


def test_every_catalogue_price_makes_rules() -> None:
    """The seed's catalogue, read exactly as written: RunPod's H100 at $0.00024 per GPU-second
    and a $0.25 fee; the reserved H100 at $2.69 an hour."""
    catalogue = SEED_CATALOGUE
    for platform in catalogue.platforms():
        price = catalogue.lookup(platform, "H100")
        assert price is not None
        rules = Rules.from_price(price)
        assert rules.per_gpu_second_usd > 0
    runpod = Rules.from_price(catalogue.lookup("runpod", "H100"))  # type: ignore[arg-type]
    assert runpod.per_gpu_second_usd == Fraction("0.00024")
    assert runpod.execution_fee_usd == Fraction("0.25")
    assert runpod.increment_ns == S
    reserved = Rules.from_price(catalogue.lookup("reserved", "H100"))  # type: ignore[arg-type]
    assert reserved.per_gpu_second_usd == Fraction("2.69") / 3600


def test_a_timeline_that_cannot_be_is_refused() -> None:
    with pytest.raises(ValueError, match=r"requests\[0\] \(r0\) is not within"):
        WorkerTimeline(T0, T0, T0 + S, (Request("r0", T0 - 1, T0 + 1),))
    with pytest.raises(ValueError, match="start_ns <= ready_ns <= stop_ns"):
        WorkerTimeline(T0, T0 + 2 * S, T0 + S)


# --- the invariants, over random timelines and rules -----------------------------------------


@st.composite
def timelines(draw: st.DrawFn) -> WorkerTimeline:
    life = draw(st.integers(1, 60 * S))
    ready = draw(st.integers(0, life))
    count = draw(st.integers(0, 6))
    requests = []
    for index in range(count):
        start = draw(st.integers(0, life))
        end = draw(st.integers(start, life))
        own_startup = draw(st.sampled_from([0, 0, (end - start) // 2, end - start]))
        requests.append(Request(f"r{index}", T0 + start, T0 + end, own_startup))
    gpus = draw(st.integers(1, 8))
    return WorkerTimeline(T0, T0 + ready, T0 + life, tuple(requests), gpus)


rules_strategy = st.builds(
    Rules,
    per_gpu_second_usd=st.fractions(Fraction(1, 10**6), Fraction(1, 100), max_denominator=10**6),
    execution_fee_usd=st.sampled_from([Fraction(0), Fraction("0.25"), Fraction(1, 3)]),
    increment_ns=st.sampled_from([0, 1, S // 10, S, 60 * S]),
    minimum_ns=st.sampled_from([0, S, 30 * S]),
    bills_startup=st.booleans(),
    bills_idle=st.booleans(),
    # The worker's CPU and memory per second, where the platform charges them (Modal's 4 cores
    # and 16 GiB; an odd fraction, so a share per GPU is not a whole number of anything).
    cpu_usd_per_second=st.sampled_from(
        [Fraction(0), Fraction("0.0000524"), Fraction(1, 7 * 10**5)]
    ),
    memory_usd_per_second=st.sampled_from([Fraction(0), Fraction("0.00003552"), Fraction(1, 3)]),
)


@settings(max_examples=300, deadline=None)
@given(timelines(), rules_strategy)
def test_the_lines_add_up_to_the_bill_exactly(timeline: WorkerTimeline, rules: Rules) -> None:
    result = bill(timeline, rules)
    assert sum((line.usd for line in result.lines), Fraction(0)) == result.total_usd
    assert sum(result.by_category().values(), Fraction(0)) == result.total_usd
    fees = rules.execution_fee_usd * len(timeline.requests)
    rate = rules.per_gpu_second_usd
    # On its face: fees + every resource over the same billed time (wall = GPU time / GPUs).
    wall_s = result.billed_gpu_ns / timeline.gpu_count / S
    assert result.usd_by_resource == {
        "gpu": rate * result.billed_gpu_ns / S,
        "cpu": rules.cpu_usd_per_second * wall_s,
        "memory": rules.memory_usd_per_second * wall_s,
    }
    assert result.total_usd == fees + sum(result.usd_by_resource.values(), Fraction(0))
    nano = result.nano_usd()
    assert sum(nano) == round(result.total_usd * 10**9)
    assert all(abs(n - line.usd * 10**9) < 1 for n, line in zip(nano, result.lines, strict=True))
    assert set(result.by_category()) == set(CATEGORIES)


@settings(max_examples=300, deadline=None)
@given(timelines(), rules_strategy)
def test_no_instant_is_charged_twice(timeline: WorkerTimeline, rules: Rules) -> None:
    """At every instant: at most one worker-level charge (start-up, idle) and then no request's;
    or the requests running then, each once, sharing exactly the GPUs held (a request's own
    start-up work is part of its share)."""
    result = bill(timeline, rules)
    timed = [line for line in result.lines if line.category not in ("fee", "rounding")]
    edges = sorted({edge for line in timed for edge in (line.start_ns, line.end_ns)})
    for a, b in itertools.pairwise(edges):
        covering = [line for line in timed if line.start_ns <= a and b <= line.end_ns]
        worker_level = [line for line in covering if line.request_id is None]
        owned = [line for line in covering if line.request_id is not None]
        assert len(worker_level) <= 1
        if worker_level:
            assert not owned
            continue
        ids = [line.request_id for line in owned]
        assert len(ids) == len(set(ids))
        if owned:
            held = sum(
                (line.gpu_ns * (b - a) / (line.end_ns - line.start_ns) for line in owned),
                Fraction(0),
            )
            assert held == (b - a) * timeline.gpu_count


@settings(max_examples=300, deadline=None)
@given(timelines(), rules_strategy)
def test_totals_without_lines_are_the_totals_with_them(
    timeline: WorkerTimeline, rules: Rules
) -> None:
    full = bill(timeline, rules)
    quick = bill(timeline, rules, lines=False)
    assert quick.lines == ()
    assert quick.usd_by_category == full.usd_by_category
    assert quick.gpu_ns_by_category == full.gpu_ns_by_category
    assert quick.usd_by_resource == full.usd_by_resource
    assert (quick.total_usd, quick.billed_gpu_ns) == (full.total_usd, full.billed_gpu_ns)


@settings(max_examples=100, deadline=None)
@given(rules_strategy)
def test_rules_survive_json_exactly(rules: Rules) -> None:
    import json

    assert Rules.from_json(json.loads(json.dumps(rules.to_json()))) == rules


@settings(max_examples=300, deadline=None)
@given(timelines(), rules_strategy)
def test_no_worker_is_charged_beyond_its_life_and_its_rounding(
    timeline: WorkerTimeline, rules: Rules
) -> None:
    """Billed wall time is at most the worker's life, plus, per billing span, less than one
    increment of rounding or up to the minimum."""
    result = bill(timeline, rules)
    life = timeline.stop_ns - timeline.start_ns
    unrounded = sum(
        (line.gpu_ns for line in result.lines if line.category not in ("rounding", "fee")),
        Fraction(0),
    )
    assert unrounded <= life * timeline.gpu_count
    spans = sum(1 for line in result.lines if line.category == "rounding")
    allowance = max(rules.increment_ns, rules.minimum_ns)
    assert result.billed_gpu_ns <= (life + spans * allowance) * timeline.gpu_count
    for line in result.lines:
        if line.category == "rounding":
            assert line.end_ns - line.start_ns <= allowance


@settings(max_examples=400, deadline=None)
@given(timelines(), rules_strategy)
def test_a_running_bill_adds_up_to_the_bill(timeline: WorkerTimeline, rules: Rules) -> None:
    """Fed the requests in the order they end (with the oldest still running), then the stop,
    :class:`RunningBill` charges exactly the bill's idle and rounding: what a cost counter adds
    over the worker's life is what the worker is billed."""
    from gpuledger.billing import RunningBill

    rules = dataclasses.replace(rules, execution_fee_usd=Fraction(0))
    running = RunningBill(rules, timeline.start_ns, timeline.gpu_count)
    charged: dict[str, Fraction] = {"idle": Fraction(0), "rounding": Fraction(0)}
    ordered = sorted(timeline.requests, key=lambda r: (r.end_ns, r.start_ns, r.request_id))
    for index, request in enumerate(ordered):
        still = [r.start_ns for r in ordered[index + 1 :] if r.start_ns <= request.end_ns]
        oldest = min(still, default=None)
        for category, ns in running.request(
            request.start_ns, request.end_ns, timeline.ready_ns, oldest
        ):
            charged[category] += ns * running.usd_per_ns
    if not timeline.requests:
        # Nothing told it when the worker was ready: a worker with no request is ready at once.
        timeline = dataclasses.replace(timeline, ready_ns=timeline.start_ns)
    for category, ns in running.stop(timeline.stop_ns):
        charged[category] += ns * running.usd_per_ns
    expected = bill(timeline, rules).by_category()
    assert charged["idle"] == expected["idle"]
    assert charged["rounding"] == expected["rounding"]


@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.integers(0, 30)),  # gap before, length
        max_size=12,
    ),
    st.integers(0, 200),
    st.integers(0, 400),
)
def test_requests_one_at_a_time_are_split_as_the_sweep_splits_them(
    shape: list[tuple[int, int]], ready: int, stop_after: int
) -> None:
    """The shortcut for requests that never overlap (each its own stretch, clipped to the
    served stretch holding it) gives the sweep's stretches exactly: touching, empty, before
    ready and after stop included."""
    requests = []
    cursor = 0
    for index, (gap, length) in enumerate(shape):
        cursor += gap
        requests.append(Request(f"r{index:02d}", cursor, cursor + length))
        cursor += length
    served = _clip(_union((r.start_ns, r.end_ns) for r in requests), ready, ready + stop_after)
    assert _lone_segments(requests, served) == _swept_segments(requests, served)
