"""``gpuledger proxy``: a metering reverse proxy in front of real model servers.

The proxy runs in the test's process (on an event loop of its own thread) with the agent
configured on a real clock, or as the ``gpuledger proxy`` command; the model servers are real
processes (``tests/support/upstreams.py``): Cog's coglet and Potassium in venvs of their own, and
a plain aiohttp server for the edge cases. What is checked is what users get: the ledger's rows,
the spans, and the bytes a client receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest
from click.testing import CliRunner
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import gpuledger
import gpuledger.sidecar
from gpuledger import _guard
from gpuledger._errors import ConfigError
from gpuledger.cli._main import main
from gpuledger.sidecar._proxy import (
    PRESETS,
    MeteringProxy,
    ProxyConfig,
    ReadyCheck,
    parse_listen,
    parse_upstream,
    proxy_config,
    upstream_start_ns,
)
from tests.support.processes import free_port, log_tail

if TYPE_CHECKING:  # loaded as a plugin by tests/conftest.py, which must import it first
    from tests.support.upstreams import Upstream, Upstreams

T = TypeVar("T")
READY_S = 30.0
"""Bound on any wait for a server or the proxy to be ready."""
PROC_START_RESOLUTION_S = 0.02
"""/proc's process start is in clock ticks (10 ms at 100 Hz): the slack on init comparisons."""


# --- the proxy on a thread, the agent on a real clock ----------------------------------------


class RunningProxy:
    """A ``MeteringProxy`` on an event loop of its own thread, driven from a synchronous test."""

    def __init__(self, config: ProxyConfig) -> None:
        self.proxy = MeteringProxy(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = READY_S) -> T:
        """Run ``coroutine`` on the proxy's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> RunningProxy:
        self.thread.start()
        self.call(self.proxy.start())
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def wait_ready(self, timeout: float = READY_S) -> bool:
        """Whether the upstream became ready within ``timeout``."""
        return self.call(self.proxy.wait_ready(timeout), timeout + 5)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the proxy."""
        return f"http://127.0.0.1:{self.proxy.port}"


class Ledger:
    """The agent configured for a test (real clock, in-memory spans) and what it recorded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        gpuledger.configure(
            ledger=str(path),
            platform="runpod",
            gpu="H100",
            service_name="proxy-test",
            tracer_provider=provider,
            metrics=False,
            strict=True,
            gpu_metering="off",
        )

    def rows(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Every invocation recorded, oldest first, once there are ``count`` of them.

        A client has the last byte of an answer a moment before the proxy records the
        invocation (it ends when that byte is written), so the rows are waited for.
        """
        deadline = time.monotonic() + timeout
        while True:
            assert gpuledger.flush(5), "flush timed out"
            rows = self._read()
            if len(rows) >= count or time.monotonic() > deadline:
                assert len(rows) == count, rows
                return rows
            time.sleep(0.02)

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.path)) as connection:
            connection.row_factory = sqlite3.Row
            return [
                dict(row)
                for row in connection.execute("SELECT * FROM invocations ORDER BY start_ns, rowid")
            ]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    """gpuledger configured on RunPod/H100, on the real clock, writing to a fresh ledger."""
    return Ledger(tmp_path / "ledger.db")


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., RunningProxy]]:
    """Start a proxy in front of an upstream (``proxy_config`` keywords); stopped after the
    test."""
    running: list[RunningProxy] = []

    def start(upstream: str, **options: Any) -> RunningProxy:
        options.setdefault("listen", "127.0.0.1:0")
        proxy = RunningProxy(proxy_config(upstream=upstream, **options)).start()
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        proxy.stop()


def union_seconds(intervals: list[tuple[int, int]]) -> float:
    """Wall time covered by at least one of the ``(start_ns, end_ns)`` intervals, in seconds."""
    covered = 0
    current_start, current_end = None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None and current_start is not None:
                covered += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None and current_start is not None:
        covered += current_end - current_start
    return covered / 1e9


def ready_plain(upstreams: Upstreams, ready_after: float = 0.0) -> Upstream:
    """The plain server, answering."""
    upstream = upstreams.plain(ready_after=ready_after)
    upstream.wait_until("/", lambda status, _body: status == 200, READY_S)
    return upstream


# --- configuration ---------------------------------------------------------------------------


