"""Processes the tests start on 127.0.0.1, started and stopped in one way (tests only).

Every server of ``tests/support`` (Redis, PostgreSQL, the OTLP receivers, the model servers)
and every worker a test runs in the background starts through :func:`spawn`: a new session (so
Ctrl-C reaches only pytest), its output added to a log, and its pid kept so that an ``atexit``
safety net kills whatever is still running when the interpreter exits. :func:`stop` ends one by
pid; :func:`start_on_free_ports` starts a server on free ports and waits until it answers,
trying new ports if another process took one first.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 3  # a free port can be taken by someone else before the server binds it
_PORT_IN_USE = re.compile(
    r"address already in use|could not bind|unable to bind|failed to bind|could not create any",
    re.IGNORECASE,
)
"""How the servers we start say that their port was taken (PostgreSQL, Redis, rotel, aiohttp)."""

_running: dict[int, subprocess.Popen[bytes]] = {}


def _kill_leftovers() -> None:
    """Safety net (atexit): SIGKILL every process :func:`spawn` started that is still running."""
    for proc in list(_running.values()):
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    _running.clear()


atexit.register(_kill_leftovers)


class ServerStartError(RuntimeError):
    """A server exited or did not answer in time; the message ends with its log's tail."""


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set (to anything but empty, 0 or false)."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false"}


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    (port,) = free_ports(1)
    return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports of 127.0.0.1 that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on ``port`` of 127.0.0.1 now."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(empty log at {path})"


def spawn(argv: Sequence[str], log: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session (Ctrl-C reaches only pytest), its output added to ``log``."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen,
        )
    _running[proc.pid] = proc
    return proc


def stop(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S
) -> None:
    """Send ``sig`` to ``proc`` by pid, wait up to ``timeout`` s, then SIGKILL it."""
    try:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
    finally:
        _running.pop(proc.pid, None)


def wait_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    what: str,
    log: Path,
    timeout: float,
) -> None:
    """Poll ``ready()`` until it is true; stop ``proc`` and raise if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            _running.pop(proc.pid, None)
            raise ServerStartError(
                f"{what} exited with status {proc.returncode} before answering; "
                f"log {log}:\n{log_tail(log)}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            stop(proc, signal.SIGKILL)
            raise ServerStartError(
                f"{what} did not answer within {timeout:g} s; log {log}:\n{log_tail(log)}"
            )
        time.sleep(0.05)


def start_on_free_ports(
    count: int,
    argv_for: Callable[[list[int]], Sequence[str]],
    ready_for: Callable[[list[int]], Callable[[], bool]],
    what: str,
    log: Path,
    timeout: float,
    **popen: Any,
) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Start a server on ``count`` free ports and wait until it answers; retry on new ports if
    one got taken before the server bound it (its log says so)."""
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        ports = free_ports(count)
        proc = spawn(argv_for(ports), log, **popen)
        try:
            wait_ready(proc, ready_for(ports), what, log, timeout)
        except ServerStartError:
            if attempt < _PORT_ATTEMPTS and _PORT_IN_USE.search(log_tail(log, 10)):
                continue
            raise
        return proc, ports
    raise AssertionError("unreachable")  # pragma: no cover
