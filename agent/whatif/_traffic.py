"""Traffic for ``gpuledger compare``: request arrivals and service times, recorded or synthetic.

A :class:`Trace` is what the platform simulator replays: when each request arrived (seconds from
the start of an observation window) and how long the GPU worked on it, without any cold start.
It comes from the ledger (:func:`trace_from_ledger`, :func:`trace_from_records`) or from a
seeded synthetic profile (:func:`synthetic`), and :func:`burstiness` summarises its shape.

Pure and compact: per-request values live in two ``array('d')`` columns (16 bytes a request) and
no per-request Python object outlives the call that builds a trace: a million requests take
16 MB, and a million synthetic ones build in about a second. From the ledger, the time goes to
decoding its rows into records (about 10 s a million), not to building the trace.

Synthetic profiles (``rate_per_hour`` is *r*; the window starts at midnight and lasts ``days``)::

    steady    Poisson arrivals at r per hour, all day.
    bursty    each day, one hour of Poisson arrivals at r per hour (from 00:00 to 01:00), then
              23 hours of silence: r=100 is "100 requests in 1 hour, then silent for 23".
    diurnal   Poisson arrivals whose rate follows a sine over the day: r is the daily mean, the
              rate peaks at 2r at 14:00 and falls to 0 at 02:00.
    spike     steady at r per hour, except for one 10-minute spike each day, at a seeded time,
              during which the rate is 10r.
"""

from __future__ import annotations

import array
import dataclasses
import datetime as dt
import itertools
import math
import random
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol

from gpuledger.ledger import display_location, open_ledger, parse_since
from gpuledger.whatif._workers import optional_numpy

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "LABELS",
    "PROFILES",
    "SERVICE_DISTRIBUTIONS",
    "Burstiness",
    "Trace",
    "burstiness",
    "synthetic",
    "trace_from_ledger",
    "trace_from_records",
]

PROFILES: Final = ("steady", "bursty", "diurnal", "spike")
"""The synthetic traffic profiles :func:`synthetic` knows (see the module docstring)."""
SERVICE_DISTRIBUTIONS: Final = ("fixed", "exp", "lognormal")
"""Service-time distributions; ``lognormal:<sigma>`` sets the lognormal's sigma (default 0.5)."""
LABELS: Final = ("empty", "sparse", "bursty", "varying", "steady")
"""The shapes :func:`burstiness` can name (see :class:`Burstiness`)."""

DAY_S: Final = 86_400.0
HOUR_S: Final = 3_600.0
BURST_S: Final = HOUR_S
"""How long the ``bursty`` profile's daily burst lasts."""
SPIKE_S: Final = 600.0
"""How long the ``spike`` profile's daily spike lasts."""
SPIKE_FACTOR: Final = 10.0
"""The ``spike`` profile's rate during the spike, as a multiple of ``rate_per_hour``."""
DIURNAL_PEAK_HOUR: Final = 14.0
"""The hour of the day at which the ``diurnal`` rate peaks (at twice the mean)."""
DEFAULT_LOGNORMAL_SIGMA: Final = 0.5
MAX_SYNTHETIC_REQUESTS: Final = 20_000_000
"""The most requests :func:`synthetic` expects to build (320 MB of arrays); more is refused."""

# Labels: thresholds of burstiness(). See Burstiness.label.
_MIN_SHAPE_REQUESTS: Final = 10
_IDLE_SHARE_BURSTY: Final = 0.5
_ISOLATED_SHARE_SPARSE: Final = 0.15
_PEAK_TO_MEAN_VARYING: Final = 1.5
_PEAK_NOISE_SIGMAS: Final = 6.0

