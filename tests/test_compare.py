"""``compare``: the options searched and the one recommended, and ``gpuledger compare``.

Traffic is synthetic (seeded) or a small ledger; prices are the shipped H100 catalogue. Heavy
steady traffic is 2,000 requests an hour of 15 s: 8.3 GPUs' worth of work, all day.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import gpuledger
from gpuledger._pricing import edition_catalogue
from gpuledger.cli._main import main
from gpuledger.ledger import open_ledger
from gpuledger.testing import make_record
from gpuledger.whatif._compare import Comparison, compare
from gpuledger.whatif._simulate import SimResult, simulate_reserved
from gpuledger.whatif._traffic import Trace, synthetic

from .conftest import Telemetry

SEED_CATALOGUE = edition_catalogue("seed-2026-03")
"""The seed article's edition: these tests work its numbers."""

CATALOGUE = SEED_CATALOGUE
SERVERLESS = {"runpod", "replicate", "modal", "banana"}
"""The seed edition's serverless platforms."""
PUBLISHED_SERVERLESS = {"runpod", "replicate", "replicate-private", "modal"}
"""The default edition's (Banana's serverless product is sunset: not in it)."""
# Both dearer per GPU-second than a fully used reserved H100 ($2.69/h = $0.000747/s), unlike
# Modal ($0.0005/s) and Banana ($0.0003/s), which no steady load makes worth reserving.
DEARER_THAN_RESERVED = ["runpod", "replicate"]
OPTION_KEYS = {
    "option",
    "cost_usd",
    "cost_per_request_usd",
    "cold_starts",
    "p50_s",
    "p95_s",
    "p99_s",
    "utilisation",
    "failures",
}


def run(*args: str) -> Result:
    """Invoke ``gpuledger compare`` with ``args``."""
    return CliRunner().invoke(main, ["compare", *args])


