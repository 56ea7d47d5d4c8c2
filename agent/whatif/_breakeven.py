"""Break-even between a serverless platform and reserved GPUs, for steady traffic: pure arithmetic.

Steady traffic is ``rate`` requests a day, evenly spaced, each holding ``gpu_count`` GPUs for
``duration_s`` seconds. Money is US dollars; a month is 730 hours (365 x 24 / 12).

Every dollar comes from the billing engine, :func:`gpuledger.billing.bill`, pricing a worker's
timeline under the platform's :class:`~gpuledger.billing.Rules`: one warm request, one cold one,
a pre-warmed or reserved worker's day.

**Serverless** (a catalogue ``Price`` of kind ``serverless_execution`` or ``per_second``): each
request costs the execution fee + the per-GPU-second price x its billed seconds (the duration
rounded up to ``billing_increment_s``, at least ``minimum_billed_s``) x ``gpu_count``: the bill of
a warm worker serving just that request (:func:`serverless_cost_per_request`). The default model
has **no cold starts**: traffic that arrives faster than once per idle window finds a worker still
warm, and the one start of the day is noise. A ``prewarmed_workers`` pool is paid around the
clock at the per-GPU-second price; a request it serves pays only the execution fee. With requests
``T`` apart and ``n = ceil(duration / T)`` workers busy at once, the pool takes ``min(pool, n)``
of every ``n`` requests (evenly spaced requests reuse the worker that served ``n`` requests
earlier), the rest are paid per request.

The **cold-start variant** (``cold_starts=True``) also prices what happens between requests:
each worker idles ``n x T - duration`` after a request. Longer than the platform's
``idle_window_s``, the worker has scaled to zero and every request not served by the pool pays a
cold start: the bill of a worker started for it (``cold_start_s`` of start-up, billed where the
platform bills start-up, the request, then the idle window, billed where it bills idle time) less
a warm request's. The start-up and the request are one billing span, rounded up once: RunPod's
2.5 s start-up before a 15 s request is billed 18 s, not 17.5. Shorter, the idle gap is billed
where the platform bills idle time. An unknown idle window never scales to zero.

**Reserved** (the catalogue's ``reserved`` price): carrying the load needs ``N = gpu_count x
ceil(rate x duration / 86400)`` GPUs (utilisation at most 100%), each paid ``hourly_usd x 24`` a
day. Reserved cost a day is a step function of the rate, so the two costs may cross several
times or never (:func:`crossovers` finds every rate where the cheaper side changes, exactly).
Serverless always wins in the end when its per-request cost is below reserved's at full use,
``hourly_usd / 3600 x duration x gpu_count``; above it, reserved always wins in the end.

Both sides serve one request per GPU at a time: the catalogue's ``concurrency`` is not used here
(every shipped platform has 1; the simulator, ``gpuledger compare``, models more), nor are
``max_workers`` (it adds queueing, not cost) and ``timeout_s``.

The seed article's rules of thumb ("Under 10 GPU seconds? Serverless wins", "30+ GPU seconds per
execution? Reserved instances win", "less than 5-10 hours/month per GPU") are not used. From the
shipped catalogue (H100: reserved $2.69/h = $64.56 a GPU-day) the first crossovers are, in
requests a day (GPU-hours a month of serverless traffic there; "never": serverless is cheaper at
every rate)::

    platform   10 s                   15 s                   30 s
    runpod     255.78/day (21.6 h)    254.57/day (32.3 h)    251.01/day (63.6 h)
    replicate  6,456/day (545.5 h)    4,304/day (545.5 h)    2,152/day (545.5 h)
    modal      never                  never                  never
    banana     never                  never                  never

RunPod's $0.25 fee makes reserved cheaper from about 250 requests a day whatever the duration,
at 21.6 to 63.6 GPU-hours a month, not 5-10. Replicate ($0.001/s, 1.34 x reserved's $0.000747/s)
is dearer than a reserved GPU from 74.7% of that GPU's capacity (545.5 GPU-hours a month), at any
duration, and then cheaper again each time one more reserved GPU is needed until the load is large:
at 15 s, reserved is cheaper on 4,304-5,760, 8,608-11,520 and from 12,912 requests a day. Modal
($0.0005/s) and Banana ($0.0003/s, plus its $25.92 a day pool) cost less per GPU-second than a
reserved H100, so no rate makes reserved cheaper. Duration does not decide it: the per-second
rates and RunPod's fee do.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from fractions import Fraction
from typing import Final

from gpuledger._pricing import Price
from gpuledger.billing import Request, Rules, WorkerTimeline, bill
from gpuledger.whatif._workers import always_paid, reserved_rules, to_ns

__all__ = [
    "DAYS_PER_MONTH",
    "HOURS_PER_MONTH",
    "SECONDS_PER_DAY",
    "Breakeven",
    "RateComparison",
    "compare_at_rate",
    "crossovers",
    "gpu_hours_per_month",
    "parse_duration",
    "parse_rate",
    "reserved_cost_per_day",
    "reserved_gpus_needed",
    "serverless_cost_per_day",
    "serverless_cost_per_request",
]

SECONDS_PER_DAY: Final = 86_400.0
HOURS_PER_MONTH: Final = 730.0
"""A month of 365 x 24 / 12 = 730 hours."""
DAYS_PER_MONTH: Final = HOURS_PER_MONTH / 24.0

# A load that is a whole number of GPUs but for float noise (5760 x 15 s / 86400 s) must not ask
# for one GPU more.
_SLACK: Final = 1e-9
# At most this many reserved-GPU steps are searched (rates up to 100,000 GPUs' worth): only a
# serverless price within float noise of reserved's at full use needs more to settle.
_MAX_STEPS: Final = 100_000


# --------------------------------------------------------------------------------------------
# Parsing

_NUMBER: Final = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?"
_DURATION: Final = re.compile(rf"\s*{_NUMBER}\s*([a-zA-Z]*)\s*")
_RATE: Final = re.compile(rf"\s*{_NUMBER}\s*/\s*([a-zA-Z]+)\s*")
_DURATION_UNITS: Final = {
    "": 1.0,
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}
_RATE_UNITS: Final = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": SECONDS_PER_DAY,
    "day": SECONDS_PER_DAY,
}


def _number(whole: str, exponent: str | None) -> float:
    return float(whole if exponent is None else f"{whole}e{exponent}")


def parse_duration(text: str) -> float:
    """Seconds in ``"15s"``, ``"500ms"``, ``"2m"``, ``"1h"`` or a plain number of seconds.

    Raises ``ValueError`` naming what is wrong: no number, an unknown unit, or not above 0.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: give e.g. 15s, 500ms, 2m or 15")
    whole, exponent, unit = match.groups()
    scale = _DURATION_UNITS.get(unit.lower())
    if scale is None:
        raise ValueError(f"{text!r}: unknown unit {unit!r}, expected ms, s, m or h")
    seconds = _number(whole, exponent) * scale
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be above 0 and finite")
    return seconds


