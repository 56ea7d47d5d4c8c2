"""Real OpenTelemetry receivers on 127.0.0.1 for tests: rotel and Datadog's test agent.

Tests that use these assert on what a real receiver got, not on an exporter's return value. A test
module gets the fixtures from ``pytest_plugins`` in ``tests/conftest.py``. Every process listens
on free ports of 127.0.0.1 only, writes its output to a log in a temporary directory, and is
stopped by pid at teardown (SIGTERM, then SIGKILL); ``tests/support/processes.py``'s ``atexit``
safety net kills whatever is still running when the interpreter exits. Nothing global is set.

Fixtures (all session-scoped):

- ``rotel``: a ``Rotel``, the OTLP collector of the ``rotel`` package (a Rust binary shipped in
  the wheel, in the ``test`` extra) receiving OTLP over HTTP (``.http_endpoint``,
  ``http://127.0.0.1:PORT``; paths ``/v1/traces``, ``/v1/metrics``) and gRPC
  (``.grpc_endpoint``, ``127.0.0.1:PORT``), exporting nowhere (its ``blackhole`` exporter) and
  printing what it received (``--debug-log traces --debug-log metrics --debug-log-verbosity
  detailed``). ``.spans()``, ``.metrics()``, ``.wait_for_spans()``, ``.wait_for_metric()`` parse
  that output.
- ``ddagent``: a ``DDAgent``, Datadog's test agent (``ddapm-test-agent``, pinned to
  ``DDAPM_VERSION``) with its OTLP intake on ``.otlp_http_endpoint`` and ``.otlp_grpc_endpoint``
  and its APM (Datadog trace) intake on ``.base_url``. ``.traces()`` and ``.metrics()`` are its
  ``/test/session/traces`` and ``/test/session/metrics`` (OTLP as JSON); ``.clear()`` starts a new
  session. It pins an older ``opentelemetry-proto`` than the project's, so it lives in a venv of its
  own, never the project's: made once per machine under ``cache_dir()`` (``python -m venv``, then
  ``pip install ddapm-test-agent==DDAPM_VERSION``, each step time-bounded) and reused after.
- ``rotel_to_ddagent``: a ``Rotel`` that receives OTLP (HTTP and gRPC) and forwards it with its OTLP
  exporter (``--exporter otlp --otlp-exporter-protocol http``, gzip) to ``ddagent``'s OTLP HTTP
  intake, logging what it received too.

The fixtures are shared by the session: give each test its own span and metric names (or call
``.clear()`` first). Where rotel is not installed or the test agent's venv cannot be made, the
tests that need them are skipped, or fail when the ``CI`` environment variable is set.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from .processes import HOST, accepts, in_ci, log_tail, start_on_free_ports, stop
from .venvs import PYTHON_VERSION, VenvUnavailable, cached_venv

DDAPM_VERSION = "1.69.1"
"""The ``ddapm-test-agent`` release the fixture installs (its venv is keyed by it)."""

ROTEL_START_TIMEOUT_S = 15.0
DDAPM_START_TIMEOUT_S = 30.0
WAIT_TIMEOUT_S = 15.0
"""Default bound of ``wait_for_*``: rotel batches for 50 ms, then forwards (5 s timeout)."""
HTTP_TIMEOUT_S = 5.0

ROTEL_HINT = "pip install -e '.[test]' (the test extra brings rotel, an OTLP collector binary)"
DDAPM_HINT = (
    "the first run needs PyPI to make the test agent's venv "
    f"(pip install ddapm-test-agent=={DDAPM_VERSION}); "
    "GPULEDGER_TEST_CACHE picks where it is kept"
)


class ReceiverUnavailable(RuntimeError):
    """A receiver could not be installed or found; the message says what and why."""


def unavailable(what: str, hint: str) -> NoReturn:
    """Skip the test because ``what`` is missing; in CI, fail it instead (CI must not skip)."""
    if in_ci():
        pytest.fail(f"{what}, and CI is set: {hint}", pytrace=False)
    pytest.skip(f"{what}; to run these tests: {hint}")


def _poll(what: str, probe: Callable[[], Any], timeout: float, diagnose: Callable[[], str]) -> Any:
    """Call ``probe()`` every 50 ms until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {timeout:g} s\n{diagnose()}", pytrace=False)
        time.sleep(0.05)


