"""The agent's warnings never break a Cog model: every warning path through the real Cog server.

Cog 0.23 replaces ``sys.stderr`` in its worker subprocess with a writer that cannot be weakly
referenced; a logger that needs one (structlog's ``PrintLogger``) made Cog's setup fail on the
first warning gpuledger said ("Setup failed: TypeError: cannot create weak reference to
'coglet._sdk._SlotLogWriter' object"). Each case below makes gpuledger warn (an unknown GPU, a
machine with no GPU, NVML failing to start, NVML failing mid-request) at the most verbose level,
in Cog's worker, through Cog's own streams; each must reach READY, answer the prediction, write
its row, and show gpuledger's line in Cog's log. The four servers start side by side.

NVML is replayed (this machine has no GPU) through a ``pynvml`` stand-in placed first on the
worker's path: it loads the real ``pynvml`` and puts a :class:`~gpuledger.testing.nvml.ReplayNvml`
of a recording in its place, so the agent's default ``import pynvml`` gets the replay.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpuledger.testing.nvml import save_recording, synthetic_recording
from tests.support.ledgers import ledger_rows
from tests.support.processes import HOST, log_tail, spawn
from tests.test_cog_example import EXAMPLE, CogServer, cog_gpuledger

__all__ = ["cog_gpuledger"]  # the fixture, used by name below

PYNVML_STAND_IN = '''\
"""pynvml, replayed: the real module's classes, a recording's behaviour (tests only)."""
import importlib, os, sys, time

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
del sys.modules[__name__]
importlib.import_module("pynvml")  # the real one, which the replay builds on
from gpuledger.testing.nvml import ReplayNvml, load_recording

sys.modules[__name__] = ReplayNvml(load_recording(os.environ["TEST_NVML_RECORDING"]), time.time_ns)
'''


def _recording(tmp_path: Path, file: str, **kwargs: object) -> Path:
    path = tmp_path / f"{file}.json"
    save_recording(synthetic_recording(duration_s=600.0, **kwargs), path)  # type: ignore[arg-type]
    return path


class WarningCogServer(CogServer):
    """Cog's server for the example's Predictor with extra environment, not strict."""

    def __init__(
        self, python: Path, site: Path, workdir: Path, env: dict[str, str], stand_in: Path | None
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        from tests.support.processes import free_port

        self.port = free_port()
        self.log = workdir / "cog.log"
        self.ledger = workdir / "ledger.db"
        base = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("GPULEDGER_", "OTEL_", "COG_", "REPLICATE_", "EXAMPLE_"))
            and name not in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")
        }
        path = [str(stand_in)] if stand_in is not None else []
        base.update(
            PORT=str(self.port),
            COG_PREDICT_TYPE_STUB="predict.py:Predictor",
            PATH=f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONPATH=os.pathsep.join([*path, str(site)]),
            PYTHONUNBUFFERED="1",
            GPULEDGER_LEDGER=str(self.ledger),
            GPULEDGER_EXPORTERS="none",
            GPULEDGER_LOG_LEVEL="debug",  # every line gpuledger can say, through Cog's streams
            GPULEDGER_FLUSH_POLICY="invocation",
            EXAMPLE_SETUP_S="0.05",
            EXAMPLE_SECONDS_PER_TOKEN="0.001",
            **env,
        )
        argv = [str(python), "-m", "cog.server.http", "--host", HOST]
        self.proc = spawn(argv, self.log, env=base, cwd=EXAMPLE)


@pytest.mark.slow
def test_every_warning_path_leaves_cog_serving(
    cog_gpuledger: tuple[Path, Path], tmp_path: Path
) -> None:
    """Unknown GPU, no GPU, NVML failing to start, NVML failing mid-request: Cog's setup
    succeeds, the prediction succeeds, its row is written, and gpuledger's line is in the log."""
    python, site = cog_gpuledger
    stand_in = tmp_path / "nvml-stand-in"
    stand_in.mkdir()
    (stand_in / "pynvml.py").write_text(PYNVML_STAND_IN, encoding="utf-8")
    gpu_lost = [{"function": "*", "error": "GpuIsLost", "from_us": 0, "until_us": None}]
    cases: dict[str, tuple[dict[str, str], Path | None, str]] = {
        # name: (environment, pynvml stand-in folder, what gpuledger's log line says)
        "unknown_gpu": (
            {"GPULEDGER_GPU": "MadeUpGPU-9000", "GPULEDGER_GPU_METERING": "off"},
            None,
            "no price for this platform and GPU",
        ),
        "no_gpu": ({}, None, "GPU model unknown"),
        "nvml_fails_to_start": (
            {"TEST_NVML_RECORDING": str(_recording(tmp_path, "init"))},
            stand_in,
            "no GPU metering",
        ),
        "nvml_fails_mid_request": (
            {
                "TEST_NVML_RECORDING": str(
                    _recording(tmp_path, "lost", errors=gpu_lost, name="NVIDIA H100 80GB HBM3")
                )
            },
            stand_in,
            "GpuIsLost",
        ),
    }
    # NVML failing to start: the recording's nvmlInit raises.
    init = json.loads(Path(cases["nvml_fails_to_start"][0]["TEST_NVML_RECORDING"]).read_text())
    init["init_error"] = "DriverNotLoaded"
    Path(cases["nvml_fails_to_start"][0]["TEST_NVML_RECORDING"]).write_text(json.dumps(init))

    servers = {
        name: WarningCogServer(python, site, tmp_path / name, env, folder)
        for name, (env, folder, _) in cases.items()
    }
    try:
        answers = {}
        for name, server in servers.items():
            server.wait_ready()
            answers[name] = server.predict(f"pred-{name}", {"prompt": "hello", "user": "u-1"})
        rows = {name: ledger_rows(server.ledger, 1) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    for name, (_, _, said) in cases.items():
        log = log_tail(servers[name].log, 80)
        assert answers[name].get("status") == "succeeded", (name, answers[name], log)
        assert len(rows[name]) == 1, (name, log)
        assert rows[name][0]["outcome"] == "ok", (name, log)
        assert said in log, (name, log)
        assert "weak reference" not in log, (name, log)
        assert "Traceback" not in log, (name, log)