def parse_rate(text: str) -> float:
    """Requests a second in ``"1000/day"``, ``"40/h"``, ``"3/min"`` or ``"2/s"``.

    A rate needs its unit (a bare number is refused: per second and per day differ 86,400-fold).
    Raises ``ValueError`` naming what is wrong.
    """
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a rate: give e.g. 1000/day, 40/h, 3/min or 2/s")
    whole, exponent, unit = match.groups()
    period = _RATE_UNITS.get(unit.lower())
    if period is None:
        raise ValueError(f"{text!r}: unknown unit {unit!r}, expected /day, /h, /min or /s")
    per_second = _number(whole, exponent) / period
    if not math.isfinite(per_second) or per_second <= 0:
        raise ValueError(f"{text!r}: a rate must be above 0 and finite")
    return per_second


# --------------------------------------------------------------------------------------------
# Costs


def _check(duration_s: float, gpu_count: int) -> None:
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be above 0 and finite, got {duration_s!r}")
    if gpu_count < 1:
        raise ValueError(f"gpu_count must be at least 1, got {gpu_count!r}")


_DAY_NS: Final = 86_400 * 1_000_000_000


def _worker_usd(
    rules: Rules,
    gpu_count: int,
    duration_ns: int | None = None,
    *,
    cold_start_ns: int = 0,
    idle_after_ns: int = 0,
) -> Fraction:
    """The engine's bill (USD, exact) of a worker that starts, is ready ``cold_start_ns``
    later, serves one request of ``duration_ns`` (none when None) and stops ``idle_after_ns``
    after it."""
    requests: tuple[Request, ...] = ()
    end = cold_start_ns
    if duration_ns is not None:
        end = cold_start_ns + duration_ns
        requests = (Request("request", cold_start_ns, end),)
    timeline = WorkerTimeline(0, cold_start_ns, end + idle_after_ns, requests, gpu_count)
    return bill(timeline, rules, lines=False).total_usd


