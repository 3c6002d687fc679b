"""The peer wire format, without IO: length-prefixed frames and the connection handshake.

Theory of operation
-------------------
A peer connection is a byte stream cut into *frames*: a 4-byte big-endian
payload length, then the payload. `encode_frame` makes one; `FrameDecoder`
turns whatever bytes arrive, split anywhere, back into payloads, and refuses a
length prefix above its limit as soon as the 4 prefix bytes are in (before a
single payload byte is buffered), so a hostile or confused peer cannot make us
hold more than one read's worth of memory for a frame we will never accept.

Every connection is one-way (the dialer sends, the listener receives) and
starts with a handshake:

1. The dialer sends one frame holding a msgpack map (`Handshake`):
   protocol version, cluster id, its own node id and the node id it means to
   reach.
2. The listener checks it (`check_handshake`) and answers with one frame
   (`HandshakeReply`): accepted, or refused with the reason. A refused
   connection is then closed; the dialer logs the reason and backs off.
   With a peer secret (issue #20) the listener first answers with a `Challenge`: a fresh
   nonce of its own and its proof, an HMAC-SHA256 keyed by the secret over both nonces,
   both node ids, the cluster id and the direction (`handshake_proof`). The dialer checks
   it (the listener knows the secret), answers with its own `Proof` for the other
   direction, and only then gets the reply. Both sides contribute a fresh nonce, so a
   recorded handshake replayed by either side fails; proofs are compared with
   `hmac.compare_digest`. Nothing the dialer sends after its handshake is read as a
   message before its proof is checked. A node without a secret speaks the handshake
   without a nonce, and the two kinds refuse each other.
3. From then on the dialer sends payload frames only. An empty payload is a
   keepalive: it proves the connection is alive across quiet periods and is
   never handed to the application.

A message larger than a frame (an InstallSnapshot of a large state) travels in
*pieces*, one per frame, back to back (`split_into_pieces`). A piece's payload
starts with `PIECE_MARKER`, 0xc1, the one byte msgpack never uses, so no whole
message starts with it; then its kind (first, middle or last) and its share of
the message. The receiver joins them, up to `PIECED_MESSAGE_BYTES_MAX`, and hands
the message on whole. A peer that knows no pieces refuses them as undecodable, as
it would refuse a frame that large.

Before the handshake is accepted the listener's frame limit is the tiny
`HANDSHAKE_BYTES_MAX`, so an unauthenticated connection costs a few hundred
bytes at most. `InboundConnection` is the listener's whole receive side as a
state machine: bytes in, validated payloads out, `FrameError` or
`HandshakeError` (both the *remote* side's fault) on anything wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "CLUSTER_ID_BYTES_MAX",
    "DIALER",
    "FRAME_BYTES_MAX",
    "FRAME_PREFIX_BYTES",
    "HANDSHAKE_BYTES_MAX",
    "KEEPALIVE_FRAME",
    "LISTENER",
    "NODE_ID_MAX",
    "NONCE_BYTES",
    "PEER_SECRET_BYTES_MIN",
    "PIECED_MESSAGE_BYTES_MAX",
    "PIECES_BUFFERED_BYTES_MAX",
    "PIECE_FIRST",
    "PIECE_HEADER_BYTES",
    "PIECE_LAST",
    "PIECE_MARKER",
    "PIECE_MIDDLE",
    "PROOF_BYTES",
    "PROTOCOL_VERSION",
    "REFUSAL_REASON_CHARS_MAX",
    "Challenge",
    "FrameDecoder",
    "FrameError",
    "Handshake",
    "HandshakeError",
    "HandshakeReply",
    "InboundConnection",
    "OutboundHandshake",
    "PeerAuthError",
    "PeerProtocolError",
    "PiecesBudget",
    "certificate_mismatch",
    "check_handshake",
    "decode_handshake",
    "decode_handshake_reply",
    "decode_listener_answer",
    "decode_proof",
    "encode_challenge",
    "encode_frame",
    "encode_handshake",
    "encode_handshake_reply",
    "encode_proof",
    "handshake_proof",
    "iter_pieces",
    "split_into_pieces",
]

PROTOCOL_VERSION = 1
"""The version of this wire format; a peer speaking another one is refused at the handshake."""

FRAME_PREFIX_BYTES = 4
"""The size of a frame's length prefix (unsigned, big-endian)."""

