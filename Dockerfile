# kvraft node image: one kvraft daemon per container.
#   docker build -t kvraft .
#   docker run --rm -p 127.0.0.1:8001:8001 kvraft   (a one-node cluster: `kvraft dev`)
#   docker compose up            (3 nodes; see docker-compose.yml for 5)
# The build context needs pyproject.toml, README.md (the package metadata reads it) and kvraft/.
FROM python:3.11-slim-bookworm

# No .pyc files in the image layers, unbuffered logs (a crash's last lines reach `docker logs`),
# no pip cache or version check in the image.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package (and its pinned-by-range dependencies from pyproject.toml), then drop the
# sources: only the installed package and the `kvraft` console script remain.
COPY pyproject.toml README.md /tmp/kvraft-src/
COPY kvraft /tmp/kvraft-src/kvraft
RUN pip install --no-cache-dir "/tmp/kvraft-src[fast]" \
    && rm -rf /tmp/kvraft-src

# Run as an unprivileged user that owns only its data directory and its secrets directory
# (/etc/kvraft: where compose mounts the cluster config; /var/lib/kvraft/secrets: the peer
# secret and certificates compose's `init` service writes, 0700 so a named volume mounted
# there starts owner-only). --no-log-init: a large UID
# would otherwise make useradd write a huge sparse /var/log/faillog into the layer.
RUN groupadd --system --gid 10001 kvraft \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --no-log-init \
        --shell /usr/sbin/nologin kvraft \
    && mkdir -p /data /etc/kvraft /var/lib/kvraft/secrets \
    && chown kvraft:kvraft /data /var/lib/kvraft/secrets \
    && chmod 0700 /var/lib/kvraft/secrets

# Numeric, so a host or orchestrator (runAsNonRoot) can tell it is not root without /etc/passwd.
USER 10001:10001
WORKDIR /data
# Each node's WAL and snapshots; a named volume keeps them across container restarts.
VOLUME ["/data"]

# Raft (700N) and HTTP (800N) ports of nodes 1..5: each node uses its own pair (configs/docker-*.toml);
# `kvraft dev` uses node 1's.
EXPOSE 7001-7005 8001-8005

# Where the node writes the URL it answers at inside the container, once it listens; the
# health check reads it, so it follows whatever port and command the container runs with
# (kvraft.healthcheck). /tmp: writable by the unprivileged user, and per container.
ENV KVRAFT_HTTP_URL_FILE=/tmp/kvraft-http-url
# Liveness (/healthz: the process answers HTTP), not readiness: an orchestrator that acts on
# this (Swarm replaces an unhealthy task) must not restart a node only because it has no leader
# for a while, which a restart does not cure. compose asks /readyz instead (see its file).
# slim has no curl: the check is a small Python module (urllib), exit 0 healthy, 1 not.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-m", "kvraft.healthcheck"]

# `docker stop` sends this, then SIGKILL after the grace period: the daemon treats SIGTERM as
# a clean shutdown.
STOPSIGNAL SIGTERM
ENTRYPOINT ["kvraft"]
# With no arguments: a one-node cluster for trying the API (data thrown away with the
# container). 0.0.0.0: it listens on every interface, so a published port reaches it (the
# container's own 127.0.0.1 would not), under the container's host name as its address.
# compose runs `serve` with a mounted cluster config instead.
CMD ["dev", "--host", "0.0.0.0"]
