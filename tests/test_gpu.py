"""GPU metering against NVML replayed from recordings: busy seconds, energy, memory, errors.

Every test drives the real agent (configure, traced_handler, the writer, the ledger) with a
``ReplayNvml`` in place of ``pynvml``; the replay follows the test's fake clock, so each value
below is known exactly from the recording.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import gpuledger
from gpuledger import _config, _guard
from gpuledger._gpu import GpuMeter, visible_devices
from gpuledger.testing.nvml import (
    ReplayNvml,
    energy_reset,
    gpu_lost,
    synthetic_recording,
)

from .conftest import FakeClock, Telemetry

GIB = 2**30
PID = os.getpid()


def _configure(
    tmp_path: Path, clock: FakeClock, recording: dict[str, Any], **settings: Any
) -> tuple[Telemetry, ReplayNvml]:
    replay = ReplayNvml(recording, clock.time_ns, origin_ns=clock.time_ns())
    span_exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    metric_reader = InMemoryMetricReader()
    ledger_path = tmp_path / "ledger.db"
    agent = gpuledger.configure(
        ledger=str(ledger_path),
        platform="runpod",
        service_name="gpu-test",
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[metric_reader]),
        clock=clock,
        nvml=replay,
        **settings,
    )
    assert agent.gpu_ready.wait(5)
    return Telemetry(clock, ledger_path, span_exporter, metric_reader), replay


def _settle(clock: FakeClock) -> None:
    """Let the driver's samples cover the last invocation's end (two sample periods)."""
    clock.advance(0.4)


def _device_busy(recording: dict[str, Any], start_s: float, end_s: float) -> float:
    """Busy seconds of ``[start_s, end_s]`` integrated straight from the recording's samples."""
    samples = recording["devices"][0]["streams"]["gpu_utilization"]
    busy = 0.0
    for (t0, _), (t1, percent) in itertools.pairwise(samples):
        low, high = max(t0 / 1e6, start_s), min(t1 / 1e6, end_s)
        if high > low:
            busy += percent / 100 * (high - low)
    return busy


@pytest.fixture
def sleep_for(clock: FakeClock) -> Callable[[float], None]:
    return clock.advance


def test_known_profile_gives_known_busy_seconds(tmp_path: Path, clock: FakeClock) -> None:
    """GPU busy from 1 s to 3 s; an invocation from 0.5 s to 3.5 s was busy 2 s of its 3."""
    recording = synthetic_recording(duration_s=10, busy=[(1.0, 3.0, 1.0)], pid=PID)
    telemetry, _ = _configure(tmp_path, clock, recording, strict=True)

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> str:
        clock.advance(3.0)
        return "done"

    clock.advance(0.5)
    assert handler({"id": "job-1", "input": {}}) == "done"
    _settle(clock)
    (row,) = telemetry.rows()
    assert row["busy_gpu_seconds"] == pytest.approx(_device_busy(recording, 0.5, 3.5), rel=1e-9)
    assert row["busy_gpu_seconds"] == pytest.approx(2.0, rel=0.005)
    assert row["busy_source"] == "process"
    assert row["billed_gpu_seconds"] == pytest.approx(3.0)
    assert row["gpu_model"] == "H100"  # detected from "NVIDIA H100 80GB HBM3"
    assert row["gpu_uuids"] == recording["devices"][0]["uuid"]
    assert row["cost_usd"] is not None  # priced once the model was detected
    # 2 s at 700 W and 1 s at 70 W, from the energy counter
    assert row["energy_j"] == pytest.approx(2 * 700 + 1 * 70, rel=0.01)
    assert row["energy_source"] == "counter"
    assert row["energy_idle_j"] == pytest.approx(3 * 70, rel=0.01)
    assert row["energy_active_j"] == pytest.approx(2 * 630, rel=0.01)
    assert row["peak_gpu_memory_bytes"] is None
    assert "sampler" in row["gpu_unmeasured"]
    (span,) = [s for s in telemetry.spans() if s.name.endswith("handler")]
    assert span.attributes is not None
    assert span.attributes["gpuledger.gpu.busy"] == row["busy_gpu_seconds"]
    assert span.attributes["gpuledger.gpu.energy"] == row["energy_j"]
    assert span.end_time == row["end_ns"]  # ended by the writer, at the invocation's end


