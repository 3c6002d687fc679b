"""`kvraft certs init`: a private CA, one certificate per node and a client certificate.

Theory of operation
-------------------
A kvraft cluster with TLS (`[tls]`: HTTPS for clients, `[peer_tls]`: mutual TLS between
peers, see `kvraft.tls`) needs certificates whose *names* mean something:

* every node's certificate names its node id, as the SAN URI ``kvraft://node/<id>`` and the
  common name ``node-<id>``: a peer that claims node id N in its handshake must hold N's
  certificate, so a stolen client certificate, or node 2's, cannot speak as node 3;
* it also names the addresses clients and forwarding nodes dial it by (``localhost``,
  ``127.0.0.1``, ``::1``, and each host the cluster config gives that node, such as
  ``127.0.0.2`` or a compose service name ``node2``), so HTTPS hostname checks pass;
* it may serve (``serverAuth``: HTTPS, the listening side of a peer link) and connect
  (``clientAuth``: the dialling side, and a follower forwarding to the leader's HTTPS API
  when the cluster requires client certificates);
* the client certificate (``kvraft-client``) may only connect (``clientAuth``) and names no
  node, so the peers refuse it.

`init_certificates` writes PEM files into one directory: ``ca.crt``/``ca.key``,
``node<id>.crt``/``node<id>.key`` per node, ``client.crt``/``client.key``. Keys are ECDSA
P-256 (small and fast to verify: a peer link's handshake costs little), created mode 0600 and
never widened; certificates are 0644. It never overwrites: a file that exists is kept
(reported as such), an existing CA issues the missing certificates, so running it again, or
for more nodes, is safe. To reissue a certificate, delete it first.

The `cryptography` package does the X.509 work; nothing else in kvraft imports it (a node
only reads the PEM files, with the standard library's `ssl`), and only `kvraft certs` and
`cluster up --tls` import this module.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_VALID_DAYS",
    "CLIENT_COMMON_NAME",
    "LEAF_VALID_DAYS",
    "LOCAL_HOSTS",
    "CertificateFiles",
    "CertificatesError",
    "init_certificates",
    "node_common_name",
    "node_uri",
]

CA_VALID_DAYS = 3650
"""The CA's lifetime: it outlives every certificate it issues."""

LEAF_VALID_DAYS = 825
"""A node's or client's certificate lifetime: the longest that browsers and Apple's TLS stack
accept for a server certificate."""

CLOCK_SKEW_S = 300
"""Certificates are valid from this long before they were made, so a peer whose clock is a
little behind does not refuse a brand-new certificate."""

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
"""Names every node certificate carries: a local cluster, and a health check from the node's
own container, dial these."""

CLIENT_COMMON_NAME = "kvraft-client"
"""The client certificate's subject: it names no node, so peers refuse it."""

_CA_COMMON_NAME = "kvraft local CA"

_IssuerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""The CA keys accepted: what `init_certificates` makes (ECDSA), or an RSA CA of your own."""


class CertificatesError(Exception):
    """The certificates cannot be made: a file cannot be written, or an existing CA cannot be
    read. The message names the file."""


def node_uri(node_id: int) -> str:
    """The SAN URI that names node `node_id` in its certificate (`kvraft.tls` reads it)."""
    return f"kvraft://node/{node_id}"


def node_common_name(node_id: int) -> str:
    """The common name of node `node_id`'s certificate."""
    return f"node-{node_id}"


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """What `init_certificates` left in `directory`.

    Fields:
        directory: where the files are.
        ca_cert: the CA certificate (what ``--cacert`` and ``[peer_tls] ca`` take).
        node_ids: the nodes with a certificate (``node<id>.crt``, ``node<id>.key``).
        client_cert, client_key: the client certificate and its key.
        created: the files written by this call; the others already existed and were kept.
    """

    directory: Path
    ca_cert: Path
    node_ids: tuple[int, ...]
    client_cert: Path
    client_key: Path
    created: tuple[Path, ...] = field(default=())

    def node_cert(self, node_id: int) -> Path:
        return self.directory / f"node{node_id}.crt"

    def node_key(self, node_id: int) -> Path:
        return self.directory / f"node{node_id}.key"