# --- What a receiver got ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReceivedSpan:
    """A span as a receiver got it. Ids are lowercase hex; ``parent_id`` is "" for a root."""

    name: str
    kind: str  # "SPAN_KIND_SERVER", ...
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str = ""
    status: str = ""  # "STATUS_CODE_ERROR", ...; "" or "STATUS_CODE_UNSET" when unset


@dataclasses.dataclass(frozen=True)
class ReceivedPoint:
    """One data point: ``value`` for sums and gauges, ``count`` and ``sum`` for histograms."""

    attributes: dict[str, Any]
    value: float | int | None = None
    count: int | None = None
    sum: float | None = None


@dataclasses.dataclass(frozen=True)
class ReceivedMetric:
    """A metric as a receiver got it, in one export."""

    name: str
    data_type: str  # "Sum", "Gauge", "Histogram", "ExponentialHistogram", "Summary"
    unit: str
    temporality: str  # "AGGREGATION_TEMPORALITY_CUMULATIVE", ..., or "" (gauges)
    monotonic: bool | None
    points: list[ReceivedPoint]
    resource: dict[str, Any]


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


# --- rotel's debug output --------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR)\b")
_ATTRIBUTE = re.compile(r"^ {5}-> (?P<key>.+?): (?P<type>[A-Za-z]+)\((?P<rest>.*)$")
_DESCRIPTOR = re.compile(r"^ {5}-> (?P<key>[A-Za-z]+): ?(?P<value>.*)$")
_SPAN_FIELD = re.compile(
    r"^\s+(?P<key>Trace ID|Parent ID|ID|Name|Kind|Status code|Status message)\s*: ?(?P<value>.*)$"
)
_POINTS = re.compile(r"^(Number|Histogram|ExponentialHistogram|Summary)DataPoints #\d+$")
_SCALAR = re.compile(r"(Str|Int|Double|Bool)\((.*?)\)(?:, |$)")


_HEADERS = (
    "ResourceSpans #", "ResourceMetrics #", "ResourceLogs #", "ScopeSpans #", "ScopeMetrics #",
    "ScopeLogs #", "Span #", "Metric #", "SpanEvent #", "SpanLink #", "Start time:", "End time:",
    "StartTimestamp:", "Timestamp:", "Resource attributes:", "Attributes:", "Events:", "Links:",
    "Descriptor:", "Data point attributes:",
)  # fmt: skip


def _structural(line: str) -> bool:
    """Whether ``line`` starts a new part of rotel's output (ends a multi-line value)."""
    return bool(
        line.startswith(_HEADERS)
        or _ATTRIBUTE.match(line)
        or _LOG_LINE.match(line)
        or _POINTS.match(line)
    )


def _attribute_value(kind: str, raw: str) -> Any:
    """``Str(x)`` -> "x", ``Int(3)`` -> 3, ``Double(1.5)`` -> 1.5, ``Bool(true)`` -> True,
    ``Slice(Str(a), Str(b))`` -> ["a", "b"]; anything else stays as rotel printed it."""
    if kind == "Str":
        return raw
    if kind == "Int":
        return int(raw)
    if kind == "Double":
        return float(raw)
    if kind == "Bool":
        return raw == "true"
    if kind == "Slice":
        items = _SCALAR.findall(raw)
        if items and "".join(f"{k}({v}), " for k, v in items)[:-2] == raw:
            return [_attribute_value(k, v) for k, v in items]
    return f"{kind}({raw})"


