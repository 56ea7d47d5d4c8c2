"""The platform simulator: serverless, reserved and hybrid replays, worked by hand.

Prices are the shipped catalogue's H100 ones, with behaviour fields varied per test through
``dataclasses.replace``. RunPod as shipped: $0.25 a request + $0.00024 a GPU-second, each
request rounded up to whole seconds, start-up billed, a 2.5 s cold start, a 900 s idle window and
a 900 s timeout, one request per worker, no worker limit, no pool. Reserved: $2.69 an hour.

Latency percentiles are numpy's "linear" ones; :func:`quantile` below restates the definition so
that each expectation can be written as the list of per-request latencies it comes from.
"""

from __future__ import annotations

import array
import dataclasses
import itertools
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gpuledger._pricing import Price, edition_catalogue
from gpuledger.billing import Request, Rules, WorkerTimeline, bill
from gpuledger.whatif._simulate import (
    SimResult,
    SimulatedWorker,
    simulate_hybrid,
    simulate_reserved,
    simulate_serverless,
)
from gpuledger.whatif._traffic import Trace

SEED_CATALOGUE = edition_catalogue("seed-2026-03")
"""The seed article's edition: these tests work its numbers."""

CATALOGUE = SEED_CATALOGUE
SERVERLESS = ("runpod", "replicate", "modal", "banana")
RUNPOD_FEE = 0.25
RUNPOD_RATE = 0.00024
RESERVED_RATE = 2.69 / 3600
DAY_S = 86_400.0


def price(platform: str = "runpod", **changes: Any) -> Price:
    """The catalogue's H100 price on ``platform``, with ``changes`` to its fields."""
    found = CATALOGUE.lookup(platform, "H100")
    assert found is not None, platform
    return dataclasses.replace(found, **changes)


def compute_only(platform: str, **changes: Any) -> Price:
    """``platform``'s H100 price billing compute only (no start-up billing, no pre-warmed pool),
    with ``changes``."""
    return price(platform, **{"bills_startup": False, "prewarmed_workers": 0, **changes})


def plain(**changes: Any) -> Price:
    """RunPod's H100 price with no execution fee and no rounding, so that paid seconds read
    directly (start-up is still billed unless ``changes`` say otherwise)."""
    return price("runpod", execution_fee_usd=0.0, billing_increment_s=0.0, **changes)


def trace(
    arrivals_s: Sequence[float],
    services_s: Sequence[float],
    window_s: float,
    gpu_count: int = 1,
) -> Trace:
    """A hand-made H100 trace."""
    return Trace(
        arrivals_s=array.array("d", arrivals_s),
        services_s=array.array("d", services_s),
        window_s=window_s,
        input_tokens=None,
        output_tokens=None,
        gpu="H100",
        gpu_count=gpu_count,
        origin_ns=0,
        source="test",
    )


def quantile(values: Sequence[float], fraction: float) -> float:
    """numpy's default ("linear") quantile of ``values``."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def assert_latencies(result: SimResult, latencies_s: Sequence[float], waits_s: float) -> None:
    """``result``'s percentiles are those of ``latencies_s``; its mean wait is ``waits_s`` over
    the requests."""
    expected = [quantile(latencies_s, fraction) for fraction in (0.50, 0.95, 0.99)]
    assert [result.p50_s, result.p95_s, result.p99_s] == pytest.approx(expected, abs=1e-9)
    assert result.mean_wait_s == pytest.approx(waits_s / len(latencies_s), abs=1e-9)


# --- serverless, one request per worker ----------------------------------------------------------


def test_a_single_request_is_cold() -> None:
    """The first request waits the cold start: latency 2.5 + 10 s, start-up billed with it."""
    # The start-up and the request are one billing span, 0 -> 12.5 s, rounded up once to RunPod's
    # whole seconds: 13 s (it was 10 s rounded + 2.5 s of start-up unrounded = 12.5 s).
    result = simulate_serverless(trace([0.0], [10.0], 100.0), price())
    assert result.cold_starts == 1
    assert_latencies(result, [12.5], waits_s=2.5)
    assert result.cost_usd == pytest.approx(RUNPOD_FEE + 13 * RUNPOD_RATE, rel=1e-12)
    assert result.paid_gpu_seconds == pytest.approx(13.0)
    assert result.busy_gpu_seconds == pytest.approx(10.0)
    assert result.utilisation == pytest.approx(10 / 13)


def test_a_request_within_the_idle_window_is_warm() -> None:
    """A request 487.5 s after the worker freed up (window 900 s) reuses it: no cold start."""
    result = simulate_serverless(trace([0.0, 500.0], [10.0, 10.0], 1000.0), price())
    assert result.cold_starts == 1
    assert_latencies(result, [12.5, 10.0], waits_s=2.5)
    # Billing spans 0 -> 12.5 s (start-up and the first request: 13 s) and 500 -> 510 s (10 s).
    assert result.cost_usd == pytest.approx(2 * RUNPOD_FEE + (13 + 10) * RUNPOD_RATE, rel=1e-12)


@pytest.mark.parametrize(
    ("second_arrival_s", "cold_starts"),
    [(912.5, 1), (912.6, 2), (1000.0, 2)],
)
def test_the_idle_window_ends_exactly_900_s_after_the_worker_frees(
    second_arrival_s: float, cold_starts: int
) -> None:
    """The worker frees at 12.5 s: it is still warm at 912.5 s and gone after it."""
    result = simulate_serverless(trace([0.0, second_arrival_s], [10.0, 10.0], 2000.0), price())
    assert result.cold_starts == cold_starts
    second = 12.5 if cold_starts == 2 else 10.0
    assert_latencies(result, [12.5, second], waits_s=2.5 * cold_starts)


def test_overlapping_requests_start_a_second_worker() -> None:
    """A request arriving while the only worker is busy starts a second one, cold."""
    # Cold at 0 (ends 12.5 s) and at 5 s (ends 17.5 s); at 20 s both are idle: warm. Each cold
    # worker's start-up and request are one 12.5 s billing span, rounded to 13 s; the warm
    # request 10 s: 13 + 13 + 10 = 36 s (it was 35 s, each start-up left unrounded).
    result = simulate_serverless(trace([0.0, 5.0, 20.0], [10.0, 10.0, 10.0], 100.0), price())
    assert result.cold_starts == 2
    assert_latencies(result, [12.5, 12.5, 10.0], waits_s=5.0)
    assert result.cost_usd == pytest.approx(3 * RUNPOD_FEE + 36 * RUNPOD_RATE, rel=1e-12)


def test_at_max_workers_requests_queue_for_the_first_free_worker() -> None:
    """At max_workers, requests queue in arrival order for the first free worker, warm."""
    # With one worker allowed, later requests wait for it in arrival order, warm: the second starts
    # at 12.5 s (waits 7.5 s), the third at 22.5 s (waits 16.5 s). The worker is busy without a
    # break from its start to 32.5 s: one billing span, 33 s (it was 32.5 s).
    result = simulate_serverless(
        trace([0.0, 5.0, 6.0], [10.0, 10.0, 10.0], 100.0), price(max_workers=1)
    )
    assert result.cold_starts == 1
    assert_latencies(result, [12.5, 17.5, 26.5], waits_s=2.5 + 7.5 + 16.5)
    assert result.cost_usd == pytest.approx(3 * RUNPOD_FEE + 33 * RUNPOD_RATE, rel=1e-12)


def test_a_request_longer_than_the_timeout_fails_and_is_billed_the_timeout() -> None:
    """A request longer than the timeout fails, stopped and billed at the timeout."""
    # With a 5 s timeout a 10 s request is stopped at 5 s: one failure, 5 s billed and busy; a
    # request of exactly 5 s completes.
    result = simulate_serverless(
        trace([0.0, 100.0], [10.0, 5.0], 200.0), price(timeout_s=5.0, bills_startup=False)
    )
    assert result.failures == 1
    assert_latencies(result, [2.5 + 5.0, 5.0], waits_s=2.5)
    assert result.paid_gpu_seconds == pytest.approx(10.0)
    assert result.busy_gpu_seconds == pytest.approx(10.0)
    assert result.cost_usd == pytest.approx(2 * RUNPOD_FEE + 10 * RUNPOD_RATE, rel=1e-12)


@pytest.mark.parametrize(
    ("increment_s", "minimum_s", "billed_s"),
    [(1.0, 0.0, 1.0), (0.0, 0.0, 0.3), (0.25, 0.0, 0.5), (0.0, 2.0, 2.0), (1.0, 2.0, 2.0)],
)
def test_billing_rounds_each_request_up(
    increment_s: float, minimum_s: float, billed_s: float
) -> None:
    """Each request's GPU time is rounded up to the increment, and never below the minimum."""
    # 0.3 s of GPU is billed 1 s on RunPod's whole seconds, 0.5 s in quarter seconds, 0.3 s
    # unrounded, and never below the minimum.
    rules = price(billing_increment_s=increment_s, minimum_billed_s=minimum_s, bills_startup=False)
    result = simulate_serverless(trace([0.0], [0.3], 10.0), rules)
    assert result.paid_gpu_seconds == pytest.approx(billed_s)
    assert result.cost_usd == pytest.approx(RUNPOD_FEE + billed_s * RUNPOD_RATE, rel=1e-12)


