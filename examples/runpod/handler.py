"""A RunPod serverless worker instrumented with gpuledger.

The RunPod pattern: load the model once when the worker starts, outside the handler, so only the
first (cold) request waits for it; then serve jobs with ``runpod.serverless.start``. gpuledger
adds three lines to it: ``configure()`` before the load, ``phase("model_load")`` around it, and
``@traced_handler`` on the handler. Each job then becomes one row in the ledger (SQLite) and one
span, with its cold start, GPU seconds and cost.

The "model" is a deterministic stand-in so the example runs anywhere in a second: no download,
no torch, no GPU. ``EXAMPLE_MODEL_LOAD_S`` (default 0.5) is how long loading it takes, and
``EXAMPLE_SECONDS_PER_TOKEN`` (default 0.002) how long each generated token takes.

Run one job and exit::

    python handler.py --test_input '{"id": "job-1", "input": {"prompt": "hello", "user": "u-1"}}'

or serve RunPod's local API (``/runsync``, ``/run``, ``/status/{id}``) on a port::

    python handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import runpod

import gpuledger

DEFAULT_MAX_TOKENS = 16


class ToyModel:
    """A stand-in language model: the same prompt always gives the same words."""

    def __init__(self, vocabulary: tuple[str, ...], seconds_per_token: float) -> None:
        self.vocabulary = vocabulary
        self.seconds_per_token = seconds_per_token
        """Simulated GPU time per generated token, in seconds."""

    @classmethod
    def load(cls, load_seconds: float, seconds_per_token: float) -> ToyModel:
        """Build the model, taking ``load_seconds`` as a real checkpoint load would."""
        # Stands for reading weights and moving them to the GPU: wall time the worker is billed.
        time.sleep(load_seconds)
        vocabulary = tuple(f"w{index:03d}" for index in range(256))
        return cls(vocabulary, seconds_per_token)

    @staticmethod
    def count_tokens(text: str) -> int:
        """The number of tokens in ``text`` (whitespace-separated words)."""
        return len(text.split())

    def generate(self, prompt: str, max_tokens: int) -> str:
        """Up to ``max_tokens`` words determined by ``prompt``, without the wait."""
        digest = hashlib.sha256(prompt.encode()).digest()
        return " ".join(self.vocabulary[digest[index % len(digest)]] for index in range(max_tokens))

    def simulate_gpu_work(self, output_tokens: int) -> None:
        """Wait as long as generating ``output_tokens`` tokens would keep the GPU busy."""
        time.sleep(self.seconds_per_token * output_tokens)


MODEL: ToyModel | None = None
"""Loaded once per worker, at start-up (see the bottom of this file)."""


def load_model() -> ToyModel:
    """Load the model as an init phase named ``model_load``, so its time is reported apart."""
    with gpuledger.phase("model_load"):
        return ToyModel.load(
            load_seconds=float(os.environ.get("EXAMPLE_MODEL_LOAD_S", "0.5")),
            seconds_per_token=float(os.environ.get("EXAMPLE_SECONDS_PER_TOKEN", "0.002")),
        )


@gpuledger.traced_handler
def handler(job: dict[str, Any]) -> dict[str, Any]:
    """Generate text for ``job["input"]["prompt"]``; RunPod's job id becomes the invocation id."""
    if MODEL is None:
        raise RuntimeError("the model is not loaded: start the worker with `python handler.py`")
    job_input = job["input"]
    prompt = job_input["prompt"]
    if user := job_input.get("user"):
        gpuledger.tag(user=str(user))

    max_tokens = int(job_input.get("max_tokens", DEFAULT_MAX_TOKENS))
    text = MODEL.generate(prompt, max_tokens)
    output_tokens = MODEL.count_tokens(text)
    MODEL.simulate_gpu_work(output_tokens)
    gpuledger.record_tokens(input=MODEL.count_tokens(prompt), output=output_tokens)
    return {"output": text}


if __name__ == "__main__":
    # Settings come from the environment (GPULEDGER_PLATFORM, GPULEDGER_GPU, GPULEDGER_LEDGER,
    # OTEL_EXPORTER_OTLP_ENDPOINT, ...); on RunPod the platform is detected by itself.
    gpuledger.configure()
    MODEL = load_model()
    runpod.serverless.start({"handler": handler})
