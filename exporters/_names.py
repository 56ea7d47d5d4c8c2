"""gpuledger's own telemetry names (``gpuledger.*``), and the semantic-conventions version that
every other name it emits follows.

The names the OpenTelemetry semantic conventions define (``faas.*``, ``enduser.*``,
``gen_ai.usage.*``, ``server.*``, ``db.system.name``, ``hw.*``, ...) are never spelled here: the
mapping takes them from ``opentelemetry.semconv``, version :data:`SEMCONV_VERSION`, and tracers,
meters and resources carry its :data:`SCHEMA_URL`. This module holds the rest, one constant per
name as the conventions' own generated modules do, under the conventions' naming rules:

- lowercase, namespaces separated by dots, words inside a component joined by ``_``;
- no name is also a namespace (``gpuledger.cost`` is a namespace of attributes, so the total is
  ``gpuledger.cost.total``);
- **no unit in any name.** A metric's unit is its instrument's ``unit`` (UCUM: ``s``, ``J``;
  an annotation where UCUM has none: ``{USD}``); an attribute is in the base unit of what it
  measures (seconds, joules, bytes, US dollars), said in its docstring and in the README. The
  conventions do the same (``http.request.body.size`` is bytes, ``faas.max_memory`` bytes).

No OpenTelemetry SDK import here; ``opentelemetry.semconv.schemas`` is a few enum members.
"""

from __future__ import annotations

from typing import Final

from opentelemetry.semconv.schemas import Schemas

SEMCONV_VERSION: Final = "1.44.0"
"""The OpenTelemetry semantic conventions the names follow."""
SCHEMA_URL: Final = Schemas.V1_44_0.value
"""Their schema URL, set on gpuledger's tracer, meter and resources."""

# --- resource attributes ----------------------------------------------------------------------

GPULEDGER_PLATFORM: Final = "gpuledger.platform"
"""The platform requests are priced on (``runpod``, ``modal``, ...)."""
GPULEDGER_GPU_MODEL: Final = "gpuledger.gpu.model"
"""The GPU model each worker holds, as the catalogue names it (``H100``); also on the span."""
GPULEDGER_GPU_COUNT: Final = "gpuledger.gpu.count"
"""GPUs each worker holds; also on the span."""

# --- span attributes of an invocation (the SERVER span) -----------------------------------------

