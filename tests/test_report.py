"""Report aggregation: grouping keys, unknown-stays-unknown sums, ordering, totals, --since."""

from __future__ import annotations

import math

import pytest

from gpuledger import InvocationRecord
from gpuledger.ledger._report import (
    GROUP_BY,
    REPORT_COLUMNS,
    ReportRow,
    aggregate,
    parse_since,
    totals,
)
from gpuledger.testing import RECORDS_START_NS, make_record

BASE_NS = RECORDS_START_NS  # 2026-03-01T00:00:00Z
HOUR_NS = 3_600_000_000_000


def by_key(rows: list[ReportRow]) -> dict[str, ReportRow]:
    """Rows indexed by their key."""
    return {row.key: row for row in rows}


MIXED = [
    make_record(
        user_id="alice", tenant="acme", endpoint="sdxl", platform="runpod",
        invocation_id="j1", start_ns=BASE_NS + 23 * HOUR_NS, cost_usd=0.5,
        service_version="v1", model="sdxl-turbo",
    ),
    make_record(
        user_id="alice", tenant="acme", endpoint="llm", platform="modal",
        invocation_id="j2", start_ns=BASE_NS + 24 * HOUR_NS, cost_usd=0.25,
        service_version="v2", model="llama",
    ),
    make_record(
        user_id="bob", tenant=None, endpoint="sdxl", platform="runpod",
        invocation_id="j2", start_ns=BASE_NS + 25 * HOUR_NS, cost_usd=2.0,
        service_version="v2", model="sdxl-turbo",
    ),
    make_record(
        user_id=None, tenant="globex", endpoint=None, platform="modal",
        invocation_id="j3", start_ns=BASE_NS - 1, cost_usd=None,
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        ("user", {"alice": 2, "bob": 1, "(none)": 1}),
        ("tenant", {"acme": 2, "(none)": 1, "globex": 1}),
        ("endpoint", {"sdxl": 2, "llm": 1, "(none)": 1}),
        ("platform", {"runpod": 2, "modal": 2}),
        ("version", {"v1": 1, "v2": 2, "(none)": 1}),
        ("model", {"sdxl-turbo": 2, "llama": 1, "(none)": 1}),
        ("day", {"2026-02-28": 1, "2026-03-01": 1, "2026-03-02": 2}),
        ("invocation", {"j1": 1, "j2": 2, "j3": 1}),
        ("target", {"(none)": 4}),  # none of them counted calls
    ],
)
def test_group_by_each_key(by: str, expected: dict[str, int]) -> None:
    """Each grouping puts records under the right key, missing values under "(none)"."""
    rows = aggregate(MIXED, by)
    assert {row.key: row.invocations for row in rows} == expected


def test_group_by_covers_every_choice() -> None:
    """The parametrised test above covers every GROUP_BY choice."""
    assert set(GROUP_BY) == {
        "user",
        "tenant",
        "endpoint",
        "platform",
        "version",
        "model",
        "day",
        "invocation",
        "target",
    }


def test_unknown_group_by_refused() -> None:
    """Grouping by something not in GROUP_BY raises ValueError naming the choices."""
    with pytest.raises(ValueError, match=r"cannot group by 'gpu'.*user"):
        aggregate(MIXED, "gpu")


def test_sorted_by_cost_then_key_unpriced_last() -> None:
    """Rows come highest cost first, ties by key, groups with no price at the end."""
    records = [
        make_record(user_id="c", cost_usd=1.0),
        make_record(user_id="a", cost_usd=1.0),
        make_record(user_id="z", cost_usd=3.0),
        make_record(user_id="b", cost_usd=None),
        make_record(user_id="0", cost_usd=None),
    ]
    assert [row.key for row in aggregate(records, "user")] == ["z", "a", "c", "0", "b"]


def test_day_rows_in_date_order() -> None:
    """Grouped by day, rows read as a time series whatever each day cost."""
    rows = aggregate(MIXED, "day")
    assert [row.key for row in rows] == ["2026-02-28", "2026-03-01", "2026-03-02"]


