"""Cold starts: process start from the OS, init phases, pre-warmed workers, idle gaps."""

from __future__ import annotations

import json
import sqlite3
import textwrap
import time
from pathlib import Path

import pytest

import gpuledger
from gpuledger._process import process_start_ns

from .conftest import FakeClock, Telemetry, run_python


def _handler(clock: FakeClock, seconds: float = 1.0):  # type: ignore[no-untyped-def]
    @gpuledger.traced_handler(name="serve")
    def serve(job: dict[str, object]) -> str:
        clock.advance(seconds)
        return "ok"

    return serve


def test_first_request_is_cold_and_carries_init_with_phases(telemetry: Telemetry) -> None:
    """Process start (5 s ago) to the first request is its init: named phases plus the rest."""
    clock = telemetry.clock
    with gpuledger.phase("download"):
        clock.advance(1.0)
    with gpuledger.phase("model_load"):
        clock.advance(2.0)
        with gpuledger.phase("warmup"):
            clock.advance(0.5)
    serve = _handler(clock)
    clock.advance(0.25)  # the worker waits for its first job
    serve({"id": "a", "input": {}})
    serve({"id": "b", "input": {}})
    first, second = telemetry.rows()
    assert first["cold"] == 1
    assert first["init_duration_s"] == pytest.approx(5.0 + 3.5 + 0.25)
    phases = json.loads(first["init_phases"])
    assert phases == pytest.approx(
        {"download": 1.0, "model_load": 2.5, "model_load/warmup": 0.5, "(unnamed)": 5.25}
    )
    assert first["idle_gap_s"] == pytest.approx(0.25)
    assert second["cold"] == 0
    assert second["init_duration_s"] is None
    assert second["idle_gap_s"] == pytest.approx(0.0)


def test_prewarmed_worker_is_not_cold_but_init_is_recorded(telemetry: Telemetry) -> None:
    """Init that ended more than the threshold (10 s) before the first request: not cold."""
    clock = telemetry.clock
    with gpuledger.phase("model_load"):
        clock.advance(3.0)
    serve = _handler(clock)
    clock.advance(60.0)
    serve({"id": "a", "input": {}})
    (row,) = telemetry.rows()
    assert row["cold"] == 0
    assert row["init_duration_s"] == pytest.approx(8.0)  # process start to end of model_load
    assert json.loads(row["init_phases"]) == pytest.approx({"model_load": 3.0, "(unnamed)": 5.0})
    assert row["idle_gap_s"] == pytest.approx(60.0)
    assert row["cost_coldstart_usd"] == 0.0  # the request did not wait for it
    (span,) = telemetry.spans("serve")
    assert span.attributes["faas.coldstart"] is False


def test_threshold_is_a_setting(telemetry: Telemetry, tmp_path: Path) -> None:
    """GPULEDGER_PREWARM_THRESHOLD moves the line between cold and pre-warmed."""
    clock = telemetry.clock
    gpuledger.configure(
        ledger=str(telemetry.ledger_path),
        platform="runpod",
        gpu="H100",
        clock=clock,
        prewarm_threshold_s=120,
        exporters="none",
    )
    serve = _handler(clock)
    clock.advance(60.0)
    serve({"id": "a", "input": {}})
    (row,) = telemetry.rows()
    assert row["cold"] == 1


def test_idle_gaps_between_requests(telemetry: Telemetry) -> None:
    """Each request records how long the worker sat idle since the previous one ended."""
    clock = telemetry.clock
    serve = _handler(clock, seconds=2.0)
    serve({"id": "1", "input": {}})
    clock.advance(30.0)
    serve({"id": "2", "input": {}})
    clock.advance(0.5)
    serve({"id": "3", "input": {}})
    gaps = [row["idle_gap_s"] for row in telemetry.rows()]
    assert gaps[1:] == pytest.approx([30.0, 0.5])


def test_lazy_model_load_inside_a_request_makes_it_cold(telemetry: Telemetry) -> None:
    """The seed's pattern (load on first use, inside the handler) is a cold start too."""
    clock = telemetry.clock
    model: dict[str, str] = {}

    @gpuledger.traced_handler(name="serve")
    def serve(job: dict[str, object]) -> str:
        if not model:
            with gpuledger.phase("model_load"):
                clock.advance(4.0)
                model["ready"] = "yes"
        clock.advance(1.0)
        return "ok"

    clock.advance(60.0)  # long after start: not cold by the threshold
    serve({"id": "1", "input": {}})
    serve({"id": "2", "input": {}})
    first, second = telemetry.rows()
    assert first["cold"] == 1
    assert json.loads(first["init_phases"])["model_load"] == pytest.approx(4.0)
    assert second["cold"] == 0
    (phase_span,) = telemetry.spans("model_load")
    (first_span, _) = telemetry.spans("serve")
    assert phase_span.parent is not None
    assert phase_span.parent.span_id == first_span.context.span_id


