"""``gpuledger reconcile`` and ``gpuledger report --true-up``: the ledger beside the platform's
own bill (RunPod's serverless billing API, Modal's billing report), and the chargeback trued up
to it."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Final

import click

from gpuledger._errors import GpuledgerError, LedgerError
from gpuledger.cli._billing import billing_options
from gpuledger.cli._options import adopt_journal
from gpuledger.ledger import LEDGER_ENV, default_ledger_location, open_ledger
from gpuledger.reconcile import (
    BUCKETS,
    CAUSES,
    PLATFORMS,
    SHAPES,
    TRUE_UP_BY,
    Invoice,
    ReconcileRow,
    Reconciliation,
    TrueUp,
    read_usage,
    reconcile,
    true_up,
)

__all__ = ["reconcile_command", "true_up_report"]

FORMATS: Final = ("table", "json")
DEFAULT_TOLERANCE_PCT: Final = 5.0
_MARGIN_NS: Final = 86_400 * 1_000_000_000
"""Ledger rows read either side of the invoice's window: workers alive at its edges."""
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _when(instant_ns: int, bucket: str) -> str:
    moment = _EPOCH + dt.timedelta(microseconds=instant_ns // 1000)
    if bucket == "hour":
        return moment.strftime("%Y-%m-%d %H:%M")
    if bucket in ("month", "year"):
        return moment.strftime("%Y-%m" if bucket == "month" else "%Y")
    return moment.strftime("%Y-%m-%d")


def _money(amount: Fraction) -> str:
    # As the report writes dollars: six decimals below a dollar, four above.
    return f"{float(amount):,.4f}" if abs(amount) >= 1 else f"{float(amount):.6f}"


def _signed(amount: Fraction) -> str:
    return ("+" if amount >= 0 else "-") + _money(abs(amount))


def _load(
    usage_file: str,
    platform: str | None,
    bucket: str | None,
    location: str | None,
    policy: str,
    pricing_file: str | None,
) -> Reconciliation:
    """Read the export and the ledger, and reconcile them; ClickException (exit 1) on a file
    that cannot be used."""
    try:
        invoice = read_usage(usage_file, platform=platform, bucket=bucket)
        billing = billing_options(pricing_file, policy)
    except GpuledgerError as exc:
        raise click.ClickException(str(exc)) from None
    target = location if location is not None else default_ledger_location()
    adopt_journal(target)
    try:
        with open_ledger(target, create=False) as ledger:
            records = list(
                ledger.read(
                    since_ns=invoice.start_ns - _MARGIN_NS, until_ns=invoice.end_ns + _MARGIN_NS
                )
            )
            stops = ledger.read_stops()
    except LedgerError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        return reconcile(invoice, records, stops=stops, now_ns=time.time_ns(), **billing)
    except ValueError as exc:
        raise click.ClickException(f"{usage_file}: {exc}") from None


_LEDGER_HELP: Final = (
    f"Ledger file, sqlite:/// or postgresql:// URL.  [default: ${LEDGER_ENV}, else ./gpuledger.db]"
)
_PLATFORM_HELP: Final = "Whose export FILE is.  [default: detected from its content]"
_BUCKET_HELP: Final = (
    "The bucket of an export that does not state it (RunPod v1, Modal).  [default: from the "
    "spacing of its periods]"
)


@click.command("reconcile")
@click.option(
    "--usage",
    "usage_file",
    required=True,
    metavar="FILE",
    help="The platform's usage export: RunPod's GET /v2/billing/serverless or GET "
    "/v1/billing/endpoints JSON; Modal's `modal billing report --json` or `--csv` "
    "(--show-resources for CPU and memory), or Workspace.billing.report() items as JSON.",
)
@click.option("--platform", type=click.Choice(PLATFORMS), default=None, help=_PLATFORM_HELP)
@click.option("--ledger", "location", metavar="LOCATION", default=None, help=_LEDGER_HELP)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=DEFAULT_TOLERANCE_PCT,
    show_default=True,
    metavar="PCT",
    help="Exit 1 when an endpoint's difference in a period is over PCT % of its invoiced "
    "amount (or anything differs where nothing was invoiced).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table for people; json for tools.",
)
@click.option("--bucket", type=click.Choice(BUCKETS), default=None, help=_BUCKET_HELP)
@click.option(
    "--pricing",
    "pricing_file",
    metavar="FILE",
    default=None,
    help="Bill the recorded workers under this pricing file instead of the rules frozen on "
    "their records.",
)
@click.pass_context
def reconcile_command(
    ctx: click.Context,
    usage_file: str,
    platform: str | None,
    location: str | None,
    tolerance: float,
    output_format: str,
    bucket: str | None,
    pricing_file: str | None,
) -> None:
    """Compare the ledger with the platform's own bill, per endpoint and period.

    For each endpoint (RunPod: the endpoint id, RUNPOD_ENDPOINT_ID; Modal: the App, by its
    name or id) and period of the export: what was invoiced, what gpuledger attributed (the
    `report`'s charges in that period), the difference, and what explains it: idle time or
    start-up the platform billed and the rules do not (or the reverse), a different price per
    GPU-second, workers or periods with no ledger rows, the CPU and memory invoiced against
    what gpuledger's rules charge for them (Modal: the worker's reservation, the cpu and
    memory_gib settings), the platform fee against the rules' fees, and the amounts gpuledger
    does not model (RunPod's disk and CPU workers).

    Exits 1 when a difference is over --tolerance.
    """
    result = _load(usage_file, platform, bucket, location, "separate", pricing_file)
    failing = result.failing(tolerance)
    if output_format == "json":
        click.echo(json.dumps(_reconcile_json(result, tolerance), indent=2))
    else:
        click.echo(_reconcile_table(result, tolerance))
    if failing:
        click.echo(
            f"\n{len(failing)} of {len(result.rows)} endpoint-period(s) differ by more than "
            f"{tolerance:g} % of the invoiced amount.",
            err=True,
        )
        ctx.exit(1)


