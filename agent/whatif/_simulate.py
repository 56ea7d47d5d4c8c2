"""What the same traffic would have cost, and how slow it would have been, on each platform.

Pure functions over a :class:`~gpuledger.whatif._traffic.Trace` and catalogue prices. Three worker
models, all first-come first-served:

* **serverless** — workers start on demand: a request that finds no warm worker starts one and
  waits its cold start (billed where the platform bills start-up). A worker serves up to its
  ``concurrency``, stays warm for the ``idle_window_s`` after its last request, then scales to
  zero; a ``prewarmed_workers`` pool never does, and is paid for the whole window. With
  ``max_workers`` reached, requests queue for the first worker to free up. A request longer than
  the platform's ``timeout_s`` is stopped there and counted as a failure (its time is billed).
* **reserved** — N GPUs paid for the whole window, whatever they do; requests queue FIFO.
* **hybrid** — N reserved GPUs take what they can; a request that would wait longer than
  ``max_wait_s`` (default: any wait at all) overflows to a serverless platform.

Latency is queueing + cold start + service. Costs use the catalogue's billing rules: execution
fee, per-GPU-second rate with billing increment and minimum, start-up and idle billing flags.
Concurrency > 1 bills a worker's busy wall time (the union of its requests), since that is what
the GPU is held for; each request's own service time is taken as recorded (optimistic: sharing a
GPU usually slows each request down).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from array import array
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from gpuledger._pricing import Price
    from gpuledger.whatif._traffic import Trace

__all__ = [
    "SimResult",
    "reserved_meets",
    "simulate_hybrid",
    "simulate_reserved",
    "simulate_serverless",
]

_SLACK: Final = 1e-9


@dataclasses.dataclass(frozen=True, slots=True)
class SimResult:
    """One option's outcome over a trace (US dollars, seconds)."""

    option: str
    """``runpod``, ``reserved x3``, ``hybrid 2 x reserved + modal``, ..."""
    kind: str
    """``serverless``, ``reserved`` or ``hybrid``."""
    requests: int
    cost_usd: float
    cost_per_request_usd: float | None
    cost_per_1k_tokens_usd: float | None
    cold_starts: int
    failures: int
    """Requests stopped by the platform's timeout."""
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    mean_wait_s: float | None
    """Queueing + cold start, averaged over requests."""
    paid_gpu_seconds: float
    busy_gpu_seconds: float
    utilisation: float | None
    """Busy over paid GPU seconds: how much of what was paid for did work."""
    reserved_gpus: int = 0
    overflow_requests: int = 0
    """Hybrid: requests served by the serverless platform."""


class _Latencies:
    """Latencies of one run, kept compactly, with exact percentiles."""

    __slots__ = ("values", "waits")

    def __init__(self) -> None:
        self.values = array("d")
        self.waits = 0.0

    def summary(self) -> tuple[float | None, float | None, float | None, float | None]:
        count = len(self.values)
        if not count:
            return None, None, None, None
        try:
            import numpy  # noqa: PLC0415  (optional: six times faster on a million latencies)
        except ImportError:
            pass
        else:
            latencies = numpy.frombuffer(self.values, dtype=numpy.float64)
            p50, p95, p99 = (float(value) for value in numpy.percentile(latencies, [50, 95, 99]))
            return p50, p95, p99, self.waits / count
        ordered = sorted(self.values)
        return (
            quantile(ordered, 0.50),
            quantile(ordered, 0.95),
            quantile(ordered, 0.99),
            self.waits / count,
        )


def quantile(ordered: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, "linear")."""
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _billed_seconds(price: Price, seconds: float) -> float:
    """Per-GPU seconds billed for ``seconds`` of wall time under ``price``'s rounding rules."""
    increment = price.billing_increment_s
    if increment > 0:
        seconds = math.ceil(seconds / increment - _SLACK) * increment
    return max(seconds, price.minimum_billed_s)


