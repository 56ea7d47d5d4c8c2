"""``gpuledger pricing``: show the prices gpuledger uses, and check a pricing file.

``gpuledger pricing show [--pricing FILE] [--format table|json]`` prints the shipped catalogue
merged with ``FILE`` (else ``$GPULEDGER_PRICING``): a table of prices and billing rules, then one
of how each platform's workers behave (cold start, concurrency, worker limit, idle billing,
pre-warmed pool); JSON gives every field of every price. ``gpuledger pricing validate FILE`` prints
each problem in ``FILE`` as ``FILE: KEY: REASON`` and exits 1, or ``FILE: ok (N prices)``.
"""

from __future__ import annotations

import dataclasses
import json

import click

from gpuledger._errors import PricingError
from gpuledger._pricing import Catalogue, Price, check_file, load_catalogue
from gpuledger.cli._options import format_option, help_when_bare, pricing_option

__all__ = ["pricing"]

_COLUMNS = (
    "platform",
    "gpu",
    "kind",
    "exec fee $",
    "$/GPU-s",
    "$/h",
    "increment s",
    "minimum s",
    "idle s",
    "timeout s",
    "start-up billed",
    "source",
)
_BEHAVIOUR_COLUMNS = (
    "platform",
    "cold start s",
    "min s",
    "max s",
    "concurrency",
    "max workers",
    "idle billed",
    "pre-warmed",
    "citation",
)


@click.group("pricing", invoke_without_command=True)
@click.pass_context
def pricing(ctx: click.Context) -> None:
    """The pricing catalogue: show the prices in use, check a pricing file."""
    help_when_bare(ctx)


@pricing.command("show")
@pricing_option
@format_option("prices")
def show(pricing_file: str | None, output_format: str) -> None:
    """Print the catalogue: version, sources and one row per platform and GPU."""
    try:
        catalogue = load_catalogue(pricing_file)
    except PricingError as error:
        raise click.ClickException(str(error)) from error
    if output_format == "json":
        click.echo(json.dumps(_as_json(catalogue), indent=2))
    else:
        click.echo(_as_table(catalogue))


@pricing.command("validate")
@click.argument("file", metavar="FILE")
def validate(file: str) -> None:
    """Check FILE as a pricing file over the shipped catalogue; exit 1 if anything is wrong."""
    problems, price_count = check_file(file)
    for problem in problems:
        click.echo(str(problem))
    if problems:
        raise click.exceptions.Exit(1)
    click.echo(f"{file}: ok ({price_count} prices)")


def _as_json(catalogue: Catalogue) -> dict[str, object]:
    return {
        "version": catalogue.version,
        "sources": list(catalogue.sources),
        "prices": [dataclasses.asdict(price) for price in catalogue.prices()],
    }


def _amount(value: float | None) -> str:
    """A dollar amount without exponent or trailing zeros (display only: 10 decimals)."""
    if value is None:
        return "-"
    return f"{value:.10f}".rstrip("0").rstrip(".")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}"


def _row(price: Price) -> tuple[str, ...]:
    source = f"{price.source} ({price.citation})" if price.citation else price.source
    return (
        price.platform,
        price.gpu,
        price.kind,
        _amount(price.execution_fee_usd),
        _amount(price.per_gpu_second_usd),
        _amount(price.hourly_usd),
        _seconds(price.billing_increment_s),
        _seconds(price.minimum_billed_s),
        _seconds(price.idle_window_s),
        _seconds(price.timeout_s),
        "yes" if price.bills_startup else "no",
        source,
    )


def _behaviour_row(price: Price) -> tuple[str, ...]:
    return (
        price.platform,
        _seconds(price.cold_start_s),
        _seconds(price.cold_start_min_s),
        _seconds(price.cold_start_max_s),
        str(price.concurrency),
        "-" if price.max_workers is None else str(price.max_workers),
        "yes" if price.bills_idle else "no",
        str(price.prewarmed_workers),
        price.behaviour_citation or "-",
    )


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _as_table(catalogue: Catalogue) -> str:
    prices = catalogue.prices()
    lines = [f"catalogue {catalogue.version}", "sources:"]
    lines.extend(f"  - {source}" for source in catalogue.sources)
    lines.append("")
    lines.extend(_aligned([_COLUMNS, *(_row(price) for price in prices)]))
    # Behaviour is a platform's, shared by its GPUs: one row per platform.
    first_by_platform = {price.platform: price for price in reversed(prices)}
    behaviour = [_behaviour_row(first_by_platform[name]) for name in sorted(first_by_platform)]
    lines.extend(["", "workers:"])
    lines.extend(_aligned([_BEHAVIOUR_COLUMNS, *behaviour]))
    return "\n".join(lines)
