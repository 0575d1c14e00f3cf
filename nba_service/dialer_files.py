"""The files dialers load and give back: call lists in three layouts, and disposition files turned into outcomes.

Pure (rows in, rows out), so every layout is tested without a server. The layouts:

- `generic`: CSV with a header, the columns in `GENERIC_COLUMNS` (documented in adapters/README.md).
- `genesys`: a Genesys Cloud contact list (CSV with a header). Genesys lets the importer name the columns; a
  phone column (`Phone`, with its type in `PhoneType`) and a callable-time column holding IANA zone names
  (`TimeZone`) are designated when the list is created, and `IdempotencyKey` is the column to deduplicate on.
- `vicidial`: VICIdial's lead loader. Tab-delimited; the 25 standard fields in the loader's fixed order
  (vendor_lead_code, source_id, list_id, phone_code, phone_number, ... comments, rank, owner) followed by custom
  fields (`nba_*`), with a header row naming them for the loader's field mapping. The number is split into the
  country calling code (`phone_code`) and the national number, as VICIdial dials them.

Sources for the two vendor layouts: VICIdial's `admin_listloader_fourth_gen.php` (the standard field order) and
its default statuses (NA, B, A, DC, SALE, NI, CALLBK ...); Genesys Cloud's contact list and contact-list export
documentation (phone columns with types, callable-time columns, `CallRecordLastResult-<column>` with
`ININ-OUTBOUND-*` call analysis results, the agent's wrap-up code for connected calls). Check the codes against
your own organisation's configuration before the first import.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

import phonenumbers

from nba_service.domain.contact_points import e164_problem
from nba_service.domain.profile import OutcomeKind

GENERIC_COLUMNS = (
    "phone",
    "phone_type",
    "customer_id",
    "time_zone",
    "earliest_local",
    "latest_local",
    "priority",
    "action_id",
    "script",
    "decision_id",
    "expires_at",
    "idempotency_key",
)
GENESYS_COLUMNS = (
    "Phone",
    "PhoneType",
    "CustomerId",
    "TimeZone",
    "CallableFrom",
    "CallableUntil",
    "Priority",
    "ActionId",
    "Script",
    "DecisionId",
    "ExpiresAt",
    "IdempotencyKey",
)
VICIDIAL_STANDARD = (
    "vendor_lead_code",
    "source_id",
    "list_id",
    "phone_code",
    "phone_number",
    "title",
    "first_name",
    "middle_initial",
    "last_name",
    "address1",
    "address2",
    "address3",
    "city",
    "state",
    "province",
    "postal_code",
    "country_code",
    "gender",
    "date_of_birth",
    "alt_phone",
    "email",
    "security_phrase",
    "comments",
    "rank",
    "owner",
)
VICIDIAL_CUSTOM = ("nba_action_id", "nba_time_zone", "nba_call_from", "nba_call_until", "nba_expires_at")
VICIDIAL_COLUMNS = VICIDIAL_STANDARD + VICIDIAL_CUSTOM
# VICIdial's column widths that our values could exceed (vicidial_list): refused rather than cut by MySQL.
_VICIDIAL_WIDTHS = {"vendor_lead_code": 20, "source_id": 50, "security_phrase": 100, "comments": 255}
EXCLUDED_COLUMNS = ("customer_id", "reason", "detail", "decision_id")
FORMATS = ("generic", "genesys", "vicidial")


@dataclass(frozen=True, slots=True)
class CallRow:
    """One call as the server streamed it, in the terms every layout is made from."""

    phone: str
    phone_type: str
    customer_id: str
    time_zone: str
    earliest_local: str
    latest_local: str
    priority: int
    action_id: str
    script: str
    decision_id: str
    expires_at: str
    idempotency_key: str


def header(layout: str) -> tuple[str, ...]:
    return {"generic": GENERIC_COLUMNS, "genesys": GENESYS_COLUMNS, "vicidial": VICIDIAL_COLUMNS}[layout]


def delimiter(layout: str) -> str:
    return "\t" if layout == "vicidial" else ","


def call_line(layout: str, row: CallRow, *, list_id: int = 999) -> list[str]:
    """The row's fields in the layout's column order; raises ValueError when a vendor cannot hold a value."""
    if layout in ("generic", "genesys"):
        return [
            row.phone,
            row.phone_type,
            row.customer_id,
            row.time_zone,
            row.earliest_local,
            row.latest_local,
            str(row.priority),
            row.action_id,
            row.script,
            row.decision_id,
            row.expires_at,
            row.idempotency_key,
        ]
    code, national = split_number(row.phone)
    fields = dict.fromkeys(VICIDIAL_COLUMNS, "")
    fields.update(
        vendor_lead_code=row.customer_id,
        source_id=row.decision_id,
        list_id=str(list_id),
        phone_code=code,
        phone_number=national,
        security_phrase=row.idempotency_key,
        comments=row.script,
        rank=str(row.priority),
        nba_action_id=row.action_id,
        nba_time_zone=row.time_zone,
        nba_call_from=row.earliest_local,
        nba_call_until=row.latest_local,
        nba_expires_at=row.expires_at,
    )
    for name, width in _VICIDIAL_WIDTHS.items():
        if len(fields[name]) > width:
            raise ValueError(
                f"{row.customer_id}: VICIdial's {name} holds {width} characters, the value has {len(fields[name])}"
            )
    if any("\t" in value or "\n" in value for value in fields.values()):
        raise ValueError(f"{row.customer_id}: a tab or line break would break VICIdial's tab-delimited file")
    return [fields[name] for name in VICIDIAL_COLUMNS]


def split_number(number: str) -> tuple[str, str]:
    """E.164 into (country calling code, national number), as VICIdial's phone_code and phone_number."""
    parsed = phonenumbers.parse(number)
    return str(parsed.country_code), str(parsed.national_number)


