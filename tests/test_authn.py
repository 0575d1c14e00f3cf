"""Authentication with real keys and certificates made in the test: bearer tokens (RSA and EC) checked against a
JWKS file, identities read from client certificates, the security settings checked at start-up, and the
client's TLS options."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from nba_service.errors import PlainTextRefused, Unauthenticated
from nba_service.security import authn
from nba_service.security.authn import NO_CREDENTIALS, Authenticator, TokenRules, authenticator_from_settings
from nba_service.security.identity import ANONYMOUS
from nba_service.security.tls import (
    ClientSetupError,
    ClientTls,
    Endpoint,
    connection_failure,
    is_loopback,
    listener_security,
)
from nba_service.settings import Settings
from tests.security_pki import AUDIENCE, ISSUER, Pki, make_pki

RULESET = Path(__file__).resolve().parents[1] / "rulesets" / "retail-banking.yaml"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tokens(pki: Pki) -> Authenticator:
    return Authenticator(jwks=pki.jwks, rules=TokenRules(ISSUER, AUDIENCE, leeway_seconds=5))


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refusal(authenticator: Authenticator, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        authenticator.authenticate(bearer(token), {})
    message = caught.value.message
    for part in token.split("."):
        assert len(part) < 8 or part not in message, "a refusal must never echo the token"
    return message


class TestTokens:
    """A bearer token is accepted only when signed by a JWKS key with an asymmetric algorithm, from the right
    issuer, for the right audience, and within its validity."""

    @pytest.mark.parametrize("key", ["rsa", "ec"])
    def test_a_valid_token_names_the_caller(self, pki: Pki, tokens: Authenticator, key: str) -> None:
        identity = tokens.authenticate(bearer(pki.token(key, sub="alice", roles=["reviewer"])), {})
        assert identity.principal == "jwt:https://idp.test.example#alice"
        assert identity.method == "token"
        assert identity.subject == "alice"
        assert identity.names == ()
        assert identity.claims["roles"] == ["reviewer"]
        assert not identity.anonymous

    def test_expired(self, pki: Pki, tokens: Authenticator) -> None:
        past = int(time.time()) - 600
        assert refusal(tokens, pki.token(iat=past - 300, exp=past)) == "the token has expired"

    def test_expired_ec(self, pki: Pki, tokens: Authenticator) -> None:
        past = int(time.time()) - 600
        assert refusal(tokens, pki.token("ec", iat=past - 300, exp=past)) == "the token has expired"

    def test_within_the_leeway_still_valid(self, pki: Pki, tokens: Authenticator) -> None:
        just_now = int(time.time()) - 2
        assert tokens.authenticate(bearer(pki.token(exp=just_now)), {}).subject == "tester"

    def test_not_yet_valid(self, pki: Pki, tokens: Authenticator) -> None:
        later = int(time.time()) + 600
        assert refusal(tokens, pki.token(nbf=later, exp=later + 300)).startswith("the token is not valid yet")

    def test_wrong_audience(self, pki: Pki, tokens: Authenticator) -> None:
        assert refusal(tokens, pki.token(aud="billing")) == "the token's audience is not nba"

    def test_wrong_issuer(self, pki: Pki, tokens: Authenticator) -> None:
        message = refusal(tokens, pki.token("ec", iss="https://evil.example"))
        assert message == "the token's issuer is not https://idp.test.example"

    def test_tampered_payload(self, pki: Pki, tokens: Authenticator) -> None:
        header, payload, signature = pki.token(sub="alice").split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["sub"] = "admin"
        forged = ".".join([header, b64(json.dumps(claims).encode()), signature])
        assert refusal(tokens, forged) == "the token's signature does not verify"

    def test_signed_by_a_key_not_in_the_jwks(self, pki: Pki, tokens: Authenticator) -> None:
        assert refusal(tokens, pki.token("other", headers={"kid": "rsa-1"})) == (
            "the token's signature does not verify"
        )

    def test_unknown_kid(self, pki: Pki, tokens: Authenticator) -> None:
        assert (
            refusal(tokens, pki.token(headers={"kid": "nope"}))
            == "the token's key id 'nope' is not one the server trusts"
        )

    def test_alg_none(self, pki: Pki, tokens: Authenticator) -> None:
        now = int(time.time())
        header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode())
        payload = b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 60}).encode())
        assert refusal(tokens, f"{header}.{payload}.") == "the token is not signed (alg none)"

    def test_hs256_with_the_public_key_as_secret(self, pki: Pki, tokens: Authenticator) -> None:
        """The classic key-confusion attack: the public key is public, so an HMAC over it proves nothing."""
        public_pem = (
            pki.signing_keys["rsa"]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        now = int(time.time())
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
        payload = b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 60}).encode())
        signature = b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        message = refusal(tokens, f"{header}.{payload}.{signature}")
        assert message == "the token's algorithm 'HS256' is not accepted (RSA and EC signatures only)"

    def test_an_rsa_signature_under_an_ec_kid(self, pki: Pki, tokens: Authenticator) -> None:
        assert refusal(tokens, pki.token("rsa", headers={"kid": "ec-1"})) == (
            "the token's algorithm RS256 does not fit its key 'ec-1'"
        )

    def test_without_a_subject(self, pki: Pki, tokens: Authenticator) -> None:
        assert refusal(tokens, pki.token(sub=None)) == "the token has no 'sub' claim"

    def test_without_an_expiry(self, pki: Pki, tokens: Authenticator) -> None:
        assert refusal(tokens, pki.token(exp=None)) == "the token has no 'exp' claim"

    def test_not_a_jwt(self, tokens: Authenticator) -> None:
        assert refusal(tokens, "not-a-jwt") == "the bearer token is not a well-formed JWT"

    def test_header_forms(self, pki: Pki, tokens: Authenticator) -> None:
        token = pki.token()
        assert tokens.authenticate([("authorization", f"bearer  {token} ")], {}).subject == "tester"
        with pytest.raises(Unauthenticated, match="not a bearer token"):
            tokens.authenticate([("authorization", "Basic dXNlcjpwdw==")], {})
        with pytest.raises(Unauthenticated, match="more than one authorization header"):
            tokens.authenticate([*bearer(token), *bearer(token)], {})
        with pytest.raises(Unauthenticated, match="holds no token"):
            tokens.authenticate([("authorization", "Bearer ")], {})

    def test_no_token_when_tokens_are_required(self, tokens: Authenticator) -> None:
        with pytest.raises(Unauthenticated, match="no credentials: present a bearer token"):
            tokens.authenticate([("x-other", "1")], {})

    def test_key_rotation_is_read_from_the_file(
        self, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The JWKS file is read again when it changes; a changed file that does not parse keeps the old keys."""
        monkeypatch.setattr(authn, "JWKS_CHECK_INTERVAL_S", 0.0)
        document = json.loads(pki.jwks.read_text())
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps({"keys": [k for k in document["keys"] if k["kid"] == "rsa-1"]}))
        authenticator = Authenticator(jwks=jwks, rules=TokenRules(ISSUER, AUDIENCE))
        assert refusal(authenticator, pki.token("ec")) == "the token's key id 'ec-1' is not one the server trusts"
        jwks.write_text(json.dumps(document) + "\n")
        assert authenticator.authenticate(bearer(pki.token("ec")), {}).method == "token"
        jwks.write_text("{ broken")
        assert authenticator.authenticate(bearer(pki.token("ec")), {}).method == "token"


