"""Checking what workers send the sidecar: each field of each record and start notice.

A request is accepted whole or refused whole; the error names the first problem and where it
is (``records[3].start_ns: expected an integer, got a string``).

Nothing is acknowledged that could not be exported or billed: beyond its type, every value must
lie in the record's own ranges (``gpuledger._record``: ``MIN_TIME_NS``, ``MAX_DURATION_S``,
``MAX_COST_USD``, ...): instants are Unix ns after 2000-01-01 and at most ``MAX_FUTURE_NS`` ahead
of the sidecar's clock, ``end_ns >= start_ns``, ``duration_s`` is ``end_ns - start_ns``;
seconds, joules, dollars and tokens are finite, not negative and bounded; timeouts are more
than 0 and at most ``MAX_TIMEOUT_S``; strings are valid Unicode (no lone surrogate), without
NUL, and at most :data:`MAX_ID_CHARS`, :data:`MAX_NAME_CHARS` or :data:`MAX_TEXT_CHARS` long by
kind; JSON maps have at most :data:`MAX_MAP_ENTRIES` entries.

**Versions.** A body may say which record format it is in, ``{"format": 2, "records": [...]}``
(``gpuledger._record.RECORD_FORMAT``; absent means the current one). Keys this version does not
know are dropped, in any format: a newer worker's new field is not this sidecar's to store. An
``outcome`` this version does not know is refused in the current format (the sender has a bug)
but kept in a newer one, where it is a newer worker's outcome: the record is stored with outcome
``error`` (the one that claims least: not a success, nothing about how it ended) and the
original in the tag ``gpuledger.outcome``, so that a newer worker never loses records to an
older sidecar and nothing downstream sees an outcome it cannot map. Ranges are not relaxed for
a newer format: they are what exporting and billing need.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from gpuledger._record import (
    MAX_COST_USD,
    MAX_DURATION_S,
    MAX_ENERGY_J,
    MAX_FUTURE_NS,
    MAX_GPU_COUNT,
    MAX_GPU_SECONDS,
    MAX_IDLE_GAP_S,
    MAX_MEMORY_BYTES,
    MAX_TIMEOUT_S,
    MAX_TOKENS,
    MIN_TIME_NS,
    OUTCOMES,
    RECORD_FORMAT,
    RECORDED_BY_SIDECAR,
    InvocationRecord,
)
from gpuledger.billing import Rules

MAX_ID_CHARS: Final = 256
"""The longest id (``record_id``, ``invocation_id``, ``worker_id``, ``user_id``, ...)."""
MAX_NAME_CHARS: Final = 2048
"""The longest name (``handler``, ``platform``, ``gpu_model``, ``error_type``, a tag's or a
phase's or a target's name, which may be a URL: 2,048, the practical limit of one)."""
MAX_TEXT_CHARS: Final = 8192
"""The longest text (a tag's value, ``cost_source``, why the GPU was not measured, ...)."""
MAX_MAP_ENTRIES: Final = 256
"""The most entries a JSON map (``tags``, ``init_phases``, ``external_targets``, ...) may have."""
MAX_QUANTITY: Final = 1e15
"""The most any other count of one record may be (external calls, their errors and bytes)."""
DURATION_TOLERANCE_NS: Final = 1_000_000
"""How far ``duration_s`` may be from ``end_ns - start_ns``: 1 ms (float rounding is far less)."""
UNKNOWN_OUTCOME_TAG: Final = "gpuledger.outcome"
"""The tag that keeps a newer worker's outcome this version does not know (stored as
``error``)."""
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_MAX_PID: Final = 2**31 - 1
_TIME_FIELDS: Final = ("start_ns", "end_ns", "worker_start_ns", "worker_ready_ns")
"""Instants that must not be ahead of the sidecar's clock by more than ``MAX_FUTURE_NS``."""


class Invalid(ValueError):
    """A request body that cannot be taken; the message says what is wrong and where."""


class _Bad(Exception):
    """A value's problem, raised by a check; ``path`` is where below the field (``.key``).

    Checks say where only when something is wrong: building ``records[3].start_ns`` for every
    field of every record would cost more than checking it."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


_Check = Callable[[object], object]
_ABSENT: Final = object()


def _describe(value: object) -> str:
    """A JSON value's kind in words, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _text(value: object) -> str:
    if type(value) is not str:
        raise _Bad(f"expected a string, got {_describe(value)}")
    if "\x00" in value:
        # SQLite would keep it; PostgreSQL ledgers refuse it, and one such row would stall them.
        raise _Bad("contains a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Bad("not valid Unicode (a lone surrogate escape)") from None
    return value


def _integer(value: object) -> int:
    if type(value) is not int:
        raise _Bad(f"expected an integer, got {_describe(value)}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise _Bad("integer out of range (64-bit signed)")
    return value


def _number(value: object) -> int | float:
    """A finite number, kept as given (an integer stays one)."""
    if type(value) is float:
        if not math.isfinite(value):
            raise _Bad("expected a finite number")
        return value
    if type(value) is int:
        return _integer(value)
    raise _Bad(f"expected a number, got {_describe(value)}")


def _real(value: object) -> float:
    return float(_number(value))


def _boolean(value: object) -> bool:
    if type(value) is not bool:
        raise _Bad(f"expected true or false, got {_describe(value)}")
    return value


def _words(bound: float) -> str:
    """A bound as it reads in a message: ``604,800``, ``1,000,000``, ``1e+15``."""
    return f"{bound:,.0f}" if float(bound).is_integer() and bound < 1e15 else f"{bound:g}"


def _string(limit: int) -> _Check:
    def string(value: object) -> str:
        text = _text(value)
        if len(text) > limit:
            raise _Bad(f"must be at most {limit:,} characters, got {len(text):,}")
        return text

    return string


_id = _string(MAX_ID_CHARS)
_name = _string(MAX_NAME_CHARS)
_long_text = _string(MAX_TEXT_CHARS)


def _quantity(bound: float, unit: str, *, keep_int: bool = False) -> _Check:
    """A finite number from 0 to ``bound`` (in ``unit``); a float unless ``keep_int``."""
    in_unit = f" {unit}" if unit else ""

    def quantity(value: object) -> int | float:
        number = _number(value)
        if not 0 <= number <= bound:
            raise _Bad(f"must be 0 to {_words(bound)}{in_unit}, got {number!r}")
        return number if keep_int else float(number)

    return quantity


def _whole(bound: int, unit: str) -> _Check:
    """An integer from 0 to ``bound`` (in ``unit``)."""

    def whole(value: object) -> int:
        number = _integer(value)
        if not 0 <= number <= bound:
            raise _Bad(f"must be 0 to {_words(bound)} {unit}, got {number}")
        return number

    return whole


def _instant(value: object) -> int:
    """Unix ns after 2000-01-01 (the upper bound, the sidecar's clock, is checked per request)."""
    number = _integer(value)
    if number < MIN_TIME_NS:
        raise _Bad(f"must be a Unix time in ns after 2000-01-01, got {number}")
    return number


def _mapping(value_check: _Check, per_key: Mapping[str, _Check] | None = None) -> _Check:
    """A JSON object of at most ``MAX_MAP_ENTRIES`` entries, names as keys; each value checked
    by ``per_key[key]``, else by ``value_check``."""

    def mapping(value: object) -> dict[str, object]:
        if type(value) is not dict:
            raise _Bad(f"expected an object, got {_describe(value)}")
        if len(value) > MAX_MAP_ENTRIES:
            raise _Bad(f"must have at most {MAX_MAP_ENTRIES} entries, got {len(value):,}")
        result: dict[str, object] = {}
        for key, item in value.items():
            try:
                _name(key)
            except _Bad as bad:
                raise _Bad(bad.message, " (a key)") from None
            check = value_check if per_key is None else per_key.get(key, value_check)
            try:
                result[key] = check(item)
            except _Bad as bad:
                raise _Bad(bad.message, f".{key}{bad.path}") from None
        return result

    return mapping


def _choice(options: tuple[str, ...]) -> _Check:
    def choice(value: object) -> str:
        if type(value) is not str or value not in options:
            raise _Bad(f"expected one of {', '.join(options)}")
        return value

    return choice


_Field = tuple[str, bool, bool, _Check]
"""``(name, required, nullable, check)``: how one field of a body is checked."""


def _check_for(hint: Any, *, nested: bool = False) -> tuple[bool, _Check]:
    """``(nullable, check)`` of one ``InvocationRecord`` field, from its type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return True, _check_for(args[0], nested=nested)[1]
    if origin is typing.Literal:
        return False, _choice(tuple(typing.get_args(hint)))
    if origin is dict:
        _key, value = typing.get_args(hint)
        nullable, check = _check_for(value, nested=True)
        if nullable:  # pragma: no cover - no record field has dict values that may be null
            raise TypeError(f"no check for {hint!r}")
        return False, _mapping(check)
    if hint is str:
        return False, _text
    if hint is bool:
        return False, _boolean
    if hint is int:
        return False, _integer
    if hint is float:
        # Inside a dict (external_targets' calls, errors, bytes) an integer stays an integer.
        return False, _number if nested else _real
    raise TypeError(f"no check for {hint!r}")  # pragma: no cover - a new kind of field


def _record_id(value: object) -> str:
    text = _text(value)
    if not text or len(text) > MAX_ID_CHARS:
        raise _Bad(f"must be 1 to {MAX_ID_CHARS} characters")
    return text


def _count(value: object) -> int:
    number = _integer(value)
    if number < 0:
        raise _Bad("must not be negative")
    if number > MAX_GPU_COUNT:
        raise _Bad(f"must be at most {MAX_GPU_COUNT:,} GPUs, got {number:,}")
    return number


def _pid(value: object) -> int:
    number = _integer(value)
    if not 1 <= number <= _MAX_PID:
        # pid 0 or -1 would make os.kill address a process group, or every process.
        raise _Bad("expected a process id (1 or more)")
    return number


def _timeout(value: object) -> float:
    number = _real(value)
    if number <= 0:
        raise _Bad("must be more than 0 seconds")
    if number > MAX_TIMEOUT_S:
        raise _Bad(f"must be at most {_words(MAX_TIMEOUT_S)} seconds, got {number!r}")
    return number


_RULE_AMOUNTS: Final = (
    "per_gpu_second_usd",
    "execution_fee_usd",
    "cpu_usd_per_second",
    "memory_usd_per_second",
)
_RULE_SPANS: Final = ("increment_ns", "minimum_ns", "idle_window_ns")
_MAX_RULE_TEXT: Final = 100
_MAX_DURATION_NS: Final = int(MAX_DURATION_S * 1e9)


def _billing_rules(value: object) -> dict[str, object]:
    if type(value) is not dict:
        raise _Bad(f"expected an object, got {_describe(value)}")
    for name in _RULE_AMOUNTS:
        amount = value.get(name)
        # Fraction("1e999999999") would compute 10**999999999: seconds to minutes of CPU.
        if isinstance(amount, str) and (
            len(amount) > _MAX_RULE_TEXT or any(mark in amount for mark in "eE_")
        ):
            raise _Bad(
                f"expected a decimal or a fraction of at most {_MAX_RULE_TEXT} characters",
                f".{name}",
            )
    try:
        rules = Rules.from_json(value)
    except ValueError as error:
        raise _Bad(str(error)) from None
    for name in _RULE_AMOUNTS:
        if not 0 <= getattr(rules, name) <= MAX_COST_USD:
            raise _Bad(f"must be 0 to {_words(MAX_COST_USD)} US dollars", f".{name}")
    for name in _RULE_SPANS:
        span = getattr(rules, name)
        if span is not None and not 0 <= span <= _MAX_DURATION_NS:
            raise _Bad(f"must be 0 to {_words(_MAX_DURATION_NS)} ns, got {span}", f".{name}")
    return rules.to_json()


_seconds = _quantity(MAX_DURATION_S, "seconds")
_summed_seconds = _quantity(MAX_GPU_SECONDS, "seconds")
_gpu_seconds = _quantity(MAX_GPU_SECONDS, "GPU seconds")
_energy = _quantity(MAX_ENERGY_J, "joules")
_money = _quantity(MAX_COST_USD, "US dollars")
_tokens = _whole(MAX_TOKENS, "tokens")
_target = _mapping(
    _quantity(MAX_QUANTITY, "", keep_int=True),  # calls, errors, bytes, a newer agent's count
    {
        "call_s": _quantity(MAX_GPU_SECONDS, "seconds", keep_int=True),
        "wait_s": _quantity(MAX_DURATION_S, "seconds", keep_int=True),
        "wait_usd": _quantity(MAX_COST_USD, "US dollars", keep_int=True),
    },
)

_RANGES: Final[Mapping[str, _Check]] = {
    "record_id": _record_id,
    **dict.fromkeys(
        ("invocation_id", "endpoint", "worker_id", "billing_worker", "user_id", "tenant"), _id
    ),
    **dict.fromkeys(
        (
            "handler",
            "service_name",
            "platform",
            "region",
            "gpu_model",
            "worker_start_source",
            "busy_source",
            "energy_source",
            "error_type",
            "pricing_platform",
            "pricing_version",
            "service_version",
            "model",
            "operation",
        ),
        _name,
    ),
    **dict.fromkeys(("cost_source", "gpu_uuids"), _long_text),
    "gpu_count": _count,
    **dict.fromkeys(("start_ns", "worker_start_ns", "worker_ready_ns"), _instant),
    # At least start_ns (checked after the fields): so after 2000-01-01 as well.
    "end_ns": _integer,
    **dict.fromkeys(
        ("duration_s", "request_startup_s", "init_duration_s", "first_item_s"), _seconds
    ),
    "idle_gap_s": _quantity(MAX_IDLE_GAP_S, "seconds"),
    "init_phases": _mapping(_seconds),
    **dict.fromkeys(("billed_gpu_seconds", "busy_gpu_seconds"), _gpu_seconds),
    **dict.fromkeys(("energy_j", "energy_active_j", "energy_idle_j"), _energy),
    "peak_gpu_memory_bytes": _whole(MAX_MEMORY_BYTES, "bytes"),
    "gpu_unmeasured": _mapping(_long_text),
    "external_calls": _whole(int(MAX_QUANTITY), "calls"),
    # Concurrent calls' seconds add up past the wall time; the time covered does not.
    "external_call_seconds": _summed_seconds,
    "external_wait_seconds": _seconds,
    "external_targets": _mapping(_target),
    "tags": _mapping(_long_text),
    **dict.fromkeys(("input_tokens", "output_tokens"), _tokens),
    "items": _whole(MAX_TOKENS, "items"),
    **dict.fromkeys(
        (
            "external_wait_cost_usd",
            "cost_usd",
            "cost_execution_usd",
            "cost_gpu_usd",
            "cost_coldstart_usd",
        ),
        _money,
    ),
    # None (the agent's own) or the sidecar's mark, nothing else: the spool and the ledger
    # decide from it which of two records of one invocation to keep.
    "recorded_by": _choice((RECORDED_BY_SIDECAR,)),
}
"""The check of every record field that has a range (booleans and ``outcome`` have types)."""
_NULLABLE_OVERRIDES: Final[Mapping[str, _Check]] = {"billing_rules": _billing_rules}


@functools.cache
def _record_fields() -> tuple[_Field, ...]:
    """How every ``InvocationRecord`` field is checked, in order."""
    hints = typing.get_type_hints(InvocationRecord)
    fields = []
    for field in dataclasses.fields(InvocationRecord):
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        special = _NULLABLE_OVERRIDES.get(field.name)
        if special is not None:
            fields.append((field.name, required, True, special))
            continue
        nullable, check = _check_for(hints[field.name])
        ranged = _RANGES.get(field.name)
        if ranged is None and check is not _boolean and field.name != "outcome":
            # A new field gets a range here before it is accepted from workers.
            raise TypeError(f"no range for InvocationRecord.{field.name}")
        fields.append((field.name, required, nullable, ranged or check))
    return tuple(fields)


_START_FIELDS: Final[tuple[_Field, ...]] = (
    ("record_id", True, False, _record_id),
    ("invocation_id", True, False, _id),
    ("handler", True, False, _name),
    ("start_ns", True, False, _instant),
    ("pid", True, False, _pid),
    ("service_name", True, False, _name),
    ("platform", True, False, _name),
    ("endpoint", False, True, _id),
    ("worker_id", False, True, _id),
    ("region", False, True, _name),
    ("gpu_model", False, True, _name),
    ("gpu_count", False, False, _count),
    ("service_version", False, True, _name),
    ("timeout_s", False, True, _timeout),
    ("user_id", False, True, _id),
    ("user_id_pseudonymised", False, False, _boolean),
    ("tenant", False, True, _id),
    ("billing_worker", False, True, _id),
    ("worker_start_ns", False, True, _instant),
    ("worker_start_source", False, True, _name),
    ("worker_ready_ns", False, True, _instant),
    ("billing_rules", False, True, _billing_rules),
    ("pricing_platform", False, True, _name),
    ("pricing_version", False, True, _name),
)


def _items(payload: object, key: str) -> list[object]:
    if type(payload) is not dict:
        raise Invalid(f'body: expected a JSON object {{"{key}": [...]}}, got {_describe(payload)}')
    if key not in payload:
        raise Invalid(f"body: no {key!r} list")
    items = payload[key]
    if type(items) is not list:
        raise Invalid(f"{key}: expected a list, got {_describe(items)}")
    return items


def _format(payload: object) -> int:
    """The body's record format (``RECORD_FORMAT`` when absent); raises :class:`Invalid`."""
    version = payload.get("format", RECORD_FORMAT) if type(payload) is dict else RECORD_FORMAT
    if type(version) is not int or version < 1:
        raise Invalid(f"format: expected a format version (an integer, 1 or more), got {version!r}")
    return version


def _fields(item: object, where: Callable[[], str], fields: Iterable[_Field]) -> dict[str, object]:
    if type(item) is not dict:
        raise Invalid(f"{where()}: expected an object, got {_describe(item)}")
    values: dict[str, object] = {}
    for name, required, nullable, check in fields:
        value = item.get(name, _ABSENT)
        if value is _ABSENT:
            if required:
                raise Invalid(f"{where()}.{name}: missing (required)")
        elif value is None and nullable:
            values[name] = None
        else:
            try:
                values[name] = check(value)
            except _Bad as bad:
                raise Invalid(f"{where()}.{name}{bad.path}: {bad.message}") from None
    return values


def _not_ahead(values: Mapping[str, object], where: Callable[[], str], now_ns: int) -> None:
    """Refuse an instant more than ``MAX_FUTURE_NS`` ahead of the sidecar's clock."""
    latest = now_ns + MAX_FUTURE_NS
    for name in _TIME_FIELDS:
        instant = values.get(name)
        if instant is not None and typing.cast(int, instant) > latest:
            raise Invalid(
                f"{where()}.{name}: must not be more than a day ahead of the sidecar's clock "
                f"({now_ns}), got {instant}"
            )


def _newer_outcome(item: object) -> tuple[object, str | None]:
    """``(item, outcome)``: a newer worker's record whose outcome this version does not know,
    as one with outcome ``error``, and that outcome (None: ``item`` as it was). A ``recorded_by``
    this version does not know is dropped: the one it knows marks the sidecar's stand-in, and a
    record that some newer writer made is a real one."""
    if type(item) is not dict:
        return item, None
    if "recorded_by" in item and item["recorded_by"] not in (None, RECORDED_BY_SIDECAR):
        item = {key: value for key, value in item.items() if key != "recorded_by"}
    outcome = item.get("outcome")
    if type(outcome) is not str or outcome in OUTCOMES:
        return item, None
    return {**item, "outcome": "error"}, outcome


def parse_records(
    payload: object, *, now_ns: int | None = None
) -> list[tuple[InvocationRecord, dict[str, object]]]:
    """The records of a ``/v1/records`` body, each with its checked field values (keys this
    version does not know are dropped; a newer format's unknown outcome is kept as ``error``
    and the tag :data:`UNKNOWN_OUTCOME_TAG`); raises :class:`Invalid` at the first problem.

    ``now_ns``: the sidecar's clock (Unix ns; default the system's), which no instant may be
    more than ``MAX_FUTURE_NS`` ahead of."""
    now = time.time_ns() if now_ns is None else now_ns
    fields = _record_fields()
    newer = _format(payload) > RECORD_FORMAT
    parsed = []
    for index, item in enumerate(_items(payload, "records")):

        def where(index: int = index) -> str:
            return f"records[{index}]"

        checked, unknown_outcome = _newer_outcome(item) if newer else (item, None)
        values = _fields(checked, where, fields)
        start_ns = typing.cast(int, values["start_ns"])
        end_ns = typing.cast(int, values["end_ns"])
        if end_ns < start_ns:
            raise Invalid(f"{where()}.end_ns: before start_ns")
        _not_ahead(values, where, now)
        duration_s = typing.cast(float, values["duration_s"])
        if abs(duration_s * 1e9 - (end_ns - start_ns)) > DURATION_TOLERANCE_NS:
            raise Invalid(
                f"{where()}.duration_s: must be end_ns - start_ns in seconds "
                f"({(end_ns - start_ns) / 1e9!r}), got {duration_s!r}"
            )
        if unknown_outcome is not None:
            try:
                _name(unknown_outcome)
            except _Bad as bad:
                raise Invalid(f"{where()}.outcome: {bad.message}") from None
            tags = typing.cast(dict[str, object], values.get("tags") or {})
            values["tags"] = {**tags, UNKNOWN_OUTCOME_TAG: unknown_outcome}
        try:
            record = InvocationRecord(**values)  # type: ignore[arg-type]
        except TypeError as error:  # pragma: no cover - the checks above cover every field
            raise Invalid(f"{where()}: {error}") from None
        parsed.append((record, values))
    return parsed


def parse_starts(payload: object, *, now_ns: int | None = None) -> list[dict[str, object]]:
    """The start notices of a ``/v1/starts`` body, checked; raises :class:`Invalid`.

    ``now_ns``: the sidecar's clock, as for :func:`parse_records`."""
    now = time.time_ns() if now_ns is None else now_ns
    _format(payload)  # a start notice has no outcome: a newer one reads as the current one
    parsed = []
    for index, item in enumerate(_items(payload, "starts")):

        def where(index: int = index) -> str:
            return f"starts[{index}]"

        values = _fields(item, where, _START_FIELDS)
        _not_ahead(values, where, now)
        parsed.append(values)
    return parsed


def _reject_constant(name: str) -> None:
    raise Invalid(f"invalid JSON: {name} is not a JSON number")


def parse_json(body: bytes) -> object:
    """Strict JSON from UTF-8 bytes: no ``NaN``/``Infinity``; raises :class:`Invalid`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Invalid(f"body is not valid UTF-8 (byte {error.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise Invalid("invalid JSON: nested too deeply") from None
    except json.JSONDecodeError as error:
        raise Invalid(f"invalid JSON: {error}") from None


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""One encoder for every spooled body: ``json.dumps`` with options builds a new one per call."""


def dumps(values: Mapping[str, object]) -> str:
    return _ENCODER.encode(values)
