"""``gpuledger proxy`` under hostile requests: every request it serves is metered.

Issue 15 measured a header holding a byte that is not UTF-8 served 200 but its record refused
by the sidecar (a lone surrogate) and the byte dropped on its way upstream, and an absolute-form
request target (``GET http://host/path``) answered 500. The proxy runs as in test_proxy.py; the
upstream is a real TCP server that keeps the bytes it received, and the clients write raw bytes,
since an HTTP library would refuse to send what is tested here.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

import gpuledger
from gpuledger._record import InvocationRecord
from gpuledger._sinks import Delivery
from gpuledger.sidecar._validation import parse_records
from tests.test_proxy import READY_S, RunningProxy, start_proxy

__all__ = ["start_proxy"]  # the fixture, shared with test_proxy.py

RAW_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Raw: caf\xe9\r\n\r\nok"
"""The upstream's answer: one header value in Latin-1, not UTF-8."""


class RawUpstream:
    """An HTTP/1.1 server on 127.0.0.1 that answers every request with ``RAW_ANSWER`` and keeps
    the head of each request byte for byte."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.connections: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        buffered = b""
        with connection:
            while True:
                while b"\r\n\r\n" not in buffered:
                    try:
                        chunk = connection.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buffered += chunk
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                self.heads.append(head)
                connection.sendall(RAW_ANSWER)

    def lines(self, target: bytes) -> list[bytes]:
        """The lines of the (one) request whose request line names ``target``, header names
        in lower case (aiohttp writes the names it knows in its own case: ``X-Request-ID``)."""
        (head,) = [head for head in self.heads if head.split(b"\r\n")[0].split(b" ")[1] == target]
        first, *fields = head.split(b"\r\n")
        return [first] + [
            name.lower() + b":" + value for name, _, value in (f.partition(b":") for f in fields)
        ]

    def close(self) -> None:
        """Stop listening and close every connection (the process is gone)."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class Records:
    """A sink that keeps the records the agent finished."""

    name = "memory"

    def __init__(self) -> None:
        self.records: list[InvocationRecord] = []

    def deliver(self, records: Sequence[InvocationRecord]) -> Delivery:
        self.records.extend(records)
        return Delivery(taken=len(records))

    def close(self, timeout_s: float = 0.0) -> None:
        """Nothing to release."""

    def wait(self, count: int) -> list[InvocationRecord]:
        """The records, once ``count`` are in (an invocation ends just after its last byte)."""
        for _ in range(250):
            assert gpuledger.flush(5)
            if len(self.records) >= count:
                break
            threading.Event().wait(0.02)
        assert len(self.records) == count, self.records
        return self.records


@pytest.fixture
def upstream() -> Iterator[RawUpstream]:
    """A raw upstream, closed after the test."""
    server = RawUpstream()
    yield server
    server.close()


@pytest.fixture
def records() -> Records:
    """The agent configured to hand its records to a list (no ledger)."""
    sink = Records()
    gpuledger.configure(
        platform="runpod",
        gpu="H100",
        tracer_provider=TracerProvider(),
        metrics=False,
        strict=True,
        gpu_metering="off",
        sinks=[sink],
    )
    return sink


def raw_request(proxy: RunningProxy, request: bytes) -> bytes:
    """Send ``request`` as it is and return the whole answer (the connection is closed)."""
    with socket.create_connection(("127.0.0.1", proxy.proxy.port), timeout=READY_S) as client:
        client.sendall(request)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


def accepted_by_sidecar(record: InvocationRecord) -> dict[str, Any]:
    """The record as the sidecar's validation takes it, after the JSON trip the agent makes."""
    body = json.loads(json.dumps({"records": [record.to_dict()]}))
    ((_, values),) = parse_records(body)
    return values


