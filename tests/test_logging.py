"""The agent's own log lines: quiet by default, readable or JSON when asked."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from pathlib import Path

import pytest

import gpuledger
from gpuledger import _guard, _logging
from gpuledger._logging import get_logger


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


class _SlotWriter:
    """A stream like Cog's ``_SlotLogWriter``: has ``write``, cannot be weakly referenced."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass


class _RaisingStream:
    """A stream whose every write fails."""

    def write(self, text: str) -> int:
        raise OSError("stream broken")

    def flush(self) -> None:
        raise OSError("stream broken")


def _serve_three(ledger: Path) -> list[int]:
    @gpuledger.traced_handler
    def handler(value: int) -> int:
        return value * 2

    results = [handler(value) for value in range(3)]
    assert gpuledger.flush(5), "the writer did not finish"
    with sqlite3.connect(ledger) as connection:
        assert connection.execute("SELECT count(*) FROM invocations").fetchone() == (3,)
    return results


def test_a_stream_that_cannot_be_weakly_referenced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Cog's stderr cannot be weakly referenced: a warning at configure neither raises nor is
    lost, and the writer thread still writes every record."""
    stream = _SlotWriter()
    monkeypatch.setattr(sys, "stderr", stream)
    ledger = tmp_path / "ledger.db"
    gpuledger.configure(platform="runpod", gpu="MadeUpGPU-9000", exporters="none", ledger=ledger)
    assert any("no price" in line for line in stream.lines)
    assert _serve_three(ledger) == [0, 2, 4]


def test_a_stream_replaced_after_configuration_is_honoured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The line goes to whatever sys.stderr is at the time of writing, not at configuration."""
    gpuledger.configure(platform="runpod", gpu="H100", exporters="none", ledger=tmp_path / "l.db")
    stream = _SlotWriter()
    monkeypatch.setattr(sys, "stderr", stream)
    get_logger().warning("a line after the platform replaced the stream", n=1)
    assert any("a line after the platform" in line for line in stream.lines)


def test_a_closed_stream_falls_back_to_the_original_stderr(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A closed sys.stderr: the line reaches file descriptor 2 instead, nothing raises."""
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    monkeypatch.setattr(sys, "__stderr__", None)
    ledger = tmp_path / "ledger.db"
    gpuledger.configure(platform="runpod", gpu="MadeUpGPU-9000", exporters="none", ledger=ledger)
    assert "no price" in capfd.readouterr().err
    assert _serve_three(ledger) == [0, 2, 4]
    assert "log.write" not in _guard.error_counts()


def test_when_every_stream_fails_the_line_is_counted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A raising stream, no original stream, fd 2 unusable: dropped, counted, never raised."""
    monkeypatch.setattr(sys, "stderr", _RaisingStream())
    monkeypatch.setattr(sys, "__stderr__", _RaisingStream())
    monkeypatch.setattr(_logging, "_write_fd", lambda line: False)
    ledger = tmp_path / "ledger.db"
    gpuledger.configure(platform="runpod", gpu="MadeUpGPU-9000", exporters="none", ledger=ledger)
    assert _serve_three(ledger) == [0, 2, 4]
    assert _guard.error_counts()["log.write"] >= 1


def test_a_value_that_cannot_be_rendered_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A field whose repr raises breaks the renderer: the line is dropped and counted."""

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

        __str__ = __repr__

    gpuledger.configure(platform="runpod", gpu="H100", exporters="none")
    get_logger().warning("odd value", value=Unprintable())
    assert _guard.error_counts()["log.write"] == 1


def test_a_stream_that_logs_does_not_recurse(monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform stream whose write logs through gpuledger again: one line, no recursion."""

    class Echo(_SlotWriter):
        __slots__ = ()

        def write(self, text: str) -> int:
            get_logger().warning("echo")
            return super().write(text)

    stream = Echo()
    monkeypatch.setattr(sys, "stderr", stream)
    gpuledger.configure(platform="runpod", gpu="H100", exporters="none")
    get_logger().warning("outer")
    assert len(stream.lines) == 1
    assert "outer" in stream.lines[0]


def test_writer_thread_survives_a_replaced_stream(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The background writer logs through the same guarded sink on its own thread: a ledger
    that fails is said into Cog's kind of stream, and once it recovers every record is written
    (before, the writer thread died on its first log line and flush() waited out its timeout)."""
    stream = _SlotWriter()
    monkeypatch.setattr(sys, "stderr", stream)
    folder = tmp_path / "ledgers"
    folder.mkdir()
    ledger = folder / "ledger.db"
    gpuledger.configure(platform="runpod", gpu="H100", exporters="none", ledger=ledger)
    folder.rmdir()
    folder.write_text("not a folder any more")  # the writer's first batch fails, and says so

    @gpuledger.traced_handler
    def handler(value: int) -> int:
        return value * 2

    assert [handler(value) for value in range(3)] == [0, 2, 4]
    gpuledger.flush(5)
    assert any("CANNOT WRITE ITS LEDGER" in line for line in stream.lines)
    folder.unlink()
    folder.mkdir()
    assert handler(3) == 6  # held records are retried with the next batch
    assert gpuledger.flush(5), "the writer thread is gone"
    with sqlite3.connect(ledger) as connection:
        assert connection.execute("SELECT count(*) FROM invocations").fetchone() == (4,)


def test_log_once_counts_every_failure_says_the_first_and_never_raises(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One log-once for the worker and the sidecar: each failure counted, the first said, none
    raised even under strict (the sidecar's had its own copy, which counted nothing)."""
    _guard.set_strict(True)
    for attempt in range(3):
        _guard.log_once("sidecar.watch", "the watcher failed", RuntimeError(f"try {attempt}"))
    assert _guard.error_counts()["sidecar.watch"] == 3
    err = capsys.readouterr().err
    assert err.count("the watcher failed") == 1
    assert "try 0" in err
