"""The ruleset in plain English, for compliance reviewers who sign it off without reading YAML or Python.

Every sentence must be true to what the service does, not just plausible: the words follow the reference
evaluator's truth table (`reference.condition_holds`), where a missing fact fails every comparison. That is
why `ne` and `not_in` say "is known and is not": a reader would otherwise take "is not lost" to include a
customer whose stage is unknown, and the service does not. Facts are named in words from the ruleset's own
declarations (field names, event types, descriptions), so a new field needs no change here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timedelta

from nba_service.domain.model import (
    Action,
    Channel,
    Condition,
    Consent,
    Constraint,
    Conversion,
    Direction,
    FieldSpec,
    FrequencyCap,
    Holdouts,
    Op,
    QuietHours,
    Rule,
    Ruleset,
    Suppression,
    When,
)
from nba_service.domain.policy import DO_NOT_CONTACT, policy_ids
from nba_service.domain.records import DroppedCandidate

EVENT_PREFIX = "events."
AGE_FACT = "age_hours"
_CHANNEL_WORDS = {
    Channel.AGENT_DESKTOP: "the agent desktop",
    Channel.OUTBOUND_DIALER: "the outbound dialer",
}
_WORD_TOKENS = {"pct": "percent", "num": "number", "qty": "quantity", "id": "id"}
_RECENT_DAYS = re.compile(r"(\d+)d")
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]+")
_ARTICLE = re.compile(r"(a|an) ", re.IGNORECASE)
_UNITS = ((timedelta(days=1), "day"), (timedelta(hours=1), "hour"), (timedelta(minutes=1), "minute"))


# --- values and durations ----------------------------------------------------------------------------------


def value_text(value: object) -> str:
    """A value as a reviewer reads it: 10000 -> "10,000", True -> "yes", None -> "missing", text in quotes."""
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer():
            return f"{int(value):,}"
        return format(value, ",.15g")
    if isinstance(value, str):
        return f"\u201c{value}\u201d"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return duration_text(value)
    if isinstance(value, list | tuple | set | frozenset):
        return _listing([value_text(v) for v in value], "and")
    return str(value)


def duration_text(delta: timedelta) -> str:
    """The largest whole unit that states the length exactly: 3 days, 36 hours, 90 minutes."""
    if delta < timedelta(0):
        return f"minus {duration_text(-delta)}"
    if delta == timedelta(0):
        return "0 minutes"
    for unit, name in _UNITS:
        if delta % unit == timedelta(0):
            return _count(delta // unit, name)
    seconds = delta.total_seconds()
    return f"{format(seconds, ',.15g')} seconds"


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def _listing(items: Sequence[str], conjunction: str) -> str:
    if not items:
        return "nothing"
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def _words(name: str) -> str:
    """An identifier as words: `digital_logins_30d` -> "digital logins in the last 30 days"."""
    words: list[str] = []
    for token in re.split(r"[_\-.\s]+", name):
        if not token:
            continue
        recent = _RECENT_DAYS.fullmatch(token)
        if recent:
            words.append(f"in the last {_count(int(recent.group(1)), 'day')}")
        else:
            words.append(_WORD_TOKENS.get(token.lower(), token))
    return " ".join(words)


def _constant_text(value: object) -> str:
    """A constant from a condition: declared codes such as `welcome_back` read as words."""
    if isinstance(value, str) and _IDENTIFIER.fullmatch(value):
        return value_text(_words(value))
    return value_text(value)


def channel_text(channel: Channel) -> str:
    return _CHANNEL_WORDS.get(channel, f"the {_words(channel.value)} channel")


def category_text(category: str) -> str:
    return _words(category)


# --- facts ---------------------------------------------------------------------------------------------------


def _event_fact(name: str, ruleset: Ruleset) -> tuple[str, str] | None:
    """(event type, attribute) of an `events.<type>.<attribute>` fact declared by this ruleset."""
    if not name.startswith(EVENT_PREFIX):
        return None
    for event_type in ruleset.events:
        prefix = f"{EVENT_PREFIX}{event_type}."
        if name.startswith(prefix):
            return event_type, name[len(prefix) :]
    return None


def event_text(event_type: str) -> str:
    """An event type in words: `large_deposit` -> "large deposit event"."""
    return f"{_words(event_type)} event"


def _subject(name: str, ruleset: Ruleset) -> str:
    """The fact as the subject of a sentence: "the customer's age", "the amount of the newest X event"."""
    event = _event_fact(name, ruleset)
    if event is not None:
        event_type, attribute = event
        if attribute == AGE_FACT:
            return f"the hours since the newest {event_text(event_type)}"
        return f"the {_words(attribute)} of the newest {event_text(event_type)}"
    return f"the customer's {_words(name)}"


def _boolean_phrases(name: str, spec: FieldSpec | None) -> tuple[str, str] | None:
    """(holds, does not hold) sentences for a yes/no profile field whose description reads as a predicate.

    The description patterns cover how rulesets describe flags ("Holds a credit card.", "Consents to ...",
    "On the do-not-call register.", "Flagged as ...", "A complaint is currently open."); others get None
    and are worded as "<field> is yes/no".
    """
    description = (spec.description if spec is not None else "").strip().rstrip(".")
    if not description or "\n" in description or "_" in description:
        return _named_holding(name)
    first, _, rest = description.partition(" ")
    lead = first.lower()
    if lead == "holds" and rest:
        noun = rest
        bare = _ARTICLE.match(rest)
        negative = f"no {rest[bare.end() :]}" if bare else f"no {rest}"
        return f"the customer holds {noun}", f"the customer holds {negative}"
    if lead == "consents" and rest.lower().startswith("to "):
        return f"the customer consents {rest}", f"the customer does not consent {rest}"
    if lead in ("on", "in") and rest:
        return f"the customer is {lead} {rest}", f"the customer is not {lead} {rest}"
    if lead == "flagged" and rest:
        return f"the customer is flagged {rest}", f"the customer is not flagged {rest}"
    article = _ARTICLE.match(description)
    if article and " is " in description:
        thing, _, state = description[article.end() :].partition(" is ")
        if thing and state:
            return f"{article.group(1).lower()} {thing} is {state}", f"no {thing} is {state}"
    return _named_holding(name)


def _named_holding(name: str) -> tuple[str, str] | None:
    if not name.startswith("has_"):
        return None
    thing = _words(name.removeprefix("has_"))
    return f"the customer holds {_indefinite(thing)}", f"the customer holds no {thing}"


def _indefinite(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


# --- conditions ----------------------------------------------------------------------------------------------


def condition_text(condition: Condition, ruleset: Ruleset) -> str:
    """One condition as a clause that is true exactly when the service treats the condition as holding."""
    event = _event_fact(condition.field, ruleset)
    if event is not None and event[1] == AGE_FACT:
        age = _age_text(condition, event[0])
        if age is not None:
            return age
    spec = ruleset.fields.get(condition.field) if event is None else None
    if spec is not None and spec.type == "boolean":
        flag = _boolean_text(condition, spec)
        if flag is not None:
            return flag
    return _comparison_text(condition, _subject(condition.field, ruleset))


def _age_text(condition: Condition, event_type: str) -> str | None:
    """Hours since the newest unexpired event, in the words a reviewer would use about the event itself."""
    event = event_text(event_type)
    op = condition.op
    if op is Op.EXISTS:
        return f"there is an unexpired {event}"
    if op is Op.MISSING:
        return f"there is no unexpired {event}"
    if op in (Op.EQ, Op.NE, Op.IN, Op.NOT_IN):
        return None
    hours = condition.value
    if isinstance(hours, bool) or not isinstance(hours, int | float):
        return None
    ago = duration_text(timedelta(hours=float(hours)))
    if op is Op.LTE:
        return f"{_indefinite(event)} arrived in the last {ago.removeprefix('1 ')}"
    if op is Op.LT:
        return f"{_indefinite(event)} arrived less than {ago} ago"
    if op is Op.GT:
        return f"the newest unexpired {event} arrived more than {ago} ago"
    return f"the newest unexpired {event} arrived at least {ago} ago"


def _boolean_text(condition: Condition, spec: FieldSpec) -> str | None:
    # A boolean fact is always a bool (facts.normalise), so `ne x` holds exactly when `eq (not x)` does.
    phrases = _boolean_phrases(spec.name, spec)
    op = condition.op
    if phrases is None:
        label = _words(spec.name)
        if op in (Op.EQ, Op.NE):
            wanted = condition.value is True if op is Op.EQ else condition.value is not True
            return f"{label} is {value_text(wanted)}"
        if op is Op.EXISTS:
            return f"{label} is known"
        if op is Op.MISSING:
            return f"{label} is not known"
        return None
    holds, holds_not = phrases
    if op in (Op.EQ, Op.NE):
        wanted = condition.value is True if op is Op.EQ else condition.value is not True
        return holds if wanted else holds_not
    whether = "if" if holds.startswith("the customer ") else "whether"
    if op is Op.EXISTS:
        return f"it is known {whether} {holds}"
    if op is Op.MISSING:
        return f"it is not known {whether} {holds}"
    return None


def _comparison_text(condition: Condition, subject: str) -> str:
    op = condition.op
    if op is Op.EXISTS:
        return f"{subject} is known"
    if op is Op.MISSING:
        return f"{subject} is not known"
    constants = [_constant_text(v) for v in condition.values]
    if op is Op.IN:
        if len(constants) == 1:
            return f"{subject} is {constants[0]}"
        return f"{subject} is one of {_listing(constants, 'or')}"
    if op is Op.NOT_IN:
        if len(constants) == 1:
            return f"{subject} is known and is not {constants[0]}"
        return f"{subject} is known and is none of {_listing(constants, 'or')}"
    constant = constants[0]
    if op is Op.EQ:
        return f"{subject} is {constant}"
    if op is Op.NE:
        return f"{subject} is known and is not {constant}"
    if op is Op.LT:
        return f"{subject} is under {constant}"
    if op is Op.LTE:
        return f"{subject} is at most {constant}"
    if op is Op.GT:
        return f"{subject} is over {constant}"
    return f"{subject} is at least {constant}"


def when_text(when: When, ruleset: Ruleset) -> str:
    """Every condition joined by "and"; an `any` group of two or more reads "at least one of: a; or b"."""
    parts = [condition_text(c, ruleset) for c in when.all]
    alternatives = [condition_text(c, ruleset) for c in when.any]
    if len(alternatives) == 1:
        parts.append(alternatives[0])
    elif alternatives:
        parts.append(f"at least one of: {'; or '.join(alternatives)}")
    if not parts:
        return "always"
    if len(parts) == 1:
        return parts[0]
    return f"{', '.join(parts[:-1])} and {parts[-1]}" if len(parts) > 2 else " and ".join(parts)


def _when_clause(when: When, ruleset: Ruleset) -> str:
    return "Always" if not when.conditions() else f"When {when_text(when, ruleset)},"


# --- rules and actions ---------------------------------------------------------------------------------------


def action_title(action: Action) -> str:
    """The action's id as a title: `term-deposit-rates` -> "Term deposit rates"."""
    return _title(action.id)


