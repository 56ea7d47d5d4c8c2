"""How the CLI bills recorded workers: by the rules frozen on their records, or re-priced.

``report`` and ``compare``'s "as recorded" option bill the same workers the same way, so their
totals agree exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpuledger._record import InvocationRecord
from gpuledger.billing import Rules, frozen_rules

if TYPE_CHECKING:
    from gpuledger._pricing import Catalogue

__all__ = ["billing_options", "catalogue_rules"]


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
        # Records written before rules were frozen: the catalogue they were priced from.
        "fallback": catalogue_rules(load_catalogue(), priced_only=True),
    }
