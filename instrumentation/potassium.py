"""Banana's Potassium framework: its init as the ``init`` phase, each request an invocation.

Call :func:`instrument` on the app, before or after its decorators::

    from potassium import Potassium
    from gpuledger.instrumentation import potassium as gpuledger_potassium

    app = Potassium("my-model")
    gpuledger_potassium.instrument(app)

    @app.init
    def init(): ...  # recorded as the init phase "init", attributed to the first request

    @app.handler("/")
    def handler(context, request): ...  # one invocation per request, id = request.id

What is recorded, and from where (Potassium 0.5's own code):

- ``@app.init`` runs once in the worker before the server listens; it is timed as
  ``gpuledger.phase("init")``. gpuledger is configured there (platform ``banana`` unless
  ``GPULEDGER_PLATFORM`` or ``configure()`` says otherwise), so NVML opens during init, not
  on the first request.
- ``@app.handler(route)`` and ``@app.background(route)``: each call is an invocation. Its id is
  ``request.id``, which Potassium takes from Banana's ``X-Banana-Request-Id`` header (a uuid4 of
  its own when there is none). The payload (``request.json``) is never read.
- Outcome: the handler raised (Potassium answers 500 with the traceback): ``error`` with the
  exception's type; it returned a ``Response`` with a 5xx status: ``error``, ``http_<status>``.
- A streamed ``Response`` (its body a generator) ends the invocation when the body is exhausted
  (or closed), not when the handler returns.

Nothing here imports ``potassium``: the app is duck-typed, so gpuledger installs without it.
:func:`uninstrument` undoes :func:`instrument` (functions already wrapped then pass through).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator, Mapping
from typing import Any, TypeVar

from gpuledger import _config as agent_module
from gpuledger import _guard
from gpuledger._agent import HandlerSpec
from gpuledger._handler import phase

__all__ = ["INIT_PHASE", "PLATFORM", "instrument", "is_instrumented", "uninstrument"]

INIT_PHASE = "init"
"""The name of the init phase ``@app.init`` is recorded as."""
PLATFORM = "banana"
"""The platform priced when neither ``configure()`` nor ``GPULEDGER_PLATFORM`` names one."""

_STATE_ATTRIBUTE = "_gpuledger_state"
_TRACED_MARK = "__gpuledger_potassium__"
_PATCHED = ("init", "handler", "background")

T = TypeVar("T")


class _State:
    """What :func:`instrument` changed on one app, so it can be undone."""

    __slots__ = ("enabled", "originals", "spec_options")

    def __init__(self, spec_options: dict[str, Any]) -> None:
        self.enabled = True
        self.originals: dict[str, Any] = {}
        self.spec_options = spec_options


def instrument(
    app: T,
    *,
    user: Callable[[Any, Any], object] | None = None,
    tags: Callable[[Any, Any], Mapping[str, object]] | None = None,
    tenant: Callable[[Any, Any], object] | None = None,
) -> T:
    """Trace ``app`` (a ``potassium.Potassium``): its init and every handler; returns ``app``.

    ``user``, ``tenant`` and ``tags`` are callables given the handler's ``(context, request)``
    that return the user id, the tenant and a mapping of tags (e.g. from ``request.headers``).
    A request whose tenant or user is over an enforced budget is answered ``429`` with
    ``Retry-After`` and a JSON body, and its handler never runs. Calling it again on an
    instrumented app does nothing. Handlers registered before the call are wrapped too.
    """
    for option_name, option in (("user", user), ("tags", tags), ("tenant", tenant)):
        if option is not None and not callable(option):
            raise TypeError(
                f"instrument({option_name}=...) takes a callable of (context, request), "
                f"got {type(option).__name__}: {option!r}"
            )
    if not all(callable(getattr(app, name, None)) for name in ("init", "handler")):
        raise TypeError(
            f"gpuledger.instrumentation.potassium.instrument() takes a potassium.Potassium app, "
            f"got {type(app).__name__}: {app!r}"
        )
    state: _State | None = getattr(app, _STATE_ATTRIBUTE, None)
    if state is not None and state.enabled:
        return app
    state = _State({"user": user, "tags": tags, "tenant": tenant})
    setattr(app, _STATE_ATTRIBUTE, state)
    # Potassium runs @app.init, where gpuledger configures, off the main thread, where no SIGTERM
    # handler can be set; instrument() runs at import, in the main thread.
    agent_module.install_exit_hooks()

    for name in _PATCHED:
        original = getattr(app, name, None)
        if callable(original):
            state.originals[name] = original
    original_init = state.originals["init"]

    def init(function: Callable[..., Any]) -> Callable[..., Any]:
        original_init(_traced_init(function, state))
        return function  # as Potassium's own init returns it

    setattr(app, "init", functools.wraps(original_init)(init))  # noqa: B010
    for name in ("handler", "background"):
        if name in state.originals:
            setattr(app, name, _patched_decorator(state.originals[name], state))

    # Registered before instrument(): wrap in place (Potassium 0.5 keeps them in these fields).
    init_function = getattr(app, "_init_func", None)
    if callable(init_function):
        setattr(app, "_init_func", _traced_init(init_function, state))  # noqa: B010
    endpoints = getattr(app, "_endpoints", None)
    if isinstance(endpoints, dict):
        for route, endpoint in endpoints.items():
            function = getattr(endpoint, "func", None)
            if callable(function):
                endpoint.func = _traced_handler(function, str(route), state)
    return app


def uninstrument(app: object) -> None:
    """Undo :func:`instrument`: new decorators are Potassium's own, traced ones pass through."""
    state: _State | None = getattr(app, _STATE_ATTRIBUTE, None)
    if state is None or not state.enabled:
        return
    state.enabled = False
    for name in state.originals:
        # The originals are the class's methods: dropping the instance attribute restores them.
        if name in vars(app):
            delattr(app, name)


