"""The decision service: one decision from request to record, independent of any transport.

gRPC today, HTTP/JSON later: both call these methods, and both get domain errors to map at their edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from nba_service.domain.contact_points import PhoneNumber, e164_problem
from nba_service.domain.dialer import (
    DEFAULT_LEGAL_WINDOW,
    CallWindow,
    Exclusion,
    LegalWindow,
    call_window,
    choose_number,
    exclusion,
    idempotency_key,
    own_calls_removed,
    parse_legal_window,
)
from nba_service.domain.model import Channel, Direction, Ruleset, default_direction, direction_fits
from nba_service.domain.pipeline import ActiveRuleset, Evaluation, evaluate
from nba_service.domain.ports import DecisionLog, ProfileStore, RulesetArchive
from nba_service.domain.profile import AttributeValue, Event, Outcome, OutcomeKind, Profile
from nba_service.domain.records import (
    DecidedAction,
    Decision,
    DecisionInputs,
    DecisionRecord,
    Delivery,
    DeliveryUpdate,
    ShadowRun,
    ShadowUpdate,
)
from nba_service.domain.segments import Segment, parse_segment
from nba_service.errors import (
    DeadlineExceeded,
    FieldProblem,
    InvalidArgument,
    NbaError,
    NotFound,
    Problems,
    Unavailable,
)
from nba_service.log_setup import debug_enabled
from nba_service.review.explain import DRY_RUN_PREFIX, explain
from nba_service.security.policy import Caller
from nba_service.telemetry import tracing

log = structlog.get_logger(__name__)

DEFAULT_MAX_ACTIONS = 3
MAX_ACTIONS_LIMIT = 20
CLOCK_SKEW = timedelta(minutes=5)
# Used with fullmatch only: `$` also matches before a final newline, which would let "CUST-1\n" through.
_CUSTOMER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
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
# Ids in one DecideBatch request: 10,000 ids of the longest legal length (64) still fit in the server's 1 MiB
# message limit, so this limit, not the transport's, is the one a caller meets. Larger campaigns use a segment.
MAX_CAMPAIGN_IDS = 10_000
# Profiles read (one round trip on PostgreSQL) and records committed (one group commit) at a time.
CAMPAIGN_PAGE = 500
# Decisions whose records commit together while the next chunk is decided: small enough that no record waits
# long for its commit (a whole page decided first made records wait ~0.15 s, over 1 s on a busy machine).
CAMPAIGN_CHUNK = 100
MAX_CAMPAIGN_AHEAD = timedelta(days=7)


def validate_customer_id(customer_id: str, problems: Problems) -> None:
    if not customer_id:
        problems.add("customer_id", "is required")
    elif not _CUSTOMER_ID.fullmatch(customer_id):
        problems.add(
            "customer_id",
            "must be 1-64 characters: letters, digits, '_', '.', ':' or '-', starting with a letter or digit",
        )


class DecisionMetrics(Protocol):
    """What the service tells the metrics (nba_service.telemetry.metrics), kept to a few calls per decision."""

    def decided(self, channel: Channel, active: ActiveRuleset, evaluation: Evaluation) -> None: ...

    def shadow_compared(self, run: ShadowRun) -> None: ...

    def store_call(self, operation: str, seconds: float) -> None: ...


class DecisionService:
    def __init__(
        self,
        store: ProfileStore,
        decision_log: DecisionLog,
        active: ActiveRuleset,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        shadow: ActiveRuleset | None = None,
        archive: RulesetArchive | None = None,
        metrics: DecisionMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._log = decision_log
        self._active = active
        self._clock = clock
        self._shadow = shadow
        self._archive = archive
        # Hashes this process has seen kept in the archive, and when the active version became active.
        self._archived: set[str] = set()
        self._activated_at = clock()
        self._activated_by = ""
        self._activation_origin = ""
        self._change_listeners: list[Callable[[str], None]] = []

    @property
    def active(self) -> ActiveRuleset:
        return self._active

    def activate(
        self, active: ActiveRuleset, activated_at: datetime | None = None, *, by: str = "", origin: str = ""
    ) -> ActiveRuleset:
        """Swaps the ruleset for new decisions; returns the old one for the caller to unload. Call `archive`
        first: a version not yet in the archive keeps its first decision waiting until it is, and is then noted
        with this `by` and `origin`."""
        old, self._active = self._active, active
        self._activated_at = activated_at or self._clock()
        self._activated_by, self._activation_origin = by, origin
        return old

    async def archive(self, ruleset: Ruleset, activated_at: datetime, *, by: str = "", origin: str = "") -> None:
        """Keeps the version's source in the archive, with who asked for it and how; raises (Unavailable,
        FailedPrecondition) when it cannot, and then the version must not serve: a decision naming a hash nobody
        can fetch cannot be explained."""
        if self._archive is None:
            return
        await self._archive.keep(ruleset, activated_at, by=by, origin=origin)
        self._archived.add(ruleset.content_hash)

    async def _ensure_archived(self, active: ActiveRuleset) -> None:
        """The last guard, on every path a version can start serving by: a store that was away when the
        version started (PostgreSQL starts NOT_SERVING and recovers by itself) gets it on the first decision."""
        try:
            await self.archive(
                active.ruleset, self._activated_at, by=self._activated_by, origin=self._activation_origin
            )
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
        direction: Direction | None = None,
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

        `direction` None is the channel's usual one; the one decided for is on the answer and the record, so an
        outcome, a shadow run and an explanation all judge the contact as it was.
        """
        started = time.perf_counter()
        problems = Problems()
        validate_customer_id(customer_id, problems)
        if channel is None:
            problems.add("channel", "is required (AGENT_DESKTOP or OUTBOUND_DIALER)")
        elif direction is not None and not direction_fits(channel, direction):
            problems.add(
                "direction", f"{channel.value} never takes {direction.value} contacts (a dialer only calls out)"
            )
        if max_actions < 0 or max_actions > MAX_ACTIONS_LIMIT:
            problems.add("max_actions", f"must be between 1 and {MAX_ACTIONS_LIMIT} (0 means {DEFAULT_MAX_ACTIONS})")
        limit = max_actions or DEFAULT_MAX_ACTIONS
        context_map = dict(context or {})
        _validate_context(context_reason, context_map, problems)
        problems.raise_if_any()
        assert channel is not None  # a missing channel is one of the problems raised above
        direction = direction or default_direction(channel)

        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("the caller's deadline passed before the decision was made; nothing was decided")
        active, shadow = self._active, self._shadow
        if self._archive is not None and active.ruleset.content_hash not in self._archived:
            await self._ensure_archived(active)
        now = self._clock()
        metrics = self._metrics
        with tracing.stage("profile.read"):
            read_started = time.perf_counter()
            try:
                profile = await self._store.get_profile(customer_id)
            finally:  # an unknown customer is a store call too
                if metrics is not None:
                    metrics.store_call("read_profile", time.perf_counter() - read_started)
        if caller is not None and not caller.scope.admits(profile.attributes):
            raise unknown_customer(customer_id)
        decision_id = DRY_RUN_PREFIX + _new_id() if dry_run else _new_id()
        with tracing.stage("pipeline"):
            result = evaluate(active, profile, channel, now, limit, tracing.stage, direction)
        if result.engine_error is not None:
            error = result.engine_error
            log.error("engine_failed_using_reference", error=error, decision_id=decision_id, customer_id=customer_id)
        decision = Decision(decision_id, now, customer_id, channel, result.actions, active.ref, direction)
        trace_id, _ = tracing.current_ids()
        record = _record(
            decision_id,
            now,
            profile,
            channel,
            active,
            result,
            started,
            limit,
            context_reason,
            context_map,
            caller,
            trace_id,
            direction,
        )
        if dry_run:
            return replace(decision, explanation=explain(record, active.ruleset, dry_run=True))
        late = deadline is not None and time.monotonic() >= deadline
        if late:
            record = replace(record, delivery=Delivery.DEADLINE_EXCEEDED)
        with tracing.stage("decision_record"):
            await self._log.record(record)
        if metrics is not None:
            metrics.decided(channel, active, result)
        if debug_enabled():
            log.debug(
                "decided", decision_id=decision_id, actions=list(result.action_ids), delivery=record.delivery.value
            )
        if shadow is not None:
            asyncio.get_running_loop().call_soon(
                self._shadow_after, shadow, profile, channel, now, limit, result, decision.decision_id, direction
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
        direction: Direction,
    ) -> None:
        run = _run_shadow(shadow, profile, channel, now, limit, answer, direction)
        self._log.defer(ShadowUpdate(decision_id, run))
        if self._metrics is not None:
            self._metrics.shadow_compared(run)

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
        *,
        idempotency_key: str = "",
        wrong_number: str = "",
        validate_only: bool = False,
    ) -> OutcomeReceipt:
        """A decision about a customer outside the caller's scope is answered as an unknown decision. The
        receipt names the decision's customer only to the caller the decision was answered to.

        `idempotency_key`: a second outcome with the same key stores nothing (the receipt says `stored=False`), so
        a dialer's disposition file can be imported again. `wrong_number`: the number dialled did not reach the
        customer; it must be one of theirs, and is marked so no campaign exports it again. `validate_only` checks
        everything a real call would, the decision and the number included, and stores nothing: an importer
        checks a whole file this way before storing any of it."""
        problems = Problems()
        if idempotency_key and not _KEY.fullmatch(idempotency_key):
            problems.add("idempotency_key", "must be 1-100 letters, digits, '_', '.', ':' or '-'")
        if wrong_number and (problem := e164_problem(wrong_number)) is not None:
            problems.add("wrong_number", problem)
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
        if wrong_number:
            profile = await self._store.get_profile(summary.customer_id)
            if wrong_number not in {phone.number for phone in profile.phones}:
                raise InvalidArgument.of("wrong_number", f"{wrong_number} is not a number of the decision's customer")
        principal = _principal(caller)
        result = Outcome(
            decision_id,
            summary.customer_id,
            action_id,
            summary.channel,
            outcome,
            moment,
            note,
            principal,
            idempotency_key,
            # The decision's: an outcome answers the contact it was decided for (None when the store cannot say).
            summary.direction,
        )
        shown = summary.customer_id if summary.caller == principal else ""
        if validate_only:
            return OutcomeReceipt(result, shown, stored=False)
        if wrong_number:
            await self._store.mark_wrong_number(summary.customer_id, wrong_number, moment)
        stored = await self._store.add_outcome(result)
        if stored or wrong_number:
            self._changed(summary.customer_id)
        if summary.delivery is not Delivery.SENT:
            # An outcome is the caller's word that the answer did arrive: the record must say so.
            self._log.mark(DeliveryUpdate(decision_id, Delivery.SENT))
        if debug_enabled():
            log.debug(
                "outcome_recorded", decision_id=decision_id, action_id=action_id, outcome=outcome.value, stored=stored
            )
        return OutcomeReceipt(result, shown, stored=stored)

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
        if debug_enabled():
            log.debug("event_ingested", event_id=event_id, type=event_type)  # never its values
        return event_id

    # ------------------------------------------------------------------ dialer campaigns

    async def prepare_campaign(
        self,
        campaign_id: str,
        channel: Channel | None,
        *,
        customer_ids: Sequence[str] | None = None,
        segment: Mapping[str, str] | None = None,
        all_customers: bool = False,
        at: datetime | None = None,
        legal_window: str = "",
        caller: Caller | None = None,
    ) -> Campaign:
        """Checks a whole campaign before anything is decided, so a bad one is refused with nothing recorded:
        every field, and every listed customer (an unknown one, or one outside the caller's scope, refuses the
        campaign naming it)."""
        problems = Problems()
        if not campaign_id:
            problems.add("campaign_id", "is required")
        elif not _CUSTOMER_ID.fullmatch(campaign_id):
            problems.add(
                "campaign_id", "must be 1-64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit"
            )
        if channel is None:
            problems.add("channel", "is required (OUTBOUND_DIALER)")
        elif channel is not Channel.OUTBOUND_DIALER:
            problems.add("channel", f"a campaign is for OUTBOUND_DIALER; {channel.value} has no numbers to call")
        listed = customer_ids is not None and len(customer_ids) > 0
        chosen = segment is not None and (bool(segment) or all_customers)
        if listed == chosen:
            problems.add("customers", "give either customer_ids or a segment (conditions, or all_customers)")
        ids: tuple[str, ...] | None = None
        if listed and customer_ids is not None:
            ids = tuple(customer_ids)
            if len(ids) > MAX_CAMPAIGN_IDS:
                problems.add(
                    "customer_ids",
                    f"{len(ids):,} ids; one request takes at most {MAX_CAMPAIGN_IDS:,} (split the list, or select the "
                    "customers with a segment)",
                )
            else:
                _validate_ids(ids, problems)
        active = self._active
        chosen_segment = None
        if chosen and segment is not None:
            chosen_segment = parse_segment(active.ruleset, segment, all_customers, problems)
        now = self._clock()
        moment = at or now
        if moment < now - CLOCK_SKEW:
            problems.add("time", "is in the past: a campaign is decided for now or a time to come")
        elif moment > now + MAX_CAMPAIGN_AHEAD:
            problems.add("time", f"is more than {MAX_CAMPAIGN_AHEAD.days} days ahead")
        legal = DEFAULT_LEGAL_WINDOW
        if legal_window:
            try:
                legal = parse_legal_window(legal_window)
            except ValueError as exc:
                problems.add("legal_window", str(exc))
        problems.raise_if_any()
        if ids is not None:
            await self._check_listed(ids, caller)
        return Campaign(campaign_id, ids, chosen_segment, moment, legal, active)

    async def _check_listed(self, ids: tuple[str, ...], caller: Caller | None) -> None:
        missing = await self._store.missing_customers(ids)
        if caller is not None and not caller.scope.unrestricted:
            # Outside the caller's scope reads exactly as unknown, so a scoped caller learns nothing from the refusal.
            gone = set(missing)
            for start in range(0, len(ids), CAMPAIGN_PAGE):
                for profile in await self._store.get_profiles(ids[start : start + CAMPAIGN_PAGE]):
                    if not caller.scope.admits(profile.attributes):
                        gone.add(start + ids[start : start + CAMPAIGN_PAGE].index(profile.customer_id))
            missing = sorted(gone)
        if missing:
            error = InvalidArgument.many(
                [FieldProblem(f"customer_ids[{i}]", f"customer {_shown(ids[i])} not found") for i in missing[:10]],
                max(0, len(missing) - 10),
            )
            raise NotFound(
                f"{len(missing):,} of {len(ids):,} listed customers not found (nothing was decided): {error.message}",
                error.problems,
            )

    async def decide_batch(
        self, campaign: Campaign, *, deadline: float | None = None, caller: Caller | None = None
    ) -> AsyncIterator[CampaignResult]:
        """One result per customer of a prepared campaign, each decided by the one pipeline and durably recorded
        before it is yielded. Profiles are read a page at a time (the next page is read while this one is
        decided); decisions go in chunks, each chunk's records committing (one group commit) while the next
        chunk is decided, so memory stays bounded by a few pages however large the campaign, and no record
        waits for more than about one chunk's work. Stopping early (a deadline, a cancelled call) leaves every
        yielded result recorded as sent and corrects the records of results that were never yielded."""
        active = campaign.active
        if self._archive is not None and active.ruleset.content_hash not in self._archived:
            await self._ensure_archived(active)
        pages = self._campaign_pages(campaign)
        reading: asyncio.Task[list[Profile]] | None = asyncio.ensure_future(anext(pages, []))
        pending: tuple[list[CampaignResult], asyncio.Future[list[None]]] | None = None
        unsent: dict[str, None] = {}
        try:
            while reading is not None:
                page = await reading
                reading = asyncio.ensure_future(anext(pages, [])) if page else None
                for start in range(0, len(page), CAMPAIGN_CHUNK):
                    if deadline is not None and time.monotonic() >= deadline:
                        raise DeadlineExceeded(
                            "the caller's deadline passed during the campaign; what was streamed stands"
                        )
                    current = self._decide_chunk(campaign, page[start : start + CAMPAIGN_CHUNK], caller, unsent)
                    await asyncio.sleep(0)  # the writer takes this chunk's records before the last chunk is awaited
                    if pending is not None:
                        results, committed = pending
                        await committed
                        for result in results:
                            del unsent[result.decision_id]
                            yield result
                    pending = current
            if pending is not None:
                results, committed = pending
                pending = None
                await committed
                for result in results:
                    del unsent[result.decision_id]
                    yield result
        except BaseException as exc:
            late = isinstance(exc, DeadlineExceeded) or (deadline is not None and time.monotonic() >= deadline)
            if pending is not None:
                pending[1].cancel()
                pending[1].add_done_callback(_consume)
            for decision_id in unsent:
                self.undelivered(decision_id, Delivery.DEADLINE_EXCEEDED if late else Delivery.CANCELLED)
            raise
        finally:
            if reading is not None:
                reading.cancel()
                with contextlib.suppress(BaseException):
                    await reading
            await pages.aclose()

    async def _campaign_pages(self, campaign: Campaign) -> AsyncGenerator[list[Profile]]:
        if campaign.customer_ids is not None:
            for start in range(0, len(campaign.customer_ids), CAMPAIGN_PAGE):
                yield await self._store.get_profiles(campaign.customer_ids[start : start + CAMPAIGN_PAGE])
            return
        assert campaign.segment is not None  # prepare_campaign sets exactly one of the two
        after = ""
        while True:
            page = await self._store.segment_page(campaign.segment, after, CAMPAIGN_PAGE)
            if not page:
                return
            yield page
            after = page[-1].customer_id

    def _decide_chunk(
        self, campaign: Campaign, profiles: list[Profile], caller: Caller | None, unsent: dict[str, None]
    ) -> tuple[list[CampaignResult], asyncio.Future[list[None]]]:
        """Decides a chunk (CPU only) and hands its records to the writer; the results may leave once they commit."""
        active, at, channel = campaign.active, campaign.at, Channel.OUTBOUND_DIALER
        direction = default_direction(channel)
        trace_id, _ = tracing.current_ids()  # the DecideBatch call's trace
        results: list[CampaignResult] = []
        records: list[DecisionRecord] = []
        for profile in profiles:
            if caller is not None and not caller.scope.admits(profile.attributes):
                continue  # a segment never reaches beyond the caller's scope (a list was checked up front)
            started = time.perf_counter()
            profile = own_calls_removed(profile, campaign.campaign_id)  # noqa: PLW2901 - what the pipeline saw
            evaluation = evaluate(active, profile, channel, at, 1, direction=direction)
            if evaluation.engine_error is not None:
                log.error(
                    "engine_failed_using_reference", error=evaluation.engine_error, customer_id=profile.customer_id
                )
            decision_id = _new_id()
            result = _campaign_result(campaign, decision_id, profile, evaluation)
            context = {"campaign_id": campaign.campaign_id, "legal_window": str(campaign.legal)}
            if isinstance(result, CampaignCall):
                context.update(
                    idempotency_key=result.idempotency_key,
                    phone=result.phone.number,
                    phone_type=result.phone.type.value,
                    call_earliest=result.window.earliest.isoformat(),
                    call_latest=result.window.latest.isoformat(),
                )
            else:
                context.update(excluded=result.reason.value)
            reason = f"campaign {campaign.campaign_id}"
            records.append(
                _record(
                    decision_id,
                    at,
                    profile,
                    channel,
                    active,
                    evaluation,
                    started,
                    1,
                    reason,
                    context,
                    caller,
                    trace_id,
                    direction,
                )
            )
            results.append(result)
            unsent[decision_id] = None
            if self._metrics is not None:
                self._metrics.decided(channel, active, evaluation)
            if self._shadow is not None:
                asyncio.get_running_loop().call_soon(
                    self._shadow_after, self._shadow, profile, channel, at, 1, evaluation, decision_id, direction
                )
        return results, asyncio.gather(*(self._log.record(record) for record in records))


