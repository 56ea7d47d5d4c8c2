"""The report's charges as a FinOps FOCUS 1.0 dataset: one row per charge period (UTC hour) x
billing worker x endpoint x user x tenant x gpuledger charge category, written as CSV.

Every column of FOCUS 1.0 is present (its 43, in the specification's alphabetical order), then
gpuledger's own, prefixed ``x_`` as the specification requires of custom columns. What
gpuledger does not know is null (an empty cell), never a stand-in: the availability zone, the
account's display name, sub accounts, commitment discounts, a resource's display name.

Where the values come from:

- the money and time are :func:`~gpuledger.ledger.period_charges`' (the report's bills, cut at
  the hours), so ``EffectiveCost`` adds up to the report's total; ``ListCost`` and
  ``ContractedCost`` are the same amounts (gpuledger prices at the catalogue's rates: no
  discount it could know of), and ``ListUnitPrice`` is the rate per GPU-second, or the fee per
  request;
- ``BilledCost`` is what an invoice says, where a trued-up invoice is given (``billed``, or
  :func:`gpuledger.reconcile.true_up_focus_rows`); otherwise 0: FOCUS 1.0 allows no null there,
  and gpuledger issues no invoice. A true-up adds rows of its own, with no worker, no quantity
  and an ``EffectiveCost`` of 0, for invoiced amounts no row of the report's carries: the
  ``residual`` (what no ledger row explains; its ``ResourceId`` is the invoice's endpoint), and
  an owner's share where the report's rules charge it nothing in the period (idle time the
  platform billed and the rules do not);
- every gpuledger category is ``ChargeCategory`` ``Usage`` (time a GPU was held, the platform's
  per-request fee, and the residual: usage the platform billed); ``ConsumedQuantity`` and
  ``PricingQuantity`` are GPU-seconds (``GPU-Seconds``), or for a fee the requests charged
  (``Requests``); the gpuledger category is ``x_GpuledgerChargeCategory``;
- the platform (RunPod, Replicate, Modal, Banana, or a pricing file's own) is the provider, the
  publisher and the invoice issuer; ``SkuId`` is the platform and GPU model, ``SkuPriceId`` adds
  the unit priced and the pricing edition;
- ``ResourceId`` is the endpoint where the records name one, else the billing worker; ``Tags``
  the row's ``user``, ``tenant`` and ``endpoint``;
- ``BillingAccountId``, which FOCUS requires and gpuledger cannot see, is what the caller passes
  (``gpuledger report --billing-account``), else the platform's name, standing for your one
  account there.

Numbers are written as plain decimals (no exponent, always a decimal point: ``0.0``), exact
where they end within 18 decimal places, else rounded there.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction
from typing import TYPE_CHECKING, Final, Literal, NamedTuple, TextIO, TypeAlias

from gpuledger.billing import CATEGORIES, Category

if TYPE_CHECKING:
    from gpuledger.ledger._periods import PeriodCharge

__all__ = [
    "FOCUS_COLUMNS",
    "FOCUS_CUSTOM_COLUMNS",
    "FOCUS_VERSION",
    "RESIDUAL",
    "FocusCategory",
    "FocusKey",
    "FocusRow",
    "focus_rows",
    "write_focus_csv",
]

FOCUS_VERSION: Final = "1.0"

RESIDUAL: Final = "residual"
"""The category of a true-up's invoiced amounts that no ledger row explains."""
FocusCategory: TypeAlias = Category | Literal["residual"]
"""A row's gpuledger category: the billing engine's, or :data:`RESIDUAL`."""

FOCUS_COLUMNS: Final = (
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "SkuId",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
)
"""The columns of FOCUS 1.0 (Column IDs), in the specification's order."""

FOCUS_CUSTOM_COLUMNS: Final = (
    "x_GpuledgerChargeCategory",
    "x_GpuledgerPlatform",
    "x_GpuledgerWorker",
    "x_GpuledgerPricingVersion",
    "x_GpuledgerProvisional",
)
"""gpuledger's own columns, after FOCUS's: its charge category (``startup``, ``request``,
``idle``, ``rounding``, ``fee``; a true-up's ``residual``), the platform as the ledger names
it, the billing worker, the pricing edition the row was billed under, and whether the worker's
bill may still grow (``true``: it may still be running, its idle time and rounding are not
final)."""

