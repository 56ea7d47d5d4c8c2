"""The worker's journal: what it could not hand to the sidecar, on disk until it can.

With ``sidecar`` set, a batch of records (or start notices) the sidecar did not acknowledge is
appended here instead of being held in memory or written to a local ledger that nobody reads:
the writer replays the journal to the sidecar once it answers again, and a worker started later
with the same folder replays what an earlier process left. The sidecar deduplicates by record
id, so a replay of something it had already committed (a POST the worker gave up on) is counted
as a duplicate, never stored twice.

The folder (setting ``journal``) holds one file per process, ``journal-<pid>-<random>.log``,
0600, created on first use and held with an exclusive ``flock`` while its process lives: a file
whose lock can be taken belongs to a process that is gone, and is adopted (replayed, then
removed). Each line is ``<length> <crc32> <json>`` (8 hex digits each), so a torn last line
(the process killed mid-write) or a damaged one is found, skipped, counted
(``journal.corrupt``) and said once. A batch is one ``write`` and one ``fsync``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from gpuledger import _guard
from gpuledger._location import private_file
from gpuledger._logging import get_logger
from gpuledger._record import InvocationRecord

__all__ = ["Journal", "decode_lines", "encode_line", "replay_into_ledger"]

RECORD: Final = "record"
START: Final = "start"
INVOCATIONS: Final = "invocations"
"""A batch spilled at close (``_build.spill``): read back as the records it holds."""
_HEADER: Final = 18
"""``%08x %08x `` before the JSON."""


def encode_line(entry: dict[str, Any]) -> bytes:
    """One journal line: ``<length> <crc32> <json>\\n`` (length and CRC of the JSON bytes)."""
    body = json.dumps(entry, separators=(",", ":"), allow_nan=False).encode()
    return b"%08x %08x %s\n" % (len(body), zlib.crc32(body), body)


def decode_lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The entries of a journal file's bytes, and how many lines were torn or damaged
    (skipped)."""
    entries: list[dict[str, Any]] = []
    bad = 0
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            length = int(line[0:8], 16)
            crc = int(line[9:17], 16)
            body = line[_HEADER:]
            if line[8:9] != b" " or line[17:18] != b" " or len(body) != length:
                raise ValueError("length")
            if zlib.crc32(body) != crc:
                raise ValueError("checksum")
            entry = json.loads(body)
            if not isinstance(entry, dict) or entry.get("k") not in (RECORD, START, INVOCATIONS):
                raise ValueError("entry")
            if not isinstance(entry.get("v"), dict):
                raise ValueError("entry")
            if entry["k"] == INVOCATIONS:
                from gpuledger._build import unspill  # noqa: PLC0415 - a spill's replay only

                records = unspill(entry["v"])
                entries.extend({"k": RECORD, "v": record.to_dict()} for record in records)
                continue
        except ValueError:
            bad += 1
            continue
        entries.append(entry)
    return entries, bad


