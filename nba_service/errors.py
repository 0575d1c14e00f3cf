"""The one error family of the service.

Every failure a caller can see is an `NbaError` with a stable `code`; the gRPC edge maps codes to
status codes in one place, so the domain never imports a transport.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class ErrorCode(enum.StrEnum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    RULESET_INVALID = "ruleset_invalid"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    FAILED_PRECONDITION = "failed_precondition"
    SCHEMA_NOT_READY = "schema_not_ready"
    MIGRATION_CONFLICT = "migration_conflict"
    SEED_REFUSED = "seed_refused"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    ACCESS_POLICY_INVALID = "access_policy_invalid"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class FieldProblem:
    field: str
    problem: str


class NbaError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, problems: tuple[FieldProblem, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems


class InvalidArgument(NbaError):
    code = ErrorCode.INVALID_ARGUMENT

    @classmethod
    def of(cls, field: str, problem: str) -> InvalidArgument:
        return cls(f"{field}: {problem}", (FieldProblem(field, problem),))

    @classmethod
    def many(cls, problems: Sequence[FieldProblem], more: int = 0) -> InvalidArgument:
        """One error for several fields, so a caller fixes a request in one round trip instead of one per field."""
        message = "; ".join(f"{p.field}: {p.problem}" for p in problems)
        if more:
            message += f"; and {more} more problem{'s' if more > 1 else ''}"
        return cls(message, tuple(problems))


MAX_REPORTED_PROBLEMS = 10  # each one travels in the status trailers, which gRPC caps at 8 KiB by default


class Problems:
    """Collects every problem of a request before refusing it: one InvalidArgument names them all.

    Reports at most `limit` problems (and how many more there were): a request with hundreds of bad
    entries must still get an answer that fits in the status trailers.
    """

    def __init__(self, limit: int = MAX_REPORTED_PROBLEMS) -> None:
        self._found: list[FieldProblem] = []
        self._limit = limit

    def add(self, field: str, problem: str) -> None:
        self._found.append(FieldProblem(field, problem))

    def extend(self, problems: Sequence[FieldProblem]) -> None:
        self._found.extend(problems)

    def __bool__(self) -> bool:
        return bool(self._found)

    def raise_if_any(self) -> None:
        if self._found:
            raise InvalidArgument.many(self._found[: self._limit], max(0, len(self._found) - self._limit))


class NotFound(NbaError):
    code = ErrorCode.NOT_FOUND


class Unavailable(NbaError):
    code = ErrorCode.UNAVAILABLE


class DeadlineExceeded(NbaError):
    """The caller's deadline passed before the answer could be sent; the record says it was never delivered."""

    code = ErrorCode.DEADLINE_EXCEEDED


class EngineFailure(NbaError):
    """The rules engine refused an evaluation it should have accepted: a defect, never a normal outcome."""

    code = ErrorCode.INTERNAL


@dataclass(frozen=True, slots=True)
class RulesetProblem:
    """One problem in a ruleset file, located well enough for a reviewer to find it without Python."""

    file: str
    line: int | None
    where: str
    problem: str

    def __str__(self) -> str:
        location = f"{self.file}:{self.line}" if self.line else self.file
        return f"{location}: {self.where}: {self.problem}" if self.where else f"{location}: {self.problem}"


class RulesetInvalid(NbaError):
    code = ErrorCode.RULESET_INVALID

    def __init__(self, problems: list[RulesetProblem]) -> None:
        self.ruleset_problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in problems))


class FailedPrecondition(NbaError):
    """The system is not in a state the operation needs (the schema, the data); retrying will not help."""

    code = ErrorCode.FAILED_PRECONDITION


class SchemaNotReadyError(FailedPrecondition):
    """The database schema is behind this version of the service: run `nba db migrate`."""

    code = ErrorCode.SCHEMA_NOT_READY


class MigrationError(FailedPrecondition):
    """The migrations cannot be applied safely (edited after applying, or from a newer version)."""

    code = ErrorCode.MIGRATION_CONFLICT


class SeedError(FailedPrecondition):
    """The database is not in a state the seed can load into."""


class SchemaNotMigrated(SeedError):
    code = ErrorCode.SCHEMA_NOT_READY


class SeedRefused(SeedError):
    """The database already holds data, and `force` was not given."""

    code = ErrorCode.SEED_REFUSED


class CandidateRefused(FailedPrecondition):
    """A ruleset version that did not pass its checks or its scenario tests; the running version stays."""


class NothingToRollBack(FailedPrecondition):
    """No previous version has been active since the deploy folder was created."""


class Unauthenticated(NbaError):
    """The caller presented no credentials the server accepts; the message names what was wrong, never the token."""

    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(NbaError):
    """The caller is known but may not make this call; the message names the role it needs, never what exists."""

    code = ErrorCode.PERMISSION_DENIED


class AccessPolicyInvalid(NbaError):
    """The access policy file cannot be used: the server does not start, or a reload keeps the policy in force.
    Each problem is located like a ruleset's (`file:line: where: problem`)."""

    code = ErrorCode.ACCESS_POLICY_INVALID

    def __init__(self, problems: list[RulesetProblem]) -> None:
        self.policy_problems = tuple(problems)
        super().__init__("the access policy is invalid:\n" + "\n".join(str(p) for p in problems))


class TruthInvalid(NbaError):
    """`nba simulate`'s truth file cannot be used; each problem is located like a ruleset's
    (`file:line: where: problem`)."""

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, problems: list[RulesetProblem]) -> None:
        self.truth_problems = tuple(problems)
        super().__init__("the simulation truth is invalid:\n" + "\n".join(str(p) for p in problems))


class PlainTextRefused(NbaError):
    """`nba serve` was asked to listen in plain text off loopback without `--insecure`."""

    code = ErrorCode.FAILED_PRECONDITION


class ResourceExhausted(NbaError):
    """A limit (calls per second, calls at once) was reached; the same call may succeed after `retry_after`
    seconds, which the message says and the gRPC edge also sends as a `google.rpc.RetryInfo`."""

    code = ErrorCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StartFailed(NbaError):
    """A supervisor's workers could not start; the message is what follows `cannot start:`."""


class WorkersFailing(NbaError):
    """Workers kept exiting right after being replaced: the supervisor stopped rather than loop forever."""
