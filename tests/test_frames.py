"""Tests for kvraft.transport.frames: framing, its limits, and the handshake."""

from __future__ import annotations

import itertools
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvraft.raft.codec import INSTALL_SNAPSHOT_BYTES_MAX
from kvraft.transport.frames import (
    CLUSTER_ID_BYTES_MAX,
    FRAME_BYTES_MAX,
    HANDSHAKE_BYTES_MAX,
    KEEPALIVE_FRAME,
    NODE_ID_MAX,
    NONCE_BYTES,
    PIECE_HEADER_BYTES,
    PIECE_MARKER,
    PIECED_MESSAGE_BYTES_MAX,
    PIECES_BUFFERED_BYTES_MAX,
    PROOF_BYTES,
    PROTOCOL_VERSION,
    REFUSAL_REASON_CHARS_MAX,
    FrameDecoder,
    FrameError,
    Handshake,
    HandshakeError,
    HandshakeReply,
    InboundConnection,
    OutboundHandshake,
    PeerAuthError,
    PeerProtocolError,
    PiecesBudget,
    check_handshake,
    decode_handshake,
    decode_handshake_reply,
    encode_frame,
    encode_handshake,
    encode_handshake_reply,
    encode_proof,
    handshake_proof,
    iter_pieces,
    split_into_pieces,
)

PAYLOADS = [b"a", b"", b"\x00\x00\x00\x05hello", bytes(range(256)) * 3, b"z" * 70_000]


def length_prefix(length: int) -> bytes:
    return struct.pack(">I", length)


def handshake_payload(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "protocol_version": PROTOCOL_VERSION,
        "cluster_id": "c1",
        "node_id": 2,
        "target_node_id": 1,
    }
    fields.update(overrides)
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


# --- framing -------------------------------------------------------------------------------


def test_a_frame_is_a_big_endian_length_then_the_payload() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert KEEPALIVE_FRAME == b"\x00\x00\x00\x00"


def test_frames_round_trip_in_order_when_fed_at_once() -> None:
    stream = b"".join(encode_frame(payload) for payload in PAYLOADS)
    assert FrameDecoder().feed(stream) == PAYLOADS


def test_frames_round_trip_for_every_split_point_of_a_multi_frame_buffer() -> None:
    payloads = [b"first", b"", b"\x00\x00\x00\x01x", b"last frame"]
    stream = b"".join(encode_frame(payload) for payload in payloads)
    for split in range(len(stream) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(stream[:split]) + decoder.feed(stream[split:])
        assert frames == payloads, f"split at {split}"
        assert decoder.buffered_bytes == 0


def test_frames_round_trip_when_fed_one_byte_at_a_time() -> None:
    stream = b"".join(encode_frame(payload) for payload in PAYLOADS[:4])
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for index in range(len(stream)):
        frames += decoder.feed(stream[index : index + 1])
    assert frames == PAYLOADS[:4]


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=10),
)
def test_frames_round_trip_under_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(payload) for payload in payloads)
    bounds = [0, *sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for start, end in itertools.pairwise(bounds):
        frames += decoder.feed(stream[start:end])
    assert frames == payloads


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"hello")[:-1]) == []
    assert decoder.buffered_bytes == 8
    assert decoder.feed(b"o") == [b"hello"]


def test_an_oversized_length_prefix_is_refused_before_any_payload_is_buffered() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="exceeds the limit"):
        decoder.feed(length_prefix(FRAME_BYTES_MAX + 1))
    assert decoder.buffered_bytes == 0


def test_a_length_prefix_at_the_default_limit_is_accepted() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(length_prefix(FRAME_BYTES_MAX) + b"start") == []
    assert decoder.buffered_bytes == 4 + len(b"start")


