"""The consumers: each delivers the spool's records to one sink, in ``seq`` order, from its own
cursor, advancing it only after the sink took the batch; a failed batch is retried after a
jittered backoff (``_sinks.Backoff``). The OTLP sink lives here too.

Per-record quarantine: a row that is not a record is a dead letter at once; a batch the sink
refuses for good (``Delivery.rejected``: a record OTLP cannot encode, an HTTP 4xx) is split in
halves until the refused records are found, each is retried on its own, then set aside as a dead
letter (``Spool.dead_letter``) where it is the record's fault: it cannot be encoded, or the sink
took other records meanwhile. A sink that is down (``Delivery.retry``: no connection, 5xx) or
refuses every record sets nothing aside: the records wait, as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from gpuledger import _guard
from gpuledger._logging import get_logger
from gpuledger._record import InvocationRecord
from gpuledger._sinks import Backoff, Delivery, Sink
from gpuledger._sqlite_files import is_damage
from gpuledger.sidecar._spool import Spool

_BATCH_RECORDS: Final = 512
"""Records per delivery: the SDK's batch span processor exports 512 spans at a time too."""
_IDLE_WAIT_S: Final = 1.0
"""A consumer with nothing to do looks again after this long even if nobody woke it."""
DEFAULT_LINGER_S: Final = 0.2
"""Woken after being idle, a consumer waits this long for more records before delivering: one
export of a hundred records costs little more than one of a single record (the SDK's batch
span processor waits 5 s)."""


_SUSPECT_ATTEMPTS: Final = 3
"""How often a record a sink refused is retried on its own before it becomes a dead letter."""
_MOST_UNPROVEN: Final = 4
"""Records refused while the sink took none: past this many, the sink is refusing everything
(a wrong path, a bad token), and no record is set aside for it."""


class _Undelivered(Exception):
    """The OTLP receiver did not take a batch (it is retried)."""


class _Rejected(_Undelivered):
    """The OTLP receiver refused the batch for good (an HTTP 4xx other than 408 and 429: OTLP
    says not to retry it): one of its records, or the receiver's settings (a size limit)."""


class _Unencodable(Exception):
    """A record in the batch cannot be made into OTLP (the record's fault, for certain)."""


@dataclasses.dataclass(slots=True)
class _Suspect:
    """A record a sink refused, being retried on its own."""

    record: InvocationRecord
    baseline: int
    """Records the consumer had delivered before the pass that found it."""
    partial: bool
    """The sink took the rest of the batch while refusing this one."""
    definite: bool
    """It cannot be encoded: its fault whatever the destination does."""
    error: BaseException
    attempts: int = 0


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
        except (_Rejected, _Unencodable) as error:
            return Delivery(0, rejected=tuple(records), error=error)
        except Exception as error:
            return Delivery(0, retry=tuple(records), error=error)
        return Delivery(len(records))

    def _export(self, records: Sequence[InvocationRecord]) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult  # noqa: PLC0415

        from gpuledger.exporters import record_resource, record_to_span  # noqa: PLC0415

        try:
            spans = [record_to_span(record, record_resource(record)) for record in records]
        except Exception as error:
            raise _Unencodable(f"a record cannot be made into a span: {error}") from error
        if self._check is not None:
            self._check.reset()
        try:
            result = self._exporter.export(spans)
        except Exception:
            _check_encoding(spans)
            raise
        if result is not SpanExportResult.SUCCESS:
            status = None if self._check is None else self._check.status
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                raise _Rejected(f"the OTLP endpoint refused the batch with {status}")
            if status is None:
                _check_encoding(spans)  # the exporter says no more than "failure"
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