FRAME_BYTES_MAX = 64 * 1024 * 1024 + 64 * 1024
"""The largest payload one frame may carry: any message but a large InstallSnapshot (64 MiB,
`kvraft.raft.codec.MESSAGE_BYTES_MAX`) plus room to spare. A longer frame is refused before it
is buffered; a longer message goes in pieces."""

PIECED_MESSAGE_BYTES_MAX = 1024 * 1024 * 1024
"""The largest message sent in pieces (see the module docstring), and so the most a receiver
buffers for one message: about what the snapshot of 9,000,000 keys with 100-byte values
takes (`kvraft.raft.codec.INSTALL_SNAPSHOT_BYTES_MAX`, the only message that large)."""

PIECES_BUFFERED_BYTES_MAX = 2 * PIECED_MESSAGE_BYTES_MAX
"""The most bytes of unfinished pieced messages held across all of a node's connections
(issue #20: after one handshake a peer held 400 MiB of never-completed pieces, and the
per-connection limit allowed 1 GiB on each of 256 connections). Two of the largest messages:
one from the leader plus one still arriving on a connection a former leader has not yet
dropped. A connection whose pieces would go over it is closed and its pieces freed."""

NONCE_BYTES = 32
"""The size of each side's fresh random handshake nonce (`secrets.token_bytes`)."""

PROOF_BYTES = 32
"""The size of a handshake proof: one HMAC-SHA256 digest."""

PEER_SECRET_BYTES_MIN = 16
"""The shortest peer secret accepted: 128 bits, beyond guessing. `cluster up` makes 32."""

PIECE_MARKER = 0xC1
"""The first byte of a piece's payload: msgpack never uses 0xc1."""

PIECE_FIRST, PIECE_MIDDLE, PIECE_LAST = 1, 2, 3
"""The second byte of a piece's payload: its place in the message."""

PIECE_HEADER_BYTES = 2
"""The marker and the kind, before a piece's share of the message."""

HANDSHAKE_BYTES_MAX = 1024
"""The largest handshake or handshake-reply payload. Until a peer's handshake is accepted
this is its frame limit, so an unknown connection can make us buffer no more than this."""

CLUSTER_ID_BYTES_MAX = 128
"""The longest cluster id, in UTF-8 bytes; it keeps a handshake well under HANDSHAKE_BYTES_MAX."""

NODE_ID_MAX = 2**31 - 1
"""The largest node id (ids are positive); the same bound as `kvraft.raft.codec.NODE_ID_MAX`."""

_PRE_ACCEPT_BUFFERED_BYTES_MAX = 2 * (FRAME_PREFIX_BYTES + HANDSHAKE_BYTES_MAX)
"""Before a connection is accepted the dialer has at most two handshake frames in flight
(its handshake and its proof); more buffered bytes are a peer not waiting for its answer."""

REFUSAL_REASON_CHARS_MAX = 200
"""A refusal reason is cut to this many characters, so that even 4-byte UTF-8 characters
keep the reply under HANDSHAKE_BYTES_MAX."""

_PREFIX = struct.Struct(">I")

KEEPALIVE_FRAME = _PREFIX.pack(0)
"""An empty frame: sent on a quiet connection so the listener's idle timeout does not
close it; never delivered as a message."""

_HANDSHAKE_KEYS = frozenset({"protocol_version", "cluster_id", "node_id", "target_node_id"})
_AUTHENTICATED_HANDSHAKE_KEYS = _HANDSHAKE_KEYS | {"nonce"}
_REPLY_KEYS = frozenset({"accepted", "reason"})
_CHALLENGE_KEYS = frozenset({"nonce", "proof"})
_PROOF_KEYS = frozenset({"proof"})
_PROOF_CONTEXT = b"kvraft peer handshake proof"
DIALER, LISTENER = "dialer", "listener"
"""The direction a proof is for: a listener's proof is never a valid dialer's proof."""


class PeerProtocolError(ValueError):
    """The remote peer broke the wire protocol: its fault, and it costs that one connection."""