def test_counts_and_sums() -> None:
    """Counts, cold share, errors, billed seconds and tokens are summed per group."""
    records = [
        make_record(0, 2.0, cold=True, init_duration_s=10.0, input_tokens=5),
        make_record(cold=True, init_duration_s=20.0, outcome="timeout", output_tokens=7),
        make_record(cold=True, init_duration_s=None, outcome="error"),
        make_record(0, 0.5, init_duration_s=99.0),  # warm: init not counted
    ]
    (row,) = aggregate(records, "platform")
    assert row.invocations == 4
    assert row.cold_starts == 3
    assert row.cold_start_share == 0.75
    assert row.mean_init_s == 15.0
    assert row.errors == 2
    # Unpriced (no rules, no recorded cost): the GPU time is the requests' own, nothing added.
    assert row.billed_gpu_s == row.billed_gpu_seconds == row.request_gpu_s == 4.5
    assert row.input_tokens == 5
    assert row.output_tokens == 7


def test_unknown_stays_unknown() -> None:
    """With no measurement, busy GPU, cost, tokens and init are None, not zero."""
    (row,) = aggregate([make_record(), make_record()], "platform")
    assert row.busy_gpu_seconds is None
    assert row.cost_usd is None
    assert row.unpriced == 2
    assert row.input_tokens is None
    assert row.output_tokens is None
    assert row.mean_init_s is None


def test_partly_known_sums_the_known() -> None:
    """Busy GPU and cost sum the records that have them; unpriced counts the rest."""
    records = [
        make_record(busy_gpu_seconds=0.25, cost_usd=0.001),
        make_record(busy_gpu_seconds=None, cost_usd=None),
        make_record(busy_gpu_seconds=0.5, cost_usd=0.002),
    ]
    (row,) = aggregate(records, "platform")
    assert row.busy_gpu_seconds == 0.75
    assert row.cost_usd == pytest.approx(0.003, abs=1e-15)
    assert row.unpriced == 1


def test_cost_sum_is_exact() -> None:
    """Costs are summed with one rounding at the end, independent of record order."""
    costs = [0.1] * 10 + [1e16, -1e16]
    records = [make_record(cost_usd=cost) for cost in costs]
    (forward,) = aggregate(records, "platform")
    (backward,) = aggregate(reversed(records), "platform")
    assert forward.cost_usd == backward.cost_usd == math.fsum(costs) == 1.0


def test_duration_percentiles() -> None:
    """p50 and p95 interpolate linearly between the closest ranks."""
    records = [make_record(duration_s=float(seconds)) for seconds in range(1, 21)]
    (row,) = aggregate(records, "platform")
    assert row.duration_p50_s == pytest.approx(10.5)
    assert row.duration_p95_s == pytest.approx(19.05)


def test_single_record_percentiles() -> None:
    """One record: both percentiles are its duration."""
    (row,) = aggregate([make_record(duration_s=2.5)], "platform")
    assert (row.duration_p50_s, row.duration_p95_s) == (2.5, 2.5)


def test_no_records_no_rows() -> None:
    """Aggregating nothing yields no rows."""
    assert aggregate([], "user") == []


def test_totals_equal_one_group_of_everything() -> None:
    """TOTAL over per-user rows equals the rows of all records taken as one group."""
    records = [
        *MIXED,
        make_record(
            user_id="bob", cold=True, init_duration_s=4.0, duration_s=7.0, busy_gpu_seconds=0.5,
            input_tokens=3, outcome="killed",
        ),
        make_record(user_id="carol", cold=True, init_duration_s=2.0, duration_s=0.2),
    ]  # fmt: skip
    total = totals(aggregate(records, "user"))
    (single,) = aggregate([_same_platform(r) for r in records], "platform")
    assert total.key == "TOTAL"
    assert total.invocations == len(records)
    for column in REPORT_COLUMNS[1:]:
        assert getattr(total, column) == pytest.approx(getattr(single, column)), column


def _same_platform(record: InvocationRecord) -> InvocationRecord:
    """The record moved onto one platform, so grouping by platform gives a single group."""
    values = record.to_dict()
    values["platform"] = "one"
    return InvocationRecord.from_dict(values)


def test_totals_of_unknowns_stay_unknown() -> None:
    """TOTAL keeps busy and cost None when no group knows them."""
    total = totals(aggregate([make_record(user_id="a"), make_record(user_id="b")], "user"))
    assert total.invocations == 2
    assert total.busy_gpu_seconds is None
    assert total.cost_usd is None
    assert total.unpriced == 2


