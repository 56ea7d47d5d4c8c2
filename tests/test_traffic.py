"""Traffic traces: from records and the ledger, synthetic profiles, and their burstiness."""

from __future__ import annotations

import array
import bisect
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuledger import LedgerError
from gpuledger.ledger import open_ledger
from gpuledger.testing import RECORDS_START_NS, make_record
from gpuledger.whatif._traffic import (
    LABELS,
    PROFILES,
    Trace,
    burstiness,
    parse_duration,
    synthetic,
    trace_from_ledger,
    trace_from_records,
)

BASE_NS = RECORDS_START_NS  # 2026-03-01T00:00:00Z
SECOND_NS = 1_000_000_000
HOUR_NS = 3600 * SECOND_NS
DAY_S = 86_400.0


def make_trace(arrivals_s: list[float], services_s: list[float], window_s: float) -> Trace:
    """A hand-made trace with no tokens and no GPU."""
    return Trace(
        arrivals_s=array.array("d", arrivals_s),
        services_s=array.array("d", services_s),
        window_s=window_s,
        input_tokens=None,
        output_tokens=None,
        gpu=None,
        gpu_count=1,
        origin_ns=0,
        source="test",
    )


def within_poisson(count: int, expected: float, sigmas: float = 5.0) -> bool:
    """Whether a Poisson count is within ``sigmas`` standard deviations of its mean."""
    return abs(count - expected) <= sigmas * math.sqrt(expected)


# --- from records --------------------------------------------------------------------------------


def test_records_are_sorted_and_measured_from_the_first_start() -> None:
    """Arrivals are sorted, keep their own service time, and count from the first start."""
    records = [make_record(30, 5.0), make_record(10, 2.0), make_record(20, 3.0)]
    trace = trace_from_records(records)
    assert list(trace.arrivals_s) == [0.0, 10.0, 20.0]
    assert list(trace.services_s) == [2.0, 3.0, 5.0]
    assert trace.origin_ns == BASE_NS + 10 * SECOND_NS
    assert trace.window_s == pytest.approx(25.0)  # first start to the last end (30 + 5)
    assert len(trace) == 3


def test_since_and_until_bound_the_window_and_filter_records() -> None:
    """since is inclusive, until exclusive; the window spans exactly since to until."""
    records = [make_record(-1), make_record(0), make_record(50), make_record(100)]
    trace = trace_from_records(records, since_ns=BASE_NS, until_ns=BASE_NS + 100 * SECOND_NS)
    assert list(trace.arrivals_s) == [0.0, 50.0]
    assert trace.window_s == 100.0
    assert trace.origin_ns == BASE_NS
    assert trace.source == "records since 2026-03-01"


def test_tokens_are_none_when_unrecorded_and_totals_otherwise() -> None:
    """Token totals sum the records that have them; None when no record has any."""
    assert trace_from_records([make_record(0), make_record(1)]).input_tokens is None
    trace = trace_from_records(
        [make_record(0, input_tokens=100), make_record(1, input_tokens=20, output_tokens=7)]
    )
    assert trace.input_tokens == 120
    assert trace.output_tokens == 7


def test_gpu_is_the_most_common_model_and_count() -> None:
    """The GPU model and count are the most common among the records; unknown stays None."""
    records = [
        make_record(0, gpu_model="A100", gpu_count=1),
        make_record(1, gpu_model="H100", gpu_count=2),
        make_record(2, gpu_model="H100", gpu_count=2),
        make_record(3, gpu_model=None, gpu_count=2),
    ]
    trace = trace_from_records(records)
    assert (trace.gpu, trace.gpu_count) == ("H100", 2)
    assert trace_from_records([make_record(0)]).gpu is None


def test_service_excludes_nothing_and_killed_requests_stay() -> None:
    """A cold request's service is its duration (init ran before it); killed requests count."""
    records = [
        make_record(0, 2.0, cold=True, init_duration_s=30.0, init_phases={"load": 25.0}),
        make_record(10, 4.0, outcome="killed"),
        make_record(20, 1.0, cold=True, init_duration_s=10.0),
    ]
    trace = trace_from_records(records)
    assert list(trace.services_s) == [2.0, 4.0, 1.0]
    assert trace.init_s == 20.0  # the median measured init
    assert trace_from_records([make_record(0)]).init_s is None


