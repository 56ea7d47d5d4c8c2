"""The pricing catalogue and the cost models: what a request's GPU time costs on each platform.

The catalogue ships inside the package as ``data/pricing.toml`` and is read on first use, never
at ``import gpuledger``. A user file (an explicit path, else the ``GPULEDGER_PRICING`` environment
variable) in the same format overrides it per platform field and per (platform, GPU) entry, and may
add platforms and GPUs. Prices are keyed by platform (``runpod``, ``replicate``, ``modal``,
``banana``, ``reserved``, or one from the user file) and canonical GPU model (``normalise_gpu``).

Cost models, by the platform's ``kind`` (money in US dollars, time in seconds):

* ``serverless_execution``: ``execution_fee_usd`` per invocation + ``per_gpu_second_usd`` per
  billed GPU-second;
* ``per_second``: ``per_gpu_second_usd`` per billed GPU-second;
* ``reserved``: ``hourly_usd / 3600`` per billed GPU-second, pro rata: the share of an hour that
  is paid anyway which the request held.

Billed GPU-seconds are the request's per-GPU wall time, rounded up to a multiple of
``billing_increment_s`` (when above 0) and at least ``minimum_billed_s``, times the GPUs held.
A cold start adds its init time x GPUs x the per-second rate where the platform bills start-up.

Fields a file leaves out: ``execution_fee_usd``, ``billing_increment_s`` and ``minimum_billed_s``
default to 0 and ``bills_startup`` to false (``execution_fee_usd`` is required for
``serverless_execution``); ``idle_window_s`` and ``timeout_s`` stay ``None``, unknown.

Each platform also describes how its workers behave, for the simulator and the break-even
calculator (platform fields, like the billing rules; seconds):

* ``cold_start_s``: typical time from a new worker being asked for until it can serve, with
  ``cold_start_min_s`` and ``cold_start_max_s`` the range the source gives (each ``None`` when
  unknown; the typical value lies within the range);
* ``concurrency``: requests one worker serves at once (default 1, at least 1);
* ``max_workers``: most workers the platform runs at once, pre-warmed ones included (default
  ``None``: no limit known);
* ``bills_idle``: whether a warm worker's idle time within ``idle_window_s`` is billed, at the
  per-GPU-second price (default false);
* ``prewarmed_workers``: workers kept warm at all times (default 0), billed continuously at the
  per-GPU-second price; a request they serve pays the execution fee but no GPU time of its own,
  and never waits for a cold start (no more than ``max_workers``);
* ``behaviour_citation``: where these come from; ``file:<path>`` when a user file changes one of
  them without citing its own.

A file's behaviour fields never change a price's ``source`` or ``citation``: they are not prices.

Why one module of this size: the catalogue's loader, its validation (which names every
problem in a pricing file at once) and the compiled pricer all work on the one ``Price`` type;
the next issue (worker bills) replaces the cost model here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from gpuledger._errors import PricingError
from gpuledger._settings import resolve_setting

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "DEFAULT_EDITION",
    "KINDS",
    "LEGACY_VERSIONS",
    "LOCAL_PLATFORMS",
    "OWNERS",
    "PRICING_ENV",
    "SEED_EDITION",
    "STALE_AFTER_DAYS",
    "Catalogue",
    "Cost",
    "Price",
    "Problem",
    "Reference",
    "check_file",
    "compile_pricer",
    "default_catalogue",
    "edition_catalogue",
    "edition_name",
    "editions",
    "known_platforms",
    "load_catalogue",
    "normalise_gpu",
    "shipped_path",
    "unpriced_reason",
    "validate_file",
]

PRICING_ENV: Final = "GPULEDGER_PRICING"
"""Environment variable naming the edition or pricing file to price by."""
DEFAULT_EDITION: Final = "published-2026-12"
"""The edition used when none is named: the platforms' own published prices."""
SEED_EDITION: Final = "seed-2026-03"
"""The seed article's prices and rules, kept so that its worked examples reproduce."""
LEGACY_VERSIONS: Final[Mapping[str, str]] = {"2026-03": SEED_EDITION}
"""Catalogue versions written before editions had names -> the edition they are."""
STALE_AFTER_DAYS: Final = 90
"""An edition whose numbers were read longer ago than this is warned about."""

KINDS: Final = ("serverless_execution", "per_second", "reserved")
"""The cost models a platform can have (see the module docstring)."""

_SECONDS_PER_HOUR: Final = 3600.0
# A per-GPU time that is a whole number of increments but for float noise (3 x 0.1 s / 3 GPUs
# = 0.10000000000000002) must not be rounded up a whole increment.
_ROUNDING_SLACK: Final = 1e-9


# --------------------------------------------------------------------------------------------
# Public value types


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    """The billing rules and price of one GPU model on one platform (US dollars, seconds).

    ``per_gpu_second_usd`` is also set for ``reserved`` (``hourly_usd / 3600``); ``hourly_usd``
    is ``None`` for the other kinds. ``idle_window_s`` and ``timeout_s`` are ``None`` when unknown.
    ``source`` is where the price came from, ``catalogue:<version>`` or ``file:<path>``;
    ``citation`` is the reference the file gives for it ("" when none).

    The fields after ``citation`` describe the platform's workers (see the module docstring):
    cold start typical and range, concurrency, worker limit, idle billing, pre-warmed pool, and
    ``behaviour_citation``, their reference. Their defaults are the plain serverless worker: cold
    start unknown, one request at a time, no known limit, idle free, no pool.
    """

    platform: str
    gpu: str
    kind: str
    execution_fee_usd: float
    per_gpu_second_usd: float
    hourly_usd: float | None
    billing_increment_s: float
    minimum_billed_s: float
    bills_startup: bool
    idle_window_s: float | None
    timeout_s: float | None
    source: str
    citation: str = ""
    cold_start_s: float | None = None
    cold_start_min_s: float | None = None
    cold_start_max_s: float | None = None
    concurrency: int = 1
    max_workers: int | None = None
    bills_idle: bool = False
    prewarmed_workers: int = 0
    behaviour_citation: str = ""
    reference: Reference | None = None
    """Where the GPU price comes from (an edition's entries all say; a user file's may)."""
    rules_reference: Reference | None = None
    """Where the platform's billing rules come from."""
    behaviour_reference: Reference | None = None
    """Where the worker behaviour figures come from."""
    sunset: str | None = None
    """The date the platform stopped selling this product (ISO), with ``sunset_source``."""
    sunset_source: str = ""
    cpu_core_second_usd: float = 0.0
    """Per CPU core-second a worker reserves (0: not charged apart from the GPU)."""
    memory_gib_second_usd: float = 0.0
    """Per GiB-second of memory a worker reserves."""
    min_cpu_cores: float = 0.0
    """The least CPU a worker is charged for (the platform's minimum reservation)."""
    min_memory_gib: float = 0.0
    """The least memory a worker is charged for."""


