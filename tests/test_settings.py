"""Settings: argument > environment > file > default, typed errors that name the setting, the
value and where it came from; one reader of the environment."""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import gpuledger
from gpuledger import ConfigError, PricingError
from gpuledger._platform import detect_platform
from gpuledger._pricing import load_catalogue
from gpuledger._settings import (
    PROXY_SETTINGS,
    SETTINGS,
    SIDECAR_SETTINGS,
    env_sets,
    resolve_command,
    resolve_setting,
    resolve_settings,
    set_outside_arguments,
    settings_table,
)
from gpuledger.cli._main import main
from gpuledger.ledger import default_ledger_location


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


# --- the settings file -----------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_argument_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    """A library setting: each layer wins over the ones below it, and sources say which won."""
    _write(tmp_path / "gpuledger.toml", "gpu_count = 3\ngpu = 'A100'\nregion = 'eu'\n")
    env = {"GPULEDGER_GPU_COUNT": "4", "GPULEDGER_GPU": "L4"}
    settings = resolve_settings({"gpu_count": 5}, env)
    assert (settings.gpu_count, settings.gpu, settings.region) == (5, "L4", "eu")
    file = f"file {tmp_path / 'gpuledger.toml'}"
    assert settings.sources["gpu_count"] == "argument"
    assert settings.sources["gpu"] == "GPULEDGER_GPU"
    assert settings.sources["region"] == file
    assert settings.sources["flush_policy"] == "default"
    assert resolve_settings({}, {}).gpu_count == 3


def test_a_sidecar_setting_resolves_the_same_way(tmp_path: Path) -> None:
    """The sidecar's rows: argument > GPULEDGER_SIDECAR_* > file > default."""
    _write(tmp_path / "gpuledger.toml", "sidecar_grace_s = 7\nsidecar_spool = 'file.db'\n")
    env = {"GPULEDGER_SIDECAR_GRACE": "5", "GPULEDGER_SIDECAR_SPOOL": "env.db"}
    resolved = resolve_command(SIDECAR_SETTINGS, {"sidecar_grace_s": "3"}, env)
    assert resolved.values["sidecar_grace_s"] == 3.0
    assert resolved.values["sidecar_spool"] == "env.db"
    assert resolved.values["sidecar_synchronous"] == "normal"
    assert resolve_command(SIDECAR_SETTINGS, {}, {}).values["sidecar_grace_s"] == 7.0
    assert resolve_command(SIDECAR_SETTINGS, {}, env).sources["sidecar_grace_s"] == (
        "GPULEDGER_SIDECAR_GRACE"
    )
    (tmp_path / "gpuledger.toml").unlink()
    assert resolve_command(SIDECAR_SETTINGS, {}, {}).values["sidecar_grace_s"] == 2.0


def test_opentelemetry_variables_beat_the_file_and_are_left_to_the_reader(tmp_path: Path) -> None:
    """sidecar_otlp_endpoint in the file is used unless OTEL_EXPORTER_OTLP_*ENDPOINT is set; then
    the value is None, for the sidecar to read the variable as OpenTelemetry defines it."""
    _write(tmp_path / "gpuledger.toml", "sidecar_otlp_endpoint = 'http://file:4318'\n")
    resolved = resolve_command(SIDECAR_SETTINGS, {}, {})
    assert resolved.values["sidecar_otlp_endpoint"] == "http://file:4318"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"}
    resolved = resolve_command(SIDECAR_SETTINGS, {}, env)
    assert resolved.values["sidecar_otlp_endpoint"] is None
    assert resolved.sources["sidecar_otlp_endpoint"] == "OTEL_EXPORTER_OTLP_ENDPOINT"
    given = {"sidecar_otlp_endpoint": "http://arg:4318"}
    assert resolve_command(SIDECAR_SETTINGS, given, env).values["sidecar_otlp_endpoint"] == (
        "http://arg:4318"
    )


def test_which_file_wins(tmp_path: Path) -> None:
    """GPULEDGER_CONFIG > ./gpuledger.toml > [tool.gpuledger] in ./pyproject.toml."""
    _write(tmp_path / "pyproject.toml", "[tool.gpuledger]\ngpu = 'from-pyproject'\n")
    assert resolve_settings({}, {}).gpu == "from-pyproject"
    assert resolve_settings({}, {}).sources["gpu"] == (
        f"file {tmp_path / 'pyproject.toml'} [tool.gpuledger]"
    )
    _write(tmp_path / "gpuledger.toml", "gpu = 'from-local'\n")
    assert resolve_settings({}, {}).gpu == "from-local"
    named = _write(tmp_path / "elsewhere.toml", "gpu = 'from-named'\n")
    assert resolve_settings({}, {"GPULEDGER_CONFIG": str(named)}).gpu == "from-named"
    # The first found wins whole: no key falls through to the next file.
    _write(tmp_path / "gpuledger.toml", "region = 'eu'\n")
    assert resolve_settings({}, {}).gpu is None


