"""How long ``gpuledger compare`` takes, and how much memory it needs, from 10,000 to 1,000,000
recorded-like requests.

Each trace is a month (``--days``, 30) of synthetic traffic with lognormal 15 s service times
(sigma 0.5), the shape a ledger of that many invocations has:

``steady``
    Poisson arrivals all day at ``size / (24 x days)`` an hour: 10,000 requests is 0.06 GPUs of
    work, 1,000,000 is 5.8 GPUs busy around the clock.
``bursty``
    one hour a day at ``size / days`` an hour, then 23 silent (the seed's "100 requests in 1
    hour, then silent for 23", scaled): 1,000,000 requests is 139 GPUs busy during each burst.

Each (profile, size) runs twice, each time in a fresh interpreter: build the trace (timed apart),
then one call of ``gpuledger.whatif._compare.compare`` over the shipped catalogue's H100 prices with
``slo_p95_s`` (``--slo``, 30 s): every serverless platform, the reserved sizes (the cheapest, and
the smallest that meets the objective, found by doubling then bisecting), and the hybrid sizes.
Once serially (``processes=1``, the library default) and once with the processes
``gpuledger compare`` uses (``min(4, CPUs)``; ``--processes`` sets another number). Memory is
the peak resident set: sampled every 20 ms from ``/proc``, the interpreter plus any worker
processes ``compare`` started (and at least the interpreter's own ``ru_maxrss``); "over trace" is
that peak minus the resident set once the trace was built.

The breakdown (``--no-breakdown`` skips it) replays the largest size of each profile once more,
serially, with every ``simulate_serverless``, ``simulate_reserved`` and ``simulate_hybrid`` call
timed: where the time goes, reserved probes counted. ``--cprofile`` profiles one more serial
replay of the largest trace of the first profile (top 25 functions by own time; cProfile roughly
doubles the time of what it profiles, so it is not the breakdown's run). ``--tracemalloc`` adds
the peak of Python allocations during ``compare`` (a second replay, traced, which is slower).

Run: ``.venv/bin/python benchmarks/bench_compare.py [--sizes 10000,100000,1000000]
[--profiles steady,bursty] [--slo 30] [--days 30] [--processes N] [--no-breakdown] [--cprofile]
[--tracemalloc] [--json PATH]``
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
TARGET_S = 5.0
TARGET_BYTES = 1024 * MIB
TARGET_REQUESTS = 1_000_000
_RESULT = "RESULT "


# --- the child: one measurement in a fresh interpreter -------------------------------------------


def _build_trace(profile: str, size: int, days: float, seed: int) -> Any:
    from gpuledger.whatif._traffic import synthetic  # noqa: PLC0415

    hours_a_day = 1.0 if profile == "bursty" else 24.0
    return synthetic(
        profile,
        rate_per_hour=size / (hours_a_day * days),
        duration_s=15.0,
        days=days,
        service="lognormal",
        seed=seed,
        gpu="H100",
    )


def _rss_bytes(pid: int | str = "self") -> int:
    """Resident set of ``pid`` from /proc (0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (a scan of /proc: no psutil needed)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                # The command name may hold spaces: the parent pid follows its closing ')'.
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


class _TreeSampler:
    """Samples the resident set of this process plus its children every ``interval_s``."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.workers_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            children = _children(me)
            self.workers_seen = max(self.workers_seen, len(children))
            total = _rss_bytes() + sum(_rss_bytes(child) for child in children)
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval_s)


def _compare_kwargs(processes: int | None) -> dict[str, Any]:
    from gpuledger.whatif._compare import compare  # noqa: PLC0415

    if processes is not None and "processes" in inspect.signature(compare).parameters:
        return {"processes": processes}
    return {}


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from gpuledger._pricing import default_catalogue  # noqa: PLC0415
    from gpuledger.whatif._compare import compare  # noqa: PLC0415

    catalogue = default_catalogue()
    started = time.perf_counter()
    trace = _build_trace(args.child_profile, args.child_size, args.days, args.seed)
    build_s = time.perf_counter() - started
    gc.collect()
    baseline = _rss_bytes()
    kwargs = _compare_kwargs(args.processes)
    with _TreeSampler() as sampler:
        started = time.perf_counter()
        comparison = compare(trace, catalogue, slo_p95_s=args.slo, **kwargs)
        compare_s = time.perf_counter() - started
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    result: dict[str, Any] = {
        "profile": args.child_profile,
        "size": args.child_size,
        "requests": len(trace),
        "window_days": trace.window_s / 86_400,
        "build_s": build_s,
        "compare_s": compare_s,
        "baseline_rss_bytes": baseline,
        "own_peak_rss_bytes": own_peak,
        "largest_worker_peak_rss_bytes": worker_peak,
        "tree_peak_rss_bytes": max(sampler.peak_bytes, own_peak),
        "workers": sampler.workers_seen,
        "options": [
            {"option": option.option, "cost_usd": option.cost_usd, "p95_s": option.p95_s}
            for option in comparison.results
        ],
        "best": comparison.best.option if comparison.best else None,
    }
    if args.tracemalloc:
        import tracemalloc  # noqa: PLC0415

        tracemalloc.start()
        compare(trace, catalogue, slo_p95_s=args.slo, **kwargs)
        result["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result


def _label(name: str, arguments: tuple[Any, ...], keywords: dict[str, Any]) -> str:
    if name == "simulate_serverless":
        return str(arguments[1].platform)
    if name == "simulate_reserved":
        return f"reserved x{arguments[2]}"
    overflow = arguments[3] if len(arguments) > 3 else keywords["overflow"]
    return f"hybrid {arguments[2]} x reserved + {overflow.platform}"


def _breakdown(args: argparse.Namespace) -> dict[str, Any]:
    """One serial replay with each simulate_* call timed (patched where compare looks them up)."""
    from gpuledger._pricing import default_catalogue  # noqa: PLC0415
    from gpuledger.whatif import _compare  # noqa: PLC0415

    trace = _build_trace(args.child_profile, args.child_size, args.days, args.seed)
    calls: list[dict[str, Any]] = []

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*arguments: Any, **keywords: Any) -> Any:
            started = time.perf_counter()
            result = function(*arguments, **keywords)
            seconds = time.perf_counter() - started
            calls.append(
                {"call": name, "option": _label(name, arguments, keywords), "seconds": seconds}
            )
            return result

        return wrapper

    if not args.cprofile:
        for name in ("simulate_serverless", "simulate_reserved", "simulate_hybrid"):
            setattr(_compare, name, timed(name, getattr(_compare, name)))
    kwargs = _compare_kwargs(1)
    profiler: Any = None
    if args.cprofile:
        import cProfile  # noqa: PLC0415

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    _compare.compare(trace, default_catalogue(), slo_p95_s=args.slo, **kwargs)
    total_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "profile": args.child_profile,
        "requests": len(trace),
        "serial": bool(kwargs),
        "total_s": total_s,
        "calls": calls,
    }
    if profiler is not None:
        import io  # noqa: PLC0415
        import pstats  # noqa: PLC0415

        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        result["cprofile"] = text.getvalue()
    return result


# --- the parent: run the children, print the tables ----------------------------------------------


def _child(argv: list[str]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), *argv]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr)
        raise SystemExit(f"child {' '.join(argv)} failed with exit code {completed.returncode}")
    for line in completed.stdout.splitlines():
        if line.startswith(_RESULT):
            result: dict[str, Any] = json.loads(line[len(_RESULT) :])
            return result
    raise SystemExit(f"child {' '.join(argv)} printed no result:\n{completed.stdout}")


def _common(args: argparse.Namespace) -> list[str]:
    return ["--slo", str(args.slo), "--days", str(args.days), "--seed", str(args.seed)]


def _mib(value: float) -> str:
    return f"{value / MIB:,.0f}"


def _size_table(rows: list[tuple[dict[str, Any], dict[str, Any]]], processes: int) -> list[str]:
    lines = [
        f"| profile | requests | build trace s | serial s | µs/request | x vs 10k "
        f"| {processes} processes s | x vs 10k | peak MiB serial | peak MiB {processes} processes "
        "(all) | serial over trace MiB | best option |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    first: dict[str, tuple[float, float]] = {}
    for serial, parallel in rows:
        base = first.setdefault(serial["profile"], (serial["compare_s"], parallel["compare_s"]))
        over = serial["tree_peak_rss_bytes"] - serial["baseline_rss_bytes"]
        lines.append(
            f"| {serial['profile']} | {serial['requests']:,} | {serial['build_s']:.2f} "
            f"| {serial['compare_s']:.2f} "
            f"| {serial['compare_s'] / max(1, serial['requests']) * 1e6:.1f} "
            f"| {serial['compare_s'] / base[0]:.0f} | {parallel['compare_s']:.2f} "
            f"| {parallel['compare_s'] / base[1]:.0f} | {_mib(serial['tree_peak_rss_bytes'])} "
            f"| {_mib(parallel['tree_peak_rss_bytes'])} | {_mib(over)} | {serial['best']} |"
        )
    return lines


def _breakdown_table(breakdown: dict[str, Any]) -> list[str]:
    calls = breakdown["calls"]
    total = breakdown["total_s"]
    lines = [
        f"**{breakdown['profile']}, {breakdown['requests']:,} requests**, "
        f"{'serial' if breakdown['serial'] else 'as compare runs it'}: {total:.2f} s in all",
        "",
        "| # | call | option | s | share |",
        "| ---: | --- | --- | ---: | ---: |",
    ]
    for number, call in enumerate(calls, 1):
        lines.append(
            f"| {number} | {call['call']} | {call['option']} | {call['seconds']:.3f} "
            f"| {call['seconds'] / total:.0%} |"
        )
    lines.append("")
    for name in ("simulate_serverless", "simulate_reserved", "simulate_hybrid"):
        mine = [call for call in calls if call["call"] == name]
        seconds = sum(call["seconds"] for call in mine)
        repeats = len(mine) - len({call["option"] for call in mine})
        lines.append(
            f"- {name}: {len(mine)} calls, {seconds:.2f} s ({seconds / total:.0%})"
            + (f", {repeats} repeating an option already replayed" if repeats else "")
        )
    rest = total - sum(call["seconds"] for call in calls)
    lines.append(f"- outside the simulator (burstiness, sorting, recommendation): {rest:.2f} s")
    return lines


def _verdict(rows: list[tuple[dict[str, Any], dict[str, Any]]], processes: int) -> list[str]:
    lines = []
    for serial, parallel in rows:
        if serial["requests"] < TARGET_REQUESTS * 0.99:
            continue
        for name, row in (("serial", serial), (f"{processes} processes", parallel)):
            fast = row["compare_s"] < TARGET_S
            small = row["tree_peak_rss_bytes"] < TARGET_BYTES
            lines.append(
                f"- {row['profile']} {row['requests']:,}, {name}: {row['compare_s']:.2f} s "
                f"({'met' if fast else 'NOT met'}: < {TARGET_S:g} s), peak "
                f"{_mib(row['tree_peak_rss_bytes'])} MiB ({'met' if small else 'NOT met'}: "
                "< 1 GiB)"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--profiles", default="steady,bursty")
    parser.add_argument("--slo", type=float, default=30.0, help="p95 objective, seconds")
    parser.add_argument("--days", type=float, default=30.0, help="trace window, days")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--processes",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes for the parallel run (default: as the CLI, min(4, CPUs))",
    )
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument("--child-profile", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-breakdown", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_profile is not None:
        result = _breakdown(args) if args.child_breakdown else _measure(args)
        print(_RESULT + json.dumps(result))
        return 0

    sizes = [int(size) for size in args.sizes.split(",")]
    profiles = args.profiles.split(",")
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}; "
        f"objective p95 <= {args.slo:g} s; window {args.days:g} days",
        flush=True,
    )
    rows = []
    for profile in profiles:
        for size in sizes:
            extra = ["--tracemalloc"] if args.tracemalloc else []
            pair = []
            for processes in (1, args.processes):
                row = _child(
                    [
                        *("--child-profile", profile, "--child-size", str(size)),
                        *("--processes", str(processes)),
                        *_common(args),
                        *extra,
                    ]
                )
                pair.append(row)
                print(
                    f"  {profile} {row['requests']:,}, {processes} process(es): compare "
                    f"{row['compare_s']:.2f} s, peak {_mib(row['tree_peak_rss_bytes'])} MiB, "
                    f"{row['workers']} worker process(es) seen"
                    + (
                        f", tracemalloc peak {_mib(row['tracemalloc_peak_bytes'])} MiB"
                        if "tracemalloc_peak_bytes" in row
                        else ""
                    ),
                    flush=True,
                )
            rows.append((pair[0], pair[1]))
    breakdowns = []
    largest = ["--child-size", str(max(sizes)), "--child-breakdown", *_common(args)]
    if args.breakdown:
        for profile in profiles:
            breakdowns.append(_child(["--child-profile", profile, *largest]))
    profile_text = None
    if args.cprofile:
        # A run of its own: cProfile roughly doubles the time of the calls it profiles.
        profile_text = _child(["--child-profile", profiles[0], *largest, "--cprofile"])["cprofile"]

    print()
    print("\n".join(_size_table(rows, args.processes)))
    print()
    print("\n".join(_verdict(rows, args.processes)))
    for breakdown in breakdowns:
        print()
        print("\n".join(_breakdown_table(breakdown)))
    if profile_text is not None:
        print()
        print(f"cProfile, {profiles[0]}, {max(sizes):,} requests, serial (top 25 by own time):")
        print(profile_text)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"measurements": rows, "breakdowns": breakdowns, "cprofile": profile_text},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
