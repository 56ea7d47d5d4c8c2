"""The sidecar's spool under faults (issue 15): damaged files are moved aside, counted and
replaced; a kill -9 at any point loses nothing acknowledged; a full disk is a state that ends by
itself; the spool shrinks after a drain."""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuledger._errors import LedgerError
from gpuledger.sidecar._server import Sidecar
from gpuledger.sidecar._spool import Spool

from .support.sidecars import in_process_sidecars
from .test_sidecar import (
    FakeOtlp,
    SidecarProcess,
    ledger_rows,
    make_record,
    metric_value,
    post,
    request,
    wait_for,
    wait_for_rows,
)


@pytest.fixture
def otlp() -> Iterator[FakeOtlp]:
    """A fake OTLP/HTTP receiver on 127.0.0.1."""
    fake = FakeOtlp()
    yield fake
    fake.close()


@pytest.fixture
def make_sidecar(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """In-process sidecars with a spool and ledger in ``tmp_path``, stopped at the end."""
    with in_process_sidecars(tmp_path) as make:
        yield make


def _spooled_ids(path: Path) -> set[str]:
    """The record ids in the spool at ``path``, opened as the sidecar opens it."""
    spool = Spool(str(path))
    try:
        assert spool.set_aside is None, spool.set_aside
        return {json.loads(body)["record_id"] for _, body, _ in spool.read(0, 10**7)}
    finally:
        spool.close()


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(15)
    if how == "header":
        data[:100] = bytes(rng.randrange(256) for _ in range(100))
    else:  # every page after the first two: the tables' b-trees
        for start in range(2 * 4096, len(data), 4096):
            data[start : start + 64] = bytes(rng.randrange(256) for _ in range(64))
    path.write_bytes(bytes(data))


# --- damage ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["pages", "header"])
def test_a_damaged_spool_is_moved_aside_and_the_sidecar_serves(tmp_path: Path, how: str) -> None:
    """Overwritten pages (or header): the sidecar starts, moves the file aside with its WAL,
    counts it, logs one line (no traceback) and serves."""
    spool_path = tmp_path / "spool.db"
    spool = Spool(str(spool_path))
    spool.add_records(
        [(f"id-{i}", json.dumps({"pad": "x" * 500})) for i in range(200)], time.time_ns()
    )
    spool.close()
    _damage(spool_path, how)
    process = SidecarProcess("--spool", str(spool_path), "--ledger", str(tmp_path / "ledger.db"))
    try:
        moved = sorted(tmp_path.glob("spool.db.corrupt-*"))
        assert moved and moved[0].name.count("-") == 1  # spool.db.corrupt-<stamp>
        text = request(process.url, "GET", "/metrics")[1]
        assert metric_value(text, "gpuledger_sidecar_corrupt_files_total") == 1
        records = [make_record(i) for i in range(3)]
        assert post(process.url, "/v1/records", {"records": records})[0] == 200
        wait_for_rows(tmp_path / "ledger.db", 3)
    finally:
        code, stderr = process.stop()
    assert code == 0
    assert "Traceback" not in stderr
    assert stderr.count("THE SPOOL WAS DAMAGED") == 1, stderr


def test_a_damaged_ledger_is_moved_aside_at_open(
    make_sidecar: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """A ledger that fails quick_check is moved aside, counted, and a fresh one written."""
    from gpuledger.ledger import open_ledger

    ledger_path = tmp_path / "ledger.db"
    ledger = open_ledger(str(ledger_path))
    from gpuledger import InvocationRecord

    ledger.write([InvocationRecord.from_dict(make_record(i)) for i in range(300)])
    ledger.close()
    _damage(ledger_path, "pages")
    sidecar = make_sidecar()
    assert post(sidecar.url, "/v1/records", {"records": [make_record(1000)]})[0] == 200
    wait_for("the ledger moved aside", lambda: list(tmp_path.glob("ledger.db.corrupt-*")))
    wait_for_rows(ledger_path, 1)
    assert len(list(tmp_path.glob("ledger.db.corrupt-*Z"))) == 1
    text = sidecar.metrics_text()
    assert metric_value(text, "gpuledger_sidecar_corrupt_files_total") == 1


def test_a_ledger_failing_as_damaged_makes_healthz_503_at_once(
    make_sidecar: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """Writes failing because the ledger is damaged: /healthz is 503 with the reason at once
    (not after unhealthy_after_s), and 200 again once the ledger takes records."""
    sidecar = make_sidecar(backoff_s=(0.05, 0.05))
    sink: Any = sidecar._consumers[0].sink
    real = sink._opener

    def damaged(location: str) -> Any:
        try:
            raise sqlite3.DatabaseError("database disk image is malformed")
        except sqlite3.DatabaseError as error:
            raise LedgerError(f"could not write to the ledger at {location}: {error}") from error

    sink.close()
    sink._opener = damaged
    assert post(sidecar.url, "/v1/records", {"records": [make_record(1)]})[0] == 200
    _, health = wait_for(
        "a 503", lambda: (answer := request(sidecar.url, "GET", "/healthz"))[0] == 503 and answer
    )
    assert "the ledger is damaged" in health["reason"]
    assert "malformed" in health["reason"]
    sink._opener = real
    wait_for_rows(tmp_path / "ledger.db", 1)
    wait_for("a 200", lambda: request(sidecar.url, "GET", "/healthz")[0] == 200)


# --- kill -9 ---------------------------------------------------------------------------------


KILL_RUNS = 20


@pytest.mark.slow
def test_kill_9_at_random_points_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """A real sidecar killed with SIGKILL at random points while taking and delivering records:
    every acknowledged record is in the spool or the ledger afterwards."""
    rng = random.Random(9)
    sent = acknowledged_total = recovered_total = 0
    for run in range(KILL_RUNS):
        folder = tmp_path / f"run-{run}"
        folder.mkdir()
        process = SidecarProcess(
            "--spool", str(folder / "spool.db"), "--ledger", str(folder / "ledger.db")
        )
        acknowledged: list[str] = []
        attempted = 0
        stop = threading.Event()

        def send(
            url: str = process.url,
            stop: threading.Event = stop,
            acknowledged: list[str] = acknowledged,
        ) -> None:
            nonlocal attempted
            index = 0
            host, port = url.removeprefix("http://").rsplit(":", 1)
            connection = http.client.HTTPConnection(host, int(port), timeout=5)
            while not stop.is_set():
                batch = [make_record(index + i) for i in range(10)]
                index += 10
                attempted += len(batch)
                try:
                    connection.request(
                        "POST",
                        "/v1/records",
                        body=json.dumps({"records": batch}).encode(),
                        headers={"Content-Type": "application/json"},
                    )
                    response = connection.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException):
                    return
                if response.status == 200:
                    acknowledged.extend(record["record_id"] for record in batch)

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(process.process.pid, signal.SIGKILL)
        process.process.communicate(timeout=10)
        stop.set()
        sender.join(10)
        recovered = _spooled_ids(folder / "spool.db") | {
            row["record_id"] for row in ledger_rows(folder / "ledger.db")
        }
        lost = set(acknowledged) - recovered
        sent += attempted
        acknowledged_total += len(acknowledged)
        recovered_total += len(set(acknowledged) & recovered)
        assert not lost, f"run {run}: {len(lost)} of {len(acknowledged)} acknowledged lost"
    print(
        f"\nkill -9 x{KILL_RUNS}: sent {sent}, acknowledged {acknowledged_total}, "
        f"recovered {recovered_total}"
    )
    assert acknowledged_total >= KILL_RUNS * 50


# --- a full disk -----------------------------------------------------------------------------

_RUNNER = textwrap.dedent(
    """
    import signal, sys, threading
    from gpuledger.sidecar._server import Sidecar
    folder, ledger, otlp = sys.argv[1:4]
    sidecar = Sidecar(
        listen="127.0.0.1:0", spool=folder + "/spool.db", ledger=ledger, otlp_endpoint=otlp,
        reserve_bytes=512 * 1024, backoff_s=(0.05, 0.2), export_timeout_s=1.0,
        watch_interval_s=None,
    ).start()
    print(sidecar.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    sidecar.stop(5.0)
    """
)


def _private_tmpfs_works() -> bool:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt && true"],
        check=False,
        capture_output=True,
    )
    return done.returncode == 0


def _fill(path: Path) -> None:
    """Write ``path`` until the disk is full."""
    block = b"\0" * 65536
    with path.open("wb") as filler:
        try:
            while True:
                filler.write(block)
                filler.flush()
        except OSError:
            pass


@pytest.mark.slow
@pytest.mark.skipif(not _private_tmpfs_works(), reason="needs root and unshare -m (a tmpfs)")
def test_a_full_disk_is_a_state_that_ends_by_itself(otlp: FakeOtlp, tmp_path: Path) -> None:
    """The spool on a small tmpfs (a private mount namespace): once the disk is full, POSTs get
    503 with Retry-After; freeing space, or the collector returning (the spool drains and
    shrinks), makes them succeed again without a restart; nothing acknowledged is lost."""
    folder = tmp_path / "disk"
    folder.mkdir()
    otlp.failing = True
    process = subprocess.Popen(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount -t tmpfs -o size=6m tmpfs "$1" && exec "$2" -c "$3" "$1" "$4" "$5"',
            "sh",
            str(folder),
            sys.executable,
            _RUNNER,
            str(tmp_path / "ledger.db"),
            otlp.endpoint,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    inside = Path(f"/proc/{process.pid}/root") / str(folder).lstrip("/")
    acknowledged: list[str] = []
    index = 0

    def post_batch() -> tuple[int, str | None]:
        nonlocal index
        batch = [make_record(index + i, handler="h" * 400) for i in range(50)]
        index += 50
        host, port = url.removeprefix("http://").rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request(
            "POST",
            "/v1/records",
            body=json.dumps({"records": batch}).encode(),
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        response.read()
        connection.close()
        if response.status == 200:
            acknowledged.extend(record["record_id"] for record in batch)
        return response.status, response.getheader("Retry-After")

    def until_full() -> None:
        for _ in range(400):
            status, retry_after = post_batch()
            if status == 503:
                assert retry_after == "2"
                return
            assert status == 200
        pytest.fail("the disk never filled")

    try:
        assert url.startswith("http://"), process.stderr.read()  # type: ignore[union-attr]
        _fill(inside / "filler")
        until_full()
        for _ in range(3):  # full is a state: refused without being tried
            assert post_batch() == (503, "2")
        assert request(url, "GET", "/healthz")[0] == 503
        # 1. Space returns (the filler goes): healthy again before any request tries, and
        # accepted again, without a restart.
        (inside / "filler").unlink()
        wait_for(
            "/healthz 200 once space returned",
            lambda: request(url, "GET", "/healthz")[0] == 200,
            timeout=10,
        )
        assert post_batch()[0] == 200
        # 2. Full again, of the spool's own records (the filler leaves it 2 MiB); the collector
        # returns: the spool drains, shrinks, and has room.
        _fill(inside / "filler")
        os.truncate(inside / "filler", (inside / "filler").stat().st_size - 2 * 1024 * 1024)
        until_full()
        full_size = sum((inside / name).stat().st_size for name in ("spool.db", "spool.db-wal"))
        otlp.failing = False
        wait_for("a 200 after the drain", lambda: post_batch()[0] == 200, timeout=30)
        wait_for("everything delivered", lambda: otlp.span_count() >= len(acknowledged), 30)

        def spool_size() -> int:
            return sum((inside / name).stat().st_size for name in ("spool.db", "spool.db-wal"))

        wait_for("the spool to shrink", lambda: spool_size() < full_size / 2, timeout=10)
        drained_size = spool_size()
        print(f"\nfull disk: spool {full_size} bytes when full, {drained_size} after the drain")
        assert drained_size < full_size / 2
        assert request(url, "GET", "/healthz")[0] == 200
        wait_for_rows(tmp_path / "ledger.db", len(acknowledged))
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    delivered = {row["record_id"] for row in ledger_rows(tmp_path / "ledger.db")}
    assert set(acknowledged) <= delivered
    assert "Traceback" not in stderr, stderr


# --- growth ----------------------------------------------------------------------------------


def test_the_spool_shrinks_after_a_drain(
    make_sidecar: Callable[..., Sidecar], otlp: FakeOtlp, tmp_path: Path
) -> None:
    """Records held while the collector is down grow the spool; once delivered, its freed pages
    go back to the filesystem and the WAL is truncated."""
    otlp.failing = True
    sidecar = make_sidecar(otlp_endpoint=otlp.endpoint)
    for start in range(0, 3000, 500):
        records = [make_record(start + i, handler="h" * 400) for i in range(500)]
        assert post(sidecar.url, "/v1/records", {"records": records})[0] == 200
    spool = sidecar._spool
    assert spool is not None
    before = spool.size_bytes()
    otlp.failing = False
    wait_for("3000 spans", lambda: otlp.span_count() >= 3000, timeout=30)
    wait_for("the spool to shrink", lambda: spool.size_bytes() < before / 4, timeout=10)
    print(f"\nspool {before} bytes before the drain, {spool.size_bytes()} after")


def test_each_vacuum_step_gives_back_a_step_of_pages(tmp_path: Path) -> None:
    """While records still wait, a shrink gives back a bounded trickle (4 steps of 64 pages);
    once the spool is empty, everything. Each step is run to completion: Python's ``execute``
    steps a statement that returns no rows once, and each step of ``incremental_vacuum`` frees
    one page (the spool gave back 4 pages a trickle, and an empty spool's pages one at a time,
    a checkpoint each, holding the receivers' lock for seconds)."""
    spool = Spool(str(tmp_path / "spool.db"))
    try:
        rows = [(f"r{index:06d}", json.dumps({"pad": "x" * 400})) for index in range(6000)]
        for first in range(0, len(rows), 1000):
            spool.add_records(rows[first : first + 1000], 1)
        spool.advance("ledger", 5000)
        spool._last_shrink = -1e9  # due: the trickle runs at most once a second
        connection = spool._require()
        spool.prune(["ledger"], 2)  # deletes 5,000 rows, then shrinks: the trickle
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        spool._last_shrink = -1e9
        spool.shrink()
        left = connection.execute("PRAGMA freelist_count").fetchone()[0]
        assert free - left == 4 * 64, (free, left)
        spool.advance("ledger", 6000)
        spool.prune(["ledger"], 3)  # empty now: every free page goes back
        assert connection.execute("PRAGMA freelist_count").fetchone()[0] == 0
    finally:
        spool.close()
