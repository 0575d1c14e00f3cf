"""The fast JSON of records and profiles gives exactly what the standard library gives, over every kind of value."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nba_service import json_text
from nba_service.domain.model import Channel

_STANDARD = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode

EDGE_INTS = [0, -1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, -(2**64)]
EDGE_INTS += [10**40, -(10**300)]
EDGE_FLOATS = [0.0, -0.0, 5e-324, -5e-324, 1e-4, 9.999e-5, 1e16, 9999999999999998.0, 1.7976931348623157e308, 0.1, 1 / 3]
EDGE_TEXT = ["", "\x00", "\ud800", "a\udfffb", "\U0001f600", "é", '"\\/', "\u2028\u2029", "1234567890123456789"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(EDGE_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(EDGE_FLOATS),
    st.text(),
    st.sampled_from(EDGE_TEXT),
    st.sampled_from(list(Channel)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(EDGE_TEXT)), inner, max_size=5),
    ),
    max_leaves=30,
)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down: 1 is not 1.0 here, nor -0.0 0.0; NaN is NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=600)
@given(values)
def test_dumps_writes_what_the_standard_library_writes(value: Any) -> None:
    assert same(json.loads(json_text.dumps(value)), json.loads(_STANDARD(value)))


@settings(max_examples=600)
@given(values, st.booleans())
def test_loads_reads_what_the_standard_library_reads(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert same(json_text.loads(text), json.loads(text))
    if "\ud800" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert same(json_text.loads(text.encode()), json.loads(text))


def test_the_values_orjson_alone_would_get_wrong() -> None:
    # Read as floats, refused, or written as null by orjson; each as the standard library has it.
    for text in ["123456789012345678901234567890", "-9223372036854775809", "18446744073709551616", "[NaN]",
                 "[Infinity,-Infinity]", "1e400", '"\\ud800"', '{"a":"12345678901234567890"}']:  # fmt: skip
        assert same(json_text.loads(text), json.loads(text)), text
    for value in [2**64, -(2**63) - 1, {"k": 10**30}, "\ud800", {1: "a"}, [1, {2: 3}]]:
        assert json_text.dumps(value) == _STANDARD(value)


def test_datetimes_uuids_and_enums_as_the_standard_library_has_them() -> None:
    moment = datetime(2026, 12, 5, 4, 30, 1, 250, tzinfo=UTC)
    value = {
        "at": moment,
        "local": moment.astimezone(timezone(timedelta(hours=-5))),
        "id": uuid.UUID(int=7),
        "channel": Channel.OUTBOUND_DIALER,
    }
    assert json_text.dumps(value) == _STANDARD(value)
