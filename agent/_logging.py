"""The agent's own log lines, through structlog, without touching the application's logging.

gpuledger never calls ``structlog.configure()``: that is the application's. It wraps its own
logger with its own processors, readable in a terminal (``console``) or one JSON object a line
(``json``), written to standard error, at ``warning`` and above unless asked for more.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["configure_logging", "get_logger"]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_logger: Any = None
_format = "console"
_level = "warning"


def configure_logging(log_format: str, log_level: str) -> None:
    """Set the format (``console``/``json``) and level; takes effect for the next log line."""
    global _logger, _format, _level
    _format, _level, _logger = log_format, log_level, None


def get_logger() -> Any:
    """The agent's bound logger (built on first use, so ``import gpuledger`` stays light)."""
    global _logger
    if _logger is None:
        import structlog  # noqa: PLC0415  (lazy: structlog is only needed once something is said)

        renderer: Any
        if _format == "json":
            renderer = structlog.processors.JSONRenderer()
        else:
            renderer = structlog.dev.ConsoleRenderer(colors=False)
        _logger = structlog.wrap_logger(
            structlog.PrintLogger(sys.stderr),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[_level]),
            cache_logger_on_first_use=True,
        ).bind(logger="gpuledger")
    return _logger