def test_a_named_pyproject_gives_its_tool_table(tmp_path: Path) -> None:
    """GPULEDGER_CONFIG may name a pyproject.toml: its [tool.gpuledger] table is read."""
    project = tmp_path / "project"
    project.mkdir()
    _write(project / "pyproject.toml", "[project]\nname = 'x'\n[tool.gpuledger]\ngpu = 'H100'\n")
    env = {"GPULEDGER_CONFIG": str(project / "pyproject.toml")}
    assert resolve_settings({}, env).gpu == "H100"
    _write(project / "pyproject.toml", "[project]\nname = 'gpuledger-user'\n")
    with pytest.raises(ConfigError, match=r"has no \[tool.gpuledger\] table"):
        resolve_settings({}, env)


@pytest.mark.parametrize(
    "pyproject",
    [
        "[project]\nname = 'app'\n",
        "[project]\nname = 'app'\ndependencies = ['gpuledger>=0.1']\n[tool.ruff]\nfix = true\n",
    ],
    ids=["no mention", "a dependency"],
)
def test_a_pyproject_without_the_table_is_no_settings_file(tmp_path: Path, pyproject: str) -> None:
    """A project's pyproject.toml without [tool.gpuledger] changes nothing."""
    _write(tmp_path / "pyproject.toml", pyproject)
    settings = resolve_settings({}, {})
    assert settings.sources == resolve_settings({}, {"GPULEDGER_CONFIG": ""}).sources
    assert set(settings.sources.values()) == {"default"}


@pytest.mark.parametrize(
    ("toml", "keyword", "value"),
    [
        ("gpu_count = 2", "gpu_count", 2),
        ("gpu_count = '2'", "gpu_count", 2),
        ("tracing = false", "tracing", False),
        ("tracing = 'off'", "tracing", False),
        ("gpu_sample_hz = 0.5", "gpu_sample_hz", 0.5),
        ("gpu_sample_hz = '0.5'", "gpu_sample_hz", 0.5),
        ("flush_wait_s = 2", "flush_wait_s", 2.0),
        ("exporters = ['console', 'otlp']", "exporters", ("console", "otlp")),
        ("exporters = 'console,otlp'", "exporters", ("console", "otlp")),
    ],
)
def test_a_file_value_is_a_toml_value_or_the_environments_text(
    tmp_path: Path, toml: str, keyword: str, value: object
) -> None:
    """The row's own parser reads the file: a typed TOML value, or the text the variable takes."""
    _write(tmp_path / "gpuledger.toml", toml + "\n")
    assert getattr(resolve_settings({}, {}), keyword) == value


def test_proxy_paths_from_a_list_or_a_comma_list(tmp_path: Path) -> None:
    """proxy_unmetered_paths: a TOML list in the file, a comma list in the environment."""
    _write(tmp_path / "gpuledger.toml", "proxy_unmetered_paths = ['/health', '/']\n")
    assert resolve_command(PROXY_SETTINGS, {}, {}).values["proxy_unmetered_paths"] == (
        "/health",
        "/",
    )
    env = {"GPULEDGER_PROXY_UNMETERED_PATHS": "/a, /b"}
    assert resolve_command(PROXY_SETTINGS, {}, env).values["proxy_unmetered_paths"] == ("/a", "/b")


def test_keys_of_other_commands_are_known_but_their_values_not_checked(tmp_path: Path) -> None:
    """One file serves the worker, the sidecar and the proxy: the worker does not read (or
    reject) a proxy value, and the proxy rejects it naming the file and the key."""
    _write(tmp_path / "gpuledger.toml", "gpu = 'H100'\nproxy_ready_timeout_s = 0\n")
    assert resolve_settings({}, {}).gpu == "H100"
    with pytest.raises(ConfigError, match="above 0") as caught:
        resolve_command(PROXY_SETTINGS, {}, {})
    assert caught.value.setting == "proxy_ready_timeout_s"
    assert caught.value.source == f"file {tmp_path / 'gpuledger.toml'}"