def test_idle_invocation_is_busy_zero_not_unknown(tmp_path: Path, clock: FakeClock) -> None:
    recording = synthetic_recording(duration_s=10, busy=[], pid=PID)
    telemetry, _ = _configure(tmp_path, clock, recording, strict=True)

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        clock.advance(2.0)

    clock.advance(1.0)
    handler({"id": "j", "input": {}})
    _settle(clock)
    (row,) = telemetry.rows()
    assert row["busy_gpu_seconds"] == 0.0
    assert row["energy_j"] == pytest.approx(2 * 70, rel=0.01)
    assert row["energy_active_j"] == pytest.approx(0.0, abs=1.0)


def test_overlapping_invocations_split_busy_and_energy(tmp_path: Path, clock: FakeClock) -> None:
    """A 0.5-2.5 s and B 1.5-3.5 s on a GPU busy throughout: each gets half of the shared
    second; together they hold exactly the device's busy time and energy over 0.5-3.5 s."""
    recording = synthetic_recording(duration_s=10, busy=[(0.0, 5.0, 1.0)], pid=PID)
    telemetry, replay = _configure(tmp_path, clock, recording, strict=True)

    @gpuledger.traced_handler
    def stream(job: dict[str, Any]) -> Iterator[int]:
        yield 1

    clock.advance(0.5)
    a = stream({"id": "a", "input": {}})
    next(a)
    energy_start = replay.nvmlDeviceGetTotalEnergyConsumption(replay.nvmlDeviceGetHandleByIndex(0))
    clock.advance(1.0)
    b = stream({"id": "b", "input": {}})
    next(b)
    clock.advance(1.0)
    assert list(a) == []
    clock.advance(1.0)
    assert list(b) == []
    energy_end = replay.nvmlDeviceGetTotalEnergyConsumption(replay.nvmlDeviceGetHandleByIndex(0))
    _settle(clock)
    rows = {row["invocation_id"]: row for row in telemetry.rows()}
    a_row, b_row = rows["a"], rows["b"]
    assert a_row["billed_gpu_seconds"] == pytest.approx(1.5)
    assert b_row["billed_gpu_seconds"] == pytest.approx(1.5)
    assert a_row["busy_gpu_seconds"] + b_row["busy_gpu_seconds"] == pytest.approx(
        _device_busy(recording, 0.5, 3.5), rel=1e-9
    )
    assert a_row["busy_gpu_seconds"] == pytest.approx(1.5, rel=0.01)
    assert a_row["energy_j"] + b_row["energy_j"] == pytest.approx(
        (energy_end - energy_start) / 1000, rel=1e-9
    )


def test_sequential_energy_adds_up_to_the_counter(tmp_path: Path, clock: FakeClock) -> None:
    recording = synthetic_recording(
        duration_s=20, busy=[(1.0, 2.0, 1.0), (3.0, 3.5, 0.5), (6.0, 9.0, 0.8)], pid=PID
    )
    telemetry, replay = _configure(tmp_path, clock, recording, strict=True)
    handle = replay.nvmlDeviceGetHandleByIndex(0)

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        clock.advance(job["input"]["seconds"])

    clock.advance(0.25)
    first = replay.nvmlDeviceGetTotalEnergyConsumption(handle)
    for i, seconds in enumerate([1.3, 0.7, 2.2, 0.05, 4.0]):
        handler({"id": f"j{i}", "input": {"seconds": seconds}})
    last = replay.nvmlDeviceGetTotalEnergyConsumption(handle)
    _settle(clock)
    rows = telemetry.rows()
    assert sum(row["energy_j"] for row in rows) == pytest.approx((last - first) / 1000, rel=1e-9)
    assert all(row["energy_j"] >= 0 for row in rows)
    assert sum(row["busy_gpu_seconds"] for row in rows) == pytest.approx(
        _device_busy(recording, 0.25, 0.25 + 8.25), rel=1e-9
    )


def test_request_path_reads_only_the_energy_counter(tmp_path: Path, clock: FakeClock) -> None:
    recording = synthetic_recording(duration_s=10, busy=[(0.0, 1.0, 1.0)], pid=PID)
    telemetry, replay = _configure(tmp_path, clock, recording, strict=True)
    seen: list[str] = []

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        seen.append("handler")
        clock.advance(0.5)

    before = dict(replay.calls)
    with _calls_on_this_thread(replay) as calls:
        handler({"id": "j", "input": {}})
    assert calls == ["nvmlDeviceGetTotalEnergyConsumption"] * 2  # start and end, one GPU
    _settle(clock)
    telemetry.rows()
    assert replay.calls["nvmlDeviceGetSamples"] > before.get("nvmlDeviceGetSamples", 0)


