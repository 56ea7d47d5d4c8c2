"""The consumers: each delivers the spool's records to one sink, in ``seq`` order, from its own
cursor, advancing it only after the sink took the batch; a failed batch is retried, the same
batch, after a jittered backoff (``_sinks.Backoff``). The OTLP sink lives here too.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from gpuledger import _guard
from gpuledger._logging import get_logger
from gpuledger._record import InvocationRecord
from gpuledger._sinks import Backoff, Delivery, Sink
from gpuledger.sidecar._spool import Spool

_BATCH_RECORDS: Final = 512
"""Records per delivery: the SDK's batch span processor exports 512 spans at a time too."""
_IDLE_WAIT_S: Final = 1.0
"""A consumer with nothing to do looks again after this long even if nobody woke it."""
DEFAULT_LINGER_S: Final = 0.2
"""Woken after being idle, a consumer waits this long for more records before delivering: one
export of a hundred records costs little more than one of a single record (the SDK's batch
span processor waits 5 s)."""


class _Undelivered(Exception):
    """The OTLP receiver did not take a batch (it is retried)."""


class ResponseCheck:
    """Reads the OTLP/HTTP answer the SDK exporter got, which its ``export()`` result does not
    tell apart: the SDK counts any status under 400 as delivered (a redirect it does not follow
    included), and ignores a 200 whose ``partial_success`` says spans were rejected."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.body = b""
        self.content_type = ""

    def hook(self, response: Any, *args: object, **kwargs: object) -> None:
        self.status = int(response.status_code)
        self.body = bytes(response.content or b"")
        self.content_type = str(response.headers.get("Content-Type", ""))

    def reset(self) -> None:
        self.status = None
        self.body = b""

    def rejected(self) -> tuple[int, str]:
        """``(rejected spans, message)`` from the last answer's ``partial_success``."""
        if not self.body or "json" in self.content_type:
            return 0, ""
        from opentelemetry.proto.collector.trace.v1 import (  # noqa: PLC0415
            trace_service_pb2,
        )

        answer = trace_service_pb2.ExportTraceServiceResponse()
        try:
            answer.ParseFromString(self.body)
        except Exception:  # an answer that is not OTLP: nothing to read from it
            return 0, ""
        partial = answer.partial_success
        return int(partial.rejected_spans), str(partial.error_message)


class OtlpSink:
    """Exports batches as spans, then adds them to the invocation metrics."""

    name = "otlp"

    def __init__(
        self,
        span_exporter: Any,
        response_check: ResponseCheck | None,
        meter_factory: Callable[[Any], Any] | None,
        counters: Counters,
        pending: Callable[[], int],
    ) -> None:
        self._pending = pending
        self._exporter = span_exporter
        self._check = response_check
        self._meter_factory = meter_factory
        self._counters = counters
        self._metrics: dict[Any, Any] = {}
        self._providers: list[Any] = []
        self._rejected_warned = False
        self._too_many_warned = False

    def deliver(self, records: Sequence[InvocationRecord]) -> Delivery:
        try:
            self._export(records)
        except Exception as error:
            return Delivery(0, retry=tuple(records), error=error)
        return Delivery(len(records))

    def _export(self, records: Sequence[InvocationRecord]) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult  # noqa: PLC0415

        from gpuledger.exporters import record_resource, record_to_span  # noqa: PLC0415

        spans = [record_to_span(record, record_resource(record)) for record in records]
        if self._check is not None:
            self._check.reset()
        result = self._exporter.export(spans)
        if result is not SpanExportResult.SUCCESS:
            raise _Undelivered("the OTLP receiver did not take the batch")
        if self._check is not None:
            status = self._check.status
            if status is not None and not 200 <= status < 300:
                raise _Undelivered(
                    f"the OTLP endpoint answered {status}, which is not a delivery (a redirect "
                    "is not followed: check the endpoint URL)"
                )
            rejected, message = self._check.rejected()
            if rejected:
                # OTLP says a partial success must not be retried: the receiver refused these
                # for good. They stay in the ledger.
                self._counters.add("export_rejected", rejected)
                if not self._rejected_warned:
                    self._rejected_warned = True
                    get_logger().error(
                        "the OTLP receiver rejected spans (partial success); they are in the "
                        "ledger but not in the backend; further ones are counted",
                        rejected=rejected,
                        reason=message,
                    )
        self._record_metrics(records)

    def _record_metrics(self, records: Sequence[InvocationRecord]) -> None:
        if self._meter_factory is None:
            return
        from gpuledger.exporters import record_resource  # noqa: PLC0415

        groups: dict[Any, list[InvocationRecord]] = {}
        for record in records:
            groups.setdefault((record_resource(record), record.platform), []).append(record)
        for (resource, platform), group in groups.items():
            metrics = self._metrics.get((resource, platform))
            if metrics is None:
                metrics = self._new_metrics(resource, platform)
                if metrics is None:
                    continue
            try:
                metrics.record(group)
            except Exception as error:  # metrics are best effort: the span went out
                _guard.log_once(
                    "sidecar.metrics",
                    "gpuledger sidecar: recording invocation metrics failed",
                    error,
                )

    def _new_metrics(self, resource: Any, platform: str) -> Any:
        from gpuledger._platform import platform_defaults  # noqa: PLC0415
        from gpuledger.exporters import InvocationMetrics  # noqa: PLC0415

        assert self._meter_factory is not None
        if len(self._metrics) >= 32:
            # A provider (and its export thread) per worker resource: bounded. Spans and the
            # ledger carry every record regardless.
            if not self._too_many_warned:
                self._too_many_warned = True
                get_logger().warning(
                    "invocation metrics are kept for the first 32 workers seen only"
                )
            return None
        provider = self._meter_factory(resource)
        self._providers.append(provider)
        metrics = InvocationMetrics(
            provider,
            trigger=platform_defaults(platform).faas_trigger,
            user_attributes=False,
            telemetry_errors=dict,
            pending=self._pending,  # records the sidecar holds for the ledger
        )
        self._metrics[(resource, platform)] = metrics
        return metrics

    def abort(self) -> None:
        """Shut the span exporter down, ending any retry wait of its own."""
        with contextlib.suppress(Exception):
            self._exporter.shutdown()

    def close(self, timeout_s: float = 0.0) -> None:
        """Export the metrics recorded so far and shut their exporters down."""
        deadline = time.monotonic() + timeout_s
        for provider in self._providers:
            remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
            with contextlib.suppress(Exception):
                provider.shutdown(timeout_millis=remaining_ms)
        self._providers.clear()
        self._metrics.clear()


