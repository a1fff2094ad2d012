"""A development CA and a certificate for each process of a stack (``vmsnap certs init``).

For a stack on one machine, tests and demos: a deployment uses its own PKI.
``init`` makes ``ca.crt``/``ca.key`` once, then, for every name not there yet,
``<name>.crt``/``<name>.key`` signed by it: a *server* certificate (for a
process that serves: host, drivers, agent) carries its name, ``localhost``,
127.0.0.1 and ::1 as subject alternative names and may also be used as a
client certificate (the host presents its own when it calls drivers and agents
on mutual TLS); a *client* certificate (the CLI's ``admin``) carries its name
as the subject CN, which ``[[auth.principals]] certificates = ["CN=admin"]``
maps to a principal. Keys are 0600 in a 0700 directory; nothing is overwritten
unless ``force``.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "ca"
DAYS = 825


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((directory / f"{CA_NAME}.crt").read_bytes())
    key = serialization.load_pem_private_key(
        (directory / f"{CA_NAME}.key").read_bytes(), password=None
    )
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / (CA_NAME + '.key')}: not an EC key made by vmsnap")
    return cert, key


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _make_ca(directory: Path, days: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmsnap development CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .sign(key, hashes.SHA256())
    )
    _write_key(directory / f"{CA_NAME}.key", key)
    _write_cert(directory / f"{CA_NAME}.crt", cert)


def _issue(directory: Path, name: str, *, server: bool, days: int) -> None:
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(name),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
    _write_key(directory / f"{name}.key", key)
    _write_cert(directory / f"{name}.crt", builder.sign(ca_key, hashes.SHA256()))


def init(
    directory: Path,
    servers: Sequence[str],
    clients: Sequence[str] = (),
    *,
    days: int = DAYS,
    force: bool = False,
) -> list[str]:
    """Make the CA (unless there) and every certificate not there yet; returns the
    names made. ``force`` makes everything anew (a new CA: every peer must get it)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    made = []
    if force or not (directory / f"{CA_NAME}.crt").exists():
        _make_ca(directory, days)
        made.append(CA_NAME)
        force = True  # certificates of an old CA would not verify
    for name, server in [*((n, True) for n in servers), *((n, False) for n in clients)]:
        if force or not (directory / f"{name}.crt").exists():
            _issue(directory, name, server=server, days=days)
            made.append(name)
    return made


def fingerprint(cert_file: Path) -> str:
    """SHA-256 of a PEM certificate's DER, the form of ``pin_sha256``."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


__all__ = ["CA_NAME", "fingerprint", "init"]
