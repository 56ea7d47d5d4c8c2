"""``gpuledger proxy``: meter an HTTP model server, in any language, with no change to its code."""

from __future__ import annotations

from typing import Any, Literal

import click

__all__ = ["proxy"]

INSTALL_HINT = "pip install 'gpuledger[proxy]'"

# The option behind each setting a ConfigError can name, where the two spellings differ.
_OPTION_OF_SETTING = {
    "ready_timeout_s": "--ready-timeout",
    "upstream_timeout_s": "--upstream-timeout",
    "unmetered_paths": "--unmetered-path",
}


@click.command("proxy")
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    metavar="HOST:PORT",
    help="Where clients connect. Loopback only unless --allow-remote.",
)
@click.option(
    "--upstream",
    required=True,
    metavar="HOST:PORT",
    help="The model server (HOST:PORT or http://HOST:PORT).",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a --listen address that is not loopback. The proxy has no authentication of "
    "its own: anyone who reaches it can call the model and pick the user it is billed to.",
)
@click.option(
    "--upstream-pid",
    type=click.IntRange(min=1),
    default=None,
    metavar="PID",
    help="The model server's process: the cold start is measured from its start "
    "(/proc/PID/stat) instead of the proxy's.",
)
@click.option(
    "--preset",
    type=click.Choice(["cog", "potassium"]),
    default=None,
    help="Defaults for a known server. cog: ready when /health-check says READY; "
    "/health-check, /, /openapi.json, /docs, /shutdown unmetered. potassium: ready at the first "
    "answer; /__status__, /_k/status unmetered; ids from X-Banana-Request-Id.",
)
@click.option(
    "--ready-path",
    default=None,
    metavar="PATH",
    help="GET this path until the upstream answers: it is then ready.  [default: /]",
)
@click.option(
    "--ready-status",
    type=click.Choice(["any", "2xx"]),
    default=None,
    help="Which answer means ready.  [default: any]",
)
@click.option(
    "--ready-json",
    default=None,
    metavar="KEY=VALUE",
    help="Ready only when the answer is 2xx JSON with KEY equal to VALUE (Cog: status=READY).",
)
@click.option(
    "--ready-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest a request waits for the upstream to be ready; then 503.",
)
@click.option(
    "--upstream-timeout",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest the upstream may stay silent (before answering, between chunks); then 504 "
    "and outcome timeout. 0: no limit.",
)
@click.option(
    "--request-id-header",
    default=None,
    metavar="NAME",
    help="Request header holding the invocation id (generated when absent, and sent upstream "
    "in it).  [default: X-Request-Id]",
)
@click.option("--user-header", default=None, metavar="NAME", help="Request header naming the user.")
@click.option(
    "--tenant-header", default=None, metavar="NAME", help="Request header naming the tenant."
)
@click.option(
    "--unmetered-path",
    "unmetered_paths",
    multiple=True,
    metavar="PATH",
    help="Proxy requests to this exact path without recording them (health checks). Repeatable; "
    "replaces the preset's list.",
)
@click.option(
    "--handler-name",
    default="proxy",
    show_default=True,
    help="The handler name every row gets.",
)
@click.option("--platform", default=None, help="Pricing platform.  [default: $GPULEDGER_PLATFORM]")
@click.option("--gpu", default=None, help="GPU model, e.g. H100.  [default: $GPULEDGER_GPU]")
@click.option(
    "--gpu-count",
    type=click.IntRange(min=1),
    default=None,
    help="GPUs the model server holds.  [default: $GPULEDGER_GPU_COUNT]",
)
@click.option(
    "--ledger",
    default=None,
    metavar="PATH",
    help="Ledger to write.  [default: $GPULEDGER_LEDGER, else gpuledger.db]",
)
@click.option(
    "--service-name",
    default=None,
    help="OpenTelemetry service.name.  [default: $GPULEDGER_SERVICE_NAME]",
)
def proxy(
    listen: str,
    upstream: str,
    allow_remote: bool,
    upstream_pid: int | None,
    preset: str | None,
    ready_path: str | None,
    ready_status: Literal["any", "2xx"] | None,  # click.Choice checked it
    ready_json: str | None,
    ready_timeout: float,
    upstream_timeout: float,
    request_id_header: str | None,
    user_header: str | None,
    tenant_header: str | None,
    unmetered_paths: tuple[str, ...],
    handler_name: str,
    platform: str | None,
    gpu: str | None,
    gpu_count: int | None,
    ledger: str | None,
    service_name: str | None,
) -> None:
    """Meter every request to an HTTP model server, in any language, with no code change.

    A reverse proxy: clients call --listen, requests are streamed to --upstream and back, and
    each one is recorded in the ledger (and as a span and metrics) like a @traced_handler call.
    The proxy waits for the upstream to be ready, and the time from the upstream's start
    (--upstream-pid) or the proxy's until then is the first request's cold start. Bodies are
    never read. Stops on SIGTERM or Ctrl-C, letting requests in flight finish.

    \b
    gpuledger proxy --upstream 127.0.0.1:5000 --preset cog --upstream-pid $COG_PID
    gpuledger proxy --upstream 127.0.0.1:8000 --preset potassium --user-header X-User-Id
    """
    try:
        from gpuledger.sidecar import proxy as metering  # noqa: PLC0415  (aiohttp, when asked)
    except ImportError as error:
        if (error.name or "").split(".")[0] in {"aiohttp", "multidict", "yarl"}:
            raise click.ClickException(
                f"gpuledger proxy needs aiohttp, which is not installed: {INSTALL_HINT}"
            ) from None
        raise
    import asyncio  # noqa: PLC0415

    import gpuledger  # noqa: PLC0415

    try:
        config = metering.proxy_config(
            upstream=upstream,
            listen=listen,
            allow_remote=allow_remote,
            preset=preset,
            ready_path=ready_path,
            ready_status=ready_status,
            ready_json=ready_json,
            unmetered_paths=unmetered_paths or None,
            request_id_header=request_id_header,
            upstream_pid=upstream_pid,
            ready_timeout_s=ready_timeout,
            upstream_timeout_s=upstream_timeout or None,
            user_header=user_header,
            tenant_header=tenant_header,
            handler_name=handler_name,
        )
        settings: dict[str, Any] = {
            "platform": platform,
            "gpu": gpu,
            "gpu_count": gpu_count,
            "ledger": ledger,
            "service_name": service_name,
        }
        gpuledger.configure(**{key: value for key, value in settings.items() if value is not None})
    except gpuledger.ConfigError as error:
        if error.source != "argument":  # from the environment: not this command line's mistake
            raise click.ClickException(str(error)) from None
        option = _OPTION_OF_SETTING.get(error.setting, "--" + error.setting.replace("_", "-"))
        raise click.BadParameter(
            f"{error.value!r}: {error.reason}", param_hint=f"'{option}'"
        ) from None
    except gpuledger.GpuledgerError as error:
        raise click.ClickException(str(error)) from None
    try:
        asyncio.run(metering.run_proxy(config, echo=lambda line: click.echo(line, err=True)))
    except OSError as error:  # the listening address is taken, or not ours to bind
        raise click.ClickException(f"cannot listen on {listen}: {error.strerror}") from None
    finally:
        gpuledger.shutdown()
