"""A simulated fleet whose truth is known, and the platforms' exports of its bill.

Run ``python tests/data/usage/fleet.py`` to write the export files beside this script (the tests
check the files on disk are what it writes). The tests import it for the fleet's records and the
differences planted in the exports (:func:`planted`).

The fleet: six hours (2026-03-01 00:00 to 06:00 UTC) of RunPod and Modal traffic, several
endpoints, workers, users and tenants, every request and worker edge on a whole second. Each
record carries the billing rules gpuledger froze for its worker (the *ledger's* rules). The
platform's bill is the same workers billed by the same engine under the *platform's* rules,
which differ from the ledger's in one planted way per endpoint (sd-turbo: two, its price and its
CPU reservation); the exports then add what gpuledger does not model (RunPod's platform fee and
disk), itemise Modal's CPU and memory (which the ledger's rules charge too, at the reservation
they were given), and bill workers the ledger never saw. :func:`planted` works out what each
planted difference must come to by hand arithmetic over the fleet's design (seconds x prices),
not through the engine.

Amounts are written to six decimals, as exports round them.
"""

from __future__ import annotations

import csv
import dataclasses
import decimal
import io
import json
import math
import sys
import uuid
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

from gpuledger import InvocationRecord
from gpuledger._pricing import edition_catalogue
from gpuledger.billing import Rules
from gpuledger.ledger import period_charges
from gpuledger.testing import RECORDS_START_NS, make_record

HERE = Path(__file__).resolve().parent
NS = 1_000_000_000
HOUR_S = 3600
HOURS = 6
START_NS = RECORDS_START_NS  # 2026-03-01T00:00:00Z
DATA_V2 = HERE / "runpod-v2-serverless.json"
DATA_V1 = HERE / "runpod-v1-endpoints-by-pod.json"
DATA_ITEMS = HERE / "modal-report-items.json"
END_NS = START_NS + HOURS * HOUR_S * NS
_IDS = uuid.UUID("5b8f7e52-3c1a-4c59-9a39-0d4c2b7f1e11")

# --- RunPod ----------------------------------------------------------------------------------
# The ledger's rules: RunPod's published per-second prices (docs.runpod.io endpoint
# configurations: A100 80 GB $0.00076/s, H100 PRO $0.00116/s), billed per whole second, with
# neither start-up nor idle time billed (RunPod's docs disagree on both: docs/research/runpod.md
# (b)), and RunPod's default 5 s idle timeout.
A100 = Fraction("0.00076")
H100_PRO = Fraction("0.00116")
H100_PRO_BILLED = Fraction("0.00125")  # planted: the account is billed another price
RUNPOD_LEDGER = Rules(
    per_gpu_second_usd=A100,
    increment_ns=NS,
    bills_startup=False,
    bills_idle=False,
    idle_window_ns=5 * NS,
)
CHAT, EMBED, IMAGE, STAGE = "chat7x2k9q", "embed4m1p8", "image9z3w5", "stage1q2w3e"
GHOST_POD, GHOST_HOUR, GHOST_S = "ghost5v8n2r", 3, 600
"""A worker of the image endpoint the ledger never saw: 600 s in hour 3."""
FEE_SHARE = Fraction(5, 100)
"""Planted platform fee: 5 % of the GPU amount (RunPod documents no formula for it)."""
DISK_GB = 20
DISK_PER_GB_5MIN = Fraction("0.000011574")  # RunPod's container disk rate (docs, until 2026-03)

