"""What gpuledger adds to a cold start, measured in fresh processes against the bare OTel SDK.

Each sample is a new interpreter (``sys.executable -c CHILD``) running one of:

``bare``
    define a handler, call it once: the floor.
``import``
    ``import gpuledger`` alone. The child also checks that no module of opentelemetry, pynvml,
    structlog or sqlite3 was imported and that no thread was started (it prints what it found;
    the check's own time is not counted).
``gpuledger``
    ``import gpuledger``, ``configure(exporters=("otlp",), ...)`` with
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` at a local port where nothing listens, decorate the handler,
    call it once, and exit without flushing (the exporters must not block the request).
``otel-sdk``
    the same by hand with the OpenTelemetry SDK: TracerProvider + BatchSpanProcessor(OTLP/HTTP
    span exporter) and MeterProvider + PeriodicExportingMetricReader(OTLP/HTTP metric exporter),
    one span around the first call.

Each child measures with ``time.perf_counter`` from its first line to the return of the first
invocation, and prints it. The parent also times the whole process, from spawn to exit: that adds
interpreter start-up and whatever runs at exit (gpuledger's and the SDK's exit-time flush, which
here meets a closed port). The kinds are interleaved, ``--runs`` of each (default 15); medians
and 90th percentiles are reported. ``python -X importtime -c "import gpuledger"`` then lists the
ten costliest modules of the import, cumulative.

Run: ``.venv/bin/python benchmarks/bench_coldstart.py [--runs 15] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

# Every child starts the same way; time.perf_counter is read on its first line.
_PROLOGUE = "import time; _t0 = time.perf_counter()\n"
_HANDLER = """
def handler(job):
    return {"output": job["input"]["prompt"], "usage": {"input_tokens": 12, "output_tokens": 34}}
JOB = {"id": "job-1", "input": {"prompt": "hello"}}
"""
_EPILOGUE = """
import json as _json, os as _os, sys as _sys
print("RESULT " + _json.dumps({"first_invocation_s": _t1 - _t0 - _check_s, **_extra}))
if _os.environ.get("BENCH_HARD_EXIT"):
    _sys.stdout.flush()
    _os._exit(0)
"""

CHILDREN: dict[str, str] = {
    "bare": _PROLOGUE
    + _HANDLER
    + """
handler(JOB)
_t1 = time.perf_counter()
_check_s = 0.0
_extra = {}
""",
    "import": _PROLOGUE
    + """
import gpuledger
_t1 = time.perf_counter()
import sys, threading
_watched = ("opentelemetry", "pynvml", "structlog", "sqlite3", "_sqlite3")
_loaded = sorted(m for m in sys.modules if m.split(".")[0] in _watched)
_extra = {"loaded": _loaded, "threads": threading.active_count()}
_check_s = 0.0
""",
    "gpuledger": _PROLOGUE
    + """
import gpuledger
_t_import = time.perf_counter()
import sys, threading
_watched = ("opentelemetry", "pynvml", "structlog", "sqlite3", "_sqlite3")
_loaded = sorted(m for m in sys.modules if m.split(".")[0] in _watched)
_threads = threading.active_count()
_check_s = time.perf_counter() - _t_import
import os
gpuledger.configure(
    exporters=("otlp",), ledger=os.environ["BENCH_LEDGER"], platform="runpod", gpu="H100"
)
"""
    + _HANDLER
    + """
handler = gpuledger.traced_handler(handler)
handler(JOB)
_t1 = time.perf_counter()
_extra = {"loaded": _loaded, "threads": _threads, "import_s": _t_import - _t0}
""",
    "otel-sdk": _PROLOGUE
    + """
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
resource = Resource.create({"service.name": "bench"})
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(tracer_provider)
meter_provider = MeterProvider(
    resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
)
metrics.set_meter_provider(meter_provider)
tracer = tracer_provider.get_tracer("bench")
"""
    + _HANDLER
    + """
with tracer.start_as_current_span("handler", kind=trace.SpanKind.SERVER):
    handler(JOB)
