"""A Modal app instrumented with gpuledger: a GPU function and a GPU class.

- ``embed`` is a plain ``@app.function``: every call is one invocation.
- ``Generator`` is an ``@app.cls`` whose ``@modal.enter`` method loads the model once per
  container (reported as the init phase ``load_model`` of the container's first, cold, input)
  and whose ``@modal.method`` calls are invocations. It takes up to 8 inputs at once
  (``@modal.concurrent``); inputs that overlap split the container's billed GPU time.

gpuledger's decorators go *under* Modal's. The "model" is a deterministic stand-in (no
download, no torch) so the app runs anywhere: ``EXAMPLE_MODEL_LOAD_S`` (default 0.5) is how
long loading it takes, ``EXAMPLE_SECONDS_PER_TOKEN`` (default 0.002) each generated token.

Run it here, without a Modal account (``.local()`` runs each function in this process; the
first call, ``Generator.generate``, is the process's one cold start)::

    GPULEDGER_PLATFORM=modal GPULEDGER_GPU=H100 python app.py

Deploy it (see README.md: the ``gpuledger`` secret and the ledger volume)::

    modal deploy app.py
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import modal

import gpuledger
from gpuledger.instrumentation.modal import traced_cls, traced_function

APP_NAME = "gpuledger-example"
GPU = "H100"
LEDGER_DIR = "/ledger"
DEFAULT_MAX_TOKENS = 16

app = modal.App(APP_NAME)

# gpuledger is not on PyPI yet, so the image takes it from this checkout: its dependencies from
# pyproject.toml, its code from the three folders that make the `gpuledger` package (as
# pyproject.toml's package-dir maps them; the price catalogue in agent/data comes along). Once
# it is published, `.pip_install("gpuledger")` replaces all four lines. Settings reach the
# container as environment variables: GPULEDGER_* from here, the OTLP endpoint and its
# credentials from the `gpuledger` secret (README.md). Modal imports this file again in each
# container, where these paths are neither read nor needed: the image is built already.
CHECKOUT = Path(__file__).resolve().parent.parent.parent
SOURCE_IGNORE = ["**/__pycache__"]
image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install_from_pyproject(str(CHECKOUT / "pyproject.toml"))
    .env({"GPULEDGER_GPU": GPU, "GPULEDGER_FLUSH_POLICY": "adaptive"})
    .add_local_dir(CHECKOUT / "agent", "/root/gpuledger", ignore=SOURCE_IGNORE)
    .add_local_dir(
        CHECKOUT / "instrumentation", "/root/gpuledger/instrumentation", ignore=SOURCE_IGNORE
    )
    .add_local_dir(CHECKOUT / "exporters", "/root/gpuledger/exporters", ignore=SOURCE_IGNORE)
)
secrets = [modal.Secret.from_name("gpuledger")]
ledger_volume = modal.Volume.from_name("gpuledger-ledger", create_if_missing=True)
volumes = {LEDGER_DIR: ledger_volume}


class ToyModel:
    """A stand-in language model: the same prompt always gives the same words."""

    def __init__(self, seconds_per_token: float) -> None:
        self.vocabulary = tuple(f"w{index:03d}" for index in range(256))
        self.seconds_per_token = seconds_per_token
        """Simulated GPU time per generated token, in seconds."""

    @classmethod
    def load(cls) -> ToyModel:
        """Build the model, taking ``EXAMPLE_MODEL_LOAD_S`` seconds as a checkpoint load would."""
        time.sleep(float(os.environ.get("EXAMPLE_MODEL_LOAD_S", "0.5")))
        return cls(float(os.environ.get("EXAMPLE_SECONDS_PER_TOKEN", "0.002")))

    @staticmethod
    def count_tokens(text: str) -> int:
        """The number of tokens in ``text`` (whitespace-separated words)."""
        return len(text.split())

    def generate(self, prompt: str, max_tokens: int) -> str:
        """Up to ``max_tokens`` words determined by ``prompt``, without the wait."""
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        digest = hashlib.sha256(prompt.encode()).digest()
        return " ".join(self.vocabulary[digest[index % len(digest)]] for index in range(max_tokens))

    def gpu_seconds(self, output_tokens: int) -> float:
        """How long generating ``output_tokens`` tokens keeps the GPU busy, in seconds."""
        return self.seconds_per_token * output_tokens


def configure_in_container() -> None:
    """In a Modal container: one SQLite ledger per container on the volume.

    Containers must not share one SQLite file on a Volume (its last writer wins), so each
    writes ``/ledger/<task id>.db``. Elsewhere gpuledger configures itself from the environment.
    """
    task_id = os.environ.get("MODAL_TASK_ID")
    if task_id and os.path.isdir(LEDGER_DIR):
        gpuledger.configure(ledger=f"{LEDGER_DIR}/{task_id}.db")


configure_in_container()


@app.function(gpu=GPU, image=image, secrets=secrets, volumes=volumes)
@traced_function(user=lambda text, user=None, *args, **kwargs: user)
def embed(text: str, user: str | None = None) -> list[float]:
    """A 8-dimensional embedding of ``text``; one invocation per call."""
    digest = hashlib.sha256(text.encode()).digest()
    time.sleep(0.001 * len(text.split()))  # stands for the GPU work
    gpuledger.record_tokens(input=len(text.split()))
    return [byte / 255 for byte in digest[:8]]


@app.cls(gpu=GPU, image=image, secrets=secrets, volumes=volumes, scaledown_window=300)
@modal.concurrent(max_inputs=8)
@traced_cls(user=lambda self, prompt, user=None, *args, **kwargs: user)
class Generator:
    """Text generation: the model loads once per container, then serves many inputs."""

    model: ToyModel | None = None

    @modal.enter()
    def load_model(self) -> None:
        """Load the model when the container starts (init phase ``load_model``)."""
        self.model = ToyModel.load()

    def _model(self) -> ToyModel:
        if self.model is None:  # async .local() calls skip @modal.enter: load on first use
            with gpuledger.phase("load_model"):
                self.model = ToyModel.load()
        return self.model

    @modal.method()
    def generate(
        self, prompt: str, user: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS
    ) -> dict[str, Any]:
        """Generate text for ``prompt``, holding the GPU while it does."""
        model = self._model()
        text = model.generate(prompt, max_tokens)
        output_tokens = model.count_tokens(text)
        time.sleep(model.gpu_seconds(output_tokens))
        gpuledger.record_tokens(input=model.count_tokens(prompt), output=output_tokens)
        return {"output": text}

    @modal.method()
    async def generate_async(
        self, prompt: str, user: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS
    ) -> dict[str, Any]:
        """``generate`` for an async server: inputs overlap in the container."""
        model = self._model()
        text = model.generate(prompt, max_tokens)
        output_tokens = model.count_tokens(text)
        await asyncio.sleep(model.gpu_seconds(output_tokens))
        gpuledger.record_tokens(input=model.count_tokens(prompt), output=output_tokens)
        return {"output": text}


@app.local_entrypoint()
def main(prompt: str = "hello from modal", user: str = "user-42") -> None:
    """``modal run app.py``: one call of each, in Modal's cloud."""
    print(embed.remote(prompt, user=user))
    print(Generator().generate.remote(prompt, user=user))


async def _run_locally() -> None:
    """Every kind of call once, in this process (``.local()``), then the ledger is flushed.

    All of them share this one process, and gpuledger counts one cold start per process: its
    first call. The class goes first, so that call is ``Generator.generate``, whose
    ``@modal.enter`` (``load_model``) is part of its cold start, as on a fresh container.
    """
    generator = Generator()
    print(generator.generate.local("hello world", user="user-42"))
    print(generator.generate.local("and again", user="user-7"))
    replies = await asyncio.gather(
        *(generator.generate_async.local(f"prompt {n}", user="user-9") for n in range(4))
    )
    print(replies)
    print(embed.local("hello world", user="user-42"))
    gpuledger.flush()


if __name__ == "__main__":
    asyncio.run(_run_locally())