def serverless_cost_per_request(price: Price, duration_s: float, gpu_count: int = 1) -> float:
    """What one warm request of ``duration_s`` on ``gpu_count`` GPUs costs at ``price`` (USD):
    the billing engine's bill of a warm worker serving just that request, the execution fee +
    the billed GPU-seconds."""
    _check(duration_s, gpu_count)
    return float(_worker_usd(Rules.from_price(price), gpu_count, to_ns(duration_s)))


def reserved_cost_per_day(price: Price, gpus: int) -> float:
    """What ``gpus`` reserved GPUs cost a day (USD): the engine's bill of a reserved GPU's day,
    ``hourly_usd x 24``, each (for a price with no hourly rate, its per-GPU-second rate x
    86,400)."""
    if gpus < 0:
        raise ValueError(f"gpus must not be negative, got {gpus!r}")
    return float(gpus * _worker_usd(reserved_rules(price), 1, idle_after_ns=_DAY_NS))


def _workers_needed(rate_per_day: float, duration_s: float) -> int:
    """Workers busy at once to carry the load: ceil(rate x duration / 86400), at least 1."""
    return max(1, math.ceil(rate_per_day * duration_s / SECONDS_PER_DAY - _SLACK))


def reserved_gpus_needed(rate_per_day: float, duration_s: float, gpu_count: int = 1) -> int:
    """Reserved GPUs that carry ``rate_per_day`` requests of ``duration_s`` on ``gpu_count`` GPUs
    each at no more than 100% utilisation: ``gpu_count x ceil(rate x duration / 86400)``."""
    _check(duration_s, gpu_count)
    if rate_per_day <= 0:
        return 0
    return gpu_count * _workers_needed(rate_per_day, duration_s)


def gpu_hours_per_month(rate_per_day: float, duration_s: float, gpu_count: int = 1) -> float:
    """GPU-hours a month of ``rate_per_day`` requests: rate x duration x GPUs, a 730-hour month."""
    return rate_per_day * duration_s * gpu_count / 3600.0 * DAYS_PER_MONTH