@dataclasses.dataclass(frozen=True, slots=True)
class Reference:
    """Where a number comes from: ``source`` (a URL, or a document's title), the date it was
    read there (``read_on``, ISO ``YYYY-MM-DD`` or ``YYYY-MM``), and whose word it is
    (:data:`OWNERS`)."""

    source: str
    read_on: str
    owner: str


@dataclasses.dataclass(frozen=True, slots=True)
class Cost:
    """What one invocation cost, in US dollars, unrounded: ``total_usd`` is the sum of the parts.

    ``execution_usd`` is the per-invocation fee, ``gpu_usd`` the billed GPU time of the request,
    ``coldstart_usd`` the init time billed to a cold request (GPU time), ``resources_usd`` the
    CPU and memory the worker reserves over the request's own wall time (its share, where
    requests overlap) and the init it was billed, where the platform charges them (Modal).
    ``source`` is the price's source. A record carries no field of its own for
    ``resources_usd``: its ``cost_usd`` is ``cost_execution_usd + cost_gpu_usd +
    cost_coldstart_usd`` plus the worker's CPU and memory for the request's time.
    """

    total_usd: float
    execution_usd: float
    gpu_usd: float
    coldstart_usd: float
    platform: str
    gpu: str
    catalogue_version: str
    source: str
    resources_usd: float = 0.0