class _Serverless:
    """One serverless platform's workers, fed requests in arrival order."""

    def __init__(self, price: Price, gpu_count: int) -> None:
        if price.cold_start_s is None:
            raise ValueError(
                f"platform {price.platform!r} has no cold_start_s in the catalogue: the "
                "simulator needs it (add it to your pricing file)"
            )
        self.price = price
        self.gpus = gpu_count
        self.cold_start_s = price.cold_start_s
        self.idle_window_s = math.inf if price.idle_window_s is None else price.idle_window_s
        self.timeout_s = math.inf if price.timeout_s is None else price.timeout_s
        self.concurrency = max(1, price.concurrency)
        self.max_workers = price.max_workers
        self.latencies = _Latencies()
        self.cold_starts = self.failures = self.requests = 0
        self.billed_request_seconds = 0.0  # per-GPU seconds billed for requests (rounded)
        self.billed_startup_seconds = 0.0
        self.billed_idle_seconds = 0.0
        self.busy_seconds = 0.0
        self.billed_request_seconds = 0.0
        # Concurrency 1: heaps and stacks of plain floats (the common case, kept fast).
        self.busy: list[float] = []  # end times of busy workers (heap)
        self.idle: deque[float] = deque()  # free-since times of warm idle workers, ascending
        self.prewarmed_busy: list[float] = []  # end times of busy pre-warmed workers (heap)
        self.prewarmed = price.prewarmed_workers
        # Concurrency > 1: per-worker state [active, busy_since, free_since].
        self.workers_busy: list[tuple[float, int]] = []  # (end, worker index) heap
        self.worker_state: list[list[float]] = []
        self.partial: set[int] = set()  # workers with a free slot and at least one request
        self.idle_workers: deque[int] = deque()
        self.live_workers = 0
        # The pre-warmed pool under concurrency > 1: workers that never scale down, paid as a
        # whole for the window (so neither their requests nor their idle time is billed again).
        self.pinned = set(range(self.prewarmed)) if self.concurrency > 1 else set()
        # A heap: the lowest-numbered idle pool worker first, like partly used workers below,
        # so the packing never depends on the order workers were last freed in.
        self.pinned_idle: list[int] = sorted(self.pinned)
        if self.pinned:
            self.worker_state = [[0.0, 0.0, 0.0] for _ in self.pinned]
            self.live_workers = len(self.pinned)

    # -- the replay ---------------------------------------------------------------------------

    def run(self, arrivals: Sequence[float], services: Sequence[float]) -> None:
        """Serve requests arriving at ``arrivals`` (ascending) needing ``services`` seconds."""
        if self.concurrency > 1:
            for arrival, service in zip(arrivals, services, strict=True):
                self._serve_shared(arrival, service)
            return
        # Concurrency 1, the common case, kept to plain floats in locals: this loop is what a
        # replay of a million requests spends its time in.
        heappush, heappop = heapq.heappush, heapq.heappop
        busy, idle, pool_busy = self.busy, self.idle, self.prewarmed_busy
        pool = self.prewarmed
        window, timeout, cold = self.idle_window_s, self.timeout_s, self.cold_start_s
        # max_workers counts the pre-warmed pool too.
        on_demand = math.inf if self.max_workers is None else self.max_workers - pool
        increment = self.price.billing_increment_s
        minimum = self.price.minimum_billed_s
        ceil = math.ceil
        record = self.latencies.values.append
        waits = idle_s = billed_s = busy_s = 0.0
        cold_starts = failures = 0
        for arrival, service in zip(arrivals, services, strict=True):
            if pool:
                while pool_busy and pool_busy[0] <= arrival:
                    heappop(pool_busy)
            while busy and busy[0] <= arrival:
                idle.append(heappop(busy))
            if idle:
                horizon = arrival - window
                while idle and idle[0] < horizon:
                    idle.popleft()
                    idle_s += window
            if service > timeout:
                run = timeout
                failures += 1
            else:
                run = service
            busy_s += run
            if pool and len(pool_busy) < pool:
                # The pre-warmed pool is paid as a whole: nothing more to bill for this one.
                heappush(pool_busy, arrival + run)
                record(run)
                continue
            if idle:
                idle_s += arrival - idle.pop()
                wait = 0.0
                heappush(busy, arrival + run)
            elif len(busy) < on_demand:
                cold_starts += 1
                wait = cold
                heappush(busy, arrival + cold + run)
            elif busy and not (pool_busy and pool_busy[0] < busy[0]):
                # Every worker busy and no more allowed: wait for the first to finish (warm).
                free = heappop(busy)
                start = free if free > arrival else arrival
                wait = start - arrival
                heappush(busy, start + run)
            else:
                # ... and the first to finish is a pre-warmed one (paid as a whole).
                free = heappop(pool_busy)
                start = free if free > arrival else arrival
                heappush(pool_busy, start + run)
                waits += start - arrival
                record(start - arrival + run)
                continue
            waits += wait
            record(wait + run)
            billed = ceil(run / increment - _SLACK) * increment if increment > 0 else run
            billed_s += billed if billed > minimum else minimum
        self.requests += len(arrivals)
        self.cold_starts += cold_starts
        self.failures += failures
        self.latencies.waits += waits
        self.billed_idle_seconds += idle_s
        self.billed_request_seconds += billed_s
        self.billed_startup_seconds += cold_starts * cold
        self.busy_seconds += busy_s

    # -- concurrency > 1 ----------------------------------------------------------------------

    def _serve_shared(self, arrival: float, service: float) -> None:
        self.requests += 1
        state = self.worker_state
        heap = self.workers_busy
        while heap and heap[0][0] <= arrival:
            end, index = heapq.heappop(heap)
            self._release(index, end)
        horizon = arrival - self.idle_window_s
        idle = self.idle_workers
        while idle and state[idle[0]][2] < horizon:
            idle.popleft()
            self.live_workers -= 1
            self.billed_idle_seconds += self.idle_window_s
        run = service if service <= self.timeout_s else self.timeout_s
        wait = 0.0
        if self.partial:
            # The lowest-numbered worker with a free slot: deterministic, whatever came before.
            index = min(self.partial)
            # The worker may still be starting: a request joining it waits for that too.
            busy_since = state[index][1]
            start = busy_since if busy_since > arrival else arrival
            wait = start - arrival
        elif self.pinned_idle:
            index = heapq.heappop(self.pinned_idle)
            start = arrival
        elif idle:
            index = idle.pop()
            self.billed_idle_seconds += arrival - state[index][2]
            start = arrival
        elif self.max_workers is None or self.live_workers < self.max_workers:
            self.cold_starts += 1
            self.live_workers += 1
            wait = self.cold_start_s
            self.billed_startup_seconds += wait
            start = arrival + wait
            index = len(state)
            state.append([0.0, start, start])
        else:
            end, index = heapq.heappop(heap)
            self._release(index, end)
            start = end if end > arrival else arrival
            wait = start - arrival
        worker = state[index]
        if worker[0] == 0:
            worker[1] = start
        worker[0] += 1
        if worker[0] < self.concurrency:
            self.partial.add(index)
        else:
            self.partial.discard(index)
        heapq.heappush(heap, (start + run, index))
        if service > self.timeout_s:
            self.failures += 1
        self.latencies.values.append(wait + run)
        self.latencies.waits += wait

    def _release(self, index: int, end: float) -> None:
        worker = self.worker_state[index]
        worker[0] -= 1
        if worker[0] == 0:
            worker[2] = end
            # A shared worker's GPU is busy for the union of its requests, not their sum.
            self.busy_seconds += end - worker[1]
            self.partial.discard(index)
            if index in self.pinned:
                heapq.heappush(self.pinned_idle, index)
                return
            # The worker's busy period ends: bill its wall time, once for all its requests.
            self.billed_request_seconds += _billed_seconds(self.price, end - worker[1])
            self.idle_workers.append(index)
        else:
            self.partial.add(index)

    # -- totals -------------------------------------------------------------------------------

    def finish(self, window_end: float) -> None:
        """Close the window: busy workers finish, then idle ones stay warm (billed where the
        platform bills idle time) until they scale down or the window ends."""
        heap = self.workers_busy
        while heap:
            end, index = heapq.heappop(heap)
            self._release(index, end)
        free_since = [*self.busy, *self.idle]
        free_since += [self.worker_state[index][2] for index in self.idle_workers]
        for free in free_since:
            self.billed_idle_seconds += min(self.idle_window_s, max(0.0, window_end - free))

    def cost(self, window_s: float) -> tuple[float, float]:
        """(total cost, paid per-GPU seconds) of everything served."""
        price = self.price
        paid = self.billed_request_seconds
        if price.bills_startup:
            paid += self.billed_startup_seconds
        if price.bills_idle:
            paid += self.billed_idle_seconds
        paid += self.prewarmed * window_s
        # The execution fee is per execution, whichever worker ran it.
        cost = paid * self.gpus * price.per_gpu_second_usd + self.requests * price.execution_fee_usd
        return cost, paid * self.gpus


