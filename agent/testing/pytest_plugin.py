"""gpuledger's pytest plugin: the ``gpuledger_capture`` fixture (logfire's ``capfire`` pattern).

pytest loads it by itself wherever gpuledger is installed (entry point ``pytest11``, named as
this module); with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, ask for it with
``-p gpuledger.testing.pytest_plugin``, and turn it off with
``-p no:gpuledger.testing.pytest_plugin``. Loading it imports nothing heavy (it runs in every test
session of every project that has gpuledger installed): no more than ``import gpuledger`` does;
the OpenTelemetry SDK and SQLite come when a test uses the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from gpuledger.testing._capture import Capture

__all__ = ["gpuledger_capture"]


@pytest.fixture
def gpuledger_capture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Capture]:
    """gpuledger configured for this test, and what it produced: a
    :class:`gpuledger.testing.Capture`.

    ``.records()`` (the ledger's ``InvocationRecord``), ``.rows()``, ``.spans(name=None)``,
    ``.metric_points(name)`` and ``.clock`` (a ``FakeClock``: time moves only on
    ``.clock.advance(seconds)``). The ledger is ``gpuledger.db`` in the test's ``tmp_path``;
    ``GPULEDGER_*`` and ``OTEL_*`` variables, and the project's ``gpuledger.toml``, are hidden
    from gpuledger for the test, so that your shell's settings do not change its result.
    gpuledger's process-wide state is reset before and after. For other settings (a platform,
    a GPU, a service name), make a fixture of your own around
    :func:`gpuledger.testing.capture_telemetry`.
    """
    from gpuledger._settings import environment  # noqa: PLC0415  (only when used)
    from gpuledger.testing._capture import capture_telemetry  # noqa: PLC0415

    for name in list(environment()):
        if name.startswith(("GPULEDGER_", "OTEL_")):
            monkeypatch.delenv(name)
    # Nor does a gpuledger.toml (or [tool.gpuledger]) of the project's: an empty settings file.
    settings_file = tmp_path / "gpuledger-capture.toml"
    settings_file.write_text("", encoding="utf-8")
    monkeypatch.setenv("GPULEDGER_CONFIG", str(settings_file))
    with capture_telemetry(tmp_path / "gpuledger.db") as capture:
        yield capture
