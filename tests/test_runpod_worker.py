"""The RunPod SDK in worker mode, against a local stand-in for RunPod's job queue.

``runpod.serverless.start`` runs here exactly as on RunPod: it takes jobs from the URL in
``RUNPOD_WEBHOOK_GET_JOB`` (several at once with a ``concurrency_modifier``), runs the handler,
streams partial results to ``RUNPOD_WEBHOOK_POST_STREAM`` and posts results to
``RUNPOD_WEBHOOK_POST_OUTPUT``. The stand-in queue serves a fixed list of jobs and records what
comes back; the ledger says what gpuledger saw.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuledger.ledger import open_ledger
from tests.support.ledgers import make_record, union_length

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "runpod" / "async_handler.py"


class Queue:
    """RunPod's job API, as far as a worker uses it."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = list(jobs)
        self.results: dict[str, Any] = {}
        self.streamed: dict[str, list[Any]] = {}
        self.lock = threading.Lock()
        queue = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                with queue.lock:
                    if url.path.startswith("/job-take-batch/"):
                        count = int(query.get("batch_size", "1"))
                        taken, queue.jobs = queue.jobs[:count], queue.jobs[count:]
                        body: Any = taken or None
                    elif url.path.startswith("/job-take/"):
                        body = queue.jobs.pop(0) if queue.jobs else None
                    else:  # /job-stop/: the jobs to cancel; none here
                        body = None
                if body is None:
                    self.send_response(204)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                job_id = url.path.rsplit("/", 1)[-1]
                with queue.lock:
                    if url.path.startswith("/job-stream/"):
                        queue.streamed.setdefault(job_id, []).append(data)
                    else:
                        queue.results[job_id] = data
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for_results(self, count: int, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.results) >= count:
                    return dict(self.results)
            time.sleep(0.05)
        pytest.fail(f"{len(self.results)} of {count} results came back")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def run_worker(tmp_path: Path) -> Iterator[Any]:
    started: list[tuple[subprocess.Popen[str], Queue]] = []

    def start(
        jobs: list[dict[str, Any]], *args: str, extra_env: dict[str, str] | None = None
    ) -> tuple[Queue, Path]:
        queue = Queue(jobs)
        ledger = tmp_path / "ledger.db"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RUNPOD_", "GPULEDGER_", "OTEL_", "EXAMPLE_"))
        }
        env.update(
            RUNPOD_WEBHOOK_GET_JOB=f"{queue.base}/job-take/$ID?gpu=H100",
            RUNPOD_WEBHOOK_POST_OUTPUT=f"{queue.base}/job-done/$RUNPOD_POD_ID/$ID?gpu=H100",
            RUNPOD_WEBHOOK_POST_STREAM=f"{queue.base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=H100",
            RUNPOD_AI_API_KEY="test-key",
            # The SDK's start-up checks of the machine (free disk share, GPU) judge the host.
            RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true",
            RUNPOD_POD_ID="worker-7",
            RUNPOD_ENDPOINT_ID="endpoint-llm",
            RUNPOD_DC_ID="EU-RO-1",
            RUNPOD_LOG_LEVEL="ERROR",
            GPULEDGER_LEDGER=str(ledger),
            GPULEDGER_GPU="H100",
            GPULEDGER_EXPORTERS="none",
            GPULEDGER_GPU_METERING="off",
            EXAMPLE_SECONDS_PER_TOKEN="0.05",
            EXAMPLE_MODEL_LOAD_S="0.2",
        )
        env.update(extra_env or {})
        worker = subprocess.Popen(
            [sys.executable, str(EXAMPLE), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append((worker, queue))
        return queue, ledger

    yield start
    for worker, queue in started:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # RunPod stops workers so; gpuledger flushes
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(5)
        queue.close()


def _rows(ledger: Path, count: int, timeout: float = 20) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        if ledger.exists():
            with open_ledger(str(ledger), create=False) as opened:
                rows = list(opened.read())
            if len(rows) >= count:
                return rows
        if time.monotonic() > deadline:
            pytest.fail(f"the ledger has not got {count} rows")
        time.sleep(0.1)


def test_concurrent_jobs_split_the_workers_billed_time(run_worker: Any, tmp_path: Path) -> None:
    jobs = [{"id": f"job-{n}", "input": {"tokens": 10, "user": f"u{n % 2}"}} for n in range(8)]
    queue, ledger = run_worker(jobs)
    results = queue.wait_for_results(8)
    assert all(r["output"]["output"].startswith("t0 t1") for r in results.values())
    rows = _rows(ledger, 8)
    assert {row.invocation_id for row in rows} == {f"job-{n}" for n in range(8)}
    assert all(row.outcome == "ok" for row in rows)
    assert {row.endpoint for row in rows} == {"endpoint-llm"}
    assert {row.worker_id for row in rows} == {"worker-7"}
    assert {row.region for row in rows} == {"EU-RO-1"}
    assert {row.platform for row in rows} == {"runpod"}
    # several ran at once (each took ~0.5 s; 8 of them did not take 4 s)
    union = union_length((row.start_ns, row.end_ns) for row in rows)
    total_duration = sum(row.duration_s for row in rows)
    assert union / 1e9 < total_duration * 0.75  # they overlapped
    # the split: billed seconds add up to the time the worker had a job, not to the sum
    assert sum(row.billed_gpu_seconds for row in rows) == pytest.approx(union / 1e9, rel=1e-6)
    assert all(row.billed_gpu_seconds < row.duration_s for row in rows)
    assert sum(1 for row in rows if row.cold) == 1


def test_streaming_jobs_with_return_aggregate_stream(run_worker: Any, tmp_path: Path) -> None:
    jobs = [{"id": f"stream-{n}", "input": {"tokens": 5}} for n in range(2)]
    queue, ledger = run_worker(jobs, "--stream")
    results = queue.wait_for_results(2)
    assert results["stream-0"]["output"] == [f"t{n}" for n in range(5)]  # aggregated
    assert len(queue.streamed["stream-0"]) == 5  # and streamed as they came
    rows = {row.invocation_id: row for row in _rows(ledger, 2)}
    assert rows["stream-0"].output_tokens == 5
    assert rows["stream-0"].duration_s >= 5 * 0.05  # first token to last
    assert rows["stream-1"].outcome == "ok"


def test_a_tenant_over_an_enforced_budget_gets_the_sdks_error_result(
    run_worker: Any, tmp_path: Path
) -> None:
    """The real SDK takes two jobs; the tenant whose budget the ledger shows spent is refused
    before the handler runs (RunPod reports the job FAILED with the reason), the other runs."""
    with open_ledger(str(tmp_path / "ledger.db")) as opened:
        opened.write([make_record(1, tenant="acme", start_ns=time.time_ns(), cost_usd=2.0)])
    budgets = [
        {"scope": "tenant", "key": "acme", "window": "1d", "limit_usd": 1, "mode": "enforce"}
    ]
    jobs = [
        {"id": "acme-1", "input": {"tokens": 3, "team": "acme"}},
        {"id": "globex-1", "input": {"tokens": 3, "team": "globex"}},
    ]
    queue, ledger = run_worker(jobs, extra_env={"GPULEDGER_BUDGETS": json.dumps(budgets)})
    results = queue.wait_for_results(2)
    assert "over its 1d budget" in results["acme-1"]["error"]
    assert "BudgetExceeded" in results["acme-1"]["error"]
    assert results["globex-1"]["output"]["output"] == "t0 t1 t2"
    rows = {row.invocation_id: row for row in _rows(ledger, 3)}
    assert rows["acme-1"].outcome == "rejected"
    assert rows["acme-1"].cost_usd == 0.0
    assert rows["acme-1"].output_tokens is None  # the handler never ran
    assert rows["globex-1"].outcome == "ok"