def test_listen_is_loopback_unless_allowed() -> None:
    """A non-loopback --listen is refused with the reason, and accepted with allow_remote."""
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen("localhost:1") == ("localhost", 1)
    assert parse_listen(":8080") == ("127.0.0.1", 8080)
    for address in ("0.0.0.0:8080", "10.1.2.3:80", "[::]:8080", "example.com:80"):
        with pytest.raises(ConfigError, match="no authentication of its own") as raised:
            parse_listen(address)
        assert raised.value.setting == "listen"
    assert parse_listen("0.0.0.0:8080", allow_remote=True) == ("0.0.0.0", 8080)
    for bad in ("8080", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_listen(bad)


def test_upstream_address_forms() -> None:
    """HOST:PORT and http(s)://HOST[:PORT] are accepted; a path prefix is not."""
    assert str(parse_upstream("127.0.0.1:5000")) == "http://127.0.0.1:5000"
    assert str(parse_upstream("http://localhost:5000/")) == "http://localhost:5000"
    assert str(parse_upstream("https://model.internal")) == "https://model.internal"
    for bad, reason in (
        ("127.0.0.1", "give the port"),
        (":5000", "HOST:PORT"),
        ("ftp://host:21", "HOST:PORT"),
        ("http://host:80/v1", "path"),
    ):
        with pytest.raises(ConfigError, match=reason):
            parse_upstream(bad)


def test_presets_and_explicit_options() -> None:
    """A preset sets readiness, unmetered paths and the id header; explicit options win."""
    cog = proxy_config(upstream="127.0.0.1:5000", preset="cog")
    assert cog.ready == ReadyCheck("/health-check", "2xx", ("status", "READY"))
    assert "/health-check" in cog.unmetered_paths
    potassium = proxy_config(upstream="127.0.0.1:8000", preset="potassium")
    assert potassium.request_id_header == "X-Banana-Request-Id"
    assert potassium.ready == PRESETS["potassium"].ready
    mine = proxy_config(
        upstream="127.0.0.1:5000",
        preset="cog",
        ready_path="/ping",
        ready_json="state=up",
        unmetered_paths=["/ping"],
        request_id_header="X-Trace",
        upstream_timeout_s=0,
    )
    assert mine.ready == ReadyCheck("/ping", "2xx", ("state", "up"))
    assert mine.unmetered_paths == frozenset({"/ping"})
    assert mine.request_id_header == "X-Trace"
    assert mine.upstream_timeout_s is None
    plain = proxy_config(upstream="127.0.0.1:5000")
    assert plain.ready == ReadyCheck("/", "any", None)
    assert plain.unmetered_paths == frozenset()
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        proxy_config(upstream="127.0.0.1:5000", ready_json="READY")
    with pytest.raises(ConfigError, match="expected one of cog, potassium"):
        proxy_config(upstream="127.0.0.1:5000", preset="modal")
    with pytest.raises(ConfigError, match="must be above 0"):
        proxy_config(upstream="127.0.0.1:5000", ready_timeout_s=0)


def test_ready_check_answers() -> None:
    """Any answer is ready by default; 2xx and a JSON field narrow it, as for Cog."""
    assert ReadyCheck().accepts(405, None)
    assert not ReadyCheck(status="2xx").accepts(503, None)
    assert ReadyCheck(status="2xx").accepts(204, None)
    cog = PRESETS["cog"].ready
    assert not cog.accepts(200, b'{"status":"STARTING","setup":{}}')
    assert cog.accepts(200, b'{"status": "READY"}')
    assert not cog.accepts(503, b'{"status": "READY"}')
    assert not cog.accepts(200, b"<html>")
    assert not cog.accepts(200, b'["READY"]')


def test_upstream_start_from_proc() -> None:
    """A process's start is read from /proc/<pid>/stat; a missing process gives None."""
    before = time.time_ns()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        started = upstream_start_ns(proc.pid)
        assert started is not None
        assert before - PROC_START_RESOLUTION_S * 1e9 <= started <= time.time_ns()
    finally:
        proc.kill()
        proc.wait()
    assert upstream_start_ns(2**22 + 12345) is None


def test_cli_refuses_remote_listen_without_allow_remote() -> None:
    """`gpuledger proxy --listen 0.0.0.0:...` is a usage error (exit 2) that says why and what to
    pass."""
    result = CliRunner().invoke(main, ["proxy", "--listen", "0.0.0.0:8080", "--upstream", ":1"])
    assert result.exit_code == 2
    assert "no authentication of its own" in result.output
    assert "--allow-remote" in result.output


def test_cli_says_how_to_install_aiohttp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without aiohttp (a dependency, but one can remove it), the command says what to install
    instead of a traceback."""
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    monkeypatch.delitem(sys.modules, "gpuledger.sidecar._proxy")
    monkeypatch.delattr(gpuledger.sidecar, "_proxy")
    with pytest.raises(ImportError):
        importlib.import_module("gpuledger.sidecar._proxy")
    result = CliRunner().invoke(
        main, ["proxy", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1"]
    )
    assert result.exit_code == 1
    assert "pip install 'aiohttp>=3.9.3'" in result.output


def test_cli_reports_a_taken_port_and_a_bad_setting(tmp_path: Path) -> None:
    """A listening address already in use is a failed run (exit 1); an agent setting it cannot
    use is a usage error (exit 2) naming the option; each a one-line error."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["proxy", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1"]
        result = CliRunner().invoke(main, [*argv, "--ledger", str(tmp_path / "l.db")])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    result = CliRunner().invoke(
        main, ["proxy", "--upstream", "127.0.0.1:1", "--platform", "nowhere"]
    )
    assert result.exit_code == 2
    assert "Invalid value for '--platform': 'nowhere': no such platform" in result.output


