"""Outgoing calls seen through OpenTelemetry: a span processor, and switching on the official
client instrumentations.

:class:`CallAggregator` is a span processor: every CLIENT span that *starts* while an invocation
is current (the invocation travels in a ``contextvars`` variable, so threads given a copy of the
context, asyncio tasks and executors see it) is remembered, and when it *ends* its interval,
target, operation and outcome are added to that invocation. It reads the spans' semantic
convention attributes (``server.address``, ``db.system``, ``rpc.service``, ``aws.s3.bucket``,
``http.response.status_code``, ``error.type``, ...), old and new names alike, so any
instrumentation that follows the conventions is counted with no glue.

:func:`instrument` switches on the official ``opentelemetry-instrumentation-*`` packages for the
libraries that are installed (extra ``gpuledger[calls]``), on a tracer provider that has the
aggregator: the application's or gpuledger's SDK provider, or, when gpuledger runs ledger-only and
the application has none, a private one that exports nothing. Each instrumentation is switched on
once (calling again changes nothing) and :func:`uninstrument` switches it off again. It also
makes ``threading.Thread`` and ``ThreadPoolExecutor.submit`` run their work in a copy of the
starting context (what ``asyncio`` already does for tasks), so calls made from threads the
handler starts belong to its invocation.
"""

from __future__ import annotations

import contextvars
import importlib
import importlib.util
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.semconv._incubating.attributes.aws_attributes import AWS_S3_BUCKET
from opentelemetry.semconv._incubating.attributes.db_attributes import DB_OPERATION, DB_SYSTEM
from opentelemetry.semconv._incubating.attributes.http_attributes import (
    HTTP_METHOD,
    HTTP_REQUEST_BODY_SIZE,
    HTTP_REQUEST_CONTENT_LENGTH,
    HTTP_RESPONSE_BODY_SIZE,
    HTTP_RESPONSE_CONTENT_LENGTH,
    HTTP_STATUS_CODE,
    HTTP_URL,
)
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_DESTINATION_NAME,
    MESSAGING_MESSAGE_BODY_SIZE,
    MESSAGING_SYSTEM,
)
from opentelemetry.semconv._incubating.attributes.net_attributes import (
    NET_PEER_NAME,
    NET_PEER_PORT,
)
from opentelemetry.semconv._incubating.attributes.rpc_attributes import (
    RPC_METHOD,
    RPC_SERVICE,
    RPC_SYSTEM,
    RPC_SYSTEM_NAME,
)
from opentelemetry.semconv.attributes.db_attributes import DB_OPERATION_NAME, DB_SYSTEM_NAME
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.exception_attributes import EXCEPTION_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_RESPONSE_STATUS_CODE,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_FULL

from gpuledger import _guard
from gpuledger._config import get_agent
from gpuledger._external import OK, mark_measured, record_call
from gpuledger._invocation import CURRENT
from gpuledger._logging import get_logger

__all__ = ["LIBRARIES", "CallAggregator", "instrument", "target_of", "uninstrument"]


@dataclass(frozen=True, slots=True)
class _Library:
    module: str
    """The library's import name (is it installed?)."""
    instrumentor: str
    """``module:Class`` of its official OpenTelemetry instrumentor."""
    package: str
    """The PyPI package of that instrumentor."""


LIBRARIES: Final[Mapping[str, _Library]] = {
    "httpx": _Library(
        "httpx",
        "opentelemetry.instrumentation.httpx:HTTPXClientInstrumentor",
        "opentelemetry-instrumentation-httpx",
    ),
    "requests": _Library(
        "requests",
        "opentelemetry.instrumentation.requests:RequestsInstrumentor",
        "opentelemetry-instrumentation-requests",
    ),
    "urllib3": _Library(
        "urllib3",
        "opentelemetry.instrumentation.urllib3:URLLib3Instrumentor",
        "opentelemetry-instrumentation-urllib3",
    ),
    "aiohttp": _Library(
        "aiohttp",
        "opentelemetry.instrumentation.aiohttp_client:AioHttpClientInstrumentor",
        "opentelemetry-instrumentation-aiohttp-client",
    ),
    "botocore": _Library(
        "botocore",
        "opentelemetry.instrumentation.botocore:BotocoreInstrumentor",
        "opentelemetry-instrumentation-botocore",
    ),
    "redis": _Library(
        "redis",
        "opentelemetry.instrumentation.redis:RedisInstrumentor",
        "opentelemetry-instrumentation-redis",
    ),
    "psycopg": _Library(
        "psycopg",
        "opentelemetry.instrumentation.psycopg:PsycopgInstrumentor",
        "opentelemetry-instrumentation-psycopg",
    ),
}
"""What ``instrument()`` knows, by the name it is asked for."""