def is_instrumented(app: object) -> bool:
    """Whether :func:`instrument` is in effect on ``app``."""
    state: _State | None = getattr(app, _STATE_ATTRIBUTE, None)
    return state is not None and state.enabled


def _patched_decorator(original: Callable[..., Any], state: _State) -> Callable[..., Any]:
    """``app.handler`` / ``app.background`` that put the traced function under Potassium's."""

    @functools.wraps(original)
    def decorator_factory(route: str = "/") -> Callable[..., Any]:
        register = original(route)

        def register_traced(function: Callable[..., Any]) -> Any:
            return register(_traced_handler(function, route, state))

        return register_traced

    return decorator_factory


def _ensure_agent() -> Any:
    """The agent; on first use configured for Banana unless the environment names a platform."""
    return agent_module.ensure_agent(platform=PLATFORM)


def _traced_init(function: Callable[..., Any], state: _State) -> Callable[..., Any]:
    if getattr(function, _TRACED_MARK, False):
        return function

    # Potassium passes the worker number only to an init that takes a parameter; wraps() keeps
    # the signature it inspects.
    @functools.wraps(function)
    def traced_init(*args: Any, **kwargs: Any) -> Any:
        if not state.enabled:
            return function(*args, **kwargs)
        _ensure_agent()
        with phase(INIT_PHASE):
            return function(*args, **kwargs)

    setattr(traced_init, _TRACED_MARK, True)
    return traced_init


def _request_id(context: Any, request: Any) -> object:
    return getattr(request, "id", None)


def _traced_handler(function: Callable[..., Any], route: str, state: _State) -> Callable[..., Any]:
    if getattr(function, _TRACED_MARK, False):
        return function
    spec = HandlerSpec(
        getattr(function, "__qualname__", None) or route,
        state.spec_options["user"],
        state.spec_options["tags"],
        _request_id,
        tenant=state.spec_options.get("tenant"),
    )
    agent_module.worker_state().mark_ready(agent_module.now_ns())

    @functools.wraps(function)
    def traced_handler(context: Any, request: Any) -> Any:
        if not state.enabled:
            return function(context, request)
        agent = _ensure_agent()
        invocation = None if agent is None else agent.enter(spec, (context, request), {})
        if invocation is None:
            return function(context, request)
        if invocation.refused is not None:  # an enforced budget is spent: 429, never run
            agent.exit(invocation, invocation.refused)
            return _refused(invocation.refused)
        try:
            response = function(context, request)
        except BaseException as error:
            agent.exit(invocation, error)
            raise
        body = None
        try:
            status = getattr(response, "status", None)
            if type(status) is int and status >= 500:
                invocation.outcome = "error"
                invocation.error_type = f"http_{status}"
            body = getattr(response, "body", None)
            if inspect.isgenerator(body):
                # The body is sent after the handler returned: the invocation lasts until then.
                agent.deactivate(invocation)
                response.body = _streamed(agent, invocation, body)
                return response
        except Exception as failure:
            _guard.record_failure("potassium.response", failure)
        agent.exit(invocation, None, response)
        return response

    setattr(traced_handler, _TRACED_MARK, True)
    return traced_handler


def _refused(refused: Any) -> Any:
    """Potassium's ``Response`` refusing a request over an enforced budget: 429, Retry-After."""
    import importlib  # noqa: PLC0415

    from gpuledger._refusal import STATUS, refusal_json  # noqa: PLC0415

    response = importlib.import_module("potassium").Response  # the app's own Potassium
    return response(
        status=STATUS,
        json=refusal_json(refused),
        headers={"Retry-After": str(refused.retry_after_s)},
    )


def _streamed(
    agent: Any, invocation: Any, body: Generator[Any, Any, Any]
) -> Generator[Any, Any, Any]:
    """``body``'s chunks, each produced with the invocation current; its end ends the invocation."""
    error: BaseException | None = None
    try:
        while True:
            agent.activate(invocation)
            try:
                chunk = next(body)
            except StopIteration:
                return
            finally:
                agent.deactivate(invocation)
            yield chunk
    except BaseException as raised:
        error = raised
        raise
    finally:
        body.close()
        agent.exit(invocation, error, active=False)
