"""Secrets never reach a log line or an error, the sidecar's token can come from a file, and the
spool and ledger files are private to their owner (issue 15).

The end-to-end tests run the real ``gpuledger sidecar``, a worker and ``gpuledger report`` with
passwords planted in every place a setting can carry one (a PostgreSQL DSN, the OTLP endpoint's
user part, the OTLP headers, the token) and read everything they wrote: stdout, stderr, in
``console`` and ``json`` logs, on the paths that work and on those that fail.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuledger._location import mask_secrets, private_file
from gpuledger._logging import configure_logging, get_logger
from gpuledger.ledger import open_ledger
from gpuledger.sidecar._spool import Spool
from gpuledger.testing import make_record

from .support.processes import HOST, free_ports, spawn, stop, wait_ready

GPULEDGER = str(Path(sys.executable).parent / "gpuledger")

PG_PASSWORD = "pgPlanted7f3a"
OTLP_PASSWORD = "otlpPlanted91c2"
HEADER_SECRET = "hdrPlanted5e0d"
TOKEN = "tokPlantedc4b8"
PLANTED = (PG_PASSWORD, OTLP_PASSWORD, HEADER_SECRET, TOKEN)


def planted_in(text: str) -> list[str]:
    """The planted secrets that ``text`` gives away."""
    return [secret for secret in PLANTED if secret in text]


@pytest.fixture
def private_umask() -> Iterator[None]:
    """The usual umask (022), under which files are created world-readable unless made private."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment without any gpuledger or OpenTelemetry variable (for subprocesses)."""
    for name in list(os.environ):
        if name.startswith(("GPULEDGER_", "OTEL_")):
            monkeypatch.delenv(name)
    return dict(os.environ)


# --- the masking function ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"postgresql://u:{PG_PASSWORD}@db.internal:5432/ledger", "postgresql://u:***@db."),
        (f"postgres://u:{PG_PASSWORD}@h/db?sslmode=require", "sslmode=require"),
        (f"postgresql://u@h/db?password={PG_PASSWORD}&sslmode=require", "password=***&"),
        (f"postgresql://u@h/db?sslpassword={PG_PASSWORD}", "sslpassword=***"),
        (f"postgresql://u:pa/ss@wo{PG_PASSWORD}@h/db", "u:***@h/db"),
        (f"postgresql://u:pa#s{PG_PASSWORD}@h/db?sslmode=require", "u:***@h/db?ssl"),
        (f"host=h user=u password={PG_PASSWORD} dbname=d", "dbname=d"),
        (f"host=h password='{PG_PASSWORD} x' dbname=d", "dbname=d"),
        (f"https://user:{OTLP_PASSWORD}@collector:4318/v1/traces", "user:***@collector"),
        (f"https://{OTLP_PASSWORD}@collector:4318", "https://***@collector"),
        (f"redis://:{PG_PASSWORD}@cache:6379/0", "redis://:***@cache"),
        (f"ledger 'postgresql://u:{PG_PASSWORD}@h/db' failed", "' failed"),
        (f"https://api.example.com/x?api_key={HEADER_SECRET}&q=1", "api_key=***&q=1"),
        (f"https://api.example.com/x?token={HEADER_SECRET}", "token=***"),
        (f"Authorization: Bearer {HEADER_SECRET}", "Authorization: Bearer ***"),
        (f"{{'authorization': 'Basic {HEADER_SECRET}'}}", "Basic ***"),
        (f"DD-API-KEY: {HEADER_SECRET}", "DD-API-KEY: ***"),
        (f"OTEL_EXPORTER_OTLP_HEADERS=x-honeycomb-team={HEADER_SECRET}", "HEADERS=***"),
    ],
)
def test_mask_secrets(text: str, kept: str) -> None:
    """Passwords in URLs and DSNs, query and keyword secrets and auth headers are masked; the
    rest of the text stays readable."""
    masked = mask_secrets(text)
    assert planted_in(masked) == []
    assert kept in masked


