"""The worker's journal: its format, and one durable path from worker to fleet through real
processes (a sidecar killed for 3 s mid-run; a worker killed with SIGKILL)."""

from __future__ import annotations

import os
import signal
import stat
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gpuledger import _guard
from gpuledger._journal import RECORD, START, Journal, decode_lines, encode_line
from gpuledger.ledger import open_ledger

from .support.processes import HOST, free_ports, spawn, stop, wait_ready

GPULEDGER = str(Path(sys.executable).parent / "gpuledger")


def test_lines_are_checksummed_and_a_torn_last_line_is_skipped_and_counted() -> None:
    lines = [encode_line({"k": RECORD, "v": {"record_id": f"r{n}"}}) for n in range(3)]
    assert lines[0].startswith(b"%08x " % (len(lines[0]) - 19))
    entries, bad = decode_lines(b"".join(lines))
    assert [entry["v"]["record_id"] for entry in entries] == ["r0", "r1", "r2"] and bad == 0
    torn = b"".join(lines) + lines[0][:20]  # killed mid-write
    entries, bad = decode_lines(torn)
    assert len(entries) == 3 and bad == 1
    damaged = lines[1].replace(b"r1", b"r9")  # same length, wrong checksum
    entries, bad = decode_lines(lines[0] + damaged + lines[2])
    assert [entry["v"]["record_id"] for entry in entries] == ["r0", "r2"] and bad == 1


def test_a_journal_file_is_private_locked_and_adopted_once_its_process_is_gone(
    tmp_path: Path,
) -> None:
    _guard.reset()
    journal = Journal(str(tmp_path / "j"))
    assert journal.append(START, [{"record_id": "s1"}]) == 1
    assert journal.append(RECORD, [{"record_id": "a"}, {"record_id": "b"}]) == 2
    assert stat.S_IMODE(os.stat(journal.path).st_mode) == 0o600
    with open(journal.path, "ab") as file:
        file.write(b"0000001f 1234")  # a torn last line
    assert [entry["v"]["record_id"] for entry in journal.read_own()] == ["s1", "a", "b"]
    assert journal.corrupt == 1 and _guard.error_counts()["journal.corrupt"] == 1
    other = Journal(str(tmp_path / "j"))
    assert other.orphans() == []  # held by a live journal: not adopted
    journal.rewrite_own([{"k": RECORD, "v": {"record_id": "b"}}])
    os.close(journal._fd or -1)  # the process is gone: its lock with it
    journal._fd = None
    (found,) = other.orphans()
    assert [entry["v"]["record_id"] for entry in other.read(found[0])] == ["b"]
    Journal.done_with(*found, remove=True)
    assert not os.path.exists(found[0])


class _Sidecar:
    """`gpuledger sidecar` on a fixed port, so that it can be killed and started again."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.url = f"http://{HOST}:{port}"
        self.argv = [
            GPULEDGER, "sidecar", "--listen", f"{HOST}:{port}",
            "--spool", str(workdir / "spool.db"), "--ledger", str(workdir / "fleet.db"),
            "--grace", "0.5",
        ]  # fmt: skip
        self.ledger = workdir / "fleet.db"
        self.log = workdir / "sidecar.log"
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GPULEDGER_"))
        }
        self.start()

    def start(self) -> None:
        self.proc = spawn(self.argv, self.log, env=self.env)
        wait_ready(self.proc, self.answers, "sidecar", self.log, 20)

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def rows(self) -> list[Any]:
        if not self.ledger.exists():
            return []
        with open_ledger(str(self.ledger), create=False) as ledger:
            return list(ledger.read())

    def settle(self, expected: int, timeout: float = 30) -> list[Any]:
        """The ledger's rows once ``expected`` are there and the watcher had its grace."""
        deadline = time.monotonic() + timeout
        while len(self.rows()) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # grace 0.5 s: a false `killed` would be recorded by now
        return self.rows()


