"""Modal: trace ``@app.function`` handlers and ``@app.cls`` classes.

Put gpuledger's decorator *under* Modal's, so Modal registers the traced function and still sees
its name, signature and kind (sync, async, generator) through ``functools.wraps``::

    import modal
    from gpuledger.instrumentation.modal import traced_cls, traced_function

    app = modal.App("llm")


    @app.function(gpu="H100")
    @traced_function  # each call is one invocation
    def embed(text: str) -> list[float]: ...


    @app.cls(gpu="H100")
    @modal.concurrent(max_inputs=8)
    @traced_cls  # @modal.enter methods are init phases, @modal.method calls invocations
    class Model:
        @modal.enter()
        def load_model(self) -> None: ...

        @modal.method()
        async def generate(self, prompt: str) -> str: ...

In a Modal container each invocation's id is Modal's input id (``modal.current_input_id()``);
elsewhere (``.local()``) it is generated. The platform (``modal``), app name, task id and region
come from Modal's environment, as for any handler. Inputs that overlap in one container
(``@modal.concurrent``) share its billed GPU time: each instant is split among those running.

Nothing here imports ``modal`` at import time: the decorators look it up in ``sys.modules``,
where the application's own ``import modal`` put it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, overload

from gpuledger import _handler
from gpuledger._handler import traced_handler, traced_init
from gpuledger._invocation import new_invocation_id

__all__ = ["traced_cls", "traced_function"]

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)

# Modal's flags on the objects its method decorators leave in a class body
# (modal._partial_function._PartialFunctionFlags).
_ENTER_FLAGS: Final = ("ENTER_PRE_SNAPSHOT", "ENTER_POST_SNAPSHOT")
_CALLABLE_FLAG: Final = "CALLABLE_INTERFACE"


def _modal_input_id(*args: object, **kwargs: object) -> str:
    """Modal's id of the input being served, else an id in gpuledger's own format."""
    modal = sys.modules.get("modal")
    current_input_id = getattr(modal, "current_input_id", None)
    input_id = current_input_id() if current_input_id is not None else None
    if input_id:
        return str(input_id)
    # Outside a container (.local(), tests) there is no input id: the agent's default format.
    return new_invocation_id()


def _check_order(target: object, decorator: str, modal_decorator: str) -> None:
    """Raise a TypeError with the fix when ``target`` is already one of Modal's objects."""
    kind = type(target)
    if kind.__module__.split(".")[0] == "modal":
        raise TypeError(
            f"@{decorator} got a Modal {kind.__name__} ({target!r}): it must go under "
            f"@{modal_decorator}, so Modal registers the traced function. Write "
            f"@{modal_decorator} first, then @{decorator} on the line below it."
        )


@overload
def traced_function(function: F, /) -> F: ...


@overload
def traced_function(
    *,
    name: str | None = None,
    user: Callable[..., object] | None = None,
    tags: Callable[..., Mapping[str, object]] | None = None,
    tenant: Callable[..., object] | None = None,
) -> Callable[[F], F]: ...


def traced_function(
    function: Any = None,
    /,
    *,
    name: str | None = None,
    user: Callable[..., object] | None = None,
    tags: Callable[..., Mapping[str, object]] | None = None,
    tenant: Callable[..., object] | None = None,
) -> Any:
    """``@gpuledger.traced_handler`` for a Modal function or method, with Modal's input id.

    Goes under ``@app.function(...)`` or ``@modal.method()``. ``name`` (default: the qualified
    name), ``user``, ``tenant`` and ``tags`` are as for ``traced_handler``. Results, yielded
    items and exceptions pass through unchanged; a call whose tenant or user is over an
    enforced budget raises :class:`gpuledger.BudgetExceeded` without running, which Modal
    raises again in the caller of ``.remote()``, as it does any exception of the function.
    """

    def decorate(target: Any) -> Any:
        _check_order(target, "traced_function", "app.function() or @modal.method()")
        return traced_handler(
            name=name, user=user, tenant=tenant, tags=tags, invocation_id=_modal_input_id
        )(target)

    if function is None:
        return decorate
    return decorate(function)


@overload
def traced_cls(cls: C, /) -> C: ...


@overload
def traced_cls(
    *,
    user: Callable[..., object] | None = None,
    tags: Callable[..., Mapping[str, object]] | None = None,
) -> Callable[[C], C]: ...


def traced_cls(
    cls: Any = None,
    /,
    *,
    user: Callable[..., object] | None = None,
    tags: Callable[..., Mapping[str, object]] | None = None,
) -> Any:
    """Trace a Modal class: goes under ``@app.cls(...)`` (and ``@modal.concurrent``).

    Each ``@modal.enter()`` method becomes an init phase named after the method (reported in
    the cold start of the container's first input); each ``@modal.method()`` (and
    ``@modal.batched``) call becomes an invocation named ``Class.method`` (as Modal names it),
    given ``user`` and ``tags`` (callables of the method's arguments, ``self`` first) as
    ``traced_handler`` is.
    Methods already traced (``@traced_function``, ``@gpuledger.traced_handler``) are left as
    they are, so applying it twice changes nothing. Methods defined in a base class are not
    changed: decorate that class too. Web endpoints and ``@modal.exit`` are not traced.
    """

    def decorate(target: Any) -> Any:
        _check_order(target, "traced_cls", "app.cls()")
        if not isinstance(target, type):
            raise TypeError(f"@traced_cls decorates a class, got {target!r}")
        for attribute, value in vars(target).items():
            partial = _partial_function(value)
            if partial is None or _is_traced(partial.raw_f):
                continue
            flags = partial.flags
            if flags & _flag(_CALLABLE_FLAG):
                partial.raw_f = traced_function(
                    name=f"{target.__name__}.{attribute}", user=user, tags=tags
                )(partial.raw_f)
            elif any(flags & _flag(flag) for flag in _ENTER_FLAGS):
                partial.raw_f = traced_init(name=attribute)(partial.raw_f)
        return target

    if cls is None:
        return decorate
    return decorate(cls)


def _partial_function(value: object) -> Any:
    """Modal's own object behind a ``@modal.method``/``@modal.enter`` class attribute, or None.

    The class body holds Modal's public wrapper; the function it registers is ``raw_f`` on the
    object behind it, which Modal reads when ``@app.cls`` runs (and in the container).
    """
    partial_module = sys.modules.get("modal.partial_function")
    wrapper_type = getattr(partial_module, "PartialFunction", None)
    if wrapper_type is None or not isinstance(value, wrapper_type):
        return None
    try:
        from modal._utils.async_utils import synchronizer  # noqa: PLC0415

        partial: Any = synchronizer._translate_in(value)  # type: ignore[no-untyped-call]
        partial.raw_f  # noqa: B018  (fails here, at decoration, if Modal's internals moved)
        partial.flags  # noqa: B018
    except (ImportError, AttributeError) as error:
        raise TypeError(
            "@traced_cls cannot read this version of modal's method decorators "
            f"({error}); decorate each method instead: @modal.enter() over "
            "@gpuledger.traced_init, @modal.method() over @traced_function"
        ) from error
    return partial


def _flag(name: str) -> int:
    from modal._partial_function import _PartialFunctionFlags  # noqa: PLC0415

    return int(getattr(_PartialFunctionFlags, name))


def _is_traced(function: object) -> bool:
    """Whether ``function`` is, or wraps, a gpuledger handler or init wrapper."""
    seen = 0
    while function is not None and seen < 100:
        code = getattr(function, "__code__", None)
        if code is not None and code.co_filename == _handler.__file__:
            return True
        function = getattr(function, "__wrapped__", None)
        seen += 1
    return False
