"""The decision service: one decision from request to record, independent of any transport.

gRPC today, HTTP/JSON later: both call these methods, and both get domain errors to map at their edge.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import structlog
from opentelemetry import trace

from nba_service.domain.model import Channel, Ruleset
from nba_service.domain.pipeline import ActiveRuleset, Evaluation, evaluate
from nba_service.domain.ports import DecisionLog, ProfileStore, RulesetArchive
from nba_service.domain.profile import AttributeValue, Event, Outcome, OutcomeKind, Profile
from nba_service.domain.records import (
    Decision,
    DecisionInputs,
    DecisionRecord,
    Delivery,
    DeliveryUpdate,
    ShadowRun,
    ShadowUpdate,
)
from nba_service.errors import DeadlineExceeded, InvalidArgument, NbaError, NotFound, Problems, Unavailable
from nba_service.review.explain import DRY_RUN_PREFIX, explain
from nba_service.security.policy import Caller

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("nba_service")

DEFAULT_MAX_ACTIONS = 3
MAX_ACTIONS_LIMIT = 20
CLOCK_SKEW = timedelta(minutes=5)
# Used with fullmatch only: `$` also matches before a final newline, which would let "CUST-1\n" through.
_CUSTOMER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_CONTEXT_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_CONTEXT_ENTRIES = 50
MAX_CONTEXT_VALUE = 500
MAX_EVENT_ATTRIBUTES = 50
MAX_EVENT_STRING = 1000
# What one call may add to the decision log, counted as the stores write it (JSON, non-ASCII escaped, so one
# emoji is 12 bytes). Without them the largest legal Decide wrote a 430 KB record; see
# docs/operators/limits-and-secrets.md for the measurements.
MAX_CONTEXT_RECORDED = 16_384
MAX_EVENT_RECORDED = 2_048
MAX_ID_LENGTH = 64


def validate_customer_id(customer_id: str, problems: Problems) -> None:
    if not customer_id:
        problems.add("customer_id", "is required")
    elif not _CUSTOMER_ID.fullmatch(customer_id):
        problems.add(
            "customer_id",
            "must be 1-64 characters: letters, digits, '_', '.', ':' or '-', starting with a letter or digit",
        )


class DecisionService:
    def __init__(
        self,
        store: ProfileStore,
        decision_log: DecisionLog,
        active: ActiveRuleset,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        shadow: ActiveRuleset | None = None,
        archive: RulesetArchive | None = None,
    ) -> None:
        self._store = store
        self._log = decision_log
        self._active = active
        self._clock = clock
        self._shadow = shadow
        self._archive = archive
        # Hashes this process has seen kept in the archive, and when the active version became active.
        self._archived: set[str] = set()
        self._activated_at = clock()
        self._change_listeners: list[Callable[[str], None]] = []

    @property
    def active(self) -> ActiveRuleset:
        return self._active

    def activate(self, active: ActiveRuleset, activated_at: datetime | None = None) -> ActiveRuleset:
        """Swaps the ruleset for new decisions; returns the old one for the caller to unload. Call `archive`
        first: a version not yet in the archive keeps its first decision waiting until it is."""
        old, self._active = self._active, active
        self._activated_at = activated_at or self._clock()
        return old

    async def archive(self, ruleset: Ruleset, activated_at: datetime) -> None:
        """Keeps the version's source in the archive; raises (Unavailable, FailedPrecondition) when it cannot,
        and then the version must not serve: a decision naming a hash nobody can fetch cannot be explained."""
        if self._archive is None:
            return
        await self._archive.keep(ruleset, activated_at)
        self._archived.add(ruleset.content_hash)

    async def _ensure_archived(self, active: ActiveRuleset) -> None:
        """The last guard, on every path a version can start serving by: a store that was away when the
        version started (PostgreSQL starts NOT_SERVING and recovers by itself) gets it on the first decision."""
        try:
            await self.archive(active.ruleset, self._activated_at)
        except NbaError as exc:
            raise Unavailable(f"the active ruleset version cannot be archived, so it does not decide: {exc}") from exc

    @property
    def shadow(self) -> ActiveRuleset | None:
        return self._shadow

    def set_shadow(self, shadow: ActiveRuleset | None) -> ActiveRuleset | None:
        """Starts, swaps or (with None) stops the candidate run beside the active ruleset; returns the old
        candidate for the caller to unload, as `activate` does."""
        old, self._shadow = self._shadow, shadow
        return old

    async def decide(
        self,
        customer_id: str,
        channel: Channel | None,
        *,
        max_actions: int = 0,
        context_reason: str = "",
        context: Mapping[str, str] | None = None,
        deadline: float | None = None,
        dry_run: bool = False,
        caller: Caller | None = None,
    ) -> Decision:
        """`deadline` (time.monotonic) is the caller's: an answer that could no longer reach them is
        recorded as undelivered and never counted as an offer.

        A dry run decides exactly as a real decision (same profile read, same pipeline, same moment) and
        records nothing: no record, no shadow run. Nothing it answers can have an outcome, so it counts toward
        no cap; its id starts with `DRY_RUN_PREFIX` and its `explanation` says why it came out as it did.

        A shadow candidate runs only after the record is durable, on the event loop's next turn, while the
        answer is on its way. Run inline it added 5-27% to the median answer (a pipeline is ~0.13 ms of a
        ~2 ms Decide), over the 10% allowed in four of six runs of `make bench-shadow`. Its verdict is added
        to the record afterwards (`ShadowUpdate`). See README "Shadow runs".

        `caller` is who asks (None: a trusted in-process caller). A customer outside its scope is answered
        exactly as an unknown one, so a scoped caller cannot learn which customers exist beyond it.
        """
        started = time.perf_counter()
        problems = Problems()
        validate_customer_id(customer_id, problems)
        if channel is None:
            problems.add("channel", "is required (AGENT_DESKTOP or OUTBOUND_DIALER)")
        if max_actions < 0 or max_actions > MAX_ACTIONS_LIMIT:
            problems.add("max_actions", f"must be between 1 and {MAX_ACTIONS_LIMIT} (0 means {DEFAULT_MAX_ACTIONS})")
        limit = max_actions or DEFAULT_MAX_ACTIONS
        context_map = dict(context or {})
        _validate_context(context_reason, context_map, problems)
        problems.raise_if_any()
        assert channel is not None  # a missing channel is one of the problems raised above

        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("the caller's deadline passed before the decision was made; nothing was decided")
        active, shadow = self._active, self._shadow
        if self._archive is not None and active.ruleset.content_hash not in self._archived:
            await self._ensure_archived(active)
        now = self._clock()
        with tracer.start_as_current_span("profile.read"):
            profile = await self._store.get_profile(customer_id)
        if caller is not None and not caller.scope.admits(profile.attributes):
            raise unknown_customer(customer_id)
        with tracer.start_as_current_span("decide"):
            result = evaluate(active, profile, channel, now, limit)
        if result.engine_error is not None:
            log.error("engine_failed_using_reference", error=result.engine_error, customer_id=customer_id)
        decision_id = DRY_RUN_PREFIX + _new_id() if dry_run else _new_id()
        decision = Decision(decision_id, now, customer_id, channel, result.actions, active.ref)
        record = DecisionRecord(
            decision_id=decision.decision_id,
            # The very moment the pipeline ran at: a replay runs the inputs at `decided_at`.
            decided_at=now,
            customer_id=customer_id,
            channel=channel,
            ruleset=decision.ruleset,
            engine=result.engine,
            rules_fired=result.rules_fired,
            dropped=result.dropped,
            actions=result.actions,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            context_reason=context_reason,
            context=context_map,
            profile_problems=result.profile_problems,
            inputs=DecisionInputs(profile, limit),
            caller=_principal(caller),
        )
        if dry_run:
            return replace(decision, explanation=explain(record, active.ruleset, dry_run=True))
        late = deadline is not None and time.monotonic() >= deadline
        if late:
            record = replace(record, delivery=Delivery.DEADLINE_EXCEEDED)
        with tracer.start_as_current_span("decision_record.commit"):
            await self._log.record(record)
        if shadow is not None:
            asyncio.get_running_loop().call_soon(
                self._shadow_after, shadow, profile, channel, now, limit, result, decision.decision_id
            )
        if late:
            raise DeadlineExceeded("the caller's deadline passed before the decision could be answered")
        return decision

    def _shadow_after(
        self,
        shadow: ActiveRuleset,
        profile: Profile,
        channel: Channel,
        now: datetime,
        limit: int,
        answer: Evaluation,
        decision_id: str,
    ) -> None:
        run = _run_shadow(shadow, profile, channel, now, limit, answer)
        self._log.defer(ShadowUpdate(decision_id, run))

    def undelivered(self, decision_id: str, delivery: Delivery) -> None:
        """Corrects a durable record whose answer the transport could not hand over (a dry run has none)."""
        if decision_id.startswith(DRY_RUN_PREFIX):
            return
        self._log.mark(DeliveryUpdate(decision_id, delivery))

    async def in_scope(self, caller: Caller | None, customer_id: str) -> bool:
        """Whether the customer exists and lies within the caller's scope (read from the live profile)."""
        if caller is None or caller.scope.unrestricted:
            return True
        try:
            profile = await self._store.get_profile(customer_id)
        except NotFound:
            return False
        return caller.scope.admits(profile.attributes)

    async def current_profile(self, customer_id: str, caller: Caller | None = None) -> Profile:
        """The profile a decision for this customer would read now, for whoever watches it change (the agent
        panel); a customer outside the caller's scope is answered as an unknown one."""
        problems = Problems()
        validate_customer_id(customer_id, problems)
        problems.raise_if_any()
        profile = await self._store.get_profile(customer_id)
        if caller is not None and not caller.scope.admits(profile.attributes):
            raise unknown_customer(customer_id)
        return profile

    def on_profile_change(self, listener: Callable[[str], None]) -> None:
        """`listener(customer_id)` after this process stored an event or an outcome for the customer: a hint
        that spares watchers a wait; changes made by other processes reach them only by reading the store."""
        self._change_listeners.append(listener)

    def _changed(self, customer_id: str) -> None:
        for listener in self._change_listeners:
            listener(customer_id)

    async def record_outcome(
        self,
        decision_id: str,
        action_id: str,
        outcome: OutcomeKind | None,
        when: datetime | None,
        note: str = "",
        caller: Caller | None = None,
    ) -> OutcomeReceipt:
        """A decision about a customer outside the caller's scope is answered as an unknown decision. The
        receipt names the decision's customer only to the caller the decision was answered to."""
        problems = Problems()
        for field, value in (("decision_id", decision_id), ("action_id", action_id)):
            if not value:
                problems.add(field, "is required")
            elif len(value) > MAX_ID_LENGTH:
                problems.add(field, f"is longer than {MAX_ID_LENGTH} characters")
        if decision_id.startswith(DRY_RUN_PREFIX):
            problems.add(
                "decision_id",
                f"{_shown(decision_id)} is a dry run: it recorded nothing and offered nothing, so it takes no outcome",
            )
        if outcome is None:
            problems.add("outcome", "is required (ACCEPTED, DECLINED, NO_ANSWER, CONVERTED, ...)")
        if len(note) > MAX_CONTEXT_VALUE:
            problems.add("note", f"is longer than {MAX_CONTEXT_VALUE} characters")
        now = self._clock()
        moment = when or now
        if moment > now + CLOCK_SKEW:
            problems.add("time", "is in the future")
        problems.raise_if_any()
        assert outcome is not None  # a missing outcome is one of the problems raised above
        summary = await self._log.find(decision_id)
        if summary is None or not await self.in_scope(caller, summary.customer_id):
            raise NotFound(f"decision {decision_id!r} not found")
        if moment < summary.decided_at - CLOCK_SKEW:
            raise InvalidArgument.of("time", "is before the decision was made")
        if action_id not in summary.action_ids:
            offered = ", ".join(summary.action_ids) or "none"
            raise InvalidArgument.of(
                "action_id", f"{action_id!r} was not returned by decision {decision_id} (returned: {offered})"
            )
        principal = _principal(caller)
        result = Outcome(decision_id, summary.customer_id, action_id, summary.channel, outcome, moment, note, principal)
        await self._store.add_outcome(result)
        self._changed(summary.customer_id)
        if summary.delivery is not Delivery.SENT:
            # An outcome is the caller's word that the answer did arrive: the record must say so.
            self._log.mark(DeliveryUpdate(decision_id, Delivery.SENT))
        return OutcomeReceipt(result, summary.customer_id if summary.caller == principal else "")

    async def ingest_event(
        self,
        customer_id: str,
        event_type: str,
        attributes: Mapping[str, AttributeValue],
        when: datetime | None,
        expires_at: datetime | None,
        caller: Caller | None = None,
    ) -> str:
        """A customer outside the caller's scope is answered as an unknown one."""
        problems = Problems()
        validate_customer_id(customer_id, problems)
        known = self._active.ruleset.events
        if not event_type:
            problems.add("type", "is required")
        elif event_type not in known:
            problems.add("type", f"unknown event type {_shown(event_type)}; known: {', '.join(sorted(known))}")
        if len(attributes) > MAX_EVENT_ATTRIBUTES:
            problems.add("attributes", f"more than {MAX_EVENT_ATTRIBUTES} attributes")
        else:
            spec = known.get(event_type)
            declared = None if spec is None else {a.name: a.type for a in spec.attributes}
            for key, value in attributes.items():
                _validate_attribute(event_type, declared, key, value, problems)
            if (size := recorded_size(attributes)) > MAX_EVENT_RECORDED:
                problems.add("attributes", _too_big(size, MAX_EVENT_RECORDED))
        now = self._clock()
        moment = when or now
        if moment > now + CLOCK_SKEW:
            problems.add("time", "is in the future")
        if expires_at is not None and expires_at <= moment:
            problems.add("expires_at", "must be after the event time")
        elif expires_at is not None and expires_at <= now:
            problems.add("expires_at", "is in the past: no decision would ever see this event")
        problems.raise_if_any()
        if not await self.in_scope(caller, customer_id):
            raise unknown_customer(customer_id)
        event = Event(event_type, moment, dict(attributes), expires_at)
        event_id = await self._store.add_event(customer_id, event, recorded_by=_principal(caller))
        self._changed(customer_id)
        return event_id