def parse_rotel_debug(text: str) -> tuple[list[ReceivedSpan], list[ReceivedMetric]]:
    """The spans and metrics in rotel's ``--debug-log-verbosity detailed`` output.

    The format is that of the OpenTelemetry Collector's debug exporter: ``ResourceSpans #N`` /
    ``ResourceMetrics #N`` blocks with ``Resource attributes:``, then ``Span #N`` (fields as
    ``    Name : x``, then ``Attributes:``) or ``Metric #N`` (``Descriptor:``, then data points).
    Attribute lines are ``     -> key: Type(value)``; a string value may run over several lines.
    Span events and links are skipped. Lines of rotel's own log are ignored.
    """
    spans: list[ReceivedSpan] = []
    metrics: list[ReceivedMetric] = []
    resource: dict[str, Any] = {}
    scope = ""
    span: dict[str, Any] | None = None
    metric: dict[str, Any] | None = None
    point: dict[str, Any] | None = None
    section = ""  # where "     -> k: v" lines go
    pending: tuple[dict[str, Any], str, str, list[str]] | None = None  # a multi-line value

    def finish_span() -> None:
        nonlocal span
        if span is not None:
            spans.append(
                ReceivedSpan(
                    name=span.get("Name", ""),
                    kind=span.get("Kind", ""),
                    trace_id=span.get("Trace ID", ""),
                    span_id=span.get("ID", ""),
                    parent_id=span.get("Parent ID", ""),
                    attributes=span["attributes"],
                    resource=dict(resource),
                    scope=scope,
                    status=span.get("Status code", ""),
                )
            )
        span = None

    def finish_metric() -> None:
        nonlocal metric, point
        if metric is not None:
            if point is not None:
                metric["points"].append(ReceivedPoint(**point))
            monotonic = metric.get("IsMonotonic")
            metrics.append(
                ReceivedMetric(
                    name=metric.get("Name", ""),
                    data_type=metric.get("DataType", ""),
                    unit=metric.get("Unit", ""),
                    temporality=metric.get("AggregationTemporality", ""),
                    monotonic=None if monotonic is None else monotonic == "true",
                    points=metric["points"],
                    resource=dict(resource),
                )
            )
        metric = point = None

    def target() -> dict[str, Any] | None:
        if section == "resource":
            return resource
        if section == "span" and span is not None:
            attributes: dict[str, Any] = span["attributes"]
            return attributes
        if section == "point" and point is not None:
            point_attributes: dict[str, Any] = point["attributes"]
            return point_attributes
        return None

    for raw_line in text.splitlines():
        line = _ANSI.sub("", raw_line)
        if pending is not None:
            into, key, kind, parts = pending
            if not _structural(line):
                parts.append(line)
                if line.endswith(")"):
                    into[key] = _attribute_value(kind, "\n".join(parts)[:-1])
                    pending = None
                continue
            into[key] = _attribute_value(kind, "\n".join(parts))  # unterminated: keep as is
            pending = None
        if _LOG_LINE.match(line):
            section = ""
            continue
        if line.startswith(("ResourceSpans #", "ResourceMetrics #", "ResourceLogs #")):
            finish_span()
            finish_metric()
            resource, scope, section = {}, "", ""
        elif line == "Resource attributes:":
            section = "resource"
        elif line.startswith(("ScopeSpans #", "ScopeMetrics #", "ScopeLogs #")):
            finish_span()
            finish_metric()
            section = ""
        elif line.startswith("InstrumentationScope "):
            scope = line.split(" ")[1]
        elif line.startswith("Span #"):
            finish_span()
            span, section = {"attributes": {}}, "span-fields"
        elif line.startswith("Metric #"):
            finish_metric()
            metric, section = {"points": []}, ""
        elif line == "Descriptor:":
            section = "descriptor"
        elif _POINTS.match(line) and metric is not None:
            if point is not None:
                metric["points"].append(ReceivedPoint(**point))
            point, section = {"attributes": {}}, ""
        elif line == "Data point attributes:":
            section = "point"
        elif line == "Attributes:" and span is not None:
            section = "span"
        elif line in ("Events:", "Links:"):
            section = ""
        elif span is not None and section == "span-fields" and (field := _SPAN_FIELD.match(line)):
            span[field["key"]] = field["value"].strip()
        elif section == "descriptor" and metric is not None and (entry := _DESCRIPTOR.match(line)):
            metric[entry["key"]] = entry["value"].strip()
        elif (attribute := _ATTRIBUTE.match(line)) and (into := target()) is not None:
            rest = attribute["rest"]
            if rest.endswith(")"):
                into[attribute["key"]] = _attribute_value(attribute["type"], rest[:-1])
            else:
                pending = (into, attribute["key"], attribute["type"], [rest])
        elif point is not None and line.startswith(("Value: ", "Count: ", "Sum: ")):
            key, _, value = line.partition(": ")
            point[key.lower()] = _number(value.strip())
            section = ""
        elif line.startswith(("StartTimestamp:", "Timestamp:", "Start time:", "End time:")):
            section = "span-fields" if span is not None and section == "span-fields" else ""
    finish_span()
    finish_metric()
    return spans, metrics