_HTTP_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_AWS_API: Final = "aws-api"
"""The ``rpc.system`` of AWS SDK calls (botocore's instrumentation)."""
_MANUAL: Final = "gpuledger.external.manual"
"""Set by ``gpuledger.exporters.external_call_attributes`` on the spans ``external_call`` makes
(``gpuledger.exporters`` is a room this one does not import)."""


# --- the span processor ------------------------------------------------------------------------


class CallAggregator(SpanProcessor):
    """Adds every CLIENT span that starts inside an invocation to that invocation's calls.

    ``on_start`` runs in the thread that starts the span, where the invocation is current;
    ``on_end`` wherever the span ends. (This module is imported by ``instrument()`` only.)
    """

    def __init__(self) -> None:
        self._open: dict[int, Any] = {}
        self._client: Any = None

    def _is_client(self, span: Any) -> bool:
        client = self._client
        if client is None:
            from opentelemetry.trace import SpanKind  # noqa: PLC0415

            client = self._client = SpanKind.CLIENT
        return span.kind is client

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        try:
            if not self._is_client(span):
                return
            invocation = CURRENT.get()
            if invocation is None:
                return
            parent = span.parent
            if parent is not None and parent.span_id in self._open:
                return  # inside another call (botocore over urllib3, say): the same wait
            self._open[span.context.span_id] = invocation
        except Exception as error:
            _guard.record_failure("calls.span_start", error)

    def on_end(self, span: Any) -> None:
        try:
            invocation = self._open.pop(span.context.span_id, None)
            if invocation is None:
                return
            # One copy: the span's attributes are a mapping proxy whose every lookup costs
            # a microsecond; the conventions below look up a dozen names.
            attributes = dict(span.attributes or ())
            if attributes.get(_MANUAL):
                return  # external_call() counted it already
            start, end = span.start_time, span.end_time
            if start is None or end is None:
                return
            record_call(
                invocation,
                start,
                end,
                target_of(attributes, span.name),
                operation_of(attributes, span.name),
                outcome_of(attributes, span.status, span.events),
                size_of(attributes),
            )
        except Exception as error:
            _guard.record_failure("calls.span_end", error)

    def shutdown(self) -> None:
        self._open.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def target_of(attributes: Mapping[str, Any], name: str = "") -> str:
    """Who was called: ``postgresql://host:port``, ``redis://host:port``, ``s3://bucket``,
    ``aws:dynamodb``, ``host[:port]`` for HTTP, else the span's name."""
    host = attributes.get(SERVER_ADDRESS) or attributes.get(NET_PEER_NAME)
    port = attributes.get(SERVER_PORT) or attributes.get(NET_PEER_PORT)
    system = attributes.get(DB_SYSTEM_NAME) or attributes.get(DB_SYSTEM)
    if system:
        return f"{system}://{host}:{port}" if host and port else f"{system}://{host or ''}"
    messaging = attributes.get(MESSAGING_SYSTEM)
    if messaging:
        destination = attributes.get(MESSAGING_DESTINATION_NAME) or host or ""
        return f"{messaging}://{destination}"
    if _is_aws(attributes):
        service = str(attributes.get(RPC_SERVICE, "aws")).lower()
        bucket = attributes.get(AWS_S3_BUCKET)
        return f"s3://{bucket}" if service == "s3" and bucket else f"aws:{service}"
    url = attributes.get(URL_FULL) or attributes.get(HTTP_URL)
    if not host and isinstance(url, str):
        from urllib.parse import urlsplit  # noqa: PLC0415

        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        if port == _HTTP_DEFAULT_PORTS.get(parts.scheme):
            port = None
    if host:
        return f"{host}:{port}" if port and port not in (80, 443) else str(host)
    return name or "unknown"


