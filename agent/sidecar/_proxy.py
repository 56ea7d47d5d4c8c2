"""A metering reverse proxy: each HTTP request to a model server becomes one gpuledger invocation.

``gpuledger proxy --listen 127.0.0.1:8080 --upstream 127.0.0.1:5000`` puts the agent in front of a
model server written in any language, with no change to its code. The proxy runs gpuledger's own
agent in its process: every proxied request is opened with ``Agent.enter`` and closed with
``Agent.exit``, so it is priced, shared with the requests running beside it, and written to the
ledger exactly like a ``@traced_handler`` call.

What one invocation is
    From when the proxy starts forwarding the request (after the upstream is ready) to when the
    last byte of the response has been written to the client: the time to last byte. Request
    and response bodies are streamed through in both directions, never buffered whole and never
    read: nothing of a payload is parsed or recorded (not even Cog's prediction id).

Outcome (``outcome``, ``error_type``: what the client receives)
    - the upstream answered 1xx to 4xx: ``ok`` (the answer);
    - it answered 5xx: ``error``, ``http_<code>`` (the answer);
    - it refused the connection or could not be reached: ``error``, ``upstream_unreachable``
      (502);
    - it closed the connection before or while answering (it died): ``error``,
      ``upstream_disconnected`` (502, or the response cut short);
    - it stayed silent longer than ``upstream_timeout_s``: ``timeout``, ``upstream_timeout``
      (504, or the response cut short);
    - it was not ready within ``ready_timeout_s``: ``error``, ``upstream_not_ready`` (503);
    - the client went away before the end: ``cancelled``, ``client_disconnected``.

    4xx is ``ok``: the client's mistake, answered correctly (OpenTelemetry's HTTP server
    conventions leave a span's status unset for 4xx too); the code is kept in the
    ``http_status`` tag. A failure the server reports inside a 2xx body is invisible to a proxy
    that does not read bodies: Cog answers a prediction whose predictor raised with 200 and
    ``"status": "failed"``, which is recorded ``ok``.

Ids, users and tags
    The invocation id is the request's ``request_id_header`` (default ``X-Request-Id``) when
    present, else generated; either way it is sent upstream in that header, so the model
    server's logs carry the same id. User and tenant come from ``user_header`` and
    ``tenant_header`` (off unless configured). Tags: ``http_method``, ``http_path`` (never the
    query string, which may carry payload) and ``http_status``. Header values and paths
    holding bytes that are not UTF-8 (HTTP allows any byte from 0x80 in a field value) are
    recorded with each such byte escaped as ``\\xNN``, the text being valid Unicode a sidecar
    accepts; the headers themselves are forwarded byte for byte (the client's id header as it
    sent it).

Headers
    Hop-by-hop headers (``Connection`` and those it names, ``Keep-Alive``, ``TE``, ``Trailer``,
    ``Transfer-Encoding``, ``Upgrade``, ``Proxy-*``) are dropped in both directions; the rest
    pass unchanged, ``Content-Encoding`` and compressed bodies included (nothing is
    decompressed). ``Host`` is rewritten to the upstream's address, as nginx does by default
    (model servers on loopback expect their own); the client's goes in ``X-Forwarded-Host``,
    with ``X-Forwarded-For`` and ``X-Forwarded-Proto``. ``Expect: 100-continue`` is answered by
    the proxy. Redirects are passed to the client, never followed; cookies are never stored.
    Upstream connections are kept alive in a pool (no limit on their number). An absolute-form
    request target (``GET http://host/path``, RFC 9112 section 3.2.2: a server must accept it)
    is forwarded in origin form (``/path?query``), its authority (not the ``Host`` header, which
    the RFC has ignored then) going in ``X-Forwarded-Host``.

Cold start
    The worker's start is the upstream process's start when ``upstream_pid`` is given (read from
    ``/proc/<pid>/stat``), else the proxy's own. The proxy polls the upstream (every
    ``ready_poll_s``) until it is ready (see ``ReadyCheck``); the init phase ``upstream_ready``
    runs from the start to that instant; from there the agent's usual rules apply: the first
    request is cold (with the init) unless it came more than ``prewarm_threshold_s`` after
    readiness. Requests that arrive before then wait up to ``ready_timeout_s`` (their wait is
    part of the init, not of their duration), then get 503. A refused request is recorded
    (``upstream_not_ready``); if it is the first, it takes the init up to its refusal, and the
    ``upstream_ready`` phase then starts where that ended, so no instant of the start is counted
    twice.

Known servers (``preset``)
    Cog (0.23's coglet, and the older Python server alike) listens at once and answers
    ``/health-check`` with 200 and ``"status": "STARTING"`` until ``setup()`` has returned, so any
    answer is not yet ready: ``cog`` is ``/health-check``, 2xx, ``status=READY``, with ``/``,
    ``/health-check``, ``/openapi.json``, ``/docs``, ``/shutdown`` unmetered. Potassium runs
    ``@app.init`` before it binds, so its first answer (``GET /`` is a 405) is ready;
    ``potassium`` also takes ids from ``X-Banana-Request-Id`` (Potassium's ``request.id``) and
    leaves ``/__status__``, ``/_k/status`` unmetered.

Readiness is dated when the proxy sees it: an upstream that was ready before the proxy started is
dated at the proxy's first check. Not handled: readiness is checked once, at start (a restarted
upstream is not a new cold start); trace context is not propagated to the upstream; WebSockets and
HTTP/2. The connection pool retries an idempotent request (GET, PUT, ...) once on a new connection
when a kept-alive one turns out closed (aiohttp's own rule); a POST is never sent twice.

Why one module of this size: the proxy is one aiohttp application whose parts (presets, the
request handler, streaming, upstream readiness) share its configuration and are only ever
loaded together, by ``gpuledger proxy``; splitting it would spread one request's path over files.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import re
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gpuledger import _config as agent_module
from gpuledger._agent import Agent, HandlerSpec
from gpuledger._errors import ConfigError
from gpuledger._invocation import Invocation
from gpuledger._logging import get_logger
from gpuledger._process import started_ns as upstream_start_ns
from gpuledger._refusal import STATUS, refusal_json

__all__ = [
    "PRESETS",
    "MeteringProxy",
    "Preset",
    "ProxyConfig",
    "ReadyCheck",
    "parse_listen",
    "parse_upstream",
    "proxy_config",
    "run_proxy",
    "upstream_start_ns",
]

READY_PHASE: Final = "upstream_ready"
"""The init phase that ends when the upstream first answers the readiness check."""

_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Not forwarded upstream: Host is rewritten by the client library, Expect answered here.
_REQUEST_DROPPED: Final = _HOP_BY_HOP | {"host", "expect"}
_MAX_ID_LENGTH: Final = 256
"""Longest request id, user or tenant taken from a header (longer values are cut)."""
_PROBE_TIMEOUT_S: Final = 5.0
_PROBE_BODY_LIMIT: Final = 65536
# An idle upstream connection is dropped before common servers drop it (uvicorn: 5 s), so a
# request is never sent on a connection the server is closing.
_KEEPALIVE_S: Final = 4.0
_CONNECT_TIMEOUT: Final[Any] = getattr(aiohttp, "ConnectionTimeoutError", ())
# What aiohttp's own header writer refuses (header injection); see _OpaqueValue.
_FORBIDDEN_IN_HEADERS: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclasses.dataclass(frozen=True, slots=True)
class ReadyCheck:
    """When the upstream counts as ready: ``GET path`` answered, by default with anything.

    ``status``: ``any`` (any HTTP answer: the server is listening and speaking HTTP) or ``2xx``.
    ``json_field``: ``(key, value)``, ready only when the answer is 2xx and its JSON body has
    ``key`` equal to ``value`` (Cog: ``/health-check`` answers 200 with ``"status": "STARTING"``
    while ``setup()`` runs, then ``"READY"``).
    """

    path: str = "/"
    status: Literal["any", "2xx"] = "any"
    json_field: tuple[str, str] | None = None

    def accepts(self, status: int, body: bytes | None) -> bool:
        """Whether an answer with ``status`` (and ``body``, read when ``json_field`` is set)
        means ready."""
        if self.json_field is None:
            return self.status == "any" or 200 <= status < 300
        if not 200 <= status < 300 or body is None:
            return False
        try:
            document = json.loads(body)
        except ValueError:
            return False
        key, expected = self.json_field
        return isinstance(document, dict) and str(document.get(key)) == expected


@dataclasses.dataclass(frozen=True, slots=True)
class Preset:
    """Defaults for a known model server (explicit options win over them)."""

    ready: ReadyCheck
    unmetered_paths: frozenset[str]
    request_id_header: str


PRESETS: Final[dict[str, Preset]] = {
    # Cog (Replicate): /health-check says READY once setup() returned; the platform polls it.
    "cog": Preset(
        ReadyCheck("/health-check", "2xx", ("status", "READY")),
        frozenset({"/", "/health-check", "/openapi.json", "/docs", "/shutdown"}),
        "X-Request-Id",
    ),
    # Potassium (Banana): runs @app.init before it listens, so any answer means ready; Banana's
    # load balancer sends X-Banana-Request-Id, which Potassium takes as the request's id.
    "potassium": Preset(
        ReadyCheck("/", "any"),
        frozenset({"/__status__", "/_k/status"}),
        "X-Banana-Request-Id",
    ),
}


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Everything the proxy needs; build it with :func:`proxy_config`, which validates."""

    upstream: URL
    """The model server's base URL (``http://127.0.0.1:5000``)."""
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    """0: any free port (tests)."""
    upstream_pid: int | None = None
    """The model server's pid: its start begins the init (else the proxy's own start)."""
    ready: ReadyCheck = ReadyCheck()
    ready_timeout_s: float = 300.0
    """Longest a request waits for the upstream to become ready before it gets 503."""
    ready_poll_s: float = 0.05
    """Between two readiness checks; the init is measured to this resolution."""
    upstream_timeout_s: float | None = None
    """Longest the upstream may stay silent (before its answer, between two chunks); None: no
    limit (an inference may take minutes)."""
    connect_timeout_s: float = 10.0
    request_id_header: str | None = "X-Request-Id"
    user_header: str | None = None
    tenant_header: str | None = None
    unmetered_paths: frozenset[str] = frozenset()
    """Paths (exact, no query) proxied at once and not recorded: health checks, docs. They do
    not wait for readiness, so a platform's health check sees the upstream's own answer."""
    handler_name: str = "proxy"
    """The ``handler`` of every row (a metric attribute: keep it one low-cardinality name)."""
    shutdown_timeout_s: float = 10.0
    """On shutdown, longest the requests in flight are given to finish."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def parse_listen(text: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6; ``:8080`` means 127.0.0.1) to bind.

    A host that is not loopback raises ConfigError unless ``allow_remote``: the proxy has no
    authentication of its own, so anyone who reaches it can use the model and be billed to
    whatever user header they send.
    """
    host, colon, port_text = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not colon or not 0 <= port <= 65535:
        raise ConfigError("listen", text, "expected HOST:PORT, e.g. 127.0.0.1:8080")
    if not allow_remote and not is_loopback(host):
        raise ConfigError(
            "listen",
            text,
            "not a loopback address: the metering proxy has no authentication of its own, so "
            "anyone who can reach it can call the model and choose the user it is billed to; "
            "pass --allow-remote (allow_remote=True) if something in front of it authenticates",
        )
    return host, port