def _header(invoice: Invoice, result: Reconciliation) -> str:
    bucket = f"{invoice.bucket}ly" if invoice.bucket != "day" else "daily"
    if invoice.bucket_inferred:
        bucket += " (inferred; --bucket to say)"
    window = f"{_when(invoice.start_ns, 'hour')} to {_when(invoice.end_ns, 'hour')} UTC"
    lines = [
        f"{SHAPES[invoice.shape]}: {invoice.source}",
        f"{len(invoice.lines)} line(s), {bucket}, {window}; "
        f"{result.records} {invoice.platform} ledger record(s) billed",
    ]
    if invoice.declared_total_usd is not None and invoice.declared_total_usd != invoice.total_usd:
        lines.append(
            f"note: the export's totals say {_money(invoice.declared_total_usd)}, its records add "
            f"up to {_money(invoice.total_usd)}"
        )
    if invoice.platform == "modal" and any(line.parts is None for line in invoice.lines):
        lines.append(
            "note: this report has no cost by resource, so CPU and memory cannot be told from "
            "GPU time (and may read as a price difference): `modal billing report "
            "--show-resources` gives them"
        )
    return "\n".join(lines)


def _status(row: ReconcileRow, tolerance: float) -> str:
    if not row.metered:
        return "not metered"
    return "ok" if row.within(tolerance) else "over"


def _percent(row: ReconcileRow) -> str:
    share = row.difference_pct
    return "-" if share is None else f"{share:+.1f}"


