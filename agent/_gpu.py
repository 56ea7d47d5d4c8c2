"""GPU metering from NVML: busy GPU seconds, energy and memory per invocation.

What is measured, and from what:

- **Busy GPU seconds**: the driver samples each GPU's utilisation on its own (every 1/6 s to 1 s
  by product) into a ring buffer that ``nvmlDeviceGetSamples`` reads with a timestamp cursor; a
  sample is the share of the period since the previous sample in which a kernel ran. The meter
  drains that buffer *off the request path* (the writer thread, or the sampler) and integrates it
  over the invocation. Where NVML sees this process (``nvmlDeviceGetComputeRunningProcesses``
  lists our pid) the per-process samples of ``nvmlDeviceGetProcessUtilization`` are used instead,
  so another process's work on a shared GPU is not billed to us; inside a container NVML reports
  host pids, our pid is not listed and the device samples are used. ``busy_source`` says which.
- **Energy**: the delta of ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded)
  across the invocation. It is a counter at an instant, so without the sampler it is read at the
  start and end of each invocation: the only NVML call on the request path (one per GPU). With
  ``gpu_sample_hz`` set, the sampler reads it and the request path makes no NVML call; the value
  at the invocation's edges is interpolated between readings. Where the counter is not supported
  (older GPUs, MIG instances) the driver's power samples are integrated instead. The split into
  idle and active energy follows Kepler: idle power is the lowest power seen on the GPU, idle
  energy is that power over the invocation, the rest is active.
- **Peak GPU memory** of the process during the invocation: from the sampler's readings (a
  current value, not a counter, so it needs sampling; without the sampler it is unknown).

Overlapping invocations (async handlers, concurrency above 1) share each instant equally: an
invocation's share of an instant when ``n`` invocations ran is ``1/n`` of the GPU time, busy time
and energy of that instant, so the shares add up to the worker's totals exactly.

Unknown is never zero: a field that could not be measured is ``None``, and ``gpu_unmeasured``
says why (no driver, not supported on this GPU, GPU lost, counter reset, ...). NVML errors are
counted by kind (``nvml.<Kind>`` in ``gpuledger.telemetry.errors``) and logged once per kind and
function. Nothing here ever raises into a handler.

Why one module of this size: the device handles, the sample drain with its timestamp cursor,
the per-process share and the energy integration all read the same per-device state under one
lock; apart, each would need the others' internals.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from gpuledger import _guard
from gpuledger._logging import get_logger

__all__ = [
    "GpuDevice",
    "GpuMeter",
    "GpuUsage",
    "Segment",
    "open_meter",
    "visible_devices",
]

Segment = tuple[int, int, int]
"""``(start_ns, end_ns, n)``: ``n`` invocations (this one included) ran in ``[start, end)``."""

MAX_POWER_W: Final = 5000.0
"""No GPU draws more: a counter step implying more is a glitch (a reset, a wrap), not energy."""
_MIN_IDLE_STEP_NS: Final = 100_000_000
"""Energy steps shorter than this are too coarse (counter granularity) to estimate idle power."""
_KEEP_NS: Final = 10 * 10**9
"""Readings older than this (and older than every open invocation) are pruned."""
_PID_RECHECK_NS: Final = 5 * 10**9
_NO_SAMPLER_MEMORY: Final = "needs the sampler (gpu_sample_hz > 0): memory is read, not counted"


def nvml_error_kind(error: BaseException) -> str:
    """``NVMLError_NotSupported`` -> ``NotSupported``; other exceptions by class name.

    pynvml raises ``NVMLLibraryMismatchError`` (not an ``NVMLError``) for a function the
    installed driver lacks behind its version-checked wrappers: that is ``LibraryMismatch``.
    """
    name = type(error).__name__
    if name == "NVMLLibraryMismatchError":
        return "LibraryMismatch"
    return name.removeprefix("NVMLError_")


def _is_nvml_error(error: BaseException) -> bool:
    name = type(error).__name__
    return name.startswith("NVMLError") or name == "NVMLLibraryMismatchError"


@dataclasses.dataclass(slots=True)
class GpuDevice:
    """One GPU (or MIG instance) this process may use."""

    handle: Any
    uuid: str
    name: str
    index: int | None
    """NVML's index (PCI bus order); None for a MIG instance."""
    memory_total: int | None = None
    mig: bool = False