def parse_upstream(text: str) -> URL:
    """``host:port`` or ``http(s)://host:port`` to the upstream's base URL (no path prefix)."""
    try:
        url = URL(text if "://" in text else f"http://{text}")
    except ValueError:
        url = URL()
    if url.scheme not in {"http", "https"} or not url.host:
        raise ConfigError("upstream", text, "expected HOST:PORT or http://HOST:PORT")
    if url.path not in {"", "/"} or url.query_string or url.fragment:
        raise ConfigError(
            "upstream", text, "a path, query or fragment is not supported: give the server's root"
        )
    if url.explicit_port is None and "://" not in text:
        raise ConfigError("upstream", text, "give the port, e.g. 127.0.0.1:5000")
    return url.with_path("")


def proxy_config(
    *,
    upstream: str,
    listen: str = "127.0.0.1:8080",
    allow_remote: bool = False,
    preset: str | None = None,
    ready_path: str | None = None,
    ready_status: Literal["any", "2xx"] | None = None,
    ready_json: str | None = None,
    unmetered_paths: Iterable[str] | None = None,
    request_id_header: str | None = None,
    **options: Any,
) -> ProxyConfig:
    """A validated :class:`ProxyConfig` from the command line's terms.

    ``preset`` (``cog``, ``potassium``) sets the readiness check, the unmetered paths and the
    request-id header; explicit arguments win. ``ready_json`` is ``KEY=VALUE``. Other keyword
    arguments are ``ProxyConfig`` fields. Raises ConfigError naming the bad option.
    """
    chosen = None
    if preset is not None:
        chosen = PRESETS.get(preset)
        if chosen is None:
            raise ConfigError("preset", preset, f"expected one of {', '.join(sorted(PRESETS))}")
    base = chosen.ready if chosen is not None else ReadyCheck()
    json_field = base.json_field
    if ready_json is not None:
        key, sep, value = ready_json.partition("=")
        if not sep or not key:
            raise ConfigError("ready_json", ready_json, "expected KEY=VALUE, e.g. status=READY")
        json_field = (key, value)
    path = ready_path if ready_path is not None else base.path
    if not path.startswith("/"):
        raise ConfigError("ready_path", path, "a path starts with /")
    ready = ReadyCheck(path, ready_status or base.status, json_field)
    host, port = parse_listen(listen, allow_remote=allow_remote)
    if unmetered_paths is None:
        unmetered = chosen.unmetered_paths if chosen is not None else frozenset()
    else:
        unmetered = frozenset(unmetered_paths)
    id_header = request_id_header
    if id_header is None:
        id_header = chosen.request_id_header if chosen is not None else "X-Request-Id"
    for name in ("ready_timeout_s", "ready_poll_s", "connect_timeout_s", "shutdown_timeout_s"):
        number = options.get(name)
        if number is not None and not number > 0:
            raise ConfigError(name, number, "must be above 0")
    timeout = options.get("upstream_timeout_s")
    if timeout is not None and timeout <= 0:
        options["upstream_timeout_s"] = None  # 0: no limit, as on the command line
    pid = options.get("upstream_pid")
    if pid is not None and pid <= 0:
        raise ConfigError("upstream_pid", pid, "a process id is above 0")
    return ProxyConfig(
        upstream=parse_upstream(upstream),
        listen_host=host,
        listen_port=port,
        ready=ready,
        unmetered_paths=unmetered,
        request_id_header=id_header or None,
        **{name: value for name, value in options.items() if value is not None},
    )


