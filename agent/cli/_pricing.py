"""``gpuledger pricing``: the price editions, the prices gpuledger uses, and checking a file.

- ``gpuledger pricing editions``: the shipped editions, when each was read, how many of its prices
  are the platforms' own word, and which is the default.
- ``gpuledger pricing show [--pricing EDITION|FILE] [--format table|json]``: the edition in use
  (``--pricing``, else ``$GPULEDGER_PRICING``, else the default), or a pricing file over its
  base: a table of prices and billing rules with where each comes from, then one of how each
  platform's workers behave; JSON gives every field of every price. A warning goes to stderr when
  the edition is older than 90 days.
- ``gpuledger pricing diff A B``: what changes from edition (or file) A to B, price by price.
- ``gpuledger pricing validate FILE``: each problem in ``FILE`` as ``FILE: KEY: REASON`` (exit
  1), or ``FILE: ok (N prices)``. A file naming its own ``edition`` is checked as one: every
  number must carry its source, the date it was read and whose word it is.
"""

from __future__ import annotations

import dataclasses
import json
from fractions import Fraction

import click

from gpuledger._errors import PricingError
from gpuledger._pricing import (
    DEFAULT_EDITION,
    STALE_AFTER_DAYS,
    Catalogue,
    Price,
    check_file,
    edition_catalogue,
    editions,
    load_catalogue,
)
from gpuledger.cli import _options
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
    "read on",
    "owner",
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
    """Print the prices in use: edition, sources and one row per platform and GPU."""
    try:
        catalogue = load_catalogue(pricing_file)
    except PricingError as error:
        raise click.ClickException(str(error)) from error
    warning = catalogue.stale_warning(_options.today())
    if warning is not None:
        click.echo(warning, err=True)
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


@pricing.command("editions")
@format_option("editions")
def editions_command(output_format: str) -> None:
    """List the shipped price editions: when each was read, whose word its prices are."""
    today = _options.today()
    listed = []
    for name in editions():
        catalogue = edition_catalogue(name)
        prices = catalogue.prices()
        owners: dict[str, int] = {}
        for price in prices:
            owner = price.reference.owner if price.reference is not None else "unknown"
            owners[owner] = owners.get(owner, 0) + 1
        listed.append(
            {
                "edition": name,
                "default": name == DEFAULT_EDITION,
                "as_of": catalogue.as_of,
                "age_days": catalogue.age_days(today),
                "stale": catalogue.stale_warning(today) is not None,
                "platforms": catalogue.platforms(),
                "prices": len(prices),
                "prices_by_owner": dict(sorted(owners.items())),
                "sunset": sorted({p.platform for p in prices if p.sunset is not None}),
            }
        )
    if output_format == "json":
        click.echo(json.dumps(listed, indent=2))
        return
    rows: list[tuple[str, ...]] = [
        ("edition", "read on", "age", "prices", "whose word", "platforms")
    ]
    for entry in listed:
        owners_text = ", ".join(f"{n} {o}" for o, n in entry["prices_by_owner"].items())  # type: ignore[attr-defined]
        platforms = ", ".join(
            f"{name} (sunset)" if name in entry["sunset"] else name  # type: ignore[operator]
            for name in entry["platforms"]  # type: ignore[attr-defined]
        )
        age = entry["age_days"]
        rows.append(
            (
                f"{entry['edition']}{' (default)' if entry['default'] else ''}",
                str(entry["as_of"]),
                f"{age} days{' (stale)' if entry['stale'] else ''}" if age is not None else "-",
                str(entry["prices"]),
                owners_text,
                platforms,
            )
        )
    click.echo("\n".join(_aligned(rows)))
    click.echo(
        f"\n(stale: read more than {STALE_AFTER_DAYS} days ago. Use one with --pricing EDITION or "
        "GPULEDGER_PRICING; see `gpuledger pricing show --pricing EDITION`.)"
    )


@pricing.command("diff")
@click.argument("first", metavar="A")
@click.argument("second", metavar="B")
@format_option("changes")
def diff(first: str, second: str, output_format: str) -> None:
    """What changes from edition (or pricing file) A to B, price by price."""
    try:
        old, new = load_catalogue(first), load_catalogue(second)
    except PricingError as error:
        raise click.ClickException(str(error)) from error
    changes = _diff(old, new)
    if output_format == "json":
        click.echo(
            json.dumps({"from": old.version, "to": new.version, "changes": changes}, indent=2)
        )
        return
    click.echo(f"{old.version} -> {new.version}")
    if not changes:
        click.echo("no differences")
        return
    rows: list[tuple[str, ...]] = [
        ("platform", "gpu", f"$/GPU-s {old.version}", f"$/GPU-s {new.version}", "change", "rules")
    ]
    for change in changes:
        rows.append(
            (
                str(change["platform"]),
                str(change["gpu"]),
                _amount(change["from_usd_per_gpu_s"]),  # type: ignore[arg-type]
                _amount(change["to_usd_per_gpu_s"]),  # type: ignore[arg-type]
                _ratio(change["from_usd_per_gpu_s"], change["to_usd_per_gpu_s"]),  # type: ignore[arg-type]
                "; ".join(change["rules"]) or "-",  # type: ignore[arg-type]
            )
        )
    click.echo("\n".join(_aligned(rows)))


