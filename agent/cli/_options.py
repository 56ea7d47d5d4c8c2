"""Click options that several ``gpuledger`` commands share, and the options that are settings.

A :class:`SettingOption` is a row of the settings table (``gpuledger._settings``) on the command
line: its help is the row's (meaning, environment variables, file key, default), and click only
collects what was typed; the table resolves argument > environment > file > default
(:func:`given_settings`), and :func:`setting_error` turns a ConfigError into the exit code the
command-line convention wants (``gpuledger.cli._main``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from gpuledger._errors import ConfigError
from gpuledger._settings import setting as settings_row

__all__ = [
    "SettingOption",
    "SettingsGroup",
    "format_option",
    "given_settings",
    "help_when_bare",
    "pricing_option",
    "pricings_option",
    "setting_error",
    "today",
]

F = TypeVar("F", bound=Callable[..., Any])


class SettingOption(click.Option):
    """An option that is the setting ``setting`` (a keyword of the settings table).

    Its help is the row's doc (or ``help=``) followed by ``[env: ...; file: KEY; default: ...]``;
    a row whose parser is a choice offers the choices. Its default is None: what was not typed is
    the table's to resolve.
    """

    def __init__(self, param_decls: Sequence[str], *, setting: str, **attrs: Any) -> None:
        row = settings_row(setting)
        env = f"env: {', '.join(row.env)}; " if row.env else ""
        meaning = _plain(attrs.pop("help", None) or row.doc)
        attrs["help"] = f"{meaning}  [{env}file: {row.name}; default: {_plain(row.default_doc)}]"
        choices = getattr(row.parse, "options", None)
        if choices is not None and "type" not in attrs:
            attrs["type"] = click.Choice(choices, case_sensitive=False)
        if not attrs.get("is_flag"):
            attrs["default"] = None
        super().__init__(param_decls, **attrs)
        self.setting = setting


def _plain(markdown: str) -> str:
    return markdown.replace("`", "")


def given_settings(ctx: click.Context) -> dict[str, object]:
    """The settings typed on the command line: keyword -> value, for each :class:`SettingOption`
    given (not those left to the environment, the file or the default)."""
    return {
        param.setting: ctx.params[param.name]
        for param in ctx.command.params
        if isinstance(param, SettingOption)
        and param.name is not None
        and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE
    }


def setting_error(
    ctx: click.Context, error: ConfigError, sources: Mapping[str, str], prefix: str = ""
) -> click.ClickException:
    """The click error for ``error``: a usage error naming the option (exit 2) when the value was
    typed on the command line, else a failed run (exit 1) that says where the value came from
    (an environment variable, the settings file).

    ``error.setting`` may be a component's own name (the sidecar's ``listen``): ``prefix`` + it
    is tried first (``sidecar_listen``). ``sources`` (``CommandSettings.sources``) says where each
    of the command's settings came from; an error that names its own source keeps it.
    """
    name = prefix + error.setting if prefix + error.setting in sources else error.setting
    source = sources.get(name, "argument") if error.source == "argument" else error.source
    if source != "argument":
        if name == error.setting and source == error.source:
            return click.ClickException(str(error))
        return click.ClickException(str(ConfigError(name, error.value, error.reason, source)))
    param = next(
        (p for p in ctx.command.params if isinstance(p, SettingOption) and p.setting == name),
        None,
    )
    return click.BadParameter(f"{error.value!r}: {error.reason}", ctx=ctx, param=param)


class SettingsGroup(click.Group):
    """The ``gpuledger`` group: a ConfigError no command turned into a click error (a settings
    file that cannot be used, a bad ``GPULEDGER_LEDGER`` for ``report``) is a failed run, exit 1,
    with its message, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as error:
            raise click.ClickException(str(error)) from None


def today() -> dt.date:
    """Today, UTC: how old a price edition is. Tests replace it (``monkeypatch.setattr``), so a
    staleness warning never starts appearing in them by itself."""
    return dt.datetime.now(dt.UTC).date()


def pricing_option(function: F) -> F:
    """``--pricing EDITION|FILE`` (as ``pricing_file``): a shipped price edition by name, or a
    pricing file over the edition its ``base`` names."""
    row = settings_row("pricing")
    return click.option(
        "--pricing",
        "pricing_file",
        metavar="EDITION|FILE",
        default=None,
        help="A price edition (`gpuledger pricing editions`: published-2026-12, seed-2026-03) or "
        "a pricing file over one  [default: the pricing setting: "
        f"{', '.join(row.env)}, else the settings file, else the default edition]",
    )(function)


def pricings_option(function: F) -> F:
    """``--pricing EDITION|FILE``, repeatable (as ``pricing_files``): each one's result in turn,
    to compare editions side by side (none given: the pricing setting, else the default)."""
    return click.option(
        "--pricing",
        "pricing_files",
        metavar="EDITION|FILE",
        multiple=True,
        help="A price edition (`gpuledger pricing editions`) or a pricing file over one; give it "
        "twice to see two side by side  [default: the pricing setting, else the default edition]",
    )(function)


def ledger_option(function: F) -> F:
    """``--ledger LOCATION`` (as ``location``): the ledger a command reads (None: the ledger
    setting's, else ``./gpuledger.db``)."""
    from gpuledger.ledger import LEDGER_ENV  # noqa: PLC0415

    return click.option(
        "--ledger",
        "location",
        metavar="LOCATION",
        default=None,
        help=f"Ledger file, sqlite:/// or postgresql:// URL.  [default: ${LEDGER_ENV}, else "
        "./gpuledger.db]",
    )(function)


def format_option(what: str) -> Callable[[F], F]:
    """``--format table|json`` (as ``output_format``); ``what`` says what JSON keeps unrounded."""

    def decorate(function: F) -> F:
        return click.option(
            "--format",
            "output_format",
            type=click.Choice(["table", "json"]),
            default="table",
            show_default=True,
            help=f"A table for people, JSON for programs ({what} unrounded).",
        )(function)

    return decorate


def help_when_bare(ctx: click.Context) -> None:
    """Print a group's help when it was run without a subcommand (exit 0: help was asked for).

    For groups declared with ``invoke_without_command=True``; click's own answer to a bare group
    is the help and exit code 2, a usage error.
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def adopt_journal(location: str) -> int:
    """Before a command reads the ledger at ``location``: write into it what workers that are
    gone spilled to their journal at exit (the ``journal`` setting's folder), so that a report
    never misses an invocation the ledger had no time for. Returns how many; a ledger that
    cannot take them is said on stderr, and they stay in the journal."""
    import os  # noqa: PLC0415

    from gpuledger._journal import Journal, replay_into_ledger  # noqa: PLC0415
    from gpuledger._settings import resolve_setting  # noqa: PLC0415
    from gpuledger.ledger import open_ledger  # noqa: PLC0415

    folder = str(resolve_setting("journal")[0])
    if not os.path.isdir(folder):
        return 0
    try:
        with open_ledger(location) as ledger:
            return replay_into_ledger(Journal(folder), ledger.write)
    except Exception as exc:
        click.echo(
            f"warning: the journal at {folder} holds invocations the ledger does not have yet, "
            f"and they could not be written into it: {exc}",
            err=True,
        )
        return 0
