"""The one place an :class:`~gpuledger.InvocationRecord` is made.

Two things make records: the worker's writer, from an :class:`~gpuledger.Invocation` that
finished (:func:`build_record`), and the sidecar, for an invocation whose process died or timed
out before it reported (:func:`closing_record`, from the start notice the worker sent:
:func:`start_notice`). Both spell the worker's identity through :class:`WorkerIdentity` and the
price through :func:`cost_fields`, so a field added to either is added to both, and the two can
never disagree on what an unpriced record says (``_pricing.unpriced_reason``).

This module is on the writer's path: it imports nothing heavy (no OpenTelemetry, no NVML).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final, Protocol

from gpuledger._record import MAX_TIMEOUT_S, RECORDED_BY_SIDECAR, InvocationRecord

if TYPE_CHECKING:
    from gpuledger._invocation import Invocation
    from gpuledger._pricing import Cost

__all__ = [
    "IDENTITY_FIELDS",
    "Pricer",
    "WorkerIdentity",
    "build_record",
    "closing_record",
    "cost_fields",
    "external_fields",
    "init_seconds",
    "new_record_id",
    "pseudonym",
    "request_startup_seconds",
    "start_notice",
]

Pricer = Callable[[float, int, "float | None"], "Cost"]
"""``pricer(billed_gpu_seconds, gpu_count, init_seconds) -> Cost`` (``_pricing.compile_pricer``)."""

IDENTITY_FIELDS: Final = (
    "service_name",
    "platform",
    "endpoint",
    "worker_id",
    "region",
    "gpu_model",
    "gpu_count",
    "service_version",
)
"""The record fields that say which worker served an invocation; a start notice carries them
under the same names."""


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Which worker an invocation ran on: the same for every record of one process, until NVML
    tells the GPU model and count (the agent then makes a new one)."""

    service_name: str
    platform: str
    endpoint: str | None = None
    worker_id: str | None = None
    region: str | None = None
    gpu_model: str | None = None
    gpu_count: int = 1
    service_version: str | None = None

    _fields: dict[str, Any] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Made once: the writer spreads it into every record it builds.
        object.__setattr__(self, "_fields", {name: getattr(self, name) for name in IDENTITY_FIELDS})

    def fields(self) -> dict[str, Any]:
        """The identity as record fields (shared: spread it, do not change it)."""
        return self._fields

    @classmethod
    def from_fields(cls, values: Mapping[str, Any]) -> WorkerIdentity:
        """The identity in ``values`` (a start notice, a record's dict); missing optional
        fields are None, a missing ``gpu_count`` is 1."""
        return cls(
            service_name=str(values["service_name"]),
            platform=str(values["platform"]),
            endpoint=values.get("endpoint"),
            worker_id=values.get("worker_id"),
            region=values.get("region"),
            gpu_model=values.get("gpu_model"),
            gpu_count=int(values.get("gpu_count", 1)),
            service_version=values.get("service_version"),
        )


def new_record_id(start_ns: int) -> str:
    """A unique record id: 16 hex digits of the start (time-ordered ids keep the ledger's
    primary-key index append-mostly), then 16 random ones."""
    return f"{start_ns:016x}{os.urandom(8).hex()}"


def cost_fields(cost: Cost | None, unpriced: str) -> dict[str, Any]:
    """The record's price fields for ``cost``; with no cost, every amount is None and
    ``cost_source`` says why (``unpriced``)."""
    if cost is None:
        return _unpriced_fields(unpriced)
    return {
        "cost_usd": cost.total_usd,
        "cost_execution_usd": cost.execution_usd,
        "cost_gpu_usd": cost.gpu_usd,
        "cost_coldstart_usd": cost.coldstart_usd,
        "pricing_platform": cost.platform,
        "pricing_version": cost.catalogue_version,
        "cost_source": cost.source,
    }


@lru_cache(maxsize=64)
def _unpriced_fields(unpriced: str) -> dict[str, Any]:
    """The price fields of an unpriced record (shared: spread it, do not change it)."""
    return {
        "cost_usd": None,
        "cost_execution_usd": None,
        "cost_gpu_usd": None,
        "cost_coldstart_usd": None,
        "pricing_platform": None,
        "pricing_version": None,
        "cost_source": unpriced,
    }


