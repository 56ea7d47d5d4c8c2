"""Nothing finished is lost at close: what the ledger has no time (or no way) to take before the
shutdown deadline goes to the worker's journal, fsync'd, and the next process that opens the
ledger (a worker, ``gpuledger report``) writes it in.

The ledgers here are real SQLite files behind a seam (``LedgerSink``'s opener): one that is
slow, by a fake clock that each write advances (a ledger across a network, or contended by a
fleet), and one that fails until told otherwise. The writer's deadline and costs run on that
clock (``gpuledger._writer._clock``), so no test waits for real.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import gpuledger
from gpuledger import _guard, _writer
from gpuledger._build import build_record, new_record_id, spill, unspill
from gpuledger._external import calls_measured
from gpuledger._invocation import Invocation
from gpuledger._journal import (
    INVOCATIONS,
    RECORD,
    Journal,
    decode_lines,
    encode_line,
    replay_into_ledger,
)
from gpuledger._sinks import LedgerSink
from gpuledger.cli._main import main
from gpuledger.ledger import open_ledger
from gpuledger.testing import make_record

BATCH = 2048


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _count(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM invocations").fetchone()[0])


class _SlowLedger:
    """A real SQLite ledger each write of which takes ``seconds`` on the fake ``clock``."""

    def __init__(self, path: Path, clock: _Clock, seconds: float) -> None:
        self.real = open_ledger(str(path))
        self.clock, self.seconds = clock, seconds

    def write(self, records: Any) -> int:
        self.clock.now += self.seconds
        return self.real.write(records)

    def write_stops(self, stops: Any) -> None:
        self.real.write_stops(stops)

    def close(self) -> None:
        self.real.close()


def _journalled(folder: Path) -> int:
    if not folder.exists():
        return 0
    return sum(len(decode_lines(path.read_bytes())[0]) for path in folder.glob("journal-*.log"))


class _HeldWriter:
    """Invocations queue up until ``shutdown``: the writer thread starts only then."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.start, self.flush = _writer.Pipeline._start, _writer.Pipeline.flush
        start, flush = self.start, self.flush

        def starting_flush(pipeline: _writer.Pipeline, timeout_s: float) -> bool:
            start(pipeline)
            return flush(pipeline, timeout_s)

        monkeypatch.setattr(_writer.Pipeline, "_start", lambda pipeline: None)
        monkeypatch.setattr(_writer.Pipeline, "flush", starting_flush)

    def release(self) -> None:
        self.monkeypatch.setattr(_writer.Pipeline, "_start", self.start)
        self.monkeypatch.setattr(_writer.Pipeline, "flush", self.flush)


def _configure(ledger: Path, journal: Path, opener: Any) -> None:
    gpuledger._config.configure(
        ledger=str(ledger),
        journal=str(journal),
        exporters="none",
        gpu_metering="off",
        platform="runpod",
        gpu="H100",
        sinks=[LedgerSink(str(ledger), opener=opener)],
    )


def _run(count: int) -> None:
    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> str:
        return job["id"]

    for index in range(count):
        assert handler({"id": f"job-{index}"}) == f"job-{index}"


