"""What a burst followed by an immediate exit loses: ``--calls`` invocations of a trivial
handler as fast as they run, then ``gpuledger.shutdown()`` and ``os._exit(0)`` (what a platform
does to a worker), on a local SQLite ledger; then what a later ``gpuledger report`` finds (it
writes what the worker spilled to its journal into the ledger first). Beside a baseline in the
same run: another gpuledger source tree (``--baseline-path``, a folder holding a ``gpuledger``
package, run with ``PYTHONPATH``).

Run: ``.venv/bin/python benchmarks/bench_burst_exit.py [--calls 200000] [--runs 3]
[--baseline-path DIR] [--burn N]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

_WORKER = textwrap.dedent(
    """
    import os, sys, time, gpuledger
    calls, ledger = int(sys.argv[1]), sys.argv[2]
    gpuledger.configure(ledger=ledger, exporters="none", platform="runpod", gpu="H100",
                        gpu_metering="off")

    @gpuledger.traced_handler
    def handler(job):
        return job

    for index in range(calls):
        handler({"id": index})
    agent = gpuledger._config.current_agent()
    began = time.perf_counter()
    gpuledger.shutdown()
    took = time.perf_counter() - began
    print(getattr(getattr(agent, "writer", None), "spilled", 0), took, flush=True)
    os._exit(0)
    """
)

_ADOPT = textwrap.dedent(
    """
    import sys
    try:
        from gpuledger.cli._options import adopt_journal
    except ImportError:  # a baseline from before the journal spill
        adopt_journal = None
    if adopt_journal is not None:
        adopt_journal(sys.argv[1])
    """
)


def run_once(calls: int, python_path: str | None) -> tuple[int, int, float]:
    """Invocations in the ledger after the burst, the exit and a report's adoption; how many
    the worker spilled to its journal at close, and how long its ``shutdown()`` took."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "GPULEDGER_"))
    }
    if python_path:
        env["PYTHONPATH"] = python_path
    with tempfile.TemporaryDirectory() as folder:
        ledger = str(Path(folder) / "ledger.db")
        said = []
        for code, argv in ((_WORKER, [str(calls), ledger]), (_ADOPT, [ledger])):
            done = subprocess.run(
                [sys.executable, "-c", code, *argv],
                cwd=folder,
                env=env,
                check=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                timeout=300,
                text=True,
            )
            said.append(done.stdout.split())
        spilled, took = int(said[0][0]), float(said[0][1])
        with sqlite3.connect(ledger) as connection:
            kept = int(connection.execute("SELECT count(*) FROM invocations").fetchone()[0])
        return kept, spilled, took


def _burn() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-path", help="a folder holding an older gpuledger package")
    parser.add_argument(
        "--burn", type=int, default=0, help="processes that each keep a core busy meanwhile"
    )
    options = parser.parse_args()
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(options.burn)]
    for burner in burners:
        burner.start()
    trees = [("this tree", None)]
    if options.baseline_path:
        trees.insert(0, ("baseline", options.baseline_path))
    print(
        f"{options.calls:,} invocations, then shutdown() and os._exit(0); runs interleaved; "
        f"{options.burn} other process(es) busy"
    )
    results: dict[str, list[tuple[int, int, float]]] = {name: [] for name, _ in trees}
    try:
        for _ in range(options.runs):
            for name, path in trees:
                results[name].append(run_once(options.calls, path))
    finally:
        for burner in burners:
            burner.kill()
    print("| tree | in the ledger, each run | lost | spilled at close | shutdown() s |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        kept = ", ".join(f"{count:,}" for count, _, _ in runs)
        lost = ", ".join(f"{options.calls - count:,}" for count, _, _ in runs)
        spilled = ", ".join(f"{count:,}" for _, count, _ in runs)
        took = ", ".join(f"{seconds:.2f}" for _, _, seconds in runs)
        print(f"| {name} | {kept} | {lost} | {spilled} | {took} |")


if __name__ == "__main__":
    main()
