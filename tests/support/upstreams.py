"""Real model servers on 127.0.0.1 for the proxy's tests: Cog, Potassium and a plain HTTP server.

The servers run as their own processes, as they would behind ``gpuledger proxy``: each listens on
a free port of 127.0.0.1 only, writes its log in the test's temporary directory, and is stopped by
pid at teardown (SIGTERM, then SIGKILL of its process group: Cog runs its predictor in a child);
``tests/support/processes.py``'s ``atexit`` safety net kills whatever is still running when
pytest exits.

Cog and Potassium pin dependencies of their own, so each lives in a venv of its own, never the
project's: made once per machine under ``cache_dir()`` (``python -m venv``, then ``pip install``
of the pinned version, each step time-bounded) and reused after. The first run of the slow tests
makes both (about 15 s with a warm pip cache, a minute from PyPI); later runs start at once.
Where a venv cannot be made (no PyPI), the tests that need it are skipped, or fail when the
``CI`` environment variable is set.

Fixtures:

- ``cog_python`` (session): the Python of a venv with ``cog==COG_VERSION``. Cog 0.23's server is
  coglet (Rust, in the ``coglet`` wheel), started without Docker as the image does:
  ``python -m cog.server.http --host 127.0.0.1`` with ``PORT`` and
  ``COG_PREDICT_TYPE_STUB=predict.py:Predictor`` in the environment, the venv's ``bin`` first on
  ``PATH``. It listens at once and answers ``/health-check`` with ``"status": "STARTING"`` until
  ``setup()`` has returned, then ``"READY"``.
- ``potassium_python`` (session): the Python of a venv with ``potassium==POTASSIUM_VERSION``
  (Banana's Flask-based framework). ``app.serve(host, port)`` runs ``@app.init`` before it
  binds, so its first answer (any: ``GET /`` is 405) means ready.
- ``upstreams`` (function): an ``Upstreams`` factory, ``.cog(python, predictor=...)``,
  ``.potassium(python, app=...)``, ``.plain(ready_after=0)``, each returning an ``Upstream``
  as soon as its process is started (not yet ready: the proxy's tests measure that), all
  stopped at teardown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from .processes import HOST, ServerStartError, free_port, log_tail, spawn, stop
from .venvs import PYTHON_VERSION, cached_venv, clean_env, venv_or_skip

COG_VERSION = "0.23.1"
POTASSIUM_VERSION = "0.5.0"
READY_TIMEOUT_S = 60.0

COG_SETUP_S = 0.5
"""How long the test predictor's ``setup()`` sleeps: the model load of its cold start."""
POTASSIUM_INIT_S = 0.5
"""How long the test app's ``@app.init`` sleeps."""

COG_PREDICTOR = f"""
import time

from cog import BasePredictor


class Predictor(BasePredictor):
    def setup(self) -> None:
        time.sleep({COG_SETUP_S})

    def predict(self, x: int) -> int:
        if x < 0:
            raise ValueError("x must not be negative")
        return x * 2
"""

POTASSIUM_APP = f"""
import os
import time

from potassium import Potassium, Request, Response

app = Potassium("gpuledger-test")


@app.init
def init():
    time.sleep({POTASSIUM_INIT_S})
    return {{"factor": 2}}


@app.handler("/")
def handler(context, request: Request) -> Response:
    x = request.json["x"]
    if x < 0:
        raise ValueError("x must not be negative")
    return Response(json={{"output": x * context["factor"], "request_id": request.id}}, status=200)


@app.handler("/stream")
def stream(context, request: Request) -> Response:
    def tokens():
        for index in range(3):
            yield f"data: {{index}} {{time.time():.6f}}\\n\\n".encode()
            time.sleep(0.3)

    return Response(body=tokens(), status=200, headers={{"Content-Type": "text/event-stream"}})


if __name__ == "__main__":
    app.serve(host="127.0.0.1", port=int(os.environ["PORT"]))
"""

PLAIN_SERVER = '''
"""A plain aiohttp server with the edge cases the proxy must pass through."""

import argparse
import asyncio
import gzip
import json
import os
import random
import time

from aiohttp import web


async def root(request):
    return web.Response(text="ok")


async def echo(request):
    body = await request.read()
    return web.Response(body=body, content_type=request.content_type)


async def headers(request):
    return web.json_response({name: value for name, value in request.headers.items()})


async def sleep(request):
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.Response(text="slept")


async def status(request):
    code = int(request.match_info["code"])
    return web.Response(status=code, text=f"status {code}")


async def stream(request):
    # Each chunk says when it was sent, so a client can tell it got one before the last left.
    count = int(request.query.get("n", "4"))
    delay = float(request.query.get("delay", "0.3"))
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    for index in range(count):
        if index:
            await asyncio.sleep(delay)
        await response.write(f"{index} {time.time():.6f}\\n".encode())
    await response.write_eof()
    return response


async def payload(request):
    size = int(request.query.get("n", "1048576"))
    body = random.Random(size).randbytes(size)
    return web.Response(body=body, content_type="application/octet-stream")


async def gzipped(request):
    body = gzip.compress(b"compressed " * 1000, mtime=0)
    return web.Response(body=body, headers={"Content-Encoding": "gzip"}, content_type="text/plain")


async def cookies(request):
    response = web.Response(text="cookies")
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/")
    response.headers["X-Hop"] = "should not pass"
    response.headers["Connection"] = "X-Hop"
    return response


async def redirect(request):
    raise web.HTTPFound("/elsewhere")


async def die(request):
    # The process dies before answering: a crash mid-request.
    os._exit(3)


async def die_streaming(request):
    # The process dies after its headers and one chunk: a crash mid-response.
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    await response.write(b"first chunk\\n")
    await asyncio.sleep(0.2)
    os._exit(3)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-after", type=float, default=0.0)
    args = parser.parse_args()
    time.sleep(args.ready_after)  # init work before the server listens
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/", root)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/headers", headers)
    app.router.add_get("/sleep", sleep)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/stream", stream)
    app.router.add_get("/bytes", payload)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/redirect", redirect)
    app.router.add_route("*", "/die", die)
    app.router.add_get("/die-streaming", die_streaming)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


main()
'''