WORKER = textwrap.dedent(
    """
    import os, sys, time, gpuledger

    url, jobs, seconds, journal, done_file, name, policy = sys.argv[1:8]
    gpuledger.configure(sidecar=url, platform="runpod", gpu="H100", exporters="none",
                        gpu_metering="off", journal=journal, flush_policy=policy,
                        flush_wait_s=30.0)

    @gpuledger.traced_handler
    def handler(job):
        time.sleep(float(seconds))
        return job["id"]

    done = os.open(done_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for number in range(int(jobs)):
        handler({"id": f"{name}-{number}", "input": {}})
        os.write(done, b"%d\\n" % number)  # finished: survives SIGKILL (the kernel has it)
    """
)


def _worker(
    tmp_path: Path, url: str, jobs: int, seconds: float, name: str, policy: str = "periodic"
) -> Any:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GPULEDGER_"))}
    argv = [
        sys.executable, str(script), url, str(jobs), str(seconds),
        str(tmp_path / "journal"), str(tmp_path / f"{name}.done"), name, policy,
    ]  # fmt: skip
    return spawn(argv, tmp_path / f"{name}.log", env=env, cwd=tmp_path)


def _journalled(folder: Path) -> int:
    if not folder.exists():
        return 0
    return sum(len(decode_lines(path.read_bytes())[0]) for path in folder.iterdir())


@pytest.mark.slow
def test_a_3_s_sidecar_outage_loses_nothing_doubles_nothing_and_kills_nothing(
    tmp_path: Path,
) -> None:
    """Two workers, 2,500 invocations each; the sidecar SIGKILLed for 3 s mid-run. What the
    sidecar did not take waits in each worker's journal and is replayed when it answers."""
    (port,) = free_ports(1)
    sidecar = _Sidecar(tmp_path, port)
    workers = [_worker(tmp_path, sidecar.url, 2500, 0.002, f"w{n}") for n in range(2)]
    try:
        time.sleep(1.5)
        stop(sidecar.proc, signal.SIGKILL)
        time.sleep(3.0)
        journalled_during = _journalled(tmp_path / "journal")
        sidecar.start()
        for worker in workers:
            assert worker.wait(120) == 0, (tmp_path / "w0.log").read_text()[-2000:]
        rows = sidecar.settle(5000)
    finally:
        for worker in workers:
            stop(worker, signal.SIGKILL)
        stop(sidecar.proc)
    ids = [row.invocation_id for row in rows]
    assert journalled_during > 0  # the outage was real: records waited in the journals
    assert len(ids) == len(set(ids))  # no duplicates
    assert set(ids) == {f"w{w}-{n}" for w in range(2) for n in range(2500)}  # sent = ledgered
    assert [row for row in rows if row.outcome != "ok"] == []  # no false killed
    assert _journalled(tmp_path / "journal") == 0  # nothing left behind
    print(f"outage: {journalled_during} journalled during it, all replayed, 0 duplicates")


KILL9_WINDOW_S = 0.2
"""The `periodic` policy's flush interval: what a SIGKILL can lose (README, Flush before
freeze), plus the batch on its way."""


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["periodic", "invocation"])
def test_kill_9_of_a_worker_loses_at_most_its_policys_window(tmp_path: Path, policy: str) -> None:
    """`periodic`: at most what finished in the last flush interval; `invocation`: nothing
    finished (each end waited for the sidecar's acknowledgement)."""
    (port,) = free_ports(1)
    sidecar = _Sidecar(tmp_path, port)
    seconds = 0.005
    worker = _worker(tmp_path, sidecar.url, 100_000, seconds, "k", policy)
    try:
        time.sleep(2.0)
        stop(worker, signal.SIGKILL)
        finished = len((tmp_path / "k.done").read_text().split())
        rows = sidecar.settle(finished - 200)
    finally:
        stop(worker, signal.SIGKILL)
        stop(sidecar.proc)
    ledgered = {row.invocation_id for row in rows if row.outcome == "ok"}
    lost = [n for n in range(finished) if f"k-{n}" not in ledgered]
    rate = finished / 2.0
    window = rate * KILL9_WINDOW_S if policy == "periodic" else 0
    print(f"kill -9 ({policy}): {finished} finished in 2 s, {len(lost)} lost; window {window:.0f}")
    assert len(lost) <= (window + 2 if policy == "periodic" else 0), (len(lost), window)
    assert lost == list(range(finished - len(lost), finished))  # only the last ones
