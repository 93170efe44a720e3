"""TLS for connections that leave a host: a private CA and node certificates for a quick start, and the
client's SSL context.

`arx server --tls` makes the CA once (`tls/ca.pem`, `tls/ca.key`) and a certificate per node signed by
it (`tls/<node>.pem`, `tls/<node>.key`), every file mode 0600. Copy the tls folder to the other server
hosts so that their nodes are signed by the same CA; clients need only `ca.pem` (ARX_TLS_CA).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 825  # the longest a server certificate may live for clients that follow the CA/Browser rules


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "arx"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS)))


def ensure_ca(folder: Path) -> Path:
    """The private CA's certificate, made (with its key) the first time; returns ca.pem."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    cert_file, key_file = folder / "ca.pem", folder / "ca.key"
    if cert_file.exists() and key_file.exists():
        return cert_file
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"arx private CA ({socket.gethostname()})")
    cert = (_builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_private(key_file, _key_bytes(key))
    _write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return cert_file


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def ensure_node_cert(folder: Path, node: str, hosts: list[str]) -> tuple[Path, Path]:
    """(cert, key) for one server node, signed by the CA in `folder` and valid for `hosts` plus this host's
    own names; made the first time. The certificate serves both clients and the cluster's routes."""
    ca_file = ensure_ca(folder)
    cert_file, key_file = folder / f"{node}.pem", folder / f"{node}.key"
    if cert_file.exists() and key_file.exists():
        return cert_file, key_file
    ca_cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    names = list(dict.fromkeys([*hosts, "localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()]))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(_name(node), ca_cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([_san(host) for host in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # A route is a TLS client of the node it dials, so the certificate must serve both ends.
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(key_file, _key_bytes(key))
    _write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file


class _BenignTLSClose(logging.Filter):
    """asyncio warns when a stream upgraded to TLS after its greeting (as NATS does) ends; the
    connection closes as it should, so the warning only alarms whoever reads a role's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


_BENIGN = _BenignTLSClose()


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client context that trusts `ca_file` (or the system's CAs) and checks the server's name."""
    logging.getLogger("asyncio").addFilter(_BENIGN)  # once: a logger keeps one of each filter
    if ca_file is not None and not ca_file.is_file():
        raise ValueError(f"ARX_TLS_CA={ca_file}: no such file")
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
