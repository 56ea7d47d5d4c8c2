"""Spend budgets: read from the settings with clear errors, their spend computed in the ledger
(SQLite and PostgreSQL), and `gpuledger budgets`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import gpuledger
from gpuledger import ConfigError
from gpuledger._budgets import Budget, BudgetError, parse_budgets
from gpuledger._settings import resolve_settings
from gpuledger.cli._main import main
from gpuledger.ledger import aggregate, budget_spend, ledger_report, open_ledger
from gpuledger.testing import FakeClock, capture_telemetry

from .support.ledgers import make_record

NOW_NS = 1_772_400_000 * 10**9
HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS


def _budget(**fields: object) -> Budget:
    (budget,) = parse_budgets([{"scope": "tenant", "key": "acme", "window": "1d", **fields}])
    return budget


def test_budgets_are_read_from_a_list_json_and_objects() -> None:
    (budget,) = parse_budgets(
        '[{"scope": "tenant", "key": "acme", "window": "30d", "limit_usd": 500}]'
    )
    assert budget == Budget("tenant", "acme", "30d", 30 * 86_400, 500.0, "alert")
    assert budget.label == "tenant acme 30d"
    (total,) = parse_budgets([{"scope": "total", "window": "1h", "limit_usd": 5}])
    assert (total.key, total.window_s, total.label) == ("", 3600, "total 1h")
    (every,) = parse_budgets([{"scope": "user", "window": "2w", "limit_usd": 1.5}])
    assert every.key == "*"  # no key: each user on their own
    assert parse_budgets([budget]) == (budget,)
    assert parse_budgets("") == ()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"scope": "team", "window": "1d", "limit_usd": 1}, r"budgets\[0\]\.scope: expected one"),
        ({"scope": "tenant", "window": "1 day", "limit_usd": 1}, r"\.window: expected a duration"),
        ({"scope": "tenant", "window": "0h", "limit_usd": 1}, r"\.window: expected a duration"),
        ({"scope": "tenant", "window": "1d", "limit_usd": 0}, r"\.limit_usd: expected a positive"),
        ({"scope": "tenant", "window": "1d", "limit_usd": True}, r"\.limit_usd"),
        ({"scope": "tenant", "window": "1d", "limit_usd": 1, "mode": "warn"}, r"\.mode: expected"),
        ({"scope": "tenant", "key": " ", "window": "1d", "limit_usd": 1}, r"\.key: expected"),
        ({"scope": "tenant", "window": "1d", "limit_usd": 1, "cap": 2}, r"unknown field 'cap'"),
        ("tenant", r"budgets\[0\]: expected a table"),
    ],
)
def test_a_bad_budget_says_which_and_what(entry: object, message: str) -> None:
    with pytest.raises(BudgetError, match=message):
        parse_budgets([entry])


def test_two_budgets_for_one_key_and_window_are_refused() -> None:
    entry = {"scope": "tenant", "key": "acme", "window": "1d", "limit_usd": 1}
    with pytest.raises(BudgetError, match=r"budgets\[1\]: a second budget for tenant acme 1d"):
        parse_budgets([entry, {**entry, "limit_usd": 2}])


def test_budgets_come_from_the_settings_file_and_the_environment(tmp_path: Path) -> None:
    (tmp_path / "gpuledger.toml").write_text(
        '[[budgets]]\nscope = "tenant"\nkey = "acme"\nwindow = "30d"\nlimit_usd = 500\n'
    )
    assert resolve_settings({}).budgets == (_budget(window="30d", limit_usd=500),)
    env = {"GPULEDGER_BUDGETS": '[{"scope": "total", "window": "1h", "limit_usd": 2}]'}
    assert resolve_settings({}, env).budgets[0].scope == "total"
    with pytest.raises(ConfigError, match=r"GPULEDGER_BUDGETS.*budgets: not a JSON list"):
        resolve_settings({}, {"GPULEDGER_BUDGETS": "tenant=acme"})


def _spend_ledger(location: str) -> None:
    records = [
        # acme: 3.00 within the day, 1.00 of it in the last hour; 10.00 two days ago
        make_record(1, tenant="acme", start_ns=NOW_NS - 2 * HOUR_NS, cost_usd=2.0),
        make_record(2, tenant="acme", start_ns=NOW_NS - HOUR_NS // 2, cost_usd=1.0),
        make_record(3, tenant="acme", start_ns=NOW_NS - 2 * DAY_NS, cost_usd=10.0),
        make_record(4, tenant="globex", start_ns=NOW_NS - HOUR_NS // 4, cost_usd=0.5),
        make_record(5, tenant=None, start_ns=NOW_NS - HOUR_NS // 4, cost_usd=0.25),
        make_record(6, tenant="acme", start_ns=NOW_NS - HOUR_NS // 4, cost_usd=None),  # unpriced
    ]
    with open_ledger(location) as ledger:
        ledger.write(records)


def test_spend_is_computed_in_the_ledger(ledger_location: str) -> None:
    _spend_ledger(ledger_location)
    budgets = parse_budgets(
        [
            {"scope": "tenant", "key": "acme", "window": "1d", "limit_usd": 4},
            {"scope": "tenant", "window": "1d", "limit_usd": 2},
            {"scope": "total", "window": "30d", "limit_usd": 12},
            {"scope": "tenant", "key": "initech", "window": "1h", "limit_usd": 1},
        ]
    )
    with open_ledger(ledger_location, create=False) as ledger:
        acme, every_acme, every_globex, total, initech = budget_spend(
            ledger, budgets, now_ns=NOW_NS
        )
    assert (acme.key, acme.spent_usd, acme.last_hour_usd) == ("acme", 3.0, 1.0)
    assert acme.remaining_usd == 1.0
    assert acme.used == 0.75
    assert acme.burn_rate == pytest.approx(1.0 / (4 / 24))  # 1 USD in an hour of 4 a day
    assert acme.status == "ok"
    assert (every_acme.key, every_acme.spent_usd, every_acme.status) == ("acme", 3.0, "over")
    assert (every_globex.key, every_globex.spent_usd) == ("globex", 0.5)
    assert total.spent_usd == pytest.approx(13.75)
    assert total.status == "over"
    assert (initech.spent_usd, initech.burn_rate, initech.status) == (0.0, 0.0, "ok")


def test_gpuledger_budgets_shows_each_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = str(tmp_path / "ledger.db")
    records = [
        make_record(1, tenant="acme", start_ns=NOW_NS, cost_usd=3.7),
        make_record(2, tenant="globex", start_ns=NOW_NS, cost_usd=0.1),
    ]
    with open_ledger(location) as ledger:
        ledger.write(records)
    monkeypatch.setattr("time.time_ns", lambda: NOW_NS + 1)
    budgets = [
        {"scope": "tenant", "key": "acme", "window": "1d", "limit_usd": 4},
        {"scope": "tenant", "window": "1d", "limit_usd": 1},
    ]
    monkeypatch.setenv("GPULEDGER_BUDGETS", json.dumps(budgets))
    result = CliRunner().invoke(main, ["budgets", "--ledger", location])
    assert result.exit_code == 0, result.output
    header, acme, every_acme, every_globex = result.output.splitlines()
    assert header.split()[:2] == ["budget", "mode"]
    assert acme.split() == ["tenant", "acme", "1d", "alert", "4.00", "3.7000", "0.3000", "92.5%",
                            "22.20", "near"]  # fmt: skip
    assert every_acme.split()[:3] == ["tenant", "acme", "1d"] and every_acme.endswith("over")
    assert every_globex.endswith("ok")
    result = CliRunner().invoke(main, ["budgets", "--ledger", location, "--format", "json"])
    first = json.loads(result.output)[0]
    assert first["spent_usd"] == 3.7 and first["status"] == "near"

    monkeypatch.delenv("GPULEDGER_BUDGETS")
    result = CliRunner().invoke(main, ["budgets", "--ledger", location])
    assert result.exit_code == 1
    assert "no budgets are set" in result.output


# --- enforced on entry -----------------------------------------------------------------------


def _enforced(limit_usd: float, **fields: object) -> list[dict[str, object]]:
    budget = {"scope": "tenant", "key": "acme", "window": "1d", "limit_usd": limit_usd}
    return [{**budget, **fields, "mode": "enforce"}]


def test_a_tenant_over_an_enforced_budget_is_refused_before_its_handler_runs(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    ran: list[str] = []
    with capture_telemetry(
        tmp_path / "ledger.db",
        clock=clock,
        platform="runpod",
        gpu="H100",
        budgets=_enforced(0.01),
        budget_refresh_s=3600,  # only the writer's own charges move the spend in this test
    ) as capture:

        @gpuledger.traced_handler(tenant=lambda job: job["input"]["tenant"])
        def handler(job: dict[str, Any]) -> str:
            ran.append(job["id"])
            clock.advance(10.0)
            return "ok"

        handler({"id": "a1", "input": {"tenant": "acme"}})
        handler({"id": "a2", "input": {"tenant": "acme"}})
        capture.records()  # flushed: the writer charged both
        with pytest.raises(gpuledger.BudgetExceeded) as refused:
            handler({"id": "a3", "input": {"tenant": "acme"}})
        assert handler({"id": "g1", "input": {"tenant": "globex"}}) == "ok"
        records = {record.invocation_id: record for record in capture.records()}
        points = {
            name: capture.metric_points(name)
            for name in ("gpuledger.budget.rejections", "gpuledger.budget.spent")
        }
    assert ran == ["a1", "a2", "g1"]  # a3 never ran
    error = refused.value
    spent = records["a1"].cost_usd + records["a2"].cost_usd  # type: ignore[operator]
    assert (error.scope, error.key, error.window, error.limit_usd) == ("tenant", "acme", "1d", 0.01)
    assert error.spent_usd == pytest.approx(spent)
    assert 0 < error.retry_after_s <= 86_400
    assert "tenant 'acme' is over its 1d budget" in str(error)
    rejected = records["a3"]
    assert rejected.outcome == "rejected"
    assert rejected.error_type == "gpuledger._errors.BudgetExceeded"
    assert rejected.cost_usd == 0.0 and rejected.cost_execution_usd == 0.0
    assert rejected.billed_gpu_seconds == 0.0
    assert rejected.tags == {"gpuledger.budget": "tenant acme"}
    assert records["g1"].outcome == "ok"
    (rejection,) = points["gpuledger.budget.rejections"]
    assert rejection.value == 1
    assert rejection.attributes["gpuledger.budget.key"] == "acme"
    (gauge,) = points["gpuledger.budget.spent"]
    assert gauge.value == pytest.approx(spent)


def test_the_spend_already_in_the_ledger_refuses_from_the_first_request(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    clock = FakeClock()
    with open_ledger(str(ledger)) as opened:
        opened.write(
            [make_record(1, tenant="acme", start_ns=clock.time_ns() - HOUR_NS, cost_usd=5.0)]
        )
    with capture_telemetry(
        ledger, clock=clock, platform="runpod", gpu="H100", budgets=_enforced(4.0)
    ) as capture:

        @gpuledger.traced_handler(tags=lambda job: {"tenant": job["tenant"]})
        def stream(job: dict[str, str]) -> Iterator[int]:
            yield 1

        with pytest.raises(gpuledger.BudgetExceeded) as refused:
            next(stream({"tenant": "acme"}))
        assert list(stream({"tenant": "globex"})) == [1]
        outcomes = sorted(record.outcome for record in capture.records())
    assert outcomes == ["ok", "ok", "rejected"]  # the ledger's own record, globex, acme
    # The oldest spend leaves the 1-day window an hour short of a day from now.
    assert refused.value.retry_after_s == 23 * 3600


def test_a_refused_request_adds_nothing_to_the_workers_bill(tmp_path: Path) -> None:
    """The billing engine leaves a rejected record out of the worker's requests: no fee, no
    start-up, no time; the worker's life still spans it (its time there is idle)."""
    location = str(tmp_path / "ledger.db")
    base = NOW_NS - HOUR_NS
    common = {"tenant": "acme", "billing_worker": "pod-1", "platform": "runpod"}
    records = [
        make_record(1, start_ns=base, duration_s=2.0, cold=True, init_duration_s=5.0, **common),
        make_record(2, start_ns=base + 10 * 10**9, duration_s=0.0, outcome="rejected",
                    cost_usd=0.0, **common),
    ]  # fmt: skip
    with open_ledger(location) as ledger:
        ledger.write(records)
        rows, _ = ledger_report(ledger, "tenant", now_ns=NOW_NS)
    (acme,) = [row for row in rows if row.key == "acme"]
    assert (acme.invocations, acme.rejected, acme.errors) == (2, 1, 0)
    alone = [records[0]]
    expected = aggregate(alone, "tenant", now_ns=NOW_NS)
    assert acme.request_gpu_s == expected[0].request_gpu_s
    assert acme.startup_gpu_s == expected[0].startup_gpu_s
    only_rejected = aggregate(records[1:], "tenant", now_ns=NOW_NS)
    assert only_rejected[0].request_gpu_s == 0.0