# --- Modal -----------------------------------------------------------------------------------
# The ledger's rules: Modal's H100 price per second ($0.001097, 3P transcriptions of
# modal.com/pricing), start-up billed, idle not, a 60 s scale-down window (Modal's default); the
# worker's CPU and memory at Modal's prices and minimum reservation (the cpu and memory_gib
# settings unset): the published edition's rules, so as a recorder configured so freezes them.
MODAL_H100 = Fraction("0.001097")
SEED_H100 = Fraction("0.0005")  # the seed catalogue's Modal H100 price: the planted mismatch
CPU_CORE_S = Fraction("0.0000131")  # per physical core-second
MEMORY_GIB_S = Fraction("0.00000222")
CORES, GIB = Fraction(1, 8), Fraction(1, 8)  # Modal's minimum (and default) reservation
SD_CORES = Fraction(2)
"""Planted: sd-turbo's functions reserve 2 cores, which Modal bills; the ledger's rules have the
default (its workers ran without the cpu setting)."""
_PUBLISHED_H100 = edition_catalogue("published-2026-12").lookup("modal", "H100")
assert _PUBLISHED_H100 is not None
MODAL_LEDGER = dataclasses.replace(
    Rules.from_price(_PUBLISHED_H100),
    per_gpu_second_usd=MODAL_H100,
    increment_ns=NS,
    bills_startup=True,
    bills_idle=False,
    idle_window_ns=60 * NS,
)
assert MODAL_LEDGER.cpu_usd_per_second == CORES * CPU_CORE_S
assert MODAL_LEDGER.memory_usd_per_second == GIB * MEMORY_GIB_S
LLM_NAME, LLM_ID = "llm-serve", "ap-5fQ2mZ8kLr1XwT9cVb3HnA"
SD_NAME, SD_ID = "sd-turbo", "ap-Jx7pR2wQ9sLm4KdT6yUe1B"
BATCH_NAME, BATCH_ID = "batch-embed", "ap-Q3vN8cR1tY6uI0oP2aS4dF"
VOLUME_NAME, VOLUME_ID = "model-weights", "vo-K9mB2nV5cX8zL1aS3dF6gH"
TEAMS = {LLM_ID: "genai", SD_ID: "creative", BATCH_ID: "search"}
BATCH_GPU = {2: Fraction("0.551232"), 3: Fraction("0.187500")}
"""batch-embed's GPU cost per hour: an App the ledger has no rows for."""
VOLUME_HOURLY = Fraction("0.000104")

USERS = (("alice", "acme"), ("bob", "acme"), ("carol", "globex"), ("dave", None))
MODAL_USERS = (("erin", "initech"), ("frank", "umbrella"), ("grace", "initech"))


@dataclasses.dataclass(frozen=True)
class Worker:
    """One worker's life by design: started, ready after ``startup_s``, its requests back to
    back with the given gaps, stopped after the idle window."""

    platform: str
    endpoint: str  # what its records' ``endpoint`` says
    key: str  # its billing worker (RunPod pod id, Modal task id)
    start_s: int  # seconds after START_NS
    startup_s: int
    durations: tuple[int, ...]
    gaps: tuple[int, ...]  # before each request after the first
    users: tuple[tuple[str, str | None], ...]
    idle_window_s: int
    gpu_model: str

    def requests(self) -> list[tuple[int, int]]:
        spans, at = [], self.start_s + self.startup_s
        for index, duration in enumerate(self.durations):
            if index:
                at += self.gaps[(index - 1) % len(self.gaps)]
            spans.append((at, at + duration))
            at += duration
        return spans

    @property
    def stop_s(self) -> int:
        return self.requests()[-1][1] + self.idle_window_s


def _cycle(values: Iterable[int], count: int) -> tuple[int, ...]:
    values = tuple(values)
    return tuple(values[index % len(values)] for index in range(count))


