"""Break-even between serverless and reserved GPUs: the arithmetic and ``gpuledger breakeven``.

The crossovers of the shipped catalogue against a reserved H100 ($2.69/h, $64.56 a day), worked by
hand (requests a day; a month is 730 hours):

* RunPod, 15 s: $0.25 + 15 x $0.00024 = $0.2536 a request; reserved is cheaper above
  64.56 / 0.2536 = 254.57 a day (32.3 GPU-hours a month), and stays so: a request at full use of
  a reserved GPU costs 2.69 / 3600 x 15 = $0.0112 < $0.2536. At 10 s 64.56 / 0.2524 = 255.78
  (21.6 h), at 30 s 64.56 / 0.2572 = 251.01 (63.6 h).
* Modal, 15 s: $0.0075 a request < $0.0112 reserved at full use: 64.56 / 0.0075 = 8,608 a day is
  more than one GPU carries (86400 / 15 = 5,760), and each further GPU adds more than 5,760
  requests cost: serverless is cheaper at every rate (likewise at 10 s and 30 s, and for Banana).
* Replicate, 15 s: $0.015 a request > $0.0112: reserved is cheaper from 64.56 / 0.015 = 4,304 a
  day, serverless again from 5,760 (a second GPU: $129.12 > $86.40), reserved from 8,608,
  serverless from 11,520, reserved for good from 12,912 ($193.68 / 0.015). At 10 s it starts at
  6,456, at 30 s at 2,152: 74.7% of one GPU's capacity, 545.5 GPU-hours a month, every time.

So neither "under 10 GPU seconds serverless wins, 30+ reserved wins" nor "5-10 hours/month" holds
for these prices: the per-second rates and RunPod's fee decide, not the duration.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuledger._pricing import PRICING_ENV, Price, compile_pricer, edition_catalogue
from gpuledger.cli._breakeven import breakeven
from gpuledger.whatif import _breakeven
from gpuledger.whatif._breakeven import (
    HOURS_PER_MONTH,
    compare_at_rate,
    crossovers,
    gpu_hours_per_month,
    parse_duration,
    parse_rate,
    reserved_cost_per_day,
    reserved_gpus_needed,
    serverless_cost_per_day,
    serverless_cost_per_request,
)

SEED_CATALOGUE = edition_catalogue("seed-2026-03")
"""The seed article's edition: these tests work its numbers."""

RESERVED_DAY = 2.69 * 24  # $64.56