def test_the_execution_fee_is_charged_per_request() -> None:
    """The execution fee is charged once per request, whichever worker serves it."""
    # With GPU time free, three requests (cold, cold, warm, one on a pre-warmed worker or not) cost
    # three fees.
    free_gpu = price(per_gpu_second_usd=0.0)
    requests = trace([0.0, 5.0, 20.0], [10.0, 10.0, 10.0], 100.0)
    assert simulate_serverless(requests, free_gpu).cost_usd == pytest.approx(3 * RUNPOD_FEE)
    pooled = dataclasses.replace(free_gpu, prewarmed_workers=1)
    assert simulate_serverless(requests, pooled).cost_usd == pytest.approx(3 * RUNPOD_FEE)


@pytest.mark.parametrize(("bills_startup", "paid_s"), [(True, 20.0 + 2 * 2.5), (False, 20.0)])
def test_start_up_billing_adds_each_cold_start(bills_startup: bool, paid_s: float) -> None:
    """Two cold starts of 2.5 s add 5 GPU-seconds where the platform bills start-up."""
    result = simulate_serverless(
        trace([0.0, 5.0], [10.0, 10.0], 100.0), plain(bills_startup=bills_startup)
    )
    assert result.cold_starts == 2
    assert result.paid_gpu_seconds == pytest.approx(paid_s)
    assert result.cost_usd == pytest.approx(paid_s * RUNPOD_RATE, rel=1e-12)


@pytest.mark.parametrize(
    ("arrivals_s", "window_s", "bills_idle", "paid_s"),
    [
        # Idle 12.5 -> 100 until reuse (87.5 s), then 110 -> 200 until the window ends (90 s).
        ([0.0, 100.0], 200.0, True, 20.0 + 87.5 + 90.0),
        # Idle a whole window (900 s) before scaling down, twice.
        ([0.0, 2000.0], 3000.0, True, 20.0 + 900.0 + 900.0),
        ([0.0, 100.0], 200.0, False, 20.0),
        ([0.0, 2000.0], 3000.0, False, 20.0),
    ],
)
def test_idle_billing_runs_until_reuse_scale_down_or_window_end(
    arrivals_s: list[float], window_s: float, bills_idle: bool, paid_s: float
) -> None:
    """Billed idle time runs until reuse, scale-down or the end of the window."""
    # Where the platform does not bill idle time it is free.
    rules = plain(bills_startup=False, bills_idle=bills_idle)
    result = simulate_serverless(trace(arrivals_s, [10.0, 10.0], window_s), rules)
    assert result.paid_gpu_seconds == pytest.approx(paid_s)
    assert result.cost_usd == pytest.approx(paid_s * RUNPOD_RATE, rel=1e-12)


def test_a_prewarmed_worker_is_paid_for_the_whole_window_and_serves_warm() -> None:
    """A pre-warmed worker is paid for the whole window and serves its requests warm."""
    # A pool of one serves the first request warm and unbilled, the overlapping second starts an
    # on-demand worker (cold, billed 10 + 2.5 s), the third finds the pool free again; the pool is
    # paid 100 s.
    result = simulate_serverless(
        trace([0.0, 5.0, 20.0], [10.0, 10.0, 10.0], 100.0), plain(prewarmed_workers=1)
    )
    assert result.cold_starts == 1
    assert_latencies(result, [10.0, 12.5, 10.0], waits_s=2.5)
    assert result.paid_gpu_seconds == pytest.approx(100.0 + 10.0 + 2.5)
    assert result.cost_usd == pytest.approx(112.5 * RUNPOD_RATE, rel=1e-12)


