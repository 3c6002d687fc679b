"""TLS end to end (issue #20): real node processes on 127.0.0.1 with `[tls]` (HTTPS) and
`[peer_tls]` (mutual TLS between peers, each certificate naming its node id), certificates
from `kvraft.certs`.

- Clients (the library, the CLI, a plain HTTPS request as curl makes) read and write through
  any node; a follower forwards to the leader over HTTPS.
- A client that does not trust the cluster's CA is refused; with `client_ca`, so is a client
  without a certificate, or with one from another CA, while the nodes' own forwarding works.
- At the peer port: an outsider with a certificate from another CA, or without TLS, is refused
  at the handshake; a member's certificate claiming another member's id is refused; a node
  started with another node's certificate is cut off by its peers, while the other two keep
  leading and committing. Each refusal is counted and logged once; no term changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft.certs import init_certificates
from kvraft.client import AsyncKVClient, KVClient, KVError, Unavailable
from kvraft.config import PeerTlsSettings, TlsSettings, render_config
from kvraft.launcher import free_ports, serve_command
from kvraft.raft.codec import encode_message
from kvraft.raft.messages import AppendEntries, Entry, EntryKind, TimeoutNow
from kvraft.tls import https_client_context, peer_client_context
from kvraft.transport.frames import (
    HANDSHAKE_BYTES_MAX,
    PROTOCOL_VERSION,
    FrameDecoder,
    Handshake,
    OutboundHandshake,
    decode_listener_answer,
    encode_frame,
    encode_handshake,
)
from tests.cluster_harness import Cluster, http, running, wait_for

pytestmark = pytest.mark.slow

SECRET = secrets.token_bytes(32)
SOCKET_TIMEOUT_S = 5.0
CLI_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cluster's CA and certificates, and beside them (`other`) another CA's."""
    directory = tmp_path_factory.mktemp("tls") / "certs"
    init_certificates(directory, [1, 2, 3, 4])  # 4: a node that joins
    init_certificates(directory.with_name("other"), [1, 2, 3])
    return directory


def _tls_cluster(root: Path, certs: Path, *, client_ca: bool = False) -> Cluster:
    ca = certs / "ca.crt"
    cert, key = certs / "node{id}.crt", certs / "node{id}.key"
    client_context = https_client_context(
        ca,
        certs / "client.crt" if client_ca else None,
        certs / "client.key" if client_ca else None,
    )
    return Cluster(
        root,
        3,
        peer_secret=SECRET,
        tls=TlsSettings(cert, key, client_ca=ca if client_ca else None, ca=ca),
        peer_tls=PeerTlsSettings(cert, key, ca),
        client_context=client_context,
    )


@pytest.fixture
def cluster3(tmp_path: Path, certs: Path) -> Iterator[Cluster]:
    yield from running(_tls_cluster(tmp_path, certs))


def _metric(cluster: Cluster, node_id: int, name: str) -> float:
    text = cluster.request(node_id, "GET", "/metrics").body.decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} is exported"
    return float(match.group(1))


def _kvraft(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvraft", *arguments],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env={**os.environ, **(env or {})},
        check=False,
    )


# --- clients -----------------------------------------------------------------------------------


def test_an_https_cluster_with_peer_tls_serves_clients_and_followers_forward_to_the_leader(
    cluster3: Cluster, certs: Path
) -> None:
    leader = cluster3.leader()
    followers = [node_id for node_id in sorted(cluster3.processes) if node_id != leader]
    assert all(cluster3.url(node_id).startswith("https://") for node_id in cluster3.processes)

    # What `curl --cacert ca.crt -X PUT https://follower/...` does: the follower forwards.
    answer = cluster3.request(followers[0], "PUT", "/v1/kv/greeting", b"hello")
    assert answer.status == 200, answer
    # Asked at a follower's address, answered by the leader: the follower relayed it.
    assert answer.headers["X-Kvraft-Node-Id"] == str(leader)
    read = cluster3.request(followers[1], "GET", "/v1/kv/greeting")
    assert (read.status, read.body) == (200, b"hello")

    # The client library, given only the followers and the CA.
    client = KVClient([cluster3.url(node_id) for node_id in followers], cacert=certs / "ca.crt")
    revision = client.put("library/sync", b"over https")
    assert client.get("library/sync") == (b"over https", revision)

    async def use_async_client() -> tuple[bytes, int] | None:
        async with AsyncKVClient(
            [cluster3.url(followers[1])], cacert=certs / "ca.crt"
        ) as async_client:
            written = await async_client.put("library/async", b"also")
            assert written > revision
            return await async_client.get("library/async")

    answer_async = asyncio.run(use_async_client())
    assert answer_async is not None and answer_async[0] == b"also"

    # Every client command takes the CA as a flag or from the environment.
    endpoints = ",".join(cluster3.url(node_id) for node_id in followers)
    put = _kvraft(
        "put", "cli/key", "cli value", "--endpoints", endpoints, "--cacert", str(certs / "ca.crt")
    )
    assert put.returncode == 0, put.stderr
    environment = {"KVRAFT_ENDPOINTS": endpoints, "KVRAFT_CACERT": str(certs / "ca.crt")}
    got = _kvraft("get", "cli/key", env=environment)
    assert (got.returncode, got.stdout) == (0, "cli value"), got.stderr
    status = _kvraft("status", "--output", "json", env=environment)
    assert status.returncode == 0, status.stderr
    nodes = json.loads(status.stdout)["nodes"]
    assert {answer["leader_id"] for answer in nodes.values()} == {leader}

    for node_id in cluster3.processes:
        assert _metric(cluster3, node_id, "kvraft_peer_tls_enabled") == 1.0
        assert _metric(cluster3, node_id, "kvraft_peer_auth_enabled") == 1.0
        assert _metric(cluster3, node_id, "kvraft_peer_auth_failures_total") == 0.0
        assert "mutual TLS" in cluster3.log_text(node_id)