@pytest.fixture(autouse=True)
def no_pricing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees a GPULEDGER_PRICING from the environment it runs in."""
    monkeypatch.setenv(PRICING_ENV, "seed-2026-03")  # the seed's README numbers; the published
    # edition's break-even is in tests/test_editions.py


def shipped(platform: str) -> Price:
    """The shipped H100 price of ``platform``."""
    price = SEED_CATALOGUE.lookup(platform, "H100")
    assert price is not None
    return price


def exact(expected: float) -> object:
    """``expected`` to float precision, for ``==``."""
    return pytest.approx(expected, rel=1e-9, abs=1e-12)


def per_second(**changes: object) -> Price:
    """A per-second test price at $0.0005/GPU-second, no rounding, no pool, changed by
    ``changes``."""
    price = Price(
        platform="test",
        gpu="H100",
        kind="per_second",
        execution_fee_usd=0.0,
        per_gpu_second_usd=0.0005,
        hourly_usd=None,
        billing_increment_s=0.0,
        minimum_billed_s=0.0,
        bills_startup=True,
        idle_window_s=900.0,
        timeout_s=None,
        source="test",
        cold_start_s=5.0,
    )
    return dataclasses.replace(price, **changes)  # type: ignore[arg-type]


def invoke(*args: str) -> Result:
    """Run ``gpuledger breakeven ARGS``."""
    return CliRunner().invoke(breakeven, list(args))


# --------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("15", 15.0),
        ("1.5s", 1.5),
        ("1h", 3600.0),
        (" 15 S ", 15.0),
        ("2e1s", 20.0),
        (".5", 0.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Durations take ms, s, m and h, and a plain number is seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a duration"),
        ("s", "not a duration"),
        ("15x", "unknown unit 'x'"),
        ("-5s", "not a duration"),
        ("0", "above 0"),
        ("1e999s", "finite"),
    ],
)
def test_parse_duration_refuses(text: str, reason: str) -> None:
    """A duration without a number, with an unknown unit, or not above 0 raises ValueError."""
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "per_second_rate"),
    [
        ("1000/day", 1000 / 86400),
        ("40/h", 40 / 3600),
        ("2/s", 2.0),
        ("3/min", 0.05),
        (" 1000 / d ", 1000 / 86400),
        ("1.5/hour", 1.5 / 3600),
    ],
)
def test_parse_rate(text: str, per_second_rate: float) -> None:
    """Rates take /day, /h, /min and /s and come back per second."""
    assert parse_rate(text) == exact(per_second_rate)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("100", "not a rate"),
        ("10/week", "unknown unit 'week'"),
        ("0/day", "above 0"),
        ("-1/h", "not a rate"),
        ("many/day", "not a rate"),
    ],
)
def test_parse_rate_refuses(text: str, reason: str) -> None:
    """A rate without a unit, with an unknown one, or not above 0 raises ValueError."""
    with pytest.raises(ValueError, match=reason):
        parse_rate(text)


# --------------------------------------------------------------------------------------------
# Costs


@pytest.mark.parametrize(
    ("platform", "per_day"),
    [("runpod", 253.60), ("replicate", 15.0), ("modal", 7.50), ("banana", 4.50)],
)
def test_seed_thousand_requests_of_fifteen_seconds(platform: str, per_day: float) -> None:
    """1,000 requests a day of 15 s on an H100, paid per request: $253.60 on RunPod, $15
    Replicate, $7.50 Modal, $4.50 Banana (the seed's table, without rounding)."""
    assert 1000 * serverless_cost_per_request(shipped(platform), 15.0) == exact(per_day)


@pytest.mark.parametrize("platform", ["runpod", "replicate", "modal"])
def test_cost_per_day_without_a_pool_is_per_request(platform: str) -> None:
    """Without a pre-warmed pool, a day of steady traffic costs rate x the per-request cost."""
    price = shipped(platform)
    assert serverless_cost_per_day(price, 1000, 15.0) == exact(
        1000 * serverless_cost_per_request(price, 15.0)
    )


def test_banana_pool_is_paid_around_the_clock() -> None:
    """Banana's one pre-warmed worker costs 86400 x $0.0003 = $25.92 a day and serves the 1,000
    requests for no more; without the pool they cost $4.50."""
    banana = shipped("banana")
    assert serverless_cost_per_day(banana, 1000, 15.0) == exact(25.92)
    pay_per_use = dataclasses.replace(banana, prewarmed_workers=0)
    assert serverless_cost_per_day(pay_per_use, 1000, 15.0) == exact(4.50)


def test_pool_takes_its_share_of_busy_workers() -> None:
    """At 8,640 requests a day of 15 s (10 s apart, 2 workers busy at once) one pre-warmed worker
    serves every other request: $25.92 + 4,320 x $0.0045 = $45.36."""
    assert serverless_cost_per_day(shipped("banana"), 8640, 15.0) == exact(25.92 + 4320 * 0.0045)


def test_reserved_h100_costs_a_day() -> None:
    """One reserved H100 costs $2.69 x 24 = $64.56 a day; three cost three times that."""
    reserved = shipped("reserved")
    assert reserved_cost_per_day(reserved, 1) == exact(64.56)
    assert reserved_cost_per_day(reserved, 3) == exact(3 * 64.56)
    assert reserved_cost_per_day(reserved, 0) == 0.0


@pytest.mark.parametrize(
    ("rate", "gpu_count", "gpus"),
    [(1, 1, 1), (5760, 1, 1), (5761, 1, 2), (11520, 1, 2), (11521, 1, 3), (5760, 2, 2), (0, 1, 0)],
)
def test_reserved_gpus_step_with_the_load(rate: float, gpu_count: int, gpus: int) -> None:
    """A reserved GPU carries 86400 / 15 = 5,760 requests of 15 s a day; one more needs another."""
    assert reserved_gpus_needed(rate, 15.0, gpu_count) == gpus


def test_cost_per_request_is_the_pricers() -> None:
    """Per-request cost rounds up to the billing increment and bills each GPU, like the pricer."""
    runpod = shipped("runpod")
    assert serverless_cost_per_request(runpod, 14.2) == exact(0.25 + 15 * 0.00024)
    assert serverless_cost_per_request(runpod, 14.2, 2) == exact(0.25 + 30 * 0.00024)
    pricer = compile_pricer(runpod, "v")
    assert serverless_cost_per_request(runpod, 7.3, 3) == pricer(7.3 * 3, 3, None).total_usd


@pytest.mark.parametrize(("duration", "gpu_count"), [(0.0, 1), (-1.0, 1), (math.nan, 1), (1, 0)])
def test_cost_refuses_bad_arguments(duration: float, gpu_count: int) -> None:
    """A duration not above 0 or fewer than one GPU raises ValueError."""
    with pytest.raises(ValueError, match="must be"):
        serverless_cost_per_request(shipped("modal"), duration, gpu_count)


def test_gpu_hours_per_month_uses_730_hours() -> None:
    """1,000 requests a day of 15 s are 15,000 s a day: 4.1667 h x 730 / 24 = 126.74 h a month."""
    assert HOURS_PER_MONTH == 730.0 == 365 * 24 / 12
    assert gpu_hours_per_month(1000, 15.0) == exact(15000 / 3600 * 730 / 24)
    assert gpu_hours_per_month(1000, 15.0, 2) == exact(2 * 15000 / 3600 * 730 / 24)


# --------------------------------------------------------------------------------------------
# Crossovers


def test_runpod_fifteen_seconds_crossover() -> None:
    """RunPod at 15 s: reserved is cheaper above 64.56 / 0.2536 = 254.57 a day, for good."""
    found = crossovers(shipped("runpod"), shipped("reserved"), 15.0)
    assert found.crossover_rates_per_day == (exact(64.56 / 0.2536),)
    assert found.first_crossover_per_day == exact(254.5741324921136)
    assert found.first_crossover_per_hour == exact(64.56 / 0.2536 / 24)
    assert found.gpu_hours_per_month_at_first == exact(64.56 / 0.2536 * 15 / 3600 * 730 / 24)
    assert round(found.gpu_hours_per_month_at_first or 0, 1) == 32.3
    assert found.reserved_cheaper_ranges() == [(exact(64.56 / 0.2536), None)]
    assert (found.settled, found.reserved_cheaper_at_start) == (True, False)
    assert found.serverless_cost_per_request_usd == exact(0.2536)
    assert found.reserved_cost_per_gpu_day_usd == exact(RESERVED_DAY)
    assert found.reserved_cost_per_request_usd == exact(2.69 / 3600 * 15)
    assert found.capacity_per_gpu_per_day == 5760


def test_modal_fifteen_seconds_never_crosses() -> None:
    """Modal at 15 s: $0.0075 a request is below reserved's $0.0112 at full use, so 64.56 /
    0.0075 = 8,608 a day lies past one GPU's 5,760 and serverless is cheaper at every rate."""
    found = crossovers(shipped("modal"), shipped("reserved"), 15.0)
    assert found.crossover_rates_per_day == ()
    assert found.first_crossover_per_day is None
    assert found.gpu_hours_per_month_at_first is None
    assert found.serverless_cheaper_at_full_use
    assert found.settled
    assert found.reserved_cheaper_ranges() == []


def test_replicate_steps_back_and_forth() -> None:
    """Replicate at 15 s crosses at 4,304, back at 5,760 (a second GPU), 8,608, back at 11,520
    and for good at 12,912 requests a day."""
    found = crossovers(shipped("replicate"), shipped("reserved"), 15.0)
    assert found.crossover_rates_per_day == (
        exact(4304),
        exact(5760),
        exact(8608),
        exact(11520),
        exact(12912),
    )
    assert found.first_crossover_per_day == exact(4304)
    assert found.reserved_cheaper_ranges() == [
        (exact(4304), exact(5760)),
        (exact(8608), exact(11520)),
        (exact(12912), None),
    ]
    assert not found.serverless_cheaper_at_full_use


def test_costs_agree_with_the_crossovers() -> None:
    """One request a day below and above each Replicate crossover, the cheaper side swaps."""
    replicate, reserved = shipped("replicate"), shipped("reserved")
    for rate, below, above in [
        (4304, "serverless", "reserved"),
        (5760, "reserved", "serverless"),
        (8608, "serverless", "reserved"),
        (11520, "reserved", "serverless"),
        (12912, "serverless", "reserved"),
    ]:
        assert compare_at_rate(replicate, reserved, rate - 1, 15.0).cheaper == below, rate
        assert compare_at_rate(replicate, reserved, rate + 1, 15.0).cheaper == above, rate


# Requests a day at the first crossover, by duration: the table in _breakeven's docstring and in
# the command's help.
SHIPPED_TABLE = {
    "runpod": {10: 255.78, 15: 254.57, 30: 251.01},
    "replicate": {10: 6456.0, 15: 4304.0, 30: 2152.0},
    "modal": {10: None, 15: None, 30: None},
    "banana": {10: None, 15: None, 30: None},
}


@pytest.mark.parametrize("platform", sorted(SHIPPED_TABLE))
def test_shipped_crossover_table(platform: str) -> None:
    """The documented 10/15/30 s crossovers are what the catalogue gives, and both the module
    docstring and the command's help show them."""
    help_text = invoke("--help").output
    doc = _breakeven.__doc__ or ""
    cells = []
    for duration, expected in SHIPPED_TABLE[platform].items():
        found = crossovers(shipped(platform), shipped("reserved"), float(duration))
        if expected is None:
            assert found.first_crossover_per_day is None
            cells.append("never")
            continue
        assert found.first_crossover_per_day == pytest.approx(expected, abs=0.005)
        hours = found.gpu_hours_per_month_at_first
        assert hours is not None
        shown = f"{expected:,.2f}" if platform == "runpod" else f"{expected:,.0f}"
        cells.append(f"{shown}/day ({hours:.1f} h)")
    row = f"{platform:<11}" + "".join(f"{cell:<23}" for cell in cells).rstrip()
    assert row in doc
    assert row in help_text


def test_reserved_cheaper_from_the_start() -> None:
    """A pool dearer than a reserved GPU (3 x $25.92 > $64.56) makes reserved cheaper from 0."""
    pooled = dataclasses.replace(shipped("banana"), prewarmed_workers=3)
    found = crossovers(pooled, shipped("reserved"), 15.0)
    assert found.reserved_cheaper_at_start
    assert found.first_crossover_per_day == 0.0
    assert found.gpu_hours_per_month_at_first == 0.0
    # Reserved needs a second GPU past 5,760 ($129.12 > $77.76 + fees): serverless wins from there.
    assert found.crossover_rates_per_day == (exact(5760),)
    assert found.reserved_cheaper_ranges() == [(0.0, exact(5760))]


def test_max_rate_truncates_the_search() -> None:
    """With max_rate_per_day the search stops there and says it is not settled."""
    found = crossovers(shipped("replicate"), shipped("reserved"), 15.0, max_rate_per_day=10_000)
    assert found.crossover_rates_per_day == (exact(4304), exact(5760), exact(8608))
    assert (found.settled, found.searched_to_per_day) == (False, 10_000)
    assert found.reserved_cheaper_ranges()[-1] == (exact(8608), 10_000)
    with pytest.raises(ValueError, match="max_rate_per_day"):
        crossovers(shipped("replicate"), shipped("reserved"), 15.0, max_rate_per_day=0)


def test_parity_never_settles() -> None:
    """A serverless price equal to reserved's per-second rate never crosses it (reserved can only
    cost more, by the unused part of its last GPU), and the search says it could not settle."""
    parity = per_second(per_gpu_second_usd=2.69 / 3600)
    found = crossovers(parity, shipped("reserved"), 15.0)
    assert found.crossover_rates_per_day == ()
    assert not found.settled


def test_multi_gpu_requests() -> None:
    """Two GPUs a request: RunPod $0.25 + 2 x 15 x $0.00024 = $0.2572 against two reserved GPUs
    ($129.12 a day) cross at 129.12 / 0.2572 = 502.02 requests a day."""
    found = crossovers(shipped("runpod"), shipped("reserved"), 15.0, gpu_count=2)
    assert found.first_crossover_per_day == exact(2 * RESERVED_DAY / 0.2572)
    assert found.gpu_hours_per_month_at_first == exact(
        2 * RESERVED_DAY / 0.2572 * 30 / 3600 * 730 / 24
    )
    assert reserved_gpus_needed(5761, 15.0, 2) == 4


# --------------------------------------------------------------------------------------------
# The cold-start variant


def test_sparse_traffic_pays_cold_starts() -> None:
    """RunPod at 50 a day (1,728 s apart, past its 900 s idle window): each request also pays its
    2.5 s billed start-up; at 100 a day (849 s idle) the worker is still warm."""
    # The start-up and the request are one billing span, 2.5 + 15 = 17.5 s, rounded up once to
    # 18 s: $0.25 + 18 x $0.00024 = $0.25432 a cold request (it was $0.2536 + 2.5 x $0.00024 =
    # $0.2542, the start-up added unrounded), $12.716 a day.
    runpod = shipped("runpod")
    cold = serverless_cost_per_day(runpod, 50, 15.0, cold_starts=True)
    assert cold == exact(50 * (0.25 + 18 * 0.00024))
    assert serverless_cost_per_day(runpod, 50, 15.0) == exact(50 * 0.2536)
    assert serverless_cost_per_day(runpod, 100, 15.0, cold_starts=True) == exact(100 * 0.2536)


def test_billed_idle_keeps_a_worker_paid_all_day() -> None:
    """Where idle time is billed, a worker kept warm by 1,000 requests a day costs a whole day."""
    idle_billed = per_second(bills_idle=True, per_gpu_second_usd=0.001)
    assert serverless_cost_per_day(idle_billed, 1000, 15.0, cold_starts=True) == exact(86.4)
    assert serverless_cost_per_day(idle_billed, 1000, 15.0) == exact(15.0)


def test_cold_requests_past_a_billed_idle_window() -> None:
    """Past a 60 s billed window each request pays its time, a billed 5 s start and the window."""
    idle_billed = per_second(bills_idle=True, per_gpu_second_usd=0.001, idle_window_s=60.0)
    cost = serverless_cost_per_day(idle_billed, 1000, 15.0, cold_starts=True)
    assert cost == exact(1000 * (15 + 5 + 60) * 0.001)


def test_cold_starts_move_the_crossover() -> None:
    """A 100 s billed cold start behind a 60 s idle window makes each request cost $0.0575 below
    86400 / 75 = 1,152 a day: reserved is cheaper from 64.56 / 0.0575 = 1,122.78 to 1,152."""
    slow_start = per_second(cold_start_s=100.0, idle_window_s=60.0)
    reserved = shipped("reserved")
    found = crossovers(slow_start, reserved, 15.0, cold_starts=True)
    assert found.crossover_rates_per_day == (exact(RESERVED_DAY / 0.0575), exact(1152))
    assert found.settled
    assert crossovers(slow_start, reserved, 15.0).crossover_rates_per_day == ()


def test_cold_starts_need_a_cold_start_time() -> None:
    """The cold-start variant refuses a platform without cold_start_s, naming it."""
    with pytest.raises(ValueError, match="'test' has no cold_start_s"):
        serverless_cost_per_day(per_second(cold_start_s=None), 10, 15.0, cold_starts=True)


@settings(max_examples=150, deadline=None)
@given(
    rate_per_second=st.floats(min_value=0.0001, max_value=0.002),
    fee=st.sampled_from([0.0, 0.01, 0.25]),
    increment=st.sampled_from([0.0, 1.0]),
    pool=st.integers(min_value=0, max_value=3),
    duration=st.floats(min_value=0.3, max_value=120.0),
    gpu_count=st.integers(min_value=1, max_value=2),
    cold=st.booleans(),
    bills_idle=st.booleans(),
    window=st.sampled_from([0.0, 30.0, 900.0]),
)
def test_crossovers_match_the_costs(
    rate_per_second: float,
    fee: float,
    increment: float,
    pool: int,
    duration: float,
    gpu_count: int,
    cold: bool,
    bills_idle: bool,
    window: float,
) -> None:
    """Between and beyond the crossovers found, the cheaper side at the costs is the one the
    ranges say, whatever the prices, pool, duration, GPUs and cold-start model."""
    price = per_second(
        kind="serverless_execution",
        execution_fee_usd=fee,
        per_gpu_second_usd=rate_per_second,
        billing_increment_s=increment,
        prewarmed_workers=pool,
        bills_idle=bills_idle,
        idle_window_s=window,
    )
    reserved = shipped("reserved")
    capacity = 86400 / duration
    found = crossovers(
        price, reserved, duration, gpu_count, max_rate_per_day=40 * capacity, cold_starts=cold
    )
    edges = [0.0, *found.crossover_rates_per_day, found.searched_to_per_day]
    ranges = found.reserved_cheaper_ranges()
    for low, high in itertools.pairwise(edges):
        if high - low < 1e-6 * high:
            continue
        for rate in (low + (high - low) * 0.25, (low + high) / 2, low + (high - low) * 0.75):
            expected = any(start < rate < (end or math.inf) for start, end in ranges)
            at = compare_at_rate(price, reserved, rate, duration, gpu_count, cold_starts=cold)
            if at.cheaper != "neither":
                assert (at.cheaper == "reserved") == expected, (rate, found, at)


# --------------------------------------------------------------------------------------------
# One rate


def test_compare_at_a_thousand_a_day() -> None:
    """At 1,000 a day of 15 s one reserved H100 ($64.56) beats RunPod ($253.60) by $189.04, 74.5%,
    and Modal ($7.50) beats it by $57.06, 88.4%."""
    reserved = shipped("reserved")
    runpod = compare_at_rate(shipped("runpod"), reserved, 1000, 15.0)
    assert (runpod.cheaper, runpod.reserved_gpus) == ("reserved", 1)
    assert runpod.serverless_cost_per_day_usd == exact(253.60)
    assert runpod.reserved_cost_per_day_usd == exact(64.56)
    assert runpod.margin_usd_per_day == exact(253.60 - 64.56)
    assert runpod.margin_percent == exact((253.60 - 64.56) / 253.60 * 100)
    modal = compare_at_rate(shipped("modal"), reserved, 1000, 15.0)
    assert modal.cheaper == "serverless"
    assert modal.margin_usd_per_day == exact(64.56 - 7.50)
    assert modal.margin_percent == exact((64.56 - 7.50) / 64.56 * 100)


def test_compare_at_a_crossover_is_a_tie() -> None:
    """At the crossover rate neither side is cheaper."""
    reserved = shipped("reserved")
    at = compare_at_rate(shipped("runpod"), reserved, 64.56 / 0.2536, 15.0)
    assert (at.cheaper, at.margin_percent) == ("neither", pytest.approx(0, abs=1e-9))


def test_compare_refuses_a_rate_not_above_zero() -> None:
    """A rate of 0 (or less) has nothing to compare and raises ValueError."""
    with pytest.raises(ValueError, match="rate_per_day"):
        compare_at_rate(shipped("runpod"), shipped("reserved"), 0, 15.0)


# --------------------------------------------------------------------------------------------
# gpuledger breakeven


def test_command_default_table() -> None:
    """Without options: every serverless platform at 10, 15 and 30 s against the reserved H100."""
    result = invoke()
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (
        "break-even vs reserved H100: $2.69/GPU-hour = $64.56/GPU-day (pricing seed-2026-03)"
    )
    assert "no cold starts; a month is 730 hours (365 x 24 / 12)" in lines[1]
    rows = [line.split() for line in itertools.takewhile(bool, lines[4:])]
    assert [(row[0], row[1]) for row in rows] == [
        (platform, duration)
        for duration in ("10s", "15s", "30s")
        for platform in ("banana", "modal", "replicate", "runpod")
    ]
    runpod_15 = next(line for line in lines if line.startswith("runpod     15s"))
    assert runpod_15.split()[2:7] == ["0.2536", "0.0112083", "254.57", "10.61", "32.3"]
    assert runpod_15.endswith("reserved cheaper from 254.57/day")
    modal_15 = next(line for line in lines if line.startswith("modal      15s"))
    assert modal_15.split()[4:7] == ["-", "-", "-"]
    assert "never: $0.0075 a request < $0.0112083 reserved at full use" in modal_15
    assert "0.0045 + 25.92/day pool" in result.output
    assert "4,304-5,760, 8,608-11,520, from 12,912/day" in result.output
    # Banana is flagged: its serverless product is sunset (once, whatever the durations).
    sunset = "banana: sunset 2024-02-01, no longer sold; its price is kept for comparison only"
    assert result.output.count(sunset) == 1


def test_command_with_rate() -> None:
    """--rate adds each side's cost a day there, the cheaper and by how much."""
    result = invoke(
        "--platform", "runpod", "--platform", "modal", "--duration", "15s", "--rate", "1000/day"
    )
    assert result.exit_code == 0, result.output
    assert "at 1,000 requests/day (41.67/h):" in result.output
    rows = {
        line.split()[0]: line.split()
        for line in result.output.split("(41.67/h):\n")[1].splitlines()[1:]
    }
    assert rows["runpod"] == ["runpod", "15s", "253.60", "1", "64.56", "reserved", "189.04", "74.5"]
    assert rows["modal"] == ["modal", "15s", "7.50", "1", "64.56", "serverless", "57.06", "88.4"]


def test_command_rate_per_hour_needs_more_gpus() -> None:
    """--rate 400/h of 15 s is 9,600 a day: two reserved GPUs, $129.12."""
    result = invoke(
        "--platform", "replicate", "--duration", "15", "--rate", "400/h", "--format", "json"
    )
    assert result.exit_code == 0, result.output
    at = json.loads(result.output)["results"][0]["at_rate"]
    assert at["rate_per_day"] == exact(9600)
    assert (at["reserved_gpus"], at["reserved_cost_per_day_usd"]) == (2, exact(2 * 64.56))
    assert (at["serverless_cost_per_day_usd"], at["cheaper"]) == (exact(144.0), "reserved")


def test_command_json() -> None:
    """--format json gives unrounded numbers, the ranges, and the reserved price used."""
    result = invoke("--platform", "runpod", "--duration", "15s", "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["catalogue_version"] == "seed-2026-03"
    assert document["reserved"] == {"platform": "reserved", "gpu": "H100", "hourly_usd": 2.69}
    assert document["hours_per_month"] == 730.0
    (runpod,) = document["results"]
    assert runpod["serverless_platform"] == "runpod"
    assert runpod["first_crossover_per_day"] == exact(64.56 / 0.2536)
    assert runpod["first_crossover_per_hour"] == exact(64.56 / 0.2536 / 24)
    assert runpod["reserved_cheaper_ranges_per_day"] == [[exact(64.56 / 0.2536), None]]
    assert (runpod["at_rate"], runpod["notes"], runpod["cold_starts"]) == (None, [], False)


def test_command_cold_starts_flag() -> None:
    """--cold-starts says so in the header and prices cold requests at sparse rates."""
    result = invoke(
        "--platform", "runpod", "--duration", "15s", "--rate", "50/day", "--cold-starts"
    )
    assert result.exit_code == 0, result.output
    assert "cold starts priced" in result.output
    # 50 x ($0.25 + 18 s x $0.00024): the 2.5 s start-up and the 15 s request are one billing
    # span, rounded up once (it was "12.71", 50 x ($0.2536 + 2.5 s x $0.00024)).
    assert "12.716" in result.output


def test_command_with_a_pricing_file(tmp_path: Path) -> None:
    """--pricing adds GPUs and platforms: an A100 on RunPod against a reserved A100."""
    path = tmp_path / "a100.toml"
    path.write_text(
        'base = "seed-2026-03"\n'
        "[platforms.runpod.gpus.A100]\nper_gpu_second_usd = 0.00016\n"
        "[platforms.reserved.gpus.A100]\nhourly_usd = 1.64\n",
        encoding="utf-8",
    )
    result = invoke(
        "--pricing", str(path), "--gpu", "A100", "--duration", "10s", "--format", "json"
    )
    assert result.exit_code == 0, result.output
    (runpod,) = json.loads(result.output)["results"]
    assert runpod["gpu"] == "A100"
    assert runpod["first_crossover_per_day"] == exact(1.64 * 24 / (0.25 + 10 * 0.00016))


def test_command_notes_a_request_past_the_timeout() -> None:
    """A duration longer than the platform's timeout is noted under the table."""
    result = invoke("--platform", "runpod", "--duration", "20m")
    assert result.exit_code == 0, result.output
    assert "runpod: 20m is longer than its 15m timeout" in result.output


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["--platform", "lambda"], 2, "unknown platform 'lambda'"),
        (["--platform", "reserved"], 2, "'reserved' is a reserved platform"),
        (["--reserved", "runpod"], 2, "'runpod' is a serverless_execution platform"),
        (["--reserved", "onprem"], 2, "unknown platform 'onprem'"),
        (["--gpu", "A100"], 1, "no reserved price for GPU 'A100' (priced: H100)"),
        (["--duration", "15x"], 2, "unknown unit 'x'"),
        (["--duration", "0s"], 2, "above 0"),
        (["--rate", "100"], 2, "'100' is not a rate"),
        (["--pricing", "/nonexistent/prices.toml"], 1, "no such file"),
        (["--format", "yaml"], 2, "'yaml' is not one of"),
    ],
)
def test_command_bad_input_is_a_clear_error(args: list[str], exit_code: int, message: str) -> None:
    """Bad options exit 1 or 2 with a message naming the problem, never a traceback."""
    result = invoke(*args)
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit)
    assert message in result.output
    assert "Traceback" not in result.output


def test_command_cold_starts_without_cold_start_time(tmp_path: Path) -> None:
    """--cold-starts on a platform without cold_start_s exits 1 saying what to add."""
    path = tmp_path / "newco.toml"
    path.write_text(
        '[platforms.newco]\nkind = "per_second"\n'
        "[platforms.newco.gpus.H100]\nper_gpu_second_usd = 0.0004\n",
        encoding="utf-8",
    )
    result = invoke("--pricing", str(path), "--platform", "newco", "--cold-starts")
    assert result.exit_code == 1
    assert "'newco' has no cold_start_s" in result.output


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (0.015, "0.015"),  # was "0.01": rounded to cents, the half cent lost
        (0.0112083333, "0.0112083"),
        (2.69, "2.69"),
        (64.5, "64.50"),
        (1234.5, "1,234.50"),
        (1.015, "1.015"),
        (0.0, "0.00"),
        (-0.015, "-0.015"),
    ],
)
def test_money_is_printed_with_the_digits_it_has(amount: float, shown: str) -> None:
    """breakeven prints dollars with as many decimals as they have (up to 7, at least 2)."""
    from gpuledger.cli._breakeven import _usd

    assert _usd(amount) == shown
