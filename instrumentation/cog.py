"""Replicate / Cog: ``@traced_predictor`` on a Cog predictor class.

::

    from cog import BasePredictor, Input
    from gpuledger.instrumentation.cog import traced_predictor


    @traced_predictor
    class Predictor(BasePredictor):
        def setup(self) -> None:  # the init phase "setup" of the cold start
            self.model = load_model()

        def predict(self, prompt: str = Input(description="...")) -> str:  # one invocation
            return self.model.generate(prompt)

``setup()`` runs as the init phase ``setup`` (``gpuledger.phase``), reported in the first
prediction's ``init_phases``; each ``predict()`` (or ``run()``, Cog 0.17+'s ``BaseRunner``) is an
invocation (``gpuledger.traced_handler``). The method keeps its
signature, annotations and kind (sync, async, generator, async generator): Cog builds its
OpenAPI schema from them, and streams what a generator yields.

Cog runs the predictor in a worker subprocess of its HTTP server. gpuledger is configured there,
at the start of ``setup()``, from the environment the worker inherits (``GPULEDGER_*``,
``OTEL_*``), with two defaults of its own where the environment says nothing:
``platform=replicate`` and ``flush_policy=adaptive`` (each sparse prediction's row is written
before the prediction returns, since Replicate may stop an idle container at any time; under
load rows are written in batches). Call ``gpuledger.configure()`` yourself before to choose
otherwise.

Cog itself is never imported here: the class is inspected by duck typing, so this module
imports (and its tests run) without Cog installed.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from gpuledger import _config as agent_module
from gpuledger._handler import phase, traced_handler

__all__ = ["SETUP_PHASE", "traced_predictor"]

SETUP_PHASE = "setup"
"""The name of the init phase ``setup()`` runs as."""

_PREDICT_METHODS = ("run", "predict")
"""Cog's prediction methods, the newer first: a class defines exactly one."""
_TRACED_MARK = "__gpuledger_traced_predictor__"

C = TypeVar("C", bound=type)


@overload
def traced_predictor(cls: C, /) -> C: ...


@overload
def traced_predictor(
    *,
    name: str | None = None,
    user: Callable[..., object] | None = None,
    tags: Callable[..., Mapping[str, object]] | None = None,
    invocation_id: Callable[..., object] | None = None,
    setup_phase: str = SETUP_PHASE,
    tenant: Callable[..., object] | None = None,
) -> Callable[[C], C]: ...


def traced_predictor(
    cls: Any = None,
    /,
    *,
    name: str | None = None,
    user: Callable[..., object] | None = None,
    tags: Callable[..., Mapping[str, object]] | None = None,
    invocation_id: Callable[..., object] | None = None,
    setup_phase: str = SETUP_PHASE,
    tenant: Callable[..., object] | None = None,
) -> Any:
    """Trace a Cog predictor class: ``setup()`` as an init phase, each prediction an invocation.

    Use bare (``@traced_predictor``) or with options: ``name``, the span and ledger name
    (default ``Predictor.predict``: the class and method names); ``user``, ``tags`` and
    ``invocation_id``, callables given the method's own arguments (``self`` and the inputs, as
    keywords) that return the user id, a mapping of tags, and the request id (default: one
    gpuledger makes); ``setup_phase``, the init phase's name. The class is changed in place and
    returned; decorating it twice does nothing more. ``tenant`` (a callable like ``user``)
    names the tenant on entry: a prediction of a tenant over an enforced budget raises
    :class:`gpuledger.BudgetExceeded` before ``predict`` runs, and Cog answers it as a failed
    prediction with that message.
    """
    if not isinstance(setup_phase, str) or not setup_phase.strip():
        raise ValueError(
            f"traced_predictor(setup_phase=...) must be a non-empty str, got {setup_phase!r}"
        )

    def decorate(target: Any) -> Any:
        if not isinstance(target, type):
            raise TypeError(
                f"@traced_predictor decorates a Cog predictor class, got {target!r}; "
                "for a function, use @gpuledger.traced_handler"
            )
        if target.__dict__.get(_TRACED_MARK):
            return target
        defined = [method for method in _PREDICT_METHODS if _user_method(target, method)]
        if len(defined) != 1:
            raise TypeError(
                f"@traced_predictor: {target.__qualname__} must define exactly one of run() "
                f"and predict(), it defines {' and '.join(defined) or 'neither'}"
            )
        (method_name,) = defined
        predict = _user_method(target, method_name)
        handler = traced_handler(
            name=name or f"{target.__name__}.{method_name}",
            user=user,
            tenant=tenant,
            tags=tags,
            invocation_id=invocation_id,
        )(_with_input_defaults(predict))
        _keep_signature(handler, predict)
        setattr(target, method_name, handler)
        setup = _user_method(target, "setup")
        predictor_class: Any = target  # a user's class: any attribute may be set on it
        predictor_class.setup = (
            _configure_only if setup is None else _traced_setup(setup, setup_phase)
        )
        setattr(target, _TRACED_MARK, True)
        return target

    if cls is None:
        return decorate
    return decorate(cls)


