"""TLS for every listener, and the one way our command-line clients open a channel.

The server side reads and checks the files once (`ServerTls.load`), then hands out credentials for each
listener: gRPC's today, an `ssl.SSLContext` for an HTTP listener. The settings check the files at start-up
(`check_server_files`), so a key that does not belong to its certificate, an expired certificate or an
encrypted key stops `nba serve` with a message naming the flag instead of failing inside a handshake later.

Plain text is allowed only when asked for (`--insecure`) or on a loopback address (the local quick start),
and is always logged as a warning.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nba_service.errors import PlainTextRefused

if TYPE_CHECKING:  # grpc is imported where used: `nba` commands that open no channel start without it
    import grpc

    from nba_service.settings import Settings

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost; names are not resolved (a name could be made to point anywhere)."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _load_certificates(path: Path, what: str) -> list[Any]:
    from cryptography import x509  # noqa: PLC0415 - only a TLS start-up pays for it

    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what}: {path} holds no PEM certificate ({exc})") from exc
    return certificates


def check_server_files(cert: Path, key: Path, client_ca: Path | None, now: dt.datetime | None = None) -> None:
    """Raises ValueError (its message naming the flag) unless the files make a working TLS listener."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    moment = now or dt.datetime.now(dt.UTC)
    chain = _load_certificates(cert, "--tls-cert / NBA_TLS_CERT")
    leaf = chain[0]
    expiry = leaf.not_valid_after_utc
    if expiry < moment:
        raise ValueError(f"--tls-cert / NBA_TLS_CERT: the certificate in {cert} expired on {expiry:%Y-%m-%d %H:%M} UTC")
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except TypeError as exc:  # a passphrase is needed
        raise ValueError(
            f"--tls-key / NBA_TLS_KEY: {key} is encrypted; give it unencrypted (readable by the service user only)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ValueError(f"--tls-key / NBA_TLS_KEY: {key} holds no PEM private key") from exc
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*raw) != leaf.public_key().public_bytes(*raw):
        raise ValueError(f"--tls-key / NBA_TLS_KEY: {key} is not the private key of the certificate in {cert}")
    if client_ca is not None:
        _load_certificates(client_ca, "--tls-client-ca / NBA_TLS_CLIENT_CA")


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The server's certificate chain and key, and the client CA when client certificates are required."""

    cert: Path
    key: Path
    client_ca: Path | None
    cert_chain: bytes
    private_key: bytes
    client_ca_pem: bytes | None

    @classmethod
    def load(cls, cert: Path, key: Path, client_ca: Path | None) -> ServerTls:
        return cls(
            cert,
            key,
            client_ca,
            cert.read_bytes(),
            key.read_bytes(),
            None if client_ca is None else client_ca.read_bytes(),
        )

    @property
    def mutual(self) -> bool:
        return self.client_ca_pem is not None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """With a client CA, client certificates are required and verified: a caller without one, or with one
        from another CA or out of date, is refused in the handshake."""
        import grpc  # noqa: PLC0415

        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca_pem,
            require_client_auth=self.mutual,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The same policy for a listener that is not gRPC (an HTTP gateway)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            context.load_verify_locations(cafile=str(self.client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def listener_security(settings: Settings) -> ServerTls | None:
    """The TLS every listener uses, or None for plain text, which is refused off loopback without --insecure."""
    if settings.tls_cert is not None and settings.tls_key is not None:
        return ServerTls.load(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    if not settings.insecure and not is_loopback(settings.host):
        raise PlainTextRefused(
            f"--host {settings.host} without --tls-cert/--tls-key: plain text off loopback needs --insecure"
        )
    return None


PLAIN_TEXT_HINT = "give --tls-cert and --tls-key (and --tls-client-ca for client certificates); see `nba dev-certs`"


# --------------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------------


class ClientSetupError(ValueError):
    """The client's TLS options cannot work (a file missing, a key without its certificate)."""


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What a command-line client presents: TLS when any file is given, plain text otherwise."""

    cacert: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    token: str | None = None
    server_name: str | None = None

    @property
    def secure(self) -> bool:
        return self.cacert is not None or self.cert is not None

    @classmethod
    def from_options(
        cls,
        *,
        cacert: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        token_file: Path | None = None,
        token: str | None = None,
        server_name: str | None = None,
    ) -> ClientTls:
        """Reads the files; raises ClientSetupError naming the option that cannot work."""
        if (cert is None) != (key is None):
            given, missing = ("--cert", "--key") if key is None else ("--key", "--cert")
            raise ClientSetupError(f"{given} needs {missing}: a client certificate is presented with its key")

        def read(path: Path | None, option: str) -> bytes | None:
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ClientSetupError(f"{option}: cannot read {path}: {exc.strerror or exc}") from exc

        if token_file is not None:
            raw = read(token_file, "--token-file")
            token = (raw or b"").decode("utf-8", "replace").strip()
            if not token:
                raise ClientSetupError(f"--token-file: {token_file} is empty")
        return cls(
            cacert=read(cacert, "--cacert"),
            cert=read(cert, "--cert"),
            key=read(key, "--key"),
            token=token.strip() if token else None,
            server_name=server_name or None,
        )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a client command calls and how: `--target` with its TLS options."""

    address: str
    tls: ClientTls

    def __post_init__(self) -> None:
        check_token_transport(self.address, self.tls)

    def __str__(self) -> str:
        return self.address

    def channel(self) -> grpc.Channel:
        return open_channel(self.address, self.tls)


def _host_of(target: str) -> str:
    host = target.rsplit(":", 1)[0] if target.count(":") == 1 or target.startswith("[") else target
    return host.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:").strip("[]")


def check_token_transport(target: str, tls: ClientTls) -> None:
    """Refuses to send a token in plain text anywhere but loopback: anyone on the path could reuse it."""
    if tls.token is not None and not tls.secure and not is_loopback(_host_of(target)):
        raise ClientSetupError(
            f"a bearer token would cross the network to {target} in plain text; give --cacert to use TLS"
        )


def open_channel(target: str, tls: ClientTls | None = None) -> grpc.Channel:
    """A channel to `target` with the client's TLS and token: the one factory for every `nba` client command.
    A token is sent as `authorization: Bearer ...` on every call."""
    import grpc  # noqa: PLC0415

    tls = tls or ClientTls()
    if tls.secure:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.cacert, private_key=tls.key, certificate_chain=tls.cert
        )
        options = [] if tls.server_name is None else [("grpc.ssl_target_name_override", tls.server_name)]
        channel: grpc.Channel = grpc.secure_channel(target, credentials, options=options)
    else:
        check_token_transport(target, tls)
        channel = grpc.insecure_channel(target)
    if tls.token is not None:
        channel = grpc.intercept_channel(channel, _bearer_interceptor(tls.token))
    return channel


def _bearer_interceptor(token: str) -> Any:
    """Adds `authorization: Bearer <token>` to every unary call."""
    import grpc  # noqa: PLC0415

    header = ("authorization", f"Bearer {token}")

    class BearerToken(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
            metadata: Sequence[tuple[str, str | bytes]] = (*(details.metadata or ()), header)
            return continuation(details._replace(metadata=metadata), request)

    return BearerToken()


_HANDSHAKE_REASONS = (
    ("certificate_verify_failed", "the server's certificate does not verify against --cacert"),
    ("certificate verify failed", "the server's certificate does not verify against --cacert"),
    ("wrong_version_number", "the service does not speak TLS on this port (try without --cacert)"),
    ("peer name", "the server's certificate does not name the host in --target (see --tls-server-name)"),
    ("certificate_required", "the service requires a client certificate (--cert and --key)"),
    ("unknown_ca", "the service does not trust the client certificate's CA"),
    ("certificate_expired", "a certificate has expired"),
    ("bad_certificate", "the service refused the client certificate"),
)


def connection_failure(details: str, target: str, secure: bool) -> str | None:
    """One line for a call that failed before reaching the service because of TLS, or None when it was not
    that. With TLS 1.3 a server that refuses the client's certificate just closes the connection, so the
    client sees "Socket closed" and can only name the likely causes."""
    lowered = details.lower()
    for marker, reason in _HANDSHAKE_REASONS:
        if marker in lowered:
            return f"TLS with {target} failed: {reason}"
    if "socket closed" in lowered or "connection reset" in lowered or "handshake" in lowered:
        if secure:
            return (
                f"TLS with {target} failed: the service closed the connection in the handshake; it wants a client "
                "certificate it trusts (--cert and --key, current and from its CA), or does not speak TLS on this port"
            )
        return f"the service at {target} closed the connection; if it speaks TLS, give --cacert (and --cert and --key)"
    return None
