"""Outgoing calls against real servers on 127.0.0.1: counted, summed, their union (the wait)
exact against the CLIENT spans the official instrumentations produced, failures recorded."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import gpuledger
from gpuledger import _guard
from gpuledger._external import summarise
from gpuledger._external import union_ns as _union_ns
from gpuledger._record import InvocationRecord
from gpuledger.instrumentation import _calls as calls_module
from gpuledger.ledger import open_ledger

from .conftest import FakeClock

RUNPOD_H100_PER_GPU_SECOND = 0.00116  # published-2026-12, the default edition


# --- a local HTTP server with a controllable delay ----------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        time.sleep(float(query.get("delay", "0")))
        status = int(query.get("status", "200"))
        body = b"x" * int(query.get("bytes", "2"))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client timed out
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Calls:
    """gpuledger configured (real clock), with instrumentation on and the spans kept."""

    def __init__(self, ledger: Path, exporter: InMemorySpanExporter) -> None:
        self.ledger = ledger
        self.exporter = exporter

    def records(self) -> list[InvocationRecord]:
        assert gpuledger.flush(10)
        with open_ledger(str(self.ledger), create=False) as ledger:
            return list(ledger.read())

    def record(self) -> InvocationRecord:
        (record,) = self.records()
        return record

    def client_spans(self) -> list[ReadableSpan]:
        """The CLIENT spans that are calls of their own (not nested inside another call)."""
        spans = [s for s in self.exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
        ids = {span.context.span_id for span in spans}
        return [span for span in spans if span.parent is None or span.parent.span_id not in ids]


@pytest.fixture
def calls(tmp_path: Path) -> Iterator[Calls]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ledger = tmp_path / "ledger.db"
    gpuledger.configure(
        ledger=str(ledger),
        platform="runpod",
        gpu="H100",
        tracer_provider=provider,
        exporters="none",
        gpu_metering="off",
        strict=True,
    )
    states = gpuledger.instrument()
    assert states["requests"] == "on", states
    try:
        yield Calls(ledger, exporter)
    finally:
        gpuledger.uninstrument()


_SKEW_NS = 1_000_000
"""How far a span's wall-clock end may read past the record's end (its start plus a
``perf_counter`` duration) and still have ended inside it: the two clocks drift by microseconds."""


def _check_against_spans(record: InvocationRecord, spans: list[ReadableSpan]) -> None:
    """The record's sum and union are exactly those of the CLIENT spans made during it."""
    intervals = [
        (span.start_time or 0, min(span.end_time or 0, record.end_ns))
        for span in spans
        if (span.start_time or 0) >= record.start_ns
        and (span.end_time or 0) <= record.end_ns + _SKEW_NS
    ]
    assert record.external_calls == len(intervals)
    assert record.external_call_seconds == pytest.approx(
        sum(end - start for start, end in intervals) / 1e9, abs=1e-9
    )
    assert record.external_wait_seconds == pytest.approx(_union_ns(intervals) / 1e9, abs=1e-9)


# --- HTTP clients --------------------------------------------------------------------------------


def test_sequential_calls_sum_equals_wait(calls: Calls, http_url: str) -> None:
    import requests

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> int:
        total = 0
        for _ in range(2):
            total += len(requests.get(f"{http_url}/?delay=0.05&bytes=100", timeout=5).content)
        return total

    assert handler({"id": "seq", "input": {}}) == 200
    record = calls.record()
    _check_against_spans(record, calls.client_spans())
    assert record.external_calls == 2
    assert record.external_call_seconds == pytest.approx(record.external_wait_seconds, abs=1e-6)
    assert record.external_wait_seconds >= 0.1
    (target,) = record.external_targets or {}
    assert target == http_url.removeprefix("http://")
    entry = (record.external_targets or {})[target]
    assert entry["calls"] == 2
    assert entry["errors"] == 0
    assert record.external_wait_cost_usd == pytest.approx(
        record.external_wait_seconds * RUNPOD_H100_PER_GPU_SECOND
    )