class TestJwksFile:
    """A JWKS file is checked when the server starts: a bad one stops it with the reason."""

    @pytest.mark.parametrize(
        ("document", "problem"),
        [
            ("[]", 'is not a JWKS: expected an object with a "keys" list'),
            ('{"keys": []}', "holds no signing key"),
            ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "only RSA and EC keys are accepted"),
            ('{"keys": [{"kty": "RSA", "n": "AQAB"}]}', "is not a usable RSA key"),
        ],
    )
    def test_refused(self, tmp_path: Path, document: str, problem: str) -> None:
        path = tmp_path / "jwks.json"
        path.write_text(document)
        with pytest.raises(ValueError, match=re.escape(problem)):
            authn.Jwks.read(path)

    def test_a_private_key_is_refused(self, pki: Pki, tmp_path: Path) -> None:
        import jwt

        private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(pki.signing_keys["ec"]))
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps({"keys": [private]}))
        with pytest.raises(ValueError, match="is a private key"):
            authn.Jwks.read(path)


class TestCertificates:
    """The identity in a verified client certificate: the subject's CN and its alternative names."""

    def test_cn_and_sans(self, pki: Pki) -> None:
        pem = pki.client("desktop").cert.read_bytes()
        authenticator = Authenticator(certificates=True)
        identity = authenticator.authenticate([], {"x509_pem_cert": [pem], "x509_common_name": [b"desktop"]})
        assert identity.principal == "cert:CN=desktop,O=NBA Test"
        assert identity.method == "certificate"
        assert identity.subject == "desktop"
        assert identity.names == ("URI:spiffe://nba.test/desktop",)
        assert identity.claims == {}

    def test_server_certificate_names(self, pki: Pki) -> None:
        identity = authn.certificate_identity({"x509_pem_cert": [pki.server_cert.read_bytes()]})
        assert identity is not None
        assert identity.names == ("DNS:localhost", "IP:127.0.0.1")

    def test_no_certificate(self) -> None:
        with pytest.raises(Unauthenticated) as caught:
            Authenticator(certificates=True).authenticate([], {"transport_security_type": [b"ssl"]})
        assert caught.value.message == NO_CREDENTIALS

    def test_a_token_decides_over_a_certificate(self, pki: Pki) -> None:
        both = Authenticator(certificates=True, jwks=pki.jwks, rules=TokenRules(ISSUER, AUDIENCE))
        context = {"x509_pem_cert": [pki.client("desktop").cert.read_bytes()]}
        assert both.authenticate(bearer(pki.token(sub="bob")), context).principal == f"jwt:{ISSUER}#bob"
        with pytest.raises(Unauthenticated, match="audience"):
            both.authenticate(bearer(pki.token(aud="other")), context)

    def test_anonymous_only_when_nothing_is_checked(self, pki: Pki) -> None:
        open_server = Authenticator()
        assert open_server.authenticate([], {}) is ANONYMOUS
        assert ANONYMOUS.anonymous
        with pytest.raises(Unauthenticated, match="verifies no tokens"):
            open_server.authenticate(bearer(pki.token()), {})


