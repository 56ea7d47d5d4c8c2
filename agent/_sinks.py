"""Where finished records go: sinks, each of which says what it did with a batch.

A :class:`Sink` is OpenTelemetry's ``SpanExporter`` pattern for records: ``deliver`` takes a
batch and returns a :class:`Delivery` (how many it took, which to offer again later, which it
refused for good) and never raises; a failure is in the result. The worker's writer
(``_writer``) and the sidecar's consumers (``gpuledger.sidecar``) deliver to the same sinks and
retry the same way (:class:`Backoff`); tests hand the agent sinks of their own instead of
patching its insides.

- :class:`LedgerSink`: the ledger (SQLite or PostgreSQL), opened on first use and again after a
  failure; after a failed batch it writes record by record, so one record the ledger cannot
  store does not hold the others back.
- :class:`SidecarSink`: the sidecar on loopback (``gpuledger.sidecar``), which answers once the
  records are in its spool on disk.
- :class:`JournalSink`: the worker's journal (``_journal``), where records wait on disk for a
  sidecar that did not answer; the writer replays them to it.
- :class:`FallbackSink`: a primary sink and the one that takes a batch while the primary fails
  (the sidecar, then the journal), trying the primary again after a backoff.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gpuledger import _guard
from gpuledger._location import mask_secrets
from gpuledger._logging import get_logger
from gpuledger._record import InvocationRecord

__all__ = [
    "Backoff",
    "Delivery",
    "FallbackSink",
    "JournalSink",
    "LedgerSink",
    "SidecarSink",
    "Sink",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """What a sink did with a batch."""

    taken: int
    """Records the sink now holds durably (a record it had already counts as taken)."""
    retry: tuple[InvocationRecord, ...] = ()
    """Records not taken because the sink is failing: offer them again later."""
    rejected: tuple[InvocationRecord, ...] = ()
    """Records the sink refused for good (offering them again would fail again)."""
    error: BaseException | None = None
    """Why some records were not taken, if any were not."""

    @property
    def ok(self) -> bool:
        """True when every record was taken."""
        return not self.retry and not self.rejected


class Sink(Protocol):
    """Something that takes batches of finished records."""

    name: str
    """Names the sink in counters and logs (``ledger``, ``sidecar``, ``otlp``)."""

    def deliver(self, records: Sequence[InvocationRecord]) -> Delivery:
        """Take ``records``; never raises (a failure is in the result)."""
        ...

    def close(self, timeout_s: float = 0.0) -> None:
        """Release what the sink holds open; a later ``deliver`` may open it again."""
        ...


class Backoff:
    """Jittered exponential backoff: ``first`` seconds, doubling up to ``most``."""

    def __init__(self, first: float, most: float, *, rng: random.Random | None = None) -> None:
        self._first = first
        self._most = most
        self._attempt = 0
        self._uniform = (rng or random.Random()).uniform  # noqa: S311 - jitter, not secrets

    def next_delay(self) -> float:
        """The wait before the next attempt (and count this failure)."""
        base = min(self._first * 2.0**self._attempt, self._most)
        self._attempt = min(self._attempt + 1, 64)
        return min(base * self._uniform(0.75, 1.25), self._most)

    def reset(self) -> None:
        """The last attempt succeeded: the next failure waits ``first`` again."""
        self._attempt = 0


class LedgerSink:
    """Writes batches to the ledger at ``location``, opened on first use and again after a
    failure (a broken connection is not reused). ``opener`` opens it (``open_ledger``; a test
    may hand another)."""

    name = "ledger"

    def __init__(self, location: str, *, opener: Callable[[str], Any] | None = None) -> None:
        self.location = location
        self._opener = opener
        self._ledger: Any = None

    def _open(self) -> Any:
        if self._ledger is None:
            opener = self._opener
            if opener is None:
                from gpuledger.ledger import open_ledger  # noqa: PLC0415  (sqlite3, on first use)

                opener = open_ledger
            self._ledger = opener(self.location)
        return self._ledger

    def deliver(self, records: Sequence[InvocationRecord]) -> Delivery:
        if not records:
            return Delivery(0)
        try:
            self._open().write(records)
        except Exception as error:
            if len(records) > 1 and self._ledger is not None:
                return self._one_by_one(records, error)
            self.close()
            return Delivery(0, retry=tuple(records), error=error)
        return Delivery(len(records))

    def write(self, records: Sequence[InvocationRecord]) -> int:
        """Write ``records`` in one transaction, raising what the ledger raises (the journal's
        replay keeps a file whose records could not be written)."""
        return int(self._open().write(records))

    def _one_by_one(self, records: Sequence[InvocationRecord], error: BaseException) -> Delivery:
        """After a failed batch: write what can be written. When nothing can, the ledger is
        failing (retry them all); otherwise the records that failed are refused for good."""
        failed: list[InvocationRecord] = []
        for record in records:
            try:
                self._ledger.write([record])
            except Exception:
                failed.append(record)
        if len(failed) == len(records):
            self.close()
            return Delivery(0, retry=tuple(records), error=error)
        return Delivery(len(records) - len(failed), rejected=tuple(failed), error=error)

    def record_stop(self, billing_worker: str, process: str, stop_ns: int, source: str) -> None:
        """The worker's process stopped: store it, so that its bill ends there (contained: a
        failure is counted and logged, never raised)."""
        try:
            from gpuledger.ledger import WorkerStop  # noqa: PLC0415

            self._open().write_stops([WorkerStop(billing_worker, process, stop_ns, source)])
        except Exception as error:
            _guard.record_failure("ledger.stop", error)

    def close(self, timeout_s: float = 0.0) -> None:
        ledger, self._ledger = self._ledger, None
        if ledger is not None:
            try:
                ledger.close()
            except Exception as error:
                _guard.record_failure("ledger.close", error)


class SidecarSink:
    """POSTs batches to the sidecar (``gpuledger.sidecar.SidecarClient``); taken means in the
    sidecar's spool on disk."""

    name = "sidecar"

    def __init__(self, client: Any) -> None:
        self.client = client

    def deliver(self, records: Sequence[InvocationRecord]) -> Delivery:
        if not records:
            return Delivery(0)
        try:
            self.client.send_records([record.to_dict() for record in records])
        except Exception as error:  # SidecarError: unreachable, refused, or an error answer
            return Delivery(0, retry=tuple(records), error=error)
        return Delivery(len(records))

    def send_starts(self, starts: list[dict[str, Any]]) -> BaseException | None:
        """Tell the sidecar these invocations started; returns the failure, if any."""
        try:
            self.client.send_starts(starts)
        except Exception as error:
            return error
        return None

    def close(self, timeout_s: float = 0.0) -> None:
        self.client.close()