class FrameError(PeerProtocolError):
    """The byte stream is not a valid sequence of frames (e.g. a length above the limit)."""


class HandshakeError(PeerProtocolError):
    """The handshake is malformed, or names another protocol version, cluster or node.

    The message is the reason, fit for a log line and for the refusal sent to the peer.
    """


class PeerAuthError(HandshakeError):
    """The peer did not prove knowledge of the cluster's secret, or one side has none.

    Counted apart from other refusals (`kvraft_peer_auth_failures_total`)."""


class PiecesBudget:
    """The bytes of unfinished pieced messages held across every connection of a node.

    Shared by the node's `InboundConnection`s; one alone is given a budget of its own."""

    __slots__ = ("bytes_held", "bytes_max")

    def __init__(self, bytes_max: int = PIECES_BUFFERED_BYTES_MAX) -> None:
        if bytes_max < 1:
            raise ValueError("bytes_max must be positive")
        self.bytes_max = bytes_max
        self.bytes_held = 0

    def take(self, size: int) -> bool:
        """Reserve `size` bytes; False (nothing reserved) if that would go over the budget."""
        if self.bytes_held + size > self.bytes_max:
            return False
        self.bytes_held += size
        return True

    def release(self, size: int) -> None:
        self.bytes_held -= size


def handshake_proof(
    secret: bytes,
    *,
    direction: str,
    cluster_id: str,
    dialer_node_id: int,
    listener_node_id: int,
    dialer_nonce: bytes,
    listener_nonce: bytes,
) -> bytes:
    """HMAC-SHA256, keyed by the peer secret, over everything the handshake settles.

    The fields are packed as one msgpack array, so no two different handshakes give the same
    input; `direction` (DIALER or LISTENER) keeps one side's proof from being reflected back
    as the other's."""
    message = msgpack.packb(
        [
            _PROOF_CONTEXT,
            PROTOCOL_VERSION,
            direction,
            cluster_id,
            dialer_node_id,
            listener_node_id,
            dialer_nonce,
            listener_nonce,
        ],
        use_bin_type=True,
    )
    return hmac.new(secret, message, hashlib.sha256).digest()


