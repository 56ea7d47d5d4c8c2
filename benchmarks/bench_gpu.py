"""What GPU metering costs: per invocation on the request path and the writer, and the sampler.

This machine has no GPU, so NVML is a ``ReplayNvml`` of a synthetic recording on the real clock:
the figures are gpuledger's own Python cost around each NVML call plus the replay's cost of
answering it, not the driver's. The driver's cost per call is measured by ``gpu_check.py`` on a
real GPU (its "NVML call cost" table); add it per call counted below.

Request path (per invocation, ledger only: tracing and metrics off, so the metering is what
differs), variants taking turns repeat by repeat in this one process:

``bare``      the undecorated handler;
``off``       ``@traced_handler`` with ``gpu_metering="off"`` (the baseline);
``edges``     metering on, no sampler: the energy counter read at the start and end (2 calls);
``sampler``   metering on with the sampler at 10 Hz: no NVML call on the request path.

Writer: the time to measure one finished invocation (drain the driver's buffers, integrate
utilisation, energy, memory) against a recording with a sample every 1/6 s.

Sampler: the process's CPU time over ``--sampler-seconds`` of wall time with no sampler, at
10 Hz and at 100 Hz (one GPU), as a share of one core.

Run: ``.venv/bin/python benchmarks/bench_gpu.py [--calls 20000] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import gpuledger
from gpuledger import _config
from gpuledger._gpu import GpuMeter, visible_devices
from gpuledger.testing.nvml import ReplayNvml, synthetic_recording

PID = os.getpid()


def handler(job: dict[str, Any]) -> dict[str, Any]:
    return {"output": job["input"]["n"] + 1}


def recording(seconds: float) -> dict[str, Any]:
    busy = [(float(t), float(t) + 0.5, 1.0) for t in range(int(seconds))]
    return synthetic_recording(duration_s=seconds, busy=busy, pid=PID)


def configure(variant: str, directory: str, rec: dict[str, Any]) -> Callable[..., Any]:
    if variant == "bare":
        return handler
    settings: dict[str, Any] = {
        "ledger": f"{directory}/{variant}.db",
        "platform": "runpod",
        "gpu": "H100",
        "tracing": False,
        "metrics": False,
        "exporters": "none",
    }
    if variant == "off":
        settings["gpu_metering"] = "off"
    else:
        settings["nvml"] = ReplayNvml(rec, time.time_ns)
        settings["gpu_sample_hz"] = 10.0 if variant == "sampler" else 0.0
    agent = gpuledger.configure(**settings)
    agent.gpu_ready.wait(10)
    if variant != "off":
        assert agent.gpu_meter is not None, agent.gpu_reason
    return gpuledger.traced_handler(handler)


def time_calls(function: Callable[..., Any], calls: int) -> float:
    jobs = [{"id": f"j{i}", "input": {"n": i}} for i in range(calls)]
    for job in jobs[:200]:
        function(job)
    start = time.perf_counter_ns()
    for job in jobs:
        function(job)
    return (time.perf_counter_ns() - start) / calls / 1000


def request_path(calls: int, repeats: int) -> dict[str, list[float]]:
    rec = recording(900)
    results: dict[str, list[float]] = {v: [] for v in ("bare", "off", "edges", "sampler")}
    with tempfile.TemporaryDirectory() as directory:
        for repeat in range(repeats):
            order = list(results)
            order = order[repeat % len(order) :] + order[: repeat % len(order)]
            for variant in order:
                function = configure(variant, directory, rec)
                results[variant].append(time_calls(function, calls))
                gpuledger.flush(60)
                gpuledger.shutdown(60)
                _config.reset_for_tests()
    return results


def writer_cost(invocations: int) -> tuple[float, float]:
    """(µs to measure one invocation, µs per replayed energy read) on a 1/6 s sample grid."""
    rec = recording(900)
    clock = [time.time_ns()]
    replay = ReplayNvml(rec, lambda: clock[0], origin_ns=clock[0])
    replay.nvmlInit()
    devices, _ = visible_devices(replay, {})
    meter = GpuMeter(replay, devices, time_ns=lambda: clock[0], pid=PID)
    intervals = []
    for _ in range(invocations):
        start = clock[0]
        meter.mark(start)
        clock[0] += 50_000_000  # 50 ms invocations
        meter.mark(clock[0])
        intervals.append((start, clock[0]))
        clock[0] += 10_000_000
    clock[0] += 1_000_000_000
    begin = time.perf_counter_ns()
    meter.drain()
    for start, end in intervals:
        meter.measure(start, end)
    measure_us = (time.perf_counter_ns() - begin) / invocations / 1000
    handle = devices[0].handle
    begin = time.perf_counter_ns()
    for _ in range(10_000):
        replay.nvmlDeviceGetTotalEnergyConsumption(handle)
    read_us = (time.perf_counter_ns() - begin) / 10_000 / 1000
    return measure_us, read_us


def sampler_cpu(seconds: float) -> dict[float, float]:
    rec = recording(900)
    shares: dict[float, float] = {}
    for hz in (0.0, 10.0, 100.0):
        replay = ReplayNvml(rec, time.time_ns)
        replay.nvmlInit()
        devices, _ = visible_devices(replay, {})
        cpu0, wall0 = time.process_time(), time.perf_counter()
        meter = GpuMeter(replay, devices, time_ns=time.time_ns, pid=PID, sample_hz=hz)
        time.sleep(seconds)
        meter.close()
        shares[hz] = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return shares


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sampler-seconds", type=float, default=10.0)
    args = parser.parse_args()

    results = request_path(args.calls, args.repeats)
    base = statistics.median(results["off"])
    print(f"request path, {args.calls} calls x {args.repeats} repeats (median µs per call)")
    print("| variant | µs/call | over `off` |")
    print("| --- | ---: | ---: |")
    for variant, values in results.items():
        median = statistics.median(values)
        print(f"| {variant} | {median:.2f} | {median - base:+.2f} |")

    measure_us, read_us = writer_cost(5000)
    print(f"\nwriter: {measure_us:.1f} µs to measure one invocation (50 ms each, 1/6 s samples)")
    print(f"replay: {read_us:.2f} µs per energy read (the replay's own cost, not the driver's)")

    shares = sampler_cpu(args.sampler_seconds)
    print(f"\nsampler CPU over {args.sampler_seconds:g} s (share of one core, whole process)")
    print("| sampler | CPU | over none |")
    print("| --- | ---: | ---: |")
    for hz, share in shares.items():
        print(f"| {hz:g} Hz | {share:.2%} | {share - shares[0.0]:+.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
