"""The NVML replay: fidelity to pynvml, the recording format, synthetic profiles, the recorder."""

from __future__ import annotations

import copy
import ctypes
import inspect
import json
from pathlib import Path
from typing import Any

import pynvml
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuledger.testing.nvml import (
    FORMAT,
    ReplayHandle,
    ReplayNvml,
    energy_reset,
    error_names,
    gpu_lost,
    load_recording,
    record_nvml,
    save_recording,
    synthetic_recording,
    validate_recording,
)
from tests.conftest import EPOCH_NS, FakeClock

UTIL = pynvml.NVML_GPU_UTILIZATION_SAMPLES
POWER = pynvml.NVML_TOTAL_POWER_SAMPLES
PERIOD_US = 166_667
ORIGIN_US = EPOCH_NS // 1000

METER_FUNCTIONS = [
    "nvmlInit",
    "nvmlShutdown",
    "nvmlSystemGetDriverVersion",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetIndex",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetSamples",
    "nvmlDeviceGetProcessUtilization",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceIsMigDeviceHandle",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
]


def tiny_recording(**device: Any) -> dict[str, Any]:
    """A one-GPU recording whose device fields are overridden by ``device``."""
    entry: dict[str, Any] = {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-aaaa",
        "memory_total": 1000,
        "parent": None,
        "buffer": {"gpu_utilization": 3, "total_power": 3, "process_utilization": 3},
        "streams": {},
        "errors": [],
    }
    entry.update(device)
    return {
        "format": FORMAT,
        "source": "synthetic: test",
        "driver_version": "550.54.15",
        "init_error": None,
        "devices": [entry],
    }


def started(recording: dict[str, Any], clock: FakeClock) -> tuple[ReplayNvml, ReplayHandle]:
    nvml = ReplayNvml(recording, clock.time_ns)
    nvml.nvmlInit()
    return nvml, nvml.nvmlDeviceGetHandleByIndex(0)


def error_of(call: Any, *args: Any) -> BaseException:
    with pytest.raises(pynvml.NVMLError) as caught:
        call(*args)
    return caught.value


# -- fidelity to pynvml -----------------------------------------------------------------------


@pytest.mark.parametrize("name", METER_FUNCTIONS)
def test_signatures_match_pynvml(name: str) -> None:
    nvml = ReplayNvml(synthetic_recording(duration_s=1), FakeClock().time_ns)
    ours = inspect.signature(getattr(nvml, name))
    theirs = inspect.signature(getattr(pynvml, name))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ]


def test_constants_and_error_classes_are_pynvml_s() -> None:
    assert ReplayNvml.NVMLError is pynvml.NVMLError
    for name in dir(pynvml):
        if name.startswith("NVMLError") or name in (
            "NVML_GPU_UTILIZATION_SAMPLES",
            "NVML_TOTAL_POWER_SAMPLES",
            "NVML_VALUE_TYPE_UNSIGNED_INT",
            "NVML_ERROR_GPU_IS_LOST",
        ):
            assert getattr(ReplayNvml, name) is getattr(pynvml, name), name
    assert "GpuIsLost" in error_names()


def test_uninitialized_until_init_and_after_shutdown(clock: FakeClock) -> None:
    nvml = ReplayNvml(synthetic_recording(duration_s=1), clock.time_ns)
    error = error_of(nvml.nvmlDeviceGetCount)
    assert type(error) is pynvml.NVMLError_Uninitialized
    assert error.value == pynvml.NVML_ERROR_UNINITIALIZED
    assert type(error_of(nvml.nvmlShutdown)) is pynvml.NVMLError_Uninitialized
    nvml.nvmlInit()
    nvml.nvmlInit()  # reference counted, as NVML
    nvml.nvmlShutdown()
    assert nvml.nvmlDeviceGetCount() == 1
    nvml.nvmlShutdown()
    assert type(error_of(nvml.nvmlSystemGetDriverVersion)) is pynvml.NVMLError_Uninitialized


@pytest.mark.parametrize("name", ["DriverNotLoaded", "LibraryNotFound", "NoPermission"])
def test_init_error_is_the_real_pynvml_error(clock: FakeClock, name: str) -> None:
    recording = tiny_recording()
    recording["init_error"] = name
    nvml = ReplayNvml(recording, clock.time_ns)
    error = error_of(nvml.nvmlInit)
    assert type(error) is getattr(pynvml, f"NVMLError_{name}")
    assert str(error) == str(getattr(pynvml, f"NVMLError_{name}")())
    assert type(error_of(nvml.nvmlDeviceGetCount)) is pynvml.NVMLError_Uninitialized


