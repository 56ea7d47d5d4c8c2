"""``gpuledger breakeven``: the request rate at which serverless and reserved GPUs cost the same.

``gpuledger breakeven [--platform P ...] [--gpu H100] [--duration 15s ...] [--rate R]
[--reserved NAME] [--cold-starts] [--pricing FILE] [--format table|json]`` prints, for each
serverless platform priced for the GPU and each request duration, where it crosses the reserved
GPU (see ``_breakeven`` for the model); with ``--rate``, also which side is cheaper there and by
how much.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import click

from gpuledger._errors import PricingError
from gpuledger._pricing import Catalogue, Price, load_catalogue
from gpuledger.cli._options import format_option, pricings_option
from gpuledger.whatif import (
    HOURS_PER_MONTH,
    Breakeven,
    RateComparison,
    compare_at_rate,
    crossovers,
    parse_duration,
    parse_rate,
)

__all__ = ["breakeven"]

_DEFAULT_DURATIONS = (10.0, 15.0, 30.0)

_EPILOG = """\b
Model: steady, evenly spaced traffic, one request per GPU at a time, no cold starts (add
--cold-starts to price requests that find their worker scaled to zero); a serverless request
costs its execution fee + billed GPU-seconds; reserved needs ceil(rate x duration / 86400)
GPUs, each paid 24 hours a day. A month is 730 hours (365 x 24 / 12).

\b
The shipped catalogue's first crossovers vs a reserved H100 ($2.69/h), in requests a day
(GPU-hours a month), not the seed's "under 10 GPU seconds serverless wins, 30+ reserved wins"
or "5-10 hours/month":
  platform   10 s                   15 s                   30 s
  runpod     255.78/day (21.6 h)    254.57/day (32.3 h)    251.01/day (63.6 h)
  replicate  6,456/day (545.5 h)    4,304/day (545.5 h)    2,152/day (545.5 h)
  modal      never                  never                  never
  banana     never                  never                  never
Replicate switches back at each new reserved GPU (at 15 s reserved is cheaper on 4,304-5,760,
8,608-11,520 and from 12,912 a day); Modal and Banana cost less per GPU-second than reserved.
"""


# Callbacks, not ParamType subclasses: ParamType is generic from click 8.3 on and not before, so
# a subclass cannot satisfy mypy on both and gpuledger supports click 8.1 up.
def _to_durations(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[float, ...]:
    try:
        return tuple(parse_duration(value) for value in values)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from error


def _to_rate(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_rate(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from error


@dataclasses.dataclass(frozen=True, slots=True)
class _Row:
    breakeven: Breakeven
    at_rate: RateComparison | None
    notes: tuple[str, ...]


@click.command("breakeven", epilog=_EPILOG)
@click.option(
    "--platform",
    "platforms",
    metavar="PLATFORM",
    multiple=True,
    help="A serverless platform to compare (repeatable) [default: every one priced for the GPU].",
)
@click.option("--gpu", default="H100", show_default=True, help="The GPU model.")
@click.option(
    "--duration",
    "durations",
    metavar="DURATION",
    multiple=True,
    callback=_to_durations,
    help="GPU time per request: 15s, 500ms, 2m, or seconds (repeatable) [default: 10s 15s 30s].",
)
@click.option(
    "--rate",
    metavar="RATE",
    default=None,
    callback=_to_rate,
    help="Also compare at this request rate: 1000/day, 40/h, 3/min or 2/s.",
)
@click.option(
    "--reserved",
    "reserved_platform",
    metavar="PLATFORM",
    default="reserved",
    show_default=True,
    help="The reserved platform to compare against.",
)
@click.option(
    "--cold-starts",
    is_flag=True,
    help="Price cold starts (and billed idle time) of traffic sparser than the idle window.",
)
@pricings_option
@format_option("numbers")
def breakeven(
    platforms: tuple[str, ...],
    gpu: str,
    durations: tuple[float, ...],
    rate: float | None,
    reserved_platform: str,
    cold_starts: bool,
    pricing_files: tuple[str, ...],
    output_format: str,
) -> None:
    """Where serverless and reserved GPUs cost the same, per platform and request duration.

    Give --pricing twice (e.g. published-2026-12 and seed-2026-03) to see both side by side."""
    try:
        catalogues = [load_catalogue(name) for name in pricing_files or (None,)]
    except PricingError as error:
        raise click.ClickException(str(error)) from error
    outputs = [
        _breakeven(
            catalogue,
            platforms,
            gpu,
            durations,
            rate,
            reserved_platform,
            cold_starts=cold_starts,
            output_format=output_format,
        )
        for catalogue in catalogues
    ]
    if output_format == "json":
        document = outputs[0] if len(outputs) == 1 else {"editions": outputs}
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo("\n\n".join(str(output) for output in outputs))


def _breakeven(
    catalogue: Catalogue,
    platforms: tuple[str, ...],
    gpu: str,
    durations: tuple[float, ...],
    rate: float | None,
    reserved_platform: str,
    *,
    cold_starts: bool,
    output_format: str,
) -> object:
    """One edition's break-even: its JSON document, or its table."""
    reserved = _reserved_price(catalogue, reserved_platform, gpu)
    serverless = _serverless_prices(catalogue, platforms, gpu)
    rate_per_day = None if rate is None else rate * 86_400.0
    rows: list[_Row] = []
    for duration in durations or _DEFAULT_DURATIONS:
        for price in serverless:
            try:
                found = crossovers(price, reserved, duration, cold_starts=cold_starts)
                at_rate = (
                    None
                    if rate_per_day is None
                    else compare_at_rate(
                        price, reserved, rate_per_day, duration, cold_starts=cold_starts
                    )
                )
            except ValueError as error:
                raise click.ClickException(str(error)) from error
            rows.append(_Row(found, at_rate, _notes(price, found)))
    if output_format == "json":
        return _as_json(catalogue, reserved, rows)
    return _as_table(catalogue, reserved, rows, cold_starts=cold_starts)


