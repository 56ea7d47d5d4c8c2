"""The sidecar: a process beside serverless workers that records every invocation exactly once,
and the metering proxy for plain HTTP servers.

This ``__init__`` is the room's internal API. The worker's side, :class:`SidecarClient`
(``http.client`` only), is imported with it; everything else (the sidecar: receiver, spool,
consumers, watcher; its GPU meter; the proxy, which needs aiohttp) is imported when a name is
first used, so that a worker loads no HTTP server, SQLite spool or OpenTelemetry exporter.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gpuledger.sidecar._client import SidecarClient, parse_sidecar_url

if TYPE_CHECKING:
    from gpuledger.sidecar import _proxy as proxy
    from gpuledger.sidecar._gpu import SidecarGpu
    from gpuledger.sidecar._receiver import DEFAULT_LISTEN, DEFAULT_MAX_BODY, parse_listen
    from gpuledger.sidecar._server import (
        DEFAULT_DRAIN_TIMEOUT_S,
        DEFAULT_GRACE_S,
        DEFAULT_SPOOL,
        TOKEN_ENV,
        Sidecar,
    )
    from gpuledger.sidecar._spool import DeadLetter, list_dead_letters, redrive_dead_letters

_LAZY = {
    "DEFAULT_LISTEN": "_receiver",
    "DEFAULT_MAX_BODY": "_receiver",
    "parse_listen": "_receiver",
    "DEFAULT_DRAIN_TIMEOUT_S": "_server",
    "DEFAULT_GRACE_S": "_server",
    "DEFAULT_SPOOL": "_server",
    "TOKEN_ENV": "_server",
    "Sidecar": "_server",
    "SidecarGpu": "_gpu",
    "DeadLetter": "_spool",
    "list_dead_letters": "_spool",
    "redrive_dead_letters": "_spool",
}

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT_S",
    "DEFAULT_GRACE_S",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_BODY",
    "DEFAULT_SPOOL",
    "TOKEN_ENV",
    "DeadLetter",
    "Sidecar",
    "SidecarClient",
    "SidecarGpu",
    "list_dead_letters",
    "parse_listen",
    "parse_sidecar_url",
    "proxy",
    "redrive_dead_letters",
]


def __getattr__(name: str) -> Any:
    if name == "proxy":  # aiohttp: only for `gpuledger proxy` (an ImportError names it)
        return importlib.import_module("gpuledger.sidecar._proxy")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gpuledger.sidecar' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gpuledger.sidecar.{module}"), name)


def __dir__() -> list[str]:
    return list(__all__)
