"""The spool: one SQLite file (WAL) that holds what the sidecar acknowledged until every
consumer delivered it (see ``gpuledger.sidecar`` for its tables and guarantees).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from gpuledger._errors import SidecarError

MIN_SPOOL_BYTES: Final = 64 * 1024
SYNCHRONOUS_MODES: Final = ("normal", "full")
DEFAULT_DEDUPE_WINDOW_S: Final = 3600.0
"""How long the id of a delivered (and deleted) record is remembered to catch late duplicates."""


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

_INSERT_RECORD: Final = (
    "INSERT INTO records (record_id, body, received_ns) SELECT ?, ?, ? "
    "WHERE NOT EXISTS (SELECT 1 FROM delivered WHERE record_id = ?) "
    "ON CONFLICT (record_id) DO NOTHING"
)
_INSERT_START: Final = (
    "INSERT INTO starts (record_id, body, received_ns, pid_start) SELECT ?, ?, ?, ? "
    "WHERE NOT EXISTS (SELECT 1 FROM records WHERE record_id = ?) "
    "AND NOT EXISTS (SELECT 1 FROM delivered WHERE record_id = ?) "
    "ON CONFLICT (record_id) DO NOTHING"
)


def _add_only_for(connection: sqlite3.Connection) -> None:
    columns = {row[1] for row in connection.execute("PRAGMA table_info(records)")}
    if "only_for" not in columns:
        connection.execute(_ONLY_FOR)


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
        self, path: str, *, synchronous: str = "normal", max_bytes: int | None = None
    ) -> None:
        self.path = path
        self._lock = _FairLock()
        self._lock_file: int | None = None
        self._connection: sqlite3.Connection | None = None
        lock_existed = os.path.exists(f"{path}.lock")
        try:
            self._take_lock()
            self._connection = connection = sqlite3.connect(
                path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            tables = {
                name
                for (name,) in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
            if tables - _TABLES:
                raise SidecarError(
                    f"{path} is not a gpuledger spool (it has the table(s) "
                    f"{', '.join(sorted(tables - _TABLES))}): give --spool a file of its own"
                )
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SidecarError(f"the spool at {path} cannot use WAL mode (got {mode})")
            connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            connection.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                connection.execute(statement)
            _add_only_for(connection)
            connection.execute("COMMIT")
            if max_bytes is not None:
                page_size = connection.execute("PRAGMA page_size").fetchone()[0]
                pages = max(max_bytes // page_size, 1)
                connection.execute(f"PRAGMA max_page_count = {pages}")
        except BaseException as error:
            self.close()
            if not lock_existed:
                with contextlib.suppress(OSError):
                    os.unlink(f"{path}.lock")
            if isinstance(error, sqlite3.Error):
                raise SidecarError(f"cannot open the spool at {path}: {error}") from error
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

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            connection = self._require()
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return result

    def _query(self, sql: str, parameters: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            return self._require().execute(sql, parameters).fetchall()

    def add_records(self, rows: Sequence[tuple[str, str]], received_ns: int) -> tuple[int, int]:
        """Spool ``(record_id, body)`` rows in one transaction and close their starts; returns
        ``(accepted, duplicates)``."""

        def work(connection: sqlite3.Connection) -> int:
            before = connection.total_changes
            connection.executemany(
                _INSERT_RECORD,
                [(record_id, body, received_ns, record_id) for record_id, body in rows],
            )
            accepted = connection.total_changes - before
            connection.executemany(
                "DELETE FROM starts WHERE record_id = ?", [(record_id,) for record_id, _ in rows]
            )
            return accepted

        accepted: int = self._transaction(work)
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

        accepted: int = self._transaction(work)
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
            low = int(found[1])
            if remember:
                connection.execute(
                    "INSERT INTO delivered (record_id, delivered_ns) "
                    "SELECT record_id, ? FROM records WHERE seq <= ? "
                    "ON CONFLICT (record_id) DO NOTHING",
                    (now_ns, low),
                )
            return connection.execute("DELETE FROM records WHERE seq <= ?", (low,)).rowcount

        try:
            deleted: int = self._transaction(lambda connection: work(connection, True))
        except sqlite3.OperationalError:
            # A full spool has no room for the ids: delete the rows anyway (space is what it
            # needs), forgetting those ids; a late duplicate of them would be spooled again.
            deleted = self._transaction(lambda connection: work(connection, False))
        return deleted

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
        """Replace the open start ``record_id`` by the record ``body``; False if its record
        arrived meanwhile (the start is gone already)."""

        def work(connection: sqlite3.Connection) -> bool:
            deleted = connection.execute("DELETE FROM starts WHERE record_id = ?", (record_id,))
            if deleted.rowcount == 0:
                return False
            connection.execute(_INSERT_RECORD, (record_id, body, received_ns, record_id))
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
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
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


def redrive_dead_letters(path: str, ids: Sequence[int] | None = None) -> list[DeadLetter]:
    """Put dead letters (``ids``, or all) back in the spool for the consumers that set them
    aside (and any that had not reached the row yet), as new rows at the end; returns those
    re-driven. A running sidecar picks them up within a second."""
    connection = _open_existing(path)

    def work() -> list[DeadLetter]:
        _add_only_for(connection)
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
            connection.execute("DELETE FROM delivered WHERE record_id = ?", (first.record_id,))
            connection.execute(
                "INSERT INTO records (record_id, body, received_ns, only_for) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (record_id) DO NOTHING",
                (first.record_id, first.body, first.dead_ns, f",{','.join(sorted(consumers))},"),
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
