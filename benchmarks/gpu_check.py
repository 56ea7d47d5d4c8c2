"""GPU check: gpuledger's NVML metering against a workload of known shape, on a real GPU.

Each round runs, through ``@traced_handler``:

- ``busy_then_idle``: ``--busy`` seconds of back-to-back matrix products, then ``--idle``
  seconds asleep (the GPU idle), in one invocation: busy GPU seconds must be within 10% of the
  busy part;
- ``idle``: ``--idle`` seconds asleep: busy must be about 0 (under 0.05 s);
- ``pair``: two ``busy_then_idle`` invocations at once on two threads, sharing the worker: their
  billed seconds must add up to the wall time they covered;

and checks energy > 0 with more active energy for the busy invocation than the idle one. It
does this twice: without the sampler (energy read at each invocation's edges, the default) and
with it at ``--sample-hz`` (no NVML call on the request path; peak memory measured). Then it
times each NVML call gpuledger makes (µs per call, 200 calls each). ``--record PATH`` also
records the NVML streams of the whole run (the format ``gpuledger.testing.nvml`` replays), to
add to the tests' recordings.

Exit status: 0 all checks passed, 1 a check failed, 2 no GPU or no PyTorch with CUDA.

On the workplace's GPU machine (Python 3.12, PyTorch and nvidia-ml-py there, OpenTelemetry
not): carry the pure-Python wheels gpuledger needs (structlog, click, wrapt and the
opentelemetry api/sdk/semantic-conventions wheels, downloaded for cp312 into ``.whl``), then::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
    PYTHONPATH=/tmp/site:agent/.. python3 benchmarks/gpu_check.py --record $OUT/rec.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gpuledger
from gpuledger import _config
from gpuledger.ledger import open_ledger
from gpuledger.testing.nvml import record_nvml


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=float, default=2.0, help="seconds of matrix products")
    parser.add_argument("--idle", type=float, default=2.0, help="seconds idle")
    parser.add_argument("--sample-hz", type=float, default=20.0, help="sampler rate, 2nd pass")
    parser.add_argument("--size", type=int, default=8192, help="matrix side")
    parser.add_argument("--record", type=Path, help="also record NVML to this JSON file")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    try:
        import torch  # noqa: PLC0415  (optional: exit 2 without it)
    except ImportError:
        print("gpu_check: PyTorch is not installed: nothing to check")
        return 2
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to PyTorch: nothing to check")
        return 2
    import pynvml  # noqa: PLC0415  (after the checks above say there is a GPU)

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    print(
        f"GPU 0: {pynvml.nvmlDeviceGetName(handle)}, driver {pynvml.nvmlSystemGetDriverVersion()}"
    )

    device = torch.device("cuda:0")
    a = torch.randn(args.size, args.size, device=device)
    b = torch.randn(args.size, args.size, device=device)
    torch.cuda.synchronize()

    def work(seconds_busy: float, seconds_idle: float) -> None:
        deadline = time.perf_counter() + seconds_busy
        while time.perf_counter() < deadline:
            (a @ b).sum()
            torch.cuda.synchronize()
        time.sleep(seconds_idle)

    recording: dict[str, Any] = {}
    recorder = None
    if args.record:
        total = 2 * (3 * (args.busy + args.idle) + args.idle + 8)

        def run_recorder() -> None:
            recording.update(record_nvml(pynvml, seconds=total, rate_hz=20.0))

        recorder = threading.Thread(target=run_recorder, daemon=True)
        recorder.start()

    results: dict[str, Any] = {"passes": []}
    failures: list[str] = []
    for sample_hz in (0.0, args.sample_hz):
        with tempfile.TemporaryDirectory() as scratch:
            gpuledger.configure(
                ledger=f"{scratch}/ledger.db",
                platform="runpod",
                exporters="none",
                tracing=False,
                metrics=False,
                gpu_sample_hz=sample_hz,
            )
            agent = _config.get_agent()
            assert agent is not None
            agent.gpu_ready.wait(30)
            if agent.gpu_meter is None:
                print(f"gpu_check: gpuledger found no GPU: {agent.gpu_reason}")
                return 2

            @gpuledger.traced_handler(name="busy_then_idle")
            def busy_then_idle(job: dict[str, Any]) -> None:
                work(args.busy, args.idle)

            @gpuledger.traced_handler(name="idle")
            def idle(job: dict[str, Any]) -> None:
                work(0.0, args.idle)

            time.sleep(1.0)  # the sampler's first readings, and a known idle power
            busy_then_idle({"id": "busy", "input": {}})
            idle({"id": "idle", "input": {}})
            pair = [
                threading.Thread(target=busy_then_idle, args=({"id": f"pair-{i}", "input": {}},))
                for i in range(2)
            ]
            for thread in pair:
                thread.start()
            for thread in pair:
                thread.join()
            time.sleep(1.5)  # let the driver's samples cover the last invocation's end
            gpuledger.flush(30)
            with open_ledger(f"{scratch}/ledger.db", create=False) as ledger:
                rows = {record.invocation_id: record for record in ledger.read()}
            gpuledger.shutdown()

        mode = f"{sample_hz:g} Hz" if sample_hz else "off (energy read at the edges)"
        print(f"\n== sampler {mode}")
        print(
            f"{'invocation':<10} {'wall s':>7} {'billed s':>9} {'busy s':>7} {'source':>8} "
            f"{'energy J':>9} {'active J':>9} {'idle J':>8} {'peak MiB':>9}  unmeasured"
        )
        for key, row in rows.items():
            peak = row.peak_gpu_memory_bytes
            print(
                f"{key:<10} {row.duration_s:7.3f} {row.billed_gpu_seconds:9.3f} "
                f"{_fmt(row.busy_gpu_seconds, 7, 3)} {row.busy_source or '-':>8} "
                f"{_fmt(row.energy_j, 9, 1)} {_fmt(row.energy_active_j, 9, 1)} "
                f"{_fmt(row.energy_idle_j, 8, 1)} "
                f"{_fmt(None if peak is None else peak / 2**20, 9, 0)}  {row.gpu_unmeasured or ''}"
            )
        busy, quiet = rows["busy"], rows["idle"]
        checks = {
            "busy within 10% of the busy part": busy.busy_gpu_seconds is not None
            and abs(busy.busy_gpu_seconds - args.busy) <= 0.1 * args.busy,
            "idle invocation busy < 0.05 s": quiet.busy_gpu_seconds is not None
            and quiet.busy_gpu_seconds < 0.05,
            "energy > 0": (busy.energy_j or 0) > 0 and (quiet.energy_j or 0) > 0,
            "busy has more active energy than idle": (busy.energy_active_j or 0)
            > (quiet.energy_active_j or 0),
            "pair billed adds up to its wall time": abs(
                rows["pair-0"].billed_gpu_seconds
                + rows["pair-1"].billed_gpu_seconds
                - (
                    max(rows["pair-0"].end_ns, rows["pair-1"].end_ns)
                    - min(rows["pair-0"].start_ns, rows["pair-1"].start_ns)
                )
                / 1e9
            )
            < 1e-6,
        }
        if sample_hz:
            checks["peak memory measured"] = (busy.peak_gpu_memory_bytes or 0) > 0
        for name, ok in checks.items():
            print(f"  [{'ok' if ok else 'FAIL'}] {name}")
            if not ok:
                failures.append(f"sampler {sample_hz:g} Hz: {name}")
        results["passes"].append(
            {
                "sample_hz": sample_hz,
                "rows": {k: v.to_dict() for k, v in rows.items()},
                "checks": checks,
            }
        )

    print("\n== NVML call cost (µs per call, 200 calls)")
    costs = _call_costs(pynvml, handle)
    for name, micros in costs.items():
        print(f"  {name:<42} {micros:8.1f}")
    results["nvml_call_us"] = costs

    if recorder is not None and args.record:
        recorder.join(timeout=600)
        args.record.write_text(json.dumps(recording))
        print(f"\nrecording written to {args.record}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print("\nall checks passed" if not failures else f"\nFAILED: {failures}")
    return 1 if failures else 0


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def _call_costs(nvml: Any, handle: Any) -> dict[str, float]:
    calls = {
        "nvmlDeviceGetTotalEnergyConsumption": lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(
            handle
        ),
        "nvmlDeviceGetSamples(GPU_UTILIZATION)": lambda: _quiet(
            nvml, lambda: nvml.nvmlDeviceGetSamples(handle, nvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
        ),
        "nvmlDeviceGetProcessUtilization": lambda: _quiet(
            nvml, lambda: nvml.nvmlDeviceGetProcessUtilization(handle, 0)
        ),
        "nvmlDeviceGetComputeRunningProcesses": lambda: nvml.nvmlDeviceGetComputeRunningProcesses(
            handle
        ),
        "nvmlDeviceGetPowerUsage": lambda: nvml.nvmlDeviceGetPowerUsage(handle),
        "nvmlDeviceGetMemoryInfo": lambda: nvml.nvmlDeviceGetMemoryInfo(handle),
    }
    costs: dict[str, float] = {}
    for name, call in calls.items():
        call()
        start = time.perf_counter()
        for _ in range(200):
            call()
        costs[name] = (time.perf_counter() - start) / 200 * 1e6
    return costs


def _quiet(nvml: Any, call: Any) -> Any:
    try:
        return call()
    except nvml.NVMLError:
        return None


if __name__ == "__main__":
    sys.exit(main())
