"""A RunPod worker that serves several jobs at once, and one that streams: both with gpuledger.

``handler`` is async, with a ``concurrency_modifier`` that lets RunPod hand the worker up to
``EXAMPLE_CONCURRENCY`` (default 4) jobs at the same time, the way a batching LLM server does.
Jobs that overlap share the worker: gpuledger splits each instant's billed GPU time equally among
the jobs running then, so the rows add up to what the worker was billed.

``stream_handler`` (``--stream``) is an async generator, with RunPod's
``return_aggregate_stream``: each token is streamed as it is produced, and the invocation lasts
as long as the stream.

Locally, serve them with the SDK's API and send requests to it (README.md)::

    python async_handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000
    python async_handler.py --stream --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000

The SDK's one-job local mode (``--test_input``, ``./test_input.json``) never reads a generator
handler's stream, so ``--stream`` refuses that mode instead of recording nothing.

Settings come from the environment as in ``handler.py`` (``GPULEDGER_*``, ``OTEL_*``); on RunPod
the endpoint (``RUNPOD_ENDPOINT_ID``) and worker (``RUNPOD_POD_ID``) are picked up by themselves.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import runpod

import gpuledger

CONCURRENCY = int(os.environ.get("EXAMPLE_CONCURRENCY", "4"))
SECONDS_PER_TOKEN = float(os.environ.get("EXAMPLE_SECONDS_PER_TOKEN", "0.02"))


def concurrency_modifier(current: int) -> int:
    """RunPod asks how many jobs this worker takes at once; a fixed number here."""
    return CONCURRENCY


@gpuledger.traced_handler(
    # Known on entry, so a tenant over an enforced budget is refused before any GPU work.
    user=lambda job: job["input"].get("user"),
    tenant=lambda job: job["input"].get("team"),
)
async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """Produce ``tokens`` tokens, yielding to other jobs while the "GPU" works."""
    tokens = int(job["input"].get("tokens", 10))
    await asyncio.sleep(SECONDS_PER_TOKEN * tokens)
    gpuledger.record_tokens(output=tokens)
    return {"output": " ".join(f"t{index}" for index in range(tokens))}


@gpuledger.traced_handler
async def stream_handler(job: dict[str, Any]) -> AsyncIterator[str]:
    """Stream ``tokens`` tokens, one at a time."""
    for index in range(int(job["input"].get("tokens", 10))):
        await asyncio.sleep(SECONDS_PER_TOKEN)
        gpuledger.record_tokens(output=1)
        yield f"t{index}"


def _one_job_mode() -> bool:
    """Whether ``runpod.serverless.start`` would run one local job and exit, as the SDK decides:
    not its API server (``--rp_serve_api``, ``RUNPOD_REALTIME_PORT``), and ``--test_input`` or
    no RunPod job queue to take jobs from (``RUNPOD_WEBHOOK_GET_JOB``)."""
    if "--rp_serve_api" in sys.argv or int(os.environ.get("RUNPOD_REALTIME_PORT") or 0):
        return False
    return "--test_input" in sys.argv or not os.environ.get("RUNPOD_WEBHOOK_GET_JOB")


if __name__ == "__main__":
    stream = "--stream" in sys.argv
    if stream:
        sys.argv.remove("--stream")
        if _one_job_mode():
            sys.exit(
                "--stream: the runpod SDK's one-job local mode (--test_input, test_input.json) "
                "returns a generator handler's stream unread, so nothing would run; serve it "
                "with --rp_serve_api instead (see README.md)"
            )
    gpuledger.configure()
    with gpuledger.phase("model_load"):
        time.sleep(float(os.environ.get("EXAMPLE_MODEL_LOAD_S", "0.2")))
    if stream:
        runpod.serverless.start({"handler": stream_handler, "return_aggregate_stream": True})
    else:
        runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency_modifier})
