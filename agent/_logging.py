"""The agent's own log lines, through structlog, without touching the application's logging.

gpuledger never calls ``structlog.configure()``: that is the application's. It wraps its own
logger with its own processors, readable in a terminal (``console``) or one JSON object a line
(``json``), at ``warning`` and above unless asked for more.

Logging is the agent's last resort, so it must never fail the code that logs. Platforms replace
the standard streams with objects of their own (Cog's ``_SlotLogWriter`` cannot be weakly
referenced, which structlog's ``PrintLogger`` needs; a worker may close its stderr; a stream may
raise), so the line goes through :class:`GuardedStderr`: it looks ``sys.stderr`` up at each write,
falls back to the interpreter's original stream and then to file descriptor 2, and if all of them
fail it drops the line and counts it (``log.write`` in ``gpuledger.telemetry.errors``). Rendering
errors (a processor that raises on an odd value) are dropped and counted the same way.

No secret reaches a line: the sources mask what they say (``gpuledger._location.mask_secrets``),
and :func:`mask_event`, the processor before the renderer, masks again whatever got through: the
whole value of a field named like a secret (``token``, ``password``, ``headers``...) and any
password, token or authentication header in any other text, the traceback's included.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

from gpuledger._counters import count
from gpuledger._location import MASK, mask_secrets

__all__ = ["GuardedStderr", "configure_logging", "get_logger", "mask_event"]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_METHOD_LEVELS = {**_LEVELS, "exception": 40}
_logger: Any = None
_format = "console"
_level = "warning"
_writing = threading.local()


def configure_logging(log_format: str, log_level: str) -> None:
    """Set the format (``console``/``json``) and level; takes effect for the next log line."""
    global _logger, _format, _level
    _format, _level, _logger = log_format, log_level, None


def take_library_logging(level: int = 30) -> None:
    """In a process gpuledger owns (``gpuledger sidecar``, ``gpuledger proxy``): send what the
    libraries log through the standard ``logging`` module (OpenTelemetry's exporters, asyncio,
    aiohttp) at ``level`` (WARNING) and above through this logger, so that those lines are in
    the chosen format and masked like gpuledger's own. Never called in a worker, whose logging
    is its application's. Idempotent. (``logging`` is imported here: ``import gpuledger`` does
    not load it.)"""
    import logging  # noqa: PLC0415

    class LibraryLines(logging.Handler):
        """A standard ``logging`` handler writing through :func:`get_logger`."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                fields: dict[str, Any] = {"logger": record.name}
                if record.exc_info and record.exc_info[0] is not None:
                    fields["exc_info"] = record.exc_info
                method = record.levelname.lower()
                if method not in ("debug", "info", "warning", "error", "critical"):
                    method = "warning"
                getattr(get_logger(), method)(record.getMessage(), **fields)
            except Exception:  # a message that cannot be formatted: dropped and counted
                _count_failure()

    root = logging.getLogger()
    if any(type(handler).__name__ == "LibraryLines" for handler in root.handlers):
        return
    root.addHandler(LibraryLines(level))
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)


def get_logger() -> Any:
    """The agent's logger (cheap: structlog is imported and its logger built only when a line
    at or above the level is said, so ``import gpuledger`` and a quiet ``configure()`` stay
    light: structlog's own import loads ``rich`` where it is installed, 60 ms).

    Its methods (``debug`` ... ``critical``, ``exception``) never raise.
    """
    global _logger
    if _logger is None:
        _logger = _SafeLogger(_LEVELS[_level])
    return _logger


def _structlog_logger() -> Any:
    """structlog's logger with gpuledger's processors, for the format and level set now."""
    import structlog  # noqa: PLC0415  (lazy: structlog is only needed once something is said)

    renderer: Any
    if _format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    return structlog.wrap_logger(
        GuardedStderr(),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            mask_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[_level]),
        cache_logger_on_first_use=True,
    ).bind(logger="gpuledger")