_MIN_SERVICE_S: Final = 1e-6
"""Floor of a drawn service time, so that every synthetic request takes some time."""
_DURATION_UNITS_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?$", re.IGNORECASE)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Trace:
    """Requests to replay: arrival instants and service times over an observation window.

    Seconds throughout; ``None`` means unknown. The arrays are not copied or frozen: treat them
    as read-only.
    """

    arrivals_s: array.array[float] = dataclasses.field(repr=False)
    """``'d'`` array, ascending: each request's arrival, in seconds from the window start."""
    services_s: array.array[float] = dataclasses.field(repr=False)
    """``'d'`` array, same length: each request's service time, cold start excluded."""
    window_s: float
    """The observation window's length (at least the last arrival)."""
    input_tokens: int | None
    """Total input tokens where recorded; None when no request recorded any."""
    output_tokens: int | None
    gpu: str | None
    """The GPU model (the most common among the records); None when unknown."""
    gpu_count: int
    """GPUs each request holds (the most common count), at least 1."""
    origin_ns: int
    """Unix nanoseconds of the window start, for dates in reports."""
    source: str
    """Where the traffic came from, for people: ``ledger gpuledger.db since 2026-11-21``."""
    init_s: float | None = None
    """Median measured process init of the cold records (what a cold start took where this
    traffic ran); None for synthetic traffic or when no record measured one."""

    def __len__(self) -> int:
        return len(self.arrivals_s)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Burstiness:
    """How bursty a trace is: rates per hour, shares from 0 to 1, seconds.

    ``label`` names the shape, by the first rule that matches:

    - ``empty``: no requests.
    - ``sparse``: fewer than 10 requests (too few to have a shape), or the window is mostly idle
      (``idle_share`` >= 0.5) and at least 15% of requests arrive alone (``isolated_share`` >=
      0.15): a trickle, the GPU going cold between many requests. Poisson traffic slower than
      about 6 per hour lands here: with a 15-minute idle gap it is always at least 18% isolated
      once it is half idle.
    - ``bursty``: mostly idle, yet nearly every request arrives close behind another: bursts
      separated by silences. 100 requests in 1 hour, then silent for 23, scores an ``idle_share``
      of about 0.96 and an ``isolated_share`` of about 0.01.
    - ``varying``: busy most of the time, but the busiest bucket holds at least 1.5 times the mean
      count *and* more than Poisson noise explains (mean + 6 standard deviations): a daily cycle,
      a spike, a ramp. Below about 10 requests an hour a 2x daily cycle or a 10-minute spike
      hides in the noise and reads ``steady``.
    - ``steady``: otherwise: a smooth stream, the case where a reserved GPU can pay off.
    """

    requests: int
    window_s: float
    mean_rate_per_hour: float
    """Requests per hour over the whole window; nan for a window of length 0."""
    peak_rate_per_hour: float
    """Requests per hour in the busiest sliding bucket (any ``bucket_s`` interval, not clock
    hours; the whole window when it is shorter than a bucket)."""
    peak_to_mean: float
    """``peak_rate_per_hour / mean_rate_per_hour``: 1 for perfectly even traffic."""
    idle_share: float
    """Share of the window spent in gaps longer than ``idle_gap_s`` in which no request was
    arriving or being served (the gap before the first request and after the last one count)."""
    isolated_share: float
    """Share of requests arriving after such a gap (the first request counts): a lower bound on
    the cold-start share of a platform that keeps workers warm for ``idle_gap_s``."""
    interarrival_cv: float
    """Coefficient of variation of the times between consecutive arrivals: about 1 for Poisson
    traffic, above 1 when requests cluster; nan with fewer than 3 requests."""
    label: str
    """One of :data:`LABELS`, by the rules above."""
    idle_gap_s: float
    """The idle threshold used, seconds."""
    bucket_s: float
    """The peak bucket used, seconds."""


# --- traffic from records ------------------------------------------------------------------------


class _Usage(Protocol):
    """What a replay reads of a record: an InvocationRecord, or the ledger's lighter Usage."""

    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def input_tokens(self) -> int | None: ...
    @property
    def output_tokens(self) -> int | None: ...
    @property
    def gpu_model(self) -> str | None: ...
    @property
    def gpu_count(self) -> int: ...
    @property
    def init_duration_s(self) -> float | None: ...
    @property
    def cold(self) -> bool: ...