def test_the_frame_limit_holds_at_its_edge() -> None:
    decoder = FrameDecoder(frame_bytes_max=10)
    assert decoder.feed(encode_frame(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(FrameError):
        decoder.feed(length_prefix(11))


def test_an_oversized_prefix_split_across_reads_is_refused_once_complete() -> None:
    decoder = FrameDecoder(frame_bytes_max=10)
    assert decoder.feed(length_prefix(11)[:3]) == []
    with pytest.raises(FrameError):
        decoder.feed(length_prefix(11)[3:])


def test_a_decoder_stays_failed_after_a_frame_error() -> None:
    decoder = FrameDecoder(frame_bytes_max=10)
    with pytest.raises(FrameError):
        decoder.feed(length_prefix(11))
    with pytest.raises(FrameError):
        decoder.feed(encode_frame(b"fine"))


def test_frames_before_an_oversized_prefix_in_the_same_read_are_not_returned() -> None:
    # The caller closes the connection on the error; it must not act on half a read.
    decoder = FrameDecoder(frame_bytes_max=10)
    with pytest.raises(FrameError):
        decoder.feed(encode_frame(b"ok") + length_prefix(11))


def test_encoding_refuses_a_payload_over_the_limit_and_accepts_one_at_it() -> None:
    assert encode_frame(b"x" * 10, frame_bytes_max=10) == length_prefix(10) + b"x" * 10
    with pytest.raises(ValueError, match="exceeds the frame limit"):
        encode_frame(b"x" * 11, frame_bytes_max=10)


def test_frame_errors_are_the_remote_peers_fault() -> None:
    assert issubclass(FrameError, PeerProtocolError)
    assert issubclass(HandshakeError, PeerProtocolError)


# --- handshake -----------------------------------------------------------------------------


def test_a_handshake_round_trips() -> None:
    handshake = Handshake(
        protocol_version=PROTOCOL_VERSION, cluster_id="prod-eu", node_id=3, target_node_id=5
    )
    assert decode_handshake(encode_handshake(handshake)) == handshake


def test_a_handshake_from_another_protocol_version_is_refused_for_its_version() -> None:
    # A later version may carry other keys: the version is what the refusal must name.
    payload = msgpack.packb({"protocol_version": PROTOCOL_VERSION + 1, "features": [1, 2]})
    with pytest.raises(HandshakeError, match=f"protocol version {PROTOCOL_VERSION + 1}"):
        decode_handshake(payload)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1", "not valid msgpack"),
        (b"\x92\x01\x02", "not a msgpack map"),
        (handshake_payload() + b"\x00", "not valid msgpack"),
        (msgpack.packb({"cluster_id": "c1"}), "protocol_version"),
        (handshake_payload(protocol_version=True), "protocol_version"),
        (handshake_payload(extra=1), "keys"),
        (msgpack.packb({"protocol_version": PROTOCOL_VERSION, "node_id": 2}), "keys"),
        (handshake_payload(cluster_id=b"c1"), "cluster_id"),
        (handshake_payload(cluster_id=""), "cluster_id"),
        (handshake_payload(cluster_id="x" * (CLUSTER_ID_BYTES_MAX + 1)), "cluster_id"),
        (handshake_payload(node_id="2"), "node_id"),
        (handshake_payload(node_id=True), "node_id"),
        (handshake_payload(node_id=0), "node_id"),
        (handshake_payload(node_id=NODE_ID_MAX + 1), "node_id"),
        (handshake_payload(target_node_id=-1), "target_node_id"),
        (b"\x00" * (HANDSHAKE_BYTES_MAX + 1), "exceeds"),
    ],
)
def test_a_malformed_handshake_raises_handshake_error(payload: bytes, reason: str) -> None:
    with pytest.raises(HandshakeError, match=reason):
        decode_handshake(payload)


