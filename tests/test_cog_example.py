"""The Cog example (examples/cog/predict.py) served by the real Cog HTTP server, and the adapter.

The slow tests start Cog 0.23's server (coglet) as its image does, without Docker, from a venv of
its own that holds ``cog`` and gpuledger's dependencies (made once per machine, see
``cog_gpuledger_python``); gpuledger itself comes from this checkout, through a tree of links
made per session, so the server always runs the code under test. Cog runs the predictor in a
worker subprocess: gpuledger is configured there from the ``GPULEDGER_*`` variables the test
gives the server, which is what the tests check, along with the ledger rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuledger.instrumentation.cog import SETUP_PHASE, traced_predictor
from gpuledger.ledger import open_ledger
from tests.support.ledgers import ledger_rows, make_record
from tests.support.processes import HOST, free_port, log_tail, spawn
from tests.support.upstreams import COG_VERSION
from tests.support.venvs import (
    PYTHON_VERSION,
    cached_venv,
    gpuledger_dependencies,
    link_gpuledger,
    venv_or_skip,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cog"
SETUP_S = 0.4
"""What the tests ask the example's setup() to take (EXAMPLE_SETUP_S), in seconds."""
READY_TIMEOUT_S = 60.0
PREDICT_TIMEOUT_S = 60.0
SLOT_TIMEOUT_S = 10.0
"""How long Cog may take to free its slot after answering a prediction, in seconds."""


# -- the venv: cog + gpuledger's dependencies, gpuledger from this checkout -----------------------


def _cog_venv() -> Path:
    """The Python of a cached venv with Cog and gpuledger's dependencies (not gpuledger)."""
    requirements = [f"cog=={COG_VERSION}", *gpuledger_dependencies()]
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:10]
    check = "import cog.server.http, opentelemetry.sdk, structlog, wrapt, click, pynvml"
    venv = cached_venv(
        f"cog-{COG_VERSION}-gpuledger-deps-{key}-py{PYTHON_VERSION}",
        requirements,
        lambda venv: [str(venv / "bin" / "python"), "-c", check],
    )
    return venv / "bin" / "python"


