"""OpenTelemetry providers: the application's if it set them, else gpuledger's own.

gpuledger never replaces a global TracerProvider or MeterProvider the application already set:
it takes its tracer and meter from them and adds nothing to their pipelines. Only when the
application has set none, and an exporter is asked for, does it build SDK providers (batch span
processor, periodic metric reader) with the requested exporters and make them global, so the
application's own instrumentation reaches the same backend.

The ``prometheus`` exporter is for metrics only: a ``PrometheusMetricReader`` (pull: the SDK
collects when Prometheus scrapes) and the ``prometheus_client`` HTTP server that serves it on
``prometheus_host:prometheus_port`` (loopback by default). Prometheus names the OpenTelemetry
metrics its own way: dots become underscores, the unit is appended (an annotation such as
``{USD}`` is not) and counters end in ``_total`` (``faas.invocations`` is
``faas_invocations_total``, ``gpuledger.gpu.billed`` is ``gpuledger_gpu_billed_seconds_total``,
``gpuledger.cost`` is ``gpuledger_cost_total``; docker/README.md lists them all).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "OTLP_PROTOCOLS",
    "Providers",
    "gpuledger_meter",
    "gpuledger_tracer",
    "otlp_protocol",
    "setup_providers",
]

TRACE_EXPORTERS = ("otlp", "console")
"""The exporters that take spans; ``prometheus`` takes metrics only."""


@dataclasses.dataclass(slots=True)
class Providers:
    """The providers gpuledger emits through, and which of them it owns (and must shut down)."""

    tracer_provider: Any | None
    meter_provider: Any | None
    owns_tracer_provider: bool = False
    owns_meter_provider: bool = False
    origin: str = ""
    """``argument``, ``application`` or ``gpuledger``: where the providers came from."""

    def flush(self, timeout_s: float) -> None:
        """Force-flush the providers gpuledger owns (the application flushes its own), both
        within one ``timeout_s`` budget."""
        import time  # noqa: PLC0415

        deadline = time.monotonic() + timeout_s

        def remaining_ms() -> int:
            return max(1, int((deadline - time.monotonic()) * 1000))

        if self.owns_tracer_provider and self.tracer_provider is not None:
            self.tracer_provider.force_flush(remaining_ms())
        if self.owns_meter_provider and self.meter_provider is not None:
            _flush_push_readers(self.meter_provider, remaining_ms)

    def close(self, timeout_s: float) -> None:
        """At process exit: flush and shut down the providers gpuledger built, within one
        ``timeout_s`` budget (they are built with ``shutdown_on_exit=False`` so that the SDK's
        own exit hook does not export a second time, unbounded)."""
        import time  # noqa: PLC0415

        deadline = time.monotonic() + timeout_s
        if self.owns_tracer_provider and self.tracer_provider is not None:
            self.tracer_provider.force_flush(max(1, int(timeout_s * 1000)))
            self.tracer_provider.shutdown()
        if self.owns_meter_provider and self.meter_provider is not None:
            remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
            self.meter_provider.shutdown(timeout_millis=remaining_ms)
            _stop_prometheus_server()


def _flush_push_readers(meter_provider: Any, remaining_ms: Any) -> None:
    """Force-flush the meter provider's push readers (periodic exporters) only.

    A pull reader must never be force-flushed: ``PrometheusMetricReader`` queues each collection
    for the next scrape, so a flush made that scrape show every series two or three times.
    ``MeterProvider.force_flush`` flushes every reader, so each push reader is flushed here.
    """
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: PLC0415

    for reader in getattr(meter_provider, "_metric_readers", ()):
        if isinstance(reader, PeriodicExportingMetricReader):
            reader.force_flush(timeout_millis=remaining_ms())


def gpuledger_tracer(tracer_provider: Any) -> Any:
    """gpuledger's tracer from ``tracer_provider``: named ``gpuledger``, with gpuledger's version
    and the schema URL of the semantic conventions its names follow (``_names.SCHEMA_URL``), so
    that a backend can translate them when the conventions move on."""
    from gpuledger._version import __version__  # noqa: PLC0415
    from gpuledger.exporters._names import SCHEMA_URL  # noqa: PLC0415

    return tracer_provider.get_tracer("gpuledger", __version__, schema_url=SCHEMA_URL)


def gpuledger_meter(meter_provider: Any) -> Any:
    """gpuledger's meter from ``meter_provider``: name, version and schema URL as the tracer's."""
    from gpuledger._version import __version__  # noqa: PLC0415
    from gpuledger.exporters._names import SCHEMA_URL  # noqa: PLC0415

    return meter_provider.get_meter("gpuledger", __version__, schema_url=SCHEMA_URL)


# Providers gpuledger built and made global. OpenTelemetry lets a global provider be set only
# once per process, so a later configure() reuses them rather than building unreachable ones;
# gpuledger.shutdown() only flushes them; gpuledger's exit hook shuts them down (Providers.close).
_built: dict[str, Any] = {}


def _global_tracer_provider() -> tuple[Any | None, bool]:
    """The global tracer provider (None if unset) and whether gpuledger built it."""
    from opentelemetry import trace  # noqa: PLC0415  (lazy: OTel loads at configure, not import)

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        return None, False
    return provider, provider is _built.get("tracer")


def _global_meter_provider() -> tuple[Any | None, bool]:
    from opentelemetry import metrics  # noqa: PLC0415
    from opentelemetry.metrics import _internal  # noqa: PLC0415  (the proxy type lives here)

    provider = metrics.get_meter_provider()
    if isinstance(provider, _internal._ProxyMeterProvider):
        return None, False
    return provider, provider is _built.get("meter")


def setup_providers(
    *,
    tracing: bool,
    metrics: bool,
    exporters: tuple[str, ...],
    resource_attributes: Mapping[str, Any],
    tracer_provider: Any | None = None,
    meter_provider: Any | None = None,
    export_timeout_s: float = 10.0,
    prometheus_address: tuple[str, int] | None = None,
) -> Providers:
    """Pick or build the providers for ``tracing``/``metrics`` with ``exporters``.

    Returns providers set to ``None`` where there is nowhere to send the signal (no provider
    given, none set by the application, no exporter asked for): then gpuledger does not produce
    that signal at all, and the ledger alone records the invocations. ``prometheus_address``:
    ``(host, port)`` of the ``prometheus`` exporter's endpoint; ``None`` resolves the
    ``prometheus_host``/``prometheus_port`` settings from the environment (else their defaults).
    """
    if "otlp" in exporters:  # a protocol no exporter speaks fails before anything is built
        for signal, wanted in (("TRACES", tracing), ("METRICS", metrics)):
            if wanted:
                otlp_protocol(signal)
    origin = "argument" if tracer_provider is not None or meter_provider is not None else ""
    ours_tracer = ours_meter = False
    if tracing and tracer_provider is None:
        tracer_provider, ours_tracer = _global_tracer_provider()
        if tracer_provider is not None and not ours_tracer:
            origin = origin or "application"
    if metrics and meter_provider is None:
        meter_provider, ours_meter = _global_meter_provider()
        if meter_provider is not None and not ours_meter:
            origin = origin or "application"
    result = Providers(
        tracer_provider if tracing else None,
        meter_provider if metrics else None,
        owns_tracer_provider=ours_tracer and tracing,
        owns_meter_provider=ours_meter and metrics,
        origin=origin or ("gpuledger" if ours_tracer or ours_meter else ""),
    )
    if not exporters:
        return result

    resource = None
    trace_exporters = tuple(name for name in exporters if name in TRACE_EXPORTERS)
    if tracing and result.tracer_provider is None and trace_exporters:
        resource = _resource(resource_attributes)
        result.tracer_provider = _build_tracer_provider(resource, trace_exporters, export_timeout_s)
        result.owns_tracer_provider = True
    if metrics and result.meter_provider is None:
        resource = resource or _resource(resource_attributes)
        result.meter_provider = _build_meter_provider(
            resource, exporters, export_timeout_s, prometheus_address
        )
        result.owns_meter_provider = True
    if result.owns_tracer_provider or result.owns_meter_provider:
        result.origin = result.origin or "gpuledger"
    return result


def _resource(attributes: Mapping[str, Any]) -> Any:
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

    from gpuledger.exporters._names import SCHEMA_URL  # noqa: PLC0415

    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME from the environment.
    return Resource.create(
        {key: value for key, value in attributes.items() if value is not None},
        schema_url=SCHEMA_URL,
    )


def _build_tracer_provider(resource: Any, exporters: tuple[str, ...], timeout_s: float) -> Any:
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    _built["tracer"] = provider
    for name in exporters:
        if name == "otlp":
            exporter: Any = _otlp_span_exporter(timeout_s)
        else:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def _build_meter_provider(
    resource: Any,
    exporters: tuple[str, ...],
    timeout_s: float,
    prometheus_address: tuple[str, int] | None = None,
) -> Any:
    from opentelemetry import metrics  # noqa: PLC0415
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: PLC0415

    readers: list[Any] = []
    for name in exporters:
        if name == "prometheus":
            readers.append(_prometheus_reader(prometheus_address))
            continue
        if name == "otlp":
            exporter: Any = _otlp_metric_exporter(timeout_s)
        else:
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter  # noqa: PLC0415

            exporter = ConsoleMetricExporter()
        readers.append(PeriodicExportingMetricReader(exporter))
    provider = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
    _built["meter"] = provider
    metrics.set_meter_provider(provider)
    return provider


def _prometheus_reader(address: tuple[str, int] | None) -> Any:
    """A ``PrometheusMetricReader``, and its HTTP endpoint started on ``address``.

    A port already taken is a contained failure (logged, counted, re-raised when strict): the
    handler runs on, and the reader still collects for a later scrape of the process's registry.
    """
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
        from prometheus_client import start_http_server  # noqa: PLC0415
    except ImportError as missing:
        raise ImportError(
            "the prometheus exporter needs opentelemetry-exporter-prometheus: "
            "pip install 'gpuledger[prometheus]'"
        ) from missing
    host, port = address if address is not None else _prometheus_address_from_env()
    reader = PrometheusMetricReader()
    if "prometheus_server" not in _built:
        try:
            _built["prometheus_server"] = start_http_server(port, addr=host)
        except OSError as error:
            from gpuledger import _guard  # noqa: PLC0415

            _guard.record_failure("prometheus_endpoint", error)
    return reader


def _prometheus_address_from_env() -> tuple[str, int]:
    from gpuledger._settings import resolve_settings  # noqa: PLC0415

    settings = resolve_settings({})
    return settings.prometheus_host, settings.prometheus_port


def _stop_prometheus_server() -> None:
    started = _built.pop("prometheus_server", None)
    if started is not None:
        server, thread = started
        server.shutdown()
        server.server_close()
        thread.join(timeout=1.0)


OTLP_PROTOCOLS: Final = ("http/protobuf", "grpc")
"""The OTLP protocols the OpenTelemetry Python exporters speak (the spec's ``http/json`` is not
among them)."""


def otlp_protocol(
    signal: str, environ: Mapping[str, str] | None = None, given: str | None = None
) -> str:
    """The OTLP protocol for ``signal`` (``TRACES`` or ``METRICS``): ``given`` (a command-line
    option), else ``OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``,
    else ``http/protobuf``, as the OpenTelemetry specification orders them.

    The one parser of the protocol, for the worker and the sidecar alike: a value neither
    exporter speaks raises ConfigError naming where it came from (it used to be a ConfigError in
    the sidecar and silently http/protobuf in the worker).
    """
    from gpuledger._settings import environment  # noqa: PLC0415

    env = environment() if environ is None else environ
    source, value = "argument", given
    if not value:
        for name in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            if env.get(name, "").strip():
                source, value = name, env[name]
                break
    protocol = (value or "http/protobuf").strip().lower()
    if protocol not in OTLP_PROTOCOLS:
        from gpuledger._errors import ConfigError  # noqa: PLC0415

        unsupported = " (the OpenTelemetry Python exporters have no http/json)" * (
            protocol == "http/json"
        )
        raise ConfigError(
            "otlp_protocol", value, f"expected http/protobuf or grpc{unsupported}", source
        )
    return protocol


def _timeout(signal: str, timeout_s: float) -> float | None:
    """The export timeout: OpenTelemetry's variables if set (the exporter reads them), else
    gpuledger's flush timeout, so a collector that does not answer cannot hold a worker's exit
    for the SDK's 10 s per export and signal."""
    from gpuledger._settings import environment  # noqa: PLC0415

    env = environment()
    if env.get(f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT") or env.get("OTEL_EXPORTER_OTLP_TIMEOUT"):
        return None
    return max(0.1, timeout_s)


_OTLP_CLASSES = {
    # signal: (module suffix, class name)
    "TRACES": ("trace_exporter", "OTLPSpanExporter"),
    "METRICS": ("metric_exporter", "OTLPMetricExporter"),
}


def _otlp_exporter(signal: str, timeout_s: float) -> Any:
    """The OTLP exporter for ``signal`` over the configured protocol (http/protobuf or grpc).

    Endpoint, headers, compression: the exporter reads OTEL_EXPORTER_OTLP_* itself.
    """
    import importlib  # noqa: PLC0415

    module_suffix, class_name = _OTLP_CLASSES[signal]
    transport = "grpc" if otlp_protocol(signal) == "grpc" else "http"
    try:
        module = importlib.import_module(
            f"opentelemetry.exporter.otlp.proto.{transport}.{module_suffix}"
        )
    except ImportError as missing:
        if transport == "grpc":
            raise ImportError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter: "
                "pip install 'gpuledger[grpc]'"
            ) from missing
        raise
    return getattr(module, class_name)(timeout=_timeout(signal, timeout_s))


def _otlp_span_exporter(timeout_s: float) -> Any:
    return _otlp_exporter("TRACES", timeout_s)


def _otlp_metric_exporter(timeout_s: float) -> Any:
    return _otlp_exporter("METRICS", timeout_s)
