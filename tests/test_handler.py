"""@traced_handler: every handler kind, results and errors untouched, ids, users, tags, tokens."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanKind

import gpuledger
from gpuledger import _guard

from .conftest import Telemetry

pytestmark = pytest.mark.usefixtures("telemetry")


def test_sync_result_is_the_same_object(telemetry: Telemetry) -> None:
    """A sync handler's return value passes through as the very same object."""
    sentinel = {"output": [1, 2, 3]}

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> dict[str, Any]:
        return sentinel

    assert handler({"id": "j", "input": {}}) is sentinel
    assert [row["outcome"] for row in telemetry.rows()] == ["ok"]


def test_exception_passes_through_unchanged(telemetry: Telemetry) -> None:
    """The handler's own exception reaches the caller, with its traceback, and is recorded."""
    failure = ValueError("bad prompt")

    @gpuledger.traced_handler
    def handler() -> None:
        raise failure

    with pytest.raises(ValueError) as caught:
        handler()
    assert caught.value is failure
    assert caught.traceback[-1].name == "handler"
    (row,) = telemetry.rows()
    assert (row["outcome"], row["error_type"]) == ("error", "ValueError")
    (span,) = telemetry.spans("test_exception_passes_through_unchanged.<locals>.handler")
    assert span.status.status_code.name == "ERROR"
    assert span.attributes["error.type"] == "ValueError"
    assert [event.name for event in span.events] == ["exception"]