def test_identity_and_handles(clock: FakeClock) -> None:
    nvml = ReplayNvml(synthetic_recording(duration_s=1, devices=2), clock.time_ns)
    nvml.nvmlInit()
    assert nvml.nvmlSystemGetDriverVersion() == "550.54.15"
    assert nvml.nvmlDeviceGetCount() == 2
    second = nvml.nvmlDeviceGetHandleByIndex(1)
    uuid = nvml.nvmlDeviceGetUUID(second)
    assert isinstance(uuid, str)
    assert uuid.startswith("GPU-")
    assert nvml.nvmlDeviceGetName(second) == "NVIDIA H100 80GB HBM3"
    assert nvml.nvmlDeviceGetIndex(second) == 1
    assert nvml.nvmlDeviceGetHandleByUUID(uuid) == second
    assert nvml.nvmlDeviceGetHandleByUUID(uuid.encode()) == second
    assert len({second, nvml.nvmlDeviceGetHandleByIndex(1)}) == 1
    assert type(error_of(nvml.nvmlDeviceGetHandleByIndex, 2)) is pynvml.NVMLError_InvalidArgument
    assert type(error_of(nvml.nvmlDeviceGetHandleByUUID, "GPU-nope")) is pynvml.NVMLError_NotFound
    assert type(error_of(nvml.nvmlDeviceGetName, object())) is pynvml.NVMLError_InvalidArgument


def test_mig_instances(clock: FakeClock) -> None:
    recording = tiny_recording()
    recording["devices"].append(
        {"index": 0, "name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "uuid": "MIG-bbbb",
         "memory_total": 10, "parent": 0, "streams": {}}
    )  # fmt: skip
    nvml, gpu = started(recording, clock)
    assert nvml.nvmlDeviceGetCount() == 1
    mig = nvml.nvmlDeviceGetHandleByUUID("MIG-bbbb")
    flag = nvml.nvmlDeviceIsMigDeviceHandle(mig)
    assert isinstance(flag, ctypes.c_uint)  # as pynvml: not a bool
    assert bool(flag)
    assert not nvml.nvmlDeviceIsMigDeviceHandle(gpu)
    assert nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig) == gpu
    assert type(error_of(nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, gpu)) is (
        pynvml.NVMLError_InvalidArgument
    )
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(gpu) == 1
    assert nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0) == mig
    assert type(error_of(nvml.nvmlDeviceGetMigDeviceHandleByIndex, gpu, 1)) is (
        pynvml.NVMLError_NotFound
    )
    assert type(error_of(nvml.nvmlDeviceGetSamples, mig, UTIL, 0)) is pynvml.NVMLError_NotSupported


# -- sampled metrics --------------------------------------------------------------------------


def test_samples_are_real_structs_with_absolute_timestamps(clock: FakeClock) -> None:
    recording = tiny_recording(streams={"gpu_utilization": [[100, 10], [200, 20], [300, 30]]})
    nvml, handle = started(recording, clock)
    clock.advance(250e-6)  # t = 250 µs: the sample at 300 µs has not been taken yet
    value_type, samples = nvml.nvmlDeviceGetSamples(handle, UTIL, 0)
    assert value_type == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    assert all(type(sample) is pynvml.c_nvmlSample_t for sample in samples)
    assert [(s.timeStamp, s.sampleValue.uiVal) for s in samples] == [
        (ORIGIN_US + 100, 10),
        (ORIGIN_US + 200, 20),
    ]
    # Strictly newer than the cursor; nothing newer is NotFound.
    _, newer = nvml.nvmlDeviceGetSamples(handle, UTIL, ORIGIN_US + 100)
    assert [s.sampleValue.uiVal for s in newer] == [20]
    error = error_of(nvml.nvmlDeviceGetSamples, handle, UTIL, ORIGIN_US + 200)
    assert type(error) is pynvml.NVMLError_NotFound
    clock.advance(50e-6)  # exactly at 300 µs: visible
    _, latest = nvml.nvmlDeviceGetSamples(handle, UTIL, ORIGIN_US + 200)
    assert [s.sampleValue.uiVal for s in latest] == [30]


