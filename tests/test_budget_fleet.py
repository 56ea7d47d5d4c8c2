"""A fleet under one enforced budget: worker processes against one PostgreSQL ledger, each
refreshing the fleet's spend every ``budget_refresh_s``. Between two refreshes a worker cannot
see the others' spend, so the fleet goes past the limit; this measures by how much and checks
the bound the design states: no more than what the fleet spends in one refresh interval (the
longest gap between two refreshes a worker actually had, so a loaded machine's late refresh is
counted, not excused) plus one request in flight per worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import gpuledger
from gpuledger.ledger import open_ledger
from gpuledger.testing import FakeClock, capture_telemetry

WORKERS = 3
REQUEST_S = 0.02
REFRESH_S = 0.25
REQUESTS_TO_LIMIT = 300
"""The limit, in requests' worth of spend: about two seconds of the fleet's traffic."""

WORKER = textwrap.dedent(
    """
    import json, os, sys, time

    import gpuledger
    from gpuledger import _config

    budget = {"scope": "total", "window": "1h", "limit_usd": float(os.environ["LIMIT_USD"]),
              "mode": "enforce"}
    gpuledger.configure(
        ledger=os.environ["LEDGER"], platform="runpod", gpu="H100", worker_id=sys.argv[1],
        budgets=[budget], budget_refresh_s=float(os.environ["REFRESH_S"]),
        flush_policy="invocation", tracing=False, metrics=False, gpu_metering="off",
    )
    guard = _config.get_agent().budget_guard
    refreshes = []
    refresh = guard.refresh

    def logged():
        refreshes.append(time.time_ns())
        return refresh()

    guard.refresh = logged  # the refresh thread calls it through the instance

    @gpuledger.traced_handler
    def handler():
        time.sleep(float(os.environ["REQUEST_S"]))

    ok = rejected = 0
    deadline = time.monotonic() + 60
    while rejected < 3 and time.monotonic() < deadline:
        try:
            handler()
            ok += 1
        except gpuledger.BudgetExceeded:
            rejected += 1
            time.sleep(0.02)
    gpuledger.shutdown()
    print(json.dumps({"ok": ok, "rejected": rejected, "refreshes": refreshes}))
    """
)


def _request_cost(tmp_path: Path) -> float:
    """What one warm request of ``REQUEST_S`` costs on RunPod's H100 (the default edition)."""
    with capture_telemetry(
        tmp_path / "probe.db", clock=FakeClock(), platform="runpod", gpu="H100"
    ) as capture:

        @gpuledger.traced_handler
        def handler() -> None:
            capture.clock.advance(REQUEST_S)

        handler()  # cold: it carries the start-up
        handler()
        _, record = capture.records()
    assert record.cost_usd is not None
    return record.cost_usd


@pytest.mark.slow
def test_a_fleet_overshoots_an_enforced_budget_by_at_most_one_refresh_of_spend(
    postgres_db: str, tmp_path: Path
) -> None:
    cost = _request_cost(tmp_path)
    limit = REQUESTS_TO_LIMIT * cost
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GPULEDGER_", "OTEL_"))},
        "LEDGER": postgres_db,
        "LIMIT_USD": repr(limit),
        "REFRESH_S": str(REFRESH_S),
        "REQUEST_S": str(REQUEST_S),
    }
    with open_ledger(postgres_db):
        pass  # the schema, made once before the workers race to make it
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), f"worker-{n}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WORKERS)
    ]
    reports: list[dict[str, Any]] = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    with open_ledger(postgres_db, create=False) as ledger:
        records = list(ledger.read())
    served = [record for record in records if record.outcome == "ok"]
    refused = [record for record in records if record.outcome == "rejected"]
    assert len(served) == sum(report["ok"] for report in reports)
    assert len(refused) == sum(report["rejected"] for report in reports) == 3 * WORKERS
    assert all(record.cost_usd == 0.0 for record in refused)

    spent = sum(record.cost_usd or 0.0 for record in served)
    overshoot = spent - limit
    first = min(record.start_ns for record in served)
    last = max(record.end_ns for record in served)
    rate = spent / ((last - first) / 1e9)  # the fleet's spend, USD a second
    gaps = [
        (later - earlier) / 1e9
        for report in reports
        for earlier, later in zip(report["refreshes"], report["refreshes"][1:], strict=False)
    ]
    longest = max(record.duration_s for record in served)
    bound = rate * (max(gaps) + longest) + WORKERS * max(r.cost_usd or 0.0 for r in served)
    print(
        f"limit {limit:.6f} USD, spent {spent:.6f} USD, overshoot {overshoot:.6f} USD "
        f"({overshoot / limit:.1%}, {overshoot / cost:.0f} requests); fleet {rate:.6f} USD/s; "
        f"refresh every {REFRESH_S} s (longest gap {max(gaps):.3f} s); bound {bound:.6f} USD"
    )
    assert spent >= limit  # the budget was spent before the fleet was refused
    assert overshoot <= bound
