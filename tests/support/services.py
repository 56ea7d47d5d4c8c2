"""Real servers on 127.0.0.1 for tests: redis-server, PostgreSQL and moto's S3 server.

Loaded for every test module by ``pytest_plugins`` in ``tests/conftest.py``. Each server listens on
a free port of 127.0.0.1 only, keeps its files (and its log) in a temporary directory, and is
started and stopped by ``tests/support/processes.py`` (by pid at teardown; an ``atexit`` safety
net kills whatever is still running when the interpreter exits). Nothing global is set (no
environment variables, no default ports).

Fixtures:

- ``redis_server`` (session): ``(host, port)`` of a ``redis-server`` without persistence.
- ``postgres_dsn`` (session): the DSN of a PostgreSQL server's ``postgres`` database, user
  ``postgres``, trust authentication (no password).
- ``postgres_db`` (function): the DSN of a fresh database made for one test, dropped after it.
- ``s3_endpoint`` (session): ``http://127.0.0.1:PORT`` of moto's S3-compatible HTTP server; pass
  ``S3_CLIENT_KWARGS`` (dummy keys, us-east-1) to boto3 with it. Its state lasts the session, so
  give each test its own bucket names.

Redis and PostgreSQL come from Debian's packages (``apt-get install redis-server postgresql``);
``.ci/run`` installs them. Where one is missing the tests that need it are skipped, or fail when
the ``CI`` environment variable is set (CI must not skip them silently).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from .processes import HOST, ServerStartError, in_ci, log_tail, start_on_free_ports, stop

S3_CLIENT_KWARGS: dict[str, str] = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "region_name": "us-east-1",
}
"""Keyword arguments for ``boto3.client("s3", endpoint_url=s3_endpoint, **S3_CLIENT_KWARGS)``."""

INSTALL_HINT = "apt-get install redis-server postgresql"
REDIS_START_TIMEOUT_S = 10.0
POSTGRES_INITDB_TIMEOUT_S = 120.0
POSTGRES_START_TIMEOUT_S = 30.0


def missing(what: str) -> NoReturn:
    """Skip the test because ``what`` is not installed; in CI, fail it instead."""
    if in_ci():
        pytest.fail(
            f"{what} not found, and CI is set: .ci/run should have installed it ({INSTALL_HINT})",
            pytrace=False,
        )
    pytest.skip(f"{what} not found; to run these tests: {INSTALL_HINT}")


# --- Redis -----------------------------------------------------------------------------------


def redis_binary() -> str | None:
    """``redis-server`` from PATH, else /usr/bin (Debian), else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    fallback = Path("/usr/bin/redis-server")
    return str(fallback) if os.access(fallback, os.X_OK) else None


