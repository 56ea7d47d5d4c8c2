"""``gpuledger.testing``: the capture, its pytest plugin, ``FakeClock`` and ``make_record``.

The README's "Testing your handlers" file is run as written there, with pytest in a fresh
interpreter, as a user runs it; the rest test the kit's promises one by one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import gpuledger
from gpuledger import InvocationRecord, _config
from gpuledger.testing import (
    RECORDS_START_NS,
    Capture,
    FakeClock,
    capture_telemetry,
    make_record,
)

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "gpuledger.testing.pytest_plugin"


def readme_example() -> str:
    """The test file of the README's "Testing your handlers", between its markers."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(
        r"<!-- begin test_example.py -->\n```python\n(.*?)```\n<!-- end test_example.py -->",
        readme,
        re.DOTALL,
    )
    assert found is not None, "README: the test_example.py block or its markers are gone"
    return found.group(1)


def run_pytest(
    folder: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """pytest in a fresh interpreter, in ``folder``, as a user runs it: no setting of ours."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("GPULEDGER_", "OTEL_", "PYTEST_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=folder,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- the README's example, and the plugin ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "env"),
    [
        ((), {}),
        (("-p", PLUGIN), {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}),
    ],
    ids=["autoloaded", "named"],
)
def test_the_readme_example_passes(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    """The README's file passes under pytest, the fixture found by the plugin's entry point or
    named with ``-p``; a shell's GPULEDGER_* settings do not reach it."""
    example = readme_example()
    (tmp_path / "test_example.py").write_text(example, encoding="utf-8")
    count = len(re.findall(r"^def test_", example, re.MULTILINE))
    # Settings that would fail the example, were they seen: no spans, user ids hashed.
    hostile = {"GPULEDGER_TRACING": "false", "GPULEDGER_PSEUDONYMIZE_USERS": "true"}
    completed = run_pytest(tmp_path, *args, "test_example.py", env={**env, **hostile})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert f"{count} passed" in completed.stdout
    assert count >= 4


@pytest.mark.slow
def test_the_plugin_can_be_turned_off(tmp_path: Path) -> None:
    """``-p no:gpuledger.testing.pytest_plugin`` removes the fixture (the entry point is named as
    its module, so ``-p`` and ``-p no:`` agree)."""
    (tmp_path / "test_off.py").write_text(
        "def test_uses_it(gpuledger_capture):\n    pass\n", encoding="utf-8"
    )
    completed = run_pytest(tmp_path, "-p", f"no:{PLUGIN}", "test_off.py")
    assert completed.returncode == 1
    assert "fixture 'gpuledger_capture' not found" in completed.stdout


def test_the_plugin_is_an_entry_point_named_as_its_module() -> None:
    """pytest finds the plugin through gpuledger's metadata (pyproject's ``pytest11``)."""
    found = [each for each in entry_points(group="pytest11") if each.value == PLUGIN]
    assert [each.name for each in found] == [PLUGIN]


def test_loading_the_plugin_is_light() -> None:
    """pytest loads the plugin in every session: it imports no more than ``import gpuledger``
    (no OpenTelemetry SDK, NVML, SQLite, ...) and starts no thread."""
    probe = """
import json, sys, threading
import pytest
before = set(sys.modules)
import gpuledger.testing.pytest_plugin
heavy = sorted(
    name for name in set(sys.modules) - before
    if name.split(".")[0] in {"opentelemetry", "pynvml", "structlog", "sqlite3", "tomllib",
                              "click", "wrapt", "asyncio", "grpc", "google", "psycopg"}
    or name == "gpuledger.testing.nvml"
)
print(json.dumps({"heavy": heavy, "threads": threading.active_count()}))
"""
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(completed.stdout) == {"heavy": [], "threads": 1}


# --- the capture ---------------------------------------------------------------------------------


def test_capture_gives_records_rows_spans_and_metric_points(tmp_path: Path) -> None:
    """A handler's invocation is in the ledger (as a record and as a row), a span and the
    metrics, on the capture's clock."""
    with capture_telemetry(tmp_path / "l.db", service_name="svc-under-test") as capture:

        @gpuledger.traced_handler(name="handler")
        def handler(job: dict[str, str]) -> str:
            gpuledger.tag(user=job["user"])
            capture.clock.advance(1.5)
            return "ok"

        handler({"user": "alice"})
        (record,) = capture.records()
        (row,) = capture.rows()
        spans = capture.spans("handler")
        durations = capture.metric_points("faas.invoke_duration")
    assert isinstance(record, InvocationRecord)
    assert (record.service_name, record.user_id, record.duration_s) == (
        "svc-under-test",
        "alice",
        1.5,
    )
    assert record.start_ns == FakeClock.START_NS
    assert row["record_id"] == record.record_id
    assert row["cold"] == 1  # as stored: a boolean is 0 or 1
    assert [span.name for span in spans] == ["handler"]
    assert {span.attributes["gpuledger.record_id"] for span in spans} == {record.record_id}
    assert [point.count for point in durations] == [1]
    assert capture.ledger_path == tmp_path / "l.db"


def test_capture_reads_nothing_before_an_invocation() -> None:
    """Before the writer's first batch there is no ledger file: no records, no rows."""
    with capture_telemetry() as capture:
        assert capture.records() == []
        assert capture.rows() == []
        assert capture.spans() == []
        assert capture.metric_points("faas.invocations") == []


def test_capture_defaults_and_settings_that_win(tmp_path: Path) -> None:
    """NVML off and strict by default; the settings passed win, the clock given is used."""
    clock = FakeClock(start_ns=10**18)
    with capture_telemetry(tmp_path / "l.db", clock=clock) as capture:
        agent = _config.current_agent()
        assert agent is not None
        assert (agent.settings.gpu_metering, agent.settings.strict) == ("off", True)
        assert agent.settings.clock is clock is capture.clock
        assert agent.settings.ledger == str(tmp_path / "l.db")
    with capture_telemetry(tmp_path / "m.db", strict=False, platform="modal"):
        agent = _config.current_agent()
        assert agent is not None
        assert (agent.settings.strict, agent.settings.platform) == (False, "modal")


def test_capture_resets_gpuledger_on_the_way_in_and_out() -> None:
    """A configuration made before is replaced, and nothing of the capture's outlives it: no
    agent, and the worker state forgotten (the next capture's first request is cold again)."""
    gpuledger.configure(ledger=":memory:", tracing=False, metrics=False)
    before = _config.current_agent()
    for _ in range(2):
        with capture_telemetry() as capture:
            assert _config.current_agent() is not before

            @gpuledger.traced_handler
            def handler() -> None:
                pass

            handler()
            (record,) = capture.records()
            assert record.cold is True
        assert _config.current_agent() is None


def test_capture_removes_its_temporary_ledger() -> None:
    """Without a ledger given, the ledger's folder is made for the capture and removed after."""
    with capture_telemetry() as capture:

        @gpuledger.traced_handler
        def handler() -> None:
            pass

        handler()
        assert len(capture.records()) == 1
        folder = capture.ledger_path.parent
        assert folder.is_dir()
    assert not folder.exists()


def test_a_bad_setting_raises_and_leaves_nothing_configured() -> None:
    """A setting configure() refuses raises ConfigError out of the capture, which resets."""
    with (
        pytest.raises(gpuledger.ConfigError, match="flush_policy"),
        capture_telemetry(flush_policy="sometimes"),
    ):
        pytest.fail("the capture started with a bad setting")
    assert _config.current_agent() is None


def test_capture_is_the_suites_telemetry_fixture(telemetry: Capture) -> None:
    """tests/conftest.py's ``telemetry`` is the public capture (so the whole suite uses it)."""
    assert isinstance(telemetry, Capture)
    agent = _config.current_agent()
    assert agent is not None
    assert agent.settings.clock is telemetry.clock


# --- FakeClock -----------------------------------------------------------------------------------


def test_fake_clock_moves_only_when_told() -> None:
    """Both clocks stand still until advance() moves them, together, to the nanosecond; the
    process started ``process_age_s`` before the start."""
    clock = FakeClock(start_ns=2_000 * 10**9, process_age_s=3.0)
    wall, perf = clock.time_ns(), clock.perf_counter_ns()
    assert (clock.time_ns(), clock.perf_counter_ns()) == (wall, perf)
    clock.advance(0.25)
    assert clock.time_ns() - wall == clock.perf_counter_ns() - perf == 250_000_000
    assert clock.process_start_ns() == 2_000 * 10**9 - 3 * 10**9
    assert FakeClock().time_ns() == FakeClock.START_NS


# --- make_record ---------------------------------------------------------------------------------


def test_make_record_defaults() -> None:
    """A warm, successful one-second request at RECORDS_START_NS, billed for its duration, with
    every optional field unknown and a new record_id each time."""
    record = make_record()
    assert (record.handler, record.service_name, record.platform) == ("predict", "svc", "runpod")
    assert (record.start_ns, record.end_ns) == (RECORDS_START_NS, RECORDS_START_NS + 10**9)
    assert (record.duration_s, record.billed_gpu_seconds, record.outcome) == (1.0, 1.0, "ok")
    assert (record.invocation_id, record.cold) == ("job-0", False)
    assert record.cost_usd is None
    assert record.user_id is None
    assert make_record().record_id != record.record_id


def test_make_record_offsets_durations_and_fields() -> None:
    """The offset places the start, the duration the end and the billed time (x gpu_count);
    fields named are set; start_ns= places the request at an instant."""
    record = make_record(90, 2.5, gpu_count=2, user_id="alice")
    assert record.start_ns == RECORDS_START_NS + 90 * 10**9
    assert record.end_ns - record.start_ns == 2_500_000_000
    assert (record.invocation_id, record.billed_gpu_seconds) == ("job-90", 5.0)
    assert record.user_id == "alice"
    assert make_record(0.5).invocation_id == "job-0.5"
    at = make_record(start_ns=123, duration_s=1.0, billed_gpu_seconds=0.0)
    assert (at.start_ns, at.end_ns, at.billed_gpu_seconds) == (123, 123 + 10**9, 0.0)
    assert dataclasses.replace(at, record_id="x").record_id == "x"


def test_make_record_without_a_duration() -> None:
    """A NaN duration (a broken clock) ends the request where it starts and bills nothing."""
    record = make_record(duration_s=math.nan)
    assert math.isnan(record.duration_s)
    assert (record.end_ns, record.billed_gpu_seconds) == (record.start_ns, 0.0)


def test_make_record_refuses_an_unknown_field() -> None:
    """A misspelt field raises TypeError rather than being dropped."""
    with pytest.raises(TypeError, match="cost_us"):
        make_record(cost_us=1.0)
