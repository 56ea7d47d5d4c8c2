"""``gpuledger demo``: a synthetic workload served into a ledger, then the per-user report."""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path

import click

from gpuledger.cli._demo_run import DEMO_SERVICE_NAME
from gpuledger.cli._options import pricing_option

__all__ = ["DEMO_SERVICE_NAME", "demo"]


"""The ``service_name`` of every row the demo writes (``_demo.run_demo`` configures it): rows
with any other are someone's real traffic."""


@click.command("demo")
@click.option(
    "--requests",
    "requests",
    type=click.IntRange(1, 1_000_000),
    default=200,
    show_default=True,
    help="How many requests the synthetic users send.",
)
@click.option(
    "--seed",
    type=int,
    default=7,
    show_default=True,
    help="Seed of the synthetic workload (same seed, same traffic).",
)
@click.option(
    "--platform",
    default="runpod",
    show_default=True,
    help="Platform whose prices the requests are recorded under.",
)
@click.option("--gpu", default="H100", show_default=True, help="GPU model of the workers.")
@click.option(
    "--ledger",
    "location",
    default=None,
    metavar="PATH",
    help="Ledger to write; one holding rows the demo did not write is refused without --force. "
    "$GPULEDGER_LEDGER is not used: it names real traffic.  [default: a new one in a temp dir]",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write the synthetic rows even into a ledger that holds other rows.",
)
@pricing_option
@click.pass_context
def demo(
    ctx: click.Context,
    requests: int,
    seed: int,
    platform: str,
    gpu: str,
    location: str | None,
    force: bool,
    pricing_file: str | None,
) -> None:
    """Serve a synthetic workload through @traced_handler and print the per-user cost report.

    Four users send bursty traffic over six simulated hours to a RunPod-style worker that loads
    a model at start-up and scales to zero after the platform's idle window, so some requests
    are cold. Time is simulated (no GPU, no network, about a second of wall time); the agent,
    the prices and the ledger are the real ones.
    """
    from gpuledger._errors import GpuledgerError  # noqa: PLC0415
    from gpuledger.cli._demo_run import run_demo  # noqa: PLC0415
    from gpuledger.cli._report import report  # noqa: PLC0415

    _check_platform(platform, pricing_file)
    if location is None:
        ledger = str(Path(tempfile.mkdtemp(prefix="gpuledger-demo-")) / "ledger.db")
    else:
        ledger = location
        _check_ledger(ledger, force=force)
    click.echo(
        f"gpuledger demo: {requests} requests from 4 users, {platform} {gpu}, ledger {ledger}"
    )
    try:
        result = run_demo(
            ledger=ledger,
            requests=requests,
            seed=seed,
            platform=platform,
            gpu=gpu,
            pricing=pricing_file,
        )
    except GpuledgerError as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"served {result.requests} requests ({result.errors} failed) on {result.workers} "
        f"worker start(s) over {result.simulated_seconds / 3600:.1f} simulated hours "
        f"in {result.wall_seconds:.2f} s\n"
    )
    ctx.invoke(report, location=ledger, by="user", since=None, output_format="table", wide=False)
    quoted = shlex.quote(ledger)
    click.echo("\nmore (paste a line):")
    for options in ("--by tenant", "--by day --wide", "--by endpoint --format csv"):
        click.echo(f"  gpuledger report --ledger {quoted} {options}")


def _check_platform(platform: str, pricing: str | None) -> None:
    """A usage error, before anything is written, for a platform the catalogue does not know."""
    from gpuledger._errors import PricingError  # noqa: PLC0415
    from gpuledger._pricing import load_catalogue  # noqa: PLC0415

    try:
        known = load_catalogue(pricing, use_env=True).platforms()
    except PricingError as error:
        raise click.ClickException(str(error)) from None
    if platform not in known:
        raise click.BadParameter(
            f"{platform!r} is not in the pricing catalogue ({', '.join(known)})",
            param_hint="'--platform'",
        )


def _check_ledger(location: str, *, force: bool) -> None:
    """Refuse, before serving anything, a ledger the demo cannot write or must not write to:
    one in a folder that is missing or read-only, and one holding rows the demo did not write
    (someone's real traffic, which synthetic users would pollute) unless ``force``."""
    from gpuledger._errors import LedgerError  # noqa: PLC0415
    from gpuledger.ledger import open_ledger  # noqa: PLC0415

    _check_writable(location)  # before SQLite says less
    try:
        with open_ledger(location) as ledger:
            path = ledger.path
            if force:
                return
            foreign = ledger.count(service_name_not=DEMO_SERVICE_NAME)
    except LedgerError as error:
        raise click.ClickException(f"cannot write the demo's ledger: {error}") from None
    if foreign:
        raise click.ClickException(
            f"the ledger {path} holds {foreign:,} row(s) not written by the demo: its synthetic "
            "users would be counted with them. Leave out --ledger for a new ledger, name another "
            "one, or pass --force to write there anyway."
        )


def _check_writable(location: str) -> None:
    """A one-line error naming why the ledger file at ``location`` cannot be written."""
    from gpuledger._location import unwritable_reason  # noqa: PLC0415

    problem = unwritable_reason(location)
    if problem is not None:
        raise click.ClickException(f"cannot write the demo's ledger {location}: {problem}")