GPULEDGER_RECORD_ID: Final = "gpuledger.record_id"
"""The invocation's ledger row."""
GPULEDGER_OUTCOME: Final = "gpuledger.outcome"
"""``ok``, ``error``, ``cancelled``, ``timeout`` or ``killed``."""
GPULEDGER_GPU_UUIDS: Final = "gpuledger.gpu.uuids"
"""The UUIDs of the GPUs the process may use (an array)."""
GPULEDGER_GPU_BILLED: Final = "gpuledger.gpu.billed"
"""Billed GPU time: wall time x GPUs held, shared among overlapping invocations. Seconds."""
GPULEDGER_GPU_BUSY: Final = "gpuledger.gpu.busy"
"""GPU time the GPUs were busy (NVML utilisation integrated). Seconds."""
GPULEDGER_GPU_BUSY_SOURCE: Final = "gpuledger.gpu.busy_source"
"""``process`` or ``device``: whose NVML samples measured the busy time."""
GPULEDGER_GPU_ENERGY: Final = "gpuledger.gpu.energy"
"""GPU energy used over the invocation. Joules."""
GPULEDGER_GPU_ENERGY_ACTIVE: Final = "gpuledger.gpu.energy_active"
"""The energy above the GPU's idle power. Joules."""
GPULEDGER_GPU_ENERGY_IDLE: Final = "gpuledger.gpu.energy_idle"
"""The energy the idle power accounts for. Joules."""
GPULEDGER_GPU_ENERGY_SOURCE: Final = "gpuledger.gpu.energy_source"
"""``counter`` or ``power_samples``: how the energy was measured."""
GPULEDGER_GPU_PEAK_MEMORY: Final = "gpuledger.gpu.peak_memory"
"""The most GPU memory the process held during the invocation. Bytes."""
GPULEDGER_GPU_UNMEASURED: Final = "gpuledger.gpu.unmeasured"
"""The record fields NVML could not measure (``energy_j``, ``gpu``, ...), sorted."""
GPULEDGER_GPU_UNMEASURED_REASONS: Final = "gpuledger.gpu.unmeasured_reasons"
"""Why, parallel to ``gpuledger.gpu.unmeasured``."""
GPULEDGER_IDLE_GAP: Final = "gpuledger.idle_gap"
"""How long the worker sat idle before the invocation. Seconds."""
GPULEDGER_INIT_DURATION: Final = "gpuledger.init.duration"
"""The init attributed to the invocation (also on the ``init`` span). Seconds."""
GPULEDGER_INIT_PROCESS_START_SOURCE: Final = "gpuledger.init.process_start_source"
"""Where the process's start time was read (``/proc``, ``psutil``, ``import``)."""
GPULEDGER_PHASE: Final = "gpuledger.phase"
"""The name of an init phase, on its span."""
GPULEDGER_STREAM_FIRST_ITEM: Final = "gpuledger.stream.first_item"
"""Seconds from a generator handler's start to its first item (time to first token)."""
GPULEDGER_STREAM_ITEMS: Final = "gpuledger.stream.items"
"""Items a generator handler yielded."""
GPULEDGER_TENANT: Final = "gpuledger.tenant"
"""The tenant ``gpuledger.tag(tenant=)`` named; also a metric attribute when opted in."""
GPULEDGER_TAG_TEMPLATE: Final = "gpuledger.tag"
"""``gpuledger.tag.<key>``: each free tag of the invocation."""
GPULEDGER_COST_TOTAL: Final = "gpuledger.cost.total"
"""The invocation's price under the platform's pricing. US dollars."""
GPULEDGER_COST_EXECUTION: Final = "gpuledger.cost.execution"
"""Its per-execution fee part. US dollars."""
GPULEDGER_COST_GPU: Final = "gpuledger.cost.gpu"
"""Its GPU-time part. US dollars."""
GPULEDGER_COST_COLDSTART: Final = "gpuledger.cost.coldstart"
"""Its billed start-up part. US dollars."""
GPULEDGER_COST_CATEGORY: Final = "gpuledger.cost.category"
"""On the cost counter: what the charge is for: ``fee``, ``request`` (the invocations' GPU
time), ``startup``, ``idle`` (a warm worker's billed idle time) or ``rounding`` (what the
platform's increment and minimum add to the worker's billing spans)."""
GPULEDGER_PRICING_VERSION: Final = "gpuledger.pricing.version"
"""The price catalogue's version."""

GPULEDGER_EXTERNAL_CALLS: Final = "gpuledger.external.calls"
"""Outgoing calls that ended inside the invocation."""
GPULEDGER_EXTERNAL_CALL_DURATION: Final = "gpuledger.external.call_duration"
"""Their durations summed. Seconds."""
GPULEDGER_EXTERNAL_WAIT: Final = "gpuledger.external.wait"
"""Wall time covered by at least one call (the union, not the sum). Seconds."""
GPULEDGER_EXTERNAL_WAIT_COST: Final = "gpuledger.external.wait_cost"
"""What the wait cost at the platform's GPU-time price. US dollars."""
GPULEDGER_EXTERNAL_ERRORS: Final = "gpuledger.external.errors"
"""Calls that failed (raised, or HTTP status 400 and up)."""
GPULEDGER_EXTERNAL_TARGETS: Final = "gpuledger.external.targets"
"""The targets called, sorted; the ``target_*`` arrays below are parallel to it."""
GPULEDGER_EXTERNAL_TARGET_CALLS: Final = "gpuledger.external.target_calls"
"""Calls per target."""
GPULEDGER_EXTERNAL_TARGET_ERRORS: Final = "gpuledger.external.target_errors"
"""Failed calls per target."""
GPULEDGER_EXTERNAL_TARGET_WAITS: Final = "gpuledger.external.target_waits"
"""Wait per target (the union of that target's calls). Seconds."""
GPULEDGER_EXTERNAL_TARGET_WAIT_COSTS: Final = "gpuledger.external.target_wait_costs"
"""What each target's wait cost, where the price is known. US dollars."""