def test_handshake_field_limits_hold_at_their_edges() -> None:
    longest = "é" * (CLUSTER_ID_BYTES_MAX // 2)  # two UTF-8 bytes each
    handshake = decode_handshake(handshake_payload(cluster_id=longest, node_id=NODE_ID_MAX))
    assert handshake.cluster_id == longest
    assert handshake.node_id == NODE_ID_MAX
    assert len(encode_handshake(handshake)) <= HANDSHAKE_BYTES_MAX


@given(st.binary(max_size=HANDSHAKE_BYTES_MAX + 8))
def test_decoding_any_bytes_as_a_handshake_raises_only_handshake_error(payload: bytes) -> None:
    try:
        handshake = decode_handshake(payload)
    except HandshakeError:
        return
    assert decode_handshake(encode_handshake(handshake)) == handshake


def check(handshake: Handshake, members: frozenset[int] = frozenset({1, 2, 3})) -> None:
    check_handshake(handshake, cluster_id="c1", node_id=1, is_known_peer=members.__contains__)


def test_a_handshake_from_a_member_of_the_cluster_to_this_node_is_accepted() -> None:
    check(Handshake(PROTOCOL_VERSION, "c1", node_id=2, target_node_id=1))


@pytest.mark.parametrize(
    ("handshake", "reason"),
    [
        (Handshake(PROTOCOL_VERSION + 1, "c1", 2, 1), "protocol version"),
        (Handshake(PROTOCOL_VERSION, "other", 2, 1), "cluster id is not this cluster's"),
        (Handshake(PROTOCOL_VERSION, "c1", 2, 3), "addressed to node 3"),
        (Handshake(PROTOCOL_VERSION, "c1", 1, 1), "own id"),
        (Handshake(PROTOCOL_VERSION, "c1", 9, 1), "node id 9 is not a member"),
    ],
)
def test_a_handshake_is_refused_with_a_reason(handshake: Handshake, reason: str) -> None:
    with pytest.raises(HandshakeError, match=reason):
        check(handshake)


def test_membership_is_asked_at_each_handshake() -> None:
    members = {1, 2}
    handshake = Handshake(PROTOCOL_VERSION, "c1", node_id=3, target_node_id=1)
    is_member = members.__contains__
    with pytest.raises(HandshakeError):
        check_handshake(handshake, cluster_id="c1", node_id=1, is_known_peer=is_member)
    members.add(3)
    check_handshake(handshake, cluster_id="c1", node_id=1, is_known_peer=is_member)


def test_handshake_replies_round_trip() -> None:
    for reply in (HandshakeReply(accepted=True), HandshakeReply(False, "cluster id mismatch")):
        assert decode_handshake_reply(encode_handshake_reply(reply)) == reply


def test_a_long_refusal_reason_is_cut_to_fit_the_handshake_limit() -> None:
    reply = HandshakeReply(accepted=False, reason="\U0001f600" * 1000)
    payload = encode_handshake_reply(reply)
    assert len(payload) <= HANDSHAKE_BYTES_MAX
    assert decode_handshake_reply(payload).reason == "\U0001f600" * REFUSAL_REASON_CHARS_MAX


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",
        msgpack.packb([True, ""]),
        msgpack.packb({"accepted": 1, "reason": ""}),
        msgpack.packb({"accepted": True}),
        msgpack.packb({"accepted": False, "reason": b"bytes"}),
    ],
)
def test_a_malformed_handshake_reply_raises_handshake_error(payload: bytes) -> None:
    with pytest.raises(HandshakeError):
        decode_handshake_reply(payload)


# --- the receive side of a connection ------------------------------------------------------


def receiver(
    frame_bytes_max: int = FRAME_BYTES_MAX, pieced_message_bytes_max: int = 10_000
) -> InboundConnection:
    return InboundConnection(
        cluster_id="c1",
        node_id=1,
        is_known_peer={2, 3}.__contains__,
        frame_bytes_max=frame_bytes_max,
        pieced_message_bytes_max=pieced_message_bytes_max,
    )


def good_handshake_frame(node_id: int = 2) -> bytes:
    return encode_frame(encode_handshake(Handshake(PROTOCOL_VERSION, "c1", node_id, 1)))


def test_a_connection_yields_payloads_after_its_handshake_without_keepalives() -> None:
    connection = receiver()
    stream = good_handshake_frame(3) + encode_frame(b"m1") + KEEPALIVE_FRAME + encode_frame(b"m2")
    assert connection.receive_data(stream) == [b"m1", b"m2"]
    assert connection.handshake is not None
    assert connection.handshake.node_id == 3


def test_a_connection_gives_the_same_payloads_for_every_split_point() -> None:
    stream = good_handshake_frame() + encode_frame(b"first") + encode_frame(b"second")
    for split in range(len(stream) + 1):
        connection = receiver()
        payloads = connection.receive_data(stream[:split]) + connection.receive_data(stream[split:])
        assert payloads == [b"first", b"second"], f"split at {split}"


def test_before_the_handshake_only_handshake_sized_frames_are_accepted() -> None:
    # At the limit the frame is read (and is garbage); one byte over, it is never buffered.
    with pytest.raises(HandshakeError):
        receiver().receive_data(encode_frame(b"\xc1" * HANDSHAKE_BYTES_MAX))
    with pytest.raises(FrameError):
        receiver().receive_data(length_prefix(HANDSHAKE_BYTES_MAX + 1))


