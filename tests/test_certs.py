"""`kvraft certs init` (issue #20), its output read back with the `cryptography` package, and
`kvraft.tls`: the contexts it builds, the node ids a certificate names, and the peer
listener's TLS over memory buffers, in real TLS handshakes between the generated files."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvraft.certs import CLIENT_COMMON_NAME, init_certificates
from kvraft.cli import main
from kvraft.config import load_config, local_cluster_config, read_peer_secret, render_config
from kvraft.tls import (
    ServerTlsStream,
    TlsFileError,
    certificate_node_ids,
    https_client_context,
    https_server_context,
    peer_client_context,
    peer_server_context,
)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _names(certificate: x509.Certificate) -> x509.SubjectAlternativeName:
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _usages(certificate: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certs_init_makes_a_ca_node_certificates_naming_their_id_and_hosts_and_a_client_one(
    tmp_path: Path,
) -> None:
    config = local_cluster_config(3, tmp_path / "data", host="127.0.0.5")
    config_path = tmp_path / "cluster.toml"
    config_path.write_text(render_config(config))
    directory = tmp_path / "certs"
    result = CliRunner().invoke(
        main,
        [
            *("certs", "init", "--dir", str(directory), "--config", str(config_path)),
            *("--host", "kv.example.com"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("created") == 10
    before = datetime.datetime.now(datetime.UTC)

    assert _mode(directory) == 0o700
    for key in ("ca.key", "node1.key", "node2.key", "node3.key", "client.key"):
        assert _mode(directory / key) == 0o600, key
    for cert in ("ca.crt", "node1.crt", "client.crt"):
        assert _mode(directory / cert) == 0o644, cert

    ca = _load(directory / "ca.crt")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.subject == ca.issuer
    for node_id in (1, 2, 3):
        node = _load(directory / f"node{node_id}.crt")
        node.verify_directly_issued_by(ca)  # raises unless the CA signed it
        assert node.not_valid_before_utc <= before <= node.not_valid_after_utc
        assert isinstance(node.public_key(), ec.EllipticCurvePublicKey)
        assert not node.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        names = _names(node)
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"kvraft://node/{node_id}"
        ]
        assert node.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
            f"node-{node_id}"
        )
        assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "kv.example.com"}
        assert set(names.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
            ipaddress.ip_address("127.0.0.5"),  # the address the config gives the node
        }
        assert _usages(node) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    client = _load(directory / "client.crt")
    client.verify_directly_issued_by(ca)
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        CLIENT_COMMON_NAME
    )
    assert _usages(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}  # it cannot serve
    with pytest.raises(x509.ExtensionNotFound):
        _names(client)  # it names no node and no host


def test_certs_init_keeps_what_exists_and_issues_the_missing_with_the_same_ca(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "certs"
    runner = CliRunner()
    assert runner.invoke(main, ["certs", "init", "--dir", str(directory)]).exit_code == 0
    kept = {path.name: path.read_bytes() for path in directory.iterdir()}
    result = runner.invoke(main, ["certs", "init", "--dir", str(directory), "--nodes", "5"])
    assert result.exit_code == 0, result.output
    assert "existing files are kept" in result.output
    assert {name: (directory / name).read_bytes() for name in kept} == kept
    ca = _load(directory / "ca.crt")
    for node_id in (4, 5):
        _load(directory / f"node{node_id}.crt").verify_directly_issued_by(ca)
    # Half a CA is refused rather than replaced (its certificates would stop verifying).
    (directory / "ca.key").unlink()
    result = runner.invoke(main, ["certs", "init", "--dir", str(directory)])
    assert result.exit_code == 1
    assert "ca.key: missing" in result.output


def test_peer_secret_init_writes_a_secret_once_or_the_one_given_without_printing_it(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    path = tmp_path / "sub" / "peer-secret"
    result = runner.invoke(main, ["peer-secret", "init", str(path)], env={"KVRAFT_PEER_SECRET": ""})
    assert result.exit_code == 0, result.output
    assert _mode(path) == 0o600
    first = read_peer_secret(path)
    assert first.hex() not in result.output
    again = runner.invoke(main, ["peer-secret", "init", str(path)], env={"KVRAFT_PEER_SECRET": ""})
    assert "kept" in again.output and read_peer_secret(path) == first
    given = os.urandom(32).hex()
    result = runner.invoke(
        main, ["peer-secret", "init", str(path)], env={"KVRAFT_PEER_SECRET": given}
    )
    assert result.exit_code == 0 and given not in result.output
    assert read_peer_secret(path).hex() == given
    short = runner.invoke(
        main, ["peer-secret", "init", str(path)], env={"KVRAFT_PEER_SECRET": "ab"}
    )
    assert short.exit_code == 1 and "at least 16" in short.output


# --- kvraft.tls against the generated files ---------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls") / "certs"
    init_certificates(directory, [1, 2, 3])
    init_certificates(directory.with_name("other"), [1, 2, 3])  # another CA entirely
    return directory


def _handshake(
    server: ServerTlsStream,
    client: ssl.SSLObject,
    client_in: ssl.MemoryBIO,
    client_out: ssl.MemoryBIO,
) -> None:
    """Pass bytes between a client SSLObject and a ServerTlsStream until both are done (or
    one raises)."""
    client_done = False
    for _ in range(10):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        server.receive(client_out.read())
        client_in.write(server.outgoing())
        if client_done and server.handshake_done:
            return
    raise AssertionError("the handshake did not finish")


def _client(context: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return context.wrap_bio(incoming, outgoing, server_side=False), incoming, outgoing


def test_a_peer_certificate_names_its_node_and_the_stream_carries_data_both_ways(
    certificates: Path,
) -> None:
    ca = certificates / "ca.crt"
    server = ServerTlsStream(
        peer_server_context(certificates / "node1.crt", certificates / "node1.key", ca)
    )
    client, client_in, client_out = _client(
        peer_client_context(certificates / "node2.crt", certificates / "node2.key", ca)
    )
    _handshake(server, client, client_in, client_out)
    assert certificate_node_ids(server.peer_certificate) == {2}
    assert certificate_node_ids(client.getpeercert()) == {1}
    assert client.version() == "TLSv1.3"
    client.write(b"frames")
    assert server.receive(client_out.read()) == b"frames"
    server.send(b"reply")
    client_in.write(server.outgoing())
    assert client.read(100) == b"reply"
    # A client certificate names no node: a peer listener refuses it as any node.
    assert certificate_node_ids({"subject": ((("commonName", CLIENT_COMMON_NAME),),)}) == set()
    assert certificate_node_ids({"subject": ((("commonName", "node-7"),),)}) == {7}


@pytest.mark.parametrize("who", ["another CA", "no certificate"])
def test_the_peer_listener_refuses_a_dialer_it_cannot_verify(certificates: Path, who: str) -> None:
    ca = certificates / "ca.crt"
    server = ServerTlsStream(
        peer_server_context(certificates / "node1.crt", certificates / "node1.key", ca)
    )
    if who == "another CA":
        other = certificates.with_name("other")
        context = peer_client_context(other / "node2.crt", other / "node2.key", other / "ca.crt")
        context.verify_mode = ssl.CERT_NONE  # the outsider does not care who we are
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    client, client_in, client_out = _client(context)
    with pytest.raises(ssl.SSLError):
        _handshake(server, client, client_in, client_out)
    assert not server.handshake_done


def test_https_contexts_refuse_bad_files_with_one_line_naming_them(
    certificates: Path, tmp_path: Path
) -> None:
    ca = certificates / "ca.crt"
    with pytest.raises(TlsFileError, match="no such file"):
        https_server_context(tmp_path / "missing.crt", certificates / "node1.key")
    with pytest.raises(TlsFileError, match="matching"):  # node 1's certificate, node 2's key
        https_server_context(certificates / "node1.crt", certificates / "node2.key")
    with pytest.raises(TlsFileError, match="not a PEM CA"):
        https_client_context(certificates / "node1.key")
    with pytest.raises(TlsFileError, match="needs its key"):
        https_client_context(ca, certificates / "client.crt", None)
    context = https_client_context(ca, certificates / "client.crt", certificates / "client.key")
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_a_config_with_tls_tables_renders_loads_and_names_each_nodes_own_files(
    certificates: Path, tmp_path: Path
) -> None:
    text = render_config(local_cluster_config(2, tmp_path)) + (
        f'\n[tls]\ncert = "{certificates}/node{{id}}.crt"\nkey = "{certificates}/node{{id}}.key"\n'
        f'client_ca = "{certificates}/ca.crt"\n'
    )
    path = tmp_path / "with-tls.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.tls is not None and config.tls.for_node(2).cert == certificates / "node2.crt"
    assert config.url(config.nodes[0]).startswith("https://")
