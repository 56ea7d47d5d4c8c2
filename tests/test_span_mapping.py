"""One mapping from an invocation to its span: the worker's span and the sidecar's are the same.

The worker ends its SERVER span from the record its writer builds; the sidecar rebuilds the span
from the record it receives (``exporters._records.record_to_span``). Before, the two were
written twice and differed (``gpuledger.record_id``/``gpuledger.outcome`` only on the sidecar's
spans, ``gpuledger.gpu.count``/``.model`` only when NVML measured).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any

import opentelemetry.semconv
import pytest
from opentelemetry.semconv.schemas import Schemas

import gpuledger
from gpuledger._record import InvocationRecord
from gpuledger.exporters import _names as names_module
from gpuledger.exporters._records import (
    record_resource,
    record_resource_attributes,
    record_to_span,
    span_attributes,
)
from gpuledger.ledger import open_ledger

from .conftest import Telemetry


def _one_of_each(telemetry: Telemetry) -> None:
    @gpuledger.traced_handler(name="generate", user=lambda job: job["input"]["user"])
    def handler(job: dict[str, Any]) -> dict[str, str]:
        gpuledger.tag(tenant="acme", plan="pro")
        gpuledger.record_tokens(input=12, output=34)
        telemetry.clock.advance(0.25)
        if job["input"].get("fail"):
            raise ValueError("bad prompt")
        return {"output": "ok"}

    handler({"id": "job-ok", "input": {"user": "alice"}})
    with pytest.raises(ValueError, match="bad prompt"):
        handler({"id": "job-failed", "input": {"user": "bob", "fail": True}})


def test_worker_and_sidecar_spans_carry_the_same_attributes(telemetry: Telemetry) -> None:
    """For the same invocations, the in-process span and the span the sidecar would export from
    the record have the same name, kind, times, status and attribute set, value for value."""
    _one_of_each(telemetry)
    agent = gpuledger._config.current_agent()
    assert agent is not None
    spans = {span.attributes["faas.invocation_id"]: span for span in telemetry.spans("generate")}
    with open_ledger(str(telemetry.ledger_path), create=False) as ledger:
        records = {record.invocation_id: record for record in ledger.read()}
    assert set(spans) == set(records) == {"job-ok", "job-failed"}
    for invocation_id, record in records.items():
        worker = spans[invocation_id]
        sidecar = record_to_span(record, record_resource(record))
        assert dict(worker.attributes or {}) == dict(sidecar.attributes or {}), invocation_id
        assert (worker.name, worker.kind) == (sidecar.name, sidecar.kind)
        assert (worker.start_time, worker.end_time) == (sidecar.start_time, sidecar.end_time)
        assert worker.status.status_code == sidecar.status.status_code
        # The resource gpuledger gives providers it builds is the one the sidecar rebuilds (here
        # the test's own provider is used, as an application's would be, with its resource).
        assert agent.resource_attributes() == record_resource_attributes(record)
    failed = spans["job-failed"]
    assert failed.attributes["error.type"] == "ValueError"
    assert [event.name for event in failed.events] == ["exception"]  # the worker's extra


# --- the names: the conventions' where they define one, ours otherwise, no unit in a name -------

SEMCONV_ROOT = Path(opentelemetry.semconv.__file__).parent
UNIT_SUFFIX = re.compile(r"(_s|_ms|_seconds|_j|_joules|_bytes|_usd|\.usd|\.s)$")


def _semconv_names() -> dict[str, bool]:
    """Every attribute and metric name the installed semantic conventions define -> whether it
    is deprecated (read from the generated modules: each constant, then its docstring)."""
    names: dict[str, bool] = {}
    for path in SEMCONV_ROOT.rglob("*.py"):
        if not {"attributes", "metrics"} & set(path.parts):
            continue
        body = ast.parse(path.read_text(encoding="utf-8")).body
        for node, after in zip(body, [*body[1:], None], strict=False):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Constant)):
                continue
            if not isinstance(node.value.value, str):
                continue
            doc = after.value.value if isinstance(after, ast.Expr) else None
            # "Deprecated: Moved to ..." (gen_ai.*, since 1.44): the name lives on, in the GenAI
            # conventions' own repository; it is not replaced.
            deprecated = (
                isinstance(doc, str)
                and doc.strip().startswith("Deprecated")
                and not doc.strip().startswith("Deprecated: Moved to")
            )
            # The incubating copy of a stable name says "Deprecated in favor of stable ...":
            # a name is deprecated when every definition of it says so.
            names[node.value.value] = names.get(node.value.value, True) and deprecated
    return names


def _ours() -> set[str]:
    return {
        value
        for key, value in vars(names_module).items()
        if key.startswith("GPULEDGER_") and isinstance(value, str)
    }


def _full_record() -> InvocationRecord:
    """A record with every field the mapping reads set, so that every attribute appears."""
    return InvocationRecord(
        record_id="r-1",
        invocation_id="job-1",
        handler="generate",
        service_name="svc",
        platform="runpod",
        endpoint="ep",
        worker_id="w-1",
        region="EU-RO-1",
        gpu_model="H100",
        gpu_count=2,
        start_ns=1,
        end_ns=2_000_000_001,
        duration_s=2.0,
        outcome="error",
        error_type="ValueError",
        cold=True,
        init_duration_s=5.0,
        idle_gap_s=0.0,
        billed_gpu_seconds=4.0,
        busy_gpu_seconds=3.0,
        busy_source="process",
        energy_j=700.0,
        energy_active_j=600.0,
        energy_idle_j=100.0,
        energy_source="counter",
        peak_gpu_memory_bytes=2**30,
        gpu_uuids="GPU-a,GPU-b",
        gpu_unmeasured={"peak_gpu_memory_bytes": "no sampler"},
        external_calls=3,
        external_call_seconds=0.5,
        external_wait_seconds=0.4,
        external_wait_cost_usd=0.0001,
        external_targets={
            "redis://cache:6379": {"calls": 1, "call_s": 0.1, "wait_s": 0.1, "errors": 1},
            "api.openai.com": {"calls": 2, "call_s": 0.4, "wait_s": 0.3, "errors": 0},
        },
        user_id="alice",
        tenant="acme",
        tags={"model": "llama"},
        input_tokens=10,
        output_tokens=20,
        cost_usd=0.26,
        cost_execution_usd=0.25,
        cost_gpu_usd=0.009,
        cost_coldstart_usd=0.001,
        pricing_version="seed-2026-03",
    )


def test_every_name_is_the_conventions_or_ours_and_none_carries_a_unit() -> None:
    """Span and resource attributes of the mapping: a name outside ``gpuledger.*`` is one the
    installed semantic conventions define, and not a deprecated one; a ``gpuledger.*`` name is
    one of ``_names``; and no name says its unit (the unit is the definition's)."""
    record = _full_record()
    emitted = set(span_attributes(record)) | set(record_resource_attributes(record))
    conventions = _semconv_names()
    ours = _ours()
    for name in sorted(emitted):
        assert not UNIT_SUFFIX.search(name), name
        if name.startswith("gpuledger."):
            template = f"{names_module.GPULEDGER_TAG_TEMPLATE}."
            assert name in ours or name.startswith(template), name
        else:
            assert name in conventions, f"{name} is not a semantic-convention name"
            assert not conventions[name], f"{name} is deprecated in the conventions"
    assert all(not UNIT_SUFFIX.search(name) for name in ours)
    # The version the names follow is the installed conventions' newest schema.
    newest = max(Schemas, key=lambda schema: tuple(int(p) for p in schema.name[1:].split("_")))
    assert newest.value == names_module.SCHEMA_URL
    assert names_module.SCHEMA_URL.endswith(f"/{names_module.SEMCONV_VERSION}")


def test_external_targets_are_data_parallel_to_the_target_names() -> None:
    """Per target, the span carries arrays in the order of the sorted target names; the costs
    only when every target's wait was priced."""
    record = _full_record()
    attributes = span_attributes(record)
    assert attributes["gpuledger.external.targets"] == ("api.openai.com", "redis://cache:6379")
    assert attributes["gpuledger.external.target_calls"] == (2, 1)
    assert attributes["gpuledger.external.target_errors"] == (0, 1)
    assert attributes["gpuledger.external.target_waits"] == (0.3, 0.1)
    assert attributes["gpuledger.external.errors"] == 1
    assert "gpuledger.external.target_wait_costs" not in attributes  # unpriced here
    priced = dataclasses.replace(
        record,
        external_targets={
            "b": {"calls": 1, "wait_s": 0.2, "wait_usd": 0.002},
            "a": {"calls": 4, "wait_s": 0.1, "wait_usd": 0.001},
        },
    )
    attributes = span_attributes(priced)
    assert attributes["gpuledger.external.targets"] == ("a", "b")
    assert attributes["gpuledger.external.target_wait_costs"] == (0.001, 0.002)
    assert attributes["gpuledger.gpu.uuids"] == ("GPU-a", "GPU-b")
    assert attributes["gpuledger.gpu.unmeasured"] == ("peak_gpu_memory_bytes",)
    assert attributes["gpuledger.gpu.unmeasured_reasons"] == ("no sampler",)


def test_worker_and_sidecar_spans_carry_the_same_scope_and_schema(telemetry: Telemetry) -> None:
    """The worker's span and the sidecar's come from the same instrumentation scope, whose schema
    URL is that of the conventions the names follow."""
    _one_of_each(telemetry)
    worker = telemetry.spans("generate")[0]
    with open_ledger(str(telemetry.ledger_path), create=False) as ledger:
        record = next(iter(ledger.read()))
    sidecar = record_to_span(record, record_resource(record))
    assert sidecar.instrumentation_scope is not None
    assert sidecar.instrumentation_scope.schema_url == names_module.SCHEMA_URL
    assert worker.instrumentation_scope == sidecar.instrumentation_scope


def test_the_init_span_is_named_by_the_mapping(telemetry: Telemetry) -> None:
    """A cold start's ``init`` span carries the mapping's names: ``gpuledger.init.duration`` in
    seconds, as the invocation's span does."""
    _one_of_each(telemetry)
    (init,) = telemetry.spans("init")
    cold = next(span for span in telemetry.spans("generate") if span.attributes["faas.coldstart"])
    attributes = dict(init.attributes or {})
    assert set(attributes) == {"gpuledger.init.duration", "gpuledger.init.process_start_source"}
    assert attributes["gpuledger.init.duration"] == cold.attributes["gpuledger.init.duration"]