_SECRET_FIELD = re.compile(
    r"(?i)(?:^|_)(?:pass(?:word|wd)?|pwd|token|secret|api_?key|authorization|credentials?"
    r"|pseudonym_key)$"
)
"""A field whose whole value is a secret (``token``, ``sidecar_token``, ``password``...); not
``input_tokens``, a count."""
_HEADERS_FIELD = re.compile(r"(?i)headers$")
_PLAIN = (int, float, bool, type(None))


def mask_event(logger: Any, method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: ``event`` with every secret masked (see the module docstring)."""
    return {key: _masked(key, value, 0) for key, value in event.items()}


def _masked(key: str, value: Any, depth: int) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if _SECRET_FIELD.search(key):
        return MASK
    if _HEADERS_FIELD.search(key):
        return _masked_headers(value)
    if isinstance(value, str):
        return mask_secrets(value)
    if depth < 3 and isinstance(value, dict):
        return {name: _masked(str(name), item, depth + 1) for name, item in value.items()}
    if depth < 3 and isinstance(value, list | tuple):
        return type(value)(_masked("", item, depth + 1) for item in value)
    shown = repr(value)  # what the renderer would write: mask it, if there is a secret in it
    masked = mask_secrets(shown)
    return value if masked == shown else masked


def _masked_headers(value: Any) -> Any:
    """Headers, every value masked: a mapping, or ``key=value,...`` (OTLP's setting)."""
    if isinstance(value, dict):
        return dict.fromkeys(value, MASK)
    if isinstance(value, str):
        return ",".join(
            f"{pair.partition('=')[0]}={MASK}" if "=" in pair else pair for pair in value.split(",")
        )
    return MASK


class GuardedStderr:
    """A structlog logger that writes each rendered line to standard error and never raises.

    ``sys.stderr`` is looked up at every write, so a stream a platform installs after
    configuration is honoured; when it fails (closed, raising, ``None``), the interpreter's
    original ``sys.__stderr__``, then file descriptor 2; when all fail the line is dropped and
    counted. A stream whose ``write`` logs through gpuledger again does not recurse.
    """

    __slots__ = ()

    def msg(self, message: str) -> None:
        """Write ``message`` and a newline."""
        if getattr(_writing, "active", False):
            return  # the stream itself logged through gpuledger: drop rather than recurse
        _writing.active = True
        try:
            line = f"{message}\n"
            if not (_write(sys.stderr, line) or _write(sys.__stderr__, line) or _write_fd(line)):
                _count_failure()
        finally:
            _writing.active = False

    log = debug = info = warn = warning = error = err = critical = fatal = exception = msg


def _write(stream: Any, line: str) -> bool:
    if stream is None:
        return False
    try:
        stream.write(line)
        flush = getattr(stream, "flush", None)
        if flush is not None:
            flush()
    except Exception:  # any stream, any failure: the caller tries the next one
        return False
    return True


def _write_fd(line: str) -> bool:
    try:
        os.write(2, line.encode("utf-8", "replace"))
    except Exception:  # fd 2 closed or not writable
        return False
    return True


def _count_failure() -> None:
    with contextlib.suppress(Exception):  # counting is the last thing that can be done
        count("log.write")


class _SafeLogger:
    """The bound logger's methods, with any failure inside structlog dropped and counted; a line
    below the level is dropped before structlog is even loaded."""

    __slots__ = ("_bound", "_minimum")

    def __init__(self, minimum: int) -> None:
        self._minimum = minimum
        self._bound: Any = None

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if _METHOD_LEVELS[method] < self._minimum:
            return
        try:
            bound = self._bound
            if bound is None:
                bound = self._bound = _structlog_logger()
            getattr(bound, method)(event, **fields)
        except Exception:  # a processor or renderer that cannot take a value
            _count_failure()

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._emit("critical", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled (its traceback), as in ``logging``."""
        self._emit("exception", event, fields)
