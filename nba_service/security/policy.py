"""The access policy: which verified identities get which roles, and which customers they may touch.

Operators own the file (YAML, with a JSON Schema); the service owns what each role may do (`authz`). Keeping
the two apart means a policy file can only ever hand out the five roles the service knows, never invent a
permission, and a reviewer can read who may do what from two short documents.

Every entry that matches an identity adds its roles; every scope of a matching entry applies to all of that
caller's calls. Scopes only ever narrow: matching a broader entry as well never lifts a restriction an
operator put on someone. Pure: text in, model out, and `resolve` is a function of the policy and the identity.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, cast

import jsonschema
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from nba_service.domain.loader import _located, _schema_message, _SchemaValidator, unknown_keys
from nba_service.domain.profile import AttributeValue
from nba_service.errors import AccessPolicyInvalid, RulesetProblem
from nba_service.security.identity import Identity


class Role(enum.StrEnum):
    DESKTOP = "desktop"
    DIALER = "dialer"
    INGEST = "ingest"
    REVIEWER = "reviewer"
    ADMIN = "admin"


ALL_ROLES = frozenset(Role)
SEGMENT_ATTRIBUTE = "segment"
_MATCH_KINDS = ("certificate_cn", "certificate_san", "token_subject", "token_claim")


@dataclass(frozen=True, slots=True)
class Scope:
    """Which customers a caller may touch. `segments` None: any segment. Each `(attribute, value)` of
    `tenants` must hold. `problem` names what could not be resolved (a token without the claim its tenant
    comes from): such a caller may do nothing until it can."""

    segments: frozenset[str] | None = None
    tenants: tuple[tuple[str, str], ...] = ()
    problem: str = ""

    @property
    def unrestricted(self) -> bool:
        return self.segments is None and not self.tenants and not self.problem

    def admits(self, attributes: Mapping[str, AttributeValue]) -> bool:
        """Whether a customer with these profile attributes is within the scope."""
        if self.problem:
            return False
        if self.segments is not None and _text(attributes.get(SEGMENT_ATTRIBUTE)) not in self.segments:
            return False
        return all(_text(attributes.get(attribute)) == value for attribute, value in self.tenants)

    def describe(self) -> str:
        parts = []
        if self.segments is not None:
            parts.append("segments " + ", ".join(sorted(self.segments)))
        parts.extend(f"{attribute} = {value}" for attribute, value in self.tenants)
        return "; ".join(parts) or "all customers"


UNRESTRICTED = Scope()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as the service sees it: the principal it records, the roles it holds and its scope.

    `entries` names the policy entries that matched (for logs and refusals), empty when no policy is in force.
    """

    principal: str
    roles: frozenset[Role]
    scope: Scope = UNRESTRICTED
    entries: tuple[str, ...] = ()

    @classmethod
    def trusted(cls, principal: str) -> Caller:
        """A caller with every role and no scope: what the server grants when it runs without a policy."""
        return cls(principal, ALL_ROLES)


@dataclass(frozen=True, slots=True)
class Match:
    """`kind` is one of certificate_cn, certificate_san, token_subject, token_claim. For token_claim, `claim`
    names the claim and `contains` says whether `value` must be one of its items (a list, or a space-separated
    string like OAuth's `scope`) rather than the whole value."""

    kind: str
    value: str
    claim: str = ""
    contains: bool = False

    def matches(self, identity: Identity) -> bool:
        if self.kind == "certificate_cn":
            return identity.method == "certificate" and identity.subject == self.value
        if self.kind == "certificate_san":
            return identity.method == "certificate" and any(_san_is(name, self.value) for name in identity.names)
        if identity.method != "token":
            return False
        if self.kind == "token_subject":
            return identity.subject == self.value
        found = claim_value(identity.claims, self.claim)
        if not self.contains:
            return _text(found) == self.value
        items = found.split() if isinstance(found, str) else found if isinstance(found, list) else []
        return any(_text(item) == self.value for item in items)

    def describe(self) -> str:
        if self.kind == "token_claim":
            return f"token claim {self.claim} {'contains' if self.contains else 'equals'} {self.value!r}"
        return f"{self.kind.replace('_', ' ')} {self.value!r}"


