"""The seed edition (``seed-2026-03``), user pricing files over it, their validation and the cost
models. The published edition and what is new with editions: tests/test_editions.py."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
import textwrap
import timeit
from pathlib import Path

import pytest

from gpuledger._errors import PricingError
from gpuledger._pricing import (
    PRICING_ENV,
    SEED_EDITION,
    Catalogue,
    Price,
    Problem,
    check_file,
    compile_pricer,
    default_catalogue,
    edition_catalogue,
    load_catalogue,
    normalise_gpu,
    shipped_path,
    validate_file,
)

H100_RESERVED_PER_SECOND = 2.69 / 3600
SEED = edition_catalogue(SEED_EDITION)
"""The seed article's edition, whose numbers these tests work."""


@pytest.fixture(autouse=True)
def no_pricing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees a GPULEDGER_PRICING from the environment it runs in."""
    monkeypatch.delenv(PRICING_ENV, raising=False)


def exact(expected_usd: float) -> object:
    """``expected_usd`` to float precision (relative 1e-9, absolute 1e-12), for ``==``."""
    return pytest.approx(expected_usd, rel=1e-9, abs=1e-12)


def write(directory: Path, text: str, name: str = "mine.toml") -> Path:
    """Write a pricing file (dedented; over the seed edition unless it names its own base or is
    an edition) and return its path."""
    path = directory / name
    text = textwrap.dedent(text)
    if "base =" not in text and "edition =" not in text:
        text = f'base = "{SEED_EDITION}"\n' + text
    path.write_text(text, encoding="utf-8")
    return path


def make_price(**changes: object) -> Price:
    """A per-second test price at $0.001 per GPU-second with no rounding, changed by ``changes``."""
    price = Price(
        platform="test",
        gpu="H100",
        kind="per_second",
        execution_fee_usd=0.0,
        per_gpu_second_usd=0.001,
        hourly_usd=None,
        billing_increment_s=0.0,
        minimum_billed_s=0.0,
        bills_startup=False,
        idle_window_s=None,
        timeout_s=None,
        source="test",
    )
    return dataclasses.replace(price, **changes)  # type: ignore[arg-type]


def keys(problems: list[Problem]) -> list[str]:
    """The keys of the problems, in order."""
    return [problem.key for problem in problems]


def reason_for(problems: list[Problem], key: str) -> str:
    """The reason given for ``key`` (fails when there is none)."""
    found = [problem.reason for problem in problems if problem.key == key]
    assert found, f"no problem for {key!r} in {problems}"
    return found[0]


# --------------------------------------------------------------------------------------------
# The shipped catalogue


def test_import_does_not_read_the_catalogue() -> None:
    """Importing gpuledger and gpuledger._pricing leaves the catalogue caches empty (lazy)."""
    probe = textwrap.dedent(
        """
        import gpuledger, gpuledger._pricing as pricing
        before = (pricing.default_catalogue.cache_info().currsize,
                  pricing._edition.cache_info().currsize)
        pricing.default_catalogue()
        after = pricing.default_catalogue.cache_info().currsize
        print(before, after)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split("\n")[0] == "(0, 0) 1"


def test_shipped_catalogue_validates_clean() -> None:
    """The shipped TOML has no problems and gives five prices."""
    assert validate_file(shipped_path(SEED_EDITION)) == []
    assert check_file(shipped_path(SEED_EDITION)) == ([], 5)


def test_shipped_catalogue_version_and_sources() -> None:
    """The shipped catalogue is version 2026-03 and names the article it comes from."""
    catalogue = SEED
    assert catalogue.version == "seed-2026-03"
    assert any("Serverless GPU Computing" in source for source in catalogue.sources)


def test_shipped_platforms_and_kinds() -> None:
    """The five platforms of the seed, each with the kind of its cost model."""
    catalogue = SEED
    assert catalogue.platforms() == ["banana", "modal", "replicate", "reserved", "runpod"]
    kinds = {price.platform: price.kind for price in catalogue.prices()}
    assert kinds == {
        "runpod": "serverless_execution",
        "replicate": "per_second",
        "modal": "per_second",
        "banana": "per_second",
        "reserved": "reserved",
    }


def test_shipped_prices_only_h100() -> None:
    """The seed prices only the H100, so no other GPU is in the catalogue."""
    assert {price.gpu for price in SEED.prices()} == {"H100"}
    assert SEED.lookup("runpod", "A100") is None


def test_every_shipped_price_cites_its_source() -> None:
    """Each shipped price says it is from catalogue 2026-03 and quotes where."""
    for price in SEED.prices():
        assert price.source == "edition:seed-2026-03"
        assert price.citation.startswith("article:"), price