# --- a plain server: what passes through -----------------------------------------------------


@pytest.mark.slow
def test_bodies_and_headers_pass_through(
    upstreams: Upstreams, start_proxy: Callable[..., RunningProxy], ledger: Ledger
) -> None:
    """Bodies arrive byte-identical (compressed ones too); hop-by-hop headers stop at the
    proxy; Host is the upstream's; ids and users come from headers; redirects and cookies
    are passed on, not acted on."""
    upstream = ready_plain(upstreams)
    proxy = start_proxy(
        upstream.address,
        user_header="X-User-Id",
        tenant_header="X-Tenant",
        unmetered_paths=["/"],
    )
    assert proxy.wait_ready()
    with httpx.Client(base_url=proxy.url) as client, httpx.Client(base_url=upstream.url) as direct:
        for path in ("/bytes?n=3000000", "/gzip", "/"):
            via_proxy, straight = client.get(path), direct.get(path)
            assert via_proxy.status_code == straight.status_code == 200
            assert via_proxy.headers.get("content-encoding") == straight.headers.get(
                "content-encoding"
            )
            with client.stream("GET", path) as streamed, direct.stream("GET", path) as reference:
                assert b"".join(streamed.iter_raw()) == b"".join(reference.iter_raw())

        upload = os.urandom(2_500_000)

        def pieces() -> Iterator[bytes]:  # a chunked upload, streamed
            for offset in range(0, len(upload), 500_000):
                yield upload[offset : offset + 500_000]

        echoed = client.post(
            "/echo", content=pieces(), headers={"Content-Type": "application/x-test"}
        )
        assert echoed.content == upload
        assert echoed.headers["content-type"] == "application/x-test"

        seen = httpx.Headers(
            client.get(
                "/headers",
                headers={
                    "Connection": "keep-alive, X-Hop",
                    "X-Hop": "1",
                    "Keep-Alive": "timeout=5",
                    "X-Request-Id": "req-given-1",
                    "X-User-Id": "alice",
                    "X-Tenant": "acme",
                },
            ).json()
        )
        assert not {"x-hop", "keep-alive", "connection"} & set(seen.keys())
        assert seen["Host"] == upstream.address
        assert seen["X-Forwarded-Host"] == f"127.0.0.1:{proxy.proxy.port}"
        assert seen["X-Forwarded-For"] == "127.0.0.1"
        assert seen["X-Forwarded-Proto"] == "http"
        assert seen["X-Request-Id"] == "req-given-1"
        generated = httpx.Headers(client.get("/headers").json())["X-Request-Id"]

        cookies = client.get("/cookies")
        assert cookies.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
        assert "x-hop" not in cookies.headers
        # The proxy keeps no cookie jar: a new client's request carries none.
        fresh = httpx.get(f"{proxy.url}/headers", headers={"X-Request-Id": "fresh"})
        assert "cookie" not in httpx.Headers(fresh.json())
        redirected = client.get("/redirect")
        assert redirected.status_code == 302
        assert redirected.headers["location"] == "/elsewhere"

    rows = ledger.rows(10)
    by_id = {row["invocation_id"]: row for row in rows}
    given = by_id["req-given-1"]
    assert (given["user_id"], given["tenant"]) == ("alice", "acme")
    assert json.loads(given["tags"]) == {
        "http_method": "GET",
        "http_path": "/headers",
        "http_status": "200",
    }
    assert generated in by_id  # the generated id was sent upstream
    assert by_id[generated]["user_id"] is None
    paths = [json.loads(row["tags"])["http_path"] for row in rows]
    assert "/" not in paths  # unmetered
    assert paths.count("/bytes") == 2
    assert {row["outcome"] for row in rows} == {"ok"}
    statuses = {json.loads(row["tags"])["http_path"]: row for row in rows}
    assert json.loads(statuses["/redirect"]["tags"])["http_status"] == "302"


