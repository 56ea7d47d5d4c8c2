"""Invocations that overlap in one worker share each instant: billed time splits exactly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuledger
from gpuledger._pricing import load_catalogue
from gpuledger._worker import WorkerState, shares
from tests.support.ledgers import union_length

from .conftest import Telemetry


def test_shares_cut_where_the_count_changes() -> None:
    assert shares(0, 10, []) == [(0, 10, 1)]
    assert shares(0, 10, [(2, 5)]) == [(0, 2, 1), (2, 5, 2), (5, 10, 1)]
    assert shares(0, 10, [(-5, 3), (1, 20)]) == [(0, 1, 2), (1, 3, 3), (3, 10, 2)]
    assert shares(0, 10, [(10, 20), (-3, 0)]) == [(0, 10, 1)]  # touching is not sharing
    assert shares(5, 5, []) == [(5, 5, 1)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1000), st.integers(0, 300)).map(lambda p: (p[0], p[0] + p[1])),
        min_size=1,
        max_size=12,
    )
)
def test_shares_add_up_to_the_workers_wall_time(intervals: list[tuple[int, int]]) -> None:
    """Driven through WorkerState in time order (ends before starts at the same instant), the
    shares of all invocations add up to the time the worker had at least one running."""
    worker = WorkerState(10.0, start=(0, "test"))
    events: list[tuple[int, int, int]] = []  # (time, order, index); order: even=start
    for index, (start, end) in enumerate(intervals):
        # At one instant: ends first, then starts; an empty interval starts and ends first.
        events.append((start, -2 if start == end else 2, index))
        events.append((end, -1 if start == end else 1, index))
    billed: dict[int, float] = {}
    keys = {index: object() for index in range(len(intervals))}
    for _, kind, index in sorted(events):
        start, end = intervals[index]
        key = keys[index]
        if kind % 2 == 0:  # a start, as Agent.enter does it
            if worker.active:
                worker.join(key, start)
            else:
                worker.lone, worker.lone_start_ns = key, start
            worker.active += 1
        else:
            worker.active -= 1
            others = worker.leave(key, start, end)
            segments = shares(start, end, others or [])
            billed[index] = sum((b - a) / n for a, b, n in segments)
            assert segments[0][0] == start
            assert segments[-1][1] == end
    assert worker.running == {}
    assert worker.lone is None
    assert worker.ended == []
    assert sum(billed.values()) == pytest.approx(union_length(intervals), abs=1e-6)


def test_overlapping_generators_split_billed_time_and_cost(telemetry: Telemetry) -> None:
    """A runs 0-3 s, B 1-4 s: each is billed 1 s alone + half of the 2 s shared = 2 s, and
    priced on those 2 s; together 4 s, the worker's wall time."""
    clock = telemetry.clock

    @gpuledger.traced_handler
    def stream(job: dict[str, object]) -> Iterator[int]:
        yield 1
        yield 2

    a = stream({"id": "a", "input": {}})
    b = stream({"id": "b", "input": {}})
    next(a)  # A starts at 0
    clock.advance(1.0)
    next(b)  # B starts at 1
    clock.advance(2.0)
    next(a)
    assert list(a) == []  # A ends at 3
    clock.advance(1.0)
    next(b)
    assert list(b) == []  # B ends at 4
    rows = {row["invocation_id"]: row for row in telemetry.rows()}
    assert rows["a"]["duration_s"] == pytest.approx(3.0)
    assert rows["b"]["duration_s"] == pytest.approx(3.0)
    assert rows["a"]["billed_gpu_seconds"] == pytest.approx(2.0)
    assert rows["b"]["billed_gpu_seconds"] == pytest.approx(2.0)
    catalogue = load_catalogue(None)
    expected = catalogue.price("runpod", "H100", billed_gpu_seconds=2.0)
    assert expected is not None
    assert rows["b"]["cost_usd"] == pytest.approx(expected.total_usd)  # A is cold: + its start
    spans = {
        span.attributes["faas.invocation_id"]: span
        for span in telemetry.spans()
        if span.attributes and "faas.invocation_id" in span.attributes
    }
    assert spans["a"].attributes["gpuledger.gpu.billed"] == pytest.approx(2.0)
    assert spans["b"].attributes["gpuledger.cost.total"] == pytest.approx(expected.total_usd)


def test_alone_is_billed_its_wall_time(telemetry: Telemetry) -> None:
    @gpuledger.traced_handler
    def handler(job: dict[str, object]) -> None:
        telemetry.clock.advance(1.5)

    handler({"id": "x", "input": {}})
    handler({"id": "y", "input": {}})
    assert [row["billed_gpu_seconds"] for row in telemetry.rows()] == [1.5, 1.5]
