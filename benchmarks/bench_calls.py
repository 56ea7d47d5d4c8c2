"""What counting outgoing calls adds per call, against the official instrumentation alone.

One process, a local HTTP server on 127.0.0.1 answering at once, ``requests`` through a kept-alive
session, one call per invocation of a ledger-only ``@traced_handler``. Variants, taking turns
repeat by repeat:

``plain``      no instrumentation: the call is not seen;
``otel``       the official ``opentelemetry-instrumentation-requests`` (and urllib3) on an SDK
               tracer provider, spans made and dropped: what the instrumentation itself costs;
``gpuledger``  the same plus gpuledger's span processor (``gpuledger.instrument()``): the call is
               attributed to the invocation, summarised (count, sum, union per target) and
               written with the record.

The difference ``gpuledger - otel`` is gpuledger's cost per call. Loopback HTTP calls take
hundreds of µs and vary, so the processor's own work is also timed alone on recorded spans
(``on_start`` + ``on_end`` + the summary at the invocation's end).

Run: ``.venv/bin/python benchmarks/bench_calls.py [--calls 2000] [--repeats 7]``
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import requests
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

import gpuledger
from gpuledger import _config
from gpuledger._external import summarise
from gpuledger._invocation import Invocation, _current
from gpuledger.instrumentation._calls import CallAggregator


class _Quick(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response and no Nagle: else each call waits out the client's delayed ACK.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve() -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quick)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


def run_variant(variant: str, url: str, calls: int, directory: str) -> float:
    gpuledger.configure(
        ledger=f"{directory}/{variant}.db",
        platform="runpod",
        gpu="H100",
        tracing=False,
        metrics=False,
        exporters="none",
        gpu_metering="off",
    )
    if variant == "otel":
        provider = TracerProvider()
        RequestsInstrumentor().instrument(tracer_provider=provider)
        URLLib3Instrumentor().instrument(tracer_provider=provider)
    elif variant == "gpuledger":
        states = gpuledger.instrument("requests", "urllib3", threads=False)
        assert states == {"requests": "on", "urllib3": "on"}, states
    session = requests.Session()

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> int:
        return session.get(url, timeout=5).status_code

    jobs = [{"id": f"{variant}-{i}", "input": {}} for i in range(calls)]
    for job in jobs[:100]:
        handler(job)
    start = time.perf_counter_ns()
    for job in jobs:
        handler(job)
    per_call = (time.perf_counter_ns() - start) / calls / 1000
    gpuledger.flush(60)
    if variant == "otel":
        RequestsInstrumentor().uninstrument()
        URLLib3Instrumentor().uninstrument()
    elif variant == "gpuledger":
        gpuledger.uninstrument()
    gpuledger.shutdown(60)
    _config.reset_for_tests()
    return per_call


def processor_alone(spans: int) -> float:
    """µs per call for on_start + on_end + summarise, on spans made by an SDK tracer."""
    provider = TracerProvider()
    aggregator = CallAggregator()
    provider.add_span_processor(aggregator)
    tracer = provider.get_tracer("bench")
    attributes = {"server.address": "10.0.0.5", "server.port": 8080, "http.request.method": "GET"}
    invocation = Invocation("bench", time.time_ns(), time.perf_counter_ns())
    token = _current.set(invocation)
    try:
        for _ in range(200):
            tracer.start_span("GET", kind=SpanKind.CLIENT, attributes=attributes).end()
        invocation.calls = None
        # Baseline: the same spans on a provider without the processor.
        bare = TracerProvider().get_tracer("bench")
        begin = time.perf_counter_ns()
        for _ in range(spans):
            bare.start_span("GET", kind=SpanKind.CLIENT, attributes=attributes).end()
        without = time.perf_counter_ns() - begin
        begin = time.perf_counter_ns()
        for _ in range(spans):
            tracer.start_span("GET", kind=SpanKind.CLIENT, attributes=attributes).end()
        summarise(invocation.calls, invocation.start_ns, time.time_ns())
        with_processor = time.perf_counter_ns() - begin
    finally:
        _current.reset(token)
    assert invocation.calls is not None
    assert len(invocation.calls) == spans
    return (with_processor - without) / spans / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    url = serve()
    results: dict[str, list[float]] = {"plain": [], "otel": [], "gpuledger": []}
    with tempfile.TemporaryDirectory() as directory:
        for repeat in range(args.repeats):
            order = list(results)
            order = order[repeat % 3 :] + order[: repeat % 3]
            for variant in order:
                results[variant].append(run_variant(variant, url, args.calls, directory))
    medians = {variant: statistics.median(values) for variant, values in results.items()}
    print(f"{args.calls} invocations x {args.repeats} repeats, one loopback GET each (median)")
    print("| variant | µs per invocation | over `otel` |")
    print("| --- | ---: | ---: |")
    for variant, median in medians.items():
        print(f"| {variant} | {median:.1f} | {median - medians['otel']:+.1f} |")
    alone = statistics.median(processor_alone(20_000) for _ in range(5))
    print(f"\nspan processor alone (on_start + on_end + summary): {alone:.2f} µs per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
