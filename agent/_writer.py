"""The background writer: finished invocations leave the request path here.

The request path only appends to a deque (thread-safe, no lock, no wake-up unless a batch is
full); one daemon thread (:class:`Pipeline`), started on first use, takes batches off it and
hands them to the :class:`Writer`: tell the sidecar which invocations started, wait for NVML's
samples to cover the ones a GPU meter watches, build each record (``_build``), end its span from
it, add it to the metrics, and deliver the batch to every sink (``_sinks``). The deque is
bounded by ``max_pending``: past it a finished invocation is counted and logged as dropped and
the handler carries on; nothing is ever dropped silently. ``flush`` puts a marker in the deque
and waits, up to a timeout, for the thread to reach it.

A sink that fails keeps its records: they are held (up to ``max_pending``, the excess counted as
``<sink>.dropped``) and offered again with the next batch, and the failure is said loudly at once
and then every minute while it lasts. A record a sink refuses for good is counted
(``<sink>.rejected``) and does not hold the others back.

At close the pipeline has a deadline: once the measured cost of processing what is left no
longer fits in it, one batch is spilled to the journal to measure that, and the cheaper of the
two takes the rest (:meth:`Pipeline._must_spill`, :meth:`Writer.spill`); what is spilled is
written into the ledger by the next process (:meth:`Writer._adopt_spilled`).

Why one module: the pipeline (queue, thread, flush, the close's deadline) and the writer (what
a batch becomes: records, spans, metrics, sinks, the journal's spill and replay) are one
protocol, the pipeline's choice at close weighing the writer's own costs; split, each half would
reach into the other's state.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from gpuledger import _guard
from gpuledger._build import build_record, start_notice
from gpuledger._external import calls_measured
from gpuledger._location import mask_secrets
from gpuledger._logging import get_logger
from gpuledger._platform import default_worker_id
from gpuledger._record import InvocationRecord
from gpuledger._sinks import Delivery, FallbackSink, JournalSink, LedgerSink, SidecarSink, Sink

if TYPE_CHECKING:
    from gpuledger._agent import Agent
    from gpuledger._invocation import Invocation

__all__ = ["Pipeline", "StartNotice", "Writer"]

_LOUD_EVERY_S = 60.0
"""While a sink keeps failing, its error is said again this often."""
_FIRST_COST_S: Final = 60e-6
"""A first guess at the writer's time per invocation (build, metrics, ledger), before it has
measured its own (``benchmarks/bench_writer.py``: 35 to 50 µs on the 2-core reference VM)."""
_clock: Callable[[], float] = time.monotonic
"""The clock of close's deadline and of the costs it weighs (a test's may be fake)."""
_TIME_MARGIN: Final = 1.2
"""At close, what is left is processed as usual while 1.2 times its estimated time is left."""
REPLAY_BATCH: Final = 1000
"""Journalled records (or starts) per POST when replaying the journal to the sidecar."""


class StartNotice:
    """Queued at an invocation's start (sidecar mode): the writer tells the sidecar."""

    __slots__ = ("invocation",)

    def __init__(self, invocation: Invocation) -> None:
        self.invocation = invocation


