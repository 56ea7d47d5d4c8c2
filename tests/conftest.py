"""Shared fixtures: a clean gpuledger per test, a controllable clock, in-memory telemetry."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest

from gpuledger import _config, _guard
from gpuledger.cli import _options as cli_options
from gpuledger.testing import Capture, FakeClock, capture_telemetry

# Servers the tests start on 127.0.0.1 (PostgreSQL, Redis, S3, OTLP receivers, model servers),
# and the ledger fixture parametrised over SQLite and PostgreSQL: see tests/support/.
pytest_plugins = [
    "tests.support.services",
    "tests.support.receivers",
    "tests.support.upstreams",
    "tests.support.ledgers",
]

# Property tests draw the same examples on every run (a seed from each test's own code): the
# suite is deterministic, and a failure found once is found again. HYPOTHESIS_PROFILE=explore
# draws fresh ones, to look for new failures on purpose.
hypothesis.settings.register_profile("gpuledger", derandomize=True, database=None)
hypothesis.settings.register_profile("explore", derandomize=False, database=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gpuledger"))

EPOCH_NS = FakeClock.START_NS  # the wall-clock instant a new FakeClock shows, 2025-11-24

Telemetry = Capture
"""What the ``telemetry`` fixture gives: the public capture (``gpuledger.testing``), so that the
whole suite exercises it."""

__all__ = ["EPOCH_NS", "FakeClock", "Telemetry", "run_python"]


def run_python(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter with ``env`` added to ours; fail on a bad exit."""
    completed = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed


TODAY = dt.date(2026, 12, 6)
"""The day the tests run on, as far as price editions' age goes."""


@pytest.fixture(autouse=True)
def clean_gpuledger(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test starts with no agent, no gpuledger/OTel environment, and its own directory."""
    for name in list(os.environ):
        if name.startswith(("GPULEDGER_", "OTEL_", "RUNPOD_", "MODAL_", "COG_", "REPLICATE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    # The day price editions are judged stale on: fixed, so no warning starts appearing in a
    # test's output by itself as the calendar moves (tests of the warning set their own).
    monkeypatch.setattr(cli_options, "today", lambda: TODAY)
    _config.reset_for_tests()
    yield
    _config.reset_for_tests()


@pytest.fixture
def clock() -> FakeClock:
    """A controllable clock."""
    return FakeClock()


@pytest.fixture
def telemetry(
    tmp_path: Path, clock: FakeClock, request: pytest.FixtureRequest
) -> Iterator[Telemetry]:
    """gpuledger configured on RunPod/H100 with in-memory span and metric exporters, priced by
    the default edition, or the one a ``@pytest.mark.pricing("<edition>")`` names."""
    marker = request.node.get_closest_marker("pricing")
    pricing = {"pricing": marker.args[0]} if marker is not None else {}
    with capture_telemetry(
        tmp_path / "ledger.db",
        clock=clock,
        platform="runpod",
        gpu="H100",
        **pricing,
        service_name="test-service",
        # Deterministic on any machine: GPU tests replay recorded NVML (tests/test_gpu*.py).
        gpu_metering="off",
    ) as capture:
        yield capture
        if "no_internal_errors" in request.fixturenames:
            # The capture's reset forgets the counts: check them first, whatever the order.
            assert _guard.error_counts() == {}


@pytest.fixture
def no_internal_errors() -> Iterator[None]:
    """Fail the test if gpuledger counted any internal failure."""
    yield
    assert _guard.error_counts() == {}