def test_shipped_platform_rules_from_the_seed() -> None:
    """Fees, per-second rates, windows and timeouts are the seed's numbers; unknowns are None."""
    catalogue = SEED
    runpod = catalogue.lookup("runpod", "H100")
    replicate = catalogue.lookup("replicate", "H100")
    modal = catalogue.lookup("modal", "H100")
    banana = catalogue.lookup("banana", "H100")
    reserved = catalogue.lookup("reserved", "H100")
    assert runpod is not None
    assert replicate is not None
    assert modal is not None
    assert banana is not None
    assert reserved is not None
    assert (runpod.execution_fee_usd, runpod.per_gpu_second_usd) == (0.25, 0.00024)
    assert (runpod.idle_window_s, runpod.timeout_s, runpod.bills_startup) == (900, 900, True)
    assert (replicate.execution_fee_usd, replicate.per_gpu_second_usd) == (0.0, 0.001)
    assert (replicate.timeout_s, replicate.hourly_usd) == (7200, None)
    assert (modal.per_gpu_second_usd, modal.timeout_s) == (0.0005, 1800)
    assert (banana.per_gpu_second_usd, banana.timeout_s) == (0.0003, None)
    assert reserved.hourly_usd == 2.69
    assert reserved.per_gpu_second_usd == exact(H100_RESERVED_PER_SECOND)
    assert (reserved.billing_increment_s, reserved.minimum_billed_s) == (0.0, 0.0)
    # The seed names only RunPod's idle window; the others take it (SEED SILENT, documented).
    assert [price.idle_window_s for price in (replicate, modal, banana)] == [900, 900, 900]
    assert reserved.idle_window_s is None


@pytest.mark.parametrize(
    ("platform", "cold_start", "concurrency", "bills_idle", "prewarmed"),
    [
        ("runpod", (2.5, 2.0, 15.0), 1, False, 0),
        ("replicate", (10.0, 8.0, 12.0), 1, False, 0),
        ("modal", (5.0, 4.0, 6.0), 1, False, 0),
        ("banana", (0.5, None, 0.5), 1, False, 1),
        ("reserved", (0.0, None, None), 1, True, 0),
    ],
)
def test_shipped_worker_behaviour(
    platform: str,
    cold_start: tuple[float | None, float | None, float | None],
    concurrency: int,
    bills_idle: bool,
    prewarmed: int,
) -> None:
    """Cold starts (typical, min, max), concurrency, idle billing and pool are the chosen values."""
    price = SEED.lookup(platform, "H100")
    assert price is not None
    assert (price.cold_start_s, price.cold_start_min_s, price.cold_start_max_s) == cold_start
    assert (price.concurrency, price.bills_idle, price.prewarmed_workers) == (
        concurrency,
        bills_idle,
        prewarmed,
    )
    assert price.max_workers is None  # the seed names no limit for any platform
    assert isinstance(price.concurrency, int)
    assert isinstance(price.prewarmed_workers, int)


def test_every_shipped_platform_cites_its_behaviour() -> None:
    """Each serverless platform's behaviour quotes the article; reserved says it needs none."""
    for price in SEED.prices():
        if price.kind == "reserved":
            assert price.behaviour_citation.startswith("by definition"), price
        else:
            assert price.behaviour_citation.startswith("article:"), price


def test_price_behaviour_defaults() -> None:
    """A Price built without behaviour fields is the plain serverless worker."""
    price = make_price()
    assert (price.cold_start_s, price.cold_start_min_s, price.cold_start_max_s) == (
        None,
        None,
        None,
    )
    assert (price.concurrency, price.max_workers, price.bills_idle) == (1, None, False)
    assert (price.prewarmed_workers, price.behaviour_citation) == (0, "")
    names = [field.name for field in dataclasses.fields(Price)]
    assert names[names.index("citation") + 1 :] == [
        "cold_start_s",
        "cold_start_min_s",
        "cold_start_max_s",
        "concurrency",
        "max_workers",
        "bills_idle",
        "prewarmed_workers",
        "behaviour_citation",
        "reference",
        "rules_reference",
        "behaviour_reference",
        "sunset",
        "sunset_source",
        "cpu_core_second_usd",
        "memory_gib_second_usd",
        "min_cpu_cores",
        "min_memory_gib",
    ]


def test_default_catalogue_is_cached() -> None:
    """default_catalogue returns the same object, and load_catalogue() without a file returns it."""
    assert default_catalogue() is default_catalogue()
    assert load_catalogue() is default_catalogue()