@lru_cache(maxsize=8192)
def pseudonym(key: str, user_id: str) -> str:
    """The stored id of ``user_id`` when ids are pseudonymised: HMAC-SHA256 under ``key``,
    truncated to 128 bits (collision-free enough for chargeback, short in a table)."""
    import hashlib  # noqa: PLC0415  (only when ids are pseudonymised)
    import hmac  # noqa: PLC0415

    return hmac.new(key.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


class _Worker(Protocol):
    """What :func:`build_record` reads from the agent (``gpuledger._agent.Agent``)."""

    identity: WorkerIdentity
    pricer: Pricer | None
    per_gpu_second_usd: float | None
    cost_source: str
    gpu_reason: dict[str, str] | None
    gpu_uuids: str | None
    billing: Any
    """``_platform.BillingWorker``: the container billed, and its start."""
    billing_rules: dict[str, Any] | None
    pricing_platform: str | None
    pricing_version: str | None
    worker: Any
    """``_worker.WorkerState``: when init ended (``ready_ns``)."""

    def user_key(self, user_id: str) -> tuple[str, bool]: ...


def init_seconds(invocation: Invocation) -> float | None:
    """The worker's start-up the invocation waited for (a cold start's init); None when warm.

    Start-up work the invocation did itself (phases inside it: a model loaded lazily) is not
    added: it is inside the invocation's own time already, and charged there once.
    """
    return invocation.init.duration_s if invocation.cold and invocation.init else None


def request_startup_seconds(invocation: Invocation) -> float | None:
    """Start-up work done inside the invocation (its top-level phases), None when none."""
    if not invocation.phases:
        return None
    return sum(phase.duration_s for phase in invocation.phases if phase.parent is None)


_STARTED_BEFORE_NVML: Final = {"gpu": "started before NVML had opened (metered from then on)"}


def unmetered_reason(worker: _Worker) -> dict[str, str]:
    """Why an invocation without a GPU meter has null GPU fields: the worker's reason (no GPU,
    metering off, NVML failed or still opening), or, when the worker has none left because NVML
    opened after the invocation began (the cold request, typically), that. Never None: every
    null says why."""
    return worker.gpu_reason or dict(_STARTED_BEFORE_NVML)


def price(worker: _Worker, invocation: Invocation) -> Cost | None:
    """What ``invocation`` cost on ``worker`` as known at its end (None: unpriced): its billed
    GPU time, its cold start's init, and start-up done inside it shown as start-up, once."""
    pricer = worker.pricer
    if pricer is None:
        return None
    gpu_count = worker.identity.gpu_count
    if invocation.outcome == "rejected":  # refused before it ran: no fee, no time
        free = pricer(0.0, gpu_count, None)
        return dataclasses.replace(
            free,
            total_usd=0.0,
            execution_usd=0.0,
            gpu_usd=0.0,
            coldstart_usd=0.0,
            resources_usd=0.0,
        )
    billed_ns = invocation.billed_ns
    cost = pricer(
        (invocation.duration_ns if billed_ns is None else billed_ns) * gpu_count / 1e9,
        gpu_count,
        init_seconds(invocation),
    )
    request_startup_s = request_startup_seconds(invocation)
    if request_startup_s and worker.per_gpu_second_usd is not None:
        # Start-up done inside the request is part of its GPU time: shown as start-up, once.
        moved = min(request_startup_s * gpu_count * worker.per_gpu_second_usd, cost.gpu_usd)
        cost = dataclasses.replace(
            cost, gpu_usd=cost.gpu_usd - moved, coldstart_usd=cost.coldstart_usd + moved
        )
    return cost


DEFAULT_OPERATION: Final = "generate_content"
"""``gen_ai.operation.name`` of a handler that serves a model (names one, or records tokens)
without saying which operation: the conventions' most general value."""

_PRICED_HERE: Final[Any] = object()
"""``build_record``'s ``cost`` when it is to be worked out (:func:`price`), the usual case."""


def build_record(
    worker: _Worker,
    invocation: Invocation,
    usage: Any = None,
    *,
    measured: bool,
    cost: Cost | None = _PRICED_HERE,
) -> InvocationRecord:
    """The full record of a finished invocation on ``worker``.

    ``usage`` is what the GPU meter measured (None when it failed); ``measured`` says whether
    the invocation was metered at all (calls were counted in this process: ``_calls``).
    ``cost`` is given only when it was priced already (a spilled invocation: :func:`unspill`).
    """
    identity = worker.identity
    gpu_count = identity.gpu_count
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
        worker.user_key(invocation.user_id) if invocation.user_id is not None else (None, False)
    )
    if cost is _PRICED_HERE:
        cost = price(worker, invocation)
    billing = worker.billing
    record = InvocationRecord(
        record_id=invocation.record_id or new_record_id(invocation.start_ns),
        invocation_id=invocation.invocation_id,
        handler=invocation.handler,
        **identity.fields(),
        billing_worker=billing.key,
        worker_start_ns=billing.start_ns,
        worker_start_source=billing.start_source,
        worker_ready_ns=worker.worker.ready_ns,
        request_startup_s=request_startup_seconds(invocation),
        billing_rules=worker.billing_rules,
        start_ns=invocation.start_ns,
        end_ns=invocation.start_ns + invocation.duration_ns,
        duration_s=duration_s,
        outcome=invocation.outcome,  # type: ignore[arg-type]
        error_type=invocation.error_type,
        cold=invocation.cold,
        init_duration_s=init_duration_s,
        init_phases=phases,
        idle_gap_s=None if invocation.idle_gap_ns is None else invocation.idle_gap_ns / 1e9,
        billed_gpu_seconds=billed_s * gpu_count,
        gpu_unmeasured=unmetered_reason(worker) if invocation.meter is None else None,
        **external_fields(worker, invocation, measured=measured),
        user_id=user_id,
        user_id_pseudonymised=pseudonymised,
        tenant=invocation.tenant,
        tags=dict(invocation.tags or {}),
        input_tokens=invocation.input_tokens,
        output_tokens=invocation.output_tokens,
        **cost_fields(cost, worker.cost_source),
    )
    if invocation.items is not None:  # a generator handler
        record.items = invocation.items
        first = invocation.first_item_ns
        record.first_item_s = None if first is None else first / 1e9
    model = record.model = invocation.model
    operation = invocation.operation
    if operation is None and (
        model is not None
        or invocation.output_tokens is not None
        or invocation.input_tokens is not None
    ):
        operation = DEFAULT_OPERATION
    record.operation = operation
    if invocation.meter is not None:
        # Set after construction: the common record (no GPU) passes fewer arguments.
        record.gpu_uuids = worker.gpu_uuids
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