def test_traced_init_decorator(telemetry: Telemetry) -> None:
    """@traced_init records a function's run as an init phase named after it."""
    clock = telemetry.clock

    @gpuledger.traced_init
    def load_weights() -> str:
        clock.advance(1.5)
        return "weights"

    @gpuledger.traced_init(name="compile")
    async def compile_graph() -> str:
        clock.advance(0.5)
        return "graph"

    import asyncio

    assert load_weights() == "weights"
    assert asyncio.run(compile_graph()) == "graph"
    _handler(clock)({"id": "1", "input": {}})
    (row,) = telemetry.rows()
    phases = json.loads(row["init_phases"])
    assert phases["test_traced_init_decorator.<locals>.load_weights"] == pytest.approx(1.5)
    assert phases["compile"] == pytest.approx(0.5)


def test_init_span_with_phase_children_linked_from_cold_request(telemetry: Telemetry) -> None:
    """The init is its own span from process start, a child per phase, linked from the request."""
    clock = telemetry.clock
    with gpuledger.phase("model_load"):
        clock.advance(2.0)
    _handler(clock)({"id": "1", "input": {}})
    (init,) = telemetry.spans("init")
    (phase,) = telemetry.spans("model_load")
    (request,) = telemetry.spans("serve")
    assert init.start_time == clock.process_start
    assert phase.parent is not None and phase.parent.span_id == init.context.span_id
    assert phase.end_time - phase.start_time == 2 * 10**9
    assert [link.context.span_id for link in request.links] == [init.context.span_id]
    assert request.attributes["faas.coldstart"] is True
    assert request.kind.name == "SERVER"


def test_phase_rejects_an_empty_name() -> None:
    """A phase needs a name."""
    with pytest.raises(ValueError, match="non-empty name"):
        gpuledger.phase("")


def test_process_start_is_read_from_the_os() -> None:
    """The process started before this test ran, per /proc (not at gpuledger's import)."""
    started, source = process_start_ns()
    assert source == "proc"
    age_s = (time.time_ns() - started) / 1e9
    assert 0 < age_s < 24 * 3600
    import gpuledger._process as process_module

    assert started <= process_module.IMPORT_TIME_NS + 20_000_000  # 20 ms: /proc's 10 ms ticks


@pytest.mark.slow
def test_fresh_process_first_request_cold_next_warm(tmp_path: Path) -> None:
    """In a real new process: the first request is cold with init >= the model load, then warm."""
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            """
            import time
            import gpuledger

            with gpuledger.phase("model_load"):
                time.sleep(0.2)

            @gpuledger.traced_handler
            def handler(job):
                return job["input"]["x"] + 1

            assert handler({"id": "first", "input": {"x": 1}}) == 2
            assert handler({"id": "second", "input": {"x": 2}}) == 3
            """
        )
    )
    ledger = tmp_path / "ledger.db"
    env = {
        "GPULEDGER_LEDGER": str(ledger),
        "GPULEDGER_PLATFORM": "runpod",
        "GPULEDGER_GPU": "H100",
    }
    run_python(script, env)
    rows = (
        sqlite3.connect(ledger)
        .execute(
            "SELECT invocation_id, cold, init_duration_s, init_phases FROM invocations"
            " ORDER BY start_ns"
        )
        .fetchall()
    )
    assert [(row[0], row[1]) for row in rows] == [("first", 1), ("second", 0)]
    phases = json.loads(rows[0][3])
    assert phases["model_load"] >= 0.2
    assert rows[0][2] >= phases["model_load"] + phases["(unnamed)"] - 1e-6
    assert phases["(unnamed)"] > 0  # interpreter start and imports happened before gpuledger
    assert rows[1][2] is None


def test_nested_phases_inside_a_request_are_not_counted_twice(telemetry: Telemetry) -> None:
    """A phase nested in an in-request phase is listed as parent/child and adds no time."""
    clock = telemetry.clock

    @gpuledger.traced_handler(name="serve")
    def serve(job: dict[str, object]) -> None:
        with gpuledger.phase("model_load"):
            clock.advance(1.0)
            with gpuledger.phase("weights"):
                clock.advance(0.5)

    serve({"id": "1", "input": {}})
    serve({"id": "2", "input": {}})  # the first also carries the process init; look at this one
    _, row = telemetry.rows()
    assert row["cold"] == 1
    assert json.loads(row["init_phases"]) == pytest.approx(
        {"model_load": 1.5, "model_load/weights": 0.5}
    )
    assert row["init_duration_s"] == pytest.approx(1.5)
    assert row["cost_coldstart_usd"] == pytest.approx(1.5 * 0.00116)
    # Inside the request's own 1.5 s: charged once, as start-up (issue 13: it was 2 x 1.5 s).
    assert row["request_startup_s"] == pytest.approx(1.5)
    assert row["cost_gpu_usd"] == pytest.approx(0.0)
    assert row["cost_usd"] == pytest.approx(row["cost_execution_usd"] + 1.5 * 0.00116)