def test_after_the_handshake_frames_up_to_the_configured_limit_are_accepted() -> None:
    connection = receiver(frame_bytes_max=5000)
    payload = b"p" * 5000
    assert connection.receive_data(good_handshake_frame() + encode_frame(payload)) == [payload]
    with pytest.raises(FrameError):
        connection.receive_data(length_prefix(5001))


def test_a_refused_handshake_raises_before_any_payload_is_returned() -> None:
    stream = good_handshake_frame(node_id=7) + encode_frame(b"from a stranger")
    connection = receiver()
    with pytest.raises(HandshakeError, match="node id 7"):
        connection.receive_data(stream)
    assert connection.handshake is None


@given(st.binary(max_size=2000))
def test_any_bytes_on_a_connection_raise_only_protocol_errors(data: bytes) -> None:
    try:
        payloads = receiver(frame_bytes_max=1000).receive_data(data)
    except PeerProtocolError:
        return
    assert all(payloads)  # keepalives are never handed out


# --- messages larger than a frame, in pieces -----------------------------------------------


def test_a_message_that_fits_a_frame_is_not_split() -> None:
    assert split_into_pieces(b"m" * 100, frame_bytes_max=100) == [b"m" * 100]


def test_a_large_message_goes_in_pieces_that_fit_frames_and_arrives_whole() -> None:
    message = bytes(range(256)) * 39  # 9,984 bytes
    pieces = split_into_pieces(message, frame_bytes_max=1000)
    assert all(len(piece) <= 1000 and piece[0] == PIECE_MARKER for piece in pieces)
    assert b"".join(piece[PIECE_HEADER_BYTES:] for piece in pieces) == message
    connection = receiver(frame_bytes_max=1000)
    stream = good_handshake_frame() + encode_frame(b"before")
    stream += b"".join(encode_frame(piece) for piece in pieces)
    stream += KEEPALIVE_FRAME + encode_frame(b"after")
    # Split anywhere, the stream yields the same messages, the large one whole.
    for split in (1, 999, 1003, 5000, len(stream) - 1):
        connection = receiver(frame_bytes_max=1000)
        got = connection.receive_data(stream[:split]) + connection.receive_data(stream[split:])
        assert got == [b"before", message, b"after"], f"split at {split}"


@pytest.mark.parametrize("frame_bytes_max", [3, 7, 100, 1000, 5000])
def test_pieces_made_from_parts_are_those_of_the_joined_message(frame_bytes_max: int) -> None:
    # The leader hands a snapshot over as its encoded head and its chunks, never joined.
    parts = [b"head", b"", bytes(range(256)) * 3, b"x" * 1500, b"", b"y", b"z" * 2000]
    joined = b"".join(parts)
    assert list(iter_pieces(parts, frame_bytes_max)) == split_into_pieces(joined, frame_bytes_max)
    assert list(iter_pieces([joined], frame_bytes_max)) == split_into_pieces(
        joined, frame_bytes_max
    )
    with pytest.raises(ValueError, match="no room"):
        list(iter_pieces(parts, 2))


def test_pieces_past_the_limit_are_refused_before_the_message_is_whole() -> None:
    pieces = split_into_pieces(b"x" * 10_001, frame_bytes_max=1000)
    connection = receiver(frame_bytes_max=1000, pieced_message_bytes_max=10_000)
    connection.receive_data(good_handshake_frame())
    with pytest.raises(FrameError, match="over the limit of 10000 bytes"):
        for piece in pieces:
            connection.receive_data(encode_frame(piece))
    at_limit = split_into_pieces(b"y" * 10_000, frame_bytes_max=1000)
    connection = receiver(frame_bytes_max=1000, pieced_message_bytes_max=10_000)
    stream = good_handshake_frame() + b"".join(encode_frame(piece) for piece in at_limit)
    assert connection.receive_data(stream) == [b"y" * 10_000]


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([bytes((PIECE_MARKER, 2)) + b"middle first"], "out of order"),
        ([bytes((PIECE_MARKER, 3)) + b"last first"], "out of order"),
        ([bytes((PIECE_MARKER, 1)) + b"a", bytes((PIECE_MARKER, 1)) + b"b"], "out of order"),
        ([bytes((PIECE_MARKER, 1)) + b"a", b"a whole message"], "between the pieces"),
        ([bytes((PIECE_MARKER, 4)) + b"no such kind"], "malformed"),
        ([bytes((PIECE_MARKER, 1))], "malformed"),  # no share of the message
    ],
)
def test_broken_pieces_are_the_peers_fault(frames: list[bytes], reason: str) -> None:
    connection = receiver()
    connection.receive_data(good_handshake_frame())
    with pytest.raises(FrameError, match=reason):
        for frame in frames:
            connection.receive_data(encode_frame(frame))


