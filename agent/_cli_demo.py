"""`gpuledger demo` (being written)."""

from __future__ import annotations

import click


@click.command("demo")
def demo() -> None:
    """Not written yet."""
    raise click.ClickException("gpuledger demo is not written yet")
