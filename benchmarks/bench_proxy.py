"""What ``gpuledger proxy`` adds to each request's latency, against calling the server directly.

Three processes on 127.0.0.1, as in production: a model-server stand-in (aiohttp, answering at
once), ``gpuledger proxy`` in front of it (the real command: ledger on, RunPod/H100 prices, no
exporter), and this client, one kept-alive ``http.client`` connection per route, requests one
after the other. Routes, taking turns repeat by repeat so drift hits all alike:

``direct``     the server itself: the baseline;
``unmetered``  through the proxy, on a path given as ``--unmetered-path``: the proxying alone;
``metered``    through the proxy, recorded: proxying + ``Agent.enter``/``exit`` + the ledger
               row (written by the background writer, in the proxy's process).

Each for a small JSON answer and a 256 KiB one. Reports p50 and p99 latency per route and what
the proxy adds at each (route minus direct). The machine's cores are shared by the three
processes, as they would be by a model server and its sidecar.

Run: ``.venv/bin/python benchmarks/bench_proxy.py [--requests 2000] [--repeats 5] [--json FILE]``
(about a minute).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UPSTREAM = """
import sys
from aiohttp import web

SMALL = b'{"output": [0.1, 0.2, 0.3], "id": "bench"}'
LARGE = bytes(range(256)) * 1024


async def small(request):
    return web.Response(body=SMALL, content_type="application/json")


async def large(request):
    return web.Response(body=LARGE, content_type="application/octet-stream")


app = web.Application()
for prefix in ("", "/u"):
    app.router.add_get(prefix + "/small", small)
    app.router.add_get(prefix + "/large", large)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_answering(port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"port {port} did not answer {path} within {timeout:g} s")
        time.sleep(0.05)


def timed(connection: http.client.HTTPConnection, path: str, count: int) -> list[float]:
    """``count`` GETs of ``path`` on one kept-alive connection; each one's latency in µs."""
    latencies: list[float] = []
    for _ in range(count):
        started = time.perf_counter_ns()
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        latencies.append((time.perf_counter_ns() - started) / 1e3)
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status}")
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per route and size, a repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    (workdir / "upstream.py").write_text(UPSTREAM)
    upstream_port, proxy_port = free_port(), free_port()
    ledger = workdir / "ledger.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPULEDGER_", "OTEL_"))}
    upstream = subprocess.Popen(
        [sys.executable, str(workdir / "upstream.py"), str(upstream_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    script = "from gpuledger.cli._main import main; main(prog_name='gpuledger')"
    proxy_argv = [
        sys.executable, "-c", script, "proxy",
        "--listen", f"127.0.0.1:{proxy_port}",
        "--upstream", f"127.0.0.1:{upstream_port}",
        "--upstream-pid", str(upstream.pid),
        "--unmetered-path", "/u/small", "--unmetered-path", "/u/large",
        "--ledger", str(ledger), "--platform", "runpod", "--gpu", "H100",
    ]  # fmt: skip
    proxy = subprocess.Popen(
        proxy_argv,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "proxy.log", "wb"),  # noqa: SIM115  (closed with the process)
        env={**env, "GPULEDGER_GPU_METERING": "off"},
    )
    try:
        wait_answering(upstream_port, "/small")
        wait_answering(proxy_port, "/u/small")
        routes = {
            "direct": (upstream_port, ""),
            "unmetered": (proxy_port, "/u"),
            "metered": (proxy_port, ""),
        }
        connections = {
            name: http.client.HTTPConnection("127.0.0.1", port)
            for name, (port, _) in routes.items()
        }
        results: dict[str, dict[str, list[float]]] = {
            size: {name: [] for name in routes} for size in ("small", "large")
        }
        for name, (_, prefix) in routes.items():  # warm-up: pools, caches, the ledger file
            timed(connections[name], f"{prefix}/small", 200)
        started = time.monotonic()
        for repeat in range(args.repeats):
            order = list(routes)[repeat % 3 :] + list(routes)[: repeat % 3]
            for size in ("small", "large"):
                for name in order:
                    prefix = routes[name][1]
                    results[size][name] += timed(
                        connections[name], f"{prefix}/{size}", args.requests
                    )
        elapsed = time.monotonic() - started
    finally:
        proxy.terminate()
        proxy.wait(30)
        upstream.terminate()
        upstream.wait(10)
    with sqlite3.connect(ledger) as db:
        (rows,) = db.execute("SELECT count(*) FROM invocations").fetchone()

    figures: dict[str, dict[str, float]] = {}
    print(
        f"{args.repeats} repeats x {args.requests} requests per route and size, "
        f"{elapsed:.1f} s; {rows} rows in the ledger (metered requests and warm-up)"
    )
    print(f"{'size':<6} {'route':<10} {'p50 us':>8} {'p99 us':>8} {'+p50 us':>8} {'+p99 us':>8}")
    for size, by_route in results.items():
        base50 = percentile(by_route["direct"], 0.50)
        base99 = percentile(by_route["direct"], 0.99)
        for name, latencies in by_route.items():
            p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
            figures[f"{size}.{name}"] = {
                "p50_us": p50,
                "p99_us": p99,
                "added_p50_us": p50 - base50,
                "added_p99_us": p99 - base99,
                "mean_us": statistics.fmean(latencies),
            }
            added = "" if name == "direct" else f"{p50 - base50:>8.0f} {p99 - base99:>8.0f}"
            print(f"{size:<6} {name:<10} {p50:>8.0f} {p99:>8.0f} {added}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
