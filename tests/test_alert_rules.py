"""docker/prometheus/alerts.yml, the alerting rules the compose stack ships: ``promtool`` accepts
them and their unit tests (docker/prometheus/alerts.test.yml) pass, every alert is tested both
firing and quiet, and docker/prometheus.yml loads them where compose mounts them.

promtool comes with Debian's ``prometheus`` (``apt-get install prometheus``; ``.ci/run`` installs
it): without it the promtool tests are skipped, or fail when ``CI`` is set. tests/test_dashboard.py
loads the same rules into a real Prometheus scraping a worker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.processes import in_ci

DOCKER = Path(__file__).parents[1] / "docker"
RULES = DOCKER / "prometheus" / "alerts.yml"
RULE_TESTS = DOCKER / "prometheus" / "alerts.test.yml"
SEVERITIES = {"critical", "warning"}
"""What an alert's ``severity`` label may say: page someone, or open a ticket."""


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules() -> list[dict[str, Any]]:
    """Every rule of alerts.yml, recording and alerting, in file order."""
    return [rule for group in _yaml(RULES)["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


@pytest.fixture(scope="module")
def promtool() -> str:
    """``promtool`` from PATH, else Debian's /usr/bin/promtool."""
    found = shutil.which("promtool")
    if found is None and os.access("/usr/bin/promtool", os.X_OK):
        found = "/usr/bin/promtool"
    if found is None:
        hint = "apt-get install prometheus"
        if in_ci():
            pytest.fail(f"promtool not found, and CI is set: .ci/run installs it ({hint})")
        pytest.skip(f"promtool not found; to run this test: {hint}")
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_rules(promtool: str) -> None:
    """The file parses, every expression is valid PromQL and every template expands."""
    result = _run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    """alerts.test.yml: each alert fires on series shaped as gpuledger exports them, with the
    labels and annotations expected, and stays quiet where it should."""
    result = _run([promtool, "test", "rules", str(RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """alerts.test.yml has, for each alert, a case where it fires and one where it does not; and
    names no alert that does not exist (promtool passes a quiet case of an unknown alert). So a
    new or renamed alert without its tests fails here."""
    alerts = {rule["alert"] for rule in _alerts()}
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in _yaml(RULE_TESTS)["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    unknown = (firing | quiet) - alerts
    assert not unknown, f"tests of alerts that do not exist: {sorted(unknown)}"
    assert not alerts - firing, f"never tested firing: {sorted(alerts - firing)}"
    assert not alerts - quiet, f"never tested quiet: {sorted(alerts - quiet)}"


def test_every_alert_says_how_severe_and_what() -> None:
    """Each alert has a ``severity`` to route on, and a summary and a description with the values
    that made it fire templated in."""
    for rule in _alerts():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        for annotation in ("summary", "description"):
            assert "{{" in rule["annotations"][annotation], f"{rule['alert']}: {annotation}"


def _compose_mounts(tmp_path: Path) -> dict[str, Path]:
    """What compose.yaml puts in the prometheus container, by container path: the repository's
    files it bind-mounts, and a stand-in token file for each secret (/run/secrets/NAME)."""
    service = _yaml(DOCKER / "compose.yaml")["services"]["prometheus"]
    mounts: dict[str, Path] = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = DOCKER / source
    for secret in service.get("secrets", []):
        long_syntax = secret if isinstance(secret, dict) else {"source": secret}
        target = long_syntax.get("target", long_syntax["source"])
        stand_in = tmp_path / f"secret-{long_syntax['source']}"
        stand_in.write_text("a-token\n")
        mounts[target if target.startswith("/") else f"/run/secrets/{target}"] = stand_in
    return mounts


def test_compose_prometheus_loads_the_rules(promtool: str, tmp_path: Path) -> None:
    """docker/prometheus.yml, its container paths put back to what compose mounts there, passes
    ``promtool check config``: it loads alerts.yml from where compose mounts it, and every other
    file it reads (the sidecar's token) is mounted too."""
    mounts = _compose_mounts(tmp_path)
    config = _yaml(DOCKER / "prometheus.yml")
    rule_files = config["rule_files"]
    missing = [path for path in rule_files if path not in mounts]
    assert not missing, f"rule files compose does not mount: {missing}"
    assert RULES in {mounts[path] for path in rule_files}
    config["rule_files"] = [str(mounts[path]) for path in rule_files]
    for job in config["scrape_configs"]:
        authorization = job.get("authorization", {})
        if "credentials_file" in authorization:
            path = authorization["credentials_file"]
            assert path in mounts, f"{job['job_name']}: compose does not mount {path}"
            authorization["credentials_file"] = str(mounts[path])
    mapped = tmp_path / "prometheus.yml"
    mapped.write_text(yaml.safe_dump(config))
    result = _run([promtool, "check", "config", str(mapped)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout
