"""What the same traffic would have cost, and how slow it would have been, on each platform.

Pure functions over a :class:`~gpuledger.whatif._traffic.Trace` and catalogue prices. Three worker
models, all first-come first-served:

* **serverless** — workers start on demand: a request that finds no warm worker starts one and
  waits its cold start. A worker serves up to its ``concurrency``, stays warm for the
  ``idle_window_s`` after its last request, then scales to zero; a ``prewarmed_workers`` pool
  never does, and lives the whole window. With ``max_workers`` reached, requests queue for the
  first worker to free up. A request longer than the platform's ``timeout_s`` is stopped there
  and counted as a failure (its time is billed).
* **reserved** — N GPUs paid for the whole window, whatever they do; requests queue FIFO.
* **hybrid** — N reserved GPUs take what they can; a request that would wait longer than
  ``max_wait_s`` (default: any wait at all) overflows to a serverless platform.

Latency is queueing + cold start + service. Nothing here computes a dollar: each model replays
the trace in integer nanoseconds (``round(seconds * 1e9)`` of each arrival, service time, cold
start, idle window and timeout, so that a 15 s request lasts exactly 15 s wherever it falls),
produces every worker's :class:`~gpuledger.billing.WorkerTimeline` (started, ready after its cold
start, the requests it served, stopped when it scaled to zero or the window ended) and has the
billing engine, :func:`gpuledger.billing.bill`, price it under the platform's
:class:`~gpuledger.billing.Rules`. So the platform's rules apply as the engine applies them:
rounding and minimum per *billing span* (a busy stretch with the start-up before it, or a whole
worker's life where idle time is billed), not per request; overlapping requests on a shared
worker billed once for the wall time; the execution fee per request. Pre-warmed workers and
reserved GPUs are billed for the whole window (``start = ready = 0``, ``stop =`` the window's
end; what they still run after it is outside the window and not billed). Costs are summed
exactly and turned into floats once, for the :class:`SimResult`. Each request's own service time
is taken as recorded (optimistic where a GPU is shared: sharing usually slows each one down).

``workers=``, a list, receives every worker's :class:`SimulatedWorker`: its timeline, rules and
bill, in the order they were billed.

Two common cases take a shorter path where numpy is installed (``compare`` at a million requests
spends its time in them), with exactly the general path's results (``test_compare_fast`` holds
them equal): serverless workers with one request each, no pool and no worker limit, where
nothing ever queues (:func:`_on_demand_replay` only picks each request's worker; latencies, busy
time and cold starts are array sums, and the engine bills all workers whose requests cannot
change their bill in one call, :func:`gpuledger.billing.billed_wall_ns_unserved`); and a hybrid's
reserved GPUs when no request may wait (:func:`_replay_reserved_no_wait`: which requests a GPU
is free for, from each GPU's next free arrival). Without numpy, when the timelines are asked
for, or for any other shape, the general replays run.

Why one module: the three models share the serverless replay (a hybrid's overflow is one), its
latencies and its bills, and each fast path is a shortcut through one general replay's own
state; split, the replays and their shortcuts would reach into each other.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import operator
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from gpuledger.billing import (
    Request,
    Rules,
    WorkerTimeline,
    billed_wall_ns,
    billed_wall_ns_unserved,
)
from gpuledger.whatif._workers import (
    NEVER,
    NS_PER_S,
    Billing,
    SimulatedWorker,
    always_paid,
    needs_requests,
    optional_numpy,
    requests_of,
    reserved_rules,
    seconds_to_ns,
    to_ns,
)

if TYPE_CHECKING:
    from types import ModuleType

    from gpuledger._pricing import Price
    from gpuledger.whatif._traffic import Trace

__all__ = [
    "SimResult",
    "SimulatedWorker",
    "reserved_meets",
    "simulate_hybrid",
    "simulate_reserved",
    "simulate_serverless",
]


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


class _Serverless:
    """One serverless platform's workers, fed requests in arrival order, in nanoseconds.

    Workers are numbered in the order they start, the pre-warmed pool first (0 to pool - 1).
    The replay notes which worker served each request and when it began; :meth:`finish` builds
    each worker's timeline from that and has the engine bill it.
    """

    def __init__(
        self,
        price: Price,
        gpu_count: int,
        billing: Billing,
        ids: Sequence[int] | None = None,
    ) -> None:
        if price.cold_start_s is None:
            raise ValueError(
                f"platform {price.platform!r} has no cold_start_s in the catalogue: the "
                "simulator needs it (add it to your pricing file)"
            )
        self.price = price
        self.gpus = gpu_count
        self.billing = billing
        self.ids = ids  # each replayed request's position in the trace, where not the same
        self.rules = Rules.from_price(price)
        self.pool_rules = always_paid(self.rules)
        self.cold_ns = to_ns(price.cold_start_s)
        self.window_ns = NEVER if price.idle_window_s is None else to_ns(price.idle_window_s)
        self.timeout_ns = NEVER if price.timeout_s is None else to_ns(price.timeout_s)
        self.concurrency = max(1, price.concurrency)
        self.max_workers = price.max_workers
        self.prewarmed = pool = price.prewarmed_workers
        self.latencies = _Latencies()
        self.cold_starts = self.failures = self.requests = 0
        self.busy_ns = 0  # wall time some request was running on a worker, summed over workers
        # Per request: its run (service, cut at the timeout), the worker that served it and
        # when it began there.
        self.runs: array[int] = array("q")
        self.owners: array[int] = array("q")
        self.begins: array[int] = array("q")
        # Per worker: its start, ready, and its stop once known (scaled to zero).
        self.starts: list[int] = [0] * pool
        self.readies: list[int] = [0] * pool
        self.stops: dict[int, int] = {}
        # Concurrency 1: heaps and deques of (instant, worker) pairs.
        self.busy: list[tuple[int, int]] = []  # (end, worker) of busy on-demand workers
        self.idle: deque[tuple[int, int]] = deque()  # (free since, worker), ascending
        self.pool_busy: list[tuple[int, int]] = []  # (end, worker) of busy pre-warmed workers
        self.pool_free: list[int] = list(range(pool))  # a heap: the lowest-numbered first
        # Concurrency > 1: per-worker state [active, busy_since, free_since].
        self.workers_busy: list[tuple[int, int]] = []  # (end, worker index) heap
        self.worker_state: list[list[int]] = []
        self.partial: set[int] = set()  # workers with a free slot and at least one request
        self.idle_workers: deque[int] = deque()
        self.live_workers = 0
        self.waits_ns = 0
        # The pre-warmed pool under concurrency > 1: workers that never scale down.
        self.pinned = set(range(pool)) if self.concurrency > 1 else set()
        # A heap: the lowest-numbered idle pool worker first, like partly used workers below,
        # so the packing never depends on the order workers were last freed in.
        self.pinned_idle: list[int] = sorted(self.pinned)
        if self.pinned:
            self.worker_state = [[0, 0, 0] for _ in self.pinned]
            self.live_workers = len(self.pinned)
        # The on-demand replay's outcome (see _run_on_demand), billed by finish.
        self.on_demand: _OnDemand | None = None

    # -- the replay ---------------------------------------------------------------------------

    def run(self, arrivals_s: Sequence[float], services_s: Sequence[float]) -> None:
        """Serve requests arriving at ``arrivals_s`` (ascending) needing ``services_s``
        (called once)."""
        arrivals = seconds_to_ns(arrivals_s)
        services = seconds_to_ns(services_s)
        if len(arrivals) != len(services):
            raise ValueError("arrivals and services differ in length")
        numpy = self._on_demand_numpy(arrivals, services)
        if numpy is not None:
            self._run_on_demand(numpy, arrivals, services)
            return
        timeout = self.timeout_ns
        # A request longer than the timeout is stopped there: it runs (and is billed) that long.
        self.runs = runs = array(
            "q", [service if service < timeout else timeout for service in services]
        )
        self.requests += len(arrivals)
        self.failures += sum(service > timeout for service in services)
        if self.concurrency > 1:
            serve = self._serve_shared
            for arrival, run in zip(arrivals, runs, strict=True):
                serve(arrival, run)
            self.latencies.waits += self.waits_ns / NS_PER_S
            return
        self.busy_ns += sum(runs)
        self._run_single(arrivals, runs)

    def _run_single(self, arrivals: Sequence[int], runs: Sequence[int]) -> None:
        # Concurrency 1, the common case, kept to locals: this loop is what a replay of a
        # million requests spends its time in.
        heappush, heappop = heapq.heappush, heapq.heappop
        busy, idle, pool_busy, pool_free = self.busy, self.idle, self.pool_busy, self.pool_free
        starts, readies, stops = self.starts, self.readies, self.stops
        window, cold = self.window_ns, self.cold_ns
        # max_workers counts the pre-warmed pool too.
        on_demand = math.inf if self.max_workers is None else self.max_workers - self.prewarmed
        served_by, began = self.owners.append, self.begins.append
        record = self.latencies.values.append
        scale = 1e9
        waits = cold_starts = 0
        for arrival, run in zip(arrivals, runs, strict=True):
            while pool_busy and pool_busy[0][0] <= arrival:
                heappush(pool_free, heappop(pool_busy)[1])
            while busy and busy[0][0] <= arrival:
                idle.append(heappop(busy))
            if idle:
                horizon = arrival - window
                while idle and idle[0][0] < horizon:
                    free, worker = idle.popleft()
                    stops[worker] = free + window  # scaled to zero
            if pool_free:
                worker = heappop(pool_free)
                begin = arrival
                heappush(pool_busy, (arrival + run, worker))
            elif idle:
                worker = idle.pop()[1]
                begin = arrival
                heappush(busy, (arrival + run, worker))
            elif len(busy) < on_demand:
                cold_starts += 1
                worker = len(starts)
                begin = arrival + cold
                starts.append(arrival)
                readies.append(begin)
                heappush(busy, (begin + run, worker))
            elif busy and not (pool_busy and pool_busy[0][0] < busy[0][0]):
                # Every worker busy and no more allowed: wait for the first to finish (warm).
                free, worker = heappop(busy)
                begin = free if free > arrival else arrival
                heappush(busy, (begin + run, worker))
            else:
                # ... and the first to finish is a pre-warmed one.
                free, worker = heappop(pool_busy)
                begin = free if free > arrival else arrival
                heappush(pool_busy, (begin + run, worker))
            served_by(worker)
            began(begin)
            waits += begin - arrival
            record((begin - arrival + run) / scale)
        self.cold_starts += cold_starts
        self.latencies.waits += waits / NS_PER_S

    # -- the common case: on-demand workers, one request each, no limit ----------------------

    def _on_demand_numpy(self, arrivals: array[int], services: array[int]) -> ModuleType | None:
        """numpy, where this replay can take :meth:`_run_on_demand`: concurrency 1, no pool, no
        worker limit (so nothing ever queues), nobody asking for the timelines, arrivals in
        order, and instants and sums far inside 64-bit integers; None otherwise (and without
        numpy)."""
        if (
            self.concurrency != 1
            or self.prewarmed
            or self.max_workers is not None
            or self.billing.keeps_requests
            or not arrivals
        ):
            return None
        numpy = optional_numpy()
        if numpy is None:
            return None
        instants = numpy.frombuffer(arrivals, dtype=numpy.int64)
        runs = numpy.minimum(numpy.frombuffer(services, dtype=numpy.int64), self.timeout_ns)
        longest = int(runs.max())
        if (
            int(instants[0]) < 0
            or int(runs.min()) < 0
            or int(instants[-1]) + self.cold_ns + longest >= _NOT_YET >> 1
            or longest * len(runs) >= _NOT_YET >> 1  # the busy time's sum, in int64
            or not bool(numpy.all(instants[1:] >= instants[:-1]))
        ):
            return None
        return numpy

    def _run_on_demand(
        self, numpy: ModuleType, arrivals_ns: array[int], services_ns: array[int]
    ) -> None:
        """:meth:`_run_single` where no request ever queues: the loop only decides which worker
        serves each request (the one freed last, or a new one); the latencies, waits and busy
        time are worked out from that afterwards, over whole arrays, with the same integers."""
        arrivals = numpy.frombuffer(arrivals_ns, dtype=numpy.int64)
        services = numpy.frombuffer(services_ns, dtype=numpy.int64)
        runs = numpy.minimum(services, self.timeout_ns)
        count = len(runs)
        self.requests += count
        self.failures += int(numpy.count_nonzero(services > self.timeout_ns))
        self.busy_ns += int(runs.sum())  # exact: _on_demand_numpy keeps the total below 2**62
        owners, stops, busy, idle = _on_demand_replay(
            arrivals_ns, runs.tolist(), self.window_ns, self.cold_ns
        )
        served_by = numpy.array(owners, dtype=numpy.int64)
        # Workers are numbered as they start: a request is cold where its worker is new.
        cold = numpy.ones(count, dtype=bool)
        cold[1:] = served_by[1:] > numpy.maximum.accumulate(served_by)[:-1]
        waits = cold * self.cold_ns  # ns: queueing never, the cold start where there is one
        cold_starts = int(numpy.count_nonzero(cold))
        self.cold_starts += cold_starts
        latencies = (waits + runs).astype(numpy.float64) / 1e9
        self.latencies.values.frombytes(latencies.tobytes())
        self.latencies.waits += cold_starts * self.cold_ns / NS_PER_S
        self.on_demand = _OnDemand(numpy, arrivals, runs, waits, served_by, cold, stops, busy, idle)

    def _finish_on_demand(self, replay: _OnDemand, window_end: int) -> None:
        """:meth:`finish` after :meth:`_run_on_demand`: every worker's stop, then the engine's
        bills, all workers at once where their requests cannot change them."""
        numpy, window, stops = replay.numpy, self.window_ns, replay.stops
        # The replay drops idle workers lazily (all at once, when even the last freed one is
        # past its window): one left over that the last arrival found past its window scaled
        # to zero then, like every worker that stopped during the replay.
        horizon = int(replay.arrivals[-1]) - window
        for free, worker in replay.idle:
            if free < horizon:
                stops[worker] = free + window
            else:
                stops[worker] = max(free, min(free + window, window_end))
        for free, worker in replay.busy:
            stops[worker] = max(free, min(free + window, window_end))
        starts = replay.arrivals[replay.cold]
        readies = starts + self.cold_ns
        rules = self.rules
        if not needs_requests(rules, self.billing):
            wall = billed_wall_ns_unserved(starts.tolist(), readies.tolist(), stops, rules)
            self.billing.add_wall(rules, sum(wall.values()), self.gpus, 0)
            return
        # The engine needs each worker's requests: grouped by worker, in arrival order.
        order = numpy.argsort(replay.owners, kind="stable")
        begins = (replay.arrivals + replay.waits)[order]
        ends = (begins + replay.runs[order]).tolist()
        bounds = numpy.searchsorted(replay.owners[order], numpy.arange(len(stops) + 1)).tolist()
        begins_list = begins.tolist()
        billed = 0
        for worker, (start, ready, stop) in enumerate(
            zip(starts.tolist(), readies.tolist(), stops, strict=True)
        ):
            low, high = bounds[worker], bounds[worker + 1]
            wall = billed_wall_ns(start, ready, stop, begins_list[low:high], ends[low:high], rules)
            billed += sum(wall.values())
        self.billing.add_wall(rules, billed, self.gpus, len(ends))

    # -- concurrency > 1 ----------------------------------------------------------------------

    def _serve_shared(self, arrival: int, run: int) -> None:
        state = self.worker_state
        heap = self.workers_busy
        while heap and heap[0][0] <= arrival:
            end, index = heapq.heappop(heap)
            self._release(index, end)
        horizon = arrival - self.window_ns
        idle = self.idle_workers
        while idle and state[idle[0]][2] < horizon:
            index = idle.popleft()
            self.live_workers -= 1
            self.stops[index] = state[index][2] + self.window_ns  # scaled to zero
        wait = 0
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
            start = arrival
        elif self.max_workers is None or self.live_workers < self.max_workers:
            self.cold_starts += 1
            self.live_workers += 1
            wait = self.cold_ns
            start = arrival + wait
            index = len(state)
            state.append([0, start, start])
            self.starts.append(arrival)
            self.readies.append(start)
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
        self.owners.append(index)
        self.begins.append(start)
        self.latencies.values.append((wait + run) / NS_PER_S)
        self.waits_ns += wait

    def _release(self, index: int, end: int) -> None:
        worker = self.worker_state[index]
        worker[0] -= 1
        if worker[0] == 0:
            worker[2] = end
            # A shared worker's GPU is busy for the union of its requests, not their sum.
            self.busy_ns += end - worker[1]
            self.partial.discard(index)
            if index in self.pinned:
                heapq.heappush(self.pinned_idle, index)
                return
            self.idle_workers.append(index)
        else:
            self.partial.add(index)

    # -- bills --------------------------------------------------------------------------------

    def finish(self, window_end: int) -> None:
        """Close the window at ``window_end`` (ns) and bill every worker, in worker order.

        Busy workers finish their requests; then each on-demand worker stays warm until it
        scales to zero or the window ends (or its last request ends, past the window); the
        pre-warmed pool stops at the window's end (what it runs after it is not billed)."""
        if self.on_demand is not None:
            self._finish_on_demand(self.on_demand, window_end)
            return
        heap = self.workers_busy
        while heap:
            end, index = heapq.heappop(heap)
            self._release(index, end)
        free_since = [*self.busy, *self.idle]
        free_since += [(self.worker_state[index][2], index) for index in self.idle_workers]
        stops = self.stops
        window = self.window_ns
        for free, worker in free_since:
            stops[worker] = max(free, min(free + window, window_end))
        for worker in range(self.prewarmed):
            stops[worker] = window_end
        served: list[array[int]] = [array("q") for _ in self.starts]
        appends = [positions.append for positions in served]
        for position, worker in enumerate(self.owners):
            appends[worker](position)
        for worker, positions in enumerate(served):
            self._bill(worker, stops[worker], positions)

    def _bill(self, worker: int, stop: int, positions: Sequence[int]) -> None:
        """Have the engine bill ``worker``, stopped at ``stop``, which served the requests at
        ``positions`` of the replay."""
        pooled = worker < self.prewarmed
        rules = self.pool_rules if pooled else self.rules
        if not self.billing.keeps_requests:
            # Nobody asked for the timelines: the engine's totals straight from the begins and
            # ends (no Request objects), the same numbers as bill(timeline, lines=False).
            begins: list[int] = []
            ends: list[int] = []
            if needs_requests(rules, self.billing):
                begins = list(map(self.begins.__getitem__, positions))
                ends = list(map(operator.add, begins, map(self.runs.__getitem__, positions)))
                if pooled:
                    begins = [begin if begin < stop else stop for begin in begins]
                    ends = [end if end < stop else stop for end in ends]
            wall = billed_wall_ns(
                self.starts[worker], self.readies[worker], stop, begins, ends, rules
            )
            self.billing.add_wall(rules, sum(wall.values()), self.gpus, len(ends))
            return
        requests: tuple[Request, ...] = ()
        if needs_requests(rules, self.billing):
            begins = list(map(self.begins.__getitem__, positions))
            ends = list(map(operator.add, begins, map(self.runs.__getitem__, positions)))
            names = positions if self.ids is None else map(self.ids.__getitem__, positions)
            requests = requests_of(names, begins, ends, stop if pooled else None)
        timeline = WorkerTimeline(
            self.starts[worker], self.readies[worker], stop, requests, self.gpus
        )
        self.billing.add("pre-warmed" if pooled else "on-demand", timeline, rules)


