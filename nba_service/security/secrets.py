"""The PostgreSQL password: where it may come from, and the one function that keeps it out of every message.

A password reaches the service from the environment (`NBA_DSN`, or libpq's own `PGPASSWORD` and `PGPASSFILE`,
which asyncpg reads), or from a file that holds nothing else (`NBA_DSN_PASSWORD_FILE` / `--dsn-password-file`,
the shape of a mounted Kubernetes secret), never from a command line, which every user of the machine can read
in the process list. `redact` is applied to every log event (see `log_setup`) and to every message the command
line prints, so a DSN quoted in an error, in any of the forms libpq and asyncpg accept, loses its password.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

MASK = "***"

# `scheme://user:password@host`: the password runs to the last `@` of the unbroken run of text, so a password
# holding a raw `@`, `/`, `?` or `#` (which a URL should percent-encode, and people often do not) is still
# covered. A run with two URLs in it loses more than the password; that errs on the safe side.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)(?P<secret>\S*)@")
# `?password=...` and `&password=...` (also sslpassword): the value ends where the next parameter starts.
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:ssl)?password=)(?P<secret>[^&#\s]*)", re.IGNORECASE)
# libpq's key=value form, `password=pw` or `password = 'p w'` (a quoted value escapes ' and \ with a
# backslash, and an unclosed quote runs to the end), and the environment's `PGPASSWORD=pw`.
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>(?<![\w?&.-])(?:PG)?(?:ssl)?password\s*=\s*)(?P<secret>'(?:\\[\s\S]?|[^'\\])*(?:'|$)|(?:\\[\s\S]?|[^\s\\])*)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with the password of every DSN in it replaced by `***`; user, host, port and database stay."""
    if "://" in text:
        text = _URL_PASSWORD.sub(_masked, text)
    lowered = text.lower()
    if "password" not in lowered:
        return text
    text = _QUERY_PASSWORD.sub(_masked, text)
    return _KEYWORD_PASSWORD.sub(_masked, text)


def _masked(match: re.Match[str]) -> str:
    tail = "@" if match.re is _URL_PASSWORD else ""
    return f"{match['head']}{MASK}{tail}"


def has_password(dsn: str) -> bool:
    """Whether the DSN carries a password itself (in its user part or as a parameter)."""
    return redact(dsn) != dsn


def check_dsn(dsn: str) -> None:
    """Raises ValueError, saying what is wrong without quoting the DSN, when asyncpg could not use it."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(
            "the DSN must be a URL starting postgresql:// or postgres:// (libpq's key=value form is not read)"
        )
    try:
        parts.port  # noqa: B018 - reading it is the check: urllib raises for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"the DSN's port is not a number between 0 and 65535 ({redact(str(exc))})") from exc


def read_password_file(path: Path) -> str:
    """The password kept in `path`: the whole file but a final line break. Raises ValueError naming the file
    (never its content) when it cannot be read or is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text") from exc
    except OSError as exc:
        raise ValueError(f"cannot read the password file {path}: {exc.strerror or type(exc).__name__}") from exc
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise ValueError(f"the password file {path} is empty")
    return password


def password_source(path: Path | None) -> Callable[[], str] | None:
    """What asyncpg's `password` takes: read at each new connection, so a rotated secret is used without a
    restart. None leaves asyncpg to the DSN, PGPASSWORD and the passfile, in libpq's order."""
    if path is None:
        return None
    return lambda: read_password_file(path)