def _wait_cost(worker: _Worker, invocation: Invocation, wait_s: float) -> float | None:
    """What ``wait_s`` of this invocation's wall time cost: its billed share of it at the
    platform's per-GPU-second rate (GPUs held included); None when unpriced."""
    rate = worker.per_gpu_second_usd
    if rate is None:
        return None
    duration = invocation.duration_ns
    share = 1.0
    if invocation.billed_ns is not None and duration > 0:
        share = invocation.billed_ns / duration
    return float(wait_s * share * worker.identity.gpu_count * rate)


def external_fields(worker: _Worker, invocation: Invocation, *, measured: bool) -> dict[str, Any]:
    """The record's external-call fields: absent (unknown) when nothing counts calls in this
    process, zeros when something does and the invocation made none."""
    external = invocation.external
    if external is None:
        if not measured:
            return {}
        return {
            "external_calls": 0,
            "external_call_seconds": 0.0,
            "external_wait_seconds": 0.0,
            "external_wait_cost_usd": None if worker.per_gpu_second_usd is None else 0.0,
        }
    targets: dict[str, dict[str, float]] = {}
    for target, entry in external.targets.items():
        row: dict[str, float] = dict(entry)
        cost = _wait_cost(worker, invocation, float(entry["wait_s"]))
        if cost is not None:
            row["wait_usd"] = cost
        targets[target] = row
    return {
        "external_calls": external.calls,
        "external_call_seconds": external.call_seconds,
        "external_wait_seconds": external.wait_seconds,
        "external_wait_cost_usd": _wait_cost(worker, invocation, external.wait_seconds),
        "external_targets": targets or None,
    }


