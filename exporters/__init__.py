"""The OpenTelemetry side of gpuledger: providers, span/metric output, exporters."""
