"""The sidecar's container-wide GPU meter fills the GPU fields of records that lack them."""

from __future__ import annotations

import os

import pytest

from gpuledger._gpu import GpuMeter, visible_devices
from gpuledger.sidecar._gpu import SidecarGpu
from gpuledger.testing.nvml import ReplayNvml, synthetic_recording

from .conftest import FakeClock

S = 10**9


def _record(record_id: str, start_ns: int, end_ns: int, **fields: object) -> dict[str, object]:
    return {"record_id": record_id, "start_ns": start_ns, "end_ns": end_ns, **fields}


def test_fills_and_shares_overlapping_records_from_two_workers(clock: FakeClock) -> None:
    recording = synthetic_recording(duration_s=20, busy=[(0.0, 10.0, 1.0)], pid=os.getpid())
    origin = clock.time_ns()
    replay = ReplayNvml(recording, clock.time_ns, origin_ns=origin)
    replay.nvmlInit()
    devices, _ = visible_devices(replay, {})
    meter = GpuMeter(replay, devices, time_ns=clock.time_ns, sample_hz=0.0)
    sidecar = SidecarGpu(meter)
    t0 = origin
    sidecar.started([{"record_id": "a", "start_ns": t0 + 1 * S}])
    sidecar.started([{"record_id": "b", "start_ns": t0 + 2 * S}])
    clock.advance(5.5)  # the driver's samples cover both ends
    # energy from the driver's power samples: the sidecar did not read the counter at the edges
    a = _record("a", t0 + 1 * S, t0 + 3 * S)
    b = _record("b", t0 + 2 * S, t0 + 4 * S)
    mine = _record("c", t0 + 1 * S, t0 + 2 * S, busy_gpu_seconds=0.25, energy_j=10.0)
    assert sidecar.fill([a]) == 1
    assert sidecar.fill([b, mine]) == 1
    # a: 1-2 s alone, 2-3 s shared with b -> 1.5 s busy; b: the same
    assert a["busy_gpu_seconds"] == pytest.approx(1.5, rel=0.02)
    assert b["busy_gpu_seconds"] == pytest.approx(1.5, rel=0.02)
    assert a["gpu_uuids"] == devices[0].uuid
    assert mine["busy_gpu_seconds"] == 0.25  # measured by its worker: left alone
    assert mine["energy_j"] == 10.0
    assert a["energy_j"] is None  # no counter reading at its edges, and power samples...
    assert "energy_j" in (a["gpu_unmeasured"] or {})


def test_energy_with_the_sampler(clock: FakeClock) -> None:
    recording = synthetic_recording(duration_s=20, busy=[(0.0, 10.0, 1.0)], pid=os.getpid())
    origin = clock.time_ns()
    replay = ReplayNvml(recording, clock.time_ns, origin_ns=origin)
    replay.nvmlInit()
    devices, _ = visible_devices(replay, {})
    meter = GpuMeter(replay, devices, time_ns=clock.time_ns, sample_hz=1000.0)
    meter.close()  # the test ticks the sampler itself, at the fake clock's times
    sidecar = SidecarGpu(meter)
    for _ in range(40):
        meter.sample_once()
        clock.advance(0.1)
    record = _record("r", origin + 1 * S, origin + 3 * S)
    sidecar.fill([record])
    assert record["energy_j"] == pytest.approx(2 * 700, rel=0.03)
    assert record["busy_gpu_seconds"] == pytest.approx(2.0, rel=0.02)
    assert record["peak_gpu_memory_bytes"] is not None