def test_sampler_takes_nvml_off_the_request_path_and_measures_peak_memory(
    tmp_path: Path, clock: FakeClock
) -> None:
    recording = synthetic_recording(
        duration_s=10,
        busy=[(0.0, 3.0, 1.0)],
        pid=PID,
        memory_bytes=[(0.0, 4 * GIB), (1.0, 10 * GIB), (2.0, 4 * GIB)],
    )
    telemetry, replay = _configure(tmp_path, clock, recording, strict=True, gpu_sample_hz=1)
    agent = _config.get_agent()
    assert agent is not None
    meter = agent.gpu_meter
    meter.sample_once()

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        for _ in range(5):  # the sampler's ticks, at the test's times
            clock.advance(0.4)
            meter.sample_once()

    clock.advance(0.3)
    with _calls_on_this_thread(replay, exclude=("sample_once",)) as calls:
        handler({"id": "j", "input": {}})
    assert calls == []
    _settle(clock)
    meter.sample_once()
    (row,) = telemetry.rows()
    assert row["peak_gpu_memory_bytes"] == 10 * GIB
    assert row["energy_j"] == pytest.approx(2.0 * 700, rel=0.05)  # interpolated edges
    assert row["busy_gpu_seconds"] == pytest.approx(2.0, rel=0.01)


class _calls_on_this_thread:
    """The NVML calls made on this thread, outside the named meter methods."""

    def __init__(self, replay: ReplayNvml, exclude: tuple[str, ...] = ()) -> None:
        self.replay = replay
        self.exclude = exclude
        self.calls: list[str] = []
        self.thread = threading.current_thread()
        self.original = replay._enter  # type: ignore[attr-defined]

    def __enter__(self) -> list[str]:
        import inspect

        def spy(function: str) -> int:
            if threading.current_thread() is self.thread:
                callers = {frame.function for frame in inspect.stack()[1:8]}
                if not callers & set(self.exclude):
                    self.calls.append(function)
            result: int = self.original(function)
            return result

        self.replay._enter = spy  # type: ignore[method-assign]
        return self.calls

    def __exit__(self, *exc: object) -> None:
        self.replay._enter = self.original  # type: ignore[method-assign]


def test_energy_not_supported_falls_back_to_power_samples(tmp_path: Path, clock: FakeClock) -> None:
    recording = synthetic_recording(
        duration_s=10, busy=[(0.0, 2.0, 1.0)], pid=PID, energy_supported=False
    )
    telemetry, _ = _configure(tmp_path, clock, recording)

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> str:
        clock.advance(2.0)
        return "ok"

    clock.advance(1.0)
    assert handler({"id": "j", "input": {}}) == "ok"
    _settle(clock)
    (row,) = telemetry.rows()
    assert row["energy_source"] == "power_samples"
    assert row["energy_j"] == pytest.approx(1.0 * 700 + 1.0 * 70, rel=0.02)
    assert _guard.error_counts().get("nvml.NotSupported", 0) >= 1


def test_no_driver_leaves_gpu_fields_unknown(tmp_path: Path, clock: FakeClock) -> None:
    recording = synthetic_recording(duration_s=1, pid=PID)
    recording["init_error"] = "LibraryNotFound"
    telemetry, _ = _configure(tmp_path, clock, recording, gpu="A100", strict=True)

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> int:
        clock.advance(1.0)
        return 42

    assert handler({"id": "j", "input": {}}) == 42
    (row,) = telemetry.rows()
    assert row["busy_gpu_seconds"] is None
    assert row["energy_j"] is None
    assert row["gpu_uuids"] is None
    assert "LibraryNotFound" in row["gpu_unmeasured"]
    assert row["billed_gpu_seconds"] == 1.0  # billing does not need NVML
    assert row["gpu_model"] == "A100"