def test_parallel_calls_overlap_so_wait_is_less_than_the_sum(calls: Calls, http_url: str) -> None:
    """Three 0.2 s calls at once from an executor the handler starts: they count for it (the
    context follows into the pool), and the wait is about 0.2 s, not the 0.6 s summed."""
    import requests

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> list[int]:
        with ThreadPoolExecutor(3) as pool:
            futures = [
                pool.submit(requests.get, f"{http_url}/?delay=0.2", timeout=5) for _ in range(3)
            ]
            return [future.result().status_code for future in futures]

    assert handler({"id": "par", "input": {}}) == [200, 200, 200]
    record = calls.record()
    _check_against_spans(record, calls.client_spans())
    assert record.external_calls == 3
    assert record.external_call_seconds >= 0.6
    assert 0.2 <= record.external_wait_seconds < record.external_call_seconds


def test_httpx_async_gather(calls: Calls, http_url: str) -> None:
    import httpx

    @gpuledger.traced_handler
    async def handler(job: dict[str, Any]) -> list[int]:
        async with httpx.AsyncClient() as client:
            responses = await asyncio.gather(
                *(client.get(f"{http_url}/?delay=0.1") for _ in range(2))
            )
        return [response.status_code for response in responses]

    assert asyncio.run(handler({"id": "hx", "input": {}})) == [200, 200]
    record = calls.record()
    _check_against_spans(record, calls.client_spans())
    assert record.external_calls == 2
    assert record.external_wait_seconds < record.external_call_seconds


def test_aiohttp_and_urllib3(calls: Calls, http_url: str) -> None:
    import aiohttp
    import urllib3

    @gpuledger.traced_handler
    async def with_aiohttp(job: dict[str, Any]) -> int:
        async with aiohttp.ClientSession() as session, session.get(f"{http_url}/") as response:
            return response.status

    @gpuledger.traced_handler
    def with_urllib3(job: dict[str, Any]) -> int:
        return int(urllib3.PoolManager().request("GET", f"{http_url}/?status=404").status)

    assert asyncio.run(with_aiohttp({"id": "aio", "input": {}})) == 200
    assert with_urllib3({"id": "u3", "input": {}}) == 404
    by_id = {record.invocation_id: record for record in calls.records()}
    assert by_id["aio"].external_calls == 1
    assert by_id["u3"].external_calls == 1
    target = http_url.removeprefix("http://")
    assert (by_id["u3"].external_targets or {})[target]["errors"] == 1  # a 404 failed


def test_failures_are_recorded_and_never_change_the_handler(
    calls: Calls, http_url: str, closed_port: int
) -> None:
    import requests

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> list[str]:
        seen = []
        for url, timeout in (
            (f"http://127.0.0.1:{closed_port}/", 5.0),  # connection refused
            (f"{http_url}/?delay=1", 0.05),  # read timeout
            (f"{http_url}/?status=500", 5.0),
        ):
            try:
                seen.append(str(requests.get(url, timeout=timeout).status_code))
            except requests.RequestException as error:
                seen.append(type(error).__name__)
        return seen

    assert handler({"id": "fail", "input": {}}) == ["ConnectionError", "ReadTimeout", "500"]
    record = calls.record()
    assert record.outcome == "ok"
    assert record.external_calls == 3
    targets = record.external_targets or {}
    assert targets[f"127.0.0.1:{closed_port}"]["errors"] == 1
    assert targets[http_url.removeprefix("http://")]["errors"] == 2
    outcomes = sorted(
        calls_module.outcome_of(span.attributes or {}, span.status, span.events)
        for span in calls.client_spans()
    )
    assert outcomes == ["500", "ConnectionError", "ReadTimeout"]


def test_a_raising_call_raises_the_same_exception(calls: Calls, closed_port: int) -> None:
    import requests

    caught: list[BaseException] = []

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        try:
            requests.get(f"http://127.0.0.1:{closed_port}/", timeout=5)
        except requests.ConnectionError as error:
            caught.append(error)
            raise

    with pytest.raises(requests.ConnectionError) as raised:
        handler({"id": "raise", "input": {}})
    assert raised.value is caught[0]
    record = calls.record()
    assert record.outcome == "error"
    assert record.external_calls == 1


