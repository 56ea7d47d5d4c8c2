"""GpuledgerMiddleware: FastAPI and Starlette apps served by a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import StreamingResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import gpuledger
from gpuledger.instrumentation.asgi import GpuledgerMiddleware
from tests.support.processes import HOST, free_port

MODEL_LOAD_S = 0.3
STREAM_CHUNKS = 3
STREAM_DELAY_S = 0.3


class Served:
    """An ASGI app served by uvicorn in a thread of this process (so it shares the agent)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host=HOST, port=self.port, lifespan="on", log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.url = f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """gpuledger configured with a real clock and a ledger in the test's directory."""
    path = tmp_path / "ledger.db"
    gpuledger.configure(
        ledger=str(path), gpu_metering="off", strict=True, tracing=False, metrics=False
    )
    return path


def rows(path: Path) -> list[dict[str, Any]]:
    assert gpuledger.flush(5)
    if not path.exists():
        return []
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM invocations ORDER BY rowid")]
    finally:
        connection.close()


def fastapi_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.sleep(MODEL_LOAD_S)  # the model load
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/predict")
    async def predict(payload: dict[str, int]) -> dict[str, int]:
        return {"output": payload["x"] * 2}

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.get("/boom")
    def boom() -> dict[str, str]:
        raise ValueError("boom")

    @app.get("/unavailable")
    def unavailable() -> Response:
        return Response("busy", status_code=503)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for index in range(STREAM_CHUNKS):
                if index:
                    await asyncio.sleep(STREAM_DELAY_S)
                yield f"{index} {time.time():.6f}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    app.add_middleware(GpuledgerMiddleware, user_header="X-User", tenant_header="X-Tenant")
    return app


@pytest.fixture
def fastapi_server(ledger: Path) -> Iterator[Served]:
    served = Served(fastapi_app())
    try:
        yield served
    finally:
        served.stop()


@pytest.mark.slow
def test_fastapi_requests_become_invocations(fastapi_server: Served, ledger: Path) -> None:
    """The first request is cold with the lifespan startup as its init phase; later ones warm."""
    with httpx.Client(base_url=fastapi_server.url) as client:
        first = client.post(
            "/predict",
            json={"x": 21},
            headers={"X-Request-Id": "req-1", "X-User": "alice", "X-Tenant": "acme"},
        )
        second = client.get("/items/7", headers={"X-User": "bob"})
    assert first.json() == {"output": 42}
    assert second.json() == {"item": 7}

    cold, warm = rows(ledger)
    assert cold["invocation_id"] == "req-1"
    assert cold["handler"] == "POST /predict"
    assert (cold["user_id"], cold["tenant"]) == ("alice", "acme")
    assert cold["cold"] == 1
    assert cold["outcome"] == "ok"
    phases = json.loads(cold["init_phases"])
    assert phases["startup"] >= MODEL_LOAD_S
    assert cold["init_duration_s"] >= phases["startup"]

    assert warm["handler"] == "GET /items/{item_id}"  # the route's template, not the path
    assert warm["cold"] == 0
    assert warm["init_duration_s"] is None
    assert warm["user_id"] == "bob"
    assert warm["tenant"] is None
    assert warm["invocation_id"] != "req-1"


@pytest.mark.slow
def test_fastapi_errors_and_exclusions(fastapi_server: Served, ledger: Path) -> None:
    """An exception is a 500 to the client and an error row; a 503 is an error; /health skipped."""
    with httpx.Client(base_url=fastapi_server.url) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/unavailable").status_code == 503
        # Last: uvicorn closes the connection after an exception in the app.
        assert client.get("/boom").status_code == 500

    unavailable, boom = rows(ledger)
    assert (boom["handler"], boom["outcome"], boom["error_type"]) == (
        "GET /boom",
        "error",
        "ValueError",
    )
    assert unavailable["cold"] == 1  # the health check did not take the cold start
    assert (unavailable["outcome"], unavailable["error_type"]) == ("error", "http_503")


@pytest.mark.slow
def test_streaming_keeps_streaming(fastapi_server: Served, ledger: Path) -> None:
    """The first chunk arrives before the last is produced; the invocation covers the stream."""
    arrivals: list[tuple[float, str]] = []
    with (
        httpx.Client(base_url=fastapi_server.url) as client,
        client.stream("GET", "/stream") as response,
    ):
        for line in response.iter_lines():
            arrivals.append((time.time(), line))
    assert len(arrivals) == STREAM_CHUNKS
    first_arrived = arrivals[0][0]
    last_produced = float(arrivals[-1][1].split()[1])
    assert first_arrived < last_produced

    (row,) = rows(ledger)
    assert row["handler"] == "GET /stream"
    assert row["outcome"] == "ok"
    assert row["duration_s"] >= (STREAM_CHUNKS - 1) * STREAM_DELAY_S * 0.9


@pytest.mark.slow
def test_starlette_wrapped_outside(ledger: Path) -> None:
    """Wrapping a plain Starlette app (outside its error middleware) records the same outcomes."""

    async def hello(request: Request) -> PlainTextResponse:
        gpuledger.tag(user="from-handler")  # the invocation is current inside the app
        return PlainTextResponse("hello")

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("boom")

    app = Starlette(routes=[Route("/", hello), Route("/boom", boom), Route("/ping", hello)])
    served = Served(GpuledgerMiddleware(app, exclude_paths=["/ping"]))
    try:
        with httpx.Client(base_url=served.url) as client:
            assert client.get("/", headers={"X-Request-Id": "abc"}).text == "hello"
            assert client.get("/ping").status_code == 200
            assert client.get("/boom").status_code == 500
    finally:
        served.stop()
    hello_row, boom_row = rows(ledger)
    assert (hello_row["handler"], hello_row["invocation_id"], hello_row["user_id"]) == (
        "GET /",
        "abc",
        "from-handler",
    )
    assert (boom_row["outcome"], boom_row["error_type"]) == ("error", "RuntimeError")


def test_exception_is_reraised_unchanged(ledger: Path) -> None:
    """The app's exception object leaves the middleware as it came."""
    raised = KeyError("x")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise raised

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with pytest.raises(KeyError) as caught:
        asyncio.run(GpuledgerMiddleware(app)(scope, receive, send))
    assert caught.value is raised
    (row,) = rows(ledger)
    assert (row["outcome"], row["error_type"]) == ("error", "KeyError")


def test_websocket_passes_through(ledger: Path) -> None:
    """A websocket scope reaches the app with the server's own receive and send."""
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.extend([scope, receive, send])

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "websocket", "path": "/ws", "headers": []}
    asyncio.run(GpuledgerMiddleware(app)(scope, receive, send))
    assert seen == [scope, receive, send]
    assert rows(ledger) == []


def test_bad_options_raise() -> None:
    """Options that cannot work are the user's mistake, raised at construction."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(TypeError, match="user_header"):
        GpuledgerMiddleware(app, user_header="")
    with pytest.raises(TypeError, match="exclude_paths"):
        GpuledgerMiddleware(app, exclude_paths="/health")