class TestOverRealTls:
    """gRPC's auth context, as a real mutual-TLS handshake fills it, carries what the authenticator reads."""

    async def test_identity_from_a_handshake(self, pki: Pki) -> None:
        from nba_service.security.tls import ServerTls

        seen: list[str] = []
        authenticator = Authenticator(certificates=True)

        async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            identity = authenticator.authenticate(context.invocation_metadata() or (), context.auth_context())
            seen.append(identity.principal)
            return "|".join([identity.principal, identity.subject, *identity.names]).encode()

        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(who)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Who", {"Me": handler}),))
        tls = ServerTls.load(pki.server_cert, pki.server_key, pki.ca_cert)
        port = server.add_secure_port("127.0.0.1:0", tls.grpc_credentials())
        await server.start()
        try:
            client = ClientTls.from_options(
                cacert=pki.ca_cert, cert=pki.client("reviewer").cert, key=pki.client("reviewer").key
            )
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{port}",
                grpc.ssl_channel_credentials(client.cacert, client.key, client.cert),
            ) as channel:
                answer = await channel.unary_unary("/test.Who/Me")(b"", timeout=10)
        finally:
            await server.stop(0)
        assert answer.decode() == "cert:CN=reviewer,O=NBA Test|reviewer|URI:spiffe://nba.test/reviewer"


def settings(tmp_path: Path, **values: object) -> Settings:
    policy = tmp_path / "policy.yaml"
    policy.write_text("callers:\n  - name: desk\n    match: {certificate_cn: desktop}\n    roles: [desktop]\n")
    values.setdefault("access_policy", policy)
    return Settings(rulesets=RULESET, workers=1, **values)  # type: ignore[arg-type]