def test_gpu_lost_mid_request_records_what_it_can(tmp_path: Path, clock: FakeClock) -> None:
    recording = gpu_lost(
        synthetic_recording(duration_s=10, busy=[(0.0, 5.0, 1.0)], pid=PID), 0, from_s=1.5
    )
    telemetry, _ = _configure(tmp_path, clock, recording)

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> str:
        clock.advance(1.5)
        return "result"

    clock.advance(0.5)
    assert handler({"id": "j", "input": {}}) == "result"
    _settle(clock)
    (row,) = telemetry.rows()
    assert row["outcome"] == "ok"
    assert row["billed_gpu_seconds"] == pytest.approx(1.5)
    assert row["busy_gpu_seconds"] is None
    assert row["energy_j"] is None
    assert "GpuIsLost" in row["gpu_unmeasured"]
    assert _guard.error_counts()["nvml.GpuIsLost"] >= 1
    # later invocations are still recorded
    handler({"id": "k", "input": {}})
    assert len(telemetry.rows()) == 2


def test_energy_counter_reset_is_never_negative(tmp_path: Path, clock: FakeClock) -> None:
    recording = energy_reset(
        synthetic_recording(duration_s=10, busy=[(0.0, 5.0, 1.0)], pid=PID), 0, at_s=2.0
    )
    telemetry, _ = _configure(tmp_path, clock, recording, strict=True)

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        clock.advance(1.0)

    clock.advance(0.5)
    handler({"id": "before", "input": {}})  # 0.5-1.5: normal
    handler({"id": "across", "input": {}})  # 1.5-2.5: the counter restarts at 2.0
    handler({"id": "after", "input": {}})  # 2.5-3.5: normal again
    _settle(clock)
    rows = {row["invocation_id"]: row for row in telemetry.rows()}
    assert rows["before"]["energy_j"] == pytest.approx(700, rel=0.01)
    assert rows["across"]["energy_j"] is None
    assert "backwards" in rows["across"]["gpu_unmeasured"]
    assert rows["after"]["energy_j"] == pytest.approx(700, rel=0.01)


def test_flush_before_samples_cover_the_end_estimates_and_says_so(
    tmp_path: Path, clock: FakeClock
) -> None:
    recording = synthetic_recording(duration_s=10, busy=[(0.0, 5.0, 1.0)], pid=PID)
    telemetry, _ = _configure(tmp_path, clock, recording, strict=True)

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        clock.advance(1.0)

    clock.advance(0.1)
    handler({"id": "j", "input": {}})  # ends at 1.1 s; the last sample is at 1.0 s
    (row,) = telemetry.rows()  # flush: measured now, not after the next sample
    assert row["busy_gpu_seconds"] == pytest.approx(1.0, rel=0.01)
    assert "estimated" in row["gpu_unmeasured"]


def test_cuda_visible_devices(clock: FakeClock) -> None:
    recording = synthetic_recording(duration_s=1, pid=PID, devices=3)
    recording["devices"][1]["uuid"] = "GPU-0b1d2c3e-4f50-6172-8394-a5b6c7d8e9f0"
    replay = ReplayNvml(recording, clock.time_ns)
    replay.nvmlInit()
    uuids = [device["uuid"] for device in recording["devices"]]

    def chosen(value: str | None) -> list[str]:
        env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
        devices, _ = visible_devices(replay, env)
        return [device.uuid for device in devices]

    assert chosen(None) == uuids
    assert chosen("") == []
    assert chosen("2,0") == [uuids[2], uuids[0]]
    assert chosen(uuids[1][:10]) == [uuids[1]]  # a unique prefix is enough
    assert chosen(uuids[0][:12]) == []  # an ambiguous one names no device
    assert chosen(f"1,{uuids[2]}") == [uuids[1], uuids[2]]
    assert chosen("0,7,1") == [uuids[0]]  # CUDA stops at the first entry naming no device
    _devices, note = visible_devices(replay, {"CUDA_VISIBLE_DEVICES": "0,7,1"})
    assert note is not None
    assert "'7'" in note


def test_two_gpus_bill_and_meter_both(tmp_path: Path, clock: FakeClock) -> None:
    recording = synthetic_recording(
        duration_s=10, pid=PID, devices=2, busy={0: [(0.0, 5.0, 1.0)], 1: []}
    )
    telemetry, _ = _configure(tmp_path, clock, recording, strict=True)

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        clock.advance(2.0)

    clock.advance(0.5)
    handler({"id": "j", "input": {}})
    _settle(clock)
    (row,) = telemetry.rows()
    assert row["gpu_count"] == 2
    assert row["billed_gpu_seconds"] == pytest.approx(4.0)
    assert row["busy_gpu_seconds"] == pytest.approx(2.0, rel=0.01)  # one busy, one idle
    assert row["energy_j"] == pytest.approx(2 * 700 + 2 * 70, rel=0.01)
    assert row["gpu_uuids"].count("GPU-") == 2