@dataclasses.dataclass(slots=True)
class GpuUsage:
    """What the meter measured for one invocation; None = unknown, with a reason."""

    busy_gpu_seconds: float | None = None
    busy_source: str | None = None
    energy_j: float | None = None
    energy_active_j: float | None = None
    energy_idle_j: float | None = None
    energy_source: str | None = None
    peak_gpu_memory_bytes: int | None = None
    unmeasured: dict[str, str] = dataclasses.field(default_factory=dict)


# --- which GPUs ------------------------------------------------------------------------------


def visible_devices(nvml: Any, environ: Mapping[str, str]) -> tuple[list[GpuDevice], str | None]:
    """The GPUs this process may use, and a note when ``CUDA_VISIBLE_DEVICES`` was cut short.

    ``CUDA_VISIBLE_DEVICES`` is honoured as CUDA reads it: a comma list of indexes, GPU UUIDs
    (``GPU-...``, a unique prefix is enough) or MIG instance UUIDs (``MIG-...``); empty means no
    GPU; the list stops at the first entry that names no device. Indexes are NVML's (PCI bus
    order), which is CUDA's order with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and on any machine whose
    GPUs are all the same model (CUDA's default, fastest first, then breaks ties by bus id).
    """
    count = nvml.nvmlDeviceGetCount()
    everything = [_device(nvml, nvml.nvmlDeviceGetHandleByIndex(i), i) for i in range(count)]
    wanted = environ.get("CUDA_VISIBLE_DEVICES")
    if wanted is None:
        return everything, None
    chosen: list[GpuDevice] = []
    for raw in wanted.split(","):
        entry = raw.strip()
        if not entry:
            break
        device = _resolve_entry(nvml, entry, everything)
        if device is None:
            return chosen, f"CUDA_VISIBLE_DEVICES entry {entry!r} names no device; list cut there"
        if all(device.uuid != other.uuid for other in chosen):
            chosen.append(device)
    return chosen, None


def _resolve_entry(nvml: Any, entry: str, everything: list[GpuDevice]) -> GpuDevice | None:
    if entry.lstrip("-").isdigit():
        index = int(entry)
        return everything[index] if 0 <= index < len(everything) else None
    if entry.startswith("MIG-"):
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(entry)
        except nvml.NVMLError:
            return None
        device = _device(nvml, handle, None)
        device.mig = True
        return device
    matches = [device for device in everything if device.uuid.startswith(entry)]
    return matches[0] if len(matches) == 1 else None


def _device(nvml: Any, handle: Any, index: int | None) -> GpuDevice:
    uuid = str(nvml.nvmlDeviceGetUUID(handle))
    name = str(nvml.nvmlDeviceGetName(handle))
    try:
        total: int | None = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
    except nvml.NVMLError:
        total = None
    return GpuDevice(handle, uuid, name, index, total, mig=uuid.startswith("MIG-"))


# --- the meter --------------------------------------------------------------------------------


class _Track:
    """One device's readings, drained from NVML or read by the sampler."""

    __slots__ = (
        "energy",
        "energy_reason",
        "idle_scanned",
        "lost_ns",
        "lost_reason",
        "memory",
        "memory_source",
        "min_power_w",
        "pid_checked_ns",
        "pid_visible",
        "power",
        "power_cursor",
        "power_reason",
        "process",
        "process_cursor",
        "process_reason",
        "util",
        "util_cursor",
        "util_reason",
    )

    def __init__(self) -> None:
        self.energy: list[tuple[int, int]] = []  # (t_ns, mJ)
        self.energy_reason: str | None = None
        self.idle_scanned = 0  # energy readings already looked at for the idle power
        self.util: list[tuple[int, int]] = []  # (t_us, percent), sorted
        self.util_cursor = 0
        self.util_reason: str | None = None
        # (from_us, to_us, share): our pid's share of the SM utilisation of all processes in
        # each window NVML aggregated per process (it returns one mean per pid per call).
        self.process: list[tuple[int, int, float]] = []
        self.process_cursor = 0
        self.process_reason: str | None = None
        self.power: list[tuple[int, int]] = []  # (t_us, mW)
        self.power_cursor = 0
        self.power_reason: str | None = None
        self.memory: list[tuple[int, int]] = []  # (t_ns, bytes)
        self.memory_source = "process"
        self.min_power_w = math.inf
        self.pid_visible = False
        self.pid_checked_ns = 0
        self.lost_ns: int | None = None
        self.lost_reason: str | None = None