def server_venv(requirement: str, check: str) -> Path:
    """The Python of a venv holding ``requirement`` (``cog==0.23.1``), made on first use; the
    ``check`` module must import. Raises VenvUnavailable."""
    venv = cached_venv(
        f"{requirement.replace('==', '-')}-py{PYTHON_VERSION}",
        [requirement],
        lambda venv: [str(venv / "bin" / "python"), "-c", f"import {check}"],
    )
    return venv / "bin" / "python"


def _venv_or_skip(requirement: str, check: str) -> Path:
    return venv_or_skip(lambda: server_venv(requirement, check), requirement)


@pytest.fixture(scope="session")
def cog_python() -> Path:
    """The Python of a venv with ``cog==COG_VERSION`` (made once per machine)."""
    return _venv_or_skip(f"cog=={COG_VERSION}", "cog.server.http")


@pytest.fixture(scope="session")
def potassium_python() -> Path:
    """The Python of a venv with ``potassium==POTASSIUM_VERSION`` (made once per machine)."""
    return _venv_or_skip(f"potassium=={POTASSIUM_VERSION}", "potassium")


@dataclasses.dataclass
class Upstream:
    """A model server process on 127.0.0.1."""

    what: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    init_s: float
    """How long the server's own init work takes (its setup() or @app.init sleep), seconds."""

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    def wait_until(self, path: str, accept: Callable[[int, bytes], bool], timeout: float) -> None:
        """Poll ``GET path`` until ``accept(status, body)``; raise ServerStartError if the
        process exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"{self.what} exited with status {self.proc.returncode}; "
                    f"log {self.log}:\n{log_tail(self.log)}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}{path}", timeout=2) as response:
                    if accept(response.status, response.read()):
                        return
            except urllib.error.HTTPError as error:
                if accept(error.code, error.read()):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{self.what} not ready within {timeout:g} s; log {self.log}:\n"
                    f"{log_tail(self.log)}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of its process group (its children too)."""
        stop(self.proc, signal.SIGTERM, timeout=5)
        # start_new_session made the server a group leader: its group id is its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class Upstreams:
    """Starts model servers for one test and stops them all after it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Upstream] = []

    def _start(
        self,
        what: str,
        argv: Sequence[str],
        env: dict[str, str],
        cwd: Path,
        port: int,
        init_s: float,
    ) -> Upstream:
        log = cwd / f"{what}.log"
        proc = spawn(argv, log, env=env, cwd=cwd)
        upstream = Upstream(what, proc, port, log, init_s)
        self.started.append(upstream)
        return upstream

    def cog(self, python: Path, predictor: str = COG_PREDICTOR) -> Upstream:
        """Cog's HTTP server (coglet) for ``predictor``, started as its image starts it."""
        app = self.workdir / "cog-app"
        app.mkdir(exist_ok=True)
        (app / "predict.py").write_text(textwrap.dedent(predictor), encoding="utf-8")
        port = free_port()
        env = {
            **clean_env(),
            "PORT": str(port),
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        argv = [str(python), "-m", "cog.server.http", "--host", HOST]
        return self._start("cog", argv, env, app, port, COG_SETUP_S)

    def potassium(self, python: Path, app_source: str = POTASSIUM_APP) -> Upstream:
        """A Potassium app served by ``app.serve()`` on 127.0.0.1."""
        app = self.workdir / "potassium-app"
        app.mkdir(exist_ok=True)
        (app / "app.py").write_text(textwrap.dedent(app_source), encoding="utf-8")
        port = free_port()
        env = {**clean_env(), "PORT": str(port), "PYTHONUNBUFFERED": "1"}
        argv = [str(python), "app.py"]
        return self._start("potassium", argv, env, app, port, POTASSIUM_INIT_S)

    def plain(self, ready_after: float = 0.0, port: int | None = None) -> Upstream:
        """The plain aiohttp server (this project's venv), listening after ``ready_after`` s."""
        script = self.workdir / "plain_server.py"
        script.write_text(PLAIN_SERVER, encoding="utf-8")
        chosen = port or free_port()
        argv = [
            sys.executable, str(script), "--port", str(chosen), "--ready-after", str(ready_after)
        ]  # fmt: skip
        return self._start(f"plain-{chosen}", argv, clean_env(), self.workdir, chosen, ready_after)

    def close(self) -> None:
        """Stop every server started."""
        for upstream in self.started:
            upstream.stop()
        self.started.clear()


@pytest.fixture
def upstreams(tmp_path: Path) -> Iterator[Upstreams]:
    """A factory of model servers for this test; all are stopped after it."""
    factory = Upstreams(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