def test_a_client_that_does_not_trust_the_clusters_ca_is_refused(
    cluster3: Cluster, certs: Path
) -> None:
    cluster3.leader()
    url = cluster3.url(1)
    # The system's trust store does not know a private CA; neither does another CA.
    for cacert in (None, certs.with_name("other") / "ca.crt"):
        client = KVClient([url], timeout_s=5, unreachable_timeout_s=1, cacert=cacert)
        with pytest.raises(Unavailable, match="certificate verify failed"):
            client.get("anything")
    refused = _kvraft("get", "anything", "--endpoints", url)
    assert refused.returncode == 1
    assert "certificate verify failed" in refused.stderr
    # Plain HTTP at an HTTPS port gets no answer at all.
    with pytest.raises(OSError):
        http("GET", url.replace("https://", "http://") + "/v1/status", timeout_s=5)
    missing = _kvraft("get", "anything", "--endpoints", url, "--cacert", "/nonexistent/ca.crt")
    assert missing.returncode == 2 and "--cacert" in missing.stderr


def test_with_client_ca_a_client_needs_a_certificate_from_the_ca_and_forwarding_still_works(
    tmp_path: Path, certs: Path
) -> None:
    for cluster in running(_tls_cluster(tmp_path, certs, client_ca=True)):
        leader = cluster.leader()
        follower = next(node_id for node_id in sorted(cluster.processes) if node_id != leader)
        url = cluster.url(follower)
        # A write through a follower: it forwards to the leader with its own certificate.
        answer = cluster.request(follower, "PUT", "/v1/kv/mtls", b"forwarded")
        assert answer.status == 200, answer
        with_certificate = KVClient(
            [url], cacert=certs / "ca.crt", cert=certs / "client.crt", key=certs / "client.key"
        )
        got = with_certificate.get("mtls")
        assert got is not None and got[0] == b"forwarded"

        other = certs.with_name("other")
        for cert, key in ((None, None), (other / "client.crt", other / "client.key")):
            context = https_client_context(certs / "ca.crt", cert, key)
            with pytest.raises(OSError):  # the node's TLS alert, or the connection cut
                http("GET", url + "/v1/kv/mtls", context=context, timeout_s=5)
            client = KVClient([url], timeout_s=5, unreachable_timeout_s=1, ssl_context=context)
            with pytest.raises(KVError):
                client.get("mtls")
        anonymous = _kvraft("get", "mtls", "--endpoints", url, "--cacert", str(certs / "ca.crt"))
        assert anonymous.returncode == 1, anonymous.stdout
        identified = _kvraft(
            "get", "mtls", "--endpoints", url, "--cacert", str(certs / "ca.crt"),
            "--cert", str(certs / "client.crt"), "--key", str(certs / "client.key"),
        )  # fmt: skip
        assert (identified.returncode, identified.stdout) == (0, "forwarded"), identified.stderr


# --- peers -------------------------------------------------------------------------------------


