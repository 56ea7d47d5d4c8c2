"""The fixtures of tests/support/services.py: each server answers, and is stopped and cleaned up."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid

import pytest

from .support.processes import stop
from .support.services import S3_CLIENT_KWARGS, missing


@pytest.mark.slow
def test_redis_round_trip(redis_server: tuple[str, int]) -> None:
    import redis

    host, port = redis_server
    assert host == "127.0.0.1"
    client = redis.Redis(host=host, port=port, socket_timeout=5)
    try:
        key = f"test:{uuid.uuid4().hex}"
        assert client.set(key, b"value")
        assert client.get(key) == b"value"
    finally:
        client.close()


@pytest.mark.slow
def test_postgres_round_trip(postgres_db: str) -> None:
    import psycopg

    assert postgres_db.startswith("postgresql://postgres@127.0.0.1:")
    with psycopg.connect(postgres_db) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO t VALUES (%s, %s)", (1, "héllo"))
        assert conn.execute("SELECT name FROM t WHERE id = 1").fetchone() == ("héllo",)
        settings = conn.execute(
            "SELECT name, setting FROM pg_settings"
            " WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'server_encoding')"
        ).fetchall()
    assert dict(settings) == {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "server_encoding": "UTF8",
    }


@pytest.mark.slow
def test_postgres_db_is_fresh_and_alone(postgres_dsn: str, postgres_db: str) -> None:
    """No table of another test, and earlier tests' databases were dropped."""
    import psycopg

    name = postgres_db.rsplit("/", 1)[1]
    with psycopg.connect(postgres_db) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%' ORDER BY datname"
        ).fetchall()
    assert rows == [(name,)]


@pytest.mark.slow
def test_s3_round_trip(s3_endpoint: str) -> None:
    import boto3

    assert s3_endpoint.startswith("http://127.0.0.1:")
    client = boto3.client("s3", endpoint_url=s3_endpoint, **S3_CLIENT_KWARGS)
    bucket = f"test-{uuid.uuid4().hex}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="k", Body=b"value")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"value"
    client.close()


@pytest.mark.parametrize(("ci", "outcome"), [("true", "fail"), ("", "skip"), (None, "skip")])
def test_missing_binary_fails_in_ci_else_skips(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, outcome: str
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected) as caught:
        missing("redis-server")
    assert "apt-get install redis-server postgresql" in str(caught.value)
    if outcome == "fail":
        assert ".ci/run" in str(caught.value)


def test_stop_kills_a_process_that_ignores_the_signal() -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with proc.stdout:
        assert proc.stdout.readline() == b"ready\n"
        stop(proc, signal.SIGTERM, timeout=0.2)
    assert proc.returncode == -signal.SIGKILL