def test_a_missing_duration_falls_back_to_the_timestamps() -> None:
    """A record whose duration_s is missing or NaN is served for end_ns - start_ns."""
    record = make_record(0, 3.0)
    record.duration_s = math.nan
    assert list(trace_from_records([record]).services_s) == [3.0]


def test_no_records_make_an_empty_trace() -> None:
    """No records give a trace with no requests, which burstiness calls empty."""
    trace = trace_from_records([], since_ns=BASE_NS, until_ns=BASE_NS + HOUR_NS)
    assert len(trace) == 0
    assert trace.window_s == 3600.0
    assert (trace.input_tokens, trace.gpu, trace.gpu_count) == (None, None, 1)
    shape = burstiness(trace)
    assert shape.label == "empty"
    assert shape.idle_share == 1.0


def test_ledger_trace_runs_from_since_to_now(tmp_path: Path) -> None:
    """A ledger trace with --since counts trailing silence and names its source."""
    location = str(tmp_path / "gpuledger.db")
    with open_ledger(location) as ledger:
        ledger.write([make_record(-60), make_record(60, input_tokens=5), make_record(120)])
    now_ns = BASE_NS + 2 * HOUR_NS
    trace = trace_from_ledger(location, since="2026-03-01", now_ns=now_ns)
    assert list(trace.arrivals_s) == [60.0, 120.0]
    assert trace.window_s == 7200.0
    assert trace.input_tokens == 5
    assert trace.source == f"ledger {location} since 2026-03-01"
    everything = trace_from_ledger(location)
    assert len(everything) == 3
    assert everything.source == f"ledger {location}"


def test_a_missing_ledger_raises_and_is_not_created(tmp_path: Path) -> None:
    """Reading a ledger that does not exist raises LedgerError and leaves no file."""
    location = tmp_path / "absent.db"
    with pytest.raises(LedgerError, match="no ledger"):
        trace_from_ledger(str(location))
    assert not location.exists()


def test_an_unreadable_since_raises_value_error(tmp_path: Path) -> None:
    """A --since that is neither a duration nor a date raises ValueError."""
    location = str(tmp_path / "gpuledger.db")
    open_ledger(location).close()
    with pytest.raises(ValueError, match="start time"):
        trace_from_ledger(location, since="last tuesday")


# --- synthetic profiles --------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_the_same_seed_gives_the_same_trace(profile: str) -> None:
    """Equal arguments give identical arrays; another seed gives other arrivals."""
    first = synthetic(profile, rate_per_hour=50, days=2, service="exp", seed=3)
    again = synthetic(profile, rate_per_hour=50, days=2, service="exp", seed=3)
    other = synthetic(profile, rate_per_hour=50, days=2, service="exp", seed=4)
    assert first.arrivals_s == again.arrivals_s
    assert first.services_s == again.services_s
    assert first.arrivals_s != other.arrivals_s


def test_arrivals_do_not_depend_on_the_service_distribution() -> None:
    """Changing only the service distribution leaves the arrivals as they were."""
    fixed = synthetic("diurnal", rate_per_hour=40, service="fixed", seed=1)
    drawn = synthetic("diurnal", rate_per_hour=40, service="lognormal:0.8", seed=1)
    assert fixed.arrivals_s == drawn.arrivals_s
    assert fixed.services_s != drawn.services_s


def test_bursty_arrives_in_the_first_hour_of_each_day() -> None:
    """Bursty traffic arrives only in [d*86400, d*86400 + 3600), at the rate inside the hour."""
    days = 5
    trace = synthetic("bursty", rate_per_hour=100, days=days, seed=7)
    assert trace.window_s == days * DAY_S
    for day in range(days):
        in_burst = [t for t in trace.arrivals_s if day * DAY_S <= t < day * DAY_S + 3600]
        assert within_poisson(len(in_burst), 100)
    assert all(t % DAY_S < 3600 for t in trace.arrivals_s)


