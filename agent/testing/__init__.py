"""What users test their handlers with (structlog's and logfire's ``testing`` pattern).

- :func:`capture_telemetry` configures gpuledger for a test and gives a :class:`Capture` of what
  it produced: ledger records and rows, spans, metric points. The pytest fixture
  ``gpuledger_capture`` (``gpuledger.testing.pytest_plugin``, which pytest loads by itself once
  gpuledger is installed) yields one.
- :class:`FakeClock`: time that moves only when the test says so.
- :func:`make_record`: an ``InvocationRecord`` with sane defaults, for tests of code that reads
  records (reports, sinks).
- ``gpuledger.testing.nvml``: a faithful NVML replay, to test GPU metering without a GPU.

Example (the fixture; README "Testing your handlers" has the whole file)::

    def test_predict_is_recorded(gpuledger_capture):
        predict({"id": "job-1", "prompt": "hi"})
        (record,) = gpuledger_capture.records()
        assert record.outcome == "ok"

Importing this package is as light as ``import gpuledger``: the OpenTelemetry SDK, SQLite and
NVML are imported when a capture starts or reads, and ``nvml`` on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gpuledger.testing._capture import Capture, capture_telemetry
from gpuledger.testing._clock import FakeClock
from gpuledger.testing._records import RECORDS_START_NS, make_record

if TYPE_CHECKING:
    from gpuledger.testing import nvml

__all__ = [
    "RECORDS_START_NS",
    "Capture",
    "FakeClock",
    "capture_telemetry",
    "make_record",
    "nvml",
]


def __getattr__(name: str) -> object:
    # ``nvml`` imports pynvml (for its error classes): only when a test asks for it.
    if name == "nvml":
        return importlib.import_module("gpuledger.testing.nvml")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