def workers() -> list[Worker]:
    def runpod(
        endpoint: str,
        key: str,
        start_min: float,
        startup: int,
        count: int,
        gpu: str,
        *,
        durations: Iterable[int],
        gaps: Iterable[int],
    ) -> Worker:
        return Worker(
            "runpod",
            endpoint,
            key,
            round(start_min * 60),
            startup,
            _cycle(durations, count),
            tuple(gaps),
            USERS,
            5,
            gpu,
        )

    def modal(
        endpoint: str,
        key: str,
        start_min: float,
        startup: int,
        count: int,
        *,
        durations: Iterable[int],
        gaps: Iterable[int],
    ) -> Worker:
        return Worker(
            "modal",
            endpoint,
            key,
            round(start_min * 60),
            startup,
            _cycle(durations, count),
            tuple(gaps),
            MODAL_USERS,
            60,
            "H100",
        )

    chat_gaps, short = (2, 0, 3, 1, 4), (4, 7, 3, 9, 5)
    return [
        # chat: the platform bills idle time (between requests and the 5 s before the stop).
        runpod(CHAT, "chat1a7f3c", 2, 0, 30, "A100", durations=short, gaps=chat_gaps),
        runpod(CHAT, "chat2b8e4d", 58, 0, 70, "A100", durations=short, gaps=chat_gaps),
        runpod(CHAT, "chat3c9d5e", 125, 0, 40, "A100", durations=(6, 2, 8), gaps=(5, 1)),
        runpod(CHAT, "chat4d0c6f", 250, 0, 25, "A100", durations=short, gaps=(3,)),
        # embed: the platform bills the workers' start-up (model load before ready).
        runpod(EMBED, "embd1e2a3b", 10, 25, 50, "A100", durations=(1, 2), gaps=(0, 1)),
        runpod(EMBED, "embd2f3b4c", 90, 31, 60, "A100", durations=(2, 1, 1), gaps=(1,)),
        runpod(EMBED, "embd3a4c5d", 195, 28, 45, "A100", durations=(1,), gaps=(2, 0)),
        runpod(EMBED, "embd4b5d6e", 340, 22, 30, "A100", durations=(2,), gaps=(1,)),
        # image: billed at another price per second.
        runpod(IMAGE, "imag1c6e7f", 20, 0, 20, "H100 PRO", durations=(12, 15, 9), gaps=(0,)),
        runpod(IMAGE, "imag2d7f8a", 70, 0, 25, "H100 PRO", durations=(10, 14), gaps=(1,)),
        runpod(IMAGE, "imag3e8a9b", 160, 0, 18, "H100 PRO", durations=(16,), gaps=(0, 2)),
        runpod(IMAGE, "imag4f9b0c", 245, 0, 22, "H100 PRO", durations=(11, 13), gaps=(0,)),
        # stage: recorded, on an account whose bill this is not.
        runpod(STAGE, "stge1a2b3c", 130, 0, 10, "A100", durations=(3,), gaps=(2,)),
        # llm-serve (records name the App): Modal bills the 60 s scale-down window and gaps.
        modal(LLM_NAME, "ta-01LLM1", 5, 8, 30, durations=(3, 7, 12, 5), gaps=(20, 45, 10)),
        modal(LLM_NAME, "ta-01LLM2", 75, 9, 40, durations=(6, 4, 9), gaps=(30, 5, 50)),
        modal(LLM_NAME, "ta-01LLM3", 190, 7, 25, durations=(8, 11), gaps=(15, 40)),
        modal(LLM_NAME, "ta-01LLM4", 310, 8, 20, durations=(5, 9, 4), gaps=(25,)),
        # sd-turbo (records name the App by id): billed at Modal's price, not the seed's, and
        # for 2 cores, not the default 0.125.
        modal(SD_ID, "ta-02SD1", 65, 12, 30, durations=(4, 6), gaps=(10, 30)),
        modal(SD_ID, "ta-02SD2", 150, 11, 35, durations=(5, 3, 7), gaps=(20,)),
        modal(SD_ID, "ta-02SD3", 255, 13, 28, durations=(6,), gaps=(15, 35)),
    ]


def _rules(worker: Worker) -> Rules:
    if worker.platform == "modal":
        rate = SEED_H100 if worker.endpoint == SD_ID else MODAL_H100
        return dataclasses.replace(MODAL_LEDGER, per_gpu_second_usd=rate)
    rate = H100_PRO if worker.endpoint == IMAGE else A100
    return dataclasses.replace(RUNPOD_LEDGER, per_gpu_second_usd=rate)