def settings_problem(tmp_path: Path, **values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        settings(tmp_path, **values)
    return "; ".join(e["msg"] for e in caught.value.errors())


class TestServerSettings:
    """TLS files that cannot make a working listener stop start-up, naming the flag."""

    def test_mutual_tls(self, pki: Pki, tmp_path: Path) -> None:
        chosen = settings(tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca_cert)
        tls = listener_security(chosen)
        assert tls is not None
        assert tls.mutual
        assert authenticator_from_settings(chosen).certificates

    def test_key_without_cert(self, pki: Pki, tmp_path: Path) -> None:
        assert "--tls-key / NBA_TLS_KEY needs --tls-cert / NBA_TLS_CERT" in settings_problem(
            tmp_path, tls_key=pki.server_key, tls_client_ca=pki.ca_cert
        )

    def test_cert_without_key(self, pki: Pki, tmp_path: Path) -> None:
        assert "--tls-cert / NBA_TLS_CERT needs --tls-key / NBA_TLS_KEY" in settings_problem(
            tmp_path, tls_cert=pki.server_cert, tls_client_ca=pki.ca_cert
        )

    def test_key_of_another_certificate(self, pki: Pki, tmp_path: Path) -> None:
        problem = settings_problem(
            tmp_path, tls_cert=pki.server_cert, tls_key=pki.client("desktop").key, tls_client_ca=pki.ca_cert
        )
        assert f"--tls-key / NBA_TLS_KEY: {pki.client('desktop').key} is not the private key of the certificate" in (
            problem
        )

    def test_expired_certificate(self, pki: Pki, tmp_path: Path) -> None:
        expired = pki.client("expired")
        problem = settings_problem(tmp_path, tls_cert=expired.cert, tls_key=expired.key, tls_client_ca=pki.ca_cert)
        assert f"--tls-cert / NBA_TLS_CERT: the certificate in {expired.cert} expired on" in problem

    def test_unreadable_file(self, pki: Pki, tmp_path: Path) -> None:
        missing = tmp_path / "nope.pem"
        problem = settings_problem(tmp_path, tls_cert=missing, tls_key=pki.server_key, tls_client_ca=pki.ca_cert)
        assert f"cannot read {missing}: No such file or directory" in problem

    def test_not_a_certificate(self, pki: Pki, tmp_path: Path) -> None:
        problem = settings_problem(
            tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.server_key
        )
        assert f"--tls-client-ca / NBA_TLS_CLIENT_CA: {pki.server_key} holds no PEM certificate" in problem

    def test_encrypted_key(self, pki: Pki, tmp_path: Path) -> None:
        private = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
        encrypted = tmp_path / "encrypted.key"
        encrypted.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
        problem = settings_problem(tmp_path, tls_cert=pki.server_cert, tls_key=encrypted, tls_client_ca=pki.ca_cert)
        assert "is encrypted" in problem

    def test_jwks_needs_issuer_and_audience(self, pki: Pki, tmp_path: Path) -> None:
        assert "--jwks-file / NBA_JWKS_FILE needs --jwt-audience / NBA_JWT_AUDIENCE" in settings_problem(
            tmp_path, jwks_file=pki.jwks, jwt_issuer=ISSUER
        )

    def test_plain_text_off_loopback_needs_insecure(self, pki: Pki, tmp_path: Path) -> None:
        chosen = settings(tmp_path, host="0.0.0.0", jwks_file=pki.jwks, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
        with pytest.raises(PlainTextRefused) as caught:
            listener_security(chosen)
        assert caught.value.message == (
            "--host 0.0.0.0 without --tls-cert/--tls-key: plain text off loopback needs --insecure"
        )
        insecure = settings(
            tmp_path,
            host="0.0.0.0",
            insecure=True,
            jwks_file=pki.jwks,
            jwt_issuer=ISSUER,
            jwt_audience=AUDIENCE,
        )
        assert listener_security(insecure) is None
        assert authenticator_from_settings(insecure).tokens

    def test_plain_text_on_loopback(self, tmp_path: Path) -> None:
        assert listener_security(Settings(rulesets=RULESET, workers=1)) is None

    @pytest.mark.parametrize(
        ("host", "loopback"),
        [
            ("127.0.0.1", True),
            ("127.8.9.10", True),
            ("::1", True),
            ("[::1]", True),
            ("localhost", True),
            ("0.0.0.0", False),
            ("::", False),
            ("10.1.2.3", False),
            ("example.com", False),
        ],
    )
    def test_loopback(self, host: str, loopback: bool) -> None:
        assert is_loopback(host) is loopback


class TestClientOptions:
    def test_plain_text_unless_a_file_is_given(self) -> None:
        assert not ClientTls.from_options().secure

    def test_cert_needs_key(self, pki: Pki) -> None:
        with pytest.raises(ClientSetupError, match="--cert needs --key"):
            ClientTls.from_options(cacert=pki.ca_cert, cert=pki.client("desktop").cert)

    def test_token_file(self, tmp_path: Path) -> None:
        path = tmp_path / "token"
        path.write_text("abc.def.ghi\n")
        assert ClientTls.from_options(token_file=path).token == "abc.def.ghi"
        path.write_text("\n")
        with pytest.raises(ClientSetupError, match="is empty"):
            ClientTls.from_options(token_file=path)

    def test_no_token_in_plain_text_off_loopback(self) -> None:
        Endpoint("127.0.0.1:50051", ClientTls(token="t"))
        with pytest.raises(ClientSetupError, match="in plain text"):
            Endpoint("nba.bank.example:50051", ClientTls(token="t"))

    def test_handshake_failures_in_one_line(self) -> None:
        closed = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed"
        assert "wants a client certificate" in (connection_failure(closed, "h:1", secure=True) or "")
        assert "give --cacert" in (connection_failure(closed, "h:1", secure=False) or "")
        refused = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Connection refused"
        assert connection_failure(refused, "h:1", secure=True) is None