def start_notice(
    worker: _Worker, invocation: Invocation, *, pid: int, timeout_s: float | None
) -> dict[str, Any]:
    """What the sidecar is told when ``invocation`` starts: enough to write its record itself
    (:func:`closing_record`) should the process die or the platform's timeout pass first."""
    user = None
    if invocation.user_id is not None:
        user = worker.user_key(invocation.user_id)[0]
    billing = worker.billing
    if timeout_s is not None and not 0 < timeout_s <= MAX_TIMEOUT_S:
        # The sidecar refuses a notice with a timeout outside the record's range (a whole
        # batch); without one it still records the invocation as killed should the pid die.
        timeout_s = None
    return {
        "record_id": invocation.record_id,
        "invocation_id": invocation.invocation_id,
        "handler": invocation.handler,
        "start_ns": invocation.start_ns,
        "pid": pid,
        **worker.identity.fields(),
        "timeout_s": timeout_s,
        "user_id": user,
        "tenant": invocation.tenant,
        "billing_worker": billing.key,
        "worker_start_ns": billing.start_ns,
        "worker_start_source": billing.start_source,
        "worker_ready_ns": worker.worker.ready_ns,
        "billing_rules": worker.billing_rules,
        "pricing_platform": worker.pricing_platform,
        "pricing_version": worker.pricing_version,
    }


def closing_record(
    start: Mapping[str, Any],
    outcome: str,
    end_ns: int,
    pricer: Pricer | None,
    unpriced: str,
) -> InvocationRecord:
    """The record of an invocation that never reported, from its start notice: the worker's
    identity, time from start to ``end_ns``, billed GPU time priced by ``pricer``.

    ``recorded_by`` says it is the sidecar's stand-in, which the real record replaces should
    it arrive after all (the spool and the ledger look for exactly this mark)."""
    identity = WorkerIdentity.from_fields(start)
    start_ns = int(start["start_ns"])
    duration_s = (end_ns - start_ns) / 1e9
    billed = duration_s * identity.gpu_count
    rules = start.get("billing_rules")
    if rules is not None:
        # The worker's own rules, frozen when it started: not the sidecar's catalogue.
        fields = _frozen_cost(rules, billed, start, unpriced)
    else:
        cost = pricer(billed, identity.gpu_count, None) if pricer is not None else None
        fields = cost_fields(cost, unpriced)
    return InvocationRecord(
        record_id=str(start["record_id"]),
        invocation_id=str(start["invocation_id"]),
        handler=str(start["handler"]),
        **identity.fields(),
        start_ns=start_ns,
        end_ns=end_ns,
        duration_s=duration_s,
        outcome=outcome,  # type: ignore[arg-type]
        error_type=None,
        billed_gpu_seconds=billed,
        gpu_unmeasured={"gpu": f"{outcome} before the agent reported; recorded by the sidecar"},
        user_id=start.get("user_id"),
        user_id_pseudonymised=bool(start.get("user_id_pseudonymised", False)),
        tenant=start.get("tenant"),
        billing_worker=start.get("billing_worker"),
        worker_start_ns=start.get("worker_start_ns"),
        worker_start_source=start.get("worker_start_source"),
        worker_ready_ns=start.get("worker_ready_ns"),
        billing_rules=rules,
        **fields,
        recorded_by=RECORDED_BY_SIDECAR,
    )


