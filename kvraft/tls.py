"""TLS for kvraft (issue #20): the SSL contexts of nodes and clients, and who a peer is.

Theory of operation
-------------------
Two independent layers, each optional, each from its own config table:

* ``[tls]`` -- HTTPS for the HTTP API. The node serves with its certificate; with
  ``client_ca`` it requires every client to present a certificate signed by that CA.
  A follower forwarding a request to the leader (and a node asking a member for its
  membership) is a client too: it verifies the leader against ``ca`` and presents its
  own certificate, which a cluster requiring client certificates then accepts.
* ``[peer_tls]`` -- mutual TLS on the Raft port. Both sides present a certificate signed by
  ``ca`` and verify the other's. Hostnames are not what identifies a peer: its node id is.
  Every node's certificate names its id (`certificate_node_ids`: the SAN URI
  ``kvraft://node/<id>``, or else the common name ``node-<id>``); the dialer requires the
  certificate of the node it meant to reach, and the listener requires the certificate of
  the node id the dialer's handshake claims (`kvraft.transport.frames`). A member's stolen
  client certificate, or node 2's certificate used to claim node 3, is refused. The HMAC
  proof of the peer secret still runs inside the TLS channel when both are configured: the
  secret proves the cluster, the certificate proves the member.

Peer TLS is 1.3 only (every peer is kvraft, on Python's `ssl`); HTTPS accepts 1.2 and up
for the clients of the world. Every file is read once, when a context is built; a file that
cannot be used is a `TlsFileError` naming it (a configuration error: `kvraft serve` exits
with its config code, a client command with a usage error).

`ServerTlsStream` is the listening side of a peer connection as a sans-IO object over
`ssl.MemoryBIO`: bytes in, plaintext out, and the bytes to send. The peer transport uses it
rather than asyncio's own TLS so that a failed handshake (another CA, no certificate) reaches
the transport, which counts it and logs it like every other refused peer, on asyncio and
uvloop alike; asyncio would drop it silently.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvraft.config import PeerTlsSettings, TlsSettings

__all__ = [
    "HTTPS_VERSION_MIN",
    "NODE_COMMON_NAME_PATTERN",
    "NODE_URI_PATTERN",
    "PEER_TLS_VERSION_MIN",
    "TLS_READ_BYTES",
    "NodeTls",
    "ServerTlsStream",
    "TlsFileError",
    "certificate_node_ids",
    "https_client_context",
    "https_server_context",
    "node_tls",
    "peer_client_context",
    "peer_server_context",
]

PEER_TLS_VERSION_MIN = ssl.TLSVersion.TLSv1_3
"""Peers speak TLS 1.3 only: both ends are kvraft, and 1.3 encrypts the certificates too."""

HTTPS_VERSION_MIN = ssl.TLSVersion.TLSv1_2
"""The oldest TLS an HTTPS client may use (1.0 and 1.1 are broken and deprecated)."""

TLS_READ_BYTES = 16 * 1024
"""How much plaintext `ServerTlsStream` asks the TLS layer for per read call: one TLS
record's worth (2**14 bytes, the most a record carries), which is all one call returns, so a
larger buffer would only be allocated and shrunk for nothing."""

NODE_URI_PATTERN = re.compile(r"kvraft://node/([1-9][0-9]{0,9})")
"""The SAN URI that names a node in its certificate (`kvraft.certs.node_uri`)."""

NODE_COMMON_NAME_PATTERN = re.compile(r"node-([1-9][0-9]{0,9})")
"""The common name that names a node, for certificates made without the URI."""


class TlsFileError(ValueError):
    """A certificate, key or CA file cannot be used (the configuration's or the caller's
    fault). `setting` names where the file came from (``tls.cert``, ``cacert``, ...) and
    `detail` what is wrong with it; the message is both."""

    def __init__(self, setting: str, detail: str) -> None:
        super().__init__(f"{setting}: {detail}")
        self.setting = setting
        self.detail = detail


# --- contexts ------------------------------------------------------------------------------------


def _check_file(path: Path, setting: str) -> None:
    if not os.path.exists(path):
        raise TlsFileError(setting, f"{path}: no such file")
    if not os.path.isfile(path):
        raise TlsFileError(setting, f"{path} is not a regular file")


def _load_chain(
    context: ssl.SSLContext, cert: Path, key: Path, cert_setting: str, key_setting: str
) -> None:
    _check_file(cert, cert_setting)
    _check_file(key, key_setting)
    try:
        context.load_cert_chain(cert, key)
    except OSError as error:  # ssl.SSLError is an OSError too
        if isinstance(error, ssl.SSLError):
            raise TlsFileError(
                f"{cert_setting}/{key_setting}",
                f"{cert} and {key} are not a PEM certificate and its matching, unencrypted"
                f" private key ({error.reason or error})",
            ) from None
        raise TlsFileError(
            f"{cert_setting}/{key_setting}", f"cannot read {cert} or {key}: {error.strerror}"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path, setting: str) -> None:
    _check_file(ca, setting)
    try:
        context.load_verify_locations(cafile=ca)
    except OSError as error:
        reason = error.reason if isinstance(error, ssl.SSLError) else error.strerror
        raise TlsFileError(setting, f"{ca} is not a PEM CA certificate ({reason})") from None


def https_server_context(
    cert: Path,
    key: Path,
    client_ca: Path | None = None,
    *,
    settings: tuple[str, str, str] = ("tls.cert", "tls.key", "tls.client_ca"),
) -> ssl.SSLContext:
    """A node's HTTPS context: its certificate, and with `client_ca` a required client
    certificate signed by it. `settings` name the three files in errors."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = HTTPS_VERSION_MIN
    _load_chain(context, cert, key, settings[0], settings[1])
    if client_ca is not None:
        _load_ca(context, client_ca, settings[2])
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def https_client_context(
    cacert: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    settings: tuple[str, str, str] = ("cacert", "cert", "key"),
) -> ssl.SSLContext:
    """What an HTTPS client trusts and shows: `cacert` (default: the system's trust store)
    and, for a node that requires client certificates, `cert` with its `key`. The server's
    name is checked against its certificate, as curl does. `settings` name the three files
    in errors."""
    if (cert is None) != (key is None):
        raise TlsFileError(
            f"{settings[1]}/{settings[2]}",
            "a client certificate needs its key, and a key its certificate",
        )
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = HTTPS_VERSION_MIN
    if cacert is not None:
        _load_ca(context, cacert, settings[0])
    if cert is not None and key is not None:
        _load_chain(context, cert, key, settings[1], settings[2])
    return context


