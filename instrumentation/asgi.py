"""ASGI middleware: each HTTP request an invocation, the lifespan startup the init phase.

Pure ASGI (no Starlette import), so it wraps any ASGI application: FastAPI, Starlette, or a
model server of your own::

    from gpuledger.instrumentation.asgi import GpuledgerMiddleware

    app = FastAPI(lifespan=load_model)
    app.add_middleware(GpuledgerMiddleware, user_header="x-user-id")
    # or, for any ASGI app: app = GpuledgerMiddleware(app)

What is recorded:

- ``lifespan``: from the server's ``lifespan.startup`` to the app's ``lifespan.startup.complete``
  (the app's startup handlers: the model load) is the init phase ``startup``. The cold start
  (``init_duration_s``) still runs from the process's real start; the first request carries it.
  gpuledger is configured when the startup begins, so NVML opens then, not on a request.
- ``http``: one invocation per request, named ``METHOD route`` (the route's template where the
  framework puts it in the scope, as FastAPI does; else the path). It ends when the last body
  chunk is sent, so a streaming response keeps streaming and its invocation covers the stream.
  Its id is the ``X-Request-Id`` header when present; user and tenant come from the headers
  named by ``user_header`` and ``tenant_header`` (off by default). Bodies are never read.
- Outcome: a 5xx response is ``error`` (``http_<status>``); an exception is ``error`` (its type,
  also when an error middleware sent the 500 before re-raising it) and is re-raised
  unchanged; a client that went away mid-response is ``cancelled``.
- Paths in ``exclude_paths`` (health checks by default) and ``websocket`` scopes pass through
  untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from gpuledger import _config as agent_module
from gpuledger import _guard
from gpuledger._agent import HandlerSpec
from gpuledger._handler import phase
from gpuledger._refusal import refusal

__all__ = ["DEFAULT_EXCLUDE_PATHS", "STARTUP_PHASE", "GpuledgerMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STARTUP_PHASE = "startup"
"""The name of the init phase the lifespan startup is recorded as."""
DEFAULT_EXCLUDE_PATHS: tuple[str, ...] = (
    "/health",
    "/healthz",
    "/livez",
    "/readyz",
    "/ready",
    "/ping",
    "/metrics",
)
"""Health checks and scrapes: not requests anyone pays for, and never the cold one."""


def _header_name(value: str | None, option: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"GpuledgerMiddleware({option}=...) takes a header name, got {value!r}")
    return value.strip().lower().encode("latin-1")


class GpuledgerMiddleware:
    """Record each HTTP request of ``app`` as a gpuledger invocation (see the module docs).

    ``request_id_header``: the header whose value is the invocation id (``X-Request-Id``; None:
    always generated). ``user_header``, ``tenant_header``: headers naming the user and tenant
    (None: off). ``exclude_paths``: paths not recorded; one ending in ``*`` is a prefix.
    """

    __slots__ = (
        "_exclude_exact",
        "_exclude_prefixes",
        "_request_id_header",
        "_tenant_header",
        "_user_header",
        "app",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        request_id_header: str | None = "x-request-id",
        user_header: str | None = None,
        tenant_header: str | None = None,
        exclude_paths: Iterable[str] = DEFAULT_EXCLUDE_PATHS,
    ) -> None:
        if not callable(app):
            raise TypeError(f"GpuledgerMiddleware wraps an ASGI application, got {app!r}")
        self.app = app
        self._request_id_header = _header_name(request_id_header, "request_id_header")
        self._user_header = _header_name(user_header, "user_header")
        self._tenant_header = _header_name(tenant_header, "tenant_header")
        if isinstance(exclude_paths, str):
            raise TypeError("GpuledgerMiddleware(exclude_paths=...) takes a list of paths")
        paths = list(exclude_paths)
        self._exclude_exact = frozenset(path for path in paths if not path.endswith("*"))
        self._exclude_prefixes = tuple(path[:-1] for path in paths if path.endswith("*"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "http":
            path = scope.get("path", "")
            if path in self._exclude_exact or (
                self._exclude_prefixes and path.startswith(self._exclude_prefixes)
            ):
                await self.app(scope, receive, send)
                return
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- lifespan -----------------------------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        startup: list[phase] = []

        def close_startup() -> None:
            while startup:
                startup.pop().__exit__(None, None, None)

        async def lifespan_receive() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.startup" and not startup:
                try:
                    agent_module.get_agent()  # configure now: NVML opens during init
                    started = phase(STARTUP_PHASE)
                    started.__enter__()
                    startup.append(started)
                except Exception as error:
                    _guard.record_failure("asgi.lifespan", error)
            return message

        async def lifespan_send(message: Message) -> None:
            if message.get("type") in ("lifespan.startup.complete", "lifespan.startup.failed"):
                close_startup()
            await send(message)

        try:
            await self.app(scope, lifespan_receive, lifespan_send)
        finally:
            close_startup()

    # -- http ---------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        agent = agent_module.get_agent()
        if agent is None:
            await self.app(scope, receive, send)
            return
        spec = HandlerSpec(f"{scope.get('method', 'GET')} {scope.get('path', '')}")
        invocation = agent.enter(spec, (), {})
        if invocation is None:
            await self.app(scope, receive, send)
            return
        try:
            self._read_headers(invocation, scope)
        except Exception as error:
            _guard.record_failure("asgi.headers", error)
        refused = agent.check_budget(invocation)
        if refused is not None:  # an enforced budget is spent: 429, the app never runs
            agent.deactivate(invocation)
            agent.exit(invocation, refused, active=False)
            status, headers, body = refusal(refused)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(name.encode(), value.encode()) for name, value in headers],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        ended = False
        disconnected = False

        def end(error: BaseException | None) -> None:
            # Called once: at the last body chunk, or when the app returns or raises first.
            nonlocal ended
            if ended:
                return
            ended = True
            try:
                self._name_from_route(invocation, scope, agent)
                if error is not None and disconnected:
                    invocation.outcome = "cancelled"
                    invocation.error_type = "client_disconnected"
                    error = None
            except Exception as failure:
                _guard.record_failure("asgi.end", failure)
            # active=False: the last chunk may be sent from another task (Starlette streams
            # in a task group); the context is restored below, in this task.
            agent.exit(invocation, error, active=False)

        async def traced_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            if message.get("type") == "http.disconnect" and not ended:
                disconnected = True
            return message

        async def traced_send(message: Message) -> None:
            nonlocal disconnected
            kind = message.get("type")
            if kind == "http.response.start":
                status = message.get("status")
                if type(status) is int and status >= 500:
                    invocation.outcome = "error"
                    invocation.error_type = f"http_{status}"
            try:
                await send(message)
            except OSError:
                # The server's send fails once the client is gone (ASGI 2.4).
                disconnected = True
                raise
            # A 5xx is ended when the app returns or raises, an instant later: an error
            # middleware inside the server sends its 500 first, then re-raises the error.
            if (
                kind == "http.response.body"
                and not message.get("more_body", False)
                and invocation.outcome != "error"
            ):
                end(None)

        try:
            await self.app(scope, traced_receive, traced_send)
        except BaseException as error:
            end(error)
            raise
        finally:
            agent.deactivate(invocation)
        if not ended:
            if disconnected:
                invocation.outcome = "cancelled"
                invocation.error_type = "client_disconnected"
            end(None)

    def _read_headers(self, invocation: Any, scope: Scope) -> None:
        wanted = (self._request_id_header, self._user_header, self._tenant_header)
        if wanted == (None, None, None):
            return
        found: dict[bytes, str] = {}
        for name, value in scope.get("headers") or ():
            if name in wanted and name not in found:
                found[name] = value.decode("latin-1")
        if self._request_id_header is not None and found.get(self._request_id_header):
            invocation._invocation_id = found[self._request_id_header]
        if self._user_header is not None and found.get(self._user_header):
            invocation.user_id = found[self._user_header]
        if self._tenant_header is not None and found.get(self._tenant_header):
            invocation.tenant = found[self._tenant_header]

    @staticmethod
    def _name_from_route(invocation: Any, scope: Scope, agent: Any) -> None:
        """Name the invocation by its route template where the router left it in the scope."""
        template = getattr(scope.get("route"), "path", None)
        if not isinstance(template, str):
            return
        name = f"{scope.get('method', 'GET')} {template}"
        if name != invocation.handler:
            invocation.handler = name
            if invocation.span is not None:
                invocation.span.update_name(name)
