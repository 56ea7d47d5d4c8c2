"""The spool: one SQLite file (WAL) that holds what the sidecar acknowledged until every
consumer delivered it (see ``gpuledger.sidecar`` for its tables and guarantees).

Faults it survives:

- **Damage.** At open, ``PRAGMA quick_check`` (on a read-only connection, which never writes
  the file) reads every page; a file that fails it, or is not a database, is moved aside to
  ``<name>.corrupt-<UTC timestamp>`` (with its ``-wal`` and ``-shm``) and a fresh spool started
  (:attr:`Spool.set_aside` says what was moved and why).
- **A full disk.** ``<name>.reserve`` is a file of ``reserve_bytes`` real (not sparse) bytes
  next to the spool. The first write that fails for lack of room (``SQLITE_FULL``, ENOSPC)
  deletes it, so that what frees space needs (cursors, pruning, checkpoints: each grows the WAL)
  always has room, and the spool is *full*: new records are refused (:class:`SpoolFull`) without
  being tried, so they cannot take that room, until the filesystem has twice the reserve free
  again; then the reserve is made again and writes resume. A cap from ``max_bytes`` (the database
  at its page count, the disk not full) is not that state: pruning makes room inside the file.
- **Growth.** ``max_bytes`` covers the database *and* its WAL: a quarter of it (at most 16 MiB)
  is the WAL's (``journal_size_limit``, checkpoints that often), the rest the page cap. A new
  spool uses ``auto_vacuum = INCREMENTAL``; after the consumers drain it, freed pages go back to
  the filesystem (``incremental_vacuum``) and the WAL is truncated (``wal_checkpoint(TRUNCATE)``).
  A spool made before this is converted by one ``VACUUM`` the first time it is empty.

Why one module of this size: the spool is one file and one connection; its fault handling (the
integrity check, the reserve, shrinking) acts on the same connection under the same lock as the
transactions it protects, and the dead-letter commands read the same tables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from gpuledger._errors import SidecarError
from gpuledger._location import private_file
from gpuledger._record import RECORDED_BY_SIDECAR
from gpuledger._sqlite_files import is_full, move_aside, quick_check

MIN_SPOOL_BYTES: Final = 64 * 1024
SYNCHRONOUS_MODES: Final = ("normal", "full")
DEFAULT_DEDUPE_WINDOW_S: Final = 3600.0
"""How long the id of a delivered (and deleted) record is remembered to catch late duplicates."""
DEFAULT_RESERVE_BYTES: Final = 8 * 1024 * 1024
"""The room kept back for cursors, pruning and checkpoints on a full disk: a prune of a batch of
512 records rewrites up to ~1,000 pages (rows, their ``record_id`` index, ``delivered``)."""
_WAL_LIMIT_BYTES: Final = 16 * 1024 * 1024
"""The WAL is truncated back to this after a checkpoint (a quarter of ``max_bytes`` if less)."""
_SHRINK_EVERY_S: Final = 1.0
"""The most often freed pages are given back to the filesystem (while the spool is not empty)."""
_SHRINK_FREE_PAGES: Final = 256
"""Free pages (1 MiB of 4 KiB pages) worth giving back while records are still spooled."""
_TRICKLE_STEPS: Final = 4
"""Vacuum steps a second while records still wait (``_VACUUM_STEP`` pages each: 1 MiB)."""
_PRUNE_ROWS: Final = 64
"""Rows deleted per transaction when pruning on a full disk (the WAL must fit the reserve)."""
_PRUNE_ROWS_ROOMY: Final = 2048
"""Rows deleted per transaction when pruning with room on the disk."""
_VACUUM_STEP: Final = 64
"""Pages given back per step (each step's WAL is checkpointed before the next) on a full disk
and while records still wait."""
_VACUUM_STEP_ROOMY: Final = 8192
"""Pages given back per step when the spool is empty and the disk has room (32 MiB)."""
_SMALL_WAL_BYTES: Final = 256 * 1024
"""A WAL this small is left alone when the spool is empty (truncating it costs an fsync)."""


_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        record_id TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        received_ns INTEGER NOT NULL)""",
    # pid_start: the pid's start time when the notice came (/proc), to tell a reused pid apart;
    # gone_ns: when the watcher first found the pid gone.
    """CREATE TABLE IF NOT EXISTS starts (
        record_id TEXT NOT NULL PRIMARY KEY,
        body TEXT NOT NULL,
        received_ns INTEGER NOT NULL,
        pid_start INTEGER,
        gone_ns INTEGER)""",
    """CREATE TABLE IF NOT EXISTS cursors (
        consumer TEXT NOT NULL PRIMARY KEY,
        seq INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS delivered (
        record_id TEXT NOT NULL PRIMARY KEY,
        delivered_ns INTEGER NOT NULL)""",
    # Records a consumer could not deliver (its raw row, why, when): set aside so that they do
    # not hold the records behind them; ``gpuledger sidecar dead-letters`` lists and re-drives.
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        seq INTEGER NOT NULL,
        record_id TEXT NOT NULL,
        consumer TEXT NOT NULL,
        body TEXT NOT NULL,
        reason TEXT NOT NULL,
        dead_ns INTEGER NOT NULL)""",
)
_TABLES: Final = frozenset(
    {"records", "starts", "cursors", "delivered", "dead_letters", "sqlite_sequence"}
)
_ONLY_FOR: Final = "ALTER TABLE records ADD COLUMN only_for TEXT"
"""A re-driven record goes to the consumers that had not delivered it: ``,ledger,otlp,`` (NULL:
all of them). Added to a spool made before dead letters existed."""
_STAND_IN: Final = "ADD COLUMN stand_in INTEGER NOT NULL DEFAULT 0"
"""1 for the sidecar's own record of an invocation that never reported (``recorded_by``
``"sidecar"``), spooled or delivered: the real record, should it arrive after all, replaces it
instead of being a duplicate. On ``records`` and ``delivered``; added to a spool made before
records said who wrote them (whose rows are all 0: their stand-ins are not known as such)."""
_ADDED_COLUMNS: Final = (
    ("records", "only_for", _ONLY_FOR),
    ("records", "stand_in", f"ALTER TABLE records {_STAND_IN}"),
    ("delivered", "stand_in", f"ALTER TABLE delivered {_STAND_IN}"),
)
"""The spool's schema is versioned by its columns: each one added since the first spool, with
the statement that adds it where it is missing (at every open, and before a re-drive)."""

_INSERT_RECORD: Final = (
    "INSERT INTO records (record_id, body, received_ns, stand_in) SELECT ?, ?, ?, ? "
    "WHERE NOT EXISTS (SELECT 1 FROM delivered WHERE record_id = ?) "
    "ON CONFLICT (record_id) DO NOTHING"
)
_DROP_STAND_IN: Final = (
    "DELETE FROM records WHERE record_id = ? AND stand_in = 1",
    "DELETE FROM delivered WHERE record_id = ? AND stand_in = 1",
)
"""What a real record clears when its id is here already: the sidecar's stand-in for it,
spooled or delivered; the real record is then spooled after all, as a row of its own at a new
``seq``. A spooled stand-in's row goes (a consumer that had not reached it delivers only the
real one); past a delivered one, every consumer delivers the real record: the ledger replaces
the stand-in (``recorded_by``), OTLP sends the span again."""
_INSERT_START: Final = (
    "INSERT INTO starts (record_id, body, received_ns, pid_start) SELECT ?, ?, ?, ? "
    "WHERE NOT EXISTS (SELECT 1 FROM records WHERE record_id = ?) "
    "AND NOT EXISTS (SELECT 1 FROM delivered WHERE record_id = ?) "
    "ON CONFLICT (record_id) DO NOTHING"
)


def _run(connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], Any]) -> Any:
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = work(connection)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result


def _add_columns(connection: sqlite3.Connection) -> None:
    """Bring a spool made by an older sidecar to the current columns (:data:`_ADDED_COLUMNS`)."""
    present: dict[str, set[str]] = {}
    for table, column, statement in _ADDED_COLUMNS:
        if table not in present:
            present[table] = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        if column not in present[table]:
            connection.execute(statement)


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record a consumer set aside: its spool row (``seq``, ``record_id``, ``body`` as stored),
    the consumer, why, and when (Unix ns)."""

    id: int
    seq: int
    record_id: str
    consumer: str
    body: str
    reason: str
    dead_ns: int


