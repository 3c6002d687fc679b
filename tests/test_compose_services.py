"""Each docker-compose service's command, run as a local process with the same config.

Docker cannot run on the development machines, so this test plays the containers' part:
each service runs in a mount namespace of its own (`unshare --mount`) where `/etc/hosts`
names the compose services (node1, node2, ...), `/data` is that node's own volume and
`/var/lib/kvraft/secrets` the shared `secrets` volume (read-only for the nodes). Everything
else is what compose would run: the one-shot `init` service first (the peer secret and the
certificates), then each node's command with the config file compose mounts at
/etc/kvraft/cluster.toml -- plain, and with `KVRAFT_TLS=-tls` (HTTPS and peer mutual TLS).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvraft import launcher
from kvraft.config import load_config, read_peer_secret
from kvraft.healthcheck import HTTP_URL_FILE_VARIABLE
from kvraft.tls import https_client_context
from tests.cluster_harness import http, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CONTAINER_CONFIG = "/etc/kvraft/cluster.toml"
DATA_MOUNT_POINT = Path("/data")
SECRETS_MOUNT_POINT = Path("/var/lib/kvraft/secrets")
INIT_SERVICE = "init"
CHECK_PROCESS_TIMEOUT_S = 20.0
"""A check process: the interpreter's start plus the check's own 3 s timeout, on a busy box."""
INIT_TIMEOUT_S = 60.0
"""The init service: two interpreter starts and key generation, on a busy box."""

_VARIABLE = re.compile(r"\$\{([A-Z_]+):-([^}]*)\}")


def _default_services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return {
        name: service
        for name, service in compose["services"].items()
        if not service.get("profiles")
    }


def _interpolate(text: str, variables: dict[str, str]) -> str:
    """compose's ``${NAME:-default}`` with `variables` as the environment."""
    return _VARIABLE.sub(lambda match: variables.get(match[1]) or match[2], text)


def _config_source(service: dict[str, Any], variables: dict[str, str]) -> Path:
    for volume in service["volumes"]:
        if isinstance(volume, dict) and volume.get("target") == CONTAINER_CONFIG:
            return (REPO / _interpolate(volume["source"], variables)).resolve()
    raise AssertionError(f"no config mounted at {CONTAINER_CONFIG}")


@pytest.fixture
def mount_points() -> Iterator[None]:
    """/data and /var/lib/kvraft/secrets must exist to be mount points; create them only if
    missing (their parents too), remove what was created after."""
    created: list[Path] = []
    for mount_point in (DATA_MOUNT_POINT, SECRETS_MOUNT_POINT):
        missing = [mount_point, *mount_point.parents]
        missing = [path for path in missing if not path.exists()]
        mount_point.mkdir(parents=True, exist_ok=True)
        created += missing  # deepest first, so they are removed in order
    try:
        yield
    finally:
        for path in created:
            path.rmdir()


