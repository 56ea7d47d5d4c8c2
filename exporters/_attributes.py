"""The one mapping from an invocation record to OpenTelemetry attributes: the span's and the
worker's resource; and the attributes of the ``init`` span and of a call timed by
``gpuledger.external_call``. The worker ends its SERVER span with them, from the record its
writer builds; the sidecar rebuilds the span from the record it receives
(``_records.record_to_span``); so both carry the same attribute set.

Names the semantic conventions define come from ``opentelemetry.semconv`` (version
``_names.SEMCONV_VERSION``), gpuledger's own from ``_names``. No OpenTelemetry SDK import here:
this module is loaded where telemetry is on (the worker's ledger-only mode never loads it).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry.semconv._incubating.attributes.cloud_attributes import (
    CLOUD_PLATFORM,
    CLOUD_PROVIDER,
    CLOUD_REGION,
)
from opentelemetry.semconv._incubating.attributes.enduser_attributes import (
    ENDUSER_ID,
    ENDUSER_PSEUDO_ID,
)
from opentelemetry.semconv._incubating.attributes.faas_attributes import (
    FAAS_COLDSTART,
    FAAS_INSTANCE,
    FAAS_INVOCATION_ID,
    FAAS_NAME,
    FAAS_TRIGGER,
)
from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_OPERATION_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
)
from opentelemetry.semconv.attributes.db_attributes import DB_SYSTEM_NAME
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME, SERVICE_VERSION

from gpuledger._platform import platform_defaults
from gpuledger._record import InvocationRecord
from gpuledger._worker import InitInfo
from gpuledger.exporters import _names as ours

__all__ = [
    "external_call_attributes",
    "init_span_attributes",
    "record_resource_attributes",
    "span_attributes",
    "worker_resource_attributes",
]


def worker_resource_attributes(
    *,
    service_name: str,
    platform: str,
    region: str | None,
    endpoint: str | None,
    worker_id: str | None,
    gpu_model: str | None,
    gpu_count: int,
    service_version: str | None = None,
) -> dict[str, Any]:
    """A worker's OpenTelemetry resource attributes (``None`` values left out): the one mapping,
    used by the worker for its providers and by the sidecar for the records it exports."""
    defaults = platform_defaults(platform)
    attributes: dict[str, Any] = {
        SERVICE_NAME: service_name,
        SERVICE_VERSION: service_version,
        CLOUD_PROVIDER: defaults.cloud_provider,
        CLOUD_PLATFORM: defaults.cloud_platform,
        CLOUD_REGION: region,
        FAAS_NAME: endpoint or service_name,
        FAAS_INSTANCE: worker_id,
        ours.GPULEDGER_PLATFORM: platform,
        ours.GPULEDGER_GPU_MODEL: gpu_model,
        ours.GPULEDGER_GPU_COUNT: gpu_count,
    }
    return {key: value for key, value in attributes.items() if value is not None}


def record_resource_attributes(record: InvocationRecord) -> dict[str, Any]:
    """The resource attributes of the worker that produced ``record``."""
    return worker_resource_attributes(
        service_name=record.service_name,
        platform=record.platform,
        region=record.region,
        endpoint=record.endpoint,
        worker_id=record.worker_id,
        gpu_model=record.gpu_model,
        gpu_count=record.gpu_count,
        service_version=record.service_version,
    )


def span_attributes(record: InvocationRecord) -> dict[str, Any]:
    """The SERVER span attributes of ``record`` (``gpuledger.record_id`` finds its ledger row).

    Sequences are tuples, as the SDK stores what a span is given, so a span built from these
    compares equal to one the SDK ended with them."""
    attributes: dict[str, Any] = {
        FAAS_TRIGGER: platform_defaults(record.platform).faas_trigger,
        FAAS_COLDSTART: record.cold,
        FAAS_INVOCATION_ID: record.invocation_id,
        ours.GPULEDGER_RECORD_ID: record.record_id,
        ours.GPULEDGER_OUTCOME: record.outcome,
        ours.GPULEDGER_GPU_BILLED: record.billed_gpu_seconds,
        ours.GPULEDGER_GPU_COUNT: record.gpu_count,
    }
    optional: tuple[tuple[str, object], ...] = (
        (ours.GPULEDGER_GPU_MODEL, record.gpu_model),
        (ours.GPULEDGER_GPU_BUSY, record.busy_gpu_seconds),
        (ours.GPULEDGER_GPU_BUSY_SOURCE, record.busy_source),
        (ours.GPULEDGER_GPU_ENERGY, record.energy_j),
        (ours.GPULEDGER_GPU_ENERGY_ACTIVE, record.energy_active_j),
        (ours.GPULEDGER_GPU_ENERGY_IDLE, record.energy_idle_j),
        (ours.GPULEDGER_GPU_ENERGY_SOURCE, record.energy_source),
        (ours.GPULEDGER_GPU_PEAK_MEMORY, record.peak_gpu_memory_bytes),
        (ours.GPULEDGER_IDLE_GAP, record.idle_gap_s),
        (ours.GPULEDGER_INIT_DURATION, record.init_duration_s),
        (ours.GPULEDGER_TENANT, record.tenant),
        (GEN_AI_OPERATION_NAME, record.operation),
        (GEN_AI_REQUEST_MODEL, record.model),
        (GEN_AI_USAGE_INPUT_TOKENS, record.input_tokens),
        (GEN_AI_USAGE_OUTPUT_TOKENS, record.output_tokens),
        (ours.GPULEDGER_STREAM_ITEMS, record.items),
        (ours.GPULEDGER_STREAM_FIRST_ITEM, record.first_item_s),
        (ours.GPULEDGER_COST_TOTAL, record.cost_usd),
        (ours.GPULEDGER_COST_EXECUTION, record.cost_execution_usd),
        (ours.GPULEDGER_COST_GPU, record.cost_gpu_usd),
        (ours.GPULEDGER_COST_COLDSTART, record.cost_coldstart_usd),
        (ours.GPULEDGER_PRICING_VERSION, record.pricing_version),
    )
    for key, value in optional:
        if value is not None:
            attributes[key] = value
    if record.gpu_uuids:
        attributes[ours.GPULEDGER_GPU_UUIDS] = tuple(record.gpu_uuids.split(","))
    if record.gpu_unmeasured:
        unmeasured = sorted(record.gpu_unmeasured.items())
        attributes[ours.GPULEDGER_GPU_UNMEASURED] = tuple(field for field, _ in unmeasured)
        attributes[ours.GPULEDGER_GPU_UNMEASURED_REASONS] = tuple(why for _, why in unmeasured)
    if record.external_calls is not None:
        attributes.update(_external_attributes(record))
    if record.user_id is not None:
        key = ENDUSER_PSEUDO_ID if record.user_id_pseudonymised else ENDUSER_ID
        attributes[key] = record.user_id
    for tag, value in record.tags.items():
        attributes[f"{ours.GPULEDGER_TAG_TEMPLATE}.{tag}"] = value
    if record.outcome != "ok":
        attributes[ERROR_TYPE] = record.error_type or record.outcome
    return attributes


def init_span_attributes(init: InitInfo) -> dict[str, Any]:
    """The attributes of the ``init`` span a cold start's init is emitted as."""
    return {
        ours.GPULEDGER_INIT_PROCESS_START_SOURCE: init.process_start_source,
        ours.GPULEDGER_INIT_DURATION: init.duration_s,
    }


