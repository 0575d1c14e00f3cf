"""What a decision leaves behind: the answer for the caller and the record for auditors.

The record keeps what the answer must not show (the profile values each rule read, dropped candidates
and why) so a reviewer can explain any past decision. Its JSON form is the one versioned format that
every store, spill file, dead letter and `nba decisions export` uses: `format` names the version, so a
reader can refuse what it does not understand instead of misreading it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nba_service.domain.contact_points import phone_from_json, phone_to_json
from nba_service.domain.model import Channel, Direction, default_direction
from nba_service.domain.profile import (
    AttributeValue,
    Contact,
    DoNotContact,
    DoNotContactReason,
    Event,
    Outcome,
    OutcomeKind,
    Profile,
)

if TYPE_CHECKING:
    from nba_service.review.explain import Explanation

RECORD_FORMAT = "nba.record/1"


class Delivery(enum.StrEnum):
    """Whether the answer reached the caller; only `sent` decisions count as offers anyone saw."""

    SENT = "sent"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DecidedAction:
    action_id: str
    script: str
    priority: int
    category: str
    reason: str
    rule_id: str
    valid_until: datetime
    # A regulatory notice (the action's type is mandatory): ranked first and recorded as such.
    mandatory: bool = False


@dataclass(frozen=True, slots=True)
class RulesetRef:
    name: str
    version: str
    hash: str


@dataclass(frozen=True, slots=True)
class Decision:
    decision_id: str
    decided_at: datetime
    customer_id: str
    channel: Channel
    actions: tuple[DecidedAction, ...]
    ruleset: RulesetRef
    direction: Direction = Direction.INBOUND
    # Only for a dry run (`DecisionService.decide(dry_run=True)`): why the answer came out as it did.
    explanation: Explanation | None = None


@dataclass(frozen=True, slots=True)
class FiredRule:
    rule_id: str
    action_id: str
    priority: int
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DroppedCandidate:
    """A candidate not offered: `stage` is where it fell (policy or arbitration), `policy` the id of the
    contact policy that dropped it (a cap or suppression id, `consent:<channel>`, `do_not_call`,
    `quiet_hours`), empty when no policy did."""

    rule_id: str
    action_id: str
    reason: str
    detail: str
    stage: str = "policy"
    policy: str = ""


@dataclass(frozen=True, slots=True)
class ShadowRun:
    """What a candidate ruleset, run beside the active one on the same profile, would have answered.

    Evidence for promoting or rejecting the candidate, never part of the answer. `agreed` means the same
    action ids in the same order; a candidate that failed (`error`) is counted as not agreeing, because
    nothing shows that it would have.
    """

    ruleset: RulesetRef
    agreed: bool
    action_ids: tuple[str, ...]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ruleset": {"name": self.ruleset.name, "version": self.ruleset.version, "hash": self.ruleset.hash},
            "agreed": self.agreed,
            "actions": list(self.action_ids),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShadowRun:
        ruleset = data["ruleset"]
        error = data.get("error")
        return cls(
            RulesetRef(str(ruleset["name"]), str(ruleset["version"]), str(ruleset["hash"])),
            bool(data["agreed"]),
            tuple(str(a) for a in data["actions"]),
            None if error is None else str(error),
        )


@dataclass(frozen=True, slots=True)
class DecisionInputs:
    """Everything the pipeline was given besides the ruleset and the moment (the record's `decided_at`):
    replaying these through the same version gives the same answer.

    The profile is kept exactly as the store returned it, raw trigger values included: they belong in the
    record (for a reviewer, months later), never in a script. Values must come back with their exact type
    from a text file and from PostgreSQL jsonb alike, and jsonb keeps numbers as decimals (`1e16` comes
    back as the integer 10000000000000000, `-0.0` as 0): a float jsonb could not give back as the same
    float is written as `{"$float": repr}`, and an object value as `{"$json": value}` so no attribute can
    pass for such a tag.
    """

    profile: Profile
    limit: int

    @property
    def finite(self) -> bool:
        profile = self.profile
        return _objects_finite(profile.attributes) and all(_objects_finite(e.attributes) for e in profile.events)

    def to_json(self) -> dict[str, Any]:
        profile = self.profile
        data: dict[str, Any] = {
            "profile": {
                "customer_id": profile.customer_id,
                "attributes": _values_json(profile.attributes),
                "events": [
                    {
                        "type": e.type,
                        "time": e.time.isoformat(),
                        "attributes": _values_json(e.attributes),
                        "expires_at": None if e.expires_at is None else e.expires_at.isoformat(),
                    }
                    for e in profile.events
                ],
                "contacts": [
                    {
                        "action_id": c.action_id,
                        "channel": c.channel.value,
                        "time": c.time.isoformat(),
                        "outcome": c.outcome.value,
                        "decision_id": c.decision_id,
                        "note": c.note,
                        "reached": c.reached,
                        **_contact_extras(c),
                    }
                    for c in profile.contacts
                ],
            },
            "limit": self.limit,
        }
        if profile.phones:  # absent for profiles without numbers, as in records written before numbers were kept
            data["profile"]["phones"] = [phone_to_json(p) for p in profile.phones]
        if profile.do_not_contact:  # absent when not listed, as in records written before listings were kept
            data["profile"]["do_not_contact"] = [do_not_contact_to_json(d) for d in profile.do_not_contact]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DecisionInputs:
        """Raises ValueError naming what is missing or malformed."""
        try:
            profile = data["profile"]
            return cls(
                Profile(
                    str(profile["customer_id"]),
                    _values_from_json(profile["attributes"]),
                    tuple(
                        Event(
                            str(e["type"]),
                            _aware(e["time"]),
                            _values_from_json(e["attributes"]),
                            None if e.get("expires_at") is None else _aware(e["expires_at"]),
                        )
                        for e in profile["events"]
                    ),
                    tuple(
                        Contact(
                            str(c["action_id"]),
                            Channel(c["channel"]),
                            _aware(c["time"]),
                            OutcomeKind(c["outcome"]),
                            str(c.get("decision_id", "")),
                            str(c.get("note", "")),
                            None if c.get("reached") is None else bool(c["reached"]),
                            None if c.get("direction") is None else Direction(c["direction"]),
                            None if c.get("pending_until") is None else _aware(c["pending_until"]),
                        )
                        for c in profile["contacts"]
                    ),
                    tuple(phone_from_json(p, f"phones[{i}]") for i, p in enumerate(profile.get("phones") or ())),
                    tuple(do_not_contact_from_json(d) for d in profile.get("do_not_contact") or ()),
                ),
                int(data["limit"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not decision inputs: missing or malformed {exc}") from exc


def _contact_extras(contact: Contact) -> dict[str, Any]:
    """Fields written only when set, so records of contacts without them stay as they were."""
    extras: dict[str, Any] = {}
    if contact.direction is not None:
        extras["direction"] = contact.direction.value
    if contact.pending_until is not None:
        extras["pending_until"] = contact.pending_until.isoformat()
    return extras


def do_not_contact_to_json(entry: DoNotContact) -> dict[str, Any]:
    return {
        "channel": None if entry.channel is None else entry.channel.value,
        "reason": entry.reason.value,
        "source": entry.source,
        "added_at": entry.added_at.isoformat(),
        "expires_at": None if entry.expires_at is None else entry.expires_at.isoformat(),
        "added_by": entry.added_by,
        "note": entry.note,
    }


def do_not_contact_from_json(data: dict[str, Any]) -> DoNotContact:
    return DoNotContact(
        None if data.get("channel") is None else Channel(data["channel"]),
        DoNotContactReason(data["reason"]),
        str(data.get("source") or ""),
        _aware(data["added_at"]),
        None if data.get("expires_at") is None else _aware(data["expires_at"]),
        str(data.get("added_by") or ""),
        str(data.get("note") or ""),
    )


_FLOAT_TAG = "$float"
_JSON_TAG = "$json"
_PLAIN_LOW, _PLAIN_HIGH = 1e-4, 1e16


def _value_json(value: Any) -> Any:
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return value
    if kind is float:
        # Plain only when jsonb's decimal gives back this very float: where repr writes a point and no
        # exponent (1e-4 <= |x| < 1e16), or 0.0 itself (not -0.0).
        if _PLAIN_LOW <= abs(value) < _PLAIN_HIGH or (value == 0.0 and math.copysign(1.0, value) > 0):
            return value
        return {_FLOAT_TAG: repr(value)}  # also inf and nan, which no JSON number can hold
    if isinstance(value, dict):
        return {_JSON_TAG: value}
    return value


def _finite(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        return all(_finite(v) for v in value.values())
    if kind is list or kind is tuple:
        return all(_finite(v) for v in value)
    return True


def _objects_finite(values: Mapping[str, Any]) -> bool:
    """Top-level floats are tagged by `_value_json`; what is inside an object value is written as it is."""
    return all(_finite(v) for v in values.values() if isinstance(v, dict))


def _values_json(values: Mapping[str, AttributeValue]) -> dict[str, Any]:
    return {key: _value_json(value) for key, value in values.items()}


def _value_from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if _FLOAT_TAG in value:
            return float(value[_FLOAT_TAG])
        if _JSON_TAG in value:
            return value[_JSON_TAG]
    return value


def _values_from_json(values: dict[str, Any]) -> dict[str, AttributeValue]:
    return {str(key): _value_from_json(value) for key, value in values.items()}


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    decision_id: str
    decided_at: datetime
    customer_id: str
    channel: Channel
    ruleset: RulesetRef
    engine: str
    rules_fired: tuple[FiredRule, ...]
    dropped: tuple[DroppedCandidate, ...]
    actions: tuple[DecidedAction, ...]
    latency_ms: float
    context_reason: str = ""
    context: dict[str, str] = field(default_factory=dict)
    profile_problems: tuple[str, ...] = ()
    delivery: Delivery = Delivery.SENT
    # What a candidate run beside the active ruleset would have answered. None when no candidate ran; the
    # service writes it as a `ShadowUpdate` once the answer has left, so a fresh record may not have it yet.
    shadow: ShadowRun | None = None
    # What replays the decision exactly (`nba_service.review.explain.replay`). None in records written before
    # inputs were kept: those can still be explained from `rules_fired` and `dropped`, not replayed.
    inputs: DecisionInputs | None = None
    # Who asked: the caller's principal (`cert:...`, `jwt:...`, `anonymous`), never a credential. "" in records
    # written before callers were recorded.
    caller: str = ""
    # The OpenTelemetry trace the decision was made in (32 hex digits), so an explanation leads to its trace.
    # "" when tracing was off, and in records written before trace ids were kept.
    trace_id: str = ""
    # Whether the customer called in or we called out. Records written before directions were kept read as the
    # channel's usual direction.
    direction: Direction | None = None
    # The customer's journey stage when decided (the ruleset's `journey_field`), for the report; None when the
    # ruleset names no such field, the profile has no value, and in records written before stages were kept.
    journey_stage: str | None = None

    @property
    def contact_direction(self) -> Direction:
        return self.direction if self.direction is not None else default_direction(self.channel)

    @property
    def finite(self) -> bool:
        """Whether every number of the JSON form is finite (the fast encoder writes NaN as null: json_text).
        Values rules read are as the profile gave them; the inputs tag their floats, not a JSON object's."""
        return (
            math.isfinite(self.latency_ms)
            and all(_finite(f.values) for f in self.rules_fired)
            and (self.inputs is None or self.inputs.finite)
        )

    def to_json(self) -> dict[str, Any]:
        """The record in the versioned export format (built field by field: `asdict` cost 3x as much)."""
        return {
            "format": RECORD_FORMAT,
            "kind": "decision",
            "decision_id": self.decision_id,
            "decided_at": self.decided_at.isoformat(),
            "customer_id": self.customer_id,
            "channel": self.channel.value,
            "direction": None if self.direction is None else self.direction.value,
            "ruleset": {"name": self.ruleset.name, "version": self.ruleset.version, "hash": self.ruleset.hash},
            "engine": self.engine,
            "rules_fired": [
                {"rule_id": f.rule_id, "action_id": f.action_id, "priority": f.priority, "values": f.values}
                for f in self.rules_fired
            ],
            "dropped": [
                {
                    "rule_id": d.rule_id,
                    "action_id": d.action_id,
                    "stage": d.stage,
                    "reason": d.reason,
                    "policy": d.policy,
                    "detail": d.detail,
                }
                for d in self.dropped
            ],
            "actions": [
                {
                    "action_id": a.action_id,
                    "script": a.script,
                    "priority": a.priority,
                    "category": a.category,
                    "reason": a.reason,
                    "rule_id": a.rule_id,
                    "valid_until": a.valid_until.isoformat(),
                    "mandatory": a.mandatory,
                }
                for a in self.actions
            ],
            "latency_ms": self.latency_ms,
            "context": {"reason": self.context_reason, "attributes": dict(self.context)},
            "profile_problems": list(self.profile_problems),
            "delivery": self.delivery.value,
            "shadow": None if self.shadow is None else self.shadow.to_json(),
            "inputs": None if self.inputs is None else self.inputs.to_json(),
            "caller": self.caller,
            "trace_id": self.trace_id,
            "journey_stage": self.journey_stage,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DecisionRecord:
        """Reads the export format back; raises ValueError (naming the problem) for anything else."""
        _check_format(data, "decision")
        try:
            ruleset = data["ruleset"]
            context = data.get("context") or {}
            return cls(
                decision_id=str(data["decision_id"]),
                decided_at=_aware(data["decided_at"]),
                customer_id=str(data["customer_id"]),
                channel=Channel(data["channel"]),
                ruleset=RulesetRef(str(ruleset["name"]), str(ruleset["version"]), str(ruleset["hash"])),
                engine=str(data["engine"]),
                rules_fired=tuple(
                    FiredRule(str(f["rule_id"]), str(f["action_id"]), int(f["priority"]), dict(f["values"]))
                    for f in data["rules_fired"]
                ),
                dropped=tuple(
                    DroppedCandidate(
                        str(d["rule_id"]),
                        str(d["action_id"]),
                        str(d["reason"]),
                        str(d["detail"]),
                        str(d.get("stage", "policy")),
                        str(d.get("policy", "")),
                    )
                    for d in data["dropped"]
                ),
                actions=tuple(
                    DecidedAction(
                        str(a["action_id"]),
                        str(a["script"]),
                        int(a["priority"]),
                        str(a["category"]),
                        str(a["reason"]),
                        str(a["rule_id"]),
                        _aware(a["valid_until"]),
                        bool(a.get("mandatory", False)),
                    )
                    for a in data["actions"]
                ),
                latency_ms=float(data["latency_ms"]),
                context_reason=str(context.get("reason", "")),
                context={str(k): str(v) for k, v in (context.get("attributes") or {}).items()},
                profile_problems=tuple(str(p) for p in data.get("profile_problems", ())),
                delivery=Delivery(data.get("delivery", Delivery.SENT.value)),
                # Absent in records written before shadow runs existed: those ran no candidate.
                shadow=None if data.get("shadow") is None else ShadowRun.from_json(data["shadow"]),
                # Absent in records written before inputs were kept.
                inputs=None if data.get("inputs") is None else DecisionInputs.from_json(data["inputs"]),
                # Absent in records written before callers were recorded.
                caller=str(data.get("caller") or ""),
                # Absent in records written before trace ids were kept.
                trace_id=str(data.get("trace_id") or ""),
                # Absent in records written before directions were kept.
                direction=None if data.get("direction") is None else Direction(data["direction"]),
                # Absent in records written before journey stages were kept.
                journey_stage=None if data.get("journey_stage") is None else str(data["journey_stage"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a decision record: missing or malformed {exc}") from exc

    def summary(self) -> DecisionSummary:
        return DecisionSummary(
            self.decision_id,
            self.customer_id,
            self.channel,
            tuple(a.action_id for a in self.actions),
            self.decided_at,
            self.delivery,
            self.caller,
            self.direction,
        )


@dataclass(frozen=True, slots=True)
class DeliveryUpdate:
    """A late correction of a record already durable: its answer never reached the caller."""

    decision_id: str
    delivery: Delivery

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "kind": "delivery",
            "decision_id": self.decision_id,
            "delivery": self.delivery.value,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeliveryUpdate:
        _check_format(data, "delivery")
        try:
            return cls(str(data["decision_id"]), Delivery(data["delivery"]))
        except KeyError as exc:
            raise ValueError(f"not a delivery record: missing {exc}") from exc


@dataclass(frozen=True, slots=True)
class ShadowUpdate:
    """A candidate's verdict, added to a record already durable: the candidate runs after the answer has
    left, so that it can never add to the answer's latency (see `DecisionService.decide`)."""

    decision_id: str
    shadow: ShadowRun

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "kind": "shadow",
            "decision_id": self.decision_id,
            "shadow": self.shadow.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShadowUpdate:
        _check_format(data, "shadow")
        try:
            return cls(str(data["decision_id"]), ShadowRun.from_json(data["shadow"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a shadow record: missing or malformed {exc}") from exc


# What may change in a record after it is durable: its delivery, and the shadow run that followed its answer.
RecordUpdate = DeliveryUpdate | ShadowUpdate


def outcome_to_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "format": RECORD_FORMAT,
        "kind": "outcome",
        "decision_id": outcome.decision_id,
        "customer_id": outcome.customer_id,
        "action_id": outcome.action_id,
        "channel": outcome.channel.value,
        "outcome": outcome.outcome.value,
        "time": outcome.time.isoformat(),
        "note": outcome.note,
        "recorded_by": outcome.recorded_by,
        "direction": None if outcome.direction is None else outcome.direction.value,
    }


def outcome_from_json(data: dict[str, Any]) -> Outcome:
    _check_format(data, "outcome")
    try:
        return Outcome(
            str(data["decision_id"]),
            str(data["customer_id"]),
            str(data["action_id"]),
            Channel(data["channel"]),
            OutcomeKind(data["outcome"]),
            _aware(data["time"]),
            str(data.get("note", "")),
            str(data.get("recorded_by") or ""),
            direction=None if data.get("direction") is None else Direction(data["direction"]),
        )
    except KeyError as exc:
        raise ValueError(f"not an outcome record: missing {exc}") from exc


def _check_format(data: dict[str, Any], kind: str) -> None:
    if not isinstance(data, dict):
        raise ValueError("a record must be a JSON object")
    found = data.get("format")
    if found != RECORD_FORMAT:
        raise ValueError(f"unknown record format {found!r} (this version reads {RECORD_FORMAT!r})")
    if data.get("kind") != kind:
        raise ValueError(f"expected a {kind!r} record, found kind {data.get('kind')!r}")


def _aware(text: Any) -> datetime:
    moment = datetime.fromisoformat(str(text))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return moment


@dataclass(frozen=True, slots=True)
class DecisionSummary:
    """What an outcome needs to know about the decision it answers."""

    decision_id: str
    customer_id: str
    channel: Channel
    action_ids: tuple[str, ...]
    decided_at: datetime
    delivery: Delivery = Delivery.SENT
    caller: str = ""
    """The principal the decision was answered to ("" before callers were recorded)."""
    direction: Direction | None = None
    """None when the store does not know (read as the channel's usual direction)."""