# ------------------------------------------------------------------ dispositions


class Disposition(enum.StrEnum):
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    ANSWERING_MACHINE = "answering_machine"
    WRONG_NUMBER = "wrong_number"
    CONNECTED = "connected"


# What each disposition records: the outcome kind and the note that says which disposition it was. A wrong number
# is NOT_OFFERED (the customer never heard the offer) and also marks the number (see RecordOutcome.wrong_number).
_UNREACHED = {
    Disposition.NO_ANSWER: (OutcomeKind.NO_ANSWER, "no answer"),
    Disposition.BUSY: (OutcomeKind.NO_ANSWER, "busy"),
    Disposition.ANSWERING_MACHINE: (OutcomeKind.NO_ANSWER, "answering machine"),
    Disposition.WRONG_NUMBER: (OutcomeKind.NOT_OFFERED, "wrong number"),
}
_CONNECTED_OUTCOMES = {
    "accepted": OutcomeKind.ACCEPTED,
    "declined": OutcomeKind.DECLINED,
    "converted": OutcomeKind.CONVERTED,
    "callback_requested": OutcomeKind.CALLBACK_REQUESTED,
    "not_offered": OutcomeKind.NOT_OFFERED,
    # Heard the offer and asked to come back to it later: a contact for caps, not a decline.
    "not_now": OutcomeKind.NOT_NOW,
}
# VICIdial's default statuses, and NOTNOW: not a default, a status to create for "heard it, not now" (VICIdial's
# CALLBK is a scheduled callback of the call itself, recorded as callback_requested).
_VICIDIAL_STATUSES: dict[str, tuple[Disposition, str]] = {
    **dict.fromkeys(("NA", "N"), (Disposition.NO_ANSWER, "")),
    **dict.fromkeys(("B", "AB"), (Disposition.BUSY, "")),
    **dict.fromkeys(("A", "AA", "AM", "AL"), (Disposition.ANSWERING_MACHINE, "")),
    **dict.fromkeys(("DC", "ADC"), (Disposition.WRONG_NUMBER, "")),
    "SALE": (Disposition.CONNECTED, "converted"),
    "NI": (Disposition.CONNECTED, "declined"),
    "DEC": (Disposition.CONNECTED, "declined"),
    "CALLBK": (Disposition.CONNECTED, "callback_requested"),
    "CBHOLD": (Disposition.CONNECTED, "callback_requested"),
    "NOTNOW": (Disposition.CONNECTED, "not_now"),
}
# Genesys Cloud call analysis results; a connected call carries the agent's wrap-up code, which an administrator
# names after the outcome (Accepted, Declined, Converted, Callback Requested, Not Offered, Not Now).
_GENESYS_RESULTS: dict[str, Disposition] = {
    "ININ-OUTBOUND-NO-ANSWER": Disposition.NO_ANSWER,
    "ININ-OUTBOUND-BUSY": Disposition.BUSY,
    "ININ-OUTBOUND-MACHINE": Disposition.ANSWERING_MACHINE,
    "ININ-OUTBOUND-SIT-UNCALLABLE": Disposition.WRONG_NUMBER,
    "ININ-OUTBOUND-NUMBER_COULD_NOT_BE_DIALED": Disposition.WRONG_NUMBER,
}
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")
_DECISION_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MAX_NOTE = 500


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    """One disposition as an outcome to record; `line` is its line in the file (1 is the header)."""

    line: int
    decision_id: str
    action_id: str
    outcome: OutcomeKind
    time: datetime
    note: str
    wrong_number: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class Refusal:
    line: int
    problem: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.problem}"


# Per layout: the columns a disposition file must have, and the names our fields go by.
_RESULT_COLUMNS: dict[str, dict[str, str]] = {
    "generic": {"decision_id": "decision_id", "action_id": "action_id", "phone": "phone", "time": "time"},
    "genesys": {
        "decision_id": "DecisionId",
        "action_id": "ActionId",
        "phone": "Phone",
        "time": "CallRecordLastAttempt-Phone",
        "result": "CallRecordLastResult-Phone",
    },
    "vicidial": {
        "decision_id": "source_id",
        "action_id": "nba_action_id",
        "phone_code": "phone_code",
        "phone": "phone_number",
        "time": "call_date",
        "status": "status",
    },
}


