"""Transport security and caller identity: TLS for every listener, and who is calling.

`identity` is the value the policy and the records use; `authn` turns what a transport verified (a client
certificate) or was handed (a bearer token) into it; `tls` builds server credentials and client channels;
`devcerts` writes a throwaway CA and certificates for local use.
"""

from nba_service.security.identity import ANONYMOUS, Identity

__all__ = ["ANONYMOUS", "Identity"]
