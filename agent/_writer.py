"""The background writer: finished invocations leave the request path here.

The request path only appends to a deque (thread-safe, no lock, no wake-up unless a batch is
full); one daemon thread, started on first use, takes batches off it and hands them to the
agent's ``process`` (build records, price them, record metrics, write the ledger). The deque is
bounded by ``max_pending``: past it a finished invocation is counted and logged as dropped and
the handler carries on; nothing is ever dropped silently. ``flush`` puts a marker in the deque
and waits, up to a timeout, for the thread to reach it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from gpuledger import _guard
from gpuledger._logging import get_logger

__all__ = ["Pipeline"]


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
    ) -> None:
        self._process = process
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
        """Flush, then stop the thread. Returns False if the flush timed out."""
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
                        self._process(batch)
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