# Button labels for CRM recommendation cards: two buttons side by side in a ~300 px panel, so at most
# `MAX_LABEL` characters each. The accept button records ACCEPTED, the decline button DECLINED. Actions a
# compliance or service rule asks for are tasks to carry out rather than offers to sell, and say so.
MAX_LABEL = 12
_TASK_CATEGORIES = frozenset({"compliance", "service"})


def action_labels(action: Action | None) -> tuple[str, str]:
    """(accept label, decline label) for the action's card: what the agent did with a mandatory notice, ("Done",
    "Skip") for a task, else ("Accept", "Decline")."""
    if action is not None and action.mandatory:
        return "Notice given", "Customer refused it"
    if action is not None and action.category in _TASK_CATEGORIES:
        return "Done", "Skip"
    return "Accept", "Decline"


def action_id_title(action_id: str) -> str:
    """A title for an action id the ruleset in hand does not declare (a version swapped mid-call)."""
    return _title(action_id)


def _title(identifier: str) -> str:
    words = _words(identifier)
    return words[:1].upper() + words[1:]


def _action_title(action_id: str, ruleset: Ruleset) -> str:
    action = ruleset.actions.get(action_id)
    return action_title(action) if action is not None else _title(action_id)


def rule_text(rule: Rule, ruleset: Ruleset) -> str:
    """The whole rule as one sentence: when it fires, what it offers, at which priority."""
    return f"{_when_clause(rule.when, ruleset)} offer {_action_title(rule.action, ruleset)}, priority {rule.priority}."


