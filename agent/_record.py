"""The invocation record: the one thing that flows from a handler to the ledger and exporters.

All durations are in seconds, energy in joules, memory in bytes, money in US dollars, wall-clock
instants in Unix nanoseconds. ``None`` always means *unknown* (not measured, or not measurable
here) and is never replaced by zero: a GPU field is ``None`` on a machine with no GPU, a cost is
``None`` when the catalogue has no price for the platform and GPU.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Final, Literal

__all__ = [
    "MAX_COST_USD",
    "MAX_DURATION_S",
    "MAX_ENERGY_J",
    "MAX_FUTURE_NS",
    "MAX_GPU_COUNT",
    "MAX_GPU_SECONDS",
    "MAX_IDLE_GAP_S",
    "MAX_MEMORY_BYTES",
    "MAX_TIMEOUT_S",
    "MAX_TOKENS",
    "MIN_TIME_NS",
    "OUTCOMES",
    "RECORDED_BY_SIDECAR",
    "RECORD_FORMAT",
    "InvocationRecord",
    "Outcome",
]

Outcome = Literal["ok", "error", "timeout", "killed", "cancelled", "rejected"]
OUTCOMES: Final = ("ok", "error", "timeout", "killed", "cancelled", "rejected")
"""``rejected``: refused before the handler ran (an enforced budget, ``gpuledger.budgets``): no
GPU time spent on it and no request charge; the worker's own time stays on its bill."""

RECORD_FORMAT: Final = 3
"""The version of the record's format on the wire (``to_dict``'s keys and values, and a start
notice's): a worker sends it with each batch (``{"format": 2, "records": [...]}``, absent means
the current one). Bump it when a field or an outcome is added, so that an older sidecar knows
the values it does not understand come from a newer worker, and keeps the record
(``sidecar._validation``). 2: ``recorded_by``. 3: outcome ``rejected``; ``service_version``,
``model``, ``operation``, ``first_item_s``, ``items``."""

RECORDED_BY_SIDECAR: Final = "sidecar"
"""``InvocationRecord.recorded_by`` of a record the sidecar wrote for an invocation that never
reported (its process died, or its timeout passed): the one value besides None."""

# The ranges a record's values lie in: a value outside them is a bug or a broken clock, and
# could not be exported (OTLP's times are unsigned) or billed. The sidecar refuses such a record
# at the door (``sidecar._validation``); the worker builds none (``_build``).
MIN_TIME_NS: Final = 946_684_800 * 10**9
"""The earliest wall-clock instant a record may have: 2000-01-01T00:00:00Z, in Unix ns."""
MAX_FUTURE_NS: Final = 86_400 * 10**9
"""How far ahead of the receiver's clock an instant may be: a day (clocks drift; not that far)."""
MAX_DURATION_S: Final = 7 * 86_400.0
"""The longest invocation, in seconds: 7 days, RunPod's longest execution timeout."""
MAX_TIMEOUT_S: Final = MAX_DURATION_S
"""The longest timeout a start notice may carry, in seconds."""
MAX_IDLE_GAP_S: Final = 366 * 86_400.0
"""The longest idle gap before a request, in seconds: a year (a worker may sit idle for days)."""
MAX_GPU_COUNT: Final = 1024
"""The most GPUs (or MIG instances) one record may hold."""
MAX_GPU_SECONDS: Final = MAX_DURATION_S * MAX_GPU_COUNT
"""The most GPU seconds, or summed seconds of concurrent calls, one record may have."""
MAX_ENERGY_J: Final = MAX_GPU_SECONDS * 2_000.0
"""The most energy one record may have, in joules: 2 kW a GPU, above any GPU's board power."""
MAX_MEMORY_BYTES: Final = 2**50
"""The most GPU memory one record may report, in bytes (1 PiB)."""
MAX_COST_USD: Final = 1e6
"""The most any money field of one record may be, in US dollars."""
MAX_TOKENS: Final = 10**12
"""The most input or output tokens one record may count."""