def test_ring_buffer_overrun_drops_the_oldest(clock: FakeClock) -> None:
    rows = [[t, t] for t in range(1, 8)]  # buffer holds 3
    nvml, handle = started(tiny_recording(streams={"gpu_utilization": rows}), clock)
    clock.advance(5e-6)
    _, samples = nvml.nvmlDeviceGetSamples(handle, UTIL, 0)
    assert [s.sampleValue.uiVal for s in samples] == [3, 4, 5]
    clock.advance(2e-6)
    _, samples = nvml.nvmlDeviceGetSamples(handle, UTIL, ORIGIN_US + 5)
    assert [s.sampleValue.uiVal for s in samples] == [6, 7]
    _, samples = nvml.nvmlDeviceGetSamples(handle, UTIL, ORIGIN_US + 1)  # 2..4 overwritten
    assert [s.sampleValue.uiVal for s in samples] == [5, 6, 7]


def test_sampling_types(clock: FakeClock) -> None:
    nvml, handle = started(tiny_recording(streams={"gpu_utilization": [[0, 1]]}), clock)
    assert nvml.nvmlDeviceGetSamples(handle, UTIL, 0)[1][0].sampleValue.uiVal == 1
    assert type(error_of(nvml.nvmlDeviceGetSamples, handle, POWER, 0)) is (
        pynvml.NVMLError_NotSupported
    )
    memory_samples = pynvml.NVML_MEMORY_UTILIZATION_SAMPLES
    assert type(error_of(nvml.nvmlDeviceGetSamples, handle, memory_samples, 0)) is (
        pynvml.NVMLError_NotSupported
    )
    assert type(error_of(nvml.nvmlDeviceGetSamples, handle, 99, 0)) is (
        pynvml.NVMLError_InvalidArgument
    )


def test_process_utilization_is_one_aggregate_entry_per_pid(clock: FakeClock) -> None:
    rows = [[10, 7, 40, 20, 0, 0], [20, 8, 5, 1, 0, 0], [30, 7, 61, 30, 1, 2]]
    recording = tiny_recording(streams={"process_utilization": rows})
    recording["devices"][0]["buffer"]["process_utilization"] = 10
    nvml, handle = started(recording, clock)
    clock.advance(40e-6)
    entries = nvml.nvmlDeviceGetProcessUtilization(handle, 0)
    assert all(type(e) is pynvml.c_nvmlProcessUtilizationSample_t for e in entries)
    summary = [(e.pid, e.timeStamp - ORIGIN_US, e.smUtil, e.memUtil, e.encUtil, e.decUtil)
               for e in entries]  # fmt: skip
    assert summary == [(7, 30, 51, 25, 1, 1), (8, 20, 5, 1, 0, 0)]  # rounded means
    (latest,) = nvml.nvmlDeviceGetProcessUtilization(handle, ORIGIN_US + 20)
    assert (latest.pid, latest.smUtil) == (7, 61)
    error = error_of(nvml.nvmlDeviceGetProcessUtilization, handle, ORIGIN_US + 30)
    assert type(error) is pynvml.NVMLError_NotFound


# -- readings ---------------------------------------------------------------------------------


def test_step_streams(clock: FakeClock) -> None:
    streams = {
        "energy": [[100, 5000], [200, 5100]],
        "power": [[0, 70_000]],
        "memory_used": [[0, 300], [150, 600]],
        "processes": [[0, []], [150, [[42, 512], [43, None]]]],
    }
    nvml, handle = started(tiny_recording(streams=streams), clock)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(handle) == 5000  # before the first reading
    assert nvml.nvmlDeviceGetComputeRunningProcesses(handle) == []
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    assert type(memory) is pynvml.c_nvmlMemory_t
    assert (memory.total, memory.used, memory.free) == (1000, 300, 700)
    clock.advance(100e-6)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(handle) == 5000
    clock.advance(99e-6)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(handle) == 5000  # the counter has not moved
    clock.advance(1e-6)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(handle) == 5100
    assert nvml.nvmlDeviceGetPowerUsage(handle) == 70_000
    assert nvml.nvmlDeviceGetMemoryInfo(handle).free == 400
    memory_v2 = nvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    assert type(memory_v2) is pynvml.c_nvmlMemory_v2_t
    assert (memory_v2.version, memory_v2.used) == (pynvml.nvmlMemory_v2, 600)
    processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    assert all(type(p) is pynvml.nvmlFriendlyObject for p in processes)
    assert [(p.pid, p.usedGpuMemory) for p in processes] == [(42, 512), (43, None)]
    assert processes[0].gpuInstanceId == 0xFFFFFFFF  # not a MIG process