@dataclasses.dataclass(frozen=True, slots=True)
class _Serverless:
    """A serverless price worked out for one duration and GPU count (USD, seconds, per day)."""

    duration_s: float
    warm_request_usd: float  # fee + billed GPU time
    fee_usd: float
    worker_second_usd: float  # per-GPU-second x GPUs
    pool: int
    pool_per_day_usd: float
    cold_starts: bool
    idle_window_s: float | None
    cold_extra_usd: float  # what a cold request adds: billed start-up and billed idle window
    idle_second_usd: float  # a warm worker's idle second, where billed (variant only)

    @classmethod
    def of(
        cls, price: Price, duration_s: float, gpu_count: int, *, cold_starts: bool
    ) -> _Serverless:
        _check(duration_s, gpu_count)
        rules = Rules.from_price(price)
        duration_ns = to_ns(duration_s)
        warm = _worker_usd(rules, gpu_count, duration_ns)
        # A worker's second: its GPUs, and its CPU and memory where the platform charges them.
        worker_second = float(rules.usd_per_gpu_ns(gpu_count) * gpu_count * 1_000_000_000)
        window = price.idle_window_s
        cold_extra = 0.0
        if cold_starts:
            if price.cold_start_s is None:
                raise ValueError(
                    f"platform {price.platform!r} has no cold_start_s in the catalogue: the "
                    "cold-start variant needs it (add it to your pricing file)"
                )
            # A worker started for the request, stopped when its idle window runs out: the
            # engine bills (or not) its start-up and idle time as the platform does.
            cold = _worker_usd(
                rules,
                gpu_count,
                duration_ns,
                cold_start_ns=to_ns(price.cold_start_s),
                idle_after_ns=0 if window is None else to_ns(window),
            )
            cold_extra = float(cold - warm)
        # A pre-warmed worker's day: paid from start to stop, whatever it does.
        pool_day = _worker_usd(always_paid(rules), gpu_count, idle_after_ns=_DAY_NS)
        return cls(
            duration_s=duration_s,
            warm_request_usd=float(warm),
            fee_usd=price.execution_fee_usd,
            worker_second_usd=worker_second,
            pool=price.prewarmed_workers,
            pool_per_day_usd=float(price.prewarmed_workers * pool_day),
            cold_starts=cold_starts,
            idle_window_s=window,
            cold_extra_usd=cold_extra,
            idle_second_usd=worker_second if cold_starts and price.bills_idle else 0.0,
        )

    def line(self, rate_per_day: float) -> tuple[float, float]:
        """(a, b): cost a day is ``a + b x rate`` around ``rate_per_day`` (exact at it)."""
        busy = _workers_needed(rate_per_day, self.duration_s)
        if self.pool >= busy:
            return self.pool_per_day_usd, self.fee_usd
        share = (busy - self.pool) / busy  # the requests the pool cannot take
        intercept = self.pool_per_day_usd
        slope = self.fee_usd + share * (self.warm_request_usd - self.fee_usd)
        if self.cold_starts:
            gap = busy * SECONDS_PER_DAY / rate_per_day - self.duration_s
            if self.idle_window_s is not None and gap > self.idle_window_s:
                slope += share * self.cold_extra_usd
            elif self.idle_second_usd:
                # share x rate x gap is linear in the rate:
                # (busy - pool) x (86400 - rate x duration / busy).
                intercept += (busy - self.pool) * SECONDS_PER_DAY * self.idle_second_usd
                slope -= share * self.duration_s * self.idle_second_usd
        return intercept, slope

    def cost_per_day(self, rate_per_day: float) -> float:
        if rate_per_day <= 0:
            return self.pool_per_day_usd
        intercept, slope = self.line(rate_per_day)
        return intercept + slope * rate_per_day

    def cold_thresholds(self, step: int) -> float | None:
        """The rate in reserved step ``step`` below which requests find their worker gone."""
        if not self.cold_starts or self.idle_window_s is None or step <= self.pool:
            return None
        return step * SECONDS_PER_DAY / (self.duration_s + self.idle_window_s)


def serverless_cost_per_day(
    price: Price,
    rate_per_day: float,
    duration_s: float,
    gpu_count: int = 1,
    *,
    cold_starts: bool = False,
) -> float:
    """What ``rate_per_day`` evenly spaced requests cost a day on a serverless platform (USD):
    its pre-warmed pool, execution fees, and per-request GPU time beyond the pool; with
    ``cold_starts``, also cold starts and idle time as the module docstring describes."""
    model = _Serverless.of(price, duration_s, gpu_count, cold_starts=cold_starts)
    return model.cost_per_day(rate_per_day)


# --------------------------------------------------------------------------------------------
# Crossovers


@dataclasses.dataclass(frozen=True, slots=True)
class Breakeven:
    """Where a serverless platform and reserved GPUs cost the same, for one request duration.

    Rates are requests a day. ``crossover_rates_per_day`` lists every rate where the cheaper side
    changes, ascending: where the costs are equal, or where reserved's cost steps up past
    serverless's as one more GPU is needed. ``first_crossover_per_day`` is the first rate above
    which reserved is cheaper (0.0 when it is cheaper from the lowest rates, ``None`` when it never
    is within ``searched_to_per_day``). ``settled`` says the cheaper side never changes again
    beyond that rate. "Per GPU" is per reserved worker of ``gpu_count`` GPUs where that is above 1.
    """

    serverless_platform: str
    reserved_platform: str
    gpu: str
    duration_s: float
    gpu_count: int
    cold_starts: bool
    serverless_cost_per_request_usd: float
    """A warm request beyond any pre-warmed pool: execution fee + billed GPU time."""
    prewarmed_cost_per_day_usd: float
    reserved_cost_per_gpu_day_usd: float
    reserved_cost_per_request_usd: float
    """At full utilisation: hourly / 3600 x duration x GPUs."""
    capacity_per_gpu_per_day: float
    """Requests one reserved GPU carries a day at 100% utilisation: 86400 / duration."""
    reserved_cheaper_at_start: bool
    crossover_rates_per_day: tuple[float, ...]
    first_crossover_per_day: float | None
    gpu_hours_per_month_at_first: float | None
    """GPU-hours a month (730 h) of serverless traffic at the first crossover."""
    searched_to_per_day: float
    settled: bool

    @property
    def first_crossover_per_hour(self) -> float | None:
        """The first crossover in requests an hour."""
        first = self.first_crossover_per_day
        return None if first is None else first / 24.0

    @property
    def serverless_cheaper_at_full_use(self) -> bool:
        """Whether a serverless request costs less than a reserved one at 100% utilisation: then
        serverless is cheaper at high enough rates, whatever happens below."""
        return self.serverless_cost_per_request_usd < self.reserved_cost_per_request_usd

    def reserved_cheaper_ranges(self) -> list[tuple[float, float | None]]:
        """The rate ranges (start, end) where reserved is cheaper; ``None`` ends a range that
        goes on for ever (only when ``settled``)."""
        # The crossovers alternate: into reserved's range, out of it, into the next...
        edges = list(self.crossover_rates_per_day)
        if self.reserved_cheaper_at_start:
            edges.insert(0, 0.0)
        ranges: list[tuple[float, float | None]] = []
        for index in range(0, len(edges), 2):
            if index + 1 < len(edges):
                ranges.append((edges[index], edges[index + 1]))
            else:
                ranges.append((edges[index], None if self.settled else self.searched_to_per_day))
        return ranges


