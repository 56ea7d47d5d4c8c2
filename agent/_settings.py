"""One table of settings, each resolved as: explicit argument > environment > file > default.

Every setting has a keyword (the name ``configure()`` takes, or for ``gpuledger sidecar`` and
``gpuledger proxy`` a ``sidecar_``/``proxy_`` name), the environment variables that can set it
(``GPULEDGER_*``, and the standard ``OTEL_*`` ones where OpenTelemetry defines one), a parser that
turns text or a TOML value into the typed value and rejects what it cannot use, and a default.
The file is the settings file (``GPULEDGER_CONFIG``, ``./gpuledger.toml`` or ``[tool.gpuledger]``
in ``./pyproject.toml``; see ``_settings_file``), keyed by the same keywords. A bad value raises
:class:`~gpuledger.ConfigError` naming the setting, the value and where it came from (an
argument, the variable, the file). The README's configuration table, and the two commands'
``--help``, are generated from the same rows (``settings_table()``).

No other module reads the process environment: they call :func:`environment` (platform
detection, OpenTelemetry's own ``OTEL_*``) or resolve a setting here (``tests/test_settings.py``
keeps it so).

Why one module: it is one table. The rows are most of it, and a row is read with its parser and
the resolution that applies it; split into parts, the table would be read in several places
again, which is what issue 12 undid. Only the file's discovery and reading, a concern of its
own, is apart (``_settings_file``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Final

from gpuledger._errors import ConfigError
from gpuledger._location import MASK, mask_secrets
from gpuledger._settings_file import CONFIG_ENV, SettingsFile, read_settings_file

__all__ = [
    "CONFIG_ENV",
    "PROXY_SETTINGS",
    "SETTINGS",
    "SIDECAR_SETTINGS",
    "CommandSettings",
    "Setting",
    "Settings",
    "env_sets",
    "environment",
    "resolve_command",
    "resolve_setting",
    "resolve_settings",
    "set_outside_arguments",
    "setting",
    "settings_table",
]

EXPORTER_NAMES: Final = ("otlp", "console", "prometheus")
LOG_FORMATS: Final = ("console", "json")
WORKER_STARTS: Final = ("auto", "process", "container")
ATTRIBUTIONS: Final = ("separate", "share", "cause")
"""``gpuledger.billing.POLICIES`` (the core does not import the billing room at start)."""
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


class _Choice:
    """One of ``options``, in any case; ``options`` is there for the command line to offer."""

    __slots__ = ("options",)

    def __init__(self, options: tuple[str, ...]) -> None:
        self.options = options

    def __call__(self, value: object) -> str:
        text = _text(value).lower()
        if text not in self.options:
            raise _Invalid(f"expected one of {', '.join(self.options)}")
        return text


def _choice(options: tuple[str, ...]) -> Callable[[object], str]:
    return _Choice(options)


def _listen_address(value: object) -> str:
    """``HOST:PORT`` for the sidecar to bind (whether it may be reached is checked at start)."""
    text = _text(value)
    from gpuledger.sidecar import parse_listen  # noqa: PLC0415  (only for the sidecar's rows)

    try:
        parse_listen(text)
    except ValueError as error:
        raise _Invalid(str(error)) from None
    return text


def _optional_positive_number(value: object) -> float | None:
    """A positive amount (CPU cores, GiB), or None (unset)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Invalid("expected a number, got a bool")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _Invalid("expected a number, e.g. 4 or 0.5") from None
    if not isinstance(value, int | float):
        raise _Invalid(f"expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise _Invalid("must be a finite number above 0")
    return number


def _positive_seconds(value: object) -> float:
    number = _seconds(value)
    if number == 0:
        raise _Invalid("must be above 0 seconds")
    return number


def _paths(value: object) -> tuple[str, ...]:
    """URL paths: a TOML list, or a comma list in the environment."""
    if isinstance(value, list | tuple):
        paths = [_text(item) for item in value]
    else:
        paths = [part.strip() for part in _text(value).split(",") if part.strip()]
    for path in paths:
        if not path.startswith("/"):
            raise _Invalid(f"{path!r}: a path starts with /")
    return tuple(dict.fromkeys(paths))


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


def _budgets(value: object) -> tuple[Any, ...]:
    """Spend budgets (``_budgets``): a list of tables, or its JSON text from the environment."""
    from gpuledger._budgets import BudgetError, parse_budgets  # noqa: PLC0415  (when set)

    try:
        return parse_budgets(value)
    except BudgetError as error:
        raise _Invalid(str(error)) from None


def _any(value: object) -> object:
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One row of the settings table."""

    name: str
    """The keyword: ``configure()``'s, or the key in a settings file."""
    env: tuple[str, ...]
    """The environment variables that set it, the first set one winning."""
    parse: Callable[[object], Any]
    """Text (the environment), a TOML value (the file) or an argument -> the typed value."""
    default: Callable[[], Any]
    doc: str
    """What it means, in Markdown (the README; ``--help`` drops the backticks)."""
    default_doc: str
    env_is_standard: bool = False
    """``env`` are OpenTelemetry's own variables, which the consumer reads as OpenTelemetry
    defines them: when one is set the setting is None (its source that variable), and the file
    and the default step aside."""
    in_file: bool = True
    """False for objects, which only an argument can give."""


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
        "cpu",
        ("GPULEDGER_CPU",),
        _optional_positive_number,
        _const(None),
        "Physical CPU cores each worker reserves (Modal's `cpu=`), e.g. `4`; where the platform "
        "charges CPU, the worker is billed for this or the platform's minimum, whichever is "
        "higher, over the same time as its GPUs.",
        "unset: the platform's minimum (Modal: 0.125 cores)",
    ),
    Setting(
        "memory_gib",
        ("GPULEDGER_MEMORY_GIB",),
        _optional_positive_number,
        _const(None),
        "Memory each worker reserves, in GiB (Modal's `memory=` is MiB: 16384 MiB is `16`); "
        "billed as `cpu` is, where the platform charges memory.",
        "unset: the platform's minimum (Modal: 0.125 GiB)",
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
        "Where every invocation is written (by the worker, or by `gpuledger sidecar`; `gpuledger "
        "report` and `compare` read it): a SQLite file path (or `sqlite:///` URL), or a "
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
        "reached, the journal (`journal`) keeps them until it answers, and a log line says so "
        "once.",
        "unset: the ledger is written in-process",
    ),
    Setting(
        "sidecar_token",
        ("GPULEDGER_SIDECAR_TOKEN",),
        _optional_text,
        _const(None),
        "The sidecar's shared token: `gpuledger sidecar` requires `Authorization: Bearer "
        "TOKEN` on all but `/healthz` (it must have one to listen beyond loopback), and the "
        "worker sends it. A secret: set it in the environment or a file (`sidecar_token_file`), "
        "not in a settings file; on a command line (`--token`) every local user sees it in `ps`.",
        "unset",
    ),
    Setting(
        "sidecar_token_file",
        ("GPULEDGER_SIDECAR_TOKEN_FILE",),
        _optional_location,
        _const(None),
        "A file holding `sidecar_token` (whitespace around it stripped), e.g. a mounted "
        "Kubernetes or Docker secret; read by the sidecar and the worker alike. Give the token "
        "or its file, not both.",
        "unset",
    ),
    Setting(
        "journal",
        ("GPULEDGER_JOURNAL",),
        _location,
        _const("gpuledger-journal"),
        "The folder where a worker keeps what it could not deliver (an append-only, checksummed, "
        "fsync'd file per process, 0600): with `sidecar` set, what the sidecar did not take, "
        "replayed to it once it answers again; with a ledger, what the ledger had no time (or "
        "no way) to take at shutdown. Replayed by the next worker started with the same "
        "folder; `gpuledger report`, `compare` and `reconcile` write what is there into the "
        "ledger before they read it.",
        "`gpuledger-journal` in the working directory",
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
        "can be reversed by guessing ids; a warning says so. A secret: set it in the "
        "environment, not in a settings file.",
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
        "A price edition (`published-2026-12`, the default; `seed-2026-03`) or a TOML pricing "
        'file over one (`base = "<edition>"`).',
        "unset",
    ),
    Setting(
        "attribution",
        ("GPULEDGER_ATTRIBUTION",),
        _choice(ATTRIBUTIONS),
        _const("separate"),
        "How `gpuledger report` attributes a worker's idle time and rounding: `separate` (a "
        "row of their own, `(idle)`), `share` (pro rata to the requests' busy time), `cause` "
        "(to the request whose keep-warm window or billing span it was).",
        "`separate`",
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
        "worker_start",
        ("GPULEDGER_WORKER_START",),
        _choice(WORKER_STARTS),
        _const("auto"),
        "Where the billing worker's life starts: `container` (PID 1's start: the container "
        "the platform bills), `process` (this process's start), or `auto`: `container` when "
        "the platform was detected from its environment and the process runs in a container "
        "(`/.dockerenv`, `/run/.containerenv`), else `process`.",
        "`auto`",
    ),
    Setting(
        "budgets",
        ("GPULEDGER_BUDGETS",),
        _budgets,
        _const(()),
        "Spend budgets: a list of `{scope, key, window, limit_usd, mode}` (a settings file's "
        '`[[budgets]]` tables; the environment: their JSON), e.g. `{scope = "tenant", key = '
        '"acme", window = "30d", limit_usd = 500}`; `gpuledger budgets` shows their spend.',
        "none",
    ),
    Setting(
        "budget_refresh_s",
        ("GPULEDGER_BUDGET_REFRESH_S",),
        _positive_seconds,
        _const(5.0),
        "Seconds between two reads of the budgets' spend from `budget_ledger`: a fleet can "
        "overshoot an enforced budget by what it spends in this long.",
        "`5`",
    ),
    Setting(
        "budget_ledger",
        ("GPULEDGER_BUDGET_LEDGER",),
        _optional_text,
        _const(None),
        "The ledger budgets' spend is read from: the fleet's `postgresql://` ledger for a "
        "budget shared by many workers (with a sidecar, the sidecar's ledger).",
        "`ledger`",
    ),
    Setting(
        "service_version",
        ("GPULEDGER_SERVICE_VERSION",),
        _optional_text,
        _const(None),
        "The deploy version (`service.version`), so `report --by version` and the alert rules "
        "compare releases.",
        "`service.version` in `OTEL_RESOURCE_ATTRIBUTES`, else the platform's (Modal: "
        "`MODAL_IMAGE_ID`)",
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
        in_file=False,
    ),
    Setting(
        "meter_provider",
        (),
        _any,
        _const(None),
        "An OpenTelemetry MeterProvider to use (argument only).",
        "the global one if the application set it, else gpuledger's own",
        in_file=False,
    ),
    Setting(
        "nvml",
        (),
        _any,
        _const(None),
        "The NVML API object (argument only; tests pass a replay of a recording).",
        "the `pynvml` module",
        in_file=False,
    ),
    Setting(
        "clock",
        (),
        _any,
        _const(None),
        "A clock with `time_ns()` and `perf_counter_ns()` (argument only; for tests).",
        "the system clock",
        in_file=False,
    ),
)

