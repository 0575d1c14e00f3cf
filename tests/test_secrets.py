"""The DSN password: one redaction for every DSN form, where the password may come from, and what a person sees
when PostgreSQL refuses it (real PostgreSQL with password authentication, the real `nba` commands)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import structlog
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from nba_service.log_setup import configure_logging
from nba_service.security.secrets import (
    MASK,
    check_dsn,
    has_password,
    password_source,
    read_password_file,
    redact,
)
from nba_service.settings import Settings
from tests.conftest import _unavailable
from tests.e2e._support import NBA_SCRIPT, RULESET_PATH, server_env
from tests.pg import PostgresUnavailable, ThrowawayCluster, create_migrated_database, run_sync, with_database

HOST = "db.internal.example"
DATABASE = "nba_prod"

# Any character but surrogates (no UTF-8 text holds them), including spaces, quotes, `@`, `%`, `&`, `=`.
any_password = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)
# What libpq takes unquoted in key=value form: no white space, quote or backslash.
bare_password = st.text(
    st.characters(exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), exclude_characters="'\\\x85"),
    min_size=1,
    max_size=40,
)


def _kv_quoted(password: str) -> str:
    return "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _nothing_of(password: str, redacted: str, *templates: str) -> None:
    """Neither the password nor its percent-encodings appear, unless the surrounding text holds them anyway."""
    for form in {password, quote(password, safe=""), quote_plus(password)}:
        if len(form) >= 3 and not any(form in template for template in templates):
            assert form not in redacted


class TestRedactForms:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("postgresql://nba:s3cret@db:5432/nba", "postgresql://nba:***@db:5432/nba"),
            ("postgres://nba:s3cret@db", "postgres://nba:***@db"),
            ("postgresql://nba:p%40ss@db/nba", "postgresql://nba:***@db/nba"),
            ("postgresql://nba:p@ss/w#rd@db/nba", "postgresql://nba:***@db/nba"),  # unencoded @ / #: still covered
            ("postgresql://:s3cret@db/nba", "postgresql://:***@db/nba"),
            ("postgresql://nba:s3cret@[::1]:5432,db2:5433/nba", "postgresql://nba:***@[::1]:5432,db2:5433/nba"),
            ("postgresql://nba@db/nba?password=s3cret", "postgresql://nba@db/nba?password=***"),
            (
                "postgresql://nba@db/nba?sslmode=require&password=p%26ss&application_name=nba",
                "postgresql://nba@db/nba?sslmode=require&password=***&application_name=nba",
            ),
            ("postgresql://nba@db/nba?PASSWORD=s3cret", "postgresql://nba@db/nba?PASSWORD=***"),
            ("postgresql://nba@db/nba?sslpassword=keypass", "postgresql://nba@db/nba?sslpassword=***"),
            ("host=db password=s3cret user=nba dbname=nba", "host=db password=*** user=nba dbname=nba"),
            ("host=db password = s3cret user=nba", "host=db password = *** user=nba"),
            ("host=db password='p w\\'x' user=nba", "host=db password=*** user=nba"),
            ("host=db password='never closed", "host=db password=***"),
            ("PGPASSWORD=s3cret nba db migrate", "PGPASSWORD=*** nba db migrate"),
        ],
    )
    def test_every_dsn_form_loses_its_password_and_keeps_the_rest(self, text: str, expected: str) -> None:
        assert redact(text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "postgresql://nba@db:5432/nba",
            "postgresql://nba@db/nba?sslmode=require",
            'password authentication failed for user "nba"',
            "host=db user=nba dbname=nba",
            "a plain sentence with no DSN, a password or an @ in it",
            "the password file /run/secrets/pg is empty",
        ],
    )
    def test_text_without_a_password_is_left_alone(self, text: str) -> None:
        assert redact(text) == text
        assert not has_password(text)

    def test_a_dsn_inside_an_asyncpg_error_message(self) -> None:
        message = (
            "cannot connect to postgresql://nba:Tr0ub4dor&3@db.internal.example:5432/nba_prod: "
            'password authentication failed for user "nba"'
        )
        assert redact(message) == (
            "cannot connect to postgresql://nba:***@db.internal.example:5432/nba_prod: "
            'password authentication failed for user "nba"'
        )

    def test_several_dsns_in_one_text(self) -> None:
        text = "primary postgresql://a:one1@h1/db, replica postgresql://b:two2@h2/db and host=h3 password=three3"
        assert (
            redact(text)
            == "primary postgresql://a:***@h1/db, replica postgresql://b:***@h2/db and host=h3 password=***"
        )


class TestRedactProperties:
    @given(password=any_password)
    def test_url_user_part_percent_encoded(self, password: str) -> None:
        for scheme, tail in (("postgresql", f":5432/{DATABASE}"), ("postgres", "")):
            dsn = f"{scheme}://nba_app:{quote(password, safe='')}@{HOST}{tail}"
            redacted = redact(f"cannot connect to {dsn}: timeout")
            assert redacted == f"cannot connect to {scheme}://nba_app:{MASK}@{HOST}{tail}: timeout"
            _nothing_of(password, redacted, f"cannot connect to {scheme}://nba_app:@{HOST}{tail}: timeout")

    @given(password=any_password, first=st.booleans())
    def test_query_parameter(self, password: str, first: bool) -> None:
        encoded = quote_plus(password)
        query = f"password={encoded}&sslmode=require" if first else f"sslmode=require&password={encoded}"
        shown = f"password={MASK}&sslmode=require" if first else f"sslmode=require&password={MASK}"
        redacted = redact(f"postgresql://nba_app@{HOST}/{DATABASE}?{query}")
        assert redacted == f"postgresql://nba_app@{HOST}/{DATABASE}?{shown}"
        _nothing_of(password, redacted, f"postgresql://nba_app@{HOST}/{DATABASE}?password=&sslmode=require")

    @given(password=any_password)
    def test_key_value_quoted(self, password: str) -> None:
        redacted = redact(f"host={HOST} password={_kv_quoted(password)} user=nba_app dbname={DATABASE}")
        assert redacted == f"host={HOST} password={MASK} user=nba_app dbname={DATABASE}"
        _nothing_of(password, redacted, f"host={HOST} password= user=nba_app dbname={DATABASE}")

    @given(password=bare_password)
    def test_key_value_bare(self, password: str) -> None:
        redacted = redact(f"host={HOST} password={password} dbname={DATABASE}")
        assert redacted == f"host={HOST} password={MASK} dbname={DATABASE}"

    @given(password=any_password)
    @example(password="pos")  # a substring of the scheme, not a leak: found by hypothesis in CI
    def test_redacting_twice_changes_nothing_more(self, password: str) -> None:
        once = redact(f"postgresql://u:{quote(password, safe='')}@{HOST}/{DATABASE}?password={quote_plus(password)}")
        assert redact(once) == once
        _nothing_of(password, once, f"postgresql://u:@{HOST}/{DATABASE}?password=")


class TestPasswordSources:
    def test_the_file_holds_the_password_but_its_final_line_break(self, tmp_path: Path) -> None:
        path = tmp_path / "pg-password"
        path.write_text("p@ss word\n", encoding="utf-8")
        assert read_password_file(path) == "p@ss word"
        source = password_source(path)
        assert source is not None
        path.write_text("rotated\r\n", encoding="utf-8")
        assert source() == "rotated"  # read at each new connection: a rotated secret needs no restart
        assert password_source(None) is None

    def test_a_missing_or_empty_file_is_named_without_content(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"cannot read the password file .*missing"):
            read_password_file(tmp_path / "missing")
        (tmp_path / "empty").write_text("\n", encoding="utf-8")
        with pytest.raises(ValueError, match="is empty"):
            read_password_file(tmp_path / "empty")

    def test_settings_refuse_a_password_in_two_places(self, tmp_path: Path) -> None:
        path = tmp_path / "pg-password"
        path.write_text("s3cret", encoding="utf-8")
        Settings(dsn="postgresql://nba@db/nba", dsn_password_file=path)
        with pytest.raises(ValidationError, match="keep the password in one place") as caught:
            Settings(dsn="postgresql://nba:other@db/nba", dsn_password_file=path)
        assert "other" not in str(caught.value).replace("another", "")

    def test_settings_never_show_the_dsn(self) -> None:
        settings = Settings(dsn="postgresql://nba:s3cret@db/nba")
        assert "s3cret" not in repr(settings)
        assert "s3cret" not in str(settings)

    @pytest.mark.parametrize(
        ("dsn", "problem"),
        [
            ("host=db password=s3cret", "must be a URL starting postgresql://"),
            ("mysql://nba:s3cret@db/nba", "must be a URL starting postgresql://"),
            ("postgresql://nba:s3cret@db:notaport/nba", "port is not a number"),
        ],
    )
    def test_an_unusable_dsn_is_refused_without_quoting_it(self, dsn: str, problem: str) -> None:
        with pytest.raises(ValueError, match=problem) as caught:
            check_dsn(dsn)
        assert "s3cret" not in str(caught.value)
        with pytest.raises(ValidationError) as invalid:
            Settings(dsn=dsn)
        assert "s3cret" not in str(invalid.value)


class TestLogs:
    @pytest.mark.parametrize("fmt", ["console", "json"])
    def test_every_log_event_is_redacted_tracebacks_included(
        self, fmt: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging(fmt, "info")  # type: ignore[arg-type]
        try:
            log = structlog.get_logger("test")
            try:
                raise ConnectionError("cannot reach postgresql://nba:Hunter2pw@db/nba")
            except ConnectionError:
                log.exception("failed", dsn="postgres://nba:Hunter2pw@db", nested={"conn": ["password=Hunter2pw"]})
            log.warning("odd", value=Path("/x?password=Hunter2pw"))
        finally:
            structlog.reset_defaults()
        err = capsys.readouterr().err
        assert "Hunter2pw" not in err
        assert "postgresql://nba:***@db/nba" in err
        assert "ConnectionError" in err  # the traceback itself is kept
        if fmt == "json":
            events = [json.loads(line) for line in err.splitlines()]
            assert [e["event"] for e in events] == ["failed", "odd"]
            assert events[0]["nested"] == {"conn": ["password=***"]}


class TestCommandLine:
    def test_db_commands_refuse_a_password_in_argv_and_name_the_alternatives(self) -> None:
        result = subprocess.run(
            [str(NBA_SCRIPT), "db", "migrate", "--dsn", "postgresql://nba:s3cret@127.0.0.1:1/nba"],
            capture_output=True,
            text=True,
            env=server_env(),
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert "s3cret" not in result.stdout + result.stderr
        assert "NBA_DSN_PASSWORD_FILE" in result.stderr
        assert "PGPASSWORD" in result.stderr

    def test_serve_refuses_the_dsn_flag_altogether(self) -> None:
        result = subprocess.run(
            [str(NBA_SCRIPT), "serve", "--dsn", "postgresql://nba@127.0.0.1/nba"],
            capture_output=True,
            text=True,
            env=server_env(),
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert "process list" in result.stderr


# --------------------------------------------------------------------------------------------------
# Against PostgreSQL that checks passwords
# --------------------------------------------------------------------------------------------------

ROLE = "nba_secret_test"
RIGHT = "Right-pässword 1"
WRONG = "Wr0ng p@ss%w'rd&x"


@pytest.fixture(scope="module")
def password_cluster() -> Iterator[tuple[ThrowawayCluster, str]]:
    """A private cluster whose pg_hba asks every role but the superuser for a SCRAM password (the shared
    server on 127.0.0.1:5432 trusts everyone, so a wrong password would pass there), with a migrated database
    owned by a role created over the trust connection, and dropped at the end."""
    try:
        cluster = ThrowawayCluster()
    except PostgresUnavailable as exc:
        _unavailable(f"throwaway cluster: {exc}")
    (cluster.data_dir / "pg_hba.conf").write_text(
        "local all postgres trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        encoding="utf-8",
    )
    with cluster:  # starts it, and removes it at the end
        admin = cluster.dsn()
        run_sync(_execute(admin, f"CREATE ROLE {ROLE} LOGIN PASSWORD '{RIGHT}'"))
        nba = run_sync(create_migrated_database(admin, "nba"))
        run_sync(
            _execute(nba, f"GRANT ALL ON SCHEMA public TO {ROLE}; GRANT ALL ON ALL TABLES IN SCHEMA public TO {ROLE}")
        )
        yield cluster, with_database(admin, "nba")
        run_sync(_execute(admin, "DROP DATABASE nba"))
        run_sync(_execute(admin, f"DROP ROLE {ROLE}"))


async def _execute(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _as_role(admin_dsn: str, password: str | None) -> str:
    """The nba database's DSN for ROLE, with `password` percent-encoded in it (or none)."""
    auth = ROLE if password is None else f"{ROLE}:{quote(password, safe='')}"
    return admin_dsn.replace("postgres@", f"{auth}@", 1)


