"""End to end, in real processes: a worker with the agent in sidecar mode, `gpuledger sidecar`,
and rotel as the OTLP collector. Faults: the worker SIGKILLed mid-invocation, the collector down
for a while during traffic. Every assertion is on what the ledger and the collector got."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuledger.ledger import open_ledger

from .support.processes import HOST, accepts, free_ports, spawn, stop, wait_ready
from .support.receivers import DDAgent, Rotel, rotel_binary, unavailable

pytestmark = pytest.mark.slow

GPULEDGER = str(Path(sys.executable).parent / "gpuledger")


class Sidecar:
    def __init__(
        self, workdir: Path, otlp_endpoint: str | None = None, protocol: str | None = None
    ) -> None:
        (self.port,) = free_ports(1)
        self.url = f"http://{HOST}:{self.port}"
        self.ledger = workdir / "fleet.db"
        self.log = workdir / "sidecar.log"
        argv = [
            GPULEDGER, "sidecar",
            "--listen", f"{HOST}:{self.port}",
            "--spool", str(workdir / "spool.db"),
            "--ledger", str(self.ledger),
            "--grace", "0.5",
        ]  # fmt: skip
        if otlp_endpoint:
            argv += ["--otlp-endpoint", otlp_endpoint]
        if protocol:
            argv += ["--otlp-protocol", protocol]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GPULEDGER_"))}
        self.proc = spawn(argv, self.log, env=env)
        wait_ready(self.proc, lambda: self.health() is not None, "sidecar", self.log, 20)

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except OSError:
            return None

    def rows(self) -> list[Any]:
        if not self.ledger.exists():
            return []
        with open_ledger(str(self.ledger), create=False) as ledger:
            return list(ledger.read())

    def wait_for_rows(self, count: int, timeout: float = 20) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows()
            if len(rows) >= count:
                return rows
            if time.monotonic() > deadline:
                pytest.fail(f"{len(rows)} of {count} rows in the fleet ledger; log:\n"
                            f"{self.log.read_text()[-3000:]}")  # fmt: skip
            time.sleep(0.05)

    def stop(self) -> None:
        stop(self.proc, signal.SIGTERM)


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    running = Sidecar(tmp_path)
    yield running
    running.stop()


WORKER = textwrap.dedent(
    """
    import sys, time, gpuledger

    gpuledger.configure(sidecar=sys.argv[1], platform="runpod", gpu="H100",
                        exporters="none", gpu_metering="off", flush_policy="invocation")

    @gpuledger.traced_handler
    def handler(job):
        time.sleep(job["input"]["seconds"])
        return {"done": job["id"]}

    for number in range(int(sys.argv[2])):
        handler({"id": f"job-{number}", "input": {"seconds": 0.01}})
    print("ready", flush=True)
    handler({"id": "the-slow-one", "input": {"seconds": 120}})
    """
)


def _worker(tmp_path: Path, sidecar_url: str, jobs: int) -> subprocess.Popen[str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GPULEDGER_"))}
    return subprocess.Popen(
        [sys.executable, str(script), sidecar_url, str(jobs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_a_worker_killed_mid_invocation_is_recorded_as_killed(
    tmp_path: Path, sidecar: Sidecar
) -> None:
    worker = _worker(tmp_path, sidecar.url, jobs=3)
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready", worker.stderr
        time.sleep(0.3)  # the slow invocation has started and its start notice left
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    rows = {row.invocation_id: row for row in sidecar.wait_for_rows(4)}
    assert [rows[f"job-{n}"].outcome for n in range(3)] == ["ok"] * 3
    killed = rows["the-slow-one"]
    assert killed.outcome == "killed"
    assert killed.handler.endswith("handler")
    assert 0.2 < killed.duration_s < 30
    assert killed.billed_gpu_seconds == pytest.approx(killed.duration_s)
    assert killed.cost_usd is not None
    assert killed.platform == "runpod"


def _start_rotel_on(ports: list[int], workdir: Path) -> Rotel:
    binary = rotel_binary()
    if binary is None:
        unavailable("rotel not found", "pip install rotel")
    grpc, http = ports
    log = workdir / "rotel.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
    env["NO_COLOR"] = "1"
    argv = [
        str(binary), "start",
        "--otlp-grpc-endpoint", f"{HOST}:{grpc}",
        "--otlp-http-endpoint", f"{HOST}:{http}",
        "--debug-log", "traces", "--debug-log-verbosity", "detailed",
        "--batch-timeout", "50ms", "--exporter", "blackhole",
    ]  # fmt: skip
    proc = spawn(argv, log, cwd=workdir, env=env)
    wait_ready(proc, lambda: accepts(http) and accepts(grpc), "rotel", log, 20)
    return Rotel(f"http://{HOST}:{http}", f"{HOST}:{grpc}", log, proc)


def _post_records(url: str, records: list[dict[str, Any]]) -> None:
    request = urllib.request.Request(
        f"{url}/v1/records",
        data=json.dumps({"records": records}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def _records(prefix: str, count: int) -> list[dict[str, Any]]:
    start = time.time_ns()
    return [
        {
            "record_id": f"{prefix}{number:028x}",
            "invocation_id": f"{prefix}-{number}",
            "handler": "predict",
            "service_name": "delivery-test",
            "platform": "runpod",
            "start_ns": start + number * 1000,
            "end_ns": start + number * 1000 + 500_000,
            "duration_s": 0.0005,
        }
        for number in range(count)
    ]


def test_collector_down_then_back_every_record_arrives_once(tmp_path: Path) -> None:
    ports = free_ports(2)
    first = tmp_path / "rotel-1"
    first.mkdir()
    collector = _start_rotel_on(ports, first)
    sidecar = Sidecar(tmp_path, otlp_endpoint=collector.http_endpoint)
    seen: dict[str, int] = {}
    try:
        _post_records(sidecar.url, _records("a", 50))
        for span in collector.wait_for_spans(50, name="predict"):
            seen[span.attributes["faas.invocation_id"]] = (
                seen.get(span.attributes["faas.invocation_id"], 0) + 1
            )
        stop(collector.proc, signal.SIGTERM)  # the collector goes down during traffic
        _post_records(sidecar.url, _records("b", 50))
        _post_records(sidecar.url, _records("c", 50))
        time.sleep(1.0)  # the sidecar tries, fails and backs off; its spool holds them
        health = sidecar.health()
        assert health is not None
        assert health["pending_export"] >= 100
        second = tmp_path / "rotel-2"
        second.mkdir()
        collector = _start_rotel_on(ports, second)  # back, on the same address
        for span in collector.wait_for_spans(100, name="predict", timeout=60):
            key = span.attributes["faas.invocation_id"]
            seen[key] = seen.get(key, 0) + 1
    finally:
        sidecar.stop()
        stop(collector.proc, signal.SIGTERM)
    expected = {f"{prefix}-{n}" for prefix in "abc" for n in range(50)}
    assert set(seen) == expected  # none lost
    assert all(count == 1 for count in seen.values()), {k: v for k, v in seen.items() if v > 1}
    assert len(sidecar.rows()) == 150  # and the ledger has each once


def test_sidecar_over_grpc_through_a_collector_into_datadogs_test_agent(
    tmp_path: Path, rotel_to_ddagent: Rotel, ddagent: DDAgent
) -> None:
    """The Datadog route: sidecar -> OTLP/gRPC -> collector -> Datadog's OTLP intake (the test
    agent standing in for the Datadog Agent). What the test agent got is what is checked."""
    ddagent.clear()
    sidecar = Sidecar(
        tmp_path, otlp_endpoint=f"http://{rotel_to_ddagent.grpc_endpoint}", protocol="grpc"
    )
    try:
        records = _records("dd", 20)
        for record in records:
            record.update(cost_usd=0.0005, user_id="alice", billed_gpu_seconds=0.0005)
        _post_records(sidecar.url, records)
        spans = ddagent.wait_for_spans(20, name="predict", timeout=60)
    finally:
        sidecar.stop()
    got = {span.attributes["faas.invocation_id"]: span for span in spans}
    assert set(got) == {f"dd-{n}" for n in range(20)}
    span = got["dd-0"]
    assert span.kind == "SPAN_KIND_SERVER"
    assert span.attributes["gpuledger.cost.total"] == 0.0005
    assert span.resource["service.name"] == "delivery-test"
