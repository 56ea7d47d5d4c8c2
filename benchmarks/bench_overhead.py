"""Per-invocation overhead of ``@gpuledger.traced_handler``, side by side with its baselines.

Every variant wraps the same trivial RunPod-style handler (a job dict in, a small dict out) and
runs in this one process, interleaved repeat by repeat so machine noise hits all alike:

``bare``
    the undecorated handler.
``b``
    a hand-written decorator: ``tracer.start_span`` (kind SERVER) + ``context.attach``, the same
    13 span attributes gpuledger sets on a warm, successful call with a user and token counts
    (``faas.*``, ``enduser.id``, ``gen_ai.usage.*``, ``gpuledger.gpu.billed``,
    ``gpuledger.idle_gap``, ``gpuledger.cost.*``, ``gpuledger.pricing.version``), on an SDK
    TracerProvider with a BatchSpanProcessor and an exporter that discards.
``c``
    (b) plus a counter, a histogram and a counter recorded per call on the request path, on an
    SDK MeterProvider whose InMemoryMetricReader is never collected.
``d``
    ``@traced_handler(user=...)`` with tracing and metrics on: a provider set up as for (b) and
    a meter provider set up as for (c), both passed to ``configure()``; ledger in a temporary
    SQLite file; platform runpod, GPU H100 (so every call is priced). The handler reports its
    tokens with ``gpuledger.record_tokens`` (that call counts as gpuledger's overhead).
``e``
    the same with ``configure(tracing=False, metrics=False)``: ledger only.
``e0``
    ledger only, plain ``@traced_handler`` on the bare handler: no user option, no token call.

Each variant is measured in two modes, each a table:

request path
    ``--calls`` calls timed in chunks of ``--chunk`` (default 1000), the variants taking turns
    chunk by chunk (rotating order), so a slow spell of the machine hits them alike. Before each
    chunk, untimed: (re)configure, ``--chunk-warmup`` calls, drain the background work
    (``gpuledger.flush()``, ``force_flush()``); during the chunk gpuledger's writer is held. This
    is what a handler pays per call while the background threads keep up, which they do whenever
    requests are not back to back.
sustained
    the ``--calls`` calls back to back in one timed loop after ``--warmup`` calls, background
    threads live (a worker saturated with trivial requests): whatever the writer takes from the
    request thread (the GIL) is in the per-call time. Variants take turns repeat by repeat.

Per variant: the median per-call time over ``--repeats`` repeats and its overhead over the bare
call (median of per-repeat differences); the drain (flush) wall time after the timed region;
"all-in" = (timed + drain) per call; the writer's own CPU per row (``time.thread_time_ns`` around
each batch), which is its throughput. The time the garbage collector took inside the timed region
(``gc.callbacks``, any thread) is shown too: objects queued for a background thread survive into
older generations and make full collections costlier. The job lists are ``gc.freeze()``-d so the
collector does not scan the benchmark's own data. At the end every ledger must hold exactly the
rows expected and every exporter the spans expected, so no variant can pass by dropping work.

Memory: with the writer held, ``--mem-calls`` invocations are queued under ``tracemalloc``: bytes
per pending invocation, ledger-only and with tracing.

Optionally (d') ``ddtrace``'s ``tracer.wrap`` runs in another interpreter that has ddtrace
installed (``--ddtrace-python PATH``), sustained mode, against its own bare call in that process.

Run: ``.venv/bin/python benchmarks/bench_overhead.py [--calls 20000] [--repeats 7] [--json PATH]``
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import io
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import gpuledger
from gpuledger import _config as agent_module
from gpuledger import _guard
from gpuledger.ledger import open_ledger

HANDLER_NAME = "generate"
INPUT_TOKENS = 12
OUTPUT_TOKENS = 34
# RunPod serverless H100 as in the shipped catalogue: what the hand-written decorator prices with.
RUNPOD_H100_PER_GPU_SECOND_USD = 0.00024
RUNPOD_EXECUTION_FEE_USD = 0.25
PRICING_VERSION = "2026-03"


# -- the handler ----------------------------------------------------------------------------


def bare_handler(job: dict[str, Any]) -> dict[str, Any]:
    """The trivial handler every variant wraps."""
    prompt = job["input"]["prompt"]
    return {
        "output": prompt,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
    }


def reporting_handler(job: dict[str, Any]) -> dict[str, Any]:
    """The same handler, reporting its tokens to gpuledger as a user would."""
    prompt = job["input"]["prompt"]
    gpuledger.record_tokens(input=INPUT_TOKENS, output=OUTPUT_TOKENS)
    return {
        "output": prompt,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
    }


def job_user(job: dict[str, Any]) -> object:
    """The ``user=`` option of ``@traced_handler``."""
    return job["input"]["user"]


def make_jobs(count: int, prefix: str) -> list[dict[str, Any]]:
    """RunPod-style jobs with distinct ids, built before timing."""
    return [
        {"id": f"{prefix}-{index:08d}", "input": {"prompt": "hello", "user": f"u-{index % 50}"}}
        for index in range(count)
    ]


# -- OpenTelemetry set-up shared by the hand-written and gpuledger variants ----------------


class DiscardingExporter(SpanExporter):
    """Counts the spans it is given and throws them away."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def make_tracer_provider() -> tuple[TracerProvider, DiscardingExporter]:
    """An SDK provider, a BatchSpanProcessor (defaults) and a discarding exporter."""
    exporter = DiscardingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


