"""Real keys and certificates made in the test: a CA, a server certificate, one client certificate per role,
an expired client certificate, one from another CA, and RSA and EC signing keys with their JWKS.

Built with `cryptography` and PyJWT directly, not with `nba dev-certs`, so tests of the server's checks do not
depend on the code that writes the operator's certificates.

    pki = make_pki(tmp_path)
    pki.server_cert, pki.server_key, pki.ca_cert          # serve with these (--tls-cert, --tls-key, --tls-client-ca)
    pki.client("desktop").cert, pki.client("desktop").key # CN=desktop, SAN URI:spiffe://nba.test/desktop
    pki.client("expired"), pki.client("foreign")          # refused at the handshake
    pki.jwks                                              # --jwks-file (keys "rsa-1" and "ec-1")
    pki.token(roles=["reviewer"], sub="alice")            # RS256, iss ISSUER, aud AUDIENCE, valid for 5 minutes
    pki.token("ec", exp=past)                             # ES256; a claim set to None is left out
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ISSUER = "https://idp.test.example"
AUDIENCE = "nba"
ROLES = ("desktop", "dialer", "ingest", "reviewer", "admin")
TRUST_DOMAIN = "spiffe://nba.test"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclasses.dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path
    subject: str  # RFC 4514, as Identity.principal shows it after "cert:"


@dataclasses.dataclass(frozen=True)
class Pki:
    directory: Path
    ca_cert: Path
    other_ca_cert: Path
    server_cert: Path
    server_key: Path
    jwks: Path
    clients: dict[str, CertPair]
    signing_keys: dict[str, PrivateKey]  # "rsa" and "ec", kids "rsa-1" and "ec-1"; "other" is in no JWKS

    def client(self, name: str) -> CertPair:
        return self.clients[name]

    def token(self, key: str = "rsa", *, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        """A signed JWT. Defaults: iss ISSUER, aud AUDIENCE, sub "tester", iat now, exp in 5 minutes; a claim
        given as None is left out. `headers` overrides the JOSE header (e.g. {"kid": "nope"})."""
        now = int(time.time())
        payload: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "tester", "iat": now, "exp": now + 300}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        private = self.signing_keys[key]
        algorithm = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
        header = {"kid": f"{key}-1", **(headers or {})}
        return jwt.encode(payload, private, algorithm=algorithm, headers=header)


def _name(common_name: str, organisation: str = "NBA Test") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: PrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _ec_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    *,
    valid_from: dt.datetime,
    valid_until: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = _ec_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _jwk(key: PrivateKey, kid: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, use="sig", alg="RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
    return jwk


def make_pki(directory: Path, clients: tuple[str, ...] = ROLES) -> Pki:
    """Writes everything into `directory` (created); about 0.3 s, mostly the RSA keys."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca = _ca("NBA Test CA")
    other = _ca("Some Other CA")
    _write_cert(directory / "ca.pem", ca[0])
    _write_cert(directory / "other-ca.pem", other[0])

    server = _leaf(
        ca,
        "localhost",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        ExtendedKeyUsageOID.SERVER_AUTH,
        valid_from=now - dt.timedelta(hours=1),
        valid_until=now + dt.timedelta(days=30),
    )
    _write_cert(directory / "server.pem", server[0])
    _write_key(directory / "server.key", server[1])

    made: dict[str, CertPair] = {}

    def client(name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], until: dt.datetime) -> None:
        cert, key = _leaf(
            issuer,
            name,
            [x509.UniformResourceIdentifier(f"{TRUST_DOMAIN}/{name}")],
            ExtendedKeyUsageOID.CLIENT_AUTH,
            valid_from=min(now - dt.timedelta(hours=1), until - dt.timedelta(days=1)),
            valid_until=until,
        )
        _write_cert(directory / f"{name}.pem", cert)
        _write_key(directory / f"{name}.key", key)
        made[name] = CertPair(directory / f"{name}.pem", directory / f"{name}.key", cert.subject.rfc4514_string())

    for name in clients:
        client(name, ca, now + dt.timedelta(days=30))
    client("expired", ca, now - dt.timedelta(days=1))
    client("foreign", other, now + dt.timedelta(days=30))

    signing: dict[str, PrivateKey] = {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": _ec_key(),
        "other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_jwk(signing["rsa"], "rsa-1"), _jwk(signing["ec"], "ec-1")]}, indent=2))
    return Pki(
        directory=directory,
        ca_cert=directory / "ca.pem",
        other_ca_cert=directory / "other-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        jwks=jwks,
        clients=made,
        signing_keys=signing,
    )
