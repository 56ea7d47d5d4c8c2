"""The agent: settings, the per-process worker state, telemetry, and the background writer.

There is one agent per process, created by ``configure()`` or, if the application never calls
it, from the environment on the first invocation. ``begin``/``end`` are the request path: they
read two clocks, update the worker state, open and close the span, and hand the finished
invocation to the background writer. Everything else (the full record, its price when no span
needs it, metrics, the ledger row) happens on the writer's thread.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from types import FrameType
from typing import Any

from gpuledger import _guard
from gpuledger._calls import CallSummary, calls_measured, summarise
from gpuledger._errors import ConfigError, PricingError
from gpuledger._invocation import Invocation, _current
from gpuledger._logging import configure_logging, get_logger
from gpuledger._platform import PlatformInfo, default_worker_id, detect_platform, platform_defaults
from gpuledger._record import InvocationRecord
from gpuledger._settings import Settings, env_sets, resolve_settings
from gpuledger._worker import InitInfo, Phase, WorkerState, shares

__all__ = ["Agent", "HandlerSpec", "configure", "flush", "get_agent", "shutdown"]

_DENSE_COUNT = 10
"""Adaptive flushing: more than this many invocations in ``_DENSE_WINDOW_NS`` is dense."""
_DENSE_WINDOW_NS = 60 * 10**9
_SIDECAR_RETRY_S = 5.0
"""After the sidecar failed, how long the local ledger takes records before it is tried again."""


class _StartNotice:
    """Queued at an invocation's start (sidecar mode): the writer tells the sidecar."""

    __slots__ = ("invocation",)

    def __init__(self, invocation: Invocation) -> None:
        self.invocation = invocation


class HandlerSpec:
    """What ``@traced_handler`` was told about one handler."""

    __slots__ = ("has_options", "invocation_id", "name", "tags", "user")

    def __init__(
        self,
        name: str,
        user: Callable[..., object] | None = None,
        tags: Callable[..., Mapping[str, object]] | None = None,
        invocation_id: Callable[..., object] | None = None,
    ) -> None:
        self.name = name
        self.user = user
        self.tags = tags
        self.invocation_id = invocation_id
        # Decided once, so the request path skips the options with one test.
        self.has_options = user is not None or tags is not None or invocation_id is not None


def _outcome(error: BaseException) -> str:
    if isinstance(error, GeneratorExit):
        return "cancelled"
    # Only a process that imported asyncio can raise its CancelledError; importing it here
    # would cost every user ~20 ms of start-up.
    # (Another thread may be importing asyncio right now: its module can be half-built.)
    cancelled = getattr(sys.modules.get("asyncio"), "CancelledError", None)
    if cancelled is not None and isinstance(error, cancelled):
        return "cancelled"
    if isinstance(error, TimeoutError):
        return "timeout"
    return "error"


class _SystemClock:
    time_ns = staticmethod(time.time_ns)
    perf_counter_ns = staticmethod(time.perf_counter_ns)