def _reconcile_table(result: Reconciliation, tolerance: float) -> str:
    invoice = result.invoice
    headers = ["endpoint", "period (UTC)", "invoiced", "attributed", "difference", "%", ""]
    body: list[list[str]] = []
    notes: list[list[str]] = []
    for row in result.rows:
        body.append(
            [
                row.label,
                _when(row.period_start_ns, invoice.bucket),
                _money(row.invoiced_usd),
                _money(row.attributed_usd),
                _signed(row.difference_usd),
                _percent(row),
                _status(row, tolerance) + (" (provisional)" if row.provisional else ""),
            ]
        )
        explanation = [
            f"{_signed(cause.usd):>9}  {cause.kind.replace('_', ' '):<14}  {cause.detail}"
            for cause in row.causes
        ]
        if abs(row.unexplained_usd) >= Fraction(1, 10_000):
            explanation.append(f"{_signed(row.unexplained_usd):>9}  unexplained")
        notes.append(explanation)
    total = [
        "TOTAL",
        "",
        _money(result.invoiced_usd),
        _money(result.attributed_usd),
        _signed(result.difference_usd),
        (
            f"{float(result.difference_usd * 100 / result.invoiced_usd):+.1f}"
            if result.invoiced_usd
            else "-"
        ),
        "",
    ]
    widths = [max(len(cells[i]) for cells in (headers, *body, total)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        left = [cell.ljust(width) for cell, width in zip(cells[:2], widths[:2], strict=True)]
        right = [cell.rjust(width) for cell, width in zip(cells[2:6], widths[2:6], strict=True)]
        return "  ".join((*left, *right, cells[6])).rstrip()

    rule = "  ".join("-" * width for width in widths[:6])
    out = [_header(invoice, result), "", line(headers), rule]
    for cells, explanation in zip(body, notes, strict=True):
        out.append(line(cells))
        out.extend(f"  {text}" for text in explanation)
    out += [rule, line(total), "", "by cause:"]
    causes = result.causes()
    for kind, title in (*CAUSES.items(), ("unexplained", "unexplained")):
        amount = causes.get(kind, Fraction(0))
        if amount:
            out.append(f"  {_signed(amount):>12}  {title}")
    return "\n".join(out)


def _number(amount: Fraction) -> float:
    return float(amount)


def _iso(instant_ns: int) -> str:
    moment = _EPOCH + dt.timedelta(microseconds=instant_ns // 1000)
    return moment.isoformat().replace("+00:00", "Z")


def _reconcile_json(result: Reconciliation, tolerance: float) -> dict[str, Any]:
    invoice = result.invoice
    return {
        "usage": {
            "source": invoice.source,
            "platform": invoice.platform,
            "shape": invoice.shape,
            "shape_description": SHAPES[invoice.shape],
            "bucket": invoice.bucket,
            "bucket_inferred": invoice.bucket_inferred,
            "start": _iso(invoice.start_ns),
            "end": _iso(invoice.end_ns),
            "lines": len(invoice.lines),
            "declared_total_usd": (
                None if invoice.declared_total_usd is None else _number(invoice.declared_total_usd)
            ),
        },
        "ledger_records": result.records,
        "tolerance_pct": tolerance,
        "within_tolerance": not result.failing(tolerance),
        "invoiced_usd": _number(result.invoiced_usd),
        "attributed_usd": _number(result.attributed_usd),
        "difference_usd": _number(result.difference_usd),
        "causes_usd": {kind: _number(amount) for kind, amount in result.causes().items()},
        "rows": [
            {
                "endpoint": row.endpoint,
                "label": row.label,
                "period_start": _iso(row.period_start_ns),
                "period_end": _iso(row.period_end_ns),
                "invoiced_usd": _number(row.invoiced_usd),
                "attributed_usd": _number(row.attributed_usd),
                "difference_usd": _number(row.difference_usd),
                "difference_pct": row.difference_pct,
                "within_tolerance": row.within(tolerance),
                "provisional": row.provisional,
                "adjustments": list(row.adjustments),
                "causes": [
                    {"cause": cause.kind, "usd": _number(cause.usd), "detail": cause.detail}
                    for cause in row.causes
                ],
                "unexplained_usd": _number(row.unexplained_usd),
            }
            for row in result.rows
        ],
    }


def true_up_report(
    *,
    usage_file: str,
    platform: str | None,
    location: str | None,
    by: str,
    output_format: str,
    policy: str,
    pricing_file: str | None,
) -> None:
    """``gpuledger report --true-up FILE``: the invoice split over the report's groups."""
    if by not in TRUE_UP_BY:
        raise click.BadParameter(
            f"a true-up groups by {', '.join(TRUE_UP_BY)}, not by {by}", param_hint="'--by'"
        )
    if output_format not in ("table", "json", "csv"):
        raise click.BadParameter(
            f"--true-up prints table, json or csv, not {output_format}", param_hint="'--format'"
        )
    result = true_up(_load(usage_file, platform, None, location, policy, pricing_file))
    if output_format == "json":
        click.echo(json.dumps(_true_up_json(result, by), indent=2))
    elif output_format == "csv":
        click.echo(_true_up_csv(result, by), nl=False)
    else:
        click.echo(_true_up_table(result, by))


def _cents(cents: int) -> str:
    return f"{cents / 100:,.2f}"


def _true_up_table(result: TrueUp, by: str) -> str:
    invoice = result.reconciliation.invoice
    rows = result.rows(by)
    total_cents = sum(row.cents for row in rows)
    measured = sum((row.measured_usd for row in rows), Fraction(0))
    headers = [by, "measured USD", "share %", "invoiced USD"]
    body = [
        [
            row.key,
            _money(row.measured_usd),
            f"{row.cents * 100 / total_cents:.1f}" if total_cents else "-",
            _cents(row.cents),
        ]
        for row in rows
    ]
    footer = ["TOTAL", _money(measured), "100.0" if total_cents else "-", _cents(total_cents)]
    widths = [max(len(cells[i]) for cells in (headers, *body, footer)) for i in range(4)]

    def line(cells: Sequence[str]) -> str:
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((cells[0].ljust(widths[0]), *rest)).rstrip()

    rule = "  ".join("-" * width for width in widths)
    out = [
        f"trued up to {SHAPES[invoice.shape]}: {invoice.source} "
        f"({_when(invoice.start_ns, 'hour')} to {_when(invoice.end_ns, 'hour')} UTC)",
        "",
        line(headers),
        rule,
        *(line(cells) for cells in body),
        rule,
        line(footer),
        "",
        "Each period's invoiced amount is split by what the ledger measured there (its charges "
        "billed the way the invoice matches: `gpuledger reconcile`); (residual) is what no "
        "ledger row explains.",
    ]
    if result.unbilled_usd:
        out.append(
            f"{_money(result.unbilled_usd)} USD of ledger charges fall where the invoice bills "
            "nothing: in no row."
        )
    return "\n".join(out)


def _true_up_json(result: TrueUp, by: str) -> dict[str, Any]:
    invoice = result.reconciliation.invoice
    return {
        "usage": {"source": invoice.source, "platform": invoice.platform, "shape": invoice.shape},
        "by": by,
        "total_usd": result.total_cents / 100,
        "unbilled_usd": _number(result.unbilled_usd),
        "rows": [
            {
                "key": row.key,
                "measured_usd": _number(row.measured_usd),
                "invoiced_usd": row.cents / 100,
            }
            for row in result.rows(by)
        ],
        "cells": [
            {
                "period_start": _iso(cell.period_start_ns),
                "period_end": _iso(cell.period_end_ns),
                "endpoint": cell.endpoint,
                "ledger_endpoint": cell.ledger_endpoint,
                "user": cell.user,
                "tenant": cell.tenant,
                "kind": cell.kind,
                "measured_usd": _number(cell.measured_usd),
                "invoiced_usd": cell.cents / 100,
            }
            for cell in result.cells
        ],
    }


def _true_up_csv(result: TrueUp, by: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([by, "measured_usd", "invoiced_usd"])
    for row in result.rows(by):
        writer.writerow([row.key, f"{float(row.measured_usd):.6f}", f"{row.cents / 100:.2f}"])
    return buffer.getvalue()