_PLATFORMS: Final = {  # ledger name -> (provider's name, its service's name)
    "runpod": ("RunPod", "RunPod Serverless"),
    "replicate": ("Replicate", "Replicate"),
    "modal": ("Modal", "Modal"),
    "banana": ("Banana", "Banana"),
}
_WHAT: Final[dict[FocusCategory, str]] = {
    "startup": "GPU time starting the worker",
    "request": "GPU time running requests",
    "idle": "GPU time of a warm worker waiting for requests",
    "rounding": "GPU time added by the billing increment and minimum",
    "fee": "per-request fee",
    "residual": "invoiced amount that no ledger row explains",
}
_ORDER: Final[tuple[FocusCategory, ...]] = (*CATEGORIES, RESIDUAL)
_NS_PER_S: Final = 1_000_000_000
_PLACES: Final = 18
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

Amount: TypeAlias = Fraction | Decimal | int | float
"""US dollars, as a true-up gives them."""


class FocusKey(NamedTuple):
    """What a row is the charges of: a true-up's ``billed`` mapping is keyed by it."""

    period_start_ns: int
    worker: str | None
    endpoint: str | None
    user: str | None
    tenant: str | None
    category: FocusCategory


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FocusRow:
    """One row of the dataset, in gpuledger's terms (:meth:`cells` writes it in FOCUS's).

    Amounts are exact US dollars; ``quantity`` is GPU-seconds, or requests for a fee; None is
    unknown (records priced before rules were frozen, whose price is gone: their time's parts
    and rate; a true-up's rows of its own)."""

    period_start_ns: int
    period_end_ns: int
    billing_account_id: str
    platform: str
    gpu_model: str | None
    region: str | None
    worker: str | None
    """The billing worker; None in a true-up's rows of its own (invoiced amounts no row of the
    report's carries)."""
    endpoint: str | None
    user: str | None
    tenant: str | None
    category: FocusCategory
    quantity: Fraction | None
    unit_price_usd: Fraction | None
    """Per GPU-second, or per request for a fee."""
    cost_usd: Fraction
    """The ledger's charge (the report's, cut at the period)."""
    billed_usd: Fraction = Fraction(0)
    """What a trued-up invoice says; 0 without one."""
    pricing_version: str | None
    provisional: bool

    @property
    def key(self) -> FocusKey:
        return FocusKey(
            self.period_start_ns, self.worker, self.endpoint, self.user, self.tenant, self.category
        )

    @property
    def sort_key(self) -> tuple[int, str, str, str, str, int]:
        """Where the row sorts: by period, worker, endpoint, user, tenant, then category
        (startup, request, idle, rounding, fee, residual)."""
        return (
            self.period_start_ns,
            self.worker or "",
            self.endpoint or "",
            self.user or "",
            self.tenant or "",
            _ORDER.index(self.category),
        )

    def cells(self) -> dict[str, str | None]:
        """The row's FOCUS and ``x_`` columns as CSV text, None for null."""
        provider, service = _PLATFORMS.get(self.platform, (self.platform, self.platform))
        fee = self.category == "fee"
        residual = self.category == RESIDUAL
        sku = self.platform if self.gpu_model is None else f"{self.platform}/{self.gpu_model}"
        sku_price = f"{sku}/{RESIDUAL if residual else 'request' if fee else 'gpu-second'}"
        if self.pricing_version is not None:
            sku_price += f"@{self.pricing_version}"
        # The residual's quantity is the platform's, unknown here (pods, storage, other Apps).
        unit = None if residual else "Requests" if fee else "GPU-Seconds"
        resource = self.endpoint or self.worker
        what = _WHAT[self.category]
        if not fee and not residual and self.gpu_model is not None:
            what = f"{self.gpu_model} {what}"
        tags = {"endpoint": self.endpoint, "tenant": self.tenant, "user": self.user}
        known_tags = {name: value for name, value in tags.items() if value is not None}
        month_start, month_end = _month(self.period_start_ns)
        cost = _decimal(self.cost_usd)
        unit_price = None if self.unit_price_usd is None else _decimal(self.unit_price_usd)
        quantity = None if self.quantity is None else _decimal(self.quantity)
        values: dict[str, str | None] = {
            "BilledCost": _decimal(self.billed_usd),
            "BillingAccountId": self.billing_account_id,
            "BillingCurrency": "USD",
            "BillingPeriodEnd": month_end,
            "BillingPeriodStart": month_start,
            "ChargeCategory": "Usage",
            "ChargeDescription": f"{provider}: {what}",
            "ChargeFrequency": "Usage-Based",
            "ChargePeriodEnd": _iso(self.period_end_ns),
            "ChargePeriodStart": _iso(self.period_start_ns),
            "ConsumedQuantity": quantity,
            "ConsumedUnit": unit,
            "ContractedCost": cost,
            "ContractedUnitPrice": unit_price,
            "EffectiveCost": cost,
            "InvoiceIssuerName": provider,
            "ListCost": cost,
            "ListUnitPrice": unit_price,
            "PricingCategory": "Standard",
            "PricingQuantity": quantity,
            "PricingUnit": unit,
            "ProviderName": provider,
            "PublisherName": provider,
            "RegionId": self.region,
            "ResourceId": resource,
            "ResourceType": None if resource is None else "Endpoint" if self.endpoint else "Worker",
            "ServiceCategory": "AI and Machine Learning",
            "ServiceName": service,
            "SkuId": sku,
            "SkuPriceId": sku_price,
            "Tags": json.dumps(known_tags, sort_keys=True) if known_tags else None,
            "x_GpuledgerChargeCategory": self.category,
            "x_GpuledgerPlatform": self.platform,
            "x_GpuledgerWorker": self.worker,
            "x_GpuledgerPricingVersion": self.pricing_version,
            "x_GpuledgerProvisional": "true" if self.provisional else "false",
        }
        return {column: values.get(column) for column in (*FOCUS_COLUMNS, *FOCUS_CUSTOM_COLUMNS)}