def test_when_the_pool_is_the_whole_fleet_requests_queue_for_it() -> None:
    """When the pool is the whole fleet, a request queues for a pool worker."""
    # max_workers 1 and a pool of 1 (which the catalogue accepts): a second simultaneous request
    # waits 10 s for the pool worker (warm), and only the pool is paid. (It used to crash.)
    result = simulate_serverless(
        trace([0.0, 0.0], [10.0, 10.0], 100.0), plain(prewarmed_workers=1, max_workers=1)
    )
    assert result.cold_starts == 0
    assert_latencies(result, [10.0, 20.0], waits_s=10.0)
    assert result.paid_gpu_seconds == pytest.approx(100.0)


# --- serverless, concurrency > 1 -----------------------------------------------------------------


def test_concurrency_two_shares_one_worker_and_bills_the_union() -> None:
    """Two overlapping requests share a 2-slot worker: one cold start, the union billed."""
    # Two overlapping requests on a 2-slot worker: one cold start (2.5 s), the second joins the
    # running worker (warm), and the worker is billed its busy wall time 2.5 -> 15 s, once.
    result = simulate_serverless(
        trace([0.0, 5.0], [10.0, 10.0], 100.0), plain(concurrency=2, bills_startup=False)
    )
    assert result.cold_starts == 1
    assert_latencies(result, [12.5, 10.0], waits_s=2.5)
    assert result.paid_gpu_seconds == pytest.approx(12.5)
    assert result.cost_usd == pytest.approx(12.5 * RUNPOD_RATE, rel=1e-12)


def test_concurrency_two_starts_a_worker_when_the_slots_are_full() -> None:
    """A request finding every slot taken starts another worker, cold."""
    # A third overlapping request finds both slots taken and starts a second worker (cold): billed
    # 12.5 s for the first worker and 10 s for the second.
    result = simulate_serverless(
        trace([0.0, 5.0, 6.0], [10.0, 10.0, 10.0], 100.0),
        plain(concurrency=2, bills_startup=False),
    )
    assert result.cold_starts == 2
    assert_latencies(result, [12.5, 10.0, 12.5], waits_s=5.0)
    assert result.paid_gpu_seconds == pytest.approx(22.5)


def test_a_request_joining_a_starting_worker_waits_for_its_start() -> None:
    """A request joining a worker still starting waits out the rest of its cold start."""
    # A request that joins a worker still in its cold start waits for the rest of it (1.5 s) and is
    # not counted as a cold start.
    result = simulate_serverless(
        trace([0.0, 1.0], [10.0, 10.0], 100.0), plain(concurrency=2, bills_startup=False)
    )
    assert result.cold_starts == 1
    assert_latencies(result, [12.5, 11.5], waits_s=2.5 + 1.5)
    assert result.paid_gpu_seconds == pytest.approx(10.0)


def test_a_shared_worker_is_busy_for_the_union_of_its_requests() -> None:
    """A shared worker is busy for the union of its requests, not their sum."""
    # Two requests sharing a worker keep its GPU busy 2.5 -> 15 s, the 12.5 s paid: 100%
    # utilisation, not the 160% that summing their service times gave.
    result = simulate_serverless(
        trace([0.0, 5.0], [10.0, 10.0], 100.0), plain(concurrency=2, bills_startup=False)
    )
    assert result.busy_gpu_seconds == pytest.approx(12.5)
    assert result.utilisation == pytest.approx(1.0)


# --- the billing engine bills each worker ---------------------------------------------------------


def engine_total(workers: Sequence[SimulatedWorker]) -> Fraction:
    """What the engine bills the simulated workers, each billed anew from its timeline."""
    return sum((bill(w.timeline, w.rules, lines=False).total_usd for w in workers), Fraction(0))