def test_catalogue_is_immutable() -> None:
    """Neither a catalogue nor a price can be changed after it is made."""
    catalogue = SEED
    with pytest.raises(AttributeError):
        catalogue.version = "hacked"  # type: ignore[misc]
    price = catalogue.lookup("runpod", "H100")
    with pytest.raises(dataclasses.FrozenInstanceError):
        price.per_gpu_second_usd = 0.0  # type: ignore[misc, union-attr]


# --------------------------------------------------------------------------------------------
# The seed's numbers


def test_seed_twenty_seconds_on_h100() -> None:
    """20 s on H100: $0.2548 on RunPod serverless, $0.020 on Replicate, $0.0149 reserved."""
    catalogue = SEED
    runpod = catalogue.price("runpod", "H100", billed_gpu_seconds=20)
    replicate = catalogue.price("replicate", "H100", billed_gpu_seconds=20)
    reserved = catalogue.price("reserved", "H100", billed_gpu_seconds=20)
    assert runpod is not None
    assert replicate is not None
    assert reserved is not None
    assert runpod.total_usd == exact(0.2548)
    assert replicate.total_usd == exact(0.020)
    assert reserved.total_usd == exact(2.69 / 3600 * 20)
    assert round(reserved.total_usd, 4) == 0.0149


@pytest.mark.parametrize(
    ("platform", "expected_usd"),
    [("runpod", 0.2536), ("replicate", 0.015), ("modal", 0.0075), ("banana", 0.0045)],
)
def test_seed_fifteen_seconds_on_h100(platform: str, expected_usd: float) -> None:
    """15 s on H100 per platform (the seed's table rounds RunPod's $0.2536 to $0.254 and its
    reserved "$91/day" follows from no rate it gives, so the arithmetic is tested, not the typos).
    """
    cost = SEED.price(platform, "H100", billed_gpu_seconds=15)
    assert cost is not None
    assert cost.total_usd == exact(expected_usd)


def test_seed_hundred_second_inference() -> None:
    """The seed's 100-second RunPod inference runs $0.25 + 100 x $0.00024 = $0.274."""
    cost = SEED.price("runpod", "NVIDIA H100 80GB HBM3", billed_gpu_seconds=100)
    assert cost is not None
    assert cost.total_usd == exact(0.274)
    assert cost.execution_usd == 0.25
    assert cost.gpu_usd == exact(100 * 0.00024)
    assert cost.coldstart_usd == 0.0


def test_cost_names_its_price() -> None:
    """A cost carries the platform, canonical GPU, catalogue version and source of its price."""
    cost = SEED.price("RunPod", "h100 sxm", billed_gpu_seconds=1)
    assert cost is not None
    assert (cost.platform, cost.gpu) == ("runpod", "H100")
    assert (cost.catalogue_version, cost.source) == ("seed-2026-03", "edition:seed-2026-03")


# --------------------------------------------------------------------------------------------
# GPU names and look-ups


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("H100", "H100"),
        ("h100", "H100"),
        ("H100 SXM", "H100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA", ""),
        ("  80GB  ", ""),
    ],
)
def test_normalise_gpu(name: str, canonical: str) -> None:
    """Vendor, memory-size and form-factor words go; the model stays, upper case."""
    assert normalise_gpu(name) == canonical


@pytest.mark.parametrize(
    "gpu", ["H100", "h100", "H100 SXM", "NVIDIA H100 80GB HBM3", "gpu-h100", " H100-SXM5-80GB "]
)
def test_lookup_accepts_gpu_aliases(gpu: str) -> None:
    """Every spelling of the H100, including the data alias gpu-h100, finds the same price."""
    price = SEED.lookup("runpod", gpu)
    assert price is not None
    assert price == SEED.lookup("runpod", "H100")


@pytest.mark.parametrize(
    ("platform", "gpu"),
    [
        ("lambda", "H100"),
        ("runpod", "A100"),
        ("runpod", None),
        ("runpod", ""),
        ("runpod", "NVIDIA"),
    ],
)
def test_lookup_unknown_is_none(platform: str, gpu: str | None) -> None:
    """An unknown platform or GPU, or no GPU, has no price and no cost."""
    catalogue = SEED
    assert catalogue.lookup(platform, gpu) is None
    assert catalogue.price(platform, gpu, billed_gpu_seconds=10) is None


def test_lookup_platform_case_insensitive() -> None:
    """Platform names are matched without regard to case or surrounding spaces."""
    assert SEED.lookup(" RunPod ", "H100") is not None


# --------------------------------------------------------------------------------------------
# Cost models


