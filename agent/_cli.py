"""The ``gpuledger`` command line."""

from __future__ import annotations

import click

from gpuledger._cli_breakeven import breakeven
from gpuledger._cli_compare import compare_command
from gpuledger._cli_demo import demo
from gpuledger._cli_pricing import pricing
from gpuledger._cli_proxy import proxy
from gpuledger._cli_report import report
from gpuledger._cli_sidecar import sidecar_command

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gpuledger")
def main() -> None:
    """gpuledger: what each GPU inference request costs, and where it should run."""


main.add_command(report)
main.add_command(pricing)
main.add_command(demo)
main.add_command(compare_command)
main.add_command(breakeven)
main.add_command(proxy)
main.add_command(sidecar_command)
