"""The outsider test (issue #20): real node processes with the cluster's peer secret, and a
process that knows the cluster id and a member's node id but not the secret.

Before peer authentication, such an outsider could make a follower apply an invented write
and win an election with one forged AppendEntries and a TimeoutNow, force the leader down
with forged votes, and wedge every node with one term-max Heartbeat. Here it connects to
the peer ports and sends exactly those messages, built with kvraft's own codec, without the
secret, with a wrong one and with a replayed real handshake: it is refused at the handshake,
no term changes, nothing is appended, the leader keeps leading and every acknowledged write
stays readable.
"""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft.raft.codec import TERM_MAX, encode_message
from kvraft.raft.messages import (
    AppendEntries,
    Entry,
    EntryKind,
    Heartbeat,
    RequestVote,
    TimeoutNow,
)
from kvraft.transport.frames import (
    HANDSHAKE_BYTES_MAX,
    PROTOCOL_VERSION,
    FrameDecoder,
    Handshake,
    HandshakeError,
    OutboundHandshake,
    decode_listener_answer,
    encode_frame,
    encode_handshake,
    encode_proof,
)
from tests.cluster_harness import Cluster, running, wait_for

SECRET = secrets.token_bytes(32)
SOCKET_TIMEOUT_S = 5.0


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[Cluster]:
    yield from running(Cluster(tmp_path, 3, peer_secret=SECRET))


def _forged_messages(cluster: Cluster, leader: int, victim: int, impostor: int) -> bytes:
    """The attacks of issue #20, as payload frames from `impostor` to `victim`."""
    term = cluster.status(victim)["term"]
    last_index = cluster.status(victim)["last_log_index"]
    entry = Entry(term + 1, last_index + 1, EntryKind.NORMAL, b"\x92\xa3put\xa6forged")
    messages = [
        AppendEntries(term + 1, impostor, victim, last_index, term, (entry,), last_index + 1),
        TimeoutNow(term + 1, impostor, victim),
        RequestVote(term + 50, impostor, victim, 10**9, term + 49, False, True),
        Heartbeat(TERM_MAX - 1, impostor, victim, 0),
    ]
    assert leader != impostor
    return b"".join(encode_frame(encode_message(message)) for message in messages)


def _read_until_closed(connection: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received


def _state(cluster: Cluster) -> dict[int, tuple[int, int, str]]:
    return {
        node_id: (status["term"], status["last_log_index"], status["role"])
        for node_id in sorted(cluster.processes)
        for status in [cluster.status(node_id)]
    }


def _auth_failures(cluster: Cluster, node_id: int) -> int:
    text = cluster.request(node_id, "GET", "/metrics").body.decode()
    match = re.search(r"^kvraft_peer_auth_failures_total (\S+)$", text, re.MULTILINE)
    assert match is not None, "the metric is exported"
    return int(float(match.group(1)))


def _attack_without_secret(address: tuple[str, int], handshake: Handshake, forged: bytes) -> str:
    with socket.create_connection(address, timeout=SOCKET_TIMEOUT_S) as outsider:
        outsider.sendall(encode_frame(encode_handshake(handshake)) + forged)
        frames = FrameDecoder(HANDSHAKE_BYTES_MAX).feed(_read_until_closed(outsider))
    answer = decode_listener_answer(frames[0])
    assert not getattr(answer, "accepted", True)
    return str(getattr(answer, "reason", ""))


def _attack_with_wrong_secret(
    address: tuple[str, int], handshake: Handshake, forged: bytes
) -> None:
    dialer = OutboundHandshake(handshake, secrets.token_bytes(32))
    with socket.create_connection(address, timeout=SOCKET_TIMEOUT_S) as outsider:
        outsider.sendall(dialer.first_frame())
        decoder = FrameDecoder(HANDSHAKE_BYTES_MAX)
        frames: list[bytes] = []
        while not frames:
            chunk = outsider.recv(4096)
            assert chunk, "the node answers a handshake with a challenge"
            frames = decoder.feed(chunk)
        with pytest.raises(HandshakeError):  # the node's proof does not verify: not our secret
            dialer.receive(frames[0])
        # Carry on regardless, with a made-up proof and the forged messages behind it.
        outsider.sendall(encode_frame(encode_proof(b"\0" * 32)) + forged)
        _read_until_closed(outsider)


def _record_real_handshake(address: tuple[str, int], handshake: Handshake) -> bytes:
    """Every byte a real member sends to open a connection: its handshake and its proof."""
    dialer = OutboundHandshake(handshake, SECRET)
    recorded = dialer.first_frame()
    with socket.create_connection(address, timeout=SOCKET_TIMEOUT_S) as member:
        member.sendall(recorded)
        decoder = FrameDecoder(HANDSHAKE_BYTES_MAX)
        while not dialer.done:
            chunk = member.recv(4096)
            assert chunk, "the node completes a real member's handshake"
            for frame in decoder.feed(chunk):
                answer = dialer.receive(frame)
                if answer is not None:
                    member.sendall(answer)
                    recorded += answer
        assert dialer.accepted
    return recorded


def test_an_outsider_without_the_secret_is_refused_and_changes_nothing(
    cluster3: Cluster,
) -> None:
    leader = cluster3.leader()
    acknowledged = {}
    for number in range(10):
        key, value = f"before/{number}", f"value-{number}".encode()
        assert cluster3.request(leader, "PUT", f"/v1/kv/{key}", value).status == 200
        acknowledged[key] = value
    wait_for(
        lambda: len({index for _, index, _ in _state(cluster3).values()}) == 1 or None,
        what="every node to hold the same log",
    )
    before = _state(cluster3)
    followers = [node for node in sorted(cluster3.processes) if node != leader]
    impostor = followers[1]  # a real member's id, as an outsider would claim it
    for victim in (followers[0], leader):
        spec = cluster3.config.node(victim)
        address = (spec.raft_host, spec.raft_port)
        forged = _forged_messages(cluster3, leader, victim, impostor)
        handshake = Handshake(PROTOCOL_VERSION, cluster3.config.cluster_id, impostor, victim)

        reason = _attack_without_secret(address, handshake, forged)
        assert "requires peer authentication" in reason
        assert cluster3.config.cluster_id not in reason
        _attack_with_wrong_secret(address, handshake, forged)
        # A real member's handshake, recorded and replayed with the forged messages behind:
        # the node's fresh nonce makes the recorded proof worthless.
        recorded = _record_real_handshake(address, handshake)
        with socket.create_connection(address, timeout=SOCKET_TIMEOUT_S) as replayer:
            replayer.sendall(recorded + forged)
            frames = FrameDecoder(HANDSHAKE_BYTES_MAX).feed(_read_until_closed(replayer))
        refusal = decode_listener_answer(frames[-1])
        assert not getattr(refusal, "accepted", True)
        assert "authentication failed" in getattr(refusal, "reason", "")
        assert _auth_failures(cluster3, victim) >= 3

    # No term changed, nothing was appended, the leader still leads.
    assert cluster3.leader() == leader
    assert _state(cluster3) == before
    for key, value in acknowledged.items():
        for node in sorted(cluster3.processes):
            assert cluster3.request(node, "GET", f"/v1/kv/{key}").body == value
    assert cluster3.request(leader, "PUT", "/v1/kv/after", b"still serving").status == 200
    for node in sorted(cluster3.processes):
        log_text = cluster3.log_text(node)
        assert SECRET.hex() not in log_text  # never logged
        assert "NO PEER AUTHENTICATION" not in log_text