def test_async_handler(telemetry: Telemetry) -> None:
    """An async handler stays a coroutine function and its result passes through."""

    @gpuledger.traced_handler
    async def handler(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    assert inspect.iscoroutinefunction(handler)
    assert asyncio.run(handler(21)) == 42
    assert len(telemetry.rows()) == 1


def test_async_handler_cancelled_is_recorded_as_cancelled(telemetry: Telemetry) -> None:
    """A cancelled async handler re-raises CancelledError and is recorded as cancelled."""
    started = asyncio.Event

    @gpuledger.traced_handler
    async def handler(ready: asyncio.Event) -> None:
        ready.set()
        await asyncio.sleep(3600)

    async def main() -> None:
        ready = started()
        task = asyncio.create_task(handler(ready))
        await ready.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert [row["outcome"] for row in telemetry.rows()] == ["cancelled"]


def test_generator_handler_streams_items_and_ends_when_exhausted(telemetry: Telemetry) -> None:
    """A generator handler yields the same items; the invocation spans the whole stream."""

    @gpuledger.traced_handler
    def handler(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            telemetry.clock.advance(1.0)
            yield {"token": i}
        return "done"

    assert inspect.isgeneratorfunction(handler)
    stream = handler(3)
    assert telemetry.rows() == []  # nothing ran yet
    items = list(stream)
    assert items == [{"token": 0}, {"token": 1}, {"token": 2}]
    (row,) = telemetry.rows()
    assert row["duration_s"] == pytest.approx(3.0)
    assert row["outcome"] == "ok"


def test_generator_return_value_and_send(telemetry: Telemetry) -> None:
    """send() values reach the wrapped generator and its return value reaches yield-from."""

    @gpuledger.traced_handler
    def echo():  # type: ignore[no-untyped-def]
        received = []
        value = yield "ready"
        while value is not None:
            received.append(value)
            value = yield f"got {value}"
        return received

    def outer():  # type: ignore[no-untyped-def]
        return (yield from echo())

    stream = outer()
    assert next(stream) == "ready"
    assert stream.send("a") == "got a"
    with pytest.raises(StopIteration) as stop:
        stream.send(None)
    assert stop.value.value == ["a"]


def test_generator_closed_early_is_cancelled(telemetry: Telemetry) -> None:
    """Closing a stream before it is exhausted ends the invocation as cancelled."""
    closed = []

    @gpuledger.traced_handler
    def handler():  # type: ignore[no-untyped-def]
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    stream = handler()
    assert next(stream) == 1
    stream.close()
    assert closed == [True]
    assert [row["outcome"] for row in telemetry.rows()] == ["cancelled"]


def test_generator_error_and_thrown_exception(telemetry: Telemetry) -> None:
    """An exception thrown into the stream reaches the handler, which may handle it."""

    @gpuledger.traced_handler
    def handler():  # type: ignore[no-untyped-def]
        try:
            yield 1
        except KeyError:
            yield "recovered"
        raise RuntimeError("boom")

    stream = handler()
    assert next(stream) == 1
    assert stream.throw(KeyError("x")) == "recovered"
    with pytest.raises(RuntimeError, match="boom"):
        next(stream)
    (row,) = telemetry.rows()
    assert (row["outcome"], row["error_type"]) == ("error", "RuntimeError")


def test_generator_does_not_leak_the_invocation_between_items(telemetry: Telemetry) -> None:
    """Between yields the consumer is outside the invocation; inside, the handler sees it."""
    seen_inside = []

    @gpuledger.traced_handler
    def handler():  # type: ignore[no-untyped-def]
        for i in range(2):
            seen_inside.append(gpuledger.current_invocation() is not None)
            yield i

    for _ in handler():
        assert gpuledger.current_invocation() is None
    assert seen_inside == [True, True]


def test_async_generator_handler(telemetry: Telemetry) -> None:
    """An async generator handler streams its items and records one invocation."""

    @gpuledger.traced_handler
    async def handler(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            assert gpuledger.current_invocation() is not None
            yield i

    async def consume() -> list[int]:
        items = []
        async for item in handler(3):
            assert gpuledger.current_invocation() is None
            items.append(item)
        return items

    assert inspect.isasyncgenfunction(handler)
    assert asyncio.run(consume()) == [0, 1, 2]
    assert [row["outcome"] for row in telemetry.rows()] == ["ok"]


def test_async_generator_error(telemetry: Telemetry) -> None:
    """An async generator that raises mid-stream re-raises and is recorded as an error."""

    @gpuledger.traced_handler
    async def handler():  # type: ignore[no-untyped-def]
        yield 1
        raise LookupError("gone")

    async def consume() -> None:
        async for _ in handler():
            pass

    with pytest.raises(LookupError):
        asyncio.run(consume())
    assert [row["error_type"] for row in telemetry.rows()] == ["LookupError"]


def test_methods_static_and_class_methods(telemetry: Telemetry) -> None:
    """Instance, static and class methods work; a RunPod job after self still gives the id."""

    class Worker:
        factor = 3

        @gpuledger.traced_handler
        def predict(self, job: dict[str, Any]) -> int:
            return self.factor * job["input"]["x"]

        @gpuledger.traced_handler
        @staticmethod
        def ping() -> str:
            return "pong"

        @classmethod
        @gpuledger.traced_handler
        def kind(cls) -> str:
            return cls.__name__

    worker = Worker()
    assert worker.predict({"id": "job-7", "input": {"x": 2}}) == 6
    assert Worker.ping() == "pong"
    assert Worker.kind() == "Worker"
    rows = telemetry.rows()
    assert rows[0]["invocation_id"] == "job-7"
    assert len(rows) == 3


def test_signature_and_metadata_are_kept() -> None:
    """functools.wraps keeps name, docstring, annotations and the signature platforms read."""

    def predict(prompt: str, max_tokens: int = 50) -> str:
        """Generate."""
        return prompt

    wrapped = gpuledger.traced_handler(predict)
    assert wrapped.__name__ == "predict"
    assert wrapped.__doc__ == "Generate."
    assert inspect.signature(wrapped) == inspect.signature(predict)
    assert list(inspect.signature(wrapped).parameters) == ["prompt", "max_tokens"]


def test_invocation_ids(telemetry: Telemetry) -> None:
    """RunPod job ids are used unasked; an invocation_id callable wins; otherwise ids are unique."""

    @gpuledger.traced_handler
    def runpod_style(job: dict[str, Any]) -> None:
        return None

    @gpuledger.traced_handler(invocation_id=lambda request: request["request_id"])
    def explicit(request: dict[str, Any]) -> None:
        return None

    @gpuledger.traced_handler
    def plain(x: int) -> str:
        invocation = gpuledger.current_invocation()
        assert invocation is not None
        return invocation.invocation_id

    runpod_style({"id": "abc-123", "input": {"prompt": "hi"}})
    explicit({"request_id": "req-9"})
    generated = {plain(1), plain(2)}
    ids = [row["invocation_id"] for row in telemetry.rows()]
    assert ids[:2] == ["abc-123", "req-9"]
    assert set(ids[2:]) == generated
    assert len(generated) == 2


def test_user_and_tags_callables_and_tag_inside(telemetry: Telemetry) -> None:
    """user=/tags= callables and gpuledger.tag() inside the handler all land on the record."""

    @gpuledger.traced_handler(
        user=lambda job: job["input"]["user"], tags=lambda job: {"model": "llama"}
    )
    def handler(job: dict[str, Any]) -> None:
        gpuledger.tag(tenant="acme", source="api", priority=2)
        gpuledger.record_tokens(input=12)
        gpuledger.record_tokens(output=50)
        gpuledger.record_tokens(output=7)

    handler({"id": "j1", "input": {"user": "alice"}})
    (row,) = telemetry.rows()
    assert (row["user_id"], row["tenant"]) == ("alice", "acme")
    assert row["tags"] == '{"model":"llama","priority":"2","source":"api"}' or (
        __import__("json").loads(row["tags"])
        == {"model": "llama", "source": "api", "priority": "2"}
    )
    assert (row["input_tokens"], row["output_tokens"]) == (12, 57)
    (span,) = telemetry.spans("test_user_and_tags_callables_and_tag_inside.<locals>.handler")
    assert span.attributes["enduser.id"] == "alice"
    assert span.attributes["gpuledger.tenant"] == "acme"
    assert span.attributes["gpuledger.tag.model"] == "llama"
    assert span.attributes["gen_ai.usage.input_tokens"] == 12
    assert span.attributes["gen_ai.usage.output_tokens"] == 57


def test_calls_outside_a_handler_do_nothing() -> None:
    """tag/record_tokens outside an invocation are no-ops, and current_invocation() is None."""
    gpuledger.tag(user="x")
    gpuledger.record_tokens(input=1)
    assert gpuledger.current_invocation() is None


def test_record_tokens_rejects_bad_counts(telemetry: Telemetry) -> None:
    """A negative or non-integer token count is a clear ValueError naming the argument."""
    with pytest.raises(ValueError, match=r"record_tokens\(output=-1\)"):
        gpuledger.record_tokens(output=-1)
    with pytest.raises(ValueError, match=r"input='3'"):
        gpuledger.record_tokens(input="3")  # type: ignore[arg-type]


def test_decorator_misuse_is_a_clear_type_error() -> None:
    """Options that are not callables, and decorating a non-callable, fail at decoration time."""
    with pytest.raises(TypeError, match=r"traced_handler\(user=\.\.\.\) takes a callable"):
        gpuledger.traced_handler(user="alice")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="decorates a function"):
        gpuledger.traced_handler(42)  # type: ignore[call-overload]


def test_context_reaches_threads_and_tasks(telemetry: Telemetry) -> None:
    """Work the handler starts in a copied context, an executor or an asyncio task sees it."""
    seen: list[str | None] = []

    def probe() -> None:
        invocation = gpuledger.current_invocation()
        seen.append(invocation.invocation_id if invocation else None)

    @gpuledger.traced_handler(invocation_id=lambda: "threads")
    def handler() -> None:
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(probe,))
        thread.start()
        thread.join()
        with ThreadPoolExecutor(1) as pool:
            pool.submit(contextvars.copy_context().run, probe).result()

    @gpuledger.traced_handler(invocation_id=lambda: "tasks")
    async def async_handler() -> None:
        await asyncio.create_task(asyncio.to_thread(probe))
        await asyncio.gather(asyncio.create_task(_async_probe(probe)))

    handler()
    asyncio.run(async_handler())
    assert seen == ["threads", "threads", "tasks", "tasks"]


async def _async_probe(probe: Any) -> None:
    probe()


def test_failing_user_callable_is_contained(telemetry: Telemetry) -> None:
    """A user= callable that raises never breaks the handler: it runs, the failure is counted."""
    _guard.set_strict(False)

    @gpuledger.traced_handler(user=lambda job: job["missing"])
    def handler(job: dict[str, Any]) -> str:
        return "served"

    assert handler({"id": "j", "input": {}}) == "served"
    assert _guard.error_counts() == {"handler.user": 1}
    (row,) = telemetry.rows()
    assert row["user_id"] is None


def test_broken_exporter_never_reaches_the_handler(telemetry: Telemetry) -> None:
    """A span that cannot be ended (exporter bug) is contained and counted; the result stands."""
    _guard.set_strict(False)
    agent = gpuledger._config.current_agent()
    assert agent is not None

    class Exploding(SpanProcessor):
        """An exporter bug: ending a span raises."""

        def on_end(self, span: ReadableSpan) -> None:
            if span.kind is SpanKind.SERVER:
                raise RuntimeError("exporter down")

    agent.providers.tracer_provider.add_span_processor(Exploding())

    @gpuledger.traced_handler
    def handler() -> int:
        return 7

    assert handler() == 7
    assert handler() == 7
    assert len(telemetry.rows()) == 2  # the ledger still got both (the writer ends spans)
    assert _guard.error_counts() == {"span.end": 2}


def test_unconfigured_handler_configures_itself_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """With no configure() call, the first invocation configures from GPULEDGER_* variables."""
    gpuledger.shutdown()
    ledger = tmp_path / "auto.db"
    monkeypatch.setenv("GPULEDGER_LEDGER", str(ledger))
    monkeypatch.setenv("GPULEDGER_PLATFORM", "modal")
    monkeypatch.setenv("GPULEDGER_GPU", "H100")

    @gpuledger.traced_handler
    def handler() -> str:
        return "ok"

    assert handler() == "ok"
    assert gpuledger.flush(5)
    import sqlite3

    (platform, cost) = (
        sqlite3.connect(ledger).execute("SELECT platform, cost_usd FROM invocations").fetchone()
    )
    assert platform == "modal"
    assert cost is not None


def test_bad_environment_never_breaks_the_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPULEDGER_* value that turns bad after decoration (which checks the environment, see
    test_config_errors.py) leaves the handler running untraced, and is counted."""
    gpuledger.shutdown()
    _guard.set_strict(False)

    @gpuledger.traced_handler
    def handler() -> str:
        return "still served"

    monkeypatch.setenv("GPULEDGER_GPU_COUNT", "two")
    assert handler() == "still served"
    assert _guard.error_counts() == {"configure": 1}


def test_runpod_returned_error_is_an_error(telemetry: Telemetry) -> None:
    """On RunPod a returned {"error": ...} fails the job, so it is recorded as an error."""

    @gpuledger.traced_handler(name="fails")
    def handler(job: dict[str, Any]) -> dict[str, str]:
        return {"error": "prompt too long"}

    result = handler({"id": "j", "input": {}})
    assert result == {"error": "prompt too long"}
    (row,) = telemetry.rows()
    assert (row["outcome"], row["error_type"]) == ("error", "returned_error")
    (span,) = telemetry.spans("fails")
    assert span.status.status_code.name == "ERROR"
