"""Who is held out of an action: decided and recorded as usual, not shown, so that what the action adds can be
measured against customers who were eligible and did not get it.

Assignment is a hash of the programme's seed, the customer, the action and the current period, and of nothing
the rules read: it is random with respect to every profile field, stable for a customer and action for the
whole period (a held-out customer does not see the action on their next call either), and the same on every
process and every replay of the decision.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from nba_service.domain.model import Action, Holdouts

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SCALE = float(1 << 64)


def period_index(holdouts: Holdouts, now: datetime) -> int:
    return int((now - _EPOCH) // holdouts.period)


def draw(holdouts: Holdouts, customer_id: str, action_id: str, now: datetime) -> float:
    """A number in [0, 1), uniform over customers, fixed for one customer and action within a period."""
    key = "\0".join((holdouts.seed, customer_id, action_id, str(period_index(holdouts, now))))
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def is_held_out(holdouts: Holdouts, customer_id: str, action: Action, now: datetime) -> bool:
    return action.holdout > 0 and draw(holdouts, customer_id, action.id, now) < action.holdout


def period_end(holdouts: Holdouts, now: datetime) -> datetime:
    return _EPOCH + holdouts.period * (period_index(holdouts, now) + 1)
