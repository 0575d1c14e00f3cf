# syntax=docker/dockerfile:1
# The service's container image: `docker build -t nba-service .` (README "Run it in a container", helm/README.md).
# Two stages: the builder compiles durable_rules' C core and every wheel; the runtime stage gets only the
# finished virtual environment, no compiler, no pip cache, no source tree.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# A C compiler for durable_rules (no wheel on PyPI); versions come with the pinned base image's Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nba_service ./nba_service
COPY rulesets ./rulesets
# The same path as in the runtime stage: a venv's scripts name their interpreter by absolute path. The bytecode
# pip compiles stays in the image: a read-only root could not take it at run time.
RUN python -m venv /opt/nba \
    && /opt/nba/bin/pip wheel --wheel-dir /wheels . \
    && /opt/nba/bin/pip install --no-index --find-links /wheels nba-service \
    && /opt/nba/bin/pip uninstall -y pip

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="nba-service" \
      org.opencontainers.image.description="Contact-centre next-best-action service (gRPC)" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed, unprivileged uid and gid, numeric in USER so that Kubernetes' runAsNonRoot can verify them.
RUN groupadd --gid 10001 nba \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nba \
    && mkdir -p /var/lib/nba \
    && chown 10001:10001 /var/lib/nba
COPY --from=builder /opt/nba /opt/nba
# Everything the service writes goes under /var/lib/nba (a volume; an emptyDir on Kubernetes), so the root
# filesystem can be mounted read-only. Listening off loopback needs TLS (NBA_TLS_CERT, NBA_TLS_KEY) or an
# explicit NBA_INSECURE=true, and an access policy: the image starts closed, as `nba serve` does.
ENV PATH=/opt/nba/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NBA_HOST=0.0.0.0 \
    NBA_PORT=50051 \
    NBA_LOG_FORMAT=json \
    NBA_DB_PATH=/var/lib/nba/nba.db \
    NBA_SPILL_DIR=/var/lib/nba/spill \
    NBA_DEPLOY_DIR=/var/lib/nba/rulesets
VOLUME ["/var/lib/nba"]
WORKDIR /var/lib/nba
USER 10001:10001
EXPOSE 50051
# gRPC health (grpc.health.v1) over the same connection options as any client: with TLS, set NBA_CACERT (and
# NBA_CERT/NBA_KEY for mutual TLS, NBA_TLS_SERVER_NAME for the certificate's name); NBA_TARGET if the port moves.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["nba", "health", "--timeout", "3"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["nba"]
CMD ["serve"]