def _user_method(cls: type, method_name: str) -> Any:
    """``cls``'s ``method_name`` as the user defined it, or None if only Cog's base class has it."""
    for owner in cls.__mro__:
        if owner is object or owner.__module__.partition(".")[0] == "cog":
            # Cog's BaseRunner/BasePredictor: their run/predict/setup are placeholders.
            break
        value = owner.__dict__.get(method_name)
        if value is not None and callable(value):
            return value
    return None


def _keep_signature(wrapper: Any, wrapped: Any) -> None:
    # functools.wraps keeps __wrapped__, which inspect.signature follows but
    # inspect.getfullargspec (Cog's validation) does not: an explicit __signature__ serves both.
    with contextlib.suppress(TypeError, ValueError):  # no signature: __wrapped__ stays
        wrapper.__signature__ = inspect.signature(wrapped)
    # Cog's server reads the defaults (Input(default=...)) off the function it calls. The
    # wrapper takes only *args and **kwargs, so Python itself never uses them there.
    wrapper.__defaults__ = getattr(wrapped, "__defaults__", None)
    wrapper.__kwdefaults__ = getattr(wrapped, "__kwdefaults__", None)


def _configure_for_cog() -> None:
    """Configure gpuledger in Cog's worker process from its environment, with Cog's defaults
    where it says nothing: platform ``replicate``, flush policy ``adaptive``. As on any first
    invocation, a bad environment leaves predictions running, untraced (counted, logged)."""
    agent_module.ensure_agent(platform="replicate", flush_policy="adaptive")


def _configure_only(self: Any) -> None:
    """The ``setup()`` of a predictor that has none: configure gpuledger, nothing else."""
    _configure_for_cog()


def _traced_setup(setup: Any, phase_name: str) -> Any:
    # Cog unwraps decorators by their closure, which must hold exactly one function: setup.
    if inspect.iscoroutinefunction(setup):

        async def async_setup_wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            _configure_for_cog()
            with phase(phase_name):
                return await setup(self, *args, **kwargs)

        wrapper: Any = functools.wraps(setup)(async_setup_wrapper)
    else:

        def setup_wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            _configure_for_cog()
            with phase(phase_name):
                return setup(self, *args, **kwargs)

        wrapper = functools.wraps(setup)(setup_wrapper)
    _keep_signature(wrapper, setup)
    return wrapper


def _with_input_defaults(predict: Any) -> Any:
    """``predict``, given ``Input(default=...)``'s value for each input the call leaves out.

    Cog fills them in from its schema; a server started without one (no ``cog build``: the
    local run) passes only the inputs sent, and reads the rest off the function it calls, which
    is the wrapper. Returns ``predict`` itself when no parameter defaults to an ``Input()``.
    """
    try:
        signature = inspect.signature(predict)
    except (TypeError, ValueError):
        return predict
    input_defaults = {
        name: parameter.default.default
        for name, parameter in signature.parameters.items()
        if type(parameter.default).__name__ == "FieldInfo" and hasattr(parameter.default, "default")
    }
    if not input_defaults:
        return predict

    complete = _InputDefaults(signature, input_defaults)

    # One layer of the same kind as predict (traced_handler reads it), holding one function.
    if inspect.isasyncgenfunction(predict):

        async def async_generator_layer(*args: Any, **kwargs: Any) -> Any:
            async for item in predict(*args, **complete(args, kwargs)):
                yield item

        layer: Any = async_generator_layer
    elif inspect.iscoroutinefunction(predict):

        async def async_layer(*args: Any, **kwargs: Any) -> Any:
            return await predict(*args, **complete(args, kwargs))

        layer = async_layer
    elif inspect.isgeneratorfunction(predict):

        def generator_layer(*args: Any, **kwargs: Any) -> Any:
            return (yield from predict(*args, **complete(args, kwargs)))

        layer = generator_layer
    else:

        def layer(*args: Any, **kwargs: Any) -> Any:
            return predict(*args, **complete(args, kwargs))

    return functools.wraps(predict)(layer)


class _InputDefaults:
    """Adds the left-out inputs' defaults to a call's keywords (not a function: Cog unwraps
    decorators by the functions in their closure, and the layer must hold only ``predict``)."""

    __slots__ = ("defaults", "signature")

    def __init__(self, signature: inspect.Signature, defaults: dict[str, Any]) -> None:
        self.signature = signature
        self.defaults = defaults

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        given = self.signature.bind_partial(*args, **kwargs).arguments
        missing = {name: value for name, value in self.defaults.items() if name not in given}
        return {**missing, **kwargs} if missing else kwargs