def missing_columns(layout: str, names: Sequence[str]) -> list[str]:
    wanted = list(_RESULT_COLUMNS[layout].values())
    if layout == "generic":
        wanted.append("disposition")
    return [name for name in wanted if name not in names]


def parse_dispositions(
    layout: str, rows: Iterator[tuple[int, Mapping[Any, Any]]], zone: tzinfo
) -> tuple[list[OutcomeRow], list[Refusal]]:
    """Every row as an outcome, or every problem with its line: all of them, so one pass shows the whole file's
    problems. `zone` reads times written without an offset (VICIdial writes its server's local time)."""
    found: list[OutcomeRow] = []
    refused: list[Refusal] = []
    columns = _RESULT_COLUMNS[layout]
    for line, raw in rows:
        if None in raw:
            refused.append(Refusal(line, "more fields than the header names"))
            continue
        row: dict[str, str] = {k: v.strip() for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}
        problems: list[str] = []
        decision_id = row.get(columns["decision_id"], "")
        action_id = row.get(columns["action_id"], "")
        if not _DECISION_ID.fullmatch(decision_id):
            problems.append(f"{columns['decision_id']} {decision_id[:40]!r} is not a decision id from an export")
        if not action_id or len(action_id) > 64:
            problems.append(f"{columns['action_id']} is missing or longer than 64 characters")
        phone = row.get(columns["phone"], "")
        if layout == "vicidial" and phone:
            phone = f"+{row.get(columns['phone_code'], '')}{phone}"
        moment = _moment(row.get(columns["time"], ""), zone)
        if moment is None:
            problems.append(f"{columns['time']} {row.get(columns['time'], '')[:40]!r} is not an ISO 8601 time")
        disposition, outcome_text, problem = _disposition(layout, row)
        if problem:
            problems.append(problem)
        if disposition is Disposition.WRONG_NUMBER and (why := e164_problem(phone)) is not None:
            problems.append(f"a wrong number needs the number dialled: {columns['phone']} {why}")
        note = row.get("note", "")
        if len(note) > MAX_NOTE:
            problems.append(f"note is longer than {MAX_NOTE} characters")
        if problems or disposition is None or moment is None:
            refused.append(Refusal(line, "; ".join(problems)))
            continue
        if disposition is Disposition.CONNECTED:
            kind, said = _CONNECTED_OUTCOMES[outcome_text], f"connected: {outcome_text}"
        else:
            kind, said = _UNREACHED[disposition]
        key = outcome_key(decision_id, action_id, disposition, outcome_text, moment, phone)
        wrong = phone if disposition is Disposition.WRONG_NUMBER else ""
        found.append(OutcomeRow(line, decision_id.lower(), action_id, kind, moment, note or said, wrong, key))
    return found, refused


def _disposition(layout: str, row: Mapping[str, str]) -> tuple[Disposition | None, str, str]:
    """(disposition, outcome of a connected call, problem)."""
    if layout == "generic":
        text, outcome = row.get("disposition", ""), row.get("outcome", "")
        try:
            disposition = Disposition(text)
        except ValueError:
            return None, "", f"disposition {text[:40]!r} is not one of {', '.join(Disposition)}"
        if disposition is Disposition.CONNECTED and outcome not in _CONNECTED_OUTCOMES:
            return None, "", f"a connected call needs an outcome, one of {', '.join(_CONNECTED_OUTCOMES)}"
        if disposition is not Disposition.CONNECTED and outcome:
            return None, "", f"only a connected call has an outcome (disposition {text})"
        return disposition, outcome, ""
    if layout == "vicidial":
        status = row.get("status", "")
        if status not in _VICIDIAL_STATUSES:
            known = ", ".join(_VICIDIAL_STATUSES)
            return None, "", f"status {status[:40]!r} is not a status this import maps (known: {known})"
        disposition, outcome = _VICIDIAL_STATUSES[status]
        return disposition, outcome, ""
    result = row.get("CallRecordLastResult-Phone", "")
    if result in _GENESYS_RESULTS:
        return _GENESYS_RESULTS[result], "", ""
    wrapup = result.lower().replace(" ", "_")
    if wrapup in _CONNECTED_OUTCOMES:
        return Disposition.CONNECTED, wrapup, ""
    known = ", ".join([*_GENESYS_RESULTS, "or a wrap-up code named after an outcome (Accepted, Declined, ...)"])
    return None, "", f"result {result[:40]!r} is not one this import maps ({known})"


def _moment(text: str, zone: tzinfo) -> datetime | None:
    if not _ISO.fullmatch(text):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def outcome_key(
    decision_id: str, action_id: str, disposition: Disposition, outcome: str, moment: datetime, phone: str
) -> str:
    """The same for the same row, whichever file it comes in again with: what makes an import idempotent."""
    text = "\x1f".join(
        (decision_id.lower(), action_id, disposition.value, outcome, moment.astimezone(UTC).isoformat(), phone)
    )
    return "dsp1-" + hashlib.sha256(text.encode()).hexdigest()[:32]
