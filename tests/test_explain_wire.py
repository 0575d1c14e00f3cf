"""Values a rule read cross the wire as JSON text without loss (explain.proto says why JSON, not AttributeValue)."""

from __future__ import annotations

import json
import sys

import pytest

from nba_service._proto.nba.v1 import explain_pb2
from nba_service.transport.explanation import value_json

VALUES = [None, True, False, "retail", "naïve “quoted”", 0, -7, 2**70, -(2**64) - 1, 0.1, 48250.0, -0.0, 1e300, 5e-324]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_every_json_scalar_comes_back_exactly(value: object) -> None:
    """Through a serialized ExplainedCondition and back: the same value of the same type, bit for bit for
    floats (the smallest subnormal, -0.0), every digit for integers beyond sint64, null for a missing fact."""
    message = explain_pb2.ExplainedCondition(value_read_json=value_json(value))
    wire = explain_pb2.ExplainedCondition.FromString(message.SerializeToString())
    back = json.loads(wire.value_read_json)
    assert type(back) is type(value)
    assert back == value
    if isinstance(value, float):
        assert repr(back) == repr(value)
        assert back.hex() == value.hex()


def test_largest_float_survives() -> None:
    assert json.loads(value_json(sys.float_info.max)) == sys.float_info.max