def crossovers(
    serverless_price: Price,
    reserved_price: Price,
    duration_s: float,
    gpu_count: int = 1,
    max_rate_per_day: float | None = None,
    *,
    cold_starts: bool = False,
) -> Breakeven:
    """Every rate where ``serverless_price`` and ``reserved_price`` swap places as the cheaper,
    for requests of ``duration_s`` on ``gpu_count`` GPUs (see :class:`Breakeven`).

    The search runs until the cheaper side can no longer change (found from bounds on both costs),
    or to ``max_rate_per_day`` when given, and at most 100,000 reserved GPUs' worth of traffic.
    """
    model = _Serverless.of(serverless_price, duration_s, gpu_count, cold_starts=cold_starts)
    worker_day = reserved_cost_per_day(reserved_price, gpu_count)
    capacity = SECONDS_PER_DAY / duration_s
    reserved_per_request = worker_day / capacity
    if max_rate_per_day is not None and not max_rate_per_day > 0:
        raise ValueError(f"max_rate_per_day must be above 0, got {max_rate_per_day!r}")

    end, settles = _search_end(model, worker_day, capacity, reserved_per_request)
    truncated = not settles
    if max_rate_per_day is not None and max_rate_per_day < end:
        end, truncated = max_rate_per_day, True
    if end > _MAX_STEPS * capacity:
        end, truncated = _MAX_STEPS * capacity, True

    switches: list[float] = []
    side = 0  # +1: reserved cheaper, -1: serverless cheaper, 0: not known yet
    start_side = 0
    step = 0
    while step * capacity < end:
        step += 1
        low, high = (step - 1) * capacity, min(step * capacity, end)
        cuts = [low, high]
        threshold = model.cold_thresholds(step)
        if threshold is not None and low < threshold < high:
            cuts.insert(1, threshold)
        reserved = step * worker_day
        for left, right in itertools.pairwise(cuts):
            intercept, slope = model.line((left + right) / 2.0)
            intercept -= reserved  # now serverless minus reserved
            scale = abs(intercept) + abs(slope) * right + reserved
            at_left = intercept + slope * left
            entering = _sign(at_left, scale) or _sign(slope, 0.0)
            if entering:
                if not side:
                    side = start_side = entering
                elif entering != side:
                    switches.append(left)
                    side = entering
            if slope:
                root = -intercept / slope
                # A root within float noise of an end is that end: the costs touch there, and
                # the next interval's start says whether the cheaper side changed.
                margin = 1e-9 * right
                if left + margin < root < right - margin and _sign(slope, 0.0) != side:
                    switches.append(root)
                    side = _sign(slope, 0.0)

    reserved_at_start = start_side > 0
    first: float | None = 0.0 if reserved_at_start else (switches[0] if switches else None)
    return Breakeven(
        serverless_platform=serverless_price.platform,
        reserved_platform=reserved_price.platform,
        gpu=reserved_price.gpu,
        duration_s=duration_s,
        gpu_count=gpu_count,
        cold_starts=cold_starts,
        serverless_cost_per_request_usd=model.warm_request_usd,
        prewarmed_cost_per_day_usd=model.pool_per_day_usd,
        reserved_cost_per_gpu_day_usd=reserved_cost_per_day(reserved_price, 1),
        reserved_cost_per_request_usd=reserved_per_request,
        capacity_per_gpu_per_day=capacity,
        reserved_cheaper_at_start=reserved_at_start,
        crossover_rates_per_day=tuple(switches),
        first_crossover_per_day=first,
        gpu_hours_per_month_at_first=(
            None if first is None else gpu_hours_per_month(first, duration_s, gpu_count)
        ),
        searched_to_per_day=end,
        settled=not truncated,
    )


