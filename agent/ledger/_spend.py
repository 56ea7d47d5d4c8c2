"""What each budget has spent, computed in the ledger's database.

One query a budget: the sum of the request charges (``cost_usd``) of the invocations that started
within its rolling window, and of those within the last hour (the burn rate), for its key or, for
a budget of every key (``*``), per key. The ``start_ns`` index bounds the scan to the window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Final

from gpuledger._budgets import EVERY_KEY, Budget
from gpuledger.ledger._schema import Ledger

__all__ = ["BudgetSpend", "budget_spend"]

_HOUR_NS: Final = 3600 * 10**9
_NEAR: Final = 0.9
"""A budget this much spent is ``near`` its limit."""
_COLUMNS: Final = {"tenant": "tenant", "user": "user_id", "endpoint": "endpoint"}


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetSpend:
    """One budget's spend for one key (the budget's own, or each key of a ``*`` budget)."""

    budget: Budget
    key: str
    spent_usd: float
    """Request charges within the rolling window."""
    last_hour_usd: float
    """Of which within the last hour (the whole window, when it is shorter)."""
    oldest_ns: int | None = None
    """The start of the oldest priced invocation within the window (None: none): the spend
    first falls when it leaves the window."""

    @property
    def remaining_usd(self) -> float:
        return self.budget.limit_usd - self.spent_usd

    @property
    def used(self) -> float:
        """Spent over the limit: 1 is the whole budget."""
        return self.spent_usd / self.budget.limit_usd

    @property
    def burn_rate(self) -> float:
        """The last hour's spend over what the budget allows an hour: 1 spends it exactly by
        the end of its window, 14.4 spends a 30-day budget's 2 % in that hour."""
        hour_s = min(3600, self.budget.window_s)
        return self.last_hour_usd / (self.budget.limit_usd * hour_s / self.budget.window_s)

    @property
    def status(self) -> str:
        """``over`` (spent all of it), ``near`` (90 % or more), else ``ok``."""
        if self.spent_usd >= self.budget.limit_usd:
            return "over"
        return "near" if self.used >= _NEAR else "ok"


def budget_spend(ledger: Ledger, budgets: Sequence[Budget], *, now_ns: int) -> list[BudgetSpend]:
    """Each budget's spend as of ``now_ns`` (Unix ns), in the order given; a ``*`` budget gives
    one entry per key that spent within its window, most spent first."""
    p = ledger._PARAMETER
    result: list[BudgetSpend] = []
    for budget in budgets:
        since = now_ns - budget.window_s * 10**9
        hour = max(since, now_ns - _HOUR_NS)
        sums = (
            "COALESCE(SUM(cost_usd), 0), "
            f"COALESCE(SUM(CASE WHEN start_ns >= {p} THEN cost_usd END), 0), "
            "MIN(CASE WHEN cost_usd > 0 THEN start_ns END)"
        )
        where = f"start_ns >= {p} AND start_ns <= {p}"
        parameters: list[Any] = [hour, since, now_ns]
        column = _COLUMNS.get(budget.scope)
        if column is None:  # total
            rows = ledger._query(f"SELECT {sums} FROM invocations WHERE {where}", parameters)
            result.append(_spend(budget, "", rows[0]))
        elif budget.key == EVERY_KEY:
            rows = ledger._query(
                f"SELECT {column}, {sums} FROM invocations WHERE {where} "
                f"AND {column} IS NOT NULL AND {column} <> '' GROUP BY {column}",
                parameters,
            )
            spends = [_spend(budget, str(row[0]), row[1:]) for row in rows]
            spends.sort(key=lambda spend: (-spend.spent_usd, spend.key))
            result.extend(spends)
        else:
            rows = ledger._query(
                f"SELECT {sums} FROM invocations WHERE {where} AND {column} = {p}",
                [*parameters, budget.key],
            )
            result.append(_spend(budget, budget.key, rows[0]))
    return result


def _spend(budget: Budget, key: str, row: Sequence[Any]) -> BudgetSpend:
    spent, last_hour, oldest = row
    return BudgetSpend(
        budget, key, float(spent), float(last_hour), None if oldest is None else int(oldest)
    )
