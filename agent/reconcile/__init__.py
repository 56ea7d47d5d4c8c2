"""Reconciliation with the platforms' own bills, and the chargeback trued up to them.

:func:`read_usage` reads a platform's usage or billing export (RunPod's serverless billing API, v2
and v1; Modal's workspace billing report, from its CLI or its Python API) into one
:class:`Invoice`. :func:`reconcile` sets it beside the ledger's charges per endpoint and period
(:func:`gpuledger.ledger.period_charges`, the report's own billing) and explains each difference
(:data:`CAUSES`). :func:`true_up` splits the invoice's dollars over the ledger's owners by their
measured shares, in whole cents that add up to the invoice, with what no ledger row explains as
a residual of its own; :func:`true_up_focus_rows` makes them a FOCUS export's ``BilledCost``.
"""

from __future__ import annotations

from gpuledger.reconcile._reconcile import (
    ACCOUNT_KEY,
    ADJUSTMENTS,
    CAUSES,
    NO_ENDPOINT,
    RESIDUAL_CAUSES,
    UNKNOWN_PODS,
    Cause,
    ReconcileRow,
    Reconciliation,
    reconcile,
)
from gpuledger.reconcile._trueup import (
    RESIDUAL_KEY,
    TRUE_UP_BY,
    TrueUp,
    TrueUpCell,
    TrueUpRow,
    true_up,
    true_up_focus_rows,
)
from gpuledger.reconcile._usage import (
    BUCKETS,
    PARTS,
    PLATFORMS,
    SHAPES,
    Invoice,
    InvoiceLine,
    UsageFileError,
    bucket_end,
    parse_usage,
    read_usage,
    resource_part,
)

__all__ = [
    "ACCOUNT_KEY",
    "ADJUSTMENTS",
    "BUCKETS",
    "CAUSES",
    "NO_ENDPOINT",
    "PARTS",
    "PLATFORMS",
    "RESIDUAL_CAUSES",
    "RESIDUAL_KEY",
    "SHAPES",
    "TRUE_UP_BY",
    "UNKNOWN_PODS",
    "Cause",
    "Invoice",
    "InvoiceLine",
    "ReconcileRow",
    "Reconciliation",
    "TrueUp",
    "TrueUpCell",
    "TrueUpRow",
    "UsageFileError",
    "bucket_end",
    "parse_usage",
    "read_usage",
    "reconcile",
    "resource_part",
    "true_up",
    "true_up_focus_rows",
]