BilledFor: TypeAlias = Mapping[FocusKey, Amount] | Callable[[FocusRow], Amount | None]
"""A trued-up invoice's amounts: per row key, or a function of the row (None: not billed)."""


def focus_rows(
    charges: Iterable[PeriodCharge],
    *,
    billed: BilledFor | None = None,
    billing_account_id: str | None = None,
) -> list[FocusRow]:
    """The FOCUS rows of ``charges`` (:func:`~gpuledger.ledger.period_charges`), summed per
    period, worker, endpoint, user, tenant and category; in period order, then by worker,
    endpoint, user, tenant and category (startup, request, idle, rounding, fee).

    ``billed`` gives each row's ``BilledCost`` from a trued-up invoice (a row it does not name
    is 0). ``billing_account_id`` is your account at the platform (default: the platform's
    name)."""
    listed = list(charges)
    workers: dict[str, tuple[str | None, str | None]] = {}
    for charge in listed:  # the worker's GPU and region, for its own rows too (no record there)
        if charge.record is not None and workers.get(charge.worker, (None, None)) == (None, None):
            workers[charge.worker] = (charge.record.gpu_model, charge.record.region)
    cells: dict[FocusKey, _Cell] = {}
    for charge in listed:
        record = charge.record
        usd = charge.charges.usd
        gpu_ns = charge.charges.gpu_ns
        rates = charge.charges.rates
        recorded = Fraction(-1) in rates  # taken as its record says: no rate known
        for category in CATEGORIES:
            if category == "fee":
                if not usd["fee"]:
                    continue
            elif not usd[category] and not gpu_ns[category]:
                continue
            key = FocusKey(
                charge.period_start_ns,
                charge.worker,
                charge.endpoint,
                None if record is None else record.user_id,
                None if record is None else record.tenant,
                category,
            )
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = _Cell(charge)
            cell.usd += usd[category]
            cell.provisional |= charge.provisional
            cell.versions |= charge.charges.versions
            if category == "fee":
                cell.requests += 1  # one fee per request, in the period its request started
                cell.unit_prices.add(usd["fee"])
            elif recorded:
                # A recorded request knows its own time; its start-up's is not known.
                known = category == "request"
                cell.gpu_ns = _plus(cell.gpu_ns, gpu_ns[category]) if known else None
                cell.unit_prices.add(None)
            else:
                cell.gpu_ns = _plus(cell.gpu_ns, gpu_ns[category])
                cell.unit_prices.update(rates)
    rows = []
    for key, cell in cells.items():
        gpu_model, region = workers.get(cell.worker, (None, None))
        prices = cell.unit_prices
        row = FocusRow(
            period_start_ns=key.period_start_ns,
            period_end_ns=cell.period_end_ns,
            billing_account_id=billing_account_id or cell.platform,
            platform=cell.platform,
            gpu_model=gpu_model,
            region=region,
            worker=key.worker,
            endpoint=key.endpoint,
            user=key.user,
            tenant=key.tenant,
            category=key.category,
            quantity=cell.quantity(key.category),
            unit_price_usd=next(iter(prices)) if len(prices) == 1 else None,
            cost_usd=cell.usd,
            pricing_version=cell.version(),
            provisional=cell.provisional,
        )
        if billed is not None:
            amount = billed.get(row.key) if isinstance(billed, Mapping) else billed(row)
            if amount is not None:
                row = dataclasses.replace(row, billed_usd=_exact(amount))
        rows.append(row)
    rows.sort(key=lambda row: row.sort_key)
    return rows


