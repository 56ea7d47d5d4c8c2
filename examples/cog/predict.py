"""A Replicate/Cog model instrumented with gpuledger.

Cog's pattern: ``setup()`` loads the model once per container, ``predict()`` serves each
prediction. ``@traced_predictor`` on the class is all gpuledger adds: ``setup()`` becomes the init
phase ``setup`` of the cold start, and each ``predict()`` one invocation (a ledger row and a span;
its id is one gpuledger makes, as Cog 0.23 does not give the predictor its prediction id). The
inputs, their ``Input(...)`` metadata and the output type are untouched, so Cog's OpenAPI schema
is the same as without gpuledger.

The "model" is a deterministic stand-in (no download, no torch, no GPU): ``EXAMPLE_SETUP_S``
(default 0.5) is how long ``setup()`` takes, ``EXAMPLE_SECONDS_PER_TOKEN`` (default 0.002) how
long each generated word takes.

``Predictor`` returns the whole text; ``StreamingPredictor`` yields it word by word (Cog streams
an ``Iterator[str]`` output). cog.yaml names the one to serve.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator

from cog import BasePredictor, Input

import gpuledger
from gpuledger.instrumentation.cog import traced_predictor


class ToyModel:
    """A stand-in language model: the same prompt always gives the same words."""

    def __init__(self, seconds_per_token: float) -> None:
        self.vocabulary = tuple(f"w{index:03d}" for index in range(256))
        self.seconds_per_token = seconds_per_token
        """Simulated GPU time per generated word, in seconds."""

    @classmethod
    def load(cls) -> ToyModel:
        """Take ``EXAMPLE_SETUP_S`` seconds, as reading weights onto the GPU would."""
        time.sleep(float(os.environ.get("EXAMPLE_SETUP_S", "0.5")))
        return cls(float(os.environ.get("EXAMPLE_SECONDS_PER_TOKEN", "0.002")))

    def words(self, prompt: str, max_tokens: int) -> Iterator[str]:
        """Up to ``max_tokens`` words determined by ``prompt``, each after its GPU time."""
        if not prompt.strip():
            raise ValueError("prompt must not be empty")
        digest = hashlib.sha256(prompt.encode()).digest()
        for index in range(max_tokens):
            time.sleep(self.seconds_per_token)
            yield self.vocabulary[digest[index % len(digest)]]


@traced_predictor(user=lambda self, **inputs: inputs.get("user") or None)  # known on entry
class Predictor(BasePredictor):
    """Generate text for a prompt, all at once."""

    def setup(self) -> None:
        """Load the model: the init phase ``setup``."""
        self.model = ToyModel.load()

    def predict(
        self,
        prompt: str = Input(description="Text to continue"),
        max_tokens: int = Input(description="Words to generate", default=8, ge=1, le=64),
        user: str = Input(description="Who asked, for the cost report", default=""),
    ) -> str:
        """The generated text (a ValueError for an empty prompt: the prediction fails)."""
        text = " ".join(self.model.words(prompt, max_tokens))
        gpuledger.record_tokens(input=len(prompt.split()), output=max_tokens)
        return text


@traced_predictor
class StreamingPredictor(BasePredictor):
    """Generate text for a prompt, streamed word by word."""

    def setup(self) -> None:
        """Load the model: the init phase ``setup``."""
        self.model = ToyModel.load()

    def predict(
        self,
        prompt: str = Input(description="Text to continue"),
        max_tokens: int = Input(description="Words to generate", default=8, ge=1, le=64),
    ) -> Iterator[str]:
        """Each generated word as soon as it is made; the invocation ends with the stream."""
        yield from self.model.words(prompt, max_tokens)
        gpuledger.record_tokens(input=len(prompt.split()), output=max_tokens)