def platform_rules(record: InvocationRecord) -> tuple[Rules | None, str | None]:
    """How the platform really bills the worker of ``record``: the ledger's rules with the
    endpoint's planted difference."""
    rules = Rules.from_json(record.billing_rules or {})
    if record.endpoint == CHAT:
        rules = dataclasses.replace(rules, bills_idle=True)
    elif record.endpoint == EMBED:
        rules = dataclasses.replace(rules, bills_startup=True)
    elif record.endpoint == IMAGE:
        rules = dataclasses.replace(rules, per_gpu_second_usd=H100_PRO_BILLED)
    elif record.endpoint == LLM_NAME:
        rules = dataclasses.replace(rules, bills_idle=True)
    elif record.endpoint == SD_ID:
        rules = dataclasses.replace(
            rules,
            per_gpu_second_usd=MODAL_H100,
            cpu_usd_per_second=SD_CORES * CPU_CORE_S,
        )
    return rules, "platform"


def records() -> list[InvocationRecord]:
    """The fleet's ledger records (deterministic ids)."""
    out = []
    for worker in workers():
        rules = _rules(worker).to_json()
        start_ns = START_NS + worker.start_s * NS
        ready_ns = start_ns + worker.startup_s * NS
        previous_end = None
        for index, (begin, end) in enumerate(worker.requests()):
            user, tenant = worker.users[index % len(worker.users)]
            name = f"{worker.key}-{index:03d}"
            out.append(
                make_record(
                    begin,
                    end - begin,
                    record_id=uuid.uuid5(_IDS, name).hex,
                    invocation_id=name,
                    platform=worker.platform,
                    pricing_platform=worker.platform,
                    endpoint=worker.endpoint,
                    service_name=worker.endpoint,
                    worker_id=f"{worker.key}:1",
                    billing_worker=worker.key,
                    worker_start_ns=start_ns,
                    worker_start_source="container",
                    worker_ready_ns=ready_ns,
                    billing_rules=rules,
                    pricing_version="fleet",
                    gpu_model=worker.gpu_model,
                    cold=index == 0 and worker.startup_s > 0,
                    init_duration_s=float(worker.startup_s) if index == 0 else None,
                    idle_gap_s=0.0 if previous_end is None else float(begin - previous_end),
                    user_id=user,
                    tenant=tenant,
                )
            )
            previous_end = end
    return out


# --- hand arithmetic: what each planted difference comes to -----------------------------------


def _overlap(start: int, end: int, hour: int) -> int:
    """Seconds of ``[start, end)`` (seconds after START_NS) inside hour ``hour``."""
    return max(0, min(end, (hour + 1) * HOUR_S) - max(start, hour * HOUR_S))


def _per_hour(spans: Iterable[tuple[int, int]]) -> dict[int, int]:
    seconds: dict[int, int] = {}
    for start, end in spans:
        for hour in range(HOURS):
            if inside := _overlap(start, end, hour):
                seconds[hour] = seconds.get(hour, 0) + inside
    return seconds


def busy(worker: Worker) -> dict[int, int]:
    return _per_hour(worker.requests())


def idle(worker: Worker) -> dict[int, int]:
    """Seconds between ready and the stop with no request running, per hour."""
    spans, at = [], worker.start_s + worker.startup_s
    for begin, end in worker.requests():
        spans.append((at, begin))
        at = end
    spans.append((at, worker.stop_s))
    return _per_hour(spans)


def startup(worker: Worker) -> dict[int, int]:
    return _per_hour([(worker.start_s, worker.start_s + worker.startup_s)])


def _of(endpoint: str) -> list[Worker]:
    return [worker for worker in workers() if worker.endpoint == endpoint]


