"""A click ``CliRunner`` that keeps stdout and stderr apart on every supported click.

click 8.2 keeps them apart always (``mix_stderr`` is gone); click 8.1 (the lowest supported)
mixes stderr into ``stdout`` unless told not to, and then has no ``stderr`` to read.
"""

from __future__ import annotations

from click.testing import CliRunner

__all__ = ["separate_runner"]


def separate_runner() -> CliRunner:
    """A runner whose results have ``stdout`` without stderr, and ``stderr`` on its own."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2: always apart