def test_mig_instance_reports_what_nvml_cannot_split(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording = synthetic_recording(duration_s=10, busy=[(0.0, 5.0, 1.0)], pid=PID)
    mig_uuid = "MIG-7d3c5a40-1111-2222-3333-444455556666"
    recording["devices"].append(
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
            "uuid": mig_uuid,
            "memory_total": 10 * GIB,
            "parent": 0,
            "streams": {},
        }
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mig_uuid)
    telemetry, _ = _configure(tmp_path, clock, recording)

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> str:
        clock.advance(1.0)
        return "ok"

    assert handler({"id": "j", "input": {}}) == "ok"
    _settle(clock)
    (row,) = telemetry.rows()
    assert row["gpu_uuids"] == mig_uuid
    assert row["busy_gpu_seconds"] is None
    assert row["energy_j"] is None
    assert "NotSupported" in row["gpu_unmeasured"]


def test_device_metrics(tmp_path: Path, clock: FakeClock) -> None:
    recording = synthetic_recording(duration_s=10, busy=[(0.0, 5.0, 1.0)], pid=PID)
    telemetry, _ = _configure(tmp_path, clock, recording, strict=True)
    clock.advance(1.0)
    agent = _config.get_agent()
    assert agent is not None
    agent.gpu_meter.drain()
    uuid = recording["devices"][0]["uuid"]
    expected = {
        "hw.gpu.utilization": 1.0,
        "hw.gpu.memory.limit": recording["devices"][0]["memory_total"],
        "hw.power": 700.0,
    }
    for name, value in expected.items():
        (point,) = telemetry.metric_points(name)
        assert point.value == pytest.approx(value)
        assert point.attributes["hw.id"] == uuid
        assert point.attributes["hw.type"] == "gpu"
        assert point.attributes["hw.vendor"] == "NVIDIA"
    (energy,) = telemetry.metric_points("hw.energy")
    assert energy.value > 1_000_000  # joules since the driver loaded
    (usage,) = telemetry.metric_points("hw.gpu.memory.usage")
    assert usage.value > 0


def test_gpu_meter_never_raises_into_a_handler(clock: FakeClock) -> None:
    """Every NVML function failing at once: the meter's calls return, fields are unknown."""
    recording = synthetic_recording(duration_s=10, busy=[(0.0, 5.0, 1.0)], pid=PID)
    replay = ReplayNvml(recording, clock.time_ns)
    replay.nvmlInit()
    devices, _ = visible_devices(replay, {})
    meter = GpuMeter(replay, devices, time_ns=clock.time_ns, pid=PID)
    broken = gpu_lost(recording, 0, from_s=0.0)
    meter.nvml = ReplayNvml(broken, clock.time_ns, origin_ns=replay.origin_ns)
    meter.nvml.nvmlInit()
    start = clock.time_ns()
    meter.mark(start)
    clock.advance(1.0)
    meter.mark(clock.time_ns())
    meter.drain()
    usage = meter.measure(start, clock.time_ns())
    assert usage.busy_gpu_seconds is None
    assert usage.energy_j is None
    assert usage.unmeasured


def test_no_permission_for_process_samples_falls_back_to_the_device(
    tmp_path: Path, clock: FakeClock
) -> None:
    recording = synthetic_recording(
        duration_s=10,
        busy=[(0.0, 5.0, 1.0)],
        pid=PID,
        errors=[
            {
                "function": "nvmlDeviceGetProcessUtilization",
                "error": "NoPermission",
                "from_us": 0,
                "until_us": None,
            }
        ],
    )
    telemetry, _ = _configure(tmp_path, clock, recording)

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        clock.advance(1.0)

    clock.advance(0.5)
    handler({"id": "j", "input": {}})
    _settle(clock)
    (row,) = telemetry.rows()
    assert row["busy_source"] == "device"
    assert row["busy_gpu_seconds"] == pytest.approx(1.0, rel=0.01)
    assert _guard.error_counts()["nvml.NoPermission"] >= 1


