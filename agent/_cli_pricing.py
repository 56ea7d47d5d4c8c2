"""`gpuledger pricing` (being written)."""

from __future__ import annotations

import click


@click.command("pricing")
def pricing() -> None:
    """Not written yet."""
    raise click.ClickException("gpuledger pricing is not written yet")
