"""Who is calling: one value, whatever the transport and whatever proved it.

The policy decides on an `Identity` and the records keep its `principal`, so neither needs to know whether
a certificate or a token was presented. Pure: no gRPC, no cryptography.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

AuthMethod = Literal["certificate", "token", "none"]


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller.

    `principal` is stable and safe to record (never a secret): `cert:<subject>` for a client certificate
    (RFC 4514, most specific first, e.g. `cert:CN=desk-01,O=Bank`), `jwt:<iss>#<sub>` for a bearer token,
    `anonymous` when the server checks no credentials at all. `subject` is the certificate's common name (its
    whole subject when it has none) or the token's `sub`. `names` are a certificate's subject alternative
    names (`DNS:...`, `URI:...`, `email:...`, `IP:...`); `claims` are a token's verified claims.
    """

    principal: str
    method: AuthMethod
    subject: str
    names: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def anonymous(self) -> bool:
        return self.method == "none"


ANONYMOUS = Identity(principal="anonymous", method="none", subject="")