class Counters:
    """The sidecar's own counters (reset at each start, as Prometheus counters may be)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)


class Consumer:
    """Delivers the spool's records to one sink, in ``seq`` order, on a thread of its own."""

    def __init__(
        self,
        sink: Sink,
        spool: Spool,
        counters: Counters,
        backoff: Backoff,
        on_advance: Callable[[], None],
        linger_s: float = DEFAULT_LINGER_S,
        batch_size: int = _BATCH_RECORDS,
    ) -> None:
        self.sink = sink
        self._linger_s = linger_s
        self.name = sink.name
        self._spool = spool
        self._counters = counters
        self._backoff = backoff
        self._on_advance = on_advance
        self._batch_size = batch_size
        self.cursor = spool.cursor(self.name)
        self._unsaved: int | None = None
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"gpuledger-sidecar-{self.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def signal_stop(self) -> None:
        """Ask the thread to stop after the batch in hand."""
        self._stop.set()
        self.wake.set()

    def join(self, timeout_s: float) -> bool:
        """Wait for the thread; False if it still runs ``timeout_s`` later."""
        self._thread.join(max(timeout_s, 0.0))
        return not self._thread.is_alive()

    def _run(self) -> None:
        batch: list[tuple[int, InvocationRecord]] | None = None
        failures = 0
        while not self._stop.is_set():
            if self._unsaved is not None:
                self._save(self._unsaved)
            try:
                if batch is None:
                    self.wake.clear()  # before reading: a wake during the read is not lost
                    rows = self._spool.read(self.cursor, self._batch_size)
                    if not rows:
                        if self.wake.wait(_IDLE_WAIT_S) and self._linger_s:
                            self._stop.wait(self._linger_s)
                        continue
                    batch = [
                        (seq, InvocationRecord.from_dict(json.loads(body))) for seq, body in rows
                    ]
                delivery = self.sink.deliver([record for _, record in batch])
                if not delivery.ok:
                    # Refused records stay too: the same batch is retried until it is taken.
                    raise delivery.error or _Undelivered(f"the {self.name} did not take the batch")
            except Exception as error:
                if self._stop.is_set():
                    return  # stopping: the spool or the exporter was closed under us
                failures += 1
                self._counters.add(f"{self.name}_failures")
                if failures == 1:
                    get_logger().error(
                        f"gpuledger sidecar: {self.name} delivery failing; the records stay in "
                        "the spool and the same batch is retried with backoff",
                        consumer=self.name,
                        error=f"{type(error).__name__}: {error}",
                    )
                self._stop.wait(self._backoff.next_delay())
                continue
            if failures:
                get_logger().warning(
                    f"gpuledger sidecar: {self.name} delivery recovered",
                    consumer=self.name,
                    failed_attempts=failures,
                )
                failures = 0
            self._backoff.reset()
            self._counters.add(f"{self.name}_delivered", len(batch))
            self.cursor = batch[-1][0]
            batch = None
            self._save(self.cursor)

    def _save(self, seq: int) -> None:
        """Commit the cursor, then prune the spool. A cursor the spool cannot take now is kept
        and tried again before the next batch; delivery goes on meanwhile (should the sidecar
        die first, the batches since the last saved cursor are delivered again: the ledger
        skips them, OTLP receivers see the same span ids)."""
        self._unsaved = seq
        try:
            self._spool.advance(self.name, seq)
            self._unsaved = None
            self._on_advance()
        except Exception as error:
            if not self._stop.is_set():
                _guard.log_once(
                    f"sidecar.save.{self.name}",
                    f"gpuledger sidecar: the {self.name} cursor cannot be saved in the spool "
                    "(retried with each batch)",
                    error,
                )
