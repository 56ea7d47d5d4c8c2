"""How an HTTP adapter refuses a request over an enforced budget: ``429 Too Many Requests``
with ``Retry-After`` (RFC 9110 section 10.2.3, RFC 6585 section 4) and a JSON body that says
whose budget and how far over, the way API gateways answer a spent quota."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["STATUS", "refusal", "refusal_json"]

STATUS = 429


def refusal_json(refused: Any) -> dict[str, Any]:
    """The JSON body refusing ``refused`` (a :class:`gpuledger.BudgetExceeded`)."""
    return {
        "error": "budget_exceeded",
        "message": str(refused),
        "scope": refused.scope,
        "key": refused.key,
        "window": refused.window,
        "limit_usd": refused.limit_usd,
        "spent_usd": round(refused.spent_usd, 6),
        "retry_after_s": refused.retry_after_s,
    }


def refusal(refused: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """``(status, headers, body)`` for ``refused``, its body encoded."""
    body = json.dumps(refusal_json(refused)).encode()
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("retry-after", str(refused.retry_after_s)),
    ]
    return STATUS, headers, body