def _serve(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(NBA_SCRIPT),
            "serve",
            "--store",
            "postgres",
            "--port",
            "0",
            "--rulesets",
            str(RULESET_PATH),
            "--deploy-dir",
            str(tmp_path / "deploy"),
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**server_env(), **env},
        timeout=120,
        check=False,
    )


def _secret_forms(password: str) -> list[str]:
    return [password, quote(password, safe=""), quote_plus(password), "Wr0ng"]


PasswordCluster = tuple[ThrowawayCluster, str]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("fmt", "workers"), [("console", "1"), ("json", "2")], ids=["console-1-worker", "json-2-workers"]
)
def test_a_refused_password_stops_serve_without_showing_it(
    password_cluster: PasswordCluster, tmp_path: Path, fmt: str, workers: str
) -> None:
    _, admin = password_cluster
    result = _serve(tmp_path, {"NBA_DSN": _as_role(admin, WRONG)}, "--log-format", fmt, "--workers", workers)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert (
        f'cannot start: PostgreSQL refused the credentials: password authentication failed for user "{ROLE}"' in output
    )
    for form in _secret_forms(WRONG):
        assert form not in output


@pytest.mark.e2e
def test_the_password_file_is_used_and_a_wrong_one_is_refused(
    password_cluster: PasswordCluster, tmp_path: Path
) -> None:
    _, admin = password_cluster
    secret = tmp_path / "pg-password"
    secret.write_text(WRONG + "\n", encoding="utf-8")
    env = {"NBA_DSN": _as_role(admin, None), "NBA_DSN_PASSWORD_FILE": str(secret)}
    refused = _nba_db(env, "migrate")
    assert refused.returncode == 1
    assert f'password authentication failed for user "{ROLE}"' in refused.stderr
    assert f"cannot connect to {_as_role(admin, None)}" in refused.stderr
    for form in _secret_forms(WRONG):
        assert form not in refused.stdout + refused.stderr
    secret.write_text(RIGHT + "\n", encoding="utf-8")
    assert _nba_db(env, "migrate").stdout == "schema is up to date; nothing applied\n"


@pytest.mark.e2e
def test_db_migrate_with_a_wrong_password_in_nba_dsn_shows_the_dsn_without_it(
    password_cluster: PasswordCluster,
) -> None:
    _, admin = password_cluster
    result = _nba_db({"NBA_DSN": _as_role(admin, WRONG)}, "migrate")
    assert result.returncode == 1
    shown = _as_role(admin, None).replace(f"{ROLE}@", f"{ROLE}:{MASK}@")
    assert result.stderr == (f'Error: cannot connect to {shown}: password authentication failed for user "{ROLE}"\n'), (
        result.stderr
    )
    right = _nba_db({"NBA_DSN": _as_role(admin, RIGHT)}, "migrate")
    assert right.returncode == 0, right.stderr


def _nba_db(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NBA_SCRIPT), "db", *args],
        capture_output=True,
        text=True,
        env={**server_env(), **env},
        timeout=60,
        check=False,
    )
