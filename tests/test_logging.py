"""The agent's own log lines: quiet by default, readable or JSON when asked."""

from __future__ import annotations

import json

import pytest

import gpuledger


def test_warning_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    """GPULEDGER_LOG_FORMAT=json gives one JSON object per line, with the event and context."""
    gpuledger.configure(platform="runpod", gpu="T4", exporters="none", log_format="json")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    event = json.loads(line)
    assert event["level"] == "warning"
    assert event["gpu"] == "T4"
    assert "no price" in event["event"]
    assert event["logger"] == "gpuledger"


def test_console_format_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    """The default format is a human-readable line, not JSON."""
    gpuledger.configure(platform="runpod", gpu="T4", exporters="none")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no price for this platform and GPU" in line
    assert "gpu=T4" in line
    assert not line.startswith("{")


def test_quiet_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    """A normal configuration and invocation print nothing at the default level."""
    gpuledger.configure(platform="runpod", gpu="H100", exporters="none")

    @gpuledger.traced_handler
    def handler() -> int:
        return 1

    handler()
    gpuledger.flush(5)
    assert capsys.readouterr().err == ""


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    """log_level=error hides warnings."""
    gpuledger.configure(platform="runpod", gpu="T4", exporters="none", log_level="error")
    assert capsys.readouterr().err == ""