# --- measurement: conversions, values and holdouts ------------------------------------------------------------


def conversion_text(conversion: Conversion) -> str:
    """What counts as converted, as a clause: "a product opened event whose product is “term deposit”, within
    30 days of the decision". Conditions read the event's own attributes, so they are named as the event's."""
    event = _indefinite(event_text(conversion.event))
    conditions = [_comparison_text(c, _words(c.field)) for c in conversion.when.all]
    alternatives = [_comparison_text(c, _words(c.field)) for c in conversion.when.any]
    if len(alternatives) == 1:
        conditions.append(alternatives[0])
    elif alternatives:
        conditions.append(f"at least one of: {'; or '.join(alternatives)}")
    where = f" whose {_listing(conditions, 'and')}" if conditions else ""
    return f"{event}{where}, within {duration_text(conversion.within)} of the decision"


def value_worth_text(value: float) -> str:
    return f"One conversion is worth {value_text(value)} in the ruleset's currency."


def share_text(share: float) -> str:
    """A holdout share as a percentage: 0.1 -> "10%", 0.125 -> "12.5%"."""
    return f"{format(share * 100, '.4g')}%"


def holdout_text(action: Action, holdouts: Holdouts) -> str:
    """Why and how long a share of the action's customers do not hear it, or that none are held out."""
    if action.holdout <= 0:
        return "No customer is held out of this action."
    return (
        f"{share_text(action.holdout)} of the customers it would be shown to are held out of it, drawn at random "
        f"again every {duration_text(holdouts.period)}: the decision is recorded, the action is not shown and "
        "the next best takes its place."
    )


