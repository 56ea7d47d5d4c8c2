"""The Modal example (examples/modal/app.py) and gpuledger.instrumentation.modal, driven through
the real modal package with ``.local()``: no Modal account, each call runs in this process."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.ledgers import union_seconds

modal = pytest.importorskip("modal")

import gpuledger  # noqa: E402
from gpuledger.instrumentation.modal import traced_cls, traced_function  # noqa: E402

from .conftest import Telemetry  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "modal" / "app.py"

# .local() warns that the example's ledger Volume is not mounted here; that is expected.
pytestmark = pytest.mark.filterwarnings("ignore:The .* function is executing locally")


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpuledger_modal_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """The example app, imported once (as Modal imports it in each container)."""
    return _load_example()


@pytest.fixture(autouse=True)
def instant_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in model loads and generates without waiting, unless a test says otherwise."""
    monkeypatch.setenv("EXAMPLE_MODEL_LOAD_S", "0")
    monkeypatch.setenv("EXAMPLE_SECONDS_PER_TOKEN", "0")


def test_a_function_call_is_one_invocation(example: ModuleType, telemetry: Telemetry) -> None:
    """``@app.function`` over ``@traced_function``: each .local() call is one row."""
    first = example.embed.local("hello world", user="user-42")
    second = example.embed.local("hello world")
    assert len(first) == 8
    rows = telemetry.rows()
    assert [row["handler"] for row in rows] == ["embed", "embed"]
    assert [row["cold"] for row in rows] == [1, 0]
    assert rows[0]["user_id"] == "user-42"
    assert rows[1]["user_id"] is None
    assert [row["input_tokens"] for row in rows] == [2, 2]
    assert second == first
    assert rows[0]["invocation_id"] != rows[1]["invocation_id"]