_NOT_YET: Final = 1 << 63
"""An end no arrival reaches (instants stay below 2**62): the busy heap's sentinel."""


def _on_demand_replay(
    arrivals: Iterable[int], runs: Iterable[int], window: int, cold: int
) -> tuple[list[int], list[int], list[tuple[int, int]], list[tuple[int, int]]]:
    """Which on-demand worker serves each request (concurrency 1, no pool, no limit): the
    worker freed last, if it freed within ``window`` (ns) of the arrival, else a new one (its
    request begins ``cold`` later). Exactly :meth:`_Serverless._run_single`'s choices, with
    less done per request: the latencies are left to arrays; a worker freed since the last
    arrival, alone, is taken straight off the busy heap; idle workers past their window are
    dropped only when even the last freed one is (the older ones are never chosen first).

    Returns each request's worker; each worker's stop where it scaled to zero during the replay
    (0 where it did not); and the busy and idle ``(free since, worker)`` pairs left at the end.
    """
    heappush, heappop, heapreplace = heapq.heappush, heapq.heappop, heapq.heapreplace
    # (end, worker) of busy workers, a heap; sentinels that never free keep busy[1] and busy[2].
    busy: list[tuple[int, int]] = [(_NOT_YET, -1)] * 3
    idle: list[tuple[int, int]] = []  # (free since, worker), ascending: the last freed on top
    owners: list[int] = []
    stops: list[int] = []
    free_up, take, served_by, started = idle.append, idle.pop, owners.append, stops.append
    workers = 0
    for arrival, run in zip(arrivals, runs, strict=True):
        first = busy[0]
        if first[0] <= arrival:
            if busy[1][0] > arrival and busy[2][0] > arrival:
                # The only worker freed since the last arrival: the last freed of all.
                if first[0] >= arrival - window:
                    heapreplace(busy, (arrival + run, first[1]))
                    served_by(first[1])
                    continue
                free_up(heappop(busy))
            else:
                while busy[0][0] <= arrival:
                    free_up(heappop(busy))
        if idle:
            if idle[-1][0] >= arrival - window:
                worker = take()[1]
                heappush(busy, (arrival + run, worker))
                served_by(worker)
                continue
            for free, worker in idle:  # all past their window: scaled to zero
                stops[worker] = free + window
            idle.clear()
        heappush(busy, (arrival + cold + run, workers))
        served_by(workers)
        started(0)
        workers += 1
    return owners, stops, [pair for pair in busy if pair[0] != _NOT_YET], idle


