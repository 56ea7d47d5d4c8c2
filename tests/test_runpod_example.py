"""The RunPod example worker (examples/runpod/handler.py), run through the real runpod SDK.

Each test starts the worker as its own process, the way RunPod's docs run it locally, and then
reads what gpuledger left behind: the SQLite ledger and the console spans on stdout.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.processes import free_port

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "runpod" / "handler.py"
ASYNC_EXAMPLE = EXAMPLE.with_name("async_handler.py")
MODEL_LOAD_S = 0.3
"""What the tests ask the example's model load to take (EXAMPLE_MODEL_LOAD_S), in seconds."""
RUNPOD_EXECUTION_FEE_USD = 0.0  # published-2026-12: RunPod lists no per-request fee
RUNPOD_H100_USD_PER_GPU_SECOND = 0.00116
RUN_TIMEOUT_S = 60
READY_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15


def worker_env(tmp_path: Path) -> dict[str, str]:
    """The environment for a worker process: local runpod, gpuledger writing to tmp_path."""
    # Variables from the calling shell could put runpod in worker mode (it would poll RunPod's
    # queue) or change gpuledger's settings, so none of them is passed on.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("RUNPOD_", "GPULEDGER_", "OTEL_", "EXAMPLE_"))
    }
    env.update(
        GPULEDGER_LEDGER=str(tmp_path / "ledger.db"),
        GPULEDGER_PLATFORM="runpod",
        GPULEDGER_GPU="H100",
        GPULEDGER_EXPORTERS="console",
        GPULEDGER_STRICT="1",
        EXAMPLE_MODEL_LOAD_S=str(MODEL_LOAD_S),
        RUNPOD_LOG_LEVEL="INFO",
        UVICORN_LOG_LEVEL="warning",
        # The SDK's own start-up checks of the machine (10% of the disk free, a GPU, CUDA) judge
        # the host, not gpuledger: a full disk on a test machine would kill the worker.
        RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true",
    )
    return env


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Every row of the ledger's invocations table, oldest first; none if there is no ledger."""
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        try:
            rows = db.execute("SELECT * FROM invocations ORDER BY start_ns").fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise
        return [dict(row) for row in rows]