def _external_attributes(record: InvocationRecord) -> dict[str, Any]:
    """The outgoing-call totals, and per target as arrays parallel to the sorted target names
    (attribute values are scalars or arrays of one type, never maps)."""
    attributes: dict[str, Any] = {ours.GPULEDGER_EXTERNAL_CALLS: record.external_calls}
    for key, value in (
        (ours.GPULEDGER_EXTERNAL_CALL_DURATION, record.external_call_seconds),
        (ours.GPULEDGER_EXTERNAL_WAIT, record.external_wait_seconds),
        (ours.GPULEDGER_EXTERNAL_WAIT_COST, record.external_wait_cost_usd),
    ):
        if value is not None:
            attributes[key] = value
    targets = sorted((record.external_targets or {}).items())
    attributes[ours.GPULEDGER_EXTERNAL_ERRORS] = sum(
        int(entry.get("errors", 0)) for _, entry in targets
    )
    attributes[ours.GPULEDGER_EXTERNAL_TARGETS] = tuple(target for target, _ in targets)
    attributes[ours.GPULEDGER_EXTERNAL_TARGET_CALLS] = tuple(
        int(entry.get("calls", 0)) for _, entry in targets
    )
    attributes[ours.GPULEDGER_EXTERNAL_TARGET_ERRORS] = tuple(
        int(entry.get("errors", 0)) for _, entry in targets
    )
    attributes[ours.GPULEDGER_EXTERNAL_TARGET_WAITS] = tuple(
        float(entry.get("wait_s", 0.0)) for _, entry in targets
    )
    # The wait is priced for every target or for none (unpriced platform or GPU).
    if targets and all(entry.get("wait_usd") is not None for _, entry in targets):
        attributes[ours.GPULEDGER_EXTERNAL_TARGET_WAIT_COSTS] = tuple(
            float(entry["wait_usd"]) for _, entry in targets
        )
    return attributes