def test_threads_and_to_thread_carry_the_invocation(calls: Calls, http_url: str) -> None:
    import requests

    @gpuledger.traced_handler
    async def handler(job: dict[str, Any]) -> None:
        thread = threading.Thread(target=requests.get, args=(f"{http_url}/",))
        thread.start()
        thread.join()
        await asyncio.to_thread(requests.get, f"{http_url}/")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, requests.get, f"{http_url}/")

    asyncio.run(handler({"id": "threads", "input": {}}))
    assert calls.record().external_calls == 3


def test_calls_outside_or_after_an_invocation_do_not_count(calls: Calls, http_url: str) -> None:
    import requests

    requests.get(f"{http_url}/", timeout=5)  # no invocation
    started = threading.Event()
    left: list[threading.Thread] = []

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        def late() -> None:
            started.set()
            requests.get(f"{http_url}/?delay=0.3", timeout=5)

        thread = threading.Thread(target=late)
        thread.start()
        left.append(thread)
        started.wait(5)

    handler({"id": "left-behind", "input": {}})
    left[0].join()
    record = calls.record()
    assert record.external_calls == 0  # measured: none ended inside the invocation
    assert record.external_wait_seconds == 0.0


def test_instrument_is_idempotent_and_reversible(calls: Calls, http_url: str) -> None:
    import requests

    again = gpuledger.instrument("requests")
    assert again == {"requests": "on"}

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        requests.get(f"{http_url}/", timeout=5)

    handler({"id": "once", "input": {}})
    gpuledger.uninstrument("requests", "urllib3")  # requests runs over urllib3
    handler({"id": "off", "input": {}})
    by_id = {record.invocation_id: record for record in calls.records()}
    assert by_id["once"].external_calls == 1  # not 2: instrumented once
    assert by_id["off"].external_calls == 0


def test_unknown_and_missing_libraries(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="no such library; known: httpx"):
        gpuledger.instrument("grpc")
    real = calls_module.importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "redis" else real(name, *args)

    monkeypatch.setattr(calls_module.importlib.util, "find_spec", find_spec)
    gpuledger.uninstrument("redis")
    assert gpuledger.instrument("redis") == {"redis": "not installed"}

    def no_package(name: str, package: str | None = None) -> Any:
        raise ImportError(name)

    gpuledger.uninstrument("httpx")
    monkeypatch.setattr(calls_module.importlib, "import_module", no_package)
    state = gpuledger.instrument("httpx")["httpx"]
    assert state.startswith("instrumentation missing: pip install 'gpuledger[calls]'")


