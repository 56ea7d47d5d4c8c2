"""Venvs the tests make once per machine, for servers whose pinned dependencies must never meet
the project's: Datadog's test agent, Cog, Potassium. And a ``gpuledger`` made of links to this
checkout, so those venvs run the current code with nothing to rebuild. ``cached_venv`` installs
a list of requirements; ``cached_venv_made_by`` runs steps of the caller's (the examples'
READMEs' own install commands, in ``tests/test_example_readmes.py``).

A venv is keyed by its name (which says what is in it and for which Python); a lock file
serialises concurrent pytest runs; it counts as made only once ``.complete`` is written after the
install and its check, so a half-made one (a killed run) is made again. Everything a step prints
goes to a log whose tail ends the error when a step fails.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from .processes import in_ci, log_tail

ROOT = Path(__file__).resolve().parents[2]
VENV_TIMEOUT_S = 120.0
PIP_TIMEOUT_S = 600.0
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


class VenvUnavailable(RuntimeError):
    """A venv could not be made; the message ends with the log's tail."""


def cache_dir() -> Path:
    """Where tests keep what they install once per machine: ``$GPULEDGER_TEST_CACHE``, else
    ``$XDG_CACHE_HOME/gpuledger-tests``, else ``~/.cache/gpuledger-tests``."""
    chosen = os.environ.get("GPULEDGER_TEST_CACHE")
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpuledger-tests"


def clean_env() -> dict[str, str]:
    """Our environment without what would change a server's (or pip's) behaviour."""
    return {
        name: value
        for name, value in os.environ.items()
        if name != "PYTHONPATH" and not name.startswith(("GPULEDGER_", "OTEL_", "COG_"))
    }


def run_step(
    argv: Sequence[str],
    log: Path,
    timeout: float,
    what: str,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run one step of making a venv, its output added to ``log``; VenvUnavailable on failure.

    It runs in ``cwd`` (default: ours), in :func:`clean_env` with ``env`` on top."""
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                cwd=cwd,
                env={
                    **clean_env(),
                    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                    "PIP_NO_INPUT": "1",
                    **(env or {}),
                },
            )
        except subprocess.TimeoutExpired:
            raise VenvUnavailable(
                f"{what} took over {timeout:g} s; log {log}:\n{log_tail(log)}"
            ) from None
    if result.returncode != 0:
        raise VenvUnavailable(
            f"{what} exited with status {result.returncode}; log {log}:\n{log_tail(log)}"
        )


def cached_venv(
    name: str,
    requirements: Sequence[str],
    check: Callable[[Path], list[str]] | None = None,
) -> Path:
    """The venv ``name`` (under :func:`cache_dir`) holding ``requirements``, made on first use.

    ``check(venv)`` is a command that must succeed before the venv counts as made (an import,
    a ``--version``). Raises VenvUnavailable.
    """

    def install(venv: Path, log: Path) -> None:
        pip = [
            str(venv / "bin" / "python"), "-m", "pip", "install",
            "--quiet", "--retries", "2", "--timeout", "30", *requirements,
        ]  # fmt: skip
        run_step(pip, log, PIP_TIMEOUT_S, f"pip install {' '.join(requirements)}")

    return cached_venv_made_by(name, install, check, "\n".join(requirements))


def cached_venv_made_by(
    name: str,
    install: Callable[[Path, Path], None],
    check: Callable[[Path], list[str]] | None = None,
    description: str = "",
) -> Path:
    """The venv ``name`` (under :func:`cache_dir`), made on first use by ``python -m venv`` and
    then ``install(venv, log)``, which runs its steps with :func:`run_step`.

    ``name`` must change whenever what ``install`` does changes: a venv is made once per name.
    ``check`` as for :func:`cached_venv`; ``description`` is written in its ``.complete``
    marker. Raises VenvUnavailable.
    """
    root = cache_dir()
    venv = root / name
    marker = venv / ".complete"
    python = venv / "bin" / "python"
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = (root / f"{name}.lock").open("a")
    except OSError as error:
        raise VenvUnavailable(f"cannot write the test cache {root}: {error}") from error
    with lock:
        deadline = time.monotonic() + VENV_TIMEOUT_S + PIP_TIMEOUT_S + 30
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # another pytest is making it: wait for it
                if time.monotonic() > deadline:
                    raise VenvUnavailable(f"{lock.name} stayed locked") from None
                time.sleep(0.2)
        try:
            if marker.is_file() and os.access(python, os.X_OK):
                return venv
            shutil.rmtree(venv, ignore_errors=True)
            log = root / f"{name}.log"
            log.write_bytes(b"")
            # The running interpreter, even from a venv: venv builds on its base Python.
            run_step([sys.executable, "-m", "venv", str(venv)], log, VENV_TIMEOUT_S, "venv")
            install(venv, log)
            if check is not None:
                run_step(check(venv), log, 60, "check")
            marker.write_text(description + "\n", encoding="utf-8")
            return venv
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def venv_or_skip(make: Callable[[], Path], what: str) -> Path:
    """``make()``, or the test fails (CI is set) or is skipped, saying why."""
    try:
        return make()
    except VenvUnavailable as error:
        if in_ci():
            pytest.fail(f"the venv for {what} could not be made, and CI is set: {error}",
                        pytrace=False)  # fmt: skip
        pytest.skip(
            f"the venv for {what} could not be made (it needs PyPI the first time; it is kept "
            f"in {cache_dir()}, see GPULEDGER_TEST_CACHE): {error}"
        )


def gpuledger_dependencies() -> list[str]:
    """gpuledger's own requirements, read from pyproject.toml."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dependencies: list[str] = pyproject["project"]["dependencies"]
    return dependencies


def link_gpuledger(site: Path) -> Path:
    """A ``gpuledger`` package under ``site`` made of links to this checkout (its package-dir
    mapping), for a venv's PYTHONPATH; returns ``site``."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_dirs: dict[str, str] = pyproject["tool"]["setuptools"]["package-dir"]
    for package, source in sorted(package_dirs.items()):  # parents before children
        target = site.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for entry in (ROOT / source).iterdir():
            if entry.name != "__pycache__" and not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
    return site