class GpuMeter:
    """Reads NVML for the GPUs a worker holds and measures invocations against the readings."""

    def __init__(
        self,
        nvml: Any,
        devices: Sequence[GpuDevice],
        *,
        time_ns: Callable[[], int],
        pid: int | None = None,
        sample_hz: float = 0.0,
        settle_s: float = 1.0,
    ) -> None:
        self.nvml = nvml
        self.devices = list(devices)
        self.pid = os.getpid() if pid is None else pid
        self.sample_hz = sample_hz
        self.settle_ns = int(settle_s * 1e9)
        self._time_ns = time_ns
        self._tracks = [_Track() for _ in self.devices]
        self._lock = threading.Lock()
        self._logged: set[tuple[str, str]] = set()
        self.boundary_reads = sample_hz <= 0
        """True when the request path reads the energy counters at each invocation's edges."""
        self._stop = threading.Event()
        # Per-process windows start now (an earlier one would average in the time before us);
        # the device samples already buffered are taken, for the first invocation's start.
        now_us = time_ns() // 1000
        for track in self._tracks:
            track.process_cursor = now_us
        self.drain()
        self._sampler: threading.Thread | None = None
        if sample_hz > 0:
            self._sampler = threading.Thread(
                target=self._sample_loop, name="gpuledger-nvml-sampler", daemon=True
            )
            self._sampler.start()

    def now_ns(self) -> int:
        """The meter's clock (the agent's, or the sidecar's)."""
        return self._time_ns()

    # -- the request path ---------------------------------------------------------------------

    def mark(self, t_ns: int) -> None:
        """Read the energy counters at ``t_ns`` (an invocation starts or ends). Never raises."""
        nvml = self.nvml
        for device, track in zip(self.devices, self._tracks, strict=True):
            if track.energy_reason is not None or track.lost_ns is not None:
                continue
            try:
                track.energy.append((t_ns, nvml.nvmlDeviceGetTotalEnergyConsumption(device.handle)))
            except Exception as error:
                self._failed(track, "nvmlDeviceGetTotalEnergyConsumption", error, t_ns)

    # -- reading NVML off the request path ------------------------------------------------------

    def drain(self) -> None:
        """Pull the driver's new utilisation, process and power samples into the tracks."""
        with self._lock:
            now_ns = self._time_ns()
            for device, track in zip(self.devices, self._tracks, strict=True):
                if track.lost_ns is not None:
                    continue
                self._drain_device(device, track, now_ns)

    def _drain_device(self, device: GpuDevice, track: _Track, now_ns: int) -> None:
        nvml = self.nvml
        if track.util_reason is None:
            fresh = self._samples(
                track, device, nvml.NVML_GPU_UTILIZATION_SAMPLES, track.util_cursor, now_ns
            )
            if fresh is None:
                track.util_reason = track.util_reason or "utilisation samples unavailable"
            elif fresh:
                track.util.extend(fresh)
                track.util_cursor = fresh[-1][0]
        if track.power_reason is None:
            fresh = self._samples(
                track, device, nvml.NVML_TOTAL_POWER_SAMPLES, track.power_cursor, now_ns
            )
            if fresh:
                track.power.extend(fresh)
                track.power_cursor = fresh[-1][0]
                lowest = min(value for _, value in fresh) / 1000.0
                track.min_power_w = min(track.min_power_w, lowest)
            elif fresh is None:
                track.power_reason = track.power_reason or "power samples unavailable"
        if not track.pid_visible and now_ns - track.pid_checked_ns >= _PID_RECHECK_NS:
            track.pid_checked_ns = now_ns
            try:
                running = nvml.nvmlDeviceGetComputeRunningProcesses(device.handle)
                track.pid_visible = any(process.pid == self.pid for process in running)
            except Exception as error:
                self._failed(track, "nvmlDeviceGetComputeRunningProcesses", error, now_ns)
        if track.pid_visible and track.process_reason is None:
            try:
                samples = nvml.nvmlDeviceGetProcessUtilization(device.handle, track.process_cursor)
            except Exception as error:
                if nvml_error_kind(error) != "NotFound":  # NotFound: nothing new yet
                    track.process_reason = self._failed(
                        track, "nvmlDeviceGetProcessUtilization", error, now_ns
                    )
            else:
                cursor = track.process_cursor
                newest = max((int(sample.timeStamp) for sample in samples), default=cursor)
                total = sum(int(sample.smUtil) for sample in samples)
                ours = sum(int(sample.smUtil) for sample in samples if sample.pid == self.pid)
                if cursor and newest > cursor:
                    track.process.append((cursor, newest, ours / total if total else 1.0))
                track.process_cursor = max(cursor, newest)

    def _samples(
        self, track: _Track, device: GpuDevice, kind: int, cursor: int, now_ns: int
    ) -> list[tuple[int, int]] | None:
        """New driver samples after ``cursor`` ([] if none yet; None if they cannot be read)."""
        try:
            _, samples = self.nvml.nvmlDeviceGetSamples(device.handle, kind, cursor)
        except Exception as error:
            if nvml_error_kind(error) == "NotFound":  # no sample newer than the cursor
                return []
            reason = self._failed(track, "nvmlDeviceGetSamples", error, now_ns)
            if kind == self.nvml.NVML_GPU_UTILIZATION_SAMPLES:
                track.util_reason = reason
            else:
                track.power_reason = reason
            return None
        return sorted(
            (int(sample.timeStamp), int(sample.sampleValue.uiVal))
            for sample in samples
            if sample.timeStamp > cursor
        )

    def _failed(self, track: _Track, function: str, error: BaseException, now_ns: int) -> str:
        """Count and log (once per kind and function) an NVML failure; returns the reason."""
        kind = nvml_error_kind(error)
        reason = f"{function}: {kind}"
        if not _is_nvml_error(error):  # a bug, or a binding gone wrong: counted, never raised
            try:
                _guard.record_failure("nvml.call", error)
            except Exception:  # strict mode (tests) re-raises; the meter must carry on
                get_logger().exception("gpuledger NVML failure (strict mode)")
            return reason
        _guard.count(f"nvml.{kind}")
        if (function, kind) not in self._logged:
            self._logged.add((function, kind))
            get_logger().warning(
                "NVML call failed; the GPU fields it feeds are recorded as null with this "
                "reason, further failures are counted (gpuledger.telemetry.errors)",
                function=function,
                error=kind,
            )
        if kind in ("GpuIsLost", "Unknown", "Uninitialized", "ResetRequired"):
            if track.lost_ns is None:
                track.lost_ns = now_ns
                track.lost_reason = reason
        elif function == "nvmlDeviceGetTotalEnergyConsumption":
            track.energy_reason = reason
        return reason

    # -- the sampler --------------------------------------------------------------------------

    def _sample_loop(self) -> None:
        period = 1.0 / self.sample_hz
        while not self._stop.wait(period):
            try:
                self.sample_once()
            except Exception as error:  # the sampler must outlive anything
                _guard.record_failure("nvml.sampler", error)

    def sample_once(self) -> None:
        """One sampler tick: energy, power and process memory now, and the driver's buffers."""
        nvml = self.nvml
        now_ns = self._time_ns()
        for device, track in zip(self.devices, self._tracks, strict=True):
            if track.lost_ns is not None:
                continue
            if track.energy_reason is None:
                try:
                    track.energy.append(
                        (now_ns, nvml.nvmlDeviceGetTotalEnergyConsumption(device.handle))
                    )
                except Exception as error:
                    self._failed(track, "nvmlDeviceGetTotalEnergyConsumption", error, now_ns)
            try:
                power_w = nvml.nvmlDeviceGetPowerUsage(device.handle) / 1000.0
                track.min_power_w = min(track.min_power_w, power_w)
            except Exception as error:
                self._failed(track, "nvmlDeviceGetPowerUsage", error, now_ns)
            self._read_memory(device, track, now_ns)
        self.drain()

    def _read_memory(self, device: GpuDevice, track: _Track, now_ns: int) -> None:
        nvml = self.nvml
        try:
            running = nvml.nvmlDeviceGetComputeRunningProcesses(device.handle)
        except Exception as error:
            self._failed(track, "nvmlDeviceGetComputeRunningProcesses", error, now_ns)
            return
        ours = [p.usedGpuMemory for p in running if p.pid == self.pid and p.usedGpuMemory]
        if ours:
            track.pid_visible = True
            track.memory_source = "process"
            track.memory.append((now_ns, int(sum(ours))))
            return
        if track.pid_visible:
            track.memory.append((now_ns, 0))  # NVML sees us, and we hold no memory now
            return
        # Our pid is not NVML's (a container's PID namespace): the device's memory in use.
        try:
            used = int(nvml.nvmlDeviceGetMemoryInfo(device.handle).used)
        except Exception as error:
            self._failed(track, "nvmlDeviceGetMemoryInfo", error, now_ns)
            return
        track.memory_source = "device"
        track.memory.append((now_ns, used))

    def close(self) -> None:
        """Stop the sampler (NVML itself is left open: the application may use it too)."""
        self._stop.set()
        sampler = self._sampler
        if sampler is not None and sampler is not threading.current_thread():
            sampler.join(2.0)

    # -- measuring ----------------------------------------------------------------------------

    def settled(self, end_ns: int, now_ns: int | None = None) -> bool:
        """Whether the driver's samples already cover ``end_ns`` (or waiting longer is moot)."""
        now = self._time_ns() if now_ns is None else now_ns
        if now - end_ns >= self.settle_ns:
            return True
        end_us = end_ns // 1000
        for track in self._tracks:
            if track.lost_ns is not None or track.util_reason is not None:
                continue
            if not track.util or track.util[-1][0] < end_us:
                return False
        return True

    def measure(
        self, start_ns: int, end_ns: int, segments: Sequence[Segment] | None = None
    ) -> GpuUsage:
        """The GPU usage of an invocation that ran ``[start_ns, end_ns)`` with these shares."""
        shares = list(segments) if segments else [(start_ns, end_ns, 1)]
        usage = GpuUsage()
        with self._lock:
            self._measure_busy(usage, start_ns, end_ns, shares)
            self._measure_energy(usage, start_ns, end_ns, shares)
            self._measure_memory(usage, start_ns, end_ns)
        return usage

    def _measure_busy(
        self, usage: GpuUsage, start_ns: int, end_ns: int, shares: list[Segment]
    ) -> None:
        total = 0.0
        sources: set[str] = set()
        duration = end_ns - start_ns
        for device, track in zip(self.devices, self._tracks, strict=True):
            if track.util_reason is not None:
                usage.unmeasured["busy_gpu_seconds"] = f"{track.util_reason} ({_label(device)})"
                return
            if track.lost_ns is not None and track.lost_ns < end_ns:
                usage.unmeasured["busy_gpu_seconds"] = f"{track.lost_reason} ({_label(device)})"
                return
            per_process = track.pid_visible and track.process_reason is None
            windows = track.process if per_process else None
            busy, covered, used_windows = _integrate_util(
                track.util, windows, start_ns, end_ns, shares
            )
            if duration > 0 and covered < duration * 0.999:
                fraction = covered / duration
                if fraction < 0.5:
                    usage.unmeasured["busy_gpu_seconds"] = (
                        f"utilisation samples cover {fraction:.0%} of the invocation "
                        f"({_label(device)})"
                    )
                    return
                busy /= fraction
                usage.unmeasured["busy_gpu_seconds"] = (
                    f"estimated: utilisation samples cover {fraction:.0%} of the invocation"
                )
            total += busy
            sources.add("process" if used_windows else "device")
        usage.busy_gpu_seconds = total
        usage.busy_source = "process" if sources == {"process"} else "device"

    def _measure_energy(
        self, usage: GpuUsage, start_ns: int, end_ns: int, shares: list[Segment]
    ) -> None:
        total = 0.0
        idle = 0.0
        idle_known = True
        source = "counter"
        for device, track in zip(self.devices, self._tracks, strict=True):
            label = _label(device)
            if track.lost_ns is not None and track.lost_ns <= end_ns:
                usage.unmeasured["energy_j"] = f"{track.lost_reason} ({label})"
                return
            energy: float | None
            reason: str | None
            if track.energy_reason is None:
                energy, reason = _counter_energy(track.energy, shares)
            else:
                energy, reason = _power_energy(track.power, shares)
                if energy is None:
                    reason = f"{track.energy_reason}; {reason}"
                source = "power_samples"
            if energy is None:
                usage.unmeasured["energy_j"] = f"{reason} ({label})"
                return
            total += energy
            idle_w = self._idle_power_w(track)
            if idle_w is None:
                idle_known = False
            else:
                idle += idle_w * sum((b - a) / n for a, b, n in shares) / 1e9
        usage.energy_j = total
        usage.energy_source = source
        if idle_known:
            usage.energy_idle_j = min(idle, total)
            usage.energy_active_j = max(0.0, total - idle)
        else:
            usage.unmeasured["energy_idle_j"] = "idle power not seen yet on this GPU"

    def _idle_power_w(self, track: _Track) -> float | None:
        """The lowest power seen on the device: its idle power (Kepler's method). Energy
        readings far enough apart count as average power; each is looked at once."""
        lowest = track.min_power_w
        readings = track.energy
        for (t0, v0), (t1, v1) in itertools.pairwise(readings[max(0, track.idle_scanned - 1) :]):
            step = t1 - t0
            if step >= _MIN_IDLE_STEP_NS and v1 >= v0:
                lowest = min(lowest, (v1 - v0) / 1000.0 / (step / 1e9))
        track.idle_scanned = len(readings)
        track.min_power_w = lowest
        return None if math.isinf(lowest) else lowest

    def _measure_memory(self, usage: GpuUsage, start_ns: int, end_ns: int) -> None:
        if self.boundary_reads:
            usage.unmeasured["peak_gpu_memory_bytes"] = _NO_SAMPLER_MEMORY
            return
        peak = 0
        for device, track in zip(self.devices, self._tracks, strict=True):
            memory = track.memory
            lo = bisect.bisect_left(memory, (start_ns, -1))
            hi = bisect.bisect_right(memory, (end_ns, math.inf))
            inside = [value for _, value in memory[lo:hi]]
            if not inside:
                # Shorter than a sampler period: the readings either side bound it.
                inside = [value for _, value in memory[max(0, lo - 1) : lo + 1]]
            if not inside:
                usage.unmeasured["peak_gpu_memory_bytes"] = (
                    f"no memory reading yet ({_label(device)})"
                )
                return
            peak += max(inside)
            if track.memory_source == "device":
                usage.unmeasured["peak_gpu_memory_bytes"] = (
                    "device memory in use: NVML does not see this process (PID namespace)"
                )
        usage.peak_gpu_memory_bytes = peak

    def prune(self, before_ns: int) -> None:
        """Forget readings no open or waiting invocation can need (older than ``before_ns``)."""
        before_ns = min(before_ns, self._time_ns() - _KEEP_NS)
        before_us = before_ns // 1000
        with self._lock:
            for track in self._tracks:
                # Keep one reading before the cut: it brackets the next invocation's start.
                cut = bisect.bisect_left(track.energy, (before_ns, -1))
                if cut > 1:
                    self._idle_power_w(track)  # look at what goes before it goes
                    del track.energy[: cut - 1]
                    track.idle_scanned = max(0, track.idle_scanned - (cut - 1))
                for samples in (track.util, track.process, track.power):
                    cut = bisect.bisect_left(samples, (before_us, -1))
                    if cut > 1:
                        del samples[: cut - 1]
                cut = bisect.bisect_left(track.memory, (before_ns, -1))
                if cut > 1:
                    del track.memory[: cut - 1]

    # -- device metrics -----------------------------------------------------------------------

    def device_readings(self) -> list[dict[str, Any]]:
        """The current state of each GPU, for the ``hw.*`` observable instruments."""
        nvml = self.nvml
        now_ns = self._time_ns()
        readings: list[dict[str, Any]] = []
        for device, track in zip(self.devices, self._tracks, strict=True):
            if track.lost_ns is not None:
                continue
            reading: dict[str, Any] = {"device": device}
            with self._lock:
                if track.util:
                    reading["utilization"] = track.util[-1][1] / 100.0
            for key, function, convert in (
                ("memory", "nvmlDeviceGetMemoryInfo", lambda info: (info.used, info.total)),
                ("power_w", "nvmlDeviceGetPowerUsage", lambda mw: mw / 1000.0),
                ("energy_j", "nvmlDeviceGetTotalEnergyConsumption", lambda mj: mj / 1000.0),
            ):
                try:
                    reading[key] = convert(getattr(nvml, function)(device.handle))
                except Exception as error:
                    self._failed(track, function, error, now_ns)
            readings.append(reading)
        return readings