def test_the_first_method_call_is_cold_with_the_enter_phase(
    example: ModuleType, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``@modal.enter`` is the init phase ``load_model`` of the first, cold, method call."""
    monkeypatch.setenv("EXAMPLE_MODEL_LOAD_S", "0.05")
    generator = example.Generator()
    reply = generator.generate.local("hello world", user="user-1")
    generator.generate.local("and again", user="user-2")
    rows = telemetry.rows()
    assert [row["handler"] for row in rows] == ["Generator.generate"] * 2
    assert [row["cold"] for row in rows] == [1, 0]
    phases = json.loads(rows[0]["init_phases"])
    assert set(phases) == {"load_model", "(unnamed)"}
    assert rows[1]["init_phases"] is None
    assert [row["user_id"] for row in rows] == ["user-1", "user-2"]
    assert rows[0]["output_tokens"] == 16
    assert reply == {"output": example.ToyModel(0).generate("hello world", 16)}
    spans = telemetry.spans("Generator.generate")
    assert [span.attributes["faas.coldstart"] for span in spans] == [True, False]


def test_the_local_run_makes_the_class_first_call_the_cold_one(
    example: ModuleType, telemetry: Telemetry
) -> None:
    """``python app.py``'s calls share one process, whose first call is its one cold start:
    that is ``Generator.generate``, with ``load_model``, as the README says; ``embed`` is warm."""
    asyncio.run(example._run_locally())
    rows = telemetry.rows()
    assert [row["handler"] for row in rows] == (
        ["Generator.generate"] * 2 + ["Generator.generate_async"] * 4 + ["embed"]
    )
    assert [row["cold"] for row in rows] == [1, 0, 0, 0, 0, 0, 0]
    assert set(json.loads(rows[0]["init_phases"])) == {"load_model", "(unnamed)"}


def test_the_deploy_image_takes_gpuledger_from_the_checkout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gpuledger is not on PyPI: the image installs the dependencies of the checkout's
    pyproject.toml and adds each folder of its package-dir where ``import gpuledger...`` finds
    it in the container (under /root, on Modal's sys.path)."""
    calls: list[tuple[str, str, str]] = []
    real_pyproject = modal.Image.pip_install_from_pyproject
    real_dir = modal.Image.add_local_dir
    real_pip = modal.Image.pip_install

    def pip_install_from_pyproject(self: Any, pyproject: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(("pyproject", str(pyproject), ""))
        return real_pyproject(self, pyproject, *args, **kwargs)

    def add_local_dir(self: Any, local: Any, remote: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(("dir", str(local), remote))
        return real_dir(self, local, remote, *args, **kwargs)

    def pip_install(self: Any, *packages: Any, **kwargs: Any) -> Any:
        calls.append(("pip", " ".join(map(str, packages)), ""))
        return real_pip(self, *packages, **kwargs)

    monkeypatch.setattr(modal.Image, "pip_install_from_pyproject", pip_install_from_pyproject)
    monkeypatch.setattr(modal.Image, "add_local_dir", add_local_dir)
    monkeypatch.setattr(modal.Image, "pip_install", pip_install)
    _load_example()

    root = EXAMPLE.parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    package_dirs = pyproject["tool"]["setuptools"]["package-dir"]
    assert ("pyproject", str(root / "pyproject.toml"), "") in calls
    assert {call for call in calls if call[0] == "dir"} == {
        ("dir", str(root / source), "/root/" + package.replace(".", "/"))
        for package, source in package_dirs.items()
    }
    assert not [call for call in calls if call[0] == "pip" and "gpuledger" in call[1]]


def test_the_enter_phase_is_timed(example: ModuleType, telemetry: Telemetry) -> None:
    """The phase lasts as long as the ``@modal.enter`` method ran (fake clock)."""

    def slow_load(self: Any) -> None:
        telemetry.clock.advance(2.5)
        self.model = example.ToyModel(0)

    @modal.App("timed").cls(serialized=True)
    @traced_cls
    class Timed:
        model: Any = None

        @modal.enter()
        def load_model(self) -> None:
            slow_load(self)

        @modal.method()
        def generate(self, prompt: str) -> str:
            telemetry.clock.advance(1.0)
            return str(self.model.generate(prompt, 2))

    assert Timed().generate.local("hi") == example.ToyModel(0).generate("hi", 2)
    (row,) = telemetry.rows()
    assert row["cold"] == 1
    assert json.loads(row["init_phases"])["load_model"] == pytest.approx(2.5)
    assert row["duration_s"] == pytest.approx(1.0)
    assert row["billed_gpu_seconds"] == pytest.approx(1.0)


def test_exceptions_and_results_pass_through(example: ModuleType, telemetry: Telemetry) -> None:
    """A method that raises raises the same exception; the row says ``error``."""
    generator = example.Generator()
    with pytest.raises(ValueError, match="the prompt is empty") as raised:
        generator.generate.local("   ")
    assert type(raised.value) is ValueError
    reply = generator.generate.local("fine", max_tokens=3)
    assert reply == {"output": example.ToyModel(0).generate("fine", 3)}
    rows = telemetry.rows()
    assert [(row["outcome"], row["error_type"]) for row in rows] == [
        ("error", "ValueError"),
        ("ok", None),
    ]


def test_concurrent_async_calls_split_the_billed_time(
    example: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four overlapping inputs of a ``@modal.concurrent`` method (real time, 0.16 s each): their
    billed seconds add up to the time at least one ran, not to the sum of their durations."""
    ledger = tmp_path / "ledger.db"
    gpuledger.configure(
        ledger=str(ledger), platform="modal", gpu="H100", strict=True, gpu_metering="off"
    )
    monkeypatch.setenv("EXAMPLE_SECONDS_PER_TOKEN", "0.01")
    generator = example.Generator()
    generator.generate.local("warm up", max_tokens=1)  # runs @modal.enter (async .local() won't)

    async def burst() -> list[dict[str, Any]]:
        calls = [generator.generate_async.local(f"prompt {n}", user="u") for n in range(4)]
        return list(await asyncio.gather(*calls))

    replies = asyncio.run(burst())
    assert [reply["output"] for reply in replies] == [
        example.ToyModel(0).generate(f"prompt {n}", 16) for n in range(4)
    ]
    assert gpuledger.flush(5)
    with sqlite3.connect(ledger) as db:
        db.row_factory = sqlite3.Row
        rows = [
            dict(row)
            for row in db.execute(
                "SELECT * FROM invocations WHERE handler = 'Generator.generate_async'"
            )
        ]
    assert len(rows) == 4
    billed = sum(row["billed_gpu_seconds"] for row in rows)
    union = union_seconds([(row["start_ns"], row["end_ns"]) for row in rows])
    assert billed == pytest.approx(union, rel=1e-6)
    for row in rows:
        assert row["duration_s"] >= 0.15
        assert row["billed_gpu_seconds"] < 0.5 * row["duration_s"]  # shared four ways
        assert row["platform"] == "modal"


def test_overlapping_inputs_split_exactly(telemetry: Telemetry) -> None:
    """A runs 0-3 s and B 1-4 s in one container: each is billed 1 s alone + 1 s shared."""
    clock = telemetry.clock

    @modal.App("overlap").cls(serialized=True)
    @modal.concurrent(max_inputs=2)
    @traced_cls
    class Server:
        @modal.method()
        async def serve(self, started: asyncio.Event, release: asyncio.Event) -> str:
            started.set()
            await release.wait()
            return "done"

    async def scenario() -> list[str]:
        server = Server()
        a_started, a_release = asyncio.Event(), asyncio.Event()
        b_started, b_release = asyncio.Event(), asyncio.Event()
        a = asyncio.ensure_future(server.serve.local(a_started, a_release))
        await a_started.wait()  # A starts at 0
        clock.advance(1.0)
        b = asyncio.ensure_future(server.serve.local(b_started, b_release))
        await b_started.wait()  # B starts at 1
        clock.advance(2.0)
        a_release.set()
        first = await a  # A ends at 3
        clock.advance(1.0)
        b_release.set()
        return [first, await b]  # B ends at 4

    assert asyncio.run(scenario()) == ["done", "done"]
    rows = telemetry.rows()
    assert [row["duration_s"] for row in rows] == [pytest.approx(3.0)] * 2
    assert [row["billed_gpu_seconds"] for row in rows] == [pytest.approx(2.0)] * 2


def test_platform_and_resource_come_from_modals_environment(
    example: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not configured: Modal's variables make the platform ``modal``, with task and region."""
    monkeypatch.setenv("MODAL_TASK_ID", "ta-01TEST")
    monkeypatch.setenv("MODAL_REGION", "us-east-1")
    monkeypatch.setenv("MODAL_APP_NAME", "gpuledger-example")
    monkeypatch.setenv("GPULEDGER_LEDGER", str(tmp_path / "ledger.db"))
    monkeypatch.setenv("GPULEDGER_GPU_METERING", "off")
    monkeypatch.setenv("GPULEDGER_STRICT", "1")
    example.embed.local("hello")
    assert gpuledger.flush(5)
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        row = db.execute("SELECT platform, worker_id, region, endpoint FROM invocations").fetchone()
    assert row == ("modal", "ta-01TEST", "us-east-1", "gpuledger-example")


def test_decorators_over_modals_are_refused_with_the_fix() -> None:
    """Above ``@app.cls``/``@app.function`` the decorators raise and say which order works."""
    app = modal.App("order")

    class Plain:
        @modal.method()
        def f(self) -> None: ...

    with pytest.raises(TypeError, match=r"under @app\.cls\(\)"):
        traced_cls(app.cls(serialized=True)(Plain))

    def g() -> None: ...

    with pytest.raises(TypeError, match=r"under @app\.function\(\)"):
        traced_function(app.function(serialized=True)(g))


def test_tracing_twice_changes_nothing(telemetry: Telemetry) -> None:
    """``traced_cls`` skips methods already traced; applying it twice records one invocation."""

    @modal.App("twice").cls(serialized=True)
    @traced_cls
    @traced_cls
    class Twice:
        @modal.method()
        @traced_function(name="custom")
        def a(self) -> int:
            return 1

        @modal.method()
        def b(self) -> int:
            return 2

    instance = Twice()
    assert (instance.a.local(), instance.b.local()) == (1, 2)
    assert [row["handler"] for row in telemetry.rows()] == ["custom", "Twice.b"]


def test_importing_the_instrumentation_does_not_import_modal() -> None:
    """``import gpuledger.instrumentation.modal`` leaves ``modal`` unimported."""
    code = (
        "import sys, gpuledger.instrumentation.modal\n"
        "assert 'modal' not in sys.modules, 'modal imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_call_over_an_enforced_budget_raises_budget_exceeded_without_running(
    tmp_path: Path,
) -> None:
    """Through the real modal package: the function of a tenant over an enforced budget raises
    ``gpuledger.BudgetExceeded`` (as ``.remote()`` raises any exception of the function) and
    its body never runs; another tenant's call runs."""
    from gpuledger.ledger import open_ledger
    from gpuledger.testing import FakeClock, capture_telemetry
    from tests.support.ledgers import make_record

    clock = FakeClock()
    ledger = tmp_path / "ledger.db"
    with open_ledger(str(ledger)) as opened:
        opened.write([make_record(1, tenant="acme", start_ns=clock.time_ns(), cost_usd=3.0)])
    budget = {"scope": "tenant", "key": "acme", "window": "30d", "limit_usd": 2, "mode": "enforce"}
    ran: list[str] = []
    with capture_telemetry(
        ledger, clock=clock, platform="modal", gpu="H100", budgets=[budget]
    ) as capture:

        @modal.App("budgets").function(serialized=True)
        @traced_function(tenant=lambda prompt, team: team)
        def generate(prompt: str, team: str) -> str:
            ran.append(team)
            return prompt.upper()

        with pytest.raises(gpuledger.BudgetExceeded, match="tenant 'acme' is over its 30d budget"):
            generate.local("hi", "acme")
        assert generate.local("hi", "globex") == "HI"
        outcomes = {row["tenant"]: row["outcome"] for row in capture.rows()[1:]}
    assert ran == ["globex"]
    assert outcomes == {"acme": "rejected", "globex": "ok"}
