"""One table of settings, each resolved as: explicit argument > environment > default.

Every setting has a keyword (the name ``configure()`` takes), the environment variables that can
set it (``GPULEDGER_*``, and the standard ``OTEL_*`` ones where OpenTelemetry defines one), a
parser that turns text into the typed value and rejects what it cannot use, and a default. A bad
value raises :class:`~gpuledger.ConfigError` naming the setting, the value and where it came from.
The README's configuration table is generated from the same rows (``settings_table()``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Final

from gpuledger._errors import ConfigError

__all__ = ["SETTINGS", "Settings", "env_sets", "resolve_settings", "settings_table"]

EXPORTER_NAMES: Final = ("otlp", "console", "prometheus")
LOG_FORMATS: Final = ("console", "json")
FLUSH_POLICIES: Final = ("periodic", "invocation", "adaptive")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
OTLP_ENDPOINT_VARS: Final = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


class _Invalid(ValueError):
    """Raised by a parser; turned into a ConfigError that names the setting."""


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise _Invalid("must not be empty")
    return value.strip()


def _location(value: object) -> str:
    """A path or URL: text, or a path object (``pathlib.Path``)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
        if isinstance(value, bytes):
            raise _Invalid("expected a text path, got a bytes path")
    return _text(value)


def _optional_location(value: object) -> str | None:
    return None if value is None else _location(value)


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    raise _Invalid("expected true/false (1/0, yes/no, on/off)")


