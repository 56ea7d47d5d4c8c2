"""``gpuledger budgets``: each spend budget's spend, what is left of it and how fast it burns."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from gpuledger._errors import ConfigError, LedgerError
from gpuledger.cli import _options
from gpuledger.ledger import budget_spend, default_ledger_location, open_ledger

__all__ = ["budgets_command"]

_HEADERS = ("budget", "mode", "limit USD", "spent USD", "left USD", "used %", "burn 1h", "status")


@click.command("budgets")
@_options.ledger_option
@_options.format_option("amounts")
def budgets_command(location: str | None, output_format: str) -> None:
    """Each budget's spend over its rolling window, what is left, and its burn rate.

    Budgets come from the settings (a settings file's [[budgets]] tables, or GPULEDGER_BUDGETS).
    The spend is the requests' own charges (fee, GPU time, start-up) that started within the
    window; workers' idle time and rounding are not a request's and are not in it. The burn
    rate is the last hour's spend over what the budget allows an hour: 1 spends it exactly by
    the end of its window. A budget of every key ('*') shows a row per key that spent.
    """
    from gpuledger._settings import resolve_setting  # noqa: PLC0415

    try:
        budgets = resolve_setting("budgets")[0]
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    if not budgets:
        raise click.ClickException(
            "no budgets are set: add [[budgets]] tables to gpuledger.toml (scope, key, window, "
            "limit_usd) or set GPULEDGER_BUDGETS"
        )
    target = location if location is not None else default_ledger_location()
    _options.adopt_journal(target)
    try:
        with open_ledger(target, create=False) as ledger:
            spends = budget_spend(ledger, budgets, now_ns=time.time_ns())
    except LedgerError as error:
        raise click.ClickException(str(error)) from None
    if output_format == "json":
        click.echo(json.dumps([_plain(spend) for spend in spends], indent=2))
        return
    rows = [
        (
            _name(spend),
            spend.budget.mode,
            f"{spend.budget.limit_usd:,.2f}",
            f"{spend.spent_usd:,.4f}",
            f"{spend.remaining_usd:,.4f}",
            f"{spend.used:.1%}",
            f"{spend.burn_rate:.2f}",
            spend.status,
        )
        for spend in spends
    ]
    if not rows:
        click.echo("no spend within any budget's window")
        return
    widths = [max(len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(_HEADERS)]
    for line in (_HEADERS, *rows):
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


def _name(spend: Any) -> str:
    """The budget's label; for a budget of every key, with the key the row is for."""
    budget = spend.budget
    if spend.key == budget.key:
        return str(budget.label)
    return f"{budget.scope} {spend.key} {budget.window}"


def _plain(spend: Any) -> dict[str, Any]:
    budget = spend.budget
    return {
        "scope": budget.scope,
        "key": spend.key,
        "window": budget.window,
        "limit_usd": budget.limit_usd,
        "mode": budget.mode,
        "spent_usd": spend.spent_usd,
        "remaining_usd": spend.remaining_usd,
        "used": spend.used,
        "burn_rate": spend.burn_rate,
        "status": spend.status,
    }
