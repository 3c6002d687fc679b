"""Tests for the container packaging: Dockerfile, docker-compose.yml and the configs they use.

Docker itself cannot run here, so these check what can be checked without an engine: hadolint
on the Dockerfile, compose's own validation of docker-compose.yml (plain and with the `five`
profile), and that every service's command, with the config file compose would mount for it,
is a valid kvraft config that names that service's node. `scripts/ensure-test-tools.sh`
installs the tools; a missing tool fails the test with a message saying so, never a skip.
"""

from __future__ import annotations

import fnmatch
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib
from typing import Any

import pytest

from kvraft.commands import cluster as cluster_commands
from kvraft.config import ClusterConfig, ConfigError, load_config
from kvraft.healthcheck import CHECK_TIMEOUT_S, HTTP_URL_FILE_VARIABLE

__all__: list[str] = []

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
INSTALL_HINT = "run scripts/ensure-test-tools.sh to install it"
TOOL_TIMEOUT_S = 120
"""Compose v1 is a Python program that imports a lot; generous, but a hang still ends."""


# --- Tools ------------------------------------------------------------------------------------


def hadolint_command() -> list[str]:
    """hadolint from the test's virtualenv (where the script installs it) or from PATH."""
    beside_python = pathlib.Path(sys.executable).parent / "hadolint"
    if beside_python.exists():
        return [str(beside_python)]
    on_path = shutil.which("hadolint")
    if on_path is None:
        pytest.fail(f"hadolint is not installed; {INSTALL_HINT}")
    return [on_path]


def compose_command() -> list[str]:
    """`docker-compose` (v1) or `docker compose` (v2), whichever works."""
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        return [standalone]
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=TOOL_TIMEOUT_S
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    pytest.fail(f"neither docker-compose nor 'docker compose' is available; {INSTALL_HINT}")


