"""Validation at the door (``sidecar._validation``): nothing that cannot be exported or billed
is acknowledged, against the real receiver; the watcher outlives a bad notice an older sidecar
spooled; a newer worker's records are kept by this sidecar (the record format's version)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from gpuledger._record import (
    MAX_COST_USD,
    MAX_DURATION_S,
    MAX_ENERGY_J,
    MAX_FUTURE_NS,
    MAX_GPU_COUNT,
    MAX_GPU_SECONDS,
    MAX_IDLE_GAP_S,
    MAX_MEMORY_BYTES,
    MAX_TIMEOUT_S,
    MAX_TOKENS,
    MIN_TIME_NS,
    RECORD_FORMAT,
    InvocationRecord,
)
from gpuledger.cli._main import main
from gpuledger.exporters._records import record_resource, record_to_span
from gpuledger.ledger import aggregate, totals
from gpuledger.sidecar import SidecarClient
from gpuledger.sidecar._server import Sidecar
from gpuledger.sidecar._validation import (
    MAX_ID_CHARS,
    MAX_MAP_ENTRIES,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    UNKNOWN_OUTCOME_TAG,
    parse_records,
)

from .conftest import FakeClock
from .support.sidecars import in_process_sidecars
from .test_sidecar import FakeOtlp, _start, make_record, post, wait_for, wait_for_rows

SECOND_NS = 1_000_000_000
DAY_NS = 86_400 * SECOND_NS


@pytest.fixture
def sidecar_at(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """Start in-process sidecars (no watcher thread) whose clock is a FakeClock at today."""
    with in_process_sidecars(tmp_path, clock=FakeClock(start_ns=NOW_NS)) as make:
        yield make


def _timed(start_ns: int, duration_s: float, **overrides: Any) -> dict[str, Any]:
    """A record starting at ``start_ns`` that lasted ``duration_s`` (end and duration agree)."""
    return make_record(
        start_ns=start_ns,
        end_ns=start_ns + round(duration_s * 1e9),
        duration_s=duration_s,
        **overrides,
    )


# --- the cases measured when issue 15 was filed ----------------------------------------------


def test_negative_timestamps_are_refused_and_export_goes_on(
    sidecar_at: Callable[..., Sidecar],
) -> None:
    """Measured: ``start_ns=-5, end_ns=-1`` got 200 and the OTLP exporter retried the batch for
    ever (0 spans exported after it). Now a 400 naming the field, and the next record exports."""
    otlp = FakeOtlp()
    try:
        sidecar = sidecar_at(otlp_endpoint=otlp.endpoint, otlp_protocol="http/protobuf")
        bad = make_record(0, start_ns=-5, end_ns=-1, duration_s=4e-9)
        assert post(sidecar.url, "/v1/records", {"records": [bad]}) == (
            400,
            {"error": "records[0].start_ns: must be a Unix time in ns after 2000-01-01, got -5"},
        )
        assert post(sidecar.url, "/v1/records", {"records": [make_record(1)]})[0] == 200
        wait_for("the good record's span", lambda: otlp.span_count() == 1)
        assert sidecar.health()[1]["spooled"] <= 1
    finally:
        otlp.close()


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("duration_s", -3.0, "records[0].duration_s: must be 0 to 604,800 seconds, got -3.0"),
        ("cost_usd", -1.0, "records[0].cost_usd: must be 0 to 1,000,000 US dollars, got -1.0"),
        (
            "cost_usd",
            1e308,
            "records[0].cost_usd: must be 0 to 1,000,000 US dollars, got 1e+308",
        ),
        (
            "input_tokens",
            -5,
            "records[0].input_tokens: must be 0 to 1,000,000,000,000 tokens, got -5",
        ),
        (
            "energy_j",
            1e308,
            f"records[0].energy_j: must be 0 to {MAX_ENERGY_J:,.0f} joules, got 1e+308",
        ),
        (
            "billed_gpu_seconds",
            -0.5,
            f"records[0].billed_gpu_seconds: must be 0 to {MAX_GPU_SECONDS:,.0f} GPU seconds, "
            "got -0.5",
        ),
    ],
)
def test_negative_and_absurd_amounts_are_refused(
    sidecar_at: Callable[..., Sidecar], field: str, value: Any, reason: str
) -> None:
    """Measured: negative durations, costs and tokens and ``1e308`` got 200 (and ``gpuledger
    report`` printed a 300-digit cost). Now a 400 naming the field and the rule."""
    sidecar = sidecar_at()
    assert post(sidecar.url, "/v1/records", {"records": [make_record(0, **{field: value})]}) == (
        400,
        {"error": reason},
    )
    assert sidecar.health()[1]["spooled"] == 0


def test_a_timeout_of_1e300_is_refused(sidecar_at: Callable[..., Sidecar]) -> None:
    """Measured: ``timeout_s: 1e300`` got 200 and raised OverflowError on every watcher pass."""
    sidecar = sidecar_at()
    start = _start(os.getpid(), start_ns=time.time_ns(), timeout_s=1e300)
    assert post(sidecar.url, "/v1/starts", {"starts": [start]}) == (
        400,
        {"error": "starts[0].timeout_s: must be at most 604,800 seconds, got 1e+300"},
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            json.dumps({"records": [make_record(0)]}).replace('"alice"', '"\\udcff"').encode(),
            "records[0].user_id: not valid Unicode (a lone surrogate escape)",
        ),
        (
            json.dumps({"records": [make_record(0, tags={"k": "v"})]})
            .replace('"k"', '"\\ud800"')
            .encode(),
            "records[0].tags (a key): not valid Unicode (a lone surrogate escape)",
        ),
        (
            json.dumps({"records": [make_record(0)]}).replace('"alice"', '"\\ud800x"').encode(),
            "records[0].user_id: not valid Unicode (a lone surrogate escape)",
        ),
        (
            # A surrogate encoded in UTF-8 bytes (CESU-8): not UTF-8.
            json.dumps({"records": [make_record(0)]}).encode().replace(b"alice", b"\xed\xa0\x80"),
            "body is not valid UTF-8 (byte ",
        ),
        (
            json.dumps({"records": [make_record(0)]}).encode().replace(b"alice", b"\xc0\xaf"),
            "body is not valid UTF-8 (byte ",
        ),
    ],
)
def test_bad_encodings_are_refused(
    sidecar_at: Callable[..., Sidecar], body: bytes, reason: str
) -> None:
    """Lone surrogates (escaped) and invalid UTF-8 (raw) are a 400, never stored."""
    sidecar = sidecar_at()
    status, answer = post(sidecar.url, "/v1/records", body)
    assert status == 400
    assert answer["error"].startswith(reason)


def test_a_surrogate_pair_is_a_character(sidecar_at: Callable[..., Sidecar]) -> None:
    """An escaped surrogate pair is one valid character (an emoji), accepted."""
    sidecar = sidecar_at()
    body = json.dumps({"records": [make_record(0)]}).replace('"alice"', '"\\ud83d\\ude00"')
    assert post(sidecar.url, "/v1/records", body.encode())[0] == 200


# --- boundaries: just inside is accepted, just outside refused ---------------------------------

NOW_NS = time.time_ns()
"""The sidecars' clocks start here, however long after collection a test runs."""


