"""Per-record quarantine in the sidecar (issue 15): a row that is not a record, a record OTLP
cannot encode and one the collector refuses are set aside as dead letters, counted, listed by
``gpuledger sidecar dead-letters`` and re-driven by ``--redrive``, without holding the records
behind them; a collector that is down sets nothing aside; ``/healthz`` says when a consumer keeps
failing. Against the real sidecar and the real ``rotel`` collector (tests/support/receivers.py);
a small HTTP forwarder in front of rotel plays a collector with a body-size limit, or one that
is down."""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gpuledger.cli._main import main
from gpuledger.exporters._records import span_ids
from gpuledger.sidecar._server import Sidecar

from .support.processes import free_port
from .support.receivers import Rotel
from .support.sidecars import in_process_sidecars
from .test_sidecar import ledger_rows, make_record, metric_value, post, request, wait_for

GOOD = 2000


class ShiftedClock:
    """Wall time that the test moves forward (``advance``): records made now stay plausible."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def time_ns(self) -> int:
        return time.time_ns() + self.offset_ns

    def advance(self, seconds: float) -> None:
        self.offset_ns += int(seconds * 1e9)


class Forwarder:
    """An OTLP/HTTP 'collector' on 127.0.0.1 that forwards to rotel: ``limit`` answers 413 to a
    larger body (a collector's request-size limit), ``down`` answers 503."""

    def __init__(self, target: str, port: int = 0, limit: int | None = None) -> None:
        self.limit = limit
        self.down = False
        forwarder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if forwarder.down or (forwarder.limit is not None and len(body) > forwarder.limit):
                    self.send_response(503 if forwarder.down else 413)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                upstream = urllib.request.Request(
                    target + self.path,
                    data=body,
                    headers={"Content-Type": self.headers["Content-Type"]},
                )
                with urllib.request.urlopen(upstream, timeout=10) as answer:
                    data = answer.read()
                    self.send_response(answer.status)
                    self.send_header("Content-Type", answer.headers["Content-Type"])
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def make_sidecar(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """In-process sidecars with a spool and ledger in ``tmp_path``, stopped at the end."""
    with in_process_sidecars(tmp_path, export_timeout_s=2.0) as make:
        yield make


def spool_row(spool: Path, record_id: str, body: str) -> None:
    """Write a row straight into the spool, below the receiver's validation (as a corrupted file,
    or a record from an older, laxer sidecar, would hold it)."""
    connection = sqlite3.connect(spool, timeout=10)
    try:
        connection.execute(
            "INSERT INTO records (record_id, body, received_ns) VALUES (?, ?, 0)",
            (record_id, body),
        )
        connection.commit()
    finally:
        connection.close()


def send_good(url: str, handler: str, count: int = GOOD) -> list[str]:
    """POST ``count`` valid records named ``handler`` in batches of 200; their record ids."""
    sent: list[str] = []
    for batch in range(count // 200):
        records = [make_record(batch * 200 + i, handler=handler) for i in range(200)]
        assert post(url, "/v1/records", {"records": records})[0] == 200
        sent += [record["record_id"] for record in records]
    return sent


def dead_letters(spool: Path, *options: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        main, ["sidecar", "dead-letters", "--spool", str(spool), "--format", "json", *options]
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def exactly_once(rotel: Rotel, handler: str, record_ids: list[str]) -> None:
    """rotel got one span per record id, and no other named ``handler``."""
    spans = rotel.wait_for_spans(len(record_ids), handler, timeout=30)
    got = [span.span_id for span in spans]
    assert len(got) == len(set(got)), "duplicate spans"
    assert set(got) == {f"{span_ids(record_id)[1]:016x}" for record_id in record_ids}


def test_poison_rows_are_set_aside_and_the_2000_behind_them_exported(
    make_sidecar: Callable[..., Sidecar], rotel: Rotel, tmp_path: Path
) -> None:
    """A non-JSON row and a record OTLP cannot encode (a lone surrogate in its name), then 2,000
    good records: all 2,000 reach rotel once and the ledger, the two poison rows are dead
    letters of the OTLP consumer with their reasons, counted, and /healthz says so."""
    sidecar = make_sidecar(otlp_endpoint=rotel.http_endpoint)
    spool = tmp_path / "spool.db"
    handler = f"dl-{uuid.uuid4().hex[:8]}"
    spool_row(spool, "not-json", '{"record_id": "not-json", truncated')
    unencodable = make_record(0, handler="\ud800")
    spool_row(spool, unencodable["record_id"], json.dumps(unencodable))
    sent = send_good(sidecar.url, handler)
    exactly_once(rotel, handler, sent)
    wait_for("the spool to empty", lambda: sidecar.health()[1]["spooled"] == 0, timeout=30)
    assert {row["record_id"] for row in ledger_rows(tmp_path / "ledger.db")} >= set(sent)

    letters = {(letter["consumer"], letter["record_id"]): letter for letter in dead_letters(spool)}
    assert letters[("otlp", "not-json")]["reason"].startswith("decode: JSONDecodeError")
    assert letters[("ledger", "not-json")]["reason"].startswith("decode: JSONDecodeError")
    assert letters[("otlp", "not-json")]["body"] == '{"record_id": "not-json", truncated'
    otlp_reason = letters[("otlp", unencodable["record_id"])]["reason"]
    assert otlp_reason.startswith("undeliverable: _Unencodable"), otlp_reason
    assert "surrogates not allowed" in otlp_reason
    text = sidecar.metrics_text()
    assert metric_value(text, "gpuledger_sidecar_dead_letters_total") == len(letters)
    assert metric_value(text, "gpuledger_sidecar_records_exported_total") == GOOD
    status, health = request(sidecar.url, "GET", "/healthz")
    assert status == 200
    assert health["dead_letters"] == len(letters)
    assert "failing" not in health


def test_a_collector_down_then_back_sets_nothing_aside_and_healthz_tells(
    make_sidecar: Callable[..., Sidecar], rotel: Rotel, tmp_path: Path
) -> None:
    """Nothing listens at the collector's port (then it answers 503): /livez stays 200, /healthz
    turns 503 with the reason once the consumer has failed for over the threshold (a
    controllable clock); then the collector comes up on that port: every record once, no dead
    letters, /healthz 200."""
    clock = ShiftedClock()
    port = free_port()
    sidecar = make_sidecar(
        otlp_endpoint=f"http://127.0.0.1:{port}",
        clock=clock,
        unhealthy_after_s=60,
        export_timeout_s=0.5,
    )
    handler = f"down-{uuid.uuid4().hex[:8]}"
    sent = send_good(sidecar.url, handler, 600)
    wait_for(
        "failed exports",
        lambda: (
            metric_value(sidecar.metrics_text(), "gpuledger_sidecar_export_failures_total") >= 3
        ),
    )
    status, health = request(sidecar.url, "GET", "/healthz")
    assert status == 200, health  # failing, not yet for long
    assert "otlp" in health["failing"]
    clock.advance(61)
    status, health = request(sidecar.url, "GET", "/healthz")
    assert status == 503
    assert "the otlp consumer has failed every attempt for 6" in health["reason"]
    assert "(over 60 s)" in health["reason"]
    assert health["pending_export"] == 600
    assert request(sidecar.url, "GET", "/livez") == (200, {"status": "live"})

    collector = Forwarder(rotel.http_endpoint, port=port)
    try:
        collector.down = True  # up, but unavailable: still not the records' fault
        sent += send_good(sidecar.url, handler, 400)
        wait_for(
            "more failed exports",
            lambda: (
                metric_value(sidecar.metrics_text(), "gpuledger_sidecar_export_failures_total") >= 6
            ),
        )
        collector.down = False
        exactly_once(rotel, handler, sent)
        wait_for("the spool to empty", lambda: sidecar.health()[1]["spooled"] == 0, timeout=30)
    finally:
        collector.close()
    assert dead_letters(tmp_path / "spool.db") == []
    assert metric_value(sidecar.metrics_text(), "gpuledger_sidecar_dead_letters_total") == 0
    assert request(sidecar.url, "GET", "/healthz")[0] == 200


def post_with_headers(url: str, path: str, payload: Any) -> tuple[int, Any, dict[str, str]]:
    """POST ``payload`` as JSON: status, JSON answer and response headers."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        body = json.dumps(payload).encode()
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        connection.close()


def test_a_backlog_past_its_bound_is_unhealthy_and_pushes_back(
    make_sidecar: Callable[..., Sidecar],
) -> None:
    """Past ``max_backlog`` (the collector is down: the OTLP consumer waits) ``/healthz`` says
    so, and new records are refused with 503 and ``Retry-After`` before they are parsed,
    nothing of them kept (the worker journals them and sends them again); starts are still
    taken."""
    sidecar = make_sidecar(otlp_endpoint=f"http://127.0.0.1:{free_port()}", max_backlog=100)
    send_good(sidecar.url, f"b-{uuid.uuid4().hex[:8]}", 200)
    status, health = request(sidecar.url, "GET", "/healthz")
    assert status == 503
    assert "200 records wait for delivery (over 100)" in health["reason"]
    more = [make_record(1000 + index, handler="refused") for index in range(50)]
    status, answer, headers = post_with_headers(sidecar.url, "/v1/records", {"records": more})
    assert status == 503, answer
    assert (
        "over max_backlog 100" in answer["error"] and "nothing from this request" in answer["error"]
    )
    assert int(headers["Retry-After"]) > 0
    assert sidecar.health()[1]["spooled"] == 200
    metrics = sidecar.metrics_text()
    assert metric_value(metrics, "gpuledger_sidecar_records_refused_backlog_total") == 1


def test_redrive_after_the_collectors_limit_is_raised_delivers_it_once(
    make_sidecar: Callable[..., Sidecar], rotel: Rotel, tmp_path: Path
) -> None:
    """A record over the collector's size limit (413) is found in its batch and set aside while
    the rest go out; ``dead-letters`` lists it; after the limit is raised, ``--redrive`` delivers
    it, once."""
    collector = Forwarder(rotel.http_endpoint, limit=256 * 1024)
    try:
        sidecar = make_sidecar(otlp_endpoint=collector.endpoint)
        spool = tmp_path / "spool.db"
        handler = f"big-{uuid.uuid4().hex[:8]}"
        sent = send_good(sidecar.url, handler, 200)
        big = make_record(9999, handler=handler, tags={"prompt": "x" * 400_000})
        spool_row(spool, big["record_id"], json.dumps(big))
        sent += send_good(sidecar.url, handler, 200)
        exactly_once(rotel, handler, sent)
        wait_for("the dead letter", lambda: sidecar.health()[1].get("dead_letters") == 1)
        (letter,) = dead_letters(spool)
        assert letter["consumer"] == "otlp"
        assert letter["record_id"] == big["record_id"]
        assert "413" in letter["reason"]
        table = CliRunner().invoke(main, ["sidecar", "dead-letters", "--spool", str(spool)])
        assert table.exit_code == 0
        assert big["record_id"] in table.output

        collector.limit = None
        result = CliRunner().invoke(
            main, ["sidecar", "dead-letters", "--spool", str(spool), "--redrive", "--id", "1"]
        )
        assert result.exit_code == 0, result.output
        assert "re-driven 1 dead letter(s)" in result.output
        exactly_once(rotel, handler, [*sent, big["record_id"]])
        wait_for("the spool to empty", lambda: sidecar.health()[1]["spooled"] == 0, timeout=30)
        assert dead_letters(spool) == []
        # The ledger had it already: written once.
        rows = ledger_rows(tmp_path / "ledger.db")
        assert [row["record_id"] for row in rows].count(big["record_id"]) == 1
    finally:
        collector.close()


def test_dead_letters_command_errors(tmp_path: Path) -> None:
    """A missing spool is a failed run (exit 1); --id without --redrive a usage error (exit 2)."""
    missing = CliRunner().invoke(
        main, ["sidecar", "dead-letters", "--spool", str(tmp_path / "none.db")]
    )
    assert missing.exit_code == 1
    assert "no spool at" in missing.output
    usage = CliRunner().invoke(
        main, ["sidecar", "dead-letters", "--spool", str(tmp_path / "x.db"), "--id", "3"]
    )
    assert usage.exit_code == 2
    assert "--id" in usage.output