def encode_frame(payload: bytes, frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """Prefix `payload` with its length.

    Raises `ValueError` (the local caller's bug, not a peer's) if the payload is longer
    than `frame_bytes_max`, since no receiver would accept it.
    """
    if len(payload) > frame_bytes_max:
        raise ValueError(
            f"payload of {len(payload)} bytes exceeds the frame limit {frame_bytes_max}"
        )
    return _PREFIX.pack(len(payload)) + payload


def split_into_pieces(payload: bytes, frame_bytes_max: int = FRAME_BYTES_MAX) -> list[bytes]:
    """The payloads of the frames that carry `payload` in pieces, in order: each at most
    `frame_bytes_max` long, header included. A payload that fits one frame is not split."""
    if len(payload) <= frame_bytes_max:
        return [payload]
    share = frame_bytes_max - PIECE_HEADER_BYTES
    if share < 1:
        raise ValueError(f"frame_bytes_max {frame_bytes_max} leaves no room for a piece")
    pieces: list[bytes] = []
    with memoryview(payload) as view:
        for start in range(0, len(payload), share):
            kind = (
                PIECE_FIRST
                if start == 0
                else PIECE_LAST
                if start + share >= len(payload)
                else PIECE_MIDDLE
            )
            pieces.append(bytes((PIECE_MARKER, kind)) + view[start : start + share])
    return pieces


def iter_pieces(parts: Sequence[bytes], frame_bytes_max: int = FRAME_BYTES_MAX) -> Iterator[bytes]:
    """The frames of `split_into_pieces(b"".join(parts))`, one at a time, without joining
    the parts first: a caller copying a large message (a snapshot) can let other work run
    between two frames instead of copying all of it at once."""
    total = sum(len(part) for part in parts)
    if total <= frame_bytes_max:
        yield b"".join(parts)
        return
    share = frame_bytes_max - PIECE_HEADER_BYTES
    if share < 1:
        raise ValueError(f"frame_bytes_max {frame_bytes_max} leaves no room for a piece")
    position = 0  # of the next byte, in the whole message
    part_index = offset = 0  # the part it is in, and where
    while position < total:
        kind = (
            PIECE_FIRST
            if position == 0
            else PIECE_LAST
            if position + share >= total
            else PIECE_MIDDLE
        )
        pieces: list[bytes | memoryview] = [bytes((PIECE_MARKER, kind))]
        wanted = min(share, total - position)
        while wanted:
            part = parts[part_index]
            take = min(wanted, len(part) - offset)
            if take:
                pieces.append(memoryview(part)[offset : offset + take])
            offset += take
            wanted -= take
            position += take
            if offset == len(part):
                part_index += 1
                offset = 0
        yield b"".join(pieces)


class FrameDecoder:
    """Reassembles frames from a byte stream fed in pieces of any size.

    `frame_bytes_max` may be raised between frames (the listener does so once the
    handshake is accepted). After a `FrameError` the decoder stays failed: the stream
    has lost its framing and nothing after the error can be trusted.
    """

    __slots__ = ("_buffer", "_error", "frame_bytes_max")

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX) -> None:
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._error: str | None = None

    @property
    def buffered_bytes(self) -> int:
        """How many received bytes wait for the rest of their frame."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Buffer `data`; take the frames out with `next_frame`."""
        if self._error is not None:
            raise FrameError(self._error)
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete payload, or None until more bytes arrive.

        Raises `FrameError` as soon as a length prefix above `frame_bytes_max` is complete.
        """
        if self._error is not None:
            raise FrameError(self._error)
        buffer = self._buffer
        if len(buffer) < FRAME_PREFIX_BYTES:
            return None
        (length,) = _PREFIX.unpack_from(buffer, 0)
        if length > self.frame_bytes_max:
            self._error = f"frame length {length} exceeds the limit {self.frame_bytes_max}"
            # Nothing after a bad prefix can be framed again: free what we hold now.
            self._buffer = bytearray()
            raise FrameError(self._error)
        end = FRAME_PREFIX_BYTES + length
        if len(buffer) < end:
            return None
        # One copy out through a memoryview; deleting a bytearray's head is cheap in CPython
        # (it moves the start pointer), so many small frames in one read stay linear.
        with memoryview(buffer) as view:
            payload = bytes(view[FRAME_PREFIX_BYTES:end])
        del buffer[:end]
        return payload

    def feed(self, data: bytes) -> list[bytes]:
        """Buffer `data` and return every payload it completes, in order (maybe none)."""
        self.receive_data(data)
        payloads: list[bytes] = []
        while (payload := self.next_frame()) is not None:
            payloads.append(payload)
        return payloads


@dataclass(frozen=True, slots=True)
class Handshake:
    """The first frame on every connection: who is calling whom.

    Fields:
        protocol_version: the dialer's `PROTOCOL_VERSION`.
        cluster_id: the cluster the dialer belongs to; nodes of another cluster are refused.
        node_id: the dialer's node id; every payload on the connection is from this node.
        target_node_id: the node the dialer believes it reached; catches a wrong address book.
        nonce: the dialer's fresh random nonce when it has a peer secret, else None.
    """

    protocol_version: int
    cluster_id: str
    node_id: int
    target_node_id: int
    nonce: bytes | None = None


@dataclass(frozen=True, slots=True)
class Challenge:
    """A listener with a peer secret answers a handshake with this (see the module docstring).

    Fields:
        nonce: the listener's fresh random nonce.
        proof: the listener's `handshake_proof` (direction LISTENER).
    """

    nonce: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class HandshakeReply:
    """The listener's answer to a handshake.

    Fields:
        accepted: the dialer may now send payload frames.
        reason: why the handshake was refused (empty when accepted).
    """

    accepted: bool
    reason: str = ""


def _unpack_map(payload: bytes, what: str) -> dict[str, Any]:
    if len(payload) > HANDSHAKE_BYTES_MAX:
        raise HandshakeError(f"{what} of {len(payload)} bytes exceeds {HANDSHAKE_BYTES_MAX}")
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception:  # msgpack raises many exception types on garbage
        raise HandshakeError(f"{what} is not valid msgpack") from None
    if not isinstance(obj, dict):
        raise HandshakeError(f"{what} is not a msgpack map")
    return obj


def _check_node_id(value: Any, what: str) -> int:
    if type(value) is not int or not 1 <= value <= NODE_ID_MAX:
        raise HandshakeError(f"handshake {what} {value!r} is not in 1..{NODE_ID_MAX}")
    return value


def _check_bytes(value: Any, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise HandshakeError(f"{what} is not {size} bytes")
    return value


def encode_handshake(handshake: Handshake) -> bytes:
    """The handshake payload (frame it with `encode_frame`)."""
    fields: dict[str, Any] = {
        "protocol_version": handshake.protocol_version,
        "cluster_id": handshake.cluster_id,
        "node_id": handshake.node_id,
        "target_node_id": handshake.target_node_id,
    }
    if handshake.nonce is not None:
        fields["nonce"] = handshake.nonce
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def encode_challenge(challenge: Challenge) -> bytes:
    packed: bytes = msgpack.packb(
        {"nonce": challenge.nonce, "proof": challenge.proof}, use_bin_type=True
    )
    return packed


def encode_proof(proof: bytes) -> bytes:
    packed: bytes = msgpack.packb({"proof": proof}, use_bin_type=True)
    return packed


def decode_proof(payload: bytes) -> bytes:
    """The dialer's proof from its second frame; `PeerAuthError` on anything malformed."""
    try:
        obj = _unpack_map(payload, "handshake proof")
        if obj.keys() != _PROOF_KEYS:
            raise HandshakeError("handshake proof has the wrong keys")
        return _check_bytes(obj["proof"], PROOF_BYTES, "handshake proof")
    except PeerAuthError:
        raise
    except HandshakeError as error:
        raise PeerAuthError(str(error)) from None


