"""The only module that imports durable_rules.

It drives the C module `durable_rules_engine` directly, never `durable.lang` or `durable.engine.Host`:
those start background timer threads that race our own calls on the engine's global state, pay a
Python callback and a JSON parse per match, and raise for the normal "no match" outcome.

The recipe, from ../shared/notes/durable-rules.md:
- facts, not events (`post` keeps only the first match); one fixed session id per engine ruleset, and
  `retract_fact` after each evaluation (no `delete_state`: it crashes after an assertion that fired
  nothing; no new session per decision: memory grows and the 1,025th session fails);
- matches are drained with `start_action_for_state` / `complete_and_start_action`, reading only the
  rule name from each message;
- the messages are written by a function generated once per ruleset (`_message_writer`): encoding the
  facts through a loop over a field table was about a quarter of an evaluation at 100 rules;
- engine rulesets are named by the adapter (ruleset name, content hash, generation) and deleted with
  `delete_ruleset` when a ruleset is unloaded, since durable_rules cannot replace a registered ruleset.

Not thread-safe by design: the engine state is process-global, so one thread (the event loop) owns it.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Callable, Mapping, Sequence

import durable_rules_engine as _engine

from nba_service.domain.compiler import GUARD_KEY, CompiledRuleset, Partition, encode_number, encode_string
from nba_service.domain.facts import FactValue
from nba_service.errors import EngineFailure

_ASSERT_OK = 0
_ASSERT_NO_MATCH = 1
_ASSERT_OBSERVED = 2
_SESSION = "w"
_PREFIX = f'{{"id":"d","sid":"{_SESSION}","{GUARD_KEY}":1'
_generations = itertools.count(1)

MessageWriter = Callable[[Mapping[str, FactValue]], list[str]]


def _message_writer(compiled: CompiledRuleset, partitions: Sequence[Partition]) -> MessageWriter:
    """One function, generated for this ruleset, that writes each partition's message for a set of facts.

    Each present fact is encoded once (as `encode_facts` would) and each partition's message joins only
    the members for its own keys. Field names enter the source only as `repr` literals.
    """
    lines = ["def write(facts):", "    get = facts.get"]
    member = {}
    for number, (name, key) in enumerate(compiled.field_keys.items()):
        field_type = compiled.field_types[name]
        if field_type == "number":
            text = f"'\"{key}\":' + _number(v)"
        elif field_type == "boolean":
            text = f"('\"{key}\":1' if v else '\"{key}\":0')"
        else:
            text = f"'\"{key}\":' + _string(v)"
        lines += [f"    v = get({name!r})", f"    m{number} = None if v is None else {text}"]
        member[key] = f"m{number}"
    messages = []
    for partition in partitions:
        members = ", ".join(member[key] for key in partition.keys)
        messages.append(f"','.join(filter(None, (_HEAD, {members}))) + '}}'")
    lines.append(f"    return [{', '.join(messages)}]")
    namespace: dict[str, object] = {"_number": encode_number, "_string": encode_string, "_HEAD": _PREFIX}
    exec(compile("\n".join(lines) + "\n", f"<messages {compiled.ruleset.meta.name}>", "exec"), namespace)  # noqa: S102
    writer: MessageWriter = namespace["write"]  # type: ignore[assignment]
    return writer


class _LoadedPartition:
    def __init__(self, name: str, partition: Partition) -> None:
        self.name = name
        self.partition = partition
        self.handle: int = _engine.create_ruleset(name, partition.definition)
        self.rule_of = dict(partition.rule_of)
        self.keys = partition.keys

    def close(self) -> None:
        _engine.delete_ruleset(self.handle)


class DurableRuleset:
    """A compiled ruleset loaded into the engine; `evaluate` returns the indices of matching rules."""

    def __init__(self, compiled: CompiledRuleset) -> None:
        self.compiled = compiled
        meta = compiled.ruleset.meta
        safe = re.sub(r"[^a-z0-9]", "_", meta.name)
        self._base = f"{safe}_{compiled.ruleset.content_hash[:12]}_g{next(_generations)}"
        self._partitions = [_LoadedPartition(f"{self._base}_p{i}", p) for i, p in enumerate(compiled.partitions)]
        self.engine_rulesets = len(self._partitions)
        self._write = _message_writer(compiled, compiled.partitions)
        self._closed = False

    def evaluate(self, facts: Mapping[str, FactValue]) -> list[int]:
        if self._closed:
            raise EngineFailure("ruleset was unloaded")
        matched: set[int] = set()
        for index, message in enumerate(self._write(facts)):
            partition = self._partitions[index]
            try:
                self._assert(partition, message, matched)
            except _engine.error as exc:
                self._recover(index)
                raise EngineFailure(f"rules engine failed on {partition.name}: {exc}") from exc
        return sorted(matched)

    def _assert(self, partition: _LoadedPartition, message: str, matched: set[int]) -> None:
        handle = partition.handle
        code, state = _engine.assert_fact(handle, message)
        if code == _ASSERT_OBSERVED:
            _engine.retract_fact(handle, message)
            code, state = _engine.assert_fact(handle, message)
        if code == _ASSERT_NO_MATCH:
            # A fact that reached no rule is not stored, so there is nothing to retract (measured: asserting
            # it again answers "no match", not "observed"); were it ever stored, the branch above recovers.
            return
        try:
            if code != _ASSERT_OK:
                raise EngineFailure(f"rules engine answered code {code} on {partition.name}")
            result = _engine.start_action_for_state(handle, state)
            rule_of = partition.rule_of
            if result is not None:
                text = result[1]
                while text:
                    matched.add(rule_of[text[2 : text.index('"', 2)]])
                    text = _engine.complete_and_start_action(handle, state)
        finally:
            _engine.retract_fact(handle, message)

    def _recover(self, index: int) -> None:
        """Replaces a partition whose session may be stuck, so one bad evaluation cannot poison the next."""
        old = self._partitions[index]
        replacement = _LoadedPartition(f"{self._base}_p{index}_r{next(_generations)}", old.partition)
        self._partitions[index] = replacement
        with contextlib.suppress(_engine.error):
            old.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for partition in self._partitions:
            with contextlib.suppress(_engine.error):
                partition.close()
        self._partitions = []


class DurableEngine:
    """Loads compiled rulesets into durable_rules; the seam the decision service depends on."""

    name = "durable_rules"

    def load(self, compiled: CompiledRuleset) -> DurableRuleset:
        return DurableRuleset(compiled)
