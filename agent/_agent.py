"""The agent: its set-up (settings, platform, price, NVML, telemetry, sinks) and the request path.

There is one agent per process (``_config`` holds it), created by ``configure()`` or, if the
application never calls it, from the environment on the first invocation. ``enter``/``exit`` are
the request path: they read two clocks, update the worker state, draw the span's identity
(``exporters._deferred``), and hand the finished invocation to the background writer
(``_writer``). Everything else (the record and its price, ``_build``; recording the span and
ending it from the record; metrics; the sinks) happens on the writer's thread.

Why one module: ``enter`` and ``exit`` inline the warm paths of the worker state, the span's
identity and the queue (helper calls cost microseconds a request), so what they read must live
on the agent; the set-up that builds those fields (price, NVML, telemetry, budgets, sinks) is
kept beside them so that every field the request path reads is made in sight of it. What can
live elsewhere does: options (``_spec``), records (``_build``), budgets (``_budget_guard``).
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gpuledger import _guard
from gpuledger._build import WorkerIdentity, build_record, new_record_id, pseudonym
from gpuledger._errors import BudgetExceeded, ConfigError, PricingError
from gpuledger._external import calls_measured, summarise
from gpuledger._invocation import Invocation, _current
from gpuledger._location import check_ledger_location
from gpuledger._logging import configure_logging, get_logger
from gpuledger._platform import (
    PlatformInfo,
    billing_worker,
    default_worker_id,
    detect_platform,
    platform_defaults,
)
from gpuledger._record import InvocationRecord
from gpuledger._settings import Settings, environment
from gpuledger._sinks import Backoff, FallbackSink, JournalSink, LedgerSink, SidecarSink, Sink
from gpuledger._spec import HandlerSpec, apply_options, otel_service_version
from gpuledger._worker import InitInfo, Phase, WorkerState, shares
from gpuledger._writer import StartNotice, Writer

__all__ = ["Agent", "HandlerSpec"]

_DENSE_COUNT = 10
"""Adaptive flushing: more than this many invocations in ``_DENSE_WINDOW_NS`` is dense."""
_DENSE_WINDOW_NS = 60 * 10**9
_SIDECAR_BACKOFF_S = (2.0, 30.0)
"""After the sidecar failed, the journal takes records for 2 s (doubling to 30 s while it keeps
failing) before the sidecar is tried again."""


def _outcome(error: BaseException) -> str:
    if isinstance(error, GeneratorExit):
        return "cancelled"
    if isinstance(error, BudgetExceeded):
        return "rejected"
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

    def __init__(
        self,
        settings: Settings,
        worker: WorkerState,
        *,
        sinks: Sequence[Sink] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = environment() if environ is None else environ
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
        self.service_version = settings.service_version or otel_service_version(env) or info.version
        self.service_name = settings.service_name or self.endpoint or "unknown_service"
        self.gpu = settings.gpu
        self.gpu_count = settings.gpu_count

        self._runpod = info.platform == "runpod"
        self._setup_pricing()
        self._check_ledger_location(settings.ledger)
        self.worker = worker
        self.billing = billing_worker(
            info,
            worker_id=settings.worker_id,
            worker_start=settings.worker_start,
            process_start=(worker.process_start_ns, worker.process_start_source),
        )
        self._set_identity()
        self.gpu_meter: Any = None
        """The NVML meter once NVML is open; None before, and for good without a GPU."""
        self.gpu_uuids: str | None = None
        self.gpu_reason: dict[str, str] | None = {"gpu": "NVML still opening"}
        self.gpu_ready = threading.Event()
        """Set once NVML opened or failed to: GPU fields are measured from then on."""
        self._setup_telemetry(env)
        self._pseudonym_warned = False
        self.closed = False
        self.budget_guard: Any = None
        """The budgets' spend and what enforced ones refuse (``_budget_guard``); None: none."""
        if settings.budgets:
            self._setup_budgets()
        self.writer = Writer(self, sinks or self._default_sinks(), max_pending=settings.max_pending)
        self.pipeline = self.writer.pipeline
        self._queue = self.pipeline.queue
        self._max_pending = settings.max_pending
        self._batch_size = self.pipeline.batch_size
        self._starts = self.writer.tells_starts
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
        from gpuledger._pricing import (  # noqa: PLC0415
            LOCAL_PLATFORMS,
            known_platforms,
            load_catalogue,
        )

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
            known = known_platforms(catalogue)
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

    def _setup_budgets(self) -> None:
        from gpuledger._budget_guard import BudgetGuard  # noqa: PLC0415  (with budgets only)

        settings = self.settings
        guard = BudgetGuard(
            settings.budgets,
            ledger=settings.budget_ledger or settings.ledger,
            refresh_s=settings.budget_refresh_s,
            time_ns=self._time_ns,
            endpoint=self.endpoint,
        )
        if self.metrics is not None:
            self.metrics.watch_budgets(guard)
        guard.start()
        self.budget_guard = guard

    def _choose_price(self, *, warn: bool) -> None:
        """The price of this platform and GPU; warns when it is unknown (``warn``)."""
        catalogue = self.catalogue
        platform = self.platform.platform
        price = catalogue.lookup(platform, self.gpu)
        self.price = price
        self.per_gpu_second_usd: float | None = None if price is None else price.per_gpu_second_usd
        if price is not None:
            from gpuledger._pricing import compile_pricer  # noqa: PLC0415
            from gpuledger.billing import Rules  # noqa: PLC0415

            # The request's own charge, as known at its end: rounding is the worker's billing
            # span's, known later (gpuledger.billing bills the worker). The CPU and memory the
            # worker reserves are priced with its GPUs, where the platform charges them.
            cpu, memory_gib = self.settings.cpu, self.settings.memory_gib
            self.pricer: Callable[..., Any] | None = compile_pricer(
                price, catalogue.version, rounds=False, cpu=cpu, memory_gib=memory_gib
            )
            self.cost_source: str = price.source
            self.billing_rules: dict[str, Any] | None = Rules.from_price(
                price, cpu=cpu, memory_gib=memory_gib
            ).to_json()
            self.pricing_platform: str | None = price.platform
            self.pricing_version: str | None = catalogue.version
            return
        from gpuledger._pricing import LOCAL_PLATFORMS, unpriced_reason  # noqa: PLC0415

        self.pricer = None
        self.billing_rules = None
        self.pricing_platform = None
        self.pricing_version = None
        self.cost_source = unpriced_reason(platform, self.gpu, catalogue)
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
                self._set_identity()
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

    def _default_sinks(self) -> list[Sink]:
        """The ledger; with a sidecar, the sidecar, and the journal while it fails (replayed to
        the sidecar once it answers: ``_writer``)."""
        settings = self.settings
        if settings.sidecar is None:
            return [LedgerSink(settings.ledger)]
        from gpuledger._journal import Journal  # noqa: PLC0415
        from gpuledger.sidecar import SidecarClient  # noqa: PLC0415  (http.client, when used)

        client = SidecarClient(settings.sidecar, token=settings.sidecar_token)
        return [
            FallbackSink(
                SidecarSink(client),
                JournalSink(Journal(settings.journal)),
                backoff=Backoff(*_SIDECAR_BACKOFF_S),
                warning="gpuledger sidecar unreachable: keeping invocations in the journal "
                "until it answers again (and retrying it every few seconds); counted as "
                "gpuledger.telemetry.errors kind=sidecar.fallback",
            )
        ]

    def _set_identity(self) -> None:
        self.identity = WorkerIdentity(
            service_name=self.service_name,
            platform=self.platform.platform,
            endpoint=self.endpoint,
            worker_id=self.worker_id,
            region=self.region,
            gpu_model=self.gpu,
            gpu_count=self.gpu_count,
            service_version=self.service_version,
        )

    def _setup_telemetry(self, env: Mapping[str, str]) -> None:
        settings = self.settings
        self.tracer: Any = None
        self._deferred: Any = None  # exporters.DeferredTracing: the writer records the span
        self._deferred_type: type | None = None
        self.metrics: Any = None
        self.providers: Any = None
        exporters = settings.resolved_exporters(env)
        if not (settings.tracing or settings.metrics):
            return
        from gpuledger.exporters import setup_providers  # noqa: PLC0415

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

            from gpuledger.exporters import gpuledger_tracer  # noqa: PLC0415

            self.tracer = gpuledger_tracer(self.providers.tracer_provider)
            from gpuledger.exporters import DeferredSpan, DeferredTracing  # noqa: PLC0415

            if DeferredTracing.usable(self.tracer):  # the writer records the span
                self._deferred, self._deferred_type = DeferredTracing(self.tracer), DeferredSpan
                # A warm span's kind and first attributes (shared: never changed).
                attributes = {"faas.trigger": self.platform.faas_trigger, "faas.coldstart": False}
                self._warm_start = (trace.SpanKind.SERVER, attributes)
            self._server_kind = trace.SpanKind.SERVER
            self._set_span_in_context = trace.set_span_in_context
            self._attach = otel_context.attach
            self._detach = otel_context.detach
            self._status_error = trace.Status(trace.StatusCode.ERROR)
            self._link = trace.Link
        if self.providers.meter_provider is not None:
            from gpuledger.exporters import InvocationMetrics  # noqa: PLC0415

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
        from gpuledger.exporters import worker_resource_attributes  # noqa: PLC0415

        return worker_resource_attributes(
            service_name=self.service_name,
            platform=self.platform.platform,
            region=self.region,
            endpoint=self.endpoint,
            worker_id=self.worker_id,
            gpu_model=self.gpu,
            gpu_count=self.gpu_count,
            service_version=self.service_version,
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
                apply_options(invocation, spec, args, kwargs)
            guard = self.budget_guard
            if guard is not None and guard.blocked:  # an enforced budget is spent: whose?
                self._check_budgets(guard, invocation)
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
            if self._starts:
                invocation.record_id = new_record_id(start_ns)
                self.pipeline.submit(StartNotice(invocation))
                self.pipeline.wake()
            if self.tracer is not None:
                if self._deferred is not None and init is None:
                    invocation.span = self._deferred.start(spec.name, *self._warm_start, start_ns)
                else:
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

    def check_budget(self, invocation: Invocation) -> Any:
        """For adapters that learn the tenant or user after ``enter`` (from headers): the
        :class:`gpuledger.BudgetExceeded` that refuses ``invocation`` now, else None. The
        adapter then answers with its platform's refusal and calls ``exit`` with it."""
        guard = self.budget_guard
        if invocation.refused is None and guard is not None and guard.blocked:
            try:
                self._check_budgets(guard, invocation)
            except Exception as error:
                _guard.record_failure("budgets.check", error)
        return invocation.refused

    def _check_budgets(self, guard: Any, invocation: Invocation) -> None:
        """Mark ``invocation`` refused (``refused``) if its tenant, user, this endpoint or the
        fleet is over an enforced budget; the wrapper then raises instead of running it."""
        user = invocation.user_id
        if user is not None:
            user = self.user_key(user)[0]  # budgets name users as the ledger stores them
        refused = guard.check(invocation.tenant, user)
        if refused is not None:
            invocation.refused = refused
            budget = "total" if refused.scope == "total" else f"{refused.scope} {refused.key}"
            invocation.tags = {**(invocation.tags or {}), "gpuledger.budget": budget}

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
                if invocation.outcome == "rejected":
                    invocation.billed_ns = 0  # refused: no request time, no request charge
                    if self.metrics is not None:
                        self.metrics.record_rejection(error)
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
                invocation.external = summarise(invocation.calls, start_ns, end_ns, self._time_ns())
            meter = invocation.meter
            if meter is not None and meter.boundary_reads:
                meter.mark(end_ns)
            queue = self._queue
            if invocation.span is not None:
                # The writer ends the span from the invocation's record, at its real end time:
                # one mapping (exporters._records.span_attributes) for the worker and the sidecar.
                invocation.error = error
                if len(queue) >= self._max_pending:  # it will be dropped: end its span now
                    self.end_span_now(invocation)
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

    def end_span(self, invocation: Invocation, record: InvocationRecord) -> None:
        """End the invocation's span with ``record``'s attributes (the same set the sidecar
        exports), its status, and the exception the handler raised."""
        from gpuledger.exporters import span_attributes  # noqa: PLC0415

        span, invocation.span = invocation.span, None
        error, invocation.error = invocation.error, None
        if span is None:
            return
        if type(span) is self._deferred_type:
            span = self._deferred.record(span)
            if span is None:
                return  # the sampler dropped it
        try:
            span.set_attributes(span_attributes(record))
            if error is not None:
                span.record_exception(error, timestamp=record.end_ns)
            if record.outcome != "ok":
                span.set_status(self._status_error)
        finally:
            span.end(end_time=record.end_ns)

    def end_span_now(self, invocation: Invocation) -> None:
        """End the span of an invocation that will not reach the writer (the queue is full)."""
        try:
            self.end_span(invocation, build_record(self, invocation, measured=calls_measured()))
        except Exception as failure:
            _guard.record_failure("span.end", failure)

    def _emit_init_span(self, init: InitInfo) -> Any:
        """The init as a span of its own (with a child per phase); returns its span context."""
        from opentelemetry import trace  # noqa: PLC0415

        from gpuledger.exporters import init_span_attributes  # noqa: PLC0415

        init_span = self.tracer.start_span(
            "init",
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            kind=trace.SpanKind.INTERNAL,
            start_time=init.process_start_ns,
            attributes=init_span_attributes(init),
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

    def perf_ns(self) -> int:
        """The agent clock's monotonic time, ns (what invocations' durations are read from)."""
        return self._perf_ns()

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
        return pseudonym(key or "", user_id), True

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
        done = self.writer.close(timeout)
        if self.budget_guard is not None:
            self.budget_guard.stop()
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
        return done