def decode_listener_answer(payload: bytes) -> HandshakeReply | Challenge:
    """What a listener sends first: a reply (accepted without a secret, or refused) or, when
    it has a secret, a `Challenge`. `HandshakeError` on anything malformed."""
    obj = _unpack_map(payload, "handshake answer")
    if obj.keys() == _CHALLENGE_KEYS:
        return Challenge(
            nonce=_check_bytes(obj["nonce"], NONCE_BYTES, "challenge nonce"),
            proof=_check_bytes(obj["proof"], PROOF_BYTES, "challenge proof"),
        )
    return decode_handshake_reply(payload)


def decode_handshake(payload: bytes) -> Handshake:
    """Parse and type-check a handshake payload; `HandshakeError` on anything malformed.

    The protocol version is checked before the other keys, so that a peer running a later
    version (whose handshake may hold other keys) is refused for the reason that matters.
    """
    obj = _unpack_map(payload, "handshake")
    version = obj.get("protocol_version")
    if type(version) is not int:
        raise HandshakeError("handshake has no integer protocol_version")
    if version != PROTOCOL_VERSION:
        raise HandshakeError(f"protocol version {version}, expected {PROTOCOL_VERSION}")
    if obj.keys() not in (_HANDSHAKE_KEYS, _AUTHENTICATED_HANDSHAKE_KEYS):
        raise HandshakeError(f"handshake keys {sorted(obj)}, expected {sorted(_HANDSHAKE_KEYS)}")
    nonce = obj.get("nonce")
    if nonce is not None:
        nonce = _check_bytes(nonce, NONCE_BYTES, "handshake nonce")
    cluster_id = obj["cluster_id"]
    if not isinstance(cluster_id, str) or not cluster_id:
        raise HandshakeError("handshake cluster_id is not a non-empty string")
    if len(cluster_id.encode()) > CLUSTER_ID_BYTES_MAX:
        raise HandshakeError(f"handshake cluster_id is longer than {CLUSTER_ID_BYTES_MAX} bytes")
    return Handshake(
        protocol_version=version,
        cluster_id=cluster_id,
        node_id=_check_node_id(obj["node_id"], "node_id"),
        target_node_id=_check_node_id(obj["target_node_id"], "target_node_id"),
        nonce=nonce,
    )


