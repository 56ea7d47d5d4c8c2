"""An enforced budget refuses through each HTTP adapter as an HTTP client expects: ``429 Too Many
Requests`` with ``Retry-After`` and a JSON body, the app or upstream never reached. The ASGI
middleware under a real uvicorn, the metering proxy in front of a real server; the spend is in
the ledger before the agent starts, as a fleet's would be."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

import gpuledger
from gpuledger.ledger import open_ledger
from tests.support.ledgers import ledger_rows, make_record
from tests.test_asgi import Served, fastapi_app
from tests.test_proxy import READY_S, RunningProxy, ready_plain, start_proxy  # noqa: F401

if TYPE_CHECKING:
    from tests.support.upstreams import Upstreams

BUDGETS = [{"scope": "tenant", "key": "acme", "window": "1d", "limit_usd": 1, "mode": "enforce"}]


def _spent_ledger(tmp_path: Path) -> Path:
    """A ledger where tenant acme spent 2 USD of its 1 USD a day an hour ago; gpuledger
    configured on it with the budget enforced."""
    path = tmp_path / "ledger.db"
    with open_ledger(str(path)) as ledger:
        ledger.write(
            [make_record(1, tenant="acme", start_ns=time.time_ns() - 3600 * 10**9, cost_usd=2.0)]
        )
    gpuledger.configure(
        ledger=str(path),
        platform="runpod",
        gpu="H100",
        gpu_metering="off",
        strict=True,
        tracing=False,
        metrics=False,
        budgets=BUDGETS,
    )
    return path


def _refused(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["Retry-After"])
    assert 82_000 < retry_after <= 82_800  # a day after the spend, an hour ago
    body: dict[str, Any] = response.json()
    assert (body["error"], body["scope"], body["key"], body["window"]) == (
        "budget_exceeded",
        "tenant",
        "acme",
        "1d",
    )
    assert body["spent_usd"] == 2.0 and body["limit_usd"] == 1
    assert body["retry_after_s"] == retry_after
    return body


def test_the_asgi_middleware_answers_429_and_never_calls_the_app(tmp_path: Path) -> None:
    path = _spent_ledger(tmp_path)
    served = Served(fastapi_app())
    try:
        with httpx.Client(base_url=served.url, timeout=10) as client:
            refused = client.post("/predict", json={"x": 2}, headers={"X-Tenant": "acme"})
            passed = client.post("/predict", json={"x": 2}, headers={"X-Tenant": "globex"})
    finally:
        served.stop()
    _refused(refused)
    assert passed.status_code == 200
    assert gpuledger.flush(5)
    rows = {row["tenant"]: row for row in ledger_rows(path, 3) if row["record_id"] != "r-1"}
    assert rows["acme"]["outcome"] == "rejected"
    assert rows["acme"]["cost_usd"] == 0.0
    assert json.loads(rows["acme"]["tags"]) == {"gpuledger.budget": "tenant acme"}
    assert rows["globex"]["outcome"] == "ok"


def test_the_metering_proxy_answers_429_and_never_forwards(
    tmp_path: Path,
    upstreams: Upstreams,
    start_proxy: Callable[..., RunningProxy],  # noqa: F811
) -> None:
    path = _spent_ledger(tmp_path)
    upstream = ready_plain(upstreams)
    proxy = start_proxy(upstream.address, tenant_header="X-Tenant")
    with httpx.Client(base_url=proxy.url, timeout=READY_S) as client:
        refused = client.get("/", headers={"X-Tenant": "acme"})
        passed = client.get("/", headers={"X-Tenant": "globex"})
    _refused(refused)
    assert passed.status_code == 200
    assert gpuledger.flush(5)
    rows = {row["tenant"]: row for row in ledger_rows(path, 3) if row["record_id"] != "r-1"}
    assert rows["acme"]["outcome"] == "rejected"
    tags = json.loads(rows["acme"]["tags"])
    assert tags["gpuledger.budget"] == "tenant acme"
    assert "http_status" not in tags  # never forwarded: no upstream answered it
    assert rows["globex"]["outcome"] == "ok"
    assert json.loads(rows["globex"]["tags"])["http_status"] == "200"