def _read_until_closed(connection: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except (OSError, ssl.SSLError):  # reset, or the node's TLS alert
        pass
    return received


def _forged(cluster: Cluster, victim: int, impostor: int) -> bytes:
    """An AppendEntries carrying an invented write, then a TimeoutNow, at the next term."""
    status = cluster.status(victim)
    term, last = status["term"], status["last_log_index"]
    entry = Entry(term + 1, last + 1, EntryKind.NORMAL, b"\x92\xa3put\xa6forged")
    messages = [
        AppendEntries(term + 1, impostor, victim, last, term, (entry,), last + 1),
        TimeoutNow(term + 1, impostor, victim),
    ]
    return b"".join(encode_frame(encode_message(message)) for message in messages)


def _attempt(address: tuple[str, int], context: ssl.SSLContext | None, opening: bytes) -> bool:
    """Connect (through TLS with `context`), send `opening`, read until the node closes; True
    if the node accepted a handshake."""
    with socket.create_connection(address, timeout=SOCKET_TIMEOUT_S) as raw:
        if context is None:
            raw.sendall(opening)
            received = _read_until_closed(raw)
        else:
            try:
                with context.wrap_socket(raw) as connection:
                    connection.sendall(opening)
                    received = _read_until_closed(connection)
            except OSError:  # ssl.SSLError too: refused during the TLS handshake
                return False
    frames = FrameDecoder(HANDSHAKE_BYTES_MAX).feed(received) if received else []
    return any(getattr(decode_listener_answer(frame), "accepted", False) for frame in frames)


def _state(cluster: Cluster) -> dict[int, tuple[int, int]]:
    return {
        node_id: (status["term"], status["last_log_index"])
        for node_id in sorted(cluster.processes)
        for status in [cluster.status(node_id)]
    }


def test_outsiders_are_refused_at_the_peer_handshake_and_change_nothing(
    cluster3: Cluster, certs: Path
) -> None:
    leader = cluster3.leader()
    assert cluster3.request(leader, "PUT", "/v1/kv/before", b"acknowledged").status == 200
    wait_for(
        lambda: len({index for _, index in _state(cluster3).values()}) == 1 or None,
        what="every node to hold the same log",
    )
    before = _state(cluster3)
    victim = next(node_id for node_id in sorted(cluster3.processes) if node_id != leader)
    impostor = next(
        node_id for node_id in sorted(cluster3.processes) if node_id not in (victim, leader)
    )
    spec = cluster3.config.node(victim)
    address = (spec.raft_host, spec.raft_port)
    forged = _forged(cluster3, victim, impostor)
    claim = Handshake(PROTOCOL_VERSION, cluster3.config.cluster_id, impostor, victim)
    # With the real secret, even: only the certificate is missing.
    opening = OutboundHandshake(claim, SECRET).first_frame() + forged
    failures_before = _metric(cluster3, victim, "kvraft_peer_auth_failures_total")

    other = certs.with_name("other")
    another_ca = peer_client_context(
        other / f"node{impostor}.crt", other / f"node{impostor}.key", other / "ca.crt"
    )
    another_ca.verify_mode = ssl.CERT_NONE  # the outsider does not care whom it reaches
    for _ in range(2):  # a second attempt is refused as well, but logged only once
        assert not _attempt(address, another_ca, opening)
    # Without TLS at all: a kvraft handshake in the clear.
    assert not _attempt(address, None, encode_frame(encode_handshake(claim)) + forged)
    # A member's own certificate (the victim's neighbour, `leader`) claiming `impostor`.
    stolen = peer_client_context(
        certs / f"node{leader}.crt", certs / f"node{leader}.key", certs / "ca.crt"
    )
    assert not _attempt(address, stolen, opening)

    wait_for(
        lambda: _metric(cluster3, victim, "kvraft_peer_auth_failures_total") >= failures_before + 4,
        what="every refusal to be counted",
    )
    log_text = cluster3.log_text(victim)
    assert log_text.count("TLS handshake failed: certificate verify failed") == 1
    assert "TLS handshake failed" in log_text  # the one in the clear too
    assert f"certificate is node {leader}'s, but it claims to be node {impostor}" in log_text
    # No term changed, nothing was appended, the leader still leads and still commits.
    assert cluster3.leader() == leader
    assert _state(cluster3) == before
    assert cluster3.request(leader, "PUT", "/v1/kv/after", b"still serving").status == 200
    for node_id in sorted(cluster3.processes):
        assert cluster3.request(node_id, "GET", "/v1/kv/before").body == b"acknowledged"


def test_a_node_with_another_nodes_certificate_is_cut_off_and_the_others_keep_committing(
    tmp_path: Path, certs: Path
) -> None:
    cluster = _tls_cluster(tmp_path, certs)
    # Node 3 is started with node 2's peer certificate (say, a copy-paste mistake).
    assert cluster.config.peer_tls is not None
    wrong = dataclasses.replace(
        cluster.config,
        peer_tls=dataclasses.replace(
            cluster.config.peer_tls, cert=certs / "node2.crt", key=certs / "node2.key"
        ),
    )
    wrong_path = tmp_path / "node3-with-node2-certificate.toml"
    wrong_path.write_text(render_config(wrong))
    try:
        cluster.start(1)
        cluster.start(2)
        cluster.start_command(3, serve_command(3, wrong_path))
        leader = cluster.leader(among=[1, 2])
        # Both sides refuse it: as a dialer, it claims 3 with 2's certificate; as a listener,
        # it answers for node 3 with node 2's.
        for node_id in (1, 2):
            wait_for(
                lambda n=node_id: "its certificate names 2, not node 3" in cluster.log_text(n),
                what=f"node {node_id} to refuse node 3's certificate when it dials node 3",
            )
            wait_for(
                lambda n=node_id: "but it claims to be node 3" in cluster.log_text(n),
                what=f"node {node_id} to refuse node 3's certificate when node 3 dials it",
            )
            assert _metric(cluster, node_id, "kvraft_peer_auth_failures_total") >= 2
        for number in range(5):
            answer = cluster.request(leader, "PUT", f"/v1/kv/while-cut-off/{number}", b"x")
            assert answer.status == 200, answer
        committed = cluster.status(leader)["commit_index"]
        node3 = cluster.status(3)
        assert node3["applied_index"] < committed and node3["leader_id"] == 0
        assert cluster.leader(among=[1, 2]) == leader
        for node_id in (1, 2):
            log_text = cluster.log_text(node_id)
            # Each logged once (node 3 keeps retrying: DEBUG from then on).
            assert log_text.count("certificate is node 2's, but it claims to be node 3") == 1
            assert log_text.count("refused peer 3 at") == 1

        # With its own certificate it is let in and catches up.
        cluster.stop(3)
        cluster.start(3)
        wait_for(
            lambda: cluster.status(3)["applied_index"] >= committed or None,
            what="node 3 to catch up once it presents its own certificate",
        )
        assert cluster.request(3, "GET", "/v1/kv/while-cut-off/4").body == b"x"
    finally:
        cluster.close()


def test_a_node_joins_an_https_cluster_and_serves_what_it_replicated(
    cluster3: Cluster, certs: Path
) -> None:
    # `serve --join https://...` asks for the cluster id and the members, and adds itself,
    # over HTTPS with the config's [tls]; then peer mTLS with its own certificate (node 4's).
    leader = cluster3.leader()
    assert cluster3.request(leader, "PUT", "/v1/kv/before-join", b"replicated").status == 200
    http_port, raft_port = free_ports(2)
    cluster3.start_command(
        4,
        serve_command(
            4,
            cluster3.config_path,
            raft_address=f"127.0.0.1:{raft_port}",
            http_address=f"127.0.0.1:{http_port}",
            data_dir=cluster3.root / "data" / "node4",
            join=cluster3.url(next(n for n in (1, 2, 3) if n != leader)),  # via a follower
        ),
    )

    def joined() -> bool | None:
        members = cluster3.request(leader, "GET", "/v1/members").json()["members"]
        return any(m["id"] == 4 and m["voter"] and m["caught_up"] for m in members) or None

    wait_for(joined, timeout_s=60, what="node 4 to join as a caught-up voter")
    url = f"https://127.0.0.1:{http_port}"
    got = http("GET", f"{url}/v1/kv/before-join?consistency=stale", context=cluster3.client_context)
    assert (got.status, got.body) == (200, b"replicated")
    # Node 4 forwards a write to the leader over HTTPS, like any follower.
    put = http("PUT", f"{url}/v1/kv/after-join", b"via node 4", context=cluster3.client_context)
    assert put.status == 200, put
    assert _metric(cluster3, leader, "kvraft_peer_auth_failures_total") == 0.0


def test_a_bad_certificate_path_stops_the_node_with_one_line_and_the_config_exit_code(
    tmp_path: Path, certs: Path
) -> None:
    cluster = _tls_cluster(tmp_path, certs)
    assert cluster.config.tls is not None
    broken = dataclasses.replace(
        cluster.config, tls=dataclasses.replace(cluster.config.tls, key=tmp_path / "no-such.key")
    )
    path = tmp_path / "broken.toml"
    path.write_text(render_config(broken))
    run = subprocess.run(
        serve_command(1, path), capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
    )
    assert run.returncode == 4  # EXIT_CONFIG
    errors = [line for line in run.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "no-such.key: no such file" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
