"""What ``@traced_handler`` was told about a handler, and applying it to an invocation on
entry (its id, user, tenant, tags, model and operation), before any budget is checked."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gpuledger import _guard
from gpuledger._invocation import Invocation

__all__ = ["HandlerSpec", "apply_options", "otel_service_version"]


class HandlerSpec:
    """What ``@traced_handler`` was told about one handler."""

    __slots__ = (
        "has_options",
        "invocation_id",
        "model",
        "name",
        "operation",
        "tags",
        "tenant",
        "user",
    )

    def __init__(
        self,
        name: str,
        user: Callable[..., object] | None = None,
        tags: Callable[..., Mapping[str, object]] | None = None,
        invocation_id: Callable[..., object] | None = None,
        *,
        tenant: Callable[..., object] | None = None,
        model: str | Callable[..., object] | None = None,
        operation: str | None = None,
    ) -> None:
        self.name = name
        self.user = user
        self.tags = tags
        self.invocation_id = invocation_id
        self.tenant = tenant
        self.model = model
        self.operation = operation
        # Decided once, so the request path skips the options with one test.
        self.has_options = any(
            option is not None for option in (user, tags, invocation_id, tenant, model, operation)
        )


def apply_options(
    invocation: Invocation, spec: HandlerSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Apply what ``spec`` says to ``invocation``, from the handler's ``args``/``kwargs``, on
    entry: its id, user, tenant, tags, model and operation. A callable that raises is
    contained and counted; the handler runs on."""
    if spec.invocation_id is not None:
        try:
            invocation._invocation_id = str(spec.invocation_id(*args, **kwargs))
        except Exception as error:
            _guard.record_failure("handler.invocation_id", error)
    else:
        for candidate in args[:2]:
            if type(candidate) is dict and "input" in candidate and "id" in candidate:
                invocation._invocation_id = str(candidate["id"])
                break
    if spec.user is not None:
        try:
            user = spec.user(*args, **kwargs)
            if user is not None:
                invocation.user_id = str(user)
        except Exception as error:
            _guard.record_failure("handler.user", error)
    if spec.tags is not None:
        try:
            tags = spec.tags(*args, **kwargs)
            if tags:
                invocation.tags = {str(key): str(value) for key, value in tags.items()}
                tagged = invocation.tags.pop("tenant", None)
                if tagged is not None:
                    invocation.tenant = tagged
        except Exception as error:
            _guard.record_failure("handler.tags", error)
    if spec.tenant is not None:
        try:
            tenant = spec.tenant(*args, **kwargs)
            if tenant is not None:
                invocation.tenant = str(tenant)
        except Exception as error:
            _guard.record_failure("handler.tenant", error)
    model: object = spec.model
    if callable(model):
        try:
            model = model(*args, **kwargs)
        except Exception as error:
            _guard.record_failure("handler.model", error)
            model = None
    if model is not None:
        invocation.model = str(model)
    if spec.operation is not None:
        invocation.operation = spec.operation


def otel_service_version(env: Mapping[str, str]) -> str | None:
    """``service.version`` from ``OTEL_RESOURCE_ATTRIBUTES`` (``key=value`` pairs, comma
    separated, values percent-encoded, as the OpenTelemetry specification writes them)."""
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = pair.partition("=")
        if key.strip() == "service.version" and value.strip():
            from urllib.parse import unquote  # noqa: PLC0415

            return unquote(value.strip())
    return None