def init_certificates(
    directory: Path,
    node_ids: Sequence[int],
    *,
    hosts_of_node: Mapping[int, Iterable[str]] | None = None,
    extra_hosts: Iterable[str] = (),
    now: datetime.datetime | None = None,
) -> CertificateFiles:
    """Make (or complete) the CA, node and client certificates in `directory`.

    Node `i`'s certificate names `LOCAL_HOSTS`, `extra_hosts` and `hosts_of_node[i]` (IP
    literals become IP SANs, anything else a DNS SAN). Existing files are kept; an existing
    CA (``ca.crt`` and ``ca.key``) signs the missing certificates. CertificatesError if a
    file cannot be written or an existing CA cannot be loaded.
    """

    now = now or datetime.datetime.now(datetime.UTC)
    hosts_of_node = hosts_of_node or {}
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise CertificatesError(f"{directory}: cannot create: {error.strerror or error}") from None
    created: list[Path] = []
    ca_cert_path, ca_key_path = directory / "ca.crt", directory / "ca.key"
    if ca_cert_path.exists() or ca_key_path.exists():
        ca_key, ca_cert = _load_ca(ca_cert_path, ca_key_path)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key, now)
        _write_key(ca_key_path, ca_key)
        _write_certificate(ca_cert_path, ca_cert)
        created += [ca_cert_path, ca_key_path]
    for node_id in node_ids:
        hosts = [*LOCAL_HOSTS, *extra_hosts, *hosts_of_node.get(node_id, ())]
        created += _issue(
            directory / f"node{node_id}",
            ca_key,
            ca_cert,
            common_name=node_common_name(node_id),
            uris=[node_uri(node_id)],
            hosts=hosts,
            server=True,
            now=now,
        )
    created += _issue(
        directory / "client",
        ca_key,
        ca_cert,
        common_name=CLIENT_COMMON_NAME,
        uris=[],
        hosts=[],
        server=False,
        now=now,
    )
    return CertificateFiles(
        directory=directory,
        ca_cert=ca_cert_path,
        node_ids=tuple(node_ids),
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        created=tuple(created),
    )


# --- building certificates -----------------------------------------------------------------


def _name(common_name: str) -> x509.Name:

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvraft"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_certificate(key: _IssuerKey, now: datetime.datetime) -> x509.Certificate:

    name = _name(_CA_COMMON_NAME)
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=CLOCK_SKEW_S))
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _subject_alternative_names(uris: Sequence[str], hosts: Sequence[str]) -> list[x509.GeneralName]:

    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
    seen: set[str] = set()
    for host in hosts:
        text = host.strip().strip("[]").lower()
        if not text or text in seen:
            continue
        seen.add(text)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            names.append(x509.DNSName(text))
    return names


def _issue(
    stem: Path,
    ca_key: _IssuerKey,
    ca_cert: x509.Certificate,
    *,
    common_name: str,
    uris: Sequence[str],
    hosts: Sequence[str],
    server: bool,
    now: datetime.datetime,
) -> list[Path]:
    """Write ``stem.crt`` and ``stem.key`` unless the certificate exists; the files written."""

    cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
    if cert_path.exists():
        return []  # kept: reissuing is deleting it first
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=CLOCK_SKEW_S))
        .not_valid_after(now + datetime.timedelta(days=LEAF_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    names = _subject_alternative_names(uris, hosts)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    # The key first: a certificate on disk without its key would be "kept" forever.
    _write_key(key_path, key)
    _write_certificate(cert_path, certificate)
    return [cert_path, key_path]


# --- files -------------------------------------------------------------------------------------


def _load_ca(cert_path: Path, key_path: Path) -> tuple[_IssuerKey, x509.Certificate]:

    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as error:
        raise CertificatesError(
            f"{error.filename}: missing, but the other half of the CA exists: restore it, or"
            " delete both ca.crt and ca.key (and every certificate the old CA issued)"
        ) from None
    except OSError as error:
        raise CertificatesError(
            f"{error.filename}: cannot read the CA: {error.strerror or error}"
        ) from None
    except (ValueError, TypeError) as error:  # TypeError: a key that needs a password
        raise CertificatesError(
            f"{cert_path} / {key_path}: not a PEM certificate and unencrypted key: {error}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificatesError(f"{key_path}: the CA key is neither ECDSA nor RSA")
    return key, certificate


def _write_key(path: Path, key: _IssuerKey) -> None:

    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(path, data, 0o600)


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:

    _write_new(path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start (a key is never readable by others, not even
    for a moment) and write `data`, durably; CertificatesError if it exists or fails."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as error:
        raise CertificatesError(f"{path}: cannot create: {error.strerror or error}") from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), mode)  # the umask may have narrowed a certificate's mode
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        with contextlib.suppress(OSError):
            path.unlink()
        raise CertificatesError(f"{path}: cannot write: {error.strerror or error}") from None
