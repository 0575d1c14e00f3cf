"""Authentication: from what a transport verified or was handed, to an `Identity`, or a refusal that says why.

Two proofs are accepted. A client certificate is verified by the TLS handshake (mutual TLS: no verified
certificate, no connection), so this module only reads it. A bearer token (`authorization: Bearer <JWT>`) is
verified here with PyJWT against the public keys of a JWKS file: signature, issuer, audience, expiry and
not-before. Keys come from the file only (read at start-up and again when it changes); nothing is fetched
over the network while a call waits.

When both are present the token decides who is calling: the certificate then proves which machine or
gateway the call came through, the token which person or service is asking. A token that does not verify is
refused even beside a good certificate, so a broken token never silently falls back to the machine's rights.

Messages name the problem ("the token has expired") and never echo the token.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import jwt
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nba_service.errors import Unauthenticated
from nba_service.security.identity import ANONYMOUS, Identity

if TYPE_CHECKING:
    from nba_service.settings import Settings

log = structlog.get_logger(__name__)

# Asymmetric algorithms only, by key type: an HMAC algorithm would let anyone holding the public key (which
# is public) sign tokens, and "none" signs nothing.
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = ("ES256", "ES384", "ES512")
MAX_TOKEN_BYTES = 8192
JWKS_CHECK_INTERVAL_S = 1.0
NO_CREDENTIALS = "no credentials: present a client certificate or a bearer token"


def _key_type_algorithms(key: Any) -> tuple[str, ...]:
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return EC_ALGORITHMS
    return ()


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    public_key: Any
    algorithms: tuple[str, ...]  # what this key may verify: its type's, narrowed by the JWK's own "alg"


@dataclass(frozen=True, slots=True)
class Jwks:
    """The verification keys of one JWKS file."""

    keys: tuple[_Key, ...]

    @classmethod
    def parse(cls, text: str, where: str) -> Jwks:
        """Raises ValueError naming the file and what is wrong with it."""
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{where} is not JSON: {exc}") from exc
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError(f'{where} is not a JWKS: expected an object with a "keys" list')
        keys: list[_Key] = []
        for index, jwk in enumerate(document["keys"]):
            if not isinstance(jwk, dict):
                raise ValueError(f"{where}: keys[{index}] is not an object")
            if jwk.get("use", "sig") != "sig":
                continue
            if "d" in jwk:
                raise ValueError(f"{where}: keys[{index}] is a private key; the server needs public keys only")
            kty = jwk.get("kty")
            if kty not in ("RSA", "EC"):
                raise ValueError(f"{where}: keys[{index}] has key type {kty!r}; only RSA and EC keys are accepted")
            try:
                public_key = jwt.PyJWK(jwk).key
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{where}: keys[{index}] is not a usable {kty} key: {exc}") from exc
            algorithms = _key_type_algorithms(public_key)
            alg = jwk.get("alg")
            if alg is not None:
                if alg not in algorithms:
                    raise ValueError(f"{where}: keys[{index}] declares alg {alg!r}, not one for a {kty} key")
                algorithms = (alg,)
            kid = jwk.get("kid")
            keys.append(_Key(str(kid) if kid is not None else None, public_key, algorithms))
        if not keys:
            raise ValueError(f"{where} holds no signing key")
        kids = [k.kid for k in keys if k.kid is not None]
        if len(kids) != len(set(kids)):
            raise ValueError(f"{where}: two keys share a kid")
        return cls(tuple(keys))

    @classmethod
    def read(cls, path: Path) -> Jwks:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc
        return cls.parse(text, str(path))

    def key_for(self, kid: str | None) -> _Key:
        if kid is None:
            if len(self.keys) == 1:
                return self.keys[0]
            raise Unauthenticated("the token names no key (kid), and the server holds several")
        for key in self.keys:
            if key.kid == kid:
                return key
        raise Unauthenticated(f"the token's key id {_shown(kid)} is not one the server trusts")


def _shown(text: str, limit: int = 64) -> str:
    """Caller-chosen text in a message: quoted, and cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


class _JwksFile:
    """A JWKS file read at start-up and read again when it changes (key rotation without a restart). A
    changed file that does not parse is logged and the keys already loaded stay in use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._stat()
        self.jwks = Jwks.read(path)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> Jwks:
        now = time.monotonic()
        if now - self._checked < JWKS_CHECK_INTERVAL_S:
            return self.jwks
        with self._lock:
            self._checked = now
            stamp = self._stat()
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                try:
                    self.jwks = Jwks.read(self.path)
                    log.info("jwks_reloaded", path=str(self.path), keys=len(self.jwks.keys))
                except ValueError as exc:
                    log.error("jwks_reload_failed", path=str(self.path), error=str(exc))
        return self.jwks


@dataclass(frozen=True, slots=True)
class TokenRules:
    issuer: str
    audience: str
    leeway_seconds: float = 30.0


class Authenticator:
    """Built once from the settings in the composition root; `authenticate` for every call.

    `certificates`: the transport requires and verifies client certificates (mutual TLS). `jwks`/`rules`:
    bearer tokens are accepted. With neither, every caller is `ANONYMOUS` (the local quick start) and a
    presented token is refused, since nothing could verify it.
    """

    def __init__(
        self, *, certificates: bool = False, jwks: Path | Jwks | None = None, rules: TokenRules | None = None
    ) -> None:
        if (jwks is None) != (rules is None):
            raise ValueError("bearer tokens need both the keys and the issuer and audience to check")
        self.certificates = certificates
        self._rules = rules
        self._jwks: _JwksFile | Jwks | None = _JwksFile(jwks) if isinstance(jwks, Path) else jwks

    @property
    def tokens(self) -> bool:
        return self._jwks is not None

    @property
    def anonymous(self) -> bool:
        """No credential is checked: every caller is ANONYMOUS."""
        return not self.certificates and not self.tokens

    def authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], auth_context: Mapping[str, Sequence[bytes]]
    ) -> Identity:
        """The caller's identity; raises Unauthenticated naming what was wrong.

        `metadata` is the call's invocation metadata, `auth_context` what the transport verified (gRPC's
        `ServicerContext.auth_context()`: `x509_pem_cert`, `x509_common_name`, ...).
        """
        token = bearer_token(metadata)
        if token is not None:
            return self.verify_token(token)
        certificate = certificate_identity(auth_context)
        if certificate is not None:
            return certificate
        if self.anonymous:
            return ANONYMOUS
        raise Unauthenticated(NO_CREDENTIALS if self.certificates else "no credentials: present a bearer token")

    def verify_token(self, token: str) -> Identity:
        if self._jwks is None or self._rules is None:
            raise Unauthenticated("a bearer token was presented, but this server verifies no tokens (no --jwks-file)")
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        jwks = self._jwks.current() if isinstance(self._jwks, _JwksFile) else self._jwks
        rules = self._rules
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise Unauthenticated("the bearer token is not a well-formed JWT") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise Unauthenticated("the token is not signed (alg none)")
        if alg not in RSA_ALGORITHMS + EC_ALGORITHMS:
            raise Unauthenticated(f"the token's algorithm {_shown(alg)} is not accepted (RSA and EC signatures only)")
        kid = header.get("kid")
        key = jwks.key_for(str(kid) if kid is not None else None)
        if alg not in key.algorithms:
            raise Unauthenticated(f"the token's algorithm {alg} does not fit its key {_shown(key.kid or '')}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key,
                algorithms=[alg],
                audience=rules.audience,
                issuer=rules.issuer,
                leeway=rules.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_signature": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated("the token is not valid yet (nbf or iat is in the future)") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated(f"the token's audience is not {rules.audience}") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated(f"the token's issuer is not {rules.issuer}") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthenticated("the token's signature does not verify") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token has no {exc.claim!r} claim") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the bearer token is not valid: {type(exc).__name__}") from exc
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("the token's 'sub' claim is not a non-empty string")
        return Identity(
            principal=f"jwt:{claims['iss']}#{subject}",
            method="token",
            subject=subject,
            claims=MappingProxyType(claims),
        )


def bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    """The one bearer token of a call, or None; raises Unauthenticated for several or a malformed header."""
    values = [value for key, value in metadata if key.lower() == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated("more than one authorization header")
    value = values[0]
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    scheme, _, token = text.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("the authorization header is not a bearer token (Authorization: Bearer <JWT>)")
    token = token.strip()
    if not token:
        raise Unauthenticated("the authorization header holds no token")
    return token


def _first(auth_context: Mapping[str, Sequence[bytes]], key: str) -> bytes | None:
    values = auth_context.get(key) or ()
    return values[0] if values else None


def certificate_identity(auth_context: Mapping[str, Sequence[bytes]]) -> Identity | None:
    """The identity in a client certificate the TLS handshake verified, or None when there is none.

    gRPC puts a client certificate in the auth context only after verifying it against the client CA (the
    server requires and verifies client certificates whenever it is given one), so it is trusted as it is.
    """
    pem = _first(auth_context, "x509_pem_cert")
    if pem is None:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise Unauthenticated("the client certificate cannot be read") from exc
    subject = certificate.subject
    common = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    common_name = str(common[0].value) if common else ""
    full = subject.rfc4514_string()
    return Identity(
        principal=f"cert:{full}",
        method="certificate",
        subject=common_name or full,
        names=_alternative_names(certificate),
    )


def _alternative_names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    names: list[str] = []
    for name in extension.value:
        if isinstance(name, x509.DNSName):
            names.append(f"DNS:{name.value}")
        elif isinstance(name, x509.UniformResourceIdentifier):
            names.append(f"URI:{name.value}")
        elif isinstance(name, x509.RFC822Name):
            names.append(f"email:{name.value}")
        elif isinstance(name, x509.IPAddress):
            names.append(f"IP:{name.value}")
    return tuple(names)


def authenticator_from_settings(settings: Settings) -> Authenticator:
    """The authenticator the settings ask for; the files were checked when the settings were validated."""
    rules = None
    if settings.jwks_file is not None and settings.jwt_issuer and settings.jwt_audience:
        rules = TokenRules(settings.jwt_issuer, settings.jwt_audience, settings.jwt_leeway_seconds)
    return Authenticator(
        certificates=settings.tls_client_ca is not None,
        jwks=settings.jwks_file if rules is not None else None,
        rules=rules,
    )