def _in_namespace(mounts: list[str], command: list[str]) -> list[str]:
    """`command` in a private mount namespace after the `mounts` (shell lines)."""
    script = " && ".join([*mounts, "exec " + shlex.join(command)])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def _kvraft_on_path(directory: Path) -> dict[str, str]:
    """An environment whose `kvraft` is this source tree run by this interpreter (the image's
    console script), for the init service's shell command."""
    directory.mkdir()
    shim = directory / "kvraft"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m kvraft "$@"\n')
    shim.chmod(0o755)
    return {"PATH": f"{directory}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("tls", ["", "-tls"], ids=["plain", "tls"])
def test_the_compose_services_form_a_cluster_that_serves(
    tmp_path: Path, mount_points: None, tls: str
) -> None:
    variables = {"KVRAFT_TLS": tls}
    services = _default_services()
    init = services.pop(INIT_SERVICE)
    assert len(services) == 3
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {name}\n" for name in services))
    secrets_volume = tmp_path / "secrets-volume"
    secrets_volume.mkdir(mode=0o700)
    config_path = _config_source(init, variables)
    config = load_config(config_path)
    assert (config.tls is not None) == bool(tls)

    # `init`, as compose runs it before any node: the secret and the certificates.
    script = " ".join(str(part) for part in init["command"]).replace(
        CONTAINER_CONFIG, str(config_path)
    )
    made = subprocess.run(
        _in_namespace(
            [f"mount --bind {shlex.quote(str(secrets_volume))} {SECRETS_MOUNT_POINT}"],
            [*init["entrypoint"], script],
        ),
        env={**os.environ, **_kvraft_on_path(tmp_path / "bin"), "KVRAFT_PEER_SECRET": ""},
        capture_output=True,
        text=True,
        timeout=INIT_TIMEOUT_S,
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert config.peer_secret_file is not None
    secret = read_peer_secret(
        secrets_volume / config.peer_secret_file.relative_to(SECRETS_MOUNT_POINT)
    )
    ca_file = secrets_volume / "certs" / "ca.crt"
    context: ssl.SSLContext | None = https_client_context(ca_file) if tls else None

    processes: dict[str, subprocess.Popen[bytes]] = {}
    url_files = {name: tmp_path / f"{name}-http-url" for name in services}
    try:
        for name, service in services.items():
            command = [str(part) for part in service["command"]]
            assert _config_source(service, variables) == config_path
            command[command.index(CONTAINER_CONFIG)] = str(config_path)
            volume = tmp_path / f"{name}-data"
            volume.mkdir()
            mounts = [
                f"mount --bind {shlex.quote(str(hosts))} /etc/hosts",
                f"mount --bind {shlex.quote(str(volume))} {DATA_MOUNT_POINT}",
                f"mount --bind {shlex.quote(str(secrets_volume))} {SECRETS_MOUNT_POINT}",
                f"mount -o remount,bind,ro {SECRETS_MOUNT_POINT}",  # read_only: true
            ]
            processes[name] = launcher.start(
                _in_namespace(mounts, [sys.executable, "-m", "kvraft", *command]),
                tmp_path / f"{name}.log",
                # The image's ENV, one file per container.
                env={HTTP_URL_FILE_VARIABLE: str(url_files[name])},
            )
        scheme = "https" if tls else "http"
        published = {
            name: f"{scheme}://127.0.0.1:{service['ports'][0].rsplit(':', 1)[1]}"
            for name, service in services.items()
        }
        assert [n.http_port for n in config.nodes] == [
            int(url.rsplit(":", 1)[1]) for url in published.values()
        ]

        def status(url: str) -> dict[str, Any]:
            answer = http("GET", f"{url}/v1/status", context=context)
            assert answer.status == 200, answer
            result: dict[str, Any] = answer.json()
            return result

        def agreed_leader() -> int | None:
            leaders = {status(url)["leader_id"] for url in published.values()}
            return leaders.pop() if len(leaders) == 1 and 0 not in leaders else None

        wait_for(agreed_leader, what="the compose services to elect a leader")
        put = http("PUT", f"{published['node2']}/v1/kv/compose", b"works", context=context)
        assert put.status == 200, put
        for url in published.values():
            assert http("GET", f"{url}/v1/kv/compose", context=context).body == b"works"
            assert http("GET", f"{url}/healthz", context=context).status == 200
            metrics = http("GET", f"{url}/metrics", context=context).body.decode()
            # Peer authentication is on by default; peer TLS with the TLS config.
            assert "kvraft_peer_auth_enabled 1.0" in metrics
            assert f"kvraft_peer_tls_enabled {1.0 if tls else 0.0}" in metrics
        # Each service's health check (readiness) passes, asking its own node's port.
        for name, service in services.items():
            kind, program, *arguments = service["healthcheck"]["test"]
            assert (kind, program) == ("CMD", "python")
            check = subprocess.run(
                # In the container: the TLS files it names are in the secrets volume.
                _in_namespace(
                    [f"mount --bind {shlex.quote(str(secrets_volume))} {SECRETS_MOUNT_POINT}"],
                    [sys.executable, *arguments],
                ),
                env={**os.environ, HTTP_URL_FILE_VARIABLE: str(url_files[name])},
                capture_output=True,
                text=True,
                timeout=CHECK_PROCESS_TIMEOUT_S,
            )
            assert check.returncode == 0, check.stderr
            assert f"{published[name]}/readyz: 200" in check.stdout
        # Each node wrote its data into its own volume, as the named volumes would hold it;
        # none logged the secret, none runs without peer authentication.
        for name in services:
            assert any((tmp_path / f"{name}-data").iterdir()), name
            log_text = (tmp_path / f"{name}.log").read_text()
            assert "NO PEER AUTHENTICATION" not in log_text
            assert secret.hex() not in log_text
    finally:
        launcher.stop(processes, timeout_s=10, signal_number=signal.SIGKILL)