_t1 = time.perf_counter()
_check_s = 0.0
_extra = {}
""",
}
for _kind in CHILDREN:
    CHILDREN[_kind] += _EPILOGUE

WATCHED = ("opentelemetry", "pynvml", "structlog", "sqlite3")


def unused_port() -> int:
    """A local TCP port where nothing listens (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def child_env(port: int, ledger: str, pycache: str, *, hard_exit: bool) -> dict[str, str]:
    """The environment of a child: OTLP at a closed port, no inherited gpuledger settings, and
    compiled bytecode cached under ``pycache`` (as a built image has it), for every module alike.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GPULEDGER_", "OTEL_", "RUNPOD_", "BENCH_"))
        and key != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_SERVICE_NAME="bench",
        BENCH_LEDGER=ledger,
        PYTHONPYCACHEPREFIX=pycache,
    )
    if hard_exit:
        env["BENCH_HARD_EXIT"] = "1"
    return env


def run_child(kind: str, env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """One fresh process of ``kind``: the child's own figures and the parent's spawn-to-exit."""
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", CHILDREN[kind]],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
        check=False,
    )
    process_s = time.perf_counter() - start
    results = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not results:
        raise SystemExit(
            f"{kind} child failed (rc={completed.returncode}):\n{completed.stderr[-2000:]}"
        )
    result: dict[str, Any] = json.loads(results[-1].removeprefix("RESULT "))
    result["process_s"] = process_s
    result["stderr"] = completed.stderr.strip()
    return result


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile, nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def import_time_top(count: int, env: dict[str, str]) -> list[tuple[int, int, str]]:
    """``python -X importtime -c 'import gpuledger'``: the costliest modules, cumulative µs."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import gpuledger"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    rows: list[tuple[int, int, str]] = []
    for line in completed.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative_us, name = (part.strip() for part in line[12:].split("|"))
        rows.append((int(cumulative_us), int(self_us), name))
    return sorted(rows, reverse=True)[:count]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="fresh processes of each kind")
    parser.add_argument(
        "--exit-runs",
        type=int,
        default=3,
        help="further processes of each kind that exit normally (exit-time flush), 0 skips",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds one child may take, exit included"
    )
    args = parser.parse_args(argv)

    directory = tempfile.mkdtemp(prefix="gpuledger-coldstart-")
    pycache = os.path.join(directory, "pycache")
    port = unused_port()
    kinds = list(CHILDREN)
    samples: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    exits: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.runs} fresh processes of each kind, interleaved, + {args.exit_runs} that exit "
        f"normally; OTLP endpoint http://127.0.0.1:{port} (nothing listens)",
        flush=True,
    )

    def env(name: str, *, hard_exit: bool = True) -> dict[str, str]:
        return child_env(port, os.path.join(directory, f"{name}.db"), pycache, hard_exit=hard_exit)

    for kind in kinds:  # one untimed run each: the OS file cache, the bytecode cache
        run_child(kind, env(f"warm-{kind}"), args.timeout)
    for run in range(args.runs):
        shift = run % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            samples[kind].append(run_child(kind, env(f"{kind}-{run}"), args.timeout))
    for run in range(args.exit_runs):
        for kind in kinds:
            exits[kind].append(
                run_child(kind, env(f"exit-{kind}-{run}", hard_exit=False), args.timeout)
            )
        print(f"  normal-exit round {run + 1}/{args.exit_runs} done", flush=True)

    labels = {
        "bare": "(iii) bare python + handler",
        "import": "`import gpuledger` alone",
        "gpuledger": "(i) gpuledger: import + configure(otlp) + first call",
        "otel-sdk": "(ii) OTel SDK by hand: providers + OTLP exporters + one span",
    }
    summary: dict[str, dict[str, float]] = {}
    lines = [
        "| kind | in child, first line to first call returned, ms: median | p90 "
        "| spawn to exit (os._exit after the call), ms: median | p90 "
        "| spawn to normal exit (exit-time flush), ms: median |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in kinds:
        first = [sample["first_invocation_s"] * 1000 for sample in samples[kind]]
        process = [sample["process_s"] * 1000 for sample in samples[kind]]
        normal = [sample["process_s"] * 1000 for sample in exits[kind]]
        summary[kind] = {
            "first_median_ms": statistics.median(first),
            "first_p90_ms": percentile(first, 0.9),
            "process_median_ms": statistics.median(process),
            "process_p90_ms": percentile(process, 0.9),
            "normal_exit_median_ms": statistics.median(normal) if normal else math.nan,
        }
        row = summary[kind]
        normal_exit = "-" if not normal else f"{row['normal_exit_median_ms']:.0f}"
        lines.append(
            f"| {labels[kind]} | {row['first_median_ms']:.2f} | {row['first_p90_ms']:.2f} "
            f"| {row['process_median_ms']:.1f} | {row['process_p90_ms']:.1f} "
            f"| {normal_exit} |"
        )
    print()
    print("\n".join(lines))
    print()
    added = summary["gpuledger"]["first_median_ms"] - summary["bare"]["first_median_ms"]
    by_hand = summary["otel-sdk"]["first_median_ms"] - summary["bare"]["first_median_ms"]
    print(
        f"- gpuledger adds {added:.1f} ms to the first invocation; the OTel SDK by hand adds "
        f"{by_hand:.1f} ms ({added / by_hand:.2f} x)"
    )
    imports = [sample["import_s"] * 1000 for sample in samples["gpuledger"]]
    print(f"- of which `import gpuledger`: median {statistics.median(imports):.1f} ms")

    problems: list[str] = []
    for kind in ("import", "gpuledger"):
        loaded = sorted({name for sample in samples[kind] for name in sample["loaded"]})
        threads = sorted({sample["threads"] for sample in samples[kind]})
        if loaded or threads != [1]:
            problems.append(f"{kind}: after import, modules {loaded}, threads {threads}")
    print(
        "- after `import gpuledger`: "
        + (
            "; ".join(problems)
            if problems
            else f"no module of {', '.join(WATCHED)} in sys.modules and "
            "threading.active_count() == 1, in every child"
        )
    )
    for name, runs in (("os._exit", samples), ("normal exit", exits)):
        noisy = sorted({kind for kind in kinds for sample in runs[kind] if sample["stderr"]})
        if noisy:
            example = next(sample["stderr"] for sample in runs[noisy[0]] if sample["stderr"])
            print(
                f"- {name}: children that wrote to stderr: {', '.join(noisy)}; "
                f"e.g. {example.splitlines()[-1][-200:]!r}"
            )

    top = import_time_top(10, env("importtime"))
    print("\n`python -X importtime -c 'import gpuledger'`, top 10 by cumulative time:\n")
    print("| module | cumulative ms | self ms |")
    print("| --- | ---: | ---: |")
    for cumulative_us, self_us, name in top:
        print(f"| `{name.strip()}` | {cumulative_us / 1000:.2f} | {self_us / 1000:.2f} |")

    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "runs": args.runs,
                    "summary": summary,
                    "samples": {
                        kind: [
                            {key: value for key, value in sample.items() if key != "stderr"}
                            for sample in samples[kind]
                        ]
                        for kind in kinds
                    },
                    "normal_exit_s": {
                        kind: [sample["process_s"] for sample in exits[kind]] for kind in kinds
                    },
                    "importtime_top": [
                        {"module": name.strip(), "cumulative_us": cum, "self_us": own}
                        for cum, own, name in top
                    ],
                    "problems": problems,
                },
                handle,
                indent=2,
            )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