# --- attributes of a CLIENT span made by ``gpuledger.external_call``, and of metrics -----------

GPULEDGER_EXTERNAL_TARGET: Final = "gpuledger.external.target"
"""Who a call went to (``postgresql://db:5432``, ``api.openai.com``, ``aws:s3``)."""
GPULEDGER_EXTERNAL_MANUAL: Final = "gpuledger.external.manual"
"""``true`` on a span ``gpuledger.external_call`` made: counted already, not again from the span."""
GPULEDGER_HANDLER: Final = "gpuledger.handler"
"""The handler's name, on every invocation metric."""
GPULEDGER_ERROR_KIND: Final = "gpuledger.error.kind"
"""A kind of gpuledger's own contained failure (``nvml.GpuIsLost``, ``sidecar.fallback``)."""

# --- metrics (the unit is the instrument's) ----------------------------------------------------

GPULEDGER_GPU_BILLED_METRIC: Final = "gpuledger.gpu.billed"
"""Counter, ``s``: billed GPU time."""
GPULEDGER_GPU_BUSY_METRIC: Final = "gpuledger.gpu.busy"
"""Counter, ``s``: busy GPU time."""
GPULEDGER_GPU_ENERGY_METRIC: Final = "gpuledger.gpu.energy"
"""Counter, ``J``: GPU energy used by invocations."""
GPULEDGER_COST_METRIC: Final = "gpuledger.cost"
"""Counter, ``{USD}``: what the workers are billed, by ``gpuledger.cost.category``, added as
each charge becomes known (idle and rounding with the next request or the worker's stop)."""
GPULEDGER_EXTERNAL_CALLS_METRIC: Final = "gpuledger.external.calls"
"""Counter, ``{call}``: outgoing calls, by target."""
GPULEDGER_EXTERNAL_WAIT_METRIC: Final = "gpuledger.external.wait"
"""Counter, ``s``: external wait, by target."""
GPULEDGER_FLUSH_WAIT_METRIC: Final = "gpuledger.flush.wait"
"""Histogram, ``s``: how long an invocation's end waited for its record to leave."""
GPULEDGER_TOKENS_METRIC: Final = "gpuledger.tokens"
"""Model tokens by ``gen_ai.token.type`` (counter; the server's side of token usage)."""
GPULEDGER_STREAM_FIRST_ITEM_METRIC: Final = "gpuledger.stream.time_to_first_item"
GPULEDGER_STREAM_PER_ITEM_METRIC: Final = "gpuledger.stream.time_per_item"
GPULEDGER_BUDGET_SPEND_METRIC: Final = "gpuledger.budget.spend"
GPULEDGER_BUDGET_SPENT_METRIC: Final = "gpuledger.budget.spent"
GPULEDGER_BUDGET_LIMIT_METRIC: Final = "gpuledger.budget.limit"
GPULEDGER_BUDGET_WINDOW_METRIC: Final = "gpuledger.budget.window"
GPULEDGER_BUDGET_REJECTIONS_METRIC: Final = "gpuledger.budget.rejections"
GPULEDGER_BUDGET_SCOPE: Final = "gpuledger.budget.scope"
GPULEDGER_BUDGET_KEY: Final = "gpuledger.budget.key"
GPULEDGER_BUDGET_WINDOW: Final = "gpuledger.budget.window"
GPULEDGER_BUDGET_MODE: Final = "gpuledger.budget.mode"
GPULEDGER_TELEMETRY_ERRORS_METRIC: Final = "gpuledger.telemetry.errors"
"""Observable counter, ``{error}``: gpuledger's own contained failures, by kind."""
GPULEDGER_SIDECAR_DEAD_LETTERS_METRIC: Final = "gpuledger.sidecar.dead_letters"
"""Counter, ``{record}``: records a sidecar consumer could not deliver and set aside (exposed by
the sidecar's Prometheus ``/metrics`` as ``gpuledger_sidecar_dead_letters_total``)."""
GPULEDGER_LEDGER_PENDING_METRIC: Final = "gpuledger.ledger.pending"
"""Observable up-down counter, ``{invocation}``: invocations waiting for the writer."""

USD: Final = "{USD}"
"""The unit of cost instruments: an annotation, since UCUM has no currency."""