@pytest.mark.slow
def test_streamed_response_reaches_the_client_as_it_comes(
    upstreams: Upstreams, start_proxy: Callable[..., RunningProxy], ledger: Ledger
) -> None:
    """Chunks are relayed as the upstream sends them: the first arrives before the last is
    sent, and the invocation lasts until the last byte."""
    upstream = ready_plain(upstreams)
    proxy = start_proxy(upstream.address)
    assert proxy.wait_ready()
    arrivals: list[tuple[float, bytes]] = []
    with (
        httpx.Client(base_url=proxy.url) as client,
        client.stream("GET", "/stream?n=4&delay=0.3") as response,
    ):
        assert response.headers.get("transfer-encoding") == "chunked"
        arrivals.extend((time.time(), chunk) for chunk in response.iter_raw())
    lines = b"".join(chunk for _, chunk in arrivals).decode().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1", "2", "3"]
    last_sent = float(lines[-1].split()[1])
    first_arrived = arrivals[0][0]
    assert b"0 " in arrivals[0][1]
    assert first_arrived < last_sent - 0.5  # ~0.9 s apart when streamed
    (row,) = ledger.rows(1)
    assert row["outcome"] == "ok"
    assert 0.85 <= row["duration_s"] < 3


@pytest.mark.slow
def test_overlapping_requests_split_the_billed_time(
    upstreams: Upstreams, start_proxy: Callable[..., RunningProxy], ledger: Ledger
) -> None:
    """Concurrent requests are served at once, and their billed seconds add up to the union of
    their wall time (the agent shares each instant among those running)."""
    upstream = ready_plain(upstreams)
    proxy = start_proxy(upstream.address)
    assert proxy.wait_ready()

    def call(delay: float) -> int:
        time.sleep(delay)
        with httpx.Client(base_url=proxy.url, timeout=10) as client:
            return client.get("/sleep", params={"s": "0.6"}).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(call, [0, 0, 0.1, 0.2, 0.3, 1.5]))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 6
    assert elapsed < 3.5  # 6 x 0.6 s one after the other would be at least 3.6 s
    rows = ledger.rows(6)
    intervals = [(row["start_ns"], row["end_ns"]) for row in rows]
    billed = sum(row["billed_gpu_seconds"] for row in rows)
    wall = sum(row["duration_s"] for row in rows)
    union = union_seconds(intervals)
    assert billed == pytest.approx(union, abs=1e-6)
    assert wall > union + 1.0  # they did overlap
    alone = rows[-1]  # the last ran alone: billed all of its time
    assert alone["billed_gpu_seconds"] == pytest.approx(alone["duration_s"], abs=1e-6)