def trace_from_records(
    records: Iterable[_Usage],
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> Trace:
    """The trace of ``records`` that started in ``[since_ns, until_ns)`` (Unix ns; either open).

    The window starts at ``since_ns`` (else at the first record's start) and ends at
    ``until_ns`` (else when the last request ended). A request arrives at its ``start_ns``.

    Its service time is its ``duration_s``, whole. ``duration_s`` runs from the handler's entry to
    its return, while the process init that a cold request waited for (``init_duration_s`` and
    the ``init_phases`` it is split into) ran *before* the handler was entered: it is not part of
    ``duration_s``, so nothing is subtracted, and the simulator adds each platform's own cold start
    on top. (A handler that loads its model lazily inside its first request carries that load in
    the first request's duration; this version cannot tell it apart.) A request whose
    ``duration_s`` is missing or not a number falls back to ``end_ns - start_ns``.

    Every outcome is kept, ``killed``, ``error``, ``timeout`` and ``cancelled`` included: those
    requests held the GPU, and every platform bills the time. Records may come in any order.
    Empty input gives a trace with no requests (and a window of ``until_ns - since_ns`` when both
    are given, else 0).
    """
    starts_ns: array.array[int] = array.array("q")
    services_s: array.array[float] = array.array("d")
    last_end_ns: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    gpus: Counter[str] = Counter()
    gpu_counts: Counter[int] = Counter()
    init_durations_s: list[float] = []
    in_order = True
    previous_start_ns: int | None = None
    for record in records:
        start_ns = record.start_ns
        if (since_ns is not None and start_ns < since_ns) or (
            until_ns is not None and start_ns >= until_ns
        ):
            continue
        if previous_start_ns is not None and start_ns < previous_start_ns:
            in_order = False
        previous_start_ns = start_ns
        starts_ns.append(start_ns)
        duration_s = record.duration_s
        if duration_s is None or not math.isfinite(duration_s) or duration_s < 0:
            duration_s = max(0, record.end_ns - start_ns) / 1e9
        services_s.append(duration_s)
        end_ns = max(record.end_ns, start_ns)
        if last_end_ns is None or end_ns > last_end_ns:
            last_end_ns = end_ns
        if record.input_tokens is not None:
            input_tokens = (input_tokens or 0) + record.input_tokens
        if record.output_tokens is not None:
            output_tokens = (output_tokens or 0) + record.output_tokens
        if record.gpu_model:
            gpus[record.gpu_model] += 1
        gpu_counts[record.gpu_count] += 1
        init_s = record.init_duration_s
        if record.cold and init_s is not None and math.isfinite(init_s) and init_s >= 0:
            init_durations_s.append(init_s)

    if since_ns is not None:
        origin_ns = since_ns
    elif starts_ns:
        origin_ns = min(starts_ns)
    else:
        origin_ns = 0
    if until_ns is not None:
        end_of_window_ns = max(until_ns, origin_ns)
    elif last_end_ns is not None:
        end_of_window_ns = last_end_ns
    else:
        end_of_window_ns = origin_ns

    if not in_order:
        # A stable sort of the indices: records starting together keep their input order.
        order = sorted(range(len(starts_ns)), key=starts_ns.__getitem__)
        starts_ns = array.array("q", (starts_ns[index] for index in order))
        services_s = array.array("d", (services_s[index] for index in order))
    arrivals_s = array.array("d", ((start_ns - origin_ns) / 1e9 for start_ns in starts_ns))

    # most_common() breaks ties by first appearance, so the result does not depend on hashing.
    common_count = gpu_counts.most_common(1)[0][0] if gpu_counts else 1
    return Trace(
        arrivals_s=arrivals_s,
        services_s=services_s,
        window_s=(end_of_window_ns - origin_ns) / 1e9,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        gpu=gpus.most_common(1)[0][0] if gpus else None,
        gpu_count=max(1, common_count),
        origin_ns=origin_ns,
        source="records" if since_ns is None else f"records since {_format_instant(since_ns)}",
        init_s=statistics.median(init_durations_s) if init_durations_s else None,
    )


def trace_from_ledger(
    location: str, *, since: str | None = None, now_ns: int | None = None
) -> Trace:
    """The trace of the ledger at ``location``: every record, or those since ``since``.

    ``since`` is what ``gpuledger report --since`` takes (``7d``, ``2026-11-21``...), read
    relative to ``now_ns`` (default: the current time). With ``since``, the window runs from then
    to ``now_ns``, so trailing silence counts; without it, from the first request's start to the
    last one's end. Raises :class:`~gpuledger.LedgerError` when there is no readable ledger
    (it is never created) and :class:`ValueError` when ``since`` cannot be read.
    """
    since_ns: int | None = None
    until_ns: int | None = None
    if since is not None:
        now_ns = time.time_ns() if now_ns is None else now_ns
        since_ns = parse_since(since, now_ns=now_ns)
        until_ns = now_ns
    with open_ledger(location, create=False) as ledger:
        trace = trace_from_records(
            ledger.read_usage(since_ns=since_ns, until_ns=until_ns),
            since_ns=since_ns,
            until_ns=until_ns,
        )
    source = f"ledger {display_location(location)}"
    if since_ns is not None:
        source += f" since {_format_instant(since_ns)}"
    return dataclasses.replace(trace, source=source)


# --- synthetic traffic ---------------------------------------------------------------------------


def synthetic(
    profile: str,
    *,
    rate_per_hour: float,
    duration_s: float | str = 15.0,
    days: float = 1.0,
    service: str = "fixed",
    seed: int = 0,
    tokens_per_request: int | None = None,
    gpu: str | None = None,
    gpu_count: int = 1,
    origin_ns: int = 0,
) -> Trace:
    """A seeded synthetic trace of ``days`` days of ``profile`` traffic (see the module docstring).

    ``rate_per_hour`` is requests per hour: the steady rate, the rate inside the bursty profile's
    daily hour, the diurnal profile's daily mean, the spike profile's rate outside its spike.
    ``duration_s`` is the mean service time: seconds, or text such as ``15s``, ``500ms``, ``2m``.
    ``service`` draws each service time: ``fixed`` (every request takes ``duration_s``), ``exp``
    (exponential), ``lognormal`` (sigma 0.5) or ``lognormal:<sigma>``, all with mean
    ``duration_s``.

    ``tokens_per_request`` counts input and output tokens together; the totals split each
    request's tokens evenly, the odd token going to input. ``gpu``, ``gpu_count`` and
    ``origin_ns`` (the Unix ns of the window start, a midnight; default the epoch) are carried
    into the trace as given.

    Fully reproducible: the same arguments give identical arrays, and the arrivals depend only
    on ``profile``, ``rate_per_hour``, ``days`` and ``seed``. Raises :class:`ValueError` naming the
    argument on a bad value.
    """
    if profile not in PROFILES:
        raise ValueError(
            f"profile={profile!r}: unknown profile; choose one of {_choices(PROFILES)}"
        )
    rate = _positive("rate_per_hour", rate_per_hour)
    span_days = _positive("days", days)
    mean_service_s = parse_duration(duration_s)
    distribution, sigma = _parse_service(service)
    if tokens_per_request is not None and (
        isinstance(tokens_per_request, bool)
        or not isinstance(tokens_per_request, int)
        or tokens_per_request < 0
    ):
        raise ValueError(
            f"tokens_per_request={tokens_per_request!r}: must be a whole number >= 0, or None"
        )
    if isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or gpu_count < 1:
        raise ValueError(f"gpu_count={gpu_count!r}: must be a whole number >= 1")
    expected = rate * span_days * _hours_at_rate_per_day(profile)
    if expected > MAX_SYNTHETIC_REQUESTS:
        raise ValueError(
            f"rate_per_hour={rate_per_hour!r} with days={days!r} would make about "
            f"{expected:,.0f} requests of the {profile} profile; at most "
            f"{MAX_SYNTHETIC_REQUESTS:,} are supported"
        )

    window_s = span_days * DAY_S
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    arrivals_s = _ARRIVALS[profile](rng, rate / HOUR_S, window_s)
    services_s = _draw_services(rng, distribution, mean_service_s, sigma, len(arrivals_s))

    input_tokens = output_tokens = None
    if tokens_per_request is not None:
        input_tokens = len(arrivals_s) * (tokens_per_request - tokens_per_request // 2)
        output_tokens = len(arrivals_s) * (tokens_per_request // 2)
    return Trace(
        arrivals_s=arrivals_s,
        services_s=services_s,
        window_s=window_s,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        gpu=gpu,
        gpu_count=gpu_count,
        origin_ns=origin_ns,
        source=_describe_profile(profile, rate, span_days, mean_service_s, distribution, sigma)
        + f", seed {seed}",
    )


def parse_duration(value: float | str) -> float:
    """Seconds from ``value``: a number of seconds, or text such as ``15``, ``15s``, ``500ms``,
    ``2m``, ``1h``. Raises :class:`ValueError` unless it is a finite number above 0."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match is None:
            raise ValueError(
                f"duration_s={value!r}: give seconds, or a number with a unit: 500ms, 15s, 2m, 1h"
            )
        amount, unit = match.groups()
        seconds = float(amount) * _DURATION_UNITS_S[(unit or "s").lower()]
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"duration_s={value!r}: give seconds, or text such as 500ms, 15s, 2m, 1h")
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration_s={value!r}: the mean service time must be above 0")
    return seconds


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}={value!r}: must be a number above 0")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name}={value!r}: must be a finite number above 0")
    return number


def _parse_service(service: str) -> tuple[str, float]:
    """The distribution name and lognormal sigma that ``service`` names."""
    name, _, parameter = service.strip().lower().partition(":")
    if name in SERVICE_DISTRIBUTIONS and not parameter:
        return name, DEFAULT_LOGNORMAL_SIGMA
    if name == "lognormal":
        try:
            sigma = float(parameter)
        except ValueError:
            sigma = math.nan
        if math.isfinite(sigma) and sigma > 0:
            return name, sigma
        raise ValueError(
            f"service={service!r}: the lognormal sigma must be a number above 0 (lognormal:0.8)"
        )
    raise ValueError(
        f"service={service!r}: unknown service-time distribution; choose one of "
        f"{_choices(SERVICE_DISTRIBUTIONS)}, or lognormal:<sigma> (lognormal:0.8)"
    )


def _hours_at_rate_per_day(profile: str) -> float:
    """Mean hours a day at ``rate_per_hour`` that ``profile`` amounts to (for the size check)."""
    if profile == "bursty":
        return BURST_S / HOUR_S
    if profile == "spike":
        return 24 + (SPIKE_FACTOR - 1) * SPIKE_S / HOUR_S
    return 24.0


def _poisson(
    rng: random.Random, rate_per_s: float, start_s: float, end_s: float, out: array.array[float]
) -> None:
    """Append Poisson arrivals at ``rate_per_s`` over ``[start_s, end_s)`` to ``out``."""
    draw = rng.expovariate
    append = out.append
    instant_s = start_s
    while True:
        instant_s += draw(rate_per_s)
        if instant_s >= end_s:
            return
        append(instant_s)


def _steady(rng: random.Random, rate_per_s: float, window_s: float) -> array.array[float]:
    arrivals_s: array.array[float] = array.array("d")
    _poisson(rng, rate_per_s, 0.0, window_s, arrivals_s)
    return arrivals_s


def _bursty(rng: random.Random, rate_per_s: float, window_s: float) -> array.array[float]:
    arrivals_s: array.array[float] = array.array("d")
    for day in range(math.ceil(window_s / DAY_S)):
        start_s = day * DAY_S
        _poisson(rng, rate_per_s, start_s, min(start_s + BURST_S, window_s), arrivals_s)
    return arrivals_s


def _diurnal(rng: random.Random, mean_rate_per_s: float, window_s: float) -> array.array[float]:
    # Thinning (Lewis and Shedler): candidates at the peak rate 2r, each kept with probability
    # rate(t) / 2r = (1 + sin(phase)) / 2, which is exact for an inhomogeneous Poisson process.
    candidates = _steady(rng, 2 * mean_rate_per_s, window_s)
    arrivals_s: array.array[float] = array.array("d")
    keep = rng.random
    angular_s = 2 * math.pi / DAY_S
    # sin(angular * (t - peak + 6 h)) is 1 at the peak hour and -1 twelve hours away.
    shift_s = (DIURNAL_PEAK_HOUR - 6) * HOUR_S
    for instant_s in candidates:
        if 2 * keep() < 1 + math.sin(angular_s * (instant_s - shift_s)):
            arrivals_s.append(instant_s)
    return arrivals_s


def _spike(rng: random.Random, rate_per_s: float, window_s: float) -> array.array[float]:
    arrivals_s: array.array[float] = array.array("d")
    for day in range(math.ceil(window_s / DAY_S)):
        day_start_s = day * DAY_S
        day_end_s = min(day_start_s + DAY_S, window_s)
        spike_start_s = rng.uniform(day_start_s, max(day_start_s, day_end_s - SPIKE_S))
        spike_end_s = min(spike_start_s + SPIKE_S, day_end_s)
        _poisson(rng, rate_per_s, day_start_s, spike_start_s, arrivals_s)
        _poisson(rng, SPIKE_FACTOR * rate_per_s, spike_start_s, spike_end_s, arrivals_s)
        _poisson(rng, rate_per_s, spike_end_s, day_end_s, arrivals_s)
    return arrivals_s


_ARRIVALS: Final[dict[str, Callable[[random.Random, float, float], array.array[float]]]] = {
    "steady": _steady,
    "bursty": _bursty,
    "diurnal": _diurnal,
    "spike": _spike,
}


def _draw_services(
    rng: random.Random, distribution: str, mean_s: float, sigma: float, count: int
) -> array.array[float]:
    if distribution == "fixed":
        return array.array("d", [mean_s]) * count
    if distribution == "exp":
        draw_exp = rng.expovariate
        rate = 1 / mean_s
        return array.array("d", (max(_MIN_SERVICE_S, draw_exp(rate)) for _ in range(count)))
    # A lognormal's mean is exp(mu + sigma^2 / 2).
    mu = math.log(mean_s) - sigma * sigma / 2
    draw_lognormal = rng.lognormvariate
    return array.array("d", (max(_MIN_SERVICE_S, draw_lognormal(mu, sigma)) for _ in range(count)))


def _describe_profile(
    profile: str, rate: float, days: float, mean_s: float, distribution: str, sigma: float
) -> str:
    span = f"{days:g} day" + ("" if days == 1 else "s")
    if profile == "steady":
        shape = f"{rate:g} req/h for {span}"
    elif profile == "bursty":
        shape = f"{rate:g} req/h for 1 h every 24 h over {span}"
    elif profile == "diurnal":
        shape = (
            f"{rate:g} req/h daily mean (peak {2 * rate:g} at {DIURNAL_PEAK_HOUR:02.0f}:00) "
            f"over {span}"
        )
    else:
        shape = (
            f"{rate:g} req/h with a {SPIKE_S / 60:g} min spike to {SPIKE_FACTOR * rate:g} req/h "
            f"each day over {span}"
        )
    if distribution == "fixed":
        each = f"{mean_s:g} s each"
    elif distribution == "exp":
        each = f"exponential service, mean {mean_s:g} s"
    else:
        each = f"lognormal service, mean {mean_s:g} s, sigma {sigma:g}"
    return f"profile {profile}: {shape}, {each}"


# --- shape ---------------------------------------------------------------------------------------


def burstiness(trace: Trace, *, idle_gap_s: float = 900.0, bucket_s: float = 3600.0) -> Burstiness:
    """Summarise how bursty ``trace`` is; see :class:`Burstiness` for each number and the label.

    ``idle_gap_s`` is the silence after which a worker counts as idle (default 900 s, RunPod's
    idle window); ``bucket_s`` the length of the sliding bucket the peak rate is measured over.
    """
    if not (math.isfinite(idle_gap_s) and idle_gap_s >= 0):
        raise ValueError(f"idle_gap_s={idle_gap_s!r}: must be a finite number >= 0")
    if not (math.isfinite(bucket_s) and bucket_s > 0):
        raise ValueError(f"bucket_s={bucket_s!r}: must be a finite number above 0")
    arrivals_s = trace.arrivals_s
    requests = len(arrivals_s)
    window_s = trace.window_s

    numpy = optional_numpy()
    if numpy is not None and requests:
        arrivals = numpy.asarray(arrivals_s, dtype=numpy.float64)
        if not bool(numpy.all(arrivals[1:] >= arrivals[:-1])):
            numpy = None  # not a trace's order: the walk below, request by request
    if numpy is not None and requests:
        idle_s, isolated, busy_until_s = _idle_arrays(numpy, trace, idle_gap_s)
    else:
        idle_s, isolated, busy_until_s = _idle_walk(trace, idle_gap_s)
    if window_s - busy_until_s > idle_gap_s:
        idle_s += window_s - busy_until_s

    if window_s > 0:
        span_s = min(bucket_s, window_s)
        mean_rate = requests / window_s * HOUR_S
        busiest = (
            _busiest_arrays(numpy, arrivals, span_s)
            if numpy is not None and requests
            else _busiest(arrivals_s, span_s)
        )
        peak_rate = busiest / span_s * HOUR_S
        idle_share = idle_s / window_s
    else:
        span_s = 0.0
        mean_rate = peak_rate = math.nan
        idle_share = 0.0
    shape = Burstiness(
        requests=requests,
        window_s=window_s,
        mean_rate_per_hour=mean_rate,
        peak_rate_per_hour=peak_rate,
        peak_to_mean=peak_rate / mean_rate if mean_rate > 0 else math.nan,
        idle_share=idle_share,
        isolated_share=isolated / requests if requests else 0.0,
        interarrival_cv=_interarrival_cv(arrivals_s, numpy),
        label="",
        idle_gap_s=idle_gap_s,
        bucket_s=bucket_s,
    )
    return dataclasses.replace(shape, label=_label(shape, span_s))


def _idle_walk(trace: Trace, idle_gap_s: float) -> tuple[float, int, float]:
    """Idle time (gaps over ``idle_gap_s`` between busy periods, the window start counting as
    the end of one), isolated requests (the first, and each after such a gap), and when the
    last request finished: walking the busy periods, ``busy_until_s`` being when the last
    request so far finished, the window start before the first."""
    idle_s = 0.0
    isolated = 0
    busy_until_s = 0.0
    pairs = zip(trace.arrivals_s, trace.services_s, strict=True)
    for index, (arrival_s, service_s) in enumerate(pairs):
        gap_s = arrival_s - busy_until_s
        if gap_s > idle_gap_s:
            idle_s += gap_s
            isolated += 1
        elif index == 0:
            isolated += 1  # no worker is known to be warm before the first request
        busy_until_s = max(busy_until_s, arrival_s + service_s)
    return idle_s, isolated, busy_until_s


def _idle_arrays(numpy: ModuleType, trace: Trace, idle_gap_s: float) -> tuple[float, int, float]:
    """:func:`_idle_walk` over arrays (at least one request, arrivals in order): the same float
    operations, the gaps summed one after another as the walk sums them."""
    arrivals = numpy.asarray(trace.arrivals_s, dtype=numpy.float64)
    services = numpy.asarray(trace.services_s, dtype=numpy.float64)
    if len(arrivals) != len(services):
        raise ValueError("arrivals and services differ in length")
    # When the last request so far finished, before each request (the window start at first).
    busy_until = numpy.maximum(numpy.maximum.accumulate(arrivals + services), 0.0)
    before = numpy.concatenate(([0.0], busy_until[:-1]))
    gaps = arrivals - before
    idle = gaps > idle_gap_s
    idle_gaps = gaps[idle]
    idle_s = float(numpy.cumsum(idle_gaps)[-1]) if len(idle_gaps) else 0.0
    isolated = len(idle_gaps) + (0 if idle[0] else 1)
    return idle_s, isolated, float(busy_until[-1])


def _busiest_arrays(numpy: ModuleType, arrivals: Any, span_s: float) -> int:
    """:func:`_busiest` over an array of arrivals in order."""
    first = numpy.searchsorted(arrivals, arrivals - span_s, side="right")
    return int((numpy.arange(1, len(arrivals) + 1) - first).max())


def _busiest(arrivals_s: array.array[float], span_s: float) -> int:
    """The most arrivals in any interval ``(t - span_s, t]``."""
    most = 0
    first = 0
    for last, arrival_s in enumerate(arrivals_s):
        limit_s = arrival_s - span_s
        while arrivals_s[first] <= limit_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def _interarrival_cv(arrivals_s: array.array[float], numpy: ModuleType | None) -> float:
    if len(arrivals_s) < 3:
        return math.nan
    if numpy is None:
        gaps_s = [later - earlier for earlier, later in itertools.pairwise(arrivals_s)]
    else:
        arrivals = numpy.asarray(arrivals_s, dtype=numpy.float64)
        gaps_s = (arrivals[1:] - arrivals[:-1]).tolist()
    mean_s = (arrivals_s[-1] - arrivals_s[0]) / len(gaps_s)
    if mean_s <= 0:
        return math.nan
    variance = math.fsum([(gap_s - mean_s) ** 2 for gap_s in gaps_s]) / len(gaps_s)
    return math.sqrt(variance) / mean_s


def _label(shape: Burstiness, span_s: float) -> str:
    if shape.requests == 0:
        return "empty"
    if shape.requests < _MIN_SHAPE_REQUESTS:
        return "sparse"
    if shape.idle_share >= _IDLE_SHARE_BURSTY:
        return "sparse" if shape.isolated_share >= _ISOLATED_SHARE_SPARSE else "bursty"
    # The peak bucket's count against the mean count per bucket, beyond Poisson noise.
    mean_count = shape.requests * span_s / shape.window_s
    peak_count = shape.peak_rate_per_hour * span_s / HOUR_S
    noise_ceiling = mean_count + _PEAK_NOISE_SIGMAS * math.sqrt(mean_count)
    if shape.peak_to_mean >= _PEAK_TO_MEAN_VARYING and peak_count > noise_ceiling:
        return "varying"
    return "steady"


def _format_instant(instant_ns: int) -> str:
    """``2026-11-21`` for a UTC midnight, else ``2026-11-21 14:05 UTC``."""
    instant = _EPOCH + dt.timedelta(microseconds=instant_ns // 1000)
    if instant.hour == instant.minute == instant.second == instant.microsecond == 0:
        return instant.date().isoformat()
    return instant.strftime("%Y-%m-%d %H:%M UTC")


def _choices(names: Iterable[str]) -> str:
    return ", ".join(names)
