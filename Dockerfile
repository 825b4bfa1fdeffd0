# syntax=docker/dockerfile:1
#
# The relay as a container image.
#
#   docker build -t relay .
#   docker run -p 3000:3000 relay                          # embedded defaults, file outbox
#   docker run -p 3000:3000 -e RELAY_CONFIG=/etc/relay/relay.yml \
#       -v "$PWD/relay.yml:/etc/relay/relay.yml:ro" -v relay-data:/var/lib/relay/data relay
#   docker run --rm -v "$PWD/relay.yml:/etc/relay/relay.yml:ro" relay check-config /etc/relay/relay.yml
#
# Configuration: a mounted YAML file named by RELAY_CONFIG, and/or RELAY_<SECTION>_<KEY>
# environment overrides (RELAY_UPSTREAM_URL, RELAY_REDIS_URL, ...). The working directory
# /var/lib/relay is where relative paths land: the default spool (./data/spool) and file
# outbox (./data/outbox) live on the /var/lib/relay/data volume.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: one wheel for the relay, and every dependency as a wheel, pinned -------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY relay ./relay
RUN python -m pip wheel --constraint requirements.lock --wheel-dir /wheels .

# --- runtime: a venv installed from those wheels only, run as an unprivileged user -------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="relay" \
      org.opencontainers.image.description="Sentry-compatible event relay and scrubbing proxy" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/relay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    RELAY_LISTEN_HOST=0.0.0.0

RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --home-dir /var/lib/relay \
        --shell /usr/sbin/nologin relay \
 && mkdir -p /var/lib/relay/data /etc/relay \
 && chown -R relay:relay /var/lib/relay

# --no-index: nothing is fetched here; the build stage resolved every pinned version.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/relay \
 && /opt/relay/bin/pip install --no-index --find-links /wheels relay \
 && /opt/relay/bin/python -c "import relay, uvloop, re2"

WORKDIR /var/lib/relay
VOLUME ["/var/lib/relay/data"]

USER 10001:10001

# Ingest, /healthz, /readyz and (unless listen.metrics moves it) /metrics.
EXPOSE 3000

# No curl in a slim image: the venv's Python asks /healthz. The port follows
# RELAY_LISTEN_PORT when that is how the port was changed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RELAY_LISTEN_PORT', '3000') + '/healthz', timeout=4)"]

# SIGTERM: stop accepting, drain the outbox for up to shutdown_timeout, exit.
STOPSIGNAL SIGTERM

ENTRYPOINT ["relay"]
CMD ["run"]
