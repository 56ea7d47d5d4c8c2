"""Price editions: the published edition beside the seed's, every number with its reference,
files over an edition, old rows reading as the edition they were priced from, stale editions
warned about, and ``gpuledger pricing editions`` / ``diff``.

The seed edition's own arithmetic is tests/test_pricing.py's; this module is what editions add.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuledger._errors import PricingError
from gpuledger._pricing import (
    DEFAULT_EDITION,
    OWNERS,
    PRICING_ENV,
    SEED_EDITION,
    check_file,
    default_catalogue,
    edition_catalogue,
    editions,
    load_catalogue,
    shipped_path,
    unpriced_reason,
)
from gpuledger.billing import Request, Rules, WorkerTimeline, bill
from gpuledger.cli import _options, main
from gpuledger.ledger import open_ledger
from gpuledger.testing import make_record

from .support.cli import separate_runner

PUBLISHED = edition_catalogue("published-2026-12")
SEED = edition_catalogue(SEED_EDITION)
S = 1_000_000_000

# RunPod's serverless price per GPU class, as its docs list it (docs/research/runpod.md, a1):
# the GPUs of each class, by their NVML names, and the class's cost per second.
RUNPOD_CLASSES = [
    (["NVIDIA RTX A4000", "NVIDIA RTX A4500", "NVIDIA RTX 4000 Ada Generation"], "0.00016"),
    (["NVIDIA L4", "NVIDIA RTX A5000", "NVIDIA GeForce RTX 3090"], "0.00019"),
    (["NVIDIA GeForce RTX 4090"], "0.00031"),
    (["NVIDIA RTX A6000", "NVIDIA A40"], "0.00034"),
    (["NVIDIA L40", "NVIDIA L40S", "NVIDIA RTX 6000 Ada Generation"], "0.00053"),
    (["NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"], "0.00076"),
    (["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"], "0.00116"),
    (["NVIDIA RTX PRO 6000 Blackwell Server Edition"], "0.00111"),
    (["NVIDIA H200"], "0.00155"),
    (["NVIDIA B200"], "0.00240"),
]
REPLICATE = {"H100": "0.001525", "A100": "0.0014", "L40S": "0.000975", "A40": "0.000725"}
REPLICATE |= {"gpu-a40-small": "0.000575", "T4": "0.000225"}
MODAL = {"B200": "0.001736", "H200": "0.001261", "H100": "0.001097", "A100": "0.000694"}
MODAL |= {"L40S": "0.000542", "NVIDIA A10G": "0.000306", "L4": "0.000222", "T4": "0.000164"}
MODAL |= {"RTX PRO 6000": "0.000842"}


@pytest.fixture(autouse=True)
def no_pricing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PRICING_ENV, raising=False)


def _rate(catalogue_price: object) -> Fraction:
    return Rules.from_price(catalogue_price).per_gpu_second_usd  # type: ignore[arg-type]


# --- the editions -----------------------------------------------------------------------------


def test_both_editions_load_and_validate_and_the_published_one_is_the_default() -> None:
    assert editions() == ("published-2026-12", "seed-2026-03")
    assert DEFAULT_EDITION == "published-2026-12"
    assert default_catalogue() is PUBLISHED
    assert (PUBLISHED.version, PUBLISHED.as_of) == ("published-2026-12", "2026-12-06")
    assert (SEED.version, SEED.as_of) == ("seed-2026-03", "2026-03")
    assert check_file(shipped_path("published-2026-12")) == ([], 44)
    assert check_file(shipped_path(SEED_EDITION)) == ([], 5)


@pytest.mark.parametrize(("gpus", "rate"), RUNPOD_CLASSES)
def test_runpod_prices_every_gpu_class_it_lists(gpus: list[str], rate: str) -> None:
    for gpu in gpus:
        price = PUBLISHED.lookup("runpod", gpu)
        assert price is not None, gpu
        assert _rate(price) == Fraction(rate), gpu
        assert price.execution_fee_usd == 0.0  # no per-request fee is published
        assert price.reference is not None and price.reference.owner == "own"
        assert price.reference.source.startswith("https://docs.runpod.io/")


@pytest.mark.parametrize(("platform", "table"), [("replicate", REPLICATE), ("modal", MODAL)])
def test_replicate_and_modal_price_every_gpu_they_list(
    platform: str, table: dict[str, str]
) -> None:
    for gpu, rate in table.items():
        price = PUBLISHED.lookup(platform, gpu)
        assert price is not None, gpu
        assert _rate(price) == Fraction(rate), gpu
    # Replicate's private models are the same hardware at the same price, set-up and idle billed.
    for gpu, rate in REPLICATE.items():
        private = PUBLISHED.lookup("replicate-private", gpu)
        assert private is not None and _rate(private) == Fraction(rate)


def test_the_published_rules_are_the_platforms_own() -> None:
    runpod = PUBLISHED.lookup("runpod", "H100")
    replicate = PUBLISHED.lookup("replicate", "H100")
    private = PUBLISHED.lookup("replicate-private", "H100")
    modal = PUBLISHED.lookup("modal", "H100")
    assert runpod is not None and replicate is not None and private is not None
    assert modal is not None
    # RunPod: start to full stop, rounded up to the second, the 5 s idle timeout billed.
    assert (runpod.kind, runpod.billing_increment_s, runpod.idle_window_s) == ("per_second", 1, 5)
    assert (runpod.bills_idle, runpod.bills_startup, runpod.timeout_s) == (True, True, 600)
    # Replicate: public models pay processing only; private ones set-up and idle too.
    assert (replicate.bills_startup, replicate.bills_idle) == (False, False)
    assert (private.bills_startup, private.bills_idle) == (True, True)
    # Modal: the 60 s scale-down window billed; CPU and memory on top, with the minimums.
    assert (modal.idle_window_s, modal.bills_idle) == (60, True)
    assert (modal.cpu_core_second_usd, modal.memory_gib_second_usd) == (0.0000131, 0.00000222)
    assert (modal.min_cpu_cores, modal.min_memory_gib) == (0.125, 0.125)
    # Banana's serverless product is sunset: not in the published edition, flagged in the seed.
    assert "banana" not in PUBLISHED.platforms()
    banana = SEED.lookup("banana", "H100")
    assert banana is not None and banana.sunset == "2024-02-01"
    assert "blog.erikdunteman.com" in banana.sunset_source


def test_every_number_of_every_edition_has_a_source_a_date_and_an_owner() -> None:
    date = re.compile(r"\d{4}-\d{2}(-\d{2})?")
    for catalogue in (PUBLISHED, SEED):
        for price in catalogue.prices():
            for reference in (price.reference, price.rules_reference, price.behaviour_reference):
                assert reference is not None, (catalogue.version, price.platform, price.gpu)
                assert reference.source.strip()
                assert date.fullmatch(reference.read_on), reference
                assert reference.owner in OWNERS
    # Where only third parties copy a platform's page, the edition says so.
    assert {p.reference.owner for p in PUBLISHED.prices() if p.platform == "modal"} == {  # type: ignore[union-attr]
        "third-party"
    }


@pytest.mark.parametrize("field", ["source", "read_on", "owner"])
def test_validate_rejects_an_edition_entry_without_its_reference(
    tmp_path: Path, field: str
) -> None:
    text = Path(shipped_path("published-2026-12")).read_text(encoding="utf-8")
    table = '[platforms.runpod.gpus."H100"]\n'
    start = text.index(table)
    entry = text[start : text.index("\n\n", start)]
    lines = [line for line in entry.splitlines() if not line.startswith(f"{field} = ")]
    edited = tmp_path / "edition.toml"
    edited.write_text(text.replace(entry, "\n".join(lines)), encoding="utf-8")
    problems, _ = check_file(edited)
    assert [str(p) for p in problems] == [
        f"{edited}: platforms.runpod.gpus.H100.{field}: required: every price needs a source, "
        "the date it was read and whose word it is"
    ]
    result = CliRunner().invoke(main, ["pricing", "validate", str(edited)])
    assert result.exit_code == 1


def test_validate_rejects_rules_without_a_source_and_a_bad_owner(tmp_path: Path) -> None:
    text = Path(shipped_path("published-2026-12")).read_text(encoding="utf-8")
    text = text.replace('source = "https://docs.runpod.io/serverless/pricing"\n', "", 1)
    text = text.replace('owner = "third-party"', 'owner = "a blog"', 1)
    edited = tmp_path / "edition.toml"
    edited.write_text(text, encoding="utf-8")
    reasons = {p.key: p.reason for p in check_file(edited)[0]}
    assert reasons["platforms.runpod.source"].startswith("required: every number needs a source")
    (bad_owner,) = [reason for key, reason in reasons.items() if key.endswith("owner")]
    assert bad_owner == "must be one of 'own', 'third-party', 'gpuledger', got string 'a blog'"


# --- what a request costs -----------------------------------------------------------------------


def test_a_runpod_h100_request_of_20_s_by_default_and_under_the_seed() -> None:
    """The issue's example: $0.2548 in the seed's edition; RunPod's rate x 20 s published."""
    published = default_catalogue().price("runpod", "H100", billed_gpu_seconds=20)
    seed = SEED.price("runpod", "H100", billed_gpu_seconds=20)
    assert published is not None and seed is not None
    assert published.total_usd == pytest.approx(20 * 0.00116)  # $0.0232, no fee
    assert seed.total_usd == pytest.approx(0.2548)
    # The worker's bill adds what the rules add: the 5 s idle timeout, billed, after it.
    rules = Rules.from_price(PUBLISHED.lookup("runpod", "H100"))  # type: ignore[arg-type]
    timeline = WorkerTimeline(0, 0, 25 * S, (Request("r", 0, 20 * S),))
    charged = bill(timeline, rules).by_category()
    assert charged["request"] == Fraction(20) * Fraction("0.00116")
    assert charged["idle"] == Fraction(5) * Fraction("0.00116")
    assert sum(charged.values()) == Fraction("0.029")