def _result(
    option: str,
    kind: str,
    trace: Trace,
    cost: float,
    paid_gpu_seconds: float,
    busy_gpu_seconds: float,
    latencies: _Latencies,
    cold_starts: int,
    failures: int,
    reserved_gpus: int = 0,
    overflow: int = 0,
) -> SimResult:
    requests = len(trace)
    p50, p95, p99, mean_wait = latencies.summary()
    tokens = (trace.input_tokens or 0) + (trace.output_tokens or 0)
    has_tokens = trace.input_tokens is not None or trace.output_tokens is not None
    return SimResult(
        option=option,
        kind=kind,
        requests=requests,
        cost_usd=cost,
        cost_per_request_usd=cost / requests if requests else None,
        cost_per_1k_tokens_usd=cost / tokens * 1000 if has_tokens and tokens else None,
        cold_starts=cold_starts,
        failures=failures,
        p50_s=p50,
        p95_s=p95,
        p99_s=p99,
        mean_wait_s=mean_wait,
        paid_gpu_seconds=paid_gpu_seconds,
        busy_gpu_seconds=busy_gpu_seconds,
        utilisation=busy_gpu_seconds / paid_gpu_seconds if paid_gpu_seconds > 0 else None,
        reserved_gpus=reserved_gpus,
        overflow_requests=overflow,
    )


