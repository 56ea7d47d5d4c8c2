"""The demo workload: a RunPod-style worker serving several users through scale-to-zero.

A synthetic day part is replayed in *simulated* time (gpuledger's clock setting), so hours of
traffic, multi-second model loads and GPU work take a second or two to run, with no GPU and no
network. Everything else is the real agent: ``@traced_handler``, ``phase("model_load")``,
``tag``, ``record_tokens``, the pricing catalogue and the SQLite ledger. The worker model is
the seed's: one request at a time per worker, a new worker (cold: interpreter start and imports,
then the model load) when the previous one scaled to zero after the platform's idle window.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from typing import Any, Final

import gpuledger
from gpuledger import _config

__all__ = ["DEMO_SERVICE_NAME", "DemoResult", "run_demo"]

DEMO_SERVICE_NAME: Final = "gpuledger-demo"
"""The service name the demo's records carry (``gpuledger demo`` refuses a ledger with others)."""

# (user, tenant, share of requests, mean prompt tokens, mean output tokens)
_USERS = (
    ("alice", "acme", 0.40, 400, 120),
    ("bob", "acme", 0.25, 150, 60),
    ("carol", "globex", 0.20, 1200, 300),
    ("dave", "initech", 0.15, 80, 40),
)
_SECONDS_PER_OUTPUT_TOKEN = 0.02  # simulated decode speed
_ERROR_RATE = 0.02  # simulated CUDA out-of-memory failures
_FLUSH_TIMEOUT_S = 600.0
"""How long each simulated worker's stop waits for its records: the demo is not a process a
platform kills, so everything it served is written, however long that takes (a real worker has
``flush_timeout_s``, and the journal for what the ledger has no time for)."""


class SimulatedClock:
    """Wall and monotonic time that advance only when the simulation says so."""

    def __init__(self, start_ns: int) -> None:
        self.wall_ns = start_ns
        self.perf_ns = 0
        self.worker_start_ns = start_ns

    def time_ns(self) -> int:
        return self.wall_ns

    def perf_counter_ns(self) -> int:
        return self.perf_ns

    def process_start_ns(self) -> int:
        return self.worker_start_ns

    def advance(self, seconds: float) -> None:
        step = max(0, round(seconds * 1e9))
        self.wall_ns += step
        self.perf_ns += step

    def jump_to(self, instant_ns: int) -> None:
        self.advance(max(0, instant_ns - self.wall_ns) / 1e9)


