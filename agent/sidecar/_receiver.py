"""The receiver: the sidecar's HTTP server (``http.server``, a thread per connection), its
routes, and the listen address checks (loopback unless a token is set).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import socketserver
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Final

from gpuledger import _guard
from gpuledger._errors import ConfigError

if TYPE_CHECKING:
    from gpuledger.sidecar._server import Sidecar

DEFAULT_LISTEN: Final = "127.0.0.1:4319"
DEFAULT_MAX_BODY: Final = 16 * 1024 * 1024
"""Largest request body accepted, in bytes (16 MiB: some 12,000 records)."""
RETRY_AFTER_S: Final = 2
"""``Retry-After`` of a 503 (the spool full or unwritable, or stopping): the request may succeed
again by itself (a full disk has room again once the spool is drained)."""
_REQUEST_TIMEOUT_S: Final = 30.0
"""A connection that sends nothing for this long is closed (slow or idle clients)."""


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


_ROUTES: Final = {
    "/v1/records": "POST",
    "/v1/starts": "POST",
    "/healthz": "GET",
    "/livez": "GET",
    "/metrics": "GET",
}

_OPEN_PATHS: Final = frozenset({"/healthz", "/livez"})
"""Paths that need no token (a container's health checks)."""


class Server(ThreadingHTTPServer):
    daemon_threads = True  # an idle kept-alive connection must not hold the process
    request_queue_size = 128

    def __init__(self, address: tuple[Any, ...], family: int, sidecar: Sidecar) -> None:
        self.address_family = family
        self.sidecar = sidecar
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke outside a request (reset, timed out): not worth a traceback
        on the worker's console, which is what ``socketserver`` prints by default."""

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the host's name (getfqdn), which can take seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the agent reuses one connection
    server_version = "gpuledger-sidecar"
    sys_version = ""
    timeout = _REQUEST_TIMEOUT_S
    # Headers and body leave in one write, with Nagle off: no delayed-ACK stall on keep-alive.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server: Server

    def setup(self) -> None:
        super().setup()
        self.server.sidecar._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sidecar._connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per request would be the busiest log in the worker's container."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        sidecar = self.server.sidecar
        path = self.path.split("?", 1)[0]
        allowed = _ROUTES.get(path)
        if allowed is None:
            self._error(404, f"no such path {path!r}", close=True)
            return
        if method != allowed:
            self._error(405, f"{path} takes {allowed}", close=True, headers={"Allow": allowed})
            return
        if path not in _OPEN_PATHS and not sidecar._authorised(self.headers.get("Authorization")):
            self._error(
                401,
                "missing or wrong token (Authorization: Bearer <token>)",
                close=True,
                headers={"WWW-Authenticate": "Bearer"},
            )
            return
        if not sidecar._request_begins():
            self._error(
                503,
                "the sidecar is shutting down",
                close=True,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
            return
        try:
            if path == "/healthz":
                status, answer = sidecar.health()
                self._json(status, answer)
            elif path == "/livez":
                status, answer = sidecar.live()
                self._json(status, answer)
            elif path == "/metrics":
                self._send(
                    200, sidecar.metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8"
                )
            else:
                self._post(path)
        except OSError:
            self.close_connection = True  # the client went away or stalled past the timeout
        except Exception as error:  # a bug: say so, keep serving
            _guard.log_once(
                "sidecar.http",
                "gpuledger sidecar: a request failed (a bug: please report it)",
                error,
            )
            with contextlib.suppress(Exception):
                self._error(500, f"internal error: {type(error).__name__}", close=True)
        finally:
            sidecar._request_ends()

    def _post(self, path: str) -> None:
        sidecar = self.server.sidecar
        content_type = self.headers.get("Content-Type", "")
        media, _, parameters = content_type.partition(";")
        charset = parameters.strip().lower().removeprefix("charset=").strip('"')
        if media.strip().lower() != "application/json" or charset not in ("", "utf-8"):
            self._error(415, f"expected Content-Type: application/json, got {content_type!r}", True)
            return
        if self.headers.get("Transfer-Encoding"):
            self._error(411, "send a Content-Length (chunked bodies are not accepted)", True)
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._error(411, "Content-Length required", True)
            return
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self._error(400, f"bad Content-Length {length_text!r}", True)
            return
        if length > sidecar.max_body:
            # Answered without reading the body, so the connection cannot be reused.
            sidecar._rejected(None, 413)
            self._error(
                413, f"body of {length} bytes is over the limit of {sidecar.max_body}", True
            )
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True  # the client went away mid-body
            return
        kind = "records" if path == "/v1/records" else "starts"
        status, answer = sidecar._take(kind, body)
        retry = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        self._json(status, answer, headers=retry)

    def _error(
        self, status: int, message: str, close: bool, headers: Mapping[str, str] | None = None
    ) -> None:
        self._json(status, {"error": message}, close=close, headers=headers)

    def _json(
        self,
        status: int,
        answer: Mapping[str, object],
        *,
        close: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._send(status, json.dumps(answer).encode(), "application/json", close, headers)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        close: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if close or self.server.sidecar._stopping:
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