@dataclass(frozen=True, slots=True)
class TenantScope:
    attribute: str
    value: str | None = None
    claim: str | None = None


@dataclass(frozen=True, slots=True)
class CallerEntry:
    name: str
    match: Match
    roles: frozenset[Role]
    segments: frozenset[str] | None = None
    tenant: TenantScope | None = None


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    callers: tuple[CallerEntry, ...]
    source: str = "<policy>"
    content_hash: str = field(default="", compare=False)

    def resolve(self, identity: Identity) -> Caller:
        """The caller this identity is under the policy: every matching entry's roles, every one's scope."""
        roles: set[Role] = set()
        segments: frozenset[str] | None = None
        tenants: list[tuple[str, str]] = []
        problems: list[str] = []
        matched: list[str] = []
        for entry in self.callers:
            if not entry.match.matches(identity):
                continue
            matched.append(entry.name)
            roles |= entry.roles
            if entry.segments is not None:
                segments = entry.segments if segments is None else segments & entry.segments
            tenant = entry.tenant
            if tenant is None:
                continue
            value = tenant.value
            if tenant.claim is not None:
                value = _text(claim_value(identity.claims, tenant.claim))
                if value is None:
                    problems.append(f"your token lacks the claim {tenant.claim!r} that your tenant is read from")
                    continue
            if value is not None:
                tenants.append((tenant.attribute, value))
        scope = Scope(segments, tuple(dict.fromkeys(tenants)), "; ".join(dict.fromkeys(problems)))
        return Caller(identity.principal, frozenset(roles), scope, tuple(matched))


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name; a dotted name that is not itself a claim walks nested objects (`realm_access.roles`)."""
    if name in claims:
        return claims[name]
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _text(value: Any) -> str | None:
    """A claim or attribute as text for comparison; only strings and integers compare (never a boolean)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _san_is(name: str, wanted: str) -> bool:
    """`DNS:desk-01.bank.example` is matched by itself and by `desk-01.bank.example`."""
    return name == wanted or name.partition(":")[2] == wanted


# --------------------------------------------------------------------------------------------------
# Loading


@cache
def access_schema() -> dict[str, Any]:
    text = resources.files("nba_service.security").joinpath("access.schema.json").read_text("utf-8")
    return cast(dict[str, Any], json.loads(text))


