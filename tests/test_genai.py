"""The GenAI view of a model server: streaming handlers' time to first item and per item, the
conventions' inference attributes and model-server metrics, tenant and model known on entry,
and the deploy version on every record."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import gpuledger
from gpuledger import _config
from gpuledger.testing import capture_telemetry

from .conftest import FakeClock, Telemetry

PREFILL_S = 0.5
"""The fake model's time to its first token."""
PER_TOKEN_S = 0.02


def _points(telemetry: Telemetry, name: str) -> list[Any]:
    return telemetry.metric_points(name)


def test_a_streaming_handler_records_time_to_first_item_and_per_item(
    telemetry: Telemetry,
) -> None:
    clock = telemetry.clock

    @gpuledger.traced_handler(model=lambda job: job["input"]["model"], operation="chat")
    def generate(job: dict[str, Any]) -> Iterator[str]:
        clock.advance(PREFILL_S)
        for index in range(5):
            if index:
                clock.advance(PER_TOKEN_S)
            gpuledger.record_tokens(output=1)
            yield f"t{index}"

    job = {"id": "j-1", "input": {"model": "llama-3.1-8b", "prompt": "never recorded"}}
    assert list(generate(job)) == ["t0", "t1", "t2", "t3", "t4"]
    (row,) = telemetry.rows()
    assert row["first_item_s"] == pytest.approx(PREFILL_S)
    assert row["items"] == 5
    assert row["duration_s"] == pytest.approx(PREFILL_S + 4 * PER_TOKEN_S)
    assert row["model"] == "llama-3.1-8b"
    assert row["operation"] == "chat"
    assert row["output_tokens"] == 5
    assert "never recorded" not in str(row)  # payloads are not recorded

    (span,) = [span for span in telemetry.spans() if span.name.endswith("generate")]
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "llama-3.1-8b"
    assert attributes["gen_ai.usage.output_tokens"] == 5
    assert attributes["gpuledger.stream.first_item"] == pytest.approx(PREFILL_S)
    assert attributes["gpuledger.stream.items"] == 5

    (first_token,) = _points(telemetry, "gen_ai.server.time_to_first_token")
    assert first_token.sum == pytest.approx(PREFILL_S)
    assert first_token.attributes["gen_ai.operation.name"] == "chat"
    assert first_token.attributes["gen_ai.request.model"] == "llama-3.1-8b"
    (per_token,) = _points(telemetry, "gen_ai.server.time_per_output_token")
    assert per_token.sum == pytest.approx(PER_TOKEN_S)
    (duration,) = _points(telemetry, "gen_ai.server.request.duration")
    assert duration.count == 1
    assert "error.type" not in duration.attributes
    (first_item,) = _points(telemetry, "gpuledger.stream.time_to_first_item")
    assert first_item.sum == pytest.approx(PREFILL_S)
    (per_item,) = _points(telemetry, "gpuledger.stream.time_per_item")
    assert per_item.sum == pytest.approx(PER_TOKEN_S)
    (tokens,) = _points(telemetry, "gpuledger.tokens")
    assert tokens.value == 5
    assert tokens.attributes["gen_ai.token.type"] == "output"


def test_an_async_streaming_handler_records_time_to_first_item(telemetry: Telemetry) -> None:
    clock = telemetry.clock

    @gpuledger.traced_handler
    async def stream(n: int) -> AsyncIterator[int]:
        clock.advance(0.25)
        for index in range(n):
            yield index
            clock.advance(0.5)

    async def consume() -> list[int]:
        return [item async for item in stream(3)]

    assert asyncio.run(consume()) == [0, 1, 2]
    (row,) = telemetry.rows()
    assert row["first_item_s"] == pytest.approx(0.25)
    assert row["items"] == 3
    assert row["operation"] is None  # no model, no tokens: not a GenAI handler
    assert _points(telemetry, "gen_ai.server.request.duration") == []
    (per_item,) = _points(telemetry, "gpuledger.stream.time_per_item")
    assert per_item.sum == pytest.approx((1.75 - 0.25) / 2)