def test_header_bytes_that_are_not_utf8_are_metered_and_forwarded_exactly(
    upstream: RawUpstream, records: Records, start_proxy: Callable[..., RunningProxy]
) -> None:
    """An id, a user and another header holding bytes that are not UTF-8: served, recorded
    with each bad byte escaped as ``\\xNN`` (accepted by the sidecar), and the upstream gets
    the bytes the client sent; an answer's such header reaches the client unchanged too."""
    proxy = start_proxy(f"127.0.0.1:{upstream.port}", user_header="X-User-Id")
    assert proxy.wait_ready()
    answer = raw_request(
        proxy,
        b"GET /bad-bytes HTTP/1.1\r\nHost: client.test\r\n"
        b"X-Request-Id: req-\xff\xfe-1\r\nX-User-Id: caf\xe9\r\nX-Other: \x80raw \xc3\xa9\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nX-Raw: caf\xe9\r\n" in answer
    assert answer.endswith(b"\r\n\r\nok")
    lines = upstream.lines(b"/bad-bytes")
    assert b"x-request-id: req-\xff\xfe-1" in lines
    assert b"x-user-id: caf\xe9" in lines
    assert b"x-other: \x80raw \xc3\xa9" in lines

    (record,) = records.wait(1)
    assert record.invocation_id == "req-\\xff\\xfe-1"
    assert record.user_id == "caf\\xe9"
    assert record.outcome == "ok"
    values = accepted_by_sidecar(record)
    assert values["invocation_id"] == "req-\\xff\\xfe-1"
    # Reversible: the escaped text gives back the bytes.
    assert record.user_id.encode().decode("unicode_escape").encode("latin-1") == b"caf\xe9"


def test_a_path_escaping_a_byte_that_is_not_utf8_is_forwarded_as_sent(
    upstream: RawUpstream, records: Records, start_proxy: Callable[..., RunningProxy]
) -> None:
    """``/p%FF``: forwarded as sent, the tag keeps the escape (a raw byte in the target is
    refused with 400 by aiohttp's parser before the proxy sees it: RFC 9112 has it ASCII)."""
    proxy = start_proxy(f"127.0.0.1:{upstream.port}")
    assert proxy.wait_ready()
    answer = raw_request(
        proxy, b"GET /p%FF?q=%FE HTTP/1.1\r\nHost: client.test\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert upstream.lines(b"/p%FF?q=%FE")[0] == b"GET /p%FF?q=%FE HTTP/1.1"
    (record,) = records.wait(1)
    assert record.tags is not None
    assert record.tags["http_path"] == "/p%FF"
    accepted_by_sidecar(record)


def test_absolute_form_request_target_is_served(
    upstream: RawUpstream, records: Records, start_proxy: Callable[..., RunningProxy]
) -> None:
    """``GET http://host/path?query``: RFC 9112 section 3.2.2 has a server accept it; the
    upstream gets the origin form, its own Host, and the URI's authority as X-Forwarded-Host
    (the Host header is ignored, as the RFC says)."""
    proxy = start_proxy(f"127.0.0.1:{upstream.port}")
    assert proxy.wait_ready()
    answer = raw_request(
        proxy,
        b"GET http://model.test:81/v1/predict?x=1 HTTP/1.1\r\nHost: ignored.test\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    lines = upstream.lines(b"/v1/predict?x=1")
    assert lines[0] == b"GET /v1/predict?x=1 HTTP/1.1"
    assert f"host: 127.0.0.1:{upstream.port}".encode() in lines
    assert b"x-forwarded-host: model.test:81" in lines
    (record,) = records.wait(1)
    assert record.outcome == "ok"
    assert record.tags == {"http_method": "GET", "http_path": "/v1/predict", "http_status": "200"}


def test_a_failed_upstream_with_bad_bytes_is_still_metered(
    upstream: RawUpstream, records: Records, start_proxy: Callable[..., RunningProxy]
) -> None:
    """The upstream gone, a request with bytes that are not UTF-8: 502, recorded as
    ``upstream_unreachable`` under its escaped id."""
    proxy = start_proxy(f"127.0.0.1:{upstream.port}")
    assert proxy.wait_ready()
    upstream.close()
    time.sleep(0.2)  # the pool sees its kept-alive connection closed
    answer = raw_request(
        proxy,
        b"POST http://model.test/run HTTP/1.1\r\nHost: client.test\r\n"
        b"X-Request-Id: gone-\xff\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 502 ")
    (record,) = records.wait(1)
    assert (record.invocation_id, record.outcome, record.error_type) == (
        "gone-\\xff",
        "error",
        "upstream_unreachable",
    )
    accepted_by_sidecar(record)