def _frozen_cost(
    rules: Mapping[str, Any], billed_gpu_s: float, start: Mapping[str, Any], unpriced: str
) -> dict[str, Any]:
    """The price fields of a closing record under the worker's frozen ``rules``: its fee and
    its GPU time, unrounded (the worker's rounding is billed with the worker)."""
    from fractions import Fraction  # noqa: PLC0415 - only when a worker died

    try:
        rate = Fraction(str(rules["per_gpu_second_usd"]))
        fee = Fraction(str(rules.get("execution_fee_usd", "0")))
    except (KeyError, ValueError, ZeroDivisionError):
        return cost_fields(None, unpriced)
    gpu_usd = float(rate * Fraction(billed_gpu_s))
    return {
        "cost_usd": float(fee) + gpu_usd,
        "cost_execution_usd": float(fee),
        "cost_gpu_usd": gpu_usd,
        "cost_coldstart_usd": 0.0,
        "pricing_platform": start.get("pricing_platform") or start.get("platform"),
        "pricing_version": start.get("pricing_version"),
        "cost_source": "worker's billing rules (frozen at its start)",
    }


SPILL_FORMAT: Final = 2
"""The version of :func:`spill`'s rows; :func:`unspill` reads it and the older ones
(``_ROW_LAYOUTS``) and refuses any other (a newer writer's). 2: model, operation, streaming."""
_ROW_AS_IS_1: Final = (
    "invocation_id",
    "handler",
    "start_ns",
    "duration_ns",
    "billed_ns",
    "outcome",
    "error_type",
    "cold",
    "idle_gap_ns",
    "tenant",
    "input_tokens",
    "output_tokens",
)
_ROW_AS_IS: Final = (*_ROW_AS_IS_1, "model", "operation", "first_item_ns", "items")
"""A spilled row: the record id, these attributes of the invocation as they are, its tags, its
stored user (id, pseudonymised), its calls (``_ROW_CALLS``) and its price's four amounts."""
_ROW_LAYOUTS: Final = {1: _ROW_AS_IS_1, SPILL_FORMAT: _ROW_AS_IS}
"""Each format's attributes stored as they are (what a journal of an older version holds)."""
_ROW_CALLS: Final = ("calls", "call_seconds", "wait_seconds", "errors", "targets")


def spill(
    worker: _Worker, invocations: list[Invocation], *, measured: bool
) -> tuple[dict[str, Any] | None, list[Invocation]]:
    """At close, with no time left to build records: ``invocations`` as compact rows, what
    varies per invocation (its times, outcome, user, tags, tokens, calls and its price, worked
    out by the worker's own pricer) under one context of what does not (the worker's identity,
    billing worker, rules and price source), for :func:`unspill` to make the very records
    :func:`build_record` would have made, in a later process. User ids are stored as the
    ledger stores them (pseudonymised first, when set); record ids are given here, so that a
    replay cut short and done again writes each record once.

    Returns the spilled entry (None when no invocation could be spilled so) and the
    invocations left for the full record: those a GPU meter watches or that carry init
    phases (one a process, the cold one), whose records need more than the row holds.
    """
    rows: list[list[Any]] = []
    full: list[Invocation] = []
    pricing: list[Any] | None = None
    user_key = worker.user_key
    for invocation in invocations:
        if invocation.meter is not None or invocation.init is not None or invocation.phases:
            full.append(invocation)
            continue
        cost = price(worker, invocation)
        if cost is not None and pricing is None:
            pricing = [cost.platform, cost.gpu, cost.catalogue_version, cost.source]
        external = invocation.external
        user = invocation.user_id
        rows.append(
            [
                invocation.record_id or new_record_id(invocation.start_ns),
                *map(invocation.__getattribute__, _ROW_AS_IS),
                invocation.tags or None,
                None if user is None else list(user_key(user)),
                None if external is None else [*map(external.__getattribute__, _ROW_CALLS)],
                None
                if cost is None
                else [cost.total_usd, cost.execution_usd, cost.gpu_usd, cost.coldstart_usd],
            ]
        )
    if not rows:
        return None, full
    billing = worker.billing
    context = {
        "identity": worker.identity.fields(),
        "billing_worker": billing.key,
        "worker_start_ns": billing.start_ns,
        "worker_start_source": billing.start_source,
        "worker_ready_ns": worker.worker.ready_ns,
        "billing_rules": worker.billing_rules,
        "gpu_unmeasured": unmetered_reason(worker),
        "per_gpu_second_usd": worker.per_gpu_second_usd,
        "cost_source": worker.cost_source,
        "pricing": pricing,
        "measured": measured,
    }
    return {"format": SPILL_FORMAT, "context": context, "rows": rows}, full


