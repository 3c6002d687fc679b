"""Each docker-compose service's command, run as a local process with the same config.

Docker cannot run on the development machines, so this test plays the containers' part:
each node runs in a mount namespace of its own (`unshare --mount`) where `/etc/hosts`
names the compose services (node1, node2, ...) and `/data` is that node's own volume.
Everything else is what compose would run: the service's command and the config file
compose mounts at /etc/kvraft/cluster.toml.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvraft import launcher
from kvraft.config import load_config
from kvraft.healthcheck import HTTP_URL_FILE_VARIABLE
from tests.cluster_harness import http, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CONTAINER_CONFIG = "/etc/kvraft/cluster.toml"
DATA_MOUNT_POINT = Path("/data")
CHECK_PROCESS_TIMEOUT_S = 20.0
"""A check process: the interpreter's start plus the check's own 3 s timeout, on a busy box."""


def _default_services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return {
        name: service
        for name, service in compose["services"].items()
        if not service.get("profiles")
    }


def _config_source(service: dict[str, Any]) -> Path:
    for volume in service["volumes"]:
        if isinstance(volume, dict) and volume.get("target") == CONTAINER_CONFIG:
            source = volume["source"].replace("${KVRAFT_CLUSTER_SIZE:-3}", "3")
            return (REPO / source).resolve()
    raise AssertionError(f"no config mounted at {CONTAINER_CONFIG}")


@pytest.fixture
def data_mount_point() -> Iterator[Path]:
    """/data must exist to be a mount point; create it only if missing, remove it after."""
    created = not DATA_MOUNT_POINT.exists()
    if created:
        DATA_MOUNT_POINT.mkdir()
    try:
        yield DATA_MOUNT_POINT
    finally:
        if created:
            DATA_MOUNT_POINT.rmdir()


def test_the_compose_services_form_a_cluster_that_serves(
    tmp_path: Path, data_mount_point: Path
) -> None:
    services = _default_services()
    assert len(services) == 3
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {name}\n" for name in services))
    processes: dict[str, subprocess.Popen[bytes]] = {}
    url_files = {name: tmp_path / f"{name}-http-url" for name in services}
    try:
        for name, service in services.items():
            command = [str(part) for part in service["command"]]
            config_path = _config_source(service)
            command[command.index(CONTAINER_CONFIG)] = str(config_path)
            volume = tmp_path / f"{name}-data"
            volume.mkdir()
            script = " && ".join(
                [
                    f"mount --bind {shlex.quote(str(hosts))} /etc/hosts",
                    f"mount --bind {shlex.quote(str(volume))} {data_mount_point}",
                    "exec " + shlex.join([sys.executable, "-m", "kvraft", *command]),
                ]
            )
            processes[name] = launcher.start(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                tmp_path / f"{name}.log",
                # The image's ENV, one file per container.
                env={HTTP_URL_FILE_VARIABLE: str(url_files[name])},
            )
        config = load_config(_config_source(services["node1"]))
        published = {
            name: f"http://127.0.0.1:{service['ports'][0].rsplit(':', 1)[1]}"
            for name, service in services.items()
        }
        assert [n.http_port for n in config.nodes] == [
            int(url.rsplit(":", 1)[1]) for url in published.values()
        ]

        def agreed_leader() -> int | None:
            leaders = {
                http("GET", f"{url}/v1/status").json()["leader_id"] for url in published.values()
            }
            return leaders.pop() if len(leaders) == 1 and 0 not in leaders else None

        wait_for(agreed_leader, what="the compose services to elect a leader")
        assert http("PUT", f"{published['node2']}/v1/kv/compose", b"works").status == 200
        for url in published.values():
            assert http("GET", f"{url}/v1/kv/compose").body == b"works"
            assert http("GET", f"{url}/healthz").status == 200
        # Each service's health check (readiness) passes, asking its own node's port.
        for name, service in services.items():
            kind, program, *arguments = service["healthcheck"]["test"]
            assert (kind, program) == ("CMD", "python")
            check = subprocess.run(
                [sys.executable, *arguments],
                env={**os.environ, HTTP_URL_FILE_VARIABLE: str(url_files[name])},
                capture_output=True,
                text=True,
                timeout=CHECK_PROCESS_TIMEOUT_S,
            )
            assert check.returncode == 0, check.stderr
            assert f"{published[name]}/readyz: 200" in check.stdout
        # Each node wrote its data into its own volume, as the named volumes would hold it.
        for name in services:
            assert any((tmp_path / f"{name}-data").iterdir()), name
    finally:
        launcher.stop(processes, timeout_s=10, signal_number=signal.SIGKILL)
