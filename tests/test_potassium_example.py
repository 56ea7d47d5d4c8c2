"""examples/potassium/app.py served by the real Potassium 0.5 on 127.0.0.1, with gpuledger."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuledger.ledger import open_ledger
from tests.support.ledgers import ledger_rows, make_record
from tests.support.processes import HOST, free_port, log_tail, spawn, stop
from tests.support.upstreams import POTASSIUM_VERSION
from tests.support.venvs import (
    PYTHON_VERSION,
    cached_venv,
    gpuledger_dependencies,
    link_gpuledger,
    venv_or_skip,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "potassium" / "app.py"


def _venv() -> Path:
    """The Python of a cached venv with Potassium and gpuledger's dependencies (not gpuledger)."""
    requirements = [f"potassium=={POTASSIUM_VERSION}", *gpuledger_dependencies()]
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:10]
    venv = cached_venv(
        f"potassium-{POTASSIUM_VERSION}-gpuledger-deps-{key}-py{PYTHON_VERSION}",
        requirements,
        lambda venv: [str(venv / "bin" / "python"), "-c", "import potassium, structlog, wrapt"],
    )
    return venv / "bin" / "python"


@pytest.fixture(scope="session")
def potassium_gpuledger_python() -> Path:
    """Python with Potassium and gpuledger's dependencies; gpuledger itself comes by PYTHONPATH."""
    return venv_or_skip(_venv, f"potassium=={POTASSIUM_VERSION} + gpuledger's dependencies")


def _source_tree(into: Path) -> Path:
    """A ``gpuledger`` package of links to this checkout, for the server's PYTHONPATH."""
    return link_gpuledger(into)


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


@pytest.fixture
def served_example(potassium_gpuledger_python: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with _served(potassium_gpuledger_python, tmp_path) as (url, ledger, _):
        yield url, ledger


@contextlib.contextmanager
def _served(
    python: Path,
    tmp_path: Path,
    flush_policy: str = "invocation",
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """The example app served by Potassium: (its URL, its ledger, its process)."""
    potassium_gpuledger_python = python
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
        "GPULEDGER_FLUSH_POLICY": flush_policy,
        "EXAMPLE_MODEL_LOAD_S": "0.5",
        **(extra_env or {}),
    }
    log = tmp_path / "potassium.log"
    proc = spawn([str(potassium_gpuledger_python), str(EXAMPLE)], log, env=env, cwd=tmp_path)
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
        yield url, ledger, proc
    finally:
        stop(proc, timeout=10)
        print(log_tail(log))


@pytest.mark.slow
def test_sigterm_after_a_request_keeps_its_row(
    potassium_gpuledger_python: Path, tmp_path: Path
) -> None:
    """Potassium runs @app.init (where gpuledger configures) off the main thread, where no
    SIGTERM handler can be set: the hooks are installed when the handlers are decorated, at
    import. A SIGTERM right after a request (periodic flush: nothing written yet) still writes
    its row, and the process ends by SIGTERM as it would without gpuledger."""
    with _served(potassium_gpuledger_python, tmp_path, flush_policy="periodic") as served:
        url, ledger, proc = served
        status, _ = post(url, {"prompt": "hello world"}, {"X-Banana-Request-Id": "b-term"})
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == -signal.SIGTERM
    (row,) = ledger_rows(ledger, 1, timeout=1)
    assert row["invocation_id"] == "b-term"


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
    # Banana's serverless GPUs were sunset: the default edition has no Banana price, and the
    # row says so (its time is still recorded; --pricing seed-2026-03 prices it as the seed did).
    assert cold["cost_usd"] is None
    assert cold["cost_source"] == (
        "unpriced: banana (sunset 2024-02-01) has no price in published-2026-12; "
        "price it with --pricing seed-2026-03 or a pricing file"
    )
    assert cold["billed_gpu_seconds"] > 0

    assert warm["cold"] == 0
    assert warm["init_duration_s"] is None
    assert len(warm["invocation_id"]) == 36  # Potassium's uuid4 when Banana sent no id

    assert failed["invocation_id"] == "b-3"
    assert (failed["outcome"], failed["error_type"]) == ("error", "KeyError")


@pytest.mark.slow
def test_a_tenant_over_an_enforced_budget_is_answered_429(
    potassium_gpuledger_python: Path, tmp_path: Path
) -> None:
    """Through the real Potassium: the tenant (the payload's "team", read on entry) whose
    budget the ledger shows spent is answered 429 with Retry-After and a JSON reason, and the
    handler never runs; another tenant is served."""
    with open_ledger(str(tmp_path / "ledger.db")) as opened:
        opened.write([make_record(1, tenant="acme", start_ns=time.time_ns(), cost_usd=2.0)])
    budgets = [
        {"scope": "tenant", "key": "acme", "window": "1d", "limit_usd": 1, "mode": "enforce"}
    ]
    env = {"GPULEDGER_BUDGETS": json.dumps(budgets)}
    with _served(potassium_gpuledger_python, tmp_path, extra_env=env) as (url, ledger, _):
        refused = post(url, {"prompt": "hi", "team": "acme"}, {})
        served = post(url, {"prompt": "hi", "team": "globex"}, {})
        rows = ledger_rows(ledger, 3)
    status, body = refused
    assert status == 429, body
    reason = json.loads(body)
    assert (reason["error"], reason["key"], reason["window"]) == ("budget_exceeded", "acme", "1d")
    assert served[0] == 200
    by_tenant = {row["tenant"]: row for row in rows[1:]}
    assert by_tenant["acme"]["outcome"] == "rejected"
    assert by_tenant["acme"]["output_tokens"] is None
    assert by_tenant["globex"]["outcome"] == "ok"
