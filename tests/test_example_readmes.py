"""The commands of the examples' READMEs, run as they are written there, from a checkout.

Each test reads its README's ``bash`` code blocks and runs every command in them, in order, as
a reader would, then checks what the README says they leave (ledger rows, answers); a command it
does not run must be one of the deploy commands it lists as skipped (they need accounts, Docker
or a registry), so the README and the test cannot drift apart silently.

What differs from a reader's run, and why:

- The venv line (``python3 -m venv .venv && . .venv/bin/activate``) and the ``pip install``
  lines are run once per machine: into a venv under the test cache, from the example's folder of
  this checkout (so ``../..`` is the checkout), keyed by the install lines, ``requirements.txt``,
  what of ``pyproject.toml`` the install reads (build, layout, dependencies, the extras named) and
  the checkout's path. A changed install line makes (and so tests) a new venv; the editable
  install keeps running this checkout's current code.
- The other commands run in a copy of the example folder under ``tmp_path``, so the ledgers they
  write never land in the checkout.
- Ports the README names (8000, 5000) become free ports, and the placeholder ``test-<uuid>``
  the id the server answered.
- Servers (``--rp_serve_api``, ``cog.server.http``, ``python app.py``) run in the background
  until their commands are done, then get the signal the README says stops them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.ledgers import ledger_rows, union_seconds
from tests.support.processes import HOST, free_port, log_tail, spawn
from tests.support.processes import stop as stop_process
from tests.support.venvs import (
    PIP_TIMEOUT_S,
    PYTHON_VERSION,
    cached_venv_made_by,
    clean_env,
    run_step,
    venv_or_skip,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
COMMAND_TIMEOUT_S = 60.0
SERVER_READY_TIMEOUT_S = 60.0
ROWS_TIMEOUT_S = 10.0
VENV_LINE = re.compile(r"^python3 -m venv (?P<dir>\S+) && \. (?P=dir)/bin/activate(\s+#.*)?$")
README_PORTS = (5000, 8000)
_FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")


# -- reading a README ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Command:
    """One command of a README's ``bash`` blocks: its text as written (continuation lines
    included), and the line of the README it starts on."""

    text: str
    line: int

    @property
    def words(self) -> str:
        """The text on one line, runs of blanks made one: what prefixes are matched against."""
        return " ".join(self.text.replace("\\\n", " ").split())

    @property
    def program(self) -> str:
        """The program it runs: the first word after any ``NAME=value`` assignments."""
        for word in shlex.split(self.words, comments=True):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word):
                return word
        return ""


def readme_commands(readme: Path) -> list[Command]:
    """Every command of the ``bash`` blocks of ``readme``, in order; comment lines are left out."""
    commands: list[Command] = []
    language: str | None = None
    pending: list[str] = []
    start = 0
    for number, line in enumerate(readme.read_text(encoding="utf-8").splitlines(), start=1):
        fence = _FENCE.match(line)
        if fence:
            assert not pending, f"{readme}:{start}: a command goes on past its block's end"
            language = None if language is not None else fence["lang"]
            continue
        if language != "bash":
            continue
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            start = number
        pending.append(line)
        if not line.endswith("\\") and _quotes_closed("\n".join(pending)):
            commands.append(Command("\n".join(pending), start))
            pending = []
    return commands


def _quotes_closed(text: str) -> bool:
    """Whether ``text`` closes every quote it opens (else the command goes on, as in bash)."""
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return False
    return True


def is_install(command: Command) -> bool:
    """Whether ``command`` is a ``pip install`` line."""
    return command.words.startswith("pip install ")


# -- the README's venv -------------------------------------------------------------------------


def _install_relevant_pyproject(install_text: str) -> str:
    """What of pyproject.toml installing the checkout as ``install_text`` says depends on: the
    build, the package layout, the dependencies and the extras it names (``../..[runpod]``)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"].get("optional-dependencies", {})
    named = {
        extra.strip()
        for group in re.findall(r"\.\./\.\.\[([^\]]*)\]", install_text)
        for extra in group.split(",")
    }
    relevant = {
        "build": pyproject["build-system"],
        "setuptools": pyproject["tool"]["setuptools"],
        "dependencies": pyproject["project"].get("dependencies"),
        "extras": {name: extras.get(name) for name in sorted(named)},
    }
    return json.dumps(relevant, sort_keys=True)