def test_what_a_slow_ledger_cannot_take_by_the_deadline_is_spilled_then_written_in(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Six batches for a ledger that takes 2 s (fake) per write, closed with 4 s: processing all
    would take 12 s. One batch goes to the ledger, one is spilled to measure the journal, and
    the journal, cheaper, takes the rest; ``shutdown`` is True (everything is kept). The next
    process writes the spilled ones into the ledger: all 12,288, once each."""
    clock = _Clock()
    monkeypatch.setattr(_writer, "_clock", clock)
    ledger, journal = tmp_path / "ledger.db", tmp_path / "journal"

    held = _HeldWriter(monkeypatch)
    _configure(ledger, journal, lambda location: _SlowLedger(ledger, clock, 2.0))
    _run(6 * BATCH)
    assert gpuledger.shutdown(4.0)
    in_ledger, spilled = _count(ledger), _journalled(journal)
    assert (in_ledger, spilled) == (BATCH, 5 * BATCH)
    assert _guard.error_counts() == {"journal.spilled": 5 * BATCH}
    # The next process (no slowness now) takes them in on its first round.
    held.release()
    monkeypatch.setattr(_writer, "_clock", time.monotonic)
    gpuledger._config.configure(ledger=str(ledger), journal=str(journal), exporters="none")
    _run(1)
    assert gpuledger.flush(10)
    assert _count(ledger) == 6 * BATCH + 1
    with sqlite3.connect(ledger) as connection:
        ids = connection.execute("SELECT count(DISTINCT record_id) FROM invocations")
        assert ids.fetchone()[0] == 6 * BATCH + 1
    assert not list(journal.glob("journal-*.log"))  # replayed files are removed


def test_a_ledger_failing_at_close_spills_what_it_holds_and_report_writes_it_in(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The ledger fails every write (full, locked, gone): what the writer holds for it goes
    to the journal at close, not down with the process; ``gpuledger report`` run later
    writes it into the ledger before it reads, so the report has every invocation."""
    ledger, journal = tmp_path / "ledger.db", tmp_path / "journal"
    open_ledger(str(ledger)).close()

    class FailingLedger:
        def write(self, records: Any) -> int:
            raise sqlite3.OperationalError("database or disk is full")

        def write_stops(self, stops: Any) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        def close(self) -> None:
            pass

    _configure(ledger, journal, lambda location: FailingLedger())
    _run(300)
    assert gpuledger.shutdown(5.0)
    assert (_count(ledger), _journalled(journal)) == (0, 300)
    result = CliRunner().invoke(
        main, ["report", "--ledger", str(ledger), "--by", "platform", "--format", "json"],
        env={"GPULEDGER_JOURNAL": str(journal)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _count(ledger) == 300
    assert '"invocations": 300' in result.output


def test_a_journal_the_ledger_refuses_stays_for_the_next_time(tmp_path: Path) -> None:
    """Replaying into a ledger that fails keeps the journal file whole; the next replay,
    into a ledger that works, writes it and removes the file."""
    folder = tmp_path / "journal"
    spilled = Journal(str(folder))
    records = [make_record(index) for index in range(5)]
    spilled.append(RECORD, [record.to_dict() for record in records])
    spilled.close()  # as its process does at exit: the file stays, its lock goes

    def refuse(batch: Any) -> int:
        raise sqlite3.OperationalError("locked")

    with pytest.raises(sqlite3.OperationalError):
        replay_into_ledger(Journal(str(folder)), refuse)
    assert _journalled(folder) == 5
    with open_ledger(str(tmp_path / "ledger.db")) as target:
        assert replay_into_ledger(Journal(str(folder)), target.write) == 5
    assert _count(tmp_path / "ledger.db") == 5
    assert _journalled(folder) == 0


def test_with_time_enough_nothing_is_spilled(tmp_path: Path) -> None:
    """A close with time for the ledger leaves the journal alone (no folder is even made)."""
    ledger, journal = tmp_path / "ledger.db", tmp_path / "journal"
    gpuledger._config.configure(ledger=str(ledger), journal=str(journal), exporters="none")
    _run(1000)
    assert gpuledger.shutdown(10.0)
    assert _count(ledger) == 1000
    assert not journal.exists()


def _queued(count: int, **settings: Any) -> tuple[Any, list[Any]]:
    """An agent and ``count`` invocations of varied shape, finished and still in its queue."""
    gpuledger._config.configure(exporters="none", gpu_metering="off", **settings)
    agent = gpuledger._config.current_agent()
    assert agent is not None

    @gpuledger.traced_handler(user=lambda job: job.get("user"))
    def handler(job: dict[str, Any]) -> str:
        if job["n"] % 3 == 0:
            gpuledger.tag(tenant=f"t{job['n'] % 2}", model="llama", region_hint="eu")
        if job["n"] % 4 == 1:
            gpuledger.record_tokens(input=job["n"], output=2 * job["n"])
        if job["n"] % 5 == 2:
            with gpuledger.external_call("s3.get", target="s3://bucket"):
                pass
        if job["n"] % 7 == 3:
            raise ValueError("refused")
        return "ok"

    for n in range(count):
        with contextlib.suppress(ValueError):
            handler({"n": n, "user": None if n % 6 == 5 else f"user-{n % 4}"})
    return agent, [item for item in agent.pipeline.queue if isinstance(item, Invocation)]


@pytest.mark.parametrize(
    "settings",
    [
        {"platform": "runpod", "gpu": "H100"},
        {"platform": "modal", "gpu": "A100-80GB", "pseudonymize_users": True},
        {"platform": "runpod", "gpu": "no-such-gpu"},  # unpriced: null costs and the reason
    ],
    ids=["priced", "pseudonymised", "unpriced"],
)
def test_a_spilled_row_becomes_the_record_the_writer_would_have_built(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any]
) -> None:
    """``unspill(spill(...))`` gives, field for field, what ``build_record`` gives for the same
    invocations: users, tenants, tags, tokens, outgoing calls, errors, the price and the worker
    (the cold first invocation, which carries init, goes whole instead)."""
    _HeldWriter(monkeypatch)
    agent, invocations = _queued(60, **settings)
    assert len(invocations) == 60
    for invocation in invocations:
        invocation.record_id = new_record_id(invocation.start_ns)
    entry, full = spill(agent, invocations, measured=calls_measured())
    assert entry is not None
    assert [each.cold for each in full] == [True]
    # Through the journal's own encoding, as a later process reads it.
    replayed = unspill(json.loads(encode_line({"k": INVOCATIONS, "v": entry})[18:])["v"])
    expected = [
        build_record(agent, invocation, measured=calls_measured()).to_dict()
        for invocation in invocations
        if not invocation.cold
    ]
    assert [record.to_dict() for record in replayed] == expected
    assert any(record.external_calls for record in replayed)
    assert any(record.tenant for record in replayed)
    if settings.get("pseudonymize_users"):
        body = encode_line({"k": INVOCATIONS, "v": entry})
        assert b"user-1" not in body  # a pseudonym is all that is written to disk
        assert all(record.user_id_pseudonymised for record in replayed if record.user_id)


def test_a_spill_entry_this_version_cannot_read_is_counted_not_fatal(tmp_path: Path) -> None:
    """A newer writer's format, or a damaged row, is a damaged line: skipped and counted
    (``journal.corrupt``), the good lines around it still read."""
    good = encode_line({"k": RECORD, "v": make_record(1).to_dict()})
    newer = encode_line({"k": INVOCATIONS, "v": {"format": 99, "context": {}, "rows": []}})
    damaged = encode_line({"k": INVOCATIONS, "v": {"format": 1, "context": {}, "rows": [[1]]}})
    entries, bad = decode_lines(good + newer + damaged + good)
    assert (len(entries), bad) == (2, 2)
    with pytest.raises(ValueError, match="format 99"):
        unspill({"format": 99})


def test_a_burst_spilled_at_close_is_in_the_next_report_whole(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With a ledger slow enough that only a spill keeps the deadline, the journal holds the
    burst as compact rows (one line a batch, not a record a line), and ``report`` has every
    invocation, each once, with its cost."""
    clock = _Clock()
    monkeypatch.setattr(_writer, "_clock", clock)
    ledger, journal = tmp_path / "ledger.db", tmp_path / "journal"

    _HeldWriter(monkeypatch)
    _configure(ledger, journal, lambda location: _SlowLedger(ledger, clock, 3.0))
    _run(4 * BATCH)
    assert gpuledger.shutdown(4.0)
    lines = [
        line for path in journal.glob("journal-*.log") for line in path.read_bytes().splitlines()
    ]
    kinds = [json.loads(line[18:])["k"] for line in lines]
    assert kinds.count(INVOCATIONS) == 3 and len(lines) <= 4, kinds
    result = CliRunner().invoke(
        main, ["report", "--ledger", str(ledger), "--by", "platform", "--format", "json"],
        env={"GPULEDGER_JOURNAL": str(journal)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f'"invocations": {4 * BATCH}' in result.output
    with sqlite3.connect(ledger) as connection:
        row = connection.execute(
            "SELECT count(DISTINCT record_id), count(cost_usd) FROM invocations"
        ).fetchone()
    assert row == (4 * BATCH, 4 * BATCH)