def _sign(value: float, scale: float) -> int:
    """-1, 0 or +1, with values within float noise of ``scale`` counted as 0."""
    if abs(value) <= 1e-12 * scale:
        return 0
    return 1 if value > 0 else -1


def _search_end(
    model: _Serverless, worker_day: float, capacity: float, reserved_per_request: float
) -> tuple[float, bool]:
    """A rate beyond which the cheaper side cannot change, and whether there is one.

    Past the pool and the rates where requests can be cold, serverless costs between
    ``pool + rate x w - pool x capacity x (w - fee)`` and ``pool + rate x w + a day of billed
    idle``, and reserved between ``rate x r`` and ``rate x r + one GPU-day`` (``w``, ``r``: a
    serverless and a full-use reserved request): once the bounds' difference has one sign, so
    has the difference of the costs.
    """
    special = model.pool * capacity
    window = model.idle_window_s
    per_request = model.warm_request_usd
    if model.cold_starts and window is not None:
        if window > 0:
            # Step n can hold cold requests only while n < 1 + duration / window.
            special = max(special, (model.pool + 1 + model.duration_s / window) * capacity)
        else:
            # No idle window: every request beyond the pool finds its worker gone.
            per_request += model.cold_extra_usd
    excess = per_request - model.fee_usd
    if per_request > reserved_per_request:
        lower_gap = model.pool_per_day_usd - model.pool * capacity * excess - worker_day
        return max(special, -lower_gap / (per_request - reserved_per_request)) + capacity, True
    if per_request < reserved_per_request:
        upper_gap = model.pool_per_day_usd + SECONDS_PER_DAY * model.idle_second_usd
        return max(special, upper_gap / (reserved_per_request - per_request)) + capacity, True
    return math.inf, False


# --------------------------------------------------------------------------------------------
# One rate


@dataclasses.dataclass(frozen=True, slots=True)
class RateComparison:
    """Both sides' cost a day at one rate, the cheaper side and by how much (USD a day)."""

    rate_per_day: float
    serverless_cost_per_day_usd: float
    reserved_gpus: int
    reserved_cost_per_day_usd: float
    cheaper: str
    """``serverless``, ``reserved`` or ``neither`` (equal to the cent's millionth)."""
    margin_usd_per_day: float
    """The dearer side's cost a day minus the cheaper's."""
    margin_percent: float
    """The margin as a share of the dearer side's cost: what choosing the cheaper saves."""


def compare_at_rate(
    serverless_price: Price,
    reserved_price: Price,
    rate_per_day: float,
    duration_s: float,
    gpu_count: int = 1,
    *,
    cold_starts: bool = False,
) -> RateComparison:
    """Serverless and reserved cost a day at ``rate_per_day`` (above 0), and which is cheaper."""
    if not (math.isfinite(rate_per_day) and rate_per_day > 0):
        raise ValueError(f"rate_per_day must be above 0 and finite, got {rate_per_day!r}")
    serverless = serverless_cost_per_day(
        serverless_price, rate_per_day, duration_s, gpu_count, cold_starts=cold_starts
    )
    gpus = reserved_gpus_needed(rate_per_day, duration_s, gpu_count)
    reserved = reserved_cost_per_day(reserved_price, gpus)
    dearer = max(serverless, reserved)
    margin = abs(serverless - reserved)
    if margin <= 1e-8:
        cheaper = "neither"
    else:
        cheaper = "serverless" if serverless < reserved else "reserved"
    return RateComparison(
        rate_per_day=rate_per_day,
        serverless_cost_per_day_usd=serverless,
        reserved_gpus=gpus,
        reserved_cost_per_day_usd=reserved,
        cheaper=cheaper,
        margin_usd_per_day=margin,
        margin_percent=margin / dearer * 100.0 if dearer > 0 else 0.0,
    )