def _consume(future: asyncio.Future[list[None]]) -> None:
    """Takes the outcome of a commit nobody waits for any more, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


def _campaign_result(campaign: Campaign, decision_id: str, profile: Profile, evaluation: Evaluation) -> CampaignResult:
    """The pipeline's answer as a call-list row, or the one reason the customer is left out."""
    ident = profile.customer_id
    excluded = exclusion(evaluation)
    if excluded is not None:
        return CampaignExclusion(decision_id, ident, *excluded)
    action = evaluation.actions[0]
    phone = choose_number(profile)
    if phone is None:
        detail = "no number with the customer's consent that is not known to be wrong"
        return CampaignExclusion(decision_id, ident, Exclusion.NO_CALLABLE_NUMBER, detail)
    window = call_window(campaign.active.ruleset, profile, campaign.at, campaign.legal)
    if window is None:
        detail = f"no time left today within {campaign.legal} outside the quiet hours, in the customer's time zone"
        return CampaignExclusion(decision_id, ident, Exclusion.OUTSIDE_LEGAL_WINDOW, detail)
    key = idempotency_key(campaign.campaign_id, ident, action.action_id, phone.number)
    return CampaignCall(decision_id, ident, action, phone, window, key)


def _validate_ids(ids: Sequence[str], problems: Problems) -> None:
    seen: dict[str, int] = {}
    for index, ident in enumerate(ids):
        field = f"customer_ids[{index}]"
        if not _CUSTOMER_ID.fullmatch(ident):
            problems.add(field, f"{_shown(ident)} is not a customer id (1-64 letters, digits, '_', '.', ':' or '-')")
        elif ident in seen:
            problems.add(field, f"{_shown(ident)} is listed twice (first at customer_ids[{seen[ident]}])")
        else:
            seen[ident] = index