def _is_aws(attributes: Mapping[str, Any]) -> bool:
    """An AWS SDK call: ``rpc.system``, or ``rpc.system.name``, which replaces it."""
    return _AWS_API in (attributes.get(RPC_SYSTEM), attributes.get(RPC_SYSTEM_NAME))


def operation_of(attributes: Mapping[str, Any], name: str) -> str:
    """What was asked: ``GET``, ``SELECT``, ``S3.GetObject``, ``SET``; else the span's name."""
    if _is_aws(attributes) and attributes.get(RPC_METHOD):
        return f"{attributes.get(RPC_SERVICE, 'aws')}.{attributes[RPC_METHOD]}"
    for key in (HTTP_REQUEST_METHOD, HTTP_METHOD, DB_OPERATION_NAME, DB_OPERATION):
        value = attributes.get(key)
        if value:
            return str(value)
    return name


def outcome_of(attributes: Mapping[str, Any], status: Any, events: Sequence[Any] = ()) -> str:
    """``ok``, the HTTP status code, or the error's type (``ConnectionError``, ``500`` ...):
    from ``error.type``, else the span's recorded exception, else its status."""
    code = attributes.get(HTTP_RESPONSE_STATUS_CODE) or attributes.get(HTTP_STATUS_CODE)
    error = attributes.get(ERROR_TYPE)
    if code is not None and (error is None or str(error) == str(code)):
        return str(code)
    if error and error != "_OTHER":
        return str(error).rsplit(".", 1)[-1]
    for event in events:
        if event.name == "exception" and event.attributes:
            kind = event.attributes.get(EXCEPTION_TYPE)
            if kind:
                return str(kind).rsplit(".", 1)[-1]
    status_code = getattr(status, "status_code", None)
    if status_code is not None and getattr(status_code, "name", "") == "ERROR":
        description = str(getattr(status, "description", None) or "error")
        return description.split(":", 1)[0]  # "ConnectionError: HTTPConnectionPool(...)"
    return OK


def size_of(attributes: Mapping[str, Any]) -> int | None:
    """Bytes sent plus received where the span says (HTTP body sizes, message sizes)."""
    total = 0
    seen = False
    for key in (
        HTTP_REQUEST_BODY_SIZE,
        HTTP_RESPONSE_BODY_SIZE,
        HTTP_REQUEST_CONTENT_LENGTH,
        HTTP_RESPONSE_CONTENT_LENGTH,
        MESSAGING_MESSAGE_BODY_SIZE,
    ):
        value = attributes.get(key)
        if isinstance(value, int):
            total += value
            seen = True
    return total if seen else None


# --- switching instrumentation on and off ------------------------------------------------------

_lock = threading.RLock()
_aggregator = CallAggregator()
_attached: weakref.WeakSet[Any] = weakref.WeakSet()
_provider: Any = None
_on: dict[str, tuple[Any, Any]] = {}
"""library -> (its instrumentor, the tracer provider it was switched on with)."""
_threads_patched = False


def _tracer_provider() -> Any:
    """An SDK tracer provider with the aggregator: the application's global one, gpuledger's,
    or a private one that exports nothing."""
    global _provider
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415

    agent = get_agent()
    candidates = [
        getattr(getattr(agent, "providers", None), "tracer_provider", None),
        trace.get_tracer_provider(),
    ]
    provider = next((each for each in candidates if isinstance(each, TracerProvider)), None)
    if provider is None:
        if _provider is None:
            _provider = TracerProvider()
        provider = _provider
    if provider not in _attached:
        provider.add_span_processor(_aggregator)
        _attached.add(provider)
    return provider