@dataclass(frozen=True, slots=True)
class OutcomeReceipt:
    """A stored outcome, and what the caller may be told: the decision's customer only when the decision was
    answered to this same caller (anyone else learns nothing from a decision id they came by)."""

    outcome: Outcome
    customer_id: str


def unknown_customer(customer_id: str) -> NotFound:
    """What an unknown customer gets, word for word as the stores say it: a customer outside a caller's scope
    gets exactly this too."""
    return NotFound(f"customer {customer_id!r} not found")


def _principal(caller: Caller | None) -> str:
    return "" if caller is None else caller.principal


def _run_shadow(
    shadow: ActiveRuleset, profile: Profile, channel: Channel, now: datetime, limit: int, answer: Evaluation
) -> ShadowRun:
    """The candidate's verdict on exactly what the active ruleset saw (same profile, moment and limit), through
    the one pipeline, so a disagreement can only come from the rulesets. Nothing it does may reach the answer:
    any failure is logged and recorded, and the decision goes on."""
    try:
        with tracer.start_as_current_span("shadow"):
            candidate = evaluate(shadow, profile, channel, now, limit)
    except Exception as exc:  # a candidate must never fail a live decision, whatever it raises
        log.exception("shadow_failed", ruleset=shadow.ruleset.meta.name, version=shadow.ruleset.meta.version)
        # Exception text is arbitrary: no NUL or unpaired surrogate may reach a store and get the update refused.
        error = f"{type(exc).__name__}: {exc}".replace("\x00", "\\x00")
        error = error.encode("utf-8", "backslashreplace").decode("utf-8")
        return ShadowRun(shadow.ref, agreed=False, action_ids=(), error=error[:MAX_CONTEXT_VALUE])
    if candidate.engine_error is not None:
        log.error("shadow_engine_failed_using_reference", error=candidate.engine_error, customer_id=profile.customer_id)
    return ShadowRun(shadow.ref, agreed=candidate.action_ids == answer.action_ids, action_ids=candidate.action_ids)