def simulate_serverless(trace: Trace, price: Price) -> SimResult:
    """``trace`` served by ``price.platform``'s serverless workers."""
    model = _Serverless(price, trace.gpu_count)
    model.run(trace.arrivals_s, trace.services_s)
    model.finish(trace.window_s)
    cost, paid = model.cost(trace.window_s)
    return _result(
        price.platform,
        "serverless",
        trace,
        cost,
        paid,
        model.busy_seconds * trace.gpu_count,
        model.latencies,
        model.cold_starts,
        model.failures,
    )


def simulate_reserved(trace: Trace, price: Price, gpus: int) -> SimResult:
    """``trace`` served FIFO by ``gpus`` reserved workers (each ``trace.gpu_count`` GPUs),
    paid for the whole window."""
    if gpus < 1:
        raise ValueError(f"reserved needs at least 1 worker, got {gpus}")
    free = [0.0] * gpus  # a heap of the time each worker is next free
    latencies = _Latencies()
    values = latencies.values
    waits = 0.0
    busy = 0.0
    replace = heapq.heapreplace
    for arrival, service in zip(trace.arrivals_s, trace.services_s, strict=True):
        first = free[0]
        start = first if first > arrival else arrival
        replace(free, start + service)
        waits += start - arrival
        values.append(start - arrival + service)
        busy += service
    latencies.waits = waits
    paid = gpus * trace.gpu_count * trace.window_s
    cost = paid * price.per_gpu_second_usd
    return _result(
        f"reserved x{gpus}",
        "reserved",
        trace,
        cost,
        paid,
        busy * trace.gpu_count,
        latencies,
        0,
        0,
        reserved_gpus=gpus,
    )