class SpoolFull(sqlite3.OperationalError):
    """The disk under the spool is full: records are refused until it has room again."""


@dataclasses.dataclass(frozen=True, slots=True)
class SetAside:
    """A damaged spool moved aside at open: where to (``moved_to``, its -wal/-shm beside it),
    why (what SQLite said), and how long the check took (seconds)."""

    moved_to: str
    reason: str
    check_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class OpenStart:
    """A start notice with no record yet."""

    record_id: str
    values: dict[str, Any]
    pid_start: int | None
    gone_ns: int | None


class _FairLock:
    """A first-come, first-served lock. ``threading.Lock`` is not fair: under a steady stream
    of requests the receiver's threads kept taking it back, and the consumers starved (the
    ledger got nothing until the load stopped). Tickets served in order make every waiter wait
    at most one turn per thread ahead of it."""

    __slots__ = ("_condition", "_next", "_serving")

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._next = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._condition:
            ticket = self._next
            self._next += 1
            while self._serving != ticket:
                self._condition.wait()

    def __exit__(self, *exc_info: object) -> None:
        with self._condition:
            self._serving += 1
            self._condition.notify_all()


class Spool:
    """The sidecar's disk spool (see the module docstring). Thread-safe: one connection, one
    fair lock, so writes never wait on each other's file locks, ``seq`` order is commit order,
    and the consumers get their turn under a steady load."""

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "normal",
        max_bytes: int | None = None,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        self.path = path
        self._lock = _FairLock()
        self._lock_file: int | None = None
        self._connection: sqlite3.Connection | None = None
        self.set_aside: SetAside | None = None
        """The damaged spool this open moved aside, if it did."""
        self.check_s = 0.0
        """How long the integrity check at open took (seconds)."""
        self._reserve_path = f"{path}.reserve"
        if max_bytes is not None:  # a small spool keeps back proportionately
            reserve_bytes = min(reserve_bytes, max(max_bytes // 4, MIN_SPOOL_BYTES))
        self._reserve_bytes = reserve_bytes
        self._full = False
        self._last_shrink = 0.0
        self.last_seq = 0
        """The highest ``seq`` spooled (0 before any): with a consumer's cursor, a bound on
        what it has left to deliver that costs no scan (gaps only make it larger)."""
        lock_existed = os.path.exists(f"{path}.lock")
        try:
            self._take_lock()
            started = time.perf_counter()
            reason = quick_check(path)
            self.check_s = time.perf_counter() - started
            if reason is not None:
                self.set_aside = SetAside(move_aside(path), reason, self.check_s)
            try:
                self._connection = self._connect(synchronous, max_bytes)
            except sqlite3.OperationalError as error:
                # Opening writes (the -shm, the schema of a new file): on a full disk, use the
                # reserve a previous run left.
                if not is_full(error) or not self._release_reserve():
                    raise
                self.close_connection()
                self._connection = self._connect(synchronous, max_bytes)
            self._make_reserve()
        except BaseException as error:
            self.close()
            if not lock_existed:
                with contextlib.suppress(OSError):
                    os.unlink(f"{path}.lock")
            if isinstance(error, sqlite3.Error):
                raise SidecarError(f"cannot open the spool at {path}: {error}") from error
            raise

    def _connect(self, synchronous: str, max_bytes: int | None) -> sqlite3.Connection:
        path = self.path
        private_file(path)  # 0600 before SQLite creates it (its -wal and -shm follow)
        self._connection = connection = sqlite3.connect(
            path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        tables = {
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if tables - _TABLES:
            raise SidecarError(
                f"{path} is not a gpuledger spool (it has the table(s) "
                f"{', '.join(sorted(tables - _TABLES))}): give --spool a file of its own"
            )
        if not tables:
            # Before the first table, or it has no effect: freed pages can be given back.
            connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SidecarError(f"the spool at {path} cannot use WAL mode (got {mode})")
        connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        wal_limit = _WAL_LIMIT_BYTES if max_bytes is None else min(max_bytes // 4, _WAL_LIMIT_BYTES)
        connection.execute(f"PRAGMA journal_size_limit = {wal_limit}")
        # A checkpoint copies the WAL into the database, which may grow by as much: the WAL is
        # checkpointed before it holds more than half the reserve, so that on a full disk the
        # reserve is room enough for the checkpoint that lets everything else move.
        checkpoint_pages = min(wal_limit, self._reserve_bytes or wal_limit) // page_size // 2
        connection.execute(f"PRAGMA wal_autocheckpoint = {min(max(checkpoint_pages, 1), 1000)}")
        connection.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            connection.execute(statement)
        _add_columns(connection)
        connection.execute("COMMIT")
        if max_bytes is not None:
            pages = max((max_bytes - wal_limit) // page_size, 1)
            connection.execute(f"PRAGMA max_page_count = {pages}")
        self.last_seq = connection.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[
            0
        ]
        return connection

    def close_connection(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- the reserve (see the module docstring) ---------------------------------------------

    @property
    def full(self) -> bool:
        """True while the disk is full: records are refused until it has room again."""
        return self._full

    def room_again(self) -> bool:
        """Whether records can be taken (the disk no longer full, the reserve made again): asked
        by ``/healthz``, so that health comes back with the room, not only with the next POST."""
        with self._lock:
            return self._has_room()

    def _disk_free(self) -> int:
        stats = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        return stats.f_bavail * stats.f_frsize

    def _make_reserve(self) -> bool:
        """Write the reserve if it is missing; False if there is no room for it."""
        if self._reserve_bytes <= 0:
            return True
        with contextlib.suppress(OSError):
            if os.path.getsize(self._reserve_path) >= self._reserve_bytes:
                return True
        try:
            fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                # Written, not fallocated: every filesystem (tmpfs, overlay) counts these bytes.
                block = b"\0" * (1 << 16)
                left = self._reserve_bytes
                while left > 0:
                    left -= os.write(fd, block[: min(left, len(block))])
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(self._reserve_path)
            return False
        return True

    def _release_reserve(self) -> bool:
        """Delete the reserve; False if there was none."""
        try:
            os.unlink(self._reserve_path)
        except FileNotFoundError:
            return False
        return True

    def _on_full(self) -> None:
        """A write found no room. On a full disk (not the page cap), enter the full state and
        free the reserve for the consumers."""
        if self._disk_free() >= 2 * max(self._reserve_bytes, MIN_SPOOL_BYTES):
            return  # the disk has room: the page cap, which pruning lifts
        self._full = True
        self._release_reserve()

    def _has_room(self) -> bool:
        """While full: whether the disk has room again (then the reserve is made again)."""
        if not self._full:
            return True
        if self._disk_free() < 2 * max(self._reserve_bytes, MIN_SPOOL_BYTES):
            return False
        if not self._make_reserve():
            return False
        self._full = False
        return True

    def _write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """A transaction for new records or starts: refused while the disk is full."""
        if not self._has_room():
            raise SpoolFull(
                "database or disk is full: the disk under the spool has no room; the room kept "
                "back is for delivering what is spooled"
            )
        try:
            return self._transaction(work, make_room=False)
        except sqlite3.OperationalError as error:
            if is_full(error):
                self._on_full()
            raise

    def _take_lock(self) -> None:
        """One sidecar per spool: two would both deliver every record. The lock is a file of its
        own (``<spool>.lock``): an flock on the database file would be released when SQLite
        closes any descriptor of it."""
        import fcntl  # noqa: PLC0415  (POSIX only, like the pid checks)

        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise SidecarError(
                f"cannot create the spool's lock file {lock_path}: {error}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SidecarError(
                f"another gpuledger sidecar is using the spool at {self.path}"
            ) from None
        self._lock_file = fd

    def _require(self) -> sqlite3.Connection:
        if self._connection is None:
            raise sqlite3.ProgrammingError("the spool is closed")
        return self._connection

    def _transaction(
        self, work: Callable[[sqlite3.Connection], Any], *, make_room: bool = True
    ) -> Any:
        """Run ``work`` in one transaction. With ``make_room`` (what delivers and frees space:
        cursors, pruning, the watcher), a write that finds no room frees the reserve, truncates
        the WAL and is tried once more."""
        with self._lock:
            connection = self._require()
            try:
                return _run(connection, work)
            except sqlite3.OperationalError as error:
                if not (make_room and is_full(error)):
                    raise
                self._on_full()
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return _run(connection, work)

    def _query(self, sql: str, parameters: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            return self._require().execute(sql, parameters).fetchall()

    def add_records(
        self, rows: Sequence[tuple[str, str] | tuple[str, str, bool]], received_ns: int
    ) -> tuple[int, int]:
        """Spool ``(record_id, body)`` rows, or ``(record_id, body, stand_in)``, in one
        transaction and close their starts; returns ``(accepted, duplicates)``.

        ``stand_in`` (default False): the record is the sidecar's own (``recorded_by``). A real
        record whose id is spooled or was delivered as a stand-in is accepted, replacing it
        (:data:`_DROP_STAND_IN`); a stand-in whose id is here in any form is a duplicate, as
        is a real record already here."""

        def work(connection: sqlite3.Connection) -> int:
            flagged = [(row[0], row[1], row[2] if len(row) == 3 else False) for row in rows]
            ordered = flagged
            if any(stand_in for _, _, stand_in in flagged):
                # A stand-in and its real record in one batch: the real one goes in first, and
                # the stand-in is a duplicate (sorted() is stable: the real ones keep order).
                ordered = sorted(flagged, key=lambda row: row[2])
            values = [
                (record_id, body, received_ns, int(stand_in), record_id)
                for record_id, body, stand_in in ordered
            ]
            before = connection.total_changes
            connection.executemany(_INSERT_RECORD, values)
            accepted = connection.total_changes - before
            if accepted < len(rows):
                # Some were here already (a retry, a replay): the real ones among them replace
                # a stand-in. Looked for only then, so that new records cost nothing more.
                real = [row for row in values if not row[3]]
                dropped = connection.total_changes
                for statement in _DROP_STAND_IN:
                    connection.executemany(statement, [(row[0],) for row in real])
                if connection.total_changes > dropped:
                    before = connection.total_changes
                    connection.executemany(_INSERT_RECORD, real)
                    accepted += connection.total_changes - before
            connection.executemany(
                "DELETE FROM starts WHERE record_id = ?", [(row[0],) for row in rows]
            )
            if accepted:
                self.last_seq = connection.execute("SELECT MAX(seq) FROM records").fetchone()[0]
            return accepted

        accepted: int = self._write(work)
        return accepted, len(rows) - accepted

    def add_starts(
        self, rows: Sequence[tuple[str, str, int | None]], received_ns: int
    ) -> tuple[int, int]:
        """Spool ``(record_id, body, pid_start)`` start notices; a start whose record is here or
        was delivered already is a duplicate. Returns ``(accepted, duplicates)``."""

        def work(connection: sqlite3.Connection) -> int:
            before = connection.total_changes
            connection.executemany(
                _INSERT_START,
                [
                    (record_id, body, received_ns, pid_start, record_id, record_id)
                    for record_id, body, pid_start in rows
                ],
            )
            return connection.total_changes - before

        accepted: int = self._write(work)
        return accepted, len(rows) - accepted

    def cursor(self, consumer: str) -> int:
        """Where ``consumer`` got to (0: nothing delivered yet)."""
        rows = self._query("SELECT seq FROM cursors WHERE consumer = ?", (consumer,))
        return int(rows[0][0]) if rows else 0

    def read(self, after_seq: int, limit: int) -> list[tuple[int, str, str | None]]:
        """Up to ``limit`` ``(seq, body, only_for)`` rows after ``after_seq``, in ``seq`` order
        (``only_for``: see ``_ONLY_FOR``)."""
        return self._query(
            "SELECT seq, body, only_for FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )

    def dead_letter(self, consumer: str, rows: Sequence[tuple[int, str]], dead_ns: int) -> None:
        """Set the rows ``(seq, reason)`` aside as ``consumer``'s dead letters (the consumer then
        moves its cursor past them)."""
        self._transaction(
            lambda connection: connection.executemany(
                "INSERT INTO dead_letters (seq, record_id, consumer, body, reason, dead_ns) "
                "SELECT seq, record_id, ?, body, ?, ? FROM records WHERE seq = ?",
                [(consumer, reason, dead_ns, seq) for seq, reason in rows],
            )
        )

    def advance(self, consumer: str, seq: int) -> None:
        """Record that ``consumer`` delivered everything up to ``seq``."""
        self._transaction(
            lambda connection: connection.execute(
                "INSERT INTO cursors (consumer, seq) VALUES (?, ?) "
                "ON CONFLICT (consumer) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                (consumer, seq),
            )
        )

    def prune(self, consumers: Sequence[str], now_ns: int) -> int:
        """Delete the rows every one of ``consumers`` has passed, remembering their ids in
        ``delivered``; returns how many were deleted."""

        def work(connection: sqlite3.Connection, remember: bool) -> int:
            marks = ",".join("?" * len(consumers))
            found = connection.execute(
                f"SELECT COUNT(*), MIN(seq) FROM cursors WHERE consumer IN ({marks})",
                tuple(consumers),
            ).fetchone()
            if found[0] < len(consumers):
                return 0  # a consumer that never delivered holds everything
            # In chunks: a delete rewrites every page it touches into the WAL, which on a full
            # disk must fit in the reserve (small chunks then; larger ones otherwise, each
            # commit rewriting the same pages into the WAL once, not once per 64 rows).
            low = connection.execute(
                "SELECT MAX(seq) FROM (SELECT seq FROM records WHERE seq <= ? ORDER BY seq "
                "LIMIT ?)",
                (int(found[1]), chunk_rows),
            ).fetchone()[0]
            if low is None:
                return 0
            if remember:
                connection.execute(
                    "INSERT INTO delivered (record_id, delivered_ns, stand_in) "
                    "SELECT record_id, ?, stand_in FROM records WHERE seq <= ? "
                    "ON CONFLICT (record_id) DO NOTHING",
                    (now_ns, low),
                )
            return connection.execute("DELETE FROM records WHERE seq <= ?", (low,)).rowcount

        chunk_rows = _PRUNE_ROWS if self._full else _PRUNE_ROWS_ROOMY
        deleted = 0
        while True:
            try:
                chunk: int = self._transaction(lambda connection: work(connection, True))
            except sqlite3.OperationalError:
                # A full spool has no room for the ids: delete the rows anyway (space is what
                # it needs), forgetting those ids; a late duplicate of them would be spooled
                # again.
                chunk = self._transaction(lambda connection: work(connection, False))
            deleted += chunk
            if chunk < chunk_rows:
                break
        if deleted:
            self.shrink()
        return deleted

    def shrink(self, *, force: bool = False) -> None:
        """Give freed pages back to the filesystem and truncate the WAL: all of them when the
        spool is empty or the disk is full; while records still wait, at most
        ``_TRICKLE_STEPS`` steps a second once many pages are free (the next records reuse free
        pages anyway, and the receiver waits for the spool's lock meanwhile: giving a drained
        burst's pages back all at once took half the ledger consumer's time). In steps of
        ``_VACUUM_STEP`` pages, each checkpointed, so that it needs little room (on a full
        disk, the reserve). A failure is left for the next time."""
        now = time.monotonic()
        with self._lock:
            connection = self._require()
            try:
                empty = connection.execute("SELECT NOT EXISTS (SELECT 1 FROM records)").fetchone()[
                    0
                ]
                free = connection.execute("PRAGMA freelist_count").fetchone()[0]
                wal = 0
                with contextlib.suppress(OSError):
                    wal = os.path.getsize(f"{self.path}-wal")
                urgent = force or self._full or (empty and (free or wal > _SMALL_WAL_BYTES))
                often = free >= _SHRINK_FREE_PAGES and now - self._last_shrink >= _SHRINK_EVERY_S
                if not (urgent or often):
                    return
                self._last_shrink = now
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                steps = None if urgent else _TRICKLE_STEPS
                # Big steps with room on the disk (each checkpoint copies the step's pages
                # once); small ones on a full disk, where the WAL must fit in the reserve.
                step = _VACUUM_STEP if self._full or not urgent else _VACUUM_STEP_ROOMY
                if connection.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:  # INCREMENTAL
                    while free and (steps is None or steps > 0):
                        if steps is not None:
                            steps -= 1
                        # executescript: Python's execute() steps a statement that returns
                        # no rows once, and each step of incremental_vacuum frees one page.
                        connection.executescript(f"PRAGMA incremental_vacuum({step});")
                        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                        left = connection.execute("PRAGMA freelist_count").fetchone()[0]
                        if left >= free:
                            break
                        free = left
                elif empty:
                    # A spool made before auto_vacuum: converted once, while it holds little.
                    connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
                    connection.execute("VACUUM")
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")

    def forget_delivered(self, before_ns: int) -> None:
        """Forget delivered ids older than ``before_ns``."""
        self._transaction(
            lambda connection: connection.execute(
                "DELETE FROM delivered WHERE delivered_ns < ?", (before_ns,)
            )
        )

    def open_starts(self) -> list[OpenStart]:
        """Every start notice without its record, oldest first."""
        rows = self._query(
            "SELECT record_id, body, pid_start, gone_ns FROM starts ORDER BY received_ns"
        )
        return [OpenStart(row[0], json.loads(row[1]), row[2], row[3]) for row in rows]

    def mark_gone(self, record_id: str, gone_ns: int) -> None:
        """Note when the pid of ``record_id``'s start was first found gone."""
        self._transaction(
            lambda connection: connection.execute(
                "UPDATE starts SET gone_ns = ? WHERE record_id = ? AND gone_ns IS NULL",
                (gone_ns, record_id),
            )
        )

    def close_start(self, record_id: str, body: str, received_ns: int) -> bool:
        """Replace the open start ``record_id`` by the sidecar's stand-in record ``body``
        (``killed``, ``timeout``); False if its record arrived meanwhile (the start is gone
        already)."""

        def work(connection: sqlite3.Connection) -> bool:
            deleted = connection.execute("DELETE FROM starts WHERE record_id = ?", (record_id,))
            if deleted.rowcount == 0:
                return False
            connection.execute(_INSERT_RECORD, (record_id, body, received_ns, 1, record_id))
            return True

        closed: bool = self._transaction(work)
        return closed

    def counts(self, cursors: Mapping[str, int]) -> dict[str, int]:
        """``spooled``, ``open_invocations`` and ``pending_<consumer>`` for each cursor given."""
        with self._lock:
            connection = self._require()
            result = {
                "spooled": connection.execute("SELECT COUNT(*) FROM records").fetchone()[0],
                "open_invocations": connection.execute("SELECT COUNT(*) FROM starts").fetchone()[0],
                "dead_letters": connection.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[
                    0
                ],
            }
            for consumer, seq in cursors.items():
                result[f"pending_{consumer}"] = connection.execute(
                    "SELECT COUNT(*) FROM records WHERE seq > ?", (seq,)
                ).fetchone()[0]
        return result

    def size_bytes(self) -> int:
        """The spool's files on disk (database and write-ahead log)."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(self.path + suffix)
        return total

    def close(self) -> None:
        """Close the database and release the lock; calling it again does nothing."""
        self.close_connection()
        if self._lock_file is not None:
            os.close(self._lock_file)  # releases the flock
            self._lock_file = None


# --- dead letters, from the command line (beside a running sidecar: a connection of its own,
# no lock; SQLite's WAL serialises the writes) ----------------------------------------------


def _open_existing(path: str) -> sqlite3.Connection:
    if not os.path.exists(path):
        raise SidecarError(f"no spool at {path}")
    try:
        connection = sqlite3.connect(path, timeout=10.0, isolation_level=None)
        tables = {
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    except sqlite3.Error as error:
        raise SidecarError(f"cannot read the spool at {path}: {error}") from error
    if "records" not in tables or tables - _TABLES:
        connection.close()
        raise SidecarError(f"{path} is not a gpuledger spool")
    if "dead_letters" not in tables:
        connection.close()
        raise SidecarError(f"the spool at {path} has no dead letters (made by an older sidecar)")
    return connection


def list_dead_letters(path: str) -> list[DeadLetter]:
    """The dead letters of the spool at ``path``, oldest first."""
    connection = _open_existing(path)
    try:
        rows = connection.execute(
            "SELECT id, seq, record_id, consumer, body, reason, dead_ns FROM dead_letters "
            "ORDER BY id"
        ).fetchall()
    except sqlite3.Error as error:
        raise SidecarError(f"cannot read the spool at {path}: {error}") from error
    finally:
        connection.close()
    return [DeadLetter(*row) for row in rows]


_REAL_ONE_HERE: Final = (
    "SELECT 1 FROM records WHERE record_id = ? AND stand_in = 0 "
    "UNION ALL SELECT 1 FROM delivered WHERE record_id = ? AND stand_in = 0"
)


def _is_stand_in(body: str) -> bool:
    """Whether a dead letter's ``body`` is the sidecar's stand-in record (False for a body that
    is not a record at all: a dead letter may be one)."""
    try:
        values = json.loads(body)
    except ValueError:
        return False
    return isinstance(values, dict) and values.get("recorded_by") == RECORDED_BY_SIDECAR


def redrive_dead_letters(path: str, ids: Sequence[int] | None = None) -> list[DeadLetter]:
    """Put dead letters (``ids``, or all) back in the spool for the consumers that set them
    aside (and any that had not reached the row yet), as new rows at the end; returns those
    re-driven. A running sidecar picks them up within a second.

    A stand-in (the sidecar's ``killed``/``timeout`` record) whose real record has arrived
    since, spooled or delivered, is not put back, only removed: the real one replaced it."""
    connection = _open_existing(path)

    def work() -> list[DeadLetter]:
        _add_columns(connection)
        letters = [
            DeadLetter(*row)
            for row in connection.execute(
                "SELECT id, seq, record_id, consumer, body, reason, dead_ns FROM dead_letters "
                "ORDER BY id"
            )
            if ids is None or row[0] in ids
        ]
        cursors = dict(connection.execute("SELECT consumer, seq FROM cursors").fetchall())
        by_row: dict[int, list[DeadLetter]] = {}
        for letter in letters:
            by_row.setdefault(letter.seq, []).append(letter)
        for seq, group in by_row.items():
            consumers = {letter.consumer for letter in group}
            if connection.execute("SELECT 1 FROM records WHERE seq = ?", (seq,)).fetchone():
                # Still spooled: the consumers that have not reached it get it from the new row.
                consumers |= {name for name, at in cursors.items() if at < seq}
                connection.execute("DELETE FROM records WHERE seq = ?", (seq,))
            first = group[0]
            stand_in = _is_stand_in(first.body)
            if stand_in and connection.execute(_REAL_ONE_HERE, (first.record_id,) * 2).fetchone():
                continue
            connection.execute("DELETE FROM delivered WHERE record_id = ?", (first.record_id,))
            connection.execute(
                "INSERT INTO records (record_id, body, received_ns, only_for, stand_in) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (record_id) DO NOTHING",
                (
                    first.record_id,
                    first.body,
                    first.dead_ns,
                    f",{','.join(sorted(consumers))},",
                    int(stand_in),
                ),
            )
        connection.executemany(
            "DELETE FROM dead_letters WHERE id = ?", [(letter.id,) for letter in letters]
        )
        return letters

    try:
        connection.execute("BEGIN IMMEDIATE")
        try:
            done = work()
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    except sqlite3.Error as error:
        raise SidecarError(f"cannot re-drive the dead letters in {path}: {error}") from error
    finally:
        connection.close()
    return done