def test_span_attributes(calls: Calls, http_url: str) -> None:
    import requests

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        requests.get(f"{http_url}/?delay=0.02", timeout=5)

    handler({"id": "attrs", "input": {}})
    record = calls.record()
    (server,) = [s for s in calls.exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    attributes = server.attributes or {}
    assert attributes["gpuledger.external.calls"] == 1
    assert attributes["gpuledger.external.call_duration"] == record.external_call_seconds
    assert attributes["gpuledger.external.wait"] == record.external_wait_seconds
    assert attributes["gpuledger.external.wait_cost"] == record.external_wait_cost_usd
    (target,) = record.external_targets or {}
    entry = (record.external_targets or {})[target]
    # Per target, as data: arrays parallel to the target names.
    assert attributes["gpuledger.external.targets"] == (target,)
    assert attributes["gpuledger.external.target_calls"] == (1,)
    assert attributes["gpuledger.external.target_errors"] == (0,)
    assert attributes["gpuledger.external.target_waits"] == (entry["wait_s"],)
    assert attributes["gpuledger.external.target_wait_costs"] == (entry["wait_usd"],)
    (client,) = calls.client_spans()
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id


# --- by hand ------------------------------------------------------------------------------------


def test_external_call_by_hand_sync_and_async(tmp_path: Path, clock: FakeClock) -> None:
    gpuledger.configure(
        ledger=str(tmp_path / "l.db"),
        platform="runpod",
        gpu="H100",
        clock=clock,
        exporters="none",
        gpu_metering="off",
        strict=True,
    )

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> str:
        with gpuledger.external_call("vectordb.query", target="qdrant://10.0.0.7:6334"):
            clock.advance(1.0)
            # nested, so the two overlap: 1-2 s
            with gpuledger.external_call("s3.get", target="s3://weights") as call:
                clock.advance(1.0)
                call.set_size(4096)
        clock.advance(0.5)
        with contextlib.suppress(KeyError), gpuledger.external_call("cache.get"):
            clock.advance(0.25)
            raise KeyError("miss")
        return "done"

    @gpuledger.traced_handler
    async def async_handler(job: dict[str, Any]) -> None:
        async with gpuledger.external_call("grpc.embed", target="embedder:50051"):
            clock.advance(0.5)

    assert handler({"id": "by-hand", "input": {}}) == "done"
    asyncio.run(async_handler({"id": "async", "input": {}}))
    assert gpuledger.flush(5)
    with open_ledger(str(tmp_path / "l.db"), create=False) as ledger:
        by_id = {record.invocation_id: record for record in ledger.read()}
    record = by_id["by-hand"]
    assert record.external_calls == 3
    assert record.external_call_seconds == pytest.approx(2.0 + 1.0 + 0.25)
    assert record.external_wait_seconds == pytest.approx(2.0 + 0.25)  # the union
    targets = record.external_targets or {}
    assert targets["s3://weights"]["bytes"] == 4096
    assert targets["cache"]["errors"] == 1  # raised KeyError: its outcome
    assert record.external_wait_cost_usd == pytest.approx(2.25 * RUNPOD_H100_PER_GPU_SECOND)
    assert by_id["async"].external_wait_seconds == pytest.approx(0.5)


def test_external_call_outside_an_invocation_does_nothing() -> None:
    with gpuledger.external_call("s3.get") as call:
        call.set_outcome(200)
    with pytest.raises(ValueError, match="non-empty string"):
        gpuledger.external_call("")
    assert _guard.error_counts() == {}


SERVER = {"server.address", "server.port", "db.system.name", "aws.s3.bucket"}
"""The convention attributes a hand-timed call's target can imply."""


@pytest.mark.parametrize(
    ("target", "implied"),
    [
        (
            "postgres://db.internal:5432/app",
            {"server.address": "db.internal", "server.port": 5432, "db.system.name": "postgresql"},
        ),
        (
            "postgresql://reader:secret@10.0.0.5:6432",
            {"server.address": "10.0.0.5", "server.port": 6432, "db.system.name": "postgresql"},
        ),
        (
            "rediss://cache:6380/0",
            {"server.address": "cache", "server.port": 6380, "db.system.name": "redis"},
        ),
        (
            "mongodb+srv://cluster0.example.net/orders",
            {"server.address": "cluster0.example.net", "db.system.name": "mongodb"},
        ),
        (
            "mysql://db:3306",
            {"server.address": "db", "server.port": 3306, "db.system.name": "mysql"},
        ),
        (
            "https://api.openai.com/v1/chat",
            {"server.address": "api.openai.com", "server.port": 443},
        ),
        ("http://models:8080/v1", {"server.address": "models", "server.port": 8080}),
        ("qdrant://10.0.0.7:6334", {"server.address": "10.0.0.7", "server.port": 6334}),
        ("embedder:50051", {"server.address": "embedder", "server.port": 50051}),
        ("[::1]:6379", {"server.address": "::1", "server.port": 6379}),
        ("api.openai.com", {"server.address": "api.openai.com"}),
        ("192.168.1.20", {"server.address": "192.168.1.20"}),
        ("localhost", {"server.address": "localhost"}),
        ("s3://weights", {"aws.s3.bucket": "weights"}),
        ("aws:s3", {}),
        ("vectordb", {}),
        ("grpc://embedder:notaport", {}),
        ("embedder:99999", {}),
    ],
)
def test_a_hand_timed_span_says_what_its_target_implies(
    tmp_path: Path, clock: FakeClock, target: str, implied: dict[str, object]
) -> None:
    """``external_call``'s CLIENT span carries the server and database system its target names,
    under the semantic conventions' names, and nothing for a target that names no server."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gpuledger.configure(
        ledger=str(tmp_path / "l.db"),
        clock=clock,
        tracer_provider=provider,
        metrics=False,
        gpu_metering="off",
        strict=True,
    )

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        with gpuledger.external_call("vectordb.query", target=target):
            clock.advance(0.1)

    handler({"id": "x", "input": {}})
    assert gpuledger.flush(5)
    (client,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    attributes = dict(client.attributes or {})
    assert {key: attributes[key] for key in SERVER if key in attributes} == implied
    assert attributes["gpuledger.external.target"] == target
    assert "secret" not in str(attributes.get("server.address"))


def test_a_hand_timed_call_that_raises_is_an_error_span_counted_once(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A block that raises gives its span ``error.type`` and status ERROR; with the
    instrumentations' span processor on the same provider, the call is still counted once."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gpuledger.configure(
        ledger=str(tmp_path / "l.db"),
        platform="runpod",
        gpu="H100",
        clock=clock,
        tracer_provider=provider,
        metrics=False,
        gpu_metering="off",
        strict=True,
    )
    gpuledger.instrument()
    try:

        @gpuledger.traced_handler
        def handler(job: dict[str, Any]) -> None:
            with gpuledger.external_call("db.query", target="postgresql://db:5432"):
                clock.advance(0.2)
                raise TimeoutError("no answer")

        with pytest.raises(TimeoutError):
            handler({"id": "x", "input": {}})
        assert gpuledger.flush(5)
    finally:
        gpuledger.uninstrument()
    (client,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert client.status.status_code is StatusCode.ERROR
    assert (client.attributes or {})["error.type"] == "TimeoutError"
    with open_ledger(str(tmp_path / "l.db"), create=False) as ledger:
        (record,) = ledger.read()
    assert record.external_calls == 1
    assert (record.external_targets or {})["postgresql://db:5432"]["errors"] == 1


def test_unmeasured_stays_unknown(tmp_path: Path, clock: FakeClock) -> None:
    """Nothing counts calls in this process: the fields are None (unknown), not 0."""
    import gpuledger._external as calls_state

    calls_state._state["measured"] = False
    gpuledger.configure(
        ledger=str(tmp_path / "l.db"), clock=clock, exporters="none", gpu_metering="off"
    )

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        clock.advance(0.1)

    handler({"id": "x", "input": {}})
    assert gpuledger.flush(5)
    with open_ledger(str(tmp_path / "l.db"), create=False) as ledger:
        (record,) = ledger.read()
    assert record.external_calls is None
    assert record.external_wait_seconds is None
    json.dumps(record.to_dict())


def test_external_metrics_by_target(tmp_path: Path, clock: FakeClock) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    gpuledger.configure(
        ledger=str(tmp_path / "l.db"),
        clock=clock,
        exporters="none",
        gpu_metering="off",
        meter_provider=MeterProvider(metric_readers=[reader]),
        strict=True,
    )

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        for _ in range(2):
            with gpuledger.external_call("db.query", target="postgresql://db:5432"):
                clock.advance(0.25)

    handler({"id": "a", "input": {}})
    handler({"id": "b", "input": {}})
    assert gpuledger.flush(5)
    data = reader.get_metrics_data()
    points = {
        metric.name: list(metric.data.data_points)
        for resource in (data.resource_metrics if data else [])
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    (calls_point,) = points["gpuledger.external.calls"]
    (wait_point,) = points["gpuledger.external.wait"]
    assert calls_point.value == 4
    assert wait_point.value == pytest.approx(1.0)
    assert wait_point.attributes["gpuledger.external.target"] == "postgresql://db:5432"


# --- databases and object stores (real servers from tests/support/services.py) ------------------


def test_redis_postgres_and_s3_are_targets_of_their_own(
    calls: Calls, redis_server: tuple[str, int], postgres_db: str, s3_endpoint: str
) -> None:
    import boto3
    import psycopg
    import redis

    from .support.services import S3_CLIENT_KWARGS

    host, port = redis_server
    cache = redis.Redis(host=host, port=port)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **S3_CLIENT_KWARGS)
    s3.create_bucket(Bucket="gpuledger-calls")  # outside any invocation: not counted

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> str:
        cache.set("prompt:1", "cached")
        cached = cache.get("prompt:1")
        with psycopg.connect(postgres_db) as connection:
            connection.execute("SELECT pg_sleep(0.05)")
            (value,) = connection.execute("SELECT 41 + 1").fetchone() or (None,)
        s3.put_object(Bucket="gpuledger-calls", Key="out.txt", Body=b"result")
        body = s3.get_object(Bucket="gpuledger-calls", Key="out.txt")["Body"].read()
        return f"{cached!r} {value} {body!r}"

    assert handler({"id": "stores", "input": {}}) == "b'cached' 42 b'result'"
    record = calls.record()
    targets = record.external_targets or {}
    assert targets[f"redis://{host}:{port}"]["calls"] == 2
    postgres = next(entry for target, entry in targets.items() if target.startswith("postgresql"))
    assert postgres["calls"] >= 2
    assert postgres["wait_s"] >= 0.05  # the pg_sleep
    # put + get, not the urllib3 calls beneath them; the botocore instrumentation names the
    # service, not the bucket (aws.s3.bucket is not set for S3 calls)
    assert targets["aws:s3"]["calls"] == 2
    assert record.external_calls == sum(int(entry["calls"]) for entry in targets.values())
    _check_against_spans(record, calls.client_spans())


def test_a_failing_database_call_is_recorded(calls: Calls, closed_port: int) -> None:
    import redis

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> str:
        try:
            redis.Redis(host="127.0.0.1", port=closed_port, socket_connect_timeout=1).get("k")
        except redis.ConnectionError:
            return "fell back"
        return "cached"

    assert handler({"id": "down", "input": {}}) == "fell back"
    record = calls.record()
    targets = record.external_targets or {}
    (entry,) = targets.values()
    assert entry["errors"] == entry["calls"] >= 1


def test_nested_client_spans_are_one_call(calls: Calls) -> None:
    """A CLIENT span inside another (an SDK over its HTTP library) is the same wait, once."""
    agent_provider = calls_module._tracer_provider()
    tracer = agent_provider.get_tracer("test")

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        attributes = {"server.address": "api.example", "server.port": 443}
        with (
            tracer.start_as_current_span("outer", kind=SpanKind.CLIENT, attributes=attributes),
            tracer.start_as_current_span("inner", kind=SpanKind.CLIENT),
        ):
            time.sleep(0.01)

    handler({"id": "nested", "input": {}})
    record = calls.record()
    assert record.external_calls == 1
    assert list(record.external_targets or {}) == ["api.example"]


def test_a_call_that_ended_before_close_counts_though_the_clocks_disagree() -> None:
    """The record's end is its start plus a ``perf_counter`` duration; a span's end is wall
    time. When the wall clock runs ahead of it, the last call of a handler can read as ending
    after the record's end: it still ended inside the invocation (before the close read the
    wall clock), so it is counted, clipped to the end; one that ended after the close is not."""
    start, end, close = 1_000_000, 2_000_000, 2_000_050
    summary = summarise(
        [
            (1_100_000, 1_500_000, "db:5432", "SELECT", "ok", None),
            (1_900_000, 2_000_040, "api:443", "GET", "500", None),  # 40 ns past end, before close
            (1_950_000, 2_000_060, "api:443", "GET", "ok", None),  # after close: left behind
        ],
        start,
        end,
        close,
    )
    assert summary.calls == 2
    assert summary.errors == 1
    assert summary.targets["api:443"]["call_s"] == (end - 1_900_000) / 1e9
    assert summary.call_seconds == (400_000 + 100_000) / 1e9
    without_horizon = summarise([(1_900_000, 2_000_040, "api:443", "GET", "ok", None)], start, end)
    assert without_horizon.calls == 0
