"""`gpuledger report` (being written)."""

from __future__ import annotations

import click


@click.command("report")
def report() -> None:
    """Not written yet."""
    raise click.ClickException("gpuledger report is not written yet")