def check_handshake(
    handshake: Handshake,
    *,
    cluster_id: str,
    node_id: int,
    is_known_peer: Callable[[int], bool],
) -> None:
    """Raise `HandshakeError` unless `handshake` may talk to node `node_id` of `cluster_id`.

    `is_known_peer` is asked at the moment of the handshake, so membership changes apply
    to every connection made after them.
    """
    if handshake.protocol_version != PROTOCOL_VERSION:
        raise HandshakeError(
            f"protocol version {handshake.protocol_version}, expected {PROTOCOL_VERSION}"
        )
    if handshake.cluster_id != cluster_id:
        # Neither id is echoed (issue #20): the refusal goes to whoever connected.
        raise HandshakeError("the handshake's cluster id is not this cluster's")
    if handshake.target_node_id != node_id:
        raise HandshakeError(
            f"handshake is addressed to node {handshake.target_node_id}, this is node {node_id}"
        )
    if handshake.node_id == node_id:
        raise HandshakeError(f"node id {handshake.node_id} is this node's own id")
    if not is_known_peer(handshake.node_id):
        raise HandshakeError(f"node id {handshake.node_id} is not a member of this cluster")


def encode_handshake_reply(reply: HandshakeReply) -> bytes:
    """The reply payload (frame it with `encode_frame`); the reason is cut to fit the limit."""
    packed: bytes = msgpack.packb(
        {"accepted": reply.accepted, "reason": reply.reason[:REFUSAL_REASON_CHARS_MAX]},
        use_bin_type=True,
    )
    return packed


def decode_handshake_reply(payload: bytes) -> HandshakeReply:
    """Parse and type-check a reply payload; `HandshakeError` on anything malformed."""
    obj = _unpack_map(payload, "handshake reply")
    if obj.keys() != _REPLY_KEYS:
        raise HandshakeError(f"handshake reply keys {sorted(obj)}, expected {sorted(_REPLY_KEYS)}")
    accepted, reason = obj["accepted"], obj["reason"]
    if not isinstance(accepted, bool) or not isinstance(reason, str):
        raise HandshakeError("handshake reply fields have the wrong types")
    return HandshakeReply(accepted=accepted, reason=reason[:REFUSAL_REASON_CHARS_MAX])


def certificate_mismatch(claimed_node_id: int, named: frozenset[int]) -> str:
    """Why a peer whose TLS certificate names `named` may not be node `claimed_node_id`."""
    if not named:
        whose = "names no node (a client's?)"
    else:
        whose = "is node " + ", ".join(str(node_id) for node_id in sorted(named)) + "'s"
    return f"the peer's certificate {whose}, but it claims to be node {claimed_node_id}"


class OutboundHandshake:
    """The dialer's side of the handshake, without IO.

    Send `first_frame()`; feed each frame the listener answers to `receive`, which returns
    the frame to send back (the dialer's proof) or None, and sets `done`. Raises
    `PeerAuthError` if the listener fails to prove the secret (or one side has none) and
    `HandshakeError` for anything else wrong; a refusal is returned as `refusal`.
    """

    __slots__ = ("_handshake", "_listener_nonce", "_secret", "accepted", "refusal")

    def __init__(self, handshake: Handshake, secret: bytes | None) -> None:
        if secret is not None:
            handshake = Handshake(
                handshake.protocol_version,
                handshake.cluster_id,
                handshake.node_id,
                handshake.target_node_id,
                nonce=secrets.token_bytes(NONCE_BYTES),
            )
        self._handshake = handshake
        self._secret = secret
        self._listener_nonce: bytes | None = None  # set once the listener proved the secret
        self.accepted = False
        self.refusal: str | None = None

    @property
    def done(self) -> bool:
        return self.accepted or self.refusal is not None

    def first_frame(self) -> bytes:
        return encode_frame(encode_handshake(self._handshake))

    def receive(self, payload: bytes) -> bytes | None:
        """Take one frame from the listener; the frame to answer with, if any."""
        if self.done:
            raise HandshakeError("peer sent data after its handshake reply")
        answer = decode_listener_answer(payload)
        handshake, secret = self._handshake, self._secret
        if isinstance(answer, HandshakeReply):
            if not answer.accepted:
                self.refusal = answer.reason
            elif secret is not None and not self._proved:
                raise PeerAuthError("peer accepted without proving the peer secret")
            else:
                self.accepted = True
            return None
        if secret is None or handshake.nonce is None:
            raise PeerAuthError("peer requires peer authentication; this node has no secret")
        if self._proved:
            raise HandshakeError("peer sent a second challenge")
        expected = handshake_proof(
            secret,
            direction=LISTENER,
            cluster_id=handshake.cluster_id,
            dialer_node_id=handshake.node_id,
            listener_node_id=handshake.target_node_id,
            dialer_nonce=handshake.nonce,
            listener_nonce=answer.nonce,
        )
        if not hmac.compare_digest(answer.proof, expected):
            raise PeerAuthError("peer failed to prove the peer secret (a different secret?)")
        self._listener_nonce = answer.nonce
        return encode_frame(
            encode_proof(
                handshake_proof(
                    secret,
                    direction=DIALER,
                    cluster_id=handshake.cluster_id,
                    dialer_node_id=handshake.node_id,
                    listener_node_id=handshake.target_node_id,
                    dialer_nonce=handshake.nonce,
                    listener_nonce=answer.nonce,
                )
            )
        )

    @property
    def _proved(self) -> bool:
        return self._listener_nonce is not None