class _Result:
    """How one request ended, filled in while it is forwarded."""

    __slots__ = ("error_type", "outcome", "status")

    def __init__(self) -> None:
        self.outcome = "ok"
        self.error_type: str | None = None
        self.status: int | None = None

    def fail(self, outcome: str, error_type: str) -> None:
        # The first failure is the cause; what follows it (a cut client) is a consequence.
        if self.outcome == "ok":
            self.outcome = outcome
            self.error_type = error_type


def _clip(value: str | None) -> str | None:
    if not value:
        return None
    return _printable(value)[:_MAX_ID_LENGTH]


def _printable(text: str) -> str:
    """``text`` as received (aiohttp decodes bytes that are not UTF-8 to lone surrogates,
    ``surrogateescape``) with each such byte written ``\\xNN``: valid Unicode, which a
    record must be."""
    if text.isascii():
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoder made: escape it as it is
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


class _OpaqueValue(str):
    """A header value holding bytes that are not UTF-8 (``surrogateescape``-decoded), to be
    written back as those bytes.

    aiohttp's header writers cannot: the Python one raises on the surrogates, the C one drops
    them. :func:`_install_opaque_writer` wraps aiohttp's serializer so that a header block with
    such a value is encoded with ``surrogateescape``; every other block goes to aiohttp's own.
    """

    __slots__ = ()


