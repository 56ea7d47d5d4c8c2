"""Settings: argument > environment > default, typed errors that name the setting and value."""

from __future__ import annotations

from pathlib import Path

import pytest

import gpuledger
from gpuledger import ConfigError
from gpuledger._platform import detect_platform
from gpuledger._settings import SETTINGS, resolve_settings, settings_table


def test_defaults() -> None:
    """With nothing set: one GPU, gpuledger.db, auto exporters (none without an endpoint)."""
    settings = resolve_settings({}, {})
    assert (settings.gpu_count, settings.ledger, settings.exporters) == (1, "gpuledger.db", None)
    assert settings.resolved_exporters({}) == ()
    assert settings.tracing and settings.metrics and not settings.pseudonymize_users
    assert settings.prewarm_threshold_s == 10.0
    assert settings.sources["ledger"] == "default"


def test_argument_beats_environment_beats_default() -> None:
    """An argument wins over GPULEDGER_*, which wins over the default."""
    env = {"GPULEDGER_GPU": "A100", "GPULEDGER_GPU_COUNT": "4"}
    settings = resolve_settings({"gpu": "H100"}, env)
    assert (settings.gpu, settings.gpu_count) == ("H100", 4)
    assert settings.sources["gpu"] == "argument"
    assert settings.sources["gpu_count"] == "GPULEDGER_GPU_COUNT"


def test_standard_otel_variables() -> None:
    """OTEL_SERVICE_NAME names the service; an OTLP endpoint switches the OTLP exporter on."""
    env = {"OTEL_SERVICE_NAME": "llama", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    settings = resolve_settings({}, env)
    assert settings.service_name == "llama"
    assert settings.resolved_exporters(env) == ("otlp",)
    assert resolve_settings({"exporters": "console"}, env).resolved_exporters(env) == ("console",)
    assert (
        resolve_settings({}, {**env, "GPULEDGER_EXPORTERS": "none"}).resolved_exporters(env) == ()
    )


@pytest.mark.parametrize(
    ("arguments", "env", "setting", "message"),
    [
        ({"gpu_count": 0}, {}, "gpu_count", "at least 1"),
        ({}, {"GPULEDGER_GPU_COUNT": "two"}, "gpu_count", "whole number"),
        ({"tracing": "maybe"}, {}, "tracing", "true/false"),
        ({}, {"GPULEDGER_EXPORTERS": "otlp,zipkin"}, "exporters", "unknown exporter 'zipkin'"),
        ({"prewarm_threshold_s": -1}, {}, "prewarm_threshold_s", "zero or more"),
        ({"log_format": "xml"}, {}, "log_format", "one of console, json"),
        ({"platform": "run pod"}, {}, "platform", "letters, digits"),
    ],
)
def test_bad_values_name_setting_value_and_source(
    arguments: dict[str, object], env: dict[str, str], setting: str, message: str
) -> None:
    """Each bad value raises ConfigError naming the setting, the value and where it came from."""
    with pytest.raises(ConfigError, match=message) as caught:
        resolve_settings(arguments, env)
    assert caught.value.setting == setting
    assert isinstance(caught.value, ValueError)
    source = "argument" if arguments else next(iter(env))
    assert caught.value.source == source
    assert source in str(caught.value)


def test_unknown_keyword_is_named_with_a_suggestion() -> None:
    """configure(gpu_cont=2) names the unknown keyword and suggests gpu_count."""
    with pytest.raises(ConfigError, match="did you mean 'gpu_count'") as caught:
        gpuledger.configure(gpu_cont=2)
    assert caught.value.setting == "gpu_cont"


def test_platform_not_in_catalogue_is_rejected() -> None:
    """A platform the pricing catalogue does not know is a ConfigError listing the known ones."""
    with pytest.raises(ConfigError, match="no such platform") as caught:
        gpuledger.configure(platform="lambda", exporters="none")
    assert "runpod" in str(caught.value)


def test_ledger_in_missing_directory_is_rejected(tmp_path: Path) -> None:
    """A ledger path whose directory does not exist fails at configure, not at first write."""
    with pytest.raises(ConfigError, match="does not exist") as caught:
        gpuledger.configure(ledger=str(tmp_path / "nope" / "ledger.db"), exporters="none")
    assert caught.value.setting == "ledger"


def test_bad_pricing_file_is_a_config_error(tmp_path: Path) -> None:
    """A broken GPULEDGER_PRICING file stops configure with every problem listed."""
    bad = tmp_path / "prices.toml"
    bad.write_text("[platforms.runpod.gpus.H100]\nper_gpu_second_usd = -1\n")
    with pytest.raises(ConfigError, match="per_gpu_second_usd") as caught:
        gpuledger.configure(pricing=str(bad), exporters="none")
    assert caught.value.setting == "pricing"


def test_pseudonym_key_implies_pseudonymisation() -> None:
    """Giving a pseudonym key turns hashing on: the user meant ids to be hidden."""
    assert resolve_settings({"pseudonym_key": "s3cret"}, {}).pseudonymize_users


def test_settings_table_lists_every_setting() -> None:
    """The README's configuration table is generated from, and covers, every setting."""
    table = settings_table()
    for setting in SETTINGS:
        assert f"`{setting.name}`" in table
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert table in readme, "README configuration table is stale: regenerate it"


@pytest.mark.parametrize(
    ("env", "platform", "endpoint", "worker", "region"),
    [
        (
            {"RUNPOD_ENDPOINT_ID": "ep1", "RUNPOD_POD_ID": "w9", "RUNPOD_DC_ID": "EU-RO-1"},
            "runpod",
            "ep1",
            "w9",
            "EU-RO-1",
        ),
        ({"RUNPOD_POD_ID": "pod3"}, "reserved", None, "pod3", None),
        (
            {"MODAL_TASK_ID": "ta-1", "MODAL_REGION": "us-east-1", "MODAL_CLOUD_PROVIDER": "AWS"},
            "modal",
            None,
            "ta-1",
            "us-east-1",
        ),
        ({"COG_PREDICT_TYPE_STUB": "predict.py:Predictor"}, "replicate", None, None, None),
        ({}, "local", None, None, None),
    ],
)
def test_platform_detection(
    env: dict[str, str],
    platform: str,
    endpoint: str | None,
    worker: str | None,
    region: str | None,
) -> None:
    """Each platform is recognised by the variables its runtime sets."""
    info = detect_platform(env)
    assert (info.platform, info.endpoint, info.worker_id, info.region) == (
        platform,
        endpoint,
        worker,
        region,
    )
    if platform == "modal":
        assert info.cloud_provider == "aws"


def test_paths_may_be_path_objects(tmp_path: Path) -> None:
    """ledger= and pricing= take a pathlib.Path as well as text (it was "expected text")."""
    settings = resolve_settings({"ledger": tmp_path / "l.db", "pricing": tmp_path / "p.toml"}, {})
    assert settings.ledger == str(tmp_path / "l.db")
    assert settings.pricing == str(tmp_path / "p.toml")