_LIBRARY: Final = {setting.name: setting for setting in SETTINGS}

SIDECAR_SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(
        "sidecar_listen",
        ("GPULEDGER_SIDECAR_LISTEN",),
        _listen_address,
        _const("127.0.0.1:4319"),
        "Where `gpuledger sidecar` takes requests, `HOST:PORT`; beyond loopback only with a "
        "token (`sidecar_token`).",
        "`127.0.0.1:4319`",
    ),
    _LIBRARY["sidecar_token"],
    _LIBRARY["sidecar_token_file"],
    Setting(
        "sidecar_spool",
        ("GPULEDGER_SIDECAR_SPOOL",),
        _location,
        _const("gpuledger-spool.db"),
        "The sidecar's spool, a SQLite file where records wait until the ledger and the OTLP "
        "receiver have them. Its folder must exist.",
        "`gpuledger-spool.db` in the working directory",
    ),
    _LIBRARY["ledger"],
    Setting(
        "sidecar_otlp_endpoint",
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        _text,
        _const(None),
        "The OTLP receiver `gpuledger sidecar` exports to: a base URL, e.g. "
        "`http://collector:4318` (`/v1/traces` and `/v1/metrics` are added) or, for `grpc`, "
        "`http://collector:4317`. The variables are read as OpenTelemetry defines them.",
        "none: the ledger only",
        env_is_standard=True,
    ),
    Setting(
        "sidecar_otlp_protocol",
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        _choice(("http/protobuf", "grpc")),
        _const(None),
        "The sidecar's OTLP protocol: `http/protobuf` or `grpc` (extra `grpc`).",
        "`http/protobuf`",
        env_is_standard=True,
    ),
    Setting(
        "sidecar_drain_timeout_s",
        ("GPULEDGER_SIDECAR_DRAIN_TIMEOUT",),
        _seconds,
        _const(10.0),
        "On SIGTERM, how long `gpuledger sidecar` lets its spool drain before exiting; what is "
        "left waits in the spool for the next start.",
        "`10`",
    ),
    Setting(
        "sidecar_unhealthy_after_s",
        ("GPULEDGER_SIDECAR_UNHEALTHY_AFTER",),
        _seconds,
        _const(60.0),
        "How long a sidecar consumer (ledger, OTLP) may fail every attempt before `/healthz` "
        "answers 503 with the reason (`/livez` stays 200).",
        "`60`",
    ),
    Setting(
        "sidecar_max_backlog",
        ("GPULEDGER_SIDECAR_MAX_BACKLOG",),
        _positive_int,
        _const(1_000_000),
        "How many records may wait for a sidecar consumer before `/healthz` answers 503 and new "
        "records are refused with 503 and `Retry-After` (backpressure: workers journal them).",
        "`1000000`",
    ),
    Setting(
        "sidecar_grace_s",
        ("GPULEDGER_SIDECAR_GRACE",),
        _seconds,
        _const(2.0),
        "How long a dead worker's record may take to reach the sidecar before the invocation is "
        "recorded as `killed`.",
        "`2`",
    ),
    Setting(
        "sidecar_max_body",
        ("GPULEDGER_SIDECAR_MAX_BODY",),
        _positive_int,
        _const(16 * 1024 * 1024),
        "Largest request body the sidecar takes, in bytes.",
        "`16777216` (16 MiB)",
    ),
    Setting(
        "sidecar_max_spool_bytes",
        ("GPULEDGER_SIDECAR_MAX_SPOOL",),
        _positive_int,
        _const(None),
        "Cap on the spool's size in bytes, at least 65536; when it is full, requests get 503 "
        "until it drains.",
        "none",
    ),
    Setting(
        "sidecar_synchronous",
        ("GPULEDGER_SIDECAR_SYNCHRONOUS",),
        _choice(("normal", "full")),
        _const("normal"),
        "`normal`: a record the sidecar acknowledged survives the process being killed; `full`: "
        "also the machine losing power (an fsync per request).",
        "`normal`",
    ),
    Setting(
        "sidecar_gpu_sample_hz",
        ("GPULEDGER_SIDECAR_GPU_SAMPLE_HZ",),
        _rate_hz,
        _const(10.0),
        "The sidecar samples NVML for the whole container at this rate and fills the GPU fields "
        "of records that arrive without them (busy, energy, memory); `0`: off. Without a "
        "driver: off, said once.",
        "`10`",
    ),
    Setting(
        "sidecar_log_format",
        ("GPULEDGER_SIDECAR_LOG_FORMAT",),
        _choice(LOG_FORMATS),
        _const("console"),
        "The sidecar's log lines: `console` (readable) or `json`.",
        "`console`",
    ),
)
"""What ``gpuledger sidecar`` resolves: its own rows, and the library's ``ledger``,
``sidecar_token`` and ``sidecar_token_file`` (the worker and the sidecar share them)."""