def run_json(*args: str) -> dict[str, Any]:
    """``gpuledger compare --format json`` with ``args``, parsed; it must succeed."""
    result = run(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def bursty() -> Trace:
    """The seed's bursty day: 100 requests an hour for one hour, then 23 silent."""
    return synthetic("bursty", rate_per_hour=100, duration_s=15.0, gpu="H100")


def steady_heavy() -> Trace:
    """Six hours of 2,000 requests an hour of 15 s: about 8.3 GPUs busy all the time."""
    return synthetic("steady", rate_per_hour=2000, duration_s=15.0, days=0.25, gpu="H100")


def p95(result: SimResult) -> float:
    """``result``'s p95 latency, which a replay of any request has."""
    assert result.p95_s is not None
    return result.p95_s


def reserved_options(comparison: Comparison) -> list[SimResult]:
    """The reserved options compared, fewest GPUs first."""
    found = [result for result in comparison.results if result.kind == "reserved"]
    return sorted(found, key=lambda result: result.reserved_gpus)


# --- what is recommended ------------------------------------------------------------------------


def test_bursty_traffic_recommends_serverless() -> None:
    """Bursty traffic (100 in an hour, then 23 silent) recommends a serverless option."""
    # 100 requests in an hour, then 23 silent: a reserved GPU would idle 98% of the day, so a
    # serverless platform is recommended and costs less than any reserved or hybrid option.
    comparison = compare(bursty(), CATALOGUE)
    assert comparison.best is not None
    assert comparison.best.kind == "serverless"
    assert comparison.burstiness.label == "bursty"
    others = [result for result in comparison.results if result.kind != "serverless"]
    assert others
    assert all(result.cost_usd > comparison.best.cost_usd for result in others)
    assert comparison.recommendation.startswith(f"Recommended: {comparison.best.option},")


def test_steady_heavy_traffic_recommends_reserved_or_hybrid() -> None:
    """Steady heavy traffic recommends reserved or hybrid against RunPod and Replicate."""
    # 8.3 GPUs busy all day against platforms that charge more per GPU-second than a busy reserved
    # GPU: reserved (or reserved with overflow) wins.
    comparison = compare(steady_heavy(), CATALOGUE, platforms=DEARER_THAN_RESERVED)
    assert comparison.best is not None
    assert comparison.best.kind in {"reserved", "hybrid"}
    assert comparison.burstiness.label == "steady"
    cheapest_serverless = min(
        result.cost_usd for result in comparison.results if result.kind == "serverless"
    )
    assert comparison.best.cost_usd < cheapest_serverless


def test_steady_heavy_traffic_stays_serverless_where_a_gpu_second_costs_less() -> None:
    """On the whole catalogue the same load stays on Modal or Banana."""
    # Modal and Banana charge less per GPU-second than a fully used reserved H100, so no steady
    # load makes reserving pay (as the break-even module finds).
    comparison = compare(steady_heavy(), CATALOGUE)
    assert comparison.best is not None
    assert comparison.best.option in {"modal", "banana"}


def test_the_latency_objective_sizes_the_reserved_option() -> None:
    """--slo-p95 sizes reserved: the smallest N meeting it, where N - 1 does not."""
    # Without an objective the reserved option is the fewest GPUs that carry the load (9); with
    # p95 <= 30 s it is the fewest whose own replay meets it: N meets it, N - 1 does not.
    trace = steady_heavy()
    reserved = CATALOGUE.lookup("reserved", "H100")
    assert reserved is not None
    unconstrained = reserved_options(compare(trace, CATALOGUE, platforms=DEARER_THAN_RESERVED))
    assert [option.reserved_gpus for option in unconstrained] == [9]

    constrained = compare(trace, CATALOGUE, platforms=DEARER_THAN_RESERVED, slo_p95_s=30.0)
    meeting = [option for option in reserved_options(constrained) if p95(option) <= 30.0]
    assert meeting
    gpus = meeting[0].reserved_gpus
    assert gpus > 9
    assert p95(simulate_reserved(trace, reserved, gpus)) <= 30.0
    assert p95(simulate_reserved(trace, reserved, gpus - 1)) > 30.0


def test_a_tighter_objective_needs_more_reserved_gpus() -> None:
    """--slo-p95 20s asks for more reserved GPUs than --slo-p95 30s."""

    def meeting_gpus(slo: str) -> int:
        document = run_json(
            *("--profile", "steady", "--rate", "2000/h", "--days", "0.25"),
            *("--slo-p95", slo, "--platforms", "runpod,replicate"),
        )
        sizes: list[int] = [
            option["reserved_gpus"]
            for option in document["options"]
            if option["kind"] == "reserved" and option["meets_slo"]
        ]
        assert sizes, document["options"]
        return min(sizes)

    assert meeting_gpus("20s") > meeting_gpus("30s")


def test_an_objective_no_option_meets_is_said() -> None:
    """An objective no option meets is said, naming the fastest option."""
    # p95 <= 5 s with 15 s requests: nothing qualifies, the recommendation says so and names the
    # fastest option.
    comparison = compare(bursty(), CATALOGUE, slo_p95_s=5.0)
    assert comparison.best is None
    assert comparison.recommendation.startswith("No option meets p95 <= 5 s.")


# --- the command line ---------------------------------------------------------------------------


def test_json_has_every_option_and_the_recommendation() -> None:
    """JSON has each option's costs, cold starts, percentiles, utilisation and failures."""
    # JSON lists each option with its cost, per-request cost, cold starts, percentiles, utilisation
    # and failures, plus the recommendation in words.
    document = run_json("--profile", "bursty", "--rate", "100")
    assert document["options"]
    for option in document["options"]:
        assert set(option) >= OPTION_KEYS, option
    assert {option["option"] for option in document["options"]} >= PUBLISHED_SERVERLESS | {
        "reserved x1"
    }
    assert document["recommendation"].startswith("Recommended: ")
    assert document["best"] in PUBLISHED_SERVERLESS


def test_the_table_names_the_recommendation() -> None:
    """The table has a row per option and ends with the recommendation."""
    result = run("--profile", "bursty", "--rate", "100/h")
    assert result.exit_code == 0, result.output
    assert "reserved x1" in result.output
    assert "Recommended: " in result.output


@pytest.mark.parametrize(
    ("suffix", "looks_right"),
    [
        (".png", lambda data: data.startswith(b"\x89PNG\r\n\x1a\n")),
        (".svg", lambda data: b"<svg" in data[:2000]),
        (".html", lambda data: data.lstrip().lower().startswith(b"<!doctype html><html")),
    ],
)
def test_plot_writes_a_file_of_its_type(tmp_path: Path, suffix: str, looks_right: Any) -> None:
    """--plot out.png, out.svg and out.html write a non-empty file of that type."""
    pytest.importorskip("matplotlib")
    path = tmp_path / f"out{suffix}"
    result = run("--profile", "bursty", "--rate", "100/h", "--plot", str(path))
    assert result.exit_code == 0, result.output
    data = path.read_bytes()
    assert data
    assert looks_right(data), data[:100]
    if suffix == ".html":
        assert b"<svg" in data
        assert b"Recommended: " in data


def test_a_ledger_is_replayed(tmp_path: Path) -> None:
    """`compare --ledger PATH` replays the seven recorded invocations on every option."""
    path = str(tmp_path / "ledger.db")
    with open_ledger(path) as ledger:
        ledger.write(
            [
                make_record(offset_s, 15.0, gpu_model="H100")
                for offset_s in (0, 30, 60, 600, 1200, 5000, 9000)
            ]
        )
    document = run_json("--ledger", path)
    assert document["burstiness"]["requests"] == 7
    assert {option["requests"] for option in document["options"]} == {7}
    assert document["gpu"] == "H100"
    assert document["source"] == f"ledger {path}"


def test_a_ledger_written_by_a_traced_handler_is_replayed(telemetry: Telemetry) -> None:
    """A ledger written by a @traced_handler under a fake clock is replayed."""
    # Five calls of 15 s each, a minute apart on the fake clock, replay as five 15 s requests on
    # RunPod's H100 (what the agent was configured with). A minute apart is past RunPod's 5 s
    # idle timeout, so each is a cold start that waits the ledger's measured init (5 s).

    @gpuledger.traced_handler
    def handler(job: dict[str, Any]) -> dict[str, Any]:
        telemetry.clock.advance(15.0)
        return {"id": job["id"]}

    for number in range(5):
        handler({"id": f"job-{number}", "input": {}})
        telemetry.clock.advance(60.0)
    assert len(telemetry.rows()) == 5

    document = run_json("--ledger", str(telemetry.ledger_path))
    assert document["burstiness"]["requests"] == 5
    assert document["gpu"] == "H100"
    runpod = next(option for option in document["options"] if option["option"] == "runpod")
    assert runpod["requests"] == 5
    assert runpod["cold_starts"] == 5
    assert runpod["p50_s"] == pytest.approx(15.0 + 5.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--profile", "steady", "--rate", "10/h", "--platforms", "nope"],
            "unknown platform 'nope'",
        ),
        (["--profile", "steady"], "--profile needs --rate"),
        (["--ledger", "missing.db"], "no ledger at missing.db"),
        (["--profile", "steady", "--rate", "fast"], "'fast' is not a rate"),
        (["--profile", "steady", "--rate", "10/h", "--plot", "out.pdf"], "must end in .png"),
    ],
)
def test_a_mistake_exits_non_zero_with_a_message(args: list[str], message: str) -> None:
    """A mistake exits non-zero with one clear message and no traceback."""
    # An unknown platform, a profile without a rate, a missing ledger, a bad rate or plot name: a
    # non-zero exit and one clear message, no traceback, and no ledger created.
    result = run(*args)
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert message in result.output
    assert "Traceback" not in result.output
    assert not Path("missing.db").exists()