@dataclasses.dataclass(slots=True)
class _OnDemand:
    """What :meth:`_Serverless._run_on_demand` found, for :meth:`_Serverless.finish` to bill
    (numpy arrays, one entry per request unless said otherwise)."""

    numpy: ModuleType
    arrivals: Any
    runs: Any
    waits: Any
    owners: Any
    cold: Any
    """Whether each request started its worker."""
    stops: list[int]
    """Per worker, its stop where it scaled to zero during the replay, else 0."""
    busy: list[tuple[int, int]]
    idle: list[tuple[int, int]]
    """(free since, worker) of the workers still busy, and idle, after the last arrival."""


def _result(
    option: str,
    kind: str,
    trace: Trace,
    billing: Billing,
    busy_gpu_seconds: float,
    latencies: _Latencies,
    cold_starts: int,
    failures: int,
    reserved_gpus: int = 0,
    overflow: int = 0,
) -> SimResult:
    requests = len(trace)
    cost = float(billing.total_usd)
    paid_gpu_seconds = float(billing.billed_gpu_ns / NS_PER_S)
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


def simulate_serverless(
    trace: Trace, price: Price, *, workers: list[SimulatedWorker] | None = None
) -> SimResult:
    """``trace`` served by ``price.platform``'s serverless workers (each worker's timeline,
    rules and bill appended to ``workers`` when given)."""
    billing = Billing(workers)
    model = _Serverless(price, trace.gpu_count, billing)
    model.run(trace.arrivals_s, trace.services_s)
    model.finish(to_ns(trace.window_s))
    return _result(
        price.platform,
        "serverless",
        trace,
        billing,
        model.busy_ns * trace.gpu_count / NS_PER_S,
        model.latencies,
        model.cold_starts,
        model.failures,
    )