def holdouts_text(ruleset: Ruleset) -> str:
    """The programme in one sentence: which actions hold out what share, how long a draw lasts, its seed."""
    held = [a for a in ruleset.actions.values() if a.holdout > 0]
    if not held:
        return "No action has a holdout: every customer an action is chosen for hears it."
    shares = _listing([f"{action_title(a)} {share_text(a.holdout)}" for a in held], "and")
    return (
        f"Held out at random, per customer and action, again every {duration_text(ruleset.holdouts.period)} "
        f"(seed {value_text(ruleset.holdouts.seed)}): {shares}."
    )


# --- policies ------------------------------------------------------------------------------------------------


def policy_texts(ruleset: Ruleset) -> list[tuple[str, str]]:
    """(policy id, sentence) for every contact policy, with the ids decision records carry (`policy_ids`)."""
    return [(policy_id, policy_text(ruleset, policy_id)) for policy_id in policy_ids(ruleset)]


def policy_text(ruleset: Ruleset, policy_id: str) -> str:
    policies = ruleset.policies
    if policy_id.startswith("consent:"):
        # Entries for the same channel and purposes but other directions share an id: one sentence each.
        texts = [_consent_text(c, ruleset) for c in policies.consent if c.id == policy_id]
        if texts:
            return " ".join(texts)
    if policy_id == DO_NOT_CONTACT:
        return (
            "Nobody listed as do-not-contact for a channel (at their own request, on a regulator's list, after a "
            "bereavement or for vulnerability) is contacted on it until the listing is removed or expires, "
            "mandatory notices included; a listed customer who contacts us is still helped."
        )
    if policy_id == "do_not_call" and policies.do_not_call_field is not None:
        return _do_not_call_text(policies.do_not_call_field, ruleset)
    if policy_id == "quiet_hours" and policies.quiet_hours is not None:
        return _quiet_hours_text(policies.quiet_hours, ruleset)
    for cap in policies.frequency_caps:
        if cap.id == policy_id:
            return _cap_text(cap, ruleset)
    for suppression in policies.suppressions:
        if suppression.id == policy_id:
            return _suppression_text(suppression, ruleset)
    for constraint in policies.constraints:
        if constraint.id == policy_id:
            return _constraint_text(constraint, ruleset)
    return (
        f"There is no contact policy {value_text(policy_id)} in ruleset {ruleset.meta.name} "
        f"version {ruleset.meta.version}."
    )