def peer_server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The listening side of peer mTLS: present the node's certificate, require the dialer's,
    signed by `ca`. Its node id is checked against the handshake by the transport."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = PEER_TLS_VERSION_MIN
    _load_chain(context, cert, key, "peer_tls.cert", "peer_tls.key")
    _load_ca(context, ca, "peer_tls.ca")
    context.verify_mode = ssl.CERT_REQUIRED
    # Connections are long-lived and redone rarely: no session tickets to issue or keep.
    context.num_tickets = 0
    return context


def peer_client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The dialling side of peer mTLS: require the listener's certificate, signed by `ca`
    (the transport then checks it names the node dialled), and present our own."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = PEER_TLS_VERSION_MIN
    # The identity that matters is the node id in the certificate, checked after the
    # handshake; an address may move (membership changes) while a node keeps its id.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    _load_chain(context, cert, key, "peer_tls.cert", "peer_tls.key")
    _load_ca(context, ca, "peer_tls.ca")
    return context


@dataclass(frozen=True, slots=True)
class NodeTls:
    """Every SSL context one node uses; None where the layer is off.

    Fields:
        https_server: serves the HTTP API (``[tls]``).
        https_client: reaches the other nodes' HTTPS API: forwarding to the leader, asking
            members for the membership, ``serve --join``.
        peer_server, peer_client: the two sides of peer mTLS (``[peer_tls]``).
        ca_file, cert_file, key_file: the files behind `https_client`, for the container
            health check that follows the node (`kvraft.healthcheck`).
    """

    https_server: ssl.SSLContext | None = None
    https_client: ssl.SSLContext | None = None
    peer_server: ssl.SSLContext | None = None
    peer_client: ssl.SSLContext | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def http_scheme(self) -> str:
        """``https`` when the node serves HTTPS, else ``http``."""
        return "https" if self.https_server is not None else "http"


