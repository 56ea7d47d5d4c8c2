"""``gpuledger demo``: a synthetic workload served into a ledger, then the per-user report."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

__all__ = ["demo"]


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
    help="Ledger to write.  [default: $GPULEDGER_LEDGER, else a new one in a temp dir]",
)
@click.pass_context
def demo(
    ctx: click.Context, requests: int, seed: int, platform: str, gpu: str, location: str | None
) -> None:
    """Serve a synthetic workload through @traced_handler and print the per-user cost report.

    Four users send bursty traffic over six simulated hours to a RunPod-style worker that loads
    a model at start-up and scales to zero after the platform's idle window, so some requests
    are cold. Time is simulated (no GPU, no network, about a second of wall time); the agent,
    the prices and the ledger are the real ones.
    """
    from gpuledger._cli_report import report  # noqa: PLC0415
    from gpuledger._demo import run_demo  # noqa: PLC0415
    from gpuledger._errors import GpuledgerError  # noqa: PLC0415

    ledger = (
        location
        or os.environ.get("GPULEDGER_LEDGER")
        or str(Path(tempfile.mkdtemp(prefix="gpuledger-demo-")) / "ledger.db")
    )
    click.echo(
        f"gpuledger demo: {requests} requests from 4 users, {platform} {gpu}, ledger {ledger}"
    )
    try:
        result = run_demo(ledger=ledger, requests=requests, seed=seed, platform=platform, gpu=gpu)
    except GpuledgerError as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"served {result.requests} requests ({result.errors} failed) on {result.workers} "
        f"worker start(s) over {result.simulated_seconds / 3600:.1f} simulated hours "
        f"in {result.wall_seconds:.2f} s\n"
    )
    ctx.invoke(report, location=ledger, by="user", since=None, output_format="table")
    click.echo(
        f"\nmore: gpuledger report --ledger {ledger} --by tenant|endpoint|day|invocation|target "
        "[--format json|csv]"
    )