class _Spilled:
    """A spilled invocation as :func:`build_record` reads it (what a row holds)."""

    __slots__ = (
        "billed_ns",
        "cold",
        "duration_ns",
        "error_type",
        "external",
        "first_item_ns",
        "handler",
        "idle_gap_ns",
        "input_tokens",
        "invocation_id",
        "items",
        "model",
        "operation",
        "outcome",
        "output_tokens",
        "record_id",
        "start_ns",
        "tags",
        "tenant",
        "user_id",
    )
    billed_ns: int | float | None
    cold: bool
    duration_ns: int
    error_type: str | None
    external: Any
    handler: str
    idle_gap_ns: int | None
    input_tokens: int | None
    invocation_id: str
    outcome: str
    output_tokens: int | None
    record_id: str
    start_ns: int
    tags: dict[str, str] | None
    tenant: str | None
    user_id: str | None
    model: str | None
    operation: str | None
    first_item_ns: int | None
    items: int | None
    init = None
    phases = None
    meter = None

    def __init__(self) -> None:
        # What a row of an older format does not hold.
        self.model = self.operation = self.first_item_ns = self.items = None


@dataclasses.dataclass(slots=True)
class _FrozenWorker:
    """The worker as it was when it spilled (:func:`spill`'s context), as
    :func:`build_record` reads it; user ids are stored ones already."""

    identity: WorkerIdentity
    billing: Any
    worker: Any
    billing_rules: dict[str, Any] | None
    gpu_reason: dict[str, str] | None
    per_gpu_second_usd: float | None
    cost_source: str
    pricer: Pricer | None = None
    gpu_uuids: str | None = None
    pricing_platform: str | None = None
    pricing_version: str | None = None
    keys: dict[str, bool] = dataclasses.field(default_factory=dict)

    def user_key(self, user_id: str) -> tuple[str, bool]:
        return user_id, self.keys[user_id]


def unspill(entry: Mapping[str, Any]) -> list[InvocationRecord]:
    """The records of a :func:`spill` entry. Raises ValueError when it is not one this version
    reads (a newer writer's format, or a damaged entry)."""
    from types import SimpleNamespace  # noqa: PLC0415 - replay only

    from gpuledger._external import CallSummary  # noqa: PLC0415
    from gpuledger._pricing import Cost  # noqa: PLC0415

    layout = _ROW_LAYOUTS.get(entry.get("format"))  # type: ignore[arg-type]
    if layout is None:
        raise ValueError(f"spilled invocations of format {entry.get('format')!r}")
    try:
        context = entry["context"]
        worker = _FrozenWorker(
            identity=WorkerIdentity.from_fields(context["identity"]),
            billing=SimpleNamespace(
                key=context["billing_worker"],
                start_ns=context["worker_start_ns"],
                start_source=context["worker_start_source"],
            ),
            worker=SimpleNamespace(ready_ns=context["worker_ready_ns"]),
            billing_rules=context["billing_rules"],
            gpu_reason=context["gpu_unmeasured"],
            per_gpu_second_usd=context["per_gpu_second_usd"],
            cost_source=context["cost_source"],
        )
        pricing = context["pricing"]
        measured = bool(context["measured"])
        records: list[InvocationRecord] = []
        for row in entry["rows"]:
            invocation = _Spilled()
            invocation.record_id = row[0]
            for name, value in zip(layout, row[1:], strict=False):
                setattr(invocation, name, value)
            invocation.tags, user, external, amounts = row[len(layout) + 1 :]
            invocation.user_id = None
            if user is not None:
                invocation.user_id, worker.keys[user[0]] = user[0], bool(user[1])
            invocation.external = None if external is None else CallSummary(*external)
            cost = None if amounts is None else Cost(*amounts, *pricing)
            records.append(
                build_record(worker, invocation, None, measured=measured, cost=cost)  # type: ignore[arg-type]
            )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"damaged spilled invocations: {type(error).__name__}: {error}") from error
    return records