class _Waits:
    """Bounded waits for what a receiver got: ``spans(name)``, ``received_metrics(name)`` and
    ``diagnose()`` come from the receiver; ``label`` names it in a failure."""

    label = "the receiver"

    def spans(self, name: str | None = None) -> list[ReceivedSpan]:
        raise NotImplementedError

    def received_metrics(self, name: str | None = None) -> list[ReceivedMetric]:
        raise NotImplementedError

    def diagnose(self) -> str:
        raise NotImplementedError

    def wait_for_spans(
        self,
        count: int,
        name: str | None = None,
        timeout: float = WAIT_TIMEOUT_S,
        where: Callable[[ReceivedSpan], bool] | None = None,
    ) -> list[ReceivedSpan]:
        """At least ``count`` spans (called ``name``, and for which ``where`` is true, if
        given), polled for up to ``timeout``; all such spans."""

        def probe() -> list[ReceivedSpan] | None:
            spans = [span for span in self.spans(name) if where is None or where(span)]
            return spans if len(spans) >= count else None

        result: list[ReceivedSpan] = _poll(
            f"{count} span(s){f' named {name!r}' if name else ''} at {self.label}",
            probe,
            timeout,
            self.diagnose,
        )
        return result

    def wait_for_metric(
        self,
        name: str,
        timeout: float = WAIT_TIMEOUT_S,
        where: Callable[[ReceivedMetric], bool] | None = None,
    ) -> list[ReceivedMetric]:
        """The exports of metric ``name`` (for which ``where`` is true, if given): at least one,
        polled for up to ``timeout``."""
        result: list[ReceivedMetric] = _poll(
            f"metric {name!r} at {self.label}",
            lambda: [m for m in self.received_metrics(name) if where is None or where(m)],
            timeout,
            self.diagnose,
        )
        return result