def test_each_worker_is_a_timeline_the_engine_bills() -> None:
    """The simulator's cost is the engine's bills of the worker timelines it produced."""
    # The three requests of test_overlapping_requests_start_a_second_worker: worker 0 starts at
    # 0, is ready at 2.5 s, serves request 0 (2.5 -> 12.5 s) and stays warm to the window's end
    # (100 s); worker 1 starts at 5 s, ready at 7.5 s, serves request 1 (7.5 -> 17.5 s) and,
    # freed last, request 2 (20 -> 30 s). RunPod bills each busy stretch with the start-up before
    # it, rounded up: worker 0 13 s, worker 1 13 + 10 s; and $0.25 a request.
    workers: list[SimulatedWorker] = []
    result = simulate_serverless(
        trace([0.0, 5.0, 20.0], [10.0, 10.0, 10.0], 100.0), price(), workers=workers
    )
    s = 1_000_000_000
    assert [w.timeline for w in workers] == [
        WorkerTimeline(
            0, 2 * s + s // 2, 100 * s, (Request("0", 2 * s + s // 2, 12 * s + s // 2),)
        ),
        WorkerTimeline(
            5 * s,
            7 * s + s // 2,
            100 * s,
            (Request("1", 7 * s + s // 2, 17 * s + s // 2), Request("2", 20 * s, 30 * s)),
        ),
    ]
    assert [w.role for w in workers] == ["on-demand", "on-demand"]
    assert all(w.rules == Rules.from_price(price()) for w in workers)
    assert [w.bill.total_usd for w in workers] == [
        Fraction("0.25") + 13 * Fraction("0.00024"),
        2 * Fraction("0.25") + 23 * Fraction("0.00024"),
    ]
    assert all(w.bill == bill(w.timeline, w.rules, lines=False) for w in workers)
    assert result.cost_usd == float(engine_total(workers))
    assert result.paid_gpu_seconds == pytest.approx(36.0)


@pytest.mark.parametrize(
    "rules",
    [
        price(),
        price("banana"),  # a pre-warmed worker, paid the whole window
        price("modal", concurrency=3, bills_idle=True, max_workers=2),
        plain(concurrency=2, prewarmed_workers=1, timeout_s=5.0),
    ],
)
def test_the_cost_is_the_engines_bill_of_every_worker(rules: Price) -> None:
    """On any platform, the cost is the sum of the engine's bills of the workers' timelines,
    and asking for the workers changes nothing."""
    requests = trace(
        [0.0, 0.0, 0.3, 1.0, 4.0, 4.2, 950.0, 951.0, 3000.0],
        [0.5, 2.0, 0.5, 9.0, 0.25, 7.0, 1.5, 1.5, 200.0],
        3100.0,
    )
    workers: list[SimulatedWorker] = []
    result = simulate_serverless(requests, rules, workers=workers)
    assert result == simulate_serverless(requests, rules)
    assert result.cost_usd == float(engine_total(workers))
    assert sum(len(w.timeline.requests) for w in workers) == len(requests)
    pool = [w for w in workers if w.role == "pre-warmed"]
    assert len(pool) == rules.prewarmed_workers
    for w in pool:  # the window, whatever the pool worker did
        assert (w.timeline.start_ns, w.timeline.ready_ns) == (0, 0)
        assert w.timeline.stop_ns == 3100 * 1_000_000_000
        assert w.rules.bills_idle


def test_concurrent_requests_on_one_worker_are_billed_once() -> None:
    """4 overlapping 0.5 s requests on one 4-slot worker, rounded to whole seconds, cost 1 s."""
    # Replicate with 4 slots, no cold start: requests at 0, 0.1, 0.2 and 0.3 s of 0.5 s each share
    # one worker, busy 0 -> 0.8 s: one billing span, 0.8 s rounded to 1 s, $0.001 (not 4 x 1 s
    # of requests rounded one by one).
    shared = price("replicate", concurrency=4, cold_start_s=0.0, bills_startup=False)
    workers: list[SimulatedWorker] = []
    result = simulate_serverless(
        trace([0.0, 0.1, 0.2, 0.3], [0.5] * 4, 10.0), shared, workers=workers
    )
    (worker,) = workers
    assert len(worker.timeline.requests) == 4
    assert worker.bill.gpu_ns_by_category["request"] == 800_000_000
    assert worker.bill.gpu_ns_by_category["rounding"] == 200_000_000
    assert result.paid_gpu_seconds == pytest.approx(1.0)
    assert result.cost_usd == pytest.approx(0.001, rel=1e-12)
    assert result.busy_gpu_seconds == pytest.approx(0.8)


def test_reserved_gpus_are_timelines_of_the_whole_window() -> None:
    """Each reserved GPU is a worker alive the whole window, billed by the engine; a request
    still running at the window's end is cut there."""
    # Two GPUs over 100 s: GPU 0 serves requests 0 (0 -> 10 s) and 2 (10 -> 20 s), GPU 1 request 1
    # (1 -> 11 s) and request 3 (95 s, 10 s long, cut at 100 s). $2.69 an hour each.
    requests = trace([0.0, 1.0, 2.0, 95.0], [10.0, 10.0, 10.0, 10.0], 100.0)
    workers: list[SimulatedWorker] = []
    result = simulate_reserved(requests, price("reserved"), 2, workers=workers)
    s = 1_000_000_000
    assert [w.timeline for w in workers] == [
        WorkerTimeline(0, 0, 100 * s, (Request("0", 0, 10 * s), Request("2", 10 * s, 20 * s))),
        WorkerTimeline(0, 0, 100 * s, (Request("1", s, 11 * s), Request("3", 95 * s, 100 * s))),
    ]
    assert [w.role for w in workers] == ["reserved", "reserved"]
    assert result.cost_usd == float(engine_total(workers))
    assert result.cost_usd == pytest.approx(2 * 100 * RESERVED_RATE, rel=1e-12)
    assert result == simulate_reserved(requests, price("reserved"), 2)


def test_a_hybrids_workers_are_reserved_and_serverless() -> None:
    """A hybrid's cost is the engine's bills of its reserved GPUs and overflow workers."""
    requests = trace([0.0, 5.0, 6.0], [10.0, 10.0, 10.0], 100.0)
    workers: list[SimulatedWorker] = []
    result = simulate_hybrid(requests, price("reserved"), 1, price(), workers=workers)
    assert [w.role for w in workers] == ["reserved", "on-demand", "on-demand"]
    # The overflow keeps the requests' positions in the trace.
    assert [r.request_id for w in workers for r in w.timeline.requests] == ["0", "1", "2"]
    assert result.cost_usd == float(engine_total(workers))
    assert result == simulate_hybrid(requests, price("reserved"), 1, price())


# --- reserved -----------------------------------------------------------------------------------


def test_reserved_queues_fifo_on_one_gpu() -> None:
    """Three 10 s requests a second apart on one GPU start at 0, 10 and 20 s: waits 0, 9, 18."""
    requests = trace([0.0, 1.0, 2.0], [10.0, 10.0, 10.0], 100.0)
    result = simulate_reserved(requests, price("reserved"), 1)
    assert_latencies(result, [10.0, 19.0, 28.0], waits_s=27.0)
    assert (result.cold_starts, result.failures, result.reserved_gpus) == (0, 0, 1)


def test_reserved_queues_for_the_first_free_of_two_gpus() -> None:
    """Four 10 s requests a second apart on two GPUs: the third and fourth wait 8 s each."""
    result = simulate_reserved(trace([0.0, 1.0, 2.0, 3.0], [10.0] * 4, 100.0), price("reserved"), 2)
    assert_latencies(result, [10.0, 10.0, 18.0, 18.0], waits_s=16.0)


@pytest.mark.parametrize(("gpus", "gpu_count"), [(1, 1), (3, 1), (3, 2)])
def test_reserved_cost_is_gpus_times_window_times_the_hourly_rate(
    gpus: int, gpu_count: int
) -> None:
    """Reserved GPUs are paid for the whole window whatever they do: GPUs x hours x $2.69."""
    result = simulate_reserved(
        trace([0.0], [10.0], 7200.0, gpu_count=gpu_count), price("reserved"), gpus
    )
    assert result.cost_usd == pytest.approx(gpus * gpu_count * 2 * 2.69, rel=1e-12)
    assert result.paid_gpu_seconds == pytest.approx(gpus * gpu_count * 7200.0)


def test_reserved_utilisation_is_busy_over_paid() -> None:
    """30 s of work in a 100 s window on one GPU is 30% utilisation; on two GPUs 15%."""
    requests = trace([0.0, 50.0], [10.0, 20.0], 100.0)
    assert simulate_reserved(requests, price("reserved"), 1).utilisation == pytest.approx(0.3)
    assert simulate_reserved(requests, price("reserved"), 2).utilisation == pytest.approx(0.15)


def test_reserved_has_no_cold_starts_and_no_timeout() -> None:
    """A 2,000 s request (longer than any serverless timeout) runs to the end on a reserved GPU."""
    result = simulate_reserved(trace([0.0], [2000.0], 3000.0), price("reserved"), 1)
    assert (result.cold_starts, result.failures) == (0, 0)
    assert result.p50_s == pytest.approx(2000.0)


def test_reserved_refuses_zero_gpus() -> None:
    """Reserved needs at least one worker."""
    with pytest.raises(ValueError, match="at least 1"):
        simulate_reserved(trace([0.0], [1.0], 10.0), price("reserved"), 0)


# --- hybrid -------------------------------------------------------------------------------------


def test_hybrid_overflows_when_every_reserved_gpu_is_busy() -> None:
    """With max_wait_s 0 a request overflows when every reserved GPU is busy."""
    # max_wait_s 0: the second request would wait 5 s for the one reserved GPU, so it goes to RunPod
    # instead (cold, 12.5 s), paying the reserved window plus one RunPod request (start-up and
    # request one billing span of 12.5 s, rounded to 13 s).
    result = simulate_hybrid(trace([0.0, 5.0], [10.0, 10.0], 100.0), price("reserved"), 1, price())
    assert (result.overflow_requests, result.cold_starts) == (1, 1)
    assert_latencies(result, [10.0, 12.5], waits_s=2.5)
    expected = 100 * RESERVED_RATE + RUNPOD_FEE + 13 * RUNPOD_RATE
    assert result.cost_usd == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("max_wait_s", "overflow"), [(5.0, 0), (10.0, 0), (4.999, 1)])
def test_hybrid_lets_a_request_wait_up_to_max_wait(max_wait_s: float, overflow: int) -> None:
    """A request waits for a reserved GPU up to max_wait_s, and overflows past it."""
    # A request that would wait 5 s stays on the reserved GPU when 5 s is allowed (latency 15 s) and
    # overflows when it is not.
    result = simulate_hybrid(
        trace([0.0, 5.0], [10.0, 10.0], 100.0),
        price("reserved"),
        1,
        price(),
        max_wait_s=max_wait_s,
    )
    assert result.overflow_requests == overflow
    if overflow:
        assert_latencies(result, [10.0, 12.5], waits_s=2.5)
    else:
        assert_latencies(result, [10.0, 15.0], waits_s=5.0)
        assert result.cost_usd == pytest.approx(100 * RESERVED_RATE, rel=1e-12)


# --- the seed article's numbers -----------------------------------------------------------------


def seed_day() -> Trace:
    """The seed's scenario: 1,000 requests a day of 15 s each, evenly spaced (86.4 s apart, so no
    two overlap and every worker stays warm within a 900 s idle window)."""
    return trace([index * 86.4 for index in range(1000)], [15.0] * 1000, DAY_S)


@pytest.mark.parametrize(
    ("platform", "per_day_usd"),
    [("runpod", 253.60), ("replicate", 15.00), ("modal", 7.50), ("banana", 4.50)],
)
def test_the_seed_cost_table_compute_only(platform: str, per_day_usd: float) -> None:
    """The seed's cost table, compute only: $253.60, $15, $7.50 and $4.50 a day."""
    # Compute only (start-up billing and Banana's pre-warmed pool off, which the seed's table leaves
    # out): RunPod 1,000 x ($0.25 + 15 x $0.00024) = $253.60 a day (the seed rounds to $254),
    # Replicate 15,000 s x $0.001 = $15, Modal $7.50, Banana $4.50; one cold start a day.
    result = simulate_serverless(seed_day(), compute_only(platform))
    assert result.cost_usd == pytest.approx(per_day_usd, rel=1e-9)
    assert result.cost_per_request_usd == pytest.approx(per_day_usd / 1000, rel=1e-9)
    assert (result.requests, result.cold_starts, result.failures) == (1000, 1, 0)


def test_the_seed_reserved_gpu_costs_64_56_a_day() -> None:
    """One reserved H100 at the seed's $2.69/h costs $64.56 a day (not its $91)."""
    # One reserved H100 at the seed's own $2.69/h costs 24 x 2.69 = $64.56 a day, never queues at
    # 1,000 x 15 s, and is busy 15,000 / 86,400 = 17.4% of it. (The seed's table says $91/day, which
    # its $2.69/h does not give: that would be $3.79/h.)
    result = simulate_reserved(seed_day(), price("reserved"), 1)
    assert result.cost_usd == pytest.approx(64.56, rel=1e-12)
    assert result.p99_s == pytest.approx(15.0)
    assert result.utilisation == pytest.approx(15_000 / DAY_S)


@pytest.mark.parametrize("platform", ["runpod", "replicate"])
def test_simulation_agrees_with_break_even_at_the_crossover(platform: str) -> None:
    """At break-even's crossover rate, serverless costs one reserved GPU-day, within 1%."""
    # At the break-even module's first crossover rate (RunPod 254.57/day, Replicate 4,304/day,
    # 15 s, compute only), an evenly spaced day of that many requests costs within 1% of one
    # reserved GPU-day, and the simulated cost is exactly the per-request arithmetic.
    breakeven = pytest.importorskip("gpuledger.whatif._breakeven")
    serverless, reserved = compute_only(platform), price("reserved")
    crossover = breakeven.crossovers(serverless, reserved, 15.0).first_crossover_per_day
    assert crossover is not None
    count = round(crossover)
    day = trace([index * DAY_S / count for index in range(count)], [15.0] * count, DAY_S)

    simulated = simulate_serverless(day, serverless)
    reserved_day = breakeven.reserved_cost_per_day(reserved, 1)
    assert simulate_reserved(day, reserved, 1).cost_usd == pytest.approx(reserved_day, rel=1e-12)
    assert simulated.cost_usd == pytest.approx(reserved_day, rel=0.01)
    per_request = breakeven.serverless_cost_per_request(serverless, 15.0)
    assert simulated.cost_usd == pytest.approx(count * per_request, rel=1e-9)


# --- properties ---------------------------------------------------------------------------------

_SLOW = settings(max_examples=50, deadline=None)


@st.composite
def traces(draw: st.DrawFn, max_requests: int = 60) -> Trace:
    """Up to ``max_requests`` requests, 0 to 20 minutes apart (ties included), of 1 ms to 33
    minutes (some past RunPod's and Modal's timeouts), in a window ending up to an hour after."""
    count = draw(st.integers(0, max_requests))
    gaps = draw(
        st.lists(st.sampled_from([0.0, 0.5]) | st.floats(0, 1200), min_size=count, max_size=count)
    )
    services = draw(
        st.lists(st.floats(0.001, 60) | st.floats(60, 2000), min_size=count, max_size=count)
    )
    arrivals = list(itertools.accumulate(gaps))
    window = (arrivals[-1] if arrivals else 0.0) + draw(st.floats(0, 3600))
    return trace(arrivals, services, window)


@st.composite
def behaviours(draw: st.DrawFn, *, shared_pool: bool = True) -> Price:
    """A catalogue platform as shipped, or with its worker behaviour varied (a pre-warmed pool of
    shared workers only with ``shared_pool``)."""
    shipped = price(draw(st.sampled_from(SERVERLESS)))
    if draw(st.booleans()):
        return shipped
    pool = draw(st.integers(0, 2))
    limit = draw(st.none() | st.integers(1, 3))
    # The catalogue refuses a pool larger than the worker limit (the limit counts the pool).
    assume(limit is None or pool <= limit)
    concurrency = draw(st.integers(1, 3))
    assume(shared_pool or not (pool and concurrency > 1))
    return dataclasses.replace(
        shipped,
        concurrency=concurrency,
        max_workers=limit,
        prewarmed_workers=pool,
        bills_idle=draw(st.booleans()),
        bills_startup=draw(st.booleans()),
        billing_increment_s=draw(st.sampled_from([0.0, 0.25, 1.0])),
    )


def assert_sane(result: SimResult, requests: Trace, timeout_s: float | None) -> None:
    """Costs and counts are never negative or impossible, and each request takes at least its
    (timeout-capped) service: so every latency percentile is at least the same percentile of
    the service times."""
    assert result.requests == len(requests)
    assert result.cost_usd >= 0
    assert result.paid_gpu_seconds >= 0
    assert result.busy_gpu_seconds >= 0
    assert 0 <= result.cold_starts <= len(requests)
    assert 0 <= result.failures <= len(requests)
    if not len(requests):
        assert result.p50_s is None
        return
    cap = math.inf if timeout_s is None else timeout_s
    runs = [min(service, cap) for service in requests.services_s]
    assert result.mean_wait_s is not None
    assert result.mean_wait_s >= 0
    for fraction, value in ((0.50, result.p50_s), (0.95, result.p95_s), (0.99, result.p99_s)):
        assert value is not None
        assert value >= quantile(runs, fraction) - 1e-9


@_SLOW
@given(requests=traces(), rules=behaviours())
def test_serverless_results_are_never_negative_or_impossible(requests: Trace, rules: Price) -> None:
    """Serverless results are never negative or impossible, on every platform."""
    # Also, without a pool (whose requests may run past the window it is paid for), no more GPU
    # time busy than paid.
    result = simulate_serverless(requests, rules)
    assert_sane(result, requests, rules.timeout_s)
    if rules.prewarmed_workers == 0:
        assert result.busy_gpu_seconds <= result.paid_gpu_seconds * (1 + 1e-12) + 1e-9


@_SLOW
@given(requests=traces(), gpus=st.integers(1, 4))
def test_reserved_results_are_never_negative_or_impossible(requests: Trace, gpus: int) -> None:
    """Reserved: costs >= 0, no cold starts or failures, latencies >= service."""
    result = simulate_reserved(requests, price("reserved"), gpus)
    assert_sane(result, requests, None)
    assert (result.cold_starts, result.failures) == (0, 0)


@_SLOW
@given(
    requests=traces(),
    rules=behaviours(),
    gpus=st.integers(0, 3),
    max_wait_s=st.sampled_from([0.0, 5.0, 60.0]),
)
def test_hybrid_results_are_never_negative_or_impossible(
    requests: Trace, rules: Price, gpus: int, max_wait_s: float
) -> None:
    """Hybrid: the same bounds, with no more overflow than requests."""
    result = simulate_hybrid(requests, price("reserved"), gpus, rules, max_wait_s=max_wait_s)
    assert_sane(result, requests, rules.timeout_s)
    assert 0 <= result.overflow_requests <= len(requests)


@st.composite
def per_second_without_startup(draw: st.DrawFn) -> Price:
    """A catalogue platform with start-up billing off, one request per worker, no pool and no
    rounding, its worker limit and idle billing varied."""
    return price(
        draw(st.sampled_from(SERVERLESS)),
        bills_startup=False,
        prewarmed_workers=0,
        concurrency=1,
        max_workers=draw(st.none() | st.integers(1, 3)),
        bills_idle=draw(st.booleans()),
        billing_increment_s=0.0,
    )


@_SLOW
@given(
    base=traces(max_requests=30), extra=traces(max_requests=30), rules=per_second_without_startup()
)
def test_more_traffic_never_costs_less_without_start_up_billing(
    base: Trace, extra: Trace, rules: Price
) -> None:
    """More traffic never costs less without start-up billing (one slot a worker, no pool, no
    rounding)."""
    # Worker limit and idle billing vary; the counterexamples below need start-up billing, a
    # pool, shared workers or rounding (which is per billing span: an extra request that joins
    # two busy stretches into one has them rounded once).
    window = max(base.window_s, extra.window_s)
    # A stable sort on arrival alone: the base requests keep their order, ties included (the
    # order of simultaneous requests may change which worker each one gets).
    merged = sorted(
        itertools.chain(
            zip(base.arrivals_s, base.services_s, strict=True),
            zip(extra.arrivals_s, extra.services_s, strict=True),
        ),
        key=lambda request: request[0],
    )
    more = trace([arrival for arrival, _ in merged], [service for _, service in merged], window)
    fewer = trace(base.arrivals_s, base.services_s, window)
    more_cost = simulate_serverless(more, rules).cost_usd
    assert more_cost >= simulate_serverless(fewer, rules).cost_usd - 1e-12


def test_with_start_up_billing_more_traffic_can_cost_less() -> None:
    """With start-up billing an extra request can lower the cost: it saves a cold start."""
    # The "more traffic never costs less" does not hold where start-up is billed: Replicate
    # as shipped (10 s cold start billed, $0.001/s, 900 s idle window). Two 1 s requests 1,000 s
    # apart both start cold: 2 x (10 + 1) s = $0.022. A third 1 s request at 500 s keeps the worker
    # warm for the last one: 10 + 1 + 1 + 1 s = $0.013.
    replicate = price("replicate")
    fewer = trace([0.0, 1000.0], [1.0, 1.0], 2000.0)
    more = trace([0.0, 500.0, 1000.0], [1.0, 1.0, 1.0], 2000.0)
    assert simulate_serverless(fewer, replicate).cost_usd == pytest.approx(0.022, rel=1e-12)
    assert simulate_serverless(more, replicate).cost_usd == pytest.approx(0.013, rel=1e-12)
    assert simulate_serverless(more, replicate).cold_starts == 1


def test_with_a_prewarmed_pool_more_traffic_can_cost_less() -> None:
    """With a pre-warmed pool an extra request can lower the cost: it reshuffles the pool."""
    # The pool serves whoever comes first, so an extra request can move a long one onto it:
    # Replicate with a pool of 1, no start-up billing, unrounded. A (0.5 s, 2 s) takes the pool and
    # B (1 s, 3 s) pays 3 s; an extra X (0 s, 0.75 s) takes the pool first, A pays 2 s and B finds
    # the pool free again. 100 s of pool + 3 s = $0.103 becomes 100 s + 2 s = $0.102.
    pooled = compute_only("replicate", prewarmed_workers=1, billing_increment_s=0.0)
    fewer = trace([0.5, 1.0], [2.0, 3.0], 100.0)
    more = trace([0.0, 0.5, 1.0], [0.75, 2.0, 3.0], 100.0)
    assert simulate_serverless(fewer, pooled).cost_usd == pytest.approx(0.103, rel=1e-12)
    assert simulate_serverless(more, pooled).cost_usd == pytest.approx(0.102, rel=1e-12)


def test_with_rounding_more_traffic_can_cost_less() -> None:
    """With rounding an extra request can lower the cost: it joins two billing spans into one."""
    # Rounding is per billing span (a busy stretch, where idle time is not billed): Banana, one
    # worker allowed, no start-up billing, whole seconds. A (0 s, 0.2 s) runs 0.5 -> 0.7 s after
    # the 0.5 s cold start, B (0.8 s, 0.2 s) 0.8 -> 1.0 s: two spans of 0.2 s, billed 1 s each,
    # $0.0006. An extra X (0.1 s, 0.1 s) queues behind A and runs 0.7 -> 0.8 s: the worker is
    # busy 0.5 -> 1.0 s without a break, one span, billed 1 s: $0.0003.
    single = compute_only("banana", max_workers=1)
    fewer = trace([0.0, 0.8], [0.2, 0.2], 10.0)
    more = trace([0.0, 0.1, 0.8], [0.2, 0.1, 0.2], 10.0)
    assert simulate_serverless(fewer, single).cost_usd == pytest.approx(0.0006, rel=1e-12)
    assert simulate_serverless(more, single).cost_usd == pytest.approx(0.0003, rel=1e-12)


def test_with_shared_workers_more_traffic_can_cost_less() -> None:
    """With shared workers an extra request can lower the cost: the slots pack better."""
    # Requests fill workers' slots first come first served, so an extra request can pack the rest
    # better: Replicate, 2 slots, no start-up billing, unrounded. A (0 s, 1 s) and B (0.1 s, 2 s)
    # share worker 1, busy 10 -> 12 s; C (0.2 s, 2 s) starts worker 2, busy 10.2 -> 12.2 s: 4 s,
    # $0.004. An extra X (0.05 s, 1 s) fills worker 1 with A (10 -> 11 s) and B and C share worker 2
    # (10.1 -> 12.1 s): 3 s, $0.003.
    shared = compute_only("replicate", concurrency=2, billing_increment_s=0.0)
    fewer = trace([0.0, 0.1, 0.2], [1.0, 2.0, 2.0], 100.0)
    more = trace([0.0, 0.05, 0.1, 0.2], [1.0, 1.0, 2.0, 2.0], 100.0)
    assert simulate_serverless(fewer, shared).cost_usd == pytest.approx(0.004, rel=1e-9)
    assert simulate_serverless(more, shared).cost_usd == pytest.approx(0.003, rel=1e-9)


@_SLOW
@given(requests=traces(), rules=behaviours())
def test_hybrid_with_no_reserved_gpus_is_the_serverless_option(
    requests: Trace, rules: Price
) -> None:
    """Hybrid with no reserved GPUs is the serverless option."""
    # Everything goes to the serverless platform: same cost, cold starts, failures, percentiles.
    hybrid = simulate_hybrid(requests, price("reserved"), 0, rules)
    alone = simulate_serverless(requests, rules)
    assert hybrid.cost_usd == pytest.approx(alone.cost_usd, rel=1e-12, abs=1e-12)
    assert (hybrid.cold_starts, hybrid.failures) == (alone.cold_starts, alone.failures)
    assert (hybrid.p50_s, hybrid.p95_s, hybrid.p99_s) == (alone.p50_s, alone.p95_s, alone.p99_s)
    assert hybrid.overflow_requests == len(requests)


@_SLOW
@given(requests=traces(), platform=st.sampled_from(SERVERLESS), spare=st.integers(0, 2))
def test_hybrid_with_a_gpu_per_request_is_reserved(
    requests: Trace, platform: str, spare: int
) -> None:
    """Hybrid with a reserved GPU per request is reserved xN: nothing overflows."""
    # Same cost and latencies as reserved xN, with an overflow platform that has no pool (a pool
    # would be paid whether used or not).
    gpus = max(1, len(requests)) + spare
    reserved = price("reserved")
    hybrid = simulate_hybrid(requests, reserved, gpus, compute_only(platform))
    alone = simulate_reserved(requests, reserved, gpus)
    assert hybrid.overflow_requests == 0
    assert hybrid.cost_usd == pytest.approx(alone.cost_usd, rel=1e-12)
    assert (hybrid.p50_s, hybrid.p95_s, hybrid.p99_s) == (alone.p50_s, alone.p95_s, alone.p99_s)
    assert hybrid.mean_wait_s == alone.mean_wait_s


def split_at_a_silent_gap(first: Trace, second: Trace, rules: Price) -> tuple[Trace, Trace, Trace]:
    """``first`` then ``second`` in one trace, ``second`` shifted past a silence in which every
    worker of ``first`` finishes (even queued behind all its work and a cold start each) and
    outlives its idle window; and ``first`` alone with its window stretched to that gap."""
    idle_window = rules.idle_window_s or 0.0
    cold_start = rules.cold_start_s or 0.0
    last = first.arrivals_s[-1] if len(first) else 0.0
    gap_end = last + math.fsum(first.services_s) + cold_start * len(first) + idle_window + 1.0
    # A whole number of seconds: a pre-warmed worker lives across the gap, and its life is one
    # billing span rounded up to the increment (a whole second at most) only once in the whole
    # trace but once per part when split; from a whole second, rounding the first part adds
    # nothing.
    gap_end = float(math.ceil(max(gap_end, first.window_s)))
    whole = trace(
        [*first.arrivals_s, *(arrival + gap_end for arrival in second.arrivals_s)],
        [*first.services_s, *second.services_s],
        gap_end + second.window_s,
    )
    return whole, trace(first.arrivals_s, first.services_s, gap_end), second


@_SLOW
@given(
    first=traces(max_requests=30),
    second=traces(max_requests=30),
    rules=behaviours(),
)
def test_serverless_totals_add_up_across_a_silent_gap(
    first: Trace, second: Trace, rules: Price
) -> None:
    """Serverless totals add up across a silence longer than idle window and backlog."""
    # Cost, cold starts, failures, busy and paid seconds of the two windows add up to the whole's:
    # idle billing, pools and shared workers included, and pools of shared workers.
    whole, head, tail = split_at_a_silent_gap(first, second, rules)
    together = simulate_serverless(whole, rules)
    parts = [simulate_serverless(head, rules), simulate_serverless(tail, rules)]
    assert together.cost_usd == pytest.approx(sum(part.cost_usd for part in parts), rel=1e-9)
    assert together.cold_starts == sum(part.cold_starts for part in parts)
    assert together.failures == sum(part.failures for part in parts)
    busy = sum(part.busy_gpu_seconds for part in parts)
    assert together.busy_gpu_seconds == pytest.approx(busy, rel=1e-9)
    paid = sum(part.paid_gpu_seconds for part in parts)
    assert together.paid_gpu_seconds == pytest.approx(paid, rel=1e-9)


def test_shared_workers_pack_the_same_after_an_unrelated_request() -> None:
    """Shared workers pack the same after an unrelated request and a long silence."""
    # Banana with 2 slots, no start-up billing, unrounded: eight requests cost 4.5 GPU-seconds
    # alone, and the same 4.5 after one unrelated request and a 2,000 s silence (its worker long
    # gone). A request joins the lowest-numbered worker with a free slot; it used to join whichever
    # the set of such workers yielded first, which depended on its history (4.0 here).
    rules = compute_only("banana", concurrency=2, billing_increment_s=0.0)
    arrivals = [0.0] * 6 + [1.0, 1.5]
    services = [0.5, 0.5, 0.5, 0.5, 1.0, 2.0, 1.0, 1.0]
    alone = simulate_serverless(trace(arrivals, services, 10.0), rules)
    assert alone.paid_gpu_seconds == pytest.approx(4.5)
    after = trace([0.0, *(2000.0 + arrival for arrival in arrivals)], [0.5, *services], 2010.0)
    assert simulate_serverless(after, rules).paid_gpu_seconds == pytest.approx(0.5 + 4.5)


def test_a_pool_of_shared_workers_packs_the_same_after_a_silence() -> None:
    """A pool of shared workers packs the same after an unrelated request and a silence."""
    # A pool of 2 workers of 2 slots (the whole fleet), unrounded: five 2 s requests (three at 0 s,
    # two at 1 s) must keep the pool as busy after three unrelated requests and a 2,000 s silence as
    # alone. Idle pool workers used to be reused last-freed first, so after the silence the first
    # request went to another worker and the fifth extended a busy period (7 GPU-seconds, not 6).
    rules = plain(concurrency=2, max_workers=2, prewarmed_workers=2, bills_startup=False)
    first = ([0.0, 0.0, 1.0], [2.0, 2.0, 2.0])
    second = ([0.0, 0.0, 0.0, 1.0, 1.0], [2.0] * 5)
    alone = simulate_serverless(trace(*second, 10.0), rules).busy_gpu_seconds
    before = simulate_serverless(trace(*first, 2000.0), rules).busy_gpu_seconds
    after = trace(
        [*first[0], *(2000.0 + arrival for arrival in second[0])], first[1] + second[1], 2010.0
    )
    assert simulate_serverless(after, rules).busy_gpu_seconds == pytest.approx(before + alone)


@_SLOW
@given(first=traces(max_requests=30), second=traces(max_requests=30), gpus=st.integers(1, 3))
def test_reserved_totals_add_up_across_a_silent_gap(first: Trace, second: Trace, gpus: int) -> None:
    """Reserved cost is additive in the window's length, and busy time in its requests."""
    whole, head, tail = split_at_a_silent_gap(first, second, price("reserved"))
    reserved = price("reserved")
    together = simulate_reserved(whole, reserved, gpus)
    parts = [simulate_reserved(head, reserved, gpus), simulate_reserved(tail, reserved, gpus)]
    assert together.cost_usd == pytest.approx(sum(part.cost_usd for part in parts), rel=1e-9)
    busy = sum(part.busy_gpu_seconds for part in parts)
    assert together.busy_gpu_seconds == pytest.approx(busy, rel=1e-9)


@_SLOW
@given(
    requests=traces(max_requests=60),
    gpus=st.integers(1, 4),
    objective=st.floats(0.0, 200.0, allow_nan=False),
)
def test_reserved_meets_decides_exactly_as_the_full_replay(
    requests: Trace, gpus: int, objective: float
) -> None:
    """The search's yes/no probe agrees with the full replay's p95 against the objective."""
    from gpuledger.whatif._simulate import reserved_meets

    full = simulate_reserved(requests, price("reserved"), gpus)
    expected = full.p95_s is None or full.p95_s <= objective + 1e-9
    assert reserved_meets(requests, gpus, objective) == expected
    if full.p95_s is not None:
        # On the objective itself, and just below it, the two still agree.
        assert reserved_meets(requests, gpus, full.p95_s)
        assert not reserved_meets(requests, gpus, full.p95_s - 1e-6) or full.p95_s - 1e-6 < 0