class _FlushMarker:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class Pipeline:
    """A bounded queue and the one thread that drains it in batches."""

    def __init__(
        self,
        process: Callable[[list[Any]], None],
        *,
        max_pending: int,
        interval_s: float = 0.2,
        batch_size: int = 2048,
        name: str = "gpuledger-writer",
        on_idle: Callable[[bool], None] | None = None,
        spill: Callable[[list[Any]], None] | None = None,
    ) -> None:
        self._process = process
        self._spill = spill
        """At close: what may take the batches the deadline leaves no time to process (the
        journal, fsync'd), when it is measured cheaper than processing them."""
        self._deadline: float | None = None
        self._spilling = False
        """Closing without the time to process what is left: whether the last batch was
        spilled (the writer then spills what waits for NVML's samples too)."""
        self.cost_s = _FIRST_COST_S
        """Seconds per item processed, a moving average of the batches measured."""
        self.spill_cost_s: float | None = None
        """Seconds per item spilled, once a batch was."""
        self.closing_cost_s: float | None = None
        """Seconds per item processed since closing began: the cost to set against the
        spill's, measured alike (before, the request path competed for the interpreter)."""
        self._on_idle = on_idle
        """Called on the thread after each round (``False``), and before a flush marker is
        released and when stopping (``True``: finish what is held back, now)."""
        self._max_pending = max_pending
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._name = name
        self._queue: deque[Any] = deque()
        self.queue = self._queue
        """The queue itself: the agent appends to it directly while ``running``."""
        self.batch_size = batch_size
        self.running = False
        """True while the thread runs; False before it started and once it stopped."""
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.dropped = 0
        self._warned_drop = False

    def submit(self, item: Any) -> None:
        """Queue ``item`` for the thread; never blocks. Past the bound it is counted as dropped."""
        queue = self._queue
        if len(queue) >= self._max_pending:
            self._drop()
            return
        queue.append(item)
        if self._thread is None:
            self._start()
        if len(queue) >= self._batch_size and not self._wake.is_set():
            self._wake.set()

    def wake(self) -> None:
        """Wake the thread now (a batch is full)."""
        if not self._wake.is_set():
            self._wake.set()

    @property
    def spilling(self) -> bool:
        """Closing, and what is left is spilled rather than processed."""
        return self._spilling

    @property
    def pending(self) -> int:
        """Items waiting for the thread."""
        return len(self._queue)

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything submitted before this call is processed; False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            if not self._queue:
                return True
            self._start()
        marker = _FlushMarker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout_s)

    def close(self, timeout_s: float) -> bool:
        """Flush, then stop the thread. Returns False if the flush timed out. With a ``spill``,
        what is left once there is only time enough to spill it is spilled, not processed, so
        that everything submitted is kept within ``timeout_s``."""
        self._deadline = _clock() + timeout_s
        flushed = self.flush(timeout_s)
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s if flushed else 0.1)
        return flushed

    def _drop(self) -> None:
        self.dropped += 1
        _guard.count("ledger.dropped")
        if not self._warned_drop:
            self._warned_drop = True
            get_logger().error(
                "gpuledger writer is behind: finished invocations past the bound are dropped "
                "and counted (gpuledger.telemetry.errors, kind=ledger.dropped); raise "
                "GPULEDGER_MAX_PENDING or check the ledger's disk",
                max_pending=self._max_pending,
            )

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
            self.running = True

    def _run(self) -> None:
        queue = self._queue
        while True:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            while queue:
                batch: list[Any] = []
                markers: list[_FlushMarker] = []
                while queue and len(batch) < self._batch_size:
                    item = queue.popleft()
                    if isinstance(item, _FlushMarker):
                        markers.append(item)
                        break
                    batch.append(item)
                if batch:
                    try:
                        self._handle(batch)
                    except Exception as error:  # the writer thread must survive anything
                        _guard_failure(error)
                if markers:
                    self._idle(force=True)
                for marker in markers:
                    marker.done.set()
            self._idle(force=self._stopping)
            if self._stopping:
                self.running = False
                # Anything appended while stopping is flushed by close()'s caller or dropped
                # with the process; the agent checks ``running`` and falls back to submit().
                return

    def _handle(self, batch: list[Any]) -> None:
        """Process ``batch``, or spill it when closing leaves no time to process the rest; each
        measured, so that the choice uses this machine's costs."""
        spill = self._spill is not None and self._must_spill(len(batch))
        closing = self._deadline is not None  # set before this batch began, or not
        began = _clock()
        if spill:
            assert self._spill is not None
            self._spill(batch)
        else:
            self._process(batch)
        per_item = (_clock() - began) / len(batch)
        if spill:
            last = self.spill_cost_s
            self.spill_cost_s = per_item if last is None else 0.7 * last + 0.3 * per_item
        else:
            self.cost_s = 0.7 * self.cost_s + 0.3 * per_item
            if closing:
                last = self.closing_cost_s
                self.closing_cost_s = per_item if last is None else 0.7 * last + 0.3 * per_item

    def _must_spill(self, size: int) -> bool:
        """Closing: whether to spill the next ``size`` items rather than process them. While
        there is time to process everything left, no; once there is not, one batch is
        processed and one spilled to measure both as they cost now. Then, if the spill is the
        cheaper, each batch is still processed while the time left covers it and a spill of
        all the rest after it, and spilled once it does not: as much as the deadline allows
        is exported and counted as usual, and everything is kept (the journal is much cheaper
        than building, exporting and inserting a record: ``_build.spill``)."""
        deadline = self._deadline
        if deadline is None:
            return False
        waiting = len(self._queue) + size
        cost = self.closing_cost_s if self.closing_cost_s is not None else self.cost_s
        left = deadline - _clock()
        if left >= waiting * cost * _TIME_MARGIN:
            return False
        if self.closing_cost_s is None:
            return False  # measure processing first, as it costs now
        if self.spill_cost_s is None:
            return True  # then the spill, on this batch
        if self.spill_cost_s >= self.closing_cost_s:
            return False  # nothing is gained by spilling: process for as long as there is time
        after = (waiting - size) * self.spill_cost_s
        self._spilling = left < (size * self.closing_cost_s + after) * _TIME_MARGIN
        return self._spilling

    def _idle(self, *, force: bool) -> None:
        if self._on_idle is None:
            return
        try:
            self._on_idle(force)
        except Exception as error:
            _guard_failure(error)


