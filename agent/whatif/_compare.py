"""``compare``: every option for one trace, the reserved/hybrid sizes worth looking at, and a
recommendation in words drawn from the numbers.

The options: each serverless platform the catalogue prices for the trace's GPU; reserved GPUs at
the smallest count that carries the load (the cheapest reserved option) and at the smallest count
that meets the latency objective; hybrid (reserved + serverless overflow) at the count that is
cheapest overall and the cheapest that meets the objective. Everything is replayed through
:mod:`gpuledger.whatif._simulate`; nothing is estimated from averages.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from gpuledger.whatif._simulate import (
    SimResult,
    reserved_meets,
    simulate_hybrid,
    simulate_reserved,
    simulate_serverless,
)
from gpuledger.whatif._workers import optional_numpy

if TYPE_CHECKING:
    from gpuledger._pricing import Catalogue, Price
    from gpuledger.whatif._traffic import Burstiness, Trace

__all__ = [
    "MIN_REQUESTS",
    "MIN_WINDOW_S",
    "RESERVED_PLATFORM",
    "Comparison",
    "compare",
    "meets",
]

RESERVED_PLATFORM: Final = "reserved"
MIN_REQUESTS: Final = 100
"""Fewer requests than this are too few to recommend from: a p95 would rest on fewer than five
of them, and a handful of cold starts would decide the ranking."""
MIN_WINDOW_S: Final = 86_400.0
"""A trace shorter than a day (seconds) is too short to recommend from: idle windows,
scale-to-zero and pre-warmed pools are paid over a day's cycle of traffic, and a few busy hours
make reserved GPUs look busier than they would be around the clock."""
_MAX_RESERVED: Final = 4096
_HYBRID_EXHAUSTIVE: Final = 16
"""Up to this many reserved workers every hybrid size is replayed; above it, powers of two."""


@dataclasses.dataclass(frozen=True)
class Comparison:
    """All options over one trace, best first, and what they mean."""

    results: list[SimResult]
    recommendation: str
    best: SimResult | None
    runner_up: SimResult | None
    slo_p95_s: float | None
    burstiness: Burstiness
    gpu: str
    source: str
    notes: list[str]
    warning: str | None = None
    """Why the trace is too short to recommend from (:data:`MIN_REQUESTS`, :data:`MIN_WINDOW_S`),
    or None when it is long enough or empty."""


def meets(result: SimResult, slo_p95_s: float | None) -> bool:
    if result.failures:
        return False
    return slo_p95_s is None or (result.p95_s is not None and result.p95_s <= slo_p95_s + 1e-9)


def compare(
    trace: Trace,
    catalogue: Catalogue,
    *,
    gpu: str | None = None,
    platforms: Sequence[str] | None = None,
    slo_p95_s: float | None = None,
    overflow: str | None = None,
    hybrid_max_wait_s: float = 0.0,
    progress: Callable[[str], None] | None = None,
    processes: int = 1,
) -> Comparison:
    """Replay ``trace`` through every option and recommend one.

    ``platforms`` limits the serverless platforms (default: every one priced for the GPU);
    ``overflow`` is hybrid's serverless platform (default: the cheapest serverless option that
    meets the objective, else the cheapest). ``processes`` > 1 replays options in that many
    processes for traces of 200,000 requests or more (they are started with "spawn", so a
    calling script needs the ``if __name__ == "__main__":`` guard; the CLI has it).
    Raises ValueError for an unknown platform or a GPU the catalogue does not price.
    """
    from gpuledger.whatif._traffic import burstiness  # noqa: PLC0415

    model = gpu or trace.gpu
    if model is None:
        raise ValueError("the trace has no GPU model: pass --gpu (e.g. H100)")
    say = progress or (lambda step: None)
    notes: list[str] = []
    serverless_prices, reserved_price = _prices(catalogue, model, platforms)
    if trace.init_s is not None and serverless_prices:
        # Recorded traffic: a cold start takes what the ledger measured (the workers' own init,
        # process start to ready), not the catalogue's typical start of each platform.
        typical = ", ".join(
            f"{price.platform} {price.cold_start_s:g} s"
            for price in serverless_prices
            if price.cold_start_s is not None
        )
        serverless_prices = [
            dataclasses.replace(price, cold_start_s=trace.init_s) for price in serverless_prices
        ]
        notes.append(
            f"cold starts take the ledger's measured init, {trace.init_s:.2f} s (the median of "
            f"its cold requests), on every serverless platform, not the catalogue's typical "
            f"({typical})"
        )

    with _Runner(trace, processes) as runner:
        say("serverless")
        results = runner.map(simulate_serverless, [(price,) for price in serverless_prices])
        serverless_results = {result.option: result for result in results}
        if reserved_price is not None and len(trace):
            say("reserved")
            reserved = _reserved_options(trace, reserved_price, slo_p95_s, notes, runner)
            results.extend(reserved)
            overflow_price = _overflow_price(
                serverless_prices, serverless_results, overflow, slo_p95_s
            )
            if overflow_price is not None:
                say("hybrid")
                largest = max(result.reserved_gpus for result in reserved)
                results.extend(
                    _hybrid_options(
                        runner,
                        reserved_price,
                        overflow_price,
                        largest,
                        slo_p95_s,
                        hybrid_max_wait_s,
                    )
                )
        elif reserved_price is None:
            notes.append(f"no reserved price for {model}: reserved and hybrid options left out")

    results = _dedupe(results)
    results.sort(key=lambda result: (not meets(result, slo_p95_s), result.cost_usd))
    shape = burstiness(trace)
    best = results[0] if results and meets(results[0], slo_p95_s) else None
    runner_up = next(
        (result for result in results[1:] if best is not None and meets(result, slo_p95_s)),
        None,
    )
    return Comparison(
        results=results,
        recommendation=_recommend(results, best, runner_up, slo_p95_s, shape),
        best=best,
        runner_up=runner_up,
        slo_p95_s=slo_p95_s,
        burstiness=shape,
        gpu=model,
        source=trace.source,
        notes=notes,
        warning=_too_short(shape),
    )


def _prices(
    catalogue: Catalogue, gpu: str, platforms: Sequence[str] | None
) -> tuple[list[Price], Price | None]:
    known = catalogue.platforms()
    wanted = list(platforms) if platforms else [name for name in known if name != RESERVED_PLATFORM]
    serverless: list[Price] = []
    for name in wanted:
        if name not in known:
            raise ValueError(f"unknown platform {name!r}; the catalogue has {', '.join(known)}")
        if name == RESERVED_PLATFORM:
            continue
        price = catalogue.lookup(name, gpu)
        if price is None:
            if platforms:
                raise ValueError(f"the catalogue has no {name} price for GPU {gpu!r}")
            continue
        serverless.append(price)
    if not serverless and not catalogue.lookup(RESERVED_PLATFORM, gpu):
        raise ValueError(f"the catalogue prices no platform for GPU {gpu!r}")
    return serverless, catalogue.lookup(RESERVED_PLATFORM, gpu)


def _reserved_options(
    trace: Trace, price: Price, slo_p95_s: float | None, notes: list[str], runner: _Runner
) -> list[SimResult]:
    busy = math.fsum(trace.services_s)
    # Fewer workers than the load needs on average can never drain the queue.
    smallest = max(1, math.ceil(busy / trace.window_s - 1e-9)) if trace.window_s > 0 else 1
    cheapest = simulate_reserved(trace, price, smallest)
    options = [cheapest]
    if slo_p95_s is None or meets(cheapest, slo_p95_s):
        return options
    # A latency is at least its service time, so no option's p95 is below the services' own:
    # when that is over the objective, no size can meet it and searching would only replay.
    floor = _p95(trace.services_s)
    if floor > slo_p95_s + 1e-9:
        notes.append(
            f"no option can meet p95 <= {slo_p95_s:g} s: the service times alone have a p95 of "
            f"{floor:.2f} s"
        )
        return options
    # The search only needs yes/no per size (reserved_meets, which stops early); the size it
    # settles on is then replayed in full for its row.
    gpus = _smallest_meeting(lambda size: reserved_meets(trace, size, slo_p95_s), smallest + 1)
    if gpus is None:
        notes.append(f"no reserved size up to {_MAX_RESERVED} meets p95 <= {slo_p95_s:g} s")
    else:
        options.append(runner.map(simulate_reserved, [(price, gpus)])[0])
    return options


def _p95(values: Sequence[float]) -> float:
    """The 95th percentile of ``values`` (:func:`quantile`'s rule): with numpy, its two ranks
    selected (``partition``) rather than every value sorted, the same number."""
    from gpuledger.whatif._simulate import quantile  # noqa: PLC0415

    count = len(values)
    if not count:
        return 0.0
    numpy = optional_numpy()
    if numpy is None:
        return quantile(sorted(values), 0.95)
    low = math.floor((count - 1) * 0.95)
    # Ranks low and low + 1 in place, which is all quantile() reads.
    ranked = numpy.partition(
        numpy.asarray(values, dtype=numpy.float64), [low, min(low + 1, count - 1)]
    )
    return float(quantile(ranked, 0.95))


def _smallest_meeting(meets: Callable[[int], bool], low: int) -> int | None:
    """The smallest worker count from ``low`` that ``meets`` the objective (p95 never rises with
    more FIFO workers, so: double to bracket, then bisect); None up to the cap."""
    high = low
    while not meets(high):
        if high >= _MAX_RESERVED:
            return None
        low, high = high + 1, min(high * 2, _MAX_RESERVED)
    while low < high:
        middle = (low + high) // 2
        if meets(middle):
            high = middle
        else:
            low = middle + 1
    return high


def _overflow_price(
    prices: Sequence[Price],
    results: dict[str, SimResult],
    overflow: str | None,
    slo_p95_s: float | None,
) -> Price | None:
    if not prices:
        return None
    by_name = {price.platform: price for price in prices}
    if overflow is not None:
        if overflow not in by_name:
            raise ValueError(
                f"overflow platform {overflow!r} is not among the serverless options "
                f"({', '.join(by_name)})"
            )
        return by_name[overflow]
    ranked = sorted(
        results.values(), key=lambda result: (not meets(result, slo_p95_s), result.cost_usd)
    )
    return by_name[ranked[0].option]


def _hybrid_options(
    runner: _Runner,
    reserved: Price,
    overflow: Price,
    largest: int,
    slo_p95_s: float | None,
    max_wait_s: float,
) -> list[SimResult]:
    """Hybrids from 1 reserved worker up to the largest reserved option: the cheapest, and the
    cheapest meeting the objective."""
    if largest <= _HYBRID_EXHAUSTIVE:
        sizes = list(range(1, largest + 1))
    else:
        # Doubling sizes: the cheapest hybrid is often a small reserved baseline.
        sizes = sorted({*(2**power for power in range(largest.bit_length())), largest})
    # Sizes in ascending order, a batch (one per process) at a time. A size whose reserved part
    # alone costs more than the cheapest hybrid found, and more than the cheapest found that
    # meets the objective, can be neither: it, and every larger size, is skipped.
    per_worker = runner.trace.window_s * runner.trace.gpu_count * reserved.per_gpu_second_usd
    # With no waiting, the overflow's part has a floor too (what it must serve, at its rate).
    floor = _overflow_floor_usd(runner.trace, sizes, overflow) if max_wait_s == 0.0 else {}
    runs: list[SimResult] = []
    for offset in range(0, len(sizes), runner.processes):
        batch = sizes[offset : offset + runner.processes]
        if runs:
            cheapest_cost = min(result.cost_usd for result in runs)
            meeting_costs = [result.cost_usd for result in runs if meets(result, slo_p95_s)]
            bound = max(cheapest_cost, min(meeting_costs) if meeting_costs else math.inf)
            batch = [gpus for gpus in batch if gpus * per_worker + floor.get(gpus, 0.0) < bound]
            if not batch:
                break
        runs.extend(runner.map(_hybrid, [(reserved, gpus, overflow, max_wait_s) for gpus in batch]))
    cheapest = min(runs, key=lambda result: result.cost_usd)
    chosen = [cheapest]
    meeting = [result for result in runs if meets(result, slo_p95_s)]
    if meeting:
        chosen.append(min(meeting, key=lambda result: result.cost_usd))
    return chosen


def _overflow_floor_usd(trace: Trace, sizes: Sequence[int], overflow: Price) -> dict[int, float]:
    """For each hybrid size, the least its overflow can cost when no request waits (empty
    without numpy: no floor, the same results). With no waiting every request runs from its
    arrival, on a reserved GPU or the overflow, so at each instant the reserved workers run at
    most ``gpus`` of the requests then in service and the overflow the rest: it serves at least
    the integral of ``max(0, in_service(t) - gpus)``, and no per-second platform bills a
    worker less than its busy time (a worker running ``concurrency`` requests at once, that
    over ``concurrency``). Fees, cold starts, idle time and rounding only add to it."""
    numpy = optional_numpy()
    if numpy is None or not len(trace) or overflow.kind == "reserved":
        return {}
    arrivals = numpy.asarray(trace.arrivals_s, dtype=numpy.float64)
    ends = arrivals + numpy.asarray(trace.services_s, dtype=numpy.float64)
    instants = numpy.concatenate((arrivals, ends))
    order = numpy.argsort(instants, kind="stable")
    steps = numpy.concatenate((numpy.ones(len(arrivals)), -numpy.ones(len(ends))))[order]
    in_service = numpy.cumsum(steps)[:-1]
    lasting = numpy.diff(instants[order])
    usd_per_s = trace.gpu_count * overflow.per_gpu_second_usd / max(1, overflow.concurrency)
    return {
        gpus: float(numpy.dot(numpy.maximum(in_service - gpus, 0.0), lasting)) * usd_per_s
        for gpus in sizes
    }


_PARALLEL_FROM: Final = 200_000
"""Traces this long are replayed in several processes (smaller ones are done before a process
pool would have started)."""


def _hybrid(trace: Trace, reserved: Price, gpus: int, overflow: Price, wait: float) -> SimResult:
    return simulate_hybrid(trace, reserved, gpus, overflow, max_wait_s=wait)


_worker_trace: Trace | None = None


def _set_worker_trace(trace: Trace) -> None:
    global _worker_trace
    _worker_trace = trace


def _call_with_trace(job: tuple[Callable[..., SimResult], tuple[object, ...]]) -> SimResult:
    function, arguments = job
    assert _worker_trace is not None
    return function(_worker_trace, *arguments)


class _Runner:
    """Runs simulations of one trace: here, or in a pool of processes that received the trace
    once (the simulations are pure, so the results are the same either way)."""

    def __init__(self, trace: Trace, processes: int) -> None:
        self.trace = trace
        self.processes = max(1, processes) if len(trace) >= _PARALLEL_FROM else 1
        self.pool: Any = None

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def map(
        self, function: Callable[..., SimResult], argument_lists: Sequence[tuple[Any, ...]]
    ) -> list[SimResult]:
        """``function(trace, *arguments)`` for each argument tuple, in order."""
        if self.processes == 1 or len(argument_lists) < 2:
            return [function(self.trace, *arguments) for arguments in argument_lists]
        if self.pool is None:
            import concurrent.futures  # noqa: PLC0415
            import multiprocessing  # noqa: PLC0415

            # "spawn": the parent may hold threads (gpuledger's own writer), which fork copies
            # mid-lock; spawned workers start clean and get the trace once.
            self.pool = concurrent.futures.ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_set_worker_trace,
                initargs=(self.trace,),
            )
        return list(self.pool.map(_call_with_trace, [(function, args) for args in argument_lists]))


def _dedupe(results: list[SimResult]) -> list[SimResult]:
    seen: set[str] = set()
    unique = []
    for result in results:
        if result.option not in seen:
            seen.add(result.option)
            unique.append(result)
    return unique


def _money(value: float) -> str:
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.4f}"


def _recommend(
    results: list[SimResult],
    best: SimResult | None,
    runner_up: SimResult | None,
    slo_p95_s: float | None,
    shape: Burstiness,
) -> str:
    if not results or shape.requests == 0:
        return "No invocations to replay: nothing to recommend."
    objective = f"p95 <= {slo_p95_s:g} s" if slo_p95_s is not None else "no latency objective"
    traffic = (
        f"The traffic is {shape.label}: {shape.requests:,} requests over "
        f"{shape.window_s / 3600:.1f} h, peak-to-mean {shape.peak_to_mean:.1f}, "
        f"idle {shape.idle_share:.0%} of the time, inter-arrival variation (CV) "
        f"{shape.interarrival_cv:.2f}."
    )
    if best is None:
        fastest = min(results, key=lambda result: result.p95_s or math.inf)
        return (
            f"No option meets {objective}. The fastest is {fastest.option} (p95 "
            f"{fastest.p95_s:.2f} s, {_money(fastest.cost_usd)}). {traffic}"
        )
    lines = [
        f"Recommended: {best.option}, {_money(best.cost_usd)} for this traffic "
        f"({_money(best.cost_per_request_usd or 0)} a request, p95 {best.p95_s:.2f} s, "
        f"{best.cold_starts:,} cold starts), the cheapest option that meets {objective}."
    ]
    if runner_up is not None:
        margin = runner_up.cost_usd - best.cost_usd
        share = margin / runner_up.cost_usd if runner_up.cost_usd else 0.0
        lines.append(
            f"Runner-up: {runner_up.option} at {_money(runner_up.cost_usd)}, "
            f"{_money(margin)} ({share:.0%}) more."
        )
    lines.append(traffic)
    lines.append(_why(best, shape, results))
    return " ".join(lines)


def _too_short(shape: Burstiness) -> str | None:
    """Why a recommendation from this trace would not hold, or None when it is long enough."""
    if shape.requests == 0:
        return None  # nothing is recommended
    reasons = []
    if shape.window_s < MIN_WINDOW_S - 1e-6:
        reasons.append(
            "idle windows, scale-to-zero and pre-warmed pools only show what they cost over a "
            "day's cycle of traffic (a few busy hours make reserved GPUs look busier than they "
            "are around the clock)"
        )
    if shape.requests < MIN_REQUESTS:
        reasons.append(
            f"with fewer than {MIN_REQUESTS} requests the p95 rests on fewer than five of them, "
            "and a handful of cold starts decides the ranking"
        )
    if not reasons:
        return None
    why = "; and ".join(reasons)
    return (
        f"the trace is too short to recommend from: {shape.requests:,} requests over "
        f"{_span(shape.window_s)}; judge from at least {MIN_REQUESTS} requests over at least "
        f"{MIN_WINDOW_S / 3600:g} hours. {why[0].upper()}{why[1:]}."
    )


def _span(seconds: float) -> str:
    """A time span in the unit people read it in: minutes, hours or days."""
    if seconds < 3600:
        return f"{seconds / 60:.1f} minutes"
    if seconds < 2 * 86_400:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86_400:.1f} days"


def _why(best: SimResult, shape: Burstiness, results: list[SimResult]) -> str:
    if best.kind == "serverless":
        reserved = [result for result in results if result.kind == "reserved"]
        if not reserved:
            return "Serverless wins: it pays only for the seconds the GPU works."
        cheapest = min(reserved, key=lambda result: result.cost_usd)
        per_busy_hour = best.cost_usd / best.busy_gpu_seconds * 3600 if best.busy_gpu_seconds else 0
        reserved_hour = (
            cheapest.cost_usd / cheapest.paid_gpu_seconds * 3600 if cheapest.paid_gpu_seconds else 0
        )
        if per_busy_hour < reserved_hour:
            return (
                f"Serverless wins even against fully used reserved GPUs: {best.option} costs "
                f"{_money(per_busy_hour)} per busy GPU-hour, all overheads included, against "
                f"{_money(reserved_hour)} per reserved GPU-hour."
            )
        return (
            f"Serverless wins because reserved capacity is paid for idle time too: the cheapest "
            f"reserved option ({cheapest.option}, {_money(cheapest.cost_usd)}) would be busy "
            f"{(cheapest.utilisation or 0):.0%} of what it costs."
        )
    if best.kind == "reserved":
        return (
            "Reserved wins because the load is steady enough to keep paid GPUs busy "
            f"({(best.utilisation or 0):.0%} utilised), which beats paying per request."
        )
    return (
        f"Hybrid wins: {best.reserved_gpus} reserved worker(s) carry the baseline at the reserved "
        f"rate and {best.overflow_requests:,} requests of the peaks overflow to serverless "
        "instead of paying for reserved capacity that would idle between peaks."
    )
