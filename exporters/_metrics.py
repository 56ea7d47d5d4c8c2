"""The invocation metrics, recorded from finished records off the request path.

Names, units and instrument kinds follow the OpenTelemetry semantic conventions where they define
one (FaaS: ``faas.invocations``, ``faas.invoke_duration``, ...; hardware: ``hw.gpu.*``,
``hw.power``, ``hw.energy``), their names taken from ``opentelemetry.semconv``; the rest is ours
under ``gpuledger.*`` (``_names``). As the FaaS conventions define them, ``faas.invocations``
counts the invocations that succeeded, ``faas.errors`` those that failed (``error``,
``cancelled``, ``killed``) and ``faas.timeouts`` those that timed out: each invocation is counted
in exactly one of the three, and ``faas.invoke_duration`` records every one.

User and tenant ids are left off metric attributes unless the user opts in: each distinct id
would be a new time series. Whatever is on them, each attribute (handler, user, tenant, external
target) keeps at most ``ATTRIBUTE_VALUE_LIMIT`` distinct values per meter: a value first seen
past that is recorded as ``OVERFLOW_VALUE`` (said once per attribute in the log), so a flood of
names costs one series, not one each; the invocations are all still counted. The SDK has no
cardinality limit of its own in the versions supported (1.45).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from opentelemetry.semconv._incubating.attributes.enduser_attributes import (
    ENDUSER_ID,
    ENDUSER_PSEUDO_ID,
)
from opentelemetry.semconv._incubating.attributes.faas_attributes import FAAS_TRIGGER
from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_OPERATION_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_TOKEN_TYPE,
)
from opentelemetry.semconv._incubating.metrics.faas_metrics import (
    FAAS_COLDSTARTS,
    FAAS_ERRORS,
    FAAS_INIT_DURATION,
    FAAS_INVOCATIONS,
    FAAS_INVOKE_DURATION,
    FAAS_TIMEOUTS,
)
from opentelemetry.semconv._incubating.metrics.gen_ai_metrics import (
    GEN_AI_SERVER_REQUEST_DURATION,
    GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
    GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE

from gpuledger._counters import count as _count
from gpuledger._logging import get_logger
from gpuledger._record import InvocationRecord
from gpuledger.exporters import _names as ours

__all__ = ["ATTRIBUTE_VALUE_LIMIT", "DURATION_BUCKETS_S", "OVERFLOW_VALUE", "InvocationMetrics"]

ATTRIBUTE_VALUE_LIMIT: Final = 1000
"""Most distinct values one metric attribute keeps (per meter); later new ones overflow."""
OVERFLOW_VALUE: Final = "(other)"
"""The value recorded in place of one first seen past ``ATTRIBUTE_VALUE_LIMIT``."""

# Serverless GPU requests run from milliseconds (warm, small models) to the 15-120 minute
# platform timeouts; init from under a second to minutes.
DURATION_BUCKETS_S: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    3600.0,
)


# Time to first token is milliseconds to tens of seconds (a long prompt's prefill, a cold
# model); time per token, milliseconds (the conventions' own advice for both).
STREAM_BUCKETS_S: Final = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)


class _ValueLimit:
    """The distinct values kept per attribute key, at most ``limit`` each: a new value past
    that is ``OVERFLOW_VALUE``. Called from the writer's thread only."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: dict[str, set[str]] = {}

    def __call__(self, key: str, value: str) -> str:
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = set()
        if value in seen:
            return value
        if len(seen) < self._limit:
            seen.add(value)
            return value
        # Every value turned away is counted (gpuledger.telemetry.errors, kind
        # metric_attribute_overflow): attribution lost on the metrics, never silently.
        _count(f"metric_attribute_overflow.{key}")
        if OVERFLOW_VALUE not in seen:  # the first overflow of this key: said once
            seen.add(OVERFLOW_VALUE)
            get_logger().warning(
                "metric attribute past its cardinality limit: its new values are recorded as "
                f"{OVERFLOW_VALUE!r}",
                attribute=key,
                limit=self._limit,
            )
        return OVERFLOW_VALUE


