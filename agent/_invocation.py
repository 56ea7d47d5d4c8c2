"""The live invocation: what a handler sees while it runs, and the calls it makes on it.

``Invocation`` is created on the request path, so it is small and slotted; the full
:class:`~gpuledger.InvocationRecord` is built from it off the request path, by the background
writer. The current invocation travels in a ``contextvars.ContextVar``, so threads started with
``contextvars.copy_context()``, ``asyncio`` tasks and ``loop.run_in_executor`` see it too.
"""

from __future__ import annotations

import os
from contextvars import ContextVar, Token
from itertools import count
from typing import TYPE_CHECKING, Any, Final, NoReturn

if TYPE_CHECKING:
    from gpuledger._worker import Phase

__all__ = [
    "CURRENT",
    "Invocation",
    "current_invocation",
    "new_invocation_id",
    "record_tokens",
    "tag",
]

_current: ContextVar[Invocation | None] = ContextVar("gpuledger_invocation", default=None)
# Generated invocation ids: a random per-process prefix and a counter, formatted only when read
# (uuid4 costs microseconds on the request path; this costs nothing until someone asks).
_PROCESS_PREFIX = os.urandom(6).hex()
_sequence = count(1)
CURRENT: Final = _current
"""The invocation running in this context (None outside one): for the span processor that
counts outgoing calls, which reads it for every client span."""


def new_invocation_id() -> str:
    """A fresh invocation id in gpuledger's own format (``<process prefix>-<counter>``)."""
    return f"{_PROCESS_PREFIX}-{next(_sequence):08d}"


class Invocation:
    """One running (or just finished) invocation of a traced handler.

    Read ``invocation_id``, ``handler``, ``cold``, ``user_id``, ``tenant``, ``tags`` and the token
    counts; change them through :func:`gpuledger.tag` and :func:`gpuledger.record_tokens`.
    """

    # Class-level defaults, not __slots__: the request path then sets three attributes, not
    # twenty (an instance only stores what differs from these).
    _invocation_id: str | None = None
    _sequence = 0
    duration_ns = 0
    outcome = "ok"
    error_type: str | None = None
    cold = False
    init: Any = None
    idle_gap_ns: int | None = None
    phases: list[Phase] | None = None
    user_id: str | None = None
    tenant: str | None = None
    tags: dict[str, str] | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None
    operation: str | None = None
    # Generator handlers: perf ns from the start to the first item, and how many were yielded.
    first_item_ns: int | None = None
    items: int | None = None
    span: Any = None
    refused: Any = None
    """The :class:`gpuledger.BudgetExceeded` to raise instead of running the handler."""
    _context_token: Token[Invocation | None] | None = None
    _otel_token: Any = None
    # Sharing the worker with other invocations (async handlers, concurrency above 1).
    segments: list[tuple[int, int, int]] | None = None
    """``(from_ns, to_ns, n)`` when others ran alongside; None when it ran alone."""
    billed_ns: int | float | None = None
    """This invocation's share of the worker's wall time; None: all of ``duration_ns``."""
    # Outgoing calls: appended by external_call() and the span processor (any thread), and
    # their summary once the invocation ended.
    calls: list[Any] | None = None
    external: Any = None
    # With a sidecar: the record's id, given at the start so the start notice can name it.
    record_id: str | None = None
    # GPU metering: the meter, and the error to put on a span ended by the writer.
    meter: Any = None
    error: BaseException | None = None

    def __init__(self, handler: str, start_ns: int, start_perf_ns: int) -> None:
        self.handler = handler
        self.start_ns = start_ns
        self.start_perf_ns = start_perf_ns

    @property
    def invocation_id(self) -> str:
        """The platform's id for this request (e.g. RunPod's job id), else a generated one."""
        if self._invocation_id is None:
            if not self._sequence:
                self._sequence = next(_sequence)
            self._invocation_id = f"{_PROCESS_PREFIX}-{self._sequence:08d}"
        return self._invocation_id

    def __repr__(self) -> str:
        return (
            f"<Invocation {self.handler} id={self.invocation_id} cold={self.cold} "
            f"outcome={self.outcome}>"
        )


def current_invocation() -> Invocation | None:
    """The invocation running in this context, or ``None`` outside a traced handler."""
    return _current.get()


def tag(*, user: object = None, tenant: object = None, **tags: object) -> None:
    """Attribute the current invocation to a ``user`` and ``tenant`` and add free-form ``tags``.

    Values are turned into text. Outside a traced handler this does nothing.
    """
    invocation = _current.get()
    if invocation is None:
        return
    if user is not None:
        invocation.user_id = str(user)
    if tenant is not None:
        invocation.tenant = str(tenant)
    if tags:
        if invocation.tags is None:
            invocation.tags = {}
        for key, value in tags.items():
            invocation.tags[key] = str(value)


def record_tokens(*, input: int | None = None, output: int | None = None) -> None:
    """Add model tokens read (``input``) and generated (``output``) to the current invocation.

    Calls add up, so a streaming handler can report as it goes. ``None`` adds nothing; a value
    that is not a whole number of zero or more raises ``ValueError``. Outside a traced handler
    this does nothing.
    """
    invocation = _current.get()
    # ``type(...) is int`` rejects bools and floats in one test (this runs once or more per
    # request); numpy and other integer types are accepted through ``__index__``.
    if input is not None:
        if type(input) is not int:
            input = _whole("input", input)
        if input < 0:
            _reject("input", input)
        if invocation is not None:
            invocation.input_tokens = (invocation.input_tokens or 0) + input
    if output is not None:
        if type(output) is not int:
            output = _whole("output", output)
        if output < 0:
            _reject("output", output)
        if invocation is not None:
            invocation.output_tokens = (invocation.output_tokens or 0) + output


def _whole(name: str, value: object) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        _reject(name, value)
    return int(value.__index__())


def _reject(name: str, value: object) -> NoReturn:
    raise ValueError(
        f"gpuledger.record_tokens({name}={value!r}): a token count is a whole number >= 0"
    )
