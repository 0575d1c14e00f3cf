"""The security settings checked together at start-up, each message naming the flag and the variable.

Separate from the settings model so that the model stays a list of fields, and so that cryptography and
PyJWT are imported only when TLS or tokens are configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nba_service.settings import Settings


def _both(name: str) -> str:
    return f"--{name.replace('_', '-')} / NBA_{name.upper()}"


def check_security(settings: Settings) -> None:
    """Raises ValueError for TLS files that do not belong together and token settings that are incomplete."""
    if settings.tls_key is not None and settings.tls_cert is None:
        raise ValueError(f"{_both('tls_key')} needs {_both('tls_cert')}, the certificate it belongs to")
    if settings.tls_cert is not None and settings.tls_key is None:
        raise ValueError(f"{_both('tls_cert')} needs {_both('tls_key')}, the certificate's private key")
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        raise ValueError(
            f"{_both('tls_client_ca')} (mutual TLS) needs {_both('tls_cert')} and {_both('tls_key')}: client "
            "certificates are checked inside a TLS handshake"
        )
    if settings.tls_cert is not None and settings.insecure:
        raise ValueError(f"{_both('insecure')} asks for plain text, {_both('tls_cert')} for TLS: give one of them")
    if settings.tls_cert is not None and settings.tls_key is not None:
        from nba_service.security.tls import check_server_files  # noqa: PLC0415

        check_server_files(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    if settings.jwks_file is None:
        if settings.jwt_issuer or settings.jwt_audience:
            raise ValueError(f"--jwt-issuer and --jwt-audience need {_both('jwks_file')}, the keys that verify tokens")
        return
    missing = [_both(name) for name in ("jwt_issuer", "jwt_audience") if not getattr(settings, name)]
    if missing:
        raise ValueError(f"{_both('jwks_file')} needs {' and '.join(missing)}: every token is checked for both")
    from nba_service.security.authn import Jwks  # noqa: PLC0415

    try:
        Jwks.read(settings.jwks_file)
    except ValueError as exc:
        raise ValueError(f"{_both('jwks_file')}: {exc}") from exc