def test_missing_streams_are_not_supported(clock: FakeClock) -> None:
    nvml, handle = started(tiny_recording(), clock)
    for call in (
        nvml.nvmlDeviceGetTotalEnergyConsumption,
        nvml.nvmlDeviceGetPowerUsage,
        nvml.nvmlDeviceGetMemoryInfo,
        nvml.nvmlDeviceGetComputeRunningProcesses,
    ):
        assert type(error_of(call, handle)) is pynvml.NVMLError_NotSupported
    assert type(error_of(nvml.nvmlDeviceGetProcessUtilization, handle, 0)) is (
        pynvml.NVMLError_NotSupported
    )


def test_error_windows(clock: FakeClock) -> None:
    errors = [
        {"function": "nvmlDeviceGetPowerUsage", "error": "Unknown", "from_us": 10, "until_us": 20},
        {"function": "nvmlDeviceGetSamples", "error": "NoPermission", "from_us": 0,
         "until_us": None, "sampling_type": POWER},
        {"function": "nvmlDeviceGetComputeRunningProcesses", "error": "FunctionNotFound",
         "from_us": 0, "until_us": None},
    ]  # fmt: skip
    streams = {"power": [[0, 1]], "gpu_utilization": [[0, 5]], "total_power": [[0, 9]]}
    nvml, handle = started(tiny_recording(streams=streams, errors=errors), clock)
    assert nvml.nvmlDeviceGetPowerUsage(handle) == 1
    clock.advance(10e-6)
    error = error_of(nvml.nvmlDeviceGetPowerUsage, handle)
    assert type(error) is pynvml.NVMLError_Unknown
    assert error == pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
    clock.advance(10e-6)
    assert nvml.nvmlDeviceGetPowerUsage(handle) == 1  # until_us is exclusive
    assert nvml.nvmlDeviceGetSamples(handle, UTIL, 0)[1][0].sampleValue.uiVal == 5
    assert type(error_of(nvml.nvmlDeviceGetSamples, handle, POWER, 0)) is (
        pynvml.NVMLError_NoPermission
    )
    # pynvml's unversioned wrapper turns FunctionNotFound into a non-NVMLError.
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        nvml.nvmlDeviceGetComputeRunningProcesses(handle)


def test_gpu_lost_fails_every_call_on_the_device(clock: FakeClock) -> None:
    recording = gpu_lost(synthetic_recording(duration_s=4, devices=2), 1, 2.0)
    nvml = ReplayNvml(recording, clock.time_ns)
    nvml.nvmlInit()
    lost = nvml.nvmlDeviceGetHandleByIndex(1)
    assert nvml.nvmlDeviceGetPowerUsage(lost) == 70_000
    clock.advance(2.0)
    for call, args in [
        (nvml.nvmlDeviceGetPowerUsage, (lost,)),
        (nvml.nvmlDeviceGetUUID, (lost,)),
        (nvml.nvmlDeviceGetSamples, (lost, UTIL, 0)),
        (nvml.nvmlDeviceGetHandleByIndex, (1,)),
    ]:
        assert type(error_of(call, *args)) is pynvml.NVMLError_GpuIsLost
    assert nvml.nvmlDeviceGetPowerUsage(nvml.nvmlDeviceGetHandleByIndex(0)) == 70_000


def test_calls_are_counted_failures_included(clock: FakeClock) -> None:
    nvml, handle = started(tiny_recording(), clock)
    error_of(nvml.nvmlDeviceGetPowerUsage, handle)
    nvml.nvmlDeviceGetName(handle)
    assert nvml.calls == {
        "nvmlInit": 1,
        "nvmlDeviceGetHandleByIndex": 1,
        "nvmlDeviceGetPowerUsage": 1,
        "nvmlDeviceGetName": 1,
    }


def test_origin_can_be_given(clock: FakeClock) -> None:
    recording = tiny_recording(streams={"gpu_utilization": [[0, 1], [1_000_000, 2]]})
    nvml = ReplayNvml(recording, clock.time_ns, origin_ns=EPOCH_NS - 10**9)
    nvml.nvmlInit()
    assert nvml.now_us() == 1_000_000
    _, samples = nvml.nvmlDeviceGetSamples(nvml.nvmlDeviceGetHandleByIndex(0), UTIL, 0)
    assert [s.timeStamp for s in samples] == [ORIGIN_US - 1_000_000, ORIGIN_US]


