"""Outgoing calls made while an invocation runs: how long it waited on the network, per target.

A call is ``(start_ns, end_ns, target, operation, outcome, bytes)``, appended to the running
invocation by :func:`external_call` (anything, by hand) or by the span processor of
``gpuledger.instrumentation`` (every OpenTelemetry CLIENT span: the official instrumentations of
httpx, requests, urllib3, aiohttp, botocore, redis, psycopg, or any other). When the invocation
ends, ``_external.summarise`` turns its calls into the count, the summed call time, and the
external wait.

This module is imported on every ``import gpuledger``: it holds no OpenTelemetry import.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from gpuledger._config import current_agent, now_ns
from gpuledger._external import OK, mark_measured, record_call
from gpuledger._invocation import Invocation, _current

__all__ = ["external_call", "instrument", "uninstrument"]


class external_call:
    """Time a call the instrumentations do not see, as part of the current invocation.

    ``with gpuledger.external_call("s3.get", target="s3://bucket"):`` or ``async with``. The
    block's exception passes through unchanged and is the call's outcome (its type name).
    ``set_outcome()`` and ``set_size()`` refine it from inside. With tracing on, a CLIENT span
    is emitted too, with what the target says about the server under the semantic conventions'
    names (``server.address``, ``server.port``, ``db.system.name``; see
    ``gpuledger.exporters.external_call_attributes``), and ``error.type`` and status ERROR when
    the block raised. Outside an invocation it only times nothing: it does nothing.
    """

    __slots__ = ("_invocation", "_outcome", "_size", "_span", "_start_ns", "operation", "target")

    def __init__(self, operation: str, *, target: str | None = None) -> None:
        if not isinstance(operation, str) or not operation:
            raise ValueError(
                f"gpuledger.external_call(operation={operation!r}): the operation is a "
                "non-empty string such as 's3.get' or 'vectordb.query'"
            )
        self.operation = operation
        self.target = target or operation.split(".", 1)[0]
        self._invocation: Invocation | None = None
        self._outcome: str | None = None
        self._size: int | None = None
        self._span: Any = None
        self._start_ns = 0

    def set_outcome(self, outcome: object) -> None:
        """Say how the call ended (a status code, ``"not_found"``, ...) when it did not raise."""
        self._outcome = str(outcome)

    def set_size(self, size: int) -> None:
        """Bytes sent and received, where known."""
        self._size = int(size)

    def __enter__(self) -> external_call:
        invocation = _current.get()
        if invocation is None:
            return self
        mark_measured()
        self._invocation = invocation
        self._start_ns = now_ns()
        span = invocation.span
        if span is not None:
            try:
                self._span = _start_client_span(self.operation, self.target, self._start_ns)
            except Exception as error:  # the call is timed all the same
                from gpuledger import _guard  # noqa: PLC0415

                _guard.record_failure("external_call.span", error)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        invocation = self._invocation
        if invocation is None:
            return
        end_ns = now_ns()
        outcome = self._outcome or (OK if exc_type is None else exc_type.__qualname__)
        record_call(
            invocation, self._start_ns, end_ns, self.target, self.operation, outcome, self._size
        )
        span = self._span
        if span is not None:
            try:
                if exc is not None:
                    _mark_failed(span, exc)
                span.end(end_time=end_ns)
            except Exception as error:
                from gpuledger import _guard  # noqa: PLC0415

                _guard.record_failure("external_call.span", error)

    async def __aenter__(self) -> external_call:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)


def _start_client_span(operation: str, target: str, start_ns: int) -> Any:
    agent = current_agent()
    if agent is None or agent.tracer is None:
        return None
    from opentelemetry import trace  # noqa: PLC0415  (tracing is on: already loaded)

    from gpuledger.exporters import external_call_attributes  # noqa: PLC0415

    return agent.tracer.start_span(
        operation,
        kind=trace.SpanKind.CLIENT,
        start_time=start_ns,
        # Marked as counted here already: the span processor must not count it again.
        attributes=external_call_attributes(target),
    )


def _mark_failed(span: Any, error: BaseException) -> None:
    """The semantic conventions' failed call: ``error.type`` (the exception's class) and status
    ERROR."""
    from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE  # noqa: PLC0415
    from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

    span.set_attribute(ERROR_TYPE, type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR))


def instrument(*libraries: str, threads: bool = True) -> dict[str, str]:
    """Count outgoing calls made during invocations, per target: switch on the official
    OpenTelemetry instrumentation of ``libraries`` (``httpx``, ``requests``, ``urllib3``,
    ``aiohttp``, ``botocore``, ``redis``, ``psycopg``; all that are installed when none is named;
    needs ``pip install 'gpuledger[calls]'``), and (``threads``) carry the invocation into threads
    and executors the handler starts. Returns each library's state: ``on`` or why not. Idempotent;
    undone by :func:`uninstrument`. Any other OpenTelemetry CLIENT span is counted as well.
    """
    from gpuledger.instrumentation import instrument as switch_on  # noqa: PLC0415

    return switch_on(*libraries, threads=threads)


def uninstrument(*libraries: str) -> None:
    """Switch off what :func:`instrument` switched on (the named libraries, or all of it)."""
    from gpuledger.instrumentation import uninstrument as switch_off  # noqa: PLC0415

    switch_off(*libraries)