class SimulatedOutOfMemory(RuntimeError):
    """What the demo's handler raises for a small share of requests."""


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What the demo did."""

    requests: int
    workers: int
    errors: int
    simulated_seconds: float
    wall_seconds: float


def _arrivals(rng: random.Random, requests: int, span_s: float) -> list[float]:
    """Bursty arrivals: most requests in three bursts, a few scattered between them."""
    bursts = sorted(rng.uniform(0, span_s * 0.85) for _ in range(3))
    times = []
    for _ in range(requests):
        if rng.random() < 0.85:
            start = rng.choice(bursts)
            times.append(start + rng.uniform(0, span_s * 0.08))
        else:
            times.append(rng.uniform(0, span_s))
    return sorted(times)


def run_demo(
    *,
    ledger: str,
    requests: int = 200,
    seed: int = 7,
    platform: str = "runpod",
    gpu: str = "H100",
    hours: float = 6.0,
    on_worker: Callable[[int, float], None] | None = None,
    pricing: str | None = None,
) -> DemoResult:
    """Serve ``requests`` synthetic requests over ``hours`` simulated hours into ``ledger``,
    priced by ``pricing`` (an edition or file; default: the pricing setting, else the default
    edition)."""
    wall_started = time.perf_counter()
    rng = random.Random(seed)  # noqa: S311  (a reproducible workload, not cryptography)
    span_s = hours * 3600
    start_ns = (time.time_ns() - int(span_s * 1e9)) // 10**9 * 10**9
    clock = SimulatedClock(start_ns)

    from gpuledger._pricing import load_catalogue  # noqa: PLC0415

    price = load_catalogue(pricing, use_env=True).lookup(platform, gpu)
    idle_window_s = price.idle_window_s if price and price.idle_window_s else 900.0

    @gpuledger.traced_handler(name="generate")
    def generate(job: dict[str, Any]) -> dict[str, Any]:
        request = job["input"]
        gpuledger.tag(user=request["user"], tenant=request["tenant"])
        gpuledger.record_tokens(input=request["prompt_tokens"])
        clock.advance(0.05 + request["prompt_tokens"] * 0.0002)  # prefill
        if request["fail"]:
            raise SimulatedOutOfMemory("CUDA out of memory (simulated)")
        clock.advance(request["output_tokens"] * _SECONDS_PER_OUTPUT_TOKEN)  # decode
        gpuledger.record_tokens(output=request["output_tokens"])
        return {"output": "x" * request["output_tokens"]}

    workers = errors = 0
    worker_free_ns: int | None = None
    try:
        for index, offset in enumerate(_arrivals(rng, requests, span_s)):
            arrival_ns = start_ns + int(offset * 1e9)
            idle = worker_free_ns is None or arrival_ns - worker_free_ns > idle_window_s * 1e9
            if idle:
                # Scaled to zero (or never up): a new worker process starts for this request.
                _stop_worker(clock, worker_free_ns, idle_window_s)
                workers += 1
                clock.jump_to(arrival_ns)
                _start_worker(clock, workers, ledger, platform, gpu, rng, pricing)
                if on_worker is not None:
                    on_worker(workers, (clock.wall_ns - start_ns) / 1e9)
            else:
                assert worker_free_ns is not None
                clock.jump_to(max(arrival_ns, worker_free_ns))  # queued behind the last one
            user, tenant, _, prompt_mean, output_mean = rng.choices(
                _USERS, weights=[user[2] for user in _USERS]
            )[0]
            job = {
                "id": f"demo-{seed}-{index:05d}",
                "input": {
                    "user": user,
                    "tenant": tenant,
                    "prompt_tokens": max(1, int(rng.expovariate(1 / prompt_mean))),
                    "output_tokens": max(1, int(rng.gauss(output_mean, output_mean / 4))),
                    "fail": rng.random() < _ERROR_RATE,
                },
            }
            try:
                generate(job)
            except SimulatedOutOfMemory:
                errors += 1
            worker_free_ns = clock.wall_ns
    finally:
        _stop_worker(clock, worker_free_ns, idle_window_s)
    return DemoResult(
        requests=requests,
        workers=workers,
        errors=errors,
        simulated_seconds=(clock.wall_ns - start_ns) / 1e9,
        wall_seconds=time.perf_counter() - wall_started,
    )


def _stop_worker(clock: SimulatedClock, free_ns: int | None, idle_window_s: float) -> None:
    """The platform scales the worker to zero when its idle window ends after its last request:
    its process stops then (the agent stores the stop; the worker's bill ends there)."""
    if free_ns is not None:
        clock.jump_to(max(clock.wall_ns, free_ns + int(idle_window_s * 1e9)))
    gpuledger.shutdown(_FLUSH_TIMEOUT_S)


def _pricing_setting(pricing: str | None) -> dict[str, Any]:
    """The ``pricing`` setting to configure with: none given leaves the setting's own sources."""
    return {} if pricing is None else {"pricing": pricing}


def _start_worker(
    clock: SimulatedClock,
    number: int,
    ledger: str,
    platform: str,
    gpu: str,
    rng: random.Random,
    pricing: str | None,
) -> None:
    gpuledger.shutdown(_FLUSH_TIMEOUT_S)
    _config.forget_worker_state()
    clock.worker_start_ns = clock.wall_ns
    gpuledger.configure(
        ledger=ledger,
        platform=platform,
        gpu=gpu,
        clock=clock,
        service_name=DEMO_SERVICE_NAME,
        endpoint="demo-endpoint",
        worker_id=f"demo-worker-{number}",
        exporters="none",
        **_pricing_setting(pricing),
        prewarm_threshold_s=10.0,
        # Simulated traffic on a simulated clock: this machine's GPU (if any) did not serve it.
        gpu_metering="off",
    )
    clock.advance(rng.uniform(1.5, 2.5))  # interpreter start and imports (the unnamed rest)
    with gpuledger.phase("model_load"):
        clock.advance(rng.uniform(5.0, 7.0))  # the seed: 5-7 s to load Llama weights
