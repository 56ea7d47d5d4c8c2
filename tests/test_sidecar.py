"""`gpuledger sidecar`: the receiver, the spool, the ledger and OTLP consumers, the watcher and
the drain, in-process and as a real process, against a small OTLP/HTTP receiver that decodes
what it gets and can be told to fail."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.trace import SpanKind, StatusCode

from gpuledger import ConfigError, InvocationRecord
from gpuledger._pricing import default_catalogue
from gpuledger.cli._main import main
from gpuledger.exporters._records import record_resource, record_to_span, span_ids
from gpuledger.sidecar._server import Sidecar, SidecarError, process_alive, process_start
from gpuledger.testing import make_record as invocation_record

from .conftest import FakeClock
from .support.sidecars import in_process_sidecars

SECOND_NS = 1_000_000_000


# --- helpers ---------------------------------------------------------------------------------


def make_record(index: int = 0, **overrides: Any) -> dict[str, Any]:
    """A finished record as the agent sends it (``to_dict``), unique per call."""
    record = invocation_record(
        duration_s=0.5,
        start_ns=time.time_ns() - 60 * SECOND_NS + index * 1000,
        invocation_id=f"job-{index}",
        endpoint="ep-1",
        worker_id="w-1",
        region="EU-RO-1",
        gpu_model="H100",
        user_id="alice",
        tags={"model": "llama"},
        input_tokens=12,
        output_tokens=34,
        cost_usd=0.0002,
        external_calls=1,
        external_call_seconds=0.1,
        external_wait_seconds=0.1,
        external_targets={"api.example.com:443": {"calls": 1, "call_s": 0.1, "wait_s": 0.1}},
    )
    values = record.to_dict()
    values.update(overrides)
    return values


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One HTTP request on a fresh connection; the answer as JSON where it is JSON."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(data)
    return response.status, data.decode()


def post(url: str, path: str, payload: Any, headers: dict[str, str] | None = None) -> Any:
    """POST ``payload`` as JSON; returns ``(status, answer)``."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(url, "POST", path, body, {"Content-Type": "application/json", **(headers or {})})


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``condition`` until it is truthy (returned) or ``timeout`` passes (fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def ledger_rows(path: Path) -> list[dict[str, Any]]:
    """Every ledger row, as a dict, in start order ([] before the ledger exists)."""
    if not path.exists():
        return []
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM invocations ORDER BY rowid")]
    except sqlite3.OperationalError:
        return []  # the sidecar is creating the schema
    finally:
        connection.close()


def wait_for_rows(path: Path, count: int) -> list[dict[str, Any]]:
    """The ledger's rows once there are ``count`` of them."""

    def rows() -> list[dict[str, Any]] | None:
        found = ledger_rows(path)
        return found if len(found) == count else None

    result: list[dict[str, Any]] = wait_for(f"{count} ledger rows", rows)
    return result


def metric_value(text: str, name: str) -> float:
    """One sample's value from a Prometheus exposition (``name`` with its labels, if any)."""
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {name} in\n{text}")


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


class FakeOtlp:
    """An OTLP/HTTP receiver: decodes trace and metric requests (protobuf), answers 200, or
    503 while ``failing``. ``spans`` are in arrival order."""

    def __init__(self) -> None:
        self.failing = False
        self.spans: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.failed_requests = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if fake.failing:
                    with fake.lock:
                        fake.failed_requests += 1
                    self._answer(503, b"")
                    return
                if self.path == "/v1/traces":
                    fake._take_traces(body)
                    answer = trace_service_pb2.ExportTraceServiceResponse()
                else:
                    fake._take_metrics(body)
                    answer = metrics_service_pb2.ExportMetricsServiceResponse()
                self._answer(200, answer.SerializeToString())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _take_traces(self, body: bytes) -> None:
        message = trace_service_pb2.ExportTraceServiceRequest()
        message.ParseFromString(body)
        with self.lock:
            for resource_spans in message.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            {
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "name": span.name,
                                "kind": span.kind,
                                "start": span.start_time_unix_nano,
                                "end": span.end_time_unix_nano,
                                "status": span.status.code,
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                                "resource": resource,
                                "scope": scope_spans.scope.name,
                            }
                        )

    def _take_metrics(self, body: bytes) -> None:
        message = metrics_service_pb2.ExportMetricsServiceRequest()
        message.ParseFromString(body)
        with self.lock:
            for resource_metrics in message.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        kind = metric.WhichOneof("data")
                        points = getattr(metric, kind).data_points
                        self.metrics.append({"name": metric.name, "points": list(points)})

    def span_count(self) -> int:
        with self.lock:
            return len(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def otlp() -> Iterator[FakeOtlp]:
    """A fake OTLP/HTTP receiver on 127.0.0.1."""
    fake = FakeOtlp()
    yield fake
    fake.close()


@pytest.fixture
def make_sidecar(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """Start in-process sidecars (a watcher thread each, every second) with a spool and ledger in
    ``tmp_path``; all are stopped at the end."""
    with in_process_sidecars(tmp_path, watch_interval_s=1.0) as make:
        yield make


# --- the receiver ----------------------------------------------------------------------------


def test_records_land_in_the_ledger_exactly_once(
    make_sidecar: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """Acknowledged records reach the ledger once; the same batch sent again is all duplicates,
    before and after the spool delivered and deleted it."""
    sidecar = make_sidecar()
    records = [make_record(i) for i in range(5)]
    assert post(sidecar.url, "/v1/records", {"records": records}) == (
        200,
        {"accepted": 5, "duplicates": 0},
    )
    assert post(sidecar.url, "/v1/records", {"records": records[:3]}) == (
        200,
        {"accepted": 0, "duplicates": 3},
    )
    rows = wait_for_rows(tmp_path / "ledger.db", 5)
    assert [row["record_id"] for row in rows] == [record["record_id"] for record in records]
    assert rows[0]["tags"] == '{"model":"llama"}'
    assert rows[0]["external_targets"] is not None
    wait_for("the spool to empty", lambda: sidecar.health()[1]["spooled"] == 0)
    # Delivered and deleted from the spool: still a duplicate.
    assert post(sidecar.url, "/v1/records", {"records": records}) == (
        200,
        {"accepted": 0, "duplicates": 5},
    )
    assert len(ledger_rows(tmp_path / "ledger.db")) == 5


_MISSING = object()


def _bad(index: int, field: str, value: Any) -> dict[str, Any]:
    """Two records, one of them with ``field`` set to ``value`` (or removed: ``_MISSING``)."""
    records = [make_record(0), make_record(1)]
    if value is _MISSING:
        del records[index][field]
    else:
        records[index][field] = value
    return {"records": records}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_bad(1, "start_ns", "1"), "records[1].start_ns: expected an integer, got a string"),
        (_bad(0, "start_ns", 1.5), "records[0].start_ns: expected an integer, got a number"),
        (_bad(0, "start_ns", True), "records[0].start_ns: expected an integer, got a boolean"),
        (_bad(0, "handler", _MISSING), "records[0].handler: missing (required)"),
        (_bad(0, "record_id", None), "records[0].record_id: expected a string, got null"),
        (_bad(0, "record_id", ""), "records[0].record_id: must be 1 to 256 characters"),
        (
            _bad(1, "outcome", "exploded"),
            "records[1].outcome: expected one of ok, error, timeout, killed, cancelled, rejected",
        ),
        (_bad(0, "end_ns", 2**70), "records[0].end_ns: integer out of range (64-bit signed)"),
        (_bad(0, "end_ns", 0), "records[0].end_ns: before start_ns"),
        (_bad(0, "cold", "yes"), "records[0].cold: expected true or false, got a string"),
        (_bad(0, "tags", {"a": 1}), "records[0].tags.a: expected a string, got an integer"),
        (_bad(0, "tags", []), "records[0].tags: expected an object, got a list"),
        (_bad(0, "gpu_count", -1), "records[0].gpu_count: must not be negative"),
        (_bad(0, "handler", "a\x00b"), "records[0].handler: contains a NUL character"),
        (
            _bad(0, "external_targets", {"h": {"calls": "1"}}),
            "records[0].external_targets.h.calls: expected a number, got a string",
        ),
        ({"records": {}}, "records: expected a list, got an object"),
        ({"starts": []}, "body: no 'records' list"),
        ({"records": ["x"]}, "records[0]: expected an object, got a string"),
        ([], 'body: expected a JSON object {"records": [...]}, got a list'),
        (
            json.dumps(_bad(0, "duration_s", math.nan)).encode(),
            "invalid JSON: NaN is not a JSON number",
        ),
        (
            json.dumps(_bad(0, "duration_s", 0.25)).replace("0.25", "1e999").encode(),
            "records[0].duration_s: expected a finite number",
        ),
        (
            json.dumps(_bad(0, "handler", "x")).replace('"x"', '"\\ud800"').encode(),
            "records[0].handler: not valid Unicode (a lone surrogate escape)",
        ),
        (b'{"records": [\xff]}', "body is not valid UTF-8 (byte 13)"),
        (b'{"records": [', "invalid JSON: Expecting value: line 1 column 14 (char 13)"),
        (b"[" * 100_000, "invalid JSON: nested too deeply"),
    ],
)
def test_invalid_bodies_are_refused_whole_with_the_reason(
    make_sidecar: Callable[..., Sidecar], tmp_path: Path, body: Any, reason: str
) -> None:
    """A bad request is a 400 naming what is wrong and where, and nothing of it is spooled."""
    sidecar = make_sidecar(watch_interval_s=None)
    status, answer = post(sidecar.url, "/v1/records", body)
    assert (status, answer) == (400, {"error": reason})
    assert sidecar.health()[1]["spooled"] == 0
    assert 'gpuledger_sidecar_requests_rejected_total{code="400"} 1' in sidecar.metrics_text()