def test_bursty_is_idle_23_hours_in_24() -> None:
    """The seed's 100 requests in 1 hour, then silent for 23, is labelled bursty."""
    shape = burstiness(synthetic("bursty", rate_per_hour=100, days=1, seed=7))
    assert shape.idle_share == pytest.approx(23 / 24, abs=0.01)
    assert shape.peak_to_mean == pytest.approx(24)
    assert shape.isolated_share < 0.05
    assert shape.label == "bursty"


def test_steady_is_poisson_at_the_rate() -> None:
    """Steady traffic comes at the rate, with inter-arrival CV near 1, and reads steady."""
    trace = synthetic("steady", rate_per_hour=100, days=2, seed=7)
    assert within_poisson(len(trace), 100 * 48)
    shape = burstiness(trace)
    assert shape.interarrival_cv == pytest.approx(1.0, abs=0.1)
    assert shape.mean_rate_per_hour == pytest.approx(100, rel=0.1)
    assert shape.idle_share == 0.0
    assert shape.label == "steady"


def test_diurnal_peaks_in_the_afternoon_and_empties_at_night() -> None:
    """Diurnal traffic averages the rate, is busy around 14:00 and near silent around 02:00."""
    days = 7
    trace = synthetic("diurnal", rate_per_hour=100, days=days, seed=7)
    assert within_poisson(len(trace), 100 * 24 * days)
    hours = [t % DAY_S / 3600 for t in trace.arrivals_s]
    afternoon = sum(13 <= hour < 15 for hour in hours)
    night = sum(1 <= hour < 3 for hour in hours)
    assert afternoon > 20 * max(night, 1)
    shape = burstiness(trace)
    assert shape.peak_to_mean == pytest.approx(2.0, abs=0.5)
    assert shape.label == "varying"


def test_spike_holds_ten_times_the_rate_for_ten_minutes_a_day() -> None:
    """Each day has one 10-minute stretch at 10x the rate, at a time of day set by the seed."""
    days = 3
    trace = synthetic("spike", rate_per_hour=60, days=days, seed=7)
    assert within_poisson(len(trace), 60 * (24 + 1.5) * days)
    spike_hours = []
    for day in range(days):
        arrivals = [t for t in trace.arrivals_s if day * DAY_S <= t < (day + 1) * DAY_S]
        busiest, start = max(
            (bisect.bisect_left(arrivals, first + 600) - index, first)
            for index, first in enumerate(arrivals)
        )
        assert busiest >= 60  # 100 expected in the spike; 10 in any ordinary 10 minutes
        spike_hours.append(round((start - day * DAY_S) / 3600, 1))
    assert len(set(spike_hours)) == days
    other = synthetic("spike", rate_per_hour=60, days=1, seed=8)
    assert burstiness(other, bucket_s=600).peak_rate_per_hour > 5 * 60
    assert burstiness(trace).label == "varying"


@pytest.mark.parametrize("service", ["fixed", "exp", "lognormal", "lognormal:0.8"])
def test_service_times_have_the_requested_mean(service: str) -> None:
    """Every service distribution has mean duration_s, within sampling error."""
    trace = synthetic("steady", rate_per_hour=1000, duration_s="15s", service=service, seed=2)
    assert statistics.fmean(trace.services_s) == pytest.approx(15.0, rel=0.05)
    assert min(trace.services_s) > 0
    if service == "fixed":
        assert set(trace.services_s) == {15.0}
    else:
        assert statistics.pstdev(trace.services_s) > 3.0