def _label(device: GpuDevice) -> str:
    return f"GPU {device.index}" if device.index is not None else device.uuid


def _integrate_util(
    util: list[tuple[int, int]],
    windows: list[tuple[int, int, float]] | None,
    start_ns: int,
    end_ns: int,
    shares: list[Segment],
) -> tuple[float, int, bool]:
    """Busy seconds (share-weighted), covered ns of ``[start_ns, end_ns)``, and whether
    per-process windows scaled any of it.

    Sample ``i`` at ``t_i`` is the device's utilisation over ``(t_{i-1}, t_i]``. With
    per-process ``windows``, a period's utilisation is scaled by this process's share of all
    processes' SM utilisation in the window that holds ``t_i``: on a GPU of its own that share
    is 1 and the device's per-period resolution is kept; on a shared GPU the others' work is
    taken out. Periods outside every window count whole (the device's samples).
    """
    busy = 0.0
    covered = 0
    used = False
    first = bisect.bisect_left(util, (start_ns // 1000, -1))
    first = max(first, 1)  # sample 0 has no known period start
    for i in range(first, len(util)):
        t0_ns = util[i - 1][0] * 1000
        t1_ns = util[i][0] * 1000
        if t0_ns >= end_ns:
            break
        low = max(t0_ns, start_ns)
        high = min(t1_ns, end_ns)
        if high <= low:
            continue
        percent: float = util[i][1]
        if windows:
            at = bisect.bisect_left(windows, util[i][0], key=_window_end)
            if at < len(windows) and windows[at][0] < util[i][0]:
                percent *= windows[at][2]
                used = True
        covered += high - low
        if percent:
            busy += percent / 100.0 * _weighted_ns(low, high, shares) / 1e9
    return busy, covered, used


def _window_end(window: tuple[int, int, float]) -> int:
    return window[1]


def _weighted_ns(low: int, high: int, shares: list[Segment]) -> float:
    """``∫ 1/n(t) dt`` over ``[low, high)``, ns."""
    if len(shares) == 1:
        a, b, n = shares[0]
        return max(0, min(high, b) - max(low, a)) / n
    total = 0.0
    for a, b, n in shares:
        overlap = min(high, b) - max(low, a)
        if overlap > 0:
            total += overlap / n
    return total


def _counter_energy(
    readings: list[tuple[int, int]], shares: list[Segment]
) -> tuple[float | None, str | None]:
    """Share-weighted joules from counter readings (mJ at instants), or None and why."""
    if not readings:
        return None, "no energy counter reading yet"
    start = shares[0][0]
    end = shares[-1][1]
    # Readings are appended in time order but for threads racing by microseconds: find the
    # bracket by bisection with a margin of a few readings, and sort only that.
    lo = max(0, bisect.bisect_right(readings, (start, math.inf)) - 4)
    hi = bisect.bisect_left(readings, (end, -1)) + 4
    ordered = sorted(readings[lo:hi])
    if not ordered or ordered[0][0] > start or ordered[-1][0] < end:
        return None, "no energy counter reading at the invocation's start or end"
    first = bisect.bisect_right(ordered, (start, math.inf)) - 1
    last = bisect.bisect_left(ordered, (end, -1))
    window = ordered[first : last + 1]
    for (t0, v0), (t1, v1) in itertools.pairwise(window):
        if v1 < v0:
            return None, "energy counter went backwards (driver reload or reset)"
        if t1 > t0 and (v1 - v0) / 1000.0 / ((t1 - t0) / 1e9) > MAX_POWER_W:
            return None, "energy counter jumped (more than 5 kW implied)"
    times = [t for t, _ in window]
    values = [v for _, v in window]
    total = 0.0
    for a, b, n in shares:
        total += (_interpolate(times, values, b) - _interpolate(times, values, a)) / n
    return max(0.0, total) / 1000.0, None


def _interpolate(times: list[int], values: list[int], at: int) -> float:
    i = bisect.bisect_left(times, at)
    if i < len(times) and times[i] == at:
        return float(values[i])
    if i == 0:
        return float(values[0])
    if i >= len(times):
        return float(values[-1])
    t0, t1 = times[i - 1], times[i]
    v0, v1 = values[i - 1], values[i]
    return v0 + (v1 - v0) * (at - t0) / (t1 - t0)


def _power_energy(
    power: list[tuple[int, int]], shares: list[Segment]
) -> tuple[float | None, str | None]:
    """Share-weighted joules from the driver's power samples (mW), each held over its period."""
    if len(power) < 2:
        return None, "no power samples either"
    start = shares[0][0]
    end = shares[-1][1]
    total = 0.0
    covered = 0
    first = max(1, bisect.bisect_left(power, (start // 1000, -1)))
    for i in range(first, len(power)):
        t0, t1 = power[i - 1][0] * 1000, power[i][0] * 1000
        if t0 >= end:
            break
        low, high = max(t0, start), min(t1, end)
        if high <= low:
            continue
        covered += high - low
        total += power[i][1] / 1000.0 * _weighted_ns(low, high, shares) / 1e9
    if covered < (end - start) * 0.5:
        return None, "power samples do not cover the invocation"
    return total * (end - start) / max(covered, 1), None


# --- opening NVML -----------------------------------------------------------------------------


def open_meter(
    nvml: Any | None,
    environ: Mapping[str, str],
    *,
    time_ns: Callable[[], int],
    sample_hz: float,
    settle_s: float,
) -> tuple[GpuMeter | None, str | None]:
    """Initialise NVML and a meter for the visible GPUs; ``(None, why)`` when there is none.

    ``nvml`` is the module-like NVML API (``pynvml``, or a replay of a recording in tests);
    ``None`` imports ``pynvml``. Never raises.
    """
    started = time.perf_counter()
    try:
        if nvml is None:
            import pynvml  # noqa: PLC0415  (only when metering; ~10 ms)

            nvml = pynvml
        nvml.nvmlInit()
    except Exception as error:
        kind = nvml_error_kind(error)
        if kind in ("LibraryNotFound", "DriverNotLoaded"):
            return None, f"no NVIDIA driver ({kind})"
        _guard.count(f"nvml.{kind}")
        return None, f"NVML did not start ({kind}: {error})"
    try:
        devices, note = visible_devices(nvml, environ)
    except Exception as error:
        kind = nvml_error_kind(error)
        _guard.count(f"nvml.{kind}")
        return None, f"NVML could not list GPUs ({kind})"
    if note:
        get_logger().warning(note)
    if not devices:
        return None, "no GPU visible to this process (CUDA_VISIBLE_DEVICES)"
    meter = GpuMeter(nvml, devices, time_ns=time_ns, sample_hz=sample_hz, settle_s=settle_s)
    get_logger().info(
        "GPU metering on",
        gpus=[f"{device.name} {device.uuid}" for device in devices],
        nvml_open_ms=round((time.perf_counter() - started) * 1000, 1),
        sampler_hz=sample_hz,
    )
    return meter, None
