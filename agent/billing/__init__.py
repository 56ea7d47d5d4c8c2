"""Worker bills: what a platform charges for one worker's life, and whose each dollar is.

:func:`bill` is the one billing engine: a pure function from a :class:`WorkerTimeline` and a
platform's :class:`Rules` to a :class:`WorkerBill`, exact. :func:`workers_of` rebuilds worker
timelines from recorded invocations; :func:`attribute` splits a worker's bill among its requests
under a policy (:data:`POLICIES`). Where a platform charges a worker's CPU and memory too
(:data:`RESOURCES`), they are billed over the same time as its GPUs, in the same bill. The
recorder freezes each worker's rules on its records, the report and ``compare``'s "as recorded"
bill workers with them, the simulator bills the timelines it simulates, and the sidecar prices
a killed worker's request with its own frozen rules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpuledger.billing._attribute import (
        IDLE_KEY,
        POLICIES,
        Billed,
        Charges,
        Worker,
        as_recorded,
        attribute,
        bill_workers,
        charge_into,
        frozen_rules,
        owned_lines,
        rate_key,
        worker_key,
        worker_lines,
        worker_of,
        worker_rules,
        workers_of,
    )
    from gpuledger.billing._engine import (
        CATEGORIES,
        RESOURCES,
        Category,
        Line,
        Request,
        Resource,
        Rules,
        WorkerBill,
        WorkerTimeline,
        allocate,
        bill,
        bill_intervals,
        bill_lines,
        billed_wall_ns,
        billed_wall_ns_unserved,
        rounded_ns,
    )
    from gpuledger.billing._running import RunningBill

_LAZY = {
    "IDLE_KEY": "_attribute",
    "POLICIES": "_attribute",
    "Billed": "_attribute",
    "Charges": "_attribute",
    "Worker": "_attribute",
    "as_recorded": "_attribute",
    "attribute": "_attribute",
    "bill_workers": "_attribute",
    "charge_into": "_attribute",
    "frozen_rules": "_attribute",
    "owned_lines": "_attribute",
    "rate_key": "_attribute",
    "worker_key": "_attribute",
    "worker_lines": "_attribute",
    "worker_of": "_attribute",
    "worker_rules": "_attribute",
    "workers_of": "_attribute",
    "CATEGORIES": "_engine",
    "RESOURCES": "_engine",
    "Category": "_engine",
    "Line": "_engine",
    "Request": "_engine",
    "Resource": "_engine",
    "Rules": "_engine",
    "WorkerBill": "_engine",
    "WorkerTimeline": "_engine",
    "allocate": "_engine",
    "bill": "_engine",
    "bill_intervals": "_engine",
    "bill_lines": "_engine",
    "billed_wall_ns": "_engine",
    "billed_wall_ns_unserved": "_engine",
    "rounded_ns": "_engine",
    "RunningBill": "_running",
}

__all__ = [
    "CATEGORIES",
    "IDLE_KEY",
    "POLICIES",
    "RESOURCES",
    "Billed",
    "Category",
    "Charges",
    "Line",
    "Request",
    "Resource",
    "Rules",
    "RunningBill",
    "Worker",
    "WorkerBill",
    "WorkerTimeline",
    "allocate",
    "as_recorded",
    "attribute",
    "bill",
    "bill_intervals",
    "bill_lines",
    "bill_workers",
    "billed_wall_ns",
    "billed_wall_ns_unserved",
    "charge_into",
    "frozen_rules",
    "owned_lines",
    "rate_key",
    "rounded_ns",
    "worker_key",
    "worker_lines",
    "worker_of",
    "worker_rules",
    "workers_of",
]


def __getattr__(name: str) -> Any:
    # Loaded on first use: the agent's configure() needs only ``Rules`` (the engine), not the
    # attribution and its imports (a cold start pays for every module).
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gpuledger.billing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gpuledger.billing.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
