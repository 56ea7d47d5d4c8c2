"""Checking what workers send the sidecar: each field of each record and start notice.

A request is accepted whole or refused whole; the error names the first problem and where it
is (``records[3].start_ns: expected an integer, got a string``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from gpuledger._record import InvocationRecord
from gpuledger.billing import Rules

_MAX_ID_CHARS: Final = 256
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_MAX_PID: Final = 2**31 - 1


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


def _mapping(value_check: _Check) -> _Check:
    def mapping(value: object) -> dict[str, object]:
        if type(value) is not dict:
            raise _Bad(f"expected an object, got {_describe(value)}")
        result: dict[str, object] = {}
        for key, item in value.items():
            try:
                _text(key)
            except _Bad as bad:
                raise _Bad(bad.message, " (a key)") from None
            try:
                result[key] = value_check(item)
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
    if not text or len(text) > _MAX_ID_CHARS:
        raise _Bad(f"must be 1 to {_MAX_ID_CHARS} characters")
    return text


def _count(value: object) -> int:
    number = _integer(value)
    if number < 0:
        raise _Bad("must not be negative")
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
    return number


def _billing_rules(value: object) -> dict[str, object]:
    if type(value) is not dict:
        raise _Bad(f"expected an object, got {_describe(value)}")
    try:
        return Rules.from_json(value).to_json()
    except ValueError as error:
        raise _Bad(str(error)) from None


_OVERRIDES: Final[Mapping[str, _Check]] = {"record_id": _record_id, "gpu_count": _count}
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
        fields.append((field.name, required, nullable, _OVERRIDES.get(field.name, check)))
    return tuple(fields)


_START_FIELDS: Final[tuple[_Field, ...]] = (
    ("record_id", True, False, _record_id),
    ("invocation_id", True, False, _text),
    ("handler", True, False, _text),
    ("start_ns", True, False, _integer),
    ("pid", True, False, _pid),
    ("service_name", True, False, _text),
    ("platform", True, False, _text),
    ("endpoint", False, True, _text),
    ("worker_id", False, True, _text),
    ("region", False, True, _text),
    ("gpu_model", False, True, _text),
    ("gpu_count", False, False, _count),
    ("timeout_s", False, True, _timeout),
    ("user_id", False, True, _text),
    ("user_id_pseudonymised", False, False, _boolean),
    ("tenant", False, True, _text),
    ("billing_worker", False, True, _text),
    ("worker_start_ns", False, True, _integer),
    ("worker_start_source", False, True, _text),
    ("worker_ready_ns", False, True, _integer),
    ("billing_rules", False, True, _billing_rules),
    ("pricing_platform", False, True, _text),
    ("pricing_version", False, True, _text),
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


def parse_records(payload: object) -> list[tuple[InvocationRecord, dict[str, object]]]:
    """The records of a ``/v1/records`` body, each with its checked field values (keys this
    version does not know are dropped); raises :class:`Invalid` at the first problem."""
    fields = _record_fields()
    parsed = []
    for index, item in enumerate(_items(payload, "records")):

        def where(index: int = index) -> str:
            return f"records[{index}]"

        values = _fields(item, where, fields)
        if typing.cast(int, values["end_ns"]) < typing.cast(int, values["start_ns"]):
            raise Invalid(f"{where()}.end_ns: before start_ns")
        try:
            record = InvocationRecord(**values)  # type: ignore[arg-type]
        except TypeError as error:  # pragma: no cover - the checks above cover every field
            raise Invalid(f"{where()}: {error}") from None
        parsed.append((record, values))
    return parsed


def parse_starts(payload: object) -> list[dict[str, object]]:
    """The start notices of a ``/v1/starts`` body, checked; raises :class:`Invalid`."""
    parsed = []
    for index, item in enumerate(_items(payload, "starts")):

        def where(index: int = index) -> str:
            return f"starts[{index}]"

        parsed.append(_fields(item, where, _START_FIELDS))
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


def dumps(values: Mapping[str, object]) -> str:
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