def test_mask_secrets_leaves_plain_text_alone() -> None:
    """Text without a secret (a path, a URL without a user part, a user without a password)
    comes back unchanged."""
    for text in (
        "/var/lib/gpuledger.db",
        "sqlite:////tmp/x.db",
        "http://127.0.0.1:4319",
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "max_tokens=5 input_tokens=3",
    ):
        assert mask_secrets(text) == text


def test_log_lines_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    """The logger's processor masks secrets in the event, in any field, in the traceback, and
    the whole value of a field named like a secret, in both formats."""
    for log_format in ("console", "json"):
        configure_logging(log_format, "info")
        try:
            raise RuntimeError(f"connect postgresql://u:{PG_PASSWORD}@h/db")
        except RuntimeError:
            get_logger().exception(
                f"failed at https://u:{OTLP_PASSWORD}@c:4318",
                ledger=f"postgresql://u:{PG_PASSWORD}@h/db",
                token=TOKEN,
                headers=f"authorization=Bearer {HEADER_SECRET}",
                nested={"password": PG_PASSWORD},
            )
        err = capsys.readouterr().err
        assert "failed at" in err
        assert planted_in(err) == [], err
    configure_logging("console", "warning")


def test_library_lines_in_a_process_gpuledger_owns_are_masked() -> None:
    """In the sidecar's and the proxy's processes, what OpenTelemetry's exporter, asyncio or
    aiohttp log through the standard ``logging`` module goes through the same pipeline: in the
    chosen format, masked (a requests error can carry the endpoint, userinfo and all)."""
    probe = textwrap.dedent(
        f"""
        import logging
        from gpuledger._logging import configure_logging, take_library_logging
        configure_logging("json", "info")
        take_library_logging()
        take_library_logging()  # idempotent: one line each, not two
        log = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")
        log.warning("Failed to export to %s", "https://u:{OTLP_PASSWORD}@c:4318/v1/traces")
        try:
            raise ConnectionError("postgresql://u:{PG_PASSWORD}@h/db refused")
        except ConnectionError:
            logging.getLogger("asyncio").exception("Task exception was never retrieved")
        logging.getLogger("aiohttp.access").info("not shown: below WARNING")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "warning"),
        ("asyncio", "error"),
    ]
    assert lines[0]["event"].startswith("Failed to export to https://")
    assert "ConnectionError" in lines[1]["exception"]
    assert planted_in(done.stderr) == [], done.stderr


# --- the real processes ------------------------------------------------------------------------


def _unreachable_dsn() -> str:
    (port,) = free_ports(1)
    return f"postgresql://gpuledger:{PG_PASSWORD}@{HOST}:{port}/ledger?connect_timeout=1"


@pytest.fixture(params=["unreachable", "server"])
def planted_dsn(request: pytest.FixtureRequest) -> str:
    """A PostgreSQL DSN with the planted password: a server that does not answer (the error
    paths), and the test server (trust authentication: the password is not checked)."""
    if request.param == "unreachable":
        return _unreachable_dsn()
    dsn: str = request.getfixturevalue("postgres_db")
    return dsn.replace("postgres@", f"postgres:{PG_PASSWORD}@", 1)


def _health(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except OSError:
        return None


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["console", "json"])
def test_the_sidecar_never_logs_a_secret(
    tmp_path: Path, clean_env: dict[str, str], planted_dsn: str, log_format: str
) -> None:
    """``gpuledger sidecar`` with a password in its ledger DSN and its OTLP endpoint, OTLP
    headers and a token (from a file): its start-up line, consumer failures and shutdown say
    where it writes with every secret masked; the token file's token is the one it checks."""
    (port, dead) = free_ports(2)
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    log = tmp_path / "sidecar.log"
    argv = [
        GPULEDGER, "sidecar",
        "--listen", f"{HOST}:{port}",
        "--spool", str(tmp_path / "spool.db"),
        "--ledger", planted_dsn,
        "--otlp-endpoint", f"http://gpuledger:{OTLP_PASSWORD}@{HOST}:{dead}",
        "--token-file", str(token_file),
        "--log-format", log_format,
        "--grace", "0.5",
        "--drain-timeout", "1",
    ]  # fmt: skip
    env = {**clean_env, "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {HEADER_SECRET}"}
    proc = spawn(argv, log, env=env)
    url = f"http://{HOST}:{port}"
    try:
        wait_ready(proc, lambda: _health(url) is not None, "sidecar", log, 20)
        record = _record()
        assert _post(url, record, token=None) == 401
        assert _post(url, record, token=TOKEN) == 200
        time.sleep(2.5)  # the consumers try (and fail, at least the OTLP one), and say so
    finally:
        stop(proc, signal.SIGTERM)
    text = log.read_text()
    assert "listening on" in text
    assert "***" in text
    assert planted_in(text) == [], text


def _record() -> dict[str, Any]:
    return make_record(duration_s=0.5, invocation_id="job-secret").to_dict()


def _post(url: str, record: dict[str, Any], token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"records": [record]}).encode()
    request = urllib.request.Request(f"{url}/v1/records", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to its end (its exit status is for the caller to check), output captured."""
    return subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


_WORKER = textwrap.dedent(
    """
    import gpuledger

    @gpuledger.traced_handler
    def handler(job):
        return {"ok": True}

    handler({"id": "job-1", "input": {}})
    gpuledger.shutdown()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["console", "json"])