def test_a_bad_refresh_interval_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="budget_refresh_s"):
        resolve_settings({"budget_refresh_s": 0})


def test_report_marks_the_groups_over_their_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = str(tmp_path / "ledger.db")
    with open_ledger(location) as ledger:
        ledger.write(
            [
                make_record(1, tenant="acme", start_ns=NOW_NS, cost_usd=3.7),
                make_record(2, tenant="globex", start_ns=NOW_NS, cost_usd=0.95),
                make_record(3, tenant="initech", start_ns=NOW_NS, cost_usd=0.1),
            ]
        )
    monkeypatch.setattr("time.time_ns", lambda: NOW_NS + 1)
    budgets = [
        {"scope": "tenant", "window": "1d", "limit_usd": 1},
        {"scope": "tenant", "key": "acme", "window": "30d", "limit_usd": 100},
        {"scope": "user", "window": "1d", "limit_usd": 1},
    ]
    monkeypatch.setenv("GPULEDGER_BUDGETS", json.dumps(budgets))
    result = CliRunner().invoke(main, ["report", "--ledger", location, "--by", "tenant"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line}
    assert lines["tenant"].endswith("budget")
    assert lines["acme"].endswith("over 1d")  # the worst of its two budgets
    assert lines["globex"].endswith("near 1d")
    assert lines["initech"].endswith("ok 1d")
    as_json = CliRunner().invoke(
        main, ["report", "--ledger", location, "--by", "tenant", "--format", "json"]
    )
    assert {row["key"]: row["budget"] for row in json.loads(as_json.output)} == {
        "acme": "over 1d",
        "globex": "near 1d",
        "initech": "ok 1d",
    }
    by_day = CliRunner().invoke(main, ["report", "--ledger", location, "--by", "day"])
    assert "budget" not in by_day.output  # no budget groups by day


@pytest.mark.parametrize("policy", ["separate", "share", "cause"])
def test_a_worker_whose_only_request_was_refused_bills_its_time_as_its_own(policy: str) -> None:
    """Its start-up, idle time and rounding stay the worker's under every policy."""
    from gpuledger.billing import frozen_rules

    rules = _runpod_rules()
    refused = make_record(
        1,
        start_ns=NOW_NS - HOUR_NS,
        duration_s=0.0,
        outcome="rejected",
        cold=True,
        init_duration_s=20.0,
        cost_usd=0.0,
        billing_worker="pod-9",
        worker_start_ns=NOW_NS - HOUR_NS - 20 * 10**9,
        billing_rules=rules.to_json(),
    )
    rows = aggregate([refused], "tenant", policy=policy, rules_for=frozen_rules, now_ns=NOW_NS)
    by_key = {row.key: row for row in rows}
    assert by_key["(none)"].cost_usd in (0.0, None)
    assert by_key["(none)"].rejected == 1
    if policy == "separate":
        assert by_key["(idle)"].cost_usd is not None and by_key["(idle)"].cost_usd > 0
    total = sum(row.cost_usd or 0.0 for row in rows)
    assert total > 0  # the worker's start-up is billed, to the worker


def _runpod_rules() -> Any:
    from gpuledger._pricing import edition_catalogue
    from gpuledger.billing import Rules

    price = edition_catalogue("seed-2026-03").lookup("runpod", "H100")
    assert price is not None
    return Rules.from_price(price)
