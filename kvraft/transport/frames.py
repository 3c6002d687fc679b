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

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "CLUSTER_ID_BYTES_MAX",
    "FRAME_BYTES_MAX",
    "FRAME_PREFIX_BYTES",
    "HANDSHAKE_BYTES_MAX",
    "KEEPALIVE_FRAME",
    "NODE_ID_MAX",
    "PIECED_MESSAGE_BYTES_MAX",
    "PIECE_FIRST",
    "PIECE_HEADER_BYTES",
    "PIECE_LAST",
    "PIECE_MARKER",
    "PIECE_MIDDLE",
    "PROTOCOL_VERSION",
    "REFUSAL_REASON_CHARS_MAX",
    "FrameDecoder",
    "FrameError",
    "Handshake",
    "HandshakeError",
    "HandshakeReply",
    "InboundConnection",
    "PeerProtocolError",
    "check_handshake",
    "decode_handshake",
    "decode_handshake_reply",
    "encode_frame",
    "encode_handshake",
    "encode_handshake_reply",
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

REFUSAL_REASON_CHARS_MAX = 200
"""A refusal reason is cut to this many characters, so that even 4-byte UTF-8 characters
keep the reply under HANDSHAKE_BYTES_MAX."""

_PREFIX = struct.Struct(">I")

KEEPALIVE_FRAME = _PREFIX.pack(0)
"""An empty frame: sent on a quiet connection so the listener's idle timeout does not
close it; never delivered as a message."""

_HANDSHAKE_KEYS = frozenset({"protocol_version", "cluster_id", "node_id", "target_node_id"})
_REPLY_KEYS = frozenset({"accepted", "reason"})


class PeerProtocolError(ValueError):
    """The remote peer broke the wire protocol: its fault, and it costs that one connection."""


class FrameError(PeerProtocolError):
    """The byte stream is not a valid sequence of frames (e.g. a length above the limit)."""


class HandshakeError(PeerProtocolError):
    """The handshake is malformed, or names another protocol version, cluster or node.

    The message is the reason, fit for a log line and for the refusal sent to the peer.
    """


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
    """

    protocol_version: int
    cluster_id: str
    node_id: int
    target_node_id: int


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


def encode_handshake(handshake: Handshake) -> bytes:
    """The handshake payload (frame it with `encode_frame`)."""
    packed: bytes = msgpack.packb(
        {
            "protocol_version": handshake.protocol_version,
            "cluster_id": handshake.cluster_id,
            "node_id": handshake.node_id,
            "target_node_id": handshake.target_node_id,
        },
        use_bin_type=True,
    )
    return packed


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
    if obj.keys() != _HANDSHAKE_KEYS:
        raise HandshakeError(f"handshake keys {sorted(obj)}, expected {sorted(_HANDSHAKE_KEYS)}")
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
        raise HandshakeError(
            f"cluster id {handshake.cluster_id!r} is not this cluster's {cluster_id!r}"
        )
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


class InboundConnection:
    """The receive side of one accepted connection: handshake first, then payloads.

    Feed it bytes with `receive_data`; it returns the payloads they complete, with
    keepalives removed. `handshake` is None until the peer's handshake is accepted, and
    the frame limit stays at HANDSHAKE_BYTES_MAX until then. Raises `HandshakeError` for a
    refused handshake and `FrameError` for broken framing; either way the connection is
    finished and must be closed.
    """

    __slots__ = (
        "_cluster_id",
        "_decoder",
        "_frame_bytes_max",
        "_is_known_peer",
        "_node_id",
        "_pieced_message_bytes_max",
        "_pieces",
        "_pieces_bytes",
        "handshake",
    )

    def __init__(
        self,
        *,
        cluster_id: str,
        node_id: int,
        is_known_peer: Callable[[int], bool],
        frame_bytes_max: int = FRAME_BYTES_MAX,
        pieced_message_bytes_max: int = PIECED_MESSAGE_BYTES_MAX,
    ) -> None:
        self._cluster_id = cluster_id
        self._node_id = node_id
        self._is_known_peer = is_known_peer
        self._frame_bytes_max = frame_bytes_max
        self._pieced_message_bytes_max = pieced_message_bytes_max
        self._decoder = FrameDecoder(HANDSHAKE_BYTES_MAX)
        self._pieces: list[memoryview] = []
        self._pieces_bytes = 0
        self.handshake: Handshake | None = None

    def receive_data(self, data: bytes) -> list[bytes]:
        """Consume `data`; return the non-empty payloads completed so far, in order."""
        self._decoder.receive_data(data)
        if self.handshake is None:
            frame = self._decoder.next_frame()
            if frame is None:
                return []
            handshake = decode_handshake(frame)
            check_handshake(
                handshake,
                cluster_id=self._cluster_id,
                node_id=self._node_id,
                is_known_peer=self._is_known_peer,
            )
            self.handshake = handshake
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

    def _add_piece(self, frame: bytes) -> bytes | None:
        """Take one piece; the whole message once its last piece is in, else None."""
        kind = frame[1] if len(frame) > PIECE_HEADER_BYTES else None
        if kind not in (PIECE_FIRST, PIECE_MIDDLE, PIECE_LAST):
            raise self._broken("a malformed piece of a message")
        if (kind == PIECE_FIRST) == bool(self._pieces):
            raise self._broken("a piece out of order")
        self._pieces_bytes += len(frame) - PIECE_HEADER_BYTES
        if self._pieces_bytes > self._pieced_message_bytes_max:
            raise self._broken(
                f"a message in pieces is over the limit of {self._pieced_message_bytes_max} bytes"
            )
        self._pieces.append(memoryview(frame)[PIECE_HEADER_BYTES:])
        if kind != PIECE_LAST:
            return None
        message = b"".join(self._pieces)
        self._pieces.clear()
        self._pieces_bytes = 0
        return message

    def _broken(self, reason: str) -> FrameError:
        """The stream can no longer be trusted: free the pieces held, report the peer's fault."""
        self._pieces.clear()
        self._pieces_bytes = 0
        return FrameError(reason)
