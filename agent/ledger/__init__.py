"""The ledger: every finished invocation, one row each, in SQLite (the default) or PostgreSQL.

:func:`open_ledger` opens either from a location (a path, ``sqlite:///``, ``postgresql://``);
both back-ends share one schema and one row encoding, so they store and return the same records.
``gpuledger report`` reads it: :func:`ledger_report` computes a report in the database
(:mod:`gpuledger.ledger._query`), :func:`aggregate` the same from records in memory
(:mod:`gpuledger.ledger._report`).
"""

from __future__ import annotations

from gpuledger.ledger._focus import (
    FOCUS_COLUMNS,
    FOCUS_CUSTOM_COLUMNS,
    FOCUS_VERSION,
    FocusKey,
    FocusRow,
    focus_rows,
    write_focus_csv,
)
from gpuledger.ledger._periods import HOUR_NS, PeriodCharge, period_charges
from gpuledger.ledger._query import Report
from gpuledger.ledger._query import report as ledger_report
from gpuledger.ledger._report import (
    GROUP_BY,
    REPORT_COLUMNS,
    ReportRow,
    aggregate,
    parse_since,
    totals,
)
from gpuledger.ledger._schema import WorkerStop
from gpuledger.ledger._spend import BudgetSpend, budget_spend
from gpuledger.ledger._sqlite import (
    DEFAULT_LEDGER,
    LEDGER_ENV,
    MIGRATIONS,
    SCHEMA_VERSION,
    Ledger,
    SqliteLedger,
    Usage,
    default_ledger_location,
    display_location,
    open_ledger,
)

__all__ = [
    "DEFAULT_LEDGER",
    "FOCUS_COLUMNS",
    "FOCUS_CUSTOM_COLUMNS",
    "FOCUS_VERSION",
    "GROUP_BY",
    "HOUR_NS",
    "LEDGER_ENV",
    "MIGRATIONS",
    "REPORT_COLUMNS",
    "SCHEMA_VERSION",
    "BudgetSpend",
    "FocusKey",
    "FocusRow",
    "Ledger",
    "PeriodCharge",
    "Report",
    "ReportRow",
    "SqliteLedger",
    "Usage",
    "WorkerStop",
    "aggregate",
    "budget_spend",
    "default_ledger_location",
    "display_location",
    "focus_rows",
    "ledger_report",
    "open_ledger",
    "parse_since",
    "period_charges",
    "totals",
    "write_focus_csv",
]