def _validate_context(reason: str, context: Mapping[str, str], problems: Problems) -> None:
    if len(reason) > MAX_CONTEXT_VALUE:
        problems.add("context.reason", f"is longer than {MAX_CONTEXT_VALUE} characters")
    if len(context) > MAX_CONTEXT_ENTRIES:
        # Not each entry as well: hundreds of entry problems would bury the one that matters.
        problems.add("context.attributes", f"has more than {MAX_CONTEXT_ENTRIES} entries")
        return
    for key, value in context.items():
        field = f"context.attributes[{key[:MAX_ID_LENGTH]}]"
        if not _CONTEXT_KEY.fullmatch(key):
            problems.add(field, "keys are 1-64 letters, digits, '_', '.', ':' or '-'")
        if len(value) > MAX_CONTEXT_VALUE:
            problems.add(field, f"is longer than {MAX_CONTEXT_VALUE} characters")
    if (size := recorded_size({"reason": reason, "attributes": context})) > MAX_CONTEXT_RECORDED:
        problems.add("context", _too_big(size, MAX_CONTEXT_RECORDED))


def recorded_size(value: object) -> int:
    """Bytes `value` takes in a decision record as the stores write it: JSON with non-ASCII escaped."""
    return len(json.dumps(value, ensure_ascii=True, separators=(",", ":")))


