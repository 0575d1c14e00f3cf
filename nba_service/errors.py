"""The one error family of the service.

Every failure a caller can see is an `NbaError` with a stable `code`; the gRPC edge maps codes to
status codes in one place, so the domain never imports a transport.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorCode(enum.StrEnum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    RULESET_INVALID = "ruleset_invalid"
    UNAVAILABLE = "unavailable"
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


class NotFound(NbaError):
    code = ErrorCode.NOT_FOUND


class Unavailable(NbaError):
    code = ErrorCode.UNAVAILABLE


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