def test_a_worker_that_falls_back_and_fails_never_logs_a_secret(
    tmp_path: Path, clean_env: dict[str, str], log_format: str
) -> None:
    """A worker whose sidecar is down falls back to a PostgreSQL ledger that cannot be reached
    and shuts down with its invocation unwritten: the fallback warning, the ledger's failure and
    the shutdown error name the ledger with its password masked."""
    (dead,) = free_ports(1)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    env = {
        **clean_env,
        "GPULEDGER_SIDECAR": f"http://{HOST}:{dead}",
        "GPULEDGER_SIDECAR_TOKEN_FILE": str(token_file),
        "GPULEDGER_LEDGER": _unreachable_dsn(),
        "GPULEDGER_GPU_METERING": "off",
        "GPULEDGER_FLUSH_TIMEOUT": "1",
        "GPULEDGER_LOG_FORMAT": log_format,
        "GPULEDGER_LOG_LEVEL": "info",
    }
    done = _run([sys.executable, "-c", _WORKER], env, tmp_path)
    output = done.stdout + done.stderr
    assert "fall" in output.lower(), output  # the fallback was said
    assert "shut down with invocations not written" in output, output
    assert planted_in(output) == [], output


@pytest.mark.parametrize(
    "ledger",
    [
        "unreachable",
        f"mysql://u:{PG_PASSWORD}@h/db",
        f"postgresql://u:{PG_PASSWORD}@h/db?sslmode=bogus",
    ],
)
def test_failing_commands_never_print_a_secret(
    tmp_path: Path, clean_env: dict[str, str], ledger: str
) -> None:
    """``gpuledger report`` and ``gpuledger sidecar`` given a ledger they cannot use fail with a
    message naming it, its password masked, whether it came from an option or the environment."""
    location = _unreachable_dsn() if ledger == "unreachable" else ledger
    runs = [
        _run([GPULEDGER, "report", "--ledger", location], clean_env, tmp_path),
        _run([GPULEDGER, "report"], {**clean_env, "GPULEDGER_LEDGER": location}, tmp_path),
    ]
    if ledger.startswith("mysql"):  # the sidecar refuses it at start (PostgreSQL: at first use)
        sidecar = [GPULEDGER, "sidecar", "--listen", "127.0.0.1:0", "--ledger", location]
        runs.append(_run(sidecar, clean_env, tmp_path))
    for done in runs:
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        assert "***" in output, output
        assert planted_in(output) == [], output