def test_the_transport_carries_every_install_snapshot_the_codec_accepts() -> None:
    assert PIECED_MESSAGE_BYTES_MAX >= INSTALL_SNAPSHOT_BYTES_MAX > FRAME_BYTES_MAX


# --- peer authentication (issue #20) -------------------------------------------------------

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))


def authenticating_receiver(
    secret: bytes | None = SECRET, budget: PiecesBudget | None = None
) -> InboundConnection:
    return InboundConnection(
        cluster_id="c1",
        node_id=1,
        is_known_peer={2, 3}.__contains__,
        frame_bytes_max=1000,
        pieced_message_bytes_max=10_000,
        peer_secret=secret,
        pieces_budget=budget,
    )


def dialer(secret: bytes | None = SECRET, node_id: int = 2) -> OutboundHandshake:
    return OutboundHandshake(Handshake(PROTOCOL_VERSION, "c1", node_id, 1), secret)


def frames_of(data: bytes) -> list[bytes]:
    return FrameDecoder(HANDSHAKE_BYTES_MAX).feed(b"".join([data]))


def authenticate(
    outbound: OutboundHandshake, inbound: InboundConnection
) -> tuple[list[bytes], list[bytes]]:
    """Run the handshake between the two sides; the frames each side sent, in order."""
    sent_by_dialer = [outbound.first_frame()]
    sent_by_listener: list[bytes] = []
    assert inbound.receive_data(sent_by_dialer[0]) == []
    (challenge,) = inbound.outgoing
    inbound.outgoing.clear()
    sent_by_listener.append(challenge)
    (challenge_payload,) = frames_of(challenge)
    proof = outbound.receive(challenge_payload)
    assert proof is not None
    sent_by_dialer.append(proof)
    return sent_by_dialer, sent_by_listener


def test_both_sides_prove_the_secret_before_any_message_is_read() -> None:
    outbound, inbound = dialer(), authenticating_receiver()
    # A message sent right behind the handshake, without waiting for the challenge, is
    # taken for the proof and refused: it is never read as a message.
    with pytest.raises(PeerAuthError):
        inbound.receive_data(outbound.first_frame() + encode_frame(b"too early"))
    assert inbound.handshake is None

    outbound, inbound = dialer(), authenticating_receiver()
    sent_by_dialer, _ = authenticate(outbound, inbound)
    assert inbound.receive_data(sent_by_dialer[1] + encode_frame(b"m1")) == [b"m1"]
    assert inbound.accepted_now and inbound.handshake is not None
    assert inbound.handshake.node_id == 2
    outbound.receive(encode_handshake_reply(HandshakeReply(accepted=True)))
    assert outbound.accepted


def test_a_dialer_with_a_wrong_secret_is_refused_by_the_listener() -> None:
    outbound, inbound = dialer(OTHER_SECRET), authenticating_receiver()
    inbound.receive_data(outbound.first_frame())
    (challenge_payload,) = frames_of(inbound.outgoing[0])
    # The dialer notices first (the listener's proof does not verify with its secret)...
    with pytest.raises(PeerAuthError, match="failed to prove"):
        outbound.receive(challenge_payload)
    # ...and a forged proof of the right size is refused by the listener.
    with pytest.raises(PeerAuthError, match="authentication failed"):
        inbound.receive_data(encode_frame(encode_proof(b"\0" * PROOF_BYTES)))
    assert inbound.handshake is None


def test_a_listener_with_a_wrong_secret_is_refused_by_the_dialer() -> None:
    outbound, inbound = dialer(), authenticating_receiver(OTHER_SECRET)
    inbound.receive_data(outbound.first_frame())
    (challenge_payload,) = frames_of(inbound.outgoing[0])
    with pytest.raises(PeerAuthError):
        outbound.receive(challenge_payload)


def test_a_listener_that_accepts_without_a_challenge_is_refused_by_an_authenticating_dialer() -> (
    None
):
    outbound = dialer()
    with pytest.raises(PeerAuthError, match="without proving"):
        outbound.receive(encode_handshake_reply(HandshakeReply(accepted=True)))