# --- a trace too short to recommend from --------------------------------------------------------


def test_a_short_trace_is_warned_about(tmp_path: Path) -> None:
    """Three requests over four minutes: the table and JSON warn, saying why and what is enough."""
    path = str(tmp_path / "short.db")
    with open_ledger(path) as ledger:
        ledger.write([make_record(offset_s, 15.0, gpu_model="H100") for offset_s in (0, 60, 225)])
    table = run("--ledger", path)
    assert table.exit_code == 0, table.output
    warning = next(line for line in table.output.splitlines() if line.startswith("warning:"))
    assert "too short to recommend from" in warning
    assert table.output.index("warning:") < table.output.index("Recommended: ")
    document = run_json("--ledger", path)
    assert document["best"] is not None  # still compared, but said to be unreliable
    assert "3 requests" in document["warning"]
    assert "4.0 minutes" in document["warning"]
    assert "100 requests" in document["warning"]
    assert "24 hours" in document["warning"]
    assert "scale-to-zero" in document["warning"]


def test_a_day_of_traffic_is_not_warned_about() -> None:
    """A day of steady traffic (about 240 requests) is enough: no warning."""
    document = run_json("--profile", "steady", "--rate", "10/h", "--days", "1")
    assert document["burstiness"]["requests"] >= 100
    assert document["warning"] is None
    assert "warning:" not in run("--profile", "steady", "--rate", "10/h").output


