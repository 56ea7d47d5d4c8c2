"""The one mapping from an invocation record to OpenTelemetry attributes: the span's and the
worker's resource. The worker ends its SERVER span with them, from the record its writer builds;
the sidecar rebuilds the span from the record it receives (``_records.record_to_span``); so both
carry the same attribute set. No OpenTelemetry import here: the worker's ledger-only mode loads
no SDK.
"""

from __future__ import annotations

from typing import Any

from gpuledger._platform import platform_defaults
from gpuledger._record import InvocationRecord

__all__ = ["record_resource_attributes", "span_attributes", "worker_resource_attributes"]


def worker_resource_attributes(
    *,
    service_name: str,
    platform: str,
    region: str | None,
    endpoint: str | None,
    worker_id: str | None,
    gpu_model: str | None,
    gpu_count: int,
) -> dict[str, Any]:
    """A worker's OpenTelemetry resource attributes (semantic-convention names; ``None`` values
    left out): the one mapping, used by the worker for its providers and by the sidecar for the
    records it exports."""
    defaults = platform_defaults(platform)
    attributes: dict[str, Any] = {
        "service.name": service_name,
        "cloud.provider": defaults.cloud_provider,
        "cloud.platform": defaults.cloud_platform,
        "cloud.region": region,
        "faas.name": endpoint or service_name,
        "faas.instance": worker_id,
        "gpuledger.platform": platform,
        "gpuledger.gpu.model": gpu_model,
        "gpuledger.gpu.count": gpu_count,
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
    )


def span_attributes(record: InvocationRecord) -> dict[str, Any]:
    """The SERVER span attributes of ``record`` (``gpuledger.record_id`` finds its ledger row).

    Sequences are tuples, as the SDK stores what a span is given, so a span built from these
    compares equal to one the SDK ended with them."""
    attributes: dict[str, Any] = {
        "faas.trigger": platform_defaults(record.platform).faas_trigger,
        "faas.coldstart": record.cold,
        "faas.invocation_id": record.invocation_id,
        "gpuledger.record_id": record.record_id,
        "gpuledger.outcome": record.outcome,
        "gpuledger.gpu.billed_seconds": record.billed_gpu_seconds,
        "gpuledger.gpu.count": record.gpu_count,
    }
    optional: tuple[tuple[str, object], ...] = (
        ("gpuledger.gpu.model", record.gpu_model),
        ("gpuledger.gpu.uuids", record.gpu_uuids),
        ("gpuledger.gpu.busy_seconds", record.busy_gpu_seconds),
        ("gpuledger.gpu.busy_source", record.busy_source),
        ("gpuledger.gpu.energy_j", record.energy_j),
        ("gpuledger.gpu.energy_active_j", record.energy_active_j),
        ("gpuledger.gpu.energy_idle_j", record.energy_idle_j),
        ("gpuledger.gpu.energy_source", record.energy_source),
        ("gpuledger.gpu.peak_memory_bytes", record.peak_gpu_memory_bytes),
        ("gpuledger.idle_gap_s", record.idle_gap_s),
        ("gpuledger.init.duration_s", record.init_duration_s),
        ("gpuledger.tenant", record.tenant),
        ("gen_ai.usage.input_tokens", record.input_tokens),
        ("gen_ai.usage.output_tokens", record.output_tokens),
        ("gpuledger.cost.usd", record.cost_usd),
        ("gpuledger.cost.execution_usd", record.cost_execution_usd),
        ("gpuledger.cost.gpu_usd", record.cost_gpu_usd),
        ("gpuledger.cost.coldstart_usd", record.cost_coldstart_usd),
        ("gpuledger.pricing.version", record.pricing_version),
    )
    for key, value in optional:
        if value is not None:
            attributes[key] = value
    if record.gpu_unmeasured:
        attributes["gpuledger.gpu.unmeasured"] = tuple(
            f"{field}: {why}" for field, why in sorted(record.gpu_unmeasured.items())
        )
    if record.external_calls is not None:
        attributes["gpuledger.external.calls"] = record.external_calls
        if record.external_call_seconds is not None:
            attributes["gpuledger.external.call_seconds"] = record.external_call_seconds
        if record.external_wait_seconds is not None:
            attributes["gpuledger.external.wait_seconds"] = record.external_wait_seconds
        if record.external_wait_cost_usd is not None:
            attributes["gpuledger.external.wait_cost_usd"] = record.external_wait_cost_usd
        targets = record.external_targets or {}
        attributes["gpuledger.external.errors"] = int(
            sum(entry.get("errors", 0) for entry in targets.values())
        )
        attributes["gpuledger.external.targets"] = tuple(
            f"{target}: {int(entry.get('calls', 0))} calls, "
            f"{float(entry.get('wait_s', 0.0)):.6f} s waited"
            for target, entry in sorted(targets.items())
        )
    if record.user_id is not None:
        key = "enduser.pseudo.id" if record.user_id_pseudonymised else "enduser.id"
        attributes[key] = record.user_id
    for tag, value in record.tags.items():
        attributes[f"gpuledger.tag.{tag}"] = value
    if record.outcome != "ok":
        attributes["error.type"] = record.error_type or record.outcome
    return attributes