@pytest.mark.slow
def test_upstream_failures_are_recorded(
    upstreams: Upstreams, start_proxy: Callable[..., RunningProxy], ledger: Ledger
) -> None:
    """5xx, an upstream that stays silent, one that dies before or while answering, and a
    client that leaves: each is recorded with its outcome and error type."""
    upstream = ready_plain(upstreams)
    proxy = start_proxy(upstream.address, upstream_timeout_s=0.5)
    assert proxy.wait_ready()
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        assert client.get("/status/503").status_code == 503
        assert client.get("/status/404").status_code == 404
        assert client.get("/sleep", params={"s": "2"}).status_code == 504
        with client.stream("GET", "/stream?n=3&delay=1") as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                response.read()  # cut after the first chunk: the upstream went silent
        with pytest.raises(httpx.ReadTimeout):
            client.get("/sleep", params={"s": "1"}, timeout=0.15)
    rows = ledger.rows(5)
    outcomes = [(row["outcome"], row["error_type"]) for row in rows]
    assert outcomes == [
        ("error", "http_503"),
        ("ok", None),
        ("timeout", "upstream_timeout"),
        ("timeout", "upstream_timeout"),
        ("cancelled", "client_disconnected"),
    ]
    assert json.loads(rows[1]["tags"])["http_status"] == "404"
    assert json.loads(rows[2]["tags"])["http_status"] == "504"
    assert 0.5 <= rows[2]["duration_s"] < 1.5
    assert 0.1 <= rows[4]["duration_s"] < 0.8  # ended when the client left, not at 1 s
    (failed,) = [
        span
        for span in ledger.spans.get_finished_spans()
        if span.name == "proxy"
        and (span.attributes or {}).get("faas.invocation_id") == rows[0]["invocation_id"]
    ]
    assert (failed.attributes or {})["error.type"] == "http_503"
    assert not failed.status.is_ok

    dying = upstreams.plain()
    dying.wait_until("/", lambda status, _body: status == 200, READY_S)
    second = start_proxy(dying.address)
    assert second.wait_ready()
    with httpx.Client(base_url=second.url, timeout=10) as client:
        with client.stream("GET", "/die-streaming") as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                response.read()
        assert client.get("/").status_code == 502  # gone: refused
    again = upstreams.plain()
    again.wait_until("/", lambda status, _body: status == 200, READY_S)
    third = start_proxy(again.address)
    assert third.wait_ready()
    with httpx.Client(base_url=third.url, timeout=10) as client:
        # POST: a GET would be retried once by the connection pool, on a new connection to
        # a process that is gone (then: upstream_unreachable).
        assert client.post("/die", content=b"{}").status_code == 502
    rows = ledger.rows(8)[5:]
    assert [(row["outcome"], row["error_type"]) for row in rows] == [
        ("error", "upstream_disconnected"),
        ("error", "upstream_unreachable"),
        ("error", "upstream_disconnected"),
    ]


@pytest.mark.slow
def test_upstream_down_at_start(
    upstreams: Upstreams, start_proxy: Callable[..., RunningProxy], ledger: Ledger
) -> None:
    """Requests wait for readiness, then get 503 (recorded, taking the init so far); once the
    upstream is ready the rest of the init is the upstream_ready phase: nothing counted twice."""
    upstream = upstreams.plain(ready_after=1.5)
    proxy = start_proxy(upstream.address, upstream_pid=upstream.pid, ready_timeout_s=0.4)
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        refused = client.get("/")
        assert refused.status_code == 503
        assert "not ready within 0.4 s" in refused.text
        assert proxy.wait_ready()
        assert client.get("/").status_code == 200
    start = upstream_start_ns(upstream.pid)
    assert start is not None
    first, second = ledger.rows(2)
    assert (first["outcome"], first["error_type"], first["cold"]) == (
        "error",
        "upstream_not_ready",
        1,
    )
    assert first["duration_s"] < 0.1  # the wait is the init's, not the request's
    ready_ns = proxy.proxy.ready_ns
    assert ready_ns is not None
    assert 0.4 <= first["init_duration_s"] < (ready_ns - start) / 1e9
    assert json.loads(first["init_phases"]) == {"(unnamed)": first["init_duration_s"]}
    assert (second["outcome"], second["cold"]) == ("ok", 0)
    phases = json.loads(second["init_phases"])
    assert list(phases) == ["upstream_ready"]
    # The two parts tile the start: upstream start -> refusal -> ready.
    assert first["init_duration_s"] + phases["upstream_ready"] == pytest.approx(
        (ready_ns - start) / 1e9, abs=PROC_START_RESOLUTION_S
    )
    assert (ready_ns - start) / 1e9 >= 1.5