class JournalSink:
    """Appends batches to the worker's journal (``gpuledger._journal.Journal``): taken means
    written and fsync'd there, to be replayed to the sidecar by the writer."""

    name = "journal"

    def __init__(self, journal: Any) -> None:
        self.journal = journal
        self.location = journal.folder

    def deliver(self, records: Sequence[InvocationRecord]) -> Delivery:
        if not records:
            return Delivery(0)
        from gpuledger._journal import RECORD  # noqa: PLC0415

        try:
            self.journal.append(RECORD, [record.to_dict() for record in records])
        except (OSError, ValueError) as error:  # a full disk; NaN in a record
            return Delivery(0, retry=tuple(records), error=error)
        return Delivery(len(records))

    def close(self, timeout_s: float = 0.0) -> None:
        self.journal.close()


class FallbackSink:
    """``primary`` takes each batch; while it fails, ``fallback`` does, and ``primary`` is tried
    again after a backoff (counted ``<primary>.fallback`` and said once)."""

    def __init__(
        self,
        primary: Sink,
        fallback: Sink,
        *,
        backoff: Backoff | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        warning: str = "",
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = fallback.name
        self.location = getattr(fallback, "location", None)
        self._backoff = backoff or Backoff(1.0, 30.0)
        self._monotonic = monotonic
        self._retry_at = 0.0
        self._warning = warning
        self._warned = False

    @property
    def primary_up(self) -> bool:
        """False while the primary is backing off after a failure."""
        return self._monotonic() >= self._retry_at

    def failed(self, error: BaseException | None) -> None:
        """The primary failed (a batch, or a call beside ``deliver``): back off from it."""
        self._retry_at = self._monotonic() + self._backoff.next_delay()
        _guard.count(f"{self.primary.name}.fallback")
        if not self._warned:
            self._warned = True
            get_logger().warning(
                self._warning
                or f"gpuledger: {self.primary.name} failing; records go to {self.fallback.name}",
                error=mask_secrets(f"{type(error).__name__}: {error}") if error else None,
            )

    def deliver(self, records: Sequence[InvocationRecord]) -> Delivery:
        if self.primary_up and records:
            delivery = self.primary.deliver(records)
            if delivery.ok:
                self._backoff.reset()
                return delivery
            self.failed(delivery.error)
            records = [*delivery.retry, *delivery.rejected]
        return self.fallback.deliver(records)

    def close(self, timeout_s: float = 0.0) -> None:
        self.primary.close(timeout_s)
        self.fallback.close(timeout_s)
