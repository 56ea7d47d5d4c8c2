"""``gpuledger sidecar``: run the sidecar beside serverless workers until SIGTERM.

``gpuledger sidecar [--listen HOST:PORT] [--token-file PATH] [--spool PATH]
[--ledger LOCATION] [--otlp-endpoint URL] [--otlp-protocol http/protobuf|grpc]
[--drain-timeout S] [--grace S] [--max-body BYTES] [--max-spool BYTES]
[--synchronous normal|full] [--gpu-sample-hz HZ] [--log-format console|json]``

``gpuledger sidecar dead-letters [--spool PATH] [--format table|json] [--redrive [--id N ...]]``
lists the records a consumer could not deliver and set aside (``--redrive``: puts them back for
delivery, all or those ``--id`` names, e.g. once the collector's limit is raised; a running
sidecar picks them up within a second). Exit 0; 1 when the spool is missing or unreadable.

Each option is a row of the settings table (``SIDECAR_SETTINGS``): argument > environment >
settings file > default, and ``--help`` shows the row's variables, file key and default.

``--token TOKEN`` exists too, but every local user sees a command line in ``ps``: the token
belongs in ``GPULEDGER_SIDECAR_TOKEN`` or a file (``--token-file``,
``GPULEDGER_SIDECAR_TOKEN_FILE``).
What the sidecar prints and logs never shows a password, token or authentication header
(``gpuledger._location.mask_secrets``).

It prints one line when it is ready to take requests, then runs until SIGTERM or SIGINT: it stops
accepting, gives its consumers ``--drain-timeout`` seconds to empty the spool, logs how many
records are left for the next start, and exits 0. See ``gpuledger.sidecar`` for what it does.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import click

from gpuledger._errors import ConfigError, SidecarError
from gpuledger._location import mask_secrets
from gpuledger._logging import configure_logging, take_library_logging
from gpuledger._settings import SIDECAR_SETTINGS, environment, resolve_command
from gpuledger.cli._options import SettingOption, given_settings, setting_error
from gpuledger.sidecar import Sidecar

__all__ = ["sidecar_command"]


def _container_gpu(sample_hz: float) -> Any:
    """The container-wide GPU meter (``SidecarGpu``), or None without a GPU or when off."""
    if sample_hz <= 0:
        return None
    import time  # noqa: PLC0415

    from gpuledger._gpu import open_meter  # noqa: PLC0415
    from gpuledger._logging import get_logger  # noqa: PLC0415
    from gpuledger.sidecar import SidecarGpu  # noqa: PLC0415

    meter, reason = open_meter(
        None, environment(), time_ns=time.time_ns, sample_hz=sample_hz, settle_s=1.0
    )
    if meter is None:
        get_logger().info("gpuledger sidecar: no GPU metering", reason=reason)
        return None
    return SidecarGpu(meter)


@click.group("sidecar", invoke_without_command=True)
@click.option("--listen", cls=SettingOption, setting="sidecar_listen", metavar="HOST:PORT")
@click.option("--token", cls=SettingOption, setting="sidecar_token")
@click.option("--token-file", cls=SettingOption, setting="sidecar_token_file", metavar="PATH")
@click.option("--spool", cls=SettingOption, setting="sidecar_spool", metavar="PATH")
@click.option("--ledger", cls=SettingOption, setting="ledger", metavar="LOCATION")
@click.option("--otlp-endpoint", cls=SettingOption, setting="sidecar_otlp_endpoint", metavar="URL")
@click.option("--otlp-protocol", cls=SettingOption, setting="sidecar_otlp_protocol")
@click.option(
    "--drain-timeout", cls=SettingOption, setting="sidecar_drain_timeout_s", metavar="SECONDS"
)
@click.option("--grace", cls=SettingOption, setting="sidecar_grace_s", metavar="SECONDS")
@click.option(
    "--unhealthy-after",
    cls=SettingOption,
    setting="sidecar_unhealthy_after_s",
    metavar="SECONDS",
)
@click.option("--max-backlog", cls=SettingOption, setting="sidecar_max_backlog", metavar="N")
@click.option("--max-body", cls=SettingOption, setting="sidecar_max_body", metavar="BYTES")
@click.option("--max-spool", cls=SettingOption, setting="sidecar_max_spool_bytes", metavar="BYTES")
@click.option("--synchronous", cls=SettingOption, setting="sidecar_synchronous")
@click.option("--gpu-sample-hz", cls=SettingOption, setting="sidecar_gpu_sample_hz", metavar="HZ")
@click.option("--log-format", cls=SettingOption, setting="sidecar_log_format")
@click.pass_context
def sidecar_command(ctx: click.Context, /, **_typed: object) -> None:
    """Run the sidecar: take records and start notices from workers, spool them on disk, write
    them to the ledger and export them over OTLP, record killed and timed-out invocations.

    Each option may also come from its environment variable or a settings file (GPULEDGER_CONFIG,
    ./gpuledger.toml or [tool.gpuledger] in ./pyproject.toml), in that order after the option.
    """
    if ctx.invoked_subcommand is not None:
        return
    sources: dict[str, str] = {}
    try:
        resolved = resolve_command(SIDECAR_SETTINGS, given_settings(ctx))
        sources = dict(resolved.sources)
        settings = resolved.values
        configure_logging(settings["sidecar_log_format"], "info")
        take_library_logging()
        sidecar = Sidecar(
            gpu=_container_gpu(settings["sidecar_gpu_sample_hz"]),
            listen=settings["sidecar_listen"],
            token=settings["sidecar_token"],
            spool=settings["sidecar_spool"],
            ledger=settings["ledger"],
            otlp_endpoint=settings["sidecar_otlp_endpoint"],
            otlp_protocol=settings["sidecar_otlp_protocol"],
            grace_s=settings["sidecar_grace_s"],
            max_body=settings["sidecar_max_body"],
            synchronous=settings["sidecar_synchronous"],
            max_spool_bytes=settings["sidecar_max_spool_bytes"],
            unhealthy_after_s=settings["sidecar_unhealthy_after_s"],
            max_backlog=settings["sidecar_max_backlog"],
            environ=environment(),
        )
        sidecar.start()
    except ConfigError as error:
        raise _masked(setting_error(ctx, error, sources, prefix="sidecar_")) from None
    except SidecarError as error:
        raise click.ClickException(mask_secrets(str(error))) from None
    _serve(sidecar, settings["sidecar_drain_timeout_s"])


def _masked(error: click.ClickException) -> click.ClickException:
    """``error`` with any password or token in its message masked (a ledger's DSN, say)."""
    error.message = mask_secrets(error.message)  # type: ignore[misc]  # final in the stubs only
    return error


def _serve(sidecar: Sidecar, drain_timeout_s: float) -> None:
    """Say where the sidecar listens, then run until SIGTERM or SIGINT, and drain."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        exporting = (
            f"exporting to {mask_secrets(sidecar.otlp.description)}"
            if sidecar.otlp is not None
            else "OTLP export off (no --otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT)"
        )
        click.echo(
            f"gpuledger sidecar listening on {sidecar.url}, spool {sidecar.spool_path}, "
            f"ledger {mask_secrets(sidecar.ledger_location)}, {exporting}"
        )
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        sidecar.stop(drain_timeout_s)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_SPOOL_ROW = tuple(row for row in SIDECAR_SETTINGS if row.name == "sidecar_spool")


@sidecar_command.command("dead-letters")
@click.option("--spool", cls=SettingOption, setting="sidecar_spool", metavar="PATH")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="A table for people, or JSON (one object per dead letter).",
)
@click.option("--redrive", is_flag=True, help="Put them back in the spool for delivery.")
@click.option(
    "--id",
    "ids",
    type=click.IntRange(min=1),
    multiple=True,
    metavar="N",
    help="With --redrive: only these dead letters (repeatable); default all.",
)
@click.pass_context
def dead_letters_command(
    ctx: click.Context, /, output_format: str, redrive: bool, ids: tuple[int, ...], **_typed: object
) -> None:
    """List the records the sidecar's consumers could not deliver (a row that is not a record,
    a record OTLP cannot encode, one the collector refuses), or re-drive them."""
    import json  # noqa: PLC0415
    from datetime import UTC, datetime  # noqa: PLC0415

    from gpuledger.sidecar import list_dead_letters, redrive_dead_letters  # noqa: PLC0415

    if ids and not redrive:
        raise click.UsageError("--id is for --redrive", ctx)
    try:
        spool = str(resolve_command(_SPOOL_ROW, given_settings(ctx)).values["sidecar_spool"])
    except ConfigError as error:
        raise setting_error(ctx, error, {}, prefix="sidecar_") from None
    try:
        letters = redrive_dead_letters(spool, ids or None) if redrive else list_dead_letters(spool)
    except SidecarError as error:
        raise click.ClickException(str(error)) from None
    if redrive:
        missing = sorted(set(ids) - {letter.id for letter in letters})
        click.echo(f"re-driven {len(letters)} dead letter(s) in {spool}")
        if missing:
            click.echo(f"no dead letter with id {', '.join(map(str, missing))}", err=True)
        return
    if output_format == "json":
        for letter in letters:
            click.echo(
                json.dumps(
                    {
                        "id": letter.id,
                        "seq": letter.seq,
                        "record_id": letter.record_id,
                        "consumer": letter.consumer,
                        "reason": letter.reason,
                        "dead_ns": letter.dead_ns,
                        "body": letter.body,
                    }
                )
            )
        return
    if not letters:
        click.echo(f"no dead letters in {spool}")
        return
    click.echo(f"{'id':>5}  {'consumer':<8}  {'when (UTC)':<19}  {'record_id':<36}  reason")
    for letter in letters:
        when = datetime.fromtimestamp(letter.dead_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{letter.id:>5}  {letter.consumer:<8}  {when:<19}  {letter.record_id:<36}  "
            f"{letter.reason}"
        )
