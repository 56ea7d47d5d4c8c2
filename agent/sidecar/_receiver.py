"""The receiver: the sidecar's HTTP server, its routes, and the listen address checks (loopback
unless a token is set).

The server is aiohttp's (its low-level ``web.Server``) on an event loop of its own thread: an idle
kept-alive connection costs a socket and a little memory, not a thread, and what blocks (the
spool's commit, reading the spool's counts) runs on a small pool of threads. So the threads are
bounded (the loop's and at most :data:`_WORK_THREADS`) whatever the clients do. Connections are
bounded too: past :data:`DEFAULT_MAX_CONNECTIONS` (or what the open-file limit leaves, less a
reserve for the spool's and ledger's files), a new connection closes the one that has been idle
longest, so local clients that open connections and send nothing cannot starve the workers'
POSTs or the consumers of file descriptors. An idle connection is closed after
:data:`_REQUEST_TIMEOUT_S`, and so is a body that does not arrive within it.

The body is read only after its ``Content-Length`` was checked against the limit (a chunked body
is refused), and parsed only after a count of its JSON values (:func:`json_values_bound`) was
checked against the limit too: parsing memory is bounded by the body limit, not by what a body of
``[]`` items would make of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from gpuledger import _guard
from gpuledger._errors import ConfigError, SidecarError

if TYPE_CHECKING:
    from aiohttp import web

    from gpuledger.sidecar._server import Sidecar

DEFAULT_LISTEN: Final = "127.0.0.1:4319"
DEFAULT_MAX_BODY: Final = 16 * 1024 * 1024
"""Largest request body accepted, in bytes (16 MiB: some 12,000 records; the agent sends at most
2,048 in one request)."""
DEFAULT_MAX_CONNECTIONS: Final = 1000
"""Open connections kept at most; a new one past this closes the longest idle."""
BYTES_PER_VALUE: Final = 10
"""A body may hold at most ``max_body // BYTES_PER_VALUE`` JSON values (records hold one per 12
bytes or more: 11.6 for a bare record, 12.9 for one with every field), so parsing one, at some 64
bytes for the smallest Python object, needs at most ~6.4 times the body limit."""
RETRY_AFTER_S: Final = 2
"""``Retry-After`` of a 503 (the spool full or unwritable, or stopping): the request may succeed
again by itself (a full disk has room again once the spool is drained)."""
_REQUEST_TIMEOUT_S: Final = 30.0
"""A connection that sends nothing for this long is closed (slow or idle clients)."""
_FD_RESERVE: Final = 128
"""File descriptors kept back from connections: the spool, the ledger, their WAL and SHM, the
OTLP exporter's sockets (some 20 in all), and the connections accepted in the turns of the loop
before one closed to make room has given its descriptor back (up to three of
:data:`_ACCEPT_BATCH`)."""
_ACCEPT_BATCH: Final = 16
"""Connections asyncio accepts in one turn of its loop (``create_server``'s ``backlog``, also the
listen queue: the agent keeps its connection open, so few arrive at once)."""
_WORK_THREADS: Final = 4
"""Threads that run what blocks (a spool commit); SQLite takes one writer at a time anyway."""
_SERVER_HEADER: Final = "gpuledger-sidecar"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> ``(host, port)``; raises ValueError."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT (e.g. {DEFAULT_LISTEN}), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"the port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"the port {port} is out of range (0-65535)")
    return host, port


def resolve_address(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ConfigError("listen", f"{host}:{port}", f"cannot resolve {host!r}: {error}") from None
    return [(family, address) for family, _type, _proto, _name, address in found]


def is_loopback(addresses: Iterable[tuple[int, tuple[Any, ...]]]) -> bool:
    try:
        return all(ipaddress.ip_address(address[0]).is_loopback for _, address in addresses)
    except ValueError:
        return False


def json_values_bound(body: bytes) -> int:
    """An upper bound on the values (and keys) a JSON document holds, counted at C speed without
    parsing it: after the first, every value follows a ``,`` or a ``:``, or opens a container.
    Those bytes inside strings make it larger, never smaller."""
    return body.count(b",") + body.count(b":") + body.count(b"[") + body.count(b"{") + 1


def connection_limit(wanted: int) -> int:
    """``wanted``, or fewer when the process's open-file limit would not leave
    :data:`_FD_RESERVE` descriptors beside that many connections."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(min(wanted, soft - _FD_RESERVE), 1)