class InvocationMetrics:
    """The instruments, created once per meter, and ``record`` for a batch of records."""

    def __init__(
        self,
        meter_provider: Any,
        *,
        trigger: str,
        user_attributes: bool,
        telemetry_errors: Callable[[], dict[str, int]],
        pending: Callable[[], int],
        gpu_readings: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        from opentelemetry.metrics import CallbackOptions, Observation  # noqa: PLC0415

        from gpuledger.exporters._providers import gpuledger_meter  # noqa: PLC0415

        meter = self._meter = gpuledger_meter(meter_provider)
        self._trigger = trigger
        self._user_attributes = user_attributes
        self._limit = _ValueLimit(ATTRIBUTE_VALUE_LIMIT)
        self._invocations = meter.create_counter(
            FAAS_INVOCATIONS,
            unit="{invocation}",
            description="Invocations that succeeded (outcome ok).",
        )
        self._errors = meter.create_counter(
            FAAS_ERRORS,
            unit="{error}",
            description="Invocations that failed: raised, cancelled or killed.",
        )
        self._timeouts = meter.create_counter(
            FAAS_TIMEOUTS, unit="{timeout}", description="Invocations that timed out."
        )
        self._coldstarts = meter.create_counter(
            FAAS_COLDSTARTS, unit="{coldstart}", description="Invocations that were cold."
        )
        self._duration = meter.create_histogram(
            FAAS_INVOKE_DURATION,
            unit="s",
            description="Handler wall time.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._init_duration = meter.create_histogram(
            FAAS_INIT_DURATION,
            unit="s",
            description="Process start to the end of init, on the request it was attributed to.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._billed = meter.create_counter(
            ours.GPULEDGER_GPU_BILLED_METRIC,
            unit="s",
            description="GPU seconds billed (wall x GPUs held).",
        )
        self._busy = meter.create_counter(
            ours.GPULEDGER_GPU_BUSY_METRIC,
            unit="s",
            description="GPU seconds the GPU was busy (NVML).",
        )
        self._energy = meter.create_counter(
            ours.GPULEDGER_GPU_ENERGY_METRIC,
            unit="J",
            description="GPU energy used by invocations (NVML energy counter).",
        )
        self._external_calls = meter.create_counter(
            ours.GPULEDGER_EXTERNAL_CALLS_METRIC,
            unit="{call}",
            description="Outgoing calls made by invocations, by target.",
        )
        self._external_wait = meter.create_counter(
            ours.GPULEDGER_EXTERNAL_WAIT_METRIC,
            unit="s",
            description="Wall time invocations waited on outgoing calls (union of the calls), "
            "by target.",
        )
        self._flush_wait = meter.create_histogram(
            ours.GPULEDGER_FLUSH_WAIT_METRIC,
            unit="s",
            description="Time an invocation's end waited for its record to leave the process "
            "(flush policies invocation and adaptive).",
            explicit_bucket_boundaries_advisory=(
                0.0001,
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                5.0,
            ),
        )
        # GenAI: the model-server metrics of the conventions, for handlers that serve a model
        # (name one, or record tokens). Token counts go on gpuledger.tokens: the conventions'
        # gen_ai.client.token.usage is the client's, and a client instrumented too would count
        # every token twice under one name.
        self._genai_duration = meter.create_histogram(
            GEN_AI_SERVER_REQUEST_DURATION,
            unit="s",
            description="Model server request duration (the handler's wall time).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._genai_first_token = meter.create_histogram(
            GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
            unit="s",
            description="Time to the first item a streaming model handler yielded.",
            explicit_bucket_boundaries_advisory=STREAM_BUCKETS_S,
        )
        self._genai_per_token = meter.create_histogram(
            GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
            unit="s",
            description="Time per output token after the first, of successful streamed requests.",
            explicit_bucket_boundaries_advisory=STREAM_BUCKETS_S,
        )
        self._tokens = meter.create_counter(
            ours.GPULEDGER_TOKENS_METRIC,
            unit="{token}",
            description="Model tokens read (input) and generated (output), by token type.",
        )
        self._first_item = meter.create_histogram(
            ours.GPULEDGER_STREAM_FIRST_ITEM_METRIC,
            unit="s",
            description="Time from a streaming (generator) handler's start to its first item.",
            explicit_bucket_boundaries_advisory=STREAM_BUCKETS_S,
        )
        self._per_item = meter.create_histogram(
            ours.GPULEDGER_STREAM_PER_ITEM_METRIC,
            unit="s",
            description="Time per item after the first, of a streaming handler.",
            explicit_bucket_boundaries_advisory=STREAM_BUCKETS_S,
        )
        self._cost = meter.create_counter(
            ours.GPULEDGER_COST_METRIC,
            unit=ours.USD,
            description="What the workers are billed under the platform's price, in US "
            "dollars, by charge category (fee, request, startup, idle, rounding), added as "
            "each charge becomes known.",
        )

        def observe_errors(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(value, {ours.GPULEDGER_ERROR_KIND: kind})
                for kind, value in telemetry_errors().items()
            ]

        def observe_pending(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(pending())]

        meter.create_observable_counter(
            ours.GPULEDGER_TELEMETRY_ERRORS_METRIC,
            callbacks=[observe_errors],
            unit="{error}",
            description="gpuledger's own contained failures and dropped records, by kind.",
        )
        if gpu_readings is not None:
            _device_instruments(meter, gpu_readings)
        meter.create_observable_up_down_counter(
            ours.GPULEDGER_LEDGER_PENDING_METRIC,
            callbacks=[observe_pending],
            unit="{invocation}",
            description="Finished invocations waiting for the background writer.",
        )

    def _record_stream_and_genai(
        self,
        record: InvocationRecord,
        attributes: dict[str, str],
        genai_made: dict[tuple[str, str | None, str | None], dict[str, str]],
        tokens: dict[tuple[tuple[str, str | None, str | None], str], int],
    ) -> None:
        """A streaming or GenAI record's extra metrics (the common record has neither). The
        GenAI attribute sets are made once a batch (``genai_made``) and token counts summed
        over it (``tokens``, added by :meth:`record`), as the other counters are."""
        first = record.first_item_s
        if first is not None:
            self._first_item.record(first, attributes)
            if record.items is not None and record.items > 1:
                self._per_item.record((record.duration_s - first) / (record.items - 1), attributes)
        operation = record.operation
        if operation is None:
            return
        failed = None if record.outcome == "ok" else (record.error_type or record.outcome)
        key = (operation, record.model, failed)
        genai = genai_made.get(key)
        if genai is None:
            limit = self._limit
            genai = {GEN_AI_OPERATION_NAME: limit(GEN_AI_OPERATION_NAME, operation)}
            if record.model is not None:
                genai[GEN_AI_REQUEST_MODEL] = limit(GEN_AI_REQUEST_MODEL, record.model)
            if failed is not None:
                genai[ERROR_TYPE] = failed
            genai_made[key] = genai
        self._genai_duration.record(record.duration_s, genai)
        if first is not None:
            self._genai_first_token.record(first, genai)
            output = record.output_tokens
            if failed is None and output is not None and output > 1:
                self._genai_per_token.record((record.duration_s - first) / (output - 1), genai)
        if record.input_tokens:
            tokens[key, "input"] = tokens.get((key, "input"), 0) + record.input_tokens
        if record.output_tokens:
            tokens[key, "output"] = tokens.get((key, "output"), 0) + record.output_tokens

    def watch_budgets(self, guard: Any) -> None:
        """The budget instruments for ``guard``'s budgets (``gpuledger._budget_guard``): what
        each has spent in its window and its limit and window (gauges, read when a reader
        collects), what this process charged to it (a counter: summed over a fleet it is the
        fleet's spend rate, the burn-rate alerts' input), and the requests it refused. Only the
        configured budgets have series; a budget of every key (``*``) has one per key seen, up
        to the attribute limit (then ``(other)``)."""
        from opentelemetry.metrics import CallbackOptions, Observation  # noqa: PLC0415

        limit = self._limit
        meter = self._meter

        def attributes(budget: Any, key: str) -> dict[str, str]:
            return {
                ours.GPULEDGER_BUDGET_SCOPE: budget.scope,
                ours.GPULEDGER_BUDGET_KEY: limit(ours.GPULEDGER_BUDGET_KEY, key) if key else "",
                ours.GPULEDGER_BUDGET_WINDOW: budget.window,
                ours.GPULEDGER_BUDGET_MODE: budget.mode,
            }

        self._budget_attributes = attributes
        spend = meter.create_counter(
            ours.GPULEDGER_BUDGET_SPEND_METRIC,
            unit=ours.USD,
            description="US dollars of request charges this process charged to each budget.",
        )
        guard.spend_added = lambda budget, key, usd: spend.add(usd, attributes(budget, key))
        self._budget_rejections = meter.create_counter(
            ours.GPULEDGER_BUDGET_REJECTIONS_METRIC,
            unit="{invocation}",
            description="Requests refused before their handler ran: an enforced budget spent.",
        )

        def observe(pick: Callable[[Any, float], float]) -> Callable[[CallbackOptions], Any]:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                return [
                    Observation(pick(budget, spent), attributes(budget, key))
                    for budget, key, spent in guard.spent()
                ]

            return callback

        meter.create_observable_gauge(
            ours.GPULEDGER_BUDGET_SPENT_METRIC,
            callbacks=[observe(lambda budget, spent: spent)],
            unit=ours.USD,
            description="US dollars spent within each budget's rolling window, as last read "
            "from the budget ledger plus what this process charged since.",
        )
        meter.create_observable_gauge(
            ours.GPULEDGER_BUDGET_LIMIT_METRIC,
            callbacks=[observe(lambda budget, spent: budget.limit_usd)],
            unit=ours.USD,
            description="Each budget's limit in US dollars.",
        )
        meter.create_observable_gauge(
            ours.GPULEDGER_BUDGET_WINDOW_METRIC,
            callbacks=[observe(lambda budget, spent: float(budget.window_s))],
            unit="s",
            description="Each budget's rolling window.",
        )

    def record_rejection(self, refused: Any) -> None:
        """A request refused by an enforced budget (``refused``: its BudgetExceeded)."""
        rejections = getattr(self, "_budget_rejections", None)
        if rejections is None:
            return
        attributes = {
            ours.GPULEDGER_BUDGET_SCOPE: refused.scope,
            ours.GPULEDGER_BUDGET_KEY: self._limit(ours.GPULEDGER_BUDGET_KEY, refused.key)
            if refused.key
            else "",
            ours.GPULEDGER_BUDGET_WINDOW: refused.window,
            ours.GPULEDGER_BUDGET_MODE: "enforce",
        }
        rejections.add(1, attributes)

    def record_flush_wait(self, seconds: float) -> None:
        """One invocation's end waited ``seconds`` for its record (a flush policy)."""
        self._flush_wait.record(seconds, {FAAS_TRIGGER: self._trigger})

    def record_charges(self, charges: Sequence[tuple[str, float]]) -> None:
        """Add the worker's own charges that became known (``(category, USD)``: idle time,
        rounding) to the cost counter."""
        sums: dict[str, float] = {}
        for category, amount in charges:
            sums[category] = sums.get(category, 0.0) + amount
        for category, amount in sums.items():
            if amount:
                self._cost.add(
                    amount, {FAAS_TRIGGER: self._trigger, ours.GPULEDGER_COST_CATEGORY: category}
                )

    def record(self, records: Sequence[InvocationRecord]) -> None:
        """Add ``records`` to the instruments.

        Counters are summed per attribute set over the batch and added once (a counter add costs
        microseconds; a batch holds up to thousands of records); histograms get every value.
        """
        sums: dict[tuple[tuple[str, str], ...], list[float]] = {}
        costs: dict[tuple[tuple[str, str], ...], list[float]] = {}
        external: dict[tuple[tuple[str, str], ...], list[float]] = {}
        limit = self._limit
        # A batch's records come from a handful of (handler, user, tenant): each attribute set
        # is made once (the limit keeps no count, so asking it once per value is the same).
        made: dict[tuple[str, str | None, bool, str | None], tuple[dict[str, str], Any]] = {}
        users = self._user_attributes
        genai_made: dict[tuple[str, str | None, str | None], dict[str, str]] = {}
        tokens: dict[tuple[tuple[str, str | None, str | None], str], int] = {}
        for record in records:
            who = (
                record.handler,
                record.user_id if users else None,
                record.user_id_pseudonymised,
                record.tenant if users else None,
            )
            found = made.get(who)
            if found is None:
                attributes: dict[str, str] = {
                    FAAS_TRIGGER: self._trigger,
                    ours.GPULEDGER_HANDLER: limit(ours.GPULEDGER_HANDLER, record.handler),
                }
                if users:
                    if record.user_id is not None:
                        key = ENDUSER_PSEUDO_ID if record.user_id_pseudonymised else ENDUSER_ID
                        attributes[key] = limit(key, record.user_id)
                    if record.tenant is not None:
                        attributes[ours.GPULEDGER_TENANT] = limit(
                            ours.GPULEDGER_TENANT, record.tenant
                        )
                found = made[who] = (attributes, tuple(attributes.items()))
            attributes, group = found
            self._duration.record(record.duration_s, attributes)
            if record.operation is not None or record.items is not None:
                self._record_stream_and_genai(record, attributes, genai_made, tokens)
            if record.init_duration_s is not None:
                self._init_duration.record(record.init_duration_s, attributes)
            for target, entry in (record.external_targets or {}).items():
                target_value = limit(ours.GPULEDGER_EXTERNAL_TARGET, target)
                by_target = (*group, (ours.GPULEDGER_EXTERNAL_TARGET, target_value))
                pair = external.get(by_target)
                if pair is None:
                    pair = external[by_target] = [0.0, 0.0]
                pair[0] += entry.get("calls", 0)
                pair[1] += entry.get("wait_s", 0.0)
            tally = sums.get(group)
            if tally is None:
                # succeeded, failed, timed out, coldstarts, billed, busy, (unused),
                # whether busy was seen at all (unknown is not zero), (unused), energy, seen
                tally = sums[group] = [0.0] * 11
            if record.outcome == "ok":
                tally[0] += 1
            elif record.outcome == "timeout":
                tally[2] += 1
            else:  # error, cancelled, killed
                tally[1] += 1
            if record.cold:
                tally[3] += 1
            tally[4] += record.billed_gpu_seconds
            if record.busy_gpu_seconds is not None:
                tally[5] += record.busy_gpu_seconds
                tally[7] = 1
            if record.cost_usd is not None:
                cost = costs.get(group)
                if cost is None:
                    cost = costs[group] = [0.0, 0.0, 0.0]
                # The parts add up to the whole (a record that carries only the whole: request).
                fee = record.cost_execution_usd or 0.0
                startup = record.cost_coldstart_usd or 0.0
                cost[0] += fee
                cost[1] += max(0.0, record.cost_usd - fee - startup)
                cost[2] += startup
            if record.energy_j is not None:
                tally[9] += record.energy_j
                tally[10] = 1
        for group, tally in sums.items():
            attributes = dict(group)
            if tally[0]:
                self._invocations.add(int(tally[0]), attributes)
            if tally[1]:
                self._errors.add(int(tally[1]), attributes)
            if tally[2]:
                self._timeouts.add(int(tally[2]), attributes)
            if tally[3]:
                self._coldstarts.add(int(tally[3]), attributes)
            self._billed.add(tally[4], attributes)
            if tally[7]:
                self._busy.add(tally[5], attributes)
            if tally[10]:
                self._energy.add(tally[9], attributes)
        for group, (fee, gpu, startup) in costs.items():
            for category, amount in (("fee", fee), ("request", gpu), ("startup", startup)):
                if amount:
                    self._cost.add(amount, {**dict(group), ours.GPULEDGER_COST_CATEGORY: category})
        for by_target, (calls, wait) in external.items():
            attributes = dict(by_target)
            self._external_calls.add(int(calls), attributes)
            self._external_wait.add(wait, attributes)
        for (genai_key, kind), count in tokens.items():
            self._tokens.add(count, {**genai_made[genai_key], GEN_AI_TOKEN_TYPE: kind})


_READINGS_TTL_S: Final = 1.0
"""One export reads each GPU once: the five device instruments share a reading this fresh."""


def _device_instruments(meter: Any, gpu_readings: Callable[[], list[dict[str, Any]]]) -> None:
    """The ``hw.*`` device instruments of the OpenTelemetry hardware semantic conventions, read
    from NVML when a reader collects (never on the request path)."""
    import time  # noqa: PLC0415

    from opentelemetry.metrics import CallbackOptions, Observation  # noqa: PLC0415

    # Here, not at the top: only a worker with NVML pays for the hardware conventions' modules.
    from opentelemetry.semconv._incubating.attributes.hw_attributes import (  # noqa: PLC0415
        HW_ID,
        HW_MODEL,
        HW_NAME,
        HW_TYPE,
        HW_VENDOR,
        HwTypeValues,
    )
    from opentelemetry.semconv._incubating.metrics.hw_metrics import (  # noqa: PLC0415
        HW_ENERGY,
        HW_GPU_MEMORY_LIMIT,
        HW_GPU_MEMORY_USAGE,
        HW_GPU_UTILIZATION,
        HW_POWER,
    )

    cache: dict[str, Any] = {"at": -_READINGS_TTL_S, "readings": []}

    def readings() -> list[dict[str, Any]]:
        now = time.monotonic()
        if now - cache["at"] >= _READINGS_TTL_S:
            cache["readings"] = gpu_readings()
            cache["at"] = now
        result: list[dict[str, Any]] = cache["readings"]
        return result

    def attributes(reading: dict[str, Any]) -> dict[str, str]:
        device = reading["device"]
        return {
            HW_ID: device.uuid,
            HW_TYPE: HwTypeValues.GPU.value,
            HW_NAME: f"GPU {device.index}" if device.index is not None else device.uuid,
            HW_MODEL: device.name,
            HW_VENDOR: "NVIDIA",
        }

    def observe(key: str, pick: Callable[[Any], float]) -> Callable[[CallbackOptions], Any]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(pick(reading[key]), attributes(reading))
                for reading in readings()
                if key in reading
            ]

        return callback

    meter.create_observable_gauge(
        HW_GPU_UTILIZATION,
        callbacks=[observe("utilization", float)],
        unit="1",
        description="Share of the last driver sample period in which a kernel ran.",
    )
    meter.create_observable_up_down_counter(
        HW_GPU_MEMORY_USAGE,
        callbacks=[observe("memory", lambda pair: int(pair[0]))],
        unit="By",
        description="GPU memory in use.",
    )
    meter.create_observable_up_down_counter(
        HW_GPU_MEMORY_LIMIT,
        callbacks=[observe("memory", lambda pair: int(pair[1]))],
        unit="By",
        description="GPU memory in all.",
    )
    meter.create_observable_gauge(
        HW_POWER,
        callbacks=[observe("power_w", float)],
        unit="W",
        description="GPU power draw.",
    )
    meter.create_observable_counter(
        HW_ENERGY,
        callbacks=[observe("energy_j", float)],
        unit="J",
        description="GPU energy since the driver loaded (NVML counter).",
    )