def test_unknown_keys_are_ignored(make_sidecar: Callable[..., Sidecar], tmp_path: Path) -> None:
    """A key this version does not know (a newer agent's field) is dropped, not refused."""
    sidecar = make_sidecar()
    record = make_record(0, field_of_the_future={"x": [1, 2]})
    assert post(sidecar.url, "/v1/records", {"records": [record]})[0] == 200
    rows = wait_for("the ledger row", lambda: ledger_rows(tmp_path / "ledger.db"))
    assert rows[0]["record_id"] == record["record_id"]


def test_http_statuses(make_sidecar: Callable[..., Sidecar]) -> None:
    """401 without the token (but /healthz is open), 413 over the body limit without reading
    it, 415 for another content type, 411 without a length, 404 and 405."""
    sidecar = make_sidecar(token="s3cret", max_body=2048)
    url = sidecar.url
    body = {"records": [make_record()]}
    auth = {"Authorization": "Bearer s3cret"}
    assert post(url, "/v1/records", body)[0] == 401
    assert post(url, "/v1/records", body, {"Authorization": "Bearer wrong"})[0] == 401
    assert post(url, "/v1/records", body, {"Authorization": "s3cret"})[0] == 401
    assert request(url, "GET", "/metrics")[0] == 401
    assert request(url, "GET", "/healthz")[0] == 200
    assert post(url, "/v1/records", body, auth) == (200, {"accepted": 1, "duplicates": 0})
    assert request(url, "GET", "/metrics", headers=auth)[0] == 200

    # The client claims 100 MB and sends nothing: the answer comes at once from the headers.
    connection = http.client.HTTPConnection(*sidecar.address, timeout=5)
    connection.putrequest("POST", "/v1/records")
    for name, value in {**auth, "Content-Type": "application/json"}.items():
        connection.putheader(name, value)
    connection.putheader("Content-Length", str(100_000_000))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"] == (
        "body of 100000000 bytes is over the limit of 2048"
    )
    connection.close()

    connection = http.client.HTTPConnection(*sidecar.address, timeout=5)
    connection.putrequest("POST", "/v1/records")
    for name, value in {**auth, "Content-Type": "application/json"}.items():
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())) == (
        411,
        {"error": "Content-Length required"},
    )
    connection.close()

    status, answer = request(
        url, "POST", "/v1/records", b"{}", {**auth, "Content-Type": "text/plain"}
    )
    assert (status, answer) == (
        415,
        {"error": "expected Content-Type: application/json, got 'text/plain'"},
    )
    ok_charset = {**auth, "Content-Type": "application/json; charset=utf-8"}
    assert request(url, "POST", "/v1/records", b'{"records": []}', ok_charset)[0] == 200
    latin = {**auth, "Content-Type": "application/json; charset=latin-1"}
    assert request(url, "POST", "/v1/records", b'{"records": []}', latin)[0] == 415
    assert request(url, "GET", "/v2/records", headers=auth) == (
        404,
        {"error": "no such path '/v2/records'"},
    )
    assert request(url, "GET", "/v1/records", headers=auth) == (
        405,
        {"error": "/v1/records takes POST"},
    )
    assert post(url, "/healthz", {}, auth)[0] == 405
    assert request(url, "PUT", "/v1/starts", b"{}", auth)[0] == 405


