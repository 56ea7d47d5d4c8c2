# The gpuledger sidecar: takes workers' records and start notices, spools them on disk, writes
# the ledger, exports over OTLP and records killed invocations. Build from the repository root:
#   docker build -f docker/sidecar.Dockerfile -t gpuledger-sidecar .
# It listens on 0.0.0.0:4319 (beyond loopback), so it refuses to start without a token:
#   docker run -e GPULEDGER_SIDECAR_TOKEN=... -v gpuledger-spool:/var/lib/gpuledger gpuledger-sidecar
# Killed-invocation detection needs the workers' PIDs: share their PID namespace
# (compose: pid: "service:worker"; docker run: --pid container:<worker>).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GPULEDGER_SIDECAR_SPOOL=/var/lib/gpuledger/spool.db \
    GPULEDGER_LEDGER=/var/lib/gpuledger/ledger.db

WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY instrumentation ./instrumentation
COPY exporters ./exporters
RUN pip install --no-cache-dir .

# Not root: the sidecar needs no privilege; the spool and ledger live on a volume it owns.
RUN useradd --create-home --uid 10001 gpuledger \
    && mkdir -p /var/lib/gpuledger \
    && chown gpuledger /var/lib/gpuledger
USER 10001
WORKDIR /var/lib/gpuledger
VOLUME ["/var/lib/gpuledger"]
EXPOSE 4319

# /livez (liveness: the process serves) answers without the token; /healthz (503 while delivery
# fails) is for readiness and alerts, not for restarting. python:slim has no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4319/livez', timeout=2)"]

ENTRYPOINT ["gpuledger", "sidecar", "--listen", "0.0.0.0:4319"]