@pytest.fixture(scope="session")
def cog_gpuledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(python, site): Cog's venv with gpuledger's deps, and the folder for its PYTHONPATH."""
    python = venv_or_skip(_cog_venv, f"cog=={COG_VERSION} + gpuledger's dependencies")
    return python, link_gpuledger(tmp_path_factory.mktemp("cog-site"))


# -- the server ------------------------------------------------------------------------------


class CogServer:
    """Cog's HTTP server for one predictor class of the example, on 127.0.0.1."""

    def __init__(
        self,
        python: Path,
        site: Path,
        workdir: Path,
        predictor: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log = workdir / f"cog-{predictor}.log"
        self.ledger = workdir / "ledger.db"
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("GPULEDGER_", "OTEL_", "COG_", "REPLICATE_", "EXAMPLE_"))
            and name != "PYTHONPATH"
        }
        env.update(
            PORT=str(self.port),
            COG_PREDICT_TYPE_STUB=f"predict.py:{predictor}",
            PATH=f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONPATH=str(site),
            PYTHONUNBUFFERED="1",
            # Read in Cog's worker subprocess, which inherits the server's environment.
            GPULEDGER_LEDGER=str(self.ledger),
            GPULEDGER_GPU="H100",
            GPULEDGER_WORKER_ID="cog-test-worker",
            GPULEDGER_SERVICE_NAME="cog-example",
            GPULEDGER_EXPORTERS="none",
            GPULEDGER_GPU_METERING="off",
            GPULEDGER_STRICT="1",
            EXAMPLE_SETUP_S=str(SETUP_S),
            EXAMPLE_SECONDS_PER_TOKEN="0.001",
        )
        env.update(extra_env or {})
        argv = [str(python), "-m", "cog.server.http", "--host", HOST]
        # The example's folder is the app's working directory, as /src is in Cog's image.
        self.proc = spawn(argv, self.log, env=env, cwd=EXAMPLE)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def health(self) -> str | None:
        """Cog's status from /health-check (STARTING, READY, BUSY, ...); None if no answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/health-check", timeout=2) as response:
                status: str | None = json.load(response).get("status")
        except (OSError, ValueError):
            return None
        return status

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll /health-check until Cog says READY: setup() returned, and a slot is free."""
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            status = self.health()
            if status == "READY":
                return
            time.sleep(0.01)
        raise AssertionError(f"Cog not ready (last status {status}):\n{log_tail(self.log, 60)}")

    def predict(self, identifier: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """PUT /predictions/{id}, wait for its answer (Cog's synchronous mode), then for Cog to
        free its slot.

        Cog 0.23 answers a synchronous prediction before its slot is free again (coglet hands
        the slot back in a task of its own once the worker says it is idle), and until then
        /health-check says BUSY and the next PUT gets 409 "At capacity - all prediction slots
        busy". So a prediction is over, for the next one, when Cog says READY again.
        """
        request = urllib.request.Request(
            f"{self.url}/predictions/{identifier}",
            data=json.dumps({"id": identifier, "input": inputs}).encode(),
            headers={"Content-Type": "application/json"},
            method="PUT",
        )
        try:
            with urllib.request.urlopen(request, timeout=PREDICT_TIMEOUT_S) as response:
                answer: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as error:
            answer = json.loads(error.read() or b"{}")
        self.wait_ready(SLOT_TIMEOUT_S)
        return answer

    def schema(self) -> dict[str, Any]:
        """Cog's OpenAPI schema, built from predict()'s signature."""
        with urllib.request.urlopen(f"{self.url}/openapi.json", timeout=10) as response:
            schema: dict[str, Any] = json.load(response)
        return schema

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of its process group (the worker subprocess too)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


@contextlib.contextmanager
def cog_server(
    cog_gpuledger: tuple[Path, Path],
    workdir: Path,
    predictor: str,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Any]:
    """A ready Cog server for ``predictor``, stopped afterwards."""
    python, site = cog_gpuledger
    server = CogServer(python, site, workdir, predictor, extra_env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# -- through the real Cog server -------------------------------------------------------------


@pytest.mark.slow
def test_predictions_are_ledgered_cold_then_warm(
    cog_gpuledger: tuple[Path, Path], tmp_path: Path
) -> None:
    """Cog's worker writes a cold row with the setup phase, then warm ones, and a failed one."""
    with cog_server(cog_gpuledger, tmp_path, "Predictor") as server:
        first = server.predict("pred-1", {"prompt": "hello cold gpu", "user": "user-42"})
        # flush_policy=adaptive: a sparse prediction's row is written before its answer.
        after_first = ledger_rows(server.ledger, 1, timeout=0)
        second = server.predict("pred-2", {"prompt": "warm now", "max_tokens": 3})
        failed = server.predict("pred-3", {"prompt": "   "})
        rows = ledger_rows(server.ledger, 3)
    log = log_tail(server.log, 60)

    assert first["status"] == "succeeded", (first, log)
    assert len(first["output"].split()) == 8  # max_tokens' default, from Input(default=8)
    assert second["status"] == "succeeded", (second, log)
    assert len(second["output"].split()) == 3
    assert failed["status"] == "failed", (failed, log)
    assert "prompt must not be empty" in failed["error"]
    assert len(after_first) == 1, log

    assert len({row["invocation_id"] for row in rows}) == 3, log
    assert [row["outcome"] for row in rows] == ["ok", "ok", "error"]
    assert rows[2]["error_type"] == "ValueError"
    assert [row["cold"] for row in rows] == [1, 0, 0]
    cold = rows[0]
    phases = json.loads(cold["init_phases"])
    assert phases[SETUP_PHASE] >= SETUP_S
    assert cold["init_duration_s"] >= phases[SETUP_PHASE]
    assert cold["user_id"] == "user-42"
    assert (cold["input_tokens"], cold["output_tokens"]) == (3, 8)
    assert rows[1]["init_duration_s"] is None
    assert rows[1]["idle_gap_s"] >= 0
    for row in rows:
        # Each setting reached Cog's worker subprocess through the environment.
        assert row["platform"] == "replicate"
        assert row["gpu_model"] == "H100"
        assert row["worker_id"] == "cog-test-worker"
        assert row["billed_gpu_seconds"] == pytest.approx(row["duration_s"])
        assert row["cost_usd"] is not None and row["cost_usd"] > 0
        assert row["handler"] == "Predictor.predict"


@pytest.mark.slow
def test_a_user_over_an_enforced_budget_gets_a_failed_prediction(
    cog_gpuledger: tuple[Path, Path], tmp_path: Path
) -> None:
    """Through Cog's own server: the user the ledger shows over an enforced budget gets the
    prediction Cog answers for a predictor that raised ("failed", the reason as its error),
    and predict() never ran (no tokens); another user's prediction succeeds."""
    with open_ledger(str(tmp_path / "ledger.db")) as opened:
        opened.write([make_record(1, user_id="user-42", start_ns=time.time_ns(), cost_usd=2.0)])
    budgets = [
        {"scope": "user", "key": "user-42", "window": "1h", "limit_usd": 1, "mode": "enforce"}
    ]
    env = {"GPULEDGER_BUDGETS": json.dumps(budgets)}
    with cog_server(cog_gpuledger, tmp_path, "Predictor", env) as server:
        refused = server.predict("pred-1", {"prompt": "hello", "user": "user-42"})
        passed = server.predict("pred-2", {"prompt": "hello", "user": "user-7"})
        rows = ledger_rows(server.ledger, 3)
    log = log_tail(server.log, 60)
    assert refused["status"] == "failed", (refused, log)
    assert "user 'user-42' is over its 1h budget" in refused["error"]
    assert passed["status"] == "succeeded", (passed, log)
    by_user = {row["user_id"]: row for row in rows[1:]}
    assert by_user["user-42"]["outcome"] == "rejected"
    assert by_user["user-42"]["output_tokens"] is None
    assert by_user["user-7"]["outcome"] == "ok"


@pytest.mark.slow
def test_back_to_back_predictions_find_a_free_slot(
    cog_gpuledger: tuple[Path, Path], tmp_path: Path
) -> None:
    """Each prediction, sent as soon as predict() returned, succeeds: Cog is READY by then."""
    with cog_server(cog_gpuledger, tmp_path, "Predictor") as server:
        answers, statuses = [], []
        for index in range(100):
            answers.append(server.predict(f"quick-{index}", {"prompt": "quick", "max_tokens": 1}))
            statuses.append(server.health())
    log = log_tail(server.log, 60)

    assert [answer.get("status") for answer in answers] == ["succeeded"] * 100, (answers, log)
    assert statuses == ["READY"] * 100, log


@pytest.mark.slow
def test_streaming_predictions_stream_and_are_ledgered(
    cog_gpuledger: tuple[Path, Path], tmp_path: Path
) -> None:
    """An Iterator[str] predictor still streams its words; its invocation ends with the stream."""
    with cog_server(cog_gpuledger, tmp_path, "StreamingPredictor") as server:
        answer = server.predict("stream-1", {"prompt": "stream me", "max_tokens": 5})
        rows = ledger_rows(server.ledger, 1)
    log = log_tail(server.log, 60)

    assert answer["status"] == "succeeded", (answer, log)
    assert isinstance(answer["output"], list)
    assert len(answer["output"]) == 5
    assert len(rows) == 1, log
    (row,) = rows
    assert (row["outcome"], row["cold"], row["output_tokens"]) == ("ok", 1, 5)
    assert row["handler"] == "StreamingPredictor.predict"
    assert json.loads(row["init_phases"])[SETUP_PHASE] >= SETUP_S


# -- the decorator, without Cog --------------------------------------------------------------


class _Base:
    """Stands for cog.BaseRunner in these tests (its own placeholder methods)."""

    def setup(self) -> None:
        """Cog's placeholder."""


def test_decorator_keeps_signatures_and_records_setup_then_predictions(telemetry: Any) -> None:
    """setup() is the init phase, predict() an invocation; both keep their exact signatures."""

    @traced_predictor
    class Predictor(_Base):
        def setup(self, weights: str | None = None) -> None:
            telemetry.clock.advance(2.0)

        def predict(self, prompt: str, count: int = 2) -> list[str]:
            return [prompt] * count

    assert str(inspect.signature(Predictor.predict)) == (
        "(self, prompt: 'str', count: 'int' = 2) -> 'list[str]'"
    )
    spec = inspect.getfullargspec(Predictor.predict)  # what Cog validates, not following wraps
    assert (spec.args, spec.varargs, spec.varkw) == (["self", "prompt", "count"], None, None)
    assert inspect.getfullargspec(Predictor.setup).args == ["self", "weights"]

    predictor = Predictor()
    predictor.setup()
    assert predictor.predict("a", count=3) == ["a", "a", "a"]
    assert predictor.predict(prompt="b") == ["b", "b"]

    first, second = telemetry.rows()
    assert json.loads(first["init_phases"])[SETUP_PHASE] == pytest.approx(2.0)
    assert (first["handler"], first["cold"], second["cold"]) == ("Predictor.predict", 1, 0)


def test_run_generators_and_async_keep_their_kind(telemetry: Any) -> None:
    """run() (BaseRunner) is traced too; generator and coroutine methods stay what they were."""
    import asyncio

    @traced_predictor(name="stream")
    class Runner(_Base):
        def run(self, n: int) -> Iterator[str]:
            yield from (str(index) for index in range(n))

    @traced_predictor
    class AsyncPredictor(_Base):
        async def predict(self, x: int) -> int:
            return x + 1

    assert inspect.isgeneratorfunction(Runner.run)
    assert inspect.iscoroutinefunction(AsyncPredictor.predict)
    assert list(Runner().run(3)) == ["0", "1", "2"]
    assert asyncio.run(AsyncPredictor().predict(1)) == 2
    assert [row["handler"] for row in telemetry.rows()] == ["stream", "AsyncPredictor.predict"]


def test_decorating_twice_traces_once(telemetry: Any) -> None:
    """A class decorated twice records one invocation per prediction."""

    class Predictor(_Base):
        def predict(self, x: int) -> int:
            return x

    traced_predictor(traced_predictor(Predictor)).setup(Predictor())
    assert Predictor().predict(1) == 1
    assert len(telemetry.rows()) == 1


def test_misuse_is_a_type_error() -> None:
    """A function, or a class with neither or both of run() and predict(), is refused."""

    def predict(x: int) -> int:
        return x

    class Neither(_Base):
        pass

    class Both(_Base):
        def run(self) -> int:
            return 1

        def predict(self) -> int:
            return 1

    for target in (predict, Neither, Both):
        with pytest.raises(TypeError):
            traced_predictor(target)
    with pytest.raises(ValueError, match="setup_phase"):
        traced_predictor(setup_phase="")


def test_module_imports_without_cog() -> None:
    """Importing the adapter (and gpuledger) loads no cog module."""
    code = (
        "import sys, gpuledger.instrumentation.cog; "
        "assert not [m for m in sys.modules if m == 'cog' or m.startswith(('cog.', 'coglet'))]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
