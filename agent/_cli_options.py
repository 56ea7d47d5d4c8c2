"""Click options that several ``gpuledger`` commands share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from gpuledger._pricing import PRICING_ENV

__all__ = ["format_option", "pricing_option"]

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
