"""What an enforced budget costs on the request path, side by side with no budget at all.

Variants, each a ``@traced_handler(tenant=...)`` on a trivial handler, ledger only (tracing and
metrics off: what is measured is gpuledger's own request path), platform runpod, GPU H100:

``none``
    no budgets: the baseline.
``idle``
    an enforced budget for every tenant (``*``) and one for the fleet, none of them spent: the
    request path tests that nothing is blocked (one attribute read).
``other``
    the same, and another tenant over its budget: every request looks itself up in what is
    blocked (the fleet, the endpoint, its tenant) and passes.
``refused``
    the request's own tenant is over its budget: the request is refused (BudgetExceeded raised,
    the invocation recorded ``rejected``) instead of running.

Variants take turns chunk by chunk (``--chunk`` calls, rotating order), each chunk after a
reconfigure and a flush, so machine noise hits them alike; per variant the median per-call time
over ``--rounds`` chunks, and its difference from ``none``. Then ``BudgetGuard.check`` alone,
timed with ``timeit`` (the lookups ``other`` adds). Spend is put in the ledger before the agent
starts, as a fleet's would be.

    python benchmarks/bench_budgets.py [--rounds 30] [--chunk 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import gpuledger
from gpuledger import _config
from gpuledger.ledger import open_ledger
from gpuledger.testing import make_record

FLEET = {"scope": "total", "window": "1d", "limit_usd": 1e6, "mode": "enforce"}
EVERY_TENANT = {"scope": "tenant", "window": "1d", "limit_usd": 1.0, "mode": "enforce"}
VARIANTS: dict[str, tuple[list[dict[str, Any]] | None, str]] = {
    # name: (budgets, the tenant the requests are for)
    "none": (None, "acme"),
    "idle": ([FLEET, EVERY_TENANT], "acme"),
    "other": ([FLEET, EVERY_TENANT], "acme"),
    "refused": ([FLEET, EVERY_TENANT], "globex"),
}


def _configure(folder: Path, name: str) -> None:
    budgets, _ = VARIANTS[name]
    ledger = folder / f"{name}.db"
    if budgets is not None and not ledger.exists() and name != "idle":
        with open_ledger(str(ledger)) as opened:  # globex spent 5 USD of its 1 USD an hour ago
            start = time.time_ns() - 3600 * 10**9
            opened.write([make_record(tenant="globex", start_ns=start, cost_usd=5.0)])
    gpuledger.configure(
        ledger=str(ledger),
        platform="runpod",
        gpu="H100",
        tracing=False,
        metrics=False,
        gpu_metering="off",
        budgets=budgets or (),
        budget_refresh_s=3600,
    )


@gpuledger.traced_handler(tenant=lambda job: job["tenant"])
def handler(job: dict[str, str]) -> str:
    return "ok"


def _chunk(tenant: str, calls: int) -> float:
    """Per-call seconds of ``calls`` calls for ``tenant`` (refusals caught, as a caller would)."""
    job = {"tenant": tenant}
    started = time.perf_counter_ns()
    for _ in range(calls):
        with contextlib.suppress(gpuledger.BudgetExceeded):
            handler(job)
    return (time.perf_counter_ns() - started) / calls / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--chunk", type=int, default=2000)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(args.rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in order:
                _configure(Path(folder), name)
                tenant = VARIANTS[name][1]
                _chunk(tenant, 100)  # warm
                gpuledger.flush()
                times[name].append(_chunk(tenant, args.chunk))
                gpuledger.flush()
        _configure(Path(folder), "other")
        agent = _config.get_agent()
        assert agent is not None
        guard = agent.budget_guard
        assert guard is not None
        assert guard.blocked
        assert guard.check("acme", None) is None
        number = 1_000_000
        check_s = min(timeit.repeat(lambda: guard.check("acme", None), number=number, repeat=5))
        empty_s = min(timeit.repeat(lambda: guard is not None and {}, number=number, repeat=5))
        gpuledger.shutdown()
    base = statistics.median(times["none"])
    print(f"{'variant':<9} {'µs/call':>8} {'vs none':>8}   ({args.rounds} chunks of {args.chunk})")
    for name in VARIANTS:
        median = statistics.median(times[name])
        print(f"{name:<9} {median * 1e6:8.3f} {(median - base) * 1e6:+8.3f}")
    print(
        f"BudgetGuard.check, a tenant not blocked beside one that is: "
        f"{check_s / number * 1e9:.0f} ns (the empty test: {empty_s / number * 1e9:.0f} ns)"
    )


if __name__ == "__main__":
    main()