def _reserved_price(catalogue: Catalogue, platform: str, gpu: str) -> Price:
    if platform.strip().lower() not in catalogue.platforms():
        raise click.BadParameter(
            f"unknown platform {platform!r}; the catalogue has {', '.join(catalogue.platforms())}",
            param_hint="'--reserved'",
        )
    price = catalogue.lookup(platform, gpu)
    if price is None:
        raise click.ClickException(
            f"no {platform} price for GPU {gpu!r} (priced: {_gpus(catalogue, platform)})"
        )
    if price.kind != "reserved":
        raise click.BadParameter(
            f"{platform!r} is a {price.kind} platform, not a reserved one",
            param_hint="'--reserved'",
        )
    return price


def _serverless_prices(catalogue: Catalogue, platforms: tuple[str, ...], gpu: str) -> list[Price]:
    known = catalogue.platforms()
    if not platforms:
        prices = [
            price
            for name in known
            if (price := catalogue.lookup(name, gpu)) is not None and price.kind != "reserved"
        ]
        if not prices:
            raise click.ClickException(f"no serverless platform has a price for GPU {gpu!r}")
        return prices
    prices = []
    for name in dict.fromkeys(platforms):
        if name.strip().lower() not in known:
            raise click.BadParameter(
                f"unknown platform {name!r}; the catalogue has {', '.join(known)}",
                param_hint="'--platform'",
            )
        price = catalogue.lookup(name, gpu)
        if price is None:
            raise click.ClickException(
                f"no {name} price for GPU {gpu!r} (priced: {_gpus(catalogue, name)})"
            )
        if price.kind == "reserved":
            raise click.BadParameter(
                f"{name!r} is a reserved platform: the serverless ones are compared against it",
                param_hint="'--platform'",
            )
        prices.append(price)
    return prices


def _gpus(catalogue: Catalogue, platform: str) -> str:
    name = platform.strip().lower()
    return ", ".join(price.gpu for price in catalogue.prices() if price.platform == name) or "none"


def _notes(price: Price, found: Breakeven) -> tuple[str, ...]:
    notes: list[str] = []
    if price.sunset is not None:
        notes.append(
            f"{price.platform}: sunset {price.sunset}, no longer sold; its price is kept for "
            "comparison only"
        )
    if price.timeout_s is not None and found.duration_s > price.timeout_s:
        notes.append(
            f"{price.platform}: {_duration(found.duration_s)} is longer than its "
            f"{_duration(price.timeout_s)} timeout: the platform would stop the request"
        )
    if price.concurrency > 1:
        notes.append(
            f"{price.platform}: concurrency {price.concurrency} is not modelled here (one "
            "request per GPU); `gpuledger compare` simulates it"
        )
    if not found.settled:
        notes.append(
            f"{price.platform} at {_duration(found.duration_s)}: searched up to "
            f"{_rate(found.searched_to_per_day)}/day; the cheaper side may change beyond"
        )
    return tuple(notes)


# --------------------------------------------------------------------------------------------
# Output


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def _rate(per_day: float) -> str:
    """Requests to the hundredth, without ".00" when whole (float noise aside)."""
    if abs(per_day - round(per_day)) < 1e-6:
        return f"{round(per_day):,}"
    return f"{per_day:,.2f}"