class Journal:
    """This process's journal file in ``folder``, and the files of processes that are gone.

    One thread (the writer's) uses it."""

    def __init__(self, folder: str) -> None:
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, f"journal-{os.getpid()}-{secrets.token_hex(4)}.log")
        self._fd: int | None = None
        self.entries = 0
        """Entries in this process's file (0 once it was replayed and emptied)."""
        self.corrupt = 0
        """Lines found torn or damaged (and skipped) so far."""
        self._warned_corrupt = False

    def _open(self) -> int:
        if self._fd is None:
            private_file(self.path)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def append(self, kind: str, values: Iterable[dict[str, Any]]) -> int:
        """Append entries of ``kind`` (``record``, ``start`` or ``invocations``) in one write
        and one fsync; returns how many lines. Raises OSError (the disk is full, the folder
        unwritable)."""
        return self.append_entries({"k": kind, "v": each} for each in values)

    def append_entries(self, entries: Iterable[dict[str, Any]]) -> int:
        """Append ``{"k": kind, "v": value}`` entries in one write and one fsync; returns how
        many records and start notices they hold (an ``invocations`` entry holds its rows)."""
        lines: list[bytes] = []
        count = 0
        for entry in entries:
            lines.append(encode_line(entry))
            count += len(entry["v"]["rows"]) if entry["k"] == INVOCATIONS else 1
        data = b"".join(lines)
        if not data:
            return 0
        fd = self._open()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        self.entries += count
        return count

    def read_own(self) -> list[dict[str, Any]]:
        """The entries of this process's file."""
        if self._fd is None:
            return []
        return self._read(self.path)

    def rewrite_own(self, entries: Sequence[dict[str, Any]]) -> None:
        """Replace this process's file by ``entries`` (what is still not acknowledged)."""
        fd = self._open()
        os.ftruncate(fd, 0)
        self.entries = 0
        if entries:
            data = b"".join(encode_line(entry) for entry in entries)
            os.write(fd, data)
            self.entries = len(entries)
        os.fsync(fd)

    def orphans(self) -> list[tuple[str, int]]:
        """The files of processes that are gone, each locked for this process: ``(path, fd)``;
        release each with :meth:`done_with` (``remove=True`` once replayed)."""
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:
            return []
        found: list[tuple[str, int]] = []
        for name in names:
            path = os.path.join(self.folder, name)
            if path == self.path or not (name.startswith("journal-") and name.endswith(".log")):
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its process still runs
                os.close(fd)
                continue
            found.append((path, fd))
        return found

    def read(self, path: str) -> list[dict[str, Any]]:
        """The entries of the journal file at ``path`` (torn or damaged lines counted)."""
        return self._read(path)

    @staticmethod
    def done_with(path: str, fd: int, *, remove: bool, keep: Sequence[dict[str, Any]] = ()) -> None:
        """Release an adopted file: removed, or rewritten to ``keep``."""
        try:
            if remove and not keep:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            else:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, b"".join(encode_line(entry) for entry in keep))
                os.fsync(fd)
        finally:
            os.close(fd)

    def _read(self, path: str) -> list[dict[str, Any]]:
        with open(path, "rb") as file:
            data = file.read()
        entries, bad = decode_lines(data)
        if bad:
            self.corrupt += bad
            _guard.count("journal.corrupt", bad)
            if not self._warned_corrupt:
                self._warned_corrupt = True
                get_logger().warning(
                    "gpuledger journal: torn or damaged lines skipped (a process killed "
                    "mid-write leaves a torn last line); counted as gpuledger.telemetry.errors "
                    "kind=journal.corrupt",
                    journal=path,
                    skipped=bad,
                )
        return entries

    def close(self) -> None:
        """Close this process's file; removed when empty (its lock goes with it)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self.entries == 0:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(fd)


def replay_into_ledger(journal: Journal, write: Callable[[list[InvocationRecord]], object]) -> int:
    """Write the records the files of processes that are gone left in ``journal``'s folder with
    ``write`` (a ledger's ``write``, which skips records it has), and remove those files;
    returns how many records were replayed. A file whose records ``write`` could not take
    (it raised) is kept, whole, for the next time; the error is re-raised after the others.

    Start notices in such a file (written with a sidecar that was down) are dropped: with no
    sidecar to watch the pid, an invocation that never finished has no record to give."""
    replayed = 0
    failure: BaseException | None = None
    for path, fd in journal.orphans():
        try:
            entries = journal.read(path)
            records = [
                InvocationRecord.from_dict(entry["v"]) for entry in entries if entry["k"] == RECORD
            ]
            if records:
                write(records)
        except Exception as error:  # kept for the next process; the others still go
            os.close(fd)  # the lock goes; the file stays as it was
            failure = failure or error
            continue
        journal.done_with(path, fd, remove=True)
        replayed += len(records)
    if replayed:
        get_logger().info(
            "gpuledger journal replayed into the ledger", records=replayed, journal=journal.folder
        )
    if failure is not None:
        raise failure
    return replayed