def load_access_policy(path: Path) -> AccessPolicy:
    """Raises AccessPolicyInvalid with every problem of the file, each as `file:line: where: problem`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise AccessPolicyInvalid([RulesetProblem(str(path), None, "", f"cannot read file: {reason}")]) from exc
    return load_access_policy_text(data, str(path))


def load_access_policy_text(data: bytes | str, source: str = "<policy>") -> AccessPolicy:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AccessPolicyInvalid([RulesetProblem(source, None, "", f"not UTF-8 text: {exc.reason}")]) from exc
    try:
        document = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise AccessPolicyInvalid([RulesetProblem(source, line, "", f"YAML syntax: {exc.problem or exc}")]) from exc
    except YAMLError as exc:
        raise AccessPolicyInvalid([RulesetProblem(source, None, "", f"YAML syntax: {exc}")]) from exc
    if not isinstance(document, Mapping):
        raise AccessPolicyInvalid(
            [RulesetProblem(source, None, "", "the file must hold a mapping with a list of callers")]
        )
    return _Reader(source, document).read(hashlib.sha256(raw).hexdigest())


class _Reader:
    def __init__(self, source: str, document: Any) -> None:
        self.source = source
        self.document = document
        self.problems: list[RulesetProblem] = []

    def problem(self, path: Sequence[str | int], message: str) -> None:
        self.problems.append(RulesetProblem(self.source, _located(self.document, path), self._where(path), message))

    def _where(self, path: Sequence[str | int]) -> str:
        if len(path) >= 2 and path[0] == "callers" and isinstance(path[1], int):
            try:
                name = self.document["callers"][path[1]]["name"]
            except (KeyError, IndexError, TypeError):
                name = None
            label = f"caller {name!r}" if isinstance(name, str) else f"caller #{path[1] + 1}"
            return f"{label} {'.'.join(str(p) for p in path[2:])}".strip()
        return ".".join(str(p) for p in path)

    def read(self, content_hash: str) -> AccessPolicy:
        validator = _SchemaValidator(access_schema())
        for error in sorted(validator.iter_errors(self.document), key=lambda e: [str(p) for p in e.absolute_path]):
            self._schema_problem(error)
        self._raise_if_any()
        entries = [self._entry(index, item) for index, item in enumerate(self.document["callers"])]
        self._raise_if_any()
        return AccessPolicy(tuple(e for e in entries if e is not None), self.source, content_hash)

    def _raise_if_any(self) -> None:
        if self.problems:
            raise AccessPolicyInvalid(sorted(self.problems, key=lambda p: p.line or 0))

    def _schema_problem(self, error: jsonschema.ValidationError) -> None:
        path: list[str | int] = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            for key_path, problem in unknown_keys(error):
                self.problem(key_path, problem)
            return
        if error.validator == "enum" and path[-2:-1] == ["roles"]:
            known = ", ".join(role.value for role in Role)
            self.problem(path, f"unknown role {error.instance!r} (roles: {known})")
            return
        self.problem(path, _schema_message(error))

    def _entry(self, index: int, item: Mapping[str, Any]) -> CallerEntry | None:
        at: list[str | int] = ["callers", index]
        name = str(item["name"])
        for earlier in range(index):
            if str(self.document["callers"][earlier]["name"]) == name:
                self.problem([*at, "name"], f"duplicate name {name!r} (first at caller #{earlier + 1})")
                break
        match = self._match(item["match"], [*at, "match"])
        segments = tenant = None
        scope = item.get("scope") or {}
        if "segments" in scope:
            segments = frozenset(str(s) for s in scope["segments"])
        if "tenant" in scope:
            tenant = self._tenant(scope["tenant"], [*at, "scope", "tenant"], match)
        if match is None:
            return None
        return CallerEntry(name, match, frozenset(Role(r) for r in item["roles"]), segments, tenant)

    def _match(self, raw: Mapping[str, Any], at: list[str | int]) -> Match | None:
        kinds = [kind for kind in _MATCH_KINDS if kind in raw]
        if len(kinds) != 1:
            given = ", ".join(kinds) if kinds else "none of them"
            self.problem(at, f"give exactly one of {', '.join(_MATCH_KINDS)} (given: {given})")
            return None
        kind = kinds[0]
        tests = [key for key in ("contains", "equals") if key in raw]
        if kind != "token_claim":
            if tests:
                self.problem([*at, tests[0]], f"{tests[0]} only goes with token_claim")
                return None
            return Match(kind, str(raw[kind]))
        if len(tests) != 1:
            self.problem(at, "token_claim needs exactly one of contains (an item of the claim) or equals (its value)")
            return None
        return Match(kind, str(raw[tests[0]]), claim=str(raw[kind]), contains=tests[0] == "contains")

    def _tenant(self, raw: Mapping[str, Any], at: list[str | int], match: Match | None) -> TenantScope | None:
        given = [key for key in ("value", "claim") if key in raw]
        if len(given) != 1:
            self.problem(at, "give exactly one of value (a fixed tenant) or claim (the token claim that names it)")
            return None
        if given == ["claim"] and match is not None and not match.kind.startswith("token_"):
            self.problem([*at, "claim"], f"a tenant read from a token claim needs a token match, not {match.kind}")
            return None
        attribute = str(raw["attribute"])
        if given == ["claim"]:
            return TenantScope(attribute, claim=str(raw["claim"]))
        return TenantScope(attribute, value=str(raw["value"]))
