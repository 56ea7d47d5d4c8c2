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

if TYPE_CHECKING:
    from gpuledger._compare import Comparison

__all__ = ["compare_command"]

_PROFILES = ("steady", "bursty", "diurnal", "spike")
_PLOT_SUFFIXES = (".png", ".svg", ".html")


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
    default=None,
    metavar="RATE",
    help="Profile rate: 100/h, 1000/day, 2/s (a plain number is per hour).",
)
@click.option(
    "--duration",
    default="15s",
    show_default=True,
    metavar="D",
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
    "slo",
    default=None,
    metavar="T",
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
    default=None,
    metavar="FILE",
    help="Pricing file over the shipped catalogue.  [default: $GPULEDGER_PRICING]",
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
    help="Also draw cost and p95 per option: FILE.png, .svg (matplotlib) or .html.",
)
def compare_command(
    location: str | None,
    since: str | None,
    profile: str | None,
    rate: str | None,
    duration: str,
    service: str,
    days: float,
    seed: int,
    tokens: int | None,
    gpu: str | None,
    platforms: str | None,
    slo: str | None,
    overflow: str | None,
    pricing: str | None,
    output_format: str,
    plot: str | None,
) -> None:
    """What the same traffic would cost, and how slow it would be, on every platform, on
    reserved GPUs, or on reserved GPUs with serverless overflow.

    Replays the ledger's invocations (arrivals and service times) or a synthetic profile through
    a model of each platform (cold starts, idle windows, timeouts, concurrency, billing rules
    from the pricing catalogue), then recommends the cheapest option that meets --slo-p95.
    """
    from gpuledger._breakeven import parse_duration, parse_rate  # noqa: PLC0415
    from gpuledger._compare import compare  # noqa: PLC0415
    from gpuledger._errors import GpuledgerError  # noqa: PLC0415
    from gpuledger._pricing import load_catalogue  # noqa: PLC0415
    from gpuledger._traffic import synthetic, trace_from_ledger  # noqa: PLC0415

    if plot is not None and not plot.lower().endswith(_PLOT_SUFFIXES):
        raise click.BadParameter(
            "the plot file must end in .png, .svg or .html", param_hint="'--plot'"
        )
    if plot is not None:
        import importlib.util  # noqa: PLC0415

        if importlib.util.find_spec("matplotlib") is None:
            # Say so before the replay, not after it.
            raise click.ClickException("--plot needs matplotlib: pip install 'gpuledger[plot]'")
    try:
        slo_s = parse_duration(slo) if slo is not None else None
        if profile is not None:
            if location is not None or since is not None:
                raise click.UsageError("--profile replays a synthetic trace: drop --ledger/--since")
            if rate is None:
                raise click.UsageError("--profile needs --rate (e.g. --rate 100/h)")
            trace = synthetic(
                profile,
                rate_per_hour=_per_hour(rate, parse_rate),
                duration_s=parse_duration(duration),
                days=days,
                service=service,
                seed=seed,
                tokens_per_request=tokens,
            )
            # A described profile has no GPU of its own: price it as asked, H100 by default.
            trace = dataclasses.replace(trace, gpu=gpu or trace.gpu or "H100")
        else:
            from gpuledger._ledger import default_ledger_location  # noqa: PLC0415

            trace = trace_from_ledger(location or default_ledger_location(), since=since)
        catalogue = load_catalogue(pricing)
        names = [name.strip() for name in platforms.split(",")] if platforms else None
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
        elapsed = time.perf_counter() - started
    except (ValueError, GpuledgerError) as error:
        raise click.ClickException(str(error)) from None

    if output_format == "json":
        click.echo(json.dumps(_as_json(result, elapsed), indent=2))
    else:
        click.echo(_table(result, elapsed))
    if plot is not None:
        _plot(result, Path(plot))
        click.echo(f"plot written to {plot}", err=output_format == "json")


def _per_hour(text: str, parse_rate: Any) -> float:
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_rate(text) * 3600
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--rate'") from None


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
    from gpuledger._compare import _meets  # noqa: PLC0415

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
                "yes" if _meets(option, result.slo_p95_s) else "no",
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
    text += textwrap.wrap(result.recommendation, width=100)
    text += [f"note: {note}" for note in result.notes]
    return "\n".join(text)


def _as_json(result: Comparison, elapsed: float) -> dict[str, Any]:
    from gpuledger._compare import _meets  # noqa: PLC0415

    options = []
    for option in result.results:
        values = dataclasses.asdict(option)
        values["meets_slo"] = _meets(option, result.slo_p95_s)
        options.append(values)
    document: dict[str, Any] = _finite(
        {
            "source": result.source,
            "gpu": result.gpu,
            "slo_p95_s": result.slo_p95_s,
            "options": options,
            "recommendation": result.recommendation,
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
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise click.ClickException(
            "--plot needs matplotlib: pip install 'gpuledger[plot]'"
        ) from None
    options = result.results
    names = [option.option for option in options]
    figure, (cost_axis, latency_axis) = plt.subplots(
        1, 2, figsize=(12, 0.5 * len(names) + 2), sharey=True
    )
    positions = range(len(names))
    cost_axis.barh(positions, [option.cost_usd for option in options], color="#4c72b0")
    cost_axis.set_yticks(list(positions), names)
    cost_axis.invert_yaxis()
    cost_axis.set_xlabel("cost (USD) for the whole trace")
    latency_axis.barh(positions, [option.p95_s or 0 for option in options], color="#dd8452")
    latency_axis.set_xlabel("p95 latency (s): queue + cold start + service")
    if result.slo_p95_s is not None:
        latency_axis.axvline(result.slo_p95_s, color="black", linestyle="--", label="objective")
        latency_axis.legend()
    figure.suptitle(f"{result.source} | GPU {result.gpu}", fontsize=10)
    figure.tight_layout()
    try:
        if path.suffix.lower() == ".html":
            import io  # noqa: PLC0415

            svg = io.StringIO()
            figure.savefig(svg, format="svg")
            path.write_text(_html(result, svg.getvalue()))
        else:
            figure.savefig(path)
    except OSError as error:
        raise click.ClickException(f"cannot write the plot to {path}: {error}") from None
    finally:
        plt.close(figure)


def _html(result: Comparison, svg: str) -> str:
    import html  # noqa: PLC0415

    header = "".join(f"<th>{html.escape(cell)}</th>" for cell in _HEADERS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in _rows(result)
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>gpuledger compare</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head><body>"
        f"<h1>gpuledger compare</h1><p>{html.escape(result.source)} | GPU "
        f"{html.escape(result.gpu)}</p>{svg}<table><tr>{header}</tr>{body}</table>"
        f"<p>{html.escape(result.recommendation)}</p></body></html>"
    )
