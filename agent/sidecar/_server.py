"""The sidecar: a process beside serverless workers that records every invocation exactly once.

Workers are frozen or killed without warning, and collectors go down. The in-process agent (with
``GPULEDGER_SIDECAR`` set) POSTs each finished record, and each invocation's start, to the
sidecar on loopback; the sidecar answers only once they are committed to its spool on disk, then
delivers them, at its own pace, to the ledger and to an OTLP receiver. ::

    worker ──POST /v1/records, /v1/starts──▶ receiver ──one transaction──▶ spool (SQLite, WAL)
                                                                            │  seq order, a
                          watcher: start notices whose pid died or          │  cursor each
                          whose timeout passed become killed/timeout ───────┤
                                                                            ├─▶ ledger writer
                                                                            └─▶ OTLP exporter

**The API** (JSON bodies, ``Content-Type: application/json``; errors are ``{"error": "..."}``
saying what is wrong and where, e.g. ``records[3].start_ns: expected an integer, got a string``):

- ``POST /v1/records`` ``{"records": [InvocationRecord.to_dict(), ...]}`` -> 200
  ``{"accepted": n, "duplicates": d}`` once committed; 400 (nothing of the request is kept), 401,
  411, 413 (answered from the headers), 415, 503 with ``Retry-After`` (the spool cannot be
  written, stopping, or more than ``max_backlog`` records wait for a consumer: backpressure).
- ``POST /v1/starts`` ``{"starts": [{"record_id", "invocation_id", "handler", "start_ns", "pid",
  "service_name", "platform", and optionally "endpoint", "worker_id", "region", "gpu_model",
  "gpu_count", "timeout_s", "user_id", "user_id_pseudonymised", "tenant"}, ...]}`` -> the same.
- ``GET /healthz`` -> 200 ``{"status": "ok", "spooled", "pending_export", "pending_ledger",
  "open_invocations"}`` (and, when there are any, ``dead_letters`` and ``failing``: each
  consumer failing now, for how long and why), or 503 with a ``reason`` while the spool cannot
  be written, a consumer has failed every attempt for over ``unhealthy_after_s`` (60 s), or over
  ``max_backlog`` records wait. No token.
- ``GET /livez`` -> 200 ``{"status": "live"}`` while the process serves (liveness). No token.
- ``GET /metrics`` -> the Prometheus text format (``gpuledger_sidecar_*``).

With a token, every path but ``/healthz`` and ``/livez`` needs ``Authorization: Bearer <token>``
(compared in constant time); without one the sidecar refuses to listen beyond loopback.

**The spool** (:class:`Spool`) is one SQLite file in WAL mode: ``records`` (``seq`` AUTOINCREMENT,
so a deleted row's number is never reused and no cursor can skip a row), ``starts`` (invocations
that began and have no record yet), ``cursors`` (how far each consumer got) and ``delivered``
(the ids of records delivered and deleted, kept for ``dedupe_window_s`` so that a record arriving
late, after its row is gone, is still a duplicate). Each request is one transaction; a record whose
``record_id`` is spooled or delivered already is counted as a duplicate and not stored again,
unless what is there is the watcher's stand-in for it (see the watcher, below).
``synchronous=NORMAL`` makes a commit survive the process being killed (what kills workers and
sidecars); surviving the machine losing power needs ``synchronous="full"``, an fsync per commit.

**The consumers** read the spool in ``seq`` order, each from its own cursor, and advance it only
after their sink took the batch: the ledger writer (``open_ledger(location).write``, which skips
records it has, a stand-in's row replaced) and, when an OTLP endpoint is configured, the
exporter (:func:`record_to_span` spans, ids derived from ``record_id``, then the invocation
metrics). A failed batch is retried,
after a jittered backoff from ``backoff_s[0]`` doubling to ``backoff_s[1]``; a record the sink
refuses for good is found (the batch split in halves), retried alone, then set aside in
``dead_letters`` (see ``_consumers``), so it never holds the records behind it. Rows
every active consumer has passed are deleted. So the ledger gets every record once; the OTLP
receiver gets every span at least once, with the same ids each time (a crash between an export and
its cursor's commit sends the batch again).

**The watcher** looks at the open starts every ``watch_interval_s``. The sidecar must share the
workers' PID namespace (the same container, or ``pid: service:<worker>``): a start whose ``pid``
is gone (no such process, a zombie, or the pid reused by a process that started later) and whose
record has not arrived ``grace_s`` later becomes a record with outcome ``killed``, ending when the
pid was found gone; a start older than its ``timeout_s`` (plus the grace) becomes ``timeout``,
ending at the timeout, even while the pid lives. Both are priced from the catalogue and spooled
under the start's ``record_id`` with ``recorded_by: "sidecar"``: a stand-in. The real record,
should it come after all (kept in the worker's journal while the sidecar was down and replayed
by the next worker, or from a worker frozen past the grace), is accepted, not a duplicate: it
takes the stand-in's place in the spool (a new row, so that consumers past the stand-in deliver
it too), the ledger replaces the stand-in's row with it, and the OTLP consumer exports the
invocation's span again, with the same ids and the real outcome (the invocation metrics are
counters: where the stand-in was exported already, they count the invocation twice, as killed and
as it ended). A stand-in arriving after the real record, or a second copy of either, is a
duplicate.

**Stopping** (:meth:`Sidecar.stop`): the listener closes, requests in flight finish, the consumers
get up to the drain timeout to empty the spool, and what is left stays in the spool for the next
start.

Why one module of this size: the module docstring is the sidecar's specification (its API,
spool, consumers, watcher and stopping), and the ``Sidecar`` class wires those rooms together;
validation, spool, consumers and the HTTP receiver live in modules of their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import math
import os
import sqlite3
import threading
import time
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from gpuledger import _guard
from gpuledger._build import closing_record
from gpuledger._errors import ConfigError, SidecarError
from gpuledger._logging import get_logger
from gpuledger._process import process_alive, process_start
from gpuledger._record import MAX_TIMEOUT_S
from gpuledger._settings import environment
from gpuledger._sinks import Backoff, LedgerSink
from gpuledger.sidecar._consumers import (
    DEFAULT_LINGER_S,
    Consumer,
    Counters,
    OtlpSink,
    ResponseCheck,
)
from gpuledger.sidecar._receiver import (
    DEFAULT_LISTEN,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    Receiver,
    is_loopback,
    parse_listen,
    resolve_address,
)
from gpuledger.sidecar._spool import (
    DEFAULT_DEDUPE_WINDOW_S,
    DEFAULT_RESERVE_BYTES,
    MIN_SPOOL_BYTES,
    SYNCHRONOUS_MODES,
    OpenStart,
    Spool,
)
from gpuledger.sidecar._validation import Invalid, dumps, parse_json, parse_records, parse_starts

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT_S",
    "DEFAULT_GRACE_S",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_BACKLOG",
    "DEFAULT_MAX_BODY",
    "DEFAULT_SPOOL",
    "DEFAULT_UNHEALTHY_AFTER_S",
    "TOKEN_ENV",
    "Invalid",
    "OtlpTarget",
    "Sidecar",
    "SidecarError",
    "Spool",
    "parse_json",
    "parse_listen",
    "parse_records",
    "parse_starts",
    "process_alive",
    "process_start",
    "resolve_otlp",
]
DEFAULT_SPOOL: Final = "gpuledger-spool.db"
DEFAULT_GRACE_S: Final = 2.0
"""How long after its pid is gone a start waits for its record (the agent flushes at exit)."""
DEFAULT_DRAIN_TIMEOUT_S: Final = 10.0
DEFAULT_UNHEALTHY_AFTER_S: Final = 60.0
"""``/healthz`` answers 503 once a consumer has failed every attempt for longer than this."""
DEFAULT_MAX_BACKLOG: Final = 1_000_000
"""``/healthz`` answers 503 while more records than this wait for a consumer."""
TOKEN_ENV: Final = "GPULEDGER_SIDECAR_TOKEN"  # noqa: S105 - a variable name, not a secret


class Clock(Protocol):
    """Wall time (Unix ns): ``time`` itself, or a test's controllable clock."""

    def time_ns(self) -> int: ...


