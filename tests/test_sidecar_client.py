"""The agent's side of the sidecar: records and start notices go there, with a fallback; and
the flush policies (invocation, adaptive)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gpuledger
from gpuledger import ConfigError, _config, _guard
from gpuledger._sinks import Backoff, FallbackSink, LedgerSink, SidecarSink
from gpuledger.ledger import open_ledger
from gpuledger.sidecar import SidecarClient

from .conftest import FakeClock


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A minimal stand-in for `gpuledger sidecar`'s receiver: stores what it is sent."""

    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # one write per response: no delayed-ACK stall on keep-alive
    disable_nagle_algorithm = True
    received: dict[str, list[dict[str, Any]]]
    status = 200

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kind = "records" if self.path == "/v1/records" else "starts"
        if self.status == 200:
            self.received.setdefault(kind, []).extend(body[kind])
            self.received.setdefault("auth", []).append(self.headers.get("Authorization"))
        answer = json.dumps({"accepted": len(body[kind]), "duplicates": 0}).encode()
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        return


class FakeSidecar:
    def __init__(self) -> None:
        self.received: dict[str, list[dict[str, Any]]] = {}
        handler = type("Handler", (_Receiver,), {"received": self.received})
        self.handler = handler
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail_with(self, status: int) -> None:
        self.handler.status = status

    def records(self) -> list[dict[str, Any]]:
        return self.received.get("records", [])

    def starts(self) -> list[dict[str, Any]]:
        return self.received.get("starts", [])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sidecar() -> Iterator[FakeSidecar]:
    fake = FakeSidecar()
    yield fake
    fake.close()


def _local_rows(path: Path) -> list[Any]:
    if not path.exists():
        return []
    with open_ledger(str(path), create=False) as ledger:
        return list(ledger.read())


def test_records_and_starts_go_to_the_sidecar(
    tmp_path: Path, clock: FakeClock, sidecar: FakeSidecar
) -> None:
    ledger = tmp_path / "local.db"
    gpuledger.configure(
        ledger=str(ledger),
        platform="runpod",
        gpu="H100",
        sidecar=sidecar.url,
        sidecar_token="s3cret",
        clock=clock,
        exporters="none",
        gpu_metering="off",
        strict=True,
    )
    seen_start: list[dict[str, Any]] = []

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> str:
        agent = _config.get_agent()
        assert agent is not None
        assert agent.pipeline.flush(5)  # the start notice leaves while the handler runs
        seen_start.extend(sidecar.starts())
        clock.advance(2.0)
        return "ok"

    assert handler({"id": "job-1", "input": {}}) == "ok"
    assert gpuledger.flush(5)
    (start,) = seen_start
    (record,) = sidecar.records()
    assert start["record_id"] == record["record_id"]
    assert start["invocation_id"] == record["invocation_id"] == "job-1"
    assert start["timeout_s"] is not None  # RunPod's execution limit, from the catalogue
    assert record["duration_s"] == 2.0
    assert record["cost_usd"] is not None
    assert set(sidecar.received["auth"]) == {"Bearer s3cret"}
    assert _local_rows(ledger) == []  # the sidecar has them, not this process


def test_unreachable_sidecar_falls_back_to_the_local_ledger(
    tmp_path: Path, clock: FakeClock, sidecar: FakeSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "local.db"
    no_wait = Backoff(0.0, 0.0)  # try the sidecar again at once
    _config.configure(
        ledger=str(ledger),
        sidecar=sidecar.url,
        clock=clock,
        exporters="none",
        gpu_metering="off",
        sinks=[
            FallbackSink(
                SidecarSink(SidecarClient(sidecar.url)), LedgerSink(str(ledger)), backoff=no_wait
            )
        ],
    )

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> int:
        clock.advance(0.1)
        return 7

    sidecar.fail_with(503)  # spool unwritable: nothing acknowledged
    assert handler({"id": "a", "input": {}}) == 7
    assert gpuledger.flush(5)
    sidecar.fail_with(200)
    assert handler({"id": "b", "input": {}}) == 7
    assert gpuledger.flush(5)
    assert [row.invocation_id for row in _local_rows(ledger)] == ["a"]
    assert [record["invocation_id"] for record in sidecar.records()] == ["b"]
    assert _guard.error_counts()["sidecar.fallback"] >= 1


def test_flush_policy_invocation_waits_for_the_record(
    tmp_path: Path, clock: FakeClock, sidecar: FakeSidecar
) -> None:
    agent = gpuledger.configure(
        ledger=str(tmp_path / "l.db"),
        sidecar=sidecar.url,
        flush_policy="invocation",
        clock=clock,
        exporters="none",
        gpu_metering="off",
        strict=True,
    )

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        clock.advance(0.5)

    for number in range(3):
        handler({"id": f"j{number}", "input": {}})
        # no flush(): the end of the invocation waited until the sidecar had the record
        assert len(sidecar.records()) == number + 1
    assert len(agent.flush_waits) == 3
    assert all(0 <= wait < 1.0 for wait in agent.flush_waits)


def test_flush_policy_adaptive_stops_waiting_when_dense(
    tmp_path: Path, clock: FakeClock, sidecar: FakeSidecar
) -> None:
    agent = gpuledger.configure(
        ledger=str(tmp_path / "l.db"),
        sidecar=sidecar.url,
        flush_policy="adaptive",
        clock=clock,
        exporters="none",
        gpu_metering="off",
    )

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> None:
        clock.advance(0.01)

    for number in range(5):  # sparse: a minute apart, each one waits for its record
        handler({"id": f"sparse{number}", "input": {}})
        clock.advance(60.0)
    assert len(agent.flush_waits) == 5
    for number in range(30):  # dense: back to back, the periodic writer takes over
        handler({"id": f"dense{number}", "input": {}})
    # the first 10 dense ones still wait (the last minute held fewer than 10 ends), the 20
    # after them do not
    assert len(agent.flush_waits) == 5 + 10
    assert gpuledger.flush(5)
    assert len(sidecar.records()) == 35


def test_bad_sidecar_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"sidecar.*plain HTTP"):
        gpuledger.configure(sidecar="https://127.0.0.1:4319", exporters="none")
    with pytest.raises(ConfigError, match="flush_policy"):
        gpuledger.configure(flush_policy="sometimes", exporters="none")