PROXY_SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(
        "proxy_listen",
        ("GPULEDGER_PROXY_LISTEN",),
        _text,
        _const("127.0.0.1:8080"),
        "Where `gpuledger proxy` takes the clients' requests, `HOST:PORT`; loopback only unless "
        "`proxy_allow_remote`.",
        "`127.0.0.1:8080`",
    ),
    Setting(
        "proxy_upstream",
        ("GPULEDGER_PROXY_UPSTREAM",),
        _text,
        _const(None),
        "The model server the proxy meters: `HOST:PORT` or `http://HOST:PORT`.",
        "none: required",
    ),
    Setting(
        "proxy_allow_remote",
        ("GPULEDGER_PROXY_ALLOW_REMOTE",),
        _bool,
        _const(False),
        "Let the proxy listen beyond loopback. It has no authentication of its own: anyone "
        "who reaches it can call the model and pick the user it is billed to.",
        "`false`",
    ),
    Setting(
        "proxy_upstream_pid",
        ("GPULEDGER_PROXY_UPSTREAM_PID",),
        _positive_int,
        _const(None),
        "The model server's process id: the cold start is measured from its start "
        "(`/proc/PID/stat`) instead of the proxy's.",
        "none: from the proxy's start",
    ),
    Setting(
        "proxy_preset",
        ("GPULEDGER_PROXY_PRESET",),
        _choice(("cog", "potassium")),
        _const(None),
        "Defaults for a known server. `cog`: ready when `/health-check` says `READY`; "
        "`/health-check`, `/`, `/openapi.json`, `/docs`, `/shutdown` unmetered. `potassium`: "
        "ready at the first answer; `/__status__`, `/_k/status` unmetered; ids from "
        "`X-Banana-Request-Id`.",
        "none",
    ),
    Setting(
        "proxy_ready_path",
        ("GPULEDGER_PROXY_READY_PATH",),
        _text,
        _const(None),
        "The proxy GETs this path until the upstream answers; it is then ready.",
        "`/`, or the preset's",
    ),
    Setting(
        "proxy_ready_status",
        ("GPULEDGER_PROXY_READY_STATUS",),
        _choice(("any", "2xx")),
        _const(None),
        "Which answer to the ready path means ready: `any` or `2xx`.",
        "`any`, or the preset's",
    ),
    Setting(
        "proxy_ready_json",
        ("GPULEDGER_PROXY_READY_JSON",),
        _text,
        _const(None),
        "`KEY=VALUE`: ready only when the answer is 2xx JSON with KEY equal to VALUE (Cog: "
        "`status=READY`).",
        "none, or the preset's",
    ),
    Setting(
        "proxy_ready_timeout_s",
        ("GPULEDGER_PROXY_READY_TIMEOUT",),
        _positive_seconds,
        _const(300.0),
        "Longest a request waits for the upstream to be ready; then 503.",
        "`300`",
    ),
    Setting(
        "proxy_upstream_timeout_s",
        ("GPULEDGER_PROXY_UPSTREAM_TIMEOUT",),
        _seconds,
        _const(0.0),
        "Longest the upstream may stay silent (before answering, between chunks); then 504 "
        "and outcome `timeout`. `0`: no limit.",
        "`0`",
    ),
    Setting(
        "proxy_request_id_header",
        ("GPULEDGER_PROXY_REQUEST_ID_HEADER",),
        _text,
        _const(None),
        "Request header holding the invocation id (generated when absent, and sent upstream "
        "in it).",
        "`X-Request-Id`, or the preset's",
    ),
    Setting(
        "proxy_user_header",
        ("GPULEDGER_PROXY_USER_HEADER",),
        _text,
        _const(None),
        "Request header naming the user.",
        "none",
    ),
    Setting(
        "proxy_tenant_header",
        ("GPULEDGER_PROXY_TENANT_HEADER",),
        _text,
        _const(None),
        "Request header naming the tenant.",
        "none",
    ),
    Setting(
        "proxy_unmetered_paths",
        ("GPULEDGER_PROXY_UNMETERED_PATHS",),
        _paths,
        _const(None),
        "Paths proxied without being recorded (health checks): a list in the file, a comma "
        "list in the environment; replaces the preset's list.",
        "none, or the preset's",
    ),
    Setting(
        "proxy_handler_name",
        ("GPULEDGER_PROXY_HANDLER_NAME",),
        _text,
        _const("proxy"),
        "The handler name every row the proxy records gets.",
        "`proxy`",
    ),
)
"""What ``gpuledger proxy`` resolves itself; its agent settings (``platform``, ``gpu``, ...)
are the library's, resolved by ``configure()``."""