def test_breakeven_prints_both_editions_when_asked() -> None:
    result = CliRunner().invoke(
        main,
        ["breakeven", "--platform", "runpod", "--duration", "20s", "--format", "json",
         "--pricing", "published-2026-12", "--pricing", SEED_EDITION],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    published, seed = json.loads(result.output)["editions"]
    assert (published["catalogue_version"], seed["catalogue_version"]) == (
        "published-2026-12",
        SEED_EDITION,
    )
    # $3.49/h x 24 against $0.0232 a request; the seed's $2.69/h x 24 against $0.2548.
    assert published["results"][0]["first_crossover_per_day"] == pytest.approx(83.76 / 0.0232)
    assert seed["results"][0]["first_crossover_per_day"] == pytest.approx(64.56 / 0.2548)
    table = CliRunner().invoke(
        main,
        ["breakeven", "--platform", "runpod", "--duration", "20s",
         "--pricing", "published-2026-12", "--pricing", SEED_EDITION],
    )  # fmt: skip
    assert table.exit_code == 0, table.output
    assert "(pricing published-2026-12)" in table.output
    assert "(pricing seed-2026-03)" in table.output
    assert "3,610.34" in table.output and "253.38" in table.output


# --- files over an edition, and old rows ---------------------------------------------------------


def test_a_pricing_file_overlays_its_base_and_is_recorded_by_its_hash(tmp_path: Path) -> None:
    over_default = tmp_path / "ours.toml"
    over_default.write_text("[platforms.runpod.gpus.H100]\nper_gpu_second_usd = 0.001\n")
    catalogue = load_catalogue(over_default)
    digest = hashlib.sha256(over_default.read_bytes()).hexdigest()[:12]
    assert (catalogue.version, catalogue.edition) == (f"file:{digest}", DEFAULT_EDITION)
    assert catalogue.lookup("runpod", "A100") is not None  # the base's other prices stay
    over_seed = tmp_path / "seedish.toml"
    over_seed.write_text('base = "seed-2026-03"\n[platforms.runpod]\nexecution_fee_usd = 0.2\n')
    seedish = load_catalogue(over_seed)
    assert seedish.edition == SEED_EDITION
    assert seedish.lookup("runpod", "H100").execution_fee_usd == 0.2  # type: ignore[union-attr]
    # The legacy name of the seed's catalogue works as a base and as --pricing.
    assert load_catalogue("2026-03") is SEED
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "published-2099-01"\n')
    with pytest.raises(PricingError) as caught:
        load_catalogue(bad)
    assert caught.value.problems == [
        f"{bad}: base: no edition 'published-2099-01': the editions are published-2026-12, "
        "seed-2026-03"
    ]
    with pytest.raises(PricingError, match="no such edition or file: the editions are"):
        load_catalogue("published-2099-01")


def test_rows_priced_under_2026_03_read_as_the_seed_edition(tmp_path: Path) -> None:
    location = str(tmp_path / "old.db")
    with open_ledger(location) as ledger:
        ledger.write([make_record(0, pricing_version="2026-03", cost_usd=0.3)])
        ledger.write([make_record(5, pricing_version="published-2026-12", cost_usd=0.01)])
        versions = [record.pricing_version for record in ledger.read()]
    assert versions == ["seed-2026-03", "published-2026-12"]


def test_a_platform_an_edition_dropped_is_unpriced_saying_why() -> None:
    assert unpriced_reason("banana", "H100", PUBLISHED) == (
        "unpriced: banana (sunset 2024-02-01) has no price in published-2026-12; "
        "price it with --pricing seed-2026-03 or a pricing file"
    )
    assert unpriced_reason("runpod", "T4", PUBLISHED) == "unpriced: no runpod price for GPU 'T4'"


# --- stale editions ------------------------------------------------------------------------------


def test_show_warns_when_the_edition_is_older_than_90_days(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fresh = separate_runner().invoke(main, ["pricing", "show"])
    assert fresh.exit_code == 0 and "warning" not in fresh.stderr  # 2026-12-06: 0 days old
    monkeypatch.setattr(_options, "today", lambda: dt.date(2027, 3, 7))  # 91 days
    stale = separate_runner().invoke(main, ["pricing", "show"])
    assert stale.exit_code == 0
    assert stale.stderr == (
        "warning: pricing edition published-2026-12 is 91 days old (read 2026-12-06); platforms "
        "change their prices: see `gpuledger pricing editions`, or give a newer one with "
        "--pricing\n"
    )
    monkeypatch.setattr(_options, "today", lambda: dt.date(2027, 3, 6))  # 90 days: not yet
    assert separate_runner().invoke(main, ["pricing", "show"]).stderr == ""


def test_report_warns_once_for_a_stale_edition(tmp_path: Path) -> None:
    location = str(tmp_path / "demo.db")
    assert (
        separate_runner().invoke(main, ["demo", "--ledger", location, "--requests", "20"]).exit_code
        == 0
    )
    fresh = separate_runner().invoke(main, ["report", "--ledger", location])
    assert fresh.exit_code == 0 and fresh.stderr == ""
    seed = separate_runner().invoke(
        main, ["report", "--ledger", location, "--pricing", SEED_EDITION]
    )
    assert seed.exit_code == 0, seed.output
    assert seed.stderr.count("warning: pricing edition seed-2026-03 is 280 days old") == 1


# --- the CLI -----------------------------------------------------------------------------------


def test_pricing_editions_lists_both_and_whose_word_they_are() -> None:
    result = CliRunner().invoke(main, ["pricing", "editions", "--format", "json"])
    assert result.exit_code == 0, result.output
    published, seed = json.loads(result.output)
    assert published["edition"] == "published-2026-12" and published["default"] is True
    assert published["prices_by_owner"] == {"own": 29, "third-party": 15}
    assert (published["age_days"], published["stale"]) == (0, False)
    assert (seed["age_days"], seed["stale"], seed["sunset"]) == (280, True, ["banana"])
    table = CliRunner().invoke(main, ["pricing", "editions"])
    assert "published-2026-12 (default)" in table.output
    assert "banana (sunset)" in table.output


def test_pricing_diff_shows_what_moved_from_the_seed() -> None:
    result = CliRunner().invoke(
        main, ["pricing", "diff", SEED_EDITION, "published-2026-12", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    changes = {(c["platform"], c["gpu"]): c for c in json.loads(result.output)["changes"]}
    runpod = changes[("runpod", "H100")]
    assert (runpod["from_usd_per_gpu_s"], runpod["to_usd_per_gpu_s"]) == (0.00024, 0.00116)
    assert "fee $ 0.25 -> 0" in runpod["rules"]
    assert changes[("banana", "H100")]["to_usd_per_gpu_s"] is None
    assert changes[("runpod", "A100")]["from_usd_per_gpu_s"] is None
    table = CliRunner().invoke(main, ["pricing", "diff", SEED_EDITION, "published-2026-12"])
    assert "+383.3%" in table.output  # 0.00024 -> 0.00116
    same = CliRunner().invoke(main, ["pricing", "diff", SEED_EDITION, "2026-03"])
    assert same.output.endswith("no differences\n")


# --- the README's numbers, under both editions ---------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_s_side_by_side_prices_are_the_editions() -> None:
    readme = README.read_text(encoding="utf-8")
    seed = {p: SEED.price(p, "H100", billed_gpu_seconds=20) for p in SEED.platforms()}
    published = {
        p: PUBLISHED.price(p, "H100", billed_gpu_seconds=20) for p in PUBLISHED.platforms()
    }
    shown = {
        "$0.2548": seed["runpod"],
        "$0.020": seed["replicate"],
        "$0.010": seed["modal"],
        "$0.01494": seed["reserved"],
        "$0.0232": published["runpod"],
        "$0.0305": published["replicate"],
        "$0.02194": published["modal"],
        "$0.01939": published["reserved"],
    }
    for text, cost in shown.items():
        assert cost is not None
        assert text in readme, text
        digits = len(text.split(".")[1])
        gpu_and_fee = cost.total_usd - cost.resources_usd  # Modal's CPU and memory come on top
        assert f"${gpu_and_fee:.{digits}f}" == text, (text, cost.total_usd)
    by_edition = {}
    for name in ("published-2026-12", SEED_EDITION):
        result = CliRunner().invoke(
            main, ["breakeven", "--duration", "15s", "--duration", "20s", "--format", "json",
                   "--pricing", name],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        by_edition[name] = {
            (r["serverless_platform"], r["duration_s"]): r["first_crossover_per_day"]
            for r in json.loads(result.output)["results"]
        }
    published_days, seed_days = by_edition["published-2026-12"], by_edition[SEED_EDITION]
    for text, value in {
        "3,610.3 requests a day": published_days[("runpod", 20.0)],
        "253.4 requests a day": seed_days[("runpod", 20.0)],
        "from 4,813.8 requests a": published_days[("runpod", 15.0)],
        "Replicate from 3,661.6": published_days[("replicate", 15.0)],
        "Modal from 5,081.4": published_days[("modal", 15.0)],
        "crossed at 254.6 a day": seed_days[("runpod", 15.0)],
        "Replicate at 4,304": seed_days[("replicate", 15.0)],
    }.items():
        assert text in readme, text
        number = re.search(r"[\d,]+\.?\d*", text.split(" at ")[-1].split("from ")[-1])
        assert number is not None
        shown_value = float(number.group().replace(",", "").rstrip("."))
        assert value == pytest.approx(shown_value, abs=0.051), text
    assert seed_days[("modal", 15.0)] is None  # "never"


def test_the_readme_demo_totals_under_both_editions(tmp_path: Path) -> None:
    """The quick start's demo (seed 0, 200 requests): its TOTAL, and re-priced by the seed."""
    readme = README.read_text(encoding="utf-8")
    location = str(tmp_path / "demo.db")
    made = separate_runner().invoke(main, ["demo", "--ledger", location])
    assert made.exit_code == 0, made.output
    totals = {}
    for pricing in (None, SEED_EDITION):
        args = ["report", "--ledger", location, "--format", "json", "--by", "platform"]
        result = separate_runner().invoke(main, args + (["--pricing", pricing] if pricing else []))
        assert result.exit_code == 0, result.output
        totals[pricing] = sum(row["cost_usd"] for row in json.loads(result.stdout))
    assert f"{totals[None]:.4f}" == "2.7770"
    assert f"{totals[SEED_EDITION]:.4f}" == "50.3962"
    assert "TOTAL           200   138    69.0" in readme
    assert "TOTAL $50.3962,\nagainst $2.7770" in readme
    seed_demo = separate_runner().invoke(
        main, ["demo", "--ledger", str(tmp_path / "seed.db"), "--pricing", SEED_EDITION]
    )
    assert seed_demo.exit_code == 0, seed_demo.output
    assert "TOTAL           200     5     2.5   7.987       5       687.000       -   50.1649" in (
        seed_demo.output
    )
    assert "5 worker starts, TOTAL $50.1649" in readme