def test_shared_gpu_bills_only_this_processes_share(tmp_path: Path, clock: FakeClock) -> None:
    """Another process runs kernels on the same GPU half of the time we do: NVML's per-process
    samples take its work out of our busy time."""
    recording = synthetic_recording(duration_s=10, busy=[(0.0, 5.0, 1.0)], pid=PID)
    stream = recording["devices"][0]["streams"]["process_utilization"]
    ours = [row for row in stream if row[1] == PID]
    # the other process: the same samples, a third of the SM time each; ours two thirds
    others = [[t, PID + 1, sm // 3, mem, enc, dec] for t, _, sm, mem, enc, dec in ours]
    for row in ours:
        row[2] = row[2] * 2 // 3
    recording["devices"][0]["streams"]["process_utilization"] = sorted(
        ours + others, key=lambda row: (row[0], row[1])
    )
    telemetry, _ = _configure(tmp_path, clock, recording, strict=True)

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        clock.advance(3.0)

    clock.advance(0.5)
    handler({"id": "j", "input": {}})
    _settle(clock)
    (row,) = telemetry.rows()
    assert row["busy_source"] == "process"
    assert row["busy_gpu_seconds"] == pytest.approx(3.0 * 2 / 3, rel=0.01)


def test_without_a_driver_the_real_pynvml_says_so(tmp_path: Path) -> None:
    """No `nvml` argument: the real pynvml is loaded; on a machine without a driver (CI) the
    agent runs, GPU fields are null and the reason names NVML's error."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    agent = gpuledger.configure(ledger=str(tmp_path / "l.db"), exporters="none", strict=True)
    assert agent.gpu_ready.wait(10)
    assert agent.gpu_meter is None

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> str:
        return "fine"

    assert handler({"id": "j", "input": {}}) == "fine"
    gpuledger.flush(5)
    from gpuledger.ledger import open_ledger

    with open_ledger(str(tmp_path / "l.db"), create=False) as ledger:
        (record,) = ledger.read()
    assert record.busy_gpu_seconds is None
    assert record.gpu_unmeasured == {"gpu": "no NVIDIA driver (LibraryNotFound)"}


def test_request_before_nvml_opened_says_why_its_gpu_fields_are_null(
    tmp_path: Path, clock: FakeClock
) -> None:
    """NVML opens on its own thread; a request that starts before it has opened (the cold one,
    the costliest) is recorded without GPU fields, and its record says why even though, by the
    time the writer builds it, NVML is open and the worker has no reason of its own left."""
    recording = synthetic_recording(duration_s=10, busy=[(0.0, 10.0, 1.0)], pid=PID)
    opened = threading.Event()
    release = threading.Event()

    class SlowInit(ReplayNvml):
        def nvmlInit(self) -> None:
            release.wait(10)
            super().nvmlInit()
            opened.set()

    replay = SlowInit(recording, clock.time_ns, origin_ns=clock.time_ns())
    ledger_path = tmp_path / "ledger.db"
    span_exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    agent = gpuledger.configure(
        ledger=str(ledger_path),
        platform="runpod",
        gpu="H100",
        tracer_provider=tracer_provider,
        clock=clock,
        nvml=replay,
        strict=True,
    )

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> str:
        if not release.is_set():  # NVML opens while the first request runs
            release.set()
            assert opened.wait(5)
            assert agent.gpu_ready.wait(5)
        clock.advance(1.0)
        return "ok"

    assert handler({"id": "cold", "input": {}}) == "ok"
    assert handler({"id": "warm", "input": {}}) == "ok"
    _settle(clock)
    telemetry = Telemetry(clock, ledger_path, span_exporter, InMemoryMetricReader())
    cold, warm = sorted(telemetry.rows(), key=lambda row: row["start_ns"])
    assert cold["busy_gpu_seconds"] is None
    assert cold["gpu_unmeasured"] is not None
    assert "before NVML" in cold["gpu_unmeasured"]
    assert warm["busy_gpu_seconds"] is not None  # measured once the meter is there
    (span,) = [s for s in span_exporter.get_finished_spans() if s.attributes.get("faas.coldstart")]
    assert "before NVML" in " ".join(span.attributes["gpuledger.gpu.unmeasured_reasons"])