class InboundConnection:
    """The receive side of one accepted connection: handshake first, then payloads.

    Feed it bytes with `receive_data`; it returns the payloads they complete, with
    keepalives removed. `handshake` is None until the peer's handshake is accepted, and
    the frame limit stays at HANDSHAKE_BYTES_MAX until then. With a `peer_secret` the peer
    must also prove it (see the module docstring): the challenge to send is put in
    `outgoing`, and `accepted_now` tells the caller to send the acceptance. Raises
    `PeerAuthError` for a failed proof, `HandshakeError` for another refused handshake and
    `FrameError` for broken framing; either way the connection is finished and must be
    closed (call `release` to give its pieces' budget back).
    """

    __slots__ = (
        "_claimed",
        "_cluster_id",
        "_decoder",
        "_frame_bytes_max",
        "_is_known_peer",
        "_listener_nonce",
        "_node_id",
        "_peer_secret",
        "_pieced_message_bytes_max",
        "_pieces",
        "_pieces_budget",
        "_pieces_bytes",
        "accepted_now",
        "certificate_node_ids",
        "handshake",
        "outgoing",
    )

    def __init__(
        self,
        *,
        cluster_id: str,
        node_id: int,
        is_known_peer: Callable[[int], bool],
        frame_bytes_max: int = FRAME_BYTES_MAX,
        pieced_message_bytes_max: int = PIECED_MESSAGE_BYTES_MAX,
        peer_secret: bytes | None = None,
        pieces_budget: PiecesBudget | None = None,
    ) -> None:
        self._cluster_id = cluster_id
        self._node_id = node_id
        self._is_known_peer = is_known_peer
        self._frame_bytes_max = frame_bytes_max
        self._pieced_message_bytes_max = pieced_message_bytes_max
        self._peer_secret = peer_secret
        self._pieces_budget = pieces_budget or PiecesBudget()
        self._decoder = FrameDecoder(HANDSHAKE_BYTES_MAX)
        self._pieces: list[memoryview] = []
        self._pieces_bytes = 0
        self._claimed: Handshake | None = None
        self._listener_nonce = b""
        self.handshake: Handshake | None = None
        self.outgoing: list[bytes] = []
        """Frames to send the dialer (the challenge); the caller empties it."""
        self.accepted_now = False
        """Set by the `receive_data` call that accepted the handshake."""
        self.certificate_node_ids: frozenset[int] | None = None
        """With peer TLS: the node ids the dialer's verified certificate names (set by the
        transport once the TLS handshake is done, before any handshake frame is read);
        the handshake must claim one of them. None: no peer TLS."""

    def receive_data(self, data: bytes) -> list[bytes]:
        """Consume `data`; return the non-empty payloads completed so far, in order."""
        self._decoder.receive_data(data)
        self.accepted_now = False
        if self.handshake is None:
            if not self._receive_handshake():
                if self._decoder.buffered_bytes > _PRE_ACCEPT_BUFFERED_BYTES_MAX:
                    raise FrameError("too many bytes before the handshake was accepted")
                return []
            self.accepted_now = True
            # Only now may the peer send frames of full size.
            self._decoder.frame_bytes_max = self._frame_bytes_max
        payloads: list[bytes] = []
        while (frame := self._decoder.next_frame()) is not None:
            if not frame:  # empty frames are keepalives
                continue
            if frame[0] == PIECE_MARKER:
                message = self._add_piece(frame)
                if message is not None:
                    payloads.append(message)
            elif self._pieces:
                raise self._broken("a message came between the pieces of another")
            else:
                payloads.append(frame)
        return payloads

    @property
    def awaiting_proof(self) -> bool:
        """The dialer was challenged and has not proved the secret yet."""
        return self._claimed is not None and self.handshake is None

    def _receive_handshake(self) -> bool:
        """Advance the handshake with the frames buffered; True once it is accepted."""
        if self._claimed is None:
            frame = self._decoder.next_frame()
            if frame is None:
                return False
            handshake = decode_handshake(frame)
            check_handshake(
                handshake,
                cluster_id=self._cluster_id,
                node_id=self._node_id,
                is_known_peer=self._is_known_peer,
            )
            named = self.certificate_node_ids
            if named is not None and handshake.node_id not in named:
                raise PeerAuthError(certificate_mismatch(handshake.node_id, named))
            secret = self._peer_secret
            if secret is None:
                if handshake.nonce is not None:
                    raise PeerAuthError("this node has no peer secret; peer authentication is off")
                self.handshake = handshake
                return True
            if handshake.nonce is None:
                raise PeerAuthError("this node requires peer authentication (a peer secret)")
            self._claimed = handshake
            self._listener_nonce = secrets.token_bytes(NONCE_BYTES)
            proof = self._proof(LISTENER)
            self.outgoing.append(
                encode_frame(encode_challenge(Challenge(nonce=self._listener_nonce, proof=proof)))
            )
        frame = self._decoder.next_frame()
        if frame is None:
            return False
        proof = decode_proof(frame)
        if not hmac.compare_digest(proof, self._proof(DIALER)):
            raise PeerAuthError("peer authentication failed")
        self.handshake = self._claimed
        return True

    def _proof(self, direction: str) -> bytes:
        claimed, secret = self._claimed, self._peer_secret
        assert claimed is not None and claimed.nonce is not None and secret is not None
        return handshake_proof(
            secret,
            direction=direction,
            cluster_id=self._cluster_id,
            dialer_node_id=claimed.node_id,
            listener_node_id=self._node_id,
            dialer_nonce=claimed.nonce,
            listener_nonce=self._listener_nonce,
        )

    def release(self) -> None:
        """Free the pieces held (the connection is done); gives their budget back."""
        self._pieces.clear()
        self._pieces_budget.release(self._pieces_bytes)
        self._pieces_bytes = 0

    def _add_piece(self, frame: bytes) -> bytes | None:
        """Take one piece; the whole message once its last piece is in, else None."""
        kind = frame[1] if len(frame) > PIECE_HEADER_BYTES else None
        if kind not in (PIECE_FIRST, PIECE_MIDDLE, PIECE_LAST):
            raise self._broken("a malformed piece of a message")
        if (kind == PIECE_FIRST) == bool(self._pieces):
            raise self._broken("a piece out of order")
        share = len(frame) - PIECE_HEADER_BYTES
        if self._pieces_bytes + share > self._pieced_message_bytes_max:
            raise self._broken(
                f"a message in pieces is over the limit of {self._pieced_message_bytes_max} bytes"
            )
        if not self._pieces_budget.take(share):
            raise self._broken(
                "pieces held across connections would go over the budget of "
                f"{self._pieces_budget.bytes_max} bytes"
            )
        self._pieces_bytes += share
        self._pieces.append(memoryview(frame)[PIECE_HEADER_BYTES:])
        if kind != PIECE_LAST:
            return None
        message = b"".join(self._pieces)
        self.release()
        return message

    def _broken(self, reason: str) -> FrameError:
        """The stream can no longer be trusted: free the pieces held, report the peer's fault."""
        self.release()
        return FrameError(reason)