def test_a_larger_sigma_spreads_lognormal_service_times() -> None:
    """lognormal:0.8 spreads service times more than the default sigma 0.5."""
    narrow = synthetic("steady", rate_per_hour=1000, service="lognormal", seed=2)
    wide = synthetic("steady", rate_per_hour=1000, service="lognormal:0.8", seed=2)
    assert statistics.pstdev(wide.services_s) > 1.3 * statistics.pstdev(narrow.services_s)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15", 15.0), ("15s", 15.0), ("500ms", 0.5), ("2m", 120.0), ("1.5h", 5400.0), (0.25, 0.25)],
)
def test_durations_read_units(text: str | float, seconds: float) -> None:
    """duration_s takes seconds or a number with ms, s, m or h."""
    assert parse_duration(text) == seconds
    assert synthetic("steady", rate_per_hour=100, duration_s=text).services_s[0] == seconds


def test_tokens_per_request_split_evenly_into_totals() -> None:
    """tokens_per_request totals split half input, half output, the odd token to input."""
    trace = synthetic("steady", rate_per_hour=100, tokens_per_request=301, seed=1)
    assert trace.input_tokens == 151 * len(trace)
    assert trace.output_tokens == 150 * len(trace)
    assert synthetic("steady", rate_per_hour=100).input_tokens is None