def direction_text(direction: Direction) -> str:
    """A direction as a clause: who started the contact."""
    return "when the customer contacts us" if direction is Direction.INBOUND else "when we contact the customer"


def purpose_text(purpose: str) -> str:
    return f"the {_words(purpose)} purpose"


def _purposes_text(purposes: Iterable[str], conjunction: str) -> str:
    """Purposes as one phrase (the marketing or service purposes) rather than a purpose repeated per name."""
    names = [_words(p) for p in sorted(purposes)]
    return f"the {_listing(names, conjunction)} purpose{'s' if len(names) > 1 else ''}"


def _flag_condition(field_name: str, wanted: bool, ruleset: Ruleset) -> str:
    return condition_text(Condition(field_name, Op.EQ, (wanted,)), ruleset)


def _consent_text(consent: Consent, ruleset: Ruleset) -> str:
    if consent.purposes is None:
        what, none = "Nothing", "nothing"
    else:
        what = f"No action for {_purposes_text(consent.purposes, 'or')}"
        none = "none"
    where = channel_text(consent.channel)
    if consent.directions != frozenset(Direction):
        where += " " + " or ".join(direction_text(d) for d in sorted(consent.directions))
    return (
        f"{what} is offered on {where} unless {_flag_condition(consent.field, True, ruleset)}; "
        f"when this is not known, {none} is offered."
    )


def _do_not_call_text(field_name: str, ruleset: Ruleset) -> str:
    return (
        f"No call we make (the outbound dialer, or an agent calling out) offers anything unless "
        f"{_flag_condition(field_name, False, ruleset)}; when this is not known, nothing is offered."
    )


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _quiet_hours_text(quiet: QuietHours, ruleset: Ruleset) -> str:
    return (
        f"No call we make (the outbound dialer, or an agent calling out) offers anything from "
        f"{_clock(quiet.start_minute)} to {_clock(quiet.end_minute)} "
        f"in the customer's own time zone (taken from {_subject(quiet.timezone_field, ruleset)}, or "
        f"{value_text(quiet.default_timezone)} when that is missing or not a known time zone)."
    )


def _scope_noun(scoped: FrequencyCap | Constraint, many: bool, ruleset: Ruleset) -> str:
    """What a cap or constraint is about: one action, a category, a purpose or everything."""
    if scoped.action is not None:
        return f"{'offers' if many else 'offer'} of {_action_title(scoped.action, ruleset)}"
    if scoped.category is not None:
        return f"{category_text(scoped.category)} {'actions' if many else 'action'}"
    if scoped.purpose is not None:
        return f"{'actions' if many else 'action'} for {purpose_text(scoped.purpose)}"
    return f"{'actions' if many else 'action'} of any kind"


def _where(scoped: FrequencyCap | Constraint) -> str:
    where = "" if scoped.channel is None else f" on {channel_text(scoped.channel)}"
    return where if scoped.direction is None else f"{where}, {direction_text(scoped.direction)},"


def _in_scope(action: Action, scoped: FrequencyCap | Constraint) -> bool:
    if scoped.channel is not None and scoped.channel not in action.scripts:
        return False
    if scoped.action is not None:
        return action.id == scoped.action
    if scoped.category is not None:
        return action.category == scoped.category
    return scoped.purpose is None or action.purpose == scoped.purpose


def _mandatory_titles(ruleset: Ruleset, keep: Callable[[Action], bool]) -> list[str]:
    return [action_title(a) for a in ruleset.actions.values() if a.mandatory and keep(a)]