def console_spans(stdout: str) -> list[dict[str, Any]]:
    """The spans ConsoleSpanExporter printed (indented JSON objects) among runpod's log lines."""
    decoder = json.JSONDecoder()
    spans: list[dict[str, Any]] = []
    resume_at = 0
    for match in re.finditer(r"^\{", stdout, flags=re.MULTILINE):
        if match.start() < resume_at:
            continue
        try:
            value, resume_at = decoder.raw_decode(stdout, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and {"context", "attributes"} <= value.keys():
            spans.append(value)
    return spans


def span_for(spans: list[dict[str, Any]], invocation_id: str) -> dict[str, Any]:
    """The one span whose faas.invocation_id is ``invocation_id``."""
    matching = [s for s in spans if s["attributes"].get("faas.invocation_id") == invocation_id]
    assert len(matching) == 1, f"{len(matching)} spans for {invocation_id}: {spans}"
    return matching[0]


def assert_runpod_h100_cost(row: dict[str, Any]) -> None:
    """The row is priced as RunPod serverless on an H100, and its total is the sum of its parts."""
    assert row["billed_gpu_seconds"] == pytest.approx(row["duration_s"] * row["gpu_count"])
    # The record holds the request's own charge as known at its end: its fee, its GPU time
    # unrounded, and the init it waited for (RunPod bills model loading). The whole-second
    # rounding is the worker's billing span's: `gpuledger report` bills it with the worker.
    init_gpu_seconds = (row["init_duration_s"] or 0.0) * row["gpu_count"]
    assert row["cost_execution_usd"] == pytest.approx(RUNPOD_EXECUTION_FEE_USD)
    assert row["cost_gpu_usd"] == pytest.approx(
        RUNPOD_H100_USD_PER_GPU_SECOND * row["billed_gpu_seconds"]
    )
    assert row["cost_coldstart_usd"] == pytest.approx(
        RUNPOD_H100_USD_PER_GPU_SECOND * init_gpu_seconds
    )
    assert row["cost_usd"] == pytest.approx(
        RUNPOD_EXECUTION_FEE_USD
        + RUNPOD_H100_USD_PER_GPU_SECOND * (row["billed_gpu_seconds"] + init_gpu_seconds)
    )
    # The worker's rules, frozen with the record.
    rules = json.loads(row["billing_rules"])
    assert rules["increment_ns"] == 1_000_000_000
    assert Fraction(rules["per_gpu_second_usd"]) == Fraction(str(RUNPOD_H100_USD_PER_GPU_SECOND))
    assert row["billing_worker"] and row["worker_start_ns"] <= row["start_ns"]
    assert row["cost_usd"] == pytest.approx(
        row["cost_execution_usd"] + row["cost_gpu_usd"] + row["cost_coldstart_usd"]
    )


def wait_until_serving(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll the worker's API until it answers; fail if it exits or takes over READY_TIMEOUT_S."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"worker exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"worker not serving after {READY_TIMEOUT_S} s:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes], stop_signal: signal.Signals) -> int | None:
    """Send ``stop_signal`` and wait for the exit; kill after STOP_TIMEOUT_S (then None)."""
    if process.poll() is not None:
        return process.returncode
    os.kill(process.pid, stop_signal)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


@contextlib.contextmanager
def serving_worker(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """The example worker serving runpod's local API; killed on exit if still running."""
    port = free_port()
    log = tmp_path / "worker.log"
    command = [
        sys.executable, str(EXAMPLE),
        "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port),
    ]  # fmt: skip
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=worker_env(tmp_path), stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_until_serving(base_url, process, log)
            yield base_url, process, log
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def post_runsync(base_url: str, job_input: dict[str, Any]) -> dict[str, Any]:
    """POST one job to the worker's /runsync and return its JSON answer."""
    request = urllib.request.Request(
        f"{base_url}/runsync",
        data=json.dumps({"input": job_input}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=RUN_TIMEOUT_S) as response:
        answer: dict[str, Any] = json.load(response)
    return answer


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """The example module, imported without running its start-up (that is under __main__)."""
    spec = importlib.util.spec_from_file_location("runpod_example_handler", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_test_input_job_writes_one_cold_priced_row_and_span(tmp_path: Path) -> None:
    """One --test_input job leaves one cold, priced, user-tagged ledger row and a cold span."""
    job = {"id": "job-1", "input": {"prompt": "hello cold gpu", "user": "user-42"}}

    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--test_input", json.dumps(job)],
        cwd=tmp_path, env=worker_env(tmp_path), capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_ledger(tmp_path / "ledger.db")
    assert len(rows) == 1, f"{len(rows)} rows:\n{result.stdout}{result.stderr}"
    (row,) = rows
    assert row["invocation_id"] == "job-1"
    assert row["outcome"] == "ok"
    assert row["platform"] == "runpod"
    assert row["gpu_model"] == "H100"
    assert row["cold"] == 1
    init_phases = json.loads(row["init_phases"])
    assert init_phases["model_load"] >= MODEL_LOAD_S
    assert row["init_duration_s"] > init_phases["model_load"]
    assert row["user_id"] == "user-42"
    assert (row["input_tokens"], row["output_tokens"]) == (3, 16)
    assert_runpod_h100_cost(row)
    span = span_for(console_spans(result.stdout), "job-1")
    assert span["attributes"]["faas.coldstart"] is True


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_served_jobs_are_ledgered_cold_then_warm(
    tmp_path: Path, example: ModuleType, stop_signal: signal.Signals
) -> None:
    """Two /runsync jobs keep their outputs and, once the worker is stopped, are both ledgered."""
    model = example.ToyModel.load(load_seconds=0, seconds_per_token=0)
    prompts = ["first request pays the cold start", "second request finds the worker warm"]

    with serving_worker(tmp_path) as (base_url, process, log):
        answers = [post_runsync(base_url, {"prompt": prompt, "user": "u-7"}) for prompt in prompts]
        exit_code = stop(process, stop_signal)

    stdout = log.read_text()
    assert exit_code is not None, f"worker ignored {stop_signal.name}:\n{stdout}"
    for answer, prompt in zip(answers, prompts, strict=True):
        assert answer["status"] == "COMPLETED", answer
        assert answer["output"] == {"output": model.generate(prompt, example.DEFAULT_MAX_TOKENS)}
    rows = read_ledger(tmp_path / "ledger.db")
    assert len(rows) == 2, f"{len(rows)} rows after {stop_signal.name}:\n{stdout}"
    first, second = rows
    assert [row["invocation_id"] for row in rows] == [answer["id"] for answer in answers]
    assert [row["outcome"] for row in rows] == ["ok", "ok"]
    assert [row["cold"] for row in rows] == [1, 0]
    assert first["init_duration_s"] > MODEL_LOAD_S
    assert second["init_duration_s"] is None
    assert second["idle_gap_s"] > 0
    assert second["start_ns"] >= first["end_ns"]
    for row in rows:
        assert row["user_id"] == "u-7"
        assert_runpod_h100_cost(row)
    spans = console_spans(stdout)
    assert span_for(spans, answers[0]["id"])["attributes"]["faas.coldstart"] is True
    assert span_for(spans, answers[1]["id"])["attributes"].get("faas.coldstart", False) is False


@pytest.mark.slow
def test_streaming_refuses_the_one_job_mode_that_would_record_nothing(tmp_path: Path) -> None:
    """``async_handler.py --stream`` in the SDK's one-job mode (test_input.json): the SDK would
    return the stream unread, nothing run or recorded, so the example stops and says what to do."""
    (tmp_path / "test_input.json").write_text('{"id": "job-1", "input": {"tokens": 3}}')

    result = subprocess.run(
        [sys.executable, str(ASYNC_EXAMPLE), "--stream"],
        cwd=tmp_path, env=worker_env(tmp_path), capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip

    assert result.returncode != 0, result.stdout + result.stderr
    assert "--rp_serve_api" in result.stderr
    assert read_ledger(tmp_path / "ledger.db") == []
