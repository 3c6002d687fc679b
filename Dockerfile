# kvraft node image: one kvraft daemon per container.
#   docker build -t kvraft .
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

# Run as an unprivileged user that owns only its data directory. --no-log-init: a large UID
# would otherwise make useradd write a huge sparse /var/log/faillog into the layer.
RUN groupadd --system --gid 10001 kvraft \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --no-log-init \
        --shell /usr/sbin/nologin kvraft \
    && mkdir -p /data /etc/kvraft \
    && chown kvraft:kvraft /data

# A default config (the 3-node compose cluster) so the image is self-consistent; compose mounts
# the cluster's config over it.
COPY configs/docker-3.toml /etc/kvraft/cluster.toml

# Numeric, so a host or orchestrator (runAsNonRoot) can tell it is not root without /etc/passwd.
USER 10001:10001
WORKDIR /data
# Each node's WAL and snapshots; a named volume keeps them across container restarts.
VOLUME ["/data"]

# Raft (700N) and HTTP (800N) ports of nodes 1..5: each node uses its own pair (configs/docker-*.toml).
EXPOSE 7001-7005 8001-8005

# The URL the health check calls; compose sets it per node (node N serves HTTP on 800N).
ENV KVRAFT_HEALTHCHECK_URL=http://127.0.0.1:8001/healthz
# slim has no curl: python's urllib does the request, and any error or non-2xx status makes
# urlopen raise, so the check exits non-zero.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['KVRAFT_HEALTHCHECK_URL'], timeout=3)"]

# `docker stop` sends this, then SIGKILL after the grace period: the daemon treats SIGTERM as
# a clean shutdown.
STOPSIGNAL SIGTERM
ENTRYPOINT ["kvraft"]
CMD ["serve", "--config", "/etc/kvraft/cluster.toml", "--id", "1"]
