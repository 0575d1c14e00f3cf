"""Units behind protocol and CLI hygiene: the unstorable-text walker, the problem collector, one error family
with stable codes mapped once, the CLI's exit codes, and ruleset patterns matched as a whole."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf.message import Message

import nba_service
from nba_service import cli, errors
from nba_service._proto.nba.v1 import nba_pb2
from nba_service.domain.loader import load_ruleset_text
from nba_service.errors import (
    ErrorCode,
    FieldProblem,
    InvalidArgument,
    MigrationError,
    NbaError,
    Problems,
    SchemaNotMigrated,
    SchemaNotReadyError,
    SeedRefused,
)
from nba_service.transport.grpc_errors import to_status
from nba_service.transport.wire import Undecodable, check_storable_text, lenient_deserializer, text_problem

RULESET = Path(__file__).resolve().parents[1] / "rulesets" / "retail-banking.yaml"


def _problems(message: Any) -> dict[str, str]:
    problems = Problems(limit=100)
    check_storable_text(cast(Message, message), problems)
    with pytest.raises(InvalidArgument) as caught:
        problems.raise_if_any()
    return {p.field: p.problem for p in caught.value.problems}


class _FakeMessage:
    """A message holding what no real one can: protobuf refuses to set a surrogate, but the walker must not
    depend on that (another implementation, or a future field type, might let one through)."""

    def __init__(self, *fields: tuple[str, Any]) -> None:
        descriptor = nba_pb2.DecideRequest.DESCRIPTOR
        self._fields = [(descriptor.fields_by_name[name], value) for name, value in fields]

    def ListFields(self) -> list[tuple[Any, Any]]:  # noqa: N802 - the protobuf method name
        return self._fields


class TestStorableText:
    def test_surrogates_and_nul_are_named_with_their_code_points(self) -> None:
        """An unpaired surrogate is reported with its code point, a NUL as \\x00; both when both occur."""
        assert "U+D800" in (text_problem("a\ud800b") or "")
        assert "U+DFFF" in (text_problem("\udfff") or "")
        both = text_problem("\x00\udc80") or ""
        assert "NUL" in both
        assert "U+DC80" in both
        assert text_problem("plain text, Ünïcödé and 🚀 are fine") is None

    def test_walker_reports_a_surrogate_in_any_string_field(self) -> None:
        """The walker reports surrogates by field path, in top-level strings as in nested messages."""
        found = _problems(_FakeMessage(("customer_id", "CUST-\ud800"), ("context", _FakeMessage())))
        assert set(found) == {"customer_id"}
        assert "U+D800" in found["customer_id"]
        assert _problems_or_none(_FakeMessage(("customer_id", "CUST-\U0001f680"))) is None

    def test_walker_covers_nested_messages_maps_and_repeated_fields(self) -> None:
        """Every string is checked: nested message fields, map keys and values (scalar or message), repeated
        message fields; each is reported by its path."""
        decide = nba_pb2.DecideRequest(
            customer_id="c\x00",
            context=nba_pb2.InteractionContext(reason="r\x00", attributes={"k\x00": "v", "q": "v\x00"}),
        )
        assert set(_problems(decide)) == {
            "customer_id",
            "context.reason",
            "context.attributes[k\\x00]",
            "context.attributes[q]",
        }
        ingest = nba_pb2.IngestEventRequest(
            attributes={"a": nba_pb2.AttributeValue(string_value="\x00"), "b": nba_pb2.AttributeValue(int_value=0)}
        )
        assert set(_problems(ingest)) == {"attributes[a].string_value"}
        response = nba_pb2.DecideResponse(actions=[nba_pb2.Action(script="ok"), nba_pb2.Action(script="s\x00")])
        assert set(_problems(response)) == {"actions[1].script"}

    def test_clean_message_has_no_problem(self) -> None:
        request = nba_pb2.DecideRequest(
            customer_id="CUST-1", context=nba_pb2.InteractionContext(reason="Ünï 🚀", attributes={"q": "v"})
        )
        assert _problems_or_none(request) is None

    def test_undecodable_bytes_become_a_marker_not_an_exception(self) -> None:
        """The deserializer never raises (grpcio would answer UNKNOWN with the exception's class name)."""
        parse = lenient_deserializer(nba_pb2.DecideRequest)
        assert parse(b"\x0a\x02\xc3\x28") == Undecodable("nba.v1.DecideRequest", bad_utf8=True)
        assert parse(b"\x0a\x10abc") == Undecodable("nba.v1.DecideRequest", bad_utf8=False)
        assert parse(nba_pb2.DecideRequest(customer_id="x").SerializeToString()) == nba_pb2.DecideRequest(
            customer_id="x"
        )


def _problems_or_none(message: Any) -> dict[str, str] | None:
    problems = Problems()
    check_storable_text(cast(Message, message), problems)
    return None if not problems else _problems(message)


class TestProblems:
    def test_collects_every_problem_in_one_error(self) -> None:
        problems = Problems()
        assert not problems
        problems.raise_if_any()  # nothing to report: no error
        problems.add("customer_id", "is required")
        problems.add("max_actions", "must be between 1 and 20")
        with pytest.raises(InvalidArgument) as caught:
            problems.raise_if_any()
        assert caught.value.problems == (
            FieldProblem("customer_id", "is required"),
            FieldProblem("max_actions", "must be between 1 and 20"),
        )
        assert caught.value.message == "customer_id: is required; max_actions: must be between 1 and 20"

    def test_reports_a_bounded_number_and_says_how_many_more(self) -> None:
        """The details travel in the status trailers, which gRPC caps: past the limit, only a count."""
        problems = Problems(limit=3)
        for i in range(5):
            problems.add(f"f{i}", "bad")
        with pytest.raises(InvalidArgument) as caught:
            problems.raise_if_any()
        assert [p.field for p in caught.value.problems] == ["f0", "f1", "f2"]
        assert caught.value.message.endswith("; and 2 more problems")


def _all_modules() -> None:
    for module in pkgutil.walk_packages(nba_service.__path__, "nba_service."):
        if "._proto" not in module.name:
            importlib.import_module(module.name)


def _subclasses(cls: type[NbaError]) -> set[type[NbaError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


class TestErrorFamily:
    def test_every_error_class_lives_in_errors_py(self) -> None:
        """One module holds the whole error family, so every error has a code that is mapped to a status (errors
        declared in app.py, migrate.py and seed.py used to surface as INTERNAL)."""
        _all_modules()
        strays = sorted(
            f"{c.__module__}.{c.__qualname__}" for c in _subclasses(NbaError) if c.__module__ != errors.__name__
        )
        assert strays == []

    def test_every_code_maps_to_a_status(self) -> None:
        for code in ErrorCode:
            error = NbaError("x")
            error.code = code
            assert to_status(error).code is not None

    @pytest.mark.parametrize("error_class", [SchemaNotReadyError, MigrationError, SchemaNotMigrated, SeedRefused])
    def test_database_state_errors_are_failed_precondition(self, error_class: type[NbaError]) -> None:
        status = to_status(error_class("run `nba db migrate`"))
        assert status.code == grpc.StatusCode.FAILED_PRECONDITION
        assert error_class.code is not ErrorCode.INTERNAL


class TestExitCodes:
    @pytest.mark.parametrize(
        ("status", "code"),
        [
            ("INVALID_ARGUMENT", 2),
            ("NOT_FOUND", 2),
            ("FAILED_PRECONDITION", 2),
            ("UNAVAILABLE", 3),
            ("DEADLINE_EXCEEDED", 4),
            ("INTERNAL", 1),
            ("UNKNOWN", 1),
            ("RESOURCE_EXHAUSTED", 3),
            ("UNAUTHENTICATED", 2),
            ("PERMISSION_DENIED", 2),
            ("ABORTED", 1),
        ],
    )
    def test_status_to_exit_code(self, status: str, code: int) -> None:
        """The table in `nba --help`: 2 refused, 3 unreachable or UNAVAILABLE, 4 DEADLINE_EXCEEDED, 1 otherwise."""
        assert cli.exit_code(status) == code
        assert f"{code}  " in cli.EXIT_CODES_HELP


class TestRulesetPatterns:
    @pytest.mark.parametrize(
        ("original", "changed"),
        [
            ("version: {version}", 'version: "{version}\\n"'),
            ("id: large-deposit-term-deposit", 'id: "large-deposit-term-deposit\\n"'),
        ],
    )
    def test_a_trailing_newline_does_not_match_a_schema_pattern(self, original: str, changed: str) -> None:
        """The schema's patterns end in `$`, which in JSON Schema (ECMA-262) is the end of the text; Python's `$`
        also matches before a final newline, so "1.0.0\\n" used to pass as a version."""
        text = RULESET.read_text(encoding="utf-8")
        version = load_ruleset_text(text.encode(), "x.yaml").meta.version
        original, changed = original.format(version=version), changed.format(version=version)
        assert original in text
        with pytest.raises(errors.RulesetInvalid, match="is not"):
            load_ruleset_text(text.replace(original, changed, 1).encode(), "x.yaml")
