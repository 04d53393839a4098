# syntax=docker/dockerfile:1
# servomexd container image: the daemon with the postgres and parquet extras, run as an
# unprivileged user. Build:  docker build -t servomexd .
# Run (docs/operations.md, "Docker"):
#   docker run -d --name servomexd --restart unless-stopped --stop-timeout 30 \
#     --device /dev/ttyUSB0 \
#     -v /etc/servomexd:/etc/servomexd:ro -v servomexd-data:/var/lib/servomexd \
#     -e SERVOMEXD_METRICS__LISTEN=0.0.0.0:9723 -p 127.0.0.1:9723:9723 servomexd
#
# Both stages use the same base image: the virtualenv is built in the first one and copied
# to the same path in the second, so its interpreter links stay valid.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a wheel of this source tree, installed with its dependencies into a venv ---
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY servomexd/ servomexd/
# Every dependency (pydantic-core, asyncpg, pyarrow) ships manylinux wheels for
# CPython 3.11: nothing is compiled, so neither stage needs a compiler.
RUN python -m venv /opt/servomexd/venv \
 && /opt/servomexd/venv/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/servomexd/venv/bin/pip install "$(ls /tmp/wheels/servomexd-*.whl)[postgres,parquet]" \
 && /opt/servomexd/venv/bin/servomexd --version

# --- runtime: no compilers, no build tools, no source tree ---------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="servomexd" \
      org.opencontainers.image.description="Data-acquisition daemon for Servomex SERVOPRO 4000-series gas analysers" \
      org.opencontainers.image.licenses="MIT"
ENV PATH=/opt/servomexd/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# uid/gid 10001: not a host system account. dialout (gid 20, as on Debian/Ubuntu hosts)
# owns the serial devices passed with --device; on a host whose device group has another
# gid (Fedora: 18), add it with --group-add <gid>.
RUN groupadd --system --gid 10001 servomexd \
 && useradd --system --uid 10001 --gid servomexd --groups dialout \
      --home-dir /var/lib/servomexd --no-create-home --shell /usr/sbin/nologin servomexd \
 && install -d -o servomexd -g servomexd -m 0750 /var/lib/servomexd \
 && install -d -o root -g servomexd -m 0750 /etc/servomexd
COPY --from=builder /opt/servomexd/venv /opt/servomexd/venv
# The example configuration, replaced by mounting the site's /etc/servomexd.
COPY --chown=root:servomexd etc/servomexd/servomexd.toml /etc/servomexd/servomexd.toml
USER 10001:10001
WORKDIR /var/lib/servomexd
# SQLite database, spool and file sinks: keep them across container replacements.
VOLUME ["/var/lib/servomexd"]
# /metrics, /healthz, /readyz. The daemon listens on 127.0.0.1:9723 unless told otherwise:
# set SERVOMEXD_METRICS__LISTEN=0.0.0.0:9723 (or [metrics] listen) to publish the port.
EXPOSE 9723
# /healthz answers 200 while the event loop is responsive; urlopen raises (exit 1) on
# anything else. Checks from inside the container, so 127.0.0.1 works with either listen.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9723/healthz', timeout=4)"]
# SIGTERM: the daemon flushes and exits within 10 s; give it --stop-timeout 30.
STOPSIGNAL SIGTERM
ENTRYPOINT ["servomexd"]
CMD ["run", "--config", "/etc/servomexd/servomexd.toml"]
