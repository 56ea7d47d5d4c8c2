"""How long ``gpuledger report --by user`` takes, and its peak memory, from 100,000 to 10,000,000
rows: the report computed in the database (``ledger_report``) against the report before issue 16
(every record read into Python, then ``aggregate``) and against merely fetching every row
(``Ledger.read``), side by side in the same run, each in a fresh process.

The ledger is real traffic: ``gpuledger demo --requests BASE`` (the real agent, four users,
scale-to-zero workers: 20,000 requests are 82 workers over 15 hours) copied in SQL up to the
size, each copy with its own record ids, invocation ids and billing workers (and their observed
stops), shifted back by a whole number of the demo's span so that the copies fill the last 28
days, several side by side (a fleet). The newest rows ended an hour before the run, so no worker
may still be running. SQLite ledgers are files under ``--dir``; ``--postgres N`` also loads N rows
into a throwaway PostgreSQL (Debian's, started on 127.0.0.1 as the tests start it, stopped by
pid) and reports ``--by user --since 30d`` there.

Time is the child's wall time for the report alone (opening the ledger included, importing
gpuledger not); memory is the child's peak resident set (``ru_maxrss``).

    .venv/bin/python benchmarks/bench_report.py                             # 100k and 1M, SQLite
    .venv/bin/python benchmarks/bench_report.py --sizes 100000 --postgres 0  # smoke
    .venv/bin/python benchmarks/bench_report.py --sizes 1000000 --postgres 10000000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECOND_NS = 1_000_000_000
WINDOW_NS = 28 * 86_400 * SECOND_NS
"""The copies fill the last 28 days: ``--since 30d`` covers them all."""
_COPIED = {
    "record_id": "record_id || '-c{k}'",
    "invocation_id": "invocation_id || '-c{k}'",
    "billing_worker": "billing_worker || '-c{k}'",
    "worker_id": "worker_id || '-c{k}'",
}
_SHIFTED = ("start_ns", "end_ns", "worker_start_ns", "worker_ready_ns")


# --- the child: one report, timed ----------------------------------------------------------------


def child(mode: str, location: str, by: str, since: str | None) -> None:
    # Imported here: the parent only runs children and builds ledgers.
    from gpuledger.cli._billing import billing_options  # noqa: PLC0415
    from gpuledger.ledger import (  # noqa: PLC0415
        aggregate,
        ledger_report,
        open_ledger,
        parse_since,
        totals,
    )

    started = time.perf_counter()
    now_ns = time.time_ns()
    since_ns = None if since is None else parse_since(since, now_ns=now_ns)
    billing = billing_options(None, "separate")
    with open_ledger(location, create=False) as ledger:
        if mode == "fetch":
            rows = sum(1 for _ in ledger.read(since_ns=since_ns))
            total_usd = None
        elif mode == "records":
            records = list(ledger.read(since_ns=since_ns))
            stops = ledger.read_stops()
            report_rows = aggregate(records, by, stops=stops, now_ns=now_ns, **billing)
            total = totals(report_rows)
            rows, total_usd = total.invocations, total.cost_usd
        else:
            report_rows, whole = ledger_report(
                ledger, by, since_ns=since_ns, now_ns=now_ns, **billing
            )
            rows = whole.invocations if whole else 0
            total_usd = whole.cost_usd if whole else None
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rows": rows, "total_usd": total_usd}))


def run_child(mode: str, location: str, by: str, since: str | None) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", mode, location, by, since or ""]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=ROOT)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{mode} on {location} failed: status {status}")
    result: dict[str, Any] = json.loads(output)
    result["peak_mib"] = usage.ru_maxrss / 1024
    return result


# --- the ledgers ---------------------------------------------------------------------------------


def demo_ledger(path: Path, requests: int) -> None:
    command = "from gpuledger.cli import main; main()"
    argv = [sys.executable, "-c", command, "demo", "--requests", str(requests)]
    subprocess.run(
        [*argv, "--ledger", str(path)], check=True, stdout=subprocess.DEVNULL, cwd=path.parent
    )


def _copy_statements(
    columns: Sequence[str], copies: int, span_ns: int, shift_ns: int
) -> Iterator[str]:
    """INSERT ... SELECT statements that add ``copies`` copies of the base rows, each shifted
    back by a whole number of the base's span within the last :data:`WINDOW_NS` (copies in the
    same slot are workers of the same fleet running side by side)."""
    slots = max(1, WINDOW_NS // span_ns)
    for k in range(1, copies + 1):
        offset = shift_ns - (k % slots) * span_ns
        values = []
        for column in columns:
            if column in _COPIED:
                values.append(_COPIED[column].format(k=k))
            elif column in _SHIFTED:
                values.append(f"{column} + ({offset})")
            else:
                values.append(column)
        yield (
            f"INSERT INTO invocations ({', '.join(columns)}) SELECT {', '.join(values)} "
            "FROM invocations WHERE record_id NOT LIKE '%-c%'"
        )
        yield (
            "INSERT INTO worker_stops (billing_worker, process, stop_ns, source) "
            f"SELECT billing_worker || '-c{k}', process, stop_ns + ({offset}), source "
            "FROM worker_stops WHERE billing_worker NOT LIKE '%-c%'"
        )


def _base_shape(connection: Any) -> tuple[list[str], int, int, int]:
    """The base's columns, its row count, its span (ns) and how far to shift it back so that it
    ends an hour ago."""
    cursor = connection.execute("SELECT * FROM invocations LIMIT 0")
    columns = [column[0] for column in cursor.description]
    count, first, last = connection.execute(
        "SELECT COUNT(*), MIN(start_ns), MAX(end_ns) FROM invocations"
    ).fetchone()
    span = last - first + 60 * SECOND_NS
    shift = min(0, time.time_ns() - 3600 * SECOND_NS - last)
    return columns, int(count), int(span), int(shift)


def sqlite_ledger(base: Path, path: Path, size: int) -> None:
    shutil.copy(base, path)
    connection = sqlite3.connect(path)
    columns, count, span, shift = _base_shape(connection)
    copies = max(0, size // count - 1)
    for statement in _copy_statements(columns, copies, span, shift):
        connection.execute(statement)
    # The base itself moves back too, so that the newest rows ended an hour ago.
    assigns = ", ".join(f"{column} = {column} + ({shift})" for column in _SHIFTED)
    connection.execute(f"UPDATE invocations SET {assigns} WHERE record_id NOT LIKE '%-c%'")
    connection.execute(
        f"UPDATE worker_stops SET stop_ns = stop_ns + ({shift}) "
        "WHERE billing_worker NOT LIKE '%-c%'"
    )
    connection.commit()
    connection.close()


def postgres_ledger(base: Path, dsn: str, size: int) -> None:
    import psycopg  # noqa: PLC0415  (the postgres extra)

    from gpuledger.ledger import open_ledger  # noqa: PLC0415

    with open_ledger(str(base), create=False) as source, open_ledger(dsn) as target:
        batch = []
        for record in source.read():
            batch.append(record)
            if len(batch) == 5000:
                target.write(batch)
                batch.clear()
        target.write(batch)
        stops = source._query(
            "SELECT billing_worker, process, stop_ns, source FROM worker_stops", []
        )
    with psycopg.connect(dsn, autocommit=True) as connection:
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO worker_stops VALUES (%s, %s, %s, %s)", [tuple(row) for row in stops]
            )
        columns, count, span, shift = _base_shape(connection)
        for statement in _copy_statements(columns, max(0, size // count - 1), span, shift):
            connection.execute(statement.replace("%", "%%"))
        assigns = ", ".join(f"{column} = {column} + ({shift})" for column in _SHIFTED)
        connection.execute(f"UPDATE invocations SET {assigns} WHERE record_id NOT LIKE '%%-c%%'")
        connection.execute(
            f"UPDATE worker_stops SET stop_ns = stop_ns + ({shift}) "
            "WHERE billing_worker NOT LIKE '%%-c%%'"
        )
        connection.execute("VACUUM ANALYZE invocations")


# --- the run -------------------------------------------------------------------------------------


def row(size: int, backend: str, mode: str, result: dict[str, Any]) -> str:
    total = result["total_usd"]
    return (
        f"| {backend} | {size:,} | {mode} | {result['rows']:,} | {result['seconds']:.2f} | "
        f"{result['peak_mib']:.0f} | {'' if total is None else f'{total:.4f}'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="SQLite ledger sizes, rows")
    parser.add_argument("--base", type=int, default=20_000, help="demo requests copied")
    parser.add_argument("--postgres", type=int, default=0, help="rows in PostgreSQL (0: none)")
    parser.add_argument(
        "--records-max",
        type=int,
        default=1_000_000,
        help="largest ledger the old path (every record in memory) runs on",
    )
    parser.add_argument("--by", default="user")
    parser.add_argument("--dir", default=None, help="where the SQLite ledgers go")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, location, by, since = args.child
        child(mode, location, by, since or None)
        return
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="bench-report-"))
    workdir.mkdir(parents=True, exist_ok=True)
    base = workdir / "base.db"
    if not base.exists():
        started = time.perf_counter()
        demo_ledger(base, args.base)
        print(f"demo ledger of {args.base:,} requests: {time.perf_counter() - started:.1f} s")
    print("| back-end | rows | how | invocations | seconds | peak MiB | TOTAL USD |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for size in (int(each) for each in args.sizes.split(",") if each):
        path = workdir / f"ledger-{size}.db"
        if not path.exists():
            sqlite_ledger(base, path, size)
        modes = ["fetch", "sql"] + (["records"] if size <= args.records_max else [])
        for mode in modes:
            print(row(size, "SQLite", mode, run_child(mode, str(path), args.by, None)), flush=True)
    if args.postgres:
        sys.path.insert(0, str(ROOT))
        from tests.support.services import postgres_server  # noqa: PLC0415

        with postgres_server() as dsn:
            started = time.perf_counter()
            postgres_ledger(base, dsn, args.postgres)
            print(f"PostgreSQL loaded: {time.perf_counter() - started:.0f} s", flush=True)
            for mode in ("fetch", "sql"):
                result = run_child(mode, dsn, args.by, "30d")
                print(row(args.postgres, "PostgreSQL --since 30d", mode, result), flush=True)
    if args.dir is None:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