# --- the sidecar -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class OtlpTarget:
    """Where and how spans (and metrics) are exported."""

    protocol: str
    """``http/protobuf`` or ``grpc``."""
    traces_endpoint: str | None
    """Passed to the span exporter; None: the exporter reads the ``OTEL_*`` environment."""
    metrics_endpoint: str | None
    metrics: bool
    """Whether a metrics endpoint is known (given, or in the environment)."""
    description: str


def resolve_otlp(
    endpoint: str | None, protocol: str | None, environ: Mapping[str, str]
) -> OtlpTarget | None:
    """The OTLP target from ``--otlp-endpoint``/``--otlp-protocol``, else the standard
    ``OTEL_EXPORTER_OTLP_*`` variables; None when no endpoint is given anywhere."""
    from gpuledger.exporters import otlp_protocol  # noqa: PLC0415

    protocol = otlp_protocol("TRACES", environ, given=protocol)
    if endpoint:
        base = endpoint.strip()
        if protocol == "grpc":
            return OtlpTarget(protocol, base, base, True, f"{base} (grpc)")
        traces = f"{base.rstrip('/')}/v1/traces"
        metrics_url = f"{base.rstrip('/')}/v1/metrics"
        return OtlpTarget(protocol, traces, metrics_url, True, f"{traces} (http/protobuf)")
    traces_env = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base_env = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not (traces_env or base_env):
        return None
    metrics = bool(base_env or environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
    where = traces_env or base_env
    return OtlpTarget(protocol, None, None, metrics, f"{where} ({protocol}, from the environment)")


_COUNTERS: Final = (
    # (name, description, counter key)
    ("records_received_total", "Records received, new and duplicates.", "records_received"),
    (
        "records_duplicate_total",
        "Records received that were spooled or delivered already.",
        "records_duplicate",
    ),
    ("records_rejected_total", "Records in requests refused as invalid.", "records_rejected"),
    ("starts_received_total", "Start notices received.", "starts_received"),
    (
        "connections_closed_idle_total",
        "Idle connections closed to make room for a new one (over the connection limit).",
        "connections_evicted",
    ),
    ("records_exported_total", "Records exported over OTLP.", "otlp_delivered"),
    ("export_failures_total", "Failed OTLP export attempts (retried).", "otlp_failures"),
    (
        "export_rejected_spans_total",
        "Spans the OTLP receiver refused for good (partial success).",
        "export_rejected",
    ),
    ("ledger_written_total", "Records written to the ledger.", "ledger_delivered"),
    ("ledger_failures_total", "Failed ledger writes (retried).", "ledger_failures"),
    (
        # gpuledger.sidecar.dead_letters (exporters/_names.py)
        "dead_letters_total",
        "Records a consumer could not deliver, set aside in the spool's dead letters.",
        "dead_letters",
    ),
    (
        "records_refused_backlog_total",
        "Requests of records refused (503) while the backlog was over max_backlog.",
        "backlog_refusals",
    ),
    (
        "spool_write_failures_total",
        "Requests refused because the spool could not be written.",
        "spool_write_failures",
    ),
    (
        "corrupt_files_total",
        "Damaged spool or ledger files moved aside at open (a fresh one started).",
        "corrupt_files",
    ),
)
_GAUGES: Final = (
    ("spool_records", "Records in the spool."),
    ("spool_bytes", "Size of the spool's files on disk."),
    ("pending_export", "Records not yet exported over OTLP."),
    ("pending_ledger", "Records not yet in the ledger."),
    ("open_invocations", "Invocations started and not yet recorded."),
    ("spool_writable", "1 while the spool can be written."),
    ("dead_letters", "Dead letters in the spool (until re-driven)."),
)
_WATCHED: Final = ("killed", "timeout")
_UNUSABLE: Final = (Invalid, KeyError, TypeError, ValueError, OverflowError, AttributeError)
"""What reading a start notice raises when its values are not what a notice holds."""


class _SystemClock:
    time_ns = staticmethod(time.time_ns)


class _Exposition:
    """The Prometheus text format, written by hand: a dozen lines need no client library."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._lines: list[str] = []

    def add(self, name: str, kind: str, description: str, *samples: int | tuple[str, int]) -> None:
        """One metric: a plain value, or ``(labels, value)`` pairs (``'code="400"'``)."""
        full = self._prefix + name
        self._lines.append(f"# HELP {full} {description}")
        self._lines.append(f"# TYPE {full} {kind}")
        for sample in samples:
            if isinstance(sample, tuple):
                labels, value = sample
                self._lines.append(f"{full}{{{labels}}} {value}")
            else:
                self._lines.append(f"{full} {sample}")

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"


class Sidecar:
    """The receiver, the spool, the consumers and the watcher: :meth:`start`, then :meth:`stop`.

    Arguments mirror ``gpuledger sidecar``'s options (seconds, bytes). For tests: ``clock`` (wall
    time for received/killed instants), ``pid_alive`` (``(pid, started) -> bool``),
    ``watch_interval_s`` (None: no watcher thread; call :meth:`check_open_invocations`),
    ``backoff_s`` (first and longest retry delay), ``linger_s`` (how long a woken consumer
    gathers records) and ``export_timeout_s``. ``gpu``: a container-wide GPU meter
    (``gpuledger.sidecar._gpu.SidecarGpu``: ``started(starts)``, ``fill(records)``) that fills the
    GPU fields records arrive without, before they are spooled.
    """

    def __init__(
        self,
        *,
        listen: str = DEFAULT_LISTEN,
        token: str | None = None,
        spool: str = DEFAULT_SPOOL,
        ledger: str | None = None,
        otlp_endpoint: str | None = None,
        otlp_protocol: str | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        max_body: int = DEFAULT_MAX_BODY,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        synchronous: str = "normal",
        max_spool_bytes: int | None = None,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        dedupe_window_s: float = DEFAULT_DEDUPE_WINDOW_S,
        watch_interval_s: float | None = 1.0,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        linger_s: float = DEFAULT_LINGER_S,
        export_timeout_s: float = 10.0,
        unhealthy_after_s: float = DEFAULT_UNHEALTHY_AFTER_S,
        max_backlog: int | None = DEFAULT_MAX_BACKLOG,
        clock: Clock | None = None,
        pid_alive: Callable[[int, int | None], bool] = process_alive,
        environ: Mapping[str, str] | None = None,
        gpu: Any = None,
    ) -> None:
        from gpuledger.ledger import default_ledger_location  # noqa: PLC0415

        env = environment() if environ is None else environ
        try:
            self._host, self._port = parse_listen(listen)
        except ValueError as error:
            raise ConfigError("listen", listen, str(error)) from None
        _positive("grace_s", grace_s, allow_zero=True)
        _positive("dedupe_window_s", dedupe_window_s, allow_zero=True)
        _positive("export_timeout_s", export_timeout_s)
        _positive("linger_s", linger_s, allow_zero=True)
        _positive("unhealthy_after_s", unhealthy_after_s, allow_zero=True)
        if max_backlog is not None and max_backlog < 0:
            raise ConfigError("max_backlog", max_backlog, "must be 0 or more records")
        if watch_interval_s is not None:
            _positive("watch_interval_s", watch_interval_s)
        if max_connections < 1:
            raise ConfigError("max_connections", max_connections, "must be at least 1")
        if max_body < 1:
            raise ConfigError("max_body", max_body, "must be at least 1 byte")
        if max_spool_bytes is not None and max_spool_bytes < MIN_SPOOL_BYTES:
            raise ConfigError("max_spool_bytes", max_spool_bytes, f"at least {MIN_SPOOL_BYTES}")
        if synchronous not in SYNCHRONOUS_MODES:
            raise ConfigError("synchronous", synchronous, "expected normal or full")
        if token is not None and not token.strip():
            raise ConfigError("token", "(empty)", "an empty token protects nothing")
        self.listen = listen
        self._token = None if token is None else f"Bearer {token}".encode()
        self.spool_path = os.path.abspath(os.path.expanduser(spool))
        self.ledger_location = ledger or default_ledger_location()
        self.otlp = resolve_otlp(otlp_endpoint, otlp_protocol, env)
        self.grace_s = grace_s
        self.max_body = max_body
        self._max_connections = max_connections
        self._synchronous = synchronous
        self._max_spool_bytes = max_spool_bytes
        self._reserve_bytes = reserve_bytes
        self._dedupe_window_ns = int(dedupe_window_s * 1e9)
        self._watch_interval_s = watch_interval_s
        self._backoff_s = backoff_s
        self._linger_s = linger_s
        self._export_timeout_s = export_timeout_s
        self._unhealthy_after_s = unhealthy_after_s
        self._max_backlog = max_backlog
        self._clock: Clock = clock or _SystemClock()
        self._pid_alive = pid_alive
        self._gpu = gpu
        self._counters = Counters()
        self._spool: Spool | None = None
        self._server: Receiver | None = None
        self._consumers: list[Consumer] = []
        self._threads: list[threading.Thread] = []
        self._stop_watch = threading.Event()
        self._stopping = False
        self._in_flight = 0
        self._requests = threading.Condition()
        self._spool_error: str | None = None
        self._pricers: dict[tuple[str, str | None], Any] = {}
        self._unusable_notices: set[str] = set()  # start notices the watcher said it cannot use
        self._catalogue: Any = None
        self._prune_lock = threading.Lock()
        self._ledger_checked = False
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Sidecar:
        """Open the spool, bind the listener, start the consumers and the watcher.

        Raises :class:`ConfigError` for a non-loopback address without a token, and
        :class:`SidecarError` when the spool cannot be used or the address cannot be bound.
        """
        if self._started:
            raise SidecarError("this sidecar was started already")
        addresses = resolve_address(self._host, self._port)
        if self._token is None and not is_loopback(addresses):
            raise ConfigError(
                "listen",
                self.listen,
                "listening beyond loopback needs a token (--token or "
                f"{TOKEN_ENV}): anyone who can reach the port could write the ledger",
            )
        if os.path.abspath(self.ledger_location) == self.spool_path:
            raise ConfigError("spool", self.spool_path, "the spool and the ledger must differ")
        from gpuledger._location import unwritable_reason  # noqa: PLC0415

        # As the agent does: a missing folder is a mistake to name (a typo would otherwise
        # create /nonexist/ and write there), not a folder to make.
        for setting, location in (("spool", self.spool_path), ("ledger", self.ledger_location)):
            reason = unwritable_reason(location)
            if reason is not None:
                raise ConfigError(setting, location, reason)
        span_exporter, check, meter_factory = self._otlp_parts()
        spool = Spool(
            self.spool_path,
            synchronous=self._synchronous,
            max_bytes=self._max_spool_bytes,
            reserve_bytes=self._reserve_bytes,
        )
        if spool.set_aside is not None:
            self._damaged_file_set_aside(
                "spool", self.spool_path, spool.set_aside.moved_to, spool.set_aside.reason
            )
        family, address = addresses[0]
        server = Receiver(self, max_connections=self._max_connections)
        try:
            server.start(family, address)
        except OSError as error:
            spool.close()
            raise SidecarError(f"cannot listen on {self.listen}: {error}") from error
        self._started = True
        self._spool = spool
        self._server = server
        sinks: list[LedgerSink | OtlpSink] = [
            LedgerSink(self.ledger_location, opener=self._open_ledger)
        ]
        if span_exporter is not None:
            sinks.append(
                OtlpSink(
                    span_exporter,
                    check,
                    meter_factory,
                    self._counters,
                    lambda: self._counts().get("pending_ledger", 0),
                )
            )
        else:
            get_logger().info(
                "gpuledger sidecar: no OTLP endpoint (--otlp-endpoint or "
                "OTEL_EXPORTER_OTLP_ENDPOINT): records go to the ledger only"
            )
        first, most = self._backoff_s
        self._consumers = [
            Consumer(
                sink,
                spool,
                self._counters,
                Backoff(first, most),
                self._prune,
                self._linger_s,
                clock=self._clock.time_ns,
            )
            for sink in sinks
        ]
        for consumer in self._consumers:
            consumer.start()
        if self._watch_interval_s is not None:
            watch = threading.Thread(
                target=self._watch, name="gpuledger-sidecar-watch", daemon=True
            )
            watch.start()
            self._threads.append(watch)
        return self

    def _open_ledger(self, location: str) -> Any:
        """The ledger consumer's opener: checked (``PRAGMA quick_check``) at the first open and
        after a failure that said it is damaged; a damaged SQLite ledger is moved aside."""
        from gpuledger.ledger import open_ledger  # noqa: PLC0415  (sqlite3, on first use)

        check = not self._ledger_checked or any(
            consumer.damaged for consumer in self._consumers if consumer.name == "ledger"
        )
        self._ledger_checked = True
        if not check:
            return open_ledger(location)
        return open_ledger(
            location,
            on_damaged=lambda moved_to, reason: self._damaged_file_set_aside(
                "ledger", location, moved_to, reason
            ),
        )

    def _damaged_file_set_aside(self, kind: str, path: str, moved_to: str, reason: str) -> None:
        self._counters.add("corrupt_files")
        get_logger().error(
            f"gpuledger sidecar: THE {kind.upper()} WAS DAMAGED; it was moved aside and a fresh "
            f"{kind} started (what the damaged file holds may be read with sqlite3's .recover)",
            path=path,
            moved_to=moved_to,
            reason=reason,
        )

    def _otlp_parts(self) -> tuple[Any, ResponseCheck | None, Callable[[Any], Any] | None]:
        target = self.otlp
        if target is None:
            return None, None, None
        timeout = self._export_timeout_s
        check: ResponseCheck | None = None
        if target.protocol == "grpc":
            try:
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # noqa: PLC0415
                    OTLPMetricExporter as GrpcMetricExporter,
                )
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
                    OTLPSpanExporter as GrpcSpanExporter,
                )
            except ImportError:
                raise SidecarError(
                    "--otlp-protocol grpc needs the gRPC exporter: pip install 'gpuledger[grpc]'"
                ) from None
            span_exporter: Any = GrpcSpanExporter(endpoint=target.traces_endpoint, timeout=timeout)

            def metric_exporter() -> Any:
                return GrpcMetricExporter(endpoint=target.metrics_endpoint, timeout=timeout)
        else:
            import requests  # noqa: PLC0415  (the HTTP exporter's own transport)
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )

            class _NoRedirects(requests.Session):
                """Never follows a redirect, whatever the exporter asks: exporters before
                opentelemetry 1.45 followed one (to wherever it pointed) and called its answer
                a delivery; from 1.45 they do not. Either way the 3xx reaches the check."""

                def request(self, *args: Any, **kwargs: Any) -> Any:
                    kwargs["allow_redirects"] = False
                    return super().request(*args, **kwargs)

            check = ResponseCheck()
            session = _NoRedirects()
            session.hooks["response"].append(check.hook)
            span_exporter = OTLPSpanExporter(
                endpoint=target.traces_endpoint, timeout=timeout, session=session
            )

            def metric_exporter() -> Any:
                return OTLPMetricExporter(endpoint=target.metrics_endpoint, timeout=timeout)

        if not target.metrics:
            return span_exporter, check, None

        def meter_factory(resource: Any) -> Any:
            from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
            from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
                PeriodicExportingMetricReader,
            )

            reader = PeriodicExportingMetricReader(metric_exporter())
            return MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)

        return span_exporter, check, meter_factory

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` listened on (the real port when asked for port 0)."""
        if self._server is None:
            raise SidecarError("the sidecar is not started")
        return self._server.address

    @property
    def url(self) -> str:
        """``http://host:port`` of the receiver."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def stop(self, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> int:
        """Stop accepting, let the consumers drain for up to ``drain_timeout_s``, stop; return
        how many records are left in the spool for the next start. Idempotent."""
        if not self._started or self._spool is None:
            return 0
        deadline = time.monotonic() + max(drain_timeout_s, 0.0)
        self._stopping = True
        server = self._server
        if server is not None:
            # Requests in flight finish (their commit, their answer); every connection closes.
            server.stop(max(deadline - time.monotonic(), 0.1))
        with self._requests:
            self._requests.wait_for(
                lambda: self._in_flight == 0, timeout=max(deadline - time.monotonic(), 0.1)
            )
        while time.monotonic() < deadline and self._pending_total() > 0:
            for consumer in self._consumers:
                consumer.wake.set()
            time.sleep(0.02)
        self._stop_watch.set()
        for consumer in self._consumers:
            consumer.signal_stop()
            # Ends an export retry the SDK exporter is waiting out (a batch it had not
            # delivered stays in the spool). A ledger write is bounded by its busy timeout.
            if isinstance(consumer.sink, OtlpSink):
                consumer.sink.abort()
        for consumer in self._consumers:
            consumer.join(max(deadline - time.monotonic(), 0.5))
        for consumer in self._consumers:
            consumer.sink.close(max(deadline - time.monotonic(), 1.0))
        for thread in self._threads:
            thread.join(1.0)
        counts = self._counts()
        left = counts.get("spooled", 0)
        spool, self._spool = self._spool, None
        spool.close()
        log = get_logger().warning if left else get_logger().info
        log(
            f"gpuledger sidecar stopped: {left} record(s) left in the spool for the next start",
            left=left,
            not_exported=counts.get("pending_otlp", 0),
            not_in_ledger=counts.get("pending_ledger", 0),
            open_invocations=counts.get("open_invocations", 0),
            spool=self.spool_path,
        )
        return left

    def _backlog_bound(self) -> int:
        """At most how many spooled records the slowest consumer has left (no scan)."""
        spool = self._spool
        if spool is None or not self._consumers:
            return 0
        return max(0, spool.last_seq - min(consumer.cursor for consumer in self._consumers))

    def _pending_total(self) -> int:
        counts = self._counts()
        return sum(value for key, value in counts.items() if key.startswith("pending_"))

    def _counts(self) -> dict[str, int]:
        spool = self._spool
        if spool is None:
            return {}
        try:
            return spool.counts({consumer.name: consumer.cursor for consumer in self._consumers})
        except sqlite3.Error:
            return {}

    # -- the receiver -----------------------------------------------------------------------

    def _authorised(self, header: str | None) -> bool:
        if self._token is None:
            return True
        given = (header or "").strip().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self._token)

    def _request_begins(self) -> bool:
        with self._requests:
            if self._stopping:
                return False
            self._in_flight += 1
            return True

    def _request_ends(self) -> None:
        with self._requests:
            self._in_flight -= 1
            self._requests.notify_all()

    def _rejected(self, records: object, status: int) -> None:
        self._counters.add(f"rejected_{status}")
        if isinstance(records, list):
            self._counters.add("records_rejected", len(records))

    def _take(self, kind: str, body: bytes) -> tuple[int, dict[str, object]]:
        """Check and spool one request body; ``(status, answer)``. All or nothing. Records are
        refused (503, ``Retry-After``), before they are even parsed, while more than
        ``max_backlog`` wait for the slowest consumer: the workers keep them in their journal
        and send them again, and the spool stays bounded. Starts are always taken (the
        watcher needs them, and they are few)."""
        if kind == "records" and self._max_backlog is not None:
            waiting = self._backlog_bound()
            if waiting > self._max_backlog:
                self._counters.add("backlog_refusals")
                return 503, {
                    "error": f"the sidecar is behind: up to {waiting} records wait for delivery "
                    f"(over max_backlog {self._max_backlog}); nothing from this request was "
                    "kept: send it again after Retry-After"
                }
        try:
            payload = parse_json(body)
        except Invalid as error:
            self._rejected(None, 400)
            return 400, {"error": str(error)}
        try:
            if kind == "records":
                now_ns = self._clock.time_ns()
                parsed = [values for _, values in parse_records(payload, now_ns=now_ns)]
                self._fill_gpu(parsed)
                rows = [
                    (
                        typing.cast(str, values["record_id"]),
                        dumps(values),
                        values.get("recorded_by") is not None,  # a stand-in, replaceable
                    )
                    for values in parsed
                ]
            else:
                notices = parse_starts(payload, now_ns=self._clock.time_ns())
                starts = [
                    (
                        typing.cast(str, values["record_id"]),
                        dumps(values),
                        process_start(typing.cast(int, values["pid"])),
                    )
                    for values in notices
                ]
        except Invalid as error:
            items = payload.get(kind) if kind == "records" and isinstance(payload, dict) else None
            self._rejected(items, 400)
            return 400, {"error": str(error)}
        spool = self._spool
        if spool is None:
            return 503, {"error": "the sidecar is shutting down"}
        now_ns = self._clock.time_ns()
        try:
            if kind == "records":
                accepted, duplicates = spool.add_records(rows, now_ns)
            else:
                accepted, duplicates = spool.add_starts(starts, now_ns)
        except sqlite3.Error as error:
            return 503, {"error": self._spool_failed(error)}
        self._spool_recovered()
        if kind == "starts" and self._gpu is not None:
            try:
                self._gpu.started(notices)
            except Exception as error:  # GPU fields stay null: the record is what matters
                _guard.log_once("sidecar.gpu", "gpuledger sidecar: GPU metering failed", error)
        if kind == "records":
            self._counters.add("records_received", accepted + duplicates)
            self._counters.add("records_duplicate", duplicates)
        else:
            self._counters.add("starts_received", accepted + duplicates)
        if accepted:
            for consumer in self._consumers:
                consumer.wake.set()
        return 200, {"accepted": accepted, "duplicates": duplicates}

    def _fill_gpu(self, records: list[dict[str, object]]) -> None:
        """Fill the GPU fields ``records`` lack from the sidecar's own meter, if it has one."""
        if self._gpu is not None:
            try:
                self._gpu.fill(records)
            except Exception as error:  # GPU fields stay null: the record is what matters
                _guard.log_once("sidecar.gpu", "gpuledger sidecar: GPU metering failed", error)

    def _spool_failed(self, error: sqlite3.Error) -> str:
        reason = f"the spool cannot be written ({error}): nothing from this request was kept"
        self._counters.add("spool_write_failures")
        first = self._spool_error is None
        self._spool_error = f"the spool at {self.spool_path} cannot be written: {error}"
        if first:
            get_logger().error(
                "gpuledger sidecar: THE SPOOL CANNOT BE WRITTEN; requests are refused with 503 "
                "(workers keep their records) until it can",
                spool=self.spool_path,
                error=str(error),
            )
        return reason

    def _spool_recovered(self) -> None:
        if self._spool_error is not None:
            self._spool_error = None
            get_logger().warning("gpuledger sidecar: the spool can be written again")

    def _prune(self) -> None:
        spool = self._spool
        if spool is None:
            return
        with self._prune_lock:
            spool.prune([consumer.name for consumer in self._consumers], self._clock.time_ns())

    # -- health and metrics -----------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, object]]:
        """``(status, answer)`` of ``GET /healthz``: 503 with a reason when the spool cannot be
        written (or read), a consumer has failed every attempt for longer than
        ``unhealthy_after_s``, or more than ``max_backlog`` records wait for a consumer; 200 with
        the backlog otherwise."""
        spool = self._spool
        if self._spool_error is not None and spool is not None and spool.full:
            with contextlib.suppress(OSError, sqlite3.Error):
                if spool.room_again():
                    self._spool_recovered()
        counts = self._counts()
        answer: dict[str, object] = {
            "status": "ok",
            "spooled": counts.get("spooled", 0),
            "pending_export": counts.get("pending_otlp", 0),
            "pending_ledger": counts.get("pending_ledger", 0),
            "open_invocations": counts.get("open_invocations", 0),
        }
        if counts.get("dead_letters"):
            answer["dead_letters"] = counts["dead_letters"]
        problems: list[str] = []
        if self._spool_error or not counts:
            problems.append(self._spool_error or "the spool cannot be read")
        now_ns = self._clock.time_ns()
        failing: dict[str, object] = {}
        for consumer in self._consumers:
            since_ns = consumer.failing_since_ns
            if since_ns is None:
                continue
            failing_s = max(now_ns - since_ns, 0) / 1e9
            failing[consumer.name] = {"for_s": round(failing_s, 3), "error": consumer.last_error}
            if consumer.damaged:
                problems.append(f"the {consumer.name} is damaged: {consumer.damaged}")
            elif failing_s > self._unhealthy_after_s:
                problems.append(
                    f"the {consumer.name} consumer has failed every attempt for "
                    f"{failing_s:.0f} s (over {self._unhealthy_after_s:g} s): "
                    f"{consumer.last_error}"
                )
        if failing:
            answer["failing"] = failing
        backlog = max(
            (value for key, value in counts.items() if key.startswith("pending_")), default=0
        )
        if self._max_backlog is not None and backlog > self._max_backlog:
            problems.append(f"{backlog} records wait for delivery (over {self._max_backlog})")
        if problems:
            answer["status"] = "unavailable"
            answer["reason"] = "; ".join(problems)
            return 503, answer
        return 200, answer

    def live(self) -> tuple[int, dict[str, object]]:
        """``GET /livez``: 200 while the process serves requests (the container's liveness;
        ``/healthz`` says whether delivery is healthy)."""
        return 200, {"status": "live"}

    def metrics_text(self) -> str:
        """The Prometheus text exposition of the sidecar's counters and gauges."""
        counts = self._counts()
        counter = self._counters.get
        text = _Exposition("gpuledger_sidecar_")
        for name, description, key in _COUNTERS:
            text.add(name, "counter", description, counter(key))
        text.add(
            "requests_rejected_total",
            "counter",
            "Requests refused, by HTTP status.",
            *((f'code="{code}"', counter(f"rejected_{code}")) for code in (400, 413)),
        )
        text.add(
            "killed_total",
            "counter",
            "Invocations the watcher recorded, by outcome.",
            *((f'outcome="{outcome}"', counter(f"watch_{outcome}")) for outcome in _WATCHED),
        )
        gauges = {
            "spool_records": counts.get("spooled", 0),
            "spool_bytes": self._spool.size_bytes() if self._spool else 0,
            "pending_export": counts.get("pending_otlp", 0),
            "pending_ledger": counts.get("pending_ledger", 0),
            "open_invocations": counts.get("open_invocations", 0),
            "spool_writable": 0 if self._spool_error else 1,
            "dead_letters": counts.get("dead_letters", 0),
        }
        for name, description in _GAUGES:
            text.add(name, "gauge", description, gauges[name])
        return text.render()

    # -- the watcher ------------------------------------------------------------------------

    def _watch(self) -> None:
        assert self._watch_interval_s is not None
        last_forget = 0.0
        while not self._stop_watch.wait(self._watch_interval_s):
            try:
                self.check_open_invocations()
                if time.monotonic() - last_forget > 60.0:
                    last_forget = time.monotonic()
                    spool = self._spool
                    if spool is not None:
                        spool.forget_delivered(self._clock.time_ns() - self._dedupe_window_ns)
            except Exception as error:
                if self._stop_watch.is_set():
                    return
                _guard.log_once(
                    "sidecar.watch", "gpuledger sidecar: the watcher failed (it keeps going)", error
                )

    def check_open_invocations(self) -> int:
        """One look at the open starts (what the watcher does every ``watch_interval_s``):
        note pids found gone, and record as ``killed`` or ``timeout`` the starts whose grace
        has passed. Returns how many were recorded."""
        spool = self._spool
        if spool is None:
            return 0
        now_ns = self._clock.time_ns()
        grace_ns = int(self.grace_s * 1e9)
        recorded = 0
        for start in spool.open_starts():
            try:
                outcome = self._close_if_due(spool, start, now_ns, grace_ns)
            except _UNUSABLE as error:
                # One notice that cannot be read (an older sidecar spooled it, before the checks
                # at the door) must not stop the watcher for every other.
                self._notice_unusable(start.record_id, f"{type(error).__name__}: {error}")
                continue
            if outcome is not None:
                recorded += 1
                self._counters.add(f"watch_{outcome}")
                get_logger().info(
                    f"gpuledger sidecar: an invocation recorded as {outcome}",
                    outcome=outcome,
                    record_id=start.record_id,
                    pid=start.values["pid"],
                )
        if recorded:
            for consumer in self._consumers:
                consumer.wake.set()
        return recorded

    def _close_if_due(
        self, spool: Spool, start: OpenStart, now_ns: int, grace_ns: int
    ) -> str | None:
        """Record ``start`` as killed or timed out if its time has
        come; the outcome, or None. Raises ``_UNUSABLE`` errors for a notice that cannot be
        read; a timeout that cannot be used is ignored (said once), the pid still watched."""
        values = start.values
        start_ns = int(values["start_ns"])
        timeout_s = values.get("timeout_s")
        timeout_end = None
        if timeout_s is not None:
            if type(timeout_s) in (int, float) and 0 < timeout_s <= MAX_TIMEOUT_S:
                timeout_end = start_ns + int(timeout_s * 1e9)
            else:
                self._notice_unusable(
                    start.record_id,
                    f"timeout_s {timeout_s!r} is not more than 0 and at most {MAX_TIMEOUT_S} "
                    "seconds: ignored, the pid is still watched",
                )
        gone_ns = start.gone_ns
        if gone_ns is None and not self._pid_alive(int(values["pid"]), start.pid_start):
            gone_ns = now_ns
            spool.mark_gone(start.record_id, now_ns)
        if gone_ns is not None and (timeout_end is None or gone_ns < timeout_end):
            if now_ns - gone_ns < grace_ns:
                return None
            outcome, end_ns = "killed", max(gone_ns, start_ns)
        elif timeout_end is not None and now_ns >= timeout_end + grace_ns:
            outcome, end_ns = "timeout", timeout_end
        else:
            return None
        pricer, unpriced = self._pricer(str(values["platform"]), values.get("gpu_model"))
        record = closing_record(values, outcome, end_ns, pricer, unpriced).to_dict()
        # What the door checks, so that nothing spooled from an old notice stalls an exporter.
        parse_records({"records": [record]}, now_ns=now_ns)
        self._fill_gpu([record])
        return outcome if spool.close_start(start.record_id, dumps(record), now_ns) else None

    def _notice_unusable(self, record_id: str, reason: str) -> None:
        """Count and log, once per notice, a start notice the watcher cannot (fully) use."""
        if record_id in self._unusable_notices:
            return
        self._unusable_notices.add(record_id)
        self._counters.add("watch_unusable_notices")
        get_logger().error(
            "gpuledger sidecar: a start notice in the spool cannot be used by the watcher "
            "(it goes on with the others)",
            record_id=record_id,
            reason=reason,
        )

    def _pricer(self, platform: str, gpu: str | None) -> tuple[Any, str]:
        """The compiled price of ``gpu`` on ``platform`` (None and why, when there is none)."""
        from gpuledger._errors import PricingError  # noqa: PLC0415
        from gpuledger._pricing import (  # noqa: PLC0415
            compile_pricer,
            load_catalogue,
            unpriced_reason,
        )

        if self._catalogue is None:
            try:
                self._catalogue = load_catalogue(None)
            except PricingError as error:
                get_logger().error(
                    "gpuledger sidecar: the pricing catalogue cannot be loaded", error=str(error)
                )
                self._catalogue = False
        if self._catalogue is False:
            return None, "unpriced: the pricing catalogue could not be loaded"
        key = (platform, gpu)
        if key not in self._pricers:
            price = self._catalogue.lookup(platform, gpu)
            self._pricers[key] = (
                None if price is None else compile_pricer(price, self._catalogue.version)
            )
        pricer = self._pricers[key]
        if pricer is not None:
            return pricer, ""
        return None, unpriced_reason(platform, gpu, self._catalogue)


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(name, value, "expected a finite number of seconds")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(
            name, value, "must be more than 0" if not allow_zero else "must be 0 or more"
        )
