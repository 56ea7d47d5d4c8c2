"""Budgets kept on a running worker: the spend of each, refreshed from the ledger, and the check
an enforced budget makes on a request's entry, before its handler runs.

The request path reads one dict (:attr:`BudgetGuard.blocked`), empty unless some enforced budget
is spent: then it looks up the request's tenant, user, endpoint and the fleet in it. Nothing on
the request path queries anything; the dict is replaced whole, never changed in place.

Two sources keep the spend current:

- a thread refreshes it from the ledger every ``budget_refresh_s`` (``gpuledger.ledger.
  budget_spend``: the local SQLite ledger for one worker, the fleet's PostgreSQL ledger for many,
  as ``budget_ledger`` says);
- the background writer adds each record it builds (:meth:`BudgetGuard.charge`) the moment it
  is built, so this worker's own spend counts before the next refresh.

A refresh drops what was charged locally before it reads the ledger, so a record written while
the query runs may count twice until the next refresh: the error is on the side of refusing
early. Between refreshes, the other workers' spend is unseen: the fleet overshoots a budget by at
most what it spends in one refresh interval (plus the writers' delay to their ledger).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

from gpuledger import _guard
from gpuledger._budgets import EVERY_KEY, Budget
from gpuledger._errors import BudgetExceeded
from gpuledger._logging import get_logger
from gpuledger._record import InvocationRecord

__all__ = ["BudgetGuard"]

_NS: Final = 10**9

Blocked = dict[tuple[str, str], tuple[Budget, float, int]]
"""``(scope, key) -> (budget, spent, ns until the oldest spend leaves the window)``."""


class BudgetGuard:
    """The budgets of one worker process, their spend, and what is refused."""

    def __init__(
        self,
        budgets: Sequence[Budget],
        *,
        ledger: str,
        refresh_s: float,
        time_ns: Callable[[], int],
        endpoint: str | None,
    ) -> None:
        self.budgets = tuple(budgets)
        self.enforced = any(budget.mode == "enforce" for budget in self.budgets)
        self.blocked: Blocked = {}
        """What an enforced budget refuses now; read on the request path, replaced whole."""
        self._ledger_location = ledger
        self._refresh_s = refresh_s
        self._time_ns = time_ns
        self._endpoint = endpoint or ""
        self._lock = threading.Lock()
        # (budget index, key) -> USD: from the last refresh, and charged here since.
        self._refreshed: dict[tuple[int, str], float] = {}
        self._oldest: dict[tuple[int, str], int | None] = {}
        self._local: dict[tuple[int, str], float] = {}
        self.spend_added: Callable[[Budget, str, float], None] | None = None
        """Told of every amount charged to a budget here (the spend counter of the metrics)."""
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ledger: Any = None

    # -- the request path -------------------------------------------------------------------

    def check(self, tenant: str | None, user: str | None) -> BudgetExceeded | None:
        """The refusal for a request of ``tenant`` and ``user`` (the user id as stored), or
        None. Called only while :attr:`blocked` is not empty."""
        blocked = self.blocked
        for scope, key in (
            ("total", ""),
            ("endpoint", self._endpoint),
            ("tenant", tenant),
            ("user", user),
        ):
            if key is None:
                continue
            found = blocked.get((scope, key))
            if found is not None:
                budget, spent, wait_ns = found
                return BudgetExceeded(
                    scope,
                    key,
                    budget.window,
                    budget.limit_usd,
                    spent,
                    max(1, math.ceil(wait_ns / _NS)),
                )
        return None

    # -- the writer -------------------------------------------------------------------------

    def charge(self, records: Sequence[InvocationRecord]) -> None:
        """Add the records' request charges to the budgets they fall under (writer thread)."""
        added: list[tuple[Budget, str, float]] = []
        with self._lock:
            for record in records:
                cost = record.cost_usd
                if not cost or cost <= 0:
                    continue
                for index, budget in enumerate(self.budgets):
                    key = _key(budget, record)
                    if key is None:
                        continue
                    slot = (index, key)
                    self._local[slot] = self._local.get(slot, 0.0) + cost
                    added.append((budget, key, cost))
            if self.enforced and added:
                self._block()
        if self.spend_added is not None:
            for budget, key, cost in added:
                self.spend_added(budget, key, cost)

    # -- the refresh --------------------------------------------------------------------------

    def start(self) -> None:
        """Read the spend once now (so a worker starts knowing it), then refresh it on a daemon
        thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="gpuledger-budgets", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        if self._ledger is not None:
            try:
                self._ledger.close()
            except Exception as error:
                _guard.log_once("budgets.close", "closing the budget ledger failed", error)
            self._ledger = None

    def _run(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self.refresh()

    def refresh(self) -> bool:
        """Read every budget's spend from the ledger; False (logged once, counted) when it
        could not be read: the last spend stands."""
        from gpuledger.ledger import budget_spend  # noqa: PLC0415  (the ledger, off the import)

        try:
            ledger = self._open()
            if ledger is None:
                spends = []
            else:
                with self._lock:  # charged before the read: the read counts them
                    local, self._local = self._local, {}
                try:
                    spends = budget_spend(ledger, self.budgets, now_ns=self._time_ns())
                except BaseException:
                    with self._lock:  # not read after all: keep counting them
                        for slot, amount in local.items():
                            self._local[slot] = self._local.get(slot, 0.0) + amount
                    raise
        except Exception as error:
            _guard.log_once(
                "budgets.refresh",
                "gpuledger could not read the budgets' spend from the ledger; the last spend "
                "read stands (counted in gpuledger.telemetry.errors)",
                error,
            )
            return False
        index_of = {id(budget): index for index, budget in enumerate(self.budgets)}
        refreshed: dict[tuple[int, str], float] = {}
        oldest: dict[tuple[int, str], int | None] = {}
        for spend in spends:
            slot = (index_of[id(spend.budget)], spend.key)
            refreshed[slot] = spend.spent_usd
            oldest[slot] = spend.oldest_ns
        with self._lock:
            self._refreshed, self._oldest = refreshed, oldest
            self.refreshes += 1
            if self.enforced:
                self._block()
        return True

    def _open(self) -> Any:
        """The ledger, opened once it exists (a worker's first batch makes a local one)."""
        if self._ledger is None:
            from gpuledger._errors import LedgerError  # noqa: PLC0415
            from gpuledger.ledger import open_ledger  # noqa: PLC0415

            try:
                self._ledger = open_ledger(self._ledger_location, create=False)
            except LedgerError:
                if self._ledger_location.startswith("postgresql://"):
                    raise
                return None  # no ledger yet: nothing spent
        return self._ledger

    # -- state ------------------------------------------------------------------------------

    def spent(self) -> list[tuple[Budget, str, float]]:
        """Every budget's spend as known now (refreshed + charged since), a row per key."""
        with self._lock:
            slots = {**dict.fromkeys(self._refreshed, 0.0), **dict.fromkeys(self._local, 0.0)}
            for index, budget in enumerate(self.budgets):
                if budget.key != EVERY_KEY:
                    slots.setdefault((index, budget.key), 0.0)
            return [
                (
                    self.budgets[index],
                    key,
                    self._refreshed.get((index, key), 0.0) + self._local.get((index, key), 0.0),
                )
                for index, key in slots
            ]

    def _block(self) -> None:
        """(Lock held.) Recompute what the enforced budgets refuse; replace ``blocked``."""
        now = self._time_ns()
        blocked: Blocked = {}
        slots = set(self._refreshed) | set(self._local)
        for index, key in slots:
            budget = self.budgets[index]
            if budget.mode != "enforce":
                continue
            spent = self._refreshed.get((index, key), 0.0) + self._local.get((index, key), 0.0)
            if spent < budget.limit_usd:
                continue
            oldest = self._oldest.get((index, key))
            wait_ns = (
                budget.window_s * _NS if oldest is None else oldest + budget.window_s * _NS - now
            )
            wait_ns = max(_NS, wait_ns)
            previous = blocked.get((budget.scope, key))
            if previous is None or wait_ns > previous[2]:
                blocked[(budget.scope, key)] = (budget, spent, wait_ns)
        if blocked.keys() != self.blocked.keys():
            newly = sorted(set(blocked) - set(self.blocked))
            if newly:
                get_logger().warning(
                    "budget spent: requests are refused before their handler runs",
                    budgets=[f"{scope} {key}".strip() for scope, key in newly],
                )
        self.blocked = blocked


def _key(budget: Budget, record: InvocationRecord) -> str | None:
    """The key ``record`` is charged under for ``budget`` (None: it is not)."""
    scope = budget.scope
    if scope == "total":
        return ""
    value = (
        record.tenant
        if scope == "tenant"
        else record.user_id
        if scope == "user"
        else record.endpoint
    )
    if not value:
        return None
    if budget.key in (EVERY_KEY, value):
        return value
    return None
