"""Click options that several ``gpuledger`` commands share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from gpuledger._pricing import PRICING_ENV

__all__ = ["format_option", "help_when_bare", "pricing_option"]

F = TypeVar("F", bound=Callable[..., Any])


def pricing_option(function: F) -> F:
    """``--pricing FILE`` (as ``pricing_file``): a pricing file over the shipped catalogue."""
    return click.option(
        "--pricing",
        "pricing_file",
        metavar="FILE",
        default=None,
        help=f"A pricing file merged over the shipped catalogue [default: ${PRICING_ENV}, if set].",
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