def test_configure_does_not_take_a_command_setting() -> None:
    """configure() takes the library's keywords only; sidecar_listen is the sidecar's."""
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve_settings({"sidecar_listen": "127.0.0.1:1"}, {})


def test_set_outside_arguments_sees_the_file(tmp_path: Path) -> None:
    """A platform adapter's default steps aside for the environment and for the file alike."""
    assert not set_outside_arguments("flush_policy", {})
    assert set_outside_arguments("flush_policy", {"GPULEDGER_FLUSH_POLICY": "periodic"})
    _write(tmp_path / "gpuledger.toml", "flush_policy = 'periodic'\n")
    assert set_outside_arguments("flush_policy", {})
    assert not env_sets("flush_policy", {})


def test_one_setting_alone(tmp_path: Path) -> None:
    """resolve_setting reads one row, so a bad value elsewhere does not stop a command that
    needs only the ledger; the ledger's default location and the pricing file come from it."""
    _write(tmp_path / "gpuledger.toml", "ledger = 'from-file.db'\ngpu_count = 0\n")
    assert resolve_setting("ledger", {}) == ("from-file.db", f"file {tmp_path / 'gpuledger.toml'}")
    assert default_ledger_location() == "from-file.db"
    _write(tmp_path / "gpuledger.toml", "pricing = 'missing.toml'\n")
    with pytest.raises(PricingError, match=r"missing\.toml \(from file .*gpuledger\.toml\)"):
        load_catalogue()


# What resolving costs, seen from a fresh interpreter: the files opened and whether the TOML
# parser was imported (an audit hook sees every open()).
_PROBE = """
import json, sys
from gpuledger._settings import resolve_settings
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].endswith(".toml"):
        opened.append(args[0])
sys.addaudithook(hook)
settings = resolve_settings({})
print(json.dumps({"opened": opened, "tomllib": "tomllib" in sys.modules,
                  "gpu_count": settings.gpu_count}))
"""


def _probe(cwd: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULEDGER_")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_without_a_file_resolving_costs_two_opens_and_no_toml_parser(tmp_path: Path) -> None:
    """No file: two failed opens, tomllib never imported (cold starts); a pyproject that does
    not mention gpuledger is not parsed either."""
    assert _probe(tmp_path) == {
        "opened": ["gpuledger.toml", "pyproject.toml"],
        "tomllib": False,
        "gpu_count": 1,
    }
    _write(tmp_path / "pyproject.toml", "[project]\nname = 'app'\n")
    assert _probe(tmp_path)["tomllib"] is False


def test_the_file_is_read_once_per_resolution(tmp_path: Path) -> None:
    """Several settings from the file: it is opened once, not once per setting."""
    _write(tmp_path / "gpuledger.toml", "gpu_count = 2\ngpu = 'H100'\nregion = 'eu'\n")
    assert _probe(tmp_path) == {"opened": ["gpuledger.toml"], "tomllib": True, "gpu_count": 2}


def test_table_defaults_are_the_components_defaults() -> None:
    """The table's defaults for the sidecar and the proxy are theirs (the CLI passes the
    table's; a test building a Sidecar directly gets its own)."""
    from gpuledger import sidecar
    from gpuledger.ledger import DEFAULT_LEDGER
    from gpuledger.sidecar import proxy

    defaults = {row.name: row.default() for row in (*SIDECAR_SETTINGS, *PROXY_SETTINGS)}
    assert defaults["sidecar_listen"] == sidecar.DEFAULT_LISTEN
    assert defaults["sidecar_spool"] == sidecar.DEFAULT_SPOOL
    assert defaults["sidecar_grace_s"] == sidecar.DEFAULT_GRACE_S
    assert defaults["sidecar_drain_timeout_s"] == sidecar.DEFAULT_DRAIN_TIMEOUT_S
    assert defaults["sidecar_max_body"] == sidecar.DEFAULT_MAX_BODY
    assert defaults["ledger"] == DEFAULT_LEDGER
    config = proxy.proxy_config(upstream="127.0.0.1:1")
    assert defaults["proxy_listen"] == f"{config.listen_host}:{config.listen_port}"
    assert defaults["proxy_ready_timeout_s"] == config.ready_timeout_s
    assert defaults["proxy_handler_name"] == config.handler_name
    assert (
        inspect.signature(proxy.proxy_config).parameters["listen"].default
        == (defaults["proxy_listen"])
    )


# --- the commands ----------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "rows"), [("sidecar", "SIDECAR"), ("proxy", "PROXY")])
def test_help_shows_each_options_variable_file_key_and_default(command: str, rows: str) -> None:
    """`gpuledger sidecar --help` and `gpuledger proxy --help` are generated from the rows."""
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=2000)
    assert result.exit_code == 0, result.output
    table = SIDECAR_SETTINGS if rows == "SIDECAR" else PROXY_SETTINGS
    for row in table:
        assert f"file: {row.name};" in result.output
        for variable in row.env:
            assert variable in result.output
        assert f"default: {row.default_doc.replace('`', '')}]" in result.output