@dataclasses.dataclass(slots=True)
class _ReservedReplay:
    """What the reserved GPUs of a replay did, and the requests they left over."""

    busy_s: float = 0.0
    waits_s: float = 0.0
    served: list[array[float]] | None = None
    """Per GPU, (begin, end, position) of each request, where the bill needs them."""
    spill_arrivals: array[float] = dataclasses.field(default_factory=lambda: array("d"))
    spill_services: array[float] = dataclasses.field(default_factory=lambda: array("d"))
    spill_positions: array[int] = dataclasses.field(default_factory=lambda: array("q"))


def _replay_reserved(
    trace: Trace, gpus: int, max_wait_s: float, latencies: _Latencies, keep: bool
) -> _ReservedReplay:
    """FIFO on ``gpus`` reserved workers; a request that would wait more than ``max_wait_s``
    is left over. With ``keep``, which GPU served what is kept for the GPUs' timelines."""
    if max_wait_s == 0.0 and not keep:
        numpy = optional_numpy()
        if numpy is not None:
            fast = _replay_reserved_no_wait(numpy, trace, gpus, latencies)
            if fast is not None:
                return fast
    replay = _ReservedReplay()
    values = latencies.values
    waits = busy = 0.0
    spill_arrival = replay.spill_arrivals.append
    spill_service = replay.spill_services.append
    spill_position = replay.spill_positions.append
    pairs = enumerate(zip(trace.arrivals_s, trace.services_s, strict=True))
    if not keep:
        free = [0.0] * gpus  # a heap of the time each worker is next free
        replace = heapq.heapreplace
        for position, (arrival, service) in pairs:
            if gpus:
                first = free[0]
                start = first if first > arrival else arrival
                if start - arrival <= max_wait_s:
                    replace(free, start + service)
                    waits += start - arrival
                    values.append(start - arrival + service)
                    busy += service
                    continue
            spill_arrival(arrival)
            spill_service(service)
            spill_position(position)
    else:
        # The same replay, each worker known: (free, gpu) pairs, ties to the lowest GPU.
        heap = [(0.0, gpu) for gpu in range(gpus)]
        served = replay.served = [array("d") for _ in range(gpus)]
        replace_pair = heapq.heapreplace
        for position, (arrival, service) in pairs:
            if gpus:
                first, gpu = heap[0]
                start = first if first > arrival else arrival
                if start - arrival <= max_wait_s:
                    replace_pair(heap, (start + service, gpu))
                    served[gpu].extend((start, start + service, position))
                    waits += start - arrival
                    values.append(start - arrival + service)
                    busy += service
                    continue
            spill_arrival(arrival)
            spill_service(service)
            spill_position(position)
    replay.busy_s = busy
    replay.waits_s = waits
    return replay


