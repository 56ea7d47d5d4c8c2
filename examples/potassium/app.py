"""A Banana/Potassium app instrumented with gpuledger.

The Potassium pattern: ``@app.init`` loads the model once when the worker starts and returns the
context every handler receives; ``@app.handler("/")`` serves requests. gpuledger adds one line,
``instrument(app)``: the init becomes the ``init`` phase of the first request's cold start, each
request an invocation whose id is Banana's request id (``X-Banana-Request-Id``), priced as Banana.

The "model" is a deterministic stand-in (no download, no torch, no GPU): ``EXAMPLE_MODEL_LOAD_S``
(default 0.5) is how long loading it takes, ``EXAMPLE_SECONDS_PER_TOKEN`` (default 0.002) how long
each generated token takes. Serve it with ``python app.py`` (``HOST``/``PORT``: 0.0.0.0:8000).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from potassium import Potassium, Request, Response

import gpuledger
from gpuledger.instrumentation import potassium as gpuledger_potassium

DEFAULT_MAX_TOKENS = 16

app = Potassium("gpuledger-example")
# Before or after the decorators. The user and tenant are read on entry, from the payload (a
# tenant over an enforced budget is answered 429 before the handler runs). Not from
# request.headers: Potassium 0.5 prints every header (authorisation too) on each lookup.
gpuledger_potassium.instrument(
    app,
    user=lambda context, request: (request.json or {}).get("user"),
    tenant=lambda context, request: (request.json or {}).get("team"),
)


def generate(prompt: str, max_tokens: int, seconds_per_token: float) -> str:
    """Up to ``max_tokens`` words determined by ``prompt``, after the simulated GPU time."""
    digest = hashlib.sha256(prompt.encode()).digest()
    time.sleep(seconds_per_token * max_tokens)
    return " ".join(f"w{digest[index % len(digest)]:03d}" for index in range(max_tokens))


@app.init
def init() -> dict[str, Any]:
    """Load the model (recorded as the ``init`` phase) and return the handlers' context."""
    time.sleep(float(os.environ.get("EXAMPLE_MODEL_LOAD_S", "0.5")))  # weights to the GPU
    return {"seconds_per_token": float(os.environ.get("EXAMPLE_SECONDS_PER_TOKEN", "0.002"))}


@app.handler("/")
def handler(context: dict[str, Any], request: Request) -> Response:
    """Generate text for ``{"prompt": ...}``; a request without a prompt fails (HTTP 500)."""
    prompt = request.json["prompt"]
    max_tokens = int(request.json.get("max_tokens", DEFAULT_MAX_TOKENS))
    text = generate(prompt, max_tokens, context["seconds_per_token"])
    gpuledger.record_tokens(input=len(prompt.split()), output=max_tokens)
    return Response(json={"output": text}, status=200)


if __name__ == "__main__":
    # Banana routes to port 8000 of the container; HOST/PORT let tests pick their own.
    app.serve(host=os.environ.get("HOST", "0.0.0.0"), port=int(os.environ.get("PORT", "8000")))
