"""examples/potassium/app.py served by the real Potassium 0.5 on 127.0.0.1, with gpuledger."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import HOST, _spawn, free_port, in_ci, log_tail, stop
from tests.upstreams import POTASSIUM_VERSION, VenvUnavailable, _run_step, cache_dir

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "potassium" / "app.py"
# gpuledger's own dependencies (pyproject.toml), next to Potassium's pins.
GPULEDGER_DEPENDENCIES = (
    "opentelemetry-api>=1.27",
    "opentelemetry-sdk>=1.27",
    "opentelemetry-exporter-otlp-proto-http>=1.27",
    "nvidia-ml-py>=12.535",
    "wrapt>=1.16",
    "structlog>=24.1",
    "click>=8.1",
)


def _venv() -> Path:
    """The Python of a cached venv with Potassium and gpuledger's dependencies (not gpuledger)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = cache_dir()
    venv = root / f"potassium-{POTASSIUM_VERSION}-gpuledger-deps-py{version}"
    python = venv / "bin" / "python"
    marker = venv / ".complete"
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{venv.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and os.access(python, os.X_OK):
            return python
        log = root / f"{venv.name}.log"
        log.write_bytes(b"")
        _run_step([sys.executable, "-m", "venv", "--clear", str(venv)], log, 120, "venv")
        pip = [str(python), "-m", "pip", "install", "--quiet", "--retries", "2", "--timeout", "30"]
        requirements = [f"potassium=={POTASSIUM_VERSION}", *GPULEDGER_DEPENDENCIES]
        _run_step([*pip, *requirements], log, 600, "pip install")
        marker.write_text("\n".join(requirements), encoding="utf-8")
        return python


@pytest.fixture(scope="session")
def potassium_gpuledger_python() -> Path:
    """Python with Potassium and gpuledger's dependencies; gpuledger itself comes by PYTHONPATH."""
    try:
        return _venv()
    except VenvUnavailable as error:
        if in_ci():
            pytest.fail(f"the Potassium venv could not be made: {error}", pytrace=False)
        pytest.skip(f"the Potassium venv could not be made (needs PyPI once): {error}")


def _source_tree(into: Path) -> Path:
    """A ``gpuledger`` package of links to this checkout (agent/ and its two subpackages)."""
    package = into / "gpuledger"
    package.mkdir(parents=True)
    for entry in (ROOT / "agent").iterdir():
        (package / entry.name).symlink_to(entry)
    (package / "instrumentation").symlink_to(ROOT / "instrumentation")
    (package / "exporters").symlink_to(ROOT / "exporters")
    return into


def post(url: str, payload: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def ledger_rows(path: Path, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The ledger's rows once there are ``count`` of them (the server writes them in batches)."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if path.exists():
            connection = sqlite3.connect(path)
            connection.row_factory = sqlite3.Row
            try:
                found = [
                    dict(row)
                    for row in connection.execute("SELECT * FROM invocations ORDER BY rowid")
                ]
            except sqlite3.OperationalError:
                found = []  # the table is not made yet
            finally:
                connection.close()
            if len(found) >= count:
                return found
        time.sleep(0.1)
    raise AssertionError(f"{len(found)} of {count} rows in the ledger after {timeout} s")


@pytest.fixture
def served_example(potassium_gpuledger_python: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    ledger = tmp_path / "ledger.db"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "PYTHONPATH": str(_source_tree(tmp_path / "src")),
        "PYTHONUNBUFFERED": "1",
        "HOST": HOST,
        "PORT": str(port),
        "GPULEDGER_LEDGER": str(ledger),
        "GPULEDGER_GPU": "H100",
        "GPULEDGER_FLUSH_POLICY": "invocation",
        "EXAMPLE_MODEL_LOAD_S": "0.5",
    }
    log = tmp_path / "potassium.log"
    proc = _spawn([str(potassium_gpuledger_python), str(EXAMPLE)], log, env=env, cwd=tmp_path)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # Potassium runs @app.init before it listens: any answer means ready
            assert proc.poll() is None, f"the app exited:\n{log_tail(log)}"
            try:
                urllib.request.urlopen(f"{url}/__status__", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"not ready:\n{log_tail(log)}"
                time.sleep(0.05)
        yield url, ledger
    finally:
        stop(proc, timeout=10)
        print(log_tail(log))


@pytest.mark.slow
def test_example_requests_are_recorded(served_example: tuple[str, Path]) -> None:
    """Cold first request with the init phase, warm later ones, Banana's id, a failure as 500."""
    url, ledger = served_example
    status, body = post(
        url, {"prompt": "hello world", "user": "alice"}, {"X-Banana-Request-Id": "b-1"}
    )
    assert status == 200
    first_output = json.loads(body)["output"]
    assert len(first_output.split()) == 16
    status, body = post(url, {"prompt": "hello world"}, {})
    assert (status, json.loads(body)["output"]) == (200, first_output)  # results unchanged
    status, body = post(url, {"no": "prompt"}, {"X-Banana-Request-Id": "b-3"})
    assert status == 500
    assert b"KeyError" in body  # Potassium's own 500: the traceback

    cold, warm, failed = ledger_rows(ledger, 3)
    assert cold["invocation_id"] == "b-1"
    assert cold["platform"] == "banana"
    assert cold["handler"] == "handler"
    assert cold["cold"] == 1
    assert cold["user_id"] == "alice"
    assert cold["output_tokens"] == 16
    assert json.loads(cold["init_phases"])["init"] >= 0.5
    assert cold["cost_usd"] is not None and cold["cost_usd"] > 0

    assert warm["cold"] == 0
    assert warm["init_duration_s"] is None
    assert len(warm["invocation_id"]) == 36  # Potassium's uuid4 when Banana sent no id

    assert failed["invocation_id"] == "b-3"
    assert (failed["outcome"], failed["error_type"]) == ("error", "KeyError")
