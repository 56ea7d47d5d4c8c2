"""``@traced_handler``, ``@traced_init`` and ``phase()``: what users put in their code.

The wrapper keeps the handler's kind (sync, async, generator, async generator), so platforms that
inspect it (RunPod checks ``inspect.iscoroutinefunction`` and ``isgeneratorfunction``) see what
they would see unwrapped, and keeps its signature and annotations (``functools.wraps``), which
Cog and FastAPI read. Results, yielded items and exceptions pass through untouched; gpuledger's
own failures are contained and counted, never raised into the handler.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeVar, overload

from gpuledger import _config as agent_module
from gpuledger import _guard
from gpuledger._agent import HandlerSpec
from gpuledger._invocation import Invocation, _current
from gpuledger._worker import Phase

__all__ = ["phase", "traced_handler", "traced_init"]

F = TypeVar("F", bound=Callable[..., Any])

# The innermost phase open inside a request, so nested phases know their parent.
_open_phase: ContextVar[str | None] = ContextVar("gpuledger_open_phase", default=None)


def _agent() -> Any:
    """The configured agent, configuring it from the environment on first use (or None)."""
    return agent_module._agent or agent_module.get_agent()


@overload
def traced_handler(function: F, /) -> F: ...


@overload
def traced_handler(
    *,
    name: str | None = None,
    user: Callable[..., object] | None = None,
    tenant: Callable[..., object] | None = None,
    tags: Callable[..., Mapping[str, object]] | None = None,
    invocation_id: Callable[..., object] | None = None,
    model: str | Callable[..., object] | None = None,
    operation: str | None = None,
) -> Callable[[F], F]: ...


def traced_handler(
    function: Any = None,
    /,
    *,
    name: str | None = None,
    user: Callable[..., object] | None = None,
    tenant: Callable[..., object] | None = None,
    tags: Callable[..., Mapping[str, object]] | None = None,
    invocation_id: Callable[..., object] | None = None,
    model: str | Callable[..., object] | None = None,
    operation: str | None = None,
) -> Any:
    """Trace, price and record every call of a request handler.

    Use bare (``@traced_handler``) or with options: ``name`` (default: the function's qualified
    name); ``user``, ``tenant``, ``tags`` and ``invocation_id``, callables given the handler's
    own arguments that return the user id, the tenant, a mapping of tags (a ``"tenant"`` key
    sets the tenant), and the request id. The user and tenant are known on entry, so an
    enforced budget (``gpuledger.configure(budgets=...)``) refuses the request before the
    handler runs, raising :class:`gpuledger.BudgetExceeded`; ``gpuledger.tag(tenant=...)`` in
    the body attributes the cost but comes too late to refuse. ``model`` (a name, or a callable
    of the arguments) and ``operation`` (``chat``, ``text_completion``, ``embeddings``, ...;
    default ``generate_content`` for a handler that names a model or records tokens) give the
    GenAI attributes. A RunPod-style job (``{"id": ..., "input": {...}}``) gives its ``id``
    without being told. Works on functions and methods, sync or async, generators and async
    generators; a generator's invocation ends when it is exhausted, closed or raises, and
    records the time to its first item and how many it yielded.
    """
    for option_name, option in (
        ("user", user),
        ("tenant", tenant),
        ("tags", tags),
        ("invocation_id", invocation_id),
    ):
        if option is not None and not callable(option):
            raise TypeError(
                f"traced_handler({option_name}=...) takes a callable of the handler's arguments, "
                f"got {type(option).__name__}: {option!r}"
            )
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"traced_handler(name=...) must be a non-empty str, got {name!r}")
    if model is not None and not callable(model) and (not isinstance(model, str) or not model):
        raise TypeError(
            f"traced_handler(model=...) takes a model name or a callable of the handler's "
            f"arguments, got {model!r}"
        )
    if operation is not None and (not isinstance(operation, str) or not operation):
        raise TypeError(f"traced_handler(operation=...) must be a non-empty str, got {operation!r}")

    def decorate(target: Any) -> Any:
        if isinstance(target, staticmethod | classmethod):
            return type(target)(decorate(target.__func__))
        if not callable(target):
            raise TypeError(f"@traced_handler decorates a function or method, got {target!r}")
        spec = HandlerSpec(
            name or getattr(target, "__qualname__", None) or repr(target),
            user,
            tags,
            invocation_id,
            tenant=tenant,
            model=model,
            operation=operation,
        )
        if agent_module._agent is None:
            # Nothing configured yet: the first invocation will configure from the environment,
            # so check it now, at import, where a bad value fails the deploy and not a request.
            agent_module.check_environment()
        agent_module.install_exit_hooks()
        agent_module.worker_state().mark_ready(agent_module.now_ns())
        return _wrap(target, spec)

    if function is None:
        return decorate
    return decorate(function)


def _wrap(function: Any, spec: HandlerSpec) -> Any:
    # Each wrapper holds on to the agent that opened the invocation, so a configure() while
    # it runs cannot split it between two agents. Agent.enter/exit never raise.
    if inspect.isasyncgenfunction(function):

        async def async_generator_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            agent = _agent()
            invocation = None if agent is None else agent.enter(spec, args, kwargs, activate=False)
            if invocation is None:
                async for item in function(*args, **kwargs):
                    yield item
                return
            if invocation.refused is not None:  # an enforced budget is spent: never run it
                agent.exit(invocation, invocation.refused, active=False)
                raise invocation.refused
            generator = function(*args, **kwargs)
            error: BaseException | None = None
            perf_ns = agent.perf_ns
            items = 0
            try:
                sent: Any = None
                thrown: BaseException | None = None
                while True:
                    agent.activate(invocation)
                    try:
                        if thrown is not None:
                            item = await generator.athrow(thrown)
                        else:
                            item = await generator.asend(sent)
                    except StopAsyncIteration:
                        return
                    finally:
                        agent.deactivate(invocation)
                    if not items:
                        invocation.first_item_ns = perf_ns() - invocation.start_perf_ns
                    items += 1
                    thrown = None
                    try:
                        sent = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as caught:  # forward what the caller throws in
                        thrown = caught
            except BaseException as raised:
                error = raised
                raise
            finally:
                await generator.aclose()
                invocation.items = items
                agent.exit(invocation, error, active=False)

        return functools.wraps(function)(async_generator_wrapper)

    if inspect.iscoroutinefunction(function):

        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            agent = _agent()
            invocation = None if agent is None else agent.enter(spec, args, kwargs)
            if invocation is None:
                return await function(*args, **kwargs)
            if invocation.refused is not None:
                agent.exit(invocation, invocation.refused)
                raise invocation.refused
            try:
                result = await function(*args, **kwargs)
            except BaseException as error:
                agent.exit(invocation, error)
                raise
            agent.exit(invocation, None, result)
            return result

        return functools.wraps(function)(async_wrapper)

    if inspect.isgeneratorfunction(function):

        def generator_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            agent = _agent()
            invocation = None if agent is None else agent.enter(spec, args, kwargs, activate=False)
            if invocation is None:
                return (yield from function(*args, **kwargs))
            if invocation.refused is not None:
                agent.exit(invocation, invocation.refused, active=False)
                raise invocation.refused
            generator = function(*args, **kwargs)
            error: BaseException | None = None
            perf_ns = agent.perf_ns
            items = 0
            try:
                sent: Any = None
                thrown: BaseException | None = None
                while True:
                    agent.activate(invocation)
                    try:
                        if thrown is not None:
                            item = generator.throw(thrown)
                        else:
                            item = generator.send(sent)
                    except StopIteration as stop:
                        return stop.value
                    finally:
                        agent.deactivate(invocation)
                    if not items:
                        invocation.first_item_ns = perf_ns() - invocation.start_perf_ns
                    items += 1
                    thrown = None
                    try:
                        sent = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as caught:  # forward what the caller throws in
                        thrown = caught
            except BaseException as raised:
                error = raised
                raise
            finally:
                generator.close()
                invocation.items = items
                agent.exit(invocation, error, active=False)

        return functools.wraps(function)(generator_wrapper)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        agent = agent_module._agent or agent_module.get_agent()
        if agent is None:
            return function(*args, **kwargs)
        invocation = agent.enter(spec, args, kwargs)
        if invocation is None:
            return function(*args, **kwargs)
        if invocation.refused is not None:  # an enforced budget is spent: never run it
            agent.exit(invocation, invocation.refused)
            raise invocation.refused
        try:
            result = function(*args, **kwargs)
        except BaseException as error:
            agent.exit(invocation, error)
            raise
        agent.exit(invocation, None, result)
        return result

    return functools.wraps(function)(wrapper)


class phase:
    """Time a named piece of init work: ``with gpuledger.phase("model_load"):``.

    Outside a request it is part of the worker's init, attributed to the first request (or the
    next one, if it runs later). Inside a request (a model loaded lazily on first use) it makes
    that request cold and is counted in its init. Phases may nest. Exceptions pass through.
    """

    __slots__ = ("_invocation", "_parent_token", "_phase", "_span", "_token", "name")

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"gpuledger.phase(name): a phase needs a non-empty name, got {name!r}")
        self.name = name
        self._phase: Phase | None = None
        self._invocation: Invocation | None = None
        self._span: Any = None
        self._token: Any = None
        self._parent_token: Token[str | None] | None = None

    def __enter__(self) -> phase:
        try:
            now = agent_module.now_ns()
            invocation = _current.get()
            if invocation is None:
                self._phase = agent_module.worker_state().open_phase(self.name, now)
            else:
                self._invocation = invocation
                parent = _open_phase.get()
                self._phase = Phase(self.name, now, parent=parent)
                self._parent_token = _open_phase.set(
                    self.name if parent is None else f"{parent}/{self.name}"
                )
                agent = agent_module._agent
                if agent is not None and agent.tracer is not None:
                    from opentelemetry import context, trace  # noqa: PLC0415

                    self._span = agent.tracer.start_span(
                        self.name, start_time=now, attributes={"gpuledger.phase": self.name}
                    )
                    self._token = context.attach(trace.set_span_in_context(self._span))
        except Exception as error:
            _guard.record_failure("phase.enter", error)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            current = self._phase
            if current is None:
                return
            now = agent_module.now_ns()
            if self._invocation is None:
                agent_module.worker_state().close_phase(current, now)
                return
            current.end_ns = now
            if self._parent_token is not None:
                _open_phase.reset(self._parent_token)
            invocation = self._invocation
            invocation.cold = True
            if invocation.phases is None:
                invocation.phases = []
            invocation.phases.append(current)
            if self._span is not None:
                from opentelemetry import context  # noqa: PLC0415

                context.detach(self._token)
                self._span.end(end_time=now)
        except Exception as error:
            _guard.record_failure("phase.exit", error)

    async def __aenter__(self) -> phase:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)


def traced_init(function: Any = None, /, *, name: str | None = None) -> Any:
    """Record a function's run as an init phase named ``name`` (default: its qualified name).

    ``@gpuledger.traced_init`` on ``load_model()`` is ``with gpuledger.phase("load_model"):``
    around its body; async functions too.
    """

    def decorate(target: Any) -> Any:
        phase_name = name or getattr(target, "__qualname__", None) or repr(target)
        if inspect.iscoroutinefunction(target):

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with phase(phase_name):
                    return await target(*args, **kwargs)

            return functools.wraps(target)(async_wrapper)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with phase(phase_name):
                return target(*args, **kwargs)

        return functools.wraps(target)(wrapper)

    if function is None:
        return decorate
    return decorate(function)