def node_tls(tls: TlsSettings | None, peer_tls: PeerTlsSettings | None, node_id: int) -> NodeTls:
    """The contexts of node `node_id` from its config's tables (``{id}`` in their paths
    replaced by the id); TlsFileError naming the file that cannot be used."""
    https_server = https_client = peer_server = peer_client = None
    ca_file = cert_file = key_file = None
    if tls is not None:
        mine = tls.for_node(node_id)
        https_server = https_server_context(mine.cert, mine.key, mine.client_ca)
        # As a client of the other nodes, the node shows its own certificate: accepted
        # wherever clients need one signed by the CA that signed the nodes'.
        https_client = https_client_context(
            mine.ca, mine.cert, mine.key, settings=("tls.ca", "tls.cert", "tls.key")
        )
        ca_file, cert_file, key_file = mine.ca, mine.cert, mine.key
    if peer_tls is not None:
        mine_peer = peer_tls.for_node(node_id)
        peer_server = peer_server_context(mine_peer.cert, mine_peer.key, mine_peer.ca)
        peer_client = peer_client_context(mine_peer.cert, mine_peer.key, mine_peer.ca)
    return NodeTls(
        https_server, https_client, peer_server, peer_client, ca_file, cert_file, key_file
    )


# --- who a certificate names ---------------------------------------------------------------------


def certificate_node_ids(peer_certificate: Mapping[str, Any] | None) -> frozenset[int]:
    """The node ids a verified peer certificate names, from `ssl`'s ``getpeercert()``
    dictionary: its ``kvraft://node/<id>`` SAN URIs, or, if it has none, a ``node-<id>``
    common name. Empty for a certificate naming no node (a client's)."""
    if not peer_certificate:
        return frozenset()
    ids = {
        int(match.group(1))
        for kind, value in peer_certificate.get("subjectAltName", ())
        if kind == "URI" and (match := NODE_URI_PATTERN.fullmatch(str(value)))
    }
    if ids:
        return frozenset(ids)
    for relative_name in peer_certificate.get("subject", ()):
        for attribute, value in relative_name:
            if attribute == "commonName" and (
                match := NODE_COMMON_NAME_PATTERN.fullmatch(str(value))
            ):
                ids.add(int(match.group(1)))
    return frozenset(ids)


# --- the listening side of a peer link, without IO -----------------------------------------------


class ServerTlsStream:
    """TLS server over memory buffers: feed it what the socket received, send what it says.

    `receive(data)` returns the plaintext that `data` completed (empty during the TLS
    handshake); `handshake_done` turns true once the peer's certificate is verified
    (`peer_certificate` then holds it). `send(plaintext)` encrypts. After either call,
    `outgoing()` gives the bytes to write to the socket (the handshake's answers too).
    Raises `ssl.SSLError` when the peer fails the handshake (no certificate, another CA, not
    TLS) or breaks the stream; `closed` is set when it ended the session cleanly.
    """

    __slots__ = ("_incoming", "_object", "_outgoing", "closed", "handshake_done")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.handshake_done = False
        self.closed = False

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        """The verified peer certificate (``getpeercert()``), once the handshake is done."""
        return self._object.getpeercert() if self.handshake_done else None

    def receive(self, data: bytes) -> bytes:
        self._incoming.write(data)
        if not self.handshake_done:
            try:
                self._object.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self.handshake_done = True
        pieces: list[bytes] = []
        while not self.closed:
            try:
                piece = self._object.read(TLS_READ_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not piece:
                break
            pieces.append(piece)
        return b"".join(pieces)

    def send(self, plaintext: bytes) -> None:
        self._object.write(plaintext)

    def outgoing(self) -> bytes:
        """The bytes to write to the socket now (handshake answers, encrypted data)."""
        return self._outgoing.read()