def _opaque(value: str) -> str:
    """``value``, marked to be written byte for byte when it holds bytes that are not UTF-8."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _OpaqueValue(value)
    return value


def _install_opaque_writer() -> None:
    """Wrap ``aiohttp.http_writer._serialize_headers`` (once) so :class:`_OpaqueValue` headers
    are written as the bytes they were received as. Blocks without one (everything outside the
    proxy) are serialized by aiohttp's own writer, unchanged."""
    from aiohttp import http_writer  # noqa: PLC0415

    original = http_writer._serialize_headers
    if getattr(original, "gpuledger_opaque", False):
        return

    def serialize(status_line: str, headers: Any) -> bytes:
        if not any(type(value) is _OpaqueValue for value in headers.values()):
            return original(status_line, headers)
        lines = [status_line, *(f"{name}: {value}" for name, value in headers.items())]
        if any(_FORBIDDEN_IN_HEADERS.search(line) for line in lines):
            raise ValueError(
                "Forbidden control character detected in headers. "
                "Potential header injection attack."
            )
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")

    serialize.gpuledger_opaque = True  # type: ignore[attr-defined]
    http_writer._serialize_headers = serialize


def _origin_form(target: str) -> tuple[str, str | None]:
    """The request target in origin form (``/path?query``) and, when it came in absolute form
    (``http://host:port/path?query``), its authority (``host:port``)."""
    scheme, sep, rest = target.partition("://")
    if not sep or "/" in scheme or not scheme:
        return target, None
    ends = [index for index in (rest.find("/"), rest.find("?")) if index >= 0]
    end = min(ends, default=len(rest))
    authority, remainder = rest[:end], rest[end:]
    origin = remainder if remainder.startswith("/") else "/" + remainder
    return origin, authority.rpartition("@")[2] or None


