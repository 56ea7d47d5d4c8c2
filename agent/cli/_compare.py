"""``gpuledger compare``: the recorded (or described) traffic replayed on every option."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gpuledger.whatif import parse_duration, parse_rate

if TYPE_CHECKING:
    from gpuledger._pricing import Catalogue
    from gpuledger.whatif import Comparison, Trace

__all__ = ["compare_command"]

_PROFILES = ("steady", "bursty", "diurnal", "spike")
_PLOT_SUFFIXES = (".png", ".svg", ".html")
_MATPLOTLIB_SUFFIXES = (".png", ".svg")
_PLOT_HINT = "pip install 'gpuledger[plot]'"
# The option behind each argument of synthetic() that its ValueError can name.
_OPTION_OF_ARGUMENT = {
    "rate_per_hour": "--rate",
    "days": "--days",
    "duration_s": "--duration",
    "service": "--service",
    "tokens_per_request": "--tokens",
}


# Callbacks, not ParamType subclasses: ParamType is generic from click 8.3 on and not before (see
# _cli_breakeven.py). Each turns a value it cannot read into a usage error naming the option.
def _to_seconds(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def _to_per_hour(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Requests per hour: 100/h, 1000/day, 2/s, or a plain number (per hour)."""
    if value is None:
        return None
    try:
        return float(value) if value.replace(".", "", 1).isdigit() else parse_rate(value) * 3600
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def _check_since(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``value`` unchanged, once it reads as a start time (the replay reads it again)."""
    if value is not None:
        from gpuledger.ledger import parse_since  # noqa: PLC0415

        try:
            parse_since(value, now_ns=time.time_ns())
        except ValueError as error:
            raise click.BadParameter(str(error), ctx, param) from None
    return value


@click.command("compare")
@click.option(
    "--ledger",
    "location",
    metavar="PATH",
    default=None,
    help="Replay the invocations recorded here.  [default: $GPULEDGER_LEDGER, else ./gpuledger.db]",
)
@click.option(
    "--since",
    metavar="WHEN",
    default=None,
    callback=_check_since,
    help="Only invocations since: 7d, 24h, 2w or an ISO date.",
)
@click.option(
    "--profile",
    type=click.Choice(_PROFILES),
    default=None,
    help="Replay a synthetic profile instead of the ledger (bursty: --rate requests in "
    "one hour, then 23 silent).",
)
@click.option(
    "--rate",
    "rate_per_hour",
    default=None,
    metavar="RATE",
    callback=_to_per_hour,
    help="Profile rate: 100/h, 1000/day, 2/s (a plain number is per hour).",
)
@click.option(
    "--duration",
    "duration_s",
    default="15s",
    show_default=True,
    metavar="D",
    callback=_to_seconds,
    help="Profile service time per request: 15s, 500ms, 2m.",
)
@click.option(
    "--service",
    default="fixed",
    show_default=True,
    help="Profile service-time distribution: fixed, exp, lognormal[:sigma].",
)
@click.option(
    "--days",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Profile length in days.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Profile seed.")
@click.option(
    "--tokens",
    type=click.IntRange(min=0),
    default=None,
    help="Profile tokens per request (for cost per 1,000 tokens).",
)
@click.option("--gpu", default=None, help="GPU model to price (default: the trace's).")
@click.option(
    "--platforms",
    default=None,
    metavar="LIST",
    help="Serverless platforms to compare, comma-separated (default: all priced).",
)
@click.option(
    "--slo-p95",
    "slo_s",
    default=None,
    metavar="T",
    callback=_to_seconds,
    help="Latency objective for the 95th percentile, e.g. 2s.",
)
@click.option(
    "--overflow",
    default=None,
    metavar="PLATFORM",
    help="Hybrid's serverless platform (default: the cheapest serverless option).",
)
@click.option(
    "--pricing",
    "pricings",
    multiple=True,
    metavar="EDITION|FILE",
    help="A price edition (`gpuledger pricing editions`) or a pricing file over one; give it "
    "twice to compare under both  [default: $GPULEDGER_PRICING, else the default edition]",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(("table", "json")),
    default="table",
    show_default=True,
)
@click.option(
    "--plot",
    default=None,
    metavar="FILE",
    help="Also draw cost and p95 per option: FILE.html (a page with the chart and the table, "
    "no extra package), FILE.png or FILE.svg (need matplotlib: pip install 'gpuledger[plot]').",
)
def compare_command(
    location: str | None,
    since: str | None,
    profile: str | None,
    rate_per_hour: float | None,
    duration_s: float,
    service: str,
    days: float,
    seed: int,
    tokens: int | None,
    gpu: str | None,
    platforms: str | None,
    slo_s: float | None,
    overflow: str | None,
    pricings: tuple[str, ...],
    output_format: str,
    plot: str | None,
) -> None:
    """What the same traffic would cost, and how slow it would be, on every platform, on
    reserved GPUs, or on reserved GPUs with serverless overflow.

    Replays the ledger's invocations (arrivals and service times) or a synthetic profile through
    a model of each platform (cold starts, idle windows, timeouts, concurrency, billing rules
    from the pricing catalogue), then recommends the cheapest option that meets --slo-p95.
    """
    from gpuledger._errors import GpuledgerError  # noqa: PLC0415
    from gpuledger._pricing import load_catalogue  # noqa: PLC0415
    from gpuledger.whatif import compare, trace_from_ledger  # noqa: PLC0415

    if plot is not None and not plot.lower().endswith(_PLOT_SUFFIXES):
        raise click.BadParameter(
            "the plot file must end in .png, .svg or .html", param_hint="'--plot'"
        )
    if plot is not None and plot.lower().endswith(_MATPLOTLIB_SUFFIXES):
        import importlib.util  # noqa: PLC0415

        if importlib.util.find_spec("matplotlib") is None:
            # Say so before the replay, not after it.
            raise click.ClickException(
                f"--plot {Path(plot).suffix} needs matplotlib: {_PLOT_HINT} (or write .html, "
                "which needs nothing extra)"
            )
    if profile is not None and (location is not None or since is not None):
        raise click.UsageError("--profile replays a synthetic trace: drop --ledger/--since")
    if profile is not None and rate_per_hour is None:
        raise click.UsageError("--profile needs --rate (e.g. --rate 100/h)")
    recorded: dict[str, Any] | None = None
    try:
        catalogues = [load_catalogue(pricing) for pricing in pricings or (None,)]
        names = [name.strip() for name in platforms.split(",")] if platforms else None
        for catalogue in catalogues:
            _check_platforms(catalogue, names, overflow)
        if profile is not None:
            assert rate_per_hour is not None  # checked above
            trace = _synthetic(
                profile,
                rate_per_hour=rate_per_hour,
                duration_s=duration_s,
                days=days,
                service=service,
                seed=seed,
                tokens_per_request=tokens,
            )
            # A described profile has no GPU of its own: price it as asked, H100 by default.
            trace = dataclasses.replace(trace, gpu=gpu or trace.gpu or "H100")
        else:
            from gpuledger.ledger import default_ledger_location  # noqa: PLC0415

            trace = trace_from_ledger(location or default_ledger_location(), since=since)
            recorded = _as_recorded(location or default_ledger_location(), since)
        runs = []
        for catalogue in catalogues:
            started = time.perf_counter()
            with _progress(len(trace)) as step:
                result = compare(
                    trace,
                    catalogue,
                    gpu=gpu,
                    platforms=names,
                    slo_p95_s=slo_s,
                    overflow=overflow,
                    progress=step,
                    processes=min(4, os.cpu_count() or 1),
                )
            runs.append((catalogue, result, time.perf_counter() - started))
    except (ValueError, GpuledgerError) as error:
        raise click.ClickException(str(error)) from None

    documents = []
    for index, (catalogue, result, elapsed) in enumerate(runs):
        if output_format == "json":
            document = _as_json(result, elapsed)
            document["pricing"] = catalogue.version
            document["as_recorded"] = recorded
            documents.append(document)
            continue
        if len(runs) > 1:
            click.echo(f"{'' if index == 0 else chr(10)}pricing {catalogue.version}:")
        click.echo(_table(result, elapsed))
        for note in _sunset_notes(catalogue, result):
            click.echo(note)
        if recorded is not None:
            click.echo(_recorded_line(recorded))
    if output_format == "json":
        output = documents[0] if len(documents) == 1 else {"editions": documents}
        click.echo(json.dumps(output, indent=2))
    if plot is not None:
        _plot(runs[0][1], Path(plot))
        click.echo(f"plot written to {plot}", err=output_format == "json")


def _sunset_notes(catalogue: Catalogue, result: Comparison) -> list[str]:
    """A line for each option on a withdrawn product: kept for comparison, flagged."""
    notes = []
    for option in result.results:
        price = catalogue.lookup(option.option, result.gpu)
        if price is not None and price.sunset:
            notes.append(
                f"note: {option.option} was sunset {price.sunset} and is no longer sold; its "
                "price is kept for comparison only"
            )
    return notes


def _check_platforms(catalogue: Catalogue, names: list[str] | None, overflow: str | None) -> None:
    """Usage errors for platform names the catalogue does not know, before any replay.

    A known platform with no price for the GPU is left to ``compare``: that is the catalogue's
    gap, not a mistake on the command line (exit 1, as ``breakeven`` does).
    """
    from gpuledger.whatif import RESERVED_PLATFORM  # noqa: PLC0415

    known = catalogue.platforms()
    for name in names or ():
        if name not in known:
            raise click.BadParameter(
                f"unknown platform {name!r}; the catalogue has {', '.join(known)}",
                param_hint="'--platforms'",
            )
    if overflow is None:
        return
    serverless = [name for name in (names or known) if name != RESERVED_PLATFORM]
    if overflow not in serverless:
        compared = "compared" if names else "in the catalogue"
        raise click.BadParameter(
            f"{overflow!r} is not among the serverless platforms {compared} "
            f"({', '.join(serverless)})",
            param_hint="'--overflow'",
        )


def _synthetic(profile: str, **arguments: Any) -> Trace:
    """``synthetic(profile, **arguments)``; the ValueError it raises naming an argument becomes
    a usage error naming that argument's option."""
    from gpuledger.whatif import synthetic  # noqa: PLC0415

    try:
        return synthetic(profile, **arguments)
    except ValueError as error:
        name, equals, rest = str(error).partition("=")
        option = _OPTION_OF_ARGUMENT.get(name) if equals else None
        if option is None:
            raise
        raise click.BadParameter(rest, param_hint=f"'{option}'") from None


class _progress:
    """A progress bar on standard error for long replays on a terminal; silent otherwise."""

    def __init__(self, requests: int) -> None:
        self.show = requests >= 100_000 and sys.stderr.isatty()
        self.bar: Any = None

    def __enter__(self) -> Any:
        if self.show:
            self.bar = click.progressbar(length=3, label="replaying", file=sys.stderr)
            self.bar.__enter__()

        def step(name: str) -> None:
            if self.bar is not None:
                self.bar.label = f"replaying: {name}"
                self.bar.update(0 if name not in ("reserved", "hybrid") else 1)

        return step

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _fmt(value: float | None, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "usd":
        return f"{value:,.2f}" if abs(value) >= 100 else f"{value:,.4f}"
    if kind == "usd_small":
        return f"{value:.6f}" if abs(value) < 1 else f"{value:,.4f}"
    if kind == "pct":
        return f"{value * 100:.1f}"
    if kind == "int":
        return f"{int(value):,}"
    return f"{value:,.2f}"


def _rows(result: Comparison) -> list[list[str]]:
    from gpuledger.whatif import meets  # noqa: PLC0415

    rows = []
    for option in result.results:
        rows.append(
            [
                option.option,
                _fmt(option.cost_usd, "usd"),
                _fmt(option.cost_per_request_usd, "usd_small"),
                _fmt(option.cost_per_1k_tokens_usd, "usd_small"),
                _fmt(option.cold_starts, "int"),
                _fmt(option.p50_s, "s"),
                _fmt(option.p95_s, "s"),
                _fmt(option.p99_s, "s"),
                _fmt(option.utilisation, "pct"),
                _fmt(option.failures, "int"),
                "yes" if meets(option, result.slo_p95_s) else "no",
            ]
        )
    return rows


_HEADERS = [
    "option",
    "cost USD",
    "per request",
    "per 1k tok",
    "cold",
    "p50 s",
    "p95 s",
    "p99 s",
    "util %",
    "failed",
    "meets SLO",
]


def _table(result: Comparison, elapsed: float) -> str:
    rows = _rows(result)
    widths = [max(len(row[index]) for row in [_HEADERS, *rows]) for index in range(len(_HEADERS))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest)).rstrip()

    rule = "  ".join("-" * width for width in widths)
    slo = f"p95 <= {result.slo_p95_s:g} s" if result.slo_p95_s is not None else "none"
    head = (
        f"{result.source} | GPU {result.gpu} | {result.burstiness.requests:,} requests | "
        f"objective: {slo} | replayed in {elapsed:.2f} s"
    )
    text = [head, "", line(_HEADERS), rule, *(line(row) for row in rows), ""]
    if result.warning is not None:
        text += textwrap.wrap(f"warning: {result.warning}", width=100, subsequent_indent="  ")
    text += textwrap.wrap(result.recommendation, width=100)
    text += [f"note: {note}" for note in result.notes]
    return "\n".join(text)


def _as_recorded(location: str, since: str | None) -> dict[str, Any] | None:
    """The ledger's traffic as it was billed: its workers' real timelines under the rules
    frozen on their records, the same bill ``gpuledger report`` adds up (the same function:
    the totals agree exactly). None when the ledger holds nothing."""
    from gpuledger.cli._billing import billing_options  # noqa: PLC0415
    from gpuledger.cli._options import adopt_journal  # noqa: PLC0415
    from gpuledger.ledger import ledger_report, open_ledger, parse_since  # noqa: PLC0415

    since_ns = None if since is None else parse_since(since, now_ns=time.time_ns())
    adopt_journal(location)
    with open_ledger(location, create=False) as ledger:
        rows, total = ledger_report(
            ledger, "platform", since_ns=since_ns, **billing_options(None, "separate")
        )
    if total is None:
        return None
    return {
        "platforms": sorted(row.key for row in rows if row.key != "(idle)"),
        "requests": total.invocations,
        "cost_usd": total.cost_usd,
        "billed_gpu_s": total.billed_gpu_s,
        "idle_gpu_s": total.idle_gpu_s,
        "rounding_gpu_s": total.rounding_gpu_s,
        "startup_gpu_s": total.startup_gpu_s,
        "unpriced": total.unpriced,
        "pricing_version": total.pricing_version,
    }


def _recorded_line(recorded: dict[str, Any]) -> str:
    cost = recorded["cost_usd"]
    money = "unpriced" if cost is None else f"${cost:,.4f}"
    text = (
        f"As recorded ({', '.join(recorded['platforms'])}, pricing "
        f"{recorded['pricing_version'] or '-'}): {money} for {recorded['requests']:,} requests, "
        f"{recorded['billed_gpu_s']:,.1f} GPU-s billed: the workers' real timelines, billed as "
        "gpuledger report bills them."
    )
    return "\n".join(textwrap.wrap(text, width=100))


def _as_json(result: Comparison, elapsed: float) -> dict[str, Any]:
    from gpuledger.whatif import meets  # noqa: PLC0415

    options = []
    for option in result.results:
        values = dataclasses.asdict(option)
        values["meets_slo"] = meets(option, result.slo_p95_s)
        options.append(values)
    document: dict[str, Any] = _finite(
        {
            "source": result.source,
            "gpu": result.gpu,
            "slo_p95_s": result.slo_p95_s,
            "options": options,
            "recommendation": result.recommendation,
            "warning": result.warning,
            "best": result.best.option if result.best else None,
            "runner_up": result.runner_up.option if result.runner_up else None,
            "burstiness": dataclasses.asdict(result.burstiness),
            "notes": result.notes,
            "replay_seconds": elapsed,
        }
    )
    return document


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: those (undefined statistics) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _plot(result: Comparison, path: Path) -> None:
    """Write the chart to ``path``: an HTML page needs nothing extra; PNG and SVG, matplotlib."""
    if path.suffix.lower() == ".html":
        try:
            path.write_text(_html(result), encoding="utf-8")
        except OSError as error:
            raise click.ClickException(f"cannot write the plot to {path}: {error}") from None
        return
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise click.ClickException(f"--plot {path.suffix} needs matplotlib: {_PLOT_HINT}") from None
    options = result.results
    names = [option.option for option in options]
    figure, (cost_axis, latency_axis) = plt.subplots(
        1, 2, figsize=(12, 0.5 * len(names) + 2), sharey=True
    )
    positions = range(len(names))
    cost_axis.barh(positions, [option.cost_usd for option in options], color=_COST_COLOUR)
    cost_axis.set_yticks(list(positions), names)
    cost_axis.invert_yaxis()
    cost_axis.set_xlabel("cost (USD) for the whole trace")
    latency_axis.barh(positions, [option.p95_s or 0 for option in options], color=_P95_COLOUR)
    latency_axis.set_xlabel("p95 latency (s): queue + cold start + service")
    if result.slo_p95_s is not None:
        latency_axis.axvline(result.slo_p95_s, color="black", linestyle="--", label="objective")
        latency_axis.legend()
    figure.suptitle(f"{result.source} | GPU {result.gpu}", fontsize=10)
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as error:
        raise click.ClickException(f"cannot write the plot to {path}: {error}") from None
    finally:
        plt.close(figure)


_COST_COLOUR = "#4c72b0"
_P95_COLOUR = "#dd8452"
# The hand-drawn chart's geometry, in SVG pixels: one row of two bars per option.
_ROW_PX = 26
_BAR_PX = 16
_PANEL_PX = 330
_VALUE_PX = 80
"""Room right of the longest bar for its value."""
_CHAR_PX = 7.2
"""Width of a character of the labels' 12 px sans-serif, near enough to lay the labels out."""


def _svg(result: Comparison) -> str:
    """Cost and p95 per option as an inline SVG bar chart, drawn by hand (no dependency)."""
    import html  # noqa: PLC0415

    options = result.results
    best = result.best.option if result.best is not None else None
    label_px = round(max((len(option.option) for option in options), default=0) * _CHAR_PX) + 16
    cost_x = label_px
    p95_x = cost_x + _PANEL_PX + 30
    top = 46
    width = p95_x + _PANEL_PX
    height = top + _ROW_PX * len(options) + 34
    costs = [_known(option.cost_usd) for option in options]
    p95s = [_known(option.p95_s) for option in options]
    cost_scale = max((cost for cost in costs if cost is not None), default=0.0)
    p95_scale = max([p95 for p95 in p95s if p95 is not None] + [result.slo_p95_s or 0.0])
    bar_px = _PANEL_PX - _VALUE_PX
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" font-family="sans-serif" font-size="12">',
        "<title>cost and p95 latency per option</title>",
        f'<text x="{cost_x}" y="18" font-weight="bold">cost (USD) for the whole trace</text>',
        f'<text x="{p95_x}" y="18" font-weight="bold">p95 latency (s): queue + cold start + '
        "service</text>",
    ]
    for row, option in enumerate(options):
        y = top + row * _ROW_PX
        middle = y + _BAR_PX / 2 + 4
        weight = ' font-weight="bold"' if option.option == best else ""
        parts.append(
            f'<text x="{label_px - 8}" y="{middle:g}" text-anchor="end"{weight}>'
            f"{html.escape(option.option)}</text>"
        )
        for x, value, scale, colour, text in (
            (cost_x, costs[row], cost_scale, _COST_COLOUR, _fmt(costs[row], "usd")),
            (p95_x, p95s[row], p95_scale, _P95_COLOUR, _fmt(p95s[row], "s")),
        ):
            length = bar_px * value / scale if value is not None and scale > 0 else 0.0
            parts.append(
                f'<rect x="{x}" y="{y}" width="{length:.1f}" height="{_BAR_PX}" fill="{colour}"/>'
            )
            parts.append(f'<text x="{x + length + 4:.1f}" y="{middle:g}">{text}</text>')
    bottom = top + _ROW_PX * len(options)
    for x in (cost_x, p95_x):
        parts.append(f'<line x1="{x}" y1="{top - 6}" x2="{x}" y2="{bottom}" stroke="#333"/>')
    if result.slo_p95_s is not None and p95_scale > 0:
        slo_x = p95_x + bar_px * result.slo_p95_s / p95_scale
        parts.append(
            f'<line x1="{slo_x:.1f}" y1="{top - 6}" x2="{slo_x:.1f}" y2="{bottom}" stroke="black" '
            'stroke-dasharray="5,4"/>'
        )
        parts.append(
            f'<text x="{slo_x:.1f}" y="{bottom + 18}" text-anchor="middle">objective: p95 &lt;= '
            f"{result.slo_p95_s:g} s</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _known(value: float | None) -> float | None:
    """``value`` if it is a finite number, else None (a bar of nothing, labelled "-")."""
    return value if value is not None and math.isfinite(value) else None


def _html(result: Comparison) -> str:
    """A self-contained page: the chart, the table, the warning, the recommendation, notes."""
    import html  # noqa: PLC0415

    header = "".join(f"<th>{html.escape(cell)}</th>" for cell in _HEADERS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in _rows(result)
    )
    objective = f"p95 &lt;= {result.slo_p95_s:g} s" if result.slo_p95_s is not None else "none"
    warning = (
        f"<p class='warning'><b>warning:</b> {html.escape(result.warning)}</p>"
        if result.warning is not None
        else ""
    )
    notes = "".join(f"<p>note: {html.escape(note)}</p>" for note in result.notes)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>gpuledger compare</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}"
        ".warning{background:#fff3cd;padding:0.5em}</style></head><body>"
        f"<h1>gpuledger compare</h1><p>{html.escape(result.source)} | GPU "
        f"{html.escape(result.gpu)} | {result.burstiness.requests:,} requests | objective: "
        f"{objective}</p>{_svg(result)}<table><tr>{header}</tr>{body}</table>{warning}"
        f"<p>{html.escape(result.recommendation)}</p>{notes}</body></html>\n"
    )