@dataclass(frozen=True, slots=True)
class Campaign:
    """A checked campaign: who (a list or a segment), when, within which legal hours, and under which version
    (held from start to end, so a deploy during a long campaign does not mix versions within it)."""

    campaign_id: str
    customer_ids: tuple[str, ...] | None
    segment: Segment | None
    at: datetime
    legal: LegalWindow
    active: ActiveRuleset


@dataclass(frozen=True, slots=True)
class CampaignCall:
    decision_id: str
    customer_id: str
    action: DecidedAction
    phone: PhoneNumber
    window: CallWindow
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class CampaignExclusion:
    decision_id: str
    customer_id: str
    reason: Exclusion
    detail: str


CampaignResult = CampaignCall | CampaignExclusion


def _record(
    decision_id: str,
    now: datetime,
    profile: Profile,
    channel: Channel,
    active: ActiveRuleset,
    result: Evaluation,
    started: float,
    limit: int,
    context_reason: str,
    context: dict[str, str],
    caller: Caller | None,
    trace_id: str,
    direction: Direction,
) -> DecisionRecord:
    return DecisionRecord(
        decision_id=decision_id,
        # The very moment the pipeline ran at: a replay runs the inputs at `decided_at`.
        decided_at=now,
        customer_id=profile.customer_id,
        channel=channel,
        ruleset=active.ref,
        engine=result.engine,
        rules_fired=result.rules_fired,
        dropped=result.dropped,
        actions=result.actions,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
        context_reason=context_reason,
        context=context,
        profile_problems=result.profile_problems,
        inputs=DecisionInputs(profile, limit),
        caller=_principal(caller),
        trace_id=trace_id,
        direction=direction,
        journey_stage=_journey_stage(active.ruleset, profile),
    )