def _redis_pings(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    return ready


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``(host, port)`` of a ``redis-server`` on 127.0.0.1, no persistence, for the session.

    Its working directory and ``redis.log`` are in a pytest temporary directory. Tests share the
    server: use distinct keys, or ``FLUSHALL`` first.
    """
    binary = redis_binary()
    if binary is None:
        missing("redis-server")
    workdir = tmp_path_factory.mktemp("redis")
    log = workdir / "redis.log"

    def argv(port: int) -> list[str]:
        return [
            binary,
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(workdir),
        ]  # fmt: skip

    proc, (port,) = start_on_free_ports(
        1,
        lambda ports: argv(ports[0]),
        lambda ports: _redis_pings(ports[0]),
        "redis-server",
        log,
        REDIS_START_TIMEOUT_S,
        cwd=workdir,
    )
    try:
        yield HOST, port
    finally:
        stop(proc, signal.SIGTERM)


# --- PostgreSQL ------------------------------------------------------------------------------


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (-1,)


def postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL (``/usr/lib/postgresql/<version>/bin``), else PATH's."""
    candidates = [
        bindir
        for bindir in Path("/usr/lib/postgresql").glob("*/bin")
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file()
    ]
    if candidates:
        return max(candidates, key=lambda bindir: _version_key(bindir.parent.name))
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres and Path(initdb).parent == Path(postgres).parent:
        return Path(initdb).parent
    return None


def _postgres_identity() -> tuple[dict[str, Any], tuple[int, int] | None]:
    """Popen arguments that run initdb/postgres as an ordinary user, and that user's uid/gid.

    PostgreSQL refuses to run as root. As root the programs run as the ``postgres`` system user
    (Debian's package creates it): ``Popen(user=, group=, extra_groups=[])`` switches user in the
    child before exec, so the pid we hold is the server's own (no ``runuser`` in between).
    """
    if os.geteuid() != 0:
        return {}, None
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        missing("the postgres system user (tests run as root)")
    env = {**os.environ, "HOME": account.pw_dir, "USER": "postgres", "LOGNAME": "postgres"}
    popen: dict[str, Any] = {
        "user": account.pw_uid,
        "group": account.pw_gid,
        "extra_groups": [],
        "env": env,
    }
    return popen, (account.pw_uid, account.pw_gid)


def _postgres_answers(port: int) -> Callable[[], bool]:
    import psycopg

    dsn = f"postgresql://postgres@{HOST}:{port}/postgres"

    def ready() -> bool:
        try:
            with psycopg.connect(dsn, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    return ready


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """DSN ``postgresql://postgres@127.0.0.1:PORT/postgres`` of a new PostgreSQL, stopped (by
    pid) and removed on exit: for the session's tests (``postgres_dsn``) and for benchmarks.

    A new cluster (``initdb``: trust authentication, UTF8, C locale, no sync) in a temporary
    directory, with ``fsync``, ``synchronous_commit`` and ``full_page_writes`` off; its Unix socket
    and ``postgres.log`` are in that directory too. Prefer ``postgres_db`` in tests, so that tables
    of one test are not seen by another.
    """
    bindir = postgres_bindir()
    if bindir is None:
        missing("PostgreSQL (initdb and postgres)")
    popen, owner = _postgres_identity()
    # As root, pytest's own temporary directories (under /tmp/pytest-of-root, mode 0700) are
    # closed to the postgres user: use a directory of our own in /tmp, owned by that user.
    base = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp" if owner else None))
    try:
        data, sockets = base / "data", base / "sockets"
        sockets.mkdir()
        if owner:
            for path in (base, sockets):
                os.chown(path, *owner)
        log = base / "postgres.log"
        initdb_argv = [
            str(bindir / "initdb"),
            "--pgdata", str(data),
            "--username", "postgres",
            "--auth", "trust",
            "--encoding", "UTF8",
            "--locale", "C",
            "--no-sync",
        ]  # fmt: skip
        with log.open("ab") as out:
            result = subprocess.run(
                initdb_argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=base,
                timeout=POSTGRES_INITDB_TIMEOUT_S,
                check=False,
                **popen,
            )
        if result.returncode != 0:
            raise ServerStartError(
                f"initdb exited with status {result.returncode}; log {log}:\n{log_tail(log)}"
            )

        def argv(port: int) -> list[str]:
            return [
                str(bindir / "postgres"),
                "-D", str(data),
                "-k", str(sockets),
                "-h", HOST,
                "-p", str(port),
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
            ]  # fmt: skip

        proc, (port,) = start_on_free_ports(
            1,
            lambda ports: argv(ports[0]),
            lambda ports: _postgres_answers(ports[0]),
            "postgres",
            log,
            POSTGRES_START_TIMEOUT_S,
            cwd=base,
            **popen,
        )
        try:
            yield f"postgresql://postgres@{HOST}:{port}/postgres"
        finally:
            stop(proc, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """:func:`postgres_server` for the session."""
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture
def postgres_db(postgres_dsn: str) -> Iterator[str]:
    """DSN of a database made for this test only (``test_<random>``), dropped after it."""
    import psycopg
    from psycopg import sql

    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{postgres_dsn.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --- S3 (moto) -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of moto's S3-compatible HTTP server, in a thread, for the session.

    Use it with ``boto3.client("s3", endpoint_url=s3_endpoint, **S3_CLIENT_KWARGS)``: dummy keys,
    region us-east-1. No environment variable is set. The server binds port 0 itself, so no other
    process can take its port first.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