def _replay_reserved_no_wait(
    numpy: ModuleType, trace: Trace, gpus: int, latencies: _Latencies
) -> _ReservedReplay | None:
    """:func:`_replay_reserved` where no request may wait (a hybrid's default) and nobody asks
    which GPU served what: a request is taken when some GPU is free at its arrival, so it runs
    from its arrival, its latency is its service, and what the replay has to decide is only
    which requests are taken. None where the arrivals are not in order (the general replay)."""
    arrivals = numpy.asarray(trace.arrivals_s, dtype=numpy.float64)
    services = numpy.asarray(trace.services_s, dtype=numpy.float64)
    if len(arrivals) != len(services):
        raise ValueError("arrivals and services differ in length")
    if not bool(numpy.all(arrivals[1:] >= arrivals[:-1])):
        return None
    count = len(arrivals)
    # A GPU that frees at ``end`` (the same float sum as the replay's) is free for every
    # request from the first arriving at or after it: each GPU is kept as that request's index.
    free_from = numpy.searchsorted(arrivals, arrivals + services, side="left").tolist()
    taken: list[int] = []
    if gpus:
        heap = [int(numpy.searchsorted(arrivals, 0.0, side="left"))] * gpus
        replace, take = heapq.heapreplace, taken.append
        position = 0
        while True:
            first = heap[0]
            if first > position:  # noqa: PLR1730  (every GPU busy until then: those overflow)
                position = first
            if position >= count:
                break
            take(position)
            replace(heap, free_from[position])
            position += 1
    served = numpy.zeros(count, dtype=bool)
    served[taken] = True
    served_services = services[served]
    replay = _ReservedReplay()
    # The replay's own sum: one service after another (an accumulation, not a pairwise sum).
    replay.busy_s = float(numpy.cumsum(served_services)[-1]) if taken else 0.0
    replay.waits_s = 0.0  # nobody waited
    latencies.values.frombytes(served_services.tobytes())
    spilled = ~served
    replay.spill_arrivals.frombytes(arrivals[spilled].tobytes())
    replay.spill_services.frombytes(services[spilled].tobytes())
    replay.spill_positions.frombytes(numpy.flatnonzero(spilled).astype(numpy.int64).tobytes())
    return replay


