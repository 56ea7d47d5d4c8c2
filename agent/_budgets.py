"""Spend budgets: what each one is, read from the settings.

A budget caps what one tenant, user or endpoint (or everything) may spend over a rolling window:
``{"scope": "tenant", "key": "acme", "window": "30d", "limit_usd": 500, "mode": "alert"}``.
``key`` ``"*"`` is a budget for every key of the scope separately (each tenant 20 USD a day).
``mode`` ``alert`` reports (``gpuledger budgets``, the budget metrics and the alert rules of
``docker/``); ``enforce`` also refuses a request before its handler runs once its budget is spent
(``_budget_guard``), raising :class:`gpuledger.BudgetExceeded`.

The spend of a budget is the sum of its requests' own charges (``cost_usd``: fee, GPU time and
start-up, as priced at each request's end) that started within the window; a worker's idle time
and rounding are the worker's, not a request's, and are not in it (``gpuledger report`` shares
them out). Light: no import beyond the standard library's ``dataclasses`` and ``re``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = ["BUDGET_MODES", "BUDGET_SCOPES", "EVERY_KEY", "Budget", "BudgetError", "parse_budgets"]

BUDGET_SCOPES: Final = ("tenant", "user", "endpoint", "total")
BUDGET_MODES: Final = ("alert", "enforce")
EVERY_KEY: Final = "*"
"""A budget's ``key`` that makes it a budget for every key of its scope, each on its own."""
_WINDOW = re.compile(r"^(\d+)\s*([mhdw])$", re.IGNORECASE)
_UNIT_SECONDS: Final = {"m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_FIELDS: Final = ("scope", "key", "window", "limit_usd", "mode")


class BudgetError(ValueError):
    """A budget that cannot be read: the message says which one and what was wrong."""


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    """One budget: ``scope`` (tenant, user, endpoint, total), ``key`` (the tenant, user or
    endpoint; ``*`` for each of them; ignored for total), ``window`` (``1h``, ``1d``, ``30d``:
    minutes, hours, days or weeks), ``limit_usd`` and ``mode`` (alert, enforce)."""

    scope: str
    key: str
    window: str
    window_s: int
    limit_usd: float
    mode: str = "alert"

    @property
    def label(self) -> str:
        """How the budget is named in tables and logs: ``tenant acme 30d``."""
        key = "" if self.scope == "total" else f" {self.key}"
        return f"{self.scope}{key} {self.window}"


def parse_budgets(value: object, where: str = "budgets") -> tuple[Budget, ...]:
    """The budgets in ``value``: a list of mappings (a settings file's ``[[budgets]]``, an
    argument), :class:`Budget` objects, or JSON text of such a list (the environment). Raises
    :class:`BudgetError` naming the entry and field that is wrong."""
    if isinstance(value, str):
        import json  # noqa: PLC0415  (only when budgets come as text)

        text = value.strip()
        if not text:
            return ()
        try:
            value = json.loads(text)
        except ValueError as error:
            raise BudgetError(f"{where}: not a JSON list of budgets ({error})") from None
    if isinstance(value, Mapping) or not isinstance(value, Sequence):
        raise BudgetError(f"{where}: expected a list of budgets, got {type(value).__name__}")
    budgets = []
    seen: set[tuple[str, str, str]] = set()
    for index, entry in enumerate(value):
        budget = entry if isinstance(entry, Budget) else _budget(entry, f"{where}[{index}]")
        identity = (budget.scope, budget.key, budget.window)
        if identity in seen:
            raise BudgetError(
                f"{where}[{index}]: a second budget for {budget.label} (one per scope, key and "
                "window)"
            )
        seen.add(identity)
        budgets.append(budget)
    return tuple(budgets)


def _budget(entry: object, where: str) -> Budget:
    if not isinstance(entry, Mapping):
        raise BudgetError(f"{where}: expected a table of {', '.join(_FIELDS)}")
    unknown = sorted(str(name) for name in entry if name not in _FIELDS)
    if unknown:
        raise BudgetError(
            f"{where}: unknown field {unknown[0]!r}; a budget has {', '.join(_FIELDS)}"
        )
    scope = entry.get("scope")
    if scope not in BUDGET_SCOPES:
        raise BudgetError(
            f"{where}.scope: expected one of {', '.join(BUDGET_SCOPES)}, got {scope!r}"
        )
    key = entry.get("key", EVERY_KEY if scope != "total" else "")
    if scope == "total":
        key = ""
    elif not isinstance(key, str) or not key.strip():
        raise BudgetError(f"{where}.key: expected the {scope} (or '*' for each), got {key!r}")
    window = entry.get("window")
    match = _WINDOW.match(window.strip()) if isinstance(window, str) else None
    if match is None or int(match.group(1)) == 0:
        raise BudgetError(
            f"{where}.window: expected a duration such as 1h, 1d, 30d (minutes m, hours h, days "
            f"d, weeks w), got {window!r}"
        )
    window_s = int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    limit = entry.get("limit_usd")
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0:
        raise BudgetError(
            f"{where}.limit_usd: expected a positive amount of US dollars, got {limit!r}"
        )
    mode = entry.get("mode", "alert")
    if mode not in BUDGET_MODES:
        raise BudgetError(f"{where}.mode: expected one of {', '.join(BUDGET_MODES)}, got {mode!r}")
    return Budget(
        scope=str(scope),
        key=key.strip(),
        window=window.strip().lower(),  # type: ignore[union-attr]
        window_s=window_s,
        limit_usd=float(limit),
        mode=str(mode),
    )
