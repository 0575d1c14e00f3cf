"""What arrives on the wire is checked here, before any handler or the service sees it.

Two kinds of request never reach the service. Bytes that do not decode as the method's message (truncated,
or a string field that is not UTF-8): grpcio would answer those UNKNOWN with Python exception names, so the
deserializer hands the handler a marker instead and the edge answers INVALID_ARGUMENT. And text the stores
cannot keep: PostgreSQL refuses NUL in text and jsonb, and no UTF-8 store can hold an unpaired surrogate. The
text check walks any message generically, so a new RPC or field is covered without anyone adding a check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from nba_service.errors import Problems

M = TypeVar("M", bound=Message)
_SHOWN_KEY = 64  # as the service shows map keys in field paths


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands in for a request whose bytes did not decode; the edge answers it with INVALID_ARGUMENT."""

    message_type: str
    bad_utf8: bool

    @property
    def problem(self) -> str:
        why = "a string field is not valid UTF-8" if self.bad_utf8 else "the bytes are truncated or malformed"
        return f"the request could not be decoded as {self.message_type}: {why}"


def lenient_deserializer(message_class: type[M]) -> Callable[[bytes], M | Undecodable]:
    """A request deserializer that never raises: an exception here would reach the caller as UNKNOWN."""
    name = message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> M | Undecodable:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Undecodable(name, "UTF-8" in str(exc))

    return deserialize


def text_problem(text: str) -> str | None:
    """Why a store could not keep this text, or None when it can."""
    found: list[str] = []
    if "\x00" in text:
        found.append("a NUL character (\\x00)")
    if not text.isascii():
        surrogates = sorted({f"U+{ord(c):04X}" for c in text if 0xD800 <= ord(c) <= 0xDFFF})
        if surrogates:
            found.append(f"an unpaired surrogate ({', '.join(surrogates[:3])})")
    return f"contains {' and '.join(found)}, which cannot be stored" if found else None


def check_storable_text(message: Message, problems: Problems, prefix: str = "") -> None:
    """Adds a problem for every string in `message` (nested messages, maps, repeated fields) a store cannot
    keep, each with its field path as the service names fields (`context.attributes[queue]`)."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                entry = f"{path}[{shown_key(key)}]"
                if isinstance(key, str) and (problem := text_problem(key)) is not None:
                    problems.add(entry, f"the key {problem}")
                _check_value(value_field, item, entry, problems)
        elif field.is_repeated:
            for index, item in enumerate(value):
                _check_value(field, item, f"{path}[{index}]", problems)
        else:
            _check_value(field, value, path, problems)


def _check_value(field: FieldDescriptor, value: Any, path: str, problems: Problems) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        check_storable_text(value, problems, f"{path}.")
    elif field.type == FieldDescriptor.TYPE_STRING and (problem := text_problem(value)) is not None:
        problems.add(path, problem)


def shown_key(key: object) -> str:
    """A map key as it can appear in a field path: cut short, with what cannot be stored escaped."""
    if not isinstance(key, str):
        return str(key)
    return "".join(
        f"\\x{ord(c):02x}" if c == "\x00" else f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c
        for c in key[:_SHOWN_KEY]
    )