def test_healthz_and_metrics(make_sidecar: Callable[..., Sidecar], tmp_path: Path) -> None:
    """/healthz counts what is spooled and open; /metrics has every counter and gauge."""
    sidecar = make_sidecar(watch_interval_s=None)
    records = [make_record(i) for i in range(3)]
    post(sidecar.url, "/v1/records", {"records": records})
    post(sidecar.url, "/v1/records", {"records": records[:1]})
    post(sidecar.url, "/v1/records", {"records": [make_record(9, start_ns="x")]})
    start = _start(os.getpid())
    assert post(sidecar.url, "/v1/starts", {"starts": [start]}) == (
        200,
        {"accepted": 1, "duplicates": 0},
    )
    wait_for_rows(tmp_path / "ledger.db", 3)
    wait_for("the spool to empty", lambda: sidecar.health()[1]["spooled"] == 0)
    assert request(sidecar.url, "GET", "/healthz") == (
        200,
        {
            "status": "ok",
            "spooled": 0,
            "pending_export": 0,
            "pending_ledger": 0,
            "open_invocations": 1,
        },
    )
    status, text = request(sidecar.url, "GET", "/metrics")
    assert status == 200
    expected = {
        "gpuledger_sidecar_records_received_total": 4,
        "gpuledger_sidecar_records_duplicate_total": 1,
        "gpuledger_sidecar_records_rejected_total": 1,
        "gpuledger_sidecar_records_exported_total": 0,
        "gpuledger_sidecar_export_failures_total": 0,
        "gpuledger_sidecar_ledger_written_total": 3,
        'gpuledger_sidecar_killed_total{outcome="killed"}': 0,
        "gpuledger_sidecar_spool_records": 0,
        "gpuledger_sidecar_pending_export": 0,
        "gpuledger_sidecar_pending_ledger": 0,
        "gpuledger_sidecar_open_invocations": 1,
        "gpuledger_sidecar_spool_write_failures_total": 0,
    }
    for name, value in expected.items():
        assert metric_value(text, name) == value, name
    assert metric_value(text, "gpuledger_sidecar_spool_bytes") > 0
    assert "# TYPE gpuledger_sidecar_records_received_total counter" in text
    assert "# TYPE gpuledger_sidecar_spool_records gauge" in text


# --- fuzzing ---------------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
_hostile_values = (
    _json
    | st.sampled_from([math.nan, math.inf, -math.inf, 2**64, -(2**63) - 1, 10**400, "\x00", ""])
    | st.integers(min_value=-(2**80), max_value=2**80)
)


@st.composite
def _records(draw: st.DrawFn) -> dict[str, Any]:
    record = make_record(draw(st.integers(0, 1000)), record_id=draw(st.uuids()).hex)
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from([*record, "unknown_key"]))
        if draw(st.booleans()):
            record.pop(field, None)
        else:
            record[field] = draw(_hostile_values)
    return record


def _dumps_loose(payload: Any) -> bytes:
    try:
        return json.dumps(payload).encode()  # NaN and Infinity as JS literals
    except (ValueError, OverflowError):
        return b"{}"


_bodies = st.one_of(
    st.lists(_records(), max_size=3).map(lambda records: _dumps_loose({"records": records})),
    _json.map(_dumps_loose),
    st.binary(max_size=48),
    st.binary(max_size=24).map(lambda raw: b'{"records": [{"record_id": "' + raw + b'"}]}'),
    st.integers(1, 5000).map(lambda depth: b'{"records": [' + b"[" * depth + b"]" * depth + b"]}"),
    st.integers(1, 3000).map(lambda depth: b'{"x":' * depth + b"1" + b"}" * depth),
    st.sampled_from([b"", b"null", b'{"records": null}', b"\xef\xbb\xbf{}", b'"\\ud800"']),
)