# A frozen dataclass's __init__ sets each field through object.__setattr__; the slots' own
# descriptors set them directly in half the time, which the pricer uses on the request path.
_COST_SETTERS: Final = tuple(
    getattr(Cost, field.name).__set__ for field in dataclasses.fields(Cost)
)


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong in a pricing file; ``key`` is a dotted TOML key, ``line N`` or ``(file)``."""

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.reason}"


# --------------------------------------------------------------------------------------------
# GPU names

_MEMORY_SIZE: Final = re.compile(r"\b\d+(?:\.\d+)?\s*(?:GB|GIB|G)\b")
_SEPARATORS: Final = re.compile(r"[\s\-_/,.()!]+")
_VENDOR_WORDS: Final = frozenset({"NVIDIA", "TESLA", "GEFORCE"})
# Form factors and memory types, not models. "NVL" and "MIG" are kept: they name different
# products (and prices) from the plain model, and an unknown GPU is better than a wrong price.
_FORM_FACTOR: Final = re.compile(r"SXM\d*|PCIE\d*|HBM\d*E?|GDDR\d*X?")


def normalise_gpu(name: str) -> str:
    """The canonical model in a GPU name: upper case, without vendor, memory-size and form-factor
    words ("NVIDIA H100 80GB HBM3" and "h100 sxm" -> "H100"); "" when nothing is left.
    """
    upper = _MEMORY_SIZE.sub(" ", name.upper())
    words = [
        word
        for word in _SEPARATORS.split(upper)
        if word and word not in _VENDOR_WORDS and not _FORM_FACTOR.fullmatch(word)
    ]
    return " ".join(words)


# --------------------------------------------------------------------------------------------
# The catalogue


class Catalogue:
    """Immutable prices keyed by (platform, canonical GPU), with a version and sources."""

    __slots__ = ("_aliases", "_as_of", "_by_key", "_edition", "_sources", "_version")

    _aliases: Mapping[str, str]
    _as_of: str
    _by_key: Mapping[tuple[str, str], Price]
    _edition: str
    _sources: tuple[str, ...]
    _version: str

    def __init__(
        self,
        version: str,
        sources: Iterable[str],
        prices: Iterable[Price],
        aliases: Mapping[str, str] | None = None,
        *,
        edition: str = "",
        as_of: str = "",
    ) -> None:
        """Build a catalogue; ``aliases`` maps normalised GPU names to canonical ones;
        ``edition`` is the edition it is or overlays, ``as_of`` the day its numbers were read."""
        object.__setattr__(self, "_version", version)
        object.__setattr__(self, "_edition", edition or version)
        object.__setattr__(self, "_as_of", as_of)
        object.__setattr__(self, "_sources", tuple(sources))
        object.__setattr__(
            self, "_by_key", {(price.platform, price.gpu): price for price in prices}
        )
        object.__setattr__(self, "_aliases", dict(aliases or {}))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Catalogue is immutable: cannot set {name!r}")

    def __repr__(self) -> str:
        return f"Catalogue(version={self._version!r}, prices={len(self._by_key)})"

    @property
    def version(self) -> str:
        """What prices from it are recorded as: the edition's name (``published-2026-12``), or
        ``file:<hash>`` for a user file over an edition (its content's SHA-256, 12 digits)."""
        return self._version

    @property
    def edition(self) -> str:
        """The edition this is, or the one a user file overlays."""
        return self._edition

    @property
    def as_of(self) -> str:
        """The day the edition's numbers were read (ISO; "" when not known)."""
        return self._as_of

    def age_days(self, today: dt.date) -> int | None:
        """How old the edition's numbers are on ``today``, in days (None when not dated)."""
        if not self._as_of:
            return None
        read = dt.date.fromisoformat(self._as_of if len(self._as_of) > 7 else self._as_of + "-01")
        return (today - read).days

    def stale_warning(self, today: dt.date) -> str | None:
        """A warning when the edition is older than :data:`STALE_AFTER_DAYS` on ``today``."""
        age = self.age_days(today)
        if age is None or age <= STALE_AFTER_DAYS:
            return None
        return (
            f"warning: pricing edition {self._edition} is {age} days old (read {self._as_of}); "
            "platforms change their prices: see `gpuledger pricing editions`, or give a newer "
            "one with --pricing"
        )

    @property
    def sources(self) -> tuple[str, ...]:
        """Where the prices come from, shipped sources first."""
        return self._sources

    def canonical_gpu(self, gpu: str) -> str:
        """The catalogue's key for a GPU name: normalised, then through the aliases."""
        canonical = normalise_gpu(gpu)
        return self._aliases.get(canonical, canonical)

    def lookup(self, platform: str, gpu: str | None) -> Price | None:
        """The price of ``gpu`` on ``platform``; ``None`` when either is unknown or not given."""
        if gpu is None:
            return None
        return self._by_key.get((platform.strip().lower(), self.canonical_gpu(gpu)))

    def platforms(self) -> list[str]:
        """The platform names with at least one price, sorted."""
        return sorted({platform for platform, _ in self._by_key})

    def prices(self) -> list[Price]:
        """Every price, sorted by platform then GPU."""
        return [self._by_key[key] for key in sorted(self._by_key)]

    def price(
        self,
        platform: str,
        gpu: str | None,
        *,
        billed_gpu_seconds: float,
        gpu_count: int = 1,
        init_seconds: float | None = None,
    ) -> Cost | None:
        """The cost of one invocation (see ``compile_pricer``); ``None`` when there is no price."""
        found = self.lookup(platform, gpu)
        if found is None:
            return None
        return compile_pricer(found, self._version)(billed_gpu_seconds, gpu_count, init_seconds)


def compile_pricer(
    price: Price,
    catalogue_version: str,
    *,
    rounds: bool = True,
    cpu: float | None = None,
    memory_gib: float | None = None,
) -> Callable[[float, int, float | None], Cost]:
    """A function pricing one invocation at ``price``, its rates worked out once, for the hot path.

    It takes ``(billed_gpu_seconds, gpu_count, init_seconds)``: GPU-seconds held (wall time x
    GPUs), the GPUs held (below 1 counts as 1), and the init seconds of a cold start or ``None``.
    With ``rounds``, the billing increment and minimum apply to the invocation as if it were a
    worker's whole billing span; without, it is the invocation's own charge as known at its end
    (the worker's rounding comes later, from ``gpuledger.billing``).

    Where the platform charges the worker's CPU and memory, ``cpu`` (physical cores) and
    ``memory_gib`` are what it reserves (None: the platform's minimum; the higher of the two
    is charged, as ``gpuledger.billing.Rules.from_price`` charges it): priced per second of the
    request's wall time (billed GPU-seconds over GPUs) and of the init it is billed, in
    ``Cost.resources_usd`` and so in ``total_usd``.
    """
    if price.kind == "reserved" and price.hourly_usd is not None:
        rate = price.hourly_usd / _SECONDS_PER_HOUR
    else:
        rate = price.per_gpu_second_usd
    execution_usd = price.execution_fee_usd
    startup_rate = rate if price.bills_startup else 0.0
    resource_rate = _reserved_usd_per_second(
        price.cpu_core_second_usd, cpu, price.min_cpu_cores
    ) + _reserved_usd_per_second(price.memory_gib_second_usd, memory_gib, price.min_memory_gib)
    startup_resource_rate = resource_rate if price.bills_startup else 0.0
    increment = price.billing_increment_s
    minimum = price.minimum_billed_s
    adjusts = rounds and (increment > 0.0 or minimum > 0.0)
    platform, gpu, source = price.platform, price.gpu, price.source
    ceil = math.ceil
    slack = _ROUNDING_SLACK
    new = object.__new__
    (
        set_total,
        set_execution,
        set_gpu_usd,
        set_coldstart,
        set_platform,
        set_gpu,
        set_version,
        set_source,
        set_resources,
    ) = _COST_SETTERS

    def pricer(
        billed_gpu_seconds: float, gpu_count: int = 1, init_seconds: float | None = None
    ) -> Cost:
        gpus = gpu_count if gpu_count > 0 else 1
        billed = billed_gpu_seconds if billed_gpu_seconds > 0.0 else 0.0
        if adjusts:
            per_gpu = billed / gpus
            if increment > 0.0:
                per_gpu = ceil(per_gpu / increment - slack) * increment
            if per_gpu < minimum:  # noqa: PLR1730 - a compare is cheaper than a call to max here
                per_gpu = minimum
            billed = per_gpu * gpus
        gpu_usd = billed * rate
        coldstart_usd = init_seconds * gpus * startup_rate if init_seconds is not None else 0.0
        resources_usd = 0.0
        if resource_rate:  # the worker's CPU and memory over the same time
            resources_usd = billed / gpus * resource_rate
            if init_seconds is not None:
                resources_usd += init_seconds * startup_resource_rate
        cost: Cost = new(Cost)
        set_total(cost, execution_usd + gpu_usd + coldstart_usd + resources_usd)
        set_execution(cost, execution_usd)
        set_gpu_usd(cost, gpu_usd)
        set_coldstart(cost, coldstart_usd)
        set_platform(cost, platform)
        set_gpu(cost, gpu)
        set_version(cost, catalogue_version)
        set_source(cost, source)
        set_resources(cost, resources_usd)
        return cost

    return pricer


def _reserved_usd_per_second(unit_usd: float, reserved: float | None, minimum: float) -> float:
    """A worker's price per second for a resource charged per unit-second (0: not charged):
    the reservation or the platform's minimum, whichever is higher (None: the minimum)."""
    if not unit_usd:
        return 0.0
    if reserved is not None and not reserved > 0:
        raise ValueError(f"a reservation must be above 0, got {reserved!r}")
    return (minimum if reserved is None else max(reserved, minimum)) * unit_usd


# --------------------------------------------------------------------------------------------
# Loading


@functools.lru_cache(maxsize=1)
def _editions_folder() -> Traversable:
    """The shipped editions: a folder beside this module in every install that is not a zip
    (read directly: ``importlib.resources`` alone costs 10 ms of a cold start), else through
    ``importlib.resources``."""
    folder = Path(__file__).parent / "data" / "editions"
    if folder.is_dir():
        return folder
    from importlib import resources  # noqa: PLC0415  (a zipped install)

    return resources.files("gpuledger") / "data" / "editions"


@functools.lru_cache(maxsize=1)
def editions() -> tuple[str, ...]:
    """The names of the shipped price editions, sorted."""
    return tuple(
        sorted(
            entry.name.removesuffix(".toml")
            for entry in _editions_folder().iterdir()
            if entry.name.endswith(".toml")
        )
    )


def edition_name(name: str) -> str | None:
    """The shipped edition ``name`` stands for (a legacy version, ``2026-03``, reads as the
    edition it became, ``seed-2026-03``); None when it names none."""
    name = LEGACY_VERSIONS.get(name, name)
    return name if name in editions() else None


def shipped_path(edition: str = DEFAULT_EDITION) -> str:
    """Where a shipped edition's file is (a path for messages; it may live inside a zip)."""
    return str(_editions_folder() / f"{edition}.toml")


@functools.lru_cache(maxsize=1)
def default_catalogue() -> Catalogue:
    """The default edition, read once; raises ``PricingError`` if its file is broken."""
    return _edition(DEFAULT_EDITION)[1]


def edition_catalogue(name: str) -> Catalogue:
    """A shipped edition by name (or legacy version); ``PricingError`` naming the editions when
    there is no such edition."""
    found = edition_name(name)
    if found is None:
        raise PricingError(
            name, [f"{name}: no such edition: the editions are {', '.join(editions())}"]
        )
    return _edition(found)[1]


@functools.lru_cache(maxsize=8)
def _edition(name: str) -> tuple[_Spec, Catalogue]:
    path = shipped_path(name)
    problems: list[Problem] = []
    text = (_editions_folder() / f"{name}.toml").read_text("utf-8")
    spec, _count = _read_layer(_parse_toml(text, path, problems), path, None, problems)
    catalogue = _build(spec, path, problems)
    if spec.edition and spec.edition != name:
        problems.append(Problem(path, "edition", f"{spec.edition!r} in a file named {name!r}"))
    if problems:
        raise PricingError(path, [str(problem) for problem in problems])
    return spec, catalogue


def load_catalogue(
    pricing: str | os.PathLike[str] | None = None, *, use_env: bool = True
) -> Catalogue:
    """The prices to use: ``pricing``, else the ``pricing`` setting (``$GPULEDGER_PRICING``,
    else the settings file; when ``use_env``), else the default edition. Each names a shipped
    edition (``published-2026-12``, ``seed-2026-03``) or a pricing file, which overlays the
    edition its ``base`` names (default: the default edition). Raises ``PricingError`` listing
    every problem in the file (ConfigError for a bad settings file).
    """
    source = None
    if pricing is None and use_env:
        pricing, source = resolve_setting("pricing")
    if pricing is None:
        return default_catalogue()
    file = os.fspath(pricing)
    if edition_name(file) is not None:
        return edition_catalogue(file)
    problems: list[Problem] = []
    catalogue = _load_file(file, problems)
    if problems or catalogue is None:
        if not Path(file).exists() and "/" not in file and not file.endswith(".toml"):
            problems = [
                Problem(
                    file,
                    "(file)",
                    f"no such edition or file: the editions are {', '.join(editions())}",
                )
            ]
        where = f"{file} (from {source})" if source is not None else file
        raise PricingError(where, [str(problem) for problem in problems])
    return catalogue


def _load_file(file: str, problems: list[Problem]) -> Catalogue | None:
    raw = _read_bytes(file, problems)
    if raw is None:
        return None
    document = _decode_toml(raw, file, problems)
    if document is None:
        return None
    if "edition" in document and "base" not in document:
        # An edition's own file (a copy being checked, a newer one): read as one.
        spec, _count = _read_layer(document, file, None, problems)
        return _build(spec, file, problems)
    base = _base_spec(document, problems, file)
    if base is None:
        return None
    digest = hashlib.sha256(raw).hexdigest()[:12]
    spec, _count = _read_layer(document, file, base, problems, file_version=f"file:{digest}")
    return _build(spec, file, problems)


def _base_spec(document: Mapping[str, object], problems: list[Problem], file: str) -> _Spec | None:
    name = document.get("base", DEFAULT_EDITION)
    if not isinstance(name, str):
        return _edition(DEFAULT_EDITION)[0]  # the bad value is reported by _read_layer
    found = edition_name(name)
    if found is None:
        problems.append(
            Problem(file, "base", f"no edition {name!r}: the editions are {', '.join(editions())}")
        )
        return None
    return _edition(found)[0]


def check_file(path: str | os.PathLike[str]) -> tuple[list[Problem], int]:
    """Every problem in a pricing file (read over the edition its ``base`` names) or an
    edition's own file (one naming its ``edition``: read alone, every number needing its
    reference), and how many (platform, GPU) prices the file itself gives. Never raises for
    the file's content.
    """
    file = os.fspath(path)
    problems: list[Problem] = []
    raw = _read_bytes(file, problems)
    document = None if raw is None else _decode_toml(raw, file, problems)
    if document is None:
        return problems, 0
    base: _Spec | None = None
    if not ("edition" in document and "base" not in document):
        try:
            # A bad base is reported; the rest of the file is still checked, over the default.
            base = _base_spec(document, problems, file) or _edition(DEFAULT_EDITION)[0]
        except PricingError:
            # A broken shipped edition must not hide what is wrong with this file: check it
            # alone.
            base = None
    digest = hashlib.sha256(raw or b"").hexdigest()[:12]
    spec, count = _read_layer(document, file, base, problems, file_version=f"file:{digest}")
    _build(spec, file, problems)
    return problems, count


def validate_file(path: str | os.PathLike[str]) -> list[Problem]:
    """Every problem in a pricing file (see :func:`check_file`): unreadable, bad TOML, bad
    values (in file order), then what a platform lacks. Never raises for content."""
    return check_file(path)[0]


def _read_bytes(file: str, problems: list[Problem]) -> bytes | None:
    try:
        return Path(file).read_bytes()
    except FileNotFoundError:
        problems.append(Problem(file, "(file)", "no such file"))
    except IsADirectoryError:
        problems.append(Problem(file, "(file)", "is a directory, not a pricing file"))
    except OSError as error:
        problems.append(Problem(file, "(file)", f"cannot read: {error.strerror or error}"))
    return None


def _decode_toml(raw: bytes, file: str, problems: list[Problem]) -> dict[str, object] | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        problems.append(Problem(file, "(file)", f"not UTF-8 text: {error.reason}"))
        return None
    return _parse_toml(text, file, problems)


_TOML_POSITION: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _parse_toml(text: str, file: str, problems: list[Problem]) -> dict[str, object] | None:
    # tomllib costs an import; only a load pays it.
    import tomllib  # noqa: PLC0415 - ~7 ms of import that only a load should pay

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        position = _TOML_POSITION.search(message)
        if position is None:
            problems.append(Problem(file, "(toml)", f"bad TOML syntax: {message}"))
        else:
            line, column = position.groups()
            message = message[: position.start()]
            problems.append(
                Problem(file, f"line {line}", f"bad TOML syntax: {message} (column {column})")
            )
        return None


# --------------------------------------------------------------------------------------------
# Reading and merging a file's content
#
# A file is read as a layer over a base (the shipped catalogue; none for the shipped file
# itself). Layer 0 is the shipped file, 1 a user file. Platform fields are merged one by one and
# remember their layer; a GPU table replaces the base's table for that GPU as a whole.

_Value = str | float | bool | int

# Field -> how it is checked.
_PLATFORM_FIELDS: Final[Mapping[str, str]] = {
    "kind": "kind",
    "execution_fee_usd": "price",
    "billing_increment_s": "seconds",
    "minimum_billed_s": "seconds",
    "bills_startup": "bool",
    "idle_window_s": "seconds",
    "timeout_s": "positive_seconds",
    "citation": "text",
    "cold_start_s": "seconds",
    "cold_start_min_s": "seconds",
    "cold_start_max_s": "seconds",
    "concurrency": "positive_count",
    "max_workers": "positive_count",
    "bills_idle": "bool",
    "prewarmed_workers": "count",
    "behaviour_citation": "text",
    "source": "text",
    "read_on": "date",
    "owner": "owner",
    "behaviour_source": "text",
    "behaviour_read_on": "date",
    "behaviour_owner": "owner",
    "sunset": "date",
    "sunset_source": "text",
    "cpu_core_second_usd": "price",
    "memory_gib_second_usd": "price",
    "min_cpu_cores": "seconds",
    "min_memory_gib": "seconds",
    "gpus": "table",
}
# How the platform's workers behave, not what they cost: a file changing one of these leaves the
# prices' source and citation alone, and the fields share their own citation.
_BEHAVIOUR_FIELDS: Final = frozenset(
    {
        "cold_start_s",
        "cold_start_min_s",
        "cold_start_max_s",
        "concurrency",
        "max_workers",
        "bills_idle",
        "prewarmed_workers",
        "behaviour_citation",
        "behaviour_source",
        "behaviour_read_on",
        "behaviour_owner",
    }
)
_GPU_FIELDS: Final[Mapping[str, str]] = {
    "per_gpu_second_usd": "price",
    "hourly_usd": "price",
    "citation": "text",
    "source": "text",
    "read_on": "date",
    "owner": "owner",
}
_TOP_LEVEL: Final = ("edition", "as_of", "base", "version", "sources", "aliases", "platforms")
OWNERS: Final = ("own", "third-party", "gpuledger")
"""Whose word a number is: the platform's own page, docs or API; a third party's (an article,
a copy of a price page); or gpuledger's own choice where no source gives one (its citation says
why)."""
_DATE: Final = re.compile(r"\d{4}-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?")
_EDITION_NAME: Final = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
# A reference is three fields: a table gives all of them or none.
_REFERENCES: Final = {
    "": ("source", "read_on", "owner"),
    "behaviour_": ("behaviour_source", "behaviour_read_on", "behaviour_owner"),
}
_PLATFORM_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclasses.dataclass(slots=True)
class _Gpu:
    key: str
    fields: dict[str, _Value]
    layer: int
    origin: str
    rejected: set[str]  # fields given with a bad value (already reported)


@dataclasses.dataclass(slots=True)
class _Platform:
    key: str
    fields: dict[str, tuple[_Value, int]]  # value and the layer that set it
    gpus: dict[str, _Gpu]
    gpu_tables_seen: bool = False
    rejected: set[str] = dataclasses.field(default_factory=set)  # bad values, already reported


@dataclasses.dataclass(slots=True)
class _Spec:
    version: str
    edition: str
    """The edition it is or overlays."""
    as_of: str
    """The day the edition's numbers were read."""
    sources: list[str]
    aliases: dict[str, str]
    platforms: dict[str, _Platform]
    layer: int
    origin: str


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"


def _check_value(check: str, value: object) -> tuple[_Value | None, str | None]:
    """The value to keep, or the reason it is wrong."""
    if check == "text":
        if isinstance(value, str) and value.strip():
            return value, None
        return None, f"must be a non-empty string, got {_describe(value)}"
    if check == "bool":
        if isinstance(value, bool):
            return value, None
        return None, f"must be true or false, got {_describe(value)}"
    if check == "date":
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value.isoformat(), None
        if isinstance(value, str) and _DATE.fullmatch(value.strip()):
            return value.strip(), None
        return None, f"must be a date, YYYY-MM-DD or YYYY-MM, got {_describe(value)}"
    if check == "owner":
        if value in OWNERS:
            return str(value), None
        return None, f"must be one of {', '.join(map(repr, OWNERS))}, got {_describe(value)}"
    if check == "kind":
        if not isinstance(value, str):
            return None, f"must be a string, one of {', '.join(KINDS)}; got {_describe(value)}"
        if value not in KINDS:
            return None, f"unknown kind {value!r}, expected one of {', '.join(KINDS)}"
        return value, None
    # Numbers. TOML booleans are Python ints: refuse them explicitly.
    if isinstance(value, bool) or not isinstance(value, int | float):
        what = "a whole number" if check in {"count", "positive_count"} else "a number"
        return None, f"must be {what}, got {_describe(value)}"
    if check in {"count", "positive_count"}:
        return _check_count(check, value)
    number = float(value)
    if not math.isfinite(number):
        return None, f"must be a finite number, got {value!r}"
    if number < 0:
        return None, f"must not be negative, got {value!r}"
    if check == "positive_seconds" and number == 0:
        return None, "must be greater than 0"
    return number, None


def _check_count(check: str, value: float) -> tuple[_Value | None, str | None]:
    """A count of workers or requests: a whole number (``2.0`` reads as 2), 0 up or 1 up."""
    if isinstance(value, float) and not value.is_integer():
        return None, f"must be a whole number, got {value!r}"
    count = int(value)
    if count < 0:
        return None, f"must not be negative, got {value!r}"
    if check == "positive_count" and count == 0:
        return None, "must be at least 1"
    return count, None


def _unknown_key(key: str, allowed: Iterable[str]) -> str:
    import difflib  # noqa: PLC0415  (only on this error path)

    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def _read_edition_name(
    spec: _Spec, document: Mapping[str, object], add: Callable[[str, str], None]
) -> None:
    """An edition names itself (``edition``) and the day its numbers were read (``as_of``)."""
    edition = document.get("edition")
    if edition is None:
        add("edition", "required: the edition's name, e.g. 'published-2026-12'")
    elif not (isinstance(edition, str) and _EDITION_NAME.fullmatch(edition)):
        add(
            "edition",
            "must be a name of lower-case letters, digits and '-', e.g. 'published-2026-12'; "
            f"got {_describe(edition)}",
        )
    else:
        spec.version = spec.edition = edition
    as_of = document.get("as_of")
    if as_of is None:
        add("as_of", "required: the date the edition's numbers were read, YYYY-MM-DD")
    else:
        checked, reason = _check_value("date", as_of)
        if reason is not None:
            add("as_of", reason)
        else:
            spec.as_of = str(checked)
    for key in ("base", "version"):
        if key in document:
            add(key, "an edition stands alone and is named by 'edition'")
    spec.version = spec.version or "unknown"
    spec.origin = f"edition:{spec.version}"


def _read_layer(
    document: Mapping[str, object] | None,
    file: str,
    base: _Spec | None,
    problems: list[Problem],
    *,
    file_version: str | None = None,
) -> tuple[_Spec, int]:
    """Merge one file over ``base`` (none: the file is an edition); returns the merged spec and
    how many GPU tables it gives. ``file_version`` is what a user file's prices are recorded as
    (``file:<hash>``)."""
    layer = 0 if base is None else base.layer + 1
    spec = _Spec(
        version=base.version if base else "",
        edition=base.edition if base else "",
        as_of=base.as_of if base else "",
        sources=list(base.sources) if base else [],
        aliases=dict(base.aliases) if base else {},
        platforms={
            name: dataclasses.replace(
                platform, fields=dict(platform.fields), gpus=dict(platform.gpus), rejected=set()
            )
            for name, platform in (base.platforms.items() if base else ())
        },
        layer=layer,
        origin="",
    )
    if document is None:
        return spec, 0
    add = functools.partial(_add_problem, problems, file)

    for key in document:
        if key not in _TOP_LEVEL:
            add(key, _unknown_key(key, _TOP_LEVEL))

    if base is None:
        _read_edition_name(spec, document, add)
    else:
        for key in ("edition", "as_of"):
            if key in document:
                add(
                    key,
                    "a pricing file overlays an edition and is named by its content's hash: "
                    'give base = "<edition>" instead',
                )
        base_name = document.get("base")
        if base_name is not None and not isinstance(base_name, str):
            add("base", f"must be an edition's name, got {_describe(base_name)}")
        label = document.get("version")
        if label is not None and not (isinstance(label, str) and label.strip()):
            add("version", f"must be a non-empty string, got {_describe(label)}")
        spec.version = file_version or f"file:{Path(file).stem}"
        spec.origin = f"file:{file}"

    sources = document.get("sources")
    if sources is not None:
        if isinstance(sources, list) and all(isinstance(s, str) and s.strip() for s in sources):
            spec.sources.extend(str(s) for s in sources)
        else:
            add("sources", "must be an array of non-empty strings")
    if base is not None:
        spec.sources.append(spec.origin)

    aliases = document.get("aliases")
    if aliases is not None:
        if isinstance(aliases, dict):
            for alias, target in aliases.items():
                _read_alias(spec, alias, target, add)
        else:
            add(
                "aliases",
                f"must be a table of GPU name = canonical GPU name, got {_describe(aliases)}",
            )

    count = 0
    platforms = document.get("platforms")
    if platforms is not None:
        if isinstance(platforms, dict):
            for name, table in platforms.items():
                count += _read_platform(spec, name, table, add)
        else:
            add("platforms", f"must be a table of platforms, got {_describe(platforms)}")
    elif base is None:
        add("platforms", "required: at least one [platforms.<name>] table")
    return spec, count


def _add_problem(problems: list[Problem], file: str, key: str, reason: str) -> None:
    problems.append(Problem(file, key, reason))


def _read_alias(spec: _Spec, alias: str, target: object, add: Callable[[str, str], None]) -> None:
    key = f"aliases.{alias}"
    if not isinstance(target, str):
        add(key, f"must be a GPU name (a string), got {_describe(target)}")
        return
    name, canonical = normalise_gpu(alias), normalise_gpu(target)
    if not name:
        add(key, "the alias is no GPU name: nothing is left after normalising")
    elif not canonical:
        add(key, f"{target!r} is no GPU name: nothing is left after normalising")
    elif name != canonical:
        spec.aliases[name] = spec.aliases.get(canonical, canonical)


def _read_platform(spec: _Spec, name: str, table: object, add: Callable[[str, str], None]) -> int:
    key = f"platforms.{name}"
    platform_name = name.strip().lower()
    if not _PLATFORM_NAME.fullmatch(platform_name):
        add(key, "a platform name is letters, digits, '-' and '_'")
        return 0
    if not isinstance(table, dict):
        add(key, f"must be a table, got {_describe(table)}")
        return 0
    platform = spec.platforms.get(platform_name)
    if platform is None:
        platform = spec.platforms[platform_name] = _Platform(key=key, fields={}, gpus={})
    for field, value in table.items():
        field_key = f"{key}.{field}"
        check = _PLATFORM_FIELDS.get(field)
        if check is None:
            if field in _GPU_FIELDS:
                add(field_key, f"a GPU's price goes in a [{key}.gpus.<GPU>] table")
            else:
                add(field_key, _unknown_key(field, _PLATFORM_FIELDS))
        elif check != "table":
            checked, reason = _check_value(check, value)
            if reason is not None:
                add(field_key, reason)
                platform.rejected.add(field)
            elif checked is not None:
                platform.fields[field] = (checked, spec.layer)

    count = 0
    gpus = table.get("gpus")
    if gpus is not None:
        if not isinstance(gpus, dict):
            add(f"{key}.gpus", f"must be a table of GPU tables, got {_describe(gpus)}")
            return 0
        platform.gpu_tables_seen = True
        given_by: dict[str, str] = {}
        for gpu_name, gpu_table in gpus.items():
            gpu = _read_gpu(spec, f"{key}.gpus.{gpu_name}", gpu_name, gpu_table, add)
            if gpu is None:
                continue
            canonical, entry = gpu
            if canonical in given_by:
                add(entry.key, f"the same GPU as {given_by[canonical]!r}: both are {canonical!r}")
                continue
            given_by[canonical] = gpu_name
            platform.gpus[canonical] = entry
            count += 1
    return count


def _read_gpu(
    spec: _Spec, key: str, gpu_name: str, table: object, add: Callable[[str, str], None]
) -> tuple[str, _Gpu] | None:
    canonical = normalise_gpu(gpu_name)
    canonical = spec.aliases.get(canonical, canonical)
    if not canonical:
        add(key, "no GPU model in this name: nothing is left after normalising")
        return None
    if not isinstance(table, dict):
        add(key, f"must be a table with per_gpu_second_usd or hourly_usd, got {_describe(table)}")
        return None
    fields: dict[str, _Value] = {}
    rejected: set[str] = set()
    for field, value in table.items():
        check = _GPU_FIELDS.get(field)
        if check is None:
            if field in _PLATFORM_FIELDS:
                add(f"{key}.{field}", "a platform field: it goes in the platform's own table")
            else:
                add(f"{key}.{field}", _unknown_key(field, _GPU_FIELDS))
            continue
        checked, reason = _check_value(check, value)
        if reason is not None:
            add(f"{key}.{field}", reason)
            rejected.add(field)
        elif checked is not None:
            fields[field] = checked
    return canonical, _Gpu(key, fields, spec.layer, spec.origin, rejected)


# The price field each kind needs per GPU, and the ones it does not use.
_GPU_PRICE_FIELD: Final[Mapping[str, str]] = {
    "serverless_execution": "per_gpu_second_usd",
    "per_second": "per_gpu_second_usd",
    "reserved": "hourly_usd",
}


def _build(spec: _Spec, file: str, problems: list[Problem]) -> Catalogue:
    """Check every platform is complete for its kind and make the catalogue of what is usable."""
    add = functools.partial(_add_problem, problems, file)
    prices: list[Price] = []
    for name, platform in spec.platforms.items():
        fields = platform.fields
        kind_entry = fields.get("kind")
        if kind_entry is None:
            if "kind" not in platform.rejected:
                add(f"{platform.key}.kind", f"required: one of {', '.join(KINDS)}")
            continue
        kind = str(kind_entry[0])
        fee_entry = fields.get("execution_fee_usd")
        if kind == "serverless_execution" and fee_entry is None:
            if "execution_fee_usd" not in platform.rejected:
                add(f"{platform.key}.execution_fee_usd", "required for kind 'serverless_execution'")
        elif (
            kind != "serverless_execution" and fee_entry is not None and fee_entry[1] == spec.layer
        ):
            add(f"{platform.key}.execution_fee_usd", f"not used by kind {kind!r}")
        if not platform.gpus:
            if not platform.gpu_tables_seen:
                add(
                    f"{platform.key}.gpus",
                    f"no GPU prices: give a [{platform.key}.gpus.<GPU>] table",
                )
            continue
        behaviour_citation = _check_behaviour(platform, spec, add)
        _check_references(platform, spec, add)
        price_field = _GPU_PRICE_FIELD[kind]
        platform_layer = max(
            (layer for field, (_, layer) in fields.items() if field not in _BEHAVIOUR_FIELDS),
            default=0,
        )
        citation_entry = fields.get("citation")
        for gpu_name, gpu in platform.gpus.items():
            for unused in set(_GPU_PRICE_FIELD.values()) - {price_field}:
                if unused in gpu.fields and gpu.layer == spec.layer:
                    add(
                        f"{gpu.key}.{unused}", f"not used by kind {kind!r} (it needs {price_field})"
                    )
            amount = gpu.fields.get(price_field)
            if not isinstance(amount, float):
                if price_field not in gpu.rejected:
                    add(f"{gpu.key}.{price_field}", f"required for kind {kind!r}")
                continue
            if gpu.layer >= platform_layer:
                source = gpu.origin
                citation = gpu.fields.get("citation")
                if (
                    citation is None
                    and citation_entry is not None
                    and citation_entry[1] == gpu.layer
                ):
                    citation = citation_entry[0]
            else:
                # The file changed the platform's rules under a GPU price it did not give.
                source, citation = spec.origin, None
            prices.append(
                _price(
                    name,
                    gpu_name,
                    kind,
                    fields=fields,
                    amount=amount,
                    source=source,
                    citation=citation,
                    behaviour_citation=behaviour_citation,
                    reference=_reference(gpu.fields) if source == gpu.origin else None,
                )
            )
    return Catalogue(
        spec.version, spec.sources, prices, spec.aliases, edition=spec.edition, as_of=spec.as_of
    )


_NUMBERS_NEEDING_BEHAVIOUR_SOURCE: Final = _BEHAVIOUR_FIELDS - {
    "behaviour_citation",
    *_REFERENCES["behaviour_"],
}
"""The behaviour fields that are numbers (or flags), not their citation."""


def _check_references(platform: _Platform, spec: _Spec, add: Callable[[str, str], None]) -> None:
    """Every number an edition gives has a reference: the platform's rules (``source``,
    ``read_on``, ``owner``), its worker behaviour where it gives any (``behaviour_*``), each GPU
    price, and a sunset (``sunset_source``). A user file need not cite, but a reference it
    starts must be whole."""
    fields = platform.fields
    edition = spec.layer == 0

    def mine(name: str) -> bool:
        entry = fields.get(name)
        return entry is not None and entry[1] == spec.layer

    for prefix, names in _REFERENCES.items():
        given = [name for name in names if mine(name)]
        needed = edition and (
            prefix == "" or any(mine(name) for name in _NUMBERS_NEEDING_BEHAVIOUR_SOURCE)
        )
        if given or needed:
            for name in names:
                if name not in fields and name not in platform.rejected:
                    what = "its worker behaviour figures" if prefix else "its billing rules"
                    add(
                        f"{platform.key}.{name}",
                        f"required: every number needs a source, the date it was read and whose "
                        f"word it is ({what})",
                    )
    if mine("sunset") and "sunset_source" not in fields:
        add(f"{platform.key}.sunset_source", "required: where the sunset is announced")
    for gpu in platform.gpus.values():
        if gpu.layer != spec.layer:
            continue
        names = _REFERENCES[""]
        if edition or any(name in gpu.fields for name in names):
            for name in names:
                if name not in gpu.fields and name not in gpu.rejected:
                    add(
                        f"{gpu.key}.{name}",
                        "required: every price needs a source, the date it was read and whose "
                        "word it is",
                    )


def _reference(values: Mapping[str, object], prefix: str = "") -> Reference | None:
    source, read_on, owner = (values.get(name) for name in _REFERENCES[prefix])
    if source is None or read_on is None or owner is None:
        return None
    return Reference(str(source), str(read_on), str(owner))


def _check_behaviour(platform: _Platform, spec: _Spec, add: Callable[[str, str], None]) -> str:
    """Report behaviour fields that contradict each other; return the behaviour citation.

    A contradiction is reported by the layer that sets one of its fields (the shipped file's own
    are checked when it is read), and not at all where one of them had a bad value (already
    reported: the value in force is the base's, which the file did not mean).
    """
    fields = platform.fields

    def given(*names: str) -> bool:
        mine = any(name in fields and fields[name][1] == spec.layer for name in names)
        return mine and not platform.rejected.intersection(names)

    def value(name: str) -> float | None:
        entry = fields.get(name)
        return None if entry is None else float(entry[0])

    low, high, typical = value("cold_start_min_s"), value("cold_start_max_s"), value("cold_start_s")
    range_ok = True
    if low is not None and high is not None and low > high:
        range_ok = False
        if given("cold_start_min_s", "cold_start_max_s"):
            add(
                f"{platform.key}.cold_start_min_s",
                f"greater than cold_start_max_s ({low:g} > {high:g})",
            )
    names = ("cold_start_s", "cold_start_min_s", "cold_start_max_s")
    outside = typical is not None and (
        (low is not None and typical < low) or (high is not None and typical > high)
    )
    if range_ok and outside and given(*names):
        shown = f"{'-' if low is None else f'{low:g}'} to {'-' if high is None else f'{high:g}'}"
        add(
            f"{platform.key}.cold_start_s",
            f"{typical:g} is outside cold_start_min_s to cold_start_max_s ({shown}): "
            "the typical cold start lies within the range (set the range too)",
        )
    pool, limit = value("prewarmed_workers"), value("max_workers")
    too_many = pool is not None and limit is not None and pool > limit
    if too_many and given("prewarmed_workers", "max_workers"):
        add(
            f"{platform.key}.prewarmed_workers",
            f"more than max_workers ({pool:g} > {limit:g})",
        )

    newest = max(
        (
            layer
            for field, (_, layer) in fields.items()
            if field in _BEHAVIOUR_FIELDS and field != "behaviour_citation"
        ),
        default=-1,
    )
    citation = fields.get("behaviour_citation")
    if citation is not None and citation[1] >= newest:
        return str(citation[0])
    if newest == spec.layer and spec.layer > 0:
        # The user's file changed how workers behave and cited nothing: say whose word it is.
        return spec.origin
    return ""


def _price(
    platform: str,
    gpu: str,
    kind: str,
    *,
    fields: Mapping[str, tuple[_Value, int]],
    amount: float,
    source: str,
    citation: _Value | None,
    behaviour_citation: str,
    reference: Reference | None,
) -> Price:
    def number(field: str, default: float | None) -> float | None:
        entry = fields.get(field)
        return default if entry is None else float(entry[0])

    def count(field: str, default: int | None) -> int | None:
        entry = fields.get(field)
        return default if entry is None else int(entry[0])

    reserved = kind == "reserved"
    plain = {field: value for field, (value, _layer) in fields.items()}
    fee = number("execution_fee_usd", 0.0) if kind == "serverless_execution" else 0.0
    return Price(
        platform=platform,
        gpu=gpu,
        kind=kind,
        execution_fee_usd=fee or 0.0,
        per_gpu_second_usd=amount / _SECONDS_PER_HOUR if reserved else amount,
        hourly_usd=amount if reserved else None,
        billing_increment_s=number("billing_increment_s", 0.0) or 0.0,
        minimum_billed_s=number("minimum_billed_s", 0.0) or 0.0,
        bills_startup=bool(fields["bills_startup"][0]) if "bills_startup" in fields else False,
        idle_window_s=number("idle_window_s", None),
        timeout_s=number("timeout_s", None),
        source=source,
        citation=str(citation) if citation is not None else "",
        cold_start_s=number("cold_start_s", None),
        cold_start_min_s=number("cold_start_min_s", None),
        cold_start_max_s=number("cold_start_max_s", None),
        concurrency=count("concurrency", 1) or 1,
        max_workers=count("max_workers", None),
        bills_idle=bool(fields["bills_idle"][0]) if "bills_idle" in fields else False,
        prewarmed_workers=count("prewarmed_workers", 0) or 0,
        behaviour_citation=behaviour_citation,
        reference=reference,
        rules_reference=_reference(plain),
        behaviour_reference=_reference(plain, "behaviour_"),
        sunset=str(plain["sunset"]) if "sunset" in plain else None,
        sunset_source=str(plain.get("sunset_source", "")),
        cpu_core_second_usd=number("cpu_core_second_usd", 0.0) or 0.0,
        memory_gib_second_usd=number("memory_gib_second_usd", 0.0) or 0.0,
        min_cpu_cores=number("min_cpu_cores", 0.0) or 0.0,
        min_memory_gib=number("min_memory_gib", 0.0) or 0.0,
    )


LOCAL_PLATFORMS: Final = ("local",)
"""Platforms that are never priced: the agent's default where none is detected or set."""


def known_platforms(catalogue: Catalogue) -> list[str]:
    """The platforms a worker may say it runs on: those ``catalogue`` prices, and those any
    shipped edition knows (a platform an edition dropped, Banana's sunset serverless, still
    records: unpriced, saying why)."""
    known = set(catalogue.platforms())
    for name in editions():
        try:
            known.update(_edition(name)[1].platforms())
        except PricingError:  # a broken edition is reported where it is used, not here
            continue
    return sorted(known)


def unpriced_reason(platform: str, gpu: str | None, catalogue: Catalogue | None = None) -> str:
    """Why an invocation on ``platform`` with ``gpu`` has no price: the record's ``cost_source``,
    the same words from the worker and the sidecar. With ``catalogue``, a platform it lacks
    that another edition has says which (a sunset product, say so)."""
    if platform in LOCAL_PLATFORMS:
        return f"unpriced: platform {platform!r} (set GPULEDGER_PLATFORM)"
    if catalogue is not None and platform not in catalogue.platforms():
        for name in editions():
            other = _edition(name)[1]
            if platform not in other.platforms():
                continue
            sunset = next((p.sunset for p in other.prices() if p.platform == platform), None)
            why = f" (sunset {sunset})" if sunset else ""
            return (
                f"unpriced: {platform}{why} has no price in {catalogue.version}; "
                f"price it with --pricing {name} or a pricing file"
            )
    if gpu is None:
        return "unpriced: GPU model unknown (set GPULEDGER_GPU)"
    return f"unpriced: no {platform} price for GPU {gpu!r}"