def make_meter_provider() -> MeterProvider:
    """An SDK meter provider whose reader is never collected."""
    return MeterProvider(metric_readers=[InMemoryMetricReader()])


def otel_decorator(
    tracer: Any, meter_provider: MeterProvider | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """What a careful engineer writes by hand: the attributes gpuledger sets, on one span."""
    server = trace.SpanKind.SERVER
    set_span_in_context = trace.set_span_in_context
    attach, detach = otel_context.attach, otel_context.detach
    error_status = trace.Status(trace.StatusCode.ERROR)
    time_ns, perf_counter_ns = time.time_ns, time.perf_counter_ns
    instruments = None
    if meter_provider is not None:
        meter = meter_provider.get_meter("hand-written")
        instruments = (
            meter.create_counter("faas.invocations", unit="{invocation}"),
            meter.create_histogram("faas.invoke_duration", unit="s"),
            meter.create_counter("gpuledger.cost", unit="USD"),
        )
    state = {"cold": True, "last_end_ns": 0}

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        metric_attributes = {"faas.trigger": "http", "gpuledger.handler": HANDLER_NAME}

        @functools.wraps(function)
        def wrapper(job: dict[str, Any]) -> Any:
            start_ns = time_ns()
            start_perf_ns = perf_counter_ns()
            cold, state["cold"] = state["cold"], False
            span = tracer.start_span(
                HANDLER_NAME,
                kind=server,
                start_time=start_ns,
                attributes={"faas.trigger": "http", "faas.coldstart": cold},
            )
            token = attach(set_span_in_context(span))
            try:
                result = function(job)
            except BaseException as error:
                detach(token)
                span.record_exception(error)
                span.set_status(error_status)
                span.end()
                raise
            detach(token)
            duration_ns = perf_counter_ns() - start_perf_ns
            seconds = duration_ns / 1e9
            gpu_usd = seconds * RUNPOD_H100_PER_GPU_SECOND_USD
            usage = result.get("usage") or {}
            idle_gap_s = max(0, start_ns - state["last_end_ns"]) / 1e9
            state["last_end_ns"] = start_ns + duration_ns
            span.set_attributes(
                {
                    "faas.invocation_id": str(job["id"]),
                    "gpuledger.gpu.billed": seconds,
                    "gpuledger.idle_gap": idle_gap_s,
                    "enduser.id": str(job["input"]["user"]),
                    "gen_ai.usage.input_tokens": usage.get("input_tokens"),
                    "gen_ai.usage.output_tokens": usage.get("output_tokens"),
                    "gpuledger.cost.total": RUNPOD_EXECUTION_FEE_USD + gpu_usd,
                    "gpuledger.cost.execution": RUNPOD_EXECUTION_FEE_USD,
                    "gpuledger.cost.gpu": gpu_usd,
                    "gpuledger.cost.coldstart": 0.0,
                    "gpuledger.pricing.version": PRICING_VERSION,
                }
            )
            span.end(end_time=start_ns + duration_ns)
            if instruments is not None:
                invocations, duration, cost = instruments
                invocations.add(1, metric_attributes)
                duration.record(seconds, metric_attributes)
                cost.add(RUNPOD_EXECUTION_FEE_USD + gpu_usd, metric_attributes)
            return result

        return wrapper

    return decorate


# -- variants -------------------------------------------------------------------------------


@dataclass
class WriterStats:
    """Time gpuledger's background writer spent on its batches."""

    rows: int = 0
    cpu_ns: int = 0
    wall_ns: int = 0


@dataclass
class Variant:
    """One way of calling the handler, and how to prepare and drain it around a timed loop."""

    key: str
    label: str
    function: Callable[[dict[str, Any]], Any]
    prepare: Callable[[], None] = lambda: None
    drain: Callable[[], None] = lambda: None
    hold: Callable[[], None] | None = None
    release: Callable[[], None] | None = None
    ledger: str | None = None
    exporter: DiscardingExporter | None = None
    writer: WriterStats = field(default_factory=WriterStats)
    loop_ns: list[int] = field(default_factory=list)
    drain_ns: list[int] = field(default_factory=list)
    gc_ns: list[int] = field(default_factory=list)
    calls: int = 0


def watch_writer(stats: WriterStats, gate: threading.Event) -> None:
    """Time each batch the current agent's writer processes (thread CPU and wall); the writer
    waits for ``gate`` before each batch, so the benchmark can hold it."""
    agent = agent_module.current_agent()
    assert agent is not None
    process = agent.pipeline._process

    def timed(batch: list[Any]) -> None:
        gate.wait()
        cpu0, wall0 = time.thread_time_ns(), time.perf_counter_ns()
        process(batch)
        stats.cpu_ns += time.thread_time_ns() - cpu0
        stats.wall_ns += time.perf_counter_ns() - wall0
        stats.rows += len(batch)

    agent.pipeline._process = timed


def gpuledger_variant(
    key: str,
    label: str,
    function: Callable[..., Any],
    ledger: str,
    *,
    held: bool,
    **settings: Any,
) -> Variant:
    """A variant that (re)configures gpuledger before each repeat and flushes it after.

    ``held``: the writer is held during each timed chunk and released before the drain.
    """
    variant = Variant(key, label, function, ledger=ledger)
    gate = threading.Event()
    gate.set()

    def prepare() -> None:
        gpuledger.configure(
            ledger=ledger, platform="runpod", gpu="H100", exporters="none", **settings
        )
        watch_writer(variant.writer, gate)

    def drain() -> None:
        if not gpuledger.flush(timeout=120):
            raise SystemExit(f"{key}: gpuledger.flush() timed out")
        provider = settings.get("tracer_provider")
        if provider is not None:
            provider.force_flush(120_000)

    def pipeline() -> Any:
        agent = agent_module.current_agent()
        assert agent is not None
        return agent.pipeline

    saved_batch_size = 0

    def hold() -> None:
        nonlocal saved_batch_size
        gate.clear()
        # Held, the queue may pass the batch size, where every submit wakes the writer
        # (Event.set, ~0.5 µs): a writer that keeps up never lets it, so lift it while held.
        saved_batch_size = pipeline()._batch_size
        pipeline()._batch_size = 1 << 62

    def release() -> None:
        pipeline()._batch_size = saved_batch_size
        gate.set()

    variant.prepare, variant.drain = prepare, drain
    if held:
        variant.hold, variant.release = hold, release
    return variant


def build_variants(directory: str, mode: str, *, held: bool) -> list[Variant]:
    """The variants of one mode, each with its own (identically set up) providers and ledger."""
    variants = [Variant("bare", "bare call", bare_handler)]
    for key, label, meter_provider in (
        ("b", "(b) OTel span by hand", None),
        ("c", "(c) OTel span + 3 metrics by hand", make_meter_provider()),
    ):
        tracer_provider, exporter = make_tracer_provider()
        function = otel_decorator(tracer_provider.get_tracer("hand-written"), meter_provider)(
            bare_handler
        )
        variants.append(
            Variant(
                key,
                label,
                function,
                exporter=exporter,
                drain=functools.partial(tracer_provider.force_flush, 120_000),
            )
        )

    traced = gpuledger.traced_handler(name=HANDLER_NAME, user=job_user)(reporting_handler)
    tracer_provider, exporter = make_tracer_provider()
    variant_d = gpuledger_variant(
        "d",
        "(d) gpuledger, tracing + metrics",
        traced,
        os.path.join(directory, f"{mode}-d.db"),
        held=held,
        tracer_provider=tracer_provider,
        meter_provider=make_meter_provider(),
    )
    variant_d.exporter = exporter
    variants.append(variant_d)
    variants.append(
        gpuledger_variant(
            "e",
            "(e) gpuledger, ledger only",
            traced,
            os.path.join(directory, f"{mode}-e.db"),
            held=held,
            tracing=False,
            metrics=False,
        )
    )
    variants.append(
        gpuledger_variant(
            "e0",
            "(e0) gpuledger, ledger only, plain decorator",
            gpuledger.traced_handler(bare_handler),
            os.path.join(directory, f"{mode}-e0.db"),
            held=held,
            tracing=False,
            metrics=False,
        )
    )
    return variants


# -- timing ---------------------------------------------------------------------------------


class GcClock:
    """Total time spent in garbage collections (any thread), via ``gc.callbacks``."""

    def __init__(self) -> None:
        self.total_ns = 0
        self._started = 0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
        else:
            self.total_ns += time.perf_counter_ns() - self._started


GC_CLOCK = GcClock()


def run_loop(function: Callable[[dict[str, Any]], Any], jobs: list[dict[str, Any]]) -> int:
    """Call ``function`` on every job; the loop's wall time in ns."""
    start = time.perf_counter_ns()
    for job in jobs:
        function(job)
    return time.perf_counter_ns() - start


def timed_run(
    variant: Variant, jobs: list[dict[str, Any]], warmup: list[dict[str, Any]]
) -> tuple[int, int, int]:
    """Prepare, warm up and drain; then time one loop over ``jobs`` and the drain after it.

    Returns the loop's, the drain's and the garbage collector's (during the loop) ns.
    """
    variant.prepare()
    run_loop(variant.function, warmup)
    variant.drain()
    gc.collect()
    if variant.hold is not None:
        variant.hold()
    gc_before = GC_CLOCK.total_ns
    loop_ns = run_loop(variant.function, jobs)
    gc_ns = GC_CLOCK.total_ns - gc_before
    start = time.perf_counter_ns()
    if variant.release is not None:
        variant.release()
    variant.drain()
    drain_ns = time.perf_counter_ns() - start
    variant.calls += len(warmup) + len(jobs)
    return loop_ns, drain_ns, gc_ns


def run_repeat(
    variants: list[Variant],
    chunks: list[list[dict[str, Any]]],
    warmup: list[dict[str, Any]],
    repeat: int,
) -> None:
    """One repeat of every variant; chunk by chunk, each chunk of every variant in turn (in a
    rotating order), so that a slow spell of the machine hits all variants alike."""
    totals = {variant.key: [0, 0, 0] for variant in variants}
    for index, chunk in enumerate(chunks):
        shift = (repeat + index) % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            for slot, value in enumerate(timed_run(variant, chunk, warmup)):
                totals[variant.key][slot] += value
    for variant in variants:
        loop_ns, drain_ns, gc_ns = totals[variant.key]
        variant.loop_ns.append(loop_ns)
        variant.drain_ns.append(drain_ns)
        variant.gc_ns.append(gc_ns)


def per_call_us(total_ns: float, calls: int) -> float:
    """Nanoseconds over ``calls`` as microseconds per call."""
    return total_ns / calls / 1000


# -- memory ---------------------------------------------------------------------------------


def pending_memory(
    function: Callable[..., Any], ledger: str, calls: int, **settings: Any
) -> dict[str, float]:
    """Bytes per finished invocation waiting for a held writer (tracemalloc), and RSS growth."""
    gpuledger.configure(ledger=ledger, platform="runpod", gpu="H100", exporters="none", **settings)
    agent = agent_module.current_agent()
    assert agent is not None
    run_loop(function, make_jobs(1000, "mem-warm"))
    gpuledger.flush(timeout=120)
    gate = threading.Event()
    process = agent.pipeline._process

    def held(batch: list[Any]) -> None:
        gate.wait()
        process(batch)

    agent.pipeline._process = held
    jobs = make_jobs(calls, "mem")
    gc.collect()
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    run_loop(function, jobs)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    rss_after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gate.set()
    if not gpuledger.flush(timeout=300):
        raise SystemExit("memory run: gpuledger.flush() timed out")
    provider = settings.get("tracer_provider")
    if provider is not None:
        provider.force_flush(120_000)
    return {
        "calls": calls,
        "bytes_per_pending_invocation": (after - before) / calls,
        "peak_rss_growth_bytes_per_invocation": (rss_after_kib - rss_before_kib) * 1024 / calls,
        "rows_expected": calls + 1000,
    }


# -- ddtrace (optional, another interpreter) -------------------------------------------------

DDTRACE_CHILD = r"""
import gc, json, os, statistics, sys, time
calls, repeats = int(sys.argv[1]), int(sys.argv[2])
from ddtrace.trace import tracer

def handler(job):
    prompt = job["input"]["prompt"]
    return {"output": prompt, "usage": {"input_tokens": 12, "output_tokens": 34}}

wrapped = tracer.wrap(name="generate", service="bench")(handler)
jobs = [{"id": f"j-{i:08d}", "input": {"prompt": "hello", "user": f"u-{i % 50}"}}
        for i in range(calls)]
gc.freeze()

def loop(function):
    start = time.perf_counter_ns()
    for job in jobs:
        function(job)
    return time.perf_counter_ns() - start

for function in (handler, wrapped):
    loop(function)
results = {"bare": [], "ddtrace": []}
for repeat in range(repeats):
    order = [("bare", handler), ("ddtrace", wrapped)]
    if repeat % 2:
        order.reverse()
    for key, function in order:
        gc.collect()
        results[key].append(loop(function) / calls / 1000)
import ddtrace
print(json.dumps({"version": ddtrace.__version__, "per_call_us": results}))
"""


def run_ddtrace(python: str, calls: int, repeats: int) -> dict[str, Any] | None:
    """(d') ddtrace's ``tracer.wrap`` against a bare call, in an interpreter that has ddtrace."""
    env = dict(os.environ)
    # No agent runs here: send to a closed port, quietly; spans are still built and queued.
    env.update(
        DD_TRACE_AGENT_URL="http://127.0.0.1:9",
        DD_TRACE_STARTUP_LOGS="false",
        DD_INSTRUMENTATION_TELEMETRY_ENABLED="false",
        DD_REMOTE_CONFIGURATION_ENABLED="false",
    )
    completed = subprocess.run(
        [python, "-c", DDTRACE_CHILD, str(calls), str(repeats)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        print(f"ddtrace run failed (rc={completed.returncode}): {completed.stderr[-500:]}")
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- profile --------------------------------------------------------------------------------


def profile(variants: list[Variant], keys: Sequence[str], jobs: list[dict[str, Any]]) -> str:
    """cProfile of the request path (writer held) of the given variants: tottime, top 20."""
    out = io.StringIO()
    for variant in variants:
        if variant.key not in keys:
            continue
        variant.prepare()
        run_loop(variant.function, jobs[:1000])
        variant.drain()
        if variant.hold is not None:
            variant.hold()
        profiler = cProfile.Profile()
        profiler.enable()
        run_loop(variant.function, jobs)
        profiler.disable()
        if variant.release is not None:
            variant.release()
        variant.drain()
        variant.calls += len(jobs) + 1000
        out.write(f"\n### cProfile, {variant.label}, {len(jobs)} calls, request thread\n\n```\n")
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        out.write("```\n")
    return out.getvalue()


# -- report ---------------------------------------------------------------------------------


def summarise(variants: list[Variant], calls: int) -> dict[str, dict[str, float]]:
    """Per variant: median, spread, overhead over bare, drain, all-in, GC and writer figures."""
    bare = variants[0]
    table: dict[str, dict[str, float]] = {}
    for variant in variants:
        per_call = [per_call_us(ns, calls) for ns in variant.loop_ns]
        over_bare = [
            per_call_us(ns - base, calls)
            for ns, base in zip(variant.loop_ns, bare.loop_ns, strict=True)
        ]
        all_in = [
            per_call_us(loop + drain, calls)
            for loop, drain in zip(variant.loop_ns, variant.drain_ns, strict=True)
        ]
        rows = variant.writer.rows
        table[variant.key] = {
            "median_us": statistics.median(per_call),
            "min_us": min(per_call),
            "max_us": max(per_call),
            "overhead_us": statistics.median(over_bare),
            "gc_us": statistics.median(per_call_us(ns, calls) for ns in variant.gc_ns),
            "drain_ms": statistics.median(variant.drain_ns) / 1e6,
            "all_in_us": statistics.median(all_in),
            "writer_cpu_us_per_row": variant.writer.cpu_ns / rows / 1000 if rows else 0.0,
            "writer_wall_us_per_row": variant.writer.wall_ns / rows / 1000 if rows else 0.0,
        }
    return table


def markdown(
    variants: list[Variant], table: dict[str, dict[str, float]], *, writer_column: bool
) -> list[str]:
    """The table of one mode, in Markdown. The writer column is left out of the request-path
    table, where reconfiguring before every chunk reopens the ledger once per 1,100 rows."""
    b_median = table["b"]["median_us"]
    lines = [
        "| variant | µs/call (median) | min-max | over bare µs | x (b) | GC in loop µs/call "
        "| drain ms | all-in µs/call | writer CPU µs/row |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in variants:
        row = table[variant.key]
        writer = (
            f"{row['writer_cpu_us_per_row']:.1f}" if variant.writer.rows and writer_column else "-"
        )
        lines.append(
            f"| {variant.label} | {row['median_us']:.2f} | {row['min_us']:.2f}-{row['max_us']:.2f} "
            f"| {row['overhead_us']:.2f} | {row['median_us'] / b_median:.2f} | {row['gc_us']:.2f} "
            f"| {row['drain_ms']:.1f} | {row['all_in_us']:.2f} | {writer} |"
        )
    return lines


def check(variants: list[Variant], problems: list[str], mode: str) -> None:
    """Every ledger holds exactly the rows expected; every exporter the spans expected."""
    for variant in variants:
        if variant.ledger is not None:
            with open_ledger(variant.ledger, create=False) as ledger:
                rows = ledger.count()
            if rows != variant.calls:
                problems.append(
                    f"{mode} {variant.key}: {rows} ledger rows, expected {variant.calls}"
                )
        if variant.exporter is not None:
            # gpuledger adds one init span on the first invocation of the process.
            extra = variant.exporter.exported - variant.calls
            if extra not in (0, 1):
                problems.append(
                    f"{mode} {variant.key}: {variant.exporter.exported} spans exported, "
                    f"expected {variant.calls}"
                )


# -- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per repeat")
    parser.add_argument("--chunk", type=int, default=1_000, help="request-path chunk size")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats")
    parser.add_argument(
        "--warmup", type=int, default=2_000, help="untimed calls before each sustained loop"
    )
    parser.add_argument(
        "--chunk-warmup", type=int, default=100, help="untimed calls before each timed chunk"
    )
    parser.add_argument("--mem-calls", type=int, default=100_000, help="0 skips the memory run")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--ddtrace-python",
        metavar="PYTHON",
        help="an interpreter with ddtrace installed, for variant (d')",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile the request path of (d) and (e)"
    )
    args = parser.parse_args(argv)

    directory = tempfile.mkdtemp(prefix="gpuledger-bench-")
    jobs = make_jobs(args.calls, "job")
    modes = {
        "request path": (
            build_variants(directory, "request", held=True),
            [jobs[start : start + args.chunk] for start in range(0, len(jobs), args.chunk)],
            make_jobs(args.chunk_warmup, "warm"),
        ),
        "sustained": (
            build_variants(directory, "sustained", held=False),
            [jobs],
            make_jobs(args.warmup, "warm"),
        ),
    }
    gc.collect()
    gc.freeze()  # the jobs and variants: the collector need not scan the benchmark's own data
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.repeats} repeats x {args.calls} calls; request path in chunks of {args.chunk} "
        f"(+{args.chunk_warmup} warm-up each), sustained after {args.warmup} warm-up calls",
        flush=True,
    )
    for repeat in range(args.repeats):
        for variants, chunks, warmup in modes.values():
            run_repeat(variants, chunks, warmup, repeat)
        print(f"  repeat {repeat + 1}/{args.repeats} done", flush=True)

    request_variants = modes["request path"][0]
    profile_text = profile(request_variants, ("d", "e"), jobs) if args.profile else ""

    memory: dict[str, Any] = {}
    if args.mem_calls:
        traced = gpuledger.traced_handler(name=HANDLER_NAME, user=job_user)(reporting_handler)
        memory["ledger only"] = pending_memory(
            traced,
            os.path.join(directory, "mem-e.db"),
            args.mem_calls,
            tracing=False,
            metrics=False,
        )
        memory["tracing + metrics"] = pending_memory(
            traced,
            os.path.join(directory, "mem-d.db"),
            args.mem_calls,
            tracer_provider=make_tracer_provider()[0],
            meter_provider=make_meter_provider(),
        )
    failures = list(_guard.error_counts().items())
    gpuledger.shutdown()

    problems: list[str] = []
    for mode, (variants, _, _) in modes.items():
        check(variants, problems, mode)
    for name, result in memory.items():
        path = os.path.join(directory, "mem-e.db" if name == "ledger only" else "mem-d.db")
        with open_ledger(path, create=False) as ledger:
            rows = ledger.count()
        if rows != result["rows_expected"]:
            problems.append(f"memory {name}: {rows} rows, expected {result['rows_expected']}")
    if failures:
        problems.append(f"gpuledger contained failures: {failures}")

    ddtrace = (
        run_ddtrace(args.ddtrace_python, args.calls, args.repeats) if args.ddtrace_python else None
    )
    tables: dict[str, dict[str, dict[str, float]]] = {}
    verdicts: dict[str, float] = {}
    for mode, (variants, _, _) in modes.items():
        table = tables[mode] = summarise(variants, args.calls)
        lines = markdown(variants, table, writer_column=mode == "sustained")
        b_median = table["b"]["median_us"]
        if ddtrace is not None and mode == "sustained":
            dd_bare = statistics.median(ddtrace["per_call_us"]["bare"])
            dd = statistics.median(ddtrace["per_call_us"]["ddtrace"])
            lines.append(
                f"| (d') ddtrace {ddtrace['version']} tracer.wrap, own process "
                f"(bare {dd_bare:.2f}) | {dd:.2f} | - | {dd - dd_bare:.2f} | {dd / b_median:.2f} "
                f"| - | - | - | - |"
            )
        print(f"\n## {mode}\n")
        print("\n".join(lines))
        print()
        ratio = verdicts[f"{mode}: d/b"] = table["d"]["median_us"] / b_median
        all_in_ratio = table["d"]["all_in_us"] / table["b"]["all_in_us"]
        print(
            f"- (d)/(b) = {ratio:.3f} (target <= 1.25: {'met' if ratio <= 1.25 else 'NOT met'}); "
            f"all-in (timed + drain) {all_in_ratio:.3f}"
        )
        for key in ("e", "e0"):
            over = verdicts[f"{mode}: {key} over bare"] = table[key]["overhead_us"]
            verdict = "met" if over < 2 else "NOT met"
            print(f"- ({key}) over bare = {over:.2f} µs (target < 2 µs: {verdict})")
    print()
    sustained = tables["sustained"]
    for key, name in (("d", "tracing + metrics"), ("e", "ledger only")):
        cpu = sustained[key]["writer_cpu_us_per_row"]
        print(
            f"- writer throughput, {name}: {1e6 / cpu:,.0f} rows/s per core of writer-thread CPU "
            f"({cpu:.1f} µs/row; sustained mode)"
        )
    for name, result in memory.items():
        print(
            f"- memory, {name}: {result['bytes_per_pending_invocation']:.0f} B (tracemalloc) per "
            f"pending invocation, {result['calls']:,} held; peak RSS growth "
            f"{result['peak_rss_growth_bytes_per_invocation']:.0f} B per invocation"
        )
    if profile_text:
        print(profile_text)
    print(
        "- integrity: "
        + (
            "; ".join(problems)
            if problems
            else "every ledger holds exactly the rows expected, every exporter got every span"
        )
    )

    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "calls": args.calls,
                    "chunk": args.chunk,
                    "repeats": args.repeats,
                    "warmup": args.warmup,
                    "chunk_warmup": args.chunk_warmup,
                    "modes": {
                        mode: {
                            variant.key: {
                                "label": variant.label,
                                **tables[mode][variant.key],
                                "loop_ns": variant.loop_ns,
                                "drain_ns": variant.drain_ns,
                                "gc_ns": variant.gc_ns,
                            }
                            for variant in variants
                        }
                        for mode, (variants, _, _) in modes.items()
                    },
                    "verdicts": verdicts,
                    "memory": memory,
                    "ddtrace": ddtrace,
                    "problems": problems,
                },
                handle,
                indent=2,
            )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
