"""A RunPod worker that serves several jobs at once, and one that streams: both with gpuledger.

``python async_handler.py`` starts an async worker whose ``concurrency_modifier`` lets RunPod hand
it up to ``EXAMPLE_CONCURRENCY`` (default 4) jobs at the same time, the way a batching LLM server
does. Jobs that overlap share the worker: gpuledger splits each instant's billed GPU time equally
among the jobs running then, so the rows add up to what the worker was billed.

``python async_handler.py --stream`` starts a generator worker instead, with RunPod's
``return_aggregate_stream``: each token is streamed as it is produced, and the invocation lasts
from the first token to the last.

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


@gpuledger.traced_handler
async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """Produce ``tokens`` tokens, yielding to other jobs while the "GPU" works."""
    tokens = int(job["input"].get("tokens", 10))
    if user := job["input"].get("user"):
        gpuledger.tag(user=str(user))
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


if __name__ == "__main__":
    gpuledger.configure()
    with gpuledger.phase("model_load"):
        time.sleep(float(os.environ.get("EXAMPLE_MODEL_LOAD_S", "0.2")))
    if "--stream" in sys.argv:
        sys.argv.remove("--stream")
        runpod.serverless.start({"handler": stream_handler, "return_aggregate_stream": True})
    else:
        runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency_modifier})