class MeteringProxy:
    """The proxy: an aiohttp server in front of ``config.upstream``, metering each request.

    ``await start()`` binds and starts watching for readiness; ``await close()`` stops. Run it on
    one event loop. The agent is the process's (``gpuledger.configure`` it first); without one
    the proxy still forwards, unmetered.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._spec = HandlerSpec(config.handler_name)
        self._base = str(config.upstream)
        self._unmetered = config.unmetered_paths
        self._id_header = config.request_id_header
        self._ready = asyncio.Event()
        self.ready_ns: int | None = None
        """When the upstream was first seen ready (Unix ns); None until then."""
        self.start_ns: int | None = None
        """Where the init starts: the upstream's (or the proxy's) process start, Unix ns."""
        self.start_source = "proc"
        self._init_claimed_ns: int | None = None
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.port = config.listen_port

    # -- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Set the worker's start, open the upstream pool, bind the listening socket (OSError
        if it cannot), and start watching the upstream for readiness."""
        config = self.config
        agent = self._agent()
        worker = agent.worker if agent is not None else agent_module.worker_state()
        if config.upstream_pid is not None:
            started = upstream_start_ns(config.upstream_pid)
            if started is None:
                get_logger().warning(
                    "cannot read the upstream process's start: the init is measured from the "
                    "proxy's start",
                    upstream_pid=config.upstream_pid,
                )
            else:
                with worker.lock:
                    worker.process_start_ns = started
                    worker.process_start_source = "upstream_proc"
        self.start_ns = worker.process_start_ns
        self.start_source = worker.process_start_source
        _install_opaque_writer()
        session = self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=config.connect_timeout_s,
                sock_read=config.upstream_timeout_s,
            ),
            auto_decompress=False,  # bytes pass through as the upstream encoded them
            cookie_jar=aiohttp.DummyCookieJar(),  # one client's cookies never reach another
            # Only the client's own headers go upstream; none of aiohttp's defaults.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        server = web.Server(
            self._handle,
            handler_cancellation=True,  # a client that goes away cancels its request
            auto_decompress=False,
            access_log=None,
        )
        runner = web.ServerRunner(server, shutdown_timeout=config.shutdown_timeout_s)
        try:
            await runner.setup()
            site = web.TCPSite(runner, config.listen_host, config.listen_port)
            await site.start()
        except BaseException:  # the address is taken, or not ours to bind
            await runner.cleanup()
            self._session = None
            await session.close()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self._watcher = asyncio.create_task(self._watch_ready(), name="gpuledger-proxy-ready")

    async def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait until the upstream is ready; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def ready(self) -> bool:
        """Whether the upstream has been seen ready."""
        return self._ready.is_set()

    async def close(self) -> None:
        """Stop listening, let requests in flight finish (``shutdown_timeout_s``), close."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- readiness --------------------------------------------------------------------------

    async def _watch_ready(self) -> None:
        config = self.config
        url = URL(self._base + config.ready.path, encoded=True)
        started = time.monotonic()
        warned = False
        while not await self._probe(url):
            if not warned and time.monotonic() - started > config.ready_timeout_s:
                warned = True
                get_logger().warning(
                    "upstream still not ready: requests get 503 until it is",
                    upstream=self._base,
                    waited_s=round(time.monotonic() - started, 1),
                )
            await asyncio.sleep(config.ready_poll_s)
        self._mark_ready()

    async def _probe(self, url: URL) -> bool:
        session = self._session
        assert session is not None
        check = self.config.ready
        try:
            async with session.get(
                url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=_PROBE_TIMEOUT_S)
            ) as response:
                body = None
                if check.json_field is not None:
                    body = await response.content.read(_PROBE_BODY_LIMIT)
                return check.accepts(response.status, body)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False

    def _mark_ready(self) -> None:
        agent = self._agent()
        now = agent.now_ns() if agent is not None else time.time_ns()
        worker = agent.worker if agent is not None else agent_module.worker_state()
        start = worker.process_start_ns
        if self._init_claimed_ns is not None:
            # A refused request already took the init up to its refusal.
            start = max(start, self._init_claimed_ns)
        # Closed before any waiting request is let through, so the first one gets the phase.
        phase = worker.open_phase(READY_PHASE, min(start, now))
        worker.close_phase(phase, now)
        self.ready_ns = now
        self._ready.set()
        get_logger().info(
            "upstream ready",
            upstream=self._base,
            init_s=round((now - worker.process_start_ns) / 1e9, 3),
        )

    # -- requests ---------------------------------------------------------------------------

    @staticmethod
    def _agent() -> Agent | None:
        return agent_module.get_agent()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path in self._unmetered:
            return await self._forward(request, _Result(), None)
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), self.config.ready_timeout_s)
            except TimeoutError:
                return self._refuse(request)
        agent = self._agent()
        invocation = None if agent is None else agent.enter(self._spec, (), {}, activate=False)
        if agent is None or invocation is None:
            return await self._forward(request, _Result(), None)
        result = _Result()
        try:
            request_id = self._describe(invocation, request)
            refused = agent.check_budget(invocation)
            if refused is not None:  # an enforced budget is spent: 429, never forwarded
                agent.exit(invocation, refused, active=False)
                invocation = None
                return web.json_response(
                    refusal_json(refused),
                    status=STATUS,
                    headers={"Retry-After": str(refused.retry_after_s)},
                )
            return await self._forward(request, result, request_id)
        except asyncio.CancelledError:
            # The client disconnected (aiohttp cancels its handler), or the proxy is closing.
            result.fail("cancelled", "client_disconnected")
            raise
        except BaseException as error:
            result.fail("error", f"proxy_{type(error).__name__}")
            raise
        finally:
            if invocation is not None:
                self._finish(agent, invocation, result)

    def _describe(self, invocation: Invocation, request: web.BaseRequest) -> str | None:
        """Set the invocation's id, user, tenant and tags from the request; the id to send
        (None when the client sent one: its header is forwarded as it came)."""
        headers = request.headers
        config = self.config
        request_id = None
        if self._id_header is not None:
            given = _clip(headers.get(self._id_header))
            if given is not None:
                invocation._invocation_id = given
            else:
                request_id = invocation.invocation_id
        if config.user_header is not None:
            invocation.user_id = _clip(headers.get(config.user_header))
        if config.tenant_header is not None:
            invocation.tenant = _clip(headers.get(config.tenant_header))
        invocation.tags = {
            "http_method": _printable(request.method),
            "http_path": _printable(request.path),
        }
        return request_id

    @staticmethod
    def _finish(agent: Agent, invocation: Invocation, result: _Result) -> None:
        invocation.outcome = result.outcome
        invocation.error_type = result.error_type
        if result.status is not None and invocation.tags is not None:
            invocation.tags["http_status"] = str(result.status)
        agent.exit(invocation, None, active=False)

    def _refuse(self, request: web.BaseRequest) -> web.StreamResponse:
        """503: the upstream did not become ready in time (recorded when metered)."""
        waited = self.config.ready_timeout_s
        response = web.Response(
            status=503,
            text=f"gpuledger proxy: the upstream was not ready within {waited:g} s\n",
            headers={"Retry-After": "1"},
        )
        agent = self._agent()
        invocation = None if agent is None else agent.enter(self._spec, (), {}, activate=False)
        if agent is not None and invocation is not None:
            self._describe(invocation, request)
            result = _Result()
            result.status = 503
            result.fail("error", "upstream_not_ready")
            if invocation.init is not None and not self._ready.is_set():
                self._init_claimed_ns = invocation.init.end_ns
            self._finish(agent, invocation, result)
        return response

    def _upstream_headers(
        self, request: web.BaseRequest, request_id: str | None
    ) -> CIMultiDict[str]:
        incoming = request.headers
        dropped: Iterable[str] = _REQUEST_DROPPED
        connection = incoming.get("Connection")
        if connection:
            dropped = _REQUEST_DROPPED | {token.strip().lower() for token in connection.split(",")}
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in incoming.items():
            if name.lower() not in dropped:
                headers.add(name, _opaque(value))
        remote = request.remote
        if remote:
            forwarded_for = incoming.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = f"{forwarded_for}, {remote}" if forwarded_for else remote
        # RFC 9112 section 3.2.2: an absolute-form target's authority wins over Host.
        host = _origin_form(request.raw_path)[1] or incoming.get("Host")
        if host and "X-Forwarded-Host" not in headers:
            headers["X-Forwarded-Host"] = _opaque(host)
        if "X-Forwarded-Proto" not in headers:
            headers["X-Forwarded-Proto"] = request.scheme
        if request_id is not None and self._id_header is not None:
            headers[self._id_header] = request_id
        return headers

    async def _forward(
        self, request: web.BaseRequest, result: _Result, request_id: str | None
    ) -> web.StreamResponse:
        session = self._session
        assert session is not None, "MeteringProxy.start() was not awaited"
        headers = self._upstream_headers(request, request_id)
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = request.content if request.body_exists else None
        url = URL(self._base + _origin_form(request.raw_path)[0], encoded=True)
        try:
            async with session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as upstream:
                return await self._relay(request, upstream, result)
        except _CONNECT_TIMEOUT:
            return self._fail(result, 502, "error", "upstream_unreachable")
        except (aiohttp.ServerTimeoutError, TimeoutError):
            return self._fail(result, 504, "timeout", "upstream_timeout")
        except aiohttp.ClientConnectorError:
            return self._fail(result, 502, "error", "upstream_unreachable")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError):
            return self._fail(result, 502, "error", "upstream_disconnected")
        except aiohttp.ClientError:
            return self._fail(result, 502, "error", "upstream_error")

    @staticmethod
    def _fail(result: _Result, status: int, outcome: str, error_type: str) -> web.Response:
        result.status = status
        result.fail(outcome, error_type)
        return web.Response(status=status, text=f"gpuledger proxy: {error_type}\n")

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, result: _Result
    ) -> web.StreamResponse:
        """Stream the upstream's answer to the client as it comes."""
        status = upstream.status
        result.status = status
        if status >= 500:
            result.fail("error", f"http_{status}")
        response = web.StreamResponse(
            status=status, reason=upstream.reason, headers=_response_headers(upstream.headers)
        )
        try:
            await response.prepare(request)
        except (ConnectionError, aiohttp.ClientConnectionError):
            result.fail("cancelled", "client_disconnected")
            return response
        content = upstream.content
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ServerTimeoutError, TimeoutError):
                result.fail("timeout", "upstream_timeout")
                _cut(request)
                return response
            except aiohttp.ClientError:
                result.fail("error", "upstream_disconnected")
                _cut(request)
                return response
            if not chunk:
                break
            try:
                await response.write(chunk)
            except (ConnectionError, aiohttp.ClientConnectionError):
                result.fail("cancelled", "client_disconnected")
                return response
        try:
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionError):
            result.fail("cancelled", "client_disconnected")
        return response


