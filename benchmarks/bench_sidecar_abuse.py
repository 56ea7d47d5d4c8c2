"""What local clients can do to `gpuledger sidecar`: idle connections past its open-file limit,
and a body whose parsing would cost many times its size; beside a baseline in the same run.

Two checks, each against a real sidecar subprocess on 127.0.0.1 with a SQLite spool and ledger:

- ``idle``: the sidecar runs under an open-file limit of ``--files`` (soft and hard); the script
  opens ``--idle`` connections that send nothing, then POSTs ``--posts`` single-record requests on
  fresh connections. Reported: how many POSTs were taken, how many records reached the ledger
  within 10 s, the sidecar's threads.
- ``body``: one POST of ``{"records": [[], [], ...]}`` just under the 16 MiB body limit.
  Reported: the status, and the sidecar's peak resident memory (``VmHWM``) before and after.

The baseline is another gpuledger source tree (``--baseline-path``: a folder holding a
``gpuledger`` package, e.g. a link farm of an older checkout's ``agent/``, ``exporters/`` and
``instrumentation/``), run the same way with ``PYTHONPATH``.

Run: ``.venv/bin/python benchmarks/bench_sidecar_abuse.py [--baseline-path DIR] [--idle 300]
[--files 256]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

_BODY_LIMIT = 16 * 1024 * 1024


def _record(index: int) -> dict[str, Any]:
    now = time.time_ns()
    return {
        "record_id": uuid.uuid4().hex,
        "invocation_id": f"job-{index}",
        "handler": "predict",
        "service_name": "bench",
        "platform": "runpod",
        "start_ns": now - 2_000_000_000,
        "end_ns": now - 1_000_000_000,
        "duration_s": 1.0,
        "outcome": "ok",
        "billed_gpu_seconds": 1.0,
    }


class _Sidecar:
    def __init__(self, folder: Path, python_path: str | None, files: int | None) -> None:
        def limit() -> None:
            if files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

        env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
        if python_path:
            env["PYTHONPATH"] = python_path
        self.ledger = folder / "ledger.db"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from gpuledger.cli._main import main; main()",
                "sidecar",
                "--listen",
                "127.0.0.1:0",
                "--spool",
                str(folder / "spool.db"),
                "--ledger",
                str(self.ledger),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            preexec_fn=limit,  # noqa: PLW1509 - setrlimit only
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        url = line.split(" listening on ")[1].split(",")[0]
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.address = (host, int(port))

    def post(self, body: bytes, timeout: float = 10.0) -> int:
        connection = http.client.HTTPConnection(*self.address, timeout=timeout)
        try:
            connection.request(
                "POST", "/v1/records", body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            return response.status
        except OSError:
            return 0
        finally:
            connection.close()

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/task"))

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def ledger_rows(self) -> int:
        if not self.ledger.exists():
            return 0
        try:
            with sqlite3.connect(self.ledger) as connection:
                return int(connection.execute("SELECT count(*) FROM invocations").fetchone()[0])
        except sqlite3.Error:
            return 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def idle_check(python_path: str | None, idle: int, files: int, posts: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        sidecar = _Sidecar(Path(folder), python_path, files)
        held: list[socket.socket] = []
        try:
            for _ in range(idle):
                try:
                    held.append(socket.create_connection(sidecar.address, timeout=5))
                except OSError:
                    break
            time.sleep(0.5)
            threads = sidecar.threads()
            taken = sum(
                sidecar.post(json.dumps({"records": [_record(index)]}).encode(), timeout=5) == 200
                for index in range(posts)
            )
            deadline = time.monotonic() + 10
            while sidecar.ledger_rows() < taken and time.monotonic() < deadline:
                time.sleep(0.1)
            rows = sidecar.ledger_rows()
        finally:
            for connection in held:
                connection.close()
            sidecar.stop()
    return {"opened": len(held), "threads": threads, "posts_taken": taken, "ledgered": rows}


def body_check(python_path: str | None) -> dict[str, Any]:
    items = (_BODY_LIMIT - 1024) // 3
    body = b'{"records": [' + b",".join([b"[]"] * items) + b"]}"
    with tempfile.TemporaryDirectory() as folder:
        sidecar = _Sidecar(Path(folder), python_path, None)
        try:
            before = sidecar.peak_rss_mb()
            status = sidecar.post(body, timeout=60)
            after = sidecar.peak_rss_mb()
        finally:
            sidecar.stop()
    return {"body_mb": len(body) / 1e6, "status": status, "rss_before": before, "rss_after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-path", help="a folder holding an older gpuledger package")
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--files", type=int, default=256)
    parser.add_argument("--posts", type=int, default=20)
    options = parser.parse_args()
    runs = [("this tree", None)]
    if options.baseline_path:
        runs.insert(0, ("baseline", options.baseline_path))
    print(
        f"idle: {options.idle} idle connections, open-file limit {options.files}, "
        f"then {options.posts} POSTs"
    )
    print(f"{'':<10} {'opened':>7} {'threads':>8} {'taken':>6} {'ledgered':>9}")
    for name, path in runs:
        found = idle_check(path, options.idle, options.files, options.posts)
        print(
            f"{name:<10} {found['opened']:>7} {found['threads']:>8} "
            f"{found['posts_taken']:>6} {found['ledgered']:>9}"
        )
    print("body: one POST of [] items under the 16 MiB limit")
    print(f"{'':<10} {'MB':>6} {'status':>7} {'peak RSS before':>16} {'after':>7}")
    for name, path in runs:
        found = body_check(path)
        print(
            f"{name:<10} {found['body_mb']:>6.1f} {found['status']:>7} "
            f"{found['rss_before']:>13.0f} MB {found['rss_after']:>4.0f} MB"
        )


if __name__ == "__main__":
    main()