# -- synthetic recordings ---------------------------------------------------------------------


def drain(nvml: ReplayNvml, handle: ReplayHandle, kind: int) -> list[tuple[int, int]]:
    try:
        _, samples = nvml.nvmlDeviceGetSamples(handle, kind, 0)
    except pynvml.NVMLError_NotFound:
        return []
    return [(s.timeStamp - ORIGIN_US, s.sampleValue.uiVal) for s in samples]


def test_synthetic_two_second_busy_run(clock: FakeClock) -> None:
    nvml, handle = started(synthetic_recording(duration_s=4.0, busy=[(0.0, 2.0, 1.0)]), clock)
    clock.advance(4.0)
    utilization = drain(nvml, handle, UTIL)
    assert [t for t, _ in utilization] == [k * PERIOD_US for k in range(1, 24)]
    assert [v for _, v in utilization] == [100] * 12 + [0] * 11
    power = [v for _, v in drain(nvml, handle, POWER)]
    # The 12th period ends 4 µs after the run: 70 W + 630 W * 166_663 / 166_667, in mW.
    assert power == [700_000] * 11 + [699_985] + [70_000] * 11
    entries = nvml.nvmlDeviceGetProcessUtilization(handle, 0)
    assert [(e.pid, e.smUtil, e.memUtil, e.timeStamp - ORIGIN_US) for e in entries] == [
        (4242, 100, 50, 12 * PERIOD_US)
    ]
    assert nvml.nvmlDeviceGetPowerUsage(handle) == 70_000
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    assert memory.used == 4 * 2**30 + 500 * 2**20
    (process,) = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    assert (process.pid, process.usedGpuMemory) == (4242, 4 * 2**30)


def test_synthetic_partial_periods_round_like_nvml() -> None:
    recording = synthetic_recording(duration_s=1.1, busy=[(0.25, 0.5, 1.0), (0.6, 1.1, 0.5)])
    values = [v for _, v in recording["devices"][0]["streams"]["gpu_utilization"]]
    # Period k ends at k * 166_667 µs. (0, 1/6] idle; then busy from 0.25 s: 83_334 µs = 50.0003 %
    # -> 50; busy until 0.5 s: 166_666 µs = 99.9994 % -> 100; half busy from 0.6 s: 66_668 µs * 0.5
    # = 20.0003 % -> 20; then half busy throughout: 50, 50.
    assert values == [0, 50, 100, 20, 50, 50]


def test_synthetic_energy_follows_the_power_integral(clock: FakeClock) -> None:
    recording = synthetic_recording(duration_s=6.0, busy=[(1.0, 3.5, 1.0), (4.0, 5.0, 0.3)])
    nvml, handle = started(recording, clock)
    readings = [nvml.nvmlDeviceGetTotalEnergyConsumption(handle)]
    assert readings[0] == 1_234_567_890
    clock.advance(6.0)
    readings.append(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    power = drain(nvml, handle, POWER)
    integral_mj = sum(mw * PERIOD_US / 1e6 for _, mw in power)  # mW * s = mJ
    # Exact over the power samples, up to the counter's update step (0.1 s at 700 W = 70 J).
    assert abs((readings[1] - readings[0]) - integral_mj) <= 700_000 * 0.1
    assert readings[1] - readings[0] == 70 * 6_000 + 630 * (2_500 + 300)  # J -> mJ, exactly


def test_synthetic_devices_and_unsupported_energy(clock: FakeClock) -> None:
    recording = synthetic_recording(
        duration_s=1.0, devices=2, busy={1: [(0.0, 1.0, 1.0)]}, energy_supported=False
    )
    nvml = ReplayNvml(recording, clock.time_ns)
    nvml.nvmlInit()
    first, second = (nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2))
    assert nvml.nvmlDeviceGetUUID(first) != nvml.nvmlDeviceGetUUID(second)
    clock.advance(1.0)
    assert {v for _, v in drain(nvml, first, UTIL)} == {0}
    assert {v for _, v in drain(nvml, second, UTIL)} == {100}
    error = error_of(nvml.nvmlDeviceGetTotalEnergyConsumption, first)
    assert type(error) is pynvml.NVMLError_NotSupported