@dataclasses.dataclass
class Rotel(_Waits):
    """A running rotel: where to send OTLP, and what it printed that it received."""

    http_endpoint: str
    """``http://127.0.0.1:PORT``: OTLP/HTTP, at ``/v1/traces``, ``/v1/metrics``, ``/v1/logs``."""
    grpc_endpoint: str
    """``127.0.0.1:PORT``: OTLP/gRPC, plaintext (``insecure=True``, or ``http://`` before it)."""
    log: Path
    proc: subprocess.Popen[bytes] = dataclasses.field(repr=False)
    forwards_to: str | None = None
    """The OTLP endpoint rotel exports to, or None (blackhole)."""
    _offset: int = 0

    def output(self) -> str:
        """rotel's output since the start (or the last ``clear()``)."""
        with self.log.open("rb") as handle:
            handle.seek(self._offset)
            return handle.read().decode("utf-8", errors="replace")

    def clear(self) -> None:
        """Forget what was received so far (later reads start after it)."""
        self._offset = self.log.stat().st_size

    def spans(self, name: str | None = None) -> list[ReceivedSpan]:
        """The spans rotel printed, optionally only those called ``name``."""
        spans, _ = parse_rotel_debug(self.output())
        return [span for span in spans if name is None or span.name == name]

    label = "rotel"

    def received_metrics(self, name: str | None = None) -> list[ReceivedMetric]:
        return self.metrics(name)

    def metrics(self, name: str | None = None) -> list[ReceivedMetric]:
        """The metrics rotel printed (one entry per export), optionally only ``name``."""
        _, metrics = parse_rotel_debug(self.output())
        return [metric for metric in metrics if name is None or metric.name == name]

    def diagnose(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"rotel ({state}) log {self.log}:\n{log_tail(self.log, 40)}"


def rotel_binary() -> Path | None:
    """The ``rotel-agent`` executable inside the installed ``rotel`` package, or None."""
    try:
        import rotel
    except ImportError:
        return None
    binary = Path(rotel.__file__).parent / "rotel-agent"
    return binary if os.access(binary, os.X_OK) else None


def _start_rotel(workdir: Path, exporter: Sequence[str], what: str) -> Rotel:
    binary = rotel_binary()
    if binary is None:
        unavailable("rotel (the rotel-agent binary of the rotel package) not found", ROTEL_HINT)
    log = workdir / "rotel.log"

    def argv(ports: list[int]) -> list[str]:
        grpc, http = ports
        return [
            str(binary), "start",
            "--otlp-grpc-endpoint", f"{HOST}:{grpc}",
            "--otlp-http-endpoint", f"{HOST}:{http}",
            "--debug-log", "traces",
            "--debug-log", "metrics",
            "--debug-log-verbosity", "detailed",
            "--batch-timeout", "50ms",
            "--pid-file", str(workdir / "rotel.pid"),  # used only with --daemon
            "--log-file", str(workdir / "rotel-daemon.log"),
            *exporter,
        ]  # fmt: skip

    def ready(ports: list[int]) -> Callable[[], bool]:
        return lambda: all(accepts(port) for port in ports)

    # Not --daemon: rotel stays our child and prints to stdout (line-buffered) into the log.
    # NO_COLOR: its own log lines come without ANSI colours.
    env = {**os.environ, "NO_COLOR": "1"}
    env = {key: value for key, value in env.items() if not key.startswith("ROTEL_")}
    proc, (grpc, http) = start_on_free_ports(
        2, argv, ready, what, log, ROTEL_START_TIMEOUT_S, cwd=workdir, env=env
    )
    return Rotel(f"http://{HOST}:{http}", f"{HOST}:{grpc}", log, proc)


@pytest.fixture(scope="session")
def rotel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rotel]:
    """A rotel receiving OTLP/HTTP and OTLP/gRPC on 127.0.0.1 that prints what it got."""
    receiver = _start_rotel(tmp_path_factory.mktemp("rotel"), ["--exporter", "blackhole"], "rotel")
    try:
        yield receiver
    finally:
        stop(receiver.proc, signal.SIGTERM)


# --- Datadog's test agent --------------------------------------------------------------------


def ddapm_venv(version: str = DDAPM_VERSION) -> Path:
    """The venv with ``ddapm-test-agent==version``, made on first use and reused after (see
    tests/support/venvs.py). Raises ``ReceiverUnavailable`` when it cannot be made."""
    try:
        return cached_venv(
            f"ddapm-test-agent-{version}-py{PYTHON_VERSION}",
            [f"ddapm-test-agent=={version}"],
            lambda venv: [str(venv / "bin" / "ddapm-test-agent"), "--version"],
        )
    except VenvUnavailable as error:
        raise ReceiverUnavailable(str(error)) from None


def _otlp_value(value: dict[str, Any]) -> Any:
    """An OTLP ``AnyValue`` in protobuf's JSON (proto field names) as a Python value."""
    if "string_value" in value:
        return value["string_value"]
    if "int_value" in value:
        return int(value["int_value"])
    if "double_value" in value:
        return float(value["double_value"])
    if "bool_value" in value:
        return bool(value["bool_value"])
    if "array_value" in value:
        return [_otlp_value(item) for item in value["array_value"].get("values", [])]
    if "kvlist_value" in value:
        return _otlp_attributes(value["kvlist_value"].get("values", []))
    if "bytes_value" in value:
        return base64.b64decode(value["bytes_value"])
    return None


