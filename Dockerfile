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
COPY deploy/constraints.txt deploy/constraints.txt
COPY servomexd/ servomexd/
# Every dependency (pydantic-core, asyncpg, pyarrow) ships manylinux wheels for
# CPython 3.11: nothing is compiled, so neither stage needs a compiler. The versions are
# pinned by deploy/constraints.txt (kept in the repository): a rebuild is the same image.
RUN python -m venv /opt/servomexd/venv \
 && /opt/servomexd/venv/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/servomexd/venv/bin/pip install --constraint deploy/constraints.txt \
      "$(ls /tmp/wheels/servomexd-*.whl)[postgres,parquet]" \
 && /opt/servomexd/venv/bin/servomexd --version

# --- runtime: no compilers, no build tools, no source tree ---------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="servomexd" \
      org.opencontainers.image.description="Data-acquisition daemon for Servomex SERVOPRO 4000-series gas analysers" \
      org.opencontainers.image.licenses="MIT"
ENV PATH=/opt/servomexd/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# uid/gid 10001: the ids deploy/install.sh gives the host's servomexd user and group when
# they are free, so a host's /etc/servomexd (root:servomexd 0750/0640) mounted read-only is
# readable here as it is, and files written to a bind-mounted /var/lib/servomexd belong to
# the host's servomexd. Otherwise: --group-add "$(getent group servomexd | cut -d: -f3)".
# dialout (gid 20, as on Debian/Ubuntu hosts) owns the serial devices passed with
# --device; on a host whose device group has another gid (Fedora: 18), --group-add it.
RUN groupadd --system --gid 10001 servomexd \
 && useradd --system --uid 10001 --gid servomexd --groups dialout \
      --home-dir /var/lib/servomexd --no-create-home --shell /usr/sbin/nologin servomexd \
 && install -d -o servomexd -g servomexd -m 0750 /var/lib/servomexd \
 && install -d -o root -g servomexd -m 0750 /etc/servomexd
COPY --from=builder /opt/servomexd/venv /opt/servomexd/venv
# The example configuration, to copy and edit; not at /etc/servomexd/servomexd.toml, where
# it would pretend to run: without a mounted configuration the container exits 78 with
# "mount your configuration at /etc/servomexd/servomexd.toml".
COPY etc/servomexd/servomexd.toml /usr/local/share/doc/servomexd/servomexd.toml.example
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