def instrument(*libraries: str, threads: bool = True) -> dict[str, str]:
    """Count outgoing calls: switch on the official instrumentations of ``libraries`` (all of
    :data:`LIBRARIES` that are installed when none is named), and context propagation into
    threads and executors (``threads``). Returns each library's state: ``on``, or why not.

    Safe to call again (nothing is done twice) and from any thread; never raises for a library
    that is not installed, only for a name it does not know.
    """
    unknown = [name for name in libraries if name not in LIBRARIES]
    if unknown:
        raise ValueError(
            f"gpuledger.instrument({unknown[0]!r}): no such library; known: "
            f"{', '.join(LIBRARIES)} (for anything else use gpuledger.external_call)"
        )
    names = list(libraries) or list(LIBRARIES)
    states: dict[str, str] = {}
    with _lock:
        provider = _tracer_provider()
        mark_measured()
        if threads:
            _patch_threads()
        for name in names:
            states[name] = _switch_on(name, provider, asked=bool(libraries))
    return states


def _switch_on(name: str, provider: Any, *, asked: bool) -> str:
    current = _on.get(name)
    if current is not None:
        if current[1] is provider:
            return "on"
        _switch_off(name)  # gpuledger was configured anew, with another provider: follow it
    library = LIBRARIES[name]
    if importlib.util.find_spec(library.module) is None:
        return "not installed"
    module_name, class_name = library.instrumentor.split(":")
    try:
        instrumentor_class = getattr(importlib.import_module(module_name), class_name)
    except ImportError:
        hint = f"pip install 'gpuledger[calls]' (or {library.package})"
        if asked:
            get_logger().warning(
                "gpuledger.instrument: the instrumentation package is missing",
                library=name,
                install=hint,
            )
        return f"instrumentation missing: {hint}"
    instrumentor = instrumentor_class()
    try:
        instrumentor.instrument(tracer_provider=provider)
    except Exception as error:  # a version the instrumentor does not support, say
        _guard.record_failure(f"calls.instrument.{name}", error)
        return f"failed: {type(error).__name__}: {error}"
    _on[name] = (instrumentor, provider)
    return "on"


def _switch_off(name: str) -> None:
    entry = _on.pop(name, None)
    if entry is not None:
        try:
            entry[0].uninstrument()
        except Exception as error:
            _guard.record_failure(f"calls.uninstrument.{name}", error)


def uninstrument(*libraries: str) -> None:
    """Switch the named instrumentations (all that ``instrument()`` switched on) and the thread
    context propagation off again."""
    with _lock:
        for name in list(libraries) or list(_on):
            _switch_off(name)
        if not libraries and _threads_patched:
            _unpatch_threads()


def instrumented() -> list[str]:
    """The libraries switched on now."""
    return sorted(_on)


# --- context into threads and executors --------------------------------------------------------

_originals: dict[str, Callable[..., Any]] = {}


def _patch_threads() -> None:
    """``Thread.start`` records the starting context, ``Thread.run`` runs in a copy of it;
    ``ThreadPoolExecutor.submit`` runs the function in a copy of the submitting context."""
    global _threads_patched
    if _threads_patched:
        return
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    original_start = threading.Thread.start
    original_run = threading.Thread.run
    original_submit = ThreadPoolExecutor.submit

    def start(self: threading.Thread) -> None:
        self._gpuledger_context = contextvars.copy_context()  # type: ignore[attr-defined]
        original_start(self)

    def run(self: threading.Thread) -> None:
        context = getattr(self, "_gpuledger_context", None)
        if context is None:
            original_run(self)
        else:
            context.run(original_run, self)

    def submit(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return original_submit(self, contextvars.copy_context().run, fn, *args, **kwargs)

    _originals.update(start=original_start, run=original_run, submit=original_submit)
    threading.Thread.start = start  # type: ignore[method-assign]
    threading.Thread.run = run  # type: ignore[method-assign]
    ThreadPoolExecutor.submit = submit  # type: ignore[method-assign]
    _threads_patched = True


def _unpatch_threads() -> None:
    global _threads_patched
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    threading.Thread.start = _originals["start"]  # type: ignore[method-assign]
    threading.Thread.run = _originals["run"]  # type: ignore[method-assign]
    ThreadPoolExecutor.submit = _originals["submit"]  # type: ignore[method-assign]
    _threads_patched = False