_OUTCOME_WORDS = {
    "accepted": "an acceptance",
    "declined": "a decline",
    "no_answer": "no answer",
    "converted": "a conversion",
    "callback_requested": "a callback request",
    "not_offered": "the action not offered",
    "not_now": "\u201cnot now\u201d",
}


def _constraint_text(constraint: Constraint, ruleset: Ruleset) -> str:
    outcomes = _listing([_OUTCOME_WORDS.get(o, _words(o)) for o in sorted(constraint.outcomes)], "or")
    contacts = "contacts"
    if constraint.direction is not None:
        contacts += " the customer started" if constraint.direction is Direction.INBOUND else " we started"
    channel = "" if constraint.channel is None else f" on {channel_text(constraint.channel)}"
    if constraint.action is not None:
        about, paused = (
            f" about {_action_title(constraint.action, ruleset)}",
            f"{_action_title(constraint.action, ruleset)} is",
        )
    elif constraint.category is None and constraint.purpose is None:
        about, paused = "", "every action is"
    else:
        noun = _scope_noun(constraint, True, ruleset)
        about, paused = f" about {noun}", f"{noun} are"
    when = "" if constraint.direction is None else f" {direction_text(constraint.direction)}"
    sentence = (
        f"Once {constraint.after:,} {contacts}{about}{channel} ended with {outcomes} within "
        f"{duration_text(constraint.within)}, {paused} paused{channel} for that customer{when} until fewer than "
        f"{constraint.after:,} remain in that window."
    )
    # One that names a mandatory notice is that notice's own repeat limit, and does hold it back.
    mandatory = _mandatory_titles(ruleset, lambda a: constraint.action is None and _in_scope(a, constraint))
    if mandatory:
        sentence += f" Mandatory notices are never paused: {_listing(mandatory, 'and')}."
    return _with_purpose(sentence, constraint.description)


def _cap_text(cap: FrequencyCap, ruleset: Ruleset) -> str:
    sentence = (
        f"No more than {cap.max:,} {_scope_noun(cap, cap.max != 1, ruleset)}{_where(cap)} within "
        f"{duration_text(cap.within)}, counting the contacts that reached the customer and the actions ranked "
        "higher in the same answer."
    )
    mandatory = _mandatory_titles(ruleset, lambda a: cap.action is None and _in_scope(a, cap))
    if mandatory:
        sentence += (
            f" Mandatory notices are never held back by it, though each one given counts towards it: "
            f"{_listing(mandatory, 'and')}."
        )
    return _with_purpose(sentence, cap.description)


def _with_purpose(sentence: str, description: str) -> str:
    purpose = description.strip()
    if not purpose:
        return sentence
    return f"{sentence} Purpose: {purpose}" + ("" if purpose.endswith((".", "!", "?")) else ".")


def _suppression_text(suppression: Suppression, ruleset: Ruleset) -> str:
    channels = [c for c in Channel if c in suppression.channels]
    where = "" if len(channels) == len(Channel) else f" on {_listing([channel_text(c) for c in channels], 'or')}"
    if suppression.directions != frozenset(Direction):
        where += " " + " or ".join(direction_text(d) for d in sorted(suppression.directions))
    categories = [category_text(c) for c in sorted(suppression.except_categories)]
    allowed = [f"{_listing(categories, 'and')} actions"] if categories else []
    if suppression.except_purposes:
        allowed.append(f"actions for {_purposes_text(suppression.except_purposes, 'and')}")
    outcome = f"only {_listing(allowed, 'and')} may be offered{where}" if allowed else f"nothing is offered{where}"
    sentence = f"{_when_clause(suppression.when, ruleset)} {outcome}."
    sentence = sentence[0].upper() + sentence[1:]

    def overrides(action: Action) -> bool:
        return (
            any(c in action.scripts for c in channels)
            and action.category not in suppression.except_categories
            and action.purpose not in suppression.except_purposes
        )

    mandatory = _mandatory_titles(ruleset, overrides)
    if mandatory:
        sentence += f" Mandatory notices are still offered: {_listing(mandatory, 'and')}."
    return _with_purpose(sentence, suppression.description)


