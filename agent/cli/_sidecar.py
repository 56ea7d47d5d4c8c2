"""``gpuledger sidecar``: run the sidecar beside serverless workers until SIGTERM.

``gpuledger sidecar [--listen HOST:PORT] [--token TOKEN] [--spool PATH] [--ledger LOCATION]
[--otlp-endpoint URL] [--otlp-protocol http/protobuf|grpc] [--drain-timeout S] [--grace S]
[--max-body BYTES] [--max-spool BYTES] [--synchronous normal|full] [--log-format console|json]``

It prints one line when it is ready to take requests, then runs until SIGTERM or SIGINT: it stops
accepting, gives its consumers ``--drain-timeout`` seconds to empty the spool, logs how many
records are left for the next start, and exits 0. See ``gpuledger.sidecar`` for what it does.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from types import FrameType
from typing import Any

import click

from gpuledger._errors import ConfigError, SidecarError
from gpuledger._logging import configure_logging
from gpuledger.ledger import DEFAULT_LEDGER, LEDGER_ENV
from gpuledger.sidecar import (
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_GRACE_S,
    DEFAULT_LISTEN,
    DEFAULT_MAX_BODY,
    DEFAULT_SPOOL,
    TOKEN_ENV,
    Sidecar,
    parse_listen,
)

__all__ = ["sidecar_command"]

_OPTION_OF_SETTING = {
    "listen": "--listen",
    "token": "--token",
    "spool": "--spool",
    "ledger": "--ledger",
    "otlp_protocol": "--otlp-protocol",
    "grace_s": "--grace",
    "max_body": "--max-body",
    "max_spool_bytes": "--max-spool",
    "synchronous": "--synchronous",
}


# Callbacks, not ParamType subclasses: ParamType is generic from click 8.3 on and not before (see
# _cli_breakeven.py).
def _seconds(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number of seconds", ctx, param) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise click.BadParameter(
            f"{value!r} is not a finite number of seconds, 0 or more", ctx, param
        )
    return seconds


def _listen(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return value


def _container_gpu(sample_hz: float) -> Any:
    """The container-wide GPU meter (``SidecarGpu``), or None without a GPU or when off."""
    if sample_hz <= 0:
        return None
    import os  # noqa: PLC0415
    import time  # noqa: PLC0415

    from gpuledger._gpu import open_meter  # noqa: PLC0415
    from gpuledger._logging import get_logger  # noqa: PLC0415
    from gpuledger.sidecar import SidecarGpu  # noqa: PLC0415

    meter, reason = open_meter(
        None, os.environ, time_ns=time.time_ns, sample_hz=sample_hz, settle_s=1.0
    )
    if meter is None:
        get_logger().info("gpuledger sidecar: no GPU metering", reason=reason)
        return None
    return SidecarGpu(meter)


@click.command("sidecar")
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    envvar="GPULEDGER_SIDECAR_LISTEN",
    callback=_listen,
    help="Where to take requests. Beyond loopback only with a token. [env: "
    "GPULEDGER_SIDECAR_LISTEN]",
)
@click.option(
    "--token",
    default=None,
    envvar=TOKEN_ENV,
    help=f"Require 'Authorization: Bearer TOKEN' (all but /healthz). [env: {TOKEN_ENV}]",
)
@click.option(
    "--spool",
    default=DEFAULT_SPOOL,
    show_default=True,
    metavar="PATH",
    envvar="GPULEDGER_SIDECAR_SPOOL",
    help="The spool file (SQLite). [env: GPULEDGER_SIDECAR_SPOOL]",
)
@click.option(
    "--ledger",
    default=DEFAULT_LEDGER,
    show_default=True,
    metavar="LOCATION",
    envvar=LEDGER_ENV,
    help=f"The ledger every record is written to. [env: {LEDGER_ENV}]",
)
@click.option(
    "--otlp-endpoint",
    default=None,
    metavar="URL",
    help="OTLP receiver's base URL (http://collector:4318; for grpc, http://collector:4317). "
    "[default: OTEL_EXPORTER_OTLP_ENDPOINT or ..._TRACES_ENDPOINT; none: ledger only]",
)
@click.option(
    "--otlp-protocol",
    type=click.Choice(["http/protobuf", "grpc"]),
    default=None,
    help="[default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf]",
)
@click.option(
    "--drain-timeout",
    default=str(DEFAULT_DRAIN_TIMEOUT_S),
    metavar="SECONDS",
    callback=_seconds,
    show_default=True,
    help="On SIGTERM, how long the spool may drain before exiting.",
)
@click.option(
    "--grace",
    default=str(DEFAULT_GRACE_S),
    metavar="SECONDS",
    callback=_seconds,
    show_default=True,
    help="How long a dead worker's record may take to arrive before it is recorded as killed.",
)
@click.option(
    "--max-body",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BODY,
    show_default=True,
    metavar="BYTES",
    help="Largest request body.",
)
@click.option(
    "--max-spool",
    type=click.IntRange(min=64 * 1024),
    default=None,
    metavar="BYTES",
    help="Cap on the spool's size; when full, requests get 503 until it drains. [default: none]",
)
@click.option(
    "--synchronous",
    type=click.Choice(["normal", "full"]),
    default="normal",
    show_default=True,
    help="normal: an acknowledged record survives the process being killed; full: also the "
    "machine losing power (an fsync per request).",
)
@click.option(
    "--gpu-sample-hz",
    type=click.FloatRange(0, 1000),
    default=10.0,
    show_default=True,
    help="Sample NVML for the whole container at this rate and fill the GPU fields of records "
    "that arrive without them (busy, energy, memory); 0: off. Without a driver: off, said once.",
)
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"]),
    default="console",
    show_default=True,
)
def sidecar_command(
    listen: str,
    token: str | None,
    spool: str,
    ledger: str,
    otlp_endpoint: str | None,
    otlp_protocol: str | None,
    drain_timeout: float,
    grace: float,
    max_body: int,
    max_spool: int | None,
    synchronous: str,
    gpu_sample_hz: float,
    log_format: str,
) -> None:
    """Run the sidecar: take records and start notices from workers, spool them on disk, write
    them to the ledger and export them over OTLP, record killed and timed-out invocations."""
    configure_logging(log_format, "info")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    gpu = _container_gpu(gpu_sample_hz)
    try:
        sidecar = Sidecar(
            gpu=gpu,
            listen=listen,
            token=token,
            spool=spool,
            ledger=ledger,
            otlp_endpoint=otlp_endpoint,
            otlp_protocol=otlp_protocol,
            grace_s=grace,
            max_body=max_body,
            synchronous=synchronous,
            max_spool_bytes=max_spool,
        )
        sidecar.start()
    except ConfigError as error:
        option = _OPTION_OF_SETTING.get(error.setting, error.setting)
        raise click.BadParameter(error.reason, param_hint=f"'{option}'") from None
    except SidecarError as error:
        raise click.ClickException(str(error)) from None
    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        exporting = (
            f"exporting to {sidecar.otlp.description}"
            if sidecar.otlp is not None
            else "OTLP export off (no --otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT)"
        )
        click.echo(
            f"gpuledger sidecar listening on {sidecar.url}, spool {sidecar.spool_path}, "
            f"ledger {sidecar.ledger_location}, {exporting}"
        )
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        sidecar.stop(drain_timeout)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