def test_many_requests_in_a_few_hours_are_still_too_short() -> None:
    """Thousands of requests in six hours still miss the night: warned about the span."""
    comparison = compare(steady_heavy(), CATALOGUE)
    assert comparison.warning is not None
    assert "6.0 hours" in comparison.warning
    assert "day's cycle" in comparison.warning
    assert "p95 rests" not in comparison.warning  # thousands of requests: the tail is known


# --- plots without matplotlib -------------------------------------------------------------------


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """matplotlib cannot be imported, as on a base install."""
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.usefixtures("no_matplotlib")
def test_html_plot_needs_no_matplotlib(tmp_path: Path) -> None:
    """--plot out.html on a base install writes a page with an inline SVG chart and the table."""
    path = tmp_path / "out.html"
    result = run("--profile", "bursty", "--rate", "100/h", "--slo-p95", "30s", "--plot", str(path))
    assert result.exit_code == 0, result.output
    page = path.read_text(encoding="utf-8")
    assert page.lower().startswith("<!doctype html>")
    assert "<svg" in page
    assert "</svg>" in page
    names = [line.split("  ")[0] for line in result.output.splitlines() if "  " in line]
    options = [
        name
        for name in names
        if name in PUBLISHED_SERVERLESS or name.startswith(("reserved", "hybrid"))
    ]
    assert len(options) >= 5
    for name in options:
        assert html.escape(name) in page
    assert "Recommended: " in page
    assert "objective" in page


@pytest.mark.usefixtures("no_matplotlib")
@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_image_plot_without_matplotlib_says_how_to_install_it(tmp_path: Path, suffix: str) -> None:
    """--plot out.png or out.svg without matplotlib exits 1 before replaying, with the hint."""
    path = tmp_path / f"out{suffix}"
    result = run("--profile", "bursty", "--rate", "100/h", "--plot", str(path))
    assert result.exit_code == 1, result.output
    assert "pip install 'gpuledger[plot]'" in result.output
    assert "Recommended" not in result.output
    assert not path.exists()


def test_recorded_traffic_cold_starts_take_the_measured_init() -> None:
    """A ledger's trace carries the median init its cold requests measured: every serverless
    platform's cold start is that, not the catalogue's typical (issue 13), and a note says so."""
    import dataclasses as _dataclasses

    from gpuledger.whatif import compare as _compare
    from gpuledger.whatif import synthetic as _synthetic

    trace = _synthetic("steady", rate_per_hour=2.0, duration_s=1.0, days=1.0, gpu="H100", seed=1)
    measured = _dataclasses.replace(trace, init_s=40.0)
    typical = {r.option: r for r in _compare(trace, SEED_CATALOGUE, platforms=["runpod"]).results}
    result = _compare(measured, SEED_CATALOGUE, platforms=["runpod"])
    runpod = {r.option: r for r in result.results}["runpod"]
    # A cold request waits the measured 40 s (then its 1 s), not RunPod's typical 2.5 s.
    assert runpod.cold_starts > 0
    assert runpod.p99_s is not None and runpod.p99_s >= 41.0
    assert typical["runpod"].p99_s is not None and typical["runpod"].p99_s <= 3.5
    assert any("measured init, 40.00 s" in note for note in result.notes)