def _sum(parts: Iterable[dict[int, int]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for part in parts:
        for hour, seconds in part.items():
            total[hour] = total.get(hour, 0) + seconds
    return total


def planted() -> dict[tuple[str, int, str], Fraction]:
    """(invoice endpoint id, hour, cause kind) -> the amount the cause must come to, by hand:
    seconds of the fleet's design x prices. GPU amounts are exact here (the files round them to
    six decimals); the fee and disk are as written to the files."""
    out: dict[tuple[str, int, str], Fraction] = {}
    for hour, seconds in _sum(idle(w) for w in _of(CHAT)).items():
        out[(CHAT, hour, "idle")] = seconds * A100
    for hour, seconds in _sum(startup(w) for w in _of(EMBED)).items():
        out[(EMBED, hour, "startup")] = seconds * A100
    for hour, seconds in _sum(busy(w) for w in _of(IMAGE)).items():
        out[(IMAGE, hour, "price")] = seconds * (H100_PRO_BILLED - H100_PRO)
    out[(IMAGE, GHOST_HOUR, "no_ledger_rows")] = GHOST_S * H100_PRO_BILLED
    for hour, seconds in _sum(busy(w) for w in _of(STAGE)).items():
        out[(STAGE, hour, "not_invoiced")] = -seconds * A100
    for hour, seconds in _sum(idle(w) for w in _of(LLM_NAME)).items():
        out[(LLM_ID, hour, "idle")] = seconds * MODAL_H100
        # The CPU and memory of the idle time Modal billed: the ledger's reservation, its time.
        out[(LLM_ID, hour, "cpu")] = seconds * CORES * CPU_CORE_S
        out[(LLM_ID, hour, "memory")] = seconds * GIB * MEMORY_GIB_S
    sd = _sum([*(busy(w) for w in _of(SD_ID)), *(startup(w) for w in _of(SD_ID))])
    for hour, seconds in sd.items():
        out[(SD_ID, hour, "price")] = seconds * (MODAL_H100 - SEED_H100)
        # The same time, the CPU reservation Modal billed (2 cores) less the ledger's (0.125).
        out[(SD_ID, hour, "cpu")] = seconds * (SD_CORES - CORES) * CPU_CORE_S
    for hour, amount in BATCH_GPU.items():
        out[(BATCH_ID, hour, "no_ledger_rows")] = amount
    for hour in range(HOURS):
        out[(VOLUME_ID, hour, "not_metered")] = VOLUME_HOURLY
    return out


# --- the platform's bill, and its exports --------------------------------------------------


def _six(amount: Fraction) -> decimal.Decimal:
    with decimal.localcontext() as context:
        context.prec = 40
        exact = decimal.Decimal(amount.numerator) / decimal.Decimal(amount.denominator)
        return exact.quantize(decimal.Decimal("0.000001"), rounding=decimal.ROUND_HALF_EVEN)


def _number(amount: Fraction) -> float:
    """An amount as a JSON number of six decimals (RunPod's amounts are JSON numbers)."""
    return float(_six(amount))


def _iso(second: int, *, zulu: bool) -> str:
    import datetime as dt

    instant = dt.datetime.fromtimestamp(START_NS // NS + second, dt.UTC).replace(tzinfo=None)
    return instant.isoformat() + ("Z" if zulu else "")


@dataclasses.dataclass
class Billed:
    """The platform's bill of one worker in one hour."""

    gpu_usd: Fraction = Fraction(0)
    gpu_ns: Fraction = Fraction(0)
    cpu_usd: Fraction = Fraction(0)
    memory_usd: Fraction = Fraction(0)


def truth() -> dict[str, dict[tuple[str, int], Billed]]:
    """Per platform, per (billing worker, hour): what the platform billed for GPU time, and for
    the workers' CPU and memory over it (the fleet billed by the engine under the platform's
    rules)."""
    fleet = records()
    endpoint_of = {record.billing_worker: record.endpoint for record in fleet}
    out: dict[str, dict[tuple[str, int], Billed]] = {"runpod": {}, "modal": {}}
    for charge in period_charges(fleet, rules_for=platform_rules):
        if endpoint_of[charge.worker] == STAGE:
            continue  # another account's bill
        hour = (charge.period_start_ns - START_NS) // (HOUR_S * NS)
        billed = out[charge.platform].setdefault((charge.worker, hour), Billed())
        by_resource = charge.charges.usd_by_resource
        billed.gpu_usd += by_resource["gpu"]
        billed.cpu_usd += by_resource["cpu"]
        billed.memory_usd += by_resource["memory"]
        billed.gpu_ns += charge.charges.billed_gpu_ns
    return out


def _runpod_v2(billed: dict[tuple[str, int], Billed]) -> dict[str, Any]:
    fleet = {worker.key: worker for worker in workers()}
    cells: dict[tuple[str, int], dict[str, Fraction]] = {}
    for (key, hour), bill in billed.items():
        cell = cells.setdefault(
            (fleet[key].endpoint, hour), {"gpu": Fraction(0), "disk": Fraction(0)}
        )
        cell["gpu"] += bill.gpu_usd
        # Container disk, billed per started 5-minute interval of the worker's billed time.
        intervals = math.ceil(bill.gpu_ns / NS / 300)
        cell["disk"] += DISK_GB * DISK_PER_GB_5MIN * intervals
    cells[(IMAGE, GHOST_HOUR)] = {
        "gpu": GHOST_S * H100_PRO_BILLED,
        "disk": DISK_GB * DISK_PER_GB_5MIN * 2,
    }
    records_out = []
    totals = dict.fromkeys(
        ("totalAmount", "gpuAmount", "cpuAmount", "diskAmount", "feeAmount"), decimal.Decimal(0)
    )
    for (endpoint, hour), cell in sorted(cells.items(), key=lambda item: (item[0][1], item[0][0])):
        gpu = _six(cell["gpu"])
        disk = _six(cell["disk"])
        fee = _six(Fraction(gpu) * FEE_SHARE)
        amounts = {
            "totalAmount": gpu + disk + fee,
            "gpuAmount": gpu,
            "cpuAmount": decimal.Decimal(0),
            "diskAmount": disk,
            "feeAmount": fee,
        }
        for name, value in amounts.items():
            totals[name] += value
        records_out.append(
            {
                "startTime": _iso(hour * HOUR_S, zulu=True),
                "endTime": _iso((hour + 1) * HOUR_S, zulu=True),
                "serverlessId": endpoint,
                **{name: float(value) for name, value in amounts.items()},
            }
        )
    return {
        "records": records_out,
        "metadata": {
            "query": {
                "startTime": _iso(0, zulu=True),
                "endTime": _iso(HOURS * HOUR_S, zulu=True),
                "bucketSize": "hour",
                "serverlessId": None,
            },
            "recordCount": len(records_out),
            "totals": {name: float(value) for name, value in totals.items()},
            "uniqueServerlessCount": len({record["serverlessId"] for record in records_out}),
        },
    }


def _runpod_v1(billed: dict[tuple[str, int], Billed]) -> list[dict[str, Any]]:
    """``GET /v1/billing/endpoints?bucketSize=hour&grouping=podId``: one record per pod and hour,
    its compute amount and billed time."""
    rows = [
        {
            "amount": _number(bill.gpu_usd),
            "diskSpaceBilledGb": DISK_GB,
            "podId": key,
            "time": _iso(hour * HOUR_S, zulu=True),
            "timeBilledMs": round(bill.gpu_ns / 1_000_000),
        }
        for (key, hour), bill in billed.items()
    ]
    rows.append(
        {
            "amount": _number(GHOST_S * H100_PRO_BILLED),
            "diskSpaceBilledGb": DISK_GB,
            "podId": GHOST_POD,
            "time": _iso(GHOST_HOUR * HOUR_S, zulu=True),
            "timeBilledMs": GHOST_S * 1000,
        }
    )
    return sorted(rows, key=lambda row: (row["time"], row["podId"]))


@dataclasses.dataclass
class ModalItem:
    object_id: str
    description: str
    hour: int
    resources: dict[str, Fraction]

    @property
    def cost(self) -> Fraction:
        return sum(self.resources.values(), Fraction(0))


def modal_items(billed: dict[tuple[str, int], Billed]) -> list[ModalItem]:
    """The Modal report's items: per App and hour, cost by resource."""
    fleet = {worker.key: worker for worker in workers()}
    names = {LLM_NAME: (LLM_ID, LLM_NAME), SD_ID: (SD_ID, SD_NAME)}
    items: dict[tuple[str, int], ModalItem] = {}
    for (key, hour), bill in sorted(billed.items()):
        object_id, name = names[fleet[key].endpoint]
        item = items.setdefault((object_id, hour), ModalItem(object_id, name, hour, {}))
        for resource, amount in (
            ("H100", bill.gpu_usd),
            ("CPU", bill.cpu_usd),
            ("Memory", bill.memory_usd),
        ):
            item.resources[resource] = item.resources.get(resource, Fraction(0)) + amount
    for hour, amount in BATCH_GPU.items():
        items[(BATCH_ID, hour)] = ModalItem(
            BATCH_ID, BATCH_NAME, hour, {"A10G": amount, "CPU": Fraction("0.001179")}
        )
    for hour in range(HOURS):
        items[(VOLUME_ID, hour)] = ModalItem(
            VOLUME_ID, VOLUME_NAME, hour, {"Storage": VOLUME_HOURLY}
        )
    for item in items.values():  # as the report writes them: six decimals
        item.resources = {name: Fraction(_six(amount)) for name, amount in item.resources.items()}
    return sorted(items.values(), key=lambda item: (item.hour, item.object_id))


def _tags(item: ModalItem) -> dict[str, str]:
    team = TEAMS.get(item.object_id)
    return {"team": team} if team else {}


def _modal_csv(items: list[ModalItem]) -> str:
    """``modal billing report --for today -r h --show-resources --tag-names team --csv``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # the CLI's csv.writer: \r\n line ends
    writer.writerow(
        ["Object ID", "Description", "Environment", "Interval Start", "Resource", "Cost", "Tags"]
    )
    for item in items:
        for resource, amount in item.resources.items():
            writer.writerow(
                [
                    item.object_id,
                    item.description,
                    "main",
                    _iso(item.hour * HOUR_S, zulu=False),
                    resource,
                    str(_six(amount)),
                    json.dumps(_tags(item)),
                ]
            )
    return buffer.getvalue()


def _modal_json(items: list[ModalItem]) -> list[dict[str, Any]]:
    """``modal billing report --for today -r h --tag-names team --json``: no resources."""
    return [
        {
            "object_id": item.object_id,
            "description": item.description,
            "environment": "main",
            "interval_start": _iso(item.hour * HOUR_S, zulu=False),
            "cost": str(_six(item.cost)),
            "tags": json.dumps(_tags(item)),
        }
        for item in items
    ]


def _modal_items(items: list[ModalItem]) -> list[dict[str, Any]]:
    """``Workspace.billing.report(start=..., resolution="h", tag_names=["*"])`` written as JSON:
    each ``BillingReportItem``'s fields, Decimals as strings, the interval in ISO with its UTC
    offset."""
    return [
        {
            "object_id": item.object_id,
            "description": item.description,
            "environment_name": "main",
            "interval_start": _iso(item.hour * HOUR_S, zulu=False) + "+00:00",
            "cost": str(_six(item.cost)),
            "cost_by_resource": {
                name: str(_six(amount)) for name, amount in item.resources.items()
            },
            "tags": _tags(item),
        }
        for item in items
    ]


FILES: dict[str, Callable[[dict[str, dict[tuple[str, int], Billed]]], str]] = {
    "runpod-v2-serverless.json": lambda t: json.dumps(_runpod_v2(t["runpod"]), indent=2) + "\n",
    "runpod-v1-endpoints-by-pod.json": lambda t: (
        json.dumps(_runpod_v1(t["runpod"]), indent=2) + "\n"
    ),
    "modal-report-resources.csv": lambda t: _modal_csv(modal_items(t["modal"])),
    "modal-report.json": lambda t: (
        json.dumps(_modal_json(modal_items(t["modal"])), indent=2) + "\n"
    ),
    "modal-report-items.json": lambda t: (
        json.dumps(_modal_items(modal_items(t["modal"])), indent=2) + "\n"
    ),
}
"""File name -> its content from the truth."""


def contents() -> dict[str, str]:
    billed = truth()
    return {name: make(billed) for name, make in FILES.items()}


def main() -> int:
    for name, text in contents().items():
        (HERE / name).write_text(text, encoding="utf-8", newline="")
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
