# A RunPod serverless worker with gpuledger, built from this repository:
#   docker build -f docker/worker.Dockerfile -t gpuledger-runpod-worker .
# For a real model start from a CUDA/PyTorch base image instead of python:3.11-slim.
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
RUN pip install --no-cache-dir '.[runpod]'

WORKDIR /app
COPY examples/runpod/handler.py ./
# Not root: the worker needs no privilege.
RUN useradd --create-home --uid 10001 worker && chown worker /app
USER worker
CMD ["python", "-u", "handler.py"]