def _bill_reserved(
    billing: Billing, rules: Rules, replay: _ReservedReplay, gpus: int, trace: Trace
) -> None:
    """Each reserved GPU's worker, alive the whole window, billed by the engine."""
    window_end = to_ns(trace.window_s)
    if replay.served is None:
        # Nothing a reserved GPU serves changes its bill (its life is one billing span and
        # there is no fee): every GPU has the same timeline, billed once for all.
        if gpus:
            timeline = WorkerTimeline(0, 0, window_end, (), trace.gpu_count)
            billing.add("reserved", timeline, rules, copies=gpus)
        return
    for flat in replay.served:
        begins = seconds_to_ns(flat[0::3])
        ends = seconds_to_ns(flat[1::3])
        if not billing.keeps_requests:
            clamped_begins = [begin if begin < window_end else window_end for begin in begins]
            clamped_ends = [end if end < window_end else window_end for end in ends]
            wall = billed_wall_ns(0, 0, window_end, clamped_begins, clamped_ends, rules)
            billing.add_wall(rules, sum(wall.values()), trace.gpu_count, len(clamped_ends))
            continue
        names = [int(position) for position in flat[2::3]]
        requests = requests_of(names, begins, ends, window_end)
        timeline = WorkerTimeline(0, 0, window_end, requests, trace.gpu_count)
        billing.add("reserved", timeline, rules)