def _journey_stage(ruleset: Ruleset, profile: Profile) -> str | None:
    field = ruleset.meta.journey_field
    stage = profile.attributes.get(field) if field else None
    return stage if isinstance(stage, str) else None


@dataclass(frozen=True, slots=True)
class OutcomeReceipt:
    """A stored outcome, and what the caller may be told: the decision's customer only when the decision was
    answered to this same caller (anyone else learns nothing from a decision id they came by)."""

    outcome: Outcome
    customer_id: str
    stored: bool = True
    """False when nothing was written: a validation only, or an outcome whose idempotency key was already stored."""


def unknown_customer(customer_id: str) -> NotFound:
    """What an unknown customer gets, word for word as the stores say it: a customer outside a caller's scope
    gets exactly this too."""
    return NotFound(f"customer {customer_id!r} not found")


def _principal(caller: Caller | None) -> str:
    return "" if caller is None else caller.principal


def _run_shadow(
    shadow: ActiveRuleset,
    profile: Profile,
    channel: Channel,
    now: datetime,
    limit: int,
    answer: Evaluation,
    direction: Direction,
) -> ShadowRun:
    """The candidate's verdict on exactly what the active ruleset saw (same profile, moment, limit and direction),
    through the one pipeline, so a disagreement can only come from the rulesets. Nothing it does may reach the
    answer: any failure is logged and recorded, and the decision goes on."""
    try:
        with tracing.stage("shadow"):
            candidate = evaluate(shadow, profile, channel, now, limit, direction=direction)
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