def _otlp_attributes(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    return {pair["key"]: _otlp_value(pair.get("value", {})) for pair in pairs}


def _otlp_id(text: str) -> str:
    return base64.b64decode(text).hex() if text else ""


_DATA_TYPES = {
    "sum": "Sum",
    "gauge": "Gauge",
    "histogram": "Histogram",
    "exponential_histogram": "ExponentialHistogram",
    "summary": "Summary",
}


def _otlp_point(point: dict[str, Any]) -> ReceivedPoint:
    value: int | float | None = None
    if "as_int" in point:
        value = int(point["as_int"])
    elif "as_double" in point:
        value = float(point["as_double"])
    return ReceivedPoint(
        attributes=_otlp_attributes(point.get("attributes", [])),
        value=value,
        count=int(point["count"]) if "count" in point else None,
        sum=float(point["sum"]) if "sum" in point else None,
    )


@dataclasses.dataclass
class DDAgent(_Waits):
    """A running ``ddapm-test-agent``: its intakes, and what its OTLP intake got."""

    base_url: str
    """``http://127.0.0.1:PORT``: the APM intake (Datadog's trace API, ``/info``, ...)."""
    otlp_http_endpoint: str
    """``http://127.0.0.1:PORT``: OTLP/HTTP intake, ``/v1/traces`` ``/v1/metrics`` ``/v1/logs``."""
    otlp_grpc_endpoint: str
    """``127.0.0.1:PORT``: OTLP/gRPC intake, plaintext (the agent hands it on to its HTTP one)."""
    log: Path
    version: str
    proc: subprocess.Popen[bytes] = dataclasses.field(repr=False)

    def _get(self, base: str, path: str) -> Any:
        """GET ``base + path``: its JSON, else its text (``200: OK``)."""
        with urllib.request.urlopen(f"{base}{path}", timeout=HTTP_TIMEOUT_S) as response:
            body = response.read()
            is_json = response.headers.get_content_type() == "application/json"
        return json.loads(body) if is_json else body.decode("utf-8", errors="replace")

    def traces(self) -> list[dict[str, Any]]:
        """``GET /test/session/traces`` of the OTLP intake: one ``ExportTraceServiceRequest`` as
        JSON (proto field names, ids in base64) per request received since the session began."""
        result: list[dict[str, Any]] = self._get(self.otlp_http_endpoint, "/test/session/traces")
        return result

    def metrics(self) -> list[dict[str, Any]]:
        """``GET /test/session/metrics``: one ``ExportMetricsServiceRequest`` per request."""
        result: list[dict[str, Any]] = self._get(self.otlp_http_endpoint, "/test/session/metrics")
        return result

    def clear(self) -> None:
        """Start a new session (``GET /test/session/start``): earlier requests are not shown."""
        self._get(self.otlp_http_endpoint, "/test/session/start")

    def spans(self, name: str | None = None) -> list[ReceivedSpan]:
        """The spans in ``traces()``, optionally only those called ``name``."""
        found = []
        for request in self.traces():
            for resource_spans in request.get("resource_spans", []):
                resource = _otlp_attributes(
                    resource_spans.get("resource", {}).get("attributes", [])
                )
                for scope_spans in resource_spans.get("scope_spans", []):
                    scope = scope_spans.get("scope", {}).get("name", "")
                    for span in scope_spans.get("spans", []):
                        if name is not None and span.get("name") != name:
                            continue
                        found.append(
                            ReceivedSpan(
                                name=span.get("name", ""),
                                kind=span.get("kind", ""),
                                trace_id=_otlp_id(span.get("trace_id", "")),
                                span_id=_otlp_id(span.get("span_id", "")),
                                parent_id=_otlp_id(span.get("parent_span_id", "")),
                                attributes=_otlp_attributes(span.get("attributes", [])),
                                resource=resource,
                                scope=scope,
                                status=span.get("status", {}).get("code", ""),
                            )
                        )
        return found

    label = "ddapm-test-agent"

    def received_metrics(self, name: str | None = None) -> list[ReceivedMetric]:
        return self.metric_exports(name)

    def metric_exports(self, name: str | None = None) -> list[ReceivedMetric]:
        """The metrics in ``metrics()`` (one entry per export), optionally only ``name``."""
        found = []
        for request in self.metrics():
            for resource_metrics in request.get("resource_metrics", []):
                resource = _otlp_attributes(
                    resource_metrics.get("resource", {}).get("attributes", [])
                )
                for scope_metrics in resource_metrics.get("scope_metrics", []):
                    for metric in scope_metrics.get("metrics", []):
                        if name is not None and metric.get("name") != name:
                            continue
                        key = next((k for k in _DATA_TYPES if k in metric), "")
                        data = metric.get(key, {})
                        monotonic = data.get("is_monotonic") if key == "sum" else None
                        found.append(
                            ReceivedMetric(
                                name=metric.get("name", ""),
                                data_type=_DATA_TYPES.get(key, ""),
                                unit=metric.get("unit", ""),
                                temporality=data.get("aggregation_temporality", ""),
                                monotonic=bool(monotonic) if key == "sum" else None,
                                points=[_otlp_point(p) for p in data.get("data_points", [])],
                                resource=resource,
                            )
                        )
        return found

    def diagnose(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"ddapm-test-agent ({state}) log {self.log}:\n{log_tail(self.log, 40)}"


def _ddapm_answers(ports: list[int]) -> Callable[[], bool]:
    apm, otlp_http, otlp_grpc = ports

    def ready() -> bool:
        for url in (f"http://{HOST}:{apm}/info", f"http://{HOST}:{otlp_http}/test/session/traces"):
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status != 200:
                        return False
            except (OSError, urllib.error.URLError):
                return False
        return accepts(otlp_grpc)

    return ready


@pytest.fixture(scope="session")
def ddagent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DDAgent]:
    """Datadog's test agent (``ddapm-test-agent``) on 127.0.0.1, from its own cached venv."""
    try:
        venv = ddapm_venv()
    except ReceiverUnavailable as error:
        unavailable(f"ddapm-test-agent could not be installed ({error})", DDAPM_HINT)
    workdir = tmp_path_factory.mktemp("ddagent")
    log = workdir / "ddapm-test-agent.log"
    (workdir / "snapshots").mkdir()

    def argv(ports: list[int]) -> list[str]:
        apm, otlp_http, otlp_grpc = ports
        return [
            str(venv / "bin" / "ddapm-test-agent"),
            "--host", HOST,
            "--port", str(apm),
            "--otlp-http-port", str(otlp_http),
            "--otlp-grpc-port", str(otlp_grpc),
            "--snapshot-dir", str(workdir / "snapshots"),
            "--log-level", "INFO",
        ]  # fmt: skip

    # Its settings also come from the environment (PORT, OTLP_HTTP_PORT, DD_*): ours are argv.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DD_", "OTEL_", "SNAPSHOT_", "ENABLED_CHECKS", "OTLP_"))
        and key not in {"PORT", "LOG_LEVEL", "PYTHONPATH"}
    }
    env["PYTHONUNBUFFERED"] = "1"
    what, timeout = "ddapm-test-agent", DDAPM_START_TIMEOUT_S
    proc, (apm, otlp_http, otlp_grpc) = start_on_free_ports(
        3, argv, _ddapm_answers, what, log, timeout, cwd=workdir, env=env
    )
    agent = DDAgent(
        base_url=f"http://{HOST}:{apm}",
        otlp_http_endpoint=f"http://{HOST}:{otlp_http}",
        otlp_grpc_endpoint=f"{HOST}:{otlp_grpc}",
        log=log,
        version=DDAPM_VERSION,
        proc=proc,
    )
    try:
        yield agent
    finally:
        stop(proc, signal.SIGTERM)


@pytest.fixture(scope="session")
def rotel_to_ddagent(tmp_path_factory: pytest.TempPathFactory, ddagent: DDAgent) -> Iterator[Rotel]:
    """A rotel that receives OTLP (HTTP and gRPC) and forwards it over OTLP/HTTP to ``ddagent``."""
    exporter = [
        "--exporter", "otlp",
        "--otlp-exporter-endpoint", ddagent.otlp_http_endpoint,
        "--otlp-exporter-protocol", "http",
        "--otlp-exporter-request-timeout", "5s",
    ]  # fmt: skip
    receiver = _start_rotel(
        tmp_path_factory.mktemp("rotel-to-ddagent"), exporter, "rotel (to ddapm-test-agent)"
    )
    receiver.forwards_to = ddagent.otlp_http_endpoint
    try:
        yield receiver
    finally:
        stop(receiver.proc, signal.SIGTERM)
