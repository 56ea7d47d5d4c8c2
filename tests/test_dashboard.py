"""The Grafana dashboard is true: every panel query returns data from a real Prometheus.

A gpuledger-instrumented worker (a subprocess: ``exporters=prometheus`` on a free port, a handler
called in a loop with users, tenants, tokens, external calls and prices, NVML replayed from a
synthetic recording so the GPU series exist without a GPU) is scraped every second by Debian's
``prometheus`` (``apt-get install prometheus``; ``.ci/run`` installs it), started here on
127.0.0.1 with its storage in a temporary directory. Each target of
``docker/grafana/gpuledger.json`` is then run against ``/api/v1/query`` with Grafana's variables
substituted, and must return at least one finite value. The same Prometheus loads the alerting
rules of ``docker/prometheus/alerts.yml``, which must all evaluate without error.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import HOST, free_port, in_ci, log_tail, stop

ROOT = Path(__file__).parents[1]
DASHBOARD = ROOT / "docker" / "grafana" / "gpuledger.json"
ALERT_RULES = ROOT / "docker" / "prometheus" / "alerts.yml"
START_TIMEOUT_S = 30.0
DATA_TIMEOUT_S = 60.0
RATE_WINDOW = "15s"
"""What ``$__rate_interval`` becomes: 15 scrapes at the 1 s interval, enough for ``rate()``."""
GRAFANA_VARIABLES = {
    "$__rate_interval": RATE_WINDOW,
    "$__interval": "5s",
    "$__range": "10m",
    "${datasource}": "prometheus",
}

WORKER = '''
"""A worker for the dashboard test: every series of the dashboard gets samples."""
import os, sys, time

import gpuledger
from gpuledger import _guard
from gpuledger.testing.nvml import ReplayNvml, synthetic_recording

# Busy 3 s in every 5 s; samples every 20 ms so that 0.15 s invocations are measured.
recording = synthetic_recording(
    duration_s=600.0,
    busy=[(start, start + 3.0, 1.0) for start in range(0, 600, 5)],
    pid=os.getpid(),
    sample_period_us=20_000,
    energy_update_us=10_000,
)
gpuledger.configure(nvml=ReplayNvml(recording, time.time_ns))
# One contained failure, so that the telemetry-errors series exists.
_guard.count("dashboard_test")


@gpuledger.traced_handler
def handler(job):
    gpuledger.tag(user=job["user"], tenant=job["tenant"])
    with gpuledger.external_call("fetch", target=job["target"]):
        time.sleep(0.01)
    time.sleep(0.15)
    gpuledger.record_tokens(input=100, output=20)
    if job["fail"]:
        raise RuntimeError("a failed invocation")
    return {"ok": True}


users, targets = ["alice", "bob", "carol"], ["api.openai.com", "s3.amazonaws.com"]
count = 0
while True:
    job = {
        "user": users[count % 3],
        "tenant": f"tenant-{count % 2}",
        "target": targets[count % 2],
        "fail": count % 7 == 3,
    }
    try:
        handler(job)
    except RuntimeError:
        pass
    count += 1
    time.sleep(0.02)
'''


def prometheus_binary() -> str | None:
    """``prometheus`` from PATH, else Debian's /usr/bin/prometheus, else None."""
    found = shutil.which("prometheus")
    if found:
        return found
    fallback = Path("/usr/bin/prometheus")
    return str(fallback) if os.access(fallback, os.X_OK) else None


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _answers(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    return ready


def _start(
    argv: list[str], log: Path, ready: Callable[[], bool], what: str, **popen: Any
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc, signal.SIGKILL)
            pytest.fail(f"{what} did not start; log {log}:\n{log_tail(log)}", pytrace=False)
        time.sleep(0.1)
    return proc


@pytest.fixture(scope="module")
def worker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Port of a worker's ``/metrics`` (gpuledger's prometheus exporter), on 127.0.0.1."""
    workdir = tmp_path_factory.mktemp("worker")
    script = workdir / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    env = {
        **os.environ,
        "GPULEDGER_EXPORTERS": "prometheus",
        "GPULEDGER_PROMETHEUS_PORT": str(port),
        "GPULEDGER_PLATFORM": "runpod",
        "GPULEDGER_GPU": "H100",
        "GPULEDGER_USER_ID_ON_METRICS": "true",
        "GPULEDGER_FLUSH_POLICY": "invocation",
        "GPULEDGER_LEDGER": str(workdir / "ledger.db"),
        # Every tenant's spend against a budget, so the budget series and rules have data.
        "GPULEDGER_BUDGETS": '[{"scope": "tenant", "window": "1d", "limit_usd": 1}]',
        "GPULEDGER_BUDGET_REFRESH_S": "1",
    }
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "GPULEDGER_SIDECAR", "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    proc = _start(
        [sys.executable, str(script)],
        workdir / "worker.log",
        _answers(f"http://{HOST}:{port}/metrics"),
        "the worker",
        cwd=workdir,
        env=env,
    )
    try:
        yield port
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory, worker_port: int) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a Prometheus scraping the worker every second and evaluating
    the alerting rules every second."""
    binary = prometheus_binary()
    if binary is None:
        hint = "apt-get install prometheus"
        if in_ci():
            pytest.fail(f"prometheus not found, and CI is set: .ci/run installs it ({hint})")
        pytest.skip(f"prometheus not found; to run this test: {hint}")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - '{ALERT_RULES}'\n"
        "scrape_configs:\n"
        "  - job_name: gpuledger\n"
        f"    static_configs:\n      - targets: ['{HOST}:{worker_port}']\n"
    )
    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = _start(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={HOST}:{port}",
        ],
        workdir / "prometheus.log",
        _answers(f"{url}/-/ready"),
        "prometheus",
        cwd=workdir,
    )
    try:
        yield url
    finally:
        stop(proc)


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    answer = _get_json(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _finite(result: list[dict[str, Any]]) -> bool:
    """At least one sample of an instant-vector (or scalar) answer is a finite number."""
    return any(math.isfinite(float(series["value"][1])) for series in result)


def dashboard_queries() -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` of every target of every panel, Grafana variables substituted;
    and of every query variable: ``label_values(series, label)`` as the PromQL that lists the
    same values, ``count by (label) (series)``."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            # Template variables (job, handler): "All", which the dashboard sends as ".*".
            expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
            queries.append((f"{panel['title']} [{target['refId']}]", expr))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
        assert found is not None, variable["definition"]
        series = re.sub(r"\$\{?\w+\}?", ".*", found[1])
        if "{" not in series:  # a selector, as every panel's, so that metric_names finds it
            series += '{job=~".*"}'
        queries.append((f"variable {variable['name']}", f"count by ({found[2]}) ({series})"))
    return queries


def metric_names(promql: str) -> set[str]:
    """The metric names a query reads (every one has a ``{...}`` selector in the dashboard)."""
    return set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{", promql))


@pytest.mark.slow
def test_every_panel_query_returns_data(prometheus_url: str) -> None:
    """Each dashboard target returns at least one finite value from the scraped worker."""
    queries = dashboard_queries()
    names = set().union(*(metric_names(expr) for _, expr in queries))
    deadline = time.monotonic() + DATA_TIMEOUT_S
    empty: list[str] = []
    while True:
        # Every series the dashboard reads, scraped often enough for rate() over RATE_WINDOW.
        scraped = {
            name
            for name in names
            if _finite(_query(prometheus_url, f"count_over_time({name}[{RATE_WINDOW}]) >= 8"))
        }
        if scraped == names:
            empty = [title for title, expr in queries if not _finite(_query(prometheus_url, expr))]
            if not empty:
                break
        if time.monotonic() > deadline:
            targets = _get_json(f"{prometheus_url}/api/v1/targets")["data"]["activeTargets"]
            pytest.fail(
                f"after {DATA_TIMEOUT_S:g} s: series missing {sorted(names - scraped)}; "
                f"panels without data {empty}; targets {targets}"
            )
        time.sleep(1.0)
    assert len(queries) >= 25


def _value(url: str, promql: str) -> float:
    (series,) = _query(url, promql)
    return float(series["value"][1])


@pytest.mark.slow
def test_faas_invocations_are_the_successful_invocations(prometheus_url: str) -> None:
    """As the conventions define it, ``faas.invocations`` counts the invocations that succeeded
    (the worker fails one in seven): with ``faas.errors`` it adds up to at most every invocation
    (``faas.invoke_duration``'s count, the dashboard's denominator; a scrape may fall between an
    invocation's histogram sample and its counters, never the other way round)."""
    selector = '{job="gpuledger"}'
    deadline = time.monotonic() + DATA_TIMEOUT_S
    while not _finite(_query(prometheus_url, f"sum(faas_errors_total{selector}) > 0")):
        if time.monotonic() > deadline:
            pytest.fail(f"no faas_errors_total after {DATA_TIMEOUT_S:g} s")
        time.sleep(1.0)
    every = _value(prometheus_url, f"sum(faas_invoke_duration_seconds_count{selector})")
    succeeded = _value(prometheus_url, f"sum(faas_invocations_total{selector})")
    failed = _value(prometheus_url, f"sum(faas_errors_total{selector})")
    assert failed > 0
    assert succeeded + failed <= every
    assert succeeded < every


@pytest.mark.slow
def test_alert_rules_evaluate(prometheus_url: str) -> None:
    """Prometheus loads every group and rule of docker/prometheus/alerts.yml and evaluates each
    without error on the worker's series (health "ok"; an error such as a join matching several
    ``target_info`` series would say "err"); the cost per invocation by deploy version, which
    joins ``target_info``, and each tenant's budget burn rate, from the budget metrics the worker
    exports under their Prometheus names, have values."""
    yaml = pytest.importorskip("yaml")
    rules_by_group = {
        group["name"]: len(group["rules"])
        for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]
    }
    deadline = time.monotonic() + DATA_TIMEOUT_S
    while True:
        groups = _get_json(f"{prometheus_url}/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        # Before its first evaluation a rule's lastEvaluation is Go's zero time.
        evaluated = all(not rule["lastEvaluation"].startswith("0001-") for rule in rules)
        cost_per_invocation = _query(
            prometheus_url, "job_service_version:gpuledger_cost_per_invocation:ratio_rate1h"
        )
        burn_rate = _query(prometheus_url, "budget:gpuledger_budget_burn_rate:ratio_rate5m")
        if (
            len(groups) == len(rules_by_group)
            and evaluated
            and _finite(cost_per_invocation)
            and _finite(burn_rate)
        ):
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"after {DATA_TIMEOUT_S:g} s: groups {[group['name'] for group in groups]}, "
                f"evaluated {evaluated}, cost per invocation {cost_per_invocation}, budget "
                f"burn rate {burn_rate}"
            )
        time.sleep(0.5)
    assert {group["name"]: len(group["rules"]) for group in groups} == rules_by_group
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not unhealthy