_BY_NAME: Final = {row.name: row for row in (*SETTINGS, *SIDECAR_SETTINGS, *PROXY_SETTINGS)}
"""Every row once, by keyword: the keys a settings file may have."""


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The resolved settings; see ``SETTINGS`` for what each one means."""

    service_name: str | None
    platform: str | None
    gpu: str | None
    gpu_count: int
    cpu: float | None
    memory_gib: float | None
    gpu_metering: str
    gpu_sample_hz: float
    gpu_settle_s: float
    ledger: str
    sidecar: str | None
    sidecar_token: str | None
    sidecar_token_file: str | None
    journal: str
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
    attribution: str
    prewarm_threshold_s: float
    worker_start: str
    max_pending: int
    flush_timeout_s: float
    endpoint: str | None
    worker_id: str | None
    region: str | None
    service_version: str | None
    budgets: tuple[Any, ...]
    budget_refresh_s: float
    budget_ledger: str | None
    log_format: str
    log_level: str
    strict: bool
    tracer_provider: Any
    meter_provider: Any
    nvml: Any
    clock: Any
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Where each setting's value came from: ``argument``, an environment variable's name,
    ``file PATH`` (the settings file), or ``default``."""

    def resolved_exporters(self, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """The exporters to run: the explicit list, or ``auto``'s choice from the environment."""
        if self.exporters is not None:
            return self.exporters
        env = environment() if environ is None else environ
        return ("otlp",) if any(env.get(name) for name in OTLP_ENDPOINT_VARS) else ()


class CommandSettings:
    """A command's resolved settings (``gpuledger sidecar``'s, ``gpuledger proxy``'s).

    A plain class: a dataclass would cost its generated methods at every ``import gpuledger``.
    """

    __slots__ = ("sources", "values")

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
        self.values = values
        """Keyword -> the typed value."""
        self.sources = sources
        """Keyword -> where the value came from, as in ``Settings.sources``."""


def environment() -> Mapping[str, str]:
    """The process environment: ``os.environ`` itself (live), the one place gpuledger reads it.

    Platform detection and OpenTelemetry's own ``OTEL_*`` variables are read through here too,
    so that a test sees one seam.
    """
    return os.environ


def setting(name: str) -> Setting:
    """The row of the setting ``name``: the library's, the sidecar's or the proxy's."""
    return _BY_NAME[name]


def env_sets(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment gives the setting ``name`` a value (any of its variables)."""
    env = environment() if environ is None else environ
    return any(env.get(variable, "").strip() for variable in _BY_NAME[name].env)


def set_outside_arguments(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment or the settings file gives the setting ``name`` a value: a default
    that a caller passes as an argument (a platform adapter's own) must then step aside.

    Raises ConfigError for a settings file that cannot be used.
    """
    env = environment() if environ is None else environ
    if env_sets(name, env):
        return True
    file = _settings_file(env)
    return file is not None and name in file.values


def resolve_settings(
    arguments: Mapping[str, object], environ: Mapping[str, str] | None = None
) -> Settings:
    """Resolve every library setting: ``arguments`` > ``environ`` (default: the process's) >
    the settings file > default.

    An unknown keyword (in the arguments or the file), a value its parser rejects, or a settings
    file that cannot be used raises ConfigError.
    """
    env = environment() if environ is None else environ
    _check_keywords(arguments, _LIBRARY)
    values, sources = _resolve(SETTINGS, arguments, env, _settings_file(env))
    if values["pseudonym_key"] is not None and not values["pseudonymize_users"]:
        # A key given means the user wants hashing; not hashing would leak ids they meant to hide.
        values["pseudonymize_users"] = True
    return Settings(**values, sources=sources)  # type: ignore[arg-type]


def resolve_command(
    rows: tuple[Setting, ...],
    arguments: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
) -> CommandSettings:
    """Resolve a command's ``rows`` (:data:`SIDECAR_SETTINGS`, :data:`PROXY_SETTINGS`):
    ``arguments`` (the options given on its command line) > environment > file > default.

    Raises ConfigError as :func:`resolve_settings` does.
    """
    env = environment() if environ is None else environ
    _check_keywords(arguments, {row.name: row for row in rows})
    values, sources = _resolve(rows, arguments, env, _settings_file(env))
    return CommandSettings(values, sources)


def resolve_setting(name: str, environ: Mapping[str, str] | None = None) -> tuple[Any, str]:
    """One setting given no argument (environment > file > default): its value and source.

    For a caller that needs this one and no other (a command's ledger, the pricing file), so
    that a bad value in another setting does not stop it. Raises ConfigError.
    """
    env = environment() if environ is None else environ
    values, sources = _resolve((_BY_NAME[name],), {}, env, _settings_file(env))
    return values[name], sources[name]


def _settings_file(environ: Mapping[str, str]) -> SettingsFile | None:
    """The settings file, read once, every key checked against every row: a key that no row has
    is a typo, whichever command reads the file."""
    file = read_settings_file(environ)
    if file is not None:
        for key, value in file.values.items():
            row = _BY_NAME.get(key)
            if row is None:
                known = [name for name, row in _BY_NAME.items() if row.in_file]
                raise ConfigError(key, _shown(key, value), _unknown(key, known), file.source)
            if not row.in_file:
                reason = "an object, which only an argument to configure() can give"
                raise ConfigError(key, _shown(key, value), reason, file.source)
    return file


def _check_keywords(arguments: Mapping[str, object], known: Mapping[str, Setting]) -> None:
    unknown = sorted(set(arguments) - set(known))
    if unknown:
        name = unknown[0]
        raise ConfigError(name, _shown(name, arguments[name]), _unknown(name, list(known)))


def _unknown(name: str, known: list[str]) -> str:
    import difflib  # noqa: PLC0415  (only on this error path)

    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown setting; {hint}known: {', '.join(sorted(known))}"


def _resolve(
    rows: tuple[Setting, ...],
    arguments: Mapping[str, object],
    env: Mapping[str, str],
    file: SettingsFile | None,
) -> tuple[dict[str, object], dict[str, str]]:
    """Each row's value and source: argument > environment > file > default."""
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for row in rows:
        raw: object
        if arguments.get(row.name) is not None:
            raw, source = arguments[row.name], "argument"
        else:
            found = next((name for name in row.env if env.get(name, "").strip()), None)
            if found is not None and row.env_is_standard:
                # The consumer reads OpenTelemetry's variable itself, as OpenTelemetry says.
                values[row.name], sources[row.name] = None, found
                continue
            if found is not None:
                raw, source = env[found], found
            elif file is not None and row.name in file.values:
                raw, source = file.values[row.name], file.source
            else:
                values[row.name], sources[row.name] = row.default(), "default"
                continue
        try:
            values[row.name] = row.parse(raw)
        except _Invalid as invalid:
            reason = mask_secrets(str(invalid))
            raise ConfigError(row.name, _shown(row.name, raw), reason, source) from None
        sources[row.name] = source
    if "sidecar_token_file" in values and "sidecar_token" in values:
        _read_token_file(values, sources)
    return values, sources


_SECRET_SETTINGS: Final = frozenset({"sidecar_token", "pseudonym_key"})


def _shown(name: str, value: object) -> object:
    """``value`` as a ConfigError may show it: a secret setting's masked whole, any password or
    token in text masked (a ledger's DSN, an OTLP endpoint's user part)."""
    secret_like = any(word in name.lower() for word in ("tok", "pass", "secret", "key"))
    if name in _SECRET_SETTINGS or (name not in _BY_NAME and secret_like):
        return MASK  # a setting's own, or what a misspelt one (``sidecar_tokn``) would hold
    return mask_secrets(value) if isinstance(value, str) else value


def _read_token_file(values: dict[str, object], sources: dict[str, str]) -> None:
    """``sidecar_token`` from the file ``sidecar_token_file`` names, if it names one.

    The token is the file's text, whitespace around it stripped. A file that cannot be read or is
    empty, or a token given as well, raises ConfigError naming the file.
    """
    path = values["sidecar_token_file"]
    if path is None:
        return
    source = sources["sidecar_token_file"]
    if values["sidecar_token"] is not None:
        raise ConfigError(
            "sidecar_token_file",
            path,
            "give the token or a file holding it, not both (sidecar_token is set too, from "
            f"{sources['sidecar_token']})",
            source,
        )
    try:
        with open(str(path), encoding="utf-8") as file:
            token = file.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ConfigError(
            "sidecar_token_file", path, f"cannot read the token file {path}: {why}", source
        ) from None
    if not token:
        raise ConfigError("sidecar_token_file", path, f"the token file {path} is empty", source)
    values["sidecar_token"], sources["sidecar_token"] = token, source


def settings_table() -> str:
    """Every setting as a Markdown table (the README's configuration section)."""
    lines = [
        "| keyword | environment | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for row in _BY_NAME.values():
        env = ", ".join(f"`{name}`" for name in row.env) or "(argument only)"
        lines.append(f"| `{row.name}` | {env} | {row.default_doc} | {row.doc} |")
    return "\n".join(lines)
