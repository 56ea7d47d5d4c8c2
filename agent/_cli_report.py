"""``gpuledger report``: cost, GPU time and cold starts from the ledger, grouped for chargeback."""

from __future__ import annotations

import csv
import io
import json
import math
import time

import click

from gpuledger._errors import LedgerError
from gpuledger._ledger import LEDGER_ENV, default_ledger_location, open_ledger
from gpuledger._report import GROUP_BY, REPORT_COLUMNS, ReportRow, aggregate, parse_since, totals

__all__ = ["report"]

FORMATS = ("table", "json", "csv")
_UNKNOWN = "-"

# (header, column, formatter) for the table; the key column is added in front.
_TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("invocations", "invocations", "int"),
    ("cold", "cold_starts", "int"),
    ("cold %", "cold_start_share", "percent"),
    ("init s", "mean_init_s", "seconds"),
    ("errors", "errors", "int"),
    ("billed GPU s", "billed_gpu_seconds", "seconds"),
    ("busy GPU s", "busy_gpu_seconds", "seconds"),
    ("busy %", "busy_share", "percent"),
    ("energy kJ", "energy_j", "kilojoules"),
    ("calls", "external_calls", "int"),
    ("wait s", "external_wait_s", "seconds"),
    ("wait USD", "external_wait_cost_usd", "usd"),
    ("cost USD", "cost_usd", "usd"),
    ("unpriced", "unpriced", "int"),
    ("tokens in", "input_tokens", "int"),
    ("tokens out", "output_tokens", "int"),
    ("p50 s", "duration_p50_s", "seconds"),
    ("p95 s", "duration_p95_s", "seconds"),
)


@click.command("report")
@click.option(
    "--ledger",
    "location",
    metavar="LOCATION",
    default=None,
    help=f"Ledger file, sqlite:/// or postgresql:// URL.  [default: ${LEDGER_ENV}, else "
    "./gpuledger.db]",
)
@click.option(
    "--by",
    type=click.Choice(GROUP_BY),
    default="user",
    show_default=True,
    help="What each row stands for. By target, an invocation counts under each target it "
    "called, with that target's calls and wait (rows overlap; TOTAL counts each once).",
)
@click.option(
    "--since",
    metavar="WHEN",
    default=None,
    help="Only invocations that started since: 90s, 30m, 24h, 7d, 2w or an ISO date/date-time "
    "(UTC unless it says otherwise).  [default: everything]",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table for people (with a TOTAL row); json or csv for tools (groups only).",
)
def report(location: str | None, by: str, since: str | None, output_format: str) -> None:
    """Cost, GPU seconds, cold starts and external wait per user, tenant, endpoint, platform,
    day, invocation or outgoing-call target.

    Unknown values are shown as "-" (table), null (json) or empty (csv), never as zero: busy
    GPU seconds where no GPU was metered, cost where the catalogue had no price.
    """
    since_ns = None
    if since is not None:
        try:
            since_ns = parse_since(since, now_ns=time.time_ns())
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--since'") from None
    target = location if location is not None else default_ledger_location()
    try:
        with open_ledger(target, create=False) as ledger:
            total = None
            if by == "target":  # rows overlap (one invocation, several targets): total apart
                records = list(ledger.read(since_ns=since_ns))
                total = totals(aggregate(records, "platform")) if records else None
                rows = aggregate(records, by)
            else:
                rows = aggregate(ledger.read(since_ns=since_ns), by)
            path = ledger.path
    except LedgerError as exc:
        raise click.ClickException(str(exc)) from None

    if output_format == "json":
        click.echo(json.dumps([_plain(row) for row in rows], indent=2))
    elif output_format == "csv":
        click.echo(_csv(rows), nl=False)
    elif not rows:
        window = f" since {since}" if since is not None else ""
        click.echo(f"no invocations in {path}{window}")
    else:
        click.echo(_table(rows, by, total))


def _plain(row: ReportRow) -> dict[str, object]:
    """The row's public columns as JSON values (unknown is null; NaN too, JSON has none)."""
    values: dict[str, object] = {}
    for column in REPORT_COLUMNS:
        value = getattr(row, column)
        values[column] = None if isinstance(value, float) and math.isnan(value) else value
    return values


def _csv(rows: list[ReportRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for row in rows:
        writer.writerow(["" if value is None else value for value in _plain(row).values()])
    return buffer.getvalue()


def _table(rows: list[ReportRow], by: str, total: ReportRow | None = None) -> str:
    total = total or totals(rows)
    headers = [by, *(header for header, _, _ in _TABLE_COLUMNS)]
    body = [_cells(row) for row in rows]
    footer = _cells(total)
    widths = [
        max(len(line[index]) for line in (headers, *body, footer)) for index in range(len(headers))
    ]

    def line(cells: list[str]) -> str:
        # The key reads left-aligned, numbers right-aligned so that their digits line up.
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest)).rstrip()

    rule = "  ".join("-" * width for width in widths)
    lines = [line(headers), rule, *(line(cells) for cells in body), rule, line(footer)]
    if total.unpriced:
        lines.append(
            f"\n{total.unpriced} invocation(s) had no price; cost USD covers the others only."
        )
    return "\n".join(lines)


def _cells(row: ReportRow) -> list[str]:
    return [row.key, *(_format(getattr(row, column), kind) for _, column, kind in _TABLE_COLUMNS)]


def _format(value: float | None, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _UNKNOWN
    if kind == "int":
        return f"{value:,}"
    if kind == "percent":
        return f"{value * 100:.1f}"
    if kind == "kilojoules":
        return f"{value / 1000:,.3f}"
    if kind == "usd":
        # Per-request prices are fractions of a cent: six decimals below a dollar, four above.
        return f"{value:,.4f}" if abs(value) >= 1 else f"{value:.6f}"
    return f"{value:,.3f}"
