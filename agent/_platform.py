"""Which serverless platform this process runs on, read from the platform's own environment.

Each platform documents variables its runtime sets in every worker; their presence identifies the
platform, and their values name the endpoint, worker and region. The first match wins; nothing
matched means ``local``. Only variables a platform documents (or its own SDK reads) are used.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Final

from gpuledger._settings import environment

__all__ = [
    "CONTAINER_MARKERS",
    "BillingWorker",
    "PlatformInfo",
    "billing_worker",
    "detect_platform",
]

CONTAINER_MARKERS: Final = ("/.dockerenv", "/run/.containerenv")
"""Files a container runtime puts in every container it starts (Docker, Podman)."""


@dataclasses.dataclass(frozen=True, slots=True)
class PlatformInfo:
    """What the environment says about where this worker runs."""

    platform: str
    """``runpod``, ``modal``, ``replicate``, ``banana`` or ``local``."""
    cloud_provider: str | None
    """OpenTelemetry ``cloud.provider``: the platform itself, or the cloud it runs on."""
    cloud_platform: str | None
    """OpenTelemetry ``cloud.platform``, e.g. ``runpod_serverless``."""
    faas_trigger: str
    """OpenTelemetry ``faas.trigger`` for this platform's requests."""
    endpoint: str | None = None
    worker_id: str | None = None
    region: str | None = None
    version: str | None = None
    """The deploy version the platform names (Modal: the image id), if any."""
    evidence: str | None = None
    """The environment variable that identified the platform."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Rule:
    platform: str
    markers: tuple[str, ...]
    cloud_provider: str | None
    cloud_platform: str | None
    faas_trigger: str
    endpoint_vars: tuple[str, ...] = ()
    worker_vars: tuple[str, ...] = ()
    region_vars: tuple[str, ...] = ()
    version_vars: tuple[str, ...] = ()


# RunPod: the worker SDK itself reads RUNPOD_ENDPOINT_ID, RUNPOD_POD_ID and RUNPOD_WEBHOOK_GET_JOB
# (runpod/serverless/modules/rp_http.py, worker_state.py); RUNPOD_DC_ID is RunPod's documented
# data-centre variable. Jobs arrive from RunPod's queue, hence faas.trigger "pubsub".
# Modal: MODAL_TASK_ID, MODAL_REGION and MODAL_CLOUD_PROVIDER are set in every Modal container
# (modal.com/docs/guide/environment_variables), and MODAL_IMAGE_ID, the image the container runs:
# the closest to a deploy version Modal states (a code-only redeploy may keep the image). RunPod,
# Replicate and Banana document no deploy version: set GPULEDGER_SERVICE_VERSION there.
# Replicate runs Cog's HTTP server, which is pointed at the predictor through COG_* variables.
# Banana's serving framework Potassium documents no environment variable of its own: set
# GPULEDGER_PLATFORM=banana there (the Potassium adapter does it for you).
_RULES: Final = (
    _Rule(
        "runpod",
        ("RUNPOD_ENDPOINT_ID", "RUNPOD_WEBHOOK_GET_JOB"),
        "runpod",
        "runpod_serverless",
        "pubsub",
        endpoint_vars=("RUNPOD_ENDPOINT_ID",),
        worker_vars=("RUNPOD_POD_ID",),
        region_vars=("RUNPOD_DC_ID",),
    ),
    # A RunPod Pod (on-demand, billed hourly) sets RUNPOD_POD_ID but no endpoint: reserved.
    _Rule(
        "reserved",
        ("RUNPOD_POD_ID",),
        "runpod",
        "runpod_pod",
        "http",
        worker_vars=("RUNPOD_POD_ID",),
        region_vars=("RUNPOD_DC_ID",),
    ),
    _Rule(
        "modal",
        ("MODAL_TASK_ID", "MODAL_IS_REMOTE"),
        None,
        "modal",
        "other",
        endpoint_vars=("MODAL_APP_NAME", "MODAL_APP_ID"),
        worker_vars=("MODAL_TASK_ID",),
        region_vars=("MODAL_REGION",),
        version_vars=("MODAL_IMAGE_ID",),
    ),
    _Rule(
        "replicate",
        ("REPLICATE_PREDICTION_ID", "COG_PREDICT_TYPE_STUB", "COG_PREDICT_CODE_STRIP"),
        "replicate",
        "replicate_cog",
        "http",
        endpoint_vars=("COG_MODEL_NAME",),
    ),
)

_CLOUD_PROVIDER_VARS: Final = {"modal": "MODAL_CLOUD_PROVIDER"}


def detect_platform(environ: Mapping[str, str] | None = None) -> PlatformInfo:
    """The platform named by ``environ`` (default: the process's, through
    ``_settings.environment``); ``local`` when none matches."""
    env = environment() if environ is None else environ
    for rule in _RULES:
        marker = next((name for name in rule.markers if env.get(name)), None)
        if marker is None:
            continue
        provider = rule.cloud_provider
        provider_var = _CLOUD_PROVIDER_VARS.get(rule.platform)
        if provider_var and env.get(provider_var):
            provider = env[provider_var].lower()
        return PlatformInfo(
            platform=rule.platform,
            cloud_provider=provider,
            cloud_platform=rule.cloud_platform,
            faas_trigger=rule.faas_trigger,
            endpoint=_first(env, rule.endpoint_vars),
            worker_id=_first(env, rule.worker_vars),
            region=_first(env, rule.region_vars),
            version=_first(env, rule.version_vars),
            evidence=marker,
        )
    return PlatformInfo(
        platform="local",
        cloud_provider=None,
        cloud_platform=None,
        faas_trigger="other",
        evidence=None,
    )


def default_worker_id() -> str:
    """``host:pid``: unique among the workers of one machine, stable for the process's life."""
    return f"{os.uname().nodename}:{os.getpid()}"