# --- dropped candidates --------------------------------------------------------------------------------------

_LISTED = re.compile(r"listed \((\w+)")
_FOR_PURPOSE = re.compile(r" is not true for (\S+)$")
_CHOSEN_THROUGH = re.compile(r"already chosen through rule (\S+)")
_TOP = re.compile(r"below the top (\d+)")
_IN_DECISION = re.compile(r"(\d+) in the contact history and (\d+) already chosen")


def drop_text(dropped: DroppedCandidate, ruleset: Ruleset) -> str:
    """Why a candidate was not offered, naming in words the contact policy that stopped it."""
    action = ruleset.actions.get(dropped.action_id)
    title = _action_title(dropped.action_id, ruleset)
    lead = f"{title} (from rule {dropped.rule_id}) was not offered"
    reason = dropped.reason
    policy = f" The policy: {policy_text(ruleset, dropped.policy)}" if dropped.policy else ""
    if reason == "do_not_contact":
        listed = _LISTED.search(dropped.detail)
        why = f" ({listed.group(1).replace('_', ' ')})" if listed else ""
        return f"{lead}: the customer is listed as do-not-contact for this channel{why}.{policy}"
    if reason == "held_out":
        return (
            f"{lead}: the customer is in the holdout of this action (chosen at random, for measuring what the "
            "action adds), so it was recorded and not shown."
        )
    if reason == "constraint":
        return f"{lead}: it is paused for this customer after how earlier contacts ended.{policy}"
    if reason == "no_consent":
        purpose = _FOR_PURPOSE.search(dropped.detail)
        needs = f" for {purpose_text(purpose.group(1))}" if purpose else ""
        return f"{lead}: the customer has not given the consent this channel needs{needs}.{policy}"
    if reason == "do_not_call":
        return f"{lead}: the customer is on the do-not-call register, or that is not known.{policy}"
    if reason == "quiet_hours":
        return f"{lead}: it was inside the quiet hours for calls, in the customer's time zone.{policy}"
    if reason == "suppression":
        return f"{lead}: a suppression stops it for this customer.{policy}"
    if reason == "channel_fit":
        channel = next((c for c in Channel if dropped.detail.endswith(c.value)), None)
        where = "this channel" if channel is None else channel_text(channel)
        return f"{lead}: it has no script for {where}."
    if reason in ("missing_trigger", "expired_trigger"):
        trigger = action.trigger if action is not None else None
        event = event_text(trigger.event) if trigger is not None else "triggering event"
        if reason == "missing_trigger":
            return f"{lead}: there is no unexpired {event} for it to act on."
        lifetime = f" of {duration_text(trigger.lifetime)}" if trigger is not None else ""
        return f"{lead}: the newest {event} is older than the action's lifetime{lifetime}."
    if reason == "frequency_cap":
        if dropped.stage == "arbitration":
            counts = _IN_DECISION.search(dropped.detail)
            tally = ""
            if counts:
                past, chosen = int(counts.group(1)), int(counts.group(2))
                tally = f" ({_count(past, 'contact')} in the history, {chosen:,} chosen above it in this answer)"
            cap = "with the actions ranked above it in this answer, it would exceed a frequency cap"
            return f"{lead}: {cap}{tally}.{policy}"
        return f"{lead}: the customer's contact history has already reached a frequency cap.{policy}"
    if reason == "duplicate_action":
        through = _CHOSEN_THROUGH.search(dropped.detail)
        rule = f" through rule {through.group(1)}" if through else ""
        return f"{lead}: the same action was already chosen{rule}, at a higher rank."
    if reason == "ranked_out":
        top = _TOP.search(dropped.detail)
        room = f"the answer holds at most {_count(int(top.group(1)), 'action')}" if top else "the answer was full"
        return f"{lead}: {room} and higher-ranked actions filled it."
    detail = f" ({dropped.detail})" if dropped.detail else ""
    return f"{lead}: {_words(reason)}{detail}.{policy}"