@pytest.mark.slow
def test_cli_meters_until_sigterm(upstreams: Upstreams, tmp_path: Path) -> None:
    """`gpuledger proxy` as a process: it announces itself and readiness, records priced rows,
    and on SIGTERM finishes and flushes the ledger."""
    upstream = upstreams.plain(ready_after=0.3)
    port = free_port()
    ledger_path = tmp_path / "cli-ledger.db"
    log = tmp_path / "proxy.log"
    script = "from gpuledger.cli._main import main; main(prog_name='gpuledger')"
    argv = [
        sys.executable, "-c", script, "proxy",
        "--listen", f"127.0.0.1:{port}",
        "--upstream", upstream.address,
        "--upstream-pid", str(upstream.pid),
        "--ledger", str(ledger_path),
        "--platform", "runpod", "--gpu", "H100",
        "--user-header", "X-User-Id",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPULEDGER_", "OTEL_"))}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + READY_S
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while True:
                try:
                    response = client.get("/", headers={"X-User-Id": "bob"})
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, log_tail(log)
                    assert proc.poll() is None, log_tail(log)
                    time.sleep(0.05)
            assert response.status_code == 200
            assert client.get("/sleep", params={"s": "0.2"}).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log_tail(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert f"gpuledger proxy: http://127.0.0.1:{port} -> http://{upstream.address}" in output
    assert "upstream ready" in output
    with contextlib.closing(sqlite3.connect(ledger_path)) as connection:
        rows = connection.execute(
            "SELECT cold, user_id, platform, cost_usd, init_phases FROM invocations "
            "ORDER BY start_ns"
        ).fetchall()
    assert len(rows) == 2
    assert [(cold, user) for cold, user, *_ in rows] == [(1, "bob"), (0, None)]
    assert {platform for _, _, platform, _, _ in rows} == {"runpod"}
    assert all(cost is not None and cost > 0 for *_, cost, _ in rows)
    assert json.loads(rows[0][4])["upstream_ready"] >= upstream.init_s


# --- real model servers ----------------------------------------------------------------------


def _cog_slot_free(cog_url: str) -> None:
    """Wait (bounded) until Cog says READY: Cog 0.23 answers a prediction before it frees its one
    slot, and a prediction sent in between gets 409 "At capacity" (with no id). See
    tests/test_cog_example.py::test_back_to_back_predictions_find_a_free_slot."""
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if httpx.get(f"{cog_url}/health-check", timeout=2).json().get("status") == "READY":
                return
        time.sleep(0.01)
    raise AssertionError(f"Cog at {cog_url} did not free its slot in {READY_S} s")


def _cog_prediction(response: httpx.Response) -> dict[str, Any]:
    """What a prediction's answer says, without what differs on every run."""
    document: dict[str, Any] = response.json()
    return {key: document.get(key) for key in ("status", "output", "error")}


@pytest.mark.slow
def test_cog_predictions_are_metered(
    cog_python: Path,
    upstreams: Upstreams,
    start_proxy: Callable[..., RunningProxy],
    ledger: Ledger,
) -> None:
    """Cog (coglet) behind the proxy: the first prediction waits for setup() and is cold with
    the start as init, the rest are warm; a predictor that raises is answered 200 "failed" and
    recorded ok (bodies are not read); answers match Cog's own byte for byte."""
    cog = upstreams.cog(cog_python)
    proxy = start_proxy(cog.address, preset="cog", upstream_pid=cog.pid)
    predict = {"input": {"x": 3}}
    with httpx.Client(base_url=proxy.url, timeout=READY_S) as client:
        first = client.post("/predictions", json=predict, headers={"X-Request-Id": "cog-1"})
        first_done_ns = time.time_ns()
        assert first.status_code == 200, first.text
        assert _cog_prediction(first) == {"status": "succeeded", "output": 6, "error": None}
        _cog_slot_free(cog.url)
        second = client.post("/predictions", json={"input": {"x": 5}})
        assert _cog_prediction(second)["output"] == 10
        _cog_slot_free(cog.url)
        failed = client.post("/predictions", json={"input": {"x": -1}})
        assert failed.status_code == 200
        assert _cog_prediction(failed)["status"] == "failed"
        _cog_slot_free(cog.url)
        idempotent = client.put("/predictions/gpl-test-1", json=predict)
        assert idempotent.status_code == 200, idempotent.text
        assert idempotent.json().get("id", "gpl-test-1") == "gpl-test-1", idempotent.text
        with httpx.Client(base_url=cog.url, timeout=READY_S) as direct:
            # Unmetered under the preset; the answers pass unchanged (/openapi.json is Cog's
            # 503 here: the schema file is written by `cog build`).
            for path in ("/", "/openapi.json", "/health-check"):
                via_proxy, straight = client.get(path), direct.get(path)
                assert via_proxy.status_code == straight.status_code
                if path != "/health-check":  # its body carries timestamps
                    assert via_proxy.content == straight.content
                    assert via_proxy.headers["content-type"] == straight.headers["content-type"]
            _cog_slot_free(cog.url)
            assert _cog_prediction(direct.post("/predictions", json=predict)) == _cog_prediction(
                first
            )
    start = upstream_start_ns(cog.pid)
    ready_ns = proxy.proxy.ready_ns
    assert start is not None
    assert ready_ns is not None
    rows = ledger.rows(4)  # predictions only: health checks and docs are unmetered
    cold, *warm = rows
    assert cold["invocation_id"] == "cog-1"
    assert cold["cold"] == 1
    phases = json.loads(cold["init_phases"])
    assert phases["upstream_ready"] == pytest.approx(
        (ready_ns - start) / 1e9, abs=PROC_START_RESOLUTION_S
    )
    assert phases["upstream_ready"] >= cog.init_s  # setup() is part of the start
    assert cold["init_duration_s"] <= (first_done_ns - start) / 1e9 + PROC_START_RESOLUTION_S
    assert all(row["cold"] == 0 and row["init_duration_s"] is None for row in warm)
    assert [row["outcome"] for row in rows] == ["ok"] * 4  # "failed" is inside a 200 body
    assert json.loads(rows[3]["tags"]) == {
        "http_method": "PUT",
        "http_path": "/predictions/gpl-test-1",
        "http_status": "200",
    }
    assert all(row["cost_usd"] is not None for row in rows)


@pytest.mark.slow
def test_potassium_handlers_are_metered(
    potassium_python: Path,
    upstreams: Upstreams,
    start_proxy: Callable[..., RunningProxy],
    ledger: Ledger,
) -> None:
    """Potassium behind the proxy (preset potassium): init is the start, the first request is
    cold; a handler that raises is Potassium's 500 and an error; streamed tokens pass as they
    come; ids travel as X-Banana-Request-Id; answers match Potassium's own byte for byte."""
    server = upstreams.potassium(potassium_python)
    proxy = start_proxy(
        server.address, preset="potassium", upstream_pid=server.pid, user_header="X-User-Id"
    )
    with httpx.Client(base_url=proxy.url, timeout=READY_S) as client:
        first = client.post(
            "/",
            json={"x": 3},
            headers={"X-Banana-Request-Id": "pot-1", "X-User-Id": "carol"},
        )
        assert first.status_code == 200, first.text
        generated = client.post("/", json={"x": 4})
        assert generated.json()["output"] == 8
        broken = client.post("/", json={"x": -1})
        assert broken.status_code == 500
        arrivals: list[tuple[float, bytes]] = []
        with client.stream("POST", "/stream", json={}) as streamed:
            arrivals.extend((time.time(), chunk) for chunk in streamed.iter_raw())
        assert client.get("/__status__").status_code == 200  # unmetered
        with httpx.Client(base_url=server.url, timeout=READY_S) as direct:
            straight = direct.post("/", json={"x": 3}, headers={"X-Banana-Request-Id": "pot-1"})
            assert first.content == straight.content
            assert first.json() == {"output": 6, "request_id": "pot-1"}
            assert first.headers["content-type"] == straight.headers["content-type"]
    events = b"".join(chunk for _, chunk in arrivals).decode().split("\n\n")
    sent = [float(event.split()[2]) for event in events if event]
    assert len(sent) == 3
    assert arrivals[0][0] < sent[-1] - 0.3  # the first token arrived before the last left

    start = upstream_start_ns(server.pid)
    ready_ns = proxy.proxy.ready_ns
    assert start is not None
    assert ready_ns is not None
    rows = ledger.rows(4)
    assert rows[0]["invocation_id"] == "pot-1"
    assert rows[1]["invocation_id"] == generated.json()["request_id"]  # sent upstream
    cold = rows[0]
    assert (cold["cold"], cold["user_id"]) == (1, "carol")
    phases = json.loads(cold["init_phases"])
    assert phases["upstream_ready"] >= server.init_s
    assert phases["upstream_ready"] == pytest.approx(
        (ready_ns - start) / 1e9, abs=PROC_START_RESOLUTION_S
    )
    assert [(row["outcome"], row["error_type"]) for row in rows] == [
        ("ok", None),
        ("ok", None),
        ("error", "http_500"),
        ("ok", None),
    ]
    assert rows[3]["duration_s"] >= 0.6  # the stream's invocation lasted until its last token
    assert _guard.error_counts() == {}