def test_a_stream_that_yields_nothing_has_no_first_item(telemetry: Telemetry) -> None:
    @gpuledger.traced_handler
    def empty() -> Iterator[int]:
        yield from ()

    assert list(empty()) == []
    (row,) = telemetry.rows()
    assert row["items"] == 0
    assert row["first_item_s"] is None


def test_a_returning_handler_has_no_stream_fields_and_tokens_make_it_genai(
    telemetry: Telemetry,
) -> None:
    @gpuledger.traced_handler
    def plain(job: dict[str, Any]) -> str:
        return "ok"

    @gpuledger.traced_handler
    def completes(job: dict[str, Any]) -> str:
        gpuledger.record_tokens(input=12, output=30)
        raise RuntimeError("out of memory")

    plain({"id": "a", "input": {}})
    with pytest.raises(RuntimeError):
        completes({"id": "b", "input": {}})
    plain_row, genai_row = telemetry.rows()
    assert plain_row["items"] is None and plain_row["first_item_s"] is None
    assert plain_row["operation"] is None and plain_row["model"] is None
    assert genai_row["operation"] == "generate_content"  # the conventions' general value
    (duration,) = _points(telemetry, "gen_ai.server.request.duration")
    assert duration.attributes["error.type"] == "RuntimeError"
    assert "gen_ai.request.model" not in duration.attributes
    by_type = {
        p.attributes["gen_ai.token.type"]: p.value for p in _points(telemetry, "gpuledger.tokens")
    }
    assert by_type == {"input": 12, "output": 30}
    assert _points(telemetry, "gen_ai.server.time_to_first_token") == []


def test_tenant_is_known_on_entry_from_the_option_or_a_tags_key(telemetry: Telemetry) -> None:
    seen: list[str | None] = []

    @gpuledger.traced_handler(tenant=lambda job: job["input"]["org"])
    def by_option(job: dict[str, Any]) -> None:
        invocation = gpuledger.current_invocation()
        seen.append(None if invocation is None else invocation.tenant)

    @gpuledger.traced_handler(tags=lambda job: {"tenant": job["input"]["org"], "tier": "pro"})
    def by_tags(job: dict[str, Any]) -> None:
        invocation = gpuledger.current_invocation()
        seen.append(None if invocation is None else invocation.tenant)

    by_option({"id": "1", "input": {"org": "acme"}})
    by_tags({"id": "2", "input": {"org": "globex"}})
    assert seen == ["acme", "globex"]
    first, second = telemetry.rows()
    assert first["tenant"] == "acme"
    assert second["tenant"] == "globex"
    assert json.loads(second["tags"]) == {"tier": "pro"}  # the tenant is not a tag too


def test_options_that_are_not_callables_or_names_are_refused() -> None:
    with pytest.raises(TypeError, match=r"tenant=\.\.\."):
        gpuledger.traced_handler(tenant="acme")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"model=\.\.\."):
        gpuledger.traced_handler(model="")
    with pytest.raises(TypeError, match=r"operation=\.\.\."):
        gpuledger.traced_handler(operation=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("environ", "settings", "expected"),
    [
        ({}, {"service_version": "v42"}, "v42"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "team=ml,service.version=2026.12%2B3"}, {}, "2026.12+3"),
        ({"MODAL_TASK_ID": "ta-1", "MODAL_IMAGE_ID": "im-abc"}, {"platform": "modal"}, "im-abc"),
        ({}, {}, None),
    ],
)
def test_the_deploy_version_is_on_every_record_and_the_resource(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
    settings: dict[str, Any],
    expected: str | None,
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = {"platform": "runpod", "gpu": "H100", **settings}
    with capture_telemetry(tmp_path / "ledger.db", clock=FakeClock(), **settings) as capture:

        @gpuledger.traced_handler
        def handler(job: dict[str, Any]) -> str:
            return "ok"

        handler({"id": "v", "input": {}})
        (row,) = capture.rows()
        assert row["service_version"] == expected
        (span,) = [span for span in capture.spans() if span.name.endswith("handler")]
        assert dict(span.attributes or {}).get("service.version") is None  # a resource attribute
        agent = _config.get_agent()
        assert agent is not None
        assert agent.resource_attributes().get("service.version") == expected