_RULE_FIELDS = (
    ("execution_fee_usd", "fee $"),
    ("billing_increment_s", "increment s"),
    ("minimum_billed_s", "minimum s"),
    ("bills_startup", "start-up billed"),
    ("bills_idle", "idle billed"),
    ("idle_window_s", "idle window s"),
    ("timeout_s", "timeout s"),
    ("cpu_core_second_usd", "$/core-s"),
    ("memory_gib_second_usd", "$/GiB-s"),
)


def _diff(old: Catalogue, new: Catalogue) -> list[dict[str, object]]:
    before = {(p.platform, p.gpu): p for p in old.prices()}
    after = {(p.platform, p.gpu): p for p in new.prices()}
    changes: list[dict[str, object]] = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        rules = []
        for field, label in _RULE_FIELDS:
            x = None if a is None else getattr(a, field)
            y = None if b is None else getattr(b, field)
            if a is not None and b is not None and x != y:
                rules.append(f"{label} {_value(x)} -> {_value(y)}")
        if a is not None and b is not None and a.sunset != b.sunset:
            rules.append(f"sunset {a.sunset or '-'} -> {b.sunset or '-'}")
        rate_a = None if a is None else a.per_gpu_second_usd
        rate_b = None if b is None else b.per_gpu_second_usd
        if rate_a == rate_b and not rules:
            continue
        changes.append(
            {
                "platform": key[0],
                "gpu": key[1],
                "from_usd_per_gpu_s": rate_a,
                "to_usd_per_gpu_s": rate_b,
                "rules": rules,
            }
        )
    return changes


def _value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _amount(value)
    return str(value)


def _ratio(old: float | None, new: float | None) -> str:
    if old is None:
        return "new"
    if new is None:
        return "gone"
    if old == 0:
        return "-"
    # Exact from the decimals as written (0.00116 / 0.00024), shown to one decimal.
    change = (Fraction(str(new)) - Fraction(str(old))) / Fraction(str(old))
    return f"{float(change) * 100:+.1f}%"


def _as_json(catalogue: Catalogue) -> dict[str, object]:
    return {
        "version": catalogue.version,
        "edition": catalogue.edition,
        "as_of": catalogue.as_of,
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
    reference = price.reference
    source = reference.source if reference is not None else price.source
    return (
        f"{price.platform} (sunset {price.sunset})" if price.sunset else price.platform,
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
        reference.read_on if reference is not None else "-",
        reference.owner if reference is not None else "-",
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
    title = f"pricing {catalogue.version}"
    if catalogue.version != catalogue.edition:
        title += f" (a file over edition {catalogue.edition})"
    if catalogue.as_of:
        title += f", read {catalogue.as_of}"
    lines = [title, "sources:"]
    lines.extend(f"  - {source}" for source in catalogue.sources)
    lines.append("")
    lines.extend(_aligned([_COLUMNS, *(_row(price) for price in prices)]))
    # Behaviour is a platform's, shared by its GPUs: one row per platform.
    first_by_platform = {price.platform: price for price in reversed(prices)}
    behaviour = [_behaviour_row(first_by_platform[name]) for name in sorted(first_by_platform)]
    lines.extend(["", "workers:"])
    lines.extend(_aligned([_BEHAVIOUR_COLUMNS, *behaviour]))
    extras = [
        f"  {price.platform}: CPU ${_amount(price.cpu_core_second_usd)}/core-s (at least "
        f"{price.min_cpu_cores:g} core), memory ${_amount(price.memory_gib_second_usd)}/GiB-s "
        f"(at least {price.min_memory_gib:g} GiB), charged for what the worker reserves "
        "(settings cpu, memory_gib)"
        for price in (first_by_platform[name] for name in sorted(first_by_platform))
        if price.cpu_core_second_usd or price.memory_gib_second_usd
    ]
    if extras:
        lines.extend(["", "beyond the GPU:", *extras])
    sunset = [
        f"  {price.platform}: sunset {price.sunset}: {price.sunset_source}"
        for price in (first_by_platform[name] for name in sorted(first_by_platform))
        if price.sunset
    ]
    if sunset:
        lines.extend(["", "withdrawn products (kept for comparison):", *sunset])
    return "\n".join(lines)
