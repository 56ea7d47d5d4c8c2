"""The ``gpuledger`` command line.

Every command exits alike:

- 0: it did what was asked; a command group run alone (``gpuledger``, ``gpuledger pricing``)
  prints its help, which is what was asked.
- 2: a usage error, the command line itself is wrong: a value that cannot be read (``--duration
  0s``, ``--since last tuesday``), a name the catalogue does not know (``--platform lambda``), a
  choice not offered, options that conflict. The message names the option
  (``click.BadParameter``/``click.UsageError``).
- 1: a well-formed request that failed: a missing or corrupt ledger or pricing file, a GPU the
  catalogue has no price for, a ledger the demo may not write, a failed check (``pricing
  validate``), a bad setting from the environment or the settings file
  (``click.ClickException``).
"""

from __future__ import annotations

import click

from gpuledger.cli._breakeven import breakeven
from gpuledger.cli._budgets import budgets_command
from gpuledger.cli._compare import compare_command
from gpuledger.cli._demo import demo
from gpuledger.cli._options import SettingsGroup, help_when_bare
from gpuledger.cli._pricing import pricing
from gpuledger.cli._proxy import proxy
from gpuledger.cli._reconcile import reconcile_command
from gpuledger.cli._report import report
from gpuledger.cli._sidecar import sidecar_command

__all__ = ["main"]


@click.group(
    cls=SettingsGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    invoke_without_command=True,
)
@click.version_option(package_name="gpuledger")
@click.pass_context
def main(ctx: click.Context) -> None:
    """gpuledger: what each GPU inference request costs, and where it should run."""
    help_when_bare(ctx)


main.add_command(report)
main.add_command(reconcile_command)
main.add_command(budgets_command)
main.add_command(pricing)
main.add_command(demo)
main.add_command(compare_command)
main.add_command(breakeven)
main.add_command(proxy)
main.add_command(sidecar_command)
