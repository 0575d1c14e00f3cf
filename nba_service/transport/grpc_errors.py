"""Maps domain errors to gRPC status codes, once, with field details callers can read."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from nba_service.errors import ErrorCode, NbaError, ResourceExhausted

_CODES: dict[ErrorCode, tuple[grpc.StatusCode, int]] = {
    ErrorCode.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    ErrorCode.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    ErrorCode.RULESET_INVALID: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    ErrorCode.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    ErrorCode.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, code_pb2.DEADLINE_EXCEEDED),
    ErrorCode.FAILED_PRECONDITION: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    ErrorCode.SCHEMA_NOT_READY: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    ErrorCode.MIGRATION_CONFLICT: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    ErrorCode.SEED_REFUSED: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    ErrorCode.RESOURCE_EXHAUSTED: (grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    ErrorCode.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
    ErrorCode.PERMISSION_DENIED: (grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED),
    ErrorCode.ACCESS_POLICY_INVALID: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    ErrorCode.INTERNAL: (grpc.StatusCode.INTERNAL, code_pb2.INTERNAL),
}


def status_code(error: NbaError) -> grpc.StatusCode:
    """The gRPC status code of a domain error; the HTTP edge derives its status from this one too."""
    return _CODES[error.code][0]


def to_status(error: NbaError) -> grpc.Status:
    """A rich status: the message, plus a `google.rpc.BadRequest` naming each field and problem."""
    _, code = _CODES[error.code]
    status = status_pb2.Status(code=code, message=error.message)
    if error.problems:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=p.field, description=p.problem)
                    for p in error.problems
                ]
            )
        )
        status.details.append(detail)
    if isinstance(error, ResourceExhausted):
        retry_info = error_details_pb2.RetryInfo()
        retry_info.retry_delay.FromNanoseconds(round(error.retry_after * 1e9))
        retry = any_pb2.Any()
        retry.Pack(retry_info)
        status.details.append(retry)
    return rpc_status.to_status(status)


def internal_status(message: str) -> grpc.Status:
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=message))


def retry_delay(error: grpc.RpcError) -> float | None:
    """The seconds a `google.rpc.RetryInfo` from our server says to wait before trying again, if it sent one."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        return None
    for detail in () if status is None else status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """The field problems carried by an error from our server (for clients and tests)."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # the transport replaced the status (e.g. RESOURCE_EXHAUSTED) but kept our details
        return {}
    if status is None:
        return {}
    violations: dict[str, str] = {}
    for detail in status.details:
        request = error_details_pb2.BadRequest()
        if detail.Unpack(request):
            for violation in request.field_violations:
                violations[violation.field] = violation.description
    return violations
