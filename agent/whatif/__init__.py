"""What-if: the same traffic on every platform, on reserved GPUs, or hybrid.

A trace of requests (from the ledger, or synthetic: ``_traffic``) is replayed against each
platform's billing (``_simulate``), ranked (``_compare``), and the break-even between serverless
and reserved GPUs worked out in closed form (``_breakeven``). This ``__init__`` is the room's
internal API (``gpuledger compare`` and ``gpuledger breakeven`` use it).
"""

from __future__ import annotations

from gpuledger.whatif._breakeven import (
    HOURS_PER_MONTH,
    Breakeven,
    RateComparison,
    compare_at_rate,
    crossovers,
    parse_duration,
    parse_rate,
)
from gpuledger.whatif._compare import RESERVED_PLATFORM, Comparison, compare, meets
from gpuledger.whatif._traffic import Trace, synthetic, trace_from_ledger

__all__ = [
    "HOURS_PER_MONTH",
    "RESERVED_PLATFORM",
    "Breakeven",
    "Comparison",
    "RateComparison",
    "Trace",
    "compare",
    "compare_at_rate",
    "crossovers",
    "meets",
    "parse_duration",
    "parse_rate",
    "synthetic",
    "trace_from_ledger",
]