def _usd(amount: float) -> str:
    """Dollars with as many decimals as the amount has, up to 7 and at least 2: $0.015 is
    "0.015", not a rounded "0.01"; a 15 s reserved request is "0.0112083"; $64.5 is "64.50"."""
    text = f"{amount:,.7f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals:0<2}"


def _verdict(found: Breakeven) -> str:
    ranges = found.reserved_cheaper_ranges()
    if not ranges:
        if found.serverless_cheaper_at_full_use:
            return (
                f"never: ${_usd(found.serverless_cost_per_request_usd)} a request < "
                f"${_usd(found.reserved_cost_per_request_usd)} reserved at full use"
            )
        return "never, up to the searched rate"
    parts = []
    for start, end in ranges:
        if end is None:
            parts.append(f"from {_rate(start)}")
        elif start == 0:
            parts.append(f"below {_rate(end)}")
        else:
            parts.append(f"{_rate(start)}-{_rate(end)}")
    return "reserved cheaper " + ", ".join(parts) + "/day"


def _as_table(catalogue: Catalogue, reserved: Price, rows: list[_Row], *, cold_starts: bool) -> str:
    hourly = reserved.hourly_usd if reserved.hourly_usd is not None else 0.0
    lines = [
        f"break-even vs {reserved.platform} {reserved.gpu}: ${_usd(hourly)}/GPU-hour = "
        f"${_usd(hourly * 24)}/GPU-day (pricing {catalogue.version})",
        "steady traffic, one request per GPU at a time, "
        + ("cold starts priced" if cold_starts else "no cold starts")
        + f"; a month is {HOURS_PER_MONTH:g} hours (365 x 24 / 12)",
        "",
    ]
    header = (
        "platform",
        "duration",
        "$/request",
        "reserved $/request",
        "crossover/day",
        "crossover/h",
        "GPU-h/month",
        "where",
    )
    table = [header]
    for row in rows:
        found = row.breakeven
        first = found.first_crossover_per_day
        per_request = _usd(found.serverless_cost_per_request_usd)
        if found.prewarmed_cost_per_day_usd:
            per_request += f" + {_usd(found.prewarmed_cost_per_day_usd)}/day pool"
        table.append(
            (
                found.serverless_platform,
                _duration(found.duration_s),
                per_request,
                _usd(found.reserved_cost_per_request_usd),
                "-" if first is None else _rate(first),
                "-" if first is None else _rate(first / 24),
                (
                    "-"
                    if found.gpu_hours_per_month_at_first is None
                    else f"{found.gpu_hours_per_month_at_first:,.1f}"
                ),
                _verdict(found),
            )
        )
    lines.extend(_aligned(table))
    compared = [(row.breakeven, row.at_rate) for row in rows if row.at_rate is not None]
    if compared:
        per_day = compared[0][1].rate_per_day
        lines.extend(["", f"at {_rate(per_day)} requests/day ({_rate(per_day / 24)}/h):"])
        rate_table = [
            (
                "platform",
                "duration",
                "serverless $/day",
                "reserved GPUs",
                "reserved $/day",
                "cheaper",
                "by $/day",
                "by %",
            )
        ]
        rate_table.extend(
            (
                found.serverless_platform,
                _duration(found.duration_s),
                _usd(at.serverless_cost_per_day_usd),
                str(at.reserved_gpus),
                _usd(at.reserved_cost_per_day_usd),
                at.cheaper,
                _usd(at.margin_usd_per_day),
                f"{at.margin_percent:.1f}",
            )
            for found, at in compared
        )
        lines.extend(_aligned(rate_table))
    notes = [note for row in rows for note in row.notes]
    if notes:
        lines.extend(["", "notes:"])
        lines.extend(f"  - {note}" for note in dict.fromkeys(notes))
    return "\n".join(lines)


def _aligned(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _as_json(catalogue: Catalogue, reserved: Price, rows: list[_Row]) -> dict[str, object]:
    results = []
    for row in rows:
        found = row.breakeven
        entry: dict[str, object] = dataclasses.asdict(found)
        entry["first_crossover_per_hour"] = found.first_crossover_per_hour
        entry["reserved_cheaper_ranges_per_day"] = [
            [start, end] for start, end in found.reserved_cheaper_ranges()
        ]
        entry["at_rate"] = None if row.at_rate is None else dataclasses.asdict(row.at_rate)
        entry["notes"] = list(row.notes)
        results.append(entry)
    return {
        "catalogue_version": catalogue.version,
        "reserved": {
            "platform": reserved.platform,
            "gpu": reserved.gpu,
            "hourly_usd": reserved.hourly_usd,
        },
        "hours_per_month": HOURS_PER_MONTH,
        "results": results,
    }
