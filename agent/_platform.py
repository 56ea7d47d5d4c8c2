"""Which serverless platform this process runs on, read from the platform's own environment.

Each platform documents variables its runtime sets in every worker; their presence identifies the
platform, and their values name the endpoint, worker and region. The first match wins; nothing
matched means ``local``. Only variables a platform documents (or its own SDK reads) are used.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Final

from gpuledger._settings import environment

__all__ = ["PlatformInfo", "detect_platform"]


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


# RunPod: the worker SDK itself reads RUNPOD_ENDPOINT_ID, RUNPOD_POD_ID and RUNPOD_WEBHOOK_GET_JOB
# (runpod/serverless/modules/rp_http.py, worker_state.py); RUNPOD_DC_ID is RunPod's documented
# data-centre variable. Jobs arrive from RunPod's queue, hence faas.trigger "pubsub".
# Modal: MODAL_TASK_ID, MODAL_REGION and MODAL_CLOUD_PROVIDER are set in every Modal container
# (modal.com/docs/guide/environment_variables).
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