def simulate_hybrid(
    trace: Trace,
    reserved: Price,
    gpus: int,
    overflow: Price,
    *,
    max_wait_s: float = 0.0,
) -> SimResult:
    """``gpus`` reserved workers first; a request that would wait more than ``max_wait_s`` for
    one goes to ``overflow``'s serverless workers instead."""
    if gpus < 0:
        raise ValueError(f"hybrid needs zero or more reserved workers, got {gpus}")
    # Which requests the reserved workers take depends only on the reserved workers, so the
    # overflow can be collected first and replayed on the serverless platform afterwards.
    free = [0.0] * gpus
    latencies = _Latencies()
    values = latencies.values
    waits = 0.0
    busy_reserved = 0.0
    spill_arrivals, spill_services = array("d"), array("d")
    replace = heapq.heapreplace
    for arrival, service in zip(trace.arrivals_s, trace.services_s, strict=True):
        if gpus:
            first = free[0]
            start = first if first > arrival else arrival
            if start - arrival <= max_wait_s:
                replace(free, start + service)
                waits += start - arrival
                values.append(start - arrival + service)
                busy_reserved += service
                continue
        spill_arrivals.append(arrival)
        spill_services.append(service)
    spill = _Serverless(overflow, trace.gpu_count)
    spill.latencies = latencies  # one latency distribution for the whole option
    spill.run(spill_arrivals, spill_services)
    latencies.waits += waits
    spill.finish(trace.window_s)
    spill_cost, spill_paid = spill.cost(trace.window_s)
    paid_reserved = gpus * trace.gpu_count * trace.window_s
    cost = paid_reserved * reserved.per_gpu_second_usd + spill_cost
    return _result(
        f"hybrid {gpus} x reserved + {overflow.platform}",
        "hybrid",
        trace,
        cost,
        paid_reserved + spill_paid,
        (busy_reserved + spill.busy_seconds) * trace.gpu_count,
        latencies,
        spill.cold_starts,
        spill.failures,
        reserved_gpus=gpus,
        overflow=spill.requests,
    )


def reserved_meets(trace: Trace, gpus: int, slo_p95_s: float) -> bool:
    """Whether ``gpus`` reserved FIFO workers keep the p95 latency within ``slo_p95_s``.

    Exactly :func:`simulate_reserved`'s p95 (the same interpolation between ranks) compared with
    the objective, without keeping or sorting the latencies: it counts those over the objective,
    keeps the largest within it and the smallest over it, and stops as soon as too many are over.
    """
    count = len(trace)
    if count == 0:
        return True
    position = (count - 1) * 0.95
    low = math.floor(position)
    high = min(low + 1, count - 1)
    fraction = position - low
    # p95 <= objective needs ranks low (and high, when interpolating) within the objective.
    allowed_over = count - 1 - low
    free = [0.0] * gpus
    replace = heapq.heapreplace
    over = 0
    largest_within = -math.inf
    smallest_over = math.inf
    for arrival, service in zip(trace.arrivals_s, trace.services_s, strict=True):
        first = free[0]
        start = first if first > arrival else arrival
        replace(free, start + service)
        latency = start - arrival + service
        if latency > slo_p95_s:
            over += 1
            if over > allowed_over:
                return False
            if latency < smallest_over:  # noqa: PLR1730  (min() costs a call per request)
                smallest_over = latency
        elif latency > largest_within:
            largest_within = latency
    within = count - over  # ranks 0 .. within-1 are within the objective
    if high < within or fraction == 0.0:
        return True
    # Rank ``low`` is the largest within, rank ``high`` the smallest over: interpolate.
    p95 = largest_within + (smallest_over - largest_within) * fraction
    return p95 <= slo_p95_s + 1e-9
