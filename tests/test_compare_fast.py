"""The replays' fast paths give exactly what the general ones give.

``compare`` replays with numpy where it is installed: the on-demand serverless replay (one request
per worker, no pool, no worker limit: nothing queues), a hybrid's reserved GPUs when no request
may wait, the percentile floor and the traffic's shape over arrays. Without numpy every replay
takes its general path, the reference here: each test runs the same replay both ways (numpy
hidden from the replays for the reference) and asserts every field equal, floats included,
exactly. The traces are seeded: steady and bursty traffic, instants on whole seconds (ties
between arrivals and ends), zero-length and over-the-timeout services, several GPUs per request.
The batched billing call the fast path uses is held equal to the engine's one-worker call.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any, TypeVar

import pytest

from gpuledger._pricing import Price, default_catalogue, edition_catalogue
from gpuledger.billing import Rules, billed_wall_ns, billed_wall_ns_unserved
from gpuledger.whatif import _compare, _simulate, _traffic
from gpuledger.whatif._simulate import (
    simulate_hybrid,
    simulate_reserved,
    simulate_serverless,
)
from gpuledger.whatif._traffic import Trace, burstiness, synthetic

from .test_simulate import trace as hand_made

numpy = pytest.importorskip("numpy")

Result = TypeVar("Result")
CATALOGUE = default_catalogue()
SEED = edition_catalogue("seed-2026-03")
DAY_S = 86_400.0


def price(platform: str, catalogue: Any = CATALOGUE, **changes: Any) -> Price:
    """``platform``'s H100 price, with ``changes`` to its fields."""
    found = catalogue.lookup(platform, "H100")
    assert found is not None, platform
    return dataclasses.replace(found, **changes)


def reference(monkeypatch: pytest.MonkeyPatch, run: Callable[[], Result]) -> Result:
    """``run()`` with numpy hidden from the replays: their general paths."""
    with monkeypatch.context() as patch:
        for module in (_simulate, _compare, _traffic):
            patch.setattr(module, "optional_numpy", lambda: None)
        return run()


def both(monkeypatch: pytest.MonkeyPatch, run: Callable[[], Result]) -> tuple[Result, Result]:
    """``run()`` on the fast paths, then on the general ones."""
    return run(), reference(monkeypatch, run)


def whole_seconds(seed: int, count: int, spacing_s: int, longest_s: int, gpus: int = 1) -> Trace:
    """Arrivals and services on whole seconds: ends land exactly on arrivals, arrivals repeat,
    some services are 0."""
    draw = random.Random(seed)
    arrivals = sorted(float(draw.randrange(count * spacing_s)) for _ in range(count))
    services = [float(draw.randrange(longest_s + 1)) for _ in range(count)]
    return hand_made(arrivals, services, arrivals[-1] + 1000.0, gpus)


def traces() -> Iterator[tuple[str, Trace]]:
    yield "steady", synthetic("steady", rate_per_hour=600, days=1, service="lognormal", seed=1)
    yield "bursty", synthetic("bursty", rate_per_hour=3000, days=2, service="exp", seed=2)
    yield "diurnal", synthetic("diurnal", rate_per_hour=200, days=1, service="lognormal", seed=3)
    yield "ties", whole_seconds(4, 2000, 3, 40)
    yield "ties, 2 GPUs", whole_seconds(5, 1500, 2, 25, gpus=2)


TRACES = dict(traces())


def serverless_prices() -> Iterator[tuple[str, Price]]:
    for platform in ("modal", "replicate", "replicate-private", "runpod"):
        yield platform, price(platform)
    yield "runpod, 30 s timeout", price("runpod", timeout_s=30.0)
    yield "runpod, 0.5 s minimum", price("runpod", minimum_billed_s=0.5, billing_increment_s=0.1)
    yield "seed runpod: fee, rounding", price("runpod", SEED)
    yield "seed banana", price("banana", SEED)
    yield "per request, no idle", price("replicate", idle_window_s=20.0, billing_increment_s=1.0)
    yield "no start-up billing", price("modal", bills_startup=False, idle_window_s=7.0)
    yield "replicate, minimum", price("replicate", minimum_billed_s=30.0)
    # The general path on both sides (queueing, sharing, a pool): the comparison still holds.
    yield "max workers", price("runpod", max_workers=4)
    yield "concurrency 3", price("modal", concurrency=3)
    yield "pre-warmed", price("runpod", prewarmed_workers=2)