def _rules(**overrides: Any) -> dict[str, Any]:
    return {"per_gpu_second_usd": "1/3600", "increment_ns": 1_000_000_000, **overrides}


_BOUNDARIES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    # (case, fields just inside, fields just outside, the refusal)
    (
        "start after 2000",
        {"start_ns": MIN_TIME_NS, "end_ns": MIN_TIME_NS + SECOND_NS // 2},
        {"start_ns": MIN_TIME_NS - 1, "end_ns": MIN_TIME_NS + SECOND_NS // 2 - 1},
        f"records[0].start_ns: must be a Unix time in ns after 2000-01-01, got {MIN_TIME_NS - 1}",
    ),
    (
        "end not before start",
        {"start_ns": NOW_NS, "end_ns": NOW_NS, "duration_s": 0.0},
        {"start_ns": NOW_NS, "end_ns": NOW_NS - 1, "duration_s": 0.0},
        "records[0].end_ns: before start_ns",
    ),
    (
        "a day ahead at most",
        {"start_ns": NOW_NS + MAX_FUTURE_NS - 2 * SECOND_NS, "end_ns": NOW_NS + MAX_FUTURE_NS},
        {"start_ns": NOW_NS + MAX_FUTURE_NS + 60 * SECOND_NS},
        "records[0].start_ns: must not be more than a day ahead of the sidecar's clock",
    ),
    (
        "duration 7 days",
        {"duration_s": MAX_DURATION_S, "end_ns": NOW_NS, "start_ns": NOW_NS - 7 * DAY_NS},
        {
            "duration_s": MAX_DURATION_S + 0.001,
            "end_ns": NOW_NS,
            "start_ns": NOW_NS - 7 * DAY_NS - 1_000_000,
        },
        "records[0].duration_s: must be 0 to 604,800 seconds, got 604800.001",
    ),
    (
        "duration agrees with the times",
        {"duration_s": 0.5009},
        {"duration_s": 0.5011},
        "records[0].duration_s: must be end_ns - start_ns in seconds (0.5), got 0.5011",
    ),
    (
        "cost",
        {"cost_usd": MAX_COST_USD, "cost_gpu_usd": 0.0},
        {"cost_usd": 1_000_000.01},
        "records[0].cost_usd: must be 0 to 1,000,000 US dollars, got 1000000.01",
    ),
    (
        "cost not negative",
        {"cost_execution_usd": 0.0},
        {"cost_execution_usd": -1e-12},
        "records[0].cost_execution_usd: must be 0 to 1,000,000 US dollars, got -1e-12",
    ),
    (
        "tokens",
        {"output_tokens": MAX_TOKENS},
        {"output_tokens": MAX_TOKENS + 1},
        "records[0].output_tokens: must be 0 to 1,000,000,000,000 tokens, got 1000000000001",
    ),
    (
        "tokens are integers",
        {"input_tokens": 0},
        {"input_tokens": 1.0},
        "records[0].input_tokens: expected an integer, got a number",
    ),
    (
        "energy",
        {"energy_j": MAX_ENERGY_J},
        {"energy_j": MAX_ENERGY_J * 1.001},
        "records[0].energy_j: must be 0 to",
    ),
    (
        "busy GPU seconds",
        {"busy_gpu_seconds": MAX_GPU_SECONDS},
        {"busy_gpu_seconds": -1e-9},
        "records[0].busy_gpu_seconds: must be 0 to",
    ),
    (
        "GPU count",
        {"gpu_count": MAX_GPU_COUNT},
        {"gpu_count": MAX_GPU_COUNT + 1},
        "records[0].gpu_count: must be at most 1,024 GPUs, got 1,025",
    ),
    (
        "GPU memory",
        {"peak_gpu_memory_bytes": MAX_MEMORY_BYTES},
        {"peak_gpu_memory_bytes": MAX_MEMORY_BYTES + 1},
        "records[0].peak_gpu_memory_bytes: must be 0 to",
    ),
    (
        "idle gap",
        {"idle_gap_s": MAX_IDLE_GAP_S},
        {"idle_gap_s": MAX_IDLE_GAP_S + 1},
        "records[0].idle_gap_s: must be 0 to 31,622,400 seconds, got 31622401.0",
    ),
    (
        "an init phase",
        {"init_phases": {"load": 0.0}},
        {"init_phases": {"load": -0.1}},
        "records[0].init_phases.load: must be 0 to 604,800 seconds, got -0.1",
    ),
    (
        "a target's wait cost",
        {"external_targets": {"h:1": {"calls": 1, "wait_usd": MAX_COST_USD}}},
        {"external_targets": {"h:1": {"calls": 1, "wait_usd": -1}}},
        "records[0].external_targets.h:1.wait_usd: must be 0 to 1,000,000 US dollars, got -1",
    ),
    (
        "a target's count",
        {"external_targets": {"h:1": {"bytes": 10**15}}},
        {"external_targets": {"h:1": {"bytes": 10**15 + 1}}},
        "records[0].external_targets.h:1.bytes: must be 0 to 1e+15, got 1000000000000001",
    ),
    (
        "an id",
        {"invocation_id": "j" * MAX_ID_CHARS},
        {"invocation_id": "j" * (MAX_ID_CHARS + 1)},
        "records[0].invocation_id: must be at most 256 characters, got 257",
    ),
    (
        "a name",
        {"handler": "h" * MAX_NAME_CHARS},
        {"handler": "h" * (MAX_NAME_CHARS + 1)},
        "records[0].handler: must be at most 2,048 characters, got 2,049",
    ),
    (
        "a text",
        {"cost_source": "c" * MAX_TEXT_CHARS},
        {"cost_source": "c" * (MAX_TEXT_CHARS + 1)},
        "records[0].cost_source: must be at most 8,192 characters, got 8,193",
    ),
    (
        "a tag's value",
        {"tags": {"t": "v" * MAX_TEXT_CHARS}},
        {"tags": {"t": "v" * (MAX_TEXT_CHARS + 1)}},
        "records[0].tags.t: must be at most 8,192 characters, got 8,193",
    ),
    (
        "a tag's name",
        {"tags": {"k" * MAX_NAME_CHARS: "v"}},
        {"tags": {"k" * (MAX_NAME_CHARS + 1): "v"}},
        "records[0].tags (a key): must be at most 2,048 characters, got 2,049",
    ),
    (
        "tags",
        {"tags": {f"t{i}": "v" for i in range(MAX_MAP_ENTRIES)}},
        {"tags": {f"t{i}": "v" for i in range(MAX_MAP_ENTRIES + 1)}},
        "records[0].tags: must have at most 256 entries, got 257",
    ),
    (
        "billing rules",
        {"billing_rules": _rules(execution_fee_usd="1000000")},
        {"billing_rules": _rules(per_gpu_second_usd="-1/3600")},
        "records[0].billing_rules.per_gpu_second_usd: must be 0 to 1,000,000 US dollars",
    ),
    (
        "billing rules' spans",
        {"billing_rules": _rules(minimum_ns=7 * DAY_NS)},
        {"billing_rules": _rules(increment_ns=-1)},
        "records[0].billing_rules.increment_ns: must be 0 to 604,800,000,000,000 ns, got -1",
    ),
    (
        "billing rules' amounts are short",
        {"billing_rules": _rules(per_gpu_second_usd="0.000763888888888888888")},
        {"billing_rules": _rules(per_gpu_second_usd="1e999999999")},
        "records[0].billing_rules.per_gpu_second_usd: expected a decimal or a fraction",
    ),
]


def _consistent(record: dict[str, Any], changed: dict[str, Any]) -> dict[str, Any]:
    """``record`` with ``duration_s`` set from its times, unless the case sets it."""
    if "duration_s" not in changed:
        record["duration_s"] = (record["end_ns"] - record["start_ns"]) / 1e9
    return record


@pytest.mark.parametrize(
    ("inside", "outside", "reason"),
    [
        pytest.param(inside, outside, reason, id=case)
        for case, inside, outside, reason in _BOUNDARIES
    ],
)
def test_boundaries(
    sidecar_at: Callable[..., Sidecar],
    inside: dict[str, Any],
    outside: dict[str, Any],
    reason: str,
) -> None:
    """Just inside a range is acknowledged; just outside is a 400 naming the field and rule."""
    sidecar = sidecar_at()
    base = make_record(0, start_ns=NOW_NS - SECOND_NS, end_ns=NOW_NS - SECOND_NS // 2)
    good = _consistent({**base, **inside}, inside)
    status, answer = post(sidecar.url, "/v1/records", {"records": [good]})
    assert (status, answer) == (200, {"accepted": 1, "duplicates": 0})
    bad = {**make_record(1, start_ns=NOW_NS - SECOND_NS, end_ns=NOW_NS - SECOND_NS // 2)}
    bad.update(outside)
    if "start_ns" in outside and "end_ns" not in outside:
        bad["end_ns"] = bad["start_ns"] + SECOND_NS // 2
    bad = _consistent(bad, outside)
    started = time.perf_counter()
    status, answer = post(sidecar.url, "/v1/records", {"records": [good | {"record_id": "x"}, bad]})
    assert time.perf_counter() - started < 2.0  # no huge number is ever computed
    assert status == 400
    assert answer["error"].startswith(reason.replace("records[0]", "records[1]"))


@pytest.mark.parametrize(
    ("inside", "outside", "reason"),
    [
        ({"timeout_s": MAX_TIMEOUT_S}, {"timeout_s": MAX_TIMEOUT_S + 0.5}, "must be at most"),
        ({"timeout_s": 1e-9}, {"timeout_s": 0}, "must be more than 0 seconds"),
        ({"start_ns": MIN_TIME_NS}, {"start_ns": MIN_TIME_NS - 1}, "must be a Unix time in ns"),
        ({"gpu_count": 0}, {"gpu_count": MAX_GPU_COUNT + 1}, "must be at most 1,024 GPUs"),
        ({"worker_start_ns": None}, {"worker_start_ns": 0}, "must be a Unix time in ns"),
        ({"tenant": "t" * MAX_ID_CHARS}, {"tenant": "t" * 257}, "must be at most 256 characters"),
    ],
)
def test_start_notice_boundaries(
    sidecar_at: Callable[..., Sidecar],
    inside: dict[str, Any],
    outside: dict[str, Any],
    reason: str,
) -> None:
    """A start notice's ranges, the same as the record's: inside 200, outside 400."""
    sidecar = sidecar_at()
    assert post(sidecar.url, "/v1/starts", {"starts": [_start(os.getpid(), **inside)]})[0] == 200
    status, answer = post(sidecar.url, "/v1/starts", {"starts": [_start(os.getpid(), **outside)]})
    field = next(iter(outside))
    assert status == 400
    assert answer["error"].startswith(f"starts[0].{field}: {reason}")


def test_every_record_field_has_a_range() -> None:
    """A field added to the record gets a check with a range before workers may send it."""
    from gpuledger.sidecar import _validation

    typed_only = {"outcome", "cold", "user_id_pseudonymised", "billing_rules"}
    names = {field.name for field in dataclasses.fields(InvocationRecord)}
    assert names - typed_only == set(_validation._RANGES)


# --- the watcher and an older sidecar's spool ------------------------------------------------


def test_the_watcher_outlives_notices_an_older_sidecar_spooled(
    sidecar_at: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """Notices written straight into the spool (as a sidecar before these checks would have):
    a 1e300 timeout is ignored (the pid is still watched), an unreadable notice is skipped;
    each is counted once, and the watcher records every other dead worker as killed."""
    gone = {4242, 4243, 4244}
    clock = FakeClock(start_ns=time.time_ns())
    sidecar = sidecar_at(clock=clock, pid_alive=lambda pid, started: pid not in gone)
    spool = sidecar._spool
    assert spool is not None
    huge = _start(4242, start_ns=clock.time_ns(), timeout_s=1e300)
    unreadable = _start(4243, start_ns="yesterday")
    fine = _start(4244, start_ns=clock.time_ns(), timeout_s=60)
    spool.add_starts(
        [(notice["record_id"], json.dumps(notice), None) for notice in (huge, unreadable, fine)],
        clock.time_ns(),
    )
    assert sidecar.check_open_invocations() == 0  # pids just found gone: the grace runs
    clock.advance(5.0)
    assert sidecar.check_open_invocations() == 2
    assert sidecar.check_open_invocations() == 0
    assert sidecar._counters.get("watch_unusable_notices") == 2  # once each, not per pass
    assert sidecar._counters.get("watch_killed") == 2
    rows = wait_for_rows(tmp_path / "ledger.db", 2)
    assert {row["record_id"] for row in rows} == {huge["record_id"], fine["record_id"]}
    assert {row["outcome"] for row in rows} == {"killed"}
    assert sidecar.health()[1]["open_invocations"] == 1  # the unreadable one stays, harmless


# --- the record format's version -------------------------------------------------------------


def test_a_newer_workers_outcome_is_kept(
    sidecar_at: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """With a newer format, an unknown outcome and unknown fields are kept as a record (outcome
    ``error``, the original in a tag); in the current format, the unknown outcome is a 400."""
    sidecar = sidecar_at()
    newer = make_record(0, outcome="preempted", field_of_the_future=[1, 2])
    assert post(sidecar.url, "/v1/records", {"format": RECORD_FORMAT + 1, "records": [newer]}) == (
        200,
        {"accepted": 1, "duplicates": 0},
    )
    for body in (
        {"records": [make_record(1, outcome="preempted")]},
        {"format": RECORD_FORMAT, "records": [make_record(1, outcome="preempted")]},
    ):
        assert post(sidecar.url, "/v1/records", body) == (
            400,
            {
                "error": "records[0].outcome: expected one of ok, error, timeout, killed, "
                "cancelled, rejected"
            },
        )
    for version in ("2", 0, None, 1.0):
        assert post(sidecar.url, "/v1/records", {"format": version, "records": []})[0] == 400
    row = wait_for_rows(tmp_path / "ledger.db", 1)[0]
    assert row["outcome"] == "error"
    assert json.loads(row["tags"]) == {"model": "llama", UNKNOWN_OUTCOME_TAG: "preempted"}


def test_the_client_says_its_format(sidecar_at: Callable[..., Sidecar]) -> None:
    """The worker's client sends ``format`` with records and starts; the sidecar takes both."""
    sidecar = sidecar_at()
    client = SidecarClient(sidecar.url)
    try:
        assert client.send_records([make_record(0)]) == {"accepted": 1, "duplicates": 0}
        assert client.send_starts([_start(os.getpid())]) == {"accepted": 1, "duplicates": 0}
    finally:
        client.close()


# --- anything acknowledged can be exported, priced and reported -------------------------------

_FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "start_ns": st.integers(-(2**63), 2**63 - 1) | st.just(MIN_TIME_NS),
    "end_ns": st.integers(-(2**63), 2**63 - 1),
    "duration_s": st.floats(allow_nan=False) | st.just(0.5),
    "cost_usd": st.floats(allow_nan=False) | st.integers(-10, 10**20),
    "cost_gpu_usd": st.floats(-1, 2e6, allow_nan=False),
    "cost_execution_usd": st.floats(allow_nan=False),
    "billed_gpu_seconds": st.floats(allow_nan=False),
    "busy_gpu_seconds": st.none() | st.floats(allow_nan=False),
    "energy_j": st.none() | st.floats(allow_nan=False),
    "input_tokens": st.none() | st.integers(-(2**63), 2**63 - 1),
    "output_tokens": st.none() | st.integers(-10, 2 * 10**12),
    "gpu_count": st.integers(-2, 2000),
    "idle_gap_s": st.none() | st.floats(allow_nan=False),
    "init_phases": st.none() | st.dictionaries(st.text(max_size=5), st.floats(allow_nan=False)),
    "tags": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=4),
    "handler": st.text(max_size=8),
    "external_targets": st.none()
    | st.dictionaries(
        st.text(max_size=5),
        st.dictionaries(
            st.sampled_from(["calls", "call_s", "wait_s", "wait_usd", "errors", "bytes"]),
            st.floats(allow_nan=False) | st.integers(-5, 10**16),
        ),
        max_size=2,
    ),
    "billing_rules": st.none()
    | st.fixed_dictionaries(
        {"per_gpu_second_usd": st.sampled_from(["1/3600", "0.001", "-1", "1e999", "1e9"])},
        optional={"increment_ns": st.integers(-5, 10**16), "execution_fee_usd": st.floats(0, 10)},
    ),
}


@st.composite
def _fuzzed_records(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed record with a few fields set to anything, in range or not."""
    record = make_record(0, record_id=uuid.uuid4().hex)
    names = draw(st.lists(st.sampled_from(sorted(_FIELD_VALUES)), min_size=1, max_size=4))
    for name in names:
        record[name] = draw(_FIELD_VALUES[name])
    if draw(st.booleans()):  # keep end and duration consistent, so more records get through
        if not math.isfinite(record["duration_s"]) or abs(record["duration_s"]) > 1e9:
            record["duration_s"] = 0.5
        record["end_ns"] = min(record["start_ns"] + round(record["duration_s"] * 1e9), 2**63 - 1)
    return record


def test_anything_acknowledged_can_be_exported_priced_and_reported(
    sidecar_at: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """For random records, many outside their ranges: whatever the receiver acknowledges
    encodes as an OTLP span and aggregates into a report with sane numbers; the rest is 400."""
    sidecar = sidecar_at()
    now_ns = sidecar._clock.time_ns()
    acknowledged: list[InvocationRecord] = []

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        derandomize=True,  # the same 300 examples on every run: deterministic
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(record=_fuzzed_records())
    def one(record: dict[str, Any]) -> None:
        try:
            body = json.dumps({"records": [record]}, allow_nan=False).encode()
        except ValueError:
            return  # an infinite float: JSON has none (the client refuses to send it)
        status, answer = post(sidecar.url, "/v1/records", body)
        assert status in (200, 400), answer
        if status != 200:
            assert answer["error"].startswith("records[0].")
            return
        [(parsed, _values)] = parse_records(json.loads(body), now_ns=now_ns)
        encode_spans([record_to_span(parsed, record_resource(parsed))]).SerializeToString()
        rows = aggregate([parsed], "endpoint")
        for row in [*rows, totals(rows)]:
            for name, value in dataclasses.asdict(row).items():
                if isinstance(value, float) and not (row.key != rows[0].key and "_p" in name):
                    # (The totals row has no duration percentiles: NaN, by design.)
                    assert math.isfinite(value), name
                    assert abs(value) < 1e13, name
        acknowledged.append(parsed)

    one()
    assert acknowledged, "the fuzzer should get some records through"
    rows = wait_for_rows(tmp_path / "ledger.db", len(acknowledged))
    assert len(rows) == len(acknowledged)
    for options in ([], ["--format", "json"], ["--by", "day"]):
        result = CliRunner().invoke(
            main, ["report", "--ledger", str(tmp_path / "ledger.db"), *options]
        )
        assert result.exit_code == 0, result.output
        assert max(len(word) for word in result.output.split()) < 60  # no 300-digit cost
