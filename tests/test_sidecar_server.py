"""The sidecar's HTTP server under abuse from local clients: idle connections past the open-file
limit, bodies whose parsing would cost many times their size. Each with a real `gpuledger
sidecar` process on 127.0.0.1.

As the issue measured them before: 1,100 idle connections under a 1,024-file limit made every new
POST fail and stopped the ledger consumer (a thread and a descriptor per connection); a 15.7 MB
body of ``[]`` items added 220 MB of resident memory.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuledger._errors import SidecarError
from gpuledger.sidecar._receiver import BYTES_PER_VALUE, DEFAULT_MAX_BODY, json_values_bound
from gpuledger.sidecar._server import Sidecar

from .test_sidecar import make_record, metric_value, post, request, wait_for_rows

_FILES = 256
"""The open-file limit the sidecar runs under here (soft and hard), standing for the 1,024 of the
issue's measurement at a quarter of the sockets."""


class _Sidecar:
    def __init__(self, tmp_path: Path, files: int | None = None) -> None:
        def limit_files() -> None:
            if files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

        self.ledger = tmp_path / "ledger.db"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from gpuledger.cli._main import main; main()",
                "sidecar",
                "--listen",
                "127.0.0.1:0",
                "--spool",
                str(tmp_path / "spool.db"),
                "--ledger",
                str(self.ledger),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=limit_files,  # noqa: PLW1509 - setrlimit only, no threads yet
            env={key: value for key, value in os.environ.items() if not key.startswith("OTEL_")},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(10)
            pytest.fail(f"the sidecar did not start: {self.process.stderr.read()}")  # type: ignore[union-attr]
        self.url = line.split(" listening on ")[1].split(",")[0]
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self.address = (host, int(port))

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/task"))

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=30)
        return stderr


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[_Sidecar]:
    running = _Sidecar(tmp_path, files=_FILES)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.communicate(timeout=10)


def test_idle_connections_past_the_file_limit_neither_starve_posts_nor_cost_threads(
    sidecar: _Sidecar,
) -> None:
    """300 connections that send nothing, under a 256-file limit: every POST after them is
    taken, the ledger consumer keeps writing, and the sidecar's threads stay a handful (the
    longest idle connections are closed to make room, and counted)."""
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(sidecar.address, timeout=5))
        records = [make_record(index) for index in range(20)]
        for start in range(0, 20, 5):
            status, answer = post(
                sidecar.url, "/v1/records", {"records": records[start : start + 5]}
            )
            assert (status, answer) == (200, {"accepted": 5, "duplicates": 0})
        threads = sidecar.threads()
        rows = wait_for_rows(sidecar.ledger, 20)
        status, text = request(sidecar.url, "GET", "/metrics")
    finally:
        for connection in idle:
            connection.close()
    assert {row["record_id"] for row in rows} == {record["record_id"] for record in records}
    print(f"\n300 idle connections under {_FILES} files: {threads} threads in the sidecar")
    assert threads < 20, threads  # a thread per connection would be over 300
    assert status == 200
    # At most 256 - 128 (kept back for files) = 128 open: the rest made room for newer ones.
    assert metric_value(text, "gpuledger_sidecar_connections_closed_idle_total") >= 300 - 128
    assert "Traceback" not in sidecar.stop()


def test_a_body_of_empty_items_is_refused_before_parsing(sidecar: _Sidecar) -> None:
    """15.7 MB of ``[]`` items (under the 16 MiB body limit) would parse into 2.6 million lists;
    refused with 413 naming the limit, from a count of its values, before it is parsed."""
    items = (DEFAULT_MAX_BODY - 1024) // 3
    body = b'{"records": [' + b",".join([b"[]"] * items) + b"]}"
    assert len(body) <= DEFAULT_MAX_BODY
    before = sidecar.peak_rss_bytes()
    status, answer = post(sidecar.url, "/v1/records", body)
    after = sidecar.peak_rss_bytes()
    megabytes = [round(size / 1e6) for size in (len(body), before, after)]
    print("\n{} MB body of []: peak RSS {} -> {} MB".format(*megabytes))
    assert status == 413
    limit = DEFAULT_MAX_BODY // BYTES_PER_VALUE
    assert answer["error"].startswith(f"the body holds up to {json_values_bound(body)} JSON values")
    assert f"over the limit of {limit}" in answer["error"]
    # And the sidecar goes on taking what is real.
    assert post(sidecar.url, "/v1/records", {"records": [make_record(1)]})[0] == 200
    _, text = request(sidecar.url, "GET", "/metrics")
    assert metric_value(text, 'gpuledger_sidecar_requests_rejected_total{code="413"}') == 1


def test_a_full_batch_of_real_records_is_under_the_value_limit() -> None:
    """The value count never refuses what the agent sends: its largest batch (2,048 records with
    every field) holds one value per ~13 bytes, and even a body of the full 16 MiB of such
    records is under the limit."""
    from tests.support.ledgers import full_record

    record = full_record().to_dict()
    body = json.dumps({"format": 1, "records": [record] * 2048}).encode()
    assert json_values_bound(body) < DEFAULT_MAX_BODY // BYTES_PER_VALUE
    per_value = len(body) / json_values_bound(body)
    assert per_value > BYTES_PER_VALUE, per_value


def test_without_aiohttp_the_sidecar_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """aiohttp is a dependency, but one can remove it: starting says so, and binds nothing."""
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    with pytest.raises(SidecarError, match=r"pip install 'aiohttp>=3\.9\.3'"):
        Sidecar(
            listen="127.0.0.1:0",
            spool=str(tmp_path / "spool.db"),
            ledger=str(tmp_path / "ledger.db"),
            watch_interval_s=None,
        ).start()