class Agent:
    """Everything one configured process needs to trace, price and record its invocations."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.settings = settings
        configure_logging(settings.log_format, settings.log_level)
        _guard.set_strict(settings.strict)
        clock = settings.clock or _SystemClock()
        self._time_ns: Callable[[], int] = clock.time_ns
        self._perf_ns: Callable[[], int] = clock.perf_counter_ns

        detected = detect_platform(env)
        if settings.platform is None or settings.platform == detected.platform:
            info = detected
        else:
            info = dataclasses.replace(platform_defaults(settings.platform))
        self.platform: PlatformInfo = info
        self.endpoint = settings.endpoint or info.endpoint
        self.worker_id = settings.worker_id or info.worker_id or default_worker_id()
        self.region = settings.region or info.region
        self.service_name = settings.service_name or self.endpoint or "unknown_service"
        self.gpu = settings.gpu
        self.gpu_count = settings.gpu_count

        self._runpod = info.platform == "runpod"
        self._setup_pricing()
        self._check_ledger_location(settings.ledger)
        self.worker = _worker_for(settings.prewarm_threshold_s, clock)
        self.gpu_meter: Any = None
        """The NVML meter once NVML is open; None before, and for good without a GPU."""
        self.gpu_uuids: str | None = None
        self.gpu_reason: dict[str, str] | None = {"gpu": "NVML still opening"}
        self.gpu_ready = threading.Event()
        """Set once NVML opened or failed to: GPU fields are measured from then on."""
        self._gpu_waiting: list[Invocation] = []
        self._setup_telemetry(env)

        from gpuledger._writer import Pipeline  # noqa: PLC0415

        self.pipeline = Pipeline(
            self._process_batch, max_pending=settings.max_pending, on_idle=self._gpu_tick
        )
        self._queue = self.pipeline.queue
        self._max_pending = settings.max_pending
        self._batch_size = self.pipeline.batch_size
        self._ledger: Any = None
        self._retry: list[InvocationRecord] = []
        self._ledger_failed_at: float | None = None
        self._pseudonym_warned = False
        self.closed = False
        self._sidecar: Any = None
        self._sidecar_retry_at = 0.0
        self._sidecar_warned = False
        self.sidecar_sent = 0
        """Records the sidecar acknowledged."""
        if settings.sidecar is not None:
            from gpuledger.sidecar._client import SidecarClient  # noqa: PLC0415

            self._sidecar = SidecarClient(settings.sidecar, token=settings.sidecar_token)
        policy = settings.flush_policy
        self._flush_each = policy == "invocation"
        self._flush_adaptive = policy == "adaptive"
        self._recent_ends: collections.deque[int] = collections.deque(maxlen=_DENSE_COUNT)
        self.flush_waits: list[float] = []
        """Seconds invocations' ends waited for their records (flush policies), newest last."""
        if settings.gpu_metering == "off":
            self.gpu_reason = {"gpu": "GPU metering off (gpu_metering=off)"}
            self.gpu_ready.set()
        else:
            # nvmlInit takes tens of ms, seconds on a driver without persistence mode: never on
            # the import or the first request's path.
            threading.Thread(
                target=self._open_gpu, args=(env,), name="gpuledger-nvml-open", daemon=True
            ).start()

    # -- set-up -----------------------------------------------------------------------------

    def _setup_pricing(self) -> None:
        from gpuledger._pricing import LOCAL_PLATFORMS, load_catalogue  # noqa: PLC0415

        settings = self.settings
        try:
            catalogue = load_catalogue(settings.pricing, use_env=False)
        except PricingError as error:
            raise ConfigError(
                "pricing", settings.pricing, str(error), settings.sources.get("pricing", "argument")
            ) from None
        self.catalogue = catalogue
        platform = self.platform.platform
        known = catalogue.platforms()
        if platform not in known and platform not in LOCAL_PLATFORMS:
            raise ConfigError(
                "platform",
                platform,
                f"no such platform in the pricing catalogue; expected one of "
                f"{', '.join([*known, *LOCAL_PLATFORMS])} (or add it with a pricing file)",
                settings.sources.get("platform", "argument"),
            )
        # With metering on, an unknown GPU may still be detected: warn after NVML has opened.
        self._choose_price(warn=settings.gpu_metering == "off" or self.gpu is not None)

    def _choose_price(self, *, warn: bool) -> None:
        """The price of this platform and GPU; warns when it is unknown (``warn``)."""
        catalogue = self.catalogue
        platform = self.platform.platform
        price = catalogue.lookup(platform, self.gpu)
        self.price = price
        if price is not None:
            from gpuledger._pricing import compile_pricer  # noqa: PLC0415

            self.pricer: Callable[..., Any] | None = compile_pricer(price, catalogue.version)
            self.cost_source: str = price.source
            return
        from gpuledger._pricing import LOCAL_PLATFORMS, unpriced_reason  # noqa: PLC0415

        self.pricer = None
        self.cost_source = unpriced_reason(platform, self.gpu)
        if not warn or platform in LOCAL_PLATFORMS:
            return
        if self.gpu is None:
            get_logger().warning(
                "GPU model unknown: costs are recorded as null; set GPULEDGER_GPU (e.g. H100)",
                platform=platform,
            )
        else:
            get_logger().warning(
                "no price for this platform and GPU: costs are recorded as null; add it "
                "with a pricing file (GPULEDGER_PRICING)",
                platform=platform,
                gpu=self.gpu,
            )

    def _open_gpu(self, env: Mapping[str, str]) -> None:
        """Open NVML (on its own thread): the meter, and the GPU model and count it shows."""
        try:
            from gpuledger._gpu import open_meter  # noqa: PLC0415

            settings = self.settings
            meter, reason = open_meter(
                settings.nvml,
                env,
                time_ns=self._time_ns,
                sample_hz=settings.gpu_sample_hz,
                settle_s=settings.gpu_settle_s,
            )
            if meter is None:
                self.gpu_reason = {"gpu": reason or "no GPU"}
                # No driver is a CPU machine, not a fault: one line, at info. NVML present but
                # failing is a fault: a warning.
                no_driver = (reason or "").startswith("no ")
                log = get_logger().info if no_driver else get_logger().warning
                log("no GPU metering: GPU fields are recorded as null", reason=reason)
            else:
                devices = meter.devices
                if settings.gpu is None:
                    self.gpu = self.catalogue.canonical_gpu(devices[0].name) or devices[0].name
                if settings.sources.get("gpu_count") == "default":
                    self.gpu_count = len(devices)
                self.gpu_uuids = ",".join(device.uuid for device in devices)
                self.gpu_reason = None
            if settings.gpu is None:
                self._choose_price(warn=True)
            if self.closed:
                if meter is not None:
                    meter.close()
                return
            self.gpu_meter = meter
        except Exception as error:
            self.gpu_reason = {"gpu": f"NVML failed to open: {type(error).__name__}"}
            _guard.record_failure("nvml.open", error)
        finally:
            self.gpu_ready.set()

    def _check_ledger_location(self, location: str) -> None:
        if self.settings.sidecar is None:  # with a sidecar, the local ledger is the fallback
            check_ledger_location(location, self.settings.sources.get("ledger", "argument"))

    def _setup_telemetry(self, env: Mapping[str, str]) -> None:
        settings = self.settings
        self.tracer: Any = None
        self.metrics: Any = None
        self.providers: Any = None
        exporters = settings.resolved_exporters(env)
        if not (settings.tracing or settings.metrics):
            return
        from gpuledger.exporters._providers import setup_providers  # noqa: PLC0415

        self.providers = setup_providers(
            tracing=settings.tracing,
            metrics=settings.metrics,
            exporters=exporters,
            resource_attributes=self.resource_attributes(),
            tracer_provider=settings.tracer_provider,
            meter_provider=settings.meter_provider,
            export_timeout_s=settings.flush_timeout_s,
            prometheus_address=(settings.prometheus_host, settings.prometheus_port),
        )
        if self.providers.tracer_provider is not None:
            from opentelemetry import context as otel_context  # noqa: PLC0415
            from opentelemetry import trace  # noqa: PLC0415

            from gpuledger._version import __version__  # noqa: PLC0415

            self.tracer = self.providers.tracer_provider.get_tracer("gpuledger", __version__)
            self._server_kind = trace.SpanKind.SERVER
            self._set_span_in_context = trace.set_span_in_context
            self._attach = otel_context.attach
            self._detach = otel_context.detach
            self._status_error = trace.Status(trace.StatusCode.ERROR)
            self._link = trace.Link
        if self.providers.meter_provider is not None:
            from gpuledger.exporters._metrics import InvocationMetrics  # noqa: PLC0415

            self.metrics = InvocationMetrics(
                self.providers.meter_provider,
                trigger=self.platform.faas_trigger,
                user_attributes=settings.user_id_on_metrics,
                telemetry_errors=_guard.error_counts,
                pending=lambda: self.pipeline.pending,
                gpu_readings=self._gpu_readings,
            )

    def _gpu_readings(self) -> list[dict[str, Any]]:
        meter = self.gpu_meter
        if meter is None:
            return []
        try:
            readings: list[dict[str, Any]] = meter.device_readings()
        except Exception as error:
            _guard.record_failure("nvml.device_metrics", error)
            return []
        return readings

    def resource_attributes(self) -> dict[str, Any]:
        """OpenTelemetry resource attributes of this worker (semantic-convention names)."""
        from gpuledger.exporters._attributes import worker_resource_attributes  # noqa: PLC0415

        return worker_resource_attributes(
            service_name=self.service_name,
            platform=self.platform.platform,
            region=self.region,
            endpoint=self.endpoint,
            worker_id=self.worker_id,
            gpu_model=self.gpu,
            gpu_count=self.gpu_count,
        )

    # -- the request path -------------------------------------------------------------------

    # The request path. enter() and exit() run on every call of every traced handler, so they
    # are written flat: no helper calls on the warm path, attributes read once into locals.
    # Both contain every failure: a handler never sees gpuledger raise.

    def enter(
        self,
        spec: HandlerSpec,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        activate: bool = True,
    ) -> Invocation | None:
        """Open an invocation of ``spec`` and (unless told not to) make it current.

        Never raises: a failure is contained and counted, and ``None`` means "run untraced".
        """
        try:
            start_ns = self._time_ns()
            invocation = Invocation(spec.name, start_ns, self._perf_ns())
            if spec.has_options:
                self._apply_options(invocation, spec, args, kwargs)
            elif args:
                # A RunPod-style job is the first argument (the second for a method).
                job = args[0]
                if type(job) is not dict and len(args) > 1:
                    job = args[1]
                if type(job) is dict and "input" in job and "id" in job:
                    invocation._invocation_id = str(job["id"])
            worker = self.worker
            init = None
            if worker.served_first:
                # WorkerState.begin's warm path, inlined.
                lock = worker.lock
                lock.acquire()
                active = worker.active
                worker.active = active + 1
                last_end_ns = worker.last_end_ns
                if active:
                    worker.join(invocation, start_ns)
                else:
                    worker.lone = invocation
                    worker.lone_start_ns = start_ns
                lock.release()
                gap = 0 if active else start_ns - last_end_ns
                invocation.idle_gap_ns = gap if gap > 0 else 0
            else:
                cold, init, invocation.idle_gap_ns = worker.begin(start_ns)
                with worker.lock:
                    if worker.active > 1:
                        worker.join(invocation, start_ns)
                    else:
                        worker.lone = invocation
                        worker.lone_start_ns = start_ns
                if init is not None:
                    invocation.cold = cold
                    invocation.init = init
            meter = self.gpu_meter
            if meter is not None:
                invocation.meter = meter
                if meter.boundary_reads:
                    meter.mark(start_ns)
            if self._sidecar is not None:
                invocation.record_id = f"{start_ns:016x}{os.urandom(8).hex()}"
                self.pipeline.submit(_StartNotice(invocation))
                self.pipeline.wake()
            if self.tracer is not None:
                invocation.span = self._start_span(spec.name, start_ns, invocation.cold, init)
                if activate:
                    invocation._otel_token = self._attach(
                        self._set_span_in_context(invocation.span)
                    )
            if activate:
                invocation._context_token = _current.set(invocation)
        except Exception as error:
            _guard.record_failure("handler.begin", error)
            return None
        return invocation

    def exit(
        self,
        invocation: Invocation,
        error: BaseException | None,
        result: object = None,
        *,
        active: bool = True,
    ) -> None:
        """Close ``invocation`` (making it no longer current) and queue it; never raises."""
        try:
            if active:
                _current.reset(invocation._context_token)  # type: ignore[arg-type]
                if invocation._otel_token is not None:
                    self._detach(invocation._otel_token)
            duration_ns = self._perf_ns() - invocation.start_perf_ns
            invocation.duration_ns = duration_ns
            if error is not None:
                invocation.outcome = _outcome(error)
                cls = type(error)
                invocation.error_type = (
                    cls.__qualname__
                    if cls.__module__ == "builtins"
                    else f"{cls.__module__}.{cls.__qualname__}"
                )
            elif self._runpod and type(result) is dict and result.get("error"):
                # RunPod fails a job whose handler returns {"error": ...}: its SDK reports FAILED.
                invocation.outcome = "error"
                invocation.error_type = "returned_error"
            start_ns = invocation.start_ns
            end_ns = start_ns + duration_ns
            worker = self.worker
            if worker.pending_phases:
                late_phases = worker.end(end_ns)
                if late_phases:
                    invocation.phases = (invocation.phases or []) + late_phases
                with worker.lock:
                    others = worker.leave(invocation, start_ns, end_ns)
            else:
                # WorkerState.end's fast path, inlined.
                lock = worker.lock
                lock.acquire()
                worker.active -= 1
                if end_ns > worker.last_end_ns:  # noqa: PLR1730  (max() costs a call here)
                    worker.last_end_ns = end_ns
                if worker.lone is invocation:  # ran alone throughout
                    worker.lone = None
                    others = None
                else:
                    others = worker.leave(invocation, start_ns, end_ns)
                lock.release()
            if others:
                segments = invocation.segments = shares(start_ns, end_ns, others)
                invocation.billed_ns = sum((b - a) / n for a, b, n in segments)
            if invocation.calls is not None:
                invocation.external = summarise(invocation.calls, start_ns, end_ns)
            meter = invocation.meter
            if meter is not None and meter.boundary_reads:
                meter.mark(end_ns)
            queue = self._queue
            if invocation.span is not None:
                # The writer ends the span from the invocation's record, at its real end time:
                # one mapping (exporters._records.span_attributes) for the worker and the sidecar.
                invocation.error = error
                if len(queue) >= self._max_pending:  # it will be dropped: end its span now
                    self._end_span_now(invocation)
            # Pipeline.submit's common case, inlined: room in the queue and the writer running.
            if len(queue) < self._max_pending and self.pipeline.running:
                queue.append(invocation)
                if len(queue) >= self._batch_size:
                    self.pipeline.wake()
            else:
                self.pipeline.submit(invocation)
            if self._flush_each or self._flush_adaptive:
                self._flush_after(end_ns)
        except Exception as failure:
            _guard.record_failure("handler.end", failure)

    def _flush_after(self, end_ns: int) -> None:
        """The flush policies: wait (bounded) until this invocation's record has left."""
        if self._flush_adaptive:
            ends = self._recent_ends
            dense = len(ends) == ends.maxlen and end_ns - ends[0] < _DENSE_WINDOW_NS
            ends.append(end_ns)
            if dense:
                return  # frequent invocations: the periodic writer keeps up, nothing to wait for
        started = time.perf_counter()
        self.pipeline.flush(self.settings.flush_wait_s)
        waited = time.perf_counter() - started
        self.flush_waits.append(waited)
        del self.flush_waits[:-1000]
        if self.metrics is not None:
            self.metrics.record_flush_wait(waited)

    def _start_span(self, name: str, start_ns: int, cold: bool, init: InitInfo | None) -> Any:
        links = None
        if init is not None:
            links = [self._link(self._emit_init_span(init))]
        return self.tracer.start_span(
            name,
            kind=self._server_kind,
            start_time=start_ns,
            links=links,
            attributes={"faas.trigger": self.platform.faas_trigger, "faas.coldstart": cold},
            record_exception=False,
            set_status_on_exception=False,
        )

    @staticmethod
    def _apply_options(
        invocation: Invocation, spec: HandlerSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if spec.invocation_id is not None:
            try:
                invocation._invocation_id = str(spec.invocation_id(*args, **kwargs))
            except Exception as error:
                _guard.record_failure("handler.invocation_id", error)
        else:
            for candidate in args[:2]:
                if type(candidate) is dict and "input" in candidate and "id" in candidate:
                    invocation._invocation_id = str(candidate["id"])
                    break
        if spec.user is not None:
            try:
                user = spec.user(*args, **kwargs)
                if user is not None:
                    invocation.user_id = str(user)
            except Exception as error:
                _guard.record_failure("handler.user", error)
        if spec.tags is not None:
            try:
                tags = spec.tags(*args, **kwargs)
                if tags:
                    invocation.tags = {str(key): str(value) for key, value in tags.items()}
            except Exception as error:
                _guard.record_failure("handler.tags", error)

    def activate(self, invocation: Invocation) -> None:
        """Make ``invocation`` (and its span) current in this context."""
        invocation._context_token = _current.set(invocation)
        if invocation.span is not None:
            invocation._otel_token = self._attach(self._set_span_in_context(invocation.span))

    def deactivate(self, invocation: Invocation) -> None:
        """Undo ``activate``."""
        if invocation._otel_token is not None:
            self._detach(invocation._otel_token)
            invocation._otel_token = None
        if invocation._context_token is not None:
            _current.reset(invocation._context_token)
            invocation._context_token = None

    def _end_span(self, invocation: Invocation, record: InvocationRecord) -> None:
        """End the invocation's span with ``record``'s attributes (the same set the sidecar
        exports), its status, and the exception the handler raised."""
        from gpuledger.exporters._attributes import span_attributes  # noqa: PLC0415

        span, invocation.span = invocation.span, None
        error, invocation.error = invocation.error, None
        if span is None:
            return
        try:
            span.set_attributes(span_attributes(record))
            if error is not None:
                span.record_exception(error, timestamp=record.end_ns)
            if record.outcome != "ok":
                span.set_status(self._status_error)
        finally:
            span.end(end_time=record.end_ns)

    def _end_span_now(self, invocation: Invocation) -> None:
        """End the span of an invocation that will not reach the writer (the queue is full)."""
        try:
            self._end_span(invocation, self.build_record(invocation))
        except Exception as failure:
            _guard.record_failure("span.end", failure)

    def _wait_cost(self, invocation: Invocation, wait_s: float) -> float | None:
        """What ``wait_s`` of this invocation's wall time cost: its billed share of it at the
        platform's per-GPU-second rate (GPUs held included); None when unpriced."""
        price = self.price
        if price is None:
            return None
        duration = invocation.duration_ns
        share = 1.0
        if invocation.billed_ns is not None and duration > 0:
            share = invocation.billed_ns / duration
        return float(wait_s * share * self.gpu_count * price.per_gpu_second_usd)

    def _cost(self, invocation: Invocation) -> Any:
        assert self.pricer is not None
        init_s = invocation.init.duration_s if invocation.cold and invocation.init else None
        if invocation.phases:
            init_s = (init_s or 0.0) + sum(
                phase.duration_s for phase in invocation.phases if phase.parent is None
            )
        billed_ns = invocation.billed_ns
        if billed_ns is None:
            billed_ns = invocation.duration_ns
        return self.pricer(billed_ns * self.gpu_count / 1e9, self.gpu_count, init_s)

    def _emit_init_span(self, init: InitInfo) -> Any:
        """The init as a span of its own (with a child per phase); returns its span context."""
        from opentelemetry import trace  # noqa: PLC0415

        init_span = self.tracer.start_span(
            "init",
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            kind=trace.SpanKind.INTERNAL,
            start_time=init.process_start_ns,
            attributes={
                "gpuledger.init.process_start_source": init.process_start_source,
                "gpuledger.init.duration_s": init.duration_s,
            },
        )
        self._emit_phase_spans(init.phases, init_span)
        init_span.end(end_time=max(init.end_ns, init.process_start_ns))
        return init_span.get_span_context()

    def _emit_phase_spans(self, phases: tuple[Phase, ...] | list[Phase], parent_span: Any) -> None:
        from opentelemetry import trace  # noqa: PLC0415

        spans: dict[str, Any] = {}
        for phase in phases:
            parent = spans.get(phase.parent, parent_span) if phase.parent else parent_span
            span = self.tracer.start_span(
                phase.name,
                context=trace.set_span_in_context(parent),
                kind=trace.SpanKind.INTERNAL,
                start_time=phase.start_ns,
                attributes={"gpuledger.phase": phase.name},
            )
            span.end(end_time=max(phase.end_ns, phase.start_ns))
            spans[phase.name] = span

    def now_ns(self) -> int:
        """The agent clock's wall time, Unix ns."""
        return self._time_ns()

    # -- users ------------------------------------------------------------------------------

    def user_key(self, user_id: str) -> tuple[str, bool]:
        """The id to store for ``user_id`` and whether it is a pseudonym."""
        if not self.settings.pseudonymize_users:
            return user_id, False
        key = self.settings.pseudonym_key
        if key is None and not self._pseudonym_warned:
            self._pseudonym_warned = True
            get_logger().warning(
                "user ids are hashed without a key: anyone can reverse them by hashing guesses; "
                "set GPULEDGER_PSEUDONYM_KEY"
            )
        return _pseudonym(key or "", user_id), True

    # -- the background writer --------------------------------------------------------------

    def _process_batch(self, batch: list[Any]) -> None:
        if self._sidecar is not None:
            batch = self._send_starts(batch)
        if self.gpu_meter is None and not self._gpu_waiting:
            self._record(batch)  # no GPU metering: nothing to wait for
            return
        waiting = self._gpu_waiting
        ready: list[Invocation] = []
        for invocation in batch:
            (ready if invocation.meter is None else waiting).append(invocation)
        if waiting:
            self._gpu_tick(force=False)
        if ready:
            self._record(ready)

    def _send_starts(self, batch: list[Any]) -> list[Invocation]:
        """Tell the sidecar which invocations started (those not finished yet); returns the
        finished invocations of ``batch``."""
        finished: list[Invocation] = []
        starts: list[dict[str, Any]] = []
        for item in batch:
            if type(item) is not _StartNotice:
                finished.append(item)
            elif not item.invocation.duration_ns:  # still running: its record will follow
                starts.append(self._start_notice(item.invocation))
        if starts and time.monotonic() >= self._sidecar_retry_at:
            from gpuledger.sidecar._client import SidecarError  # noqa: PLC0415

            try:
                self._sidecar.send_starts(starts)
            except SidecarError as error:
                self._sidecar_failed(error)
        return finished

    def _start_notice(self, invocation: Invocation) -> dict[str, Any]:
        user = None
        if invocation.user_id is not None:
            user = self.user_key(invocation.user_id)[0]
        return {
            "record_id": invocation.record_id,
            "invocation_id": invocation.invocation_id,
            "handler": invocation.handler,
            "start_ns": invocation.start_ns,
            "pid": os.getpid(),
            "service_name": self.service_name,
            "platform": self.platform.platform,
            "endpoint": self.endpoint,
            "worker_id": self.worker_id,
            "region": self.region,
            "gpu_model": self.gpu,
            "gpu_count": self.gpu_count,
            "timeout_s": self.price.timeout_s if self.price is not None else None,
            "user_id": user,
            "tenant": invocation.tenant,
        }

    def _sidecar_failed(self, error: BaseException) -> None:
        """The sidecar did not take a batch: the local ledger takes records for a while."""
        self._sidecar_retry_at = time.monotonic() + _SIDECAR_RETRY_S
        _guard.count("sidecar.fallback")
        if not self._sidecar_warned:
            self._sidecar_warned = True
            get_logger().warning(
                "gpuledger sidecar unreachable: writing invocations to the local ledger instead "
                "(and retrying the sidecar every few seconds); counted as "
                "gpuledger.telemetry.errors kind=sidecar.fallback",
                sidecar=self.settings.sidecar,
                ledger=self.settings.ledger,
                error=str(error),
            )

    def _gpu_tick(self, force: bool) -> None:
        """Measure the invocations waiting for NVML's samples to cover them (all if ``force``),
        end their spans and record them."""
        waiting = self._gpu_waiting
        if not waiting:
            return
        meter = waiting[0].meter
        try:
            meter.drain()
        except Exception as error:
            _guard.record_failure("nvml.drain", error)
        now_ns = self._time_ns()
        if force:
            settled, self._gpu_waiting = waiting, []
        else:
            settled = []
            held: list[Invocation] = []
            for invocation in waiting:
                end_ns = invocation.start_ns + invocation.duration_ns
                (settled if meter.settled(end_ns, now_ns) else held).append(invocation)
            self._gpu_waiting = held
        if not settled:
            return
        usages: list[Any] = []
        for invocation in settled:
            usage = None
            try:
                usage = invocation.meter.measure(
                    invocation.start_ns,
                    invocation.start_ns + invocation.duration_ns,
                    invocation.segments,
                )
            except Exception as error:
                _guard.record_failure("nvml.measure", error)
            usages.append(usage)
        self._record(settled, usages)
        with self.worker.lock:
            oldest = self.worker.oldest_start_ns() or now_ns
        if self._gpu_waiting:
            oldest = min(oldest, *(each.start_ns for each in self._gpu_waiting))
        meter.prune(oldest)

    def _record(self, batch: list[Invocation], usages: list[Any] | None = None) -> None:
        records: list[InvocationRecord] = []
        for i, invocation in enumerate(batch):
            try:
                record = self.build_record(invocation, None if usages is None else usages[i])
            except Exception as error:
                _guard.record_failure("record.build", error)
                if invocation.span is not None:  # never leave a span open
                    invocation.span.end(end_time=invocation.start_ns + invocation.duration_ns)
                    invocation.span = invocation.error = None
                continue
            records.append(record)
            if invocation.span is not None:
                try:
                    self._end_span(invocation, record)
                except Exception as error:
                    _guard.record_failure("span.end", error)
        if self.metrics is not None:
            try:
                self.metrics.record(records)
            except Exception as error:
                _guard.record_failure("metrics.record", error)
        self._write(records)

    def _write(self, records: list[InvocationRecord]) -> None:
        if self._sidecar is not None and records and time.monotonic() >= self._sidecar_retry_at:
            from gpuledger.sidecar._client import SidecarError  # noqa: PLC0415

            try:
                self._sidecar.send_records([record.to_dict() for record in records])
            except SidecarError as error:
                self._sidecar_failed(error)
            else:
                self.sidecar_sent += len(records)
                if self._retry:  # the ledger is failing too: nothing more to do than retry it
                    records = []
                else:
                    return
        pending = self._retry + records
        try:
            if self._ledger is None:
                from gpuledger.ledger._sqlite import open_ledger  # noqa: PLC0415

                self._ledger = open_ledger(self.settings.ledger)
            self._ledger.write(pending)
        except Exception as error:
            if len(pending) > 1 and self._ledger is not None:
                pending = self._write_one_by_one(pending)
            # Keep what could not be written for the next round, up to the bound.
            overflow = max(0, len(pending) - self.settings.max_pending)
            if overflow:
                _guard.count("ledger.dropped", overflow)
            self._retry = pending[overflow:]
            self._ledger_failing(error)
            _guard.record_failure("ledger.write", error)
        else:
            if self._ledger_failed_at is not None:
                self._ledger_failed_at = None
                get_logger().warning(
                    "gpuledger's ledger is writable again; held invocations written",
                    ledger=self._ledger_display(),
                    written=len(pending),
                )
            self._retry = []

    def _ledger_failing(self, error: BaseException) -> None:
        """Say loudly, at once and then every minute while it lasts, that the ledger is failing.

        The disk is the problem (full, read-only, removed), not a record: every invocation is
        held in memory and retried, and lost if the process exits first.
        """
        now = time.monotonic()
        if self._ledger_failed_at is not None and now - self._ledger_failed_at < 60.0:
            return
        self._ledger_failed_at = now
        get_logger().error(
            "gpuledger CANNOT WRITE ITS LEDGER: invocations are held in memory and retried, "
            "and are lost if this process exits before the ledger is writable again",
            ledger=self._ledger_display(),
            error=f"{type(error).__name__}: {error}",
            held=len(self._retry),
        )

    def _ledger_display(self) -> str:
        from gpuledger.ledger._sqlite import display_location  # noqa: PLC0415

        return display_location(self.settings.ledger)

    def _write_one_by_one(self, records: list[InvocationRecord]) -> list[InvocationRecord]:
        """After a failed batch: write what can be written, so one bad record cannot hold the
        rest back. Returns the records to retry (all of them if none could be written: then the
        ledger itself is failing, not a record)."""
        failed: list[InvocationRecord] = []
        for record in records:
            try:
                self._ledger.write([record])
            except Exception:
                failed.append(record)
        if len(failed) == len(records):
            return failed
        _guard.count("ledger.rejected", len(failed))
        if failed:
            get_logger().error(
                "gpuledger could not write some invocations to the ledger: rejected",
                rejected=len(failed),
                first_invocation_id=failed[0].invocation_id,
            )
        return []

    def build_record(self, invocation: Invocation, usage: Any = None) -> InvocationRecord:
        """The full record of a finished invocation (``usage``: what the GPU meter measured)."""
        duration_s = invocation.duration_ns / 1e9
        billed_ns = invocation.billed_ns
        billed_s = duration_s if billed_ns is None else billed_ns / 1e9
        init = invocation.init
        init_duration_s = init.duration_s if init is not None else None
        phases: dict[str, float] | None = init.phase_seconds() if init is not None else None
        if invocation.phases:
            phases = dict(phases or {})
            for phase in invocation.phases:
                key = phase.name if phase.parent is None else f"{phase.parent}/{phase.name}"
                phases[key] = phases.get(key, 0.0) + phase.duration_s
            init_duration_s = (init_duration_s or 0.0) + sum(
                phase.duration_s for phase in invocation.phases if phase.parent is None
            )
        user_id, pseudonymised = (
            self.user_key(invocation.user_id) if invocation.user_id is not None else (None, False)
        )
        cost = self._cost(invocation) if self.pricer is not None else None
        record = InvocationRecord(
            # Time-ordered ids keep the ledger's primary-key index append-mostly.
            record_id=invocation.record_id or f"{invocation.start_ns:016x}{os.urandom(8).hex()}",
            invocation_id=invocation.invocation_id,
            handler=invocation.handler,
            service_name=self.service_name,
            platform=self.platform.platform,
            endpoint=self.endpoint,
            worker_id=self.worker_id,
            region=self.region,
            gpu_model=self.gpu,
            gpu_count=self.gpu_count,
            start_ns=invocation.start_ns,
            end_ns=invocation.start_ns + invocation.duration_ns,
            duration_s=duration_s,
            outcome=invocation.outcome,  # type: ignore[arg-type]
            error_type=invocation.error_type,
            cold=invocation.cold,
            init_duration_s=init_duration_s,
            init_phases=phases,
            idle_gap_s=None if invocation.idle_gap_ns is None else invocation.idle_gap_ns / 1e9,
            billed_gpu_seconds=billed_s * self.gpu_count,
            gpu_unmeasured=self.gpu_reason if invocation.meter is None else None,
            **self._external_fields(invocation),
            user_id=user_id,
            user_id_pseudonymised=pseudonymised,
            tenant=invocation.tenant,
            tags=dict(invocation.tags or {}),
            input_tokens=invocation.input_tokens,
            output_tokens=invocation.output_tokens,
            cost_usd=cost.total_usd if cost else None,
            cost_execution_usd=cost.execution_usd if cost else None,
            cost_gpu_usd=cost.gpu_usd if cost else None,
            cost_coldstart_usd=cost.coldstart_usd if cost else None,
            pricing_platform=cost.platform if cost else None,
            pricing_version=cost.catalogue_version if cost else None,
            cost_source=cost.source if cost else self.cost_source,
        )
        if invocation.meter is not None:
            # Set after construction: the common record (no GPU) passes fewer arguments.
            record.gpu_uuids = self.gpu_uuids
            if usage is None:
                record.gpu_unmeasured = {
                    "gpu": "the GPU meter failed on this invocation (gpuledger.telemetry.errors)"
                }
            else:
                record.busy_gpu_seconds = usage.busy_gpu_seconds
                record.busy_source = usage.busy_source
                record.energy_j = usage.energy_j
                record.energy_active_j = usage.energy_active_j
                record.energy_idle_j = usage.energy_idle_j
                record.energy_source = usage.energy_source
                record.peak_gpu_memory_bytes = usage.peak_gpu_memory_bytes
                record.gpu_unmeasured = usage.unmeasured or None
        return record

    def _external_fields(self, invocation: Invocation) -> dict[str, Any]:
        external: CallSummary | None = invocation.external
        if external is None:
            if not calls_measured():
                return {}  # nothing counts calls in this process: unknown, not 0
            return {
                "external_calls": 0,
                "external_call_seconds": 0.0,
                "external_wait_seconds": 0.0,
                "external_wait_cost_usd": None if self.price is None else 0.0,
            }
        targets: dict[str, dict[str, float]] = {}
        for target, entry in external.targets.items():
            row: dict[str, float] = dict(entry)
            cost = self._wait_cost(invocation, float(entry["wait_s"]))
            if cost is not None:
                row["wait_usd"] = cost
            targets[target] = row
        return {
            "external_calls": external.calls,
            "external_call_seconds": external.call_seconds,
            "external_wait_seconds": external.wait_seconds,
            "external_wait_cost_usd": self._wait_cost(invocation, external.wait_seconds),
            "external_targets": targets or None,
        }

    # -- lifecycle --------------------------------------------------------------------------

    def flush(self, timeout_s: float | None = None) -> bool:
        """Write everything finished so far to the ledger and export telemetry; False on timeout."""
        timeout = self.settings.flush_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        done = self.pipeline.flush(timeout)
        if self.providers is not None:
            try:
                self.providers.flush(max(0.001, deadline - time.monotonic()))
            except Exception as error:
                _guard.record_failure("exporter.flush", error)
        return done

    def shutdown(self, timeout_s: float | None = None, *, at_exit: bool = False) -> bool:
        """Flush, stop the writer, close the ledger, flush the providers gpuledger built.

        Those providers are global and stay usable by a later ``configure()``; at process exit
        (``at_exit``) they are shut down too, within the same timeout."""
        if self.closed:
            return True
        self.closed = True
        timeout = self.settings.flush_timeout_s if timeout_s is None else timeout_s
        done = self.pipeline.close(timeout)
        if self._retry or self.pipeline.pending:
            get_logger().error(
                "gpuledger shut down with invocations not written to the ledger",
                unwritten=len(self._retry) + self.pipeline.pending,
                ledger=self.settings.ledger,
            )
        if self.providers is not None:
            try:
                if at_exit:
                    self.providers.close(timeout)
                else:
                    self.providers.flush(timeout)
            except Exception as error:
                _guard.record_failure("exporter.flush", error)
        meter = self.gpu_meter
        if meter is not None:
            meter.close()
        if self._sidecar is not None:
            self._sidecar.close()
        if self._ledger is not None:
            try:
                self._ledger.close()
            except Exception as error:
                _guard.record_failure("ledger.close", error)
            self._ledger = None
        return done


@lru_cache(maxsize=8192)
def _pseudonym(key: str, user_id: str) -> str:
    import hashlib  # noqa: PLC0415  (only when ids are pseudonymised)
    import hmac  # noqa: PLC0415

    # HMAC-SHA256, truncated to 128 bits: collision-free enough for chargeback, short in a table.
    return hmac.new(key.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


# -- the process-wide agent -----------------------------------------------------------------

_agent: Agent | None = None
_agent_lock = threading.RLock()
_worker_state: WorkerState | None = None
_hooks_installed = False
_sigterm_installed = False
_previous_sigterm: Any = None


def _worker_for(prewarm_threshold_s: float, clock: Any) -> WorkerState:
    """The process's worker state: one per process, kept across re-configuration."""
    global _worker_state
    with _agent_lock:
        if _worker_state is None:
            _worker_state = WorkerState(prewarm_threshold_s)
        else:
            _worker_state.prewarm_threshold_ns = int(prewarm_threshold_s * 1e9)
        # A test clock may say when "the process" started, to make cold starts exact.
        process_start = getattr(clock, "process_start_ns", None)
        if process_start is not None:
            _worker_state.process_start_ns = process_start()
            _worker_state.process_start_source = "clock"
        return _worker_state


def worker_state() -> WorkerState:
    """The worker state, created before configuration if phases or handlers need it."""
    global _worker_state
    with _agent_lock:
        if _worker_state is None:
            _worker_state = WorkerState(10.0)
        return _worker_state


def forget_worker_state() -> None:
    """Start the next configuration as a new worker process would (the demo's simulation)."""
    global _worker_state
    with _agent_lock:
        _worker_state = None


def configure(**settings: Any) -> Agent:
    """Configure gpuledger for this process (see the README's table for every setting).

    Arguments win over ``GPULEDGER_*``/``OTEL_*`` environment variables, which win over the
    defaults. An unknown keyword or a bad value raises ConfigError. Calling it again replaces
    the configuration: the previous agent is flushed and shut down first.
    """
    global _agent
    resolved = resolve_settings(settings)
    with _agent_lock:
        new_agent = Agent(resolved)
        old, _agent = _agent, new_agent
        install_exit_hooks()
    if old is not None:
        old.shutdown()
    return new_agent


def check_ledger_location(location: str, source: str) -> None:
    """Raise ConfigError if the SQLite ledger at ``location`` could not be created or written,
    so that a ledger that can never be written fails the configuration instead of losing every
    invocation later."""
    from gpuledger._location import unwritable_reason  # noqa: PLC0415

    reason = unwritable_reason(location)
    if reason is not None:
        raise ConfigError("ledger", location, reason, source)


def check_environment() -> None:
    """Check the settings the environment gives, as the first invocation would use them.

    ``@traced_handler`` calls it at decoration when nothing is configured yet, so that a bad
    ``GPULEDGER_*`` value fails at import (the deploy), never on a request. Raises ConfigError.
    """
    resolved = resolve_settings({})
    if resolved.sidecar is None:
        check_ledger_location(resolved.ledger, resolved.sources.get("ledger", "default"))
    if "otlp" in resolved.resolved_exporters() and (resolved.tracing or resolved.metrics):
        from gpuledger.exporters._providers import otlp_protocol  # noqa: PLC0415

        for signal in ("TRACES", "METRICS"):
            otlp_protocol(signal)


def get_agent() -> Agent | None:
    """The agent, configured from the environment on first use; None if that failed (logged)."""
    agent = _agent
    return agent if agent is not None else ensure_agent()


def ensure_agent(**defaults: Any) -> Agent | None:
    """The agent; on first use configured from the environment, with ``defaults`` for the
    settings the environment leaves unset (a platform adapter's own: Potassium's platform, Cog's
    flush policy). A configuration that fails is contained, counted and logged: the handler runs
    untraced, and None is returned. The platform adapters' one way in (no private names)."""
    agent = _agent
    if agent is not None:
        return agent
    with _agent_lock:
        if _agent is not None:
            return _agent
        overrides = {name: value for name, value in defaults.items() if not env_sets(name)}
        try:
            return configure(**overrides)
        except Exception as error:
            # A bad environment must not break the handler: it runs, untraced, and we say why.
            _guard.record_failure("configure", error)
            return None


def now_ns() -> int:
    """Wall time, Unix ns, on the configured agent's clock (a test's, the demo's), else the
    system's."""
    agent = _agent
    return agent.now_ns() if agent is not None else time.time_ns()


def current_agent() -> Agent | None:
    """The agent if one is configured; never configures."""
    return _agent


def flush(timeout: float | None = None) -> bool:
    """Write and export everything finished so far, waiting at most ``timeout`` seconds.

    Returns False if the wait timed out. Does nothing (and returns True) before configuration.
    """
    agent = _agent
    return True if agent is None else agent.flush(timeout)


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop gpuledger in this process; the next invocation configures it anew."""
    global _agent
    with _agent_lock:
        agent, _agent = _agent, None
    return True if agent is None else agent.shutdown(timeout)


def reset_for_tests() -> None:
    """Shut down and forget all process-wide state (the test suite's fixture calls it)."""
    global _worker_state
    shutdown(timeout=5.0)
    with _agent_lock:
        _worker_state = None
    _guard.reset()
    _guard.set_strict(False)
    _pseudonym.cache_clear()


def install_exit_hooks() -> None:
    """At exit and on SIGTERM, flush; after fork, start afresh in the child. Idempotent.

    Called by ``configure()`` and, in the main thread, by ``@traced_handler`` when it decorates:
    a signal handler can only be set from the main thread, and some platforms configure
    elsewhere (Potassium runs ``@app.init`` in a thread of its own), so decoration at import is
    where the SIGTERM handler is set for them. It costs no thread and does no I/O.
    """
    global _hooks_installed, _sigterm_installed, _previous_sigterm
    if not _hooks_installed:
        _hooks_installed = True
        atexit.register(_at_exit)
        os.register_at_fork(after_in_child=_after_fork_in_child)
    # Platforms stop workers with SIGTERM, whose default action skips atexit. Only when nobody
    # else handles it: flush, then let the default action run as if we were not here.
    if not _sigterm_installed and threading.current_thread() is threading.main_thread():
        _sigterm_installed = True
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)


def _at_exit() -> None:
    global _agent
    with _agent_lock:
        agent, _agent = _agent, None
    if agent is not None:
        with contextlib.suppress(Exception):  # nothing may fail at exit
            agent.shutdown(at_exit=True)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _at_exit()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    # The writer thread and locks did not survive the fork; the child is a new worker.
    global _agent, _worker_state, _agent_lock
    _agent_lock = threading.RLock()
    _worker_state = None
    parent, _agent = _agent, None
    if parent is not None:
        _agent = Agent(parent.settings)
