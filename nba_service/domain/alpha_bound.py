"""The alpha network durable_rules builds for one engine ruleset, and a proven bound on its stack.

Pure: no engine import. The compiler packs rules into as few engine rulesets ("partitions") as this
bound allows, because every partition costs one assertion per decision.

What the engine does (src/rules/rete.c and events.c of durable_rules 2.0.28, read for this module):

- Building (`createAlpha`, `findAlpha`): each engine rule `{"m":{"$and":[t1, t2, ...]}}` becomes a chain
  of alpha nodes under the ruleset's root `m` node, one node per test, in the given order. A test is
  shared with an existing child of the same parent when the property-name hash, the operator and the
  constant agree (`compareValue`: strings byte for byte, doubles and integers by value, so `0.0` and
  `-0.0` share). The alpha network is therefore a trie of the test sequences, and each node has one
  parent. Children live in a 512-slot open-addressing table keyed by property (`NEXT_BUCKET_LENGTH`;
  `findAlpha` loops forever once it is full), `$nex` children in a zero-terminated list of 128
  (`NEXT_LIST_LENGTH`), and the rules ending at a node in a zero-terminated list of 256
  (`BETA_LIST_LENGTH`, error 108 past it).
- Asserting (`handleAlpha`): a depth-first walk with an explicit stack of `MAX_STACK_SIZE` (64) entries,
  starting with the root. It pops a node, then pushes each `$nex` child whose property the fact lacks,
  and each other child whose property the fact has and whose test holds. A push onto a full stack
  returns error 303 and the assertion fails.

The bound. When node x is expanded, everything on the stack is a child of a node on the path
root = x0, x1, ..., xd = x that was pushed and not yet popped (a depth-first stack holds nothing else),
and each x(i+1) was pushed by x(i) and already popped. So the stack never holds more than
`sum(width(x(i)) for i in 0..d) - d` entries, where width(x) is the most children of x that one fact can
make hold at once. Widths add up over properties, because a child tests one property; for one property:
- absent, only its `$nex` child is pushed (at most one: identical tests share a node);
- present, the fact carries one value of the field's declared type (numbers as doubles, strings as our
  injective codes, booleans as 1 or 0: `facts.normalise` and the encoders guarantee it, and a
  message never repeats a key), so the most tests that can hold together is the largest count over
  every value. For numbers that maximum is found among each constant and the open gaps just below
  and above it (between two neighbouring constants every value passes the same tests; where no double
  lies in a gap the count only over-estimates); for strings among each constant and "any other
  string"; for booleans among 1 and 0. So `x == 1`, `x == 2`, ... count once, while `x > 1`, `x > 2`,
  ... count every one, and `x < 5` never counts together with `x > 9`.
The widths are maxima over values taken independently per node, so the sum is an upper bound whatever
the fact and whatever the order of its keys (the order only changes which partial match is pushed
first). A partition is accepted only if the bound over every path is at most 64, which is what the
engine's check `top == MAX_STACK_SIZE` (before each push) allows. The bound never exceeds the number of
nodes, so a partition that the old "at most 60 tests in total" rule accepted is accepted here too.

The other limits are counted on the same trie: hashed children per node, `$nex` children per node,
rules ending at one node, properties per message and rules per partition, each with a margin.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from nba_service.domain.model import Op

STACK_LIMIT = 64  # MAX_STACK_SIZE in src/rules/events.c: a push onto 64 entries fails with 303
MAX_HASHED_CHILDREN = 255  # of NEXT_BUCKET_LENGTH 512 slots: findAlpha spins forever on a full table
MAX_ABSENT_CHILDREN = 100  # NEXT_LIST_LENGTH 128, zero-terminated (error 107)
MAX_RULES_PER_NODE = 200  # BETA_LIST_LENGTH 256, zero-terminated (error 108)
MAX_KEYS = 200  # MAX_OBJECT_PROPERTIES 255 in src/rules/state.h, less id, sid and the guard (error 302)
MAX_RULES = 1000  # MAX_ACTIONS 4096 in src/rules/rete.c

_Ident = tuple[str, Op, object]


class TestLike(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def op(self) -> Op: ...
    @property
    def constant(self) -> str | None: ...


class AlphaNode:
    """One alpha node: its children by (key, operator, constant as compared) and its width."""

    __slots__ = ("children", "ends", "width", "widths")

    def __init__(self) -> None:
        self.children: dict[_Ident, AlphaNode] = {}
        self.widths: dict[str, int] = {}
        self.width = 0
        self.ends = 0


def _value(field_type: str, test: TestLike) -> object:
    """The constant as the engine compares it: doubles by value (so -0.0 is 0.0), codes and 1/0 as they are."""
    if test.constant is None:
        return None
    if field_type == "number":
        return float(test.constant)
    return test.constant


def _count(ordered: list[float], value: float) -> tuple[int, int, int]:
    """How many of `ordered` are below, equal to and above `value`."""
    low = bisect.bisect_left(ordered, value)
    high = bisect.bisect_right(ordered, value)
    return low, high - low, len(ordered) - high


def _number_width(tests: Sequence[tuple[Op, object]]) -> int:
    by_op: dict[Op, list[float]] = {op: [] for op in (Op.EQ, Op.NE, Op.LT, Op.LTE, Op.GT, Op.GTE)}
    exists = 0
    for op, value in tests:
        if op is Op.EXISTS:
            exists += 1
        else:
            by_op[op].append(float(value))  # type: ignore[arg-type]
    for values in by_op.values():
        values.sort()
    constants = {v for values in by_op.values() for v in values} or {0.0}
    best = 0
    for x in constants:
        counts = {op: _count(values, x) for op, values in by_op.items()}
        for side in (-1, 0, 1):  # just below x, x itself, just above x
            below, equal, above = counts[Op.LT]
            n = exists + above + (equal if side < 0 else 0)
            below, equal, above = counts[Op.LTE]
            n += above + (equal if side <= 0 else 0)
            below, equal, above = counts[Op.GT]
            n += below + (equal if side > 0 else 0)
            below, equal, above = counts[Op.GTE]
            n += below + (equal if side >= 0 else 0)
            n += counts[Op.EQ][1] if side == 0 else 0
            n += len(by_op[Op.NE]) - (counts[Op.NE][1] if side == 0 else 0)
            best = max(best, n)
    return best


_OTHER = object()


def _discrete_width(tests: Sequence[tuple[Op, object]], field_type: str) -> int:
    equal = [v for op, v in tests if op is Op.EQ]
    unequal = [v for op, v in tests if op is Op.NE]
    exists = sum(1 for op, _ in tests if op is Op.EXISTS)
    values: list[object] = ["1", "0"] if field_type == "boolean" else [*equal, *unequal, _OTHER]
    return max(exists + equal.count(v) + len(unequal) - unequal.count(v) for v in values)


def group_width(field_type: str, tests: Sequence[tuple[Op, object]], absent_test: bool) -> int:
    """The most children on one property that one fact can push: `tests` are the present-value tests."""
    present = 0
    if tests:
        present = _number_width(tests) if field_type == "number" else _discrete_width(tests, field_type)
    return max(present, 1 if absent_test else 0)


class AlphaNetwork:
    """The trie of one partition's engine rules (after the guard test), grown one rule at a time."""

    def __init__(self, key_types: Mapping[str, str]) -> None:
        self._types = key_types
        self.guard = AlphaNode()
        self.keys: set[str] = set()
        self.rules = 0

    def add(self, branches: Sequence[Sequence[TestLike]]) -> bool:
        """Adds one rule's engine rules if every limit still holds afterwards; otherwise changes nothing."""
        created: list[tuple[AlphaNode, _Ident]] = []
        ended: list[AlphaNode] = []
        touched: dict[tuple[int, str], tuple[AlphaNode, str]] = {}
        new_keys = {t.key for tests in branches for t in tests} - self.keys
        for tests in branches:
            node = self.guard
            for test in tests:
                ident = (test.key, test.op, _value(self._types[test.key], test))
                child = node.children.get(ident)
                if child is None:
                    child = node.children[ident] = AlphaNode()
                    created.append((node, ident))
                    touched[id(node), test.key] = (node, test.key)
                node = child
            node.ends += 1
            ended.append(node)
        self.keys |= new_keys
        self.rules += len(branches)
        self._refresh(touched.values())
        if self._within_limits({id(n): n for n, _ in touched.values()}.values(), ended) and self.bound() <= STACK_LIMIT:
            return True
        for node, ident in reversed(created):
            del node.children[ident]
        for node in ended:
            node.ends -= 1
        self.keys -= new_keys
        self.rules -= len(branches)
        self._refresh(touched.values())
        return False

    def _refresh(self, groups: Iterable[tuple[AlphaNode, str]]) -> None:
        for node, key in groups:
            tests = [(op, value) for (k, op, value) in node.children if k == key and op is not Op.MISSING]
            absent = (key, Op.MISSING, None) in node.children
            if tests or absent:
                node.widths[key] = group_width(self._types[key], tests, absent)
            else:
                node.widths.pop(key, None)
            node.width = sum(node.widths.values())

    def _within_limits(self, parents: Iterable[AlphaNode], ended: Iterable[AlphaNode]) -> bool:
        if len(self.keys) > MAX_KEYS or self.rules > MAX_RULES:
            return False
        if any(node.ends > MAX_RULES_PER_NODE for node in ended):
            return False
        for node in parents:
            absent = sum(1 for (_, op, _) in node.children if op is Op.MISSING)
            if absent > MAX_ABSENT_CHILDREN or len(node.children) - absent > MAX_HASHED_CHILDREN:
                return False
        return True

    def bound(self) -> int:
        """The most entries the engine's stack can hold while asserting any fact into this partition.

        The walk starts with the root `m` node, whose only child is the guard test every rule starts with:
        expanding the root leaves the guard alone on the stack (1), expanding the guard leaves its width.
        """
        best = 1
        pending = [(self.guard, self.guard.width)]
        while pending:
            node, depth_sum = pending.pop()
            best = max(best, depth_sum)
            pending.extend((child, depth_sum - 1 + child.width) for child in node.children.values())
        return best