@pytest.mark.parametrize(
    ("text", "back_s"),
    [("90s", 90), ("30m", 1800), ("24h", 86_400), ("7d", 604_800), ("2w", 1_209_600),
     ("1.5h", 5400), (" 7D ", 604_800), ("0s", 0)],
)  # fmt: skip
def test_parse_since_durations(text: str, back_s: int) -> None:
    """A duration is counted back from now, exactly to the nanosecond."""
    now_ns = BASE_NS + 123
    assert parse_since(text, now_ns=now_ns) == now_ns - back_s * 1_000_000_000


@pytest.mark.parametrize(
    ("text", "expected_ns"),
    [
        ("2026-03-01", BASE_NS),
        ("2026-03-01T12:00", BASE_NS + 12 * HOUR_NS),
        ("2026-03-01T12:00:00Z", BASE_NS + 12 * HOUR_NS),
        ("2026-03-01T12:00:00+02:00", BASE_NS + 10 * HOUR_NS),
        ("2026-03-01T00:00:00.000001", BASE_NS + 1000),
    ],
)
def test_parse_since_iso(text: str, expected_ns: int) -> None:
    """An ISO date or date-time is an instant, UTC unless it carries an offset."""
    assert parse_since(text, now_ns=0) == expected_ns


@pytest.mark.parametrize("text", ["", "7", "d7", "-7d", "7 days", "yesterday", "2026-13-01"])
def test_parse_since_bad_text(text: str) -> None:
    """Anything else raises ValueError saying what is accepted."""
    with pytest.raises(ValueError, match=r"cannot read .* as a start time.*7d.*2026-03-01"):
        parse_since(text, now_ns=BASE_NS)


def test_busy_share_counts_only_records_that_measured_busy() -> None:
    """busy % is busy over the billed seconds of the records that measured busy (the waste is
    the rest); an unmeasured record's billed time does not dilute it. Energy sums the known."""
    records = [
        make_record(user_id="a", billed_gpu_seconds=2.0, busy_gpu_seconds=0.5, energy_j=100.0),
        make_record(user_id="a", billed_gpu_seconds=1.0, busy_gpu_seconds=None, energy_j=None),
        make_record(user_id="b", billed_gpu_seconds=2.0, busy_gpu_seconds=1.5, energy_j=50.0),
        make_record(user_id="c", billed_gpu_seconds=3.0),
    ]
    rows = {row.key: row for row in aggregate(records, by="user")}
    assert rows["a"].busy_share == 0.25
    assert rows["a"].energy_j == 100.0
    assert rows["b"].busy_share == 0.75
    assert rows["c"].busy_share is None
    assert rows["c"].energy_j is None
    total = totals(list(rows.values()))
    assert total.busy_share == 0.5  # (0.5 + 1.5) / (2 + 2)
    assert total.energy_j == 150.0


def test_by_target_counts_each_targets_share() -> None:
    """Grouped by target, an invocation counts under each target it called, with that
    target's calls, wait and wait cost; totals over all records are not double counted."""
    records = [
        make_record(
            external_calls=3,
            external_wait_seconds=0.3,
            external_wait_cost_usd=0.03,
            external_targets={
                "postgresql://db:5432": {"calls": 2, "wait_s": 0.2, "wait_usd": 0.02},
                "s3://weights": {"calls": 1, "wait_s": 0.1, "wait_usd": 0.01},
            },
        ),
        make_record(
            external_calls=1,
            external_wait_seconds=0.5,
            external_wait_cost_usd=0.05,
            external_targets={"s3://weights": {"calls": 1, "wait_s": 0.5, "wait_usd": 0.05}},
        ),
        make_record(external_calls=0, external_wait_seconds=0.0, external_wait_cost_usd=0.0),
    ]
    rows = {row.key: row for row in aggregate(records, "target")}
    assert rows["s3://weights"].invocations == 2
    assert rows["s3://weights"].external_calls == 2
    assert rows["s3://weights"].external_wait_s == pytest.approx(0.6)
    assert rows["s3://weights"].external_wait_cost_usd == pytest.approx(0.06)
    assert rows["postgresql://db:5432"].external_calls == 2
    assert rows["(none)"].external_calls == 0
    (platform_row,) = aggregate(records, "platform")
    total = totals([platform_row])
    assert total.invocations == 3
    assert total.external_calls == 4
    assert total.external_wait_s == pytest.approx(0.8)