def compose_config(
    *profiles: str, cluster_size: str | None = None, tls: bool = False
) -> dict[str, Any]:
    """The compose file as compose resolves it (variables, absolute bind paths), keeping only
    the services that `up` with these profiles would start."""
    try:
        import yaml
    except ImportError:
        pytest.fail(f"PyYAML (to read compose's output) is not installed; {INSTALL_HINT}")
    # Only the variables this test sets may steer compose: a developer's COMPOSE_PROFILES or
    # KVRAFT_CLUSTER_SIZE must not change what is checked.
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("COMPOSE_", "KVRAFT_"))
    }
    if cluster_size is not None:
        environment["KVRAFT_CLUSTER_SIZE"] = cluster_size
    if tls:
        environment["KVRAFT_TLS"] = "-tls"
    profile_options = [option for profile in profiles for option in ("--profile", profile)]
    result = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), *profile_options, "config"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )
    assert result.returncode == 0, f"compose refused the file:\n{result.stderr}"
    resolved = yaml.safe_load(result.stdout)
    assert isinstance(resolved, dict)
    # compose v1's `config` lists every service whatever the profiles (v2 filters); apply the
    # documented rule for both: a service with profiles starts only if one of them is active.
    resolved["services"] = {
        name: service
        for name, service in resolved["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }
    return resolved


@pytest.fixture(scope="module")
def compose_default() -> dict[str, Any]:
    return compose_config()


@pytest.fixture(scope="module")
def compose_five() -> dict[str, Any]:
    return compose_config("five", cluster_size="5")


@pytest.fixture(scope="module")
def compose_tls() -> dict[str, Any]:
    return compose_config(tls=True)


INIT_SERVICE = "init"
"""The one-shot service that writes the peer secret and the certificates before the nodes."""

SECRETS_MOUNT = "/var/lib/kvraft/secrets"
"""Where `init` writes them and every node reads them: the `secrets` named volume."""


def node_services(resolved: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run a node (every one but `init`)."""
    return {name: service for name, service in resolved["services"].items() if name != INIT_SERVICE}


# --- What a service runs ----------------------------------------------------------------------


def option_value(command: list[str], option: str) -> str:
    assert command.count(option) == 1, f"{option} once in {command}"
    return command[command.index(option) + 1]


def bind_mounts(service: dict[str, Any]) -> dict[str, pathlib.Path]:
    """Container path -> host path of a service's bind mounts (long or short syntax)."""
    mounts: dict[str, pathlib.Path] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            if source.startswith(("/", ".")):
                mounts[target] = pathlib.Path(source)
        elif volume.get("type") == "bind":
            mounts[volume["target"]] = pathlib.Path(volume["source"])
    return mounts


def published_ports(service: dict[str, Any]) -> set[tuple[int, int]]:
    """(host port, container port) pairs, from v1's strings or v2's mappings."""
    pairs: set[tuple[int, int]] = set()
    for port in service.get("ports", []):
        if isinstance(port, str):
            *_, published, target = port.split("/")[0].split(":")
            pairs.add((int(published), int(target)))
        else:
            pairs.add((int(port["published"]), int(port["target"])))
    return pairs


def service_node(name: str, service: dict[str, Any]) -> tuple[int, ClusterConfig]:
    """The node id a service runs and the config it runs it with, read as the daemon would:
    the `--config` path inside the container mapped to the file compose mounts there."""
    command = [str(part) for part in service["command"]]
    assert command[0] == "serve", f"{name} runs {command}"
    config_path = option_value(command, "--config")
    mounts = bind_mounts(service)
    assert config_path in mounts, f"{name}: nothing is mounted at {config_path}"
    host_path = mounts[config_path].resolve()
    assert host_path.is_relative_to(REPO / "configs"), f"{name} mounts {host_path}"
    return int(option_value(command, "--id")), load_config(host_path)


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def instruction(name: str) -> str:
    values = [arguments for keyword, arguments in dockerfile_instructions() if keyword == name]
    assert len(values) == 1, f"{name} appears {len(values)} times"
    return values[0]


def test_hadolint_passes_the_dockerfile_without_any_finding() -> None:
    result = subprocess.run(
        [*hadolint_command(), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


HEALTHCHECK_MODULE = ["python", "-m", "kvraft.healthcheck"]


def healthcheck_command() -> list[str]:
    """The exec-form command of the HEALTHCHECK instruction (after its options)."""
    _options, separator, command = instruction("HEALTHCHECK").partition("CMD ")
    assert separator, "HEALTHCHECK has a CMD"
    parsed = json.loads(command)
    assert isinstance(parsed, list), "exec form: no shell in the check"
    return [str(part) for part in parsed]


def test_the_image_runs_a_one_node_dev_cluster_on_every_interface_by_default() -> None:
    assert json.loads(instruction("ENTRYPOINT")) == ["kvraft"]
    # 0.0.0.0: a published port reaches the node (tests/test_healthcheck.py runs this command).
    assert json.loads(instruction("CMD")) == ["dev", "--host", "0.0.0.0"]
    # The ports `kvraft dev` uses by default are among those exposed.
    dev_defaults = {
        parameter.name: parameter.default
        for parameter in cluster_commands.dev.params
        if parameter.name in ("http_port", "raft_port")
    }
    assert dev_defaults == {"http_port": 8001, "raft_port": 7001}
    assert set(dev_defaults.values()) <= exposed_ports()


def test_the_health_check_follows_the_nodes_own_address_with_nothing_hard_coded() -> None:
    # Liveness in the image (no --ready); the address comes from the file the node writes.
    assert healthcheck_command() == HEALTHCHECK_MODULE
    environment = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "ENV")
    url_file = environment.partition(f"{HTTP_URL_FILE_VARIABLE}=")[2].split()[0]
    assert url_file.startswith("/tmp/")  # writable by the unprivileged user, per container
    # No address or port is baked in: the old KVRAFT_HEALTHCHECK_URL pinned node 1's.
    assert "127.0.0.1" not in environment + instruction("HEALTHCHECK")
    assert "KVRAFT_HEALTHCHECK_URL" not in DOCKERFILE.read_text(encoding="utf-8")
    # The check must answer before Docker's own timeout kills it.
    timeout_s = float(instruction("HEALTHCHECK").partition("--timeout=")[2].split("s")[0])
    assert timeout_s > CHECK_TIMEOUT_S


def test_the_image_runs_unprivileged_keeps_data_in_a_volume_and_stops_on_sigterm() -> None:
    user = instruction("USER").split(":")[0]
    assert user.isdigit() and int(user) != 0
    assert json.loads(instruction("VOLUME")) == ["/data"]
    # The directory compose's secrets volume is mounted at: the image's user owns it, alone,
    # so the volume it seeds is writable by `init` and readable by nobody else.
    setup = " ".join(
        arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"
    )
    assert "chown kvraft:kvraft /data /var/lib/kvraft/secrets" in setup
    assert "chmod 0700 /var/lib/kvraft/secrets" in setup
    assert instruction("STOPSIGNAL") == "SIGTERM"
    assert instruction("FROM").startswith("python:3.11-slim")


def test_the_console_script_the_image_runs_is_the_packages() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert json.loads(instruction("ENTRYPOINT"))[0] in pyproject["project"]["scripts"]


def test_the_build_copies_what_pip_install_needs_and_dockerignore_keeps_it() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    sources = {
        source
        for keyword, arguments in dockerfile_instructions()
        if keyword == "COPY"
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    }
    needed = {"pyproject.toml", "kvraft"}
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        needed.add(readme)
    assert needed <= sources
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in sources:
        parts = pathlib.PurePosixPath(source).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        ignored = [p for p in patterns for prefix in prefixes if fnmatch.fnmatch(prefix, p)]
        assert not ignored, f".dockerignore drops {source} ({ignored})"


def exposed_ports() -> set[int]:
    exposed: set[int] = set()
    for entry in instruction("EXPOSE").split():
        low, _, high = entry.partition("-")
        exposed |= set(range(int(low), int(high or low) + 1))
    return exposed


def test_the_image_exposes_every_port_of_the_five_node_cluster() -> None:
    exposed = exposed_ports()
    for node in load_config(REPO / "configs" / "docker-5.toml").nodes:
        assert {node.raft_port, node.http_port} <= exposed


# --- docker-compose.yml -----------------------------------------------------------------------


def test_compose_starts_three_nodes_by_default(compose_default: dict[str, Any]) -> None:
    assert sorted(compose_default["services"]) == [INIT_SERVICE, "node1", "node2", "node3"]


def test_the_five_profile_with_its_variable_starts_five_nodes(
    compose_five: dict[str, Any],
) -> None:
    assert sorted(node_services(compose_five)) == [f"node{n}" for n in range(1, 6)]


@pytest.mark.parametrize(
    ("fixture", "size", "suffix"),
    [("compose_default", 3, ""), ("compose_five", 5, ""), ("compose_tls", 3, "-tls")],
)
def test_every_service_runs_its_own_node_of_one_shared_cluster_config(
    fixture: str, size: int, suffix: str, request: pytest.FixtureRequest
) -> None:
    resolved: dict[str, Any] = request.getfixturevalue(fixture)
    configs = []
    for name, service in sorted(node_services(resolved).items()):
        node_id, config = service_node(name, service)
        assert name == f"node{node_id}"
        node = config.node(node_id)
        # Peers dial the service name, which compose's network resolves.
        assert node.raft_host == name
        assert node.http_host == name
        assert config.path == REPO / "configs" / f"docker-{size}{suffix}.toml"
        configs.append(config)
    assert len(configs) == size
    assert all(config == configs[0] for config in configs), "every node reads the same cluster"
    assert [node.id for node in configs[0].nodes] == list(range(1, size + 1))


@pytest.mark.parametrize("fixture", ["compose_default", "compose_five", "compose_tls"])
def test_each_service_publishes_its_http_port_checks_readiness_and_keeps_data_in_a_volume(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    resolved: dict[str, Any] = request.getfixturevalue(fixture)
    volume_sources = []
    for name, service in node_services(resolved).items():
        node_id, config = service_node(name, service)
        node = config.node(node_id)
        assert published_ports(service) == {(node.http_port, node.http_port)}
        # Readiness: the image's check with --ready, following the node's own address.
        assert service["healthcheck"]["test"] == ["CMD", *HEALTHCHECK_MODULE, "--ready"]
        assert "KVRAFT_HEALTHCHECK_URL" not in service.get("environment", {})
        volumes = [
            volume
            for volume in service["volumes"]
            if isinstance(volume, dict)
            and volume.get("type") == "volume"
            and volume["target"] != SECRETS_MOUNT
        ]
        assert [volume["target"] for volume in volumes] == [str(node.data_dir)]
        volume_sources.append(volumes[0]["source"])
        assert service["restart"] == "no"
    assert len(set(volume_sources)) == len(volume_sources), "each node has its own volume"


def test_the_five_profile_without_its_variable_leaves_node4_out_of_the_cluster() -> None:
    # Documented fail-fast: node4 then reads the 3-node config and `serve --id 4` refuses to
    # start, rather than joining peers whose config does not list it.
    resolved = compose_config("five")
    node_id, config = service_node("node4", resolved["services"]["node4"])
    with pytest.raises(ConfigError, match="no node with id 4"):
        config.node(node_id)


@pytest.mark.parametrize("fixture", ["compose_default", "compose_five", "compose_tls"])
def test_init_writes_the_peer_secret_and_certificates_every_node_reads_before_it_starts(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    # Peer authentication is on by default in compose (issue #20): every node's config names
    # a secret inside the volume `init` fills, and no node starts before `init` succeeded.
    resolved: dict[str, Any] = request.getfixturevalue(fixture)
    init = resolved["services"][INIT_SERVICE]
    assert not init.get("profiles"), "it runs whatever the profiles"
    script = " ".join(init["command"])
    assert init["entrypoint"] == ["sh", "-ec"]
    words = script.split()
    secret_path = words[words.index("peer-secret") + 2]  # `kvraft peer-secret init PATH`
    assert secret_path.startswith(SECRETS_MOUNT + "/")
    certs_dir = option_value(words, "--dir")
    assert certs_dir.startswith(SECRETS_MOUNT + "/")
    assert option_value(words, "--config") == "/etc/kvraft/cluster.toml"
    assert init["environment"]["KVRAFT_PEER_SECRET"] == ""  # passed through when set
    secrets_volume = next(v for v in init["volumes"] if v.get("target") == SECRETS_MOUNT)
    assert not secrets_volume.get("read_only")
    init_config = bind_mounts(init)["/etc/kvraft/cluster.toml"]
    for name, service in node_services(resolved).items():
        node_id, config = service_node(name, service)
        # `init` makes the certificates of the very config the nodes read.
        assert bind_mounts(service)["/etc/kvraft/cluster.toml"] == init_config
        assert service["depends_on"][INIT_SERVICE]["condition"] == (
            "service_completed_successfully"
        )
        mounted = next(v for v in service["volumes"] if v.get("target") == SECRETS_MOUNT)
        assert mounted["source"] == secrets_volume["source"] and mounted["read_only"]
        assert str(config.peer_secret_file) == secret_path
        if config.tls is not None:
            assert config.peer_tls is not None
            mine = config.tls.for_node(node_id)
            assert (mine.cert, mine.key) == (
                pathlib.Path(certs_dir) / f"node{node_id}.crt",
                pathlib.Path(certs_dir) / f"node{node_id}.key",
            )
            assert mine.ca == config.peer_tls.ca == pathlib.Path(certs_dir) / "ca.crt"
    assert (fixture == "compose_tls") == all(
        service_node(name, service)[1].tls is not None
        for name, service in node_services(resolved).items()
    )