def platform_defaults(platform: str) -> PlatformInfo:
    """The attributes of ``platform`` when it was named in settings rather than detected."""
    for rule in _RULES:
        if rule.platform == platform:
            return PlatformInfo(
                platform=platform,
                cloud_provider=rule.cloud_provider,
                cloud_platform=rule.cloud_platform,
                faas_trigger=rule.faas_trigger,
            )
    if platform == "banana":  # Potassium serves HTTP; Banana documents no variable to detect
        return PlatformInfo(platform, "banana", "banana_potassium", "http")
    return PlatformInfo(platform, None, None, "other")


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((env[name] for name in names if env.get(name)), None)


@dataclasses.dataclass(frozen=True, slots=True)
class BillingWorker:
    """The worker a platform bills: the container, which may run several processes (Cog's
    predictor subprocess, an ASGI server's workers, the proxy and sidecar beside them)."""

    key: str
    start_ns: int
    start_source: str
    """``container`` (PID 1's start), or the process start's (``proc``, ``psutil``, ``import``)."""


def billing_worker(
    info: PlatformInfo,
    *,
    worker_id: str | None,
    worker_start: str,
    process_start: tuple[int, str],
    exists: Callable[[str], bool] = os.path.exists,
    container_start: Callable[[], int | None] | None = None,
) -> BillingWorker:
    """Which worker this process is billed as, and when that worker started.

    The key is the ``worker_id`` setting, else the platform's own worker id (RunPod's pod id,
    Modal's task id), else the container's hostname when the platform was detected from its
    environment, else ``host:pid``. The start is the container's (PID 1's start inside its PID
    namespace) when ``worker_start`` is ``container``, or ``auto`` and the platform was detected
    from its environment *and* a container runtime's marker file is there; otherwise (a plain
    machine, where PID 1 is the machine's init) the process's own start.
    """
    detected = info.evidence is not None
    if worker_id:
        key = worker_id
    elif info.worker_id:
        key = info.worker_id
    elif detected:
        key = os.uname().nodename
    else:
        key = default_worker_id()
    in_container = worker_start == "container" or (
        worker_start == "auto" and detected and any(exists(path) for path in CONTAINER_MARKERS)
    )
    if in_container:
        if container_start is None:
            from gpuledger._process import started_ns  # noqa: PLC0415

            started = started_ns(1)
        else:
            started = container_start()
        if started is not None and started <= process_start[0]:
            return BillingWorker(key, started, "container")
    return BillingWorker(key, *process_start)