def _positive_int(value: object) -> int:
    if isinstance(value, bool):
        raise _Invalid("expected a whole number, got a bool")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise _Invalid("expected a whole number") from None
    if not isinstance(value, int):
        raise _Invalid(f"expected a whole number, got {type(value).__name__}")
    if value < 1:
        raise _Invalid("must be at least 1")
    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool):
        raise _Invalid("expected a number of seconds, got a bool")
    if isinstance(value, str):
        try:
            value = float(value.strip().removesuffix("s"))
        except ValueError:
            raise _Invalid("expected a number of seconds") from None
    if not isinstance(value, int | float):
        raise _Invalid(f"expected a number of seconds, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise _Invalid("must be a finite number of seconds, zero or more")
    return number


def _rate_hz(value: object) -> float:
    if isinstance(value, bool):
        raise _Invalid("expected a rate in Hz, got a bool")
    if isinstance(value, str):
        try:
            value = float(value.strip().lower().removesuffix("hz"))
        except ValueError:
            raise _Invalid("expected a rate in Hz, e.g. 10") from None
    if not isinstance(value, int | float):
        raise _Invalid(f"expected a rate in Hz, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or not 0 <= number <= 1000:
        raise _Invalid("must be between 0 (off) and 1000 Hz")
    return number


def _port(value: object) -> int:
    number = _positive_int(value)
    if number > 65535:
        raise _Invalid("a TCP port is at most 65535")
    return number


def _sidecar_url(value: object) -> str | None:
    if value is None:
        return None
    text = _text(value)
    from gpuledger.sidecar import parse_sidecar_url  # noqa: PLC0415

    try:
        parse_sidecar_url(text)
    except ValueError as error:
        raise _Invalid(str(error)) from None
    return text if "://" in text else f"http://{text}"


def _choice(options: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value).lower()
        if text not in options:
            raise _Invalid(f"expected one of {', '.join(options)}")
        return text

    return parse


def _platform(value: object) -> str:
    text = _text(value).lower()
    if not text.replace("_", "").replace("-", "").isalnum():
        raise _Invalid("a platform name is letters, digits, '-' and '_'")
    # Whether the pricing catalogue knows it is checked once the catalogue is loaded.
    return text


def _exporters(value: object) -> tuple[str, ...] | None:
    """``None`` means auto: OTLP when an OTLP endpoint is set in the environment."""
    if isinstance(value, list | tuple):
        names = [_text(item).lower() for item in value]
    else:
        text = _text(value).lower()
        if text == "auto":
            return None
        names = [] if text == "none" else [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in EXPORTER_NAMES:
            raise _Invalid(
                f"unknown exporter {name!r}; expected some of {', '.join(EXPORTER_NAMES)}"
            )
    return tuple(dict.fromkeys(names))


def _any(value: object) -> object:
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One row of the settings table."""

    name: str
    env: tuple[str, ...]
    parse: Callable[[object], Any]
    default: Callable[[], Any]
    doc: str
    default_doc: str


def _const(value: object) -> Callable[[], object]:
    return lambda: value


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(
        "service_name",
        ("GPULEDGER_SERVICE_NAME", "OTEL_SERVICE_NAME"),
        _text,
        _const(None),
        "OpenTelemetry `service.name`.",
        "the platform's endpoint/app name, else `unknown_service`",
    ),
    Setting(
        "platform",
        ("GPULEDGER_PLATFORM",),
        _platform,
        _const(None),
        "Where requests are priced: `runpod`, `replicate`, `modal`, `banana`, `reserved`, "
        "`local`, or a platform from your pricing file.",
        "detected from the platform's environment, else `local`",
    ),
    Setting(
        "gpu",
        ("GPULEDGER_GPU",),
        _optional_text,
        _const(None),
        "GPU model held by each worker, e.g. `H100`; prices are looked up by it.",
        "detected through NVML (e.g. `NVIDIA H100 80GB HBM3` is `H100`); else unknown, and so "
        "is the cost",
    ),
    Setting(
        "gpu_count",
        ("GPULEDGER_GPU_COUNT",),
        _positive_int,
        _const(1),
        "GPUs each worker holds; billed GPU seconds are wall time x this.",
        "the GPUs NVML shows this process (honouring `CUDA_VISIBLE_DEVICES`), else `1`",
    ),
    Setting(
        "gpu_metering",
        ("GPULEDGER_GPU_METERING",),
        _choice(("auto", "off")),
        _const("auto"),
        "`auto`: meter busy GPU seconds, energy and memory through NVML when a driver and GPU "
        "are there (the model and count above are then detected too); `off`: never load NVML.",
        "`auto`",
    ),
    Setting(
        "gpu_sample_hz",
        ("GPULEDGER_GPU_SAMPLE_HZ",),
        _rate_hz,
        _const(0.0),
        "Rate of the background NVML sampler. `0`: no sampler; the energy counter is read at "
        "each invocation's start and end (one NVML call per GPU on the request path) and peak "
        "memory is unknown. Above 0: no NVML call on the request path, peak memory measured.",
        "`0` (off)",
    ),
    Setting(
        "gpu_settle_s",
        ("GPULEDGER_GPU_SETTLE",),
        _seconds,
        _const(1.0),
        "Longest the writer waits for the driver's utilisation samples to cover an "
        "invocation's end before measuring it with what there is (said in `gpu_unmeasured`).",
        "`1`",
    ),
    Setting(
        "ledger",
        ("GPULEDGER_LEDGER",),
        _location,
        _const("gpuledger.db"),
        "Where every invocation is written: a SQLite file path (or `sqlite:///` URL), or a "
        "`postgresql://user@host/db` URL for a ledger shared by a fleet (extra `postgres`).",
        "`gpuledger.db` in the working directory",
    ),
    Setting(
        "sidecar",
        ("GPULEDGER_SIDECAR",),
        _sidecar_url,
        _const(None),
        "Send finished invocations (and start notices) to a `gpuledger sidecar` at this URL, "
        "e.g. `http://127.0.0.1:4319`, instead of writing the ledger here; if it cannot be "
        "reached, the local ledger takes them and a log line says so once.",
        "unset: the ledger is written in-process",
    ),
    Setting(
        "sidecar_token",
        ("GPULEDGER_SIDECAR_TOKEN",),
        _optional_text,
        _const(None),
        "The sidecar's shared token, when it listens beyond loopback.",
        "unset",
    ),
    Setting(
        "flush_policy",
        ("GPULEDGER_FLUSH_POLICY",),
        _choice(FLUSH_POLICIES),
        _const("periodic"),
        "When finished invocations leave the process: `periodic` (every 200 ms, in batches), "
        "`invocation` (the end of each invocation waits until its record is written or "
        "acknowledged, up to `flush_wait_s`), `adaptive` (per invocation while they are sparse, "
        "periodic once more than 10 came in the last minute). See README, Flush before freeze.",
        "`periodic`",
    ),
    Setting(
        "flush_wait_s",
        ("GPULEDGER_FLUSH_WAIT",),
        _seconds,
        _const(1.0),
        "Longest an invocation's end waits for its record under the `invocation` and "
        "`adaptive` flush policies.",
        "`1`",
    ),
    Setting(
        "exporters",
        ("GPULEDGER_EXPORTERS",),
        _exporters,
        _const(None),
        "Telemetry exporters: comma list of `otlp`, `console`, `prometheus` (metrics only: "
        "an HTTP `/metrics` endpoint for Prometheus to scrape; extra `prometheus`); `none`; "
        "or `auto`.",
        "`auto`: `otlp` when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces/metrics one) is set",
    ),
    Setting(
        "prometheus_host",
        ("GPULEDGER_PROMETHEUS_HOST",),
        _text,
        _const("127.0.0.1"),
        "Address the `prometheus` exporter's `/metrics` endpoint binds; `0.0.0.0` to be scraped "
        "from other hosts (it has no authentication).",
        "`127.0.0.1` (loopback only)",
    ),
    Setting(
        "prometheus_port",
        ("GPULEDGER_PROMETHEUS_PORT",),
        _port,
        _const(9464),
        "TCP port of the `prometheus` exporter's `/metrics` endpoint.",
        "`9464`",
    ),
    Setting(
        "tracing",
        ("GPULEDGER_TRACING",),
        _bool,
        _const(True),
        "Emit a span per invocation. Off: ledger (and metrics) only, the cheapest mode.",
        "`true`",
    ),
    Setting(
        "metrics",
        ("GPULEDGER_METRICS",),
        _bool,
        _const(True),
        "Record the OpenTelemetry metrics (off the request path).",
        "`true`",
    ),
    Setting(
        "pseudonymize_users",
        ("GPULEDGER_PSEUDONYMIZE_USERS",),
        _bool,
        _const(False),
        "Store and emit a keyed hash of each user id instead of the id (`enduser.pseudo.id`).",
        "`false`",
    ),
    Setting(
        "pseudonym_key",
        ("GPULEDGER_PSEUDONYM_KEY",),
        _optional_text,
        _const(None),
        "Secret key for the user-id hash (HMAC-SHA256). Without it the hash is unkeyed and "
        "can be reversed by guessing ids; a warning says so.",
        "unset",
    ),
    Setting(
        "user_id_on_metrics",
        ("GPULEDGER_USER_ID_ON_METRICS",),
        _bool,
        _const(False),
        "Put user and tenant ids on metric attributes (mind the cardinality).",
        "`false`",
    ),
    Setting(
        "pricing",
        ("GPULEDGER_PRICING",),
        _optional_location,
        _const(None),
        "A TOML pricing file that overrides or extends the shipped catalogue.",
        "unset",
    ),
    Setting(
        "prewarm_threshold_s",
        ("GPULEDGER_PREWARM_THRESHOLD",),
        _seconds,
        _const(10.0),
        "If init ended more than this many seconds before the first request, the worker "
        "was pre-warmed and that request is not cold.",
        "`10`",
    ),
    Setting(
        "max_pending",
        ("GPULEDGER_MAX_PENDING",),
        _positive_int,
        _const(1_000_000),
        "Finished invocations waiting for the background writer; past it new ones are "
        "counted and logged as dropped, and the handler is never blocked.",
        "`1000000`",
    ),
    Setting(
        "flush_timeout_s",
        ("GPULEDGER_FLUSH_TIMEOUT",),
        _seconds,
        _const(5.0),
        "Longest `flush()`/`shutdown()` (and the exit-time flush) waits.",
        "`5`",
    ),
    Setting(
        "endpoint",
        ("GPULEDGER_ENDPOINT",),
        _optional_text,
        _const(None),
        "Endpoint/app name recorded on each invocation.",
        "from the platform (e.g. `RUNPOD_ENDPOINT_ID`)",
    ),
    Setting(
        "worker_id",
        ("GPULEDGER_WORKER_ID",),
        _optional_text,
        _const(None),
        "This worker's id (`faas.instance`).",
        "from the platform, else `host:pid`",
    ),
    Setting(
        "region",
        ("GPULEDGER_REGION",),
        _optional_text,
        _const(None),
        "`cloud.region`.",
        "from the platform (e.g. `MODAL_REGION`)",
    ),
    Setting(
        "log_format",
        ("GPULEDGER_LOG_FORMAT",),
        _choice(LOG_FORMATS),
        _const("console"),
        "The agent's own log lines: `console` (readable) or `json`.",
        "`console`",
    ),
    Setting(
        "log_level",
        ("GPULEDGER_LOG_LEVEL",),
        _choice(LOG_LEVELS),
        _const("warning"),
        "The agent's own log level; quiet by default.",
        "`warning`",
    ),
    Setting(
        "strict",
        ("GPULEDGER_STRICT",),
        _bool,
        _const(False),
        "Re-raise the agent's internal failures instead of containing them (for tests).",
        "`false`",
    ),
    Setting(
        "tracer_provider",
        (),
        _any,
        _const(None),
        "An OpenTelemetry TracerProvider to use (argument only).",
        "the global one if the application set it, else gpuledger's own",
    ),
    Setting(
        "meter_provider",
        (),
        _any,
        _const(None),
        "An OpenTelemetry MeterProvider to use (argument only).",
        "the global one if the application set it, else gpuledger's own",
    ),
    Setting(
        "nvml",
        (),
        _any,
        _const(None),
        "The NVML API object (argument only; tests pass a replay of a recording).",
        "the `pynvml` module",
    ),
    Setting(
        "clock",
        (),
        _any,
        _const(None),
        "A clock with `time_ns()` and `perf_counter_ns()` (argument only; for tests).",
        "the system clock",
    ),
)

_BY_NAME: Final = {setting.name: setting for setting in SETTINGS}


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The resolved settings; see ``SETTINGS`` for what each one means."""

    service_name: str | None
    platform: str | None
    gpu: str | None
    gpu_count: int
    gpu_metering: str
    gpu_sample_hz: float
    gpu_settle_s: float
    ledger: str
    sidecar: str | None
    sidecar_token: str | None
    flush_policy: str
    flush_wait_s: float
    exporters: tuple[str, ...] | None
    prometheus_host: str
    prometheus_port: int
    tracing: bool
    metrics: bool
    pseudonymize_users: bool
    pseudonym_key: str | None
    user_id_on_metrics: bool
    pricing: str | None
    prewarm_threshold_s: float
    max_pending: int
    flush_timeout_s: float
    endpoint: str | None
    worker_id: str | None
    region: str | None
    log_format: str
    log_level: str
    strict: bool
    tracer_provider: Any
    meter_provider: Any
    nvml: Any
    clock: Any
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Where each setting's value came from: ``argument``, an env var name, or ``default``."""

    def resolved_exporters(self, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """The exporters to run: the explicit list, or ``auto``'s choice from the environment."""
        if self.exporters is not None:
            return self.exporters
        env = os.environ if environ is None else environ
        return ("otlp",) if any(env.get(name) for name in OTLP_ENDPOINT_VARS) else ()


def env_sets(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment gives the setting ``name`` a value (any of its variables)."""
    env = os.environ if environ is None else environ
    return any(env.get(variable, "").strip() for variable in _BY_NAME[name].env)


def resolve_settings(
    arguments: Mapping[str, object], environ: Mapping[str, str] | None = None
) -> Settings:
    """Resolve every setting: ``arguments`` > ``environ`` (default ``os.environ``) > default.

    An unknown keyword, or a value its parser rejects, raises ConfigError.
    """
    env = os.environ if environ is None else environ
    unknown = sorted(set(arguments) - set(_BY_NAME))
    if unknown:
        import difflib  # noqa: PLC0415  (only on this error path)

        close = difflib.get_close_matches(unknown[0], _BY_NAME, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        known = ", ".join(sorted(_BY_NAME))
        raise ConfigError(
            unknown[0], arguments[unknown[0]], f"unknown setting; {hint}known: {known}"
        )
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        raw: object
        if setting.name in arguments and arguments[setting.name] is not None:
            raw, source = arguments[setting.name], "argument"
        else:
            found = next((name for name in setting.env if env.get(name, "").strip()), None)
            if found is None:
                values[setting.name] = setting.default()
                sources[setting.name] = "default"
                continue
            raw, source = env[found], found
        try:
            values[setting.name] = setting.parse(raw)
        except _Invalid as invalid:
            raise ConfigError(setting.name, raw, str(invalid), source) from None
        sources[setting.name] = source
    if values["pseudonym_key"] is not None and not values["pseudonymize_users"]:
        # A key given means the user wants hashing; not hashing would leak ids they meant to hide.
        values["pseudonymize_users"] = True
    return Settings(**values, sources=sources)  # type: ignore[arg-type]


def settings_table() -> str:
    """The settings as a Markdown table (the README's configuration section)."""
    lines = [
        "| keyword | environment | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for setting in SETTINGS:
        env = ", ".join(f"`{name}`" for name in setting.env) or "(argument only)"
        lines.append(f"| `{setting.name}` | {env} | {setting.default_doc} | {setting.doc} |")
    return "\n".join(lines)