def simulate_reserved(
    trace: Trace, price: Price, gpus: int, *, workers: list[SimulatedWorker] | None = None
) -> SimResult:
    """``trace`` served FIFO by ``gpus`` reserved workers (each ``trace.gpu_count`` GPUs),
    paid for the whole window (each GPU's timeline, rules and bill appended to ``workers``
    when given)."""
    if gpus < 1:
        raise ValueError(f"reserved needs at least 1 worker, got {gpus}")
    billing = Billing(workers)
    rules = reserved_rules(price)
    latencies = _Latencies()
    replay = _replay_reserved(trace, gpus, math.inf, latencies, keep=needs_requests(rules, billing))
    latencies.waits = replay.waits_s
    _bill_reserved(billing, rules, replay, gpus, trace)
    return _result(
        f"reserved x{gpus}",
        "reserved",
        trace,
        billing,
        replay.busy_s * trace.gpu_count,
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
    workers: list[SimulatedWorker] | None = None,
) -> SimResult:
    """``gpus`` reserved workers first; a request that would wait more than ``max_wait_s`` for
    one goes to ``overflow``'s serverless workers instead (every worker's timeline, rules and
    bill appended to ``workers`` when given)."""
    if gpus < 0:
        raise ValueError(f"hybrid needs zero or more reserved workers, got {gpus}")
    billing = Billing(workers)
    rules = reserved_rules(reserved)
    # Which requests the reserved workers take depends only on the reserved workers, so the
    # overflow can be collected first and replayed on the serverless platform afterwards.
    latencies = _Latencies()
    replay = _replay_reserved(
        trace, gpus, max_wait_s, latencies, keep=needs_requests(rules, billing)
    )
    _bill_reserved(billing, rules, replay, gpus, trace)
    spill = _Serverless(overflow, trace.gpu_count, billing, ids=replay.spill_positions)
    spill.latencies = latencies  # one latency distribution for the whole option
    spill.run(replay.spill_arrivals, replay.spill_services)
    latencies.waits += replay.waits_s
    spill.finish(to_ns(trace.window_s))
    return _result(
        f"hybrid {gpus} x reserved + {overflow.platform}",
        "hybrid",
        trace,
        billing,
        (replay.busy_s + spill.busy_ns / NS_PER_S) * trace.gpu_count,
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
