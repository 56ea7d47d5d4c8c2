# A RunPod serverless worker with gpuledger, built from this repository:
#   docker build -f docker/worker.Dockerfile -t gpuledger-runpod-worker .
# For a real model start from a CUDA/PyTorch base image instead of python:3.11-slim.
# Next to a sidecar (docker/compose.yaml) set GPULEDGER_SIDECAR=http://sidecar:4319 and
# GPULEDGER_SIDECAR_TOKEN; alone (RunPod), OTEL_EXPORTER_OTLP_ENDPOINT.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GPULEDGER_PLATFORM=runpod

WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY instrumentation ./instrumentation
COPY exporters ./exporters
# This repository, not a package to pin; pyproject.toml bounds its dependencies.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[runpod]'

WORKDIR /app
COPY examples/runpod/handler.py ./
# Not root: the worker needs no privilege.
RUN useradd --create-home --uid 10001 worker && chown worker /app
USER 10001
CMD ["python", "-u", "handler.py"]
