"""How the CLI bills recorded workers: by the rules frozen on their records, or re-priced.

``report`` and ``compare``'s "as recorded" option bill the same workers the same way, so their
totals agree exactly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gpuledger._record import InvocationRecord
from gpuledger.billing import Rules, frozen_rules

if TYPE_CHECKING:
    from gpuledger._pricing import Catalogue

__all__ = ["billing_options", "catalogue_rules", "recorded_edition_rules", "stale_warnings"]


def catalogue_rules(
    catalogue: Catalogue, *, priced_only: bool
) -> Any:  # RulesFor: (record) -> (Rules | None, version | None)
    """The rules of ``catalogue`` for a record's platform and GPU. With ``priced_only``, only
    for records that were priced when written (the fallback for records older than frozen
    rules: what was unpriced stays unpriced)."""

    def rules_for(record: InvocationRecord) -> tuple[Rules | None, str | None]:
        if priced_only and record.cost_usd is None:
            return None, None
        price = catalogue.lookup(record.pricing_platform or record.platform, record.gpu_model)
        if price is None:
            return None, None
        return Rules.from_price(price), catalogue.version

    return rules_for


def billing_options(pricing_file: str | None, policy: str) -> dict[str, Any]:
    """``aggregate``'s billing keywords: ``policy``, and the rules (frozen, or those of
    ``pricing_file`` to re-price). Raises ``PricingError`` for a bad file."""
    from gpuledger._pricing import load_catalogue  # noqa: PLC0415

    if pricing_file is not None:
        return {
            "policy": policy,
            "rules_for": catalogue_rules(load_catalogue(pricing_file), priced_only=False),
        }
    return {
        "policy": policy,
        "rules_for": frozen_rules,
        # Records written before rules were frozen: the edition they were priced from.
        "fallback": recorded_edition_rules(),
    }


def recorded_edition_rules() -> Any:  # RulesFor
    """The rules of the shipped edition a record says it was priced from (``2026-03`` is the
    seed's); none for a record priced from a user's file (its rules are gone with the file) or
    unpriced: those count as recorded."""
    from gpuledger._pricing import edition_catalogue, edition_name  # noqa: PLC0415

    by_edition: dict[str, Any] = {}

    def rules_for(record: InvocationRecord) -> tuple[Rules | None, str | None]:
        version = record.pricing_version
        name = None if version is None or record.cost_usd is None else edition_name(version)
        if name is None:
            return None, None
        if name not in by_edition:
            by_edition[name] = catalogue_rules(edition_catalogue(name), priced_only=True)
        return by_edition[name](record)  # type: ignore[no-any-return]

    return rules_for


def stale_warnings(
    versions: Iterable[str | None], pricing_file: str | None, today: dt.date
) -> list[str]:
    """One warning per price edition older than 90 days on ``today`` that the report prices by:
    ``pricing_file``'s (re-pricing), else those the records were priced from (``versions``:
    their pricing versions)."""
    from gpuledger._pricing import edition_catalogue, edition_name, load_catalogue  # noqa: PLC0415

    if pricing_file is not None:
        catalogues = [load_catalogue(pricing_file)]
    else:
        names = {edition_name(version) for version in versions if version}
        catalogues = [edition_catalogue(name) for name in sorted(n for n in names if n)]
    return [
        warning
        for catalogue in catalogues
        if (warning := catalogue.stale_warning(today)) is not None
    ]