def _too_big(size: int, cap: int) -> str:
    return (
        f"takes {size:,} bytes in the decision records, at most {cap:,} are allowed "
        "(fewer or shorter values; a character beyond ASCII counts 6 or 12 bytes)"
    )


def _validate_attribute(
    event_type: str, declared: Mapping[str, str] | None, key: str, value: AttributeValue, problems: Problems
) -> None:
    """One problem per attribute, the most basic first. `declared` is None when the event type is unknown
    (reported on its own). An undeclared attribute is refused, not ignored: a typo such as `amout` would
    otherwise be stored, and the event would silently replace the customer's real trigger with one no rule
    can match."""
    field = f"attributes[{key[:MAX_ID_LENGTH]}]"
    if not _NAME.fullmatch(key):
        problems.add(field, "names are 1-64 lower-case letters, digits and '_', starting with a letter")
    elif declared is not None and key not in declared:
        names = ", ".join(declared) or "none"
        problems.add(field, f"is not an attribute of {event_type} events (declared: {names})")
    elif isinstance(value, str) and len(value) > MAX_EVENT_STRING:
        problems.add(field, f"is longer than {MAX_EVENT_STRING} characters")
    elif isinstance(value, float) and not math.isfinite(value):
        problems.add(field, "is not a finite number")
    elif declared is not None and not _has_type(value, declared[key]):
        problems.add(field, f"must be a {declared[key]} for {event_type} events")


def _has_type(value: AttributeValue, field_type: str) -> bool:
    if field_type == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if field_type == "boolean":
        return isinstance(value, bool)
    return isinstance(value, str)


def _shown(text: str) -> str:
    """Echoes caller text in an error without letting a huge value blow up the reply."""
    return repr(text if len(text) <= MAX_ID_LENGTH else text[:MAX_ID_LENGTH] + "...")


def _new_id() -> str:
    return str(uuid.uuid4())