# --- a call timed by hand: what its target says about the server ------------------------------


@functools.cache
def _db_schemes() -> dict[str, str]:
    """URL scheme -> ``db.system.name``: every well-known system whose name is a scheme as it is
    (``postgresql``, ``mysql``, ``redis``, ``mongodb``, ...), and the schemes spelled otherwise.

    Built on first use: the conventions' module of database names takes milliseconds to import,
    paid once a call to a URL other than HTTP is timed by hand, never at configuration."""
    from opentelemetry.semconv._incubating.attributes.db_attributes import (  # noqa: PLC0415
        DbSystemNameValues,
    )

    return {
        **{
            member.value: member.value
            for member in DbSystemNameValues
            if "." not in member.value and member is not DbSystemNameValues.OTHER_SQL
        },
        # The URL schemes these systems' clients use (libpq, redis-py, pymongo, SQLAlchemy).
        "postgres": DbSystemNameValues.POSTGRESQL.value,
        "rediss": DbSystemNameValues.REDIS.value,
        "mongodb+srv": DbSystemNameValues.MONGODB.value,
        "mssql": DbSystemNameValues.MICROSOFT_SQL_SERVER.value,
        "sqlserver": DbSystemNameValues.MICROSOFT_SQL_SERVER.value,
        "oracle": DbSystemNameValues.ORACLE_DB.value,
    }


_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_BUCKET_SCHEMES: Final = frozenset({"s3"})
"""Schemes whose authority is a bucket, not a host."""
_HOST_PORT: Final = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\s]+):(?P<port>[0-9]{1,5})$")
_DNS_NAME: Final = re.compile(
    r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$",
    re.IGNORECASE,
)
"""A host name with at least one dot and a top-level label that starts with a letter."""


def external_call_attributes(target: str) -> dict[str, Any]:
    """The attributes of the CLIENT span ``gpuledger.external_call(..., target=target)`` starts:
    the target, the mark that it is counted already, and what the target says about the server
    under the semantic conventions' names.

    - a URL, ``scheme://[user@]host[:port][/...]``: ``server.address`` and ``server.port`` (the
      port given, else the scheme's for ``http``/``https``); ``db.system.name`` where the scheme
      names a database the conventions know (``postgres``/``postgresql``, ``mysql``, ``redis``,
      ``mongodb``, ...); ``s3://bucket`` gives ``aws.s3.bucket`` instead, a bucket being no host;
    - ``host:port``: ``server.address`` and ``server.port``;
    - a host name with a dot, an IP address or ``localhost``: ``server.address``;
    - anything else (``vectordb``, ``aws:s3``) is a label: no server attribute.
    """
    return {
        ours.GPULEDGER_EXTERNAL_TARGET: target,
        ours.GPULEDGER_EXTERNAL_MANUAL: True,
        **_target_attributes(target),
    }


@functools.lru_cache(maxsize=256)
def _target_attributes(target: str) -> dict[str, Any]:
    # Cached: a handler calls the same few targets again and again.
    if "://" in target:
        return _url_attributes(target)
    match = _HOST_PORT.match(target)
    if match is not None:
        port = int(match["port"])
        if 0 < port < 65536:
            return {SERVER_ADDRESS: match["host"].strip("[]"), SERVER_PORT: port}
        return {}
    if _is_host(target):
        return {SERVER_ADDRESS: target}
    return {}


def _url_attributes(target: str) -> dict[str, Any]:
    try:
        parts = urlsplit(target)
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        return {}
    scheme, host = parts.scheme.lower(), parts.hostname
    if not host:
        return {}
    if scheme in _BUCKET_SCHEMES:
        from opentelemetry.semconv._incubating.attributes.aws_attributes import (  # noqa: PLC0415
            AWS_S3_BUCKET,
        )

        return {AWS_S3_BUCKET: host}
    attributes: dict[str, Any] = {SERVER_ADDRESS: host}
    port = port or _DEFAULT_PORTS.get(scheme)
    if port:
        attributes[SERVER_PORT] = port
    system = None if scheme in _DEFAULT_PORTS else _db_schemes().get(scheme)
    if system is not None:
        attributes[DB_SYSTEM_NAME] = system
    return attributes


def _is_host(text: str) -> bool:
    if text == "localhost" or _DNS_NAME.match(text):
        return True
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True