def write_focus_csv(rows: Iterable[FocusRow], out: TextIO) -> None:
    """``rows`` as FOCUS CSV to ``out``: a header of Column IDs, then a line per row, null as
    an empty cell."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow((*FOCUS_COLUMNS, *FOCUS_CUSTOM_COLUMNS))
    for row in rows:
        writer.writerow(["" if value is None else value for value in row.cells().values()])


class _Cell:
    """Running sums of one row."""

    __slots__ = (
        "gpu_ns",
        "period_end_ns",
        "platform",
        "provisional",
        "requests",
        "unit_prices",
        "usd",
        "versions",
        "worker",
    )

    def __init__(self, charge: PeriodCharge) -> None:
        self.worker = charge.worker
        self.period_end_ns = charge.period_end_ns
        self.platform = charge.platform
        self.usd = Fraction(0)
        self.gpu_ns: Fraction | None = Fraction(0)
        """None once a part's time is unknown."""
        self.requests = 0
        self.unit_prices: set[Fraction | None] = set()
        self.versions: set[str] = set()
        self.provisional = False

    def quantity(self, category: FocusCategory) -> Fraction | None:
        """Requests (a fee), else GPU-seconds; None where unknown."""
        if category == "fee":
            return Fraction(self.requests)
        return None if self.gpu_ns is None else self.gpu_ns / _NS_PER_S

    def version(self) -> str | None:
        """The pricing edition, ``mixed`` when the row mixes editions."""
        if len(self.versions) > 1:
            return "mixed"
        return next(iter(self.versions), None)


def _plus(total: Fraction | None, gpu_ns: Fraction) -> Fraction | None:
    return None if total is None else total + gpu_ns


def _exact(amount: Amount) -> Fraction:
    """An invoice's amount as the decimal it was written as (a float's shortest form)."""
    if isinstance(amount, float):
        return Fraction(repr(amount))
    return Fraction(amount)


def _decimal(value: Fraction) -> str:
    """``value`` in FOCUS's numeric format: a plain decimal with a decimal point, exact where
    it ends within :data:`_PLACES` places, else rounded half-even there."""
    with localcontext() as context:
        context.prec = 80
        number = Decimal(value.numerator) / Decimal(value.denominator)
        number = number.quantize(Decimal(1).scaleb(-_PLACES), rounding=ROUND_HALF_EVEN)
    text = f"{number:f}"
    if "." in text:
        text = text.rstrip("0")
    text = text + "0" if text.endswith(".") else text if "." in text else text + ".0"
    return "0.0" if text == "-0.0" else text


def _iso(instant_ns: int) -> str:
    """FOCUS's date/time format: ``YYYY-MM-DDTHH:mm:ssZ``, UTC."""
    moment = _EPOCH + dt.timedelta(microseconds=instant_ns // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _month(instant_ns: int) -> tuple[str, str]:
    """The UTC calendar month holding ``instant_ns``, as its inclusive start and exclusive end."""
    moment = _EPOCH + dt.timedelta(microseconds=instant_ns // 1000)
    start = dt.datetime(moment.year, moment.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=dt.UTC)
    return start.strftime("%Y-%m-%dT%H:%M:%SZ"), end.strftime("%Y-%m-%dT%H:%M:%SZ")