_ROUTES: Final = {
    "/v1/records": "POST",
    "/v1/starts": "POST",
    "/healthz": "GET",
    "/livez": "GET",
    "/metrics": "GET",
}

_OPEN_PATHS: Final = frozenset({"/healthz", "/livez"})
"""Paths that need no token (a container's health checks)."""


class _Response:
    """What a route answers: status, body, content type, extra headers, and whether the
    connection closes after it."""

    __slots__ = ("body", "close", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = dict(headers or {})
        self.close = close


def _json(
    status: int,
    answer: Mapping[str, object],
    headers: Mapping[str, str] | None = None,
    close: bool = False,
) -> _Response:
    return _Response(status, json.dumps(answer).encode(), headers=headers, close=close)


def _error(
    status: int, message: str, headers: Mapping[str, str] | None = None, close: bool = True
) -> _Response:
    return _json(status, {"error": message}, headers, close)


class Receiver:
    """The sidecar's HTTP server: :meth:`start` binds and serves on a thread of its own,
    :meth:`stop` stops accepting, lets requests in flight finish and closes every connection."""

    def __init__(self, sidecar: Sidecar, *, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self._sidecar = sidecar
        self.max_connections = connection_limit(max_connections)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._server: Any = None  # aiohttp.web.Server, made on the loop
        self._work = concurrent.futures.ThreadPoolExecutor(
            _WORK_THREADS, thread_name_prefix="gpuledger-sidecar-work"
        )
        # Open connections (aiohttp's RequestHandler) -> when each was last busy (monotonic s);
        # touched only on the loop's thread.
        self._idle_since: dict[Any, float] = {}
        self._busy: set[Any] = set()
        self.address: tuple[str, int] = ("", 0)

    # -- lifecycle (the caller's thread) -----------------------------------------------------

    def start(self, family: int, address: tuple[Any, ...]) -> None:
        """Bind ``address`` (raises OSError) and serve it until :meth:`stop`."""
        try:
            import aiohttp  # noqa: F401, PLC0415  (the sidecar process only)
        except ImportError as error:
            raise SidecarError(
                "the sidecar's server needs aiohttp, a dependency of gpuledger, which is not "
                "installed: pip install 'aiohttp>=3.9.3'"
            ) from error
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_ACCEPT_BATCH)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        bound = sock.getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run, args=(loop,), name="gpuledger-sidecar-http", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(sock), loop).result(timeout=30)

    def stop(self, timeout_s: float) -> None:
        """Stop accepting; give requests in flight up to ``timeout_s`` to finish (their spool
        commit done, the answer sent); close every connection. Idempotent."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(timeout_s), loop).result(
                timeout=timeout_s + 5.0
            )
        except Exception as error:  # a stop must finish: what is left is closed with the loop
            _guard.log_once("sidecar.http.stop", "gpuledger sidecar: stopping the server", error)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(5.0)
            self._work.shutdown(wait=True)
            if not loop.is_running():
                loop.close()

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    # -- on the loop ---------------------------------------------------------------------------

    async def _open(self, sock: socket.socket) -> None:
        from aiohttp import web  # noqa: PLC0415  (the sidecar process only, not the worker)

        receiver = self

        class _Server(web.Server):
            """aiohttp's server, telling the receiver of each connection made and lost."""

            def connection_made(self, handler: Any, transport: Any) -> None:
                super().connection_made(handler, transport)
                receiver._opened(handler)

            def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
                super().connection_lost(handler, exc)
                receiver._closed(handler)

        self._server = _Server(
            self._handle,
            keepalive_timeout=_REQUEST_TIMEOUT_S,
            access_log=None,  # one line per request would be the busiest log in the container
        )
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._server, sock=sock, backlog=_ACCEPT_BATCH)

    async def _close(self, timeout_s: float) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            self._server.pre_shutdown()  # idle connections close now, busy ones after answering
            await self._server.shutdown(timeout_s)

    def _opened(self, handler: Any) -> None:
        self._idle_since[handler] = time.monotonic()
        if len(self._idle_since) <= self.max_connections:
            return
        idle = [each for each in self._idle_since if each not in self._busy and each is not handler]
        if idle:
            oldest = min(idle, key=self._idle_since.__getitem__)
            # Forgotten now: its socket closes on the loop's next turn, after more accepts.
            del self._idle_since[oldest]
            self._sidecar._counters.add("connections_evicted")
            oldest.force_close()

    def _closed(self, handler: Any) -> None:
        self._idle_since.pop(handler, None)
        self._busy.discard(handler)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        from aiohttp import web  # noqa: PLC0415

        connection = request.protocol
        self._busy.add(connection)
        try:
            answer = await self._dispatch(request)
        finally:
            self._busy.discard(connection)
            if connection in self._idle_since:
                self._idle_since[connection] = time.monotonic()
        response = web.Response(
            status=answer.status,
            body=answer.body,
            headers={
                "Content-Type": answer.content_type,
                "Server": _SERVER_HEADER,
                **answer.headers,
            },
        )
        if answer.close or self._sidecar._stopping:
            response.force_close()
        return response

    async def _blocking(self, call: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._work, call, *args)

    async def _dispatch(self, request: web.BaseRequest) -> _Response:
        sidecar = self._sidecar
        path = request.rel_url.path
        allowed = _ROUTES.get(path)
        if allowed is None:
            return _error(404, f"no such path {path!r}")
        if request.method != allowed:
            return _error(405, f"{path} takes {allowed}", {"Allow": allowed})
        token = request.headers.get("Authorization")
        if path not in _OPEN_PATHS and not sidecar._authorised(token):
            return _error(
                401,
                "missing or wrong token (Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
            )
        if not sidecar._request_begins():
            return _error(503, "the sidecar is shutting down", {"Retry-After": str(RETRY_AFTER_S)})
        try:
            if path == "/healthz":
                return _json(*await self._blocking(sidecar.health))
            if path == "/livez":
                return _json(*sidecar.live())
            if path == "/metrics":
                text = await self._blocking(sidecar.metrics_text)
                return _Response(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
            return await self._post(request, path)
        except (ConnectionError, asyncio.IncompleteReadError):
            return _error(400, "the client went away mid-request")
        except Exception as error:  # a bug: say so, keep serving
            _guard.log_once(
                "sidecar.http",
                "gpuledger sidecar: a request failed (a bug: please report it)",
                error,
            )
            return _error(500, f"internal error: {type(error).__name__}")
        finally:
            sidecar._request_ends()

    async def _post(self, request: web.BaseRequest, path: str) -> _Response:
        sidecar = self._sidecar
        content_type = request.headers.get("Content-Type", "")
        media, _, parameters = content_type.partition(";")
        charset = parameters.strip().lower().removeprefix("charset=").strip('"')
        if media.strip().lower() != "application/json" or charset not in ("", "utf-8"):
            return _error(415, f"expected Content-Type: application/json, got {content_type!r}")
        if request.headers.get("Transfer-Encoding"):
            return _error(411, "send a Content-Length (chunked bodies are not accepted)")
        length_text = request.headers.get("Content-Length")
        if length_text is None:
            return _error(411, "Content-Length required")
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            return _error(400, f"bad Content-Length {length_text!r}")
        if length > sidecar.max_body:
            # Answered without reading the body, so the connection cannot be reused.
            sidecar._rejected(None, 413)
            return _error(413, f"body of {length} bytes is over the limit of {sidecar.max_body}")
        try:
            body = await asyncio.wait_for(
                request.content.readexactly(length), timeout=_REQUEST_TIMEOUT_S
            )
        except TimeoutError:
            return _error(408, f"the body did not arrive within {_REQUEST_TIMEOUT_S:g} s")
        values = json_values_bound(body)
        most = max(sidecar.max_body // BYTES_PER_VALUE, 1)
        if values > most:
            sidecar._rejected(None, 413)
            return _error(
                413,
                f"the body holds up to {values} JSON values, over the limit of {most} "
                f"(one per {BYTES_PER_VALUE} bytes of the body limit, {sidecar.max_body})",
            )
        kind = "records" if path == "/v1/records" else "starts"
        status, answer = await self._blocking(sidecar._take, kind, body)
        retry = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        return _json(status, answer, retry)
