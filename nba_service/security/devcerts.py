"""A throwaway certificate authority for running with TLS locally: `nba dev-certs DIR`.

It writes a CA, a server certificate for the given hosts, one client certificate per name (by default one per
role, named after it) and an access policy giving each such client its role, so that mutual TLS can be tried
in a minute. The CA key stays beside the CA certificate, so running the command again with another
`--client` adds a certificate from the same CA. Never for production: anyone who can read the directory can
issue certificates the server trusts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_CLIENTS = ("desktop", "dialer", "ingest", "reviewer", "admin")
ORGANISATION = "nba dev-certs (throwaway)"
TRUST_DOMAIN = "spiffe://nba.dev"
POLICY_FILE = "access-policy.yaml"


@dataclass(frozen=True, slots=True)
class Written:
    directory: Path
    ca_cert: Path
    ca_reused: bool
    server_cert: Path
    server_key: Path
    clients: tuple[tuple[str, Path, Path], ...]
    policy: Path | None
    valid_until: dt.datetime


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Created 0600 from the start: a key is never readable by others, not even for a moment."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _write_public(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if not (cert_path.exists() and key_path.exists()):
        return None
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not a key written by nba dev-certs")
    if certificate.not_valid_after_utc <= dt.datetime.now(dt.UTC) + dt.timedelta(days=1):
        return None  # expired or about to: start a new CA
    return certificate, key


def _new_ca(directory: Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("nba dev CA"))
        .issuer_name(_name("nba dev CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days * 3))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_public(directory / "ca.pem", certificate)
    _write_private(directory / "ca.key", key)
    return certificate, key


def _issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    names: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    valid_until: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
        .not_valid_after(min(valid_until, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return certificate, key


def _policy_text(clients: Sequence[str]) -> str:
    lines = [
        "# Written by `nba dev-certs` for local use: each client certificate gets the role it is named after.",
        "# See docs/operators/access-policy.md for the format.",
        "callers:",
    ]
    for name in clients:
        lines += [f"  - name: {name}", f"    match: {{certificate_cn: {name}}}", f"    roles: [{name}]"]
    return "\n".join(lines) + "\n"


def write_dev_certs(
    directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS, clients: Sequence[str] = DEFAULT_CLIENTS, days: int = 30
) -> Written:
    """Writes the CA (or reuses the one already there), the server's and the clients' certificates and keys."""
    if not hosts:
        raise ValueError("at least one host is needed for the server certificate")
    bad = [name for name in clients if not name or not all(c.isalnum() or c in "-_." for c in name)]
    if bad:
        raise ValueError(f"client names are letters, digits, '-', '_' and '.': not {bad[0]!r}")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca = _load_ca(directory)
    reused = ca is not None
    if ca is None:
        ca = _new_ca(directory, days)
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    server, server_key = _issue(ca, hosts[0], [_host_name(h) for h in hosts], ExtendedKeyUsageOID.SERVER_AUTH, until)
    _write_public(directory / "server.pem", server)
    _write_private(directory / "server.key", server_key)
    written: list[tuple[str, Path, Path]] = []
    for name in dict.fromkeys(clients):
        names = [x509.UniformResourceIdentifier(f"{TRUST_DOMAIN}/{name}")]
        certificate, key = _issue(ca, name, names, ExtendedKeyUsageOID.CLIENT_AUTH, until)
        _write_public(directory / f"{name}.pem", certificate)
        _write_private(directory / f"{name}.key", key)
        written.append((name, directory / f"{name}.pem", directory / f"{name}.key"))
    role_clients = [name for name, _, _ in written if name in DEFAULT_CLIENTS]
    policy = directory / POLICY_FILE
    if not policy.exists() and role_clients:  # an existing policy may have been edited: it is kept
        policy.write_text(_policy_text(role_clients), encoding="utf-8")
    return Written(
        directory,
        directory / "ca.pem",
        reused,
        directory / "server.pem",
        directory / "server.key",
        tuple(written),
        policy if policy.exists() else None,
        min(until, ca[0].not_valid_after_utc),
    )