# --- the token from a file ---------------------------------------------------------------------


def test_a_missing_token_file_is_an_error_naming_it(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """A token file that cannot be read stops the sidecar (and the worker's configuration) with
    an error naming the file; the same for an empty one and for a token given twice."""
    missing = tmp_path / "no-such-token"
    done = _run(
        [GPULEDGER, "sidecar", "--listen", "127.0.0.1:0", "--token-file", str(missing)],
        clean_env,
        tmp_path,
    )
    assert done.returncode != 0
    assert str(missing) in done.stderr
    assert "sidecar_token_file" in done.stderr or "--token-file" in done.stderr

    import gpuledger

    with pytest.raises(gpuledger.ConfigError, match="no-such-token") as caught:
        gpuledger.configure(sidecar_token_file=str(missing), exporters=())
    assert caught.value.setting == "sidecar_token_file"

    empty = tmp_path / "empty"
    empty.write_text(" \n")
    with pytest.raises(gpuledger.ConfigError, match="empty"):
        gpuledger.configure(sidecar_token_file=str(empty), exporters=())

    given = tmp_path / "token"
    given.write_text(TOKEN)
    with pytest.raises(gpuledger.ConfigError, match="not both") as twice:
        gpuledger.configure(sidecar_token="x", sidecar_token_file=str(given), exporters=())
    assert planted_in(str(twice.value)) == []


def test_the_token_file_gives_the_token(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """The environment's token file is read, whitespace stripped, into ``sidecar_token``."""
    from gpuledger._settings import resolve_settings

    given = tmp_path / "token"
    given.write_text(f"\n {TOKEN} \n")
    settings = resolve_settings({}, {"GPULEDGER_SIDECAR_TOKEN_FILE": str(given)})
    assert settings.sidecar_token == TOKEN
    assert settings.sources["sidecar_token"] == "GPULEDGER_SIDECAR_TOKEN_FILE"


def test_a_bad_secret_setting_is_not_echoed(clean_env: dict[str, str]) -> None:
    """A ConfigError about a secret setting or a location does not repeat the secret."""
    import gpuledger

    with pytest.raises(gpuledger.ConfigError) as caught:
        gpuledger.configure(ledger=f"mysql://u:{PG_PASSWORD}@h/db", exporters=())
    assert planted_in(str(caught.value)) == []
    assert planted_in(repr(caught.value.value)) == []


# --- private files -----------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("private_umask")
def test_the_spool_and_the_ledger_are_private(tmp_path: Path) -> None:
    """A new spool and a new ledger, and the -wal and -shm SQLite makes beside them, are 0600,
    and a folder the ledger needs is made 0700."""
    spool = Spool(str(tmp_path / "spool.db"))
    try:
        spool.add_records([("record-1", json.dumps(_record()))], time.time_ns())
        for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
            assert _mode(tmp_path / name) == 0o600, name
    finally:
        spool.close()
    ledger_path = tmp_path / "new" / "deeper" / "ledger.db"
    with open_ledger(str(ledger_path)) as ledger:
        ledger.write([make_record(duration_s=1.0)])
        for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
            assert _mode(ledger_path.parent / name) == 0o600, name
    assert _mode(tmp_path / "new") == 0o700
    assert _mode(tmp_path / "new" / "deeper") == 0o700


@pytest.mark.usefixtures("private_umask")
def test_existing_files_keep_their_mode(tmp_path: Path) -> None:
    """A ledger the user made (or chmod-ed) keeps its mode: gpuledger does not chmod it."""
    path = tmp_path / "shared.db"
    with open_ledger(str(path)):
        pass
    path.chmod(0o640)
    with open_ledger(str(path)):
        pass
    assert _mode(path) == 0o640
    private_file(str(path))
    assert _mode(path) == 0o640
