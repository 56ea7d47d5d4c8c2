"""``gpuledger proxy``: meter an HTTP model server, in any language, with no change to its code.

Each option is a row of the settings table: the proxy's own (``PROXY_SETTINGS``), resolved here
argument > environment > settings file > default, and the agent's (``--platform``, ``--gpu``,
...), which ``gpuledger.configure()`` resolves the same way.
"""

from __future__ import annotations

from typing import Any

import click

from gpuledger._settings import PROXY_SETTINGS, resolve_command
from gpuledger.cli._options import SettingOption, given_settings, setting_error

__all__ = ["proxy"]

INSTALL_HINT = "pip install 'aiohttp>=3.9.3' (a dependency of gpuledger)"

_AGENT_SETTINGS = ("platform", "gpu", "gpu_count", "ledger", "service_name")
"""The agent's settings the proxy takes as options; ``configure()`` resolves them."""


@click.command("proxy")
@click.option("--listen", cls=SettingOption, setting="proxy_listen", metavar="HOST:PORT")
@click.option("--upstream", cls=SettingOption, setting="proxy_upstream", metavar="HOST:PORT")
@click.option("--allow-remote", cls=SettingOption, setting="proxy_allow_remote", is_flag=True)
@click.option("--upstream-pid", cls=SettingOption, setting="proxy_upstream_pid", metavar="PID")
@click.option("--preset", cls=SettingOption, setting="proxy_preset")
@click.option("--ready-path", cls=SettingOption, setting="proxy_ready_path", metavar="PATH")
@click.option("--ready-status", cls=SettingOption, setting="proxy_ready_status")
@click.option("--ready-json", cls=SettingOption, setting="proxy_ready_json", metavar="KEY=VALUE")
@click.option(
    "--ready-timeout", cls=SettingOption, setting="proxy_ready_timeout_s", metavar="SECONDS"
)
@click.option(
    "--upstream-timeout", cls=SettingOption, setting="proxy_upstream_timeout_s", metavar="SECONDS"
)
@click.option(
    "--request-id-header", cls=SettingOption, setting="proxy_request_id_header", metavar="NAME"
)
@click.option("--user-header", cls=SettingOption, setting="proxy_user_header", metavar="NAME")
@click.option("--tenant-header", cls=SettingOption, setting="proxy_tenant_header", metavar="NAME")
@click.option(
    "--unmetered-path",
    "unmetered_paths",
    cls=SettingOption,
    setting="proxy_unmetered_paths",
    multiple=True,
    metavar="PATH",
    help="Proxy requests to this exact path without recording them (health checks). "
    "Repeatable; replaces the preset's list.",
)
@click.option("--handler-name", cls=SettingOption, setting="proxy_handler_name")
@click.option("--platform", cls=SettingOption, setting="platform")
@click.option("--gpu", cls=SettingOption, setting="gpu")
@click.option("--gpu-count", cls=SettingOption, setting="gpu_count")
@click.option("--ledger", cls=SettingOption, setting="ledger", metavar="LOCATION")
@click.option("--service-name", cls=SettingOption, setting="service_name")
@click.pass_context
def proxy(ctx: click.Context, /, **_typed: object) -> None:
    """Meter every request to an HTTP model server, in any language, with no code change.

    A reverse proxy: clients call --listen, requests are streamed to --upstream and back, and
    each one is recorded in the ledger (and as a span and metrics) like a @traced_handler call.
    The proxy waits for the upstream to be ready, and the time from the upstream's start
    (--upstream-pid) or the proxy's until then is the first request's cold start. Bodies are
    never read. Stops on SIGTERM or Ctrl-C, letting requests in flight finish. Each option may
    also come from its environment variable or a settings file (GPULEDGER_CONFIG,
    ./gpuledger.toml or [tool.gpuledger] in ./pyproject.toml), in that order after the option.

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

    given: dict[str, Any] = given_settings(ctx)
    sources: dict[str, str] = {}
    try:
        resolved = resolve_command(
            PROXY_SETTINGS, {key: value for key, value in given.items() if key.startswith("proxy_")}
        )
        sources = dict(resolved.sources)
        settings: dict[str, Any] = {
            key.removeprefix("proxy_"): value for key, value in resolved.values.items()
        }
        if settings["upstream"] is None:
            raise click.MissingParameter(
                "Give it here, in GPULEDGER_PROXY_UPSTREAM, or as proxy_upstream in a settings "
                "file.",
                ctx=ctx,
                param=next(param for param in ctx.command.params if param.name == "upstream"),
            )
        settings["upstream_timeout_s"] = settings["upstream_timeout_s"] or None  # 0: no limit
        config = metering.proxy_config(**settings)
        gpuledger.configure(**{key: given[key] for key in _AGENT_SETTINGS if key in given})
    except gpuledger.ConfigError as error:
        raise setting_error(ctx, error, sources, prefix="proxy_") from None
    except gpuledger.GpuledgerError as error:
        raise click.ClickException(str(error)) from None
    from gpuledger._logging import take_library_logging  # noqa: PLC0415

    take_library_logging()  # aiohttp's and OpenTelemetry's lines, in the same format, masked
    try:
        asyncio.run(metering.run_proxy(config, echo=lambda line: click.echo(line, err=True)))
    except OSError as error:  # the listening address is taken, or not ours to bind
        listen = settings["listen"]
        raise click.ClickException(f"cannot listen on {listen}: {error.strerror}") from None
    finally:
        gpuledger.shutdown()