def test_synthetic_source_describes_the_profile() -> None:
    """The source line says the profile, rate, shape, service time and seed."""
    trace = synthetic("bursty", rate_per_hour=100, duration_s=15, seed=7, gpu="H100")
    assert (
        trace.source == "profile bursty: 100 req/h for 1 h every 24 h over 1 day, 15 s each, seed 7"
    )
    assert (trace.gpu, trace.gpu_count, trace.origin_ns) == ("H100", 1, 0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"profile": "flat"}, r"profile='flat'.*steady, bursty, diurnal, spike"),
        ({"rate_per_hour": 0}, r"rate_per_hour=0"),
        ({"rate_per_hour": -5.0}, r"rate_per_hour=-5.0"),
        ({"rate_per_hour": math.inf}, r"rate_per_hour=inf"),
        ({"days": 0}, r"days=0"),
        ({"days": math.nan}, r"days=nan"),
        ({"service": "gamma"}, r"service='gamma'.*fixed, exp, lognormal"),
        ({"service": "lognormal:-1"}, r"service='lognormal:-1'.*sigma"),
        ({"service": "fixed:2"}, r"service='fixed:2'"),
        ({"duration_s": "fast"}, r"duration_s='fast'.*500ms"),
        ({"duration_s": 0}, r"duration_s=0"),
        ({"tokens_per_request": -1}, r"tokens_per_request=-1"),
        ({"gpu_count": 0}, r"gpu_count=0"),
        ({"rate_per_hour": 1e9, "days": 30}, r"rate_per_hour=1000000000.0 with days=30.*at most"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(
    arguments: dict[str, Any], message: str
) -> None:
    """A bad argument raises ValueError naming it, its value and, where listed, the choices."""
    call: dict[str, Any] = {"profile": "steady", "rate_per_hour": 10.0}
    call.update(arguments)
    profile = call.pop("profile")
    with pytest.raises(ValueError, match=message):
        synthetic(profile, **call)


# --- burstiness ----------------------------------------------------------------------------------


def test_idle_share_counts_only_long_silences() -> None:
    """Gaps longer than idle_gap_s, measured from the end of service, count as idle."""
    # Busy 0-100 s, a 1000 s gap, busy 1100-1200 s, a 100 s gap, busy 1300-1400, then 1600 s.
    trace = make_trace([0.0, 1100.0, 1300.0], [100.0, 100.0, 100.0], 3000.0)
    shape = burstiness(trace, idle_gap_s=900)
    assert shape.idle_share == pytest.approx((1000 + 1600) / 3000)
    assert shape.isolated_share == pytest.approx(2 / 3)  # the first request, and the one at 1100
    assert shape.idle_gap_s == 900
    assert burstiness(trace, idle_gap_s=2000).idle_share == 0.0


def test_peak_uses_a_sliding_bucket_not_clock_hours() -> None:
    """Two arrivals 10 minutes apart across a clock hour make a peak of 2 per hour."""
    trace = make_trace([3300.0, 3900.0, 20000.0], [1.0, 1.0, 1.0], 7.0 * 3600)
    shape = burstiness(trace)
    assert shape.peak_rate_per_hour == 2.0
    assert shape.mean_rate_per_hour == pytest.approx(3 / 7)
    assert shape.peak_to_mean == pytest.approx(14 / 3)


def test_a_window_shorter_than_the_bucket_peaks_at_the_mean() -> None:
    """In a window shorter than one bucket, the peak rate is the mean rate."""
    trace = make_trace([0.0, 600.0, 1200.0], [1.0, 1.0, 1.0], 1800.0)
    assert burstiness(trace).peak_to_mean == pytest.approx(1.0)


def test_interarrival_cv_needs_three_requests() -> None:
    """The CV is nan below three requests and 0 for evenly spaced arrivals."""
    assert math.isnan(burstiness(make_trace([0.0, 5.0], [1.0, 1.0], 10.0)).interarrival_cv)
    even = make_trace([0.0, 5.0, 10.0, 15.0], [1.0] * 4, 20.0)
    assert burstiness(even).interarrival_cv == 0.0


def test_few_or_isolated_requests_read_sparse() -> None:
    """Under 10 requests, or slow Poisson traffic that is mostly idle, reads sparse."""
    assert burstiness(make_trace([0.0, 1.0], [1.0, 1.0], 10.0)).label == "sparse"
    assert burstiness(synthetic("steady", rate_per_hour=2, days=7, seed=1)).label == "sparse"


@pytest.mark.parametrize(
    "arguments", [{"idle_gap_s": -1.0}, {"idle_gap_s": math.nan}, {"bucket_s": 0.0}]
)
def test_bad_burstiness_arguments_raise(arguments: dict[str, float]) -> None:
    """A negative idle gap or a bucket of 0 raises ValueError naming it."""
    trace = make_trace([0.0], [1.0], 1.0)
    with pytest.raises(ValueError, match=next(iter(arguments))):
        burstiness(trace, **arguments)


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    profile=st.sampled_from(PROFILES),
    rate_per_hour=st.floats(min_value=0.1, max_value=200.0),
    days=st.floats(min_value=0.01, max_value=3.0),
    seed=st.integers(min_value=0, max_value=2**32),
    service=st.sampled_from(["fixed", "exp", "lognormal", "lognormal:1.5"]),
)
def test_synthetic_traces_are_well_formed(
    profile: str, rate_per_hour: float, days: float, seed: int, service: str
) -> None:
    """Any synthetic trace is sorted, inside its window, one service per arrival, all above 0."""
    trace = synthetic(profile, rate_per_hour=rate_per_hour, days=days, seed=seed, service=service)
    arrivals = trace.arrivals_s
    assert len(arrivals) == len(trace.services_s)
    assert list(arrivals) == sorted(arrivals)
    assert all(service_s > 0 for service_s in trace.services_s)
    assert trace.window_s == pytest.approx(days * DAY_S)
    assert all(0 <= arrival < trace.window_s for arrival in arrivals)
    shape = burstiness(trace)
    assert 0 <= shape.idle_share <= 1
    assert 0 <= shape.isolated_share <= 1
    assert shape.label in LABELS
    if len(trace):
        assert shape.peak_rate_per_hour >= shape.mean_rate_per_hour * (1 - 1e-9)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.floats(min_value=0, max_value=1000)), max_size=30)
)
def test_record_traces_are_well_formed(requests: list[tuple[int, float]]) -> None:
    """Any records give a sorted trace whose window reaches the last arrival and last end."""
    records = [make_record(offset, duration) for offset, duration in requests]
    trace = trace_from_records(records)
    arrivals = trace.arrivals_s
    assert len(arrivals) == len(trace.services_s) == len(requests)
    assert list(arrivals) == sorted(arrivals)
    if requests:
        assert trace.window_s >= arrivals[-1]
        assert arrivals[0] == 0.0
        assert sorted(trace.services_s) == sorted(duration for _, duration in requests)
    assert burstiness(trace).label in LABELS
