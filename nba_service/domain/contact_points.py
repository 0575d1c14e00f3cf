"""A customer's phone numbers, as every store returns them and every write path checks them.

A number is kept in E.164 (`+`, then 8 to 15 digits, the first not 0) and nothing else: a strict shape the
stores also enforce with a CHECK, so no writer (the seed, the sample, another system writing the shared
PostgreSQL store) can leave a number a dialer would misdial. Whether a number exists in its country's
numbering plan is deliberately not judged here: plans change monthly, a dialer or carrier knows better, and a
number that turns out wrong comes back as a `wrong_number` disposition, which marks it so it is never exported
again (see `PhoneNumber.wrong_number`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Used with fullmatch only (`$` would let a final newline through).
E164 = re.compile(r"\+[1-9][0-9]{7,14}")
MAX_PHONES = 10


class PhoneType(enum.StrEnum):
    MOBILE = "mobile"
    HOME = "home"
    WORK = "work"


@dataclass(frozen=True, slots=True)
class PhoneNumber:
    """One contact point. `consent` is the customer's permission to be called on this number (on top of the
    channel's consent attribute); `wrong_number` is set when a dialer reported that the number does not reach
    the customer. The consent is left as the customer gave it: a wrong number says nothing about their wishes."""

    number: str
    type: PhoneType
    consent: bool
    wrong_number: bool = False

    @property
    def callable(self) -> bool:
        return self.consent and not self.wrong_number


def e164_problem(number: object) -> str | None:
    """What is wrong with `number` as a stored phone number, or None."""
    if not isinstance(number, str):
        return f"must be text in E.164, got {type(number).__name__}"
    if not E164.fullmatch(number):
        shown = number if len(number) <= 32 else number[:32] + "..."
        return f"{shown!r} is not E.164: '+' then 8 to 15 digits, the first not 0, no spaces (e.g. +447700900123)"
    return None


def phone_problems(phones: Sequence[PhoneNumber]) -> list[str]:
    """Every problem of a customer's list of numbers, each naming its position (`phones[1]: ...`)."""
    problems: list[str] = []
    if len(phones) > MAX_PHONES:
        problems.append(f"phones: at most {MAX_PHONES} numbers per customer, got {len(phones)}")
    seen: set[str] = set()
    for index, phone in enumerate(phones):
        problem = e164_problem(phone.number)
        if problem is not None:
            problems.append(f"phones[{index}]: {problem}")
        elif phone.number in seen:
            problems.append(f"phones[{index}]: {phone.number} is listed twice")
        seen.add(phone.number)
        if not isinstance(phone.type, PhoneType):
            problems.append(f"phones[{index}]: type must be one of {', '.join(PhoneType)}")
        if not isinstance(phone.consent, bool) or not isinstance(phone.wrong_number, bool):
            problems.append(f"phones[{index}]: consent and wrong_number must be booleans")
    return problems


def phone_from_json(data: object, where: str) -> PhoneNumber:
    """A number from its JSON form (sample files, decision records); raises ValueError naming `where`."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a phone number must be an object")
    number = data.get("number")
    problem = e164_problem(number)
    if problem is not None:
        raise ValueError(f"{where}.number: {problem}")
    try:
        kind = PhoneType(str(data.get("type")))
    except ValueError as exc:
        raise ValueError(f"{where}.type: must be one of {', '.join(PhoneType)}") from exc
    consent, wrong = data.get("consent"), data.get("wrong_number", False)
    if not isinstance(consent, bool) or not isinstance(wrong, bool):
        raise ValueError(f"{where}: consent and wrong_number must be booleans")
    assert isinstance(number, str)  # e164_problem is None only for text
    return PhoneNumber(number, kind, consent, wrong)


def phone_to_json(phone: PhoneNumber) -> dict[str, object]:
    return {
        "number": phone.number,
        "type": phone.type.value,
        "consent": phone.consent,
        "wrong_number": phone.wrong_number,
    }