def test_the_sidecar_takes_its_listen_address_from_the_file(tmp_path: Path) -> None:
    """A settings file's sidecar_listen reaches `gpuledger sidecar`; beyond loopback without a
    token it is refused, exit 1 (not the command line's mistake), naming the file."""
    _write(tmp_path / "gpuledger.toml", "sidecar_listen = '0.0.0.0:0'\nsidecar_gpu_sample_hz = 0\n")
    result = CliRunner().invoke(main, ["sidecar"])
    assert result.exit_code == 1, result.output
    assert f"(from file {tmp_path / 'gpuledger.toml'})" in result.output
    assert "needs a token" in result.output
    result = CliRunner().invoke(main, ["sidecar", "--listen", "0.0.0.0:0"])
    assert result.exit_code == 2, result.output
    assert "'--listen'" in result.output


def test_the_proxy_takes_its_upstream_from_the_file(tmp_path: Path) -> None:
    """proxy_upstream in [tool.gpuledger] stands for --upstream; without either, a usage error."""
    result = CliRunner().invoke(main, ["proxy"])
    assert result.exit_code == 2
    assert "Missing option '--upstream'" in result.output
    assert "GPULEDGER_PROXY_UPSTREAM" in result.output
    _write(
        tmp_path / "pyproject.toml",
        "[tool.gpuledger]\nproxy_upstream = '127.0.0.1:1'\nproxy_listen = '192.0.2.1:8080'\n",
    )
    result = CliRunner().invoke(main, ["proxy"])
    assert result.exit_code == 1, result.output
    assert "setting 'proxy_listen' = '192.0.2.1:8080' (from file" in result.output
    assert "pyproject.toml [tool.gpuledger])" in result.output


def test_a_bad_settings_file_fails_any_command_without_a_traceback(tmp_path: Path) -> None:
    """`gpuledger report` under a broken gpuledger.toml: exit 1, the file named."""
    _write(tmp_path / "gpuledger.toml", "ledger = \n")
    result = CliRunner().invoke(main, ["report"])
    assert result.exit_code == 1
    assert f"(from file {tmp_path / 'gpuledger.toml'}): not valid TOML" in result.output


# --- one reader of the environment -----------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT_READERS = {
    # The one accessor: environment(), and the settings' own resolution.
    "agent/_settings.py",
}
"""The modules allowed to touch ``os.environ``; every other reads through ``_settings``."""


def _environment_reads(source: str) -> list[int]:
    """The lines of ``source`` that read the process environment through ``os``."""
    tree = ast.parse(source)
    os_names = {"os"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_names |= {
                alias.asname for alias in node.names if alias.name == "os" and alias.asname
            }
    readers = {"environ", "environb", "getenv", "getenvb"}
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in readers
            and isinstance(node.value, ast.Name)
            and node.value.id in os_names
        ) or (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in readers for alias in node.names)
        ):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import os\nos.environ.get('X')\n", [2]),
        ("import os as o\nx = o.getenv('X')\n", [2]),
        ("from os import environ\n", [1]),
        ("import os\nos.path.join('a')\nenviron = {}\n", []),
    ],
)
def test_the_environment_reader_check_finds_reads(source: str, found: list[int]) -> None:
    """The check below sees os.environ, os.getenv, an alias and a from-import."""
    assert _environment_reads(source) == found


def test_no_module_but_settings_reads_the_environment() -> None:
    """Issue 12: "no other module reads the environment"; they call _settings.environment()."""
    readers = {}
    for folder in ("agent", "exporters", "instrumentation"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = _environment_reads(path.read_text(encoding="utf-8"))
            if lines:
                readers[str(path.relative_to(ROOT))] = lines
    unexpected = {path: lines for path, lines in readers.items() if path not in ENVIRONMENT_READERS}
    assert unexpected == {}, "read the environment through gpuledger._settings.environment()"
    stale = sorted(ENVIRONMENT_READERS - set(readers) - {"agent/_settings.py"})
    assert stale == [], "these no longer read os.environ: take them off ENVIRONMENT_READERS"