def _response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    dropped: Iterable[str] = _HOP_BY_HOP
    connection = upstream.get("Connection")
    if connection:
        dropped = _HOP_BY_HOP | {token.strip().lower() for token in connection.split(",")}
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in dropped:
            headers.add(name, _opaque(value))
    return headers


def _cut(request: web.BaseRequest) -> None:
    """End the client's connection mid-response: the upstream failed after its headers were
    sent, and a cut (not a clean end) is how the client learns the answer is incomplete."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def run_proxy(
    config: ProxyConfig,
    *,
    echo: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the proxy until SIGTERM or SIGINT (or ``stop`` is set); ``echo`` gets status lines."""
    say = echo or (lambda _line: None)
    proxy = MeteringProxy(config)
    await proxy.start()
    stopping = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stopping.set)
    host = f"[{config.listen_host}]" if ":" in config.listen_host else config.listen_host
    say(f"gpuledger proxy: http://{host}:{proxy.port} -> {config.upstream}")

    async def announce_ready() -> None:
        await proxy.wait_ready()
        if proxy.ready_ns is not None and proxy.start_ns is not None:
            init_s = (proxy.ready_ns - proxy.start_ns) / 1e9
            say(
                f"gpuledger proxy: upstream ready, {init_s:.3f} s after the "
                f"{'upstream' if proxy.start_source == 'upstream_proc' else 'proxy'} started"
            )

    announcer = asyncio.create_task(announce_ready())
    try:
        await stopping.wait()
    finally:
        announcer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announcer
        say("gpuledger proxy: stopping")
        await proxy.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
