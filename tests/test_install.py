"""The README's two commands, the pins they install, and the lower bounds CI tests.

``.ci/run`` copies both commands out of the README and runs them on a clean clone with the stock
pip of a new venv; these tests keep what it copies, ``constraints.txt`` (the pins every pip
resolves at once) and ``constraints-lowest.txt`` (pyproject's lower bounds, run by CI's second
pass) in step with ``pyproject.toml``, so that neither can drift without a test failing.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _readme_command(kind: str) -> str:
    """The command .ci/run takes from the README (the same awk script, run here)."""
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    awk = re.search(r"awk -v marker=\"<!-- ci: \$1 command -->\" '(.*?)' README.md", script, re.S)
    assert awk is not None, ".ci/run no longer extracts the README's commands with awk"
    done = subprocess.run(
        ["awk", "-v", f"marker=<!-- ci: {kind} command -->", awk.group(1), "README.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _pins(name: str) -> dict[str, tuple[Version, str | None]]:
    """``package -> (version, marker)`` of a uv-compiled constraints file."""
    pins: dict[str, tuple[Version, str | None]] = {}
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        if not line or line.startswith((" ", "#")):
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", line
        marker = str(requirement.marker) if requirement.marker else None
        pins[canonicalize_name(requirement.name)] = (Version(specifier.version), marker)
    return pins


def _requirements() -> list[Requirement]:
    """Every requirement pyproject.toml states: the dependencies and every extra's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += [line for line in extra if not line.startswith("gpuledger")]
    return [Requirement(line) for line in lines]


def _applies(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate(
        {**default_environment(), "extra": ""}
    )


@pytest.mark.parametrize("kind", ["demo", "test"])
def test_readme_commands_install_the_pins_in_a_new_venv(kind: str) -> None:
    """Both commands make a venv with the stock `python3 -m venv` and install through
    constraints.txt (the stock pip 23.2 backtracked 15 minutes without it, then failed)."""
    command = _readme_command(kind)
    assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install ")
    assert "-c constraints.txt" in command
    assert command.endswith("gpuledger demo" if kind == "demo" else "&& pytest")
    assert "\n" not in command


def test_constraints_satisfy_every_requirement() -> None:
    """constraints.txt pins each package pyproject names, at a version its range allows."""
    pins = _pins("constraints.txt")
    for requirement in filter(_applies, _requirements()):
        version, _ = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)


def test_lowest_constraints_are_the_lower_bounds() -> None:
    """constraints-lowest.txt installs each direct requirement at exactly its lower bound, so
    CI's second pass tests what pyproject promises (regenerate it after changing a bound)."""
    pins = _pins("constraints-lowest.txt")
    for requirement in filter(_applies, _requirements()):
        bounds = [s.version for s in requirement.specifier if s.operator == ">="]
        assert len(bounds) == 1, f"{requirement}: give one lower bound (>=) CI can test"
        version, _ = pins[canonicalize_name(requirement.name)]
        assert version == Version(bounds[0]), (requirement, version)
