"""Renders an action's plain script for a channel.

Only the action's own text and an allow-list of harmless profile fields can reach a script, so raw
trigger data (amounts, countries, account numbers) cannot leak to an agent desktop or a dialer even
when a ruleset author tries: the loader rejects any other placeholder.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

from nba_service.domain.model import Action, Channel
from nba_service.domain.profile import AttributeValue

SCRIPT_FIELDS = frozenset({"first_name", "product_name"})
MAX_FIELD_LENGTH = 60
_FALLBACKS = {"first_name": "the customer", "product_name": "our account"}
_FORMATTER = string.Formatter()


def placeholders(text: str) -> list[str]:
    """The placeholder names in a script; raises ValueError naming the problem for malformed braces."""
    names: list[str] = []
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise ValueError(f"malformed braces in script ({exc}); write placeholders as {{first_name}}") from exc
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or spec or conversion:
            raise ValueError(f"placeholder {{{name}}} must be a bare field name such as {{first_name}}")
        names.append(name)
    return names


def _clean(value: AttributeValue) -> str | None:
    """Keeps a field only if it reads as a short name: letters, spaces and light punctuation, no digits."""
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    if not text or len(text) > MAX_FIELD_LENGTH:
        return None
    if any(ch.isdigit() or ch in "{}<>@/\\" or not ch.isprintable() for ch in text):
        return None
    return text


def render(action: Action, channel: Channel, attributes: Mapping[str, AttributeValue]) -> str:
    text = action.scripts[channel]
    values = {}
    for name in placeholders(text):
        cleaned = _clean(attributes.get(name))
        values[name] = cleaned if cleaned is not None else _FALLBACKS.get(name, "")
    return text.format_map(values) if values else text