def test_increment_rounds_per_gpu_time_up() -> None:
    """With a 1 s increment, 0.2 s bills 1 s, and 0.5 GPU-s on 2 GPUs bills 2 x 1 s."""
    pricer = compile_pricer(make_price(billing_increment_s=1.0), "v")
    assert pricer(0.2, 1, None).gpu_usd == exact(0.001)
    assert pricer(0.5, 2, None).gpu_usd == exact(0.002)
    assert pricer(20.0, 1, None).gpu_usd == exact(0.020)


def test_increment_ignores_float_noise() -> None:
    """A whole number of increments is not rounded up for float noise (3 x 0.1 s on 3 GPUs)."""
    pricer = compile_pricer(make_price(billing_increment_s=0.1), "v")
    assert pricer(3 * 0.1, 3, None).gpu_usd == exact(0.3 * 0.001)


def test_no_increment_bills_exact_time() -> None:
    """With no increment, 0.2 s bills 0.2 s."""
    pricer = compile_pricer(make_price(), "v")
    assert pricer(0.2, 1, None).gpu_usd == exact(0.0002)


def test_minimum_billed_per_gpu() -> None:
    """A 60 s minimum bills 60 s per GPU for a 10 s request, and nothing less for longer ones."""
    pricer = compile_pricer(make_price(minimum_billed_s=60.0), "v")
    assert pricer(10.0, 1, None).gpu_usd == exact(0.060)
    assert pricer(20.0, 2, None).gpu_usd == exact(0.120)
    assert pricer(90.0, 1, None).gpu_usd == exact(0.090)


def test_coldstart_billed_only_where_startup_is() -> None:
    """Init seconds x GPUs x rate is billed when the platform bills start-up, else nothing."""
    billed = compile_pricer(make_price(bills_startup=True), "v")
    free = compile_pricer(make_price(bills_startup=False), "v")
    assert billed(10.0, 2, 5.0).coldstart_usd == exact(5 * 2 * 0.001)
    assert billed(10.0, 2, None).coldstart_usd == 0.0
    assert free(10.0, 2, 5.0).coldstart_usd == 0.0


def test_total_is_fee_plus_gpu_plus_coldstart() -> None:
    """The execution fee is charged once per invocation, whatever the GPUs, and all parts add up."""
    price = make_price(kind="serverless_execution", execution_fee_usd=0.25, bills_startup=True)
    cost = compile_pricer(price, "v")(20.0, 2, 3.0)
    assert cost.execution_usd == 0.25
    assert cost.gpu_usd == exact(20 * 0.001)
    assert cost.coldstart_usd == exact(3 * 2 * 0.001)
    assert cost.total_usd == exact(0.25 + 0.020 + 0.006)


def test_reserved_is_pro_rata_of_hourly() -> None:
    """Reserved bills hourly / 3600 per GPU-second held: 2 GPUs for 10 s cost 20 GPU-seconds."""
    pricer = compile_pricer(
        make_price(kind="reserved", hourly_usd=3.6, per_gpu_second_usd=0.0), "v"
    )
    assert pricer(20.0, 2, None).total_usd == exact(0.020)


def test_pricer_guards_bad_counts() -> None:
    """A GPU count below 1 counts as 1, and negative billed seconds cost nothing."""
    pricer = compile_pricer(make_price(billing_increment_s=1.0), "v")
    assert pricer(2.5, 0, None).gpu_usd == exact(0.003)
    assert pricer(-5.0, 1, None).gpu_usd == 0.0