def test_energy_reset_restarts_the_counter(clock: FakeClock) -> None:
    recording = energy_reset(synthetic_recording(duration_s=3.0), 0, 1.0)
    nvml, handle = started(recording, clock)
    clock.advance(0.95)
    before = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    assert before == 1_234_567_890 + 70 * 900
    clock.advance(0.05)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(handle) == 0
    clock.advance(0.5)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(handle) == 70 * 500


# -- format -----------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    recording = synthetic_recording(duration_s=1.0, busy=[(0.0, 0.5, 1.0)])
    path = tmp_path / "rec.json"
    save_recording(recording, path)
    assert load_recording(path) == json.loads(json.dumps(recording))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r["devices"][0]["streams"]["energy"].__setitem__(3, [0, 1]),
            "devices[0].streams.energy[3]: timestamps must not decrease",
        ),
        (lambda r: r.__setitem__("format", "other/1"), "format: expected"),
        (
            lambda r: r["devices"][0]["errors"].append(
                {"function": "nvmlDeviceGetPowerUsage", "error": "Oops", "from_us": 0}
            ),
            "devices[0].errors[0].error: unknown NVML error 'Oops'",
        ),
        (
            lambda r: r["devices"][0]["streams"].__setitem__("fan", []),
            "devices[0].streams: unknown stream 'fan'",
        ),
        (lambda r: r["devices"][0].__setitem__("index", 1), "devices: GPU indices must be 0..0"),
        (
            lambda r: r["devices"][0]["streams"]["process_utilization"].append([9, 1, 2]),
            "devices[0].streams.process_utilization[0]: expected 6 values, got 3",
        ),
    ],
)
def test_validation_names_the_place(tmp_path: Path, change: Any, message: str) -> None:
    recording = copy.deepcopy(synthetic_recording(duration_s=1.0))
    change(recording)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(recording))
    with pytest.raises(ValueError, match="^" + str(path).replace("\\", "\\\\")) as caught:
        load_recording(path)
    assert message in str(caught.value)
    with pytest.raises(ValueError, match=r"^recording: "):
        validate_recording(recording)


def test_not_json_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        load_recording(path)


# -- recorder ---------------------------------------------------------------------------------


def test_recorder_round_trip(clock: FakeClock) -> None:
    original = synthetic_recording(duration_s=3.0, busy=[(0.5, 1.5, 1.0), (2.0, 2.5, 0.5)])
    replay = ReplayNvml(original, clock.time_ns)
    recorded = record_nvml(replay, seconds=3.0, clock_ns=clock.time_ns, sleep=clock.advance)
    assert recorded["source"].startswith("recorded: ")
    assert clock.time_ns() == EPOCH_NS + 3 * 10**9
    assert replay.calls["nvmlInit"] == replay.calls["nvmlShutdown"] == 1
    assert replay.calls["nvmlDeviceGetTotalEnergyConsumption"] == 61  # 20 Hz, both ends
    device, source = recorded["devices"][0], original["devices"][0]
    for key in ("index", "name", "uuid", "memory_total", "parent", "errors"):
        assert device[key] == source[key], key
    for stream in ("gpu_utilization", "total_power", "process_utilization"):
        assert device["streams"][stream] == source["streams"][stream], stream
    # Replaying the recording answers as the original did at every instant the recorder polled.
    clock.advance(1.0)
    again = ReplayNvml(recorded, clock.time_ns)
    first = ReplayNvml(original, clock.time_ns)
    for nvml in (again, first):
        nvml.nvmlInit()
    for _ in range(61):
        answers = []
        for nvml in (again, first):
            handle = nvml.nvmlDeviceGetHandleByIndex(0)
            answers.append(
                (
                    nvml.nvmlDeviceGetTotalEnergyConsumption(handle),
                    nvml.nvmlDeviceGetPowerUsage(handle),
                    nvml.nvmlDeviceGetMemoryInfo(handle).used,
                    [
                        (p.pid, p.usedGpuMemory)
                        for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                    ],
                )
            )
        assert answers[0] == answers[1]
        clock.advance(0.05)


