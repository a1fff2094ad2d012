"""Self-signed TLS certificate for the emulator's HTTPS endpoint.

Generated once per data directory and reused across restarts, so a client that pinned the
certificate (``verify=<cert path>``) keeps working after the emulator restarts.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .atomicio import atomic_write_bytes

CERT_NAME = "tls-cert.pem"
KEY_NAME = "tls-key.pem"


def ensure_certificate(data_dir: Path, common_name: str) -> tuple[Path, Path]:
    """Return (cert, key) paths in ``data_dir``, creating them on first use.

    The certificate is valid for ``localhost`` and ``127.0.0.1`` (the emulators bind
    loopback only), so clients may verify it by passing the cert path as CA bundle.
    """
    cert_path = data_dir / CERT_NAME
    key_path = data_dir / KEY_NAME
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    x509.IPAddress(ipaddress.IPv6Address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    # Key first, cert last: the cert's presence marks a complete pair.
    atomic_write_bytes(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