def test_compiled_pricer_matches_catalogue_price() -> None:
    """compile_pricer gives the same Cost as Catalogue.price, and that Cost is still frozen."""
    catalogue = SEED
    price = catalogue.lookup("runpod", "H100")
    assert price is not None
    cost = compile_pricer(price, catalogue.version)(12.5, 2, 4.0)
    assert cost == catalogue.price(
        "runpod", "H100", billed_gpu_seconds=12.5, gpu_count=2, init_seconds=4.0
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        cost.total_usd = 0.0  # type: ignore[misc]


def test_compiled_pricer_is_fast() -> None:
    """A compiled pricer costs well under 20 us a call (a few hundred ns on a normal CPU)."""
    pricer = compile_pricer(make_price(billing_increment_s=1.0, bills_startup=True), "v")
    calls = 20_000
    seconds = min(timeit.repeat(lambda: pricer(20.0, 1, 2.0), number=calls, repeat=3))
    assert seconds / calls < 20e-6


# --------------------------------------------------------------------------------------------
# User pricing files


def test_user_file_overrides_a_platform_field(tmp_path: Path) -> None:
    """A file's RunPod fee replaces the shipped one; the rest stays; the price is the file's."""
    path = write(tmp_path, "[platforms.runpod]\nexecution_fee_usd = 0.30\n")
    catalogue = load_catalogue(path)
    runpod = catalogue.lookup("runpod", "H100")
    replicate = catalogue.lookup("replicate", "H100")
    assert runpod is not None
    assert replicate is not None
    assert (runpod.execution_fee_usd, runpod.per_gpu_second_usd) == (0.30, 0.00024)
    assert runpod.source == f"file:{path}"
    assert replicate.source == "edition:seed-2026-03"
    # Recorded as the file's content hash, so that old rows stay traceable to the file.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert catalogue.version == f"file:{digest}"
    assert catalogue.edition == SEED_EDITION
    assert catalogue.sources[-1] == f"file:{path}"
    cost = catalogue.price("runpod", "H100", billed_gpu_seconds=20)
    assert cost is not None
    assert cost.total_usd == exact(0.30 + 20 * 0.00024)
    assert (cost.catalogue_version, cost.source) == (f"file:{digest}", f"file:{path}")


def test_user_file_adds_gpu_and_platform(tmp_path: Path) -> None:
    """A file may add a GPU to a platform and a whole new platform, with its own citation."""
    path = write(
        tmp_path,
        """
        version = "acme-7"
        sources = ["our quote, April 2026"]

        [platforms.runpod.gpus.A100]
        per_gpu_second_usd = 0.00016
        citation = "our quote"

        [platforms.onprem]
        kind = "reserved"
        bills_startup = false

        [platforms.onprem.gpus."NVIDIA H100 80GB HBM3"]
        hourly_usd = 1.8
        """,
    )
    catalogue = load_catalogue(path)
    assert catalogue.version.startswith("file:")  # its "version" is a label, not what is recorded
    assert "our quote, April 2026" in catalogue.sources
    a100 = catalogue.lookup("runpod", "NVIDIA A100-SXM4-80GB")
    assert a100 is not None
    assert (a100.per_gpu_second_usd, a100.execution_fee_usd) == (0.00016, 0.25)
    assert (a100.source, a100.citation) == (f"file:{path}", "our quote")
    onprem = catalogue.price("onprem", "H100", billed_gpu_seconds=36, init_seconds=10)
    assert onprem is not None
    assert onprem.total_usd == exact(1.8 / 100)
    assert "onprem" in catalogue.platforms()


def test_user_file_adds_gpu_alias(tmp_path: Path) -> None:
    """An [aliases] entry in a user file lets a new spelling find a price."""
    path = write(tmp_path, '[aliases]\n"hopper-80" = "H100"\n')
    assert load_catalogue(path).lookup("modal", "hopper-80") is not None


def test_env_file_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPULEDGER_PRICING names a file that load_catalogue merges."""
    path = write(tmp_path, "[platforms.modal.gpus.H100]\nper_gpu_second_usd = 0.0006\n")
    monkeypatch.setenv(PRICING_ENV, str(path))
    price = load_catalogue().lookup("modal", "H100")
    assert price is not None
    assert price.per_gpu_second_usd == 0.0006


def test_path_argument_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit path wins over GPULEDGER_PRICING, and use_env=False ignores the variable."""
    from_env = write(
        tmp_path, "[platforms.modal.gpus.H100]\nper_gpu_second_usd = 0.0006\n", "e.toml"
    )
    given = write(tmp_path, "[platforms.modal.gpus.H100]\nper_gpu_second_usd = 0.0007\n", "a.toml")
    monkeypatch.setenv(PRICING_ENV, str(from_env))
    chosen = load_catalogue(given).lookup("modal", "H100")
    assert chosen is not None
    assert chosen.per_gpu_second_usd == 0.0007
    assert load_catalogue(use_env=False) is default_catalogue()


def test_bad_env_file_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing file named by GPULEDGER_PRICING raises PricingError saying where it came from."""
    monkeypatch.setenv(PRICING_ENV, str(tmp_path / "gone.toml"))
    with pytest.raises(PricingError, match=PRICING_ENV) as caught:
        load_catalogue()
    assert caught.value.problems == [f"{tmp_path / 'gone.toml'}: (file): no such file"]


def test_user_file_overrides_behaviour(tmp_path: Path) -> None:
    """A file's behaviour fields replace the shipped ones, one by one, and are cited to it;
    the price's own source and citation stay the catalogue's."""
    path = write(
        tmp_path,
        """
        [platforms.modal]
        concurrency = 4
        max_workers = 10
        bills_idle = true
        prewarmed_workers = 2.0
        """,
    )
    modal = load_catalogue(path).lookup("modal", "H100")
    assert modal is not None
    assert (modal.concurrency, modal.max_workers, modal.bills_idle) == (4, 10, True)
    assert modal.prewarmed_workers == 2
    assert isinstance(modal.prewarmed_workers, int)
    assert (modal.cold_start_s, modal.cold_start_min_s, modal.cold_start_max_s) == (5, 4, 6)
    assert modal.behaviour_citation == f"file:{path}"
    assert modal.source == "edition:seed-2026-03"
    assert modal.citation.startswith("article:")
    assert modal.per_gpu_second_usd == 0.0005


def test_user_file_behaviour_with_its_own_citation(tmp_path: Path) -> None:
    """A file that changes the cold start and its range and cites them keeps its citation."""
    path = write(
        tmp_path,
        """
        [platforms.runpod]
        cold_start_s = 20.0
        cold_start_min_s = 12.0
        cold_start_max_s = 40.0
        behaviour_citation = "our measurements, April 2026"
        """,
    )
    runpod = load_catalogue(path).lookup("runpod", "H100")
    assert runpod is not None
    assert (runpod.cold_start_s, runpod.cold_start_min_s, runpod.cold_start_max_s) == (20, 12, 40)
    assert runpod.behaviour_citation == "our measurements, April 2026"
    assert (runpod.bills_idle, runpod.idle_window_s) == (False, 900)


def test_user_file_new_platform_has_default_behaviour(tmp_path: Path) -> None:
    """A platform a file adds without behaviour fields gets the defaults and no citation."""
    path = write(
        tmp_path,
        '[platforms.newco]\nkind = "per_second"\n[platforms.newco.gpus.H100]\n'
        "per_gpu_second_usd = 0.0004\n",
    )
    newco = load_catalogue(path).lookup("newco", "H100")
    assert newco is not None
    assert newco == make_price(
        platform="newco", per_gpu_second_usd=0.0004, source=f"file:{path}", citation=""
    )


def test_changing_kind_needs_new_prices(tmp_path: Path) -> None:
    """Turning RunPod into a reserved platform without hourly prices is reported for its GPUs."""
    path = write(tmp_path, '[platforms.runpod]\nkind = "reserved"\n')
    problems = validate_file(path)
    assert keys(problems) == ["platforms.runpod.gpus.H100.hourly_usd"]
    assert "required for kind 'reserved'" in problems[0].reason


# --------------------------------------------------------------------------------------------
# Validation


EVERY_PROBLEM = """\
version = "acme-1"
colour = "blue"

[platforms.runpod.gpus.H100]
per_gpu_secnd_usd = 0.0003

[platforms.replicate.gpus.H100]
per_gpu_second_usd = -0.001

[platforms.modal.gpus.H100]
per_gpu_second_usd = "0.0005"

[platforms.lambda]
kind = "hourly"
[platforms.lambda.gpus.H100]
hourly_usd = 2.0

[platforms.coreweave]
kind = "per_second"

[platforms.onprem]
kind = "reserved"
[platforms.onprem.gpus.H100]
citation = "our invoice"

[platforms.banana.gpus.NVIDIA]
per_gpu_second_usd = 0.0001
"""


def test_every_problem_is_reported(tmp_path: Path) -> None:
    """One pass reports each problem in the file with its key, and loading raises with all."""
    path = write(tmp_path, EVERY_PROBLEM)
    problems = validate_file(path)
    assert sorted(keys(problems)) == sorted(
        [
            "colour",
            "platforms.runpod.gpus.H100.per_gpu_secnd_usd",
            "platforms.runpod.gpus.H100.per_gpu_second_usd",
            "platforms.replicate.gpus.H100.per_gpu_second_usd",
            "platforms.modal.gpus.H100.per_gpu_second_usd",
            "platforms.lambda.kind",
            "platforms.coreweave.gpus",
            "platforms.onprem.gpus.H100.hourly_usd",
            "platforms.banana.gpus.NVIDIA",
        ]
    )
    assert {problem.file for problem in problems} == {str(path)}
    with pytest.raises(PricingError) as caught:
        load_catalogue(path)
    assert caught.value.problems == [str(problem) for problem in problems]


def test_problem_reasons_are_specific(tmp_path: Path) -> None:
    """Each reason says what is wrong: a typo's likely key, the sign, the type, the kind."""
    problems = validate_file(write(tmp_path, EVERY_PROBLEM))
    assert reason_for(problems, "colour").startswith("unknown key")
    typo = reason_for(problems, "platforms.runpod.gpus.H100.per_gpu_secnd_usd")
    assert typo == "unknown key (did you mean 'per_gpu_second_usd'?)"
    negative = reason_for(problems, "platforms.replicate.gpus.H100.per_gpu_second_usd")
    assert negative == "must not be negative, got -0.001"
    as_text = reason_for(problems, "platforms.modal.gpus.H100.per_gpu_second_usd")
    assert as_text == "must be a number, got string '0.0005'"
    assert "unknown kind 'hourly'" in reason_for(problems, "platforms.lambda.kind")
    assert "no GPU prices" in reason_for(problems, "platforms.coreweave.gpus")
    assert "required for kind 'reserved'" in reason_for(
        problems, "platforms.onprem.gpus.H100.hourly_usd"
    )
    assert "nothing is left" in reason_for(problems, "platforms.banana.gpus.NVIDIA")


@pytest.mark.parametrize(
    ("text", "key", "reason_part"),
    [
        (
            "[platforms.newco.gpus.H100]\nper_gpu_second_usd = 0.1\n",
            "platforms.newco.kind",
            "required",
        ),
        (
            '[platforms.newco]\nkind = "serverless_execution"\n[platforms.newco.gpus.H100]\n'
            "per_gpu_second_usd = 0.1\n",
            "platforms.newco.execution_fee_usd",
            "required",
        ),
        (
            "[platforms.runpod]\nexecution_fee_usd = true\n",
            "platforms.runpod.execution_fee_usd",
            "must be a number, got boolean true",
        ),
        (
            "[platforms.runpod.gpus.H100]\nper_gpu_second_usd = inf\n",
            "platforms.runpod.gpus.H100.per_gpu_second_usd",
            "finite",
        ),
        ("[platforms.runpod]\ntimeout_s = 0\n", "platforms.runpod.timeout_s", "greater than 0"),
        (
            '[platforms.runpod]\nbills_startup = "yes"\n',
            "platforms.runpod.bills_startup",
            "true or false",
        ),
        (
            "[platforms.runpod]\nper_gpu_second_usd = 0.1\n",
            "platforms.runpod.per_gpu_second_usd",
            "goes in a [platforms.runpod.gpus.<GPU>] table",
        ),
        (
            "[platforms.runpod.gpus.H100]\nper_gpu_second_usd = 0.1\ntimeout_s = 5\n",
            "platforms.runpod.gpus.H100.timeout_s",
            "a platform field",
        ),
        (
            "[platforms.replicate]\nexecution_fee_usd = 0.1\n",
            "platforms.replicate.execution_fee_usd",
            "not used by kind 'per_second'",
        ),
        (
            "[platforms.reserved.gpus.H100]\nhourly_usd = 3.0\nper_gpu_second_usd = 0.001\n",
            "platforms.reserved.gpus.H100.per_gpu_second_usd",
            "not used by kind 'reserved'",
        ),
        (
            '[platforms.runpod.gpus."H100 SXM"]\nper_gpu_second_usd = 0.1\n'
            "[platforms.runpod.gpus.h100]\nper_gpu_second_usd = 0.2\n",
            "platforms.runpod.gpus.h100",
            "the same GPU as 'H100 SXM'",
        ),
        ('[platforms."Run Pod"]\nkind = "per_second"\n', "platforms.Run Pod", "letters, digits"),
        (
            "[platforms.runpod.gpus]\nH100 = 0.0003\n",
            "platforms.runpod.gpus.H100",
            "must be a table",
        ),
        ("version = 7\n", "version", "non-empty string"),
        ('sources = "one"\n', "sources", "array of non-empty strings"),
        ('[aliases]\n"NVIDIA" = "H100"\n', "aliases.NVIDIA", "no GPU name"),
        ("platforms = 3\n", "platforms", "must be a table"),
        # Behaviour fields.
        (
            '[platforms.modal]\ncold_start_s = "5"\n',
            "platforms.modal.cold_start_s",
            "must be a number, got string '5'",
        ),
        (
            "[platforms.modal]\ncold_start_max_s = -6\n",
            "platforms.modal.cold_start_max_s",
            "must not be negative",
        ),
        ("[platforms.modal]\nconcurrency = 0\n", "platforms.modal.concurrency", "at least 1"),
        (
            "[platforms.modal]\nconcurrency = 1.5\n",
            "platforms.modal.concurrency",
            "must be a whole number, got 1.5",
        ),
        (
            "[platforms.modal]\nconcurrency = true\n",
            "platforms.modal.concurrency",
            "must be a whole number, got boolean true",
        ),
        ("[platforms.modal]\nmax_workers = 0\n", "platforms.modal.max_workers", "at least 1"),
        (
            "[platforms.banana]\nprewarmed_workers = -1\n",
            "platforms.banana.prewarmed_workers",
            "must not be negative, got -1",
        ),
        (
            '[platforms.runpod]\nbills_idle = "no"\n',
            "platforms.runpod.bills_idle",
            "true or false",
        ),
        (
            '[platforms.runpod]\nbehaviour_citation = " "\n',
            "platforms.runpod.behaviour_citation",
            "non-empty string",
        ),
        (
            "[platforms.runpod]\ncold_start_min_s = 10\ncold_start_max_s = 5\n",
            "platforms.runpod.cold_start_min_s",
            "greater than cold_start_max_s (10 > 5)",
        ),
        (
            "[platforms.runpod]\ncold_start_min_s = 20\n",
            "platforms.runpod.cold_start_min_s",
            "greater than cold_start_max_s (20 > 15)",
        ),
        (
            "[platforms.runpod]\ncold_start_s = 20\n",
            "platforms.runpod.cold_start_s",
            "20 is outside cold_start_min_s to cold_start_max_s (2 to 15)",
        ),
        (
            "[platforms.banana]\nmax_workers = 3\nprewarmed_workers = 4\n",
            "platforms.banana.prewarmed_workers",
            "more than max_workers (4 > 3)",
        ),
        (
            "[platforms.runpod.gpus.H100]\nper_gpu_second_usd = 0.1\nconcurrency = 2\n",
            "platforms.runpod.gpus.H100.concurrency",
            "a platform field",
        ),
        (
            "[platforms.modal]\nconcurency = 2\n",
            "platforms.modal.concurency",
            "did you mean 'concurrency'?",
        ),
    ],
)
def test_single_problem(tmp_path: Path, text: str, key: str, reason_part: str) -> None:
    """Each kind of mistake is reported once, under its key, with a reason that names it."""
    problems = validate_file(write(tmp_path, text))
    assert keys(problems) == [key]
    assert reason_part in problems[0].reason


def test_bad_behaviour_value_is_not_checked_against_the_rest(tmp_path: Path) -> None:
    """A rejected cold-start bound is reported once, not again as a contradiction of the range."""
    path = write(tmp_path, "[platforms.runpod]\ncold_start_max_s = -1\ncold_start_s = 14\n")
    assert keys(validate_file(path)) == ["platforms.runpod.cold_start_max_s"]


def test_valid_behaviour_file_has_no_problems(tmp_path: Path) -> None:
    """Whole-number floats, a typical value at the range's edge and a pool within the limit pass."""
    path = write(
        tmp_path,
        "[platforms.banana]\nmax_workers = 2\nprewarmed_workers = 2.0\nconcurrency = 3.0\n"
        "[platforms.runpod]\ncold_start_s = 15\n",
    )
    assert validate_file(path) == []


def test_bad_toml_syntax_gives_line(tmp_path: Path) -> None:
    """A TOML syntax error is a problem keyed by its line number."""
    path = write(tmp_path, 'version = "x"\n[platforms.runpod\n')
    assert validate_file(path) == [
        Problem(
            str(path),
            "line 3",  # after the base line write() puts first
            "bad TOML syntax: Expected ']' at the end of a table declaration (column 18)",
        )
    ]


def test_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    """A missing file, a directory and non-UTF-8 bytes are problems, not exceptions."""
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert keys(validate_file(tmp_path / "gone.toml")) == ["(file)"]
    assert "directory" in validate_file(tmp_path)[0].reason
    assert "UTF-8" in validate_file(binary)[0].reason
    with pytest.raises(PricingError, match="no such file"):
        load_catalogue(tmp_path / "gone.toml")


def test_check_file_counts_the_file_prices(tmp_path: Path) -> None:
    """check_file counts the (platform, GPU) prices the file itself gives."""
    path = write(
        tmp_path,
        "[platforms.runpod]\nexecution_fee_usd = 0.3\n"
        "[platforms.modal.gpus.H100]\nper_gpu_second_usd = 0.0006\n"
        "[platforms.modal.gpus.A100]\nper_gpu_second_usd = 0.0004\n",
    )
    assert check_file(path) == ([], 2)


def test_problem_str() -> None:
    """A problem prints as 'file: key: reason'."""
    assert (
        str(Problem("p.toml", "platforms.x.kind", "required"))
        == "p.toml: platforms.x.kind: required"
    )


def test_catalogue_can_be_built_directly() -> None:
    """A Catalogue made from prices and aliases answers look-ups through its aliases."""
    catalogue = Catalogue("test-1", ["here"], [make_price()], {"HOPPER": "H100"})
    assert catalogue.lookup("test", "hopper") == make_price()
    assert (catalogue.version, catalogue.sources, catalogue.platforms()) == (
        "test-1",
        ("here",),
        ["test"],
    )
