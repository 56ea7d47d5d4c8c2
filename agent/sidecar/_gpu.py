"""GPU metering in the sidecar: one NVML sampler for the whole container, shared out among the
invocations the sidecar knows of.

A worker that cannot meter its own GPU (a model server in another language behind the proxy, or
an agent with ``gpu_metering=off``) sends records whose GPU fields are null. The sidecar runs the
GPU meter of ``agent/_gpu.py`` with its sampler on, remembers the intervals of the invocations it
was told about (start notices and finished records, from every worker process in the
container), and fills the null fields of each finished record: busy GPU seconds, energy and its
idle/active split, peak memory. An instant shared by ``n`` invocations is shared ``1/n`` each,
as in the worker, so the parts add up to the container's totals. A field the worker measured
itself is never overwritten.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Final

from gpuledger._gpu import GpuMeter
from gpuledger._worker import shares

__all__ = ["SidecarGpu"]

_KEEP_NS: Final = 15 * 60 * 10**9
"""Finished intervals are remembered this long (for the records of invocations that overlapped
them and arrive later)."""


class SidecarGpu:
    """Fills the GPU fields of records from the sidecar's own NVML meter."""

    def __init__(self, meter: GpuMeter) -> None:
        self.meter = meter
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._ended: dict[str, tuple[int, int]] = {}

    def started(self, starts: Sequence[dict[str, Any]]) -> None:
        """Invocations that started (start notices)."""
        with self._lock:
            for start in starts:
                self._open[str(start["record_id"])] = int(start["start_ns"])

    def fill(self, records: Sequence[dict[str, Any]]) -> int:
        """Measure and fill the GPU fields of finished ``records`` in place, where null.
        Returns how many were filled."""
        with self._lock:
            for record in records:
                record_id = str(record["record_id"])
                self._open.pop(record_id, None)
                self._ended[record_id] = (int(record["start_ns"]), int(record["end_ns"]))
            intervals = dict(self._ended)
            running = dict(self._open)
        try:
            self.meter.drain()
        except Exception:  # the meter counts its own NVML failures
            return 0
        filled = 0
        now_ns = self.meter.now_ns()
        for record in records:
            if record.get("busy_gpu_seconds") is not None or record.get("energy_j") is not None:
                continue  # the worker metered itself
            record_id = str(record["record_id"])
            start, end = int(record["start_ns"]), int(record["end_ns"])
            others = [
                interval
                for other, interval in intervals.items()
                if other != record_id and interval[1] > start and interval[0] < end
            ]
            others.extend((other_start, now_ns) for other_start in running.values())
            usage = self.meter.measure(start, end, shares(start, end, others))
            record["busy_gpu_seconds"] = usage.busy_gpu_seconds
            record["busy_source"] = usage.busy_source
            record["energy_j"] = usage.energy_j
            record["energy_active_j"] = usage.energy_active_j
            record["energy_idle_j"] = usage.energy_idle_j
            record["energy_source"] = usage.energy_source
            record["peak_gpu_memory_bytes"] = usage.peak_gpu_memory_bytes
            record["gpu_uuids"] = ",".join(device.uuid for device in self.meter.devices)
            record["gpu_unmeasured"] = usage.unmeasured or None
            filled += 1
        self._forget(now_ns)
        return filled

    def _forget(self, now_ns: int) -> None:
        with self._lock:
            cutoff = now_ns - _KEEP_NS
            for record_id in [k for k, (_, end) in self._ended.items() if end < cutoff]:
                del self._ended[record_id]
            oldest = min([now_ns, *self._open.values()])
        self.meter.prune(min(oldest, min((s for s, _ in self._ended.values()), default=now_ns)))