def test_a_recorded_handshake_replayed_is_refused() -> None:
    sent_by_dialer, sent_by_listener = authenticate(dialer(), authenticating_receiver())
    # The dialer's side replayed to the listener: the listener's nonce is fresh.
    replayed_to = authenticating_receiver()
    assert replayed_to.receive_data(sent_by_dialer[0]) == []
    with pytest.raises(PeerAuthError, match="authentication failed"):
        replayed_to.receive_data(sent_by_dialer[1] + encode_frame(b"forged"))
    assert replayed_to.handshake is None
    # The listener's side replayed to a dialer: the dialer's nonce is fresh.
    (challenge_payload,) = frames_of(sent_by_listener[0])
    with pytest.raises(PeerAuthError, match="failed to prove"):
        dialer().receive(challenge_payload)


def test_a_proof_is_bound_to_its_direction_and_to_both_node_ids() -> None:
    fields = {
        "cluster_id": "c1",
        "dialer_node_id": 2,
        "listener_node_id": 1,
        "dialer_nonce": b"d" * NONCE_BYTES,
        "listener_nonce": b"l" * NONCE_BYTES,
    }
    base = handshake_proof(SECRET, direction="dialer", **fields)  # type: ignore[arg-type]
    assert len(base) == PROOF_BYTES
    assert handshake_proof(SECRET, direction="listener", **fields) != base  # type: ignore[arg-type]
    assert (
        handshake_proof(SECRET, direction="dialer", **{**fields, "dialer_node_id": 3}) != base  # type: ignore[arg-type]
    )
    assert handshake_proof(OTHER_SECRET, direction="dialer", **fields) != base  # type: ignore[arg-type]


def test_a_node_with_a_secret_and_one_without_refuse_each_other() -> None:
    with pytest.raises(PeerAuthError, match="requires peer authentication"):
        authenticating_receiver().receive_data(dialer(secret=None).first_frame())
    with pytest.raises(PeerAuthError, match="no peer secret"):
        authenticating_receiver(secret=None).receive_data(dialer().first_frame())
    outbound, inbound = dialer(secret=None), authenticating_receiver(secret=None)
    assert inbound.receive_data(outbound.first_frame() + encode_frame(b"m")) == [b"m"]


def test_a_handshake_refusal_does_not_echo_the_cluster_id() -> None:
    stranger = encode_frame(encode_handshake(Handshake(PROTOCOL_VERSION, "guess", 2, 1)))
    with pytest.raises(HandshakeError) as refused:
        authenticating_receiver().receive_data(stranger)
    assert "c1" not in str(refused.value) and "guess" not in str(refused.value)


def test_pieces_held_across_connections_stay_within_one_budget() -> None:
    budget = PiecesBudget(bytes_max=5000)
    pieces = split_into_pieces(b"x" * 8000, frame_bytes_max=1000)
    first, second = receiver_pair = [
        InboundConnection(
            cluster_id="c1",
            node_id=1,
            is_known_peer={2, 3}.__contains__,
            frame_bytes_max=1000,
            pieces_budget=budget,
        )
        for _ in range(2)
    ]
    for connection in receiver_pair:
        connection.receive_data(good_handshake_frame())
    first.receive_data(b"".join(encode_frame(piece) for piece in pieces[:4]))  # 3,992 bytes
    assert budget.bytes_held == 4 * 998
    with pytest.raises(FrameError, match="budget of 5000 bytes"):
        second.receive_data(b"".join(encode_frame(piece) for piece in pieces[:2]))
    assert budget.bytes_held == 4 * 998  # the refused connection's pieces were freed
    first.release()  # the first connection closes: its pieces go back to the budget
    assert budget.bytes_held == 0
    whole = split_into_pieces(b"y" * 4990, frame_bytes_max=1000)
    third = InboundConnection(
        cluster_id="c1",
        node_id=1,
        is_known_peer={2}.__contains__,
        frame_bytes_max=1000,
        pieces_budget=budget,
    )
    stream = good_handshake_frame() + b"".join(encode_frame(piece) for piece in whole)
    assert third.receive_data(stream) == [b"y" * 4990]
    assert budget.bytes_held == 0


def test_the_default_pieces_budget_is_named_and_above_one_largest_message() -> None:
    assert PiecesBudget().bytes_max == PIECES_BUFFERED_BYTES_MAX >= PIECED_MESSAGE_BYTES_MAX