def _check_encoding(spans: Sequence[Any]) -> None:
    """Raise ``_Unencodable`` if ``spans`` cannot be encoded as an OTLP request."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import (  # noqa: PLC0415
        encode_spans,
    )

    try:
        encode_spans(spans).SerializePartialToString()
    except Exception as error:
        raise _Unencodable(f"the spans cannot be encoded as OTLP: {error}") from error


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
        clock: Callable[[], int] = time.time_ns,
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
        self._clock = clock
        self._unsaved: int | None = None
        self._done: set[int] = set()  # delivered or set aside, beyond the cursor
        self._suspects: dict[int, _Suspect] = {}
        self._taken = 0
        self._logged: set[tuple[str, str]] = set()
        self._failing_since_ns: int | None = None
        self._last_error = ""
        self._damaged = ""
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

    @property
    def failing_since_ns(self) -> int | None:
        """When the current run of failed attempts began (the clock's Unix ns), None while the
        last attempt delivered (or there was nothing to deliver)."""
        return self._failing_since_ns

    @property
    def last_error(self) -> str:
        """The last failure, ``Type: message`` ("" when none)."""
        return self._last_error

    @property
    def damaged(self) -> str:
        """Why the sink's file is damaged, when the last attempt failed for that ("" if not):
        retrying cannot help, so ``/healthz`` says so at once; the ledger sink's next open
        moves a damaged SQLite ledger aside (see ``Sidecar._open_ledger``)."""
        return self._damaged

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if self._unsaved is not None:
                self._save(self._unsaved)
            try:
                self.wake.clear()  # before reading: a wake during the read is not lost
                rows = self._spool.read(self.cursor, self._batch_size + len(self._done))
                if not rows:
                    self._healthy()
                    if self.wake.wait(_IDLE_WAIT_S) and self._linger_s:
                        self._stop.wait(self._linger_s)
                    continue
                error = self._pass(rows)
                if error is not None:
                    raise error
            except Exception as error:
                if self._stop.is_set():
                    return  # stopping: the spool or the exporter was closed under us
                failures += 1
                self._counters.add(f"{self.name}_failures")
                self._last_error = f"{type(error).__name__}: {error}"
                if is_damage(error):
                    if not self._damaged:
                        get_logger().error(
                            f"gpuledger sidecar: the {self.name} is damaged; /healthz answers "
                            "503 until it can be written (a damaged SQLite ledger is moved "
                            "aside at the next attempt)",
                            consumer=self.name,
                            error=self._last_error,
                        )
                    self._damaged = self._last_error
                if self._failing_since_ns is None:
                    self._failing_since_ns = self._clock()
                if failures == 1:
                    get_logger().error(
                        f"gpuledger sidecar: {self.name} delivery failing; the records stay in "
                        "the spool and are retried with backoff",
                        consumer=self.name,
                        error=self._last_error,
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
            self._healthy()
            self._backoff.reset()

    def _healthy(self) -> None:
        self._failing_since_ns = None
        self._last_error = ""
        self._damaged = ""

    def _pass(self, rows: Sequence[tuple[int, str, str | None]]) -> BaseException | None:
        """Deliver what can be delivered of ``rows``, set aside what cannot, move the cursor
        over the longest run of rows done; the error that stopped the pass, if one did."""
        pending: list[tuple[int, InvocationRecord]] = []
        for seq, body, only_for in rows:
            if seq in self._done:
                continue
            if only_for is not None and f",{self.name}," not in only_for:
                self._done.add(seq)  # re-driven for another consumer
                continue
            try:
                record = InvocationRecord.from_dict(json.loads(body))
            except Exception as unreadable:  # a row no record can be read from: at once
                self._dead_letter(seq, "decode", unreadable)
                continue
            pending.append((seq, record))
        try:
            failure = self._isolate(pending, self._taken)
            if failure is None:
                failure = self._settle()
        finally:
            self._advance(rows)
        return failure

    def _isolate(
        self, items: Sequence[tuple[int, InvocationRecord]], baseline: int
    ) -> BaseException | None:
        """Deliver ``items``; a batch refused for good is split in halves until the records it
        cannot take are found (they become suspects, see :meth:`_settle`). Returns the error of
        a failure that is not the records' (the destination is down): retried later."""
        if not items:
            return None
        delivery = self.sink.deliver([record for _, record in items])
        rejected = {id(record) for record in delivery.rejected}
        retry = {id(record) for record in delivery.retry}
        taken = [seq for seq, record in items if id(record) not in rejected | retry]
        self._took(taken)
        if delivery.ok:
            return None
        if retry:
            return delivery.error or _Undelivered(f"the {self.name} did not take the batch")
        bad = [(seq, record) for seq, record in items if id(record) in rejected]
        error = delivery.error or _Undelivered(f"the {self.name} refused the records")
        if taken or len(bad) == 1:
            # The sink found them itself (it took the others), or this is one record.
            for seq, record in bad:
                self._suspects.setdefault(
                    seq,
                    _Suspect(record, baseline, bool(taken), isinstance(error, _Unencodable), error),
                )
            unproven = [s for s in self._suspects.values() if not s.definite]
            if len(unproven) >= _MOST_UNPROVEN and self._taken == baseline:
                return _Undelivered(
                    f"the {self.name} refuses every record tried ({error}): taken to be its "
                    "fault, not the records'"
                )
            return None
        middle = len(bad) // 2
        return self._isolate(bad[:middle], baseline) or self._isolate(bad[middle:], baseline)

    def _settle(self) -> BaseException | None:
        """Retry each suspect on its own (``_SUSPECT_ATTEMPTS`` times, with backoff); one still
        refused becomes a dead letter where that is the record's fault: it could not be encoded,
        or the sink took other records meanwhile. Otherwise the sink may be refusing everything:
        the suspect waits (for records that can show which it is)."""
        for seq in sorted(self._suspects):
            suspect = self._suspects[seq]
            while suspect.attempts < _SUSPECT_ATTEMPTS:
                if self._stop.wait(self._backoff.next_delay()):
                    return suspect.error
                suspect.attempts += 1
                delivery = self.sink.deliver([suspect.record])
                if delivery.ok:
                    self._took([seq])
                    break
                if delivery.retry and not suspect.partial:
                    # Down rather than refusing: not the record's fault (yet).
                    return delivery.error or _Undelivered(f"the {self.name} did not take it")
                suspect.error = delivery.error or suspect.error
            else:
                if not (suspect.definite or suspect.partial or self._taken > suspect.baseline):
                    return suspect.error
                del self._suspects[seq]
                self._dead_letter(seq, "undeliverable", suspect.error)
        return None

    def _took(self, seqs: Sequence[int]) -> None:
        for seq in seqs:
            self._done.add(seq)
            self._suspects.pop(seq, None)
        self._taken += len(seqs)
        if seqs:
            self._counters.add(f"{self.name}_delivered", len(seqs))

    def _dead_letter(self, seq: int, kind: str, error: BaseException) -> None:
        """Set row ``seq`` aside (counted, logged once per reason) and count it as done."""
        reason = f"{kind}: {type(error).__name__}: {error}"
        self._spool.dead_letter(self.name, [(seq, reason)], self._clock())
        self._done.add(seq)
        self._counters.add("dead_letters")
        self._counters.add(f"{self.name}_dead_letters")
        key = (kind, type(error).__name__)
        if key not in self._logged:
            self._logged.add(key)
            get_logger().error(
                f"gpuledger sidecar: the {self.name} cannot take a record; it is set aside as a "
                "dead letter (gpuledger sidecar dead-letters lists them, --redrive puts them "
                "back); further ones for this reason are counted",
                consumer=self.name,
                seq=seq,
                reason=reason,
            )

    def _advance(self, rows: Sequence[tuple[int, str, str | None]]) -> None:
        """Move the cursor over the leading rows that are done."""
        cursor = self.cursor
        for seq, _, _ in rows:
            if seq not in self._done:
                break
            self._done.discard(seq)
            cursor = seq
        if cursor != self.cursor:
            self.cursor = cursor
            self._save(cursor)

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
