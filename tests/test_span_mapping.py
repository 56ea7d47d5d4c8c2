"""One mapping from an invocation to its span: the worker's span and the sidecar's are the same.

The worker ends its SERVER span from the record its writer builds; the sidecar rebuilds the span
from the record it receives (``exporters._records.record_to_span``). Before, the two were
written twice and differed (``gpuledger.record_id``/``gpuledger.outcome`` only on the sidecar's
spans, ``gpuledger.gpu.count``/``.model`` only when NVML measured).
"""

from __future__ import annotations

from typing import Any

import pytest

import gpuledger
from gpuledger.exporters._records import (
    record_resource,
    record_resource_attributes,
    record_to_span,
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