def readme_venv(example: str, commands: Sequence[Command], check_imports: str) -> Path:
    """The venv the README's venv and install lines make, run from the example's folder of this
    checkout; made once per machine (see the module's docstring for the key)."""
    folder = EXAMPLES / example
    setup = [
        command
        for command in commands
        if command.words.startswith("cd ") or VENV_LINE.match(command.words) or is_install(command)
    ]
    installs = [command for command in setup if is_install(command)]
    assert installs, f"{example}/README.md has no pip install line"
    key_parts = [command.words for command in setup]
    key_parts += [path.read_text(encoding="utf-8") for path in sorted(folder.glob("requir*.txt"))]
    key_parts += [str(ROOT), _install_relevant_pyproject("\n".join(key_parts))]
    key = hashlib.sha256("\n".join(key_parts).encode()).hexdigest()[:10]

    def install(venv: Path, log: Path) -> None:
        env = {"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        cwd = ROOT  # the README starts at the checkout's root
        for command in setup:
            if command.words.startswith("cd "):
                cwd = (cwd / shlex.split(command.words)[1]).resolve()
            elif is_install(command):
                run_step(["bash", "-c", command.text], log, PIP_TIMEOUT_S, command.words,
                         cwd=cwd, env=env)  # fmt: skip

    # gpuledger must come from this checkout, and the example's own framework must be there.
    check = f"import gpuledger; assert gpuledger.__file__.startswith({str(ROOT) + os.sep!r}); "
    return venv_or_skip(
        lambda: cached_venv_made_by(
            f"readme-{example}-{key}-py{PYTHON_VERSION}",
            install,
            lambda venv: [str(venv / "bin" / "python"), "-c", check + check_imports],
            "\n".join(command.words for command in installs),
        ),
        f"examples/{example}/README.md's install lines",
    )


# -- running the commands --------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    """A README command running in the background."""

    command: Command
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """What it printed so far (stdout and stderr)."""
        return self.log.read_text(encoding="utf-8", errors="replace")


class ReadmeShell:
    """A reader's shell going through one README: its commands in order, each taken by the
    test, which says what it expects of it; ``cd`` and ``export`` change the shell's state."""

    def __init__(
        self,
        example: str,
        workdir: Path,
        *,
        check_imports: str,
        deploy: Sequence[str] = (),
    ) -> None:
        self.readme = EXAMPLES / example / "README.md"
        self.commands = readme_commands(self.readme)
        self.deploy = tuple(deploy)
        self.skipped: list[Command] = []
        self.position = 0
        venv = readme_venv(example, self.commands, check_imports)
        # The checkout as the reader has it, as far as these commands go: the example's folder.
        self.root = workdir / "checkout"
        shutil.copytree(
            EXAMPLES / example,
            self.root / "examples" / example,
            ignore=shutil.ignore_patterns(".venv", "__pycache__", "*.db", "*.db-*"),
        )
        self.cwd = self.root
        self.workdir = workdir
        self.env = {
            name: value
            for name, value in clean_env().items()
            if not name.startswith(("RUNPOD_", "MODAL_", "EXAMPLE_", "REPLICATE_", "UVICORN_"))
            and name not in {"VIRTUAL_ENV", "HOST", "PORT"}
        }
        self.env.update(
            VIRTUAL_ENV=str(venv),
            PATH=f"{venv / 'bin'}{os.pathsep}{self.env.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
        )
        self.ports = {port: free_port() for port in README_PORTS}
        self.servers: list[Server] = []

    # -- taking commands in order

    def take(self, prefix: str) -> Command:
        """The README's next command, which must start with ``prefix``; deploy commands met on
        the way are noted as skipped, and ``cd``, ``export``, the venv line and the install
        lines are applied (the last two were run when the venv was made)."""
        while True:
            assert self.position < len(self.commands), (
                f"{self.readme}: no command left, the test expected one starting {prefix!r}"
            )
            command = self.commands[self.position]
            self.position += 1
            if command.words.startswith(self.deploy):
                self.skipped.append(command)
                continue
            if command.words.startswith(prefix):
                return command
            if not self._apply(command):
                pytest.fail(
                    f"{self.readme}:{command.line}: the test expected a command starting "
                    f"{prefix!r}, the README has {command.words!r}"
                )

    def _apply(self, command: Command) -> bool:
        """Apply a state-only command (cd, export, venv line, install); False for others."""
        words = command.words
        if words.startswith("cd "):
            self.cwd = self.cwd / shlex.split(words)[1]
            assert self.cwd.is_dir(), f"{self.readme}:{command.line}: no folder {self.cwd}"
        elif words.startswith("export "):
            for assignment in shlex.split(self._substituted(words), comments=True)[1:]:
                name, _, value = assignment.partition("=")
                self.env[name] = value
        elif not (VENV_LINE.match(words) or is_install(command)):
            return False
        return True

    def setup(self) -> None:
        """Apply the README's leading cd, venv, install and export lines."""
        while self.position < len(self.commands) and self._apply(self.commands[self.position]):
            self.position += 1

    def finish(self) -> None:
        """Every command has been taken, and every deploy command listed was met."""
        self.setup()
        rest = [command.words for command in self.commands[self.position :]]
        rest_deploy = [words for words in rest if words.startswith(self.deploy)]
        assert rest == rest_deploy, f"{self.readme}: commands no test ran: {rest}"
        met = [command.words for command in self.skipped] + rest_deploy
        for prefix in self.deploy:
            assert any(words.startswith(prefix) for words in met), (
                f"{self.readme}: no command starts with the skipped {prefix!r} any more"
            )

    # -- running them

    def _substituted(self, text: str, replace: Mapping[str, str] | None = None) -> str:
        for readme_port, port in self.ports.items():
            text = re.sub(rf"(?<=[:= ]){readme_port}\b", str(port), text)
        for old, new in (replace or {}).items():
            assert old in text, f"{old!r} is not in {text!r}"
            text = text.replace(old, new)
        return text

    def run(
        self, prefix: str, *, replace: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the next command (see ``take``) to its end, which must be a success."""
        command = self.take(prefix)
        result = self._bash(command, replace)
        assert result.returncode == 0, (
            f"{self.readme}:{command.line}: {command.words!r} exited with "
            f"{result.returncode}:\n{result.stdout}{result.stderr}"
        )
        return result

    def run_until(
        self, prefix: str, done: Callable[[str], bool], timeout: float = SERVER_READY_TIMEOUT_S
    ) -> str:
        """Run the next command again and again until ``done(its stdout)``, as a reader waits."""
        command = self.take(prefix)
        deadline = time.monotonic() + timeout
        while True:
            result = self._bash(command, None)
            if done(result.stdout):
                return result.stdout
            assert time.monotonic() < deadline, f"{command.words!r} last said {result.stdout!r}"
            time.sleep(0.05)

    def _bash(
        self, command: Command, replace: Mapping[str, str] | None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", self._substituted(command.text, replace)],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )

    def start(self, prefix: str, ready_path: str) -> Server:
        """Start the next command in the background (its own process group, as a foreground
        job is), and wait until its server answers ``ready_path`` (any HTTP answer)."""
        command = self.take(prefix)
        log = self.workdir / f"server-{len(self.servers)}.log"
        process = spawn(["bash", "-c", self._substituted(command.text)], log,
                        cwd=self.cwd, env=self.env)  # fmt: skip
        server = Server(command, process, log)
        self.servers.append(server)
        named = [port for readme, port in self.ports.items() if str(readme) in command.text]
        port = named[0] if named else int(self.env["PORT"])  # else from an `export PORT=...`
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while True:
            assert process.poll() is None, f"{command.words!r} exited:\n{log_tail(log, 60)}"
            try:
                urllib.request.urlopen(f"http://{HOST}:{port}{ready_path}", timeout=2).close()
                return server
            except urllib.error.HTTPError:
                return server  # an answer all the same
            except OSError:
                assert time.monotonic() < deadline, f"not serving:\n{log_tail(log, 60)}"
                time.sleep(0.05)

    def stop(self, server: Server, stop_signal: signal.Signals) -> int | None:
        """Send ``stop_signal`` to the server's process group (Ctrl+C is SIGINT to it); its exit
        status, or None if it had to be killed."""
        process = server.process
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, stop_signal)
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return None
        finally:
            stop_process(process, signal.SIGKILL, timeout=5)

    def close(self) -> None:
        """Kill whatever server is still running (a failed test)."""
        for server in self.servers:
            if server.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.process.pid, signal.SIGKILL)
                stop_process(server.process, signal.SIGKILL, timeout=5)


@contextlib.contextmanager
def readme_shell(
    example: str, workdir: Path, *, check_imports: str, deploy: Sequence[str] = ()
) -> Iterator[ReadmeShell]:
    """A :class:`ReadmeShell`, its servers killed at the end whatever happens."""
    shell = ReadmeShell(example, workdir, check_imports=check_imports, deploy=deploy)
    try:
        yield shell
    finally:
        shell.close()


def _rows(path: Path, count: int) -> list[dict[str, Any]]:
    """Exactly ``count`` rows of the ledger at ``path``, once they are written."""
    rows = ledger_rows(path, count, timeout=ROWS_TIMEOUT_S)
    assert len(rows) == count, f"{len(rows)} rows in {path}, not {count}: {rows}"
    return rows


def report_lists(output: str, invocation_ids: Sequence[str]) -> None:
    """``gpuledger report --by invocation`` printed a row for each id, and a TOTAL."""
    keys = [line.split()[0] for line in output.splitlines() if line.strip()]
    for invocation_id in invocation_ids:
        assert invocation_id in keys, f"{invocation_id} not in the report:\n{output}"
    assert "TOTAL" in keys, output


# -- what every README may ask of a reader's machine -------------------------------------------

ALLOWED_PROGRAMS = {"cd", "export", "python", "python3", "pip", "curl", "gpuledger", "for"}
"""Programs a README may run without saying how to get them: the shell's own, Python and pip,
gpuledger (the README installs it), and curl."""
DEPLOY_PROGRAMS = {"cog", "modal", "docker"}
"""The programs of the deploy commands: each platform's CLI (in the venv with its SDK), Docker."""


@pytest.mark.parametrize("example", ["runpod", "modal", "cog", "potassium"])
def test_readme_installs_from_the_checkout_after_cd(example: str) -> None:
    """gpuledger is not on PyPI: the install lines follow ``cd examples/<x>`` and take
    gpuledger from the checkout (``../..``, directly or through requirements.txt)."""
    commands = readme_commands(EXAMPLES / example / "README.md")
    installs = [index for index, command in enumerate(commands) if is_install(command)]
    assert installs, "no pip install line"
    cds = [index for index, c in enumerate(commands) if c.words == f"cd examples/{example}"]
    assert cds and cds[0] < installs[0], "the first pip install comes before the cd into the folder"
    for index in installs:
        words = commands[index].words
        sources = words
        if " -r " in words:
            sources += (EXAMPLES / example / words.split(" -r ")[1].split()[0]).read_text()
        assert re.search(r"-e '?\.\./\.\.", sources), f"{words!r} does not install the checkout"


@pytest.mark.parametrize("example", ["runpod", "modal", "cog", "potassium"])
def test_readme_commands_need_only_what_the_readme_says_to_install(example: str) -> None:
    """Each command runs a program the reader has or the README installs; sqlite3 (not part of
    Python) only where the README says how to install it."""
    readme = EXAMPLES / example / "README.md"
    text = readme.read_text(encoding="utf-8")
    for command in readme_commands(readme):
        program = command.program
        if program == "sqlite3":
            assert "apt install sqlite3" in text, f"line {command.line}: sqlite3, not installed"
        else:
            assert program in ALLOWED_PROGRAMS | DEPLOY_PROGRAMS, f"line {command.line}: {program}"


# -- each example's README, run --------------------------------------------------------------


@pytest.mark.slow
def test_runpod_readme(tmp_path: Path) -> None:
    """The RunPod README: one-job runs, the local API, four jobs at once, a stream; each
    leaves the rows the README describes."""
    with readme_shell(
        "runpod", tmp_path, check_imports="import runpod", deploy=["docker build"]
    ) as shell:
        shell.setup()
        folder = shell.cwd
        shell.run("python handler.py --test_input")
        shell.run("python handler.py")
        report = shell.run("gpuledger report --ledger gpuledger.db --by invocation")
        report_lists(report.stdout, ["job-1", "local-job-1"])
        rows = _rows(folder / "gpuledger.db", 2)
        assert [row["invocation_id"] for row in rows] == ["job-1", "local-job-1"]
        assert [row["cold"] for row in rows] == [1, 1]  # a new process each
        for row in rows:
            assert json.loads(row["init_phases"])["model_load"] >= 0.5
            assert row["init_duration_s"] > row["billed_gpu_seconds"]
            # RunPod's published H100 rate, no per-request fee: the init and the request's time.
            assert row["cost_execution_usd"] == pytest.approx(0.0)
            assert row["cost_usd"] == pytest.approx(
                0.00116 * (row["billed_gpu_seconds"] + row["init_duration_s"]), rel=1e-6
            )
        assert rows[0]["user_id"] == "user-42"
        if shutil.which("sqlite3"):
            assert "model_load" in shell.run("sqlite3").stdout
        else:
            shell.take("sqlite3")  # not installed here: the README says how to get it

        server = shell.start("python handler.py --rp_serve_api", "/openapi.json")
        answer = json.loads(shell.run("curl -s http://127.0.0.1:8000/runsync").stdout)
        assert (answer["status"], len(answer["output"]["output"].split())) == ("COMPLETED", 16)
        queued = json.loads(shell.run("curl -s http://127.0.0.1:8000/run").stdout)
        assert queued["status"] == "IN_PROGRESS"
        status = shell.run("curl -s -X POST", replace={"test-<uuid>": queued["id"]})
        assert json.loads(status.stdout)["status"] == "COMPLETED"
        served = _rows(folder / "gpuledger.db", 4)[2:]
        assert [row["invocation_id"] for row in served] == [answer["id"], queued["id"]]
        assert [row["cold"] for row in served] == [1, 0]
        assert served[1]["idle_gap_s"] > 0
        assert shell.stop(server, signal.SIGINT) is not None

        server = shell.start("GPULEDGER_LEDGER=concurrent.db python async_handler.py", "/")
        answers = shell.run("for n in 1 2 3 4; do echo").stdout.splitlines()
        assert [json.loads(line)["status"] for line in answers] == ["COMPLETED"] * 4
        rows = _rows(folder / "concurrent.db", 4)
        report = shell.run("gpuledger report --ledger concurrent.db --by invocation")
        report_lists(report.stdout, [row["invocation_id"] for row in rows])
        union = union_seconds((row["start_ns"], row["end_ns"]) for row in rows)
        assert union < 0.75 * sum(row["duration_s"] for row in rows)  # they overlapped
        assert sum(row["billed_gpu_seconds"] for row in rows) == pytest.approx(union, rel=1e-6)
        assert all(row["billed_gpu_seconds"] < row["duration_s"] for row in rows)
        assert all(row["duration_s"] > 0.49 for row in rows)  # 25 tokens x 0.02 s
        assert [row["cold"] for row in rows] == [1, 0, 0, 0]
        assert shell.stop(server, signal.SIGINT) is not None

        server = shell.start("GPULEDGER_LEDGER=stream.db python async_handler.py --stream", "/")
        answer = json.loads(shell.run("curl -s -w '\\n' http://127.0.0.1:8000/runsync").stdout)
        assert answer["output"] == [f"t{index}" for index in range(5)]
        (row,) = _rows(folder / "stream.db", 1)
        report_lists(shell.run("gpuledger report --ledger stream.db").stdout, [answer["id"]])
        assert (row["output_tokens"], row["outcome"]) == (5, "ok")
        assert row["duration_s"] > 5 * 0.02 - 0.01
        assert shell.stop(server, signal.SIGINT) is not None
        shell.finish()


@pytest.mark.slow
def test_modal_readme(tmp_path: Path) -> None:
    """The Modal README: ``python app.py`` leaves one row per call, the class's first call the
    cold one with ``load_model``, the concurrent calls sharing their time, ``embed`` warm."""
    with readme_shell(
        "modal",
        tmp_path,
        check_imports="import modal",
        deploy=["modal setup", "modal secret create", "modal deploy"],
    ) as shell:
        shell.setup()
        shell.run("GPULEDGER_PLATFORM=modal GPULEDGER_GPU=H100 EXAMPLE_MODEL_LOAD_S=0.2 python")
        report = shell.run("gpuledger report --ledger gpuledger.db --by invocation")
        rows = _rows(shell.cwd / "gpuledger.db", 7)
        report_lists(report.stdout, [row["invocation_id"] for row in rows])
        assert [row["handler"] for row in rows] == (
            ["Generator.generate"] * 2 + ["Generator.generate_async"] * 4 + ["embed"]
        )
        assert [row["cold"] for row in rows] == [1, 0, 0, 0, 0, 0, 0]
        phases = json.loads(rows[0]["init_phases"])
        assert set(phases) == {"load_model", "(unnamed)"}
        assert phases["load_model"] >= 0.2
        assert rows[0]["init_duration_s"] >= 0.2
        concurrent = rows[2:6]
        assert all(row["billed_gpu_seconds"] < 0.5 * row["duration_s"] for row in concurrent)
        assert sum(row["billed_gpu_seconds"] for row in concurrent) == pytest.approx(
            union_seconds((row["start_ns"], row["end_ns"]) for row in concurrent), rel=1e-6
        )
        shell.finish()


@pytest.mark.slow
def test_cog_readme(tmp_path: Path) -> None:
    """The Cog README: the server from the venv, a prediction, its cold row with ``setup``."""
    with readme_shell(
        "cog", tmp_path, check_imports="import cog.server.http", deploy=["cog login", "cog push"]
    ) as shell:
        shell.setup()
        server = shell.start("PORT=5000 COG_PREDICT_TYPE_STUB=predict.py:Predictor", "/")
        shell.run_until("curl -s http://127.0.0.1:5000/health-check", lambda out: "READY" in out)
        answer = json.loads(shell.run("curl -s -X PUT").stdout)
        assert answer["status"] == "succeeded", (answer, server.output())
        assert len(answer["output"].split()) == 8
        report = shell.run("gpuledger report --ledger gpuledger.db --by invocation")
        (row,) = _rows(shell.cwd / "gpuledger.db", 1)
        report_lists(report.stdout, [row["invocation_id"]])  # gpuledger's id: Cog gives none
        assert (row["cold"], row["user_id"], row["platform"]) == (1, "user-42", "replicate")
        assert json.loads(row["init_phases"])["setup"] >= 0.5
        assert row["cost_usd"] > 0
        assert shell.stop(server, signal.SIGTERM) is not None
        shell.finish()


@pytest.mark.slow
def test_potassium_readme(tmp_path: Path) -> None:
    """The Potassium README: the app from its venv, a request with Banana's id, its cold row."""
    with readme_shell("potassium", tmp_path, check_imports="import potassium") as shell:
        shell.setup()
        server = shell.start("python app.py", "/")
        answer = json.loads(shell.run("curl -s http://127.0.0.1:8000/").stdout)
        assert len(answer["output"].split()) == 16
        (row,) = _rows(shell.cwd / "gpuledger.db", 1)
        report = shell.run("gpuledger report --ledger gpuledger.db --by invocation")
        report_lists(report.stdout, ["req-1"])
        assert (row["cold"], row["user_id"], row["platform"]) == (1, "user-42", "banana")
        assert json.loads(row["init_phases"])["init"] >= 0.5
        assert row["cost_usd"] is None  # Banana is sunset: no price in the default edition
        assert "sunset" in row["cost_source"]
        assert shell.stop(server, signal.SIGINT) is not None  # Ctrl+C
        assert '"faas.coldstart": true' in server.output()  # GPULEDGER_EXPORTERS=console
        shell.finish()