PRICES = dict(serverless_prices())


@pytest.mark.parametrize("name", TRACES)
@pytest.mark.parametrize("platform", PRICES)
def test_serverless_is_the_same_either_way(
    monkeypatch: pytest.MonkeyPatch, name: str, platform: str
) -> None:
    """Every serverless option: the same result on the fast and the general path."""
    fast, general = both(monkeypatch, lambda: simulate_serverless(TRACES[name], PRICES[platform]))
    assert fast == general


@pytest.mark.parametrize("name", TRACES)
@pytest.mark.parametrize("gpus", [0, 1, 2, 5])
@pytest.mark.parametrize("overflow", ["runpod", "modal", "max workers", "pre-warmed"])
@pytest.mark.parametrize("max_wait_s", [0.0, 4.0])
def test_hybrid_is_the_same_either_way(
    monkeypatch: pytest.MonkeyPatch, name: str, gpus: int, overflow: str, max_wait_s: float
) -> None:
    """Reserved GPUs with a serverless overflow: the same result either way."""
    reserved = price("reserved")
    fast, general = both(
        monkeypatch,
        lambda: simulate_hybrid(
            TRACES[name], reserved, gpus, PRICES[overflow], max_wait_s=max_wait_s
        ),
    )
    assert fast == general


@pytest.mark.parametrize("name", TRACES)
def test_reserved_is_the_same_either_way(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Reserved GPUs alone: the same result either way."""
    fast, general = both(monkeypatch, lambda: simulate_reserved(TRACES[name], price("reserved"), 2))
    assert fast == general


def test_an_empty_trace_and_a_single_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The edges: no request, one request."""
    for trace in (hand_made([], [], DAY_S), hand_made([5.0], [3.0], DAY_S)):
        for platform in ("runpod", "replicate"):
            run = functools.partial(simulate_serverless, trace, PRICES[platform])
            fast, general = both(monkeypatch, run)
            assert fast == general
        hybrid = functools.partial(simulate_hybrid, trace, price("reserved"), 1, PRICES["runpod"])
        fast_hybrid, general_hybrid = both(monkeypatch, hybrid)
        assert fast_hybrid == general_hybrid


def test_arrivals_out_of_order_take_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trace whose arrivals are not ascending (not one ``Trace`` promises) still replays as
    the general path replays it."""
    trace = hand_made([10.0, 3.0, 50.0, 20.0], [5.0, 40.0, 1.0, 2.0], DAY_S)
    fast, general = both(
        monkeypatch, lambda: simulate_hybrid(trace, price("reserved"), 1, PRICES["runpod"])
    )
    assert fast == general


@pytest.mark.parametrize("slo_p95_s", [None, 20.0, 60.0, 300.0])
@pytest.mark.parametrize("name", ["steady", "bursty", "ties"])
def test_compare_is_the_same_either_way(
    monkeypatch: pytest.MonkeyPatch, name: str, slo_p95_s: float | None
) -> None:
    """The whole comparison: the same options, results, recommendation and notes."""
    fast, general = both(
        monkeypatch,
        lambda: _compare.compare(TRACES[name], CATALOGUE, gpu="H100", slo_p95_s=slo_p95_s),
    )
    assert fast == general


@pytest.mark.parametrize("name", TRACES)
def test_burstiness_is_the_same_either_way(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The traffic's shape: every number equal (nan where both are nan)."""
    fast, general = both(monkeypatch, lambda: burstiness(TRACES[name], idle_gap_s=60.0))
    assert repr(fast) == repr(general)
    for trace in (hand_made([], [], DAY_S), hand_made([1.0, 2.0], [0.5, 0.5], 3.0)):
        fast, general = both(monkeypatch, functools.partial(burstiness, trace))
        assert repr(fast) == repr(general)


@pytest.mark.parametrize(
    "rules",
    [
        Rules(Fraction(1, 1000)),
        Rules(Fraction(1, 1000), increment_ns=1_000_000_000, bills_startup=True, bills_idle=True),
        Rules(Fraction(1, 1000), minimum_ns=3_000_000_000, bills_startup=True),
        Rules(Fraction(1, 1000), increment_ns=700, minimum_ns=5_000, bills_idle=True),
        Rules(Fraction(1, 1000), increment_ns=1_000, bills_startup=True, bills_idle=False),
    ],
)
def test_the_batched_call_is_the_sum_of_the_engines_single_calls(rules: Rules) -> None:
    """``billed_wall_ns_unserved`` is ``billed_wall_ns`` of each worker (no requests), summed."""
    draw = random.Random(7)
    starts, readies, stops = [], [], []
    for _ in range(500):
        start = draw.randrange(10**6)
        ready = start + draw.choice([0, draw.randrange(10**4)])
        starts.append(start)
        readies.append(ready)
        stops.append(ready + draw.choice([0, draw.randrange(10**5)]))
    expected: dict[str, int] = {}
    for start, ready, stop in zip(starts, readies, stops, strict=True):
        for category, ns in billed_wall_ns(start, ready, stop, [], [], rules).items():
            expected[category] = expected.get(category, 0) + ns
    assert billed_wall_ns_unserved(starts, readies, stops, rules) == expected


def test_the_fast_paths_are_the_ones_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """With numpy, the catalogue's platforms and a hybrid with no wait take the fast paths (so
    the comparisons above compare two paths, not one with itself)."""
    taken: list[str] = []
    on_demand, no_wait = _simulate._on_demand_replay, _simulate._replay_reserved_no_wait

    def spy_on_demand(*arguments: Any) -> Any:
        taken.append("on-demand")
        return on_demand(*arguments)

    def spy_no_wait(*arguments: Any) -> Any:
        taken.append("no wait")
        return no_wait(*arguments)

    monkeypatch.setattr(_simulate, "_on_demand_replay", spy_on_demand)
    monkeypatch.setattr(_simulate, "_replay_reserved_no_wait", spy_no_wait)
    simulate_serverless(TRACES["steady"], PRICES["runpod"])
    assert taken == ["on-demand"]
    simulate_hybrid(TRACES["steady"], price("reserved"), 2, PRICES["modal"])
    assert taken == ["on-demand", "no wait", "on-demand"]
    reference(monkeypatch, lambda: simulate_serverless(TRACES["steady"], PRICES["runpod"]))
    assert taken == ["on-demand", "no wait", "on-demand"]


@pytest.mark.parametrize("name", TRACES)
@pytest.mark.parametrize(
    "overflow", ["runpod", "modal", "seed banana", "concurrency 3", "replicate, minimum"]
)
def test_the_hybrid_floor_is_never_above_what_a_hybrid_costs(name: str, overflow: str) -> None:
    """The pruning bound, size by size: the reserved GPUs' cost plus the overflow's floor
    (what it must serve when no request waits, at its rate) is at most what the replay bills."""
    trace, reserved = TRACES[name], price("reserved")
    sizes = [1, 2, 3, 5, 8]
    floor = _compare._overflow_floor_usd(trace, sizes, PRICES[overflow])
    per_worker = trace.window_s * trace.gpu_count * reserved.per_gpu_second_usd
    for gpus in sizes:
        result = simulate_hybrid(trace, reserved, gpus, PRICES[overflow])
        assert gpus * per_worker + floor[gpus] <= result.cost_usd * (1 + 1e-9), (gpus, floor)
    assert floor[1] > 0  # every trace here overflows one GPU at some instant


def test_the_floor_spares_hybrid_replays(monkeypatch: pytest.MonkeyPatch) -> None:
    """On bursty traffic (a reserved GPU idles most of the day) the floor rules out the larger
    hybrids without replaying them; the comparison is the same as without it."""
    calls: list[int] = []
    replay = _compare.simulate_hybrid

    def counted(trace: Trace, reserved: Price, gpus: int, *args: Any, **kwargs: Any) -> Any:
        calls.append(gpus)
        return replay(trace, reserved, gpus, *args, **kwargs)

    monkeypatch.setattr(_compare, "simulate_hybrid", counted)
    trace = synthetic("bursty", rate_per_hour=20_000, days=2, service="exp", seed=2)
    run = functools.partial(_compare.compare, trace, CATALOGUE, gpu="H100")
    fast = run()
    pruned = list(calls)
    calls.clear()
    monkeypatch.setattr(_compare, "_overflow_floor_usd", lambda *args: {})
    assert run() == fast
    assert (pruned, calls) == ([1], [1, 2, 3, 4])