def test_fuzzed_bodies_get_a_4xx_with_a_reason_or_a_200(
    make_sidecar: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """Random, hostile and malformed bodies never crash the receiver or get a 5xx, and every
    record accepted along the way is delivered, once."""
    sidecar = make_sidecar(watch_interval_s=None)
    accepted: set[str] = set()

    valid = json.dumps({"records": [make_record(0)]}).encode()

    @settings(max_examples=150, deadline=None, database=None)
    @given(body=_bodies, content_type=st.sampled_from(["application/json"] * 5 + ["text/json"]))
    @example(body=valid, content_type="application/json")  # a batch to deliver, whatever is drawn
    def one_body(body: bytes, content_type: str) -> None:
        status, answer = request(
            sidecar.url, "POST", "/v1/records", body, {"Content-Type": content_type}
        )
        if status == 200:
            accepted.update(record["record_id"] for record in json.loads(body)["records"])
        else:
            assert 400 <= status < 500, (status, answer)
            assert isinstance(answer, dict)
            assert isinstance(answer["error"], str) and answer["error"]

    one_body()
    assert accepted, "the fuzz never produced a valid batch"
    assert request(sidecar.url, "GET", "/healthz")[0] == 200

    def delivered() -> bool:
        return accepted <= {row["record_id"] for row in ledger_rows(tmp_path / "ledger.db")}

    wait_for("every accepted record in the ledger", delivered)
    rows = ledger_rows(tmp_path / "ledger.db")
    assert len(rows) == len({row["record_id"] for row in rows}) == len(accepted)


# --- OTLP ------------------------------------------------------------------------------------


def test_record_to_span_is_the_agents_span_with_ids_from_the_record() -> None:
    """SERVER span named after the handler, record times, the agent's attributes, ERROR status
    for a failure, and the same ids every time for the same record."""
    values = make_record(0, outcome="error", error_type="ValueError", gpu_count=2, cold=True)
    record = InvocationRecord.from_dict(values)
    span = record_to_span(record, record_resource(record))
    again = record_to_span(record, record_resource(record))
    assert span.context is not None and again.context is not None
    assert (span.context.trace_id, span.context.span_id) == span_ids(record.record_id)
    assert (again.context.trace_id, again.context.span_id) == span_ids(record.record_id)
    assert span.name == "predict"
    assert span.kind is SpanKind.SERVER
    assert (span.start_time, span.end_time) == (record.start_ns, record.end_ns)
    assert span.status.status_code is StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "ValueError"
    assert attributes["faas.invocation_id"] == "job-0"
    assert attributes["faas.trigger"] == "pubsub"
    assert attributes["faas.coldstart"] is True
    assert attributes["enduser.id"] == "alice"
    assert attributes["gen_ai.usage.input_tokens"] == 12
    assert attributes["gpuledger.tag.model"] == "llama"
    assert attributes["gpuledger.cost.total"] == 0.0002
    assert attributes["gpuledger.external.targets"] == ("api.example.com:443",)
    assert attributes["gpuledger.external.target_calls"] == (1,)
    assert attributes["gpuledger.external.target_waits"] == (0.1,)
    resource = dict(span.resource.attributes)
    assert resource["service.name"] == "svc"
    assert resource["cloud.platform"] == "runpod_serverless"
    assert resource["faas.instance"] == "w-1"
    assert resource["gpuledger.gpu.count"] == 2
    assert record_resource(record) is span.resource  # one object per worker: batches group
    assert span_ids("a") != span_ids("b")


def test_otlp_export_delivers_everything_once_in_order(
    make_sidecar: Callable[..., Sidecar], otlp: FakeOtlp
) -> None:
    """Every record is exported once, in the order received, as the span record_to_span makes,
    and the invocation metrics follow them."""
    sidecar = make_sidecar(otlp_endpoint=otlp.endpoint)
    sent: list[dict[str, Any]] = []
    for batch in range(4):
        records = [make_record(batch * 100 + i) for i in range(50)]
        sent.extend(records)
        assert post(sidecar.url, "/v1/records", {"records": records})[0] == 200
    wait_for("200 spans", lambda: otlp.span_count() >= 200)
    wait_for("the spool to empty", lambda: sidecar.health()[1]["spooled"] == 0)
    expected = [f"{span_ids(r['record_id'])[1]:016x}" for r in sent]
    assert [span["span_id"] for span in otlp.spans] == expected
    first = otlp.spans[0]
    assert first["trace_id"] == f"{span_ids(sent[0]['record_id'])[0]:032x}"
    assert first["name"] == "predict"
    assert first["kind"] == 2  # SPAN_KIND_SERVER
    assert first["start"] == sent[0]["start_ns"]
    assert first["attributes"]["faas.invocation_id"] == "job-0"
    assert first["resource"]["service.name"] == "svc"
    assert first["scope"] == "gpuledger"
    sidecar.stop(2.0)  # flushes the metrics
    invocations = [m for m in otlp.metrics if m["name"] == "faas.invocations"]
    assert sum(point.as_int for m in invocations for point in m["points"]) == 200


def test_the_standard_otlp_environment_is_used(
    make_sidecar: Callable[..., Sidecar], otlp: FakeOtlp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --otlp-endpoint, OTEL_EXPORTER_OTLP_ENDPOINT says where to export; with neither,
    the exporter is off and the ledger alone gets the records."""
    assert Sidecar(listen="127.0.0.1:0").otlp is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint)
    sidecar = make_sidecar()
    assert sidecar.otlp is not None
    assert sidecar.otlp.description == f"{otlp.endpoint} (http/protobuf, from the environment)"
    post(sidecar.url, "/v1/records", {"records": [make_record()]})
    wait_for("the span", lambda: otlp.span_count() == 1)


def test_otlp_outage_loses_nothing_and_doubles_nothing(
    make_sidecar: Callable[..., Sidecar], otlp: FakeOtlp
) -> None:
    """The receiver fails (503) for a while during traffic, then comes back: every record
    arrives, each exactly once."""
    sidecar = make_sidecar(otlp_endpoint=otlp.endpoint)
    sent: list[str] = []
    for batch in range(12):
        if batch == 3:
            otlp.failing = True
        if batch == 9:
            wait_for("failed exports", lambda: otlp.failed_requests >= 3)
            otlp.failing = False
        records = [make_record(batch * 100 + i) for i in range(25)]
        sent.extend(record["record_id"] for record in records)
        assert post(sidecar.url, "/v1/records", {"records": records})[0] == 200
    wait_for("300 spans", lambda: otlp.span_count() >= len(sent))
    wait_for("the spool to empty", lambda: sidecar.health()[1]["spooled"] == 0)
    span_id_list = [span["span_id"] for span in otlp.spans]
    assert len(span_id_list) == len(set(span_id_list)) == len(sent)
    assert span_id_list == [f"{span_ids(record_id)[1]:016x}" for record_id in sent]
    text = sidecar.metrics_text()
    assert metric_value(text, "gpuledger_sidecar_export_failures_total") >= 3
    assert metric_value(text, "gpuledger_sidecar_records_exported_total") == len(sent)


def test_a_redirect_is_not_a_delivery(make_sidecar: Callable[..., Sidecar]) -> None:
    """The SDK exporter calls a 3xx answer a success; the sidecar does not, and retries."""
    answers = [308, 308, 200]
    got: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            status = answers.pop(0) if answers else 200
            got.append(status)
            self.send_response(status)
            self.send_header("Location", "https://elsewhere.invalid/v1/traces")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        sidecar = make_sidecar(otlp_endpoint=endpoint)
        post(sidecar.url, "/v1/records", {"records": [make_record()]})
        wait_for("the export", lambda: sidecar.health()[1]["pending_export"] == 0)
        assert got == [308, 308, 200]
        assert metric_value(sidecar.metrics_text(), "gpuledger_sidecar_export_failures_total") == 2
    finally:
        server.shutdown()
        server.server_close()


# --- killed and timed-out invocations --------------------------------------------------------


def _start(pid: int, **overrides: Any) -> dict[str, Any]:
    start = {
        "record_id": uuid.uuid4().hex,
        "invocation_id": "job-42",
        "handler": "predict",
        "start_ns": time.time_ns(),
        "pid": pid,
        "service_name": "svc",
        "platform": "runpod",
        "endpoint": "ep-1",
        "worker_id": "w-1",
        "region": "EU-RO-1",
        "gpu_model": "H100",
        "gpu_count": 2,
        "timeout_s": None,
        "user_id": "bob",
        "tenant": "team-b",
    }
    start.update(overrides)
    return start


_WORKER = """
import http.client, json, os, sys, time
start = json.loads(sys.argv[2])
start["pid"] = os.getpid()
host, port = sys.argv[1].rsplit(":", 1)
connection = http.client.HTTPConnection(host, int(port), timeout=10)
connection.request("POST", "/v1/starts", body=json.dumps({"starts": [start]}),
                   headers={"Content-Type": "application/json"})
assert connection.getresponse().status == 200
print("started", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_killed_worker_is_recorded_as_killed(
    make_sidecar: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """A worker that sent its start notice and was SIGKILLed becomes a `killed` record with the
    start's identity, priced, once, marked as the sidecar's; a late real record replaces it
    (tests/test_superseded.py), and is then a duplicate."""
    sidecar = make_sidecar(grace_s=0.2, watch_interval_s=0.05)
    start = _start(0)
    address = sidecar.url.removeprefix("http://")
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, address, json.dumps(start)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "started"
        assert sidecar.health()[1]["open_invocations"] == 1
        killed_after_ns = time.time_ns()
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait(10)
    rows = wait_for("the killed record", lambda: ledger_rows(tmp_path / "ledger.db"))
    (row,) = rows
    assert row["outcome"] == "killed"
    assert row["error_type"] is None
    assert row["recorded_by"] == "sidecar"
    for field in (
        "record_id",
        "invocation_id",
        "handler",
        "service_name",
        "platform",
        "endpoint",
        "worker_id",
        "region",
        "gpu_model",
        "gpu_count",
        "user_id",
        "tenant",
        "start_ns",
    ):
        assert row[field] == start[field], field
    assert killed_after_ns <= row["end_ns"] <= time.time_ns()
    assert row["duration_s"] == pytest.approx((row["end_ns"] - row["start_ns"]) / 1e9)
    assert row["billed_gpu_seconds"] == pytest.approx(row["duration_s"] * 2)
    expected = default_catalogue().price(
        "runpod", "H100", billed_gpu_seconds=row["billed_gpu_seconds"], gpu_count=2
    )
    assert expected is not None
    assert row["cost_usd"] == pytest.approx(expected.total_usd)
    assert row["cost_source"] == expected.source
    assert sidecar.health()[1]["open_invocations"] == 0
    assert (
        metric_value(sidecar.metrics_text(), 'gpuledger_sidecar_killed_total{outcome="killed"}')
        == 1
    )
    late = make_record(0, record_id=start["record_id"])
    assert post(sidecar.url, "/v1/records", {"records": [late]}) == (
        200,
        {"accepted": 1, "duplicates": 0},
    )
    wait_for(
        "the real record in the killed one's place",
        lambda: [row["outcome"] for row in ledger_rows(tmp_path / "ledger.db")] == ["ok"],
    )
    assert post(sidecar.url, "/v1/records", {"records": [late]}) == (
        200,
        {"accepted": 0, "duplicates": 1},
    )


_AGENT_WORKER = """
import sys, time
import gpuledger
gpuledger.configure(sidecar=sys.argv[1], platform="runpod", gpu="H100", gpu_metering="off",
                    service_name="e2e", ledger=sys.argv[2])

@gpuledger.traced_handler
def handler(job):
    print("running", flush=True)
    if job["input"].get("hang"):
        time.sleep(60)
    return {"ok": True}

handler({"id": "job-done", "input": {}})
handler({"id": "job-killed", "input": {"hang": True}})
"""


@pytest.mark.slow
def test_a_real_agent_worker_then_its_kill(
    make_sidecar: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """The in-process agent (GPULEDGER_SIDECAR) sends its records and start notices here: a
    finished invocation lands in the sidecar's ledger, and the one running when the worker is
    SIGKILLed is recorded as killed, nothing in the worker's own ledger."""
    sidecar = make_sidecar(grace_s=0.2, watch_interval_s=0.05)
    local = tmp_path / "worker-local.db"
    worker = subprocess.Popen(
        [sys.executable, "-c", _AGENT_WORKER, sidecar.url, str(local)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "running"
        assert worker.stdout.readline().strip() == "running"

        def hanging() -> bool:
            # job-done's record closes its start (if the agent sent one: it need not, when the
            # end is in the same batch), so the one open invocation is then job-killed.
            text = sidecar.metrics_text()
            return (
                metric_value(text, "gpuledger_sidecar_records_received_total") == 1
                and metric_value(text, "gpuledger_sidecar_open_invocations") == 1
            )

        wait_for("job-done's record and job-killed's start notice", hanging)
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait(10)
    rows = wait_for_rows(tmp_path / "ledger.db", 2)
    by_invocation = {row["invocation_id"]: row for row in rows}
    assert by_invocation["job-done"]["outcome"] == "ok"
    killed = by_invocation["job-killed"]
    assert killed["outcome"] == "killed"
    assert (killed["handler"], killed["service_name"]) == ("handler", "e2e")
    assert (killed["platform"], killed["gpu_model"]) == ("runpod", "H100")
    assert killed["cost_usd"] is not None
    # Priced by the worker's own rules, frozen at its start (not the sidecar's catalogue), and
    # billed with its worker: the same billing worker, start and rules as job-done.
    done = by_invocation["job-done"]
    for field in ("billing_worker", "worker_start_ns", "billing_rules", "pricing_version"):
        assert killed[field] == done[field] is not None, field
    assert killed["cost_source"] == "worker's billing rules (frozen at its start)"
    rules = json.loads(killed["billing_rules"])
    assert killed["cost_usd"] == pytest.approx(
        float(Fraction(rules["execution_fee_usd"]))
        + float(Fraction(rules["per_gpu_second_usd"])) * killed["billed_gpu_seconds"]
    )
    assert ledger_rows(local) == []  # nothing fell back to the worker's own ledger


def test_a_record_in_time_closes_its_start(make_sidecar: Callable[..., Sidecar]) -> None:
    """The real record arriving within the grace closes the start: nothing is recorded killed."""
    clock = FakeClock(start_ns=time.time_ns())
    gone: set[int] = set()
    sidecar = make_sidecar(
        watch_interval_s=None, clock=clock, pid_alive=lambda pid, started: pid not in gone
    )
    start = _start(4242, start_ns=clock.time_ns())
    post(sidecar.url, "/v1/starts", {"starts": [start]})
    gone.add(4242)
    assert sidecar.check_open_invocations() == 0  # found gone; grace starts
    clock.advance(1.0)
    record = make_record(0, record_id=start["record_id"])
    assert post(sidecar.url, "/v1/records", {"records": [record]})[1]["accepted"] == 1
    clock.advance(5.0)
    assert sidecar.check_open_invocations() == 0
    assert sidecar.health()[1]["open_invocations"] == 0
    # A start for a record already here is a duplicate, not a new open invocation.
    assert post(sidecar.url, "/v1/starts", {"starts": [start]})[1] == {
        "accepted": 0,
        "duplicates": 1,
    }


def test_timeout_while_the_pid_lives(make_sidecar: Callable[..., Sidecar], tmp_path: Path) -> None:
    """A start older than its timeout (plus the grace) is recorded `timeout`, ending at the
    timeout, though its process still runs."""
    clock = FakeClock(start_ns=time.time_ns())
    sidecar = make_sidecar(watch_interval_s=None, clock=clock, grace_s=2.0)
    start = _start(os.getpid(), start_ns=clock.time_ns(), timeout_s=5, gpu_count=1)
    post(sidecar.url, "/v1/starts", {"starts": [start]})
    clock.advance(6.9)
    assert sidecar.check_open_invocations() == 0  # past the timeout, within the grace
    clock.advance(0.2)
    assert sidecar.check_open_invocations() == 1
    assert sidecar.check_open_invocations() == 0
    (row,) = wait_for("the timeout record", lambda: ledger_rows(tmp_path / "ledger.db"))
    assert row["outcome"] == "timeout"
    assert row["end_ns"] == start["start_ns"] + 5 * SECOND_NS
    assert row["duration_s"] == 5.0
    assert row["billed_gpu_seconds"] == 5.0
    assert row["cost_usd"] is not None
    assert (
        metric_value(sidecar.metrics_text(), 'gpuledger_sidecar_killed_total{outcome="timeout"}')
        == 1
    )


def test_process_alive_sees_zombies_and_reused_pids() -> None:
    """A zombie is dead, and so is a pid now held by a process that started later."""
    me = os.getpid()
    assert process_alive(me, process_start(me))
    assert process_alive(me, None)
    assert not process_alive(me, (process_start(me) or 0) - 1)  # the pid was reused
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_start(child.pid)
    wait_for("the child to exit", lambda: not process_alive(child.pid, started))  # a zombie
    child.wait(10)
    assert not process_alive(child.pid, started)  # reaped: no such process


def test_a_gpu_meter_fills_what_records_lack(
    make_sidecar: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """With a container-wide GPU meter, records are spooled with the GPU fields it measured
    (the meter itself is tested in test_sidecar_gpu.py); it hears of every start."""

    class FakeMeter:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def started(self, starts: list[dict[str, Any]]) -> None:
            self.seen.extend(start["record_id"] for start in starts)

        def fill(self, records: list[dict[str, Any]]) -> int:
            for record in records:
                record["busy_gpu_seconds"] = 0.125
            return len(records)

    meter = FakeMeter()
    sidecar = make_sidecar(gpu=meter, watch_interval_s=None)
    start = _start(os.getpid())
    post(sidecar.url, "/v1/starts", {"starts": [start]})
    assert meter.seen == [start["record_id"]]
    post(sidecar.url, "/v1/records", {"records": [make_record(0, record_id=start["record_id"])]})
    (row,) = wait_for_rows(tmp_path / "ledger.db", 1)
    assert row["busy_gpu_seconds"] == 0.125


def test_start_notice_validation(make_sidecar: Callable[..., Sidecar]) -> None:
    """Start notices are checked like records; pid 0 (a process group to os.kill) is refused."""
    sidecar = make_sidecar(watch_interval_s=None)
    assert post(sidecar.url, "/v1/starts", {"starts": [_start(0)]}) == (
        400,
        {"error": "starts[0].pid: expected a process id (1 or more)"},
    )
    assert post(sidecar.url, "/v1/starts", {"starts": [_start(1, timeout_s=-1)]}) == (
        400,
        {"error": "starts[0].timeout_s: must be more than 0 seconds"},
    )
    missing = _start(1)
    del missing["platform"]
    assert post(sidecar.url, "/v1/starts", {"starts": [missing]}) == (
        400,
        {"error": "starts[0].platform: missing (required)"},
    )


# --- the spool when it cannot be written -----------------------------------------------------


def test_a_full_spool_answers_503_and_keeps_what_it_acknowledged(
    make_sidecar: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """Over its size cap (SQLITE_FULL, as on a full disk) the spool refuses whole requests with
    503, counted and in /healthz; every acknowledged record still reaches the ledger."""
    sidecar = make_sidecar(max_spool_bytes=128 * 1024, watch_interval_s=None)
    acknowledged: list[str] = []
    small = [make_record(i) for i in range(5)]
    assert post(sidecar.url, "/v1/records", {"records": small})[0] == 200
    acknowledged += [record["record_id"] for record in small]
    big = [make_record(100 + i, handler="h" * 2000) for i in range(100)]
    status, answer = post(sidecar.url, "/v1/records", {"records": big})
    assert status == 503
    assert "the spool cannot be written" in answer["error"]
    assert "full" in answer["error"]
    health_status, health = request(sidecar.url, "GET", "/healthz")
    assert health_status == 503
    assert "cannot be written" in health["reason"]
    assert metric_value(sidecar.metrics_text(), "gpuledger_sidecar_spool_write_failures_total") == 1
    more = [make_record(200 + i) for i in range(5)]
    assert post(sidecar.url, "/v1/records", {"records": more})[0] == 200
    acknowledged += [record["record_id"] for record in more]
    assert request(sidecar.url, "GET", "/healthz")[0] == 200
    wait_for_rows(tmp_path / "ledger.db", 10)
    assert [row["record_id"] for row in ledger_rows(tmp_path / "ledger.db")] == acknowledged


def test_a_read_only_spool_answers_503(
    make_sidecar: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """A spool that turned read-only refuses requests with 503 until it is writable again."""
    sidecar = make_sidecar(watch_interval_s=None)
    spool = sidecar._spool
    assert spool is not None and spool._connection is not None
    spool._connection.execute("PRAGMA query_only = ON")
    status, answer = post(sidecar.url, "/v1/records", {"records": [make_record()]})
    assert status == 503
    assert "readonly" in answer["error"]
    assert post(sidecar.url, "/v1/starts", {"starts": [_start(1)]})[0] == 503
    spool._connection.execute("PRAGMA query_only = OFF")
    assert post(sidecar.url, "/v1/records", {"records": [make_record()]})[0] == 200
    wait_for_rows(tmp_path / "ledger.db", 1)


def test_one_sidecar_per_spool(make_sidecar: Callable[..., Sidecar], tmp_path: Path) -> None:
    """A second sidecar on the same spool is refused (both would deliver every record)."""
    make_sidecar()
    with pytest.raises(SidecarError, match="another gpuledger sidecar is using the spool"):
        make_sidecar()


def test_the_ledger_is_not_a_spool(tmp_path: Path) -> None:
    """Pointing --spool at a ledger is refused before anything is written to it."""
    from gpuledger.ledger import open_ledger

    open_ledger(str(tmp_path / "ledger.db")).close()
    sidecar = Sidecar(
        listen="127.0.0.1:0", spool=str(tmp_path / "ledger.db"), ledger=str(tmp_path / "other.db")
    )
    with pytest.raises(SidecarError, match="is not a gpuledger spool"):
        sidecar.start()


# --- the command, as a real process ----------------------------------------------------------


class SidecarProcess:
    """`gpuledger sidecar` in a subprocess; ``url`` from its ready line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from gpuledger.cli._main import main; main()",
                "sidecar",
                "--listen",
                "127.0.0.1:0",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.ready_line = self.process.stdout.readline()
        if not self.ready_line:
            self.process.wait(10)
            pytest.fail(f"the sidecar did not start: {self.process.stderr.read()}")  # type: ignore[union-attr]
        self.url = self.ready_line.split(" listening on ")[1].split(",")[0]

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        self.process.send_signal(signum)
        _, stderr = self.process.communicate(timeout=20)
        return self.process.returncode, stderr

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.communicate(timeout=10)


@pytest.mark.slow
def test_sigkill_after_acknowledging_then_restart_exports(otlp: FakeOtlp, tmp_path: Path) -> None:
    """Records acknowledged while the receiver was down survive a SIGKILL of the sidecar and
    are exported by the next one."""
    options = (
        "--spool",
        str(tmp_path / "spool.db"),
        "--ledger",
        str(tmp_path / "ledger.db"),
        "--otlp-endpoint",
        otlp.endpoint,
    )
    otlp.failing = True
    first = SidecarProcess(*options)
    try:
        assert f"exporting to {otlp.endpoint}/v1/traces" in first.ready_line
        records = [make_record(i) for i in range(20)]
        assert post(first.url, "/v1/records", {"records": records}) == (
            200,
            {"accepted": 20, "duplicates": 0},
        )
        wait_for("a failed export", lambda: otlp.failed_requests >= 1)
    finally:
        first.kill()
    assert otlp.span_count() == 0
    otlp.failing = False
    second = SidecarProcess(*options)
    try:
        wait_for("20 spans", lambda: otlp.span_count() >= 20)
        wait_for_rows(tmp_path / "ledger.db", 20)
    finally:
        code, _ = second.stop()
    assert code == 0
    assert sorted(span["span_id"] for span in otlp.spans) == sorted(
        f"{span_ids(record['record_id'])[1]:016x}" for record in records
    )


@pytest.mark.slow
def test_sigterm_drains_and_the_next_start_exports_the_rest(otlp: FakeOtlp, tmp_path: Path) -> None:
    """SIGTERM: stop accepting, drain for --drain-timeout, exit 0 saying what is left; the next
    start exports it."""
    options = (
        "--spool",
        str(tmp_path / "spool.db"),
        "--ledger",
        str(tmp_path / "ledger.db"),
        "--otlp-endpoint",
        otlp.endpoint,
        "--drain-timeout",
        "0.3",
    )
    otlp.failing = True
    first = SidecarProcess(*options)
    records = [make_record(i) for i in range(10)]
    try:
        assert post(first.url, "/v1/records", {"records": records})[0] == 200
    finally:
        code, stderr = first.stop()
    assert code == 0
    assert "10 record(s) left in the spool for the next start" in stderr
    assert "not_exported=10" in stderr
    otlp.failing = False
    second = SidecarProcess(*options)
    try:
        wait_for("10 spans", lambda: otlp.span_count() >= 10)
    finally:
        code, stderr = second.stop()
    assert code == 0
    assert "0 record(s) left in the spool" in stderr
    assert otlp.span_count() == 10


def test_listening_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    """A non-loopback address without a token is refused at start, naming --listen."""
    result = CliRunner().invoke(main, ["sidecar", "--listen", "0.0.0.0:0"])
    assert result.exit_code == 2
    assert "'--listen'" in result.output
    assert "needs a token" in result.output
    with pytest.raises(ConfigError, match="needs a token"):
        Sidecar(listen="0.0.0.0:0").start()
    assert not (tmp_path / "gpuledger-spool.db").exists()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--listen", "nonsense"], "--listen"),
        (["--listen", "127.0.0.1:99999"], "--listen"),
        (["--grace", "-1"], "--grace"),
        (["--drain-timeout", "nan"], "--drain-timeout"),
        (["--max-body", "0"], "--max-body"),
        (["--otlp-protocol", "carrier-pigeon"], "--otlp-protocol"),
        (["--token", " "], "--token"),
    ],
)
def test_bad_options_name_the_option(args: list[str], option: str) -> None:
    """Bad values are click errors that name the option."""
    result = CliRunner().invoke(main, ["sidecar", "--listen", "127.0.0.1:0", *args])
    assert result.exit_code == 2, result.output
    assert option in result.output


@pytest.mark.parametrize("option", ["--spool", "--ledger"])
def test_a_missing_folder_is_named_not_created(tmp_path: Path, option: str) -> None:
    """`--spool`/`--ledger` in a folder that does not exist: a usage error naming it (exit 2),
    as the agent's configure() does; before, the sidecar silently created the folder."""
    missing = tmp_path / "nonexist"
    argv = ["sidecar", "--listen", "127.0.0.1:0", "--spool", str(tmp_path / "spool.db")]
    argv += ["--ledger", str(tmp_path / "ledger.db"), option, str(missing / "x.db")]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert "does not exist" in result.output
    assert not missing.exists()


@pytest.mark.parametrize(
    ("platform", "gpu"), [("local", "H100"), ("runpod", None), ("runpod", "MadeUpGPU-9000")]
)
def test_unpriced_reasons_are_the_workers(
    make_sidecar: Callable[..., Sidecar], platform: str, gpu: str | None, tmp_path: Path
) -> None:
    """Why a record has no price reads the same from the sidecar (records it prices itself:
    killed and timed-out invocations) as from the worker; the sidecar called a 'local' worker's
    invocation "no local price for GPU 'H100'"."""
    import gpuledger

    sidecar = make_sidecar()
    pricer, reason = sidecar._pricer(platform, gpu)
    agent = gpuledger.configure(
        platform=platform, gpu=gpu, exporters="none", ledger=tmp_path / "l.db", gpu_metering="off"
    )
    assert pricer is None
    assert reason == agent.cost_source


def test_each_worker_is_its_own_service_instance() -> None:
    """The sidecar exports for many workers: each record's resource names its worker as
    ``service.instance.id`` (else the billing worker), never the sidecar process's one id, under
    which a collector's Prometheus exporter would let two workers' counters overwrite each
    other. One resource object per worker still."""
    from gpuledger.testing import make_record as record  # records, not request bodies

    first = record(1, worker_id="pod-a:101", billing_worker="pod-a")
    second = record(2, worker_id="pod-b:202", billing_worker="pod-b")
    same_worker = record(3, worker_id="pod-a:101", billing_worker="pod-a")
    container_only = record(4, worker_id=None, billing_worker="pod-c")
    resources = [record_resource(r) for r in (first, second, same_worker, container_only)]
    instances = [resource.attributes["service.instance.id"] for resource in resources]
    assert instances == ["pod-a:101", "pod-b:202", "pod-a:101", "pod-c"]
    assert resources[0] is resources[2]