@dataclasses.dataclass(slots=True, kw_only=True)
class InvocationRecord:
    """Everything gpuledger knows about one finished invocation of a handler.

    A value: treat it as read-only. (It is not a frozen dataclass because the background writer
    builds tens of thousands a second, and a frozen one costs four times as much to build.)
    """

    # identity
    record_id: str
    """Unique per record (32 hex digits); re-sending a record never counts it twice."""
    invocation_id: str
    """The platform's job/request id where there is one (RunPod job ``id``), else generated."""
    handler: str
    service_name: str
    platform: str
    endpoint: str | None = None
    worker_id: str | None = None
    region: str | None = None
    gpu_model: str | None = None
    gpu_count: int = 1
    service_version: str | None = None
    """The deploy version the worker ran (``service.version``): a setting, else the platform's."""

    # the billing worker: the container a platform bills, which may run several processes
    billing_worker: str | None = None
    """The platform's worker/container id (RunPod's pod id, Modal's task id), else the
    container's hostname on a platform detected from its environment, else ``host:pid``."""
    worker_start_ns: int | None = None
    """When the billing worker started: its container's start (PID 1's, read from the OS) on a
    platform's container, else the process's own start."""
    worker_start_source: str | None = None
    """``container`` (PID 1's start), or the process start's source (``proc``, ``psutil``,
    ``import``)."""
    worker_ready_ns: int | None = None
    """When this process finished its init (its first request's start, if that was cold)."""
    request_startup_s: float | None = None
    """Start-up work done inside this request (a model loaded lazily on first use): part of
    ``duration_s``, billed once, as start-up."""
    billing_rules: dict[str, Any] | None = None
    """The platform's billing rules in force when the worker started (``Rules.to_json``),
    frozen with the record so that a later catalogue never changes an old bill."""

    # time
    start_ns: int
    end_ns: int
    duration_s: float
    outcome: Outcome = "ok"
    error_type: str | None = None

    # cold start
    cold: bool = False
    """True when this request waited for the process to start (the first request, unless the
    worker finished init longer than the pre-warm threshold before it arrived)."""
    init_duration_s: float | None = None
    """Process start (read from the OS) to the end of init; set on the first request only."""
    init_phases: dict[str, float] | None = None
    """Named init phases in seconds, plus ``"(unnamed)"``: interpreter start, imports, the rest."""
    idle_gap_s: float | None = None
    """Time this worker sat idle before the request: since the previous request ended, or for the
    first request since init finished; 0 when another request was still running."""

    # GPU
    billed_gpu_seconds: float = 0.0
    """Wall time x GPUs held, exactly; the cost applies the platform's billing increment and
    minimum on top (a 0.3 s request on a whole-second platform is billed 1 s)."""
    busy_gpu_seconds: float | None = None
    """GPU utilisation integrated over the request (NVML), shared like the billed time."""
    busy_source: str | None = None
    """``process`` (NVML's per-process samples of this pid) or ``device`` (the GPU's)."""
    energy_j: float | None = None
    """The GPUs' energy over the request: the energy counter's delta (or power samples)."""
    energy_active_j: float | None = None
    """``energy_j`` above the GPUs' idle power (the lowest power seen on them)."""
    energy_idle_j: float | None = None
    energy_source: str | None = None
    """``counter`` (nvmlDeviceGetTotalEnergyConsumption) or ``power_samples``."""
    peak_gpu_memory_bytes: int | None = None
    """Most GPU memory the process held during the request (needs the sampler)."""
    gpu_uuids: str | None = None
    """The GPUs (or MIG instances) the worker held, comma-separated NVML UUIDs."""
    gpu_unmeasured: dict[str, str] | None = None
    """Why GPU fields are null: field (or ``gpu`` for all of them) -> reason."""

    # external calls
    external_calls: int | None = None
    external_call_seconds: float | None = None
    external_wait_seconds: float | None = None
    """Wall time covered by at least one outgoing call (union of intervals)."""
    external_wait_cost_usd: float | None = None
    """What that wait cost: its share of the billed GPU time at the platform's GPU rate."""
    external_targets: dict[str, dict[str, float]] | None = None
    """Per target (``host:port``, ``postgresql://host:port``, ``s3://bucket``, ...): ``calls``,
    ``call_s``, ``wait_s``, ``wait_usd``, ``errors`` and ``bytes`` where known."""

    # who
    user_id: str | None = None
    """The user id, or its pseudonym when ``user_id_pseudonymised``."""
    user_id_pseudonymised: bool = False
    tenant: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None
    """The model the request asked for (``gen_ai.request.model``), when the handler says."""
    operation: str | None = None
    """The GenAI operation (``gen_ai.operation.name``: ``chat``, ``text_completion``, ...) of a
    handler that serves a model (one that names its model or records tokens)."""

    # streaming (generator handlers)
    first_item_s: float | None = None
    """Start to the first item a generator handler yielded (time to first token when it streams
    tokens); None for a handler that returns, or a generator that yielded nothing."""
    items: int | None = None
    """How many items a generator handler yielded; None for a handler that returns."""

    # cost
    cost_usd: float | None = None
    """The request's own charge as known at its end: its fee, its share of the GPU time it ran,
    and the worker's start-up if it waited for it (where billed), plus, where the platform charges
    them (Modal), the worker's CPU and memory over that same time (so it can exceed the sum of
    the three parts below). Rounding and idle time are the worker's, known later: ``gpuledger
    report`` bills the worker and attributes them."""
    cost_execution_usd: float | None = None
    """The per-execution fee part (RunPod serverless)."""
    cost_gpu_usd: float | None = None
    """The GPU-time part for the request itself."""
    cost_coldstart_usd: float | None = None
    """The init time billed to this cold request, where the platform bills start-up."""
    pricing_platform: str | None = None
    pricing_version: str | None = None
    cost_source: str | None = None
    """Where the price came from: ``catalogue:<version>`` or ``file:<path>``, or why it is None."""

    # provenance
    recorded_by: str | None = None
    """Who wrote the record: None, the agent that ran the invocation; ``"sidecar"``
    (:data:`RECORDED_BY_SIDECAR`), the sidecar, from the invocation's start notice, because no
    record came before its process died or its timeout passed. The sidecar's record is a
    stand-in: should the real one arrive after all (kept in the worker's journal, a worker frozen
    past the grace), it replaces it in the spool and the ledger, so that an invocation that
    finished is never left recorded as ``killed``. Last, so that the fields before it keep
    their order (``to_dict``'s keys, the ledger's column list)."""

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready values, field names as keys."""
        return dict(zip(FIELD_NAMES, _values(self), strict=True))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InvocationRecord:
        """Build a record from ``to_dict`` output; keys this version does not know are ignored."""
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


FIELD_NAMES: Final = tuple(field.name for field in dataclasses.fields(InvocationRecord))
_values: Final = operator.attrgetter(*FIELD_NAMES)