def test_recorder_records_errors_and_survives_missing_functions(clock: FakeClock) -> None:
    original = gpu_lost(synthetic_recording(duration_s=1.0, energy_supported=False), 0, 0.5)
    original["devices"][0]["errors"].append(
        {"function": "nvmlDeviceGetComputeRunningProcesses", "error": "FunctionNotFound",
         "from_us": 0, "until_us": None}
    )  # fmt: skip

    class WithoutProcessUtilization:
        """A pynvml too old to have nvmlDeviceGetProcessUtilization."""

        def __init__(self, inner: ReplayNvml) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            if name == "nvmlDeviceGetProcessUtilization":
                raise AttributeError(name)
            return getattr(self.inner, name)

    nvml = WithoutProcessUtilization(ReplayNvml(original, clock.time_ns))
    recorded = record_nvml(nvml, seconds=1.0, clock_ns=clock.time_ns, sleep=clock.advance)
    device = recorded["devices"][0]
    assert "process_utilization" not in device["streams"]
    summary = {(e["function"], e["error"], e["from_us"], e["until_us"]) for e in device["errors"]}
    assert ("nvmlDeviceGetTotalEnergyConsumption", "NotSupported", 0, 500_000) in summary
    assert ("nvmlDeviceGetComputeRunningProcesses", "FunctionNotFound", 0, None) in summary
    assert ("nvmlDeviceGetProcessUtilization", "FunctionNotFound", 0, None) in summary
    assert ("nvmlDeviceGetPowerUsage", "GpuIsLost", 500_000, None) in summary
    lost_samples = [e for e in device["errors"] if e["function"] == "nvmlDeviceGetSamples"]
    assert sorted(e["sampling_type"] for e in lost_samples) == sorted([UTIL, POWER])
    assert {(e["error"], e["from_us"]) for e in lost_samples} == {("GpuIsLost", 500_000)}
    validate_recording(recorded)
    # Replayed, the power reading fails from 0.5 s as it did.
    replay = ReplayNvml(recorded, clock.time_ns, origin_ns=clock.time_ns() - 10**9)
    replay.nvmlInit()
    handle = replay.nvmlDeviceGetHandleByIndex(0)
    assert type(error_of(replay.nvmlDeviceGetPowerUsage, handle)) is pynvml.NVMLError_GpuIsLost


def test_recorder_takes_pynvml_s_success_error_as_no_samples(clock: FakeClock) -> None:
    """pynvml raises NVMLError(NVML_SUCCESS) when the sizing call finds nothing to size."""
    replay = ReplayNvml(synthetic_recording(duration_s=0.5), clock.time_ns)

    class SuccessAsError:
        def __getattr__(self, name: str) -> Any:
            if name == "nvmlDeviceGetProcessUtilization":

                def no_samples(handle: Any, timeStamp: int) -> Any:
                    raise pynvml.NVMLError(pynvml.NVML_SUCCESS)

                return no_samples
            return getattr(replay, name)

    recorded = record_nvml(
        SuccessAsError(), seconds=0.5, clock_ns=clock.time_ns, sleep=clock.advance
    )
    device = recorded["devices"][0]
    assert device["streams"]["process_utilization"] == []
    assert device["errors"] == []


def test_recorder_notes_an_init_failure(clock: FakeClock) -> None:
    recording = tiny_recording()
    recording["init_error"] = "DriverNotLoaded"
    replay = ReplayNvml(recording, clock.time_ns)
    recorded = record_nvml(replay, seconds=1.0, clock_ns=clock.time_ns, sleep=clock.advance)
    assert recorded["init_error"] == "DriverNotLoaded"
    assert recorded["devices"] == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=3 * PERIOD_US), min_size=1, max_size=40))
def test_cursor_reads_see_every_sample_once_when_polled_within_the_buffer(
    gaps: list[int],
) -> None:
    """Polling no slower than the buffer fills, a cursor loses and repeats nothing."""
    clock = FakeClock()
    recording = synthetic_recording(duration_s=10.0, busy=[(1.0, 4.0, 0.7)], buffer_samples=4)
    nvml, handle = started(recording, clock)
    cursor, seen = 0, []
    for gap in gaps:
        clock.advance(gap / 1e6)
        try:
            _, samples = nvml.nvmlDeviceGetSamples(handle, UTIL, cursor)
        except pynvml.NVMLError_NotFound:
            continue
        seen.extend(s.timeStamp for s in samples)
        cursor = samples[-1].timeStamp
    expected = [ORIGIN_US + t for t, _ in recording["devices"][0]["streams"]["gpu_utilization"]]
    assert seen == [t for t in expected if t <= ORIGIN_US + nvml.now_us()]
