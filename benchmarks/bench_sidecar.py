"""How many records a second `gpuledger sidecar` acknowledges (spooled on disk), its p99
acknowledgement latency, and its memory under sustained load; beside a baseline in the same run.

The load: ``--clients`` threads, each POSTing batches of ``--batch`` records (``/v1/records``,
every record new) back to back over a kept-alive connection for ``--seconds``. The sidecar runs
as a real subprocess with a SQLite spool and ledger and no OTLP endpoint (its ledger writer
consumes the spool meanwhile). The baseline is the same load against a server that reads each
body and answers 200 without looking at it (Python's ``http.server``, as the sidecar uses): what
is left is the sidecar's own cost (parse, validate, spool, commit). The sidecar's resident memory
is read from ``/proc`` every second. A request refused with 503 (backpressure: the backlog
is past ``max_backlog``) is sent again after its ``Retry-After``, as a worker would, and
counted; latencies are of the acknowledged requests.

Run: ``.venv/bin/python benchmarks/bench_sidecar.py [--seconds 60] [--clients 4] [--batch 100]``
(``--seconds 600`` for the ten-minute memory check).
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

GPULEDGER = str(Path(sys.executable).parent / "gpuledger")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Null(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"accepted": 0}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def bodies(client: int, batch: int, count: int) -> list[bytes]:
    """``count`` request bodies of ``batch`` new records each (ids unique per client)."""
    start = time.time_ns()
    out = []
    for request in range(count):
        records = []
        for number in range(batch):
            serial = (client * 10**9) + request * batch + number
            records.append(
                {
                    "record_id": f"{serial:032x}",
                    "invocation_id": f"job-{serial}",
                    "handler": "predict",
                    "service_name": "bench",
                    "platform": "runpod",
                    "gpu_model": "H100",
                    "start_ns": start + serial,
                    "end_ns": start + serial + 2_000_000_000,
                    "duration_s": 2.0,
                    "billed_gpu_seconds": 2.0,
                    "cost_usd": 0.00048,
                    "user_id": f"user-{serial % 50}",
                }
            )
        out.append(json.dumps({"records": records}).encode())
    return out


def load(port: int, clients: int, batch: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    acked = [0]
    refused = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    # Enough distinct bodies that no record id repeats within the run at up to ~100k rec/s.
    per_client = max(50, int(seconds * 100_000 / batch / clients) + 10)

    def client(number: int) -> None:
        prepared = bodies(number, batch, per_client)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        sent = pushed_back = 0
        for body in prepared:
            while time.monotonic() <= stop_at:
                began = time.perf_counter()
                connection.request(
                    "POST", "/v1/records", body=body, headers={"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                response.read()
                if response.status == 503:  # backpressure: as a worker would, wait and resend
                    pushed_back += 1
                    time.sleep(float(response.getheader("Retry-After") or 1))
                    continue
                mine.append(time.perf_counter() - began)
                assert response.status == 200, response.status
                sent += batch
                break
            if time.monotonic() > stop_at:
                break
        with lock:
            latencies.extend(mine)
            acked[0] += sent
            refused[0] += pushed_back

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    ordered = sorted(latencies)
    return {
        "records_per_s": acked[0] / elapsed,
        "requests": len(latencies),
        "refused": refused[0],
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()

    null = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Null)
    null.daemon_threads = True
    threading.Thread(target=null.serve_forever, daemon=True).start()
    baseline = load(null.server_address[1], args.clients, args.batch, min(args.seconds, 20.0))

    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GPULEDGER_"))}
        sidecar = subprocess.Popen(
            [GPULEDGER, "sidecar", "--listen", f"127.0.0.1:{port}",
             "--spool", f"{scratch}/spool.db", "--ledger", f"{scratch}/ledger.db"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            memory: list[float] = [rss_mib(sidecar.pid)]
            done = threading.Event()

            def watch() -> None:
                while not done.wait(1.0):
                    memory.append(rss_mib(sidecar.pid))

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            result = load(port, args.clients, args.batch, args.seconds)
            done.set()
            watcher.join()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as answer:
                health = json.loads(answer.read())
        finally:
            sidecar.send_signal(signal.SIGTERM)
            sidecar.wait(60)
    null.shutdown()

    print(
        f"{args.clients} clients x batches of {args.batch} records, {args.seconds:g} s "
        f"(baseline {min(args.seconds, 20.0):g} s)"
    )
    print("| server | records/s acknowledged | requests | refused (503) | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, row in (("null server (baseline)", baseline), ("gpuledger sidecar", result)):
        print(
            f"| {name} | {row['records_per_s']:,.0f} | {row['requests']:,} | {row['refused']:,} "
            f"| {row['p50_ms']:.2f} | {row['p99_ms']:.2f} |"
        )
    third = max(1, len(memory) // 3)
    print(
        f"\nsidecar RSS: start {memory[0]:.1f} MiB, first third max {max(memory[:third]):.1f}, "
        f"last third max {max(memory[-third:]):.1f}, overall max {max(memory):.1f} MiB "
        f"({len(memory)} samples)"
    )
    print(f"spool at the end: {health}")
    print(
        f"target >= 20,000 records/s: {'met' if result['records_per_s'] >= 20_000 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