def _guard_failure(error: BaseException) -> None:
    try:
        _guard.record_failure("pipeline.process", error)
    except Exception:  # strict mode re-raises; the thread still must not die
        get_logger().exception("gpuledger writer failure (strict mode)")


class _Held:
    """A sink and the records it has not taken yet."""

    __slots__ = ("failing_since", "loud_at", "records", "sink")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.records: list[InvocationRecord] = []
        self.failing_since: float | None = None
        self.loud_at = 0.0


class Writer:
    """What the writer thread does with each batch, for one agent and its sinks."""

    def __init__(self, agent: Agent, sinks: Sequence[Sink], *, max_pending: int) -> None:
        self.agent = agent
        self.sinks = list(sinks)
        self._held = [_Held(sink) for sink in self.sinks]
        self._max_pending = max_pending
        self._starts: tuple[FallbackSink, SidecarSink] | None = None
        self.journal: Any = None
        """The journal (``_journal.Journal``) the sidecar's records wait in while it fails."""
        for sink in self.sinks:
            if isinstance(sink, FallbackSink) and isinstance(sink.primary, SidecarSink):
                self._starts = (sink, sink.primary)
                if isinstance(sink.fallback, JournalSink):
                    self.journal = sink.fallback.journal
        self._orphans: list[tuple[str, int]] | None = None
        """Journal files of processes that are gone, adopted (locked) at the first round."""
        self._closing = False
        self.replayed = 0
        """Journalled records the sidecar acknowledged on replay."""
        self.replay_duplicates = 0
        """Of those, how many it said it had already (a POST given up on but committed)."""
        self._gpu_waiting: list[Invocation] = []
        self._running: Any = None
        """The worker's running bill (``billing.RunningBill``), from its first priced record."""
        self._running_rules: dict[str, Any] | None = None
        self._spill_to: Any = None
        """The journal a spill at close appends to: the sidecar's, or one made then."""
        self.spilled = 0
        """Records spilled to the journal at close (the ledger had no time left for them)."""
        self._adopted = False
        self.pipeline = Pipeline(
            self.process, max_pending=max_pending, on_idle=self._on_idle, spill=self.spill
        )

    @property
    def tells_starts(self) -> bool:
        """Whether invocations' starts are sent to a sidecar (its record ids are made early)."""
        return self._starts is not None

    @property
    def held(self) -> int:
        """Records some sink has not taken yet."""
        return sum(len(held.records) for held in self._held)

    def process(self, batch: list[Any]) -> None:
        """One batch off the queue: finished invocations, and start notices (sidecar mode)."""
        if self._starts is not None:
            batch = self._send_starts(batch)
        if self.agent.gpu_meter is None and not self._gpu_waiting:
            self.record(batch)  # no GPU metering: nothing to wait for
            return
        waiting = self._gpu_waiting
        ready: list[Invocation] = []
        for invocation in batch:
            (ready if invocation.meter is None else waiting).append(invocation)
        if waiting:
            self.gpu_tick(force=False)
        if ready:
            self.record(ready)

    def _send_starts(self, batch: list[Any]) -> list[Invocation]:
        """Tell the sidecar which invocations started (those not finished yet); returns the
        finished invocations of ``batch``."""
        assert self._starts is not None
        fallback, sidecar = self._starts
        finished: list[Invocation] = []
        starts: list[dict[str, Any]] = []
        agent = self.agent
        timeout_s = agent.price.timeout_s if agent.price is not None else None
        pid = os.getpid()
        for item in batch:
            if type(item) is not StartNotice:
                finished.append(item)
            elif not item.invocation.duration_ns:  # still running: its record will follow
                starts.append(start_notice(agent, item.invocation, pid=pid, timeout_s=timeout_s))
        if starts and fallback.primary_up:
            error = sidecar.send_starts(starts)
            if error is None:
                return finished
            fallback.failed(error)
        if starts and self.journal is not None:
            from gpuledger._journal import START  # noqa: PLC0415

            try:
                self.journal.append(START, starts)
            except (OSError, ValueError) as error:
                _guard.record_failure("journal.write", error)
        return finished

    def _on_idle(self, force: bool) -> None:
        """After each round: measure what NVML now covers, and replay the journal (to the
        sidecar; with none, what processes that are gone spilled, into the ledger, once)."""
        if self.pipeline.spilling:
            self.spill(self._gpu_waiting)
            self._gpu_waiting = []
        self.gpu_tick(force)
        if self.journal is not None:
            self.replay(force=self._closing)
        elif not self._adopted:
            self._adopted = True
            self._adopt_spilled()

    def _journal_for_spill(self) -> Any:
        if self._spill_to is None:
            if self.journal is not None:
                self._spill_to = self.journal
            else:
                from gpuledger._journal import Journal  # noqa: PLC0415

                self._spill_to = Journal(self.agent.settings.journal)
        return self._spill_to

    def _ledger_sink(self) -> LedgerSink | None:
        return next((sink for sink in self.sinks if isinstance(sink, LedgerSink)), None)

    def _adopt_spilled(self) -> None:
        """Write what earlier processes spilled to the journal at their close into the ledger."""
        sink = self._ledger_sink()
        if sink is None:
            return
        from gpuledger._journal import replay_into_ledger  # noqa: PLC0415

        try:
            replay_into_ledger(self._journal_for_spill(), sink.write)
        except Exception as error:  # kept in the journal for the next process
            _guard.record_failure("journal.replay", error)

    def spill(self, batch: list[Any]) -> None:
        """At close, once the deadline leaves no time for the ledger (or the sidecar) to take
        what is left: append the invocations to the journal, one write and one fsync a batch;
        the next process that opens the ledger (a worker, ``gpuledger report``) writes their
        records into it, as the sidecar takes them on replay. Plain invocations go as compact
        rows under one context (``_build.spill``: a few microseconds each, against tens to
        build, insert and index a record), the few others (GPU-metered, carrying init phases)
        as full records. Their spans are not ended (not exported) and they are not in the
        metrics: counted as ``journal.spilled``."""
        if self._starts is not None:
            batch = self._send_starts(batch)
        invocations = [item for item in batch if type(item) is not StartNotice]
        if not invocations:
            return
        from gpuledger._build import spill  # noqa: PLC0415
        from gpuledger._journal import INVOCATIONS, RECORD  # noqa: PLC0415

        measured = calls_measured()
        agent = self.agent
        try:
            compact, full = spill(agent, invocations, measured=measured)
        except Exception as error:
            _guard.record_failure("record.build", error)
            compact, full = None, invocations
        entries: list[dict[str, Any]] = []
        if compact is not None:
            entries.append({"k": INVOCATIONS, "v": compact})
        for invocation in full:
            try:
                usage = self._usage(invocation) if invocation.meter is not None else None
                record = build_record(agent, invocation, usage, measured=measured)
                entries.append({"k": RECORD, "v": record.to_dict()})
            except Exception as error:
                _guard.record_failure("record.build", error)
        try:
            spilled = self._journal_for_spill().append_entries(entries)
        except (OSError, ValueError) as error:  # no room, or a value JSON cannot hold
            _guard.record_failure("journal.write", error)
            self.record(invocations)  # the ledger, then, for as long as there is time
            return
        self.spilled += spilled
        _guard.count("journal.spilled", spilled)

    @staticmethod
    def _usage(invocation: Invocation) -> Any:
        try:
            invocation.meter.drain()
            return invocation.meter.measure(
                invocation.start_ns,
                invocation.start_ns + invocation.duration_ns,
                invocation.segments,
            )
        except Exception as error:
            _guard.record_failure("nvml.measure", error)
            return None

    def replay(self, *, force: bool = False) -> bool:
        """Send what the journal holds (this process's, and what processes that are gone left)
        to the sidecar, when it is not backing off (``force``: try it anyway); empty the
        journal of what it acknowledged. True when nothing is left."""
        journal = self.journal
        assert self._starts is not None
        fallback, sidecar = self._starts
        if self._orphans is None:
            self._orphans = journal.orphans()
        if not journal.entries and not self._orphans:
            return True
        if not (force or fallback.primary_up):
            return False
        while self._orphans:
            path, fd = self._orphans[0]
            try:
                left = self._replay_entries(journal.read(path), sidecar)
            except OSError as error:
                _guard.record_failure("journal.read", error)
                left = []
            if left is None:
                return False
            self._orphans.pop(0)
            journal.done_with(path, fd, remove=True)
        if journal.entries:
            try:
                corrupt = journal.corrupt
                entries = journal.read_own()
                left = self._replay_entries(entries, sidecar)
                if left is not None:
                    journal.rewrite_own(left)
                elif journal.corrupt != corrupt:  # keep what is left, not the torn lines again
                    journal.rewrite_own(entries)
            except OSError as error:
                _guard.record_failure("journal.write", error)
                return False
            if left is None:
                return False
        return True

    def _replay_entries(
        self, entries: list[dict[str, Any]], sidecar: SidecarSink
    ) -> list[dict[str, Any]] | None:
        """Send ``entries`` (records first, then the starts of invocations whose record is not
        among them) in bounded batches; None when the sidecar failed (the caller keeps them
        all: what it took is a duplicate the next time)."""
        from gpuledger._journal import RECORD  # noqa: PLC0415

        records = [entry["v"] for entry in entries if entry["k"] == RECORD]
        finished = {record.get("record_id") for record in records}
        starts = [
            entry["v"]
            for entry in entries
            if entry["k"] != RECORD and entry["v"].get("record_id") not in finished
        ]
        assert self._starts is not None
        fallback = self._starts[0]
        sent = duplicates = 0
        try:
            for first in range(0, len(records), REPLAY_BATCH):
                answer = sidecar.client.send_records(records[first : first + REPLAY_BATCH])
                sent += min(REPLAY_BATCH, len(records) - first)
                duplicates += int(answer.get("duplicates", 0) or 0)
            for first in range(0, len(starts), REPLAY_BATCH):
                sidecar.client.send_starts(starts[first : first + REPLAY_BATCH])
        except Exception as error:  # SidecarError: down again, or refusing
            fallback.failed(error)
            return None
        self.replayed += sent
        self.replay_duplicates += duplicates
        if sent or starts:
            get_logger().info(
                "gpuledger journal replayed to the sidecar",
                records=sent,
                duplicates=duplicates,
                starts=len(starts),
            )
        return []

    def gpu_tick(self, force: bool) -> None:
        """Measure the invocations waiting for NVML's samples to cover them (all if ``force``),
        then record them."""
        waiting = self._gpu_waiting
        if not waiting:
            return
        meter = waiting[0].meter
        try:
            meter.drain()
        except Exception as error:
            _guard.record_failure("nvml.drain", error)
        now_ns = self.agent.now_ns()
        if force:
            settled, self._gpu_waiting = waiting, []
        else:
            settled = []
            held: list[Invocation] = []
            for invocation in waiting:
                end_ns = invocation.start_ns + invocation.duration_ns
                (settled if meter.settled(end_ns, now_ns) else held).append(invocation)
            self._gpu_waiting = held
        if not settled:
            return
        usages: list[Any] = []
        for invocation in settled:
            usage = None
            try:
                usage = invocation.meter.measure(
                    invocation.start_ns,
                    invocation.start_ns + invocation.duration_ns,
                    invocation.segments,
                )
            except Exception as error:
                _guard.record_failure("nvml.measure", error)
            usages.append(usage)
        self.record(settled, usages)
        worker = self.agent.worker
        with worker.lock:
            oldest = worker.oldest_start_ns() or now_ns
        if self._gpu_waiting:
            oldest = min(oldest, *(each.start_ns for each in self._gpu_waiting))
        meter.prune(oldest)

    def record(self, batch: list[Invocation], usages: list[Any] | None = None) -> None:
        """Build the records of ``batch``, end their spans, add them to the metrics and deliver
        them."""
        agent = self.agent
        measured = calls_measured()
        records: list[InvocationRecord] = []
        for i, invocation in enumerate(batch):
            try:
                record = build_record(
                    agent, invocation, None if usages is None else usages[i], measured=measured
                )
            except Exception as error:
                _guard.record_failure("record.build", error)
                if invocation.span is not None:  # never leave a span open
                    invocation.span.end(end_time=invocation.start_ns + invocation.duration_ns)
                    invocation.span = invocation.error = None
                continue
            records.append(record)
            if invocation.span is not None:
                try:
                    agent.end_span(invocation, record)
                except Exception as error:
                    _guard.record_failure("span.end", error)
        if agent.metrics is not None:
            try:
                agent.metrics.record(records)
                self._bill_worker(records)
            except Exception as error:
                _guard.record_failure("metrics.record", error)
        self.deliver(records)
        guard = agent.budget_guard
        if guard is not None:  # after delivery: a refresh that reads the ledger then has them
            try:
                guard.charge(records)
            except Exception as error:
                _guard.record_failure("budgets.charge", error)

    def _bill_worker(self, records: list[InvocationRecord]) -> None:
        """Feed the worker's running bill (``billing.RunningBill``) and add the idle time and
        rounding that became known to the cost counter: over the worker's life the counter
        adds up to its bill (this process's share of it, in a container of several)."""
        ordered = sorted(
            (
                record
                for record in records
                if record.billing_rules is not None and record.outcome != "rejected"
            ),
            key=lambda record: (record.end_ns, record.start_ns),
        )
        if not ordered:
            return
        worker = self.agent.worker
        with worker.lock:
            oldest_now = worker.oldest_start_ns()
        # Running when each one ended: what still runs, and those later in the batch that had
        # started by its end. The earliest start after each record (a suffix minimum) is the
        # oldest of those when it is at or before that record's end, else none had started.
        later_min: list[int | None] = [None] * len(ordered)
        earliest = oldest_now
        for index in range(len(ordered) - 1, -1, -1):
            later_min[index] = earliest
            start = ordered[index].start_ns
            earliest = start if earliest is None or start < earliest else earliest
        wall_ns: dict[str, int] = {}
        running: Any = None
        for record, earliest_after in zip(ordered, later_min, strict=True):
            previous, running = running, self._running_bill(record)
            if previous is not None and previous is not running and wall_ns:
                self._charge(previous, wall_ns)  # the rules changed: price what came before
                wall_ns = {}
            oldest = (
                earliest_after
                if earliest_after is not None and earliest_after <= record.end_ns
                else None
            )
            for category, ns in running.request(
                record.start_ns, record.end_ns, record.worker_ready_ns, oldest
            ):
                wall_ns[category] = wall_ns.get(category, 0) + ns
        if wall_ns:
            self._charge(running, wall_ns)

    def _charge(self, running: Any, wall_ns: dict[str, int]) -> None:
        """Price the worker's own charges (wall ns by category) and add them to the counter."""
        self.agent.metrics.record_charges(
            [(category, float(ns * running.usd_per_ns)) for category, ns in wall_ns.items()]
        )

    def _running_bill(self, record: InvocationRecord) -> Any:
        rules = record.billing_rules
        if self._running is None or self._running_rules is not rules:
            from gpuledger.billing import Rules, RunningBill  # noqa: PLC0415 - priced agents only

            assert rules is not None
            self._running = RunningBill(
                Rules.from_json(rules),
                record.worker_start_ns or record.start_ns,
                record.gpu_count,
            )
            self._running_rules = rules
        return self._running

    def _record_stop(self) -> None:
        """Tell the ledger this process of the billing worker stopped (the sidecar's ledger is
        not told: there the stop stays inferred)."""
        agent = self.agent
        process = default_worker_id()
        stop_ns = agent.now_ns()
        for sink in self.sinks:
            if isinstance(sink, LedgerSink):
                sink.record_stop(agent.billing.key, process, stop_ns, "shutdown")

    def _bill_stop(self) -> None:
        """The worker stops: its last idle time and rounding to the cost counter."""
        running, metrics = self._running, self.agent.metrics
        if running is None or metrics is None:
            return
        try:
            wall_ns: dict[str, int] = {}
            for category, ns in running.stop(self.agent.now_ns()):
                wall_ns[category] = wall_ns.get(category, 0) + ns
            if wall_ns:
                self._charge(running, wall_ns)
        except Exception as error:
            _guard.record_failure("metrics.record", error)
        self._running = None

    def deliver(self, records: list[InvocationRecord]) -> None:
        """Offer each sink what it holds and ``records``; keep what it did not take."""
        for held in self._held:
            if not records and not held.records:
                continue
            pending = held.records + records if held.records else records
            try:
                delivery = held.sink.deliver(pending)
            except Exception as error:  # a sink must not raise; one that does still loses nothing
                delivery = Delivery(0, retry=tuple(pending), error=error)
            self._account(held, delivery, len(pending))

    def _account(self, held: _Held, delivery: Delivery, offered: int) -> None:
        name = held.sink.name
        if delivery.rejected:
            _guard.count(f"{name}.rejected", len(delivery.rejected))
            get_logger().error(
                f"gpuledger could not write some invocations to the {name}: rejected",
                rejected=len(delivery.rejected),
                first_invocation_id=delivery.rejected[0].invocation_id,
            )
        if delivery.retry:
            retry = list(delivery.retry)
            overflow = max(0, len(retry) - self._max_pending)
            if overflow:
                _guard.count(f"{name}.dropped", overflow)
            held.records = retry[overflow:]
            error = delivery.error or RuntimeError(f"the {name} did not take the batch")
            self._failing(held, error)
            _guard.record_failure(f"{name}.write", error)
            return
        if delivery.error is not None:  # some taken, some refused for good
            _guard.record_failure(f"{name}.write", delivery.error)
        held.records = []
        if held.failing_since is not None:
            held.failing_since = None
            get_logger().warning(
                f"gpuledger's {name} is writable again; held invocations written",
                **{name: self._display(held.sink)},
                written=offered,
            )

    def _failing(self, held: _Held, error: BaseException) -> None:
        """Say loudly, at once and then every minute while it lasts, that a sink is failing.

        The sink is the problem (a full, read-only or removed disk), not a record: every
        invocation is held in memory and retried, and lost if the process exits first.
        """
        now = time.monotonic()
        if held.failing_since is None:
            held.failing_since = now
        elif now < held.loud_at:
            return
        held.loud_at = now + _LOUD_EVERY_S
        name = held.sink.name
        get_logger().error(
            f"gpuledger CANNOT WRITE ITS {name.upper()}: invocations are held in memory and "
            f"retried, and are lost if this process exits before the {name} is writable again",
            **{name: self._display(held.sink)},
            error=f"{type(error).__name__}: {error}",
            held=len(held.records),
        )

    @staticmethod
    def _display(sink: Sink) -> str:
        location = getattr(sink, "location", None)
        if location is None:
            return sink.name
        from gpuledger.ledger import display_location  # noqa: PLC0415

        return display_location(location)

    def _spill_held(self) -> None:
        """At close: the records a failing ledger still holds go to the journal."""
        for held in self._held:
            if not held.records or not isinstance(held.sink, LedgerSink):
                continue
            from gpuledger._journal import RECORD  # noqa: PLC0415

            try:
                self._journal_for_spill().append(RECORD, [r.to_dict() for r in held.records])
            except (OSError, ValueError) as error:
                _guard.record_failure("journal.write", error)
                continue
            self.spilled += len(held.records)
            _guard.count("journal.spilled", len(held.records))
            held.records = []

    def close(self, timeout_s: float) -> bool:
        """Flush and stop the thread, then close the sinks; False if the flush timed out."""
        self._closing = True  # the last round tries the sidecar with the journal, backoff or not
        done = self.pipeline.close(timeout_s)
        if done:
            self._spill_held()
        self._bill_stop()
        self._record_stop()
        if self.spilled and self._spill_to is not self.journal:  # (the sidecar's: said below)
            get_logger().warning(
                "gpuledger shut down with invocations the ledger had no time for: they are in "
                "the journal (fsync'd), written into the ledger by the next process that opens "
                "it (a worker, or gpuledger report)",
                spilled=self.spilled,
                journal=self._journal_for_spill().path,
            )
        if done and self._spill_to is not None and self._spill_to is not self.journal:
            # Only once the thread is done with it: a flush that timed out leaves the thread
            # appending, and the file closes with the process (its lock too).
            self._spill_to.close()
        journalled = self.journal.entries if self.journal is not None else 0
        if journalled:
            get_logger().error(
                "gpuledger shut down with invocations not written to the ledger: they wait in "
                "the journal, replayed to the sidecar by the next worker started with it",
                journalled=journalled,
                journal=self.journal.path,
            )
        unwritten = self.held + self.pipeline.pending
        if unwritten:
            get_logger().error(
                "gpuledger shut down with invocations not written to the ledger",
                unwritten=unwritten,
                ledger=mask_secrets(self.agent.settings.ledger),
            )
        for sink in self.sinks:
            try:
                sink.close(timeout_s)
            except Exception as error:
                _guard.record_failure(f"{sink.name}.close", error)
        return done
